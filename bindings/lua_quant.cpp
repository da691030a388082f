// qforge — the quantization primitives in Lua, 1:1 with the engine:
//   qf.grid, qf.fit_grid, qf.rtn, qf.gptq, qf.cd_sweep, qf.quantease, qf.iht_step,
//   qf.quantease_outliers, qf.objective, qf.calibration.
// Userdata: qforge.Grid (fitted params), qforge.QLinear (codes + grid + outliers),
// qforge.Calibration (the sequential block pipeline).
#include <cmath>
#include <cstdio>

#include "calib/calibration.h"
#include "solvers/gptq.h"
#include "lua_util.h"
#include "solvers/quantease_outliers.h"
#include "solvers/quantease.h"
#include "solvers/rtn.h"
#include "runner.h"

namespace qf::lua {

static constexpr const char* kGridMT = "qforge.Grid";
static constexpr const char* kQLinMT = "qforge.QLinear";
static constexpr const char* kSpecMT = "qforge.GridSpec";

// ---- grid specs: plain tables {bits=, sym=, group=, mse=, ...} ------------------------
// Integer values of a tensor or a Lua array field (for allocations), checked against [lo, hi].
static std::vector<int64_t> int_list_field(lua_State* L, int arg, const char* key, const char* fn, int64_t lo, int64_t hi) {
  std::vector<int64_t> out;
  lua_getfield(L, arg, key);
  const int top = lua_gettop(L);
  std::vector<double> vals;
  if (is_tensor(L, top)) {
    const Tensor& t = check_tensor(L, top, fn);
    vals.assign(t.numel(), 0.0);
    const std::vector<float> v = t.contiguous().to_vector();
    for (size_t k = 0; k < v.size(); ++k) vals[k] = v[k];
  } else if (lua_type(L, top) == LUA_TTABLE) {
    const lua_Integer n = luaL_len(L, top);
    for (lua_Integer k = 1; k <= n; ++k) {
      lua_rawgeti(L, top, k);
      if (!lua_isnumber(L, -1)) fail(fn, ": option '", key, "' entry ", k, " is not a number");
      vals.push_back(lua_tonumber(L, -1));
      lua_pop(L, 1);
    }
  } else if (!lua_isnil(L, top)) {
    fail(fn, ": option '", key, "' must be a tensor or an array of integers, got ", luaL_typename(L, top));
  }
  lua_pop(L, 1);
  for (size_t k = 0; k < vals.size(); ++k) {
    const double v = vals[k];
    if (v != std::floor(v) || v < (double)lo || v > (double)hi)
      fail(fn, ": option '", key, "' entry ", k + 1, " is ", v, ", expected an integer in ", lo, "..", hi);
    out.push_back((int64_t)v);
  }
  return out;
}

static GridSpec spec_arg(lua_State* L, int arg, const char* fn) {
  if (lua_type(L, arg) != LUA_TTABLE) type_error(L, arg, fn, "grid table (qf.grid{...})");
  check_opts(L, arg, fn, {"bits", "sym", "group", "mse", "maxshrink", "grid_points", "norm", "kind", "compand_mult",
                          "compand_bias", "compand_search", "alloc", "row_groups", "f16_scales", "float_zero"});
  GridSpec s;
  s.bits = (int)opt_field_int(L, arg, "bits", fn, s.bits);
  s.sym = opt_field_bool(L, arg, "sym", fn, s.sym);
  s.group = opt_field_int(L, arg, "group", fn, s.group);
  s.mse = opt_field_bool(L, arg, "mse", fn, s.mse);
  s.maxshrink = (float)opt_field_num(L, arg, "maxshrink", fn, s.maxshrink);
  s.grid_points = (int)opt_field_int(L, arg, "grid_points", fn, s.grid_points);
  s.norm = (float)opt_field_num(L, arg, "norm", fn, s.norm);
  const std::string kind = opt_field_str(L, arg, "kind", fn, "uniform");
  if (kind == "compand") s.kind = GridKind::Compand;
  else if (kind != "uniform") fail(fn, ": option 'kind' must be \"uniform\" or \"compand\", got \"", kind, "\"");
  s.compand_mult = (float)opt_field_num(L, arg, "compand_mult", fn, s.compand_mult);
  s.compand_bias = (float)opt_field_num(L, arg, "compand_bias", fn, s.compand_bias);
  s.compand_search = opt_field_bool(L, arg, "compand_search", fn, s.compand_search);
  s.f16_scales = opt_field_bool(L, arg, "f16_scales", fn, s.f16_scales);
  s.float_zero = opt_field_bool(L, arg, "float_zero", fn, s.float_zero);
  // Allocation: alloc = bits per (row group, column group) [nrowgroups, ngroups]; row_groups =
  // 1-based row group of every row (absent: each row its own).
  for (int64_t b : int_list_field(L, arg, "alloc", fn, 0, 8)) s.group_bits.push_back((uint8_t)b);
  for (int64_t k : int_list_field(L, arg, "row_groups", fn, 1, 1 << 30)) {
    s.row_group.push_back((int32_t)(k - 1));
    s.nrowgroups = std::max<int64_t>(s.nrowgroups, k);
  }
  lua_getfield(L, arg, "alloc");
  if (is_tensor(L, -1) && !s.row_group.empty()) {  // the allocation's rows are the row groups
    const Tensor& a = check_tensor(L, -1, fn);
    if (a.dim() == 2) s.nrowgroups = std::max<int64_t>(s.nrowgroups, a.size(0));
  }
  lua_pop(L, 1);
  try {
    s.validate();
  } catch (const Error& e) {
    // validate's messages start with "grid: "; qf.grid{} keeps them as they are (no "grid: grid:").
    const std::string msg = e.what(), pre = std::string(fn) + ": ";
    if (msg.rfind(pre, 0) == 0) throw;
    fail(fn, ": ", msg);
  }
  return s;
}

static void push_spec(lua_State* L, const GridSpec& s) {
  lua_createtable(L, 0, 7);
  set_field(L, "bits", s.bits);
  set_field(L, "sym", s.sym);
  set_field(L, "group", s.group);
  set_field(L, "mse", s.mse);
  if (s.mse) {
    set_field(L, "maxshrink", (double)s.maxshrink);
    set_field(L, "grid_points", s.grid_points);
    set_field(L, "norm", (double)s.norm);
  }
  if (s.f16_scales) set_field(L, "f16_scales", true);
  if (s.float_zero) set_field(L, "float_zero", true);
  if (s.kind == GridKind::Compand) {
    set_field(L, "kind", std::string("compand"));
    set_field(L, "compand_mult", (double)s.compand_mult);
    set_field(L, "compand_bias", (double)s.compand_bias);
    set_field(L, "compand_search", s.compand_search);
  }
  if (!s.group_bits.empty()) {
    std::vector<float> v(s.group_bits.begin(), s.group_bits.end());
    push_tensor(L, Tensor::from_data({(int64_t)v.size()}, v));
    lua_setfield(L, -2, "alloc");
  }
  if (!s.row_group.empty()) {
    lua_createtable(L, (int)s.row_group.size(), 0);
    for (size_t k = 0; k < s.row_group.size(); ++k) {
      lua_pushinteger(L, s.row_group[k] + 1);
      lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
    lua_setfield(L, -2, "row_groups");
  }
  luaL_setmetatable(L, kSpecMT);
}

static int f_grid(lua_State* L) {
  push_spec(L, spec_arg(L, 1, "grid"));
  return 1;
}

static int spec_tostring(lua_State* L) {
  push_str(L, "qforge.grid " + spec_arg(L, 1, "__tostring").str());
  return 1;
}

// ---- log sink: stderr and the run's log.jsonl -------------------------------------------
static SolverLog solver_log(lua_State* L, const char* solver) {
  RunContext* ctx = run_context(L);
  return [ctx, solver](const std::string& event, const std::string& detail) {
    // Per-sweep progress goes to the run log only; anything else (damping escalation,
    // a kept init, a projection) is also worth a line on stderr.
    if (event != "sweep" && event != "iter" && event != "lambda_max")
      std::fprintf(stderr, "%s: %s %s\n", solver, event.c_str(), detail.c_str());
    if (ctx) {
      try {
        ctx->log({{"event", std::string(solver) + "_" + event}, {"detail", detail}});
      } catch (...) {  // logging must never fail a solve
      }
    }
  };
}

// m:set_linear(block, name, q): replaces a linear's weight by a QLinear (its dequantized
// values; the codes are kept for exports that store them) or by a Tensor (codes dropped).
static QuantizedLinear& check_qlin(lua_State* L, int arg, const char* fn);
static int m_set_linear(lua_State* L) {
  Model& m = *check_model(L, 1, "set_linear").m;
  const int64_t b = check_int(L, 2, "set_linear");
  if (b < 1 || b > m.n_blocks()) fail("set_linear: block ", b, " out of range (the model has ", m.n_blocks(), " blocks, numbered from 1)");
  Linear& lin = m.block_mut((int)b - 1).linear(check_str(L, 3, "set_linear"));
  if (is_tensor(L, 4)) {
    const Tensor& W = check_tensor(L, 4, "set_linear");
    if (W.shape() != lin.weight.shape())
      fail("set_linear: block ", b, " linear '", lin.name, "' is ", shape_str(lin.weight.shape()), ", the tensor is ", shape_str(W.shape()));
    lin.weight.copy_(W);
    lin.quant.reset();
    return 0;
  }
  const QuantizedLinear& q = check_qlin(L, 4, "set_linear");
  if (q.grid.rows != lin.weight.size(0) || q.grid.cols != lin.weight.size(1))
    fail("set_linear: block ", b, " linear '", lin.name, "' is ", shape_str(lin.weight.shape()), ", the QLinear is [", q.grid.rows, ", ", q.grid.cols, "]");
  lin.weight.copy_(q.dequantize());
  lin.quant = std::make_shared<const QuantizedLinear>(q);
  return 0;
}

// ---- Grid and QLinear userdata ------------------------------------------------------------
static Grid& check_grid(lua_State* L, int arg, const char* fn) { return *static_cast<Grid*>(check_udata(L, arg, kGridMT, fn)); }
static QuantizedLinear& check_qlin(lua_State* L, int arg, const char* fn) {
  return *static_cast<QuantizedLinear*>(check_udata(L, arg, kQLinMT, fn));
}
static void push_grid(lua_State* L, Grid g) { new_udata<Grid>(L, kGridMT, std::move(g)); }
static void push_qlin(lua_State* L, QuantizedLinear q) { new_udata<QuantizedLinear>(L, kQLinMT, std::move(q)); }

static Tensor params_tensor(const Grid& g, const std::vector<float>& v) {
  return Tensor::from_data({g.nrowgroups(), g.ngroups}, v);
}

static int g_scales(lua_State* L) {
  const Grid& g = check_grid(L, 1, "scales");
  push_tensor(L, params_tensor(g, g.scale));
  return 1;
}
static int g_zeros(lua_State* L) {
  const Grid& g = check_grid(L, 1, "zeros");
  push_tensor(L, params_tensor(g, g.zero));
  return 1;
}
static int g_g_idx(lua_State* L) {  // 1-based group of every column
  const Grid& g = check_grid(L, 1, "g_idx");
  lua_createtable(L, (int)g.cols, 0);
  for (int64_t c = 0; c < g.cols; ++c) {
    lua_pushinteger(L, g.g_idx[c] + 1);
    lua_rawseti(L, -2, c + 1);
  }
  return 1;
}
static int g_spec(lua_State* L) {
  push_spec(L, check_grid(L, 1, "spec").spec);
  return 1;
}
// grid:quantize(W [, outliers]) -> QLinear: rounds every weight of W onto this grid; the nonzero
// entries of the dense tensor `outliers` (same shape) become the QLinear's sparse outliers, so
// q:dequantize() = grid values + outliers (a solver that keeps Ŵ = on-grid part + sparse part).
static int g_quantize(lua_State* L) {
  const Grid& g = check_grid(L, 1, "quantize");
  QuantizedLinear q = quantize_to_grid(check_tensor(L, 2, "quantize"), g);
  if (!is_none_or_nil(L, 3)) {
    const Tensor& H = check_tensor(L, 3, "quantize");
    if (H.dtype() != DType::F32) fail("quantize: outliers tensor has dtype ", dtype_name(H.dtype()), ", expected f32");
    if (H.dim() != 2 || H.size(0) != g.rows || H.size(1) != g.cols)
      fail("quantize: outliers ", shape_str(H.shape()), " do not match the grid's [", g.rows, ", ", g.cols, "]");
    const Tensor Hc = H.contiguous();
    const float* h = Hc.f32();
    for (int64_t r = 0; r < g.rows; ++r)
      for (int64_t c = 0; c < g.cols; ++c) {
        const float v = h[r * g.cols + c];
        if (!std::isfinite(v)) fail("quantize: outlier at row ", r + 1, ", column ", c + 1, " is not finite (", v, ")");
        if (v != 0.f) {
          q.outliers.row.push_back((int32_t)r);
          q.outliers.col.push_back((int32_t)c);
          q.outliers.val.push_back(v);
        }
      }
  }
  push_qlin(L, std::move(q));
  return 1;
}
static int g_tostring(lua_State* L) {
  const Grid& g = check_grid(L, 1, "__tostring");
  push_str(L, "qforge.Grid " + g.spec.str() + " [" + std::to_string(g.rows) + ", " + std::to_string(g.cols) + "], " +
                  std::to_string(g.ngroups) + " group(s) per row");
  return 1;
}

static int q_dequantize(lua_State* L) {
  push_tensor(L, check_qlin(L, 1, "dequantize").dequantize());
  return 1;
}
static int q_codes(lua_State* L) {
  push_tensor(L, check_qlin(L, 1, "codes").codes);
  return 1;
}
static int q_grid(lua_State* L) {
  push_grid(L, check_qlin(L, 1, "grid").grid);
  return 1;
}
static int q_nnz(lua_State* L) {  // number of full-precision outliers
  lua_pushinteger(L, check_qlin(L, 1, "nnz").outliers.nnz());
  return 1;
}
static int q_outliers(lua_State* L) {  // {{row, col, value}, ...}, 1-based
  const SparseEntries& o = check_qlin(L, 1, "outliers").outliers;
  lua_createtable(L, (int)o.nnz(), 0);
  for (int64_t k = 0; k < o.nnz(); ++k) {
    lua_createtable(L, 3, 0);
    lua_pushinteger(L, o.row[k] + 1);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, o.col[k] + 1);
    lua_rawseti(L, -2, 2);
    lua_pushnumber(L, o.val[k]);
    lua_rawseti(L, -2, 3);
    lua_rawseti(L, -2, k + 1);
  }
  return 1;
}
static int q_tostring(lua_State* L) {
  const QuantizedLinear& q = check_qlin(L, 1, "__tostring");
  push_str(L, "qforge.QLinear " + q.grid.spec.str() + " [" + std::to_string(q.grid.rows) + ", " + std::to_string(q.grid.cols) +
                  "]" + (q.outliers.nnz() ? ", " + std::to_string(q.outliers.nnz()) + " outliers" : std::string()));
  return 1;
}

// ---- solvers ---------------------------------------------------------------------------------
static int f_fit_grid(lua_State* L) {
  push_grid(L, grid_fit(check_tensor(L, 1, "fit_grid"), spec_arg(L, 2, "fit_grid")));
  return 1;
}

static int f_rtn(lua_State* L) {
  push_qlin(L, rtn(check_tensor(L, 1, "rtn"), spec_arg(L, 2, "rtn")));
  return 1;
}

static int f_gptq(lua_State* L) {
  const char* fn = "gptq";
  const Tensor& W = check_tensor(L, 1, fn);
  const Tensor& H = check_tensor(L, 2, fn);
  const GridSpec spec = spec_arg(L, 3, fn);
  check_opts(L, 4, fn, {"blocksize", "percdamp", "act_order", "static_groups"});
  GptqOptions o;
  o.blocksize = opt_field_int(L, 4, "blocksize", fn, o.blocksize);
  o.percdamp = opt_field_num(L, 4, "percdamp", fn, o.percdamp);
  o.act_order = opt_field_bool(L, 4, "act_order", fn, o.act_order);
  o.static_groups = opt_field_bool(L, 4, "static_groups", fn, o.static_groups);
  GptqResult r = gptq(W, H, spec, o, solver_log(L, fn));
  push_qlin(L, std::move(r.q));
  lua_createtable(L, 0, 2);
  set_field(L, "percdamp", r.percdamp_used);
  set_field(L, "proxy_loss", r.proxy_loss);
  return 2;
}

static std::vector<int64_t> order_field(lua_State* L, int arg, const char* fn, int64_t cols) {
  std::vector<int64_t> order;
  if (lua_type(L, arg) != LUA_TTABLE) return order;
  lua_getfield(L, arg, "order");
  if (!lua_isnil(L, -1)) {
    if (!lua_istable(L, -1)) fail(fn, ": option 'order' must be a table of 1-based column indices");
    const lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    for (lua_Integer i = 1; i <= n; ++i) {
      lua_rawgeti(L, -1, i);
      int ok = 0;
      const lua_Integer c = lua_tointegerx(L, -1, &ok);
      lua_pop(L, 1);
      if (!ok || c < 1 || c > cols) fail(fn, ": order[", i, "] is not a column index in 1..", cols);
      order.push_back(c - 1);
    }
  }
  lua_pop(L, 1);
  return order;
}

static int f_cd_sweep(lua_State* L) {
  const char* fn = "cd_sweep";
  const Tensor& T = check_tensor(L, 1, fn);
  const Tensor& S = check_tensor(L, 2, fn);
  Tensor& What = check_tensor(L, 3, fn);
  const Grid& g = check_grid(L, 4, fn);
  check_opts(L, 5, fn, {"continuous", "order"});
  CdSweepOptions o;
  o.continuous = opt_field_bool(L, 5, "continuous", fn, false);
  o.order = order_field(L, 5, fn, g.cols);
  cd_sweep(T, S, What, g, o);
  lua_settop(L, 3);
  return 1;
}

static int f_quantease(lua_State* L) {
  const char* fn = "quantease";
  const Tensor& W = check_tensor(L, 1, fn);
  const Tensor& H = check_tensor(L, 2, fn);
  const GridSpec spec = spec_arg(L, 3, fn);
  check_opts(L, 4, fn, {"iters", "init", "continuous_every", "percdamp", "act_order"});
  QuantEaseOptions o;
  o.iters = (int)opt_field_int(L, 4, "iters", fn, o.iters);
  o.init = opt_field_str(L, 4, "init", fn, o.init);
  o.continuous_every = (int)opt_field_int(L, 4, "continuous_every", fn, o.continuous_every);
  o.percdamp = opt_field_num(L, 4, "percdamp", fn, o.percdamp);
  o.act_order = opt_field_bool(L, 4, "act_order", fn, o.act_order);
  QuantEaseResult r = quantease(W, H, spec, o, solver_log(L, fn));
  push_qlin(L, std::move(r.q));
  lua_createtable(L, 0, 2);
  push_numbers(L, r.objective);
  lua_setfield(L, -2, "objective");
  set_field(L, "init_objective", r.init_objective);
  return 2;
}

static int f_iht_step(lua_State* L) {
  const char* fn = "iht_step";
  const Tensor& W = check_tensor(L, 1, fn);
  const Tensor& S = check_tensor(L, 2, fn);
  const Tensor& What = check_tensor(L, 3, fn);
  Tensor& Hs = check_tensor(L, 4, fn);
  check_opts(L, 5, fn, {"k", "alpha", "structured", "lambda_max"});
  IhtOptions o;
  o.k = opt_field_int(L, 5, "k", fn, -1);
  if (o.k < 0) fail(fn, ": option 'k' (entries or columns to keep) is required and must be >= 0");
  o.alpha = opt_field_num(L, 5, "alpha", fn, o.alpha);
  o.structured = opt_field_bool(L, 5, "structured", fn, o.structured);
  o.lambda_max = opt_field_num(L, 5, "lambda_max", fn, 0.0);
  iht_step(W, S, What, Hs, o);
  lua_settop(L, 4);
  return 1;
}

static int f_lambda_max(lua_State* L) {
  lua_pushnumber(L, lambda_max(check_tensor(L, 1, "lambda_max")));
  return 1;
}

static int f_quantease_outliers(lua_State* L) {
  const char* fn = "quantease_outliers";
  const Tensor& W = check_tensor(L, 1, fn);
  const Tensor& H = check_tensor(L, 2, fn);
  const GridSpec spec = spec_arg(L, 3, fn);
  check_opts(L, 4, fn, {"ratio", "structured", "iters", "alpha", "continuous_every"});
  OutlierOptions o;
  o.ratio = opt_field_num(L, 4, "ratio", fn, o.ratio);
  o.structured = opt_field_bool(L, 4, "structured", fn, o.structured);
  o.iters = (int)opt_field_int(L, 4, "iters", fn, o.iters);
  o.alpha = opt_field_num(L, 4, "alpha", fn, o.alpha);
  o.continuous_every = (int)opt_field_int(L, 4, "continuous_every", fn, o.continuous_every);
  OutlierResult r = quantease_outliers(W, H, spec, o, solver_log(L, fn));
  push_qlin(L, std::move(r.q));
  lua_createtable(L, 0, 1);
  push_numbers(L, r.objective);
  lua_setfield(L, -2, "objective");
  return 2;
}

static int f_objective(lua_State* L) {
  const Objective o = objective(check_tensor(L, 1, "objective"), check_tensor(L, 2, "objective"), check_tensor(L, 3, "objective"));
  lua_pushnumber(L, o.value);
  lua_pushnumber(L, o.relative);
  return 2;
}

// ---- calibration -------------------------------------------------------------------------------
LCal& check_cal(lua_State* L, int arg, const char* fn) { return *static_cast<LCal*>(check_udata(L, arg, kCalMT, fn)); }

static Site site_from_name(const std::string& s, const char* fn) {
  for (Site x : {Site::AttnIn, Site::AttnOut, Site::FfnIn, Site::FfnMid})
    if (s == site_name(x)) return x;
  fail(fn, ": unknown site '", s, "' (expected attn_in, attn_out, ffn_in or ffn_mid)");
}

// qf.calibration{model=, text= | tokens=, nsamples=128, seqlen=0, seed=run seed, range={first, last}, fp_chain=true}
static int f_calibration(lua_State* L) {
  const char* fn = "calibration";
  check_table(L, 1, fn);
  check_opts(L, 1, fn, {"model", "text", "tokens", "nsamples", "seqlen", "seed", "range", "fp_chain"});
  lua_getfield(L, 1, "model");
  LModel& lm = check_model(L, -1, fn);
  std::shared_ptr<Model> model = lm.m;
  std::shared_ptr<Tokenizer> tok = lm.tok;
  lua_pop(L, 1);

  std::vector<int32_t> tokens;
  lua_getfield(L, 1, "tokens");
  const bool has_tokens = !lua_isnil(L, -1);
  if (has_tokens) tokens = ids_from_table(L, -1, fn);
  lua_pop(L, 1);
  const std::string text = opt_field_str(L, 1, "text", fn, "");
  if (has_tokens == !text.empty()) fail(fn, ": give exactly one of 'text' (a string) or 'tokens' (a table of ids)");
  if (!has_tokens) {
    if (!tok) fail(fn, ": the model has no tokenizer; pass tokens= instead of text=");
    tokens = tok->encode(text, true, false);
  }
  RunContext* ctx = run_context(L);
  CalibWindowsOptions o;
  o.nsamples = (int)opt_field_int(L, 1, "nsamples", fn, 128);
  o.seqlen = (int)opt_field_int(L, 1, "seqlen", fn, 0);
  if (o.seqlen == 0) o.seqlen = model->cfg.seq_len;
  o.seed = (uint64_t)opt_field_int(L, 1, "seed", fn, ctx ? ctx->seed : 0);
  lua_getfield(L, 1, "range");  // 1-based inclusive token positions {first, last}
  if (!lua_isnil(L, -1)) {
    if (!lua_istable(L, -1) || lua_rawlen(L, -1) != 2) fail(fn, ": option 'range' must be {first, last} (1-based token positions)");
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    int ok1 = 0, ok2 = 0;
    const lua_Integer a = lua_tointegerx(L, -2, &ok1), b = lua_tointegerx(L, -1, &ok2);
    lua_pop(L, 2);
    if (!ok1 || !ok2) fail(fn, ": option 'range' must hold two integers");
    o.begin = a - 1;
    o.end = b;
  }
  lua_pop(L, 1);
  const bool fp_chain = opt_field_bool(L, 1, "fp_chain", fn, true);
  const std::vector<int32_t> windows = draw_windows(tokens, o);
  LCal c{model, std::make_shared<Calibration>(*model, windows, o.nsamples, o.seqlen, fp_chain)};
  std::fprintf(stderr, "calibration: %d windows x %d tokens (seed %llu, tokens [%lld, %lld] of %zu, 1-based), %.1f MB of block activations\n",
               o.nsamples, o.seqlen, (unsigned long long)o.seed, (long long)o.begin + 1, (long long)(o.end < 0 ? (int64_t)tokens.size() : o.end),
               tokens.size(), c.cal->memory_bytes() / 1e6);
  new_udata<LCal>(L, kCalMT, std::move(c));
  return 1;
}

// cal:capture([sites]) -> {attn_in = {sigma = Tensor, mu = Tensor, tokens = N}, ...}
static int c_capture(lua_State* L) {
  const char* fn = "capture";
  LCal& c = check_cal(L, 1, fn);
  std::vector<Site> sites;
  if (!is_none_or_nil(L, 2)) {
    check_table(L, 2, fn);
    const lua_Integer n = (lua_Integer)lua_rawlen(L, 2);
    for (lua_Integer i = 1; i <= n; ++i) {
      lua_rawgeti(L, 2, i);
      if (lua_type(L, -1) != LUA_TSTRING) fail(fn, ": sites must be names (attn_in, attn_out, ffn_in, ffn_mid)");
      sites.push_back(site_from_name(lua_tostring(L, -1), fn));
      lua_pop(L, 1);
    }
  }
  std::map<Site, SiteStats> st = c.cal->capture(*c.m, sites);
  lua_createtable(L, 0, (int)st.size());
  for (auto& [site, s] : st) {
    lua_createtable(L, 0, 3);
    push_tensor(L, s.sigma());
    lua_setfield(L, -2, "sigma");
    push_tensor(L, s.mu());
    lua_setfield(L, -2, "mu");
    set_field(L, "tokens", s.tokens);
    lua_setfield(L, -2, site_name(site));
  }
  return 1;
}

static int c_advance(lua_State* L) {
  LCal& c = check_cal(L, 1, "advance");
  c.cal->advance(*c.m);
  return 0;
}
static int c_block(lua_State* L) {  // 1-based current block
  lua_pushinteger(L, check_cal(L, 1, "block").cal->block() + 1);
  return 1;
}
static int c_nblocks(lua_State* L) {
  lua_pushinteger(L, check_cal(L, 1, "nblocks").cal->nblocks());
  return 1;
}
static int c_memory_bytes(lua_State* L) {
  lua_pushinteger(L, check_cal(L, 1, "memory_bytes").cal->memory_bytes());
  return 1;
}
static int c_tokens(lua_State* L) {
  lua_pushinteger(L, check_cal(L, 1, "tokens").cal->tokens());
  return 1;
}
static int c_inputs(lua_State* L) {
  push_tensor(L, check_cal(L, 1, "inputs").cal->inputs());
  return 1;
}
static void need_fp_chain(const Calibration& cal, const char* fn) {
  if (!cal.fp_chain()) fail(fn, ": this calibration has no full-precision chain (made with fp_chain=false)");
}
static int c_fp_inputs(lua_State* L) {
  const Calibration& cal = *check_cal(L, 1, "fp_inputs").cal;
  need_fp_chain(cal, "fp_inputs");
  push_tensor(L, cal.fp_inputs());
  return 1;
}
static int c_fp_outputs(lua_State* L) {
  need_fp_chain(*check_cal(L, 1, "fp_outputs").cal, "fp_outputs");
  const Tensor& t = check_cal(L, 1, "fp_outputs").cal->fp_outputs();
  if (!t.defined()) fail("fp_outputs: not available before the block's first capture");
  push_tensor(L, t);
  return 1;
}

// The site feeding a linear, by name ("q" -> "attn_in").
static int f_input_site(lua_State* L) {
  const std::string n = check_str(L, 1, "input_site");
  if (const LinearSpec* s = kLlama.find(n)) {
    lua_pushstring(L, site_name(s->input));
    return 1;
  }
  fail("input_site: unknown linear '", n, "'");
}

void open_quant(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  // Arities (the most arguments used, self included): lua_util.h.
  register_class(L, kSpecMT, {}, nullptr, qf_guard<spec_tostring>);
  register_class(L, kGridMT,
                 {{"scales", qf_guard<g_scales>, 1}, {"zeros", qf_guard<g_zeros>, 1}, {"g_idx", qf_guard<g_g_idx>, 1},
                  {"spec", qf_guard<g_spec>, 1}, {"quantize", qf_guard<g_quantize>, 3}},
                 udata_gc<Grid>, qf_guard<g_tostring>);
  register_class(L, kQLinMT,
                 {{"dequantize", qf_guard<q_dequantize>, 1}, {"codes", qf_guard<q_codes>, 1}, {"grid", qf_guard<q_grid>, 1},
                  {"nnz", qf_guard<q_nnz>, 1}, {"outliers", qf_guard<q_outliers>, 1}},
                 udata_gc<QuantizedLinear>, qf_guard<q_tostring>);
  register_class(L, kCalMT,
                 {{"capture", qf_guard<c_capture>, 2}, {"advance", qf_guard<c_advance>, 1}, {"block", qf_guard<c_block>, 1},
                  {"nblocks", qf_guard<c_nblocks>, 1}, {"memory_bytes", qf_guard<c_memory_bytes>, 1},
                  {"tokens", qf_guard<c_tokens>, 1}, {"inputs", qf_guard<c_inputs>, 1},
                  {"fp_inputs", qf_guard<c_fp_inputs>, 1}, {"fp_outputs", qf_guard<c_fp_outputs>, 1}},
                 udata_gc<LCal>, nullptr);
  // m:set_linear lives here (it needs QLinear) but is a Model method.
  add_methods(L, kModelMT, {{"set_linear", qf_guard<m_set_linear>, 4}});
  set_funcs(L, mod,
            {{"grid", qf_guard<f_grid>, 1},
             {"fit_grid", qf_guard<f_fit_grid>, 2},
             {"rtn", qf_guard<f_rtn>, 2},
             {"gptq", qf_guard<f_gptq>, 4},
             {"cd_sweep", qf_guard<f_cd_sweep>, 5},
             {"quantease", qf_guard<f_quantease>, 4},
             {"iht_step", qf_guard<f_iht_step>, 5},
             {"lambda_max", qf_guard<f_lambda_max>, 1},
             {"quantease_outliers", qf_guard<f_quantease_outliers>, 4},
             {"objective", qf_guard<f_objective>, 3},
             {"calibration", qf_guard<f_calibration>, 1},
             {"input_site", qf_guard<f_input_site>, 1}});
}

// Exported through lua_util.h for other binding files.
GridSpec grid_spec_arg(lua_State* L, int arg, const char* fn) { return spec_arg(L, arg, fn); }
void push_qlinear(lua_State* L, QuantizedLinear q) { push_qlin(L, std::move(q)); }
SolverLog lua_solver_log(lua_State* L, const char* solver) { return solver_log(L, solver); }

}  // namespace qf::lua
