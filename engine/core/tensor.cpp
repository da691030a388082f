#include "core/tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/half.h"

namespace qf {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::I8: case DType::U8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F16: return "f16";
    case DType::BF16: return "bf16";
    case DType::I8: return "i8";
    case DType::U8: return "u8";
    case DType::I32: return "i32";
  }
  return "?";
}

DType dtype_from_name(const std::string& n) {
  if (n == "f32" || n == "float32") return DType::F32;
  if (n == "f16" || n == "float16") return DType::F16;
  if (n == "bf16" || n == "bfloat16") return DType::BF16;
  if (n == "i8" || n == "int8") return DType::I8;
  if (n == "u8" || n == "uint8") return DType::U8;
  if (n == "i32" || n == "int32") return DType::I32;
  fail("unknown dtype '", n, "' (expected f32, f16, bf16, i8, u8 or i32)");
}

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

std::shared_ptr<Storage> Storage::alloc(size_t nbytes, bool zero) {
  auto st = std::make_shared<Storage>();
  size_t padded = (nbytes + 63) / 64 * 64;
  if (padded == 0) padded = 64;
  void* p = std::aligned_alloc(64, padded);
  if (!p) fail("out of memory allocating ", nbytes, " bytes");
  if (zero) std::memset(p, 0, padded);
  st->data = p;
  st->nbytes = nbytes;
  st->owner = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  return st;
}

// ---------------------------------------------------------------------------------------
static int64_t checked_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s < 0) fail("invalid shape ", shape_str(shape), ": negative size");
    if (s != 0 && n > std::numeric_limits<int64_t>::max() / 8 / s)
      fail("invalid shape ", shape_str(shape), ": too many elements");
    n *= s;
  }
  return n;
}

static Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t s = 1;
  for (int d = (int)shape.size() - 1; d >= 0; --d) { st[d] = s; s *= std::max<int64_t>(shape[d], 1); }
  return st;
}

Tensor Tensor::empty(const Shape& shape, DType dt) {
  int64_t n = checked_numel(shape);
  Tensor t;
  t.st_ = Storage::alloc((size_t)n * dtype_size(dt));
  t.dt_ = dt;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::uninitialized(const Shape& shape, DType dt) {
  int64_t n = checked_numel(shape);
  Tensor t;
  t.st_ = Storage::alloc((size_t)n * dtype_size(dt), /*zero=*/false);
  t.dt_ = dt;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::full(const Shape& shape, float v) {
  Tensor t = empty(shape);
  t.fill_(v);
  return t;
}

Tensor Tensor::from_data(const Shape& shape, const std::vector<float>& values) {
  Tensor t = empty(shape);
  if ((int64_t)values.size() != t.numel())
    fail("tensor of shape ", shape_str(shape), " needs ", t.numel(), " values, got ", values.size());
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size() * 4);
  return t;
}

Tensor Tensor::wrap(std::shared_ptr<Storage> st, DType dt, const Shape& shape, int64_t offset) {
  QF_CHECK(st, "wrap: null storage");
  int64_t n = checked_numel(shape);
  if (offset < 0 || (uint64_t)(offset + n) * dtype_size(dt) > st->nbytes)
    fail("tensor view ", shape_str(shape), " at element ", offset, " exceeds its storage of ", st->nbytes, " bytes");
  Tensor t;
  t.st_ = std::move(st);
  t.dt_ = dt;
  t.off_ = offset;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

int64_t Tensor::size(int d) const {
  if (d < 0 || d >= dim()) fail("dimension ", d, " out of range for a ", dim(), "-d tensor");
  return shape_[d];
}
int64_t Tensor::stride(int d) const {
  if (d < 0 || d >= dim()) fail("dimension ", d, " out of range for a ", dim(), "-d tensor");
  return strides_[d];
}
int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape_) n *= s;
  return st_ ? n : 0;
}

bool Tensor::is_contiguous() const {
  int64_t s = 1;
  for (int d = dim() - 1; d >= 0; --d) {
    if (shape_[d] != 1 && strides_[d] != s) return false;
    s *= shape_[d];
  }
  return true;
}

static void need_defined(const Tensor& t, const char* op) {
  if (!t.defined()) fail(op, ": tensor is undefined");
}

Tensor Tensor::narrow(int d, int64_t start, int64_t len) const {
  need_defined(*this, "narrow");
  int64_t n = size(d);
  if (start < 0 || len < 0 || start + len > n)
    fail("narrow: range [", start, ", ", start + len, ") out of bounds for dimension ", d, " of size ", n);
  Tensor r = *this;
  r.off_ += start * strides_[d];
  r.shape_[d] = len;
  return r;
}

Tensor Tensor::select(int d, int64_t i) const {
  need_defined(*this, "select");
  int64_t n = size(d);
  if (i < 0 || i >= n) fail("select: index ", i, " out of bounds for dimension ", d, " of size ", n);
  Tensor r = *this;
  r.off_ += i * strides_[d];
  r.shape_.erase(r.shape_.begin() + d);
  r.strides_.erase(r.strides_.begin() + d);
  return r;
}

Tensor Tensor::transpose(int d0, int d1) const {
  need_defined(*this, "transpose");
  size(d0), size(d1);  // range checks
  Tensor r = *this;
  std::swap(r.shape_[d0], r.shape_[d1]);
  std::swap(r.strides_[d0], r.strides_[d1]);
  return r;
}

Tensor Tensor::expand(const Shape& shape) const {
  need_defined(*this, "expand");
  const int nd = (int)shape.size(), td = dim();
  if (nd < td) fail("expand: cannot expand ", shape_str(shape_), " to ", shape_str(shape), " (fewer dimensions)");
  Tensor r = *this;
  r.shape_.assign(nd, 0);
  r.strides_.assign(nd, 0);
  for (int i = 0; i < nd; ++i) {
    const int sd = i - (nd - td);  // the source dimension aligned with i (numpy: from the right)
    const int64_t want = shape[i];
    if (sd < 0) {
      if (want < 0) fail("expand: -1 is not allowed for a new leading dimension (", shape_str(shape), ")");
      r.shape_[i] = want;
      continue;
    }
    const int64_t have = shape_[sd];
    if (want == -1 || want == have) {
      r.shape_[i] = have;
      r.strides_[i] = strides_[sd];
    } else if (have == 1 && want >= 0) {
      r.shape_[i] = want;
    } else {
      fail("expand: cannot expand ", shape_str(shape_), " to ", shape_str(shape), " (dimension ", i + 1, ": ", have,
           " to ", want, "; only size-1 dimensions repeat)");
    }
  }
  return r;
}

bool Tensor::is_expanded() const {
  for (int d = 0; d < dim(); ++d)
    if (shape_[d] > 1 && strides_[d] == 0) return true;
  return false;
}

void Tensor::check_writable(const char* op) const {
  if (is_expanded())
    fail(op, ": the tensor is an expanded view (a repeated dimension has stride 0), so one element would be written ",
         "several times; write into a contiguous copy (t:contiguous()) instead");
}

Tensor Tensor::t() const {
  if (dim() != 2) fail("t(): expected a 2-d tensor, got ", dim(), "-d");
  return transpose(0, 1);
}

Tensor Tensor::view(const Shape& shape) const {
  need_defined(*this, "view");
  if (!is_contiguous()) fail("view: tensor of shape ", shape_str(shape_), " is not contiguous (call contiguous() first)");
  Shape s = shape;
  int neg = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      if (neg >= 0) fail("view: more than one -1 in ", shape_str(shape));
      neg = (int)i;
    } else {
      if (s[i] < 0) fail("view: invalid shape ", shape_str(shape));
      known *= s[i];
    }
  }
  if (neg >= 0) {
    if (known == 0 || numel() % known) fail("view: cannot view ", shape_str(shape_), " as ", shape_str(shape));
    s[neg] = numel() / known;
  }
  if (checked_numel(s) != numel()) fail("view: cannot view ", shape_str(shape_), " (", numel(), " elements) as ", shape_str(shape));
  Tensor r = *this;
  r.shape_ = s;
  r.strides_ = contiguous_strides(s);
  return r;
}

Tensor Tensor::contiguous() const {
  if (!defined() || is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  need_defined(*this, "clone");
  Tensor r = empty(shape_, dt_);
  r.copy_(*this);
  return r;
}

Tensor Tensor::to(DType dt) const {
  need_defined(*this, "to");
  Tensor r = empty(shape_, dt);
  r.copy_(*this);
  return r;
}

// ---- element conversion -------------------------------------------------------------
static inline float load_f32(const void* base, DType dt, int64_t off) {
  switch (dt) {
    case DType::F32: return static_cast<const float*>(base)[off];
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(base)[off]);
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(base)[off]);
    case DType::I8: return (float)static_cast<const int8_t*>(base)[off];
    case DType::U8: return (float)static_cast<const uint8_t*>(base)[off];
    case DType::I32: return (float)static_cast<const int32_t*>(base)[off];
  }
  return 0.f;
}

template <class I>
static inline I round_sat(float v, DType dt) {
  if (std::isnan(v)) fail("cannot convert NaN to ", dtype_name(dt));
  double r = std::nearbyint((double)v);  // default rounding mode: half to even
  const double lo = (double)std::numeric_limits<I>::min(), hi = (double)std::numeric_limits<I>::max();
  return (I)(r < lo ? lo : r > hi ? hi : r);
}

static inline void store_f32(void* base, DType dt, int64_t off, float v) {
  switch (dt) {
    case DType::F32: static_cast<float*>(base)[off] = v; break;
    case DType::F16: static_cast<uint16_t*>(base)[off] = f32_to_f16(v); break;
    case DType::BF16: static_cast<uint16_t*>(base)[off] = f32_to_bf16(v); break;
    case DType::I8: static_cast<int8_t*>(base)[off] = round_sat<int8_t>(v, dt); break;
    case DType::U8: static_cast<uint8_t*>(base)[off] = round_sat<uint8_t>(v, dt); break;
    case DType::I32: static_cast<int32_t*>(base)[off] = round_sat<int32_t>(v, dt); break;
  }
}

void Tensor::copy_(const Tensor& src) {
  need_defined(*this, "copy");
  check_writable("copy");
  need_defined(src, "copy");
  if (src.shape_ != shape_)
    fail("copy: shape mismatch, destination ", shape_str(shape_), " vs source ", shape_str(src.shape_));
  void* db = st_->data;
  const void* sb = src.st_->data;
  // Source and destination may overlap (views of one storage): stage through a buffer.
  const bool alias = st_ == src.st_;
  if (dt_ == src.dt_ && dt_ == DType::I32 && !alias) {  // exact integer path (no f32 round trip)
    std::vector<int64_t> so(numel());
    for_each_offset(src, [&](int64_t k, int64_t o) { so[k] = o; });
    for_each_offset(*this, [&](int64_t k, int64_t o) { static_cast<int32_t*>(db)[o] = static_cast<const int32_t*>(sb)[so[k]]; });
    return;
  }
  if (dt_ == src.dt_ && !alias && is_contiguous() && src.is_contiguous()) {
    std::memcpy(raw(), src.raw(), (size_t)numel() * dtype_size(dt_));
    return;
  }
  std::vector<float> buf((size_t)numel());
  const DType sdt = src.dt_;
  for_each_offset(src, [&](int64_t k, int64_t o) { buf[k] = load_f32(sb, sdt, o); });
  const DType ddt = dt_;
  for_each_offset(*this, [&](int64_t k, int64_t o) { store_f32(db, ddt, o, buf[k]); });
}

void Tensor::fill_(float v) {
  need_defined(*this, "fill");
  check_writable("fill");
  void* db = st_->data;
  const DType ddt = dt_;
  for_each_offset(*this, [&](int64_t, int64_t o) { store_f32(db, ddt, o, v); });
}

int64_t Tensor::elem_offset(const int64_t* idx, int n) const {
  need_defined(*this, "index");
  if (n != dim()) fail("index: expected ", dim(), " indices for a tensor of shape ", shape_str(shape_), ", got ", n);
  int64_t o = off_;
  for (int d = 0; d < n; ++d) {
    if (idx[d] < 0 || idx[d] >= shape_[d])
      fail("index ", idx[d], " out of bounds for dimension ", d, " of size ", shape_[d], " (shape ", shape_str(shape_), ")");
    o += idx[d] * strides_[d];
  }
  return o;
}

float Tensor::get(const int64_t* idx, int n) const { return load_f32(st_ ? st_->data : nullptr, dt_, elem_offset(idx, n)); }
void Tensor::set(const int64_t* idx, int n, float v) {
  check_writable("set");
  store_f32(st_->data, dt_, elem_offset(idx, n), v);
}

float Tensor::item() const {
  need_defined(*this, "item");
  if (numel() != 1) fail("item: tensor of shape ", shape_str(shape_), " has ", numel(), " elements, expected 1");
  return load_f32(st_->data, dt_, off_);
}

std::vector<float> Tensor::to_vector() const {
  std::vector<float> v((size_t)numel());
  if (!defined()) return v;
  const void* sb = st_->data;
  for_each_offset(*this, [&](int64_t k, int64_t o) { v[k] = load_f32(sb, dt_, o); });
  return v;
}

void* Tensor::raw() const {
  need_defined(*this, "data");
  return static_cast<char*>(st_->data) + off_ * (int64_t)dtype_size(dt_);
}

void Tensor::check_ctype(size_t sz, int tag) const {
  need_defined(*this, "data");
  bool ok = tag == (int)dt_ || (tag == -16 && (dt_ == DType::F16 || dt_ == DType::BF16));
  if (!ok || sz != dtype_size(dt_)) fail("tensor has dtype ", dtype_name(dt_), ", not the requested element type");
}

MatMap Tensor::mat() const {
  if (dim() != 2) fail("expected a 2-d tensor, got shape ", shape_str(shape_));
  float* p = f32();
  return MatMap(p, shape_[0], shape_[1], Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(strides_[0], strides_[1]));
}

CMatMap Tensor::cmat() const {
  if (dim() != 2) fail("expected a 2-d tensor, got shape ", shape_str(shape_));
  const float* p = f32();
  return CMatMap(p, shape_[0], shape_[1], Eigen::Stride<Eigen::Dynamic, Eigen::Dynamic>(strides_[0], strides_[1]));
}

}  // namespace qf
