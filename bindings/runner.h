// qforge — running a recipe: the run directory, its records, and `qforge run`.
//
// A run directory holds recipe.lua (copy of the source), lua/ (copies of the local modules
// it required), options.json (every resolved option and the seed), run.json (commit, threads,
// inputs with fingerprints), results.json, log.jsonl and rerun.sh (calls `qforge rerun`). The RunContext lives for one `qforge run`; the
// Lua functions reach it through the registry (run_context). Outside `qforge run`
// (e.g. a test opening the module in its own lua_State) there is no context.
#pragma once
#include <lua.hpp>

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace qf::lua {

struct RunContext {
  std::string recipe_path;  // as given on the command line
  std::string recipe_name;  // basename, e.g. "eval.lua"
  std::string run_dir;      // absolute; empty under --help (nothing is written)
  std::vector<std::string> argv;
  std::vector<std::string> args;  // key=value arguments (a rerun's are generated)
  std::vector<std::pair<std::string, std::string>> cli;  // recipe key=value pairs, in order
  std::string out_arg;      // out= as given ("" when defaulted)
  bool help = false;
  bool check = false;       // option check only (qforge sweep): see RunArgs::check
  bool options_declared = false;
  int64_t seed = 0;
  bool seed_given = false;
  int threads = 0;
  bool threads_given = false;
  nlohmann::json options = nlohmann::json::object();  // resolved by qf.options
  nlohmann::json results = nlohmann::json::object();
  nlohmann::json inputs = nlohmann::json::array();
  std::string recipe_fingerprint;
  std::string module_root;  // absolute directory `require` searches first (the recipe's, or RUN_DIR/lua)
  std::string rerun_of;     // `qforge rerun`: the run directory rerun
  std::vector<std::string> rerun_differences;  // what differed (a --force rerun)
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  std::string start_time;   // ISO-8601 UTC
  std::string option_error;  // message of the last option error raised (qf.options, qf.option_error): exit code 2
  // Directories make_run_dir created, innermost first (empty when out= named an existing one): a
  // run refused for its options before any work removes them again (see nothing_done).
  std::vector<std::string> created_dirs;
  int64_t log_events = 0;  // lines appended to log.jsonl (the runner's start event included)
  // Paths qf.remove_on_success registered (a block checkpoint's files, then its directory):
  // removed in this order once the run ended with status ok, kept when it failed or was killed.
  std::vector<std::string> remove_on_success;

  double elapsed() const;
  // Records a file read through qf (path, size, fingerprint) once in run.json's inputs.
  void note_input(const std::string& path);
  // A local module loaded by `require`: copied to RUN_DIR/lua/<rel> and noted with its fingerprint.
  void note_module(const std::string& name, const std::string& file, const std::string& rel, const std::string& source);
  void record(const std::string& key, nlohmann::json value);  // results.json, atomically
  void log(nlohmann::json event);                             // one line of log.jsonl
  void write_run_json(const std::string& status, const std::string& error = "") const;
  void write_rerun_sh() const;
  // Nothing of the run's own was kept: no result recorded, no event logged after the start, and
  // the run directory holds only what the runner wrote (recipe.lua, options.json, run.json,
  // results.json, log.jsonl, rerun.sh and lua/ with required modules).
  bool nothing_done() const;
};

// The context of the run executing in L, or nullptr.
RunContext* run_context(lua_State* L);
void set_run_context(lua_State* L, RunContext* ctx);

struct RunArgs {
  std::string recipe;
  std::vector<std::string> kv;  // "key=value" arguments after the recipe
  bool help = false;            // --help after the recipe
  // Option check only (qforge sweep, before any run): no run directory, nothing written; the
  // recipe runs up to its first qf.load_model call (qf.options has resolved and checked every
  // option by then, and the pipeline recipes have made every check that needs no model), where
  // it stops. Returns 0 when nothing was refused, else the run's exit code (2 option error).
  bool check = false;
  nlohmann::json* check_options = nullptr;  // check: receives the options qf.options resolved
  std::vector<std::string> argv;
  std::string rerun_of;  // set by rerun()
  std::vector<std::string> rerun_differences;
};

// Runs a recipe; returns the process exit code (0 ok, 1 the run failed, 2 usage or option error).
int run_recipe(const RunArgs& args);

// `qforge rerun RUN_DIR [out=DIR] [--force]`: reruns RUN_DIR/recipe.lua with every option of
// RUN_DIR/options.json and the recorded threads, from the recorded working directory, after
// checking the binary's commit and every input's fingerprint against RUN_DIR/run.json.
// A difference is printed and refused (exit 1) unless force.
struct RerunArgs {
  std::string run_dir;
  std::string out;
  bool force = false;
  std::vector<std::string> argv;
};
int rerun(const RerunArgs& args);

}  // namespace qf::lua
