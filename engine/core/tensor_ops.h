// qforge — elementwise math, reductions and matmul on f32 tensors (any strides).
// Sums accumulate in f64. Shapes must match exactly (no broadcasting); errors name
// the operation and both shapes.
#pragma once
#include "core/tensor.h"

namespace qf {

enum class BinOp { Add, Sub, Mul, Div };
const char* binop_name(BinOp op);  // "add", "sub", "mul", "div"

void apply_(Tensor& t, BinOp op, float s);                   // t = t op s
void apply_(Tensor& t, BinOp op, const Tensor& x, float alpha = 1.f);  // t = t op (alpha·x); x may alias t
void neg_(Tensor& t);

Tensor matmul(const Tensor& a, const Tensor& b);  // [m, k] x [k, n] -> [m, n]

struct TensorStats {
  double sum = 0, sumsq = 0, absmax = 0;
  float min = 0, max = 0;
  int64_t n = 0;
  double mean() const { return n ? sum / (double)n : 0.0; }
  double norm() const;  // Frobenius
};
// Any dtype. min/max/absmax are NaN when any value is NaN (and +-inf/0 for an empty tensor:
// callers reject empty tensors).
TensorStats tensor_stats(const Tensor& t);
// The p-norm of all values, (sum |x|^p)^(1/p) accumulated in f64 in row-major order; p > 0,
// p = inf is the largest |x|. p = 2 equals tensor_stats(t).norm().
double norm_all(const Tensor& t, double p);

// ---- reductions along one dimension d (0-based), any dtype (read as f32), any strides ----
// The result (f32) has t's shape without dimension d, or with size 1 there when keepdim.
// Each output element is accumulated by one thread in index order along d (sum/mean/norm in
// f64, rounded to f32 once): results do not depend on the thread count. A size-0 dimension d
// gives 0 for sum and norm and is an error for mean, min and max.
Tensor sum_dim(const Tensor& t, int d, bool keepdim = false);
Tensor mean_dim(const Tensor& t, int d, bool keepdim = false);
Tensor norm_dim(const Tensor& t, double p, int d, bool keepdim = false);  // p as in norm_all
// Values and 0-based indices (i32) of the extremum along d: the first index on ties; a NaN
// wins (propagates), at its first index.
struct ArgExtremum {
  Tensor values, indices;
};
ArgExtremum max_dim(const Tensor& t, int d, bool keepdim = false);
ArgExtremum min_dim(const Tensor& t, int d, bool keepdim = false);

}  // namespace qf
