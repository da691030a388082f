// qforge — the safetensors container (docs/formats.md, "Loading"): reader over a mapped file,
// streaming writer.
//
// Layout: u64 LE header length N, N bytes of UTF-8 JSON
//   {name: {dtype, shape: [...], data_offsets: [begin, end]}, "__metadata__": {str: str}},
// then the data buffer; offsets are relative to the buffer, which the tensors cover exactly
// (no holes, no overlaps). Shapes are outermost-first. The reader checks every offset and
// size against the file before anything is read; the writer pads the JSON with spaces so the
// buffer starts 8-byte aligned.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "formats/model_source.h"

namespace qf {

// Bytes per element of a safetensors dtype (F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8
// BOOL F8_E4M3 F8_E5M2); 0 for an unknown name.
uint64_t safetensors_dtype_size(const std::string& dtype);

struct SafetensorsFile {
  std::shared_ptr<MappedFile> file;
  std::map<std::string, std::string> metadata;  // __metadata__ (absent: empty)
  std::vector<TensorSource> tensors;            // in buffer order; offsets are absolute in the file

  const TensorSource* find(const std::string& name) const;  // nullptr when absent
  const TensorSource& get(const std::string& name) const;   // error names the file and the tensor
};

// Maps `path` and validates the header (errors name the file and the field or tensor).
SafetensorsFile safetensors_open(const std::string& path);
SafetensorsFile safetensors_parse(std::shared_ptr<MappedFile> file);
// Only the __metadata__ of a file, or false when it is not a readable safetensors file
// (format detection: never throws).
bool safetensors_peek_metadata(const std::string& path, std::map<std::string, std::string>* metadata);

// Reads a whole integer/float tensor into a vector of T after checking that its dtype is
// `dtype` and that sizeof(T) matches (the caller names what it expects).
template <class T>
std::vector<T> safetensors_read(const TensorSource& ts, const std::string& dtype);

// One tensor to write: the bytes are given, or produced when the writer reaches it (so a
// whole model never sits in memory twice). The producer must return exactly
// dtype size × numel bytes.
struct SafetensorsEntry {
  std::string name, dtype;
  Shape shape;
  std::string bytes;
  std::function<std::string()> produce;
};

// Writes the file atomically (temporary + fsync + rename). Names must be unique and not
// "__metadata__". Returns the number of bytes written.
uint64_t safetensors_write(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                           const std::map<std::string, std::string>& metadata);

// Little helpers for building entries from typed arrays.
std::string bytes_of_f32(const std::vector<float>& v);
std::string bytes_of_i32(const std::vector<int32_t>& v);
// An f32 tensor (any view) converted to F32 | F16 | BF16 bytes; F16 refuses values that
// overflow (|x| > 65504), naming `what`.
std::string tensor_bytes(const Tensor& t, const std::string& dtype, const std::string& what);

}  // namespace qf
