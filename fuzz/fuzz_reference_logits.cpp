// Reference logits (eval/reference_logits.h): both forms, every size checked against the file
// before allocating, every value checked; a rejection is a qf::Error.
#include "eval/reference_logits.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string p = qf_fuzz::input_file(data, size, "ref.qfref");
  return qf_fuzz::run([&] {
    const qf::ReferenceLogits r = qf::ReferenceLogits::load(p);
    (void)r.positions();
  });
}
