// qforge — one choice per item under a total cost (docs/methods.md#type-allocation): the
// multiple-choice knapsack  min Σ_i D_i(t_i)  s.t.  Σ_i c_i(t_i) ≤ budget, solved as CVXQ solves
// its bit allocation — by the dual (Lagrangian) problem. At a multiplier λ ≥ 0 every item takes
//   t_i(λ) = argmin_t D_i(t) + λ c_i(t)     (ties: the cheaper choice),
// and the total cost is a non-increasing step function of λ; bisection finds the smallest λ whose
// choice fits. Everett's theorem makes that choice optimal for its own total cost (no assignment
// as cheap has lower distortion). The budget it leaves is then spent greedily: the upgrade
// (item, costlier choice) with the largest distortion drop per unit cost that still fits, until
// none fits — so the result is never worse than the Lagrangian choice.
// Used for GGUF files of a requested size: items are tensors, choices their storage types, costs
// their real bytes (block overhead included), distortions measured (recipes/gguf_target.lua).
#pragma once
#include <vector>

namespace qf {

struct ChoiceAllocation {
  std::vector<int> choice;        // 0-based choice of every item
  double cost = 0, distortion = 0;
  double lambda = 0;              // the multiplier of the Lagrangian choice
  double lagrangian_cost = 0, lagrangian_distortion = 0;  // before the greedy fill
  int bisections = 0;
  int upgrades = 0;               // greedy upgrades after the Lagrangian choice
};

// distortion[i][t], cost[i][t]: finite, cost > 0, every item at least one choice. Fails (naming the
// budget and the cheapest total) when even the cheapest choice of every item exceeds the budget.
ChoiceAllocation allocate_choices(const std::vector<std::vector<double>>& distortion,
                                  const std::vector<std::vector<double>>& cost, double budget);

// The Lagrangian choice at a fixed λ (exposed for tests).
std::vector<int> lagrangian_choice(const std::vector<std::vector<double>>& distortion,
                                   const std::vector<std::vector<double>>& cost, double lambda);

}  // namespace qf
