// qforge — CVXQ pieces in Lua (docs/methods.md#cvxq): qf.dual_ascent, qf.row_clusters,
// qf.row_log2_variance, qf.group_spread, qf.group_mean, qf.bias_correction, m:bias / m:set_bias,
// and the gradient statistics cal:gradient_statistics{...} (sensitivity.h).
//
// An allocation is plain Lua data: dual_ascent returns one bits tensor per input entry, in the
// entry's shape, which a recipe can inspect, edit, and hand to qf.grid{alloc = ...}.
#include <chrono>
#include <cmath>
#include <cstdio>

#include "calib/calibration.h"
#include "solvers/cvxq.h"
#include "solvers/cvxq_dual_ascent.h"
#include "lua_util.h"
#include "runner.h"
#include "calib/sensitivity.h"
#include "quant/storage.h"

namespace qf::lua {

// Values of field `key` of the table at `idx`: a tensor (any shape), an array, or a number
// (broadcast to `n` entries when n > 0). Returns the values and, for tensors, the shape.
static std::vector<double> values_field(lua_State* L, int idx, const char* key, const char* fn, int64_t n, Shape* shape,
                                        bool required) {
  std::vector<double> out;
  lua_getfield(L, idx, key);
  const int top = lua_gettop(L);
  if (is_tensor(L, top)) {
    const Tensor& t = check_tensor(L, top, fn);
    if (shape) *shape = t.shape();
    for (float v : t.contiguous().to_vector()) out.push_back(v);
  } else if (lua_type(L, top) == LUA_TTABLE) {
    const lua_Integer len = luaL_len(L, top);
    for (lua_Integer k = 1; k <= len; ++k) {
      lua_rawgeti(L, top, k);
      if (!lua_isnumber(L, -1)) fail(fn, ": field '", key, "' entry ", k, " is not a number");
      out.push_back(lua_tonumber(L, -1));
      lua_pop(L, 1);
    }
    if (shape) *shape = {(int64_t)out.size()};
  } else if (lua_isnumber(L, top)) {
    out.assign((size_t)std::max<int64_t>(n, 1), lua_tonumber(L, top));
    if (shape) *shape = {(int64_t)out.size()};
  } else if (!lua_isnil(L, top) || required) {
    fail(fn, ": field '", key, "' must be a tensor, an array or a number, got ", luaL_typename(L, top));
  }
  lua_pop(L, 1);
  return out;
}

// qf.dual_ascent{ groups = { {var=, g2=, n=}, ... }, target_bits=, bmin=0, bmax=8, steps=100,
//                 step_size=1.9, log2_lambda=0, tol=0.01 }
static int f_dual_ascent(lua_State* L) {
  const char* fn = "dual_ascent";
  check_table(L, 1, fn);
  check_opts(L, 1, fn, {"groups", "target_bits", "bmin", "bmax", "steps", "step_size", "log2_lambda", "tol"});
  DualAscentOptions o;
  lua_getfield(L, 1, "target_bits");
  if (lua_isnil(L, -1)) fail(fn, ": option 'target_bits' is required");
  lua_pop(L, 1);
  o.target_bits = opt_field_num(L, 1, "target_bits", fn, o.target_bits);
  o.bmin = (int)opt_field_int(L, 1, "bmin", fn, o.bmin);
  o.bmax = (int)opt_field_int(L, 1, "bmax", fn, o.bmax);
  o.steps = (int)opt_field_int(L, 1, "steps", fn, o.steps);
  o.step_size = opt_field_num(L, 1, "step_size", fn, o.step_size);
  o.log2_lambda0 = opt_field_num(L, 1, "log2_lambda", fn, o.log2_lambda0);
  o.tol = opt_field_num(L, 1, "tol", fn, o.tol);
  lua_getfield(L, 1, "groups");
  if (lua_type(L, -1) != LUA_TTABLE) fail(fn, ": option 'groups' must be a list of {var=, g2=, n=} tables");
  const int gi = lua_gettop(L);
  const lua_Integer ne = luaL_len(L, gi);
  if (ne == 0) fail(fn, ": 'groups' is empty");
  std::vector<double> score, n;
  std::vector<Shape> shapes;
  for (lua_Integer e = 1; e <= ne; ++e) {
    lua_rawgeti(L, gi, e);
    if (lua_type(L, -1) != LUA_TTABLE) fail(fn, ": groups[", e, "] must be a table {var=, g2=, n=}");
    const int t = lua_gettop(L);
    check_opts(L, t, fn, {"var", "g2", "n", "name"});
    Shape shape;
    const std::vector<double> var = values_field(L, t, "var", fn, 0, &shape, true);
    const std::vector<double> g2 = values_field(L, t, "g2", fn, (int64_t)var.size(), nullptr, true);
    const std::vector<double> cnt = values_field(L, t, "n", fn, (int64_t)var.size(), nullptr, true);
    if (var.empty()) fail(fn, ": groups[", e, "] is empty");
    if (g2.size() != var.size() || cnt.size() != var.size())
      fail(fn, ": groups[", e, "]: var has ", var.size(), " entries, g2 ", g2.size(), ", n ", cnt.size());
    for (size_t k = 0; k < var.size(); ++k) {
      if (!(var[k] >= 0) || !(g2[k] >= 0))
        fail(fn, ": groups[", e, "] entry ", k + 1, ": variance ", var[k], " and sensitivity ", g2[k], " must be >= 0");
      score.push_back(std::log2(var[k]) + std::log2(g2[k]));  // 0 → −inf → bmin
      n.push_back(cnt[k]);
    }
    shapes.push_back(shape);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  const DualAscentResult r = dual_ascent(score, n, o);
  lua_createtable(L, 0, 7);
  lua_createtable(L, (int)ne, 0);
  size_t at = 0;
  for (lua_Integer e = 1; e <= ne; ++e) {
    const Shape& s = shapes[(size_t)e - 1];
    int64_t cnt = 1;
    for (int64_t d : s) cnt *= d;
    std::vector<float> b((size_t)cnt);
    for (int64_t k = 0; k < cnt; ++k) b[(size_t)k] = (float)r.bits[at + (size_t)k];
    at += (size_t)cnt;
    push_tensor(L, Tensor::from_data(s, b));
    lua_rawseti(L, -2, e);
  }
  lua_setfield(L, -2, "bits");
  set_field(L, "rate", r.rate);
  set_field(L, "log2_lambda", r.log2_lambda);
  set_field(L, "steps", r.steps);
  set_field(L, "bisections", r.bisections);
  set_field(L, "converged", r.converged);
  push_numbers(L, r.rate_history);
  lua_setfield(L, -2, "history");
  return 1;
}

// qf.row_clusters(scores, k) -> 1-based row group of every row (a Lua array)
static int f_row_clusters(lua_State* L) {
  const char* fn = "row_clusters";
  lua_createtable(L, 0, 1);
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "s");
  const std::vector<double> s = values_field(L, lua_gettop(L), "s", fn, 0, nullptr, true);
  lua_pop(L, 1);
  const std::vector<int32_t> rg = row_clusters(s, check_int(L, 2, fn));
  lua_createtable(L, (int)rg.size(), 0);
  for (size_t i = 0; i < rg.size(); ++i) {
    lua_pushinteger(L, rg[i] + 1);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int f_row_log2_variance(lua_State* L) {
  const std::vector<double> v = row_log2_variance(check_tensor(L, 1, "row_log2_variance"));
  push_tensor(L, Tensor::from_data({(int64_t)v.size()}, std::vector<float>(v.begin(), v.end())));
  return 1;
}

// Shared by qf.group_spread and qf.group_mean: (M, {group = -1, row_groups = {...}}) -> tensor
// [row groups, column groups] of reduce(M, row groups, group).
using GroupReduce = std::vector<double> (*)(const Tensor&, const std::vector<int32_t>&, int64_t, int64_t);
static int push_group_reduce(lua_State* L, const char* fn, GroupReduce reduce) {
  const Tensor& W = check_tensor(L, 1, fn);
  check_opts(L, 2, fn, {"group", "row_groups"});
  const int64_t group = opt_field_int(L, 2, "group", fn, -1);
  std::vector<int32_t> rg;
  int64_t nrg = 0;
  if (!is_none_or_nil(L, 2)) {
    for (double v : values_field(L, 2, "row_groups", fn, 0, nullptr, false)) {
      if (v != std::floor(v) || v < 1) fail(fn, ": row_groups entries must be integers >= 1, got ", v);
      rg.push_back((int32_t)v - 1);
      nrg = std::max<int64_t>(nrg, (int64_t)v);
    }
  }
  const std::vector<double> s = reduce(W, rg, nrg, group);
  const int64_t rows = rg.empty() ? W.size(0) : nrg;
  push_tensor(L, Tensor::from_data({rows, (int64_t)s.size() / rows}, std::vector<float>(s.begin(), s.end())));
  return 1;
}
// σ²_g: mean squared deviation from the group median.
static int f_group_spread(lua_State* L) { return push_group_reduce(L, "group_spread", group_spread); }
// G²_g: the mean of a per-weight statistic (e.g. a squared-gradient mean) over each group.
static int f_group_mean(lua_State* L) { return push_group_reduce(L, "group_mean", group_mean); }

// qf.bias_correction(W, What, mu [, bias]) -> corrected bias tensor
static int f_bias_correction(lua_State* L) {
  const char* fn = "bias_correction";
  Tensor b;
  if (!is_none_or_nil(L, 4)) b = check_tensor(L, 4, fn);
  push_tensor(L, bias_correction(check_tensor(L, 1, fn), check_tensor(L, 2, fn), check_tensor(L, 3, fn), b));
  return 1;
}

static Linear& linear_arg(lua_State* L, const char* fn) {
  Model& m = *check_model(L, 1, fn).m;
  const int64_t b = check_int(L, 2, fn);
  if (b < 1 || b > m.n_blocks()) fail(fn, ": block ", b, " out of range (the model has ", m.n_blocks(), " blocks, numbered from 1)");
  return m.block_mut((int)b - 1).linear(check_str(L, 3, fn));
}

// m:bias(block, name) -> tensor view or nil
static int m_bias(lua_State* L) {
  Linear& lin = linear_arg(L, "bias");
  if (lin.bias.defined()) push_tensor(L, lin.bias);
  else lua_pushnil(L);
  return 1;
}

// m:set_bias(block, name, tensor|nil): adds, replaces or removes a linear's bias
static int m_set_bias(lua_State* L) {
  Linear& lin = linear_arg(L, "set_bias");
  if (is_none_or_nil(L, 4)) {
    lin.bias = Tensor();
    return 0;
  }
  const Tensor& b = check_tensor(L, 4, "set_bias");
  if (b.numel() != lin.out_features())
    fail("set_bias: linear '", lin.name, "' has ", lin.out_features(), " outputs, the bias has ", b.numel(), " entries");
  Tensor nb = Tensor::empty({lin.out_features()});
  nb.copy_(b.contiguous().view({lin.out_features()}));
  for (float v : nb.to_vector())
    if (!std::isfinite(v)) fail("set_bias: linear '", lin.name, "': the bias has a non-finite entry");
  lin.bias = nb;
  return 0;
}

// cal:gradient_statistics{pca = 1024, stride = 128, iters = 0, batch = 1, joint_positions = false}
// CVXQ's squared gradients of PCA-projected final hidden states (sensitivity.h) over the
// calibration's windows, on the model's current weights (run it before quantizing). Returns
//   { [block] = { q = {g2 = Tensor [out, in], row = Tensor [out]}, ... },
//     pca = {k =, eigenvalues = {...}, explained = fraction of the variance}, iters =, samples =,
//     seconds =, pca_seconds = }
static int c_gradient_statistics(lua_State* L) {
  const char* fn = "gradient_statistics";
  LCal& c = check_cal(L, 1, fn);
  if (!is_none_or_nil(L, 2)) check_table(L, 2, fn);
  check_opts(L, 2, fn, {"pca", "stride", "iters", "batch", "joint_positions"});
  const Model& m = *c.m;
  const int k = (int)opt_field_int(L, 2, "pca", fn, 1024);
  if (k < 1) fail(fn, ": option 'pca' must be >= 1, got ", k);
  GradStatsOptions o;
  o.stride = (int)opt_field_int(L, 2, "stride", fn, o.stride);
  o.iters = (int)opt_field_int(L, 2, "iters", fn, o.iters);
  o.batch = (int)opt_field_int(L, 2, "batch", fn, o.batch);
  o.joint_positions = opt_field_bool(L, 2, "joint_positions", fn, o.joint_positions);
  const int nwin = c.cal->nsamples(), T = c.cal->seqlen();
  check_grad_stats_options(o, nwin);  // before the PCA's forward pass
  RunContext* ctx = run_context(L);
  auto now = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); };
  const double tp = now();
  // CVXQ keeps the top 1024 of 4096+ dimensions; a narrower model keeps all it has.
  auto pca_progress = [&](int done, int total, double secs) {
    std::fprintf(stderr, "gradient statistics: PCA forward %d/%d windows  %.1f s  ETA %.0f s\n", done, total, secs,
                 secs / done * (total - done));
    if (ctx) ctx->log({{"event", "gradient_statistics_pca"}, {"windows", done}, {"nwin", total}, {"seconds", secs}});
  };
  const HiddenPca pca = hidden_pca(m, c.cal->windows(), nwin, T, std::min(k, m.cfg.dim), 8, pca_progress);
  const double pca_seconds = now() - tp;
  double top = 0;
  for (double e : pca.eigenvalues) top += e;
  std::fprintf(stderr, "gradient statistics: PCA of %lld final hidden states, %d components hold %.1f%% of the variance (%.1f s)\n",
               (long long)pca.tokens, (int)pca.eigenvalues.size(), 100 * top / pca.total_variance, pca_seconds);
  auto progress = [&](int done, int total, double secs) {
    if (done == total || done % std::max(1, total / 20) == 0) {
      std::fprintf(stderr, "gradient statistics: iteration %d/%d  %.1f s  ETA %.0f s\n", done, total, secs,
                   secs / done * (total - done));
      if (ctx) ctx->log({{"event", "gradient_statistics"}, {"iteration", done}, {"iters", total}, {"seconds", secs}});
    }
  };
  const GradStats gs = gradient_statistics(m, c.cal->windows(), nwin, T, pca, o, progress);
  lua_createtable(L, m.n_blocks(), 6);
  for (int l = 0; l < m.n_blocks(); ++l) {
    lua_createtable(L, 0, (int)gs.names[l].size());
    for (size_t j = 0; j < gs.names[l].size(); ++j) {
      lua_createtable(L, 0, 2);
      push_tensor(L, gs.g2[l][j]);
      lua_setfield(L, -2, "g2");
      const std::vector<double> r = row_means(gs.g2[l][j]);
      push_tensor(L, Tensor::from_data({(int64_t)r.size()}, std::vector<float>(r.begin(), r.end())));
      lua_setfield(L, -2, "row");
      lua_setfield(L, -2, gs.names[l][j].c_str());
    }
    lua_rawseti(L, -2, l + 1);
  }
  lua_createtable(L, 0, 3);
  set_field(L, "k", (int64_t)pca.eigenvalues.size());
  set_field(L, "explained", top / pca.total_variance);
  push_numbers(L, pca.eigenvalues);
  lua_setfield(L, -2, "eigenvalues");
  lua_setfield(L, -2, "pca");
  set_field(L, "iters", (int64_t)gs.iters);
  set_field(L, "samples", gs.samples);
  set_field(L, "seconds", gs.seconds);
  set_field(L, "pca_seconds", pca_seconds);
  return 1;
}

// m:storage() -> {bits_per_weight =, codes =, params =, side =, outliers =, unquantized = (bits per
// weight each), unquantized_dtype =, weights =, pruned_fraction =} over the block linears (storage.h).
static int m_storage(lua_State* L) {
  const StorageBits s = model_storage(*check_model(L, 1, "storage").m);
  const double n = (double)std::max<int64_t>(s.weights, 1);
  lua_createtable(L, 0, 9);
  set_field(L, "bits_per_weight", s.per_weight());
  set_field(L, "codes", s.codes / n);
  set_field(L, "params", s.params / n);
  set_field(L, "side", s.side / n);
  set_field(L, "outliers", s.outliers / n);
  set_field(L, "unquantized", s.unquantized / n);
  set_field(L, "unquantized_dtype", std::string(s.unquantized_dtype()));
  set_field(L, "weights", s.weights);
  set_field(L, "pruned_fraction", (double)s.pruned / n);
  return 1;
}

void open_cvxq(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  // Arities (the most arguments used, self included): lua_util.h.
  add_methods(L, kModelMT,
              {{"bias", qf_guard<m_bias>, 3}, {"set_bias", qf_guard<m_set_bias>, 4}, {"storage", qf_guard<m_storage>, 1}});
  add_methods(L, kCalMT, {{"gradient_statistics", qf_guard<c_gradient_statistics>, 2}});  // registered by open_quant
  set_funcs(L, mod,
            {{"dual_ascent", qf_guard<f_dual_ascent>, 1},
             {"row_clusters", qf_guard<f_row_clusters>, 2},
             {"row_log2_variance", qf_guard<f_row_log2_variance>, 1},
             {"group_spread", qf_guard<f_group_spread>, 2},
             {"group_mean", qf_guard<f_group_mean>, 2},
             {"bias_correction", qf_guard<f_bias_correction>, 4}});
}

}  // namespace qf::lua
