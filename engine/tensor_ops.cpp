#include "tensor_ops.h"

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
  need_f32(t, binop_name(op));
  float* b = static_cast<float*>(t.storage()->data);
  for_each_offset(t, [&](int64_t, int64_t o) { b[o] = apply1(op, b[o], s); });
}

void apply_(Tensor& t, BinOp op, const Tensor& x, float alpha) {
  const char* fn = binop_name(op);
  need_f32(t, fn);
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
  need_f32(t, "neg");
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
  auto add = [&](float v) {
    s.sum += v;
    s.sumsq += (double)v * v;
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
  s.n = t.numel();
  return s;
}

}  // namespace qf
