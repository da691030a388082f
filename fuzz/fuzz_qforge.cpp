// qforge format (a safetensors file with a JSON header in its metadata): the whole model,
// quantized linears and tokenizer included, then the tokenizer built from it.
#include "fuzz_util.h"
#include "formats/loader_qforge.h"
#include "formats/model_source.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string p = qf_fuzz::input_file(data, size, "model.safetensors");
  return qf_fuzz::run([&] {
    qf::is_qforge_file(p);
    const qf::Model m = qf::load_qforge(p);
    if (m.src && !m.src->tokenizer.model.empty()) qf::Tokenizer::from_spec(m.src->tokenizer);
  });
}
