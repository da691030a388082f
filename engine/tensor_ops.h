// qforge — elementwise math, reductions and matmul on f32 tensors (any strides).
// Reductions accumulate in f64. Shapes must match exactly (no broadcasting); errors name
// the operation and both shapes.
#pragma once
#include "tensor.h"

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
TensorStats tensor_stats(const Tensor& t);  // any dtype; min/max/absmax need n > 0 (else an error)

}  // namespace qf
