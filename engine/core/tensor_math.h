// qforge — elementwise math on tensors: unary functions, binary operations and comparisons with
// broadcasting, where, clamp (docs/api/tensor_math.md).
//
// Broadcasting follows numpy's rule: shapes are aligned at their last dimension, a missing
// leading dimension counts as size 1, and each pair of sizes must be equal or one of them 1
// (that operand is repeated along it). [4096, 4096] with [4096, 1] (a column) or [4096] (a row)
// broadcasts to [4096, 4096]; [3] with [4] is an error naming both shapes.
//
// Operands of any dtype are read as f32; results are f32, except comparisons, isnan/isfinite
// and logical ops, which give u8 masks (1 true, 0 false). In-place forms need an f32 destination
// whose shape is the broadcast shape. Arithmetic is IEEE: NaN propagates, log(-1) is NaN,
// 1/0 is inf — callers check with isfinite. Every element is computed independently, so the
// results do not depend on the thread count.
#pragma once
#include "core/tensor.h"

namespace qf {

// ---- unary functions ----
enum class UnaryOp { Abs, Sign, Sqrt, Rsqrt, Exp, Log, Floor, Ceil, Round, Neg, Square, Reciprocal, Sigmoid, Tanh };
const char* unary_name(UnaryOp op);  // "abs", "sign", ...
Tensor unary(const Tensor& t, UnaryOp op);  // a new f32 tensor of t's shape
void unary_(Tensor& t, UnaryOp op);         // in place (f32 only)

// ---- binary operations ----
enum class BinaryOp {
  Add, Sub, Mul, Div, Pow, Min, Max,            // f32 results
  Eq, Ne, Lt, Le, Gt, Ge, And, Or,              // u8 masks (And/Or: nonzero is true)
};
const char* binary_name(BinaryOp op);          // "add", ..., "cmin", "cmax", "eq", ...
bool binary_is_mask(BinaryOp op);              // true for comparisons and logical ops
// The numpy broadcast of two shapes; an error naming `fn` and both shapes when they do not broadcast.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* fn);
Tensor binary(const Tensor& a, const Tensor& b, BinaryOp op);       // broadcast shape
Tensor binary(const Tensor& a, float s, BinaryOp op);               // a op s
Tensor binary(float s, const Tensor& b, BinaryOp op);               // s op b
// a = a op b in place: a f32, b broadcastable to a's shape (b may share a's storage).
void binary_(Tensor& a, const Tensor& b, BinaryOp op);
void binary_(Tensor& a, float s, BinaryOp op);

// ---- others ----
// mask ? a : b elementwise, all three broadcast together; mask of any dtype, nonzero (NaN too) is true.
Tensor where(const Tensor& mask, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& mask, float a, float b);
// Clamp into [lo, hi] (either may be -inf/+inf for one side); lo > hi is an error; NaN stays NaN.
Tensor clamp(const Tensor& t, float lo, float hi);
void clamp_(Tensor& t, float lo, float hi);
Tensor isnan_mask(const Tensor& t);     // u8
Tensor isfinite_mask(const Tensor& t);  // u8
Tensor logical_not(const Tensor& t);    // u8: 1 where t == 0
bool any_nonzero(const Tensor& t);      // false for an empty tensor
bool all_nonzero(const Tensor& t);      // true for an empty tensor

}  // namespace qf
