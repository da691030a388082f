// qforge — OWQ, outlier-aware weight quantization (docs/methods.md#owq): a few weak input
// columns, chosen by sensitivity, stay in full precision (fp16) and absorb GPTQ's error feedback;
// GPTQ rounds the others on a grid fitted without them. The weak columns are stored as column
// outliers of the QuantizedLinear (every row, codes decoding to 0; quant/storage.h counts them as
// dense fp16 columns).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "quant/grid.h"
#include "quant/layer_problem.h"
#include "solvers/gptq.h"

namespace qf {

enum class OwqScore : uint8_t {
  RtnError,   // Σ_jj · ‖W[:, j] − RTN(W)[:, j]‖² (RTN on the solve's grid spec fitted to all of W)
  SigmaDiag,  // Σ_jj alone
};
enum class OwqLayerKind : uint8_t { Auto, Attention, Mlp };

struct OwqOptions {
  int64_t columns = -1;      // weak columns; -1: from target_bits (methods.md#owq-budget)
  double target_bits = 0;    // average bits per weight the budget rule aims at (0: use columns)
  OwqScore score = OwqScore::RtnError;
  OwqLayerKind layer_kind = OwqLayerKind::Auto;  // Auto: from the problem's site
  int owq_layers = 7;        // linears per block that get weak columns (the rule's n_owq_layers)
  GptqOptions gptq;          // blocksize, percdamp, act_order (on the other columns), static_groups
};

struct OwqResult {
  QuantizedLinear q;                 // the other columns' codes on the grid + the weak columns as outliers
  std::vector<int64_t> weak;         // the weak columns, 0-based, by decreasing score (ties: lower index)
  std::vector<double> score;         // every column's score
  double percdamp_used = 0, proxy_loss = 0;  // GPTQ's (gptq.h)
};

// The budget rule (methods.md#owq-budget): with base bits b and target t,
// r = 12/(16 − b)·(t − b)/owq_layers and n = round_half_even(cols·r·ratio), plus 1 when odd;
// ratio = 1 for attention projections, 0.375 for MLP projections. Requires b <= t < 16.
int64_t owq_budget_columns(int64_t cols, int bits, double target_bits, int owq_layers, bool mlp);
// The kind from an activation site: attn_in, attn_out → attention; ffn_in, ffn_mid → MLP.
bool owq_site_is_mlp(const std::string& site, bool* known);

// Column scores (f64) of methods.md#owq-select.
std::vector<double> owq_scores(const LayerProblem& p, const GridSpec& spec, OwqScore score);
// The n columns of largest score, by decreasing score; ties go to the lower index.
std::vector<int64_t> owq_select(const std::vector<double>& score, int64_t n);

// Weak columns by the score, n from columns or the budget rule, GPTQ on the rest with the weak
// columns last (gptq_keep_columns), the weak columns' GPTQ-updated values rounded to fp16 and
// stored as outliers (every row of the column). n = 0 is GPTQ exactly.
OwqResult owq(const LayerProblem& p, const GridSpec& spec, const OwqOptions& opt, const SolverLog& log = nullptr);

}  // namespace qf
