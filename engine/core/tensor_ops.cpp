#include "core/tensor_ops.h"

#include <cmath>
#include <limits>

namespace qf {

const char* binop_name(BinOp op) {
  switch (op) {
    case BinOp::Add: return "add";
    case BinOp::Sub: return "sub";
    case BinOp::Mul: return "mul";
    case BinOp::Div: return "div";
  }
  return "?";
}

static void need_f32(const Tensor& t, const char* fn) {
  if (!t.defined()) fail(fn, ": tensor is undefined");
  if (t.dtype() != DType::F32) fail(fn, ": tensor has dtype ", dtype_name(t.dtype()), ": convert with :to('f32') first");
}
static void need_f32_dst(const Tensor& t, const char* fn) {
  need_f32(t, fn);
  t.check_writable(fn);
}

static inline float apply1(BinOp op, float a, float b) {
  switch (op) {
    case BinOp::Add: return a + b;
    case BinOp::Sub: return a - b;
    case BinOp::Mul: return a * b;
    case BinOp::Div: return a / b;
  }
  return a;
}

void apply_(Tensor& t, BinOp op, float s) {
  need_f32_dst(t, binop_name(op));
  float* b = static_cast<float*>(t.storage()->data);
  for_each_offset(t, [&](int64_t, int64_t o) { b[o] = apply1(op, b[o], s); });
}

void apply_(Tensor& t, BinOp op, const Tensor& x, float alpha) {
  const char* fn = binop_name(op);
  need_f32_dst(t, fn);
  need_f32(x, fn);
  if (t.shape() != x.shape()) fail(fn, ": shape mismatch ", shape_str(t.shape()), " vs ", shape_str(x.shape()));
  if (!t.same_storage(x) && t.is_contiguous() && x.is_contiguous()) {
    float* d = t.f32();
    const float* s = x.f32();
    const int64_t n = t.numel();
    for (int64_t k = 0; k < n; ++k) d[k] = apply1(op, d[k], alpha * s[k]);
    return;
  }
  const std::vector<float> xv = x.to_vector();  // staged: overlapping views stay correct
  float* b = static_cast<float*>(t.storage()->data);
  for_each_offset(t, [&](int64_t k, int64_t o) { b[o] = apply1(op, b[o], alpha * xv[k]); });
}

void neg_(Tensor& t) {
  need_f32_dst(t, "neg");
  float* b = static_cast<float*>(t.storage()->data);
  for_each_offset(t, [&](int64_t, int64_t o) { b[o] = -b[o]; });
}

Tensor matmul(const Tensor& a, const Tensor& b) {
  need_f32(a, "matmul");
  need_f32(b, "matmul");
  if (a.dim() != 2 || b.dim() != 2 || a.size(1) != b.size(0))
    fail("matmul: cannot multiply ", shape_str(a.shape()), " by ", shape_str(b.shape()), " (expected [m, k] x [k, n])");
  Tensor r = Tensor::empty({a.size(0), b.size(1)});
  if (r.numel() > 0) r.mat().noalias() = a.contiguous().cmat() * b.contiguous().cmat();
  return r;
}

double TensorStats::norm() const { return std::sqrt(sumsq); }

TensorStats tensor_stats(const Tensor& t) {
  if (!t.defined()) fail("tensor is undefined");
  TensorStats s;
  s.min = std::numeric_limits<float>::infinity();
  s.max = -std::numeric_limits<float>::infinity();
  bool nan = false;
  auto add = [&](float v) {
    s.sum += v;
    s.sumsq += (double)v * v;
    nan = nan || std::isnan(v);
    s.absmax = std::max(s.absmax, (double)std::fabs(v));
    s.min = std::min(s.min, v);
    s.max = std::max(s.max, v);
  };
  if (t.dtype() == DType::F32) {
    const float* b = static_cast<const float*>(t.storage()->data);
    for_each_offset(t, [&](int64_t, int64_t o) { add(b[o]); });
  } else {
    for (float v : t.to_vector()) add(v);
  }
  if (nan) s.min = s.max = std::numeric_limits<float>::quiet_NaN(), s.absmax = std::numeric_limits<double>::quiet_NaN();
  s.n = t.numel();
  return s;
}

static void check_p(double p, const char* fn) {
  if (!(p > 0)) fail(fn, ": p must be > 0 (or inf), got ", p);
}

// sum |x|^p with p = 1, 2 special-cased (exact, fast); the caller takes the 1/p power.
struct PowSum {
  double p;
  double operator()(double acc, float v) const {
    const double a = std::fabs((double)v);
    if (p == 1) return acc + a;
    if (p == 2) return acc + a * a;
    if (std::isinf(p)) return std::isnan(a) || std::isnan(acc) ? std::numeric_limits<double>::quiet_NaN() : std::max(acc, a);
    return acc + std::pow(a, p);
  }
  double finish(double acc) const {
    if (p == 1 || std::isinf(p)) return acc;
    if (p == 2) return std::sqrt(acc);
    return std::pow(acc, 1.0 / p);
  }
};

double norm_all(const Tensor& t, double p) {
  if (!t.defined()) fail("norm: tensor is undefined");
  check_p(p, "norm");
  const PowSum ps{p};
  double acc = 0;
  const Tensor f = t.dtype() == DType::F32 ? t : t.to(DType::F32);
  const float* b = static_cast<const float*>(f.storage()->data);
  for_each_offset(f, [&](int64_t, int64_t o) { acc = ps(acc, b[o]); });
  return ps.finish(acc);
}

namespace {

// One reduction along d: the f32 source, the storage offset of element 0 along d of every
// output element (row-major over the other dimensions), the length and stride along d.
struct DimPlan {
  Tensor src;
  Shape out_shape;
  std::vector<int64_t> base;
  int64_t len = 0, stride = 0;
};

DimPlan plan_dim(const Tensor& t, int d, bool keepdim, const char* fn, bool empty_ok) {
  if (!t.defined()) fail(fn, ": tensor is undefined");
  if (d < 0 || d >= t.dim())
    fail(fn, ": dimension ", d + 1, " out of range for a ", t.dim(), "-d tensor of shape ", shape_str(t.shape()));
  DimPlan p;
  p.len = t.size(d);
  if (p.len == 0 && !empty_ok)
    fail(fn, ": dimension ", d + 1, " of shape ", shape_str(t.shape()), " is empty");
  p.out_shape = t.shape();
  if (keepdim) p.out_shape[d] = 1;
  else p.out_shape.erase(p.out_shape.begin() + d);
  if (p.len == 0) return p;
  p.src = t.dtype() == DType::F32 ? t : t.to(DType::F32);
  p.stride = p.src.stride(d);
  const Tensor first = p.src.select(d, 0);
  p.base.resize((size_t)first.numel());
  for_each_offset(first, [&](int64_t k, int64_t o) { p.base[(size_t)k] = o; });
  return p;
}

// out[k] = finish(fold over the values along d), one output element per iteration.
template <class Fold>
Tensor reduce_plan(const DimPlan& p, Fold&& fold) {
  Tensor r = Tensor::empty(p.out_shape);
  if (p.len == 0) return r;  // zeros
  float* out = r.f32();
  const float* b = static_cast<const float*>(p.src.storage()->data);
  const int64_t n = (int64_t)p.base.size();
#pragma omp parallel for schedule(static) if (n * p.len > (1 << 16))
  for (int64_t k = 0; k < n; ++k) out[k] = (float)fold(b + p.base[(size_t)k], p.len, p.stride);
  return r;
}

ArgExtremum extremum_dim(const Tensor& t, int d, bool keepdim, bool is_max) {
  const DimPlan p = plan_dim(t, d, keepdim, is_max ? "max" : "min", false);
  ArgExtremum r{Tensor::empty(p.out_shape), Tensor::empty(p.out_shape, DType::I32)};
  float* val = r.values.f32();
  int32_t* idx = r.indices.data<int32_t>();
  const float* b = static_cast<const float*>(p.src.storage()->data);
  const int64_t n = (int64_t)p.base.size();
#pragma omp parallel for schedule(static) if (n * p.len > (1 << 16))
  for (int64_t k = 0; k < n; ++k) {
    const float* x = b + p.base[(size_t)k];
    float best = x[0];
    int64_t at = 0;
    for (int64_t i = 1; i < p.len && !std::isnan(best); ++i) {
      const float v = x[i * p.stride];
      if (std::isnan(v) || (is_max ? v > best : v < best)) best = v, at = i;  // strict: first index on ties
    }
    val[k] = best;
    idx[k] = (int32_t)at;
  }
  return r;
}

}  // namespace

Tensor sum_dim(const Tensor& t, int d, bool keepdim) {
  return reduce_plan(plan_dim(t, d, keepdim, "sum", true), [](const float* x, int64_t len, int64_t st) {
    double acc = 0;
    for (int64_t i = 0; i < len; ++i) acc += x[i * st];
    return acc;
  });
}

Tensor mean_dim(const Tensor& t, int d, bool keepdim) {
  return reduce_plan(plan_dim(t, d, keepdim, "mean", false), [](const float* x, int64_t len, int64_t st) {
    double acc = 0;
    for (int64_t i = 0; i < len; ++i) acc += x[i * st];
    return acc / (double)len;
  });
}

Tensor norm_dim(const Tensor& t, double p, int d, bool keepdim) {
  check_p(p, "norm");
  const PowSum ps{p};
  return reduce_plan(plan_dim(t, d, keepdim, "norm", true), [&ps](const float* x, int64_t len, int64_t st) {
    double acc = 0;
    for (int64_t i = 0; i < len; ++i) acc = ps(acc, x[i * st]);
    return ps.finish(acc);
  });
}

ArgExtremum max_dim(const Tensor& t, int d, bool keepdim) { return extremum_dim(t, d, keepdim, true); }
ArgExtremum min_dim(const Tensor& t, int d, bool keepdim) { return extremum_dim(t, d, keepdim, false); }

}  // namespace qf
