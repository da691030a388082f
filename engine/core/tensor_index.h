// qforge — the researcher's toolkit on tensors: the reductions tensor_ops lacks (var, std,
// cumulative sums), sorting and selection (sort, topk, kthvalue, median, quantile), constructors
// (eye, arange, linspace, random integers and permutations, cat, stack) and indexing
// (index_select, gather, scatter, masked/index fill, permute, flip, inverse permutations).
//
// Conventions (the Lua API in docs/api/tensor_index.md is 1-based; this layer is 0-based):
//  * dimensions `d` are 0-based; index tensors going in hold integers (any dtype, integral
//    values) counted from `base` (0 here, 1 from Lua), checked against their range with an error
//    naming the function, the value and the valid range in the caller's terms; index tensors
//    coming out are i32 and 0-based.
//  * inputs of any strides; computed results are new contiguous f32 tensors (inputs of any dtype
//    are read as f32); pure data movement (index_select, gather, flip, cat, stack) keeps the dtype.
//  * each output element (or output line, for sort and cumsum) is computed by one thread in a
//    fixed order, and loops are parallel only when worth_parallel: results never depend on the
//    thread count.
//  * order with NaN: NaN is larger than every number (torch): ascending sorts put NaN last,
//    descending sorts and topk(largest) put it first. Ties are broken by index (stable).
#pragma once
#include <cstdint>
#include <vector>

#include "core/rng.h"
#include "core/tensor.h"

namespace qf {

// ---- reductions along d ----
// Variance in two f64 passes (mean, then squared deviations), divided by n - 1 (unbiased) or n.
// An empty dimension is an error; n - correction <= 0 (n = 1, unbiased) gives NaN as numpy/torch.
Tensor var_dim(const Tensor& t, int d, bool keepdim = false, bool unbiased = true);
Tensor std_dim(const Tensor& t, int d, bool keepdim = false, bool unbiased = true);
// Over all values (f64, not rounded); NaN for n - correction <= 0 (an empty tensor is an error).
double var_all(const Tensor& t, bool unbiased = true);
// Running sum / product along d in f64, each element rounded to f32; same shape as t.
Tensor cumsum(const Tensor& t, int d);
Tensor cumprod(const Tensor& t, int d);

// ---- sorting and selection along d: values (f32) and 0-based i32 indices ----
struct ValuesIndices {
  Tensor values, indices;
};
// Stable: equal values keep their index order (descending too).
ValuesIndices sort(const Tensor& t, int d, bool descending = false);
// The k largest (or smallest) along d, 0 <= k <= size(d). sorted: in order (largest first when
// largest); otherwise in their original index order. Ties: the lower index is taken first.
ValuesIndices topk(const Tensor& t, int64_t k, int d, bool largest = true, bool sorted = true);
// The k-th smallest (1 <= k <= size(d)) in the stable ascending order (NaN last) and its index.
ValuesIndices kthvalue(const Tensor& t, int64_t k, int d, bool keepdim = false);
// The lower median, the ((n - 1) / 2 + 1)-th smallest, and its index; NaN (and the index of the
// first NaN) when the line holds a NaN, as torch.median.
ValuesIndices median_dim(const Tensor& t, int d, bool keepdim = false);
double median_all(const Tensor& t);  // over all values (NaN if any is NaN)
// Quantiles with numpy's default "linear" method in f64: position q·(n - 1) between the sorted
// values, rounded to f32 at the end. q: probabilities in [0, 1]. Result shape [q.size()] + the
// reduced shape (scalar_q: just the reduced shape, q must hold one value). NaN in a line: NaN.
Tensor quantile_dim(const Tensor& t, const std::vector<double>& q, int d, bool keepdim = false, bool scalar_q = false);
std::vector<double> quantile_all(const Tensor& t, const std::vector<double>& q);

// ---- constructors ----
Tensor eye(int64_t n, int64_t m);
// numpy's arange: ceil((stop - start) / step) values start + i·step (f64, rounded to f32).
// Integer arguments count exactly. step 0, non-finite arguments or more than 2^31 values: errors.
Tensor arange(double start, double stop, double step);
Tensor arange_int(int64_t start, int64_t stop, int64_t step);
// n values from a to b inclusive (numpy: start + i·(b - a)/(n - 1), the last exactly b).
Tensor linspace(double a, double b, int64_t n);
// i32 draws rng.randint(lo, hi) (lo, hi inclusive) in row-major order; lo, hi within int32.
Tensor randint(Rng& rng, int64_t lo, int64_t hi, const Shape& shape);
// A uniform permutation of 0..n-1 (i32) by Fisher–Yates: p = identity, then for i = n-1 down to
// 1, swap p[i] and p[rng.randint(0, i)].
Tensor randperm(Rng& rng, int64_t n);
// Concatenation along d / stacking along a new dimension d (0..dim): same dtype, shapes equal
// (except along d for cat). The result has the inputs' dtype.
Tensor cat(const std::vector<Tensor>& ts, int d);
Tensor stack(const std::vector<Tensor>& ts, int d);

// ---- indexing (index tensors counted from `base`) ----
// The slices idx[i] of t along d (idx 1-d), a copy in t's dtype.
Tensor index_select(const Tensor& t, int d, const Tensor& idx, int64_t base = 0);
// out[..., j, ...] = t[..., idx[..., j, ...], ...] along d: out has idx's shape (idx has t's
// number of dimensions and idx.size(e) <= t.size(e) for e != d); a copy in t's dtype.
Tensor gather(const Tensor& t, int d, const Tensor& idx, int64_t base = 0);
// In place on f32 t: t[..., idx[..., j, ...], ...] = src[..., j, ...] (idx.size(e) <= src.size(e)
// for every e). Row-major order over idx: a repeated index keeps the last write (scatter) or sums
// in that order in f32 (scatter_add). src may overlap t (staged first).
void scatter_(Tensor& t, int d, const Tensor& idx, const Tensor& src, int64_t base = 0);
void scatter_(Tensor& t, int d, const Tensor& idx, float value, int64_t base = 0);
void scatter_add_(Tensor& t, int d, const Tensor& idx, const Tensor& src, int64_t base = 0);
// t[mask != 0] = v (mask: t's shape, any dtype; NaN counts as nonzero); t f32.
void masked_fill_(Tensor& t, const Tensor& mask, float v);
// t.select(d, idx[i]) = v for each i (idx 1-d); t f32.
void index_fill_(Tensor& t, int d, const Tensor& idx, float v, int64_t base = 0);
// A view with dimension i of the result = dimension perm[i] of t (perm a permutation of 0..dim-1).
Tensor permute(const Tensor& t, const std::vector<int>& perm);
// A copy with the order along d reversed, t's dtype.
Tensor flip(const Tensor& t, int d);
// q with q[p[i]] = i (p a 1-d permutation of base..base+n-1); i32 counted from base.
Tensor invert_permutation(const Tensor& p, int64_t base = 0);

// The integer values of a 1-d (or any) index tensor, read exactly (i32) or from integral values
// of any other dtype; `what` names the function in errors.
std::vector<int64_t> index_values(const Tensor& idx, const char* fn);

}  // namespace qf
