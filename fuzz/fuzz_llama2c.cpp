// llama2.c legacy checkpoint.
#include "fuzz_util.h"
#include "formats/loader_llama2c.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string p = qf_fuzz::input_file(data, size, "model.bin");
  return qf_fuzz::run([&] { qf::load_llama2c(p); });
}
