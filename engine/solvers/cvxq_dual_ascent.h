// qforge — bit allocation by dual ascent (CVXQ, docs/methods.md#dual-ascent).
//
// Groups g (whole layers, rows, or row-cluster × column blocks — the caller decides) hold n_g
// weights with spread σ²_g and mean squared output sensitivity G²_g. Modelled distortion
//   D(B) = Σ_g n_g · G²_g · σ²_g · 2^(−2 B_g)
// is minimised at a given multiplier λ by the reverse water-filling
//   B_g(λ) = clamp(round(½ (log₂σ²_g + log₂G²_g − log₂λ)), bmin, bmax),
// and log₂λ is moved until the realised rate Σ n_g B_g / Σ n_g is within `tol` of the target:
// first the paper's dual-ascent steps log₂λ ← log₂λ + step·(rate − target), then (rate is a
// non-increasing step function of log₂λ) bisection if the steps have not converged.
#pragma once
#include <string>
#include <vector>

namespace qf {

struct DualAscentOptions {
  double target_bits = 3.0;
  int bmin = 0, bmax = 8;
  int steps = 100;            // dual-ascent steps before falling back to bisection
  double step_size = 1.9;     // CVXQ's default
  double log2_lambda0 = 0.0;  // start (CVXQ's CLI uses −30; 0 with normalised statistics)
  double tol = 0.01;          // |rate − target| accepted, bits/weight
};

struct DualAscentResult {
  std::vector<int> bits;       // B_g
  double rate = 0;             // Σ n_g B_g / Σ n_g
  double log2_lambda = 0;
  int steps = 0;               // dual-ascent steps taken
  int bisections = 0;          // bisection steps taken after them
  bool converged = false;      // |rate − target| ≤ tol (false only when no λ achieves it:
                               // a single group's jump is larger than 2·tol)
  std::vector<double> rate_history;  // rate after each step (ascent, then bisection)
};

// score_g = log₂σ²_g + log₂G²_g (−inf allowed: such a group always gets bmin); n_g > 0.
DualAscentResult dual_ascent(const std::vector<double>& score, const std::vector<double>& n, const DualAscentOptions& opt);
// The allocation at a fixed log₂λ, and its rate.
std::vector<int> allocate_bits(const std::vector<double>& score, double log2_lambda, int bmin, int bmax);
double allocation_rate(const std::vector<int>& bits, const std::vector<double>& n);

}  // namespace qf
