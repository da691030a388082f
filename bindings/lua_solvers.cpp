// qforge — the solver registry in Lua (engine/solvers/solver.h):
//   qf.solvers()                        -> { {name =, help =, options = { {name =, type =, default =, help =,
//                                             min =, max =, choices = {...}}, ... }}, ... } (registry order)
//   qf.solve(name, problem, grid [, opts]) -> QLinear, info
//       problem = {W =, sigma = [, mu =, tokens =, site =, block =, name =]} (the table P.quantize_model's
//       solve receives); info = {solver =, objective =, relative =, seconds =, <the method's fields>,
//       options = the resolved options}
//   qf.solver_options(name)             -> defaults, declarations  (for qf.options: {name = {help, min =, max =,
//                                          gt =, lt =, choices =}}; qf.solvers() gives min/max with min_open/max_open)
//   qf.check_solver_options(name, opts) -> the resolved options (errors name the solver and the option)
#include "solvers/solver.h"

#include <cmath>

#include "lua_util.h"

namespace qf::lua {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// A flat options table {name = number | boolean | string} as JSON (integers stay integers).
static json options_arg(lua_State* L, int arg, const char* fn) {
  json o = json::object();
  if (is_none_or_nil(L, arg)) return o;
  check_table(L, arg, fn);
  arg = lua_absindex(L, arg);
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    if (lua_type(L, -2) != LUA_TSTRING) fail(fn, ": option names must be strings");
    const std::string k = lua_tostring(L, -2);
    switch (lua_type(L, -1)) {
      case LUA_TBOOLEAN: o[k] = (bool)lua_toboolean(L, -1); break;
      case LUA_TSTRING: o[k] = std::string(lua_tostring(L, -1)); break;
      case LUA_TNUMBER:
        if (lua_isinteger(L, -1)) o[k] = (int64_t)lua_tointeger(L, -1);
        else o[k] = (double)lua_tonumber(L, -1);
        break;
      default: fail(fn, ": option '", k, "' must be a number, boolean or string, got ", type_name(L, -1));
    }
    lua_pop(L, 1);
  }
  return o;
}

static void push_json(lua_State* L, const ojson& v) {
  need_stack(L, 4);
  if (v.is_object()) {
    lua_createtable(L, 0, (int)v.size());
    for (auto it = v.begin(); it != v.end(); ++it) {
      push_json(L, it.value());
      lua_setfield(L, -2, it.key().c_str());
    }
  } else if (v.is_array()) {
    lua_createtable(L, (int)v.size(), 0);
    for (size_t i = 0; i < v.size(); ++i) {
      push_json(L, v[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
  } else if (v.is_boolean()) {
    lua_pushboolean(L, v.get<bool>());
  } else if (v.is_number_integer()) {
    lua_pushinteger(L, (lua_Integer)v.get<int64_t>());
  } else if (v.is_number()) {
    lua_pushnumber(L, v.get<double>());
  } else if (v.is_string()) {
    push_str(L, v.get<std::string>());
  } else {
    lua_pushnil(L);
  }
}

// One option declaration as a Lua table; `for_options` gives qf.options' form {help, min=, max=, choices=}.
static void push_field(lua_State* L, const OptionField& f, bool for_options) {
  lua_createtable(L, 1, 6);
  if (for_options) {
    push_str(L, f.help);
    lua_rawseti(L, -2, 1);
  } else {
    set_field(L, "name", f.name);
    set_field(L, "type", std::string(option_type_name(f.type)));
    push_json(L, f.default_value);
    lua_setfield(L, -2, "default");
    set_field(L, "help", f.help);
  }
  auto bound = [&](const char* k, double v) {
    if (for_options && ((k[1] == 'i' && f.min_open) || (k[1] == 'a' && f.max_open))) k = k[1] == 'i' ? "gt" : "lt";
    if (!std::isfinite(v)) return;
    if (f.type == OptionType::Int) set_field(L, k, (int64_t)v);
    else set_field(L, k, v);
  };
  bound("min", f.min);
  bound("max", f.max);
  if (!for_options && f.min_open) set_field(L, "min_open", true);
  if (!for_options && f.max_open) set_field(L, "max_open", true);
  if (!f.choices.empty()) {
    lua_createtable(L, (int)f.choices.size(), 0);
    for (size_t i = 0; i < f.choices.size(); ++i) {
      push_str(L, f.choices[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "choices");
  }
}

static int f_solvers(lua_State* L) {
  const std::vector<SolverEntry>& r = solver_registry();
  lua_createtable(L, (int)r.size(), 0);
  for (size_t i = 0; i < r.size(); ++i) {
    lua_createtable(L, 0, 3);
    set_field(L, "name", r[i].name);
    set_field(L, "help", r[i].help);
    lua_createtable(L, (int)r[i].options.size(), 0);
    for (size_t j = 0; j < r[i].options.size(); ++j) {
      push_field(L, r[i].options[j], false);
      lua_rawseti(L, -2, (lua_Integer)j + 1);
    }
    lua_setfield(L, -2, "options");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

static int f_solver_options(lua_State* L) {
  const SolverEntry& e = find_solver(check_str(L, 1, "solver_options"));
  lua_newtable(L);
  for (const OptionField& f : e.options) {
    push_json(L, f.default_value);
    lua_setfield(L, -2, f.name.c_str());
  }
  lua_newtable(L);
  for (const OptionField& f : e.options) {
    push_field(L, f, true);
    lua_setfield(L, -2, f.name.c_str());
  }
  return 2;
}

static int f_check_solver_options(lua_State* L) {
  const SolverEntry& e = find_solver(check_str(L, 1, "check_solver_options"));
  push_json(L, resolve_options(e.name, e.options, options_arg(L, 2, "check_solver_options")));
  return 1;
}

static int f_solve(lua_State* L) {
  const char* fn = "solve";
  const std::string name = check_str(L, 1, fn);
  const SolverEntry& e = find_solver(name);
  check_opts(L, 2, fn, {"W", "sigma", "mu", "tokens", "site", "block", "name"});
  check_table(L, 2, fn);
  std::string where = name;
  lua_getfield(L, 2, "block");
  lua_getfield(L, 2, "name");
  if (lua_isinteger(L, -2) && lua_type(L, -1) == LUA_TSTRING)
    where += " (block " + std::to_string(lua_tointeger(L, -2)) + " linear " + lua_tostring(L, -1) + ")";
  lua_pop(L, 2);
  auto tensor_field = [&](const char* k, bool required) -> Tensor {
    lua_getfield(L, 2, k);
    Tensor t;
    if (lua_isnil(L, -1)) {
      if (required) fail(where, ": the problem has no '", k, "'");
    } else {
      t = check_tensor(L, -1, fn);
    }
    lua_pop(L, 1);
    return t;
  };
  Tensor W = tensor_field("W", true), S = tensor_field("sigma", true), mu = tensor_field("mu", false);
  const int64_t tokens = opt_field_int(L, 2, "tokens", fn, 0);
  const std::string site = opt_field_str(L, 2, "site", fn, "");
  const LayerProblem p = LayerProblem::make(W, S, mu, tokens, site, where.c_str());
  const GridSpec spec = grid_spec_arg(L, 3, fn);
  const json opts = options_arg(L, 4, fn);
  SolveResult r = solve_layer(e.name, p, spec, opts, lua_solver_log(L, e.name.c_str()));
  push_qlinear(L, std::move(r.q));
  push_json(L, r.info);
  return 2;
}

void open_solvers(lua_State* L, int mod) {
  set_funcs(L, mod,
            {{"solvers", qf_guard<f_solvers>, 0},
             {"solve", qf_guard<f_solve>, 4},
             {"solver_options", qf_guard<f_solver_options>, 1},
             {"check_solver_options", qf_guard<f_check_solver_options>, 2}});
}

}  // namespace qf::lua
