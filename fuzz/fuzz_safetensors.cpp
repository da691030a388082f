// safetensors: the header reader, every tensor read in its dtype, and an empty Tensor of every
// shape (its strides are what overflowed in qf.load_tensors).
#include "fuzz_util.h"
#include "formats/model_source.h"
#include "formats/safetensors.h"
#include "core/tensor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string p = qf_fuzz::input_file(data, size, "t.safetensors");
  return qf_fuzz::run([&] {
    std::map<std::string, std::string> md;
    qf::safetensors_peek_metadata(p, &md);
    const qf::SafetensorsFile f = qf::safetensors_open(p);
    for (const qf::TensorSource& ts : f.tensors) {
      // numel · dtype size = nbytes <= file size (checked by the reader), so this is bounded.
      qf::Tensor::empty(ts.shape, qf::DType::U8);
      if (ts.dtype == "F32" || ts.dtype == "F16" || ts.dtype == "BF16") qf::tensor_source_load(ts);
      else if (ts.dtype == "I32") qf::safetensors_read<int32_t>(ts, "I32");
      else if (ts.dtype == "U8") qf::safetensors_read<uint8_t>(ts, "U8");
    }
  });
}
