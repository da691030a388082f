// OWQ, docs/methods.md#owq: weak-column selection (methods.md#owq-select), the budget rule
// (methods.md#owq-budget), GPTQ on the other columns with the weak ones last and kept
// (methods.md#owq-gptq), the weak columns stored as fp16 column outliers (methods.md#owq-storage).
#include "solvers/owq.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/half.h"

namespace qf {

bool owq_site_is_mlp(const std::string& site, bool* known) {
  const bool attn = site == "attn_in" || site == "attn_out", mlp = site == "ffn_in" || site == "ffn_mid";
  if (known) *known = attn || mlp;
  return mlp;
}

int64_t owq_budget_columns(int64_t cols, int bits, double target_bits, int owq_layers, bool mlp) {
  const char* fn = "owq";
  if (bits < 1 || bits > 8) fail(fn, ": the grid's bits must be in 1..8, got ", bits);
  if (!std::isfinite(target_bits) || target_bits < bits || target_bits >= 16)
    fail(fn, ": option 'target_bits' must be >= the grid's bits (", bits, ") and < 16, got ", target_bits);
  if (owq_layers < 1) fail(fn, ": option 'owq_layers' must be >= 1, got ", owq_layers);
  // r: the fraction of a block's input columns kept, spread over owq_layers linears (methods.md#owq-budget).
  const double r = 12.0 / (16.0 - bits) * (target_bits - bits) / owq_layers;
  const double ratio = mlp ? 0.375 : 1.0;
  int64_t n = (int64_t)std::nearbyint((double)cols * r * ratio);  // half to even, as Python's round()
  if (n % 2 == 1) ++n;
  return n;
}

std::vector<double> owq_scores(const LayerProblem& p, const GridSpec& spec, OwqScore score) {
  const int64_t r = p.W.size(0), c = p.W.size(1);
  const auto S = p.sigma.cmat();
  std::vector<double> s((size_t)c);
  for (int64_t j = 0; j < c; ++j) s[(size_t)j] = (double)S(j, j);
  if (score == OwqScore::SigmaDiag) return s;
  // ‖W[:, j] − RTN(W)[:, j]‖² with the grid fitted to all of W (importances: diag Σ).
  const std::vector<float> imp = sigma_diag(p.sigma);
  const Grid g = grid_fit(p.W, spec, imp.data());
  const auto W = p.W.cmat();
  std::vector<double> err((size_t)c, 0.0);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) {
      const double d = (double)W(i, j) - (double)g.quantize(W(i, j), i, g.g_idx[(size_t)j]);
      err[(size_t)j] += d * d;
    }
  for (int64_t j = 0; j < c; ++j) s[(size_t)j] *= err[(size_t)j];
  return s;
}

std::vector<int64_t> owq_select(const std::vector<double>& score, int64_t n) {
  const int64_t c = (int64_t)score.size();
  if (n < 0 || n > c) fail("owq: cannot select ", n, " of ", c, " columns");
  std::vector<int64_t> idx((size_t)c);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return score[(size_t)a] > score[(size_t)b]; });
  idx.resize((size_t)n);
  return idx;
}

OwqResult owq(const LayerProblem& p, const GridSpec& spec, const OwqOptions& opt, const SolverLog& log) {
  const char* fn = "owq";
  spec.validate();
  if (spec.kind != GridKind::Uniform || spec.float_zero || spec.mixed_bits() || !spec.row_group.empty())
    fail(fn, ": the weak columns' codes must decode to 0: needs a uniform grid with integer zeros and no allocation, got ", spec.str());
  const int64_t r = p.W.size(0), c = p.W.size(1);
  // "block 2 linear q [64, 64] (site attn_in)", or "[64, 64] linear" for a problem without a name.
  const std::string where = (p.block > 0 && !p.name.empty() ? "block " + std::to_string(p.block) + " linear " + p.name + " " + shape_str(p.W.shape())
                                                             : shape_str(p.W.shape()) + " linear") +
                            (p.site.empty() ? std::string() : " (site " + p.site + ")");

  // n: given, or the budget rule with the linear's kind.
  const bool by_columns = opt.columns >= 0, by_bits = opt.target_bits != 0;
  if (by_columns == by_bits)
    fail(fn, by_columns ? ": give option 'columns' or option 'target_bits', not both"
                        : ": give option 'columns' (weak columns per linear) or option 'target_bits' (average bits, the budget rule)");
  int64_t n = opt.columns;
  if (by_bits) {
    bool mlp = opt.layer_kind == OwqLayerKind::Mlp;
    if (opt.layer_kind == OwqLayerKind::Auto) {
      bool known = false;
      mlp = owq_site_is_mlp(p.site, &known);
      if (!known)
        fail(fn, ": option 'layer_kind' is 'auto' but the ", where, " has ", p.site.empty() ? std::string("no site") : "site '" + p.site + "'",
             " (attn_in, attn_out: attention; ffn_in, ffn_mid: mlp): give layer_kind = attention or mlp");
    }
    n = owq_budget_columns(c, spec.bits, opt.target_bits, opt.owq_layers, mlp);
  }
  if (n >= c)
    fail(fn, ": ", n, " weak columns", by_bits ? " (from target_bits)" : "", " leave no column of the ", where, " to quantize");

  OwqResult res;
  res.score = owq_scores(p, spec, opt.score);
  res.weak = owq_select(res.score, n);
  if (log && n > 0) log("summary", std::to_string(n) + " weak columns of the " + where);
  Tensor kept;
  GptqResult gr = gptq_keep_columns(p, spec, res.weak, &kept, opt.gptq, log);
  res.percdamp_used = gr.percdamp_used;
  res.proxy_loss = gr.proxy_loss;
  res.q = std::move(gr.q);
  // The weak columns as outliers: every row, the value rounded to fp16 (what storage counts),
  // columns in increasing order.
  std::vector<int64_t> pos((size_t)n);
  std::iota(pos.begin(), pos.end(), 0);
  std::sort(pos.begin(), pos.end(), [&](int64_t a, int64_t b) { return res.weak[(size_t)a] < res.weak[(size_t)b]; });
  SparseEntries& o = res.q.outliers;
  o.row.reserve((size_t)(n * r));
  o.col.reserve((size_t)(n * r));
  o.val.reserve((size_t)(n * r));
  const float* kv = n > 0 ? kept.f32() : nullptr;
  for (int64_t k : pos) {
    const int64_t j = res.weak[(size_t)k];
    for (int64_t i = 0; i < r; ++i) {
      const float v = f16_to_f32(f32_to_f16(kv[i * n + k]));
      if (!std::isfinite(v)) fail(fn, ": weak column ", j + 1, " of the ", where, " holds ", kv[i * n + k], " at row ", i + 1, ", beyond fp16");
      o.row.push_back((int32_t)i);
      o.col.push_back((int32_t)j);
      o.val.push_back(v);
    }
  }
  return res;
}

}  // namespace qf
