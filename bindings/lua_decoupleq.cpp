// qforge — decoupleQ (docs/methods.md#decoupleq) in Lua:
//   qf.alt_min(W, Sigma, grid [, {iters=4, round="gptq"|"pgd", shrink_search=true, ...}])
//     -> QLinear (float_zero grid), info {history, rows_improved, iters, loss, damped_rows, steps}
#include <climits>

#include "solvers/decoupleq.h"
#include "lua_util.h"

namespace qf::lua {

// An int-valued option in [lo, INT_MAX] (the engine stores int).
static int int_option(lua_State* L, int arg, const char* key, const char* fn, int def, int lo) {
  const int64_t v = opt_field_int(L, arg, key, fn, def);
  if (v < lo || v > INT_MAX) fail(fn, ": option '", key, "' must be an integer >= ", lo, ", got ", v);
  return (int)v;
}

static int f_alt_min(lua_State* L) {
  const char* fn = "alt_min";
  const Tensor& W = check_tensor(L, 1, fn);
  const Tensor& S = check_tensor(L, 2, fn);
  const GridSpec spec = grid_spec_arg(L, 3, fn);
  check_opts(L, 4, fn, {"iters", "round", "shrink_search", "shrink_steps", "shrink_grid", "percdamp", "act_order", "blocksize",
                        "pgd_steps", "pgd_inner_steps", "pgd_lr", "min_improved"});
  AltMinOptions o;
  o.iters = int_option(L, 4, "iters", fn, o.iters, 1);
  const std::string round = opt_field_str(L, 4, "round", fn, "gptq");
  if (round == "gptq") o.round = AltMinOptions::Round::Gptq;
  else if (round == "pgd") o.round = AltMinOptions::Round::Pgd;
  else fail(fn, ": option 'round' must be \"gptq\" or \"pgd\", got \"", round, "\"");
  o.shrink_search = opt_field_bool(L, 4, "shrink_search", fn, o.shrink_search);
  o.shrink_steps = int_option(L, 4, "shrink_steps", fn, o.shrink_steps, 1);
  o.shrink_grid = int_option(L, 4, "shrink_grid", fn, o.shrink_grid, 1);
  o.percdamp = opt_field_num(L, 4, "percdamp", fn, o.percdamp);
  o.act_order = opt_field_bool(L, 4, "act_order", fn, o.act_order);
  o.blocksize = opt_field_int(L, 4, "blocksize", fn, o.blocksize);
  o.pgd_steps = int_option(L, 4, "pgd_steps", fn, o.pgd_steps, 0);
  o.pgd_inner_steps = int_option(L, 4, "pgd_inner_steps", fn, o.pgd_inner_steps, 0);
  o.pgd_lr = opt_field_num(L, 4, "pgd_lr", fn, o.pgd_lr);
  o.min_improved = opt_field_num(L, 4, "min_improved", fn, o.min_improved);
  AltMinResult r = alt_min(W, S, spec, o, lua_solver_log(L, fn));

  push_qlinear(L, std::move(r.q));
  lua_createtable(L, 0, 6);
  push_numbers(L, r.history);
  lua_setfield(L, -2, "history");
  push_numbers(L, r.rows_improved);
  lua_setfield(L, -2, "rows_improved");
  set_field(L, "iters", r.iters);
  set_field(L, "loss", r.history.back());
  set_field(L, "damped_rows", r.damped_rows);
  lua_createtable(L, (int)r.steps.size(), 0);
  for (size_t i = 0; i < r.steps.size(); ++i) {
    lua_createtable(L, 0, 3);
    set_field(L, "step", r.steps[i].name);
    set_field(L, "loss", r.steps[i].loss);
    set_field(L, "rows_improved", r.steps[i].rows_improved);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setfield(L, -2, "steps");
  return 2;
}

void open_decoupleq(lua_State* L, int mod) {
  mod = lua_absindex(L, mod);
  set_funcs(L, mod, {{"alt_min", qf_guard<f_alt_min>, 4}});  // arity: lua_util.h
}

}  // namespace qf::lua
