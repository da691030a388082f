// qforge — the `qforge` Lua module table: qf.options, qf.record, qf.log, qf.read_text,
// qf.run_dir, qf.version, qf.seed, qf.now, qf.threads, plus the tensor and model functions.
#include <omp.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <regex>
#include <strings.h>

#include "backend/devices.h"
#include "core/io.h"

#include "embedded_lua.h"
#include "lua_util.h"
#include "qforge_version.h"
#include "runner.h"
#include "solvers/solver.h"

namespace qf::lua {

using json = nlohmann::json;

// ---- Lua value -> JSON ----------------------------------------------------------------
static json to_json(lua_State* L, int idx, const char* fn, int depth) {
  if (depth > 64) fail(fn, ": table nested too deeply (a cycle?)");
  need_stack(L, 4);
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
    case LUA_TNIL: return nullptr;
    case LUA_TBOOLEAN: return (bool)lua_toboolean(L, idx);
    case LUA_TNUMBER: {
      if (lua_isinteger(L, idx)) return (int64_t)lua_tointeger(L, idx);
      // NaN/inf stay numbers here; RunContext::record/log write them as "nan", "inf", "-inf".
      return lua_tonumber(L, idx);
    }
    case LUA_TSTRING: {
      size_t n = 0;
      const char* s = lua_tolstring(L, idx, &n);
      return std::string(s, n);
    }
    case LUA_TTABLE: {
      const lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
      lua_Integer count = 0;
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        ++count;
        lua_pop(L, 1);
      }
      if (n > 0 && count == n) {  // a sequence: JSON array
        json a = json::array();
        for (lua_Integer i = 1; i <= n; ++i) {
          lua_rawgeti(L, idx, i);
          a.push_back(to_json(L, -1, fn, depth + 1));
          lua_pop(L, 1);
        }
        return a;
      }
      json o = json::object();
      lua_pushnil(L);
      while (lua_next(L, idx)) {
        std::string key;
        if (lua_type(L, -2) == LUA_TSTRING) key = lua_tostring(L, -2);
        else if (lua_type(L, -2) == LUA_TNUMBER) {
          lua_pushvalue(L, -2);  // tostring on a copy: never convert a key lua_next uses
          key = lua_tostring(L, -1);
          lua_pop(L, 1);
        } else {
          std::string t = luaL_typename(L, -2);
          lua_pop(L, 2);
          fail(fn, ": table keys must be strings or numbers, got a ", t, " key");
        }
        o[key] = to_json(L, -1, fn, depth + 1);
        lua_pop(L, 1);
      }
      return o;
    }
    default:
      fail(fn, ": cannot store a value of type ", type_name(L, idx), " (expected number, string, boolean or table)");
  }
}

// ---- qf.options ---------------------------------------------------------------------
// A declared option is an OptionField (engine/solvers/solver.h), the solvers' own declaration
// type: its type comes from the default; help and the accepted values from the help table
// {"text", min=, max=, gt=, lt=, also={...}, choices={...}}; option_accepted and
// option_value_error say what it accepts, for a recipe's options and a solver's alike.
using OptDecl = OptionField;
using OptType = OptionType;

static std::string value_str(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// Raises an option error: the runner maps it to exit code 2 (RunContext::option_error).
[[noreturn]] static void option_fail(RunContext* ctx, const std::string& msg) {
  if (ctx) ctx->option_error = msg;
  fail(msg);
}

static json coerce(RunContext* ctx, const std::string& name, const OptDecl& d, const std::string& v) {
  switch (d.type) {
    case OptType::Int: {
      int64_t x = 0;
      const char* b = v.data() + (!v.empty() && v[0] == '+' ? 1 : 0);
      auto [p, ec] = std::from_chars(b, v.data() + v.size(), x);
      if (ec != std::errc() || p != v.data() + v.size() || b == v.data() + v.size())
        option_fail(ctx, "option '" + name + "' expects an integer, got '" + v + "'");
      return x;
    }
    case OptType::Number: {
      char* end = nullptr;
      double x = v.empty() ? 0 : std::strtod(v.c_str(), &end);
      if (v.empty() || *end) option_fail(ctx, "option '" + name + "' expects a number, got '" + v + "'");
      if (!std::isfinite(x)) option_fail(ctx, "option '" + name + "' expects a finite number, got '" + v + "'");
      return x;
    }
    case OptType::Bool: {
      for (const char* t : {"true", "1", "yes", "on"})
        if (strcasecmp(v.c_str(), t) == 0) return true;
      for (const char* f : {"false", "0", "no", "off"})
        if (strcasecmp(v.c_str(), f) == 0) return false;
      option_fail(ctx, "option '" + name + "' expects a boolean (true/false, 1/0, yes/no, on/off), got '" + v + "'");
    }
    case OptType::String: return v;
  }
  return v;
}

// The resolved value must be one the declaration accepts.
static void validate(RunContext* ctx, const std::string& name, const OptDecl& d, const json& v) {
  const std::string why = option_value_error(d, v);
  if (!why.empty()) option_fail(ctx, "option '" + name + "' " + why);
}

static void push_json_scalar(lua_State* L, const json& v) {
  if (v.is_boolean()) lua_pushboolean(L, v.get<bool>());
  else if (v.is_number_integer()) lua_pushinteger(L, v.get<int64_t>());
  else if (v.is_number()) lua_pushnumber(L, v.get<double>());
  else if (v.is_string()) push_str(L, v.get<std::string>());
  else lua_pushnil(L);
}

static void print_help(const RunContext& ctx, const std::map<std::string, OptDecl>& decl) {
  std::ostream& os = std::cout;
  os << "usage: qforge run " << ctx.recipe_path << " [key=value ...]\n\noptions of " << ctx.recipe_name << ":\n";
  size_t w = 0;
  for (const auto& [k, d] : decl) w = std::max(w, k.size() + 3 + value_str(d.default_value).size());
  for (const auto& [k, d] : decl) {
    std::string lhs = k + " = " + value_str(d.default_value);
    const std::string type = std::string("(") + option_type_name(d.type) + ")";
    os << "  " << lhs << std::string(w - lhs.size() + 2, ' ') << type;
    const std::string acc = option_accepted(d);
    std::string help = d.help;
    if (!acc.empty() && d.choices.empty()) help += std::string(help.empty() ? "" : " ") + "[" + acc + "]";
    else if (!acc.empty() && help.find(d.choices[0]) == std::string::npos)
      help += std::string(help.empty() ? "" : " ") + "[" + acc + "]";
    if (!help.empty()) os << std::string(11 - type.size(), ' ') << help;
    os << "\n";
  }
  os << "\nrunner options (always accepted):\n"
     << "  out=DIR      run directory (default runs/<recipe>-<YYYYmmdd-HHMMSS>)\n"
     << "  seed=N       the run's seed, qf.seed() (default 0)\n"
     << "  threads=N    OpenMP threads (default: all cores; idle threads sleep, OMP_WAIT_POLICY=PASSIVE,\n"
     << "               unless OMP_WAIT_POLICY is set)\n"
     << "\nexit codes: 0 ok, 1 the run failed, 2 usage or option error (nothing was computed)\n";
}

// One help entry at the top of the stack: a string, or {"text", min=, max=, gt=, lt=, also=, choices=}.
static void read_decl(lua_State* L, const std::string& name, OptDecl& d) {
  const int t = lua_gettop(L);
  if (lua_type(L, t) == LUA_TSTRING) {
    d.help = lua_tostring(L, t);
    return;
  }
  if (lua_type(L, t) != LUA_TTABLE) fail("qf.options: help of option '", name, "' must be a string or a table");
  const auto bad = [&](const std::string& what) { fail("qf.options: option '", name, "': ", what); };
  lua_pushnil(L);
  while (lua_next(L, t)) {
    const int kt = lua_type(L, -2);
    std::string key = kt == LUA_TSTRING ? lua_tostring(L, -2) : "";
    if (kt == LUA_TNUMBER && lua_isinteger(L, -2) && lua_tointeger(L, -2) == 1) {
      if (lua_type(L, -1) != LUA_TSTRING) bad("help text [1] must be a string");
      d.help = lua_tostring(L, -1);
    } else if (key == "min" || key == "max" || key == "gt" || key == "lt") {
      if (lua_type(L, -1) != LUA_TNUMBER) bad("'" + key + "' must be a number");
      if (d.type != OptType::Int && d.type != OptType::Number) bad("'" + key + "' applies to number options");
      const double x = lua_tonumber(L, -1);
      const bool open = key == "gt" || key == "lt";
      if (key == "min" || key == "gt") {  // the stricter lower bound wins when both are given
        if (x > d.min || (x == d.min && open)) d.min = x, d.min_open = open;
      } else if (x < d.max || (x == d.max && open)) {
        d.max = x, d.max_open = open;
      }
    } else if (key == "also" || key == "choices") {
      if (lua_type(L, -1) != LUA_TTABLE) bad("'" + key + "' must be a list");
      const int lt = lua_gettop(L);
      for (lua_Integer i = 1; i <= (lua_Integer)lua_rawlen(L, lt); ++i) {
        lua_rawgeti(L, lt, i);
        if (key == "also") {
          if (lua_type(L, -1) != LUA_TNUMBER) bad("'also' lists numbers");
          d.also.push_back(lua_tonumber(L, -1));
        } else if (d.type == OptType::String && lua_type(L, -1) == LUA_TSTRING) {
          d.choices.push_back(lua_tostring(L, -1));
        } else if (d.type == OptType::Int && lua_isinteger(L, -1)) {
          d.choices.push_back(std::to_string((long long)lua_tointeger(L, -1)));
        } else {
          bad("'choices' lists values of the option's type (" + std::string(option_type_name(d.type)) + ")");
        }
        lua_pop(L, 1);
      }
    } else {
      bad("unknown declaration key (known: [1] = help, min, max, gt, lt, also, choices)");
    }
    lua_pop(L, 1);
  }
}

// The declarations of qf.options' two tables (defaults at index `defaults`, help at `help`).
static void read_decls(lua_State* L, int defaults, int help, const char* who, std::map<std::string, OptDecl>& decl) {
  lua_pushnil(L);
  while (lua_next(L, defaults)) {
    if (lua_type(L, -2) != LUA_TSTRING) {
      lua_pop(L, 2);
      fail(who, ": option names must be strings");
    }
    const std::string name = lua_tostring(L, -2);
    OptDecl d;
    d.name = name;
    switch (lua_type(L, -1)) {
      case LUA_TNUMBER:
        if (lua_isinteger(L, -1)) d.type = OptType::Int, d.default_value = (int64_t)lua_tointeger(L, -1);
        else d.type = OptType::Number, d.default_value = lua_tonumber(L, -1);
        break;
      case LUA_TBOOLEAN: d.type = OptType::Bool, d.default_value = (bool)lua_toboolean(L, -1); break;
      case LUA_TSTRING: d.type = OptType::String, d.default_value = std::string(lua_tostring(L, -1)); break;
      default: {
        std::string t = luaL_typename(L, -1);
        lua_pop(L, 2);
        fail(who, ": option '", name, "' has a default of type ", t,
             " (expected integer, number, boolean or string)");
      }
    }
    lua_pop(L, 1);
    if (name == "out" || name == "threads" || name == "device")
      fail(who, ": option '", name, "' is reserved by the runner");
    if (name == "seed" && d.type != OptType::Int) fail(who, ": option 'seed' must have an integer default");
    decl[name] = d;
  }
  if (lua_type(L, help) == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, help)) {
      std::string name = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "";
      if (!decl.count(name)) {
        lua_pop(L, 2);
        fail(who, ": help given for undeclared option '", name, "'");
      }
      read_decl(L, name, decl[name]);
      lua_pop(L, 1);
    }
  }

}

// qf.options{ name = default, ... } [, { name = "help" | {"help", min=, ...} }] -> resolved table
static int f_options(lua_State* L) {
  check_table(L, 1, "options");
  if (!is_none_or_nil(L, 2)) check_table(L, 2, "options");
  RunContext* ctx = run_context(L);
  if (ctx && ctx->options_declared) fail("qf.options may be called only once");

  std::map<std::string, OptDecl> decl;
  read_decls(L, 1, 2, "qf.options", decl);

  if (ctx && ctx->help) {
    print_help(*ctx, decl);
    throw ExitRequest{0};
  }

  std::map<std::string, json> val;
  for (const auto& [k, d] : decl) val[k] = d.default_value;
  if (ctx) {
    for (const auto& [k, v] : ctx->cli) {
      auto it = decl.find(k);
      if (it == decl.end()) {
        std::string known;
        for (const auto& [k2, d2] : decl) known += (known.empty() ? "" : ", ") + k2;
        option_fail(ctx, "unknown option '" + k + "' for recipe " + ctx->recipe_name + " (known: " +
                             (known.empty() ? "none" : known) + "; runner: out, seed, threads)");
      }
      val[k] = coerce(ctx, k, it->second, v);
    }
  }
  for (const auto& [k, d] : decl) validate(ctx, k, d, val[k]);
  if (ctx) {
    if (decl.count("seed")) {
      if (ctx->seed_given) val["seed"] = ctx->seed;
      ctx->seed = val["seed"].get<int64_t>();
    } else {
      val["seed"] = ctx->seed;
    }
    for (const auto& [k, v] : val) {
      auto it = decl.find(k);
      std::cerr << "option " << k << " = " << value_str(v);
      if (it != decl.end()) std::cerr << " (default " << value_str(it->second.default_value) << ")";
      std::cerr << "\n";
    }
    json j = json::object();
    for (const auto& [k, v] : val) j[k] = v;
    ctx->options = j;
    ctx->options_declared = true;
    if (!ctx->run_dir.empty()) {
      write_file_atomic(ctx->run_dir + "/options.json", j.dump(2) + "\n");
      ctx->write_run_json("running");
      ctx->write_rerun_sh();
    }
  }

  lua_createtable(L, 0, (int)val.size());
  for (const auto& [k, v] : val) {
    push_json_scalar(L, v);
    lua_setfield(L, -2, k.c_str());
  }
  return 1;
}

// qf.check_options(opt, defaults [, help]): checks the values opt holds for the options that
// defaults and help declare (as qf.options declares them) — for library functions (pipeline,
// cvxq) handed an options table a recipe built itself. A value of the wrong type or outside what
// the declaration accepts raises the option error qf.options would; absent values are not checked.
static int f_check_options(lua_State* L) {
  check_table(L, 1, "check_options");
  check_table(L, 2, "check_options");
  if (!is_none_or_nil(L, 3)) check_table(L, 3, "check_options");
  std::map<std::string, OptDecl> decl;
  read_decls(L, 2, 3, "qf.check_options", decl);
  RunContext* ctx = run_context(L);
  for (const auto& [k, d] : decl) {
    lua_getfield(L, 1, k.c_str());
    json v;
    switch (lua_type(L, -1)) {
      case LUA_TNIL: lua_pop(L, 1); continue;
      case LUA_TNUMBER:
        if (lua_isinteger(L, -1)) v = (int64_t)lua_tointeger(L, -1);
        else v = lua_tonumber(L, -1);
        break;
      case LUA_TBOOLEAN: v = (bool)lua_toboolean(L, -1); break;
      case LUA_TSTRING: v = std::string(lua_tostring(L, -1)); break;
      default: {
        const std::string t = luaL_typename(L, -1);
        lua_pop(L, 1);
        option_fail(ctx, "option '" + k + "' must be " + (d.type == OptType::Int ? "an " : "a ") + option_type_name(d.type) + ", got a " + t);
      }
    }
    lua_pop(L, 1);
    // an integral float for an integer option is that integer (Lua arithmetic makes 4.0 from 4)
    if (d.type == OptType::Int && v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
        std::abs(v.get<double>()) < 9e15)
      v = (int64_t)v.get<double>();
    validate(ctx, k, d, v);
  }
  return 0;
}

// qf.option_error(name, msg): raises "option 'name': msg", which `qforge run` reports with exit
// code 2 like every other option error (recipes' own cross-option checks). The message carries no
// file:line — it is about the command line, not the recipe's code.
static int option_error_msg(lua_State* L) {  // pushes the message (records it in the run context)
  const std::string name = check_str(L, 1, "option_error"), msg = check_str(L, 2, "option_error");
  if (name.empty()) arg_error(L, 1, "option_error", "empty option name");
  const std::string full = "option '" + name + "': " + msg;
  if (RunContext* ctx = run_context(L)) ctx->option_error = full;
  push_str(L, full);
  return 1;
}
}  // namespace qf::lua
// Plain C style on purpose: the C++ work is done (and destroyed) inside qf_guard before lua_error.
static int f_option_error(lua_State* L) {
  qf::lua::qf_guard<qf::lua::option_error_msg>(L);
  return lua_error(L);
}
namespace qf::lua {

// ---- run records ----------------------------------------------------------------------
static RunContext& need_ctx(lua_State* L, const char* fn) {
  RunContext* ctx = run_context(L);
  if (!ctx) fail("qf.", fn, ": no run (only available under 'qforge run')");
  return *ctx;
}

// qf.record(key, value)
static int f_record(lua_State* L) {
  std::string key = check_str(L, 1, "record");
  if (lua_isnone(L, 2)) type_error(L, 2, "record", "value");
  json v = to_json(L, 2, "qf.record", 0);
  need_ctx(L, "record").record(key, std::move(v));
  return 0;
}

// qf.log{event = "...", ...}
static int f_log(lua_State* L) {
  check_table(L, 1, "log");
  json v = to_json(L, 1, "qf.log", 0);
  if (!v.is_object()) v = json{{"value", v}};
  need_ctx(L, "log").log(std::move(v));
  return 0;
}

// qf.read_text reads regular files of at most 1 GiB: a Lua string holds the whole text, and a
// device such as /dev/zero would otherwise grow memory without bound.
static constexpr uint64_t kReadTextLimit = 1ull << 30;

// qf.regex_search(pattern, s) -> bool: ECMAScript regular expression (std::regex) found anywhere
// in s (anchor with ^ and $). An invalid pattern is an error quoting it. Compiled patterns are
// kept (recipes match the same few rules against every linear).
static int f_regex_search(lua_State* L) {
  const std::string pat = check_str(L, 1, "regex_search"), subject = check_str(L, 2, "regex_search");
  static std::map<std::string, std::regex> cache;
  auto it = cache.find(pat);
  if (it == cache.end()) {
    if (pat.size() > 4096) fail("regex_search: pattern of ", pat.size(), " bytes is longer than 4096");
    try {
      it = cache.emplace(pat, std::regex(pat, std::regex::ECMAScript)).first;
    } catch (const std::regex_error& e) {
      fail("regex_search: invalid regular expression '", pat, "' (", e.what(), ")");
    }
  }
  lua_pushboolean(L, std::regex_search(subject, it->second));
  return 1;
}

// qf.fingerprint(s) -> "fnv1a64:<hex>" of the string's bytes (the keys of shared caches).
static int f_fingerprint(lua_State* L) {
  const std::string f = fingerprint(check_str(L, 1, "fingerprint"));
  lua_pushlstring(L, f.data(), f.size());
  return 1;
}

// qf.make_dirs(path): mkdir -p (an error names the path that could not be made).
static int f_make_dirs(lua_State* L) {
  make_dirs(check_str(L, 1, "make_dirs"));
  return 0;
}

static int f_read_text(lua_State* L) {
  std::string path = check_str(L, 1, "read_text");
  const int64_t size = file_size(path);  // refuses FIFOs, devices and directories, naming the path
  if ((uint64_t)size > kReadTextLimit)
    fail("qf.read_text: file '", path, "' is ", size, " bytes, over the limit of ", kReadTextLimit, " bytes (1 GiB)");
  std::string text = read_file(path, kReadTextLimit);
  if (RunContext* ctx = run_context(L)) ctx->note_input(path);
  push_str(L, text);
  return 1;
}

static int f_run_dir(lua_State* L) {
  RunContext* ctx = run_context(L);
  if (ctx && !ctx->run_dir.empty()) push_str(L, ctx->run_dir);
  else lua_pushnil(L);
  return 1;
}

// qf.remove_on_success(path): the file (or, once emptied, directory) is removed when the run ends
// with status ok — a block checkpoint, kept for a resume if the run fails or is killed.
static int f_remove_on_success(lua_State* L) {
  const std::string p = check_str(L, 1, "remove_on_success");
  need_ctx(L, "remove_on_success").remove_on_success.push_back(p);
  return 0;
}

// qf.recipe_fingerprint(): "fnv1a64:<hex>" of the running recipe's source (nil outside a run).
static int f_recipe_fingerprint(lua_State* L) {
  RunContext* ctx = run_context(L);
  if (ctx && !ctx->recipe_fingerprint.empty()) push_str(L, ctx->recipe_fingerprint);
  else lua_pushnil(L);
  return 1;
}

static int f_version(lua_State* L) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, QFORGE_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushstring(L, QFORGE_GIT_COMMIT);
  lua_setfield(L, -2, "commit");
  return 1;
}

static int f_seed(lua_State* L) {
  RunContext* ctx = run_context(L);
  lua_pushinteger(L, ctx ? ctx->seed : 0);
  return 1;
}

static int f_now(lua_State* L) {
  lua_pushnumber(L, std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count());
  return 1;
}

static int f_threads(lua_State* L) {
  lua_pushinteger(L, omp_get_max_threads());
  return 1;
}

// qf.device(): the backend the run computes on (device=, docs/device.md); qf.devices(): every
// name device= accepts, each {name = ..., built = true|false}.
static int f_device(lua_State* L) {
  lua_pushstring(L, current_device().c_str());
  return 1;
}

static int f_devices(lua_State* L) {
  const auto& names = device_names();
  lua_createtable(L, (int)names.size(), 0);
  for (size_t i = 0; i < names.size(); ++i) {
    lua_createtable(L, 0, 2);
    lua_pushstring(L, names[i].c_str());
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, device_built(names[i]));
    lua_setfield(L, -2, "built");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

}  // namespace qf::lua

// package.preload loader for the Lua modules compiled into the binary (bindings/lua/*.lua).
// Plain C style on purpose: it may raise Lua errors, so it holds no C++ objects.
static int load_embedded(lua_State* L) {
  const char* name = lua_tostring(L, 1);
  for (const auto& e : kEmbeddedLua)
    if (name && std::strcmp(name, e.module) == 0) {
      char chunk[256];
      std::snprintf(chunk, sizeof chunk, "=%s.lua", e.module);
      if (luaL_loadbuffer(L, e.source, std::strlen(e.source), chunk) != LUA_OK) return lua_error(L);
      lua_call(L, 0, 1);
      return 1;
    }
  return luaL_error(L, "qforge: no embedded module '%s'", name ? name : "?");
}

static void register_embedded(lua_State* L) {
  if (lua_getglobal(L, "package") != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  lua_getfield(L, -1, "preload");
  for (const auto& e : kEmbeddedLua) {
    lua_pushcfunction(L, load_embedded);
    lua_setfield(L, -2, e.module);
  }
  lua_pop(L, 2);
}

int luaopen_qforge(lua_State* L) {
  register_embedded(L);
  using namespace qf::lua;
  lua_newtable(L);
  set_funcs(L, -1,  // each with the most arguments it uses (lua_util.h)
            {{"options", qf_guard<f_options>, 2}, {"option_error", ::f_option_error, 2}, {"check_options", qf_guard<f_check_options>, 3}, {"record", qf_guard<f_record>, 2},   {"log", qf_guard<f_log>, 1},
             {"read_text", qf_guard<f_read_text>, 1}, {"fingerprint", qf_guard<f_fingerprint>, 1}, {"make_dirs", qf_guard<f_make_dirs>, 1}, {"regex_search", qf_guard<f_regex_search>, 2}, {"run_dir", qf_guard<f_run_dir>, 0}, {"version", qf_guard<f_version>, 0},
             {"remove_on_success", qf_guard<f_remove_on_success>, 1}, {"recipe_fingerprint", qf_guard<f_recipe_fingerprint>, 0},
             {"seed", qf_guard<f_seed>, 0},       {"now", qf_guard<f_now>, 0},         {"threads", qf_guard<f_threads>, 0},
             {"device", qf_guard<f_device>, 0},   {"devices", qf_guard<f_devices>, 0}});
  open_tensor(L, -1);
  open_model(L, -1);
  open_rng(L, -1);
  open_grid(L, -1);
  open_calibration(L, -1);
  open_block(L, -1);
  open_solvers(L, -1);
  open_cvxq(L, -1);
  open_reference(L, -1);
  open_multiple_choice(L, -1);
  open_tensor_math(L, -1);
  open_tensor_index(L, -1);
  open_linalg(L, -1);
  set_introspection(L, -1);
  return 1;
}
