#include "core/tensor_math.h"

#include <array>
#include <cmath>

#include "core/parallel.h"

namespace qf {

// ---- names (indexed by the enums) ----
static const char* const kUnaryNames[] = {"abs",  "sign",  "sqrt",  "rsqrt",  "exp",        "log",     "floor",
                                          "ceil", "round", "neg",   "square", "reciprocal", "sigmoid", "tanh"};
static const char* const kBinaryNames[] = {"add", "sub", "mul", "div", "pow", "cmin", "cmax", "eq",
                                           "ne",  "lt",  "le",  "gt",  "ge",  "logical_and", "logical_or"};
const char* unary_name(UnaryOp op) { return kUnaryNames[(int)op]; }
const char* binary_name(BinaryOp op) { return kBinaryNames[(int)op]; }
bool binary_is_mask(BinaryOp op) { return op >= BinaryOp::Eq; }

Shape broadcast_shapes(const Shape& a, const Shape& b, const char* fn) {
  const size_t n = std::max(a.size(), b.size());
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {  // i counts from the last dimension
    const int64_t x = i < a.size() ? a[a.size() - 1 - i] : 1, y = i < b.size() ? b[b.size() - 1 - i] : 1;
    if (x != y && x != 1 && y != 1)
      fail(fn, ": shapes ", shape_str(a), " and ", shape_str(b), " do not broadcast (dimension ", n - i, " of the result: ",
           x, " vs ", y, "; numpy's rule: sizes equal or one of them 1, aligned at the last dimension)");
    out[n - 1 - i] = x == 1 ? y : x;
  }
  return out;
}

// ---- the strided loop ----
// An operand read through strides over the output shape (0 along broadcast dimensions): f32, or u8
// for a mask read in place (where's first operand), anything else converted to f32 first.
struct In {
  const void* base = nullptr;  // element 0 of the view
  Shape strides;
  Tensor keep;  // keeps a converted copy alive
};

static In make_in(const Tensor& t, const Shape& out, const char* fn, bool u8_ok = false) {
  if (!t.defined()) fail(fn, ": tensor is undefined");
  In in;
  in.keep = t.dtype() == DType::F32 || (u8_ok && t.dtype() == DType::U8) ? t : t.to(DType::F32);
  in.base = in.keep.raw();
  const int nd = (int)out.size(), td = in.keep.dim();
  in.strides.assign(nd, 0);
  for (int i = 0; i < td; ++i) {
    const int od = nd - td + i;
    if (in.keep.size(i) == out[od]) in.strides[od] = in.keep.stride(i);
    else if (in.keep.size(i) != 1) fail(fn, ": cannot broadcast ", shape_str(t.shape()), " to ", shape_str(out));
  }
  return in;
}

// One run of n outputs: operand k advances by s[k] ∈ {0, 1} (a broadcast scalar or a contiguous
// run) when `unit`, else by its stride. The common cases are spelled out so the compiler
// vectorizes them: every operand contiguous, or some held constant along the run.
template <class O, class T0, size_t N, class F>
static inline void run_row(O* o, int64_t os, const std::array<const void*, N>& p, const std::array<int64_t, N>& is, int64_t n, F f) {
  const T0* p0 = static_cast<const T0*>(p[0]);
  auto at = [&](size_t k, int64_t j) { return static_cast<const float*>(p[k])[j * is[k]]; };
  bool unit = os == 1;
  for (size_t k = 0; k < N; ++k) unit = unit && (is[k] == 0 || is[k] == 1);
  if (!unit) {
    for (int64_t j = 0; j < n; ++j) {
      if constexpr (N == 1) o[j * os] = f((float)p0[j * is[0]]);
      else if constexpr (N == 2) o[j * os] = f((float)p0[j * is[0]], at(1, j));
      else o[j * os] = f((float)p0[j * is[0]], at(1, j), at(2, j));
    }
    return;
  }
  if constexpr (N == 1) {
    if (is[0] == 0) { const float x = (float)p0[0]; for (int64_t j = 0; j < n; ++j) o[j] = f(x); }
    else for (int64_t j = 0; j < n; ++j) o[j] = f((float)p0[j]);
  } else if constexpr (N == 2) {
    const float* p1 = static_cast<const float*>(p[1]);
    if (is[0] == 1 && is[1] == 1) for (int64_t j = 0; j < n; ++j) o[j] = f((float)p0[j], p1[j]);
    else if (is[0] == 1) { const float y = p1[0]; for (int64_t j = 0; j < n; ++j) o[j] = f((float)p0[j], y); }
    else if (is[1] == 1) { const float x = (float)p0[0]; for (int64_t j = 0; j < n; ++j) o[j] = f(x, p1[j]); }
    else { const O v = f((float)p0[0], p1[0]); for (int64_t j = 0; j < n; ++j) o[j] = v; }
  } else {
    const float* p1 = static_cast<const float*>(p[1]);
    const float* p2 = static_cast<const float*>(p[2]);
    if (is[0] == 1 && is[1] == 1 && is[2] == 1) for (int64_t j = 0; j < n; ++j) o[j] = f((float)p0[j], p1[j], p2[j]);
    else if (is[0] == 1 && is[1] == 1) { const float z = p2[0]; for (int64_t j = 0; j < n; ++j) o[j] = f((float)p0[j], p1[j], z); }
    else if (is[0] == 1 && is[2] == 1) { const float y = p1[0]; for (int64_t j = 0; j < n; ++j) o[j] = f((float)p0[j], y, p2[j]); }
    else if (is[0] == 1) { const float y = p1[0], z = p2[0]; for (int64_t j = 0; j < n; ++j) o[j] = f((float)p0[j], y, z); }
    else for (int64_t j = 0; j < n; ++j) o[j] = f((float)p0[j * is[0]], p1[j * is[1]], p2[j * is[2]]);
  }
}

// out[idx] = f(in_0[idx], ..., in_{N-1}[idx]) over `shape`; `out` is element 0 of a view with
// strides `ostr`; operand 0 is of type T0 (f32, or u8 for a mask), the others f32. Work items are
// (outer row, chunk of the last dimension) pairs, fixed in size, so any thread count computes the
// same elements the same way.
template <class O, size_t N, class F, class T0 = float>
static void for_each_bcast(const Shape& shape, O* out, const Shape& ostr, const std::array<const In*, N>& in, F f) {
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  if (numel == 0) return;
  const int nd = (int)shape.size();
  const int64_t inner = nd ? shape[nd - 1] : 1, rows = numel / inner;
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (inner + kChunk - 1) / kChunk, items = rows * chunks;
  const int64_t os = nd ? ostr[nd - 1] : 0;
  std::array<int64_t, N> is{};
  for (size_t k = 0; k < N; ++k) is[k] = nd ? in[k]->strides[nd - 1] : 0;
#pragma omp parallel for schedule(static) if (worth_parallel_stream(numel))
  for (int64_t it = 0; it < items; ++it) {
    const int64_t r = it / chunks, c0 = (it % chunks) * kChunk, c1 = std::min(inner, c0 + kChunk);
    int64_t oo = 0;
    std::array<int64_t, N> io{};
    for (int64_t d = nd - 2, rem = r; d >= 0; --d) {  // row index → offsets
      const int64_t i = rem % shape[d];
      rem /= shape[d];
      oo += i * ostr[d];
      for (size_t k = 0; k < N; ++k) io[k] += i * in[k]->strides[d];
    }
    std::array<const void*, N> p;
    for (size_t k = 0; k < N; ++k) {
      const int64_t off = io[k] + c0 * is[k];
      p[k] = k == 0 ? (const void*)(static_cast<const T0*>(in[0]->base) + off) : (const void*)(static_cast<const float*>(in[k]->base) + off);
    }
    run_row<O, T0, N>(out + oo + c0 * os, os, p, is, c1 - c0, f);
  }
}

static void need_f32_dst(const Tensor& t, const char* fn) {
  if (!t.defined()) fail(fn, ": tensor is undefined");
  if (t.dtype() != DType::F32)
    fail(fn, ": in-place math needs an f32 tensor, got ", dtype_name(t.dtype()), " (convert with :to('f32'), or use qf.", fn, ")");
  t.check_writable(fn);
}

// ---- unary ----
template <class G>
static void dispatch_unary(UnaryOp op, G&& go) {
  switch (op) {
    case UnaryOp::Abs: return go([](float x) { return std::fabs(x); });
    case UnaryOp::Sign: return go([](float x) { return x > 0 ? 1.f : x < 0 ? -1.f : x; });  // keeps ±0 and NaN
    case UnaryOp::Sqrt: return go([](float x) { return std::sqrt(x); });
    case UnaryOp::Rsqrt: return go([](float x) { return 1.f / std::sqrt(x); });
    case UnaryOp::Exp: return go([](float x) { return std::exp(x); });
    case UnaryOp::Log: return go([](float x) { return std::log(x); });
    case UnaryOp::Floor: return go([](float x) { return std::floor(x); });
    case UnaryOp::Ceil: return go([](float x) { return std::ceil(x); });
    case UnaryOp::Round: return go([](float x) { return std::nearbyint(x); });  // half to even
    case UnaryOp::Neg: return go([](float x) { return -x; });
    case UnaryOp::Square: return go([](float x) { return x * x; });
    case UnaryOp::Reciprocal: return go([](float x) { return 1.f / x; });
    case UnaryOp::Sigmoid: return go([](float x) { return 1.f / (1.f + std::exp(-x)); });
    case UnaryOp::Tanh: return go([](float x) { return std::tanh(x); });
  }
  fail("unary: unknown op");
}

// Contiguous f32 in and out: Eigen's vectorized array functions (its exp/log/tanh/logistic are SIMD
// polynomials, several times faster than libm per element), over fixed chunks.
// Only for the ops eigen_unary() names.
static void unary_contiguous(UnaryOp op, const float* in, float* out, int64_t n) {
  using A = Eigen::Array<float, Eigen::Dynamic, 1>;
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) if (worth_parallel_stream(n))
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk, len = std::min(kChunk, n - i0);
    Eigen::Map<const A> x(in + i0, len);
    Eigen::Map<A> y(out + i0, len);
    switch (op) {
      case UnaryOp::Exp: y = x.exp(); break;
      case UnaryOp::Log: y = x.log(); break;
      case UnaryOp::Tanh: y = x.tanh(); break;
      case UnaryOp::Sigmoid: y = x.logistic(); break;
      default: break;  // not reached: callers check eigen_unary(op)
    }
  }
}
static bool eigen_unary(UnaryOp op) {
  // Not sqrt/rsqrt: Eigen 3.4's fast AVX-512 sqrt gives NaN for +inf (x·rsqrt(x) = inf·0).
  return op == UnaryOp::Exp || op == UnaryOp::Log || op == UnaryOp::Tanh || op == UnaryOp::Sigmoid;
}

Tensor unary(const Tensor& t, UnaryOp op) {
  const char* fn = unary_name(op);
  if (eigen_unary(op) && t.defined() && t.dtype() == DType::F32 && t.is_contiguous()) {
    Tensor r = Tensor::uninitialized(t.shape());
    unary_contiguous(op, t.f32(), r.f32(), t.numel());
    return r;
  }
  const In a = make_in(t, t.shape(), fn);
  Tensor r = Tensor::uninitialized(t.shape());
  dispatch_unary(op, [&](auto f) { for_each_bcast<float, 1>(t.shape(), r.f32(), r.strides(), {&a}, f); });
  return r;
}

void unary_(Tensor& t, UnaryOp op) {
  const char* fn = unary_name(op);
  need_f32_dst(t, fn);
  if (eigen_unary(op) && t.is_contiguous()) {
    unary_contiguous(op, t.f32(), t.f32(), t.numel());
    return;
  }
  const In a = make_in(t, t.shape(), fn);  // reads and writes the same element: no staging needed
  float* o = static_cast<float*>(t.raw());
  dispatch_unary(op, [&](auto f) { for_each_bcast<float, 1>(t.shape(), o, t.strides(), {&a}, f); });
}

// ---- binary ----
template <class G>
static void dispatch_binary(BinaryOp op, G&& go) {
  using u8 = uint8_t;
  switch (op) {
    case BinaryOp::Add: return go([](float a, float b) { return a + b; });
    case BinaryOp::Sub: return go([](float a, float b) { return a - b; });
    case BinaryOp::Mul: return go([](float a, float b) { return a * b; });
    case BinaryOp::Div: return go([](float a, float b) { return a / b; });
    case BinaryOp::Pow: return go([](float a, float b) { return std::pow(a, b); });
    case BinaryOp::Min: return go([](float a, float b) { return (a < b || std::isnan(a)) ? a : b; });  // NaN propagates
    case BinaryOp::Max: return go([](float a, float b) { return (a > b || std::isnan(a)) ? a : b; });
    case BinaryOp::Eq: return go([](float a, float b) { return (u8)(a == b); });
    case BinaryOp::Ne: return go([](float a, float b) { return (u8)(a != b); });
    case BinaryOp::Lt: return go([](float a, float b) { return (u8)(a < b); });
    case BinaryOp::Le: return go([](float a, float b) { return (u8)(a <= b); });
    case BinaryOp::Gt: return go([](float a, float b) { return (u8)(a > b); });
    case BinaryOp::Ge: return go([](float a, float b) { return (u8)(a >= b); });
    case BinaryOp::And: return go([](float a, float b) { return (u8)(a != 0 && b != 0); });
    case BinaryOp::Or: return go([](float a, float b) { return (u8)(a != 0 || b != 0); });
  }
  fail("binary: unknown op");
}

static Tensor scalar_tensor(float s) { return Tensor::full({}, s); }

Tensor binary(const Tensor& a, const Tensor& b, BinaryOp op) {
  const char* fn = binary_name(op);
  if (!a.defined() || !b.defined()) fail(fn, ": tensor is undefined");
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), fn);
  const In x = make_in(a, shape, fn), y = make_in(b, shape, fn);
  Tensor r = Tensor::uninitialized(shape, binary_is_mask(op) ? DType::U8 : DType::F32);
  dispatch_binary(op, [&](auto f) {
    using R = decltype(f(0.f, 0.f));
    for_each_bcast<R, 2>(shape, static_cast<R*>(r.raw()), r.strides(), {&x, &y}, f);
  });
  return r;
}
Tensor binary(const Tensor& a, float s, BinaryOp op) { return binary(a, scalar_tensor(s), op); }
Tensor binary(float s, const Tensor& b, BinaryOp op) { return binary(scalar_tensor(s), b, op); }

void binary_(Tensor& a, const Tensor& b, BinaryOp op) {
  const char* fn = binary_name(op);
  need_f32_dst(a, fn);
  if (binary_is_mask(op)) fail(fn, ": gives a u8 mask and has no in-place form");
  if (!b.defined()) fail(fn, ": tensor is undefined");
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), fn);
  if (shape != a.shape())
    fail(fn, ": in place, the result must keep the shape ", shape_str(a.shape()), ", but with ", shape_str(b.shape()),
         " it broadcasts to ", shape_str(shape));
  // b sharing a's storage may overlap it element for element in another order: stage it.
  const Tensor bb = b.same_storage(a) ? b.clone() : b;
  const In x = make_in(a, shape, fn), y = make_in(bb, shape, fn);
  float* o = static_cast<float*>(a.raw());
  dispatch_binary(op, [&](auto f) {
    if constexpr (std::is_same_v<decltype(f(0.f, 0.f)), float>) for_each_bcast<float, 2>(shape, o, a.strides(), {&x, &y}, f);
  });
}
void binary_(Tensor& a, float s, BinaryOp op) { binary_(a, scalar_tensor(s), op); }

// ---- others ----
Tensor where(const Tensor& mask, const Tensor& a, const Tensor& b) {
  const char* fn = "where";
  if (!mask.defined() || !a.defined() || !b.defined()) fail(fn, ": tensor is undefined");
  const Shape shape = broadcast_shapes(broadcast_shapes(mask.shape(), a.shape(), fn), b.shape(), fn);
  const In m = make_in(mask, shape, fn, /*u8_ok=*/true), x = make_in(a, shape, fn), y = make_in(b, shape, fn);
  Tensor r = Tensor::uninitialized(shape);
  auto pick = [](float c, float p, float q) { return c != 0 ? p : q; };
  if (m.keep.dtype() == DType::U8) for_each_bcast<float, 3, decltype(pick), uint8_t>(shape, r.f32(), r.strides(), {&m, &x, &y}, pick);
  else for_each_bcast<float, 3>(shape, r.f32(), r.strides(), {&m, &x, &y}, pick);
  return r;
}
Tensor where(const Tensor& mask, float a, float b) { return where(mask, scalar_tensor(a), scalar_tensor(b)); }

static void check_clamp(float lo, float hi) {
  if (std::isnan(lo) || std::isnan(hi)) fail("clamp: a bound is NaN");
  if (lo > hi) fail("clamp: lower bound ", lo, " is above upper bound ", hi);
}
Tensor clamp(const Tensor& t, float lo, float hi) {
  check_clamp(lo, hi);
  Tensor r = Tensor::uninitialized(t.shape());
  const In a = make_in(t, t.shape(), "clamp");
  for_each_bcast<float, 1>(t.shape(), r.f32(), r.strides(), {&a},
                           [lo, hi](float x) { return x < lo ? lo : x > hi ? hi : x; });
  return r;
}
void clamp_(Tensor& t, float lo, float hi) {
  check_clamp(lo, hi);
  need_f32_dst(t, "clamp");
  const In a = make_in(t, t.shape(), "clamp");
  for_each_bcast<float, 1>(t.shape(), static_cast<float*>(t.raw()), t.strides(), {&a},
                           [lo, hi](float x) { return x < lo ? lo : x > hi ? hi : x; });
}

template <class F>
static Tensor mask_of(const Tensor& t, const char* fn, F f) {
  const In a = make_in(t, t.shape(), fn);
  Tensor r = Tensor::uninitialized(t.shape(), DType::U8);
  for_each_bcast<uint8_t, 1>(t.shape(), r.data<uint8_t>(), r.strides(), {&a}, f);
  return r;
}
Tensor isnan_mask(const Tensor& t) { return mask_of(t, "isnan", [](float x) { return (uint8_t)std::isnan(x); }); }
Tensor isfinite_mask(const Tensor& t) { return mask_of(t, "isfinite", [](float x) { return (uint8_t)std::isfinite(x); }); }
Tensor logical_not(const Tensor& t) { return mask_of(t, "logical_not", [](float x) { return (uint8_t)(x == 0); }); }

bool any_nonzero(const Tensor& t) {
  if (!t.defined()) fail("any: tensor is undefined");
  const std::vector<float> v = t.to_vector();
  for (float x : v)
    if (x != 0) return true;
  return false;
}
bool all_nonzero(const Tensor& t) {
  if (!t.defined()) fail("all: tensor is undefined");
  const std::vector<float> v = t.to_vector();
  for (float x : v)
    if (x == 0) return false;
  return true;
}

}  // namespace qf
