// llama2.c tokenizer.bin: load, encode, decode, and the spec other formats are written from.
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string p = qf_fuzz::input_file(data, size, "tokenizer.bin");
  return qf_fuzz::run([&] {
    const qf::Tokenizer t = qf::Tokenizer::load(p);
    qf_fuzz::expect_error([&] { t.decode(t.encode("Hello world, 1234 caf\xC3\xA9\n", true)); });
    qf::Tokenizer::from_spec(t.spec());
  });
}
