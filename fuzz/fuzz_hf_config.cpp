// HF checkpoint directory: the input is config.json; beside it an empty model.safetensors, so
// the loader reads the whole config and then the (tensorless) checkpoint.
#include "fuzz_util.h"
#include "formats/loader_hf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = qf_fuzz::fresh_dir();
  qf_fuzz::put(dir + "/config.json", data, size);
  static const std::string empty_st = std::string("\x02\0\0\0\0\0\0\0{}", 10);
  qf_fuzz::put(dir + "/model.safetensors", (const uint8_t*)empty_st.data(), empty_st.size());
  return qf_fuzz::run([&] { qf::open_hf(dir); });
}
