// qforge — the GGUF container (docs/formats.md, "Loading"): a validating reader over a mapped file
// and a streaming writer.
//
// Reader: header (magic "GGUF", version 2 or 3, tensor and KV counts), typed metadata values
// (scalars, strings, arrays, nested arrays), tensor infos (name, dims innermost first, ggml
// type, offset relative to the aligned data section). Every count, length and offset is
// checked against the bytes left in the file before anything is allocated, so a lying
// header fails with a message naming the file and the field instead of allocating.
// Tensor data is not copied: infos give absolute offsets into the mapping.
//
// Writer: collects KVs and tensor infos (with a producer per tensor), then streams header,
// infos, padding and tensor data through an AtomicFile, producing one tensor at a time.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "formats/dtypes.h"

namespace qf {

enum class GGUFType : uint32_t { U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12 };
const char* gguf_type_name(GGUFType t);  // "u32", "string", "array", ...

// One metadata value. Scalars: unsigned integers and bool in u, signed integers in i, floats
// in f, strings in s. Arrays (type ARRAY) of elem_type with `count` elements: numbers and
// bools packed little-endian in raw (as in the file: no per-element objects), strings in
// strs, nested arrays in arr.
struct GGUFValue {
  GGUFType type = GGUFType::U32;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  std::string s;
  GGUFType elem_type = GGUFType::U8;
  uint64_t count = 0;
  std::string raw;
  std::vector<std::string> strs;
  std::vector<GGUFValue> arr;

  bool is_int() const;                 // scalar of an integer type
  int64_t int_at(uint64_t k) const;    // element k of an integer/bool array (u64 > 2^63 wraps)
  double float_at(uint64_t k) const;   // element k of an f32/f64 array

  static GGUFValue make_u8(uint8_t v), make_i8(int8_t v), make_u16(uint16_t v), make_i16(int16_t v), make_u32(uint32_t v),
      make_i32(int32_t v), make_u64(uint64_t v), make_i64(int64_t v), make_f32(float v), make_f64(double v), make_bool(bool v),
      make_str(const std::string& v);
  // Array of scalars or strings or arrays, from values of type `elem`.
  static GGUFValue make_array(GGUFType elem, const std::vector<GGUFValue>& items);
  static GGUFValue make_str_array(const std::vector<std::string>& v);
  static GGUFValue make_f32_array(const std::vector<float>& v);
  static GGUFValue make_i32_array(const std::vector<int32_t>& v);
  static GGUFValue make_bool_array(const std::vector<uint8_t>& v);  // one byte per flag, 0 or 1
};

// ggml tensor types: rows of the storage-type table (formats/dtypes.h), by ggml type id.
using GGMLTypeInfo = DTypeTraits;
const GGMLTypeInfo* ggml_type_info(uint32_t id);  // null if unknown
const GGMLTypeInfo* ggml_type_by_name(const std::string& name);

struct GGUFTensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // dims, innermost (fastest-varying) first
  uint32_t type = 0;
  uint64_t offset = 0;       // relative to the data section, as in the file
  uint64_t abs_offset = 0;   // absolute offset in the file
  uint64_t nbytes = 0;
  std::string type_name() const;  // "Q4_0"
};

struct GGUFFile {
  std::shared_ptr<MappedFile> file;
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // absolute start of the data section
  std::vector<std::pair<std::string, GGUFValue>> kv;  // file order
  std::vector<GGUFTensorInfo> tensors;                // file order
  std::map<std::string, size_t> kv_index;

  const GGUFValue* find(const std::string& key) const;
  // Typed access; errors name the file and the key (missing, wrong type, out of range).
  int64_t get_int(const std::string& key, int64_t lo, int64_t hi) const;  // any integer type
  double get_float(const std::string& key) const;                       // f32 / f64
  bool get_bool(const std::string& key) const;
  const std::string& get_str(const std::string& key) const;
  const GGUFValue& get_array(const std::string& key) const;
};

// Opens and validates a GGUF file (see the header comment). Tensor types unknown to
// ggml_type_info are errors naming the tensor and the type id.
GGUFFile gguf_read(const std::string& path);

class GGUFWriter {
 public:
  using Sink = std::function<void(const void*, size_t)>;
  // Producer: writes exactly the tensor's bytes through `out` (called once, in tensor order).
  using Producer = std::function<void(const Sink& out)>;
  void add_kv(const std::string& key, GGUFValue v);  // duplicate keys are errors
  // ne innermost first; the producer's byte count is checked against type × ne.
  void add_tensor(const std::string& name, const std::vector<uint64_t>& ne, uint32_t type, Producer produce);
  void set_alignment(uint32_t a);             // default 32; also writes general.alignment
  void write(const std::string& path) const;  // atomic: temporary file, fsync, rename

 private:
  struct T {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    uint64_t nbytes;
    Producer produce;
  };
  std::vector<std::pair<std::string, GGUFValue>> kv_;
  std::vector<T> tensors_;
  uint64_t alignment_ = 32;
};

}  // namespace qf
