#include "formats/gguf.h"

#include <algorithm>
#include <cstring>
#include <set>

#include "core/error.h"
#include "core/io.h"

namespace qf {

const char* gguf_type_name(GGUFType t) {
  static const char* names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};
  return (uint32_t)t <= 12 ? names[(uint32_t)t] : "unknown";
}

// Bytes one element of a fixed-size type takes in the file (0 for string/array).
static uint64_t scalar_size(GGUFType t) {
  switch (t) {
    case GGUFType::U8: case GGUFType::I8: case GGUFType::BOOL: return 1;
    case GGUFType::U16: case GGUFType::I16: return 2;
    case GGUFType::U32: case GGUFType::I32: case GGUFType::F32: return 4;
    case GGUFType::U64: case GGUFType::I64: case GGUFType::F64: return 8;
    default: return 0;
  }
}
static bool is_int_type(GGUFType t) { return scalar_size(t) && t != GGUFType::F32 && t != GGUFType::F64 && t != GGUFType::BOOL; }
static bool is_signed(GGUFType t) { return t == GGUFType::I8 || t == GGUFType::I16 || t == GGUFType::I32 || t == GGUFType::I64; }

// Little-endian scalar at p of type t, as an integer (signed types sign-extended).
static int64_t load_int(const uint8_t* p, GGUFType t) {
  switch (t) {
    case GGUFType::U8: case GGUFType::BOOL: return p[0];
    case GGUFType::I8: return (int8_t)p[0];
    case GGUFType::U16: { uint16_t v; std::memcpy(&v, p, 2); return v; }
    case GGUFType::I16: { int16_t v; std::memcpy(&v, p, 2); return v; }
    case GGUFType::U32: { uint32_t v; std::memcpy(&v, p, 4); return v; }
    case GGUFType::I32: { int32_t v; std::memcpy(&v, p, 4); return v; }
    default: { int64_t v; std::memcpy(&v, p, 8); return v; }  // u64 / i64
  }
}
static double load_float(const uint8_t* p, GGUFType t) {
  if (t == GGUFType::F32) { float v; std::memcpy(&v, p, 4); return v; }
  double v;
  std::memcpy(&v, p, 8);
  return v;
}

bool GGUFValue::is_int() const { return is_int_type(type); }
int64_t GGUFValue::int_at(uint64_t k) const {
  if (type != GGUFType::ARRAY || !scalar_size(elem_type) || elem_type == GGUFType::F32 || elem_type == GGUFType::F64 || k >= count)
    fail("GGUF value: int_at(", k, ") on a value that is not an integer array of more than ", k, " elements");
  return load_int((const uint8_t*)raw.data() + k * scalar_size(elem_type), elem_type);
}
double GGUFValue::float_at(uint64_t k) const {
  if (type != GGUFType::ARRAY || (elem_type != GGUFType::F32 && elem_type != GGUFType::F64) || k >= count)
    fail("GGUF value: float_at(", k, ") on a value that is not a float array of more than ", k, " elements");
  return load_float((const uint8_t*)raw.data() + k * scalar_size(elem_type), elem_type);
}

static GGUFValue mk_u(GGUFType t, uint64_t v) { GGUFValue x; x.type = t; x.u = v; return x; }
static GGUFValue mk_i(GGUFType t, int64_t v) { GGUFValue x; x.type = t; x.i = v; return x; }
GGUFValue GGUFValue::make_u8(uint8_t v) { return mk_u(GGUFType::U8, v); }
GGUFValue GGUFValue::make_u16(uint16_t v) { return mk_u(GGUFType::U16, v); }
GGUFValue GGUFValue::make_u32(uint32_t v) { return mk_u(GGUFType::U32, v); }
GGUFValue GGUFValue::make_u64(uint64_t v) { return mk_u(GGUFType::U64, v); }
GGUFValue GGUFValue::make_bool(bool v) { return mk_u(GGUFType::BOOL, v ? 1 : 0); }
GGUFValue GGUFValue::make_i8(int8_t v) { return mk_i(GGUFType::I8, v); }
GGUFValue GGUFValue::make_i16(int16_t v) { return mk_i(GGUFType::I16, v); }
GGUFValue GGUFValue::make_i32(int32_t v) { return mk_i(GGUFType::I32, v); }
GGUFValue GGUFValue::make_i64(int64_t v) { return mk_i(GGUFType::I64, v); }
GGUFValue GGUFValue::make_f32(float v) { GGUFValue x; x.type = GGUFType::F32; x.f = v; return x; }
GGUFValue GGUFValue::make_f64(double v) { GGUFValue x; x.type = GGUFType::F64; x.f = v; return x; }
GGUFValue GGUFValue::make_str(const std::string& v) { GGUFValue x; x.type = GGUFType::STRING; x.s = v; return x; }

// Appends scalar v (of type t) little-endian to out.
static void put_scalar(std::string& out, GGUFType t, const GGUFValue& v) {
  uint8_t b[8];
  const size_t n = scalar_size(t);
  if (t == GGUFType::F32) { float f = (float)v.f; std::memcpy(b, &f, 4); }
  else if (t == GGUFType::F64) std::memcpy(b, &v.f, 8);
  else {
    const uint64_t bits = is_signed(t) ? (uint64_t)v.i : v.u;
    std::memcpy(b, &bits, 8);  // little-endian host: the low n bytes are the value
  }
  out.append((const char*)b, n);
}

GGUFValue GGUFValue::make_array(GGUFType elem, const std::vector<GGUFValue>& items) {
  GGUFValue x;
  x.type = GGUFType::ARRAY;
  x.elem_type = elem;
  x.count = items.size();
  for (const GGUFValue& it : items) {
    if (it.type != elem) fail("GGUF array of ", gguf_type_name(elem), ": element of type ", gguf_type_name(it.type));
    if (elem == GGUFType::STRING) x.strs.push_back(it.s);
    else if (elem == GGUFType::ARRAY) x.arr.push_back(it);
    else put_scalar(x.raw, elem, it);
  }
  return x;
}
GGUFValue GGUFValue::make_str_array(const std::vector<std::string>& v) {
  GGUFValue x;
  x.type = GGUFType::ARRAY;
  x.elem_type = GGUFType::STRING;
  x.count = v.size();
  x.strs = v;
  return x;
}
GGUFValue GGUFValue::make_f32_array(const std::vector<float>& v) {
  GGUFValue x;
  x.type = GGUFType::ARRAY;
  x.elem_type = GGUFType::F32;
  x.count = v.size();
  x.raw.assign((const char*)v.data(), v.size() * 4);
  return x;
}
GGUFValue GGUFValue::make_i32_array(const std::vector<int32_t>& v) {
  GGUFValue x;
  x.type = GGUFType::ARRAY;
  x.elem_type = GGUFType::I32;
  x.count = v.size();
  x.raw.assign((const char*)v.data(), v.size() * 4);
  return x;
}

GGUFValue GGUFValue::make_bool_array(const std::vector<uint8_t>& v) {
  GGUFValue x;
  x.type = GGUFType::ARRAY;
  x.elem_type = GGUFType::BOOL;
  x.count = v.size();
  for (uint8_t b : v) x.raw.push_back(b ? 1 : 0);
  return x;
}

// ---- ggml types ------------------------------------------------------------------------------

const GGMLTypeInfo* ggml_type_info(uint32_t id) { return dtype_by_id(id); }
const GGMLTypeInfo* ggml_type_by_name(const std::string& name) { return dtype_by_name(name); }
std::string GGUFTensorInfo::type_name() const {
  const GGMLTypeInfo* t = ggml_type_info(type);
  return t ? t->name : "ggml type " + std::to_string(type);
}

// ---- reader ----------------------------------------------------------------------------------

namespace {
struct Cursor {
  const MappedFile& f;
  uint64_t pos = 0;
  uint64_t budget = 0;  // bytes the parsed header may still take in memory
  uint64_t left() const { return f.size - pos; }
  // Charges n bytes of memory the reader is about to allocate: a file cannot make the reader
  // take more than a few times its own size (an empty nested array is 12 bytes in the file
  // but a GGUFValue in memory).
  void charge(uint64_t n, const std::string& what) {
    if (n > budget)
      fail("file '", f.path, "': ", what, ": the header would take more than ", kMemPerFileByte, " bytes of memory per byte of the ",
           f.size, "-byte file (", n, " more bytes asked, ", budget, " left)");
    budget -= n;
  }
  static constexpr uint64_t kMemPerFileByte = 4;
  const uint8_t* take(uint64_t n, const std::string& what) {
    const uint8_t* p = f.at(pos, n, what);
    pos += n;
    return p;
  }
  uint32_t u32(const std::string& what) { uint32_t v; std::memcpy(&v, take(4, what), 4); return v; }
  uint64_t u64(const std::string& what) { uint64_t v; std::memcpy(&v, take(8, what), 8); return v; }
  std::string str(const std::string& what, uint64_t max_len) {
    const uint64_t n = u64(what + " (string length)");
    if (n > left()) fail("file '", f.path, "': ", what, ": string length ", n, " exceeds the ", left(), " bytes left in the file");
    if (n > max_len) fail("file '", f.path, "': ", what, ": string length ", n, " exceeds the maximum ", max_len);
    if (n > 15) charge(n + 1, what);  // longer than the in-place buffer of std::string
    const uint8_t* p = take(n, what);
    return std::string((const char*)p, n);
  }
};
}  // namespace

static const int kMaxDepth = 8;  // nested arrays

static GGUFValue read_value(Cursor& c, GGUFType t, const std::string& what, int depth) {
  GGUFValue v;
  v.type = t;
  const std::string& path = c.f.path;
  if (t == GGUFType::STRING) {
    v.s = c.str(what, UINT64_MAX);
  } else if (t == GGUFType::ARRAY) {
    if (depth >= kMaxDepth) fail("file '", path, "': ", what, ": arrays nested deeper than ", kMaxDepth);
    const uint32_t et = c.u32(what + " (array element type)");
    if (et > 12) fail("file '", path, "': ", what, ": unknown array element type ", et);
    v.elem_type = (GGUFType)et;
    v.count = c.u64(what + " (array count)");
    // Smallest encoding of one element: fixed size, 8 (string length), 12 (array header).
    const uint64_t min_elem = scalar_size(v.elem_type) ? scalar_size(v.elem_type) : v.elem_type == GGUFType::STRING ? 8 : 12;
    if (v.count > c.left() / min_elem)
      fail("file '", path, "': ", what, ": array count ", v.count, " of ", gguf_type_name(v.elem_type), " exceeds the ", c.left(),
           " bytes left in the file");
    if (scalar_size(v.elem_type)) {
      const uint64_t n = v.count * scalar_size(v.elem_type);
      c.charge(n, what);
      const uint8_t* p = c.take(n, what);
      v.raw.assign((const char*)p, n);
      if (v.elem_type == GGUFType::BOOL)
        for (uint64_t k = 0; k < v.count; ++k)
          if (p[k] > 1) fail("file '", path, "': ", what, ": bool element ", k, " is ", (int)p[k], " (expected 0 or 1)");
    } else if (v.elem_type == GGUFType::STRING) {
      c.charge(v.count * sizeof(std::string), what);
      v.strs.reserve(v.count);
      for (uint64_t k = 0; k < v.count; ++k) v.strs.push_back(c.str(what + "[" + std::to_string(k) + "]", UINT64_MAX));
    } else {
      c.charge(v.count * sizeof(GGUFValue), what);
      v.arr.reserve(v.count);
      for (uint64_t k = 0; k < v.count; ++k) v.arr.push_back(read_value(c, GGUFType::ARRAY, what + "[" + std::to_string(k) + "]", depth + 1));
    }
  } else if ((uint32_t)t <= 12) {
    const uint8_t* p = c.take(scalar_size(t), what);
    if (t == GGUFType::F32 || t == GGUFType::F64) v.f = load_float(p, t);
    else if (is_signed(t)) v.i = load_int(p, t);
    else {
      v.u = t == GGUFType::U64 ? (uint64_t)load_int(p, t) : (uint64_t)load_int(p, t);
      if (t == GGUFType::BOOL && v.u > 1) fail("file '", path, "': ", what, ": bool value ", v.u, " (expected 0 or 1)");
    }
  } else {
    fail("file '", path, "': ", what, ": unknown value type ", (uint32_t)t);
  }
  return v;
}

GGUFFile gguf_read(const std::string& path) {
  GGUFFile g;
  g.file = MappedFile::open(path);
  const MappedFile& f = *g.file;
  Cursor c{f};
  c.budget = Cursor::kMemPerFileByte * f.size + (1 << 20);
  if (f.size < 4 || std::memcmp(f.data, "GGUF", 4) != 0) fail("file '", path, "': not a GGUF file (field 'magic': expected the bytes 'GGUF')");
  c.pos = 4;
  g.version = c.u32("header field 'version'");
  if (g.version == 0x03000000u || g.version == 0x02000000u) fail("file '", path, "': big-endian GGUF files are not supported (field 'version')");
  if (g.version != 2 && g.version != 3) fail("file '", path, "': GGUF version ", g.version, " is not supported (field 'version': expected 2 or 3)");
  const uint64_t n_tensors = c.u64("header field 'tensor_count'");
  const uint64_t n_kv = c.u64("header field 'metadata_kv_count'");
  // Smallest possible KV: empty key (8) + type (4) + 1-byte value. Smallest tensor info:
  // empty name (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
  if (n_kv > c.left() / 13)
    fail("file '", path, "': header field 'metadata_kv_count' = ", n_kv, " exceeds what the ", f.size, "-byte file can hold");
  if (n_tensors > c.left() / 32)
    fail("file '", path, "': header field 'tensor_count' = ", n_tensors, " exceeds what the ", f.size, "-byte file can hold");

  for (uint64_t k = 0; k < n_kv; ++k) {
    const std::string what = "metadata entry " + std::to_string(k);
    c.charge(sizeof(std::pair<std::string, GGUFValue>) + 64, what);  // + its kv_index node
    std::string key = c.str(what + " key", 65535);
    if (g.kv_index.count(key)) fail("file '", path, "': duplicate metadata key '", key, "'");
    const uint32_t t = c.u32("metadata '" + key + "' (value type)");
    if (t > 12) fail("file '", path, "': metadata '", key, "': unknown value type ", t);
    GGUFValue v = read_value(c, (GGUFType)t, "metadata '" + key + "'", 0);
    g.kv_index[key] = g.kv.size();
    g.kv.emplace_back(std::move(key), std::move(v));
  }
  if (const GGUFValue* a = g.find("general.alignment")) {
    if (a->type != GGUFType::U32) fail("file '", path, "': metadata 'general.alignment' has type ", gguf_type_name(a->type), ", expected u32");
    if (a->u == 0 || (a->u & (a->u - 1)) || a->u > (1u << 30))
      fail("file '", path, "': metadata 'general.alignment' = ", a->u, " is not a power of two in 1..2^30");
    g.alignment = a->u;
  }

  std::set<std::string> names;
  for (uint64_t k = 0; k < n_tensors; ++k) {
    c.charge(sizeof(GGUFTensorInfo) + 4 * 8 + 64, "tensor info " + std::to_string(k));  // + dims, its name set node
    GGUFTensorInfo t;
    t.name = c.str("tensor info " + std::to_string(k) + " name", 63);
    const std::string what = "tensor '" + t.name + "'";
    if (!names.insert(t.name).second) fail("file '", path, "': duplicate tensor name '", t.name, "'");
    const uint32_t nd = c.u32(what + " n_dims");
    if (nd < 1 || nd > 4) fail("file '", path, "': ", what, ": n_dims = ", nd, " (expected 1..4)");
    // span: the product with zeros read as 1, which bounds every stride of the tensor (numel
    // alone is 0 for dims [0, 2^40, 2^40] although its strides overflow).
    uint64_t numel = 1, span = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t n = c.u64(what + " dims[" + std::to_string(d) + "]");
      if (n > (uint64_t)INT64_MAX || (n && span > (uint64_t)INT64_MAX / n))
        fail("file '", path, "': ", what, ": dims[", d, "] = ", n, " makes the element count overflow");
      numel *= n;
      span *= n ? n : 1;
      t.ne.push_back(n);
    }
    t.type = c.u32(what + " type");
    const GGMLTypeInfo* ti = ggml_type_info(t.type);
    if (!ti) fail("file '", path, "': ", what, ": unsupported ggml type ", t.type);
    if (t.ne[0] % (uint64_t)ti->block_elems)
      fail("file '", path, "': ", what, ": dims[0] = ", t.ne[0], " is not a multiple of the ", ti->name, " block size ", ti->block_elems);
    const uint64_t blocks = numel / (uint64_t)ti->block_elems;
    if (blocks > f.size / (uint64_t)ti->block_bytes)
      fail("file '", path, "': ", what, ": ", numel, " elements of ", ti->name, " need more bytes than the ", f.size, "-byte file has (field 'dims')");
    t.nbytes = blocks * (uint64_t)ti->block_bytes;
    t.offset = c.u64(what + " offset");
    g.tensors.push_back(std::move(t));
  }
  // The data section starts at the next multiple of the alignment.
  g.data_offset = (c.pos + g.alignment - 1) / g.alignment * g.alignment;
  if (!g.tensors.empty() && g.data_offset > f.size)
    fail("file '", path, "': truncated before the data section (starts at byte ", g.data_offset, ", the file has ", f.size, ")");
  const uint64_t data_size = g.data_offset <= f.size ? f.size - g.data_offset : 0;
  std::vector<const GGUFTensorInfo*> by_offset;
  for (GGUFTensorInfo& t : g.tensors) {
    if (t.offset % g.alignment)
      fail("file '", path, "': tensor '", t.name, "': offset ", t.offset, " is not a multiple of the alignment ", g.alignment);
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail("file '", path, "': tensor '", t.name, "': offset ", t.offset, " + ", t.nbytes, " bytes lies past the end of the data section (",
           data_size, " bytes)");
    t.abs_offset = g.data_offset + t.offset;
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t k = 1; k < by_offset.size(); ++k)
    if (by_offset[k - 1]->offset + by_offset[k - 1]->nbytes > by_offset[k]->offset)
      fail("file '", path, "': tensors '", by_offset[k - 1]->name, "' and '", by_offset[k]->name, "' overlap (field 'offset')");
  return g;
}

const GGUFValue* GGUFFile::find(const std::string& key) const {
  auto it = kv_index.find(key);
  return it == kv_index.end() ? nullptr : &kv[it->second].second;
}

static const GGUFValue& need_kv(const GGUFFile& g, const std::string& key) {
  const GGUFValue* v = g.find(key);
  if (!v) fail("file '", g.file->path, "': metadata '", key, "' is missing");
  return *v;
}

int64_t GGUFFile::get_int(const std::string& key, int64_t lo, int64_t hi) const {
  const GGUFValue& v = need_kv(*this, key);
  if (!v.is_int()) fail("file '", file->path, "': metadata '", key, "' has type ", gguf_type_name(v.type), ", expected an integer");
  const bool big = !is_signed(v.type) && v.u > (uint64_t)INT64_MAX;
  const int64_t x = is_signed(v.type) ? v.i : (int64_t)v.u;
  if (big || x < lo || x > hi)
    fail("file '", file->path, "': metadata '", key, "' = ", big ? std::to_string(v.u) : std::to_string(x), " is out of range [", lo, ", ", hi, "]");
  return x;
}
double GGUFFile::get_float(const std::string& key) const {
  const GGUFValue& v = need_kv(*this, key);
  if (v.type != GGUFType::F32 && v.type != GGUFType::F64)
    fail("file '", file->path, "': metadata '", key, "' has type ", gguf_type_name(v.type), ", expected f32");
  return v.f;
}
bool GGUFFile::get_bool(const std::string& key) const {
  const GGUFValue& v = need_kv(*this, key);
  if (v.type != GGUFType::BOOL) fail("file '", file->path, "': metadata '", key, "' has type ", gguf_type_name(v.type), ", expected bool");
  return v.u != 0;
}
const std::string& GGUFFile::get_str(const std::string& key) const {
  const GGUFValue& v = need_kv(*this, key);
  if (v.type != GGUFType::STRING) fail("file '", file->path, "': metadata '", key, "' has type ", gguf_type_name(v.type), ", expected string");
  return v.s;
}
const GGUFValue& GGUFFile::get_array(const std::string& key) const {
  const GGUFValue& v = need_kv(*this, key);
  if (v.type != GGUFType::ARRAY) fail("file '", file->path, "': metadata '", key, "' has type ", gguf_type_name(v.type), ", expected an array");
  return v;
}

// ---- writer ----------------------------------------------------------------------------------

static void put_u32(std::string& o, uint32_t v) { o.append((const char*)&v, 4); }
static void put_u64(std::string& o, uint64_t v) { o.append((const char*)&v, 8); }
static void put_str(std::string& o, const std::string& s) {
  put_u64(o, s.size());
  o += s;
}
static void put_value(std::string& o, const GGUFValue& v) {
  if (v.type == GGUFType::STRING) return put_str(o, v.s);
  if (v.type != GGUFType::ARRAY) return put_scalar(o, v.type, v);
  put_u32(o, (uint32_t)v.elem_type);
  put_u64(o, v.count);
  if (v.elem_type == GGUFType::STRING) {
    if (v.strs.size() != v.count) fail("GGUF writer: string array holds ", v.strs.size(), " strings, count says ", v.count);
    for (const std::string& s : v.strs) put_str(o, s);
  } else if (v.elem_type == GGUFType::ARRAY) {
    if (v.arr.size() != v.count) fail("GGUF writer: nested array holds ", v.arr.size(), " arrays, count says ", v.count);
    for (const GGUFValue& a : v.arr) {
      if (a.type != GGUFType::ARRAY) fail("GGUF writer: array of arrays holds a ", gguf_type_name(a.type));
      put_value(o, a);
    }
  } else {
    if (v.raw.size() != v.count * scalar_size(v.elem_type)) fail("GGUF writer: array of ", v.count, " ", gguf_type_name(v.elem_type), " holds ", v.raw.size(), " bytes");
    o += v.raw;
  }
}

void GGUFWriter::add_kv(const std::string& key, GGUFValue v) {
  if (key.empty() || key.size() > 65535) fail("GGUF writer: metadata key '", key, "' is empty or too long");
  for (auto& kv : kv_)
    if (kv.first == key) fail("GGUF writer: duplicate metadata key '", key, "'");
  if ((uint32_t)v.type > 12) fail("GGUF writer: metadata '", key, "': bad value type");
  kv_.emplace_back(key, std::move(v));
}

void GGUFWriter::set_alignment(uint32_t a) {
  if (a == 0 || (a & (a - 1)) || a % 8) fail("GGUF writer: alignment ", a, " is not a power of two multiple of 8");
  alignment_ = a;
  add_kv("general.alignment", GGUFValue::make_u32(a));
}

void GGUFWriter::add_tensor(const std::string& name, const std::vector<uint64_t>& ne, uint32_t type, Producer produce) {
  if (name.empty() || name.size() > 63) fail("GGUF writer: tensor name '", name, "' must have 1..63 bytes");
  for (auto& t : tensors_)
    if (t.name == name) fail("GGUF writer: duplicate tensor name '", name, "'");
  if (ne.empty() || ne.size() > 4) fail("GGUF writer: tensor '", name, "' has ", ne.size(), " dims (expected 1..4)");
  const GGMLTypeInfo* ti = ggml_type_info(type);
  if (!ti) fail("GGUF writer: tensor '", name, "': unknown ggml type ", type);
  uint64_t numel = 1;
  for (uint64_t n : ne) numel *= n;
  if (ne[0] % (uint64_t)ti->block_elems) fail("GGUF writer: tensor '", name, "': dims[0] = ", ne[0], " is not a multiple of the ", ti->name, " block size");
  tensors_.push_back({name, ne, type, numel / ti->block_elems * ti->block_bytes, std::move(produce)});
}

void GGUFWriter::write(const std::string& path) const {
  const uint64_t A = alignment_;
  auto pad_to = [&](uint64_t n) { return (n + A - 1) / A * A; };
  std::string h;
  h.append("GGUF", 4);
  put_u32(h, 3);
  put_u64(h, tensors_.size());
  put_u64(h, kv_.size());
  for (auto& [k, v] : kv_) {
    put_str(h, k);
    put_u32(h, (uint32_t)v.type);
    put_value(h, v);
  }
  uint64_t off = 0;  // each tensor's data starts at the running sum of the padded sizes
  for (const T& t : tensors_) {
    put_str(h, t.name);
    put_u32(h, (uint32_t)t.ne.size());
    for (uint64_t n : t.ne) put_u64(h, n);
    put_u32(h, t.type);
    put_u64(h, off);
    off += pad_to(t.nbytes);
  }
  h.resize(pad_to(h.size()), '\0');
  AtomicFile f(path);
  f.write(h);
  const std::string zeros(A, '\0');
  for (const T& t : tensors_) {
    const uint64_t start = f.written();
    t.produce([&](const void* p, size_t n) { f.write(p, n); });
    const uint64_t got = f.written() - start;
    if (got != t.nbytes) fail("GGUF writer '", path, "': tensor '", t.name, "' produced ", got, " bytes, expected ", t.nbytes);
    f.write(zeros.data(), pad_to(got) - got);
  }
  f.commit();
}

}  // namespace qf
