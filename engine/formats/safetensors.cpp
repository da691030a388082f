#include "formats/safetensors.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/half.h"
#include "core/io.h"
#include "core/json_util.h"

namespace qf {

using json = nlohmann::json;

// Real headers are a few MB at most (a 100k-tensor model); a larger one is a lying length.
static constexpr uint64_t kMaxHeader = 100ull << 20;

uint64_t safetensors_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

const TensorSource* SafetensorsFile::find(const std::string& name) const {
  for (const TensorSource& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const TensorSource& SafetensorsFile::get(const std::string& name) const {
  const TensorSource* t = find(name);
  if (!t) fail("safetensors file '", file->path, "': tensor '", name, "' is missing");
  return *t;
}

// Header length and JSON text; both checked against the file size first.
static std::string header_text(const MappedFile& f) {
  if (f.size < 8) fail("safetensors file '", f.path, "': truncated (", f.size, " bytes, the header length alone needs 8)");
  uint64_t n = 0;
  std::memcpy(&n, f.data, 8);  // little-endian host
  if (n > kMaxHeader) fail("safetensors file '", f.path, "': header length ", n, " is absurd (limit ", kMaxHeader, " bytes)");
  if (n > f.size - 8) fail("safetensors file '", f.path, "': header length ", n, " runs past the end of the file (", f.size, " bytes)");
  if (n < 2) fail("safetensors file '", f.path, "': header length ", n, " is too short for a JSON object");
  return std::string((const char*)f.data + 8, n);
}

static json parse_header(const std::string& text, const std::string& path) {
  json h = parse_json_bounded(text, "safetensors file '" + path + "': the header");
  if (!h.is_object()) fail("safetensors file '", path, "': the header is JSON but not an object");
  return h;
}

static std::map<std::string, std::string> parse_metadata(const json& h, const std::string& path) {
  std::map<std::string, std::string> md;
  auto it = h.find("__metadata__");
  if (it == h.end() || it->is_null()) return md;
  if (!it->is_object()) fail("safetensors file '", path, "': field '__metadata__' is not an object");
  for (auto& [k, v] : it->items()) {
    if (!v.is_string()) fail("safetensors file '", path, "': field '__metadata__.", k, "' is not a string");
    md[k] = v.get<std::string>();
  }
  return md;
}

SafetensorsFile safetensors_parse(std::shared_ptr<MappedFile> file) {
  const MappedFile& f = *file;
  const std::string text = header_text(f);
  const json h = parse_header(text, f.path);
  const uint64_t base = 8 + text.size(), buf = f.size - base;
  SafetensorsFile st;
  st.file = file;
  st.metadata = parse_metadata(h, f.path);
  for (auto& [name, e] : h.items()) {
    if (name == "__metadata__") continue;
    const std::string what = "safetensors file '" + f.path + "': tensor '" + name + "'";
    if (!e.is_object()) fail(what, ": entry is not an object");
    auto dt = e.find("dtype"), sh = e.find("shape"), off = e.find("data_offsets");
    if (dt == e.end() || !dt->is_string()) fail(what, ": field 'dtype' is missing or not a string");
    if (sh == e.end() || !sh->is_array()) fail(what, ": field 'shape' is missing or not an array");
    if (off == e.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned())
      fail(what, ": field 'data_offsets' is not a pair of non-negative integers");
    TensorSource ts;
    ts.name = name;
    ts.file = file;
    ts.dtype = dt->get<std::string>();
    const uint64_t esize = safetensors_dtype_size(ts.dtype);
    if (!esize) fail(what, ": field 'dtype' has unsupported value '", ts.dtype, "'");
    if (sh->size() > 8) fail(what, ": field 'shape' has ", sh->size(), " dimensions (at most 8)");
    // span: the product with zeros read as 1, which bounds every stride a tensor of this shape
    // gets; numel alone is 0 for [0, 2^40, 2^40] although its strides overflow.
    uint64_t numel = 1, span = 1;
    for (auto& d : *sh) {
      if (!d.is_number_unsigned()) fail(what, ": field 'shape' holds ", json_brief(d), ", not a non-negative integer");
      const uint64_t v = d.get<uint64_t>();
      if (v > (1ull << 40)) fail(what, ": field 'shape' dimension ", v, " is absurd");
      ts.shape.push_back((int64_t)v);
      if (v && span > (1ull << 62) / v) fail(what, ": field 'shape' ", shape_str(ts.shape), "... has too many elements");
      span *= v ? v : 1;
      numel *= v;
    }
    const uint64_t b = (*off)[0].get<uint64_t>(), en = (*off)[1].get<uint64_t>();
    if (b > en) fail(what, ": field 'data_offsets' [", b, ", ", en, "] is reversed");
    if (en > buf) fail(what, ": field 'data_offsets' [", b, ", ", en, "] runs past the end of the data (", buf, " bytes)");
    if (numel > (1ull << 62) / esize || en - b != numel * esize)
      fail(what, ": field 'data_offsets' spans ", en - b, " bytes but dtype ", ts.dtype, " × shape ", shape_str(ts.shape),
           " needs ", numel * esize);
    ts.offset = base + b;
    ts.nbytes = en - b;
    st.tensors.push_back(std::move(ts));
  }
  // The buffer must be covered exactly: sorted by offset, each tensor starts where the last ended.
  std::stable_sort(st.tensors.begin(), st.tensors.end(),
                   [](const TensorSource& a, const TensorSource& b) { return a.offset < b.offset; });
  uint64_t at = base;
  for (const TensorSource& t : st.tensors) {
    if (t.offset < at)
      fail("safetensors file '", f.path, "': tensor '", t.name, "' field 'data_offsets' overlaps the previous tensor (starts at ",
           t.offset - base, ", the previous ends at ", at - base, ")");
    if (t.offset > at)
      fail("safetensors file '", f.path, "': tensor '", t.name, "' field 'data_offsets' leaves a hole of ", t.offset - at,
           " bytes before it");
    at = t.offset + t.nbytes;
  }
  if (at != f.size)
    fail("safetensors file '", f.path, "': the tensors cover ", at - base, " bytes of a ", buf, "-byte data section (trailing bytes)");
  return st;
}

SafetensorsFile safetensors_open(const std::string& path) { return safetensors_parse(MappedFile::open(path)); }

bool safetensors_peek_metadata(const std::string& path, std::map<std::string, std::string>* md) {
  struct stat st{};
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;  // never open a FIFO
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  bool ok = false;
  uint64_t n = 0;
  // The header length is checked against the file's size before the buffer is allocated.
  const bool sized = std::fseek(f, 0, SEEK_END) == 0 && std::ftell(f) >= 8;
  const uint64_t fsize = sized ? (uint64_t)std::ftell(f) : 0;
  if (sized && std::fseek(f, 0, SEEK_SET) == 0 && std::fread(&n, 1, 8, f) == 8 && n >= 2 && n <= kMaxHeader && n <= fsize - 8) {
    std::string text(n, '\0');
    if (std::fread(text.data(), 1, n, f) == n) {
      try {
        const json h = parse_json_bounded(text, path);
        if (h.is_object()) {
          *md = parse_metadata(h, path);
          ok = true;
        }
      } catch (const Error&) {
      }
    }
  }
  std::fclose(f);
  return ok;
}

template <class T>
std::vector<T> safetensors_read(const TensorSource& ts, const std::string& dtype) {
  const std::string what = "tensor '" + ts.name + "'";
  if (ts.dtype != dtype) fail("file '", ts.file->path, "': ", what, " has dtype ", ts.dtype, ", expected ", dtype);
  if (safetensors_dtype_size(dtype) != sizeof(T) || ts.nbytes % sizeof(T)) fail("file '", ts.file->path, "': ", what, ": element size mismatch");
  std::vector<T> v(ts.nbytes / sizeof(T));
  if (ts.nbytes) std::memcpy(v.data(), ts.file->at(ts.offset, ts.nbytes, what), ts.nbytes);
  return v;
}
template std::vector<float> safetensors_read<float>(const TensorSource&, const std::string&);
template std::vector<int32_t> safetensors_read<int32_t>(const TensorSource&, const std::string&);
template std::vector<uint8_t> safetensors_read<uint8_t>(const TensorSource&, const std::string&);
template std::vector<uint16_t> safetensors_read<uint16_t>(const TensorSource&, const std::string&);
template std::vector<int64_t> safetensors_read<int64_t>(const TensorSource&, const std::string&);

uint64_t safetensors_write(const std::string& path, const std::vector<SafetensorsEntry>& entries,
                           const std::map<std::string, std::string>& metadata) {
  // Header first: every offset follows from dtype × shape, so no tensor is produced yet.
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json md = nlohmann::ordered_json::object();
    for (auto& [k, v] : metadata) md[k] = v;
    h["__metadata__"] = md;
  }
  std::vector<uint64_t> sizes;
  uint64_t at = 0;
  for (const SafetensorsEntry& e : entries) {
    if (e.name.empty() || e.name == "__metadata__" || h.contains(e.name))
      fail("safetensors write '", path, "': tensor name '", e.name, "' is empty, reserved or repeated");
    const uint64_t esize = safetensors_dtype_size(e.dtype);
    if (!esize) fail("safetensors write '", path, "': tensor '", e.name, "' has unsupported dtype '", e.dtype, "'");
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      if (d < 0) fail("safetensors write '", path, "': tensor '", e.name, "' has negative shape ", shape_str(e.shape));
      numel *= (uint64_t)d;
    }
    const uint64_t nb = numel * esize;
    h[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {at, at + nb}}};
    sizes.push_back(nb);
    at += nb;
  }
  std::string text = h.dump();
  text.append((8 - (8 + text.size()) % 8) % 8, ' ');  // data starts 8-byte aligned
  AtomicFile out(path);
  const uint64_t n = text.size();
  out.write(&n, 8);
  out.write(text);
  for (size_t i = 0; i < entries.size(); ++i) {
    const SafetensorsEntry& e = entries[i];
    if (e.produce) {
      const std::string b = e.produce();
      if (b.size() != sizes[i])
        fail("safetensors write '", path, "': tensor '", e.name, "' produced ", b.size(), " bytes, its header says ", sizes[i]);
      out.write(b);
    } else {
      if (e.bytes.size() != sizes[i])
        fail("safetensors write '", path, "': tensor '", e.name, "' has ", e.bytes.size(), " bytes, dtype ", e.dtype, " × shape ",
             shape_str(e.shape), " needs ", sizes[i]);
      out.write(e.bytes);
    }
  }
  const uint64_t total = out.written();
  out.commit();
  return total;
}

std::string bytes_of_f32(const std::vector<float>& v) { return std::string((const char*)v.data(), v.size() * 4); }
std::string bytes_of_i32(const std::vector<int32_t>& v) { return std::string((const char*)v.data(), v.size() * 4); }

std::string tensor_bytes(const Tensor& t, const std::string& dtype, const std::string& what) {
  const std::vector<float> v = t.to_vector();
  if (dtype == "F32") return bytes_of_f32(v);
  std::string out(v.size() * 2, '\0');
  for (size_t i = 0; i < v.size(); ++i) {
    uint16_t h;
    if (dtype == "F16") {
      h = f32_to_f16(v[i]);
      if (std::isfinite(v[i]) && (h & 0x7c00) == 0x7c00)
        fail(what, ": value ", v[i], " at element ", i, " overflows float16 (|x| > 65504); save as BF16 or F32");
    } else if (dtype == "BF16") {
      h = f32_to_bf16(v[i]);
    } else {
      fail(what, ": dtype '", dtype, "' is not a float type (F32, F16, BF16)");
    }
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

}  // namespace qf
