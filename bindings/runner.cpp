#include "runner.h"

#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "io.h"
#include "lua_util.h"
#include "qforge_version.h"

namespace qf::lua {

using json = nlohmann::json;

static const char* kCtxKey = "qforge.run_context";

RunContext* run_context(lua_State* L) {
  lua_getfield(L, LUA_REGISTRYINDEX, kCtxKey);
  auto* ctx = static_cast<RunContext*>(lua_touserdata(L, -1));
  lua_pop(L, 1);
  return ctx;
}

void set_run_context(lua_State* L, RunContext* ctx) {
  lua_pushlightuserdata(L, ctx);
  lua_setfield(L, LUA_REGISTRYINDEX, kCtxKey);
}

static std::string dump(const json& j) { return j.dump(2, ' ', false, json::error_handler_t::replace) + "\n"; }

double RunContext::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void RunContext::note_input(const std::string& path) {
  for (const auto& in : inputs)
    if (in["path"] == path) return;
  inputs.push_back({{"path", path}, {"size", file_size(path)}, {"fingerprint", file_fingerprint(path)}});
  if (!run_dir.empty()) write_run_json("running");
}

void RunContext::record(const std::string& key, json value) {
  results[key] = std::move(value);
  if (!run_dir.empty()) write_file_atomic(run_dir + "/results.json", dump(results));
}

void RunContext::log(json event) {
  if (run_dir.empty()) return;
  if (!event.contains("time")) event["time"] = elapsed();
  const std::string line = event.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  const std::string path = run_dir + "/log.jsonl";
  FILE* f = std::fopen(path.c_str(), "a");
  if (!f) fail("cannot append to '", path, "'");
  std::fputs(line.c_str(), f);
  std::fclose(f);
}

static std::string hostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

void RunContext::write_run_json(const std::string& status, const std::string& error) const {
  if (run_dir.empty()) return;
  json j;
  j["qforge_version"] = QFORGE_VERSION;
  j["git_commit"] = QFORGE_GIT_COMMIT;
  j["recipe"] = recipe_path;
  j["recipe_copy"] = run_dir + "/recipe.lua";
  j["argv"] = argv;
  j["seed"] = seed;
  j["threads"] = threads;
  j["hostname"] = hostname();
  char cwd[PATH_MAX];
  j["cwd"] = getcwd(cwd, sizeof cwd) ? std::string(cwd) : std::string();
  j["start_time"] = start_time;
  j["wall_seconds"] = elapsed();
  j["status"] = status;
  if (!error.empty()) j["error"] = error;
  j["inputs"] = inputs;
  write_file_atomic(run_dir + "/run.json", dump(j));
}

static std::string shell_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

static std::string self_exe() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "qforge";
  buf[n] = 0;
  return buf;
}

void RunContext::write_rerun_sh() const {
  if (run_dir.empty()) return;
  char cwd[PATH_MAX];
  std::string s = "#!/bin/sh\n";
  s += "# Reruns this run's recipe copy with the same options. Usage: rerun.sh [OUT_DIR]\n";
  s += "# (default OUT_DIR: this directory's name + -rerun-<timestamp>)\n";
  s += "cd " + shell_quote(getcwd(cwd, sizeof cwd) ? cwd : ".") + " || exit 1\n";
  s += "default=" + shell_quote(run_dir) + "-rerun-$(date +%Y%m%d-%H%M%S)\n";
  s += "exec " + shell_quote(self_exe()) + " run " + shell_quote(run_dir + "/recipe.lua");
  for (const auto& [k, v] : cli) s += " " + shell_quote(k + "=" + v);
  s += " " + shell_quote("seed=" + std::to_string(seed));
  if (threads_given) s += " " + shell_quote("threads=" + std::to_string(threads));
  s += " \"out=${1:-$default}\"\n";
  const std::string path = run_dir + "/rerun.sh";
  write_file_atomic(path, s);
  chmod(path.c_str(), 0755);
}

// ---- run directory -----------------------------------------------------------------
static std::string time_str(const char* fmt, bool utc) {
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  if (utc) gmtime_r(&now, &tm);
  else localtime_r(&now, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, fmt, &tm);
  return buf;
}

static std::string make_run_dir(const std::string& out, const std::string& recipe_name) {
  std::string dir = out;
  if (dir.empty()) {
    std::string stem = recipe_name;
    if (stem.size() > 4 && stem.substr(stem.size() - 4) == ".lua") stem.resize(stem.size() - 4);
    const std::string base = "runs/" + stem + "-" + time_str("%Y%m%d-%H%M%S", false);
    dir = base;
    for (int n = 2; path_exists(dir); ++n) dir = base + "-" + std::to_string(n);
  }
  make_dirs(dir);
  char abs[PATH_MAX];
  if (!realpath(dir.c_str(), abs)) fail("cannot resolve run directory '", dir, "'");
  return abs;
}

// ---- the message handler: message + traceback ----------------------------------------
static int msghandler(lua_State* L) {
  const char* msg = lua_tostring(L, 1);
  if (!msg) {
    if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING) return 1;
    msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  }
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static bool parse_int(const std::string& s, int64_t& out) {
  const char* b = s.data() + (!s.empty() && s[0] == '+' ? 1 : 0);
  auto [p, ec] = std::from_chars(b, s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size() && b != s.data() + s.size();
}

static int usage_error(const std::string& msg) {
  std::cerr << "qforge: error: " << msg << "\n(see 'qforge run --help')\n";
  return 2;
}

int run_recipe(const RunArgs& a) {
  RunContext ctx;
  ctx.recipe_path = a.recipe;
  ctx.recipe_name = a.recipe.substr(a.recipe.find_last_of('/') == std::string::npos ? 0 : a.recipe.find_last_of('/') + 1);
  ctx.argv = a.argv;
  ctx.help = a.help;
  ctx.start_time = time_str("%Y-%m-%dT%H:%M:%SZ", true);

  // Command-line options: runner keys (out, seed, threads) here, the rest for qf.options.
  for (const std::string& kv : a.kv) {
    const size_t eq = kv.find('=');
    const std::string k = kv.substr(0, eq), v = kv.substr(eq + 1);
    if (eq == std::string::npos || k.empty()) return usage_error("expected key=value, got '" + kv + "'");
    for (const auto& [k2, v2] : ctx.cli)
      if (k2 == k) return usage_error("option '" + k + "' given twice");
    if (k == "out") {
      if (v.empty()) return usage_error("option 'out' needs a directory");
      ctx.out_arg = v;
    } else if (k == "seed") {
      if (!parse_int(v, ctx.seed)) return usage_error("option 'seed' expects an integer, got '" + v + "'");
      ctx.seed_given = true;
    } else if (k == "threads") {
      int64_t t = 0;
      if (!parse_int(v, t) || t < 0 || t > 4096)
        return usage_error("option 'threads' expects a non-negative integer, got '" + v + "'");
      ctx.threads = (int)t;
      ctx.threads_given = t > 0;
    } else {
      ctx.cli.emplace_back(k, v);
    }
  }
  if (!path_exists(a.recipe) || is_directory(a.recipe))
    return usage_error("recipe file '" + a.recipe + "' not found");
  const std::string source = read_file(a.recipe);

  if (ctx.threads <= 0) ctx.threads = omp_get_num_procs();
  omp_set_num_threads(ctx.threads);

  if (!ctx.help) {
    ctx.run_dir = make_run_dir(ctx.out_arg, ctx.recipe_name);
    write_file_atomic(ctx.run_dir + "/recipe.lua", source);
    write_file_atomic(ctx.run_dir + "/options.json", dump(json{{"seed", ctx.seed}}));
    write_file_atomic(ctx.run_dir + "/results.json", dump(ctx.results));
    write_file_atomic(ctx.run_dir + "/log.jsonl", "");
    ctx.write_run_json("running");
    ctx.write_rerun_sh();
    std::cerr << "qforge: run directory " << ctx.run_dir << "\n";
    ctx.log({{"event", "start"}, {"recipe", ctx.recipe_path}});
  }

  lua_State* L = luaL_newstate();
  if (!L) fail("cannot create a Lua state (out of memory)");
  luaL_openlibs(L);
  luaL_requiref(L, "qforge", luaopen_qforge, 1);  // package.loaded.qforge and global qforge
  lua_setglobal(L, "qf");
  set_run_context(L, &ctx);

  // arg: arg[0] = recipe, arg[1..n] = key=value arguments, arg[-1] = "run", arg[-2] = qforge
  lua_createtable(L, (int)a.kv.size(), 3);
  lua_pushstring(L, a.argv.empty() ? "qforge" : a.argv[0].c_str());
  lua_rawseti(L, -2, -2);
  lua_pushliteral(L, "run");
  lua_rawseti(L, -2, -1);
  lua_pushstring(L, a.recipe.c_str());
  lua_rawseti(L, -2, 0);
  for (size_t i = 0; i < a.kv.size(); ++i) {
    lua_pushstring(L, a.kv[i].c_str());
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setglobal(L, "arg");

  lua_pushcfunction(L, msghandler);
  const int base = lua_gettop(L);
  int rc = luaL_loadbufferx(L, source.data(), source.size(), ("@" + a.recipe).c_str(), "t");
  if (rc == LUA_OK) {
    for (const std::string& kv : a.kv) lua_pushstring(L, kv.c_str());
    rc = lua_pcall(L, (int)a.kv.size(), 0, base);
  }
  std::string err;
  if (rc != LUA_OK) {
    const char* m = lua_tostring(L, -1);
    err = m ? m : "(error object is not a string)";
  }
  const int exit_code = exit_request(L);
  lua_close(L);

  if (exit_code >= 0) return exit_code;  // qf.options printed --help
  if (rc == LUA_OK && ctx.help) {
    std::cout << "usage: qforge run " << ctx.recipe_path << " [key=value ...]\n\n"
              << ctx.recipe_name << " declares no options (it never calls qf.options).\n";
    return 0;
  }
  if (rc == LUA_OK && !ctx.options_declared && !ctx.cli.empty()) {
    err = "option '" + ctx.cli[0].first + "' given but recipe " + ctx.recipe_name +
          " declared no options (it never calls qf.options)";
    ctx.option_error = err;
  }

  if (!ctx.options_declared && !ctx.help)
    write_file_atomic(ctx.run_dir + "/options.json", dump(json{{"seed", ctx.seed}}));
  if (err.empty()) {
    ctx.log({{"event", "end"}, {"status", "ok"}});
    ctx.write_run_json("ok");
    ctx.write_rerun_sh();
    std::cerr << "qforge: ok (" << ctx.elapsed() << " s), results in " << ctx.run_dir << "\n";
    return 0;
  }
  const size_t tb = err.find("\nstack traceback:");
  std::string msg = tb == std::string::npos ? err : err.substr(0, tb);
  // An option error (qf.options, qf.option_error) is a usage error: exit 2, whoever raised it, shown
  // as itself (no file:line, no traceback: it is about the command line). It counts only if the
  // run ended with it (not one a recipe caught and moved past).
  const bool option_error = !ctx.option_error.empty() && msg.find(ctx.option_error) != std::string::npos;
  if (option_error) msg = ctx.option_error;
  std::cerr << "qforge: error: " << (option_error ? msg : err) << "\n";
  if (!ctx.help) {
    ctx.log({{"event", "end"}, {"status", "error"}, {"error", msg}});
    ctx.write_run_json("error", msg);
    ctx.write_rerun_sh();
    std::cerr << "qforge: run directory " << ctx.run_dir << " (status error)\n";
  }
  return option_error ? 2 : 1;
}

}  // namespace qf::lua
