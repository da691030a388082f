// HF tokenizer.json (in its own directory, so no tokenizer_config.json is read): load, encode,
// decode, and write it back out as tokenizer.json.
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/tokenizer_spec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string p = qf_fuzz::input_file(data, size, "tokenizer.json");
  return qf_fuzz::run([&] {
    const qf::Tokenizer t = qf::Tokenizer::load(p);
    // encode may refuse text the vocabulary cannot spell; the writer runs either way.
    qf_fuzz::expect_error([&] { t.decode(t.encode("Hello world, 1234 <s> caf\xC3\xA9\n", true)); });
    qf::tokenizer_json(t.spec());
  });
}
