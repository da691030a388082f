// qforge — transforms around a quantized weight (quant/grid.h, docs/methods.md#transforms).
#include <cmath>
#include <cstring>

#include "core/linalg.h"
#include "quant/grid.h"

namespace qf {

// Each row x of X replaced by T·x (inverse: Tᵀ·x) for the randomized Hadamard T of `seed`.
static Tensor hadamard_rows(const Tensor& X, uint64_t seed, bool inverse) { return random_hadamard(X, seed, inverse, -1); }

static const char* const kTransformNames[] = {"none", "perm", "diag", "hadamard", "dense"};

const char* transform_kind_name(TransformKind k) { return kTransformNames[(int)k]; }

bool transform_kind_from_name(const std::string& name, TransformKind* k) {
  for (int i = 0; i < 5; ++i)
    if (name == kTransformNames[i]) {
      *k = (TransformKind)i;
      return true;
    }
  return false;
}

double LinearTransform::storage_bits() const {
  switch (kind) {
    case TransformKind::None: return 0;
    case TransformKind::Permutation:
    case TransformKind::Diagonal: return 32.0 * (double)n;
    case TransformKind::Hadamard: return 64.0;
    case TransformKind::Dense: return 32.0 * (double)n * (double)n;
  }
  return 0;
}

void LinearTransform::validate(const std::string& what) const {
  if (kind == TransformKind::None) return;
  if (n < 1) fail(what, ": a ", transform_kind_name(kind), " transform needs a size >= 1, got ", n);
  switch (kind) {
    case TransformKind::Permutation: {
      if ((int64_t)perm.size() != n) fail(what, ": the permutation has ", perm.size(), " entries, expected ", n);
      std::vector<uint8_t> seen((size_t)n, 0);
      for (int64_t i = 0; i < n; ++i) {
        const int32_t p = perm[(size_t)i];
        if (p < 0 || p >= n) fail(what, ": permutation entry ", i + 1, " is ", p + 1, ", outside 1..", n);
        if (seen[(size_t)p]++) fail(what, ": permutation entry ", i + 1, " repeats ", p + 1, " (not a permutation)");
      }
      break;
    }
    case TransformKind::Diagonal:
      if ((int64_t)diag.size() != n) fail(what, ": the diagonal has ", diag.size(), " entries, expected ", n);
      for (int64_t i = 0; i < n; ++i)
        if (!std::isfinite(diag[(size_t)i]) || diag[(size_t)i] == 0.f)
          fail(what, ": diagonal entry ", i + 1, " is ", diag[(size_t)i], " (must be finite and nonzero)");
      break;
    case TransformKind::Dense: {
      if (!dense.defined() || dense.dim() != 2 || dense.size(0) != n || dense.size(1) != n)
        fail(what, ": the dense transform must be [", n, ", ", n, "], got ", dense.defined() ? shape_str(dense.shape()) : "none");
      const std::vector<float> v = dense.to_vector();
      for (size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i])) fail(what, ": the dense transform holds ", v[i], " at element ", i + 1);
      break;
    }
    default: break;
  }
}

Tensor transform_apply_input(const LinearTransform& t, const Tensor& W_) {
  const Tensor W = W_.contiguous();
  if (W.dim() != 2 || W.size(1) != t.n) fail("transform: input transform of size ", t.n, " on a weight of shape ", shape_str(W.shape()));
  const int64_t rows = W.size(0), n = t.n;
  switch (t.kind) {
    case TransformKind::None: return W.clone();
    case TransformKind::Permutation: {  // (W·T)[:, perm[c]] = W[:, c]
      Tensor R = Tensor::empty(W.shape());
      const float* w = W.f32();
      float* r = R.f32();
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t c = 0; c < n; ++c) r[i * n + t.perm[(size_t)c]] = w[i * n + c];
      return R;
    }
    case TransformKind::Diagonal: {
      Tensor R = W.clone();
      float* r = R.f32();
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t c = 0; c < n; ++c) r[i * n + c] *= t.diag[(size_t)c];
      return R;
    }
    case TransformKind::Hadamard:  // W·T: each row w ← Tᵀw, the inverse of the transform
      return hadamard_rows(W, t.seed, /*inverse=*/true);
    case TransformKind::Dense: {
      Tensor R = Tensor::empty(W.shape());
      R.mat().noalias() = W.cmat() * t.dense.contiguous().cmat();
      return R;
    }
  }
  return W;
}

Tensor transform_apply_output(const LinearTransform& t, const Tensor& W_) {
  const Tensor W = W_.contiguous();
  if (W.dim() != 2 || W.size(0) != t.n) fail("transform: output transform of size ", t.n, " on a weight of shape ", shape_str(W.shape()));
  const int64_t n = t.n, cols = W.size(1);
  switch (t.kind) {
    case TransformKind::None: return W.clone();
    case TransformKind::Permutation: {  // (O·W)[r, :] = W[perm[r], :]
      Tensor R = Tensor::empty(W.shape());
      for (int64_t r = 0; r < n; ++r) std::memcpy(R.f32() + r * cols, W.f32() + (int64_t)t.perm[(size_t)r] * cols, sizeof(float) * cols);
      return R;
    }
    case TransformKind::Diagonal: {
      Tensor R = W.clone();
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < cols; ++c) R.f32()[r * cols + c] *= t.diag[(size_t)r];
      return R;
    }
    case TransformKind::Hadamard:  // O·W = (Wᵀ·Oᵀ)ᵀ: each column w ← O·w
      return hadamard_rows(W.t().contiguous(), t.seed, /*inverse=*/false).t().contiguous();
    case TransformKind::Dense: {
      Tensor R = Tensor::empty(W.shape());
      R.mat().noalias() = t.dense.contiguous().cmat() * W.cmat();
      return R;
    }
  }
  return W;
}

}  // namespace qf
