// GGUF: the container reader, the llama loader over it (config, tokenizer metadata, tensor
// infos), the tokenizer built from its metadata, and every tensor converted to f32.
#include "fuzz_util.h"
#include "formats/gguf.h"
#include "formats/loader_gguf.h"
#include "formats/model_source.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string p = qf_fuzz::input_file(data, size, "model.gguf");
  return qf_fuzz::run([&] {
    auto src = std::make_shared<qf::ModelSource>(qf::open_gguf(p));
    qf::assemble_model(src);
    if (!src->tokenizer.model.empty()) {
      const qf::Tokenizer t = qf::Tokenizer::from_spec(src->tokenizer);
      qf_fuzz::expect_error([&] { t.decode(t.encode("Once upon a time, 42 cats.", true)); });
    }
  });
}
