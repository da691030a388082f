#include "solvers/choice_allocation.h"

#include <cmath>

#include "core/error.h"

namespace qf {

std::vector<int> lagrangian_choice(const std::vector<std::vector<double>>& D, const std::vector<std::vector<double>>& C,
                                   double lambda) {
  std::vector<int> ch(D.size());
  for (size_t i = 0; i < D.size(); ++i) {
    int best = 0;
    double bv = D[i][0] + lambda * C[i][0];
    for (size_t t = 1; t < D[i].size(); ++t) {
      const double v = D[i][t] + lambda * C[i][t];
      if (v < bv || (v == bv && C[i][t] < C[i][(size_t)best])) { best = (int)t; bv = v; }
    }
    ch[i] = best;
  }
  return ch;
}

static double total(const std::vector<std::vector<double>>& X, const std::vector<int>& ch) {
  double s = 0;
  for (size_t i = 0; i < ch.size(); ++i) s += X[i][(size_t)ch[i]];
  return s;
}

ChoiceAllocation allocate_choices(const std::vector<std::vector<double>>& D, const std::vector<std::vector<double>>& C,
                                  double budget) {
  const char* fn = "allocate_choices";
  if (D.empty()) fail(fn, ": no items");
  if (D.size() != C.size()) fail(fn, ": ", D.size(), " distortion rows but ", C.size(), " cost rows");
  double cheapest = 0;
  for (size_t i = 0; i < D.size(); ++i) {
    if (D[i].empty()) fail(fn, ": item ", i + 1, " has no choices");
    if (D[i].size() != C[i].size()) fail(fn, ": item ", i + 1, ": ", D[i].size(), " distortions but ", C[i].size(), " costs");
    double cmin = INFINITY;
    for (size_t t = 0; t < D[i].size(); ++t) {
      if (!std::isfinite(D[i][t]) || D[i][t] < 0) fail(fn, ": item ", i + 1, " choice ", t + 1, ": distortion ", D[i][t], " (must be finite and >= 0)");
      if (!std::isfinite(C[i][t]) || !(C[i][t] > 0)) fail(fn, ": item ", i + 1, " choice ", t + 1, ": cost ", C[i][t], " (must be finite and > 0)");
      cmin = std::min(cmin, C[i][t]);
    }
    cheapest += cmin;
  }
  if (!std::isfinite(budget) || budget < cheapest)
    fail(fn, ": budget ", budget, " is below the cheapest choice of every item (", cheapest, " in all)");

  ChoiceAllocation r;
  // λ = 0: the least distortion (ties cheaper). If it fits, it is optimal outright.
  std::vector<int> ch = lagrangian_choice(D, C, 0.0);
  if (total(C, ch) > budget) {
    // Bracket: a λ large enough that every item takes its cheapest choice (ties: least distortion
    // among the cheapest, since D + λc then differs only in D).
    double hi = 1.0;
    while (total(C, lagrangian_choice(D, C, hi)) > budget) {
      hi *= 2;
      if (hi > 1e300) fail(fn, ": no multiplier meets budget ", budget);
    }
    double lo = 0;
    for (int it = 0; it < 200 && hi - lo > 1e-15 * hi; ++it) {  // smallest λ that fits
      const double mid = 0.5 * (lo + hi);
      (total(C, lagrangian_choice(D, C, mid)) > budget ? lo : hi) = mid;
      ++r.bisections;
    }
    r.lambda = hi;
    ch = lagrangian_choice(D, C, hi);
  }
  r.lagrangian_cost = total(C, ch);
  r.lagrangian_distortion = total(D, ch);
  // Greedy fill of the budget left: the best distortion drop per unit of extra cost that fits.
  double spent = r.lagrangian_cost;
  for (;;) {
    double best_ratio = 0;
    size_t bi = 0, bt = 0;
    for (size_t i = 0; i < D.size(); ++i) {
      const size_t cur = (size_t)ch[i];
      for (size_t t = 0; t < D[i].size(); ++t) {
        const double dc = C[i][t] - C[i][cur], dd = D[i][cur] - D[i][t];
        if (dd <= 0 || spent + dc > budget) continue;
        const double ratio = dc <= 0 ? INFINITY : dd / dc;  // cheaper and better: always taken
        if (ratio > best_ratio) { best_ratio = ratio; bi = i; bt = t; }
      }
    }
    if (best_ratio <= 0) break;
    spent += C[bi][bt] - C[bi][(size_t)ch[bi]];
    ch[bi] = (int)bt;
    ++r.upgrades;
  }
  r.choice = ch;
  r.cost = total(C, ch);
  r.distortion = total(D, ch);
  return r;
}

}  // namespace qf
