#include "solvers/cvxq_dual_ascent.h"

#include <cmath>

#include "core/error.h"

namespace qf {

std::vector<int> allocate_bits(const std::vector<double>& score, double log2_lambda, int bmin, int bmax) {
  std::vector<int> b(score.size());
  for (size_t g = 0; g < score.size(); ++g) {
    const double x = 0.5 * (score[g] - log2_lambda);  // −inf score → −inf → bmin
    const double r = std::nearbyint(x);
    b[g] = r <= bmin ? bmin : r >= bmax ? bmax : (int)r;
  }
  return b;
}

double allocation_rate(const std::vector<int>& bits, const std::vector<double>& n) {
  double num = 0, den = 0;
  for (size_t g = 0; g < bits.size(); ++g) {
    num += n[g] * bits[g];
    den += n[g];
  }
  return num / den;
}

DualAscentResult dual_ascent(const std::vector<double>& score, const std::vector<double>& n, const DualAscentOptions& o) {
  const char* fn = "dual_ascent";
  if (score.empty()) fail(fn, ": no groups");
  if (score.size() != n.size()) fail(fn, ": ", score.size(), " scores but ", n.size(), " group sizes");
  if (o.bmin < 0 || o.bmax > 16 || o.bmin > o.bmax) fail(fn, ": need 0 <= bmin <= bmax <= 16, got bmin ", o.bmin, ", bmax ", o.bmax);
  if (!(o.target_bits >= o.bmin && o.target_bits <= o.bmax))
    fail(fn, ": target_bits ", o.target_bits, " is outside [bmin, bmax] = [", o.bmin, ", ", o.bmax, "]");
  if (o.steps < 0) fail(fn, ": steps must be >= 0, got ", o.steps);
  if (!(o.step_size > 0) || !std::isfinite(o.step_size)) fail(fn, ": step_size must be > 0, got ", o.step_size);
  if (!(o.tol > 0)) fail(fn, ": tol must be > 0, got ", o.tol);
  for (size_t g = 0; g < n.size(); ++g) {
    if (!(n[g] > 0) || !std::isfinite(n[g])) fail(fn, ": group ", g + 1, " has size ", n[g], " (must be > 0: empty groups are not allowed)");
    if (std::isnan(score[g]) || score[g] == INFINITY) fail(fn, ": group ", g + 1, " has score ", score[g], " (log2 variance + log2 sensitivity must be finite or -inf)");
  }

  DualAscentResult r;
  auto eval = [&](double l2l) {
    r.log2_lambda = l2l;
    r.bits = allocate_bits(score, l2l, o.bmin, o.bmax);
    r.rate = allocation_rate(r.bits, n);
    r.rate_history.push_back(r.rate);
    return r.rate;
  };
  // 1. Dual ascent (docs/methods.md#dual-ascent): the rate falls as λ grows, so step λ up while
  //    the rate is too high.
  double l2l = o.log2_lambda0;
  for (int s = 0; s < o.steps; ++s) {
    const double rate = eval(l2l);
    ++r.steps;
    if (std::fabs(rate - o.target_bits) <= o.tol) {
      r.converged = true;
      return r;
    }
    l2l += o.step_size * (rate - o.target_bits);
  }
  if (o.steps == 0 || !r.converged) {
    // 2. Bisection on log₂λ: bracket [lo, hi] with rate(lo) ≥ target ≥ rate(hi).
    double lo = l2l, hi = l2l;
    double step = 1.0;
    if (eval(l2l) >= o.target_bits) {
      while (eval(hi) > o.target_bits + o.tol && step < 1e4) { lo = hi; hi += step; step *= 2; }
    } else {
      while (eval(lo) < o.target_bits - o.tol && step < 1e4) { hi = lo; lo -= step; step *= 2; }
    }
    for (int it = 0; it < 200; ++it) {
      const double rate = eval(0.5 * (lo + hi));
      ++r.bisections;
      if (std::fabs(rate - o.target_bits) <= o.tol) {
        r.converged = true;
        return r;
      }
      (rate > o.target_bits ? lo : hi) = 0.5 * (lo + hi);
      if (hi - lo < 1e-12) break;
    }
    // No λ gives a rate within tol (a jump across the target): return the side below it.
    eval(hi);
    r.converged = std::fabs(r.rate - o.target_bits) <= o.tol;
  }
  return r;
}

}  // namespace qf
