// QuIP incoherence processing, docs/methods.md#quip.
#include "quant/incoherence.h"

#include <Eigen/Eigenvalues>
#include <cmath>

#include "core/rng.h"

namespace qf {

static const char* const kSides[] = {"both", "input", "output"};

const char* incoherence_sides_name(IncoherenceSides s) { return kSides[(int)s]; }

bool incoherence_sides_from_name(const std::string& name, IncoherenceSides* s) {
  for (int i = 0; i < 3; ++i)
    if (name == kSides[i]) {
      *s = (IncoherenceSides)i;
      return true;
    }
  return false;
}

static uint64_t mix(uint64_t a) { return splitmix64(a); }  // a is a copy: the stateless mix

uint64_t incoherence_side_seed(uint64_t layer_seed, bool output_side) {
  uint64_t x = layer_seed;
  const uint64_t in = splitmix64(x), out = splitmix64(x);
  return (output_side ? out : in) >> 1;
}

uint64_t quip_layer_seed(uint64_t run_seed, int64_t block, const std::string& linear) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a 64
  for (unsigned char ch : linear) h = (h ^ ch) * 0x100000001b3ull;
  uint64_t x = mix(run_seed) ^ (uint64_t)block;
  x = mix(x) ^ h;
  return mix(x);
}

double mu_incoherence(const Tensor& W_) {
  const Tensor W = W_.contiguous();
  const float* w = W.f32();
  double mx = 0, ss = 0;
  for (int64_t i = 0; i < W.numel(); ++i) {
    const double v = std::fabs((double)w[i]);
    mx = std::max(mx, v);
    ss += v * v;
  }
  return ss > 0 ? mx * std::sqrt((double)W.numel()) / std::sqrt(ss) : 0.0;
}

double mu_eigen_incoherence(const Tensor& Sigma) {
  const int64_t n = Sigma.size(0);
  const Eigen::MatrixXd S = Sigma.contiguous().cmat().cast<double>();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(0.5 * (S + S.transpose()));
  if (es.info() != Eigen::Success) fail("incoherence: the eigendecomposition of Sigma ", shape_str(Sigma.shape()), " failed");
  return es.eigenvectors().cwiseAbs().maxCoeff() * std::sqrt((double)n);
}

double sigma_diag_ratio(const Tensor& Sigma) {
  const int64_t n = Sigma.size(0);
  const auto S = Sigma.cmat();
  double mx = 0, sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    mx = std::max(mx, (double)S(j, j));
    sum += S(j, j);
  }
  return sum > 0 ? mx / (sum / (double)n) : 1.0;
}

IncoherenceResult incoherence(const LayerProblem& p, const IncoherenceOptions& o) {
  if (o.kind != TransformKind::Hadamard && o.kind != TransformKind::Butterfly)
    fail("incoherence: kind must be hadamard or butterfly, got ", transform_kind_name(o.kind));
  const int64_t r = p.W.size(0), c = p.W.size(1);
  IncoherenceResult res;
  IncoherenceStats& st = res.stats;
  st.mu_w_before = mu_incoherence(p.W);
  st.sigma_diag_before = sigma_diag_ratio(p.sigma);
  if (o.measure_sigma) st.mu_sigma_before = mu_eigen_incoherence(p.sigma);

  // Dead inputs (Σ_jj = 0) never reach the objective: their columns are zeroed, as GPTQ does
  // (methods.md#dead-inputs), so the rotation does not spread them over the live ones.
  Tensor W = p.W.clone();
  const auto S = p.sigma.cmat();
  {
    auto Wm = W.mat();
    for (int64_t j = 0; j < c; ++j)
      if (S(j, j) == 0.f) {
        Wm.col(j).setZero();
        ++st.dead_inputs;
      }
  }

  // The diagonal rescaling s_j = ((Σ_jj / max_k Σ_kk) / ‖W_:j‖²)^{1/4} (methods.md#quip-transform:
  // QuIP's reference divides H by its largest entry first, which only scales s); s_j = 1 where
  // either factor is zero or the ratio is not finite. d = 1/s is what T keeps.
  std::vector<float> d;
  if (o.rescale) {
    double smax = 0;
    for (int64_t j = 0; j < c; ++j) smax = std::max(smax, (double)S(j, j));
    const auto Wm = W.cmat();
    d.assign((size_t)c, 1.f);
    st.scale_min = INFINITY, st.scale_max = 0;
    for (int64_t j = 0; j < c; ++j) {
      const double wn = Wm.col(j).cast<double>().squaredNorm(), h = (double)S(j, j);
      double s = h > 0 && wn > 0 && smax > 0 ? std::pow(h / smax / wn, 0.25) : 1.0;
      if (!std::isfinite(s) || s <= 0 || !std::isfinite((float)(1.0 / s)) || (float)(1.0 / s) == 0.f) s = 1.0;
      d[(size_t)j] = (float)(1.0 / s);
      st.scale_min = std::min(st.scale_min, s);
      st.scale_max = std::max(st.scale_max, s);
    }
  }

  const bool in_rot = o.sides != IncoherenceSides::Output, out_rot = o.sides != IncoherenceSides::Input;
  res.input_seed = incoherence_side_seed(o.seed, false);
  res.output_seed = incoherence_side_seed(o.seed, true);
  if (in_rot) {  // T = V·diag(d)
    res.input.kind = o.kind;
    res.input.n = c;
    res.input.seed = res.input_seed;
    res.input.diag = d;
  } else if (!d.empty()) {  // T = diag(d)
    res.input.kind = TransformKind::Diagonal;
    res.input.n = c;
    res.input.diag = d;
  }
  if (out_rot) {  // O = Uᵀ, a seeded orthogonal transform of the rows
    res.output.kind = o.kind;
    res.output.n = r;
    res.output.seed = res.output_seed;
  }
  if (!in_rot) res.input_seed = 0;
  if (!out_rot) res.output_seed = 0;
  res.input.validate("incoherence: input transform");
  res.output.validate("incoherence: output transform");

  // W′ = O⁻¹·W·T⁻¹, Σ′ = T·Σ·Tᵀ, μ′ = T·μ (methods.md#transforms).
  Tensor Wt = res.input.none() ? W : transform_apply_input_inverse(res.input, W);
  if (!res.output.none()) Wt = transform_apply_output_inverse(res.output, Wt);
  Tensor St = res.input.none() ? p.sigma.clone() : transform_gram(res.input, p.sigma);
  Tensor mut;
  if (p.mu.defined()) mut = res.input.none() ? p.mu.clone() : transform_vector(res.input, p.mu);
  res.problem = LayerProblem::make(Wt, St, mut, p.tokens, p.site, "incoherence");
  res.problem.block = p.block;
  res.problem.name = p.name;

  st.mu_w_after = mu_incoherence(res.problem.W);
  st.sigma_diag_after = sigma_diag_ratio(res.problem.sigma);
  if (o.measure_sigma) st.mu_sigma_after = mu_eigen_incoherence(res.problem.sigma);
  if (!o.rescale) st.scale_min = st.scale_max = 1;
  return res;
}

}  // namespace qf
