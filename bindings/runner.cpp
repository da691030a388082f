#include "runner.h"

#include "backend/devices.h"

#include <limits.h>
#include <omp.h>
#include <stdlib.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "core/io.h"
#include "core/json_util.h"
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

// JSON has no NaN/inf (nlohmann writes null): records and log events keep them as the strings
// "nan", "inf", "-inf", whichever side (Lua or C++) produced the value.
static void finite_json(json& j) {
  if (j.is_number_float()) {
    const double x = j.get<double>();
    if (std::isnan(x)) j = "nan";
    else if (std::isinf(x)) j = x > 0 ? "inf" : "-inf";
  } else if (j.is_structured()) {
    for (auto& e : j) finite_json(e);
  }
}

double RunContext::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

static std::string abs_path(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) ? std::string(buf) : p;
}

void RunContext::note_input(const std::string& path) {
  for (const auto& in : inputs)
    if (in["path"] == path) return;
  json in = {{"path", path}, {"size", file_size(path)}, {"fingerprint", file_fingerprint(path)}};
  // A file this run wrote and read back (e.g. a saved model) is an output, not an input.
  if (!run_dir.empty() && abs_path(path).rfind(run_dir + "/", 0) == 0) in["in_run_dir"] = true;
  inputs.push_back(std::move(in));
  if (!run_dir.empty()) write_run_json("running");
}

void RunContext::note_module(const std::string& name, const std::string& file, const std::string& rel,
                             const std::string& source) {
  for (const auto& in : inputs)
    if (in.value("module", "") == name) return;
  inputs.push_back({{"path", file}, {"module", name}, {"copy", "lua/" + rel}, {"size", source.size()},
                    {"fingerprint", fingerprint(source)}});
  if (run_dir.empty()) return;
  const std::string dst = run_dir + "/lua/" + rel;
  make_dirs(dst.substr(0, dst.find_last_of('/')));
  write_file_atomic(dst, source);
  write_run_json("running");
}

void RunContext::record(const std::string& key, json value) {
  finite_json(value);
  results[key] = std::move(value);
  if (!run_dir.empty()) write_file_atomic(run_dir + "/results.json", dump(results));
}

void RunContext::log(json event) {
  if (run_dir.empty()) return;
  finite_json(event);
  if (!event.contains("time")) event["time"] = elapsed();
  ++log_events;
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
  j["recipe_fingerprint"] = recipe_fingerprint;
  if (!rerun_of.empty()) {
    j["rerun_of"] = rerun_of;
    if (!rerun_differences.empty()) j["rerun_forced_over"] = rerun_differences;
  }
  j["argv"] = argv;
  j["args"] = args;  // the key=value arguments the recipe ran with (for a rerun: every resolved option)
  j["seed"] = seed;
  j["threads"] = threads;
  j["device"] = current_device();  // device= (docs/device.md)
  // main() defaults OMP_WAIT_POLICY to PASSIVE (re-executing itself) unless the user set it.
  const char* wp = getenv("OMP_WAIT_POLICY");
  j["omp_wait_policy"] = wp ? wp : "";
  j["omp_wait_policy_source"] = getenv("QFORGE_DEFAULT_WAIT_POLICY") ? "qforge default" : wp ? "environment" : "unset";
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
  std::string s = "#!/bin/sh\n";
  s += "# Reruns this run with 'qforge rerun': every resolved option, the recorded threads, after\n";
  s += "# checking the binary's commit and every input's fingerprint. Usage: rerun.sh [OUT_DIR] [--force]\n";
  s += "case \"${1:-}\" in \"\"|*=*|-*) ;; *) o=\"$1\"; shift; set -- \"out=$o\" \"$@\" ;; esac\n";
  s += "exec " + shell_quote(self_exe()) + " rerun \"$(cd \"$(dirname \"$0\")\" && pwd)\" \"$@\"\n";
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

bool RunContext::nothing_done() const {
  if (run_dir.empty() || !results.empty() || log_events > 1) return false;
  DIR* d = opendir(run_dir.c_str());
  if (!d) return false;
  bool only_runner_files = true;
  while (const dirent* e = readdir(d)) {
    const std::string n = e->d_name;
    if (n == "." || n == ".." || n == "recipe.lua" || n == "options.json" || n == "run.json" || n == "results.json" ||
        n == "log.jsonl" || n == "rerun.sh" || n == "lua")
      continue;
    only_runner_files = false;
    break;
  }
  closedir(d);
  return only_runner_files;
}

// The run directory (absolute); *created gets the directories made for it, innermost first.
static std::string make_run_dir(const std::string& out, const std::string& recipe_name, std::vector<std::string>* created) {
  std::string dir = out;
  if (dir.empty()) {
    std::string stem = recipe_name;
    if (stem.size() > 4 && stem.substr(stem.size() - 4) == ".lua") stem.resize(stem.size() - 4);
    const std::string base = "runs/" + stem + "-" + time_str("%Y%m%d-%H%M%S", false);
    dir = base;
    for (int n = 2; path_exists(dir); ++n) dir = base + "-" + std::to_string(n);
  }
  created->clear();
  for (std::string p = dir; !p.empty() && p != "." && p != "/" && !path_exists(p);) {
    created->push_back(p);
    const size_t slash = p.find_last_of('/');
    if (slash == std::string::npos) break;
    p.resize(slash);
    while (p.size() > 1 && p.back() == '/') p.pop_back();
  }
  make_dirs(dir);
  char abs[PATH_MAX];
  if (!realpath(dir.c_str(), abs)) fail("cannot resolve run directory '", dir, "'");
  for (std::string& p : *created) {
    char a[PATH_MAX];
    if (realpath(p.c_str(), a)) p = a;
  }
  return abs;
}

// A run refused for its options before doing anything leaves no run directory: the leaf is
// removed with what the runner wrote into it; directories made above it only while empty
// (another run may have started in runs/ meanwhile).
static bool remove_run_dir(const RunContext& ctx) {
  if (ctx.created_dirs.empty() || ctx.created_dirs.front() != ctx.run_dir) return false;  // out= existed: not ours
  remove_tree(ctx.run_dir);
  for (size_t i = 1; i < ctx.created_dirs.size(); ++i)
    if (::rmdir(ctx.created_dirs[i].c_str()) != 0) break;
  return !path_exists(ctx.run_dir);
}

// ---- require of local modules --------------------------------------------------------
// package.searchers[2] (after preload, before package.path): a module beside the recipe, or in
// RUN_DIR/lua when the recipe is a run directory's copy. The source that is loaded is the one
// copied into the run directory, so the copy is exactly what ran.
static int search_local(lua_State* L) {
  const std::string name = check_str(L, 1, "require");
  RunContext* ctx = run_context(L);
  if (!ctx || ctx->module_root.empty()) {
    lua_pushliteral(L, "\n\tno recipe directory");
    return 1;
  }
  std::string rel = name;
  for (char& c : rel)
    if (c == '.') c = '/';
  std::string tried, file, used;
  const std::string cands[2] = {rel + ".lua", rel + "/init.lua"};
  for (const std::string& cand : cands) {
    const std::string f = ctx->module_root + "/" + cand;
    struct stat st{};
    if (stat(f.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      file = f;
      used = cand;
      break;
    }
    tried += "\n\tno file '" + f + "'";
  }
  if (file.empty()) {
    push_str(L, tried);
    return 1;
  }
  const std::string source = read_file(file);
  if (luaL_loadbufferx(L, source.data(), source.size(), ("@" + file).c_str(), "t") != LUA_OK)
    fail("error loading module '", name, "' from file '", file, "':\n\t", lua_tostring(L, -1));
  ctx->note_module(name, file, used, source);
  push_str(L, file);
  return 2;
}

static void install_local_searcher(lua_State* L) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "searchers");
  const lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  for (lua_Integer i = n; i >= 2; --i) {  // shift searchers[2..n] up by one
    lua_rawgeti(L, -1, i);
    lua_rawseti(L, -2, i + 1);
  }
  lua_pushcfunction(L, qf_guard<search_local>);
  lua_rawseti(L, -2, 2);
  lua_pop(L, 2);
}

static std::string dir_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
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

// An option check (RunArgs::check) ends at the recipe's first qf.load_model: the work starts there.
static int check_stop(lua_State* L) {
  if (L) throw ExitRequest{0};
  return 0;
}

int run_recipe(const RunArgs& a) {
  RunContext ctx;
  ctx.recipe_path = a.recipe;
  ctx.recipe_name = a.recipe.substr(a.recipe.find_last_of('/') == std::string::npos ? 0 : a.recipe.find_last_of('/') + 1);
  ctx.argv = a.argv;
  ctx.args = a.kv;
  ctx.help = a.help;
  ctx.check = a.check && !a.help;
  const bool writes = !ctx.help && !ctx.check;  // a run directory is made and written
  ctx.start_time = time_str("%Y-%m-%dT%H:%M:%SZ", true);

  // Command-line options: runner keys (out, seed, threads, device) here, the rest for qf.options.
  set_backend(nullptr);  // the CPU backend unless device= says otherwise
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
    } else if (k == "device") {
      // checked here, before the recipe runs: unknown, not built, or no GPU present
      std::string why;
      Backend* b = find_device(v, &why);
      if (!b) return usage_error("option 'device': " + why);
      set_backend(b);
    } else {
      ctx.cli.emplace_back(k, v);
    }
  }
  if (!path_exists(a.recipe) || is_directory(a.recipe))
    return usage_error("recipe file '" + a.recipe + "' not found");
  const std::string source = read_file(a.recipe);
  ctx.recipe_fingerprint = fingerprint(source);
  ctx.rerun_of = a.rerun_of;
  ctx.rerun_differences = a.rerun_differences;
  {
    // Local modules: beside the recipe, or a run directory's lua/ for its recipe.lua copy.
    const std::string dir = abs_path(dir_of(a.recipe));
    const bool run_copy = ctx.recipe_name == "recipe.lua" && path_exists(dir + "/run.json");
    ctx.module_root = run_copy ? dir + "/lua" : dir;
  }

  if (ctx.threads <= 0) ctx.threads = omp_get_num_procs();
  omp_set_num_threads(ctx.threads);

  if (writes) {
    ctx.run_dir = make_run_dir(ctx.out_arg, ctx.recipe_name, &ctx.created_dirs);
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
  install_local_searcher(L);
  if (ctx.check) {
    lua_getglobal(L, "qf");
    lua_pushcfunction(L, qf_guard<check_stop>);
    lua_setfield(L, -2, "load_model");
    lua_pop(L, 1);
  }

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
    // One stack slot per key=value argument: a rerun passes every option (50+), beyond the 20 slots
    // Lua guarantees a C function — without the check they overwrote the heap.
    if (!lua_checkstack(L, (int)a.kv.size() + 1)) fail("too many recipe arguments (", a.kv.size(), ")");
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
  if (ctx.check && a.check_options) *a.check_options = ctx.options;

  if (exit_code >= 0) return exit_code;  // qf.options printed --help, or a check reached qf.load_model
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

  if (!ctx.options_declared && writes)
    write_file_atomic(ctx.run_dir + "/options.json", dump(json{{"seed", ctx.seed}}));
  if (err.empty() && ctx.check) return 0;
  if (err.empty()) {
    for (const std::string& p : ctx.remove_on_success)
      if (::remove(p.c_str()) != 0 && errno != ENOENT)
        std::cerr << "qforge: warning: could not remove '" << p << "': " << std::strerror(errno) << "\n";
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
  if (writes && option_error && ctx.nothing_done() && remove_run_dir(ctx)) {
    std::cerr << "qforge: run directory " << ctx.run_dir << " removed (options refused before any work)\n";
    return 2;
  }
  if (writes) {
    ctx.log({{"event", "end"}, {"status", "error"}, {"error", msg}});
    ctx.write_run_json("error", msg);
    ctx.write_rerun_sh();
    std::cerr << "qforge: run directory " << ctx.run_dir << " (status error)\n";
  }
  return option_error ? 2 : 1;
}

// ---- qforge rerun ----------------------------------------------------------------------
static json read_json_file(const std::string& path) {
  json j = parse_json_bounded(read_file(path), "'" + path + "'");
  if (!j.is_object()) fail("'", path, "' is not a JSON object");
  return j;
}

static std::string option_arg(const std::string& k, const json& v) {
  if (v.is_string()) return k + "=" + v.get<std::string>();
  if (v.is_boolean()) return k + "=" + (v.get<bool>() ? "true" : "false");
  if (v.is_number()) return k + "=" + v.dump();  // shortest text that reads back to the same double
  fail("options.json: option '", k, "' has a value of JSON type ", v.type_name(), " (expected a string, number or boolean)");
}

static int rerun_usage_error(const std::string& msg) {
  std::cerr << "qforge: error: " << msg << "\nusage: qforge rerun RUN_DIR [out=DIR] [--force]\n";
  return 2;
}

int rerun(const RerunArgs& a) {
  std::string dir = a.run_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  if (!is_directory(dir)) return rerun_usage_error("run directory '" + dir + "' not found");
  dir = abs_path(dir);
  for (const char* f : {"run.json", "options.json", "recipe.lua"})
    if (!path_exists(dir + "/" + f)) return rerun_usage_error("'" + dir + "' is not a run directory (no " + f + ")");
  const json run = read_json_file(dir + "/run.json");
  const json opts = read_json_file(dir + "/options.json");

  // Every check before any work; each difference is printed.
  std::vector<std::string> diffs;
  const std::string commit = run.value("git_commit", "");
  if (commit != QFORGE_GIT_COMMIT)
    diffs.push_back("git commit: the run used " + (commit.empty() ? std::string("(none recorded)") : commit) +
                    ", this binary is " + QFORGE_GIT_COMMIT);
  else if (commit.find("-dirty") != std::string::npos || commit == "unknown")
    std::cerr << "qforge: warning: commit '" << commit << "' does not identify the code exactly (uncommitted changes)\n";
  const std::string rfp = run.value("recipe_fingerprint", "");
  const std::string recipe = dir + "/recipe.lua";
  const std::string recipe_now = file_fingerprint(recipe);
  if (!rfp.empty() && recipe_now != rfp)
    diffs.push_back("recipe '" + recipe + "': fingerprint " + recipe_now + ", recorded " + rfp);
  const std::string cwd = run.value("cwd", "");
  const bool cwd_ok = !cwd.empty() && is_directory(cwd);
  if (!cwd_ok) diffs.push_back("working directory '" + cwd + "' of the run no longer exists");
  if (run.contains("inputs") && run["inputs"].is_array())
    for (const json& in : run["inputs"]) {
      if (!in.is_object() || in.value("in_run_dir", false)) continue;
      const std::string path = in.value("path", ""), want = in.value("fingerprint", "");
      // A module runs from its copy in the run directory; other inputs from the recorded cwd.
      std::string file = in.contains("copy") ? dir + "/" + in.value("copy", "") : path;
      if (!in.contains("copy") && !file.empty() && file[0] != '/' && cwd_ok) file = cwd + "/" + file;
      std::string what = in.contains("module") ? "module '" + in.value("module", "") + "' (" + file + ")" : "input '" + path + "'";
      struct stat st{};
      if (stat(file.c_str(), &st) != 0) {
        diffs.push_back(what + ": missing");
        continue;
      }
      if (!S_ISREG(st.st_mode)) {
        diffs.push_back(what + ": not a regular file");
        continue;
      }
      const std::string now = file_fingerprint(file);
      if (now != want)
        diffs.push_back(what + ": fingerprint " + now + " (" + std::to_string((int64_t)st.st_size) + " bytes), recorded " +
                        want + " (" + (in.contains("size") ? in["size"].dump() : std::string("?")) + " bytes)");
    }

  if (!diffs.empty()) {
    std::cerr << "qforge: rerun of " << dir << ": " << diffs.size() << " difference" << (diffs.size() == 1 ? "" : "s")
              << " from the recorded run:\n";
    for (const std::string& d : diffs) std::cerr << "  " << d << "\n";
    if (!a.force) {
      std::cerr << "qforge: error: refusing to rerun (add --force to run anyway)\n";
      return 1;
    }
    std::cerr << "qforge: --force: rerunning anyway\n";
  }

  RunArgs ra;
  ra.recipe = recipe;
  ra.argv = a.argv;
  ra.rerun_of = dir;
  ra.rerun_differences = diffs;
  for (const auto& [k, v] : opts.items())
    if (k != "out" && k != "threads" && k != "device") ra.kv.push_back(option_arg(k, v));
  if (run.contains("threads") && run["threads"].is_number_integer() && run["threads"].get<int64_t>() > 0)
    ra.kv.push_back("threads=" + std::to_string(run["threads"].get<int64_t>()));
  if (run.contains("device") && run["device"].is_string() && run["device"].get<std::string>() != "cpu")
    ra.kv.push_back("device=" + run["device"].get<std::string>());
  // out= is taken from where the command was typed; the run itself starts in the recorded cwd.
  std::string out = a.out.empty() ? dir + "-rerun-" + time_str("%Y%m%d-%H%M%S", false) : a.out;
  if (out[0] != '/') {
    char here[PATH_MAX];
    if (getcwd(here, sizeof here)) out = std::string(here) + "/" + out;
  }
  ra.kv.push_back("out=" + out);
  if (cwd_ok && chdir(cwd.c_str()) != 0) fail("cannot change to the run's working directory '", cwd, "'");
  std::cerr << "qforge: rerunning " << dir << " from " << (cwd_ok ? cwd : std::string("the current directory")) << ":";
  for (const std::string& kv : ra.kv) std::cerr << " " << kv;
  std::cerr << "\n";
  return run_recipe(ra);
}

}  // namespace qf::lua
