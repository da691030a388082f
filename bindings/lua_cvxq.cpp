// qforge — CVXQ's allocation pieces in Lua (docs/methods.md#cvxq): qf.dual_ascent, qf.row_clusters,
// qf.row_log2_variance, qf.group_spread, qf.group_mean, qf.bias_correction. Plain functions, no Lua
// type (CVXQ's m:bias / m:set_bias are Model methods, lua_model.cpp; cal:gradient_statistics is a
// Calibration method, lua_calibration.cpp).
//
// An allocation is plain Lua data: dual_ascent returns one bits tensor per input entry, in the
// entry's shape, which a recipe can inspect, edit, and hand to qf.grid{alloc = ...}.
#include <cmath>

#include "solvers/cvxq.h"
#include "solvers/cvxq_dual_ascent.h"
#include "solvers/choice_allocation.h"
#include "formats/dtypes.h"
#include "lua_util.h"

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

// A list of number lists: field `key` of the table at idx.
static std::vector<std::vector<double>> table_of_lists(lua_State* L, int idx, const char* key, const char* fn) {
  std::vector<std::vector<double>> out;
  lua_getfield(L, idx, key);
  if (lua_type(L, -1) != LUA_TTABLE) fail(fn, ": option '", key, "' must be a list of number lists, got ", luaL_typename(L, -1));
  const int t = lua_gettop(L);
  const lua_Integer n = luaL_len(L, t);
  for (lua_Integer i = 1; i <= n; ++i) {
    lua_rawgeti(L, t, i);
    if (lua_type(L, -1) != LUA_TTABLE) fail(fn, ": ", key, "[", i, "] must be a list of numbers, got ", luaL_typename(L, -1));
    std::vector<double> row;
    const lua_Integer m = luaL_len(L, -1);
    for (lua_Integer k = 1; k <= m; ++k) {
      lua_rawgeti(L, -1, k);
      if (!lua_isnumber(L, -1)) fail(fn, ": ", key, "[", i, "][", k, "] is not a number");
      row.push_back(lua_tonumber(L, -1));
      lua_pop(L, 1);
    }
    out.push_back(std::move(row));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return out;
}

// qf.allocate_choices{ distortion = {{...}, ...}, cost = {{...}, ...}, budget = } -> {choice = {1-based},
// cost, distortion, lambda, lagrangian_cost, lagrangian_distortion, bisections, upgrades}
static int f_allocate_choices(lua_State* L) {
  const char* fn = "allocate_choices";
  check_table(L, 1, fn);
  check_opts(L, 1, fn, {"distortion", "cost", "budget"});
  lua_getfield(L, 1, "budget");
  if (!lua_isnumber(L, -1)) fail(fn, ": option 'budget' is required (a number)");
  const double budget = lua_tonumber(L, -1);
  lua_pop(L, 1);
  const ChoiceAllocation r = allocate_choices(table_of_lists(L, 1, "distortion", fn), table_of_lists(L, 1, "cost", fn), budget);
  lua_createtable(L, 0, 8);
  lua_createtable(L, (int)r.choice.size(), 0);
  for (size_t i = 0; i < r.choice.size(); ++i) {
    lua_pushinteger(L, r.choice[i] + 1);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "choice");
  set_field(L, "cost", r.cost);
  set_field(L, "distortion", r.distortion);
  set_field(L, "lambda", r.lambda);
  set_field(L, "lagrangian_cost", r.lagrangian_cost);
  set_field(L, "lagrangian_distortion", r.lagrangian_distortion);
  set_field(L, "bisections", r.bisections);
  set_field(L, "upgrades", r.upgrades);
  return 1;
}

// qf.type_bytes(type, rows, cols) -> bytes a [rows, cols] tensor takes in a GGUF/safetensors storage
// type (the dtype table: whole blocks of block_elems along a row); an error when cols is not a
// multiple of the type's block.
static int f_type_bytes(lua_State* L) {
  const char* fn = "type_bytes";
  const std::string name = luaL_checkstring(L, 1);
  const lua_Integer rows = luaL_checkinteger(L, 2), cols = luaL_checkinteger(L, 3);
  const DTypeTraits* t = dtype_by_name(name);
  if (!t) fail(fn, ": unknown type '", name, "'");
  if (rows < 0 || cols < 0) fail(fn, ": negative shape [", rows, ", ", cols, "]");
  if (cols % t->block_elems) fail(fn, ": ", cols, " columns are not a multiple of ", name, "'s block of ", t->block_elems);
  lua_pushinteger(L, rows * (cols / t->block_elems) * t->block_bytes);
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

void open_cvxq(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  // Arities: lua_util.h.
  set_funcs(L, mod,
            {{"dual_ascent", qf_guard<f_dual_ascent>, 1},
             {"allocate_choices", qf_guard<f_allocate_choices>, 1},
             {"type_bytes", qf_guard<f_type_bytes>, 3},
             {"row_clusters", qf_guard<f_row_clusters>, 2},
             {"row_log2_variance", qf_guard<f_row_log2_variance>, 1},
             {"group_spread", qf_guard<f_group_spread>, 2},
             {"group_mean", qf_guard<f_group_mean>, 2},
             {"bias_correction", qf_guard<f_bias_correction>, 4}});
}

}  // namespace qf::lua
