// qforge — transforms around a quantized weight (quant/grid.h, docs/methods.md#transforms).
#include <cmath>
#include <cstring>

#include "core/linalg.h"
#include "quant/grid.h"

namespace qf {

// Each row x of X replaced by R·x (inverse: Rᵀ·x) for the seeded orthogonal R of t (the randomized
// Hadamard or QuIP's butterfly transform of t.seed); t.diag is not applied here.
static Tensor seeded_rows(const LinearTransform& t, const Tensor& X, bool inverse) {
  if (t.kind == TransformKind::Butterfly) return random_butterfly(X, t.seed, inverse, -1);
  return random_hadamard(X, t.seed, inverse, -1);
}

// Columns (on_cols) or rows of W [rows, cols] multiplied by d (inverse: divided by d), in place.
static void scale_by(Tensor& W, const std::vector<float>& d, bool on_cols, bool inverse) {
  const int64_t rows = W.size(0), cols = W.size(1);
  float* w = W.f32();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c) {
      const float f = d[(size_t)(on_cols ? c : i)];
      w[i * cols + c] = inverse ? w[i * cols + c] / f : w[i * cols + c] * f;
    }
}

static const char* const kTransformNames[] = {"none", "perm", "diag", "hadamard", "dense", "butterfly"};
constexpr int kTransformKinds = 6;

const char* transform_kind_name(TransformKind k) { return kTransformNames[(int)k]; }

bool transform_kind_from_name(const std::string& name, TransformKind* k) {
  for (int i = 0; i < kTransformKinds; ++i)
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
    case TransformKind::Hadamard:
    case TransformKind::Butterfly: return 64.0 + (diag.empty() ? 0.0 : 32.0 * (double)n);  // the seed (+ d)
    case TransformKind::Dense: return 32.0 * (double)n * (double)n;
  }
  return 0;
}

static void validate_diag(const std::vector<float>& diag, int64_t n, const std::string& what) {
  if ((int64_t)diag.size() != n) fail(what, ": the diagonal has ", diag.size(), " entries, expected ", n);
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(diag[(size_t)i]) || diag[(size_t)i] == 0.f)
      fail(what, ": diagonal entry ", i + 1, " is ", diag[(size_t)i], " (must be finite and nonzero)");
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
    case TransformKind::Diagonal: validate_diag(diag, n, what); break;
    case TransformKind::Hadamard:
    case TransformKind::Butterfly:
      if (!diag.empty()) validate_diag(diag, n, what);
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

// Shape checks shared by the four directions: an input transform acts on W's columns, an output
// transform on its rows.
static Tensor checked(const LinearTransform& t, const Tensor& W_, bool input) {
  const Tensor W = W_.contiguous();
  if (W.dim() != 2 || W.size(input ? 1 : 0) != t.n)
    fail("transform: ", input ? "input" : "output", " transform of size ", t.n, " on a weight of shape ", shape_str(W.shape()));
  return W;
}

Tensor transform_apply_input(const LinearTransform& t, const Tensor& W_) {
  const Tensor W = checked(t, W_, true);
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
      scale_by(R, t.diag, /*on_cols=*/true, false);
      return R;
    }
    case TransformKind::Hadamard:
    case TransformKind::Butterfly: {  // W·R·diag(d): each row w ← Rᵀw, then the columns scaled by d
      Tensor R = seeded_rows(t, W, /*inverse=*/true);
      if (!t.diag.empty()) scale_by(R, t.diag, true, false);
      return R;
    }
    case TransformKind::Dense: {
      Tensor R = Tensor::empty(W.shape());
      R.mat().noalias() = W.cmat() * t.dense.contiguous().cmat();
      return R;
    }
  }
  return W;
}

Tensor transform_apply_output(const LinearTransform& t, const Tensor& W_) {
  const Tensor W = checked(t, W_, false);
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
      scale_by(R, t.diag, /*on_cols=*/false, false);
      return R;
    }
    case TransformKind::Hadamard:
    case TransformKind::Butterfly: {  // R·diag(d)·W: rows scaled by d, then each column w ← R·w
      Tensor D = W.clone();
      if (!t.diag.empty()) scale_by(D, t.diag, false, false);
      return seeded_rows(t, D.t().contiguous(), /*inverse=*/false).t().contiguous();
    }
    case TransformKind::Dense: {
      Tensor R = Tensor::empty(W.shape());
      R.mat().noalias() = t.dense.contiguous().cmat() * W.cmat();
      return R;
    }
  }
  return W;
}

Tensor transform_apply_input_inverse(const LinearTransform& t, const Tensor& W_) {
  const Tensor W = checked(t, W_, true);
  const int64_t rows = W.size(0), n = t.n;
  switch (t.kind) {
    case TransformKind::None: return W.clone();
    case TransformKind::Permutation: {  // W·Tᵀ: column c is W[:, perm[c]]
      Tensor R = Tensor::empty(W.shape());
      const float* w = W.f32();
      float* r = R.f32();
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t c = 0; c < n; ++c) r[i * n + c] = w[i * n + t.perm[(size_t)c]];
      return R;
    }
    case TransformKind::Diagonal: {
      Tensor R = W.clone();
      scale_by(R, t.diag, /*on_cols=*/true, /*inverse=*/true);
      return R;
    }
    case TransformKind::Hadamard:
    case TransformKind::Butterfly: {  // W·diag(1/d)·Rᵀ: columns divided by d, then each row w ← R·w
      Tensor D = W.clone();
      if (!t.diag.empty()) scale_by(D, t.diag, true, true);
      return seeded_rows(t, D, /*inverse=*/false);
    }
    case TransformKind::Dense:  // W·T⁻¹ = (T⁻ᵀ·Wᵀ)ᵀ
      return solve(t.dense.t().contiguous(), W.t().contiguous()).t().contiguous();
  }
  return W;
}

Tensor transform_apply_output_inverse(const LinearTransform& t, const Tensor& W_) {
  const Tensor W = checked(t, W_, false);
  const int64_t n = t.n, cols = W.size(1);
  switch (t.kind) {
    case TransformKind::None: return W.clone();
    case TransformKind::Permutation: {  // Oᵀ·W: row perm[r] is W[r, :]
      Tensor R = Tensor::empty(W.shape());
      for (int64_t r = 0; r < n; ++r) std::memcpy(R.f32() + (int64_t)t.perm[(size_t)r] * cols, W.f32() + r * cols, sizeof(float) * cols);
      return R;
    }
    case TransformKind::Diagonal: {
      Tensor R = W.clone();
      scale_by(R, t.diag, /*on_cols=*/false, /*inverse=*/true);
      return R;
    }
    case TransformKind::Hadamard:
    case TransformKind::Butterfly: {  // diag(1/d)·Rᵀ·W: each column w ← Rᵀw, then rows divided by d
      Tensor R = seeded_rows(t, W.t().contiguous(), /*inverse=*/true).t().contiguous();
      if (!t.diag.empty()) scale_by(R, t.diag, false, true);
      return R;
    }
    case TransformKind::Dense: return solve(t.dense, W);
  }
  return W;
}

Tensor transform_gram(const LinearTransform& t, const Tensor& Sigma) {
  const Tensor S = Sigma.contiguous();
  if (S.dim() != 2 || S.size(0) != t.n || S.size(1) != t.n)
    fail("transform: a Gram matrix for a transform of size ", t.n, " must be [", t.n, ", ", t.n, "], got ", shape_str(S.shape()));
  if (t.none()) return S.clone();
  // T·Σ·Tᵀ = T·(T·Σ)ᵀ for symmetric Σ: the output direction twice (T acting on rows, as O does).
  const Tensor TS = transform_apply_output(t, S);
  Tensor R = transform_apply_output(t, TS.t().contiguous());
  // Exactly symmetric (the two passes round differently above and below the diagonal), and the
  // diagonal of a PSD matrix ≥ 0 (a rounding below 0 is clamped).
  float* r = R.f32();
  const int64_t n = t.n;
  for (int64_t i = 0; i < n; ++i) {
    if (r[i * n + i] < 0.f) r[i * n + i] = 0.f;
    for (int64_t j = i + 1; j < n; ++j) {
      const float v = (float)(0.5 * ((double)r[i * n + j] + (double)r[j * n + i]));
      r[i * n + j] = r[j * n + i] = v;
    }
  }
  return R;
}

Tensor transform_vector(const LinearTransform& t, const Tensor& x) {
  if (x.dim() != 1 || x.size(0) != t.n) fail("transform: a vector for a transform of size ", t.n, " must be [", t.n, "], got ", shape_str(x.shape()));
  return transform_apply_output(t, x.contiguous().view({t.n, 1})).view({t.n});
}

}  // namespace qf
