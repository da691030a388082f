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
// and the layer solvers' primitives, 1:1 with the engine: qf.rtn, qf.gptq, qf.ldlq (docs/methods.md#ldlq), qf.cd_sweep, qf.quantease,
// qf.iht_step, qf.lambda_max, qf.quantease_outliers, qf.alt_min (decoupleQ's layer stage, docs/methods.md#decoupleq),
// qf.magr (MagR's preprocessing, docs/methods.md#magr; W′ and info), qf.objective. The solvers return a QLinear (lua_grid.cpp), all but qf.rtn with an info table; qf.cd_sweep
// and qf.iht_step update their tensor argument in place and return it.
#include "solvers/solver.h"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "lua_util.h"
#include "runner.h"
#include "solvers/decoupleq.h"
#include "solvers/gptq.h"
#include "solvers/ldlq.h"
#include "solvers/quantease.h"
#include "solvers/quantease_outliers.h"
#include "solvers/refit_scales.h"
#include "solvers/rtn.h"

namespace qf::lua {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

// ---- log sink: stderr and the run's log.jsonl -------------------------------------------
static SolverLog solver_log(lua_State* L, const char* solver) {
  RunContext* ctx = run_context(L);
  return [ctx, solver](const std::string& event, const std::string& detail) {
    // Per-sweep progress and per-layer summaries go to the run log only; anything else (damping
    // escalation, a kept init, a projection) is also worth a line on stderr.
    if (event != "sweep" && event != "iter" && event != "lambda_max" && event != "summary")
      std::fprintf(stderr, "%s: %s %s\n", solver, event.c_str(), detail.c_str());
    if (ctx) {
      try {
        ctx->log({{"event", std::string(solver) + "_" + event}, {"detail", detail}});
      } catch (...) {  // logging must never fail a solve
      }
    }
  };
}

// A flat options table {name = number | boolean | string} as JSON (integers stay integers). With
// `fields` (the primitives): a float with an integer value given for an integer field becomes that
// integer (iters = 4.0), as the primitives have always taken it.
static json options_arg(lua_State* L, int arg, const char* fn, const std::vector<OptionField>* fields = nullptr) {
  json o = json::object();
  if (is_none_or_nil(L, arg)) return o;
  check_table(L, arg, fn);
  arg = lua_absindex(L, arg);
  lua_pushnil(L);
  while (lua_next(L, arg)) {
    if (lua_type(L, -2) != LUA_TSTRING) fail(fn, ": option names must be strings");
    const std::string k = lua_tostring(L, -2);
    auto int_field = [&] {
      if (fields)
        for (const OptionField& f : *fields)
          if (f.name == k) return f.type == OptionType::Int;
      return false;
    };
    int is_int = 0;
    switch (lua_type(L, -1)) {
      case LUA_TBOOLEAN: o[k] = (bool)lua_toboolean(L, -1); break;
      case LUA_TSTRING: o[k] = std::string(lua_tostring(L, -1)); break;
      case LUA_TNUMBER:
        if (lua_isinteger(L, -1) || (int_field() && (lua_tointegerx(L, -1, &is_int), is_int)))
          o[k] = (int64_t)lua_tointeger(L, -1);
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
  if (!f.also.empty()) {  // values accepted besides the range (columns = -1, target_bits = 0)
    lua_createtable(L, (int)f.also.size(), 0);
    for (size_t i = 0; i < f.also.size(); ++i) {
      if (f.type == OptionType::Int) lua_pushinteger(L, (lua_Integer)f.also[i]);
      else lua_pushnumber(L, f.also[i]);
      lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "also");
  }
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

// A registry as {{name =, help =, options = {...}}, ...} (qf.solvers, qf.preprocessors; a
// preprocessing step also says changes_basis).
template <class Entry>
static void push_registry(lua_State* L, const std::vector<Entry>& r) {
  lua_createtable(L, (int)r.size(), 0);
  for (size_t i = 0; i < r.size(); ++i) {
    lua_createtable(L, 0, 3);
    set_field(L, "name", r[i].name);
    set_field(L, "help", r[i].help);
    if constexpr (requires { r[i].changes_basis; }) set_field(L, "changes_basis", r[i].changes_basis);
    lua_createtable(L, (int)r[i].options.size(), 0);
    for (size_t j = 0; j < r[i].options.size(); ++j) {
      push_field(L, r[i].options[j], false);
      lua_rawseti(L, -2, (lua_Integer)j + 1);
    }
    lua_setfield(L, -2, "options");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

// An entry's options as two tables: defaults and qf.options declarations (qf.solver_options, qf.preprocess_options).
static int push_option_tables(lua_State* L, const std::vector<OptionField>& fields) {
  lua_newtable(L);
  for (const OptionField& f : fields) {
    push_json(L, f.default_value);
    lua_setfield(L, -2, f.name.c_str());
  }
  lua_newtable(L);
  for (const OptionField& f : fields) {
    push_field(L, f, true);
    lua_setfield(L, -2, f.name.c_str());
  }
  return 2;
}

static int f_solvers(lua_State* L) {
  push_registry(L, solver_registry());
  return 1;
}

static int f_solver_options(lua_State* L) { return push_option_tables(L, find_solver(check_str(L, 1, "solver_options")).options); }

static int f_check_solver_options(lua_State* L) {
  const SolverEntry& e = find_solver(check_str(L, 1, "check_solver_options"));
  push_json(L, resolve_options(e.name, e.options, options_arg(L, 2, "check_solver_options")));
  return 1;
}

// A layer problem table at `idx`: {W =, sigma = [, mu =, tokens =, site =, block =, name =, input =, output =]}
// (the table P.quantize_model's solve receives; input/output: a preprocessing step's transforms,
// docs/methods.md#preprocess). `who` names the solver or step; `where` gets "who (block b linear n)".
struct ProblemArg {
  LayerProblem p;
  LinearTransform input, output;
  std::string where;
};
static ProblemArg problem_arg(lua_State* L, int idx, const char* fn, const std::string& who) {
  idx = lua_absindex(L, idx);
  check_opts(L, idx, fn, {"W", "sigma", "mu", "tokens", "site", "block", "name", "input", "output", "cross", "sigma_fp"});
  check_table(L, idx, fn);
  ProblemArg a;
  a.where = who;
  lua_getfield(L, idx, "block");
  lua_getfield(L, idx, "name");
  int block = 0;
  std::string name;
  if (lua_isinteger(L, -2) && lua_type(L, -1) == LUA_TSTRING) {
    block = (int)lua_tointeger(L, -2);
    name = lua_tostring(L, -1);
    a.where += " (block " + std::to_string(block) + " linear " + name + ")";
  }
  lua_pop(L, 2);
  auto tensor_field = [&](const char* k, bool required) -> Tensor {
    lua_getfield(L, idx, k);
    Tensor t;
    if (lua_isnil(L, -1)) {
      if (required) fail(a.where, ": the problem has no '", k, "'");
    } else {
      t = check_tensor(L, -1, fn);
    }
    lua_pop(L, 1);
    return t;
  };
  Tensor W = tensor_field("W", true), S = tensor_field("sigma", true), mu = tensor_field("mu", false);
  const int64_t tokens = opt_field_int(L, idx, "tokens", fn, 0);
  const std::string site = opt_field_str(L, idx, "site", fn, "");
  a.p = LayerProblem::make(W, S, mu, tokens, site, a.where.c_str());
  a.p.block = block;
  a.p.name = name;
  Tensor cross = tensor_field("cross", false), sigma_fp = tensor_field("sigma_fp", false);
  if (cross.defined() != sigma_fp.defined()) fail(a.where, ": give both 'cross' and 'sigma_fp' (the mismatched objective's statistics) or neither");
  if (cross.defined()) set_cross_statistics(a.p, cross, sigma_fp, a.where.c_str());
  if (lua_getfield(L, idx, "input") != LUA_TNIL) a.input = transform_arg(L, lua_gettop(L), fn, "input", a.p.W.size(1));
  lua_pop(L, 1);
  if (lua_getfield(L, idx, "output") != LUA_TNIL) a.output = transform_arg(L, lua_gettop(L), fn, "output", a.p.W.size(0));
  lua_pop(L, 1);
  return a;
}

// qf.solve(name, problem, grid [, opts]) -> QLinear, info. A problem from qf.preprocess carries its
// transforms: the result gets them (W_eff = O·Ŵ′·T); info's objective is the solver's, on the
// problem it saw (P.quantize_model measures the original layer's).
static int f_solve(lua_State* L) {
  const char* fn = "solve";
  const std::string name = check_str(L, 1, fn);
  const SolverEntry& e = find_solver(name);
  const ProblemArg a = problem_arg(L, 2, fn, name);
  const GridSpec spec = grid_spec_arg(L, 3, fn);
  const json opts = options_arg(L, 4, fn);
  SolveResult r = solve_layer(e.name, a.p, spec, opts, solver_log(L, e.name.c_str()));
  if (!a.input.none() || !a.output.none()) r.q = attach_transforms(std::move(r.q), a.input, a.output, a.where);
  push_qlinear(L, std::move(r.q));
  push_json(L, r.info);
  return 2;
}

// qf.preprocessors() -> { {name =, help =, changes_basis =, options = {...}}, ... } (as qf.solvers()).
static int f_preprocessors(lua_State* L) {
  push_registry(L, preprocess_registry());
  return 1;
}

// qf.preprocess_options(name) -> defaults, declarations (as qf.solver_options).
static int f_preprocess_options(lua_State* L) {
  return push_option_tables(L, find_preprocess(check_str(L, 1, "preprocess_options")).options);
}

static int f_check_preprocess_options(lua_State* L) {
  const PreprocessEntry& e = find_preprocess(check_str(L, 1, "check_preprocess_options"));
  push_json(L, resolve_options(e.name, e.options, options_arg(L, 2, "check_preprocess_options")));
  return 1;
}

// qf.preprocess(name, problem, grid [, opts]) -> problem′, info: the problem a solver should see
// (a new table: W′, sigma′, mu′, the same tokens/site/block/name, and input/output transforms when
// the step changes the basis; transforms the problem already had are kept, and a step may not
// add a second one on the same side).
static int f_preprocess(lua_State* L) {
  const char* fn = "preprocess";
  const std::string name = check_str(L, 1, fn);
  const PreprocessEntry& e = find_preprocess(name);
  const ProblemArg a = problem_arg(L, 2, fn, name);
  const GridSpec spec = grid_spec_arg(L, 3, fn);
  const json opts = options_arg(L, 4, fn);
  PreprocessResult r = preprocess_layer(e.name, a.p, spec, opts, solver_log(L, e.name.c_str()));
  LinearTransform in = a.input, out = a.output;
  if (!r.input.none()) {
    if (!in.none()) fail(a.where, ": the problem already has an input transform (", transform_kind_name(in.kind), "); ", e.name, "'s cannot be composed with it");
    in = r.input;
  }
  if (!r.output.none()) {
    if (!out.none()) fail(a.where, ": the problem already has an output transform (", transform_kind_name(out.kind), "); ", e.name, "'s cannot be composed with it");
    out = r.output;
  }
  lua_createtable(L, 0, 9);
  push_tensor(L, r.problem.W);
  lua_setfield(L, -2, "W");
  push_tensor(L, r.problem.sigma);
  lua_setfield(L, -2, "sigma");
  if (r.problem.mu.defined()) {
    push_tensor(L, r.problem.mu);
    lua_setfield(L, -2, "mu");
  }
  set_field(L, "tokens", r.problem.tokens);
  if (r.problem.cross.defined()) {
    push_tensor(L, r.problem.cross);
    lua_setfield(L, -2, "cross");
    push_tensor(L, r.problem.sigma_fp);
    lua_setfield(L, -2, "sigma_fp");
  }
  if (!r.problem.site.empty()) set_field(L, "site", r.problem.site);
  if (a.p.block > 0) {
    set_field(L, "block", (int64_t)a.p.block);
    set_field(L, "name", a.p.name);
  }
  push_transform(L, in);
  lua_setfield(L, -2, "input");
  push_transform(L, out);
  lua_setfield(L, -2, "output");
  push_json(L, r.info);
  return 2;
}

// ---- the primitives ------------------------------------------------------------------------
// Each parses its options table against declared fields: a registry solver's (qf.solvers()) where
// the primitive is that solver, or the tables below for the pieces the registry has no entry for.
// Defaults, ranges, choices and messages are therefore qf.solve's ("gptq: option 'blocksize' must
// be an integer >= 1, got 0"). `own` are options the caller reads itself (table values, which the
// declarations cannot type); they are known, not resolved.
static ojson primitive_options(lua_State* L, int arg, const char* fn, const std::vector<OptionField>& fields,
                               std::initializer_list<const char*> own = {}) {
  if (!is_none_or_nil(L, arg) && lua_type(L, arg) != LUA_TTABLE) type_error(L, arg, fn, "options table");
  json given = json::object();
  if (lua_type(L, arg) == LUA_TTABLE) {
    // A copy without the caller's own keys; unknown names fail here so the known list names them too.
    arg = lua_absindex(L, arg);
    lua_newtable(L);
    const int copy = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, arg)) {
      bool mine = false, known = false;
      if (lua_type(L, -2) == LUA_TSTRING) {
        const char* k = lua_tostring(L, -2);
        for (const char* n : own) mine = mine || std::strcmp(k, n) == 0;
        for (const OptionField& f : fields) known = known || f.name == k;
        if (!mine && !known) {
          std::string list;
          for (const OptionField& f : fields) list += (list.empty() ? "" : ", ") + f.name;
          for (const char* n : own) list += (list.empty() ? "" : ", ") + std::string(n);
          fail(fn, ": unknown option '", k, "' (known: ", list, ")");
        }
      }
      if (mine) {
        lua_pop(L, 1);
        continue;
      }
      lua_pushvalue(L, -2);
      lua_insert(L, -2);
      lua_rawset(L, copy);
    }
    given = options_arg(L, copy, fn, &fields);
    lua_pop(L, 1);
  }
  return resolve_options(fn, fields, given);
}

static const std::vector<OptionField>& registry_fields(const char* solver) { return find_solver(solver).options; }

// cd_sweep's and iht_step's own fields (no registry solver is one sweep or one IHT step); defaults
// from the engine's option structs.
static const std::vector<OptionField>& cd_sweep_fields() {
  static const std::vector<OptionField> f = [] {
    const CdSweepOptions d;
    return std::vector<OptionField>{
        {"continuous", OptionType::Bool, d.continuous, "set each coordinate to its unquantized minimizer", -INFINITY, INFINITY, {}, false, false, {}}};
  }();
  return f;
}
static const std::vector<OptionField>& iht_fields() {
  static const std::vector<OptionField> f = [] {
    const IhtOptions d;
    return std::vector<OptionField>{
        {"k", OptionType::Int, d.k, "entries (or columns when structured) to keep; required", 0, INFINITY, {}, false, false, {}},
        {"alpha", OptionType::Number, d.alpha, "step size (times 1/(2 lambda_max))", 0, INFINITY, {}, true, false, {}},
        {"structured", OptionType::Bool, d.structured, "keep whole input columns by L2 norm", -INFINITY, INFINITY, {}, false, false, {}},
        {"lambda_max", OptionType::Number, d.lambda_max, "lambda_max(Sigma) if known (0: computed by power iteration)", 0,
         INFINITY, {}, false, false, {}}};
  }();
  return f;
}

static int f_rtn(lua_State* L) {
  const Tensor& W = check_tensor(L, 1, "rtn");
  const GridSpec spec = grid_spec_arg(L, 2, "rtn");
  const std::vector<float> imp = importance_arg(L, 3, "rtn", spec, W.dim() == 2 ? W.size(1) : 0);
  push_qlinear(L, rtn(W, spec, imp.empty() ? nullptr : imp.data()));
  return 1;
}

static int f_gptq(lua_State* L) {
  const char* fn = "gptq";
  const Tensor& W = check_tensor(L, 1, fn);
  const Tensor& H = check_tensor(L, 2, fn);
  const GridSpec spec = grid_spec_arg(L, 3, fn);
  const ojson opt = primitive_options(L, 4, fn, registry_fields("gptq"));
  const GptqOptions o = gptq_options(opt);
  GptqResult r = gptq(W, H, spec, o, solver_log(L, fn));
  push_qlinear(L, std::move(r.q));
  lua_createtable(L, 0, 2);
  set_field(L, "percdamp", r.percdamp_used);
  set_field(L, "proxy_loss", r.proxy_loss);
  return 2;
}

// qf.ldlq(W, Σ, spec [, opts]) -> QLinear, {percdamp =, target = the values rounded from [rows, cols]}
static int f_ldlq(lua_State* L) {
  const char* fn = "ldlq";
  const Tensor& W = check_tensor(L, 1, fn);
  const Tensor& H = check_tensor(L, 2, fn);
  const GridSpec spec = grid_spec_arg(L, 3, fn);
  const ojson opt = primitive_options(L, 4, fn, registry_fields("ldlq"));
  LdlqResult r = ldlq(W, H, spec, ldlq_options(opt), solver_log(L, fn));
  push_qlinear(L, std::move(r.q));
  lua_createtable(L, 0, 2);
  set_field(L, "percdamp", r.percdamp_used);
  push_tensor(L, r.target);
  lua_setfield(L, -2, "target");
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
  const ojson opt = primitive_options(L, 5, fn, cd_sweep_fields(), {"order"});
  CdSweepOptions o;
  o.continuous = opt.at("continuous").get<bool>();
  o.order = order_field(L, 5, fn, g.cols);
  cd_sweep(T, S, What, g, o);
  lua_settop(L, 3);
  return 1;
}

static int f_quantease(lua_State* L) {
  const char* fn = "quantease";
  const Tensor& W = check_tensor(L, 1, fn);
  const Tensor& H = check_tensor(L, 2, fn);
  const GridSpec spec = grid_spec_arg(L, 3, fn);
  const ojson opt = primitive_options(L, 4, fn, registry_fields("quantease"));
  const QuantEaseOptions o = quantease_options(opt);
  QuantEaseResult r = quantease(W, H, spec, o, solver_log(L, fn));
  push_qlinear(L, std::move(r.q));
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
  const ojson opt = primitive_options(L, 5, fn, iht_fields());
  bool has_k = false;  // no default: k is the problem's size
  if (lua_type(L, 5) == LUA_TTABLE) {
    lua_pushstring(L, "k");
    has_k = lua_rawget(L, 5) != LUA_TNIL;
    lua_pop(L, 1);
  }
  if (!has_k) fail(fn, ": option 'k' (entries or columns to keep) is required and must be >= 0");
  IhtOptions o;
  o.k = opt.at("k").get<int64_t>();
  o.alpha = opt.at("alpha").get<double>();
  o.structured = opt.at("structured").get<bool>();
  o.lambda_max = opt.at("lambda_max").get<double>();
  iht_step(W, S, What, Hs, o);
  lua_settop(L, 4);
  return 1;
}

static int f_shrink_sigma(lua_State* L) {
  push_tensor(L, shrink_sigma(check_tensor(L, 1, "shrink_sigma"), check_num(L, 2, "shrink_sigma")));
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
  const GridSpec spec = grid_spec_arg(L, 3, fn);
  const ojson opt = primitive_options(L, 4, fn, registry_fields("quantease_outliers"));
  const OutlierOptions o = quantease_outliers_options(opt);
  OutlierResult r = quantease_outliers(W, H, spec, o, solver_log(L, fn));
  push_qlinear(L, std::move(r.q));
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

// qf.refit_scales(W, S, q) -> q2, {objective_before, objective_after, rows_improved, rows_damped}:
// each row's scales refitted to the layer objective with the codes and zeros fixed
// (methods.md#refit-scales).
static int f_refit_scales(lua_State* L) {
  const char* fn = "refit_scales";
  const LayerProblem p = LayerProblem::make(check_tensor(L, 1, fn), check_tensor(L, 2, fn), {}, 0, "", fn);
  RefitResult r = refit_scales(p, check_qlinear(L, 3, fn));
  push_qlinear(L, std::move(r.q));
  lua_createtable(L, 0, 4);
  set_field(L, "objective_before", r.objective_before);
  set_field(L, "objective_after", r.objective_after);
  set_field(L, "rows_improved", r.rows_improved);
  set_field(L, "rows_damped", r.rows_damped);
  return 2;
}

// qf.magr(W, sigma [, opts]) -> W′, info: MagR's ℓ∞ magnitude reduction (docs/methods.md#magr);
// opts alpha, iters, group (0, the default, is one term per row here: there is no grid). info =
// {fidelity, relative, linf_ratio, linf_group_ratio, lambda_max, iters, objective_start,
// objective_end, seconds, objective = the composite objective at W and after every iteration,
// options}.
static int f_magr(lua_State* L) {
  const char* fn = "magr";
  const LayerProblem p = LayerProblem::make(check_tensor(L, 1, fn), check_tensor(L, 2, fn), {}, 0, "", fn);
  const ojson opt = primitive_options(L, 3, fn, magr_option_fields());
  const MagrResult r = magr(p, magr_options(opt, -1), solver_log(L, fn));
  push_tensor(L, r.W);
  ojson info = magr_info(r);
  info["objective"] = r.objective;
  info["options"] = opt;
  push_json(L, info);
  return 2;
}

// decoupleQ's layer stage: the registry's "decoupleq" fields.
static int f_alt_min(lua_State* L) {
  const char* fn = "alt_min";
  const Tensor& W = check_tensor(L, 1, fn);
  const Tensor& S = check_tensor(L, 2, fn);
  const GridSpec spec = grid_spec_arg(L, 3, fn);
  const ojson opt = primitive_options(L, 4, fn, registry_fields("decoupleq"));
  const AltMinOptions o = decoupleq_options(opt);
  AltMinResult r = alt_min(W, S, spec, o, solver_log(L, fn));

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

void open_solvers(lua_State* L, int mod) {
  set_funcs(L, mod,
            {{"solvers", qf_guard<f_solvers>, 0},
             {"solve", qf_guard<f_solve>, 4},
             {"preprocessors", qf_guard<f_preprocessors>, 0},
             {"preprocess_options", qf_guard<f_preprocess_options>, 1},
             {"preprocess", qf_guard<f_preprocess>, 4},
             {"check_preprocess_options", qf_guard<f_check_preprocess_options>, 2},
             {"solver_options", qf_guard<f_solver_options>, 1},
             {"check_solver_options", qf_guard<f_check_solver_options>, 2},
             {"rtn", qf_guard<f_rtn>, 3},
             {"refit_scales", qf_guard<f_refit_scales>, 3},
             {"shrink_sigma", qf_guard<f_shrink_sigma>, 2},
             {"gptq", qf_guard<f_gptq>, 4},
             {"ldlq", qf_guard<f_ldlq>, 4},
             {"cd_sweep", qf_guard<f_cd_sweep>, 5},
             {"quantease", qf_guard<f_quantease>, 4},
             {"iht_step", qf_guard<f_iht_step>, 5},
             {"lambda_max", qf_guard<f_lambda_max>, 1},
             {"quantease_outliers", qf_guard<f_quantease_outliers>, 4},
             {"alt_min", qf_guard<f_alt_min>, 4},
             {"magr", qf_guard<f_magr>, 3},
             {"objective", qf_guard<f_objective>, 3}});
}

}  // namespace qf::lua
