// qforge — a plain Adam optimizer over a flat vector of f32 parameters (Kingma & Ba 2015),
// used by the block-wise finetuning stage (docs/methods.md#adam).
//
// Per step t = 1, 2, …, with gradient g (f64) and parameter p (f32):
//   g ← g + weight_decay·p            (coupled L2, as torch.optim.Adam; 0 by default)
//   m ← β₁m + (1 − β₁)g,   v ← β₂v + (1 − β₂)g²
//   p ← p − lr · (m / (1 − β₁ᵗ)) / (√(v / (1 − β₂ᵗ)) + eps)
// The moments are kept in f64; the update is computed in f64 and rounded once to f32. The
// state (m, v, t) belongs to the object: no global state, a plain loop, bit-identical runs.
// A zero gradient with zero moments (and no weight decay) leaves a parameter exactly as it was;
// lr = 0 never changes a parameter.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace qf {

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  void validate() const;  // lr >= 0, betas in [0, 1), eps > 0, weight_decay >= 0, all finite
};

class Adam {
 public:
  Adam(size_t n, const AdamOptions& opt);
  // One step on p[0..n) with gradient g[0..n).
  void step(float* p, const double* g);
  void step(std::vector<float>& p, const std::vector<double>& g);
  size_t size() const { return m_.size(); }
  int64_t steps() const { return t_; }
  const AdamOptions& options() const { return opt_; }
  const std::vector<double>& first_moment() const { return m_; }
  const std::vector<double>& second_moment() const { return v_; }

 private:
  AdamOptions opt_;
  std::vector<double> m_, v_;
  int64_t t_ = 0;
};

}  // namespace qf
