// qforge — the command: `qforge run RECIPE.lua [key=value ...]`, `qforge rerun RUN_DIR`,
// `qforge sweep RECIPE.lua key=v1,v2 ...`, `qforge table DIR...`, `qforge version`, `qforge help`.
// Exit codes: 0 ok, 1 the run failed (or a rerun was refused), 2 usage or option error (see kRunUsage).
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "core/omp_wait.h"
#include "qforge_version.h"
#include "runner.h"
#include "sweep.h"

static const char* kUsage =
    "usage: qforge <command> [arguments]\n"
    "\n"
    "commands:\n"
    "  run RECIPE.lua [key=value ...]   run a Lua recipe (see 'qforge run --help')\n"
    "  rerun RUN_DIR [out=DIR] [--force]\n"
    "                                   rerun a run directory with its recorded options, after\n"
    "                                   checking the commit and every input's fingerprint\n"
    "  sweep RECIPE.lua key=v1,v2 ... [key=value ...] [--out DIR] [--fail-fast] [--dry-run]\n"
    "                                   one run per combination of the lists, in one sweep\n"
    "                                   directory; resumable (see 'qforge sweep --help')\n"
    "  table DIR... [--csv FILE] [--md FILE] [--plot FILE.png] [--x KEY] [--y KEY] [--curve KEY]\n"
    "                                   run and sweep directories as one markdown table, CSV,\n"
    "                                   a gnuplot PNG (see 'qforge table --help')\n"
    "  version                          print the version and git commit\n"
    "  help                             print this help\n"
    "\n"
    "exit codes: 0 ok, 1 the run failed, 2 usage or option error (before any work)\n"
    "\n"
    "The Lua API is documented in docs/lua_api.md.\n";

static const char* kRunUsage =
    "usage: qforge run RECIPE.lua [key=value ...] [--help]\n"
    "\n"
    "Runs a Lua recipe. key=value pairs set the options the recipe declares with\n"
    "qf.options{...}; 'qforge run RECIPE.lua --help' lists them.\n"
    "\n"
    "runner options (accepted by every recipe):\n"
    "  out=DIR      run directory (default runs/<recipe>-<YYYYmmdd-HHMMSS>)\n"
    "  seed=N       the run's seed, qf.seed() (default 0)\n"
    "  threads=N    OpenMP threads (default: all cores)\n"
    "  device=NAME  the compute backend: cpu (default, the reference), thrust-omp (the GPU code\n"
    "               run on the CPU by Thrust's OpenMP system), cuda (an NVIDIA GPU; needs a CUDA\n"
    "               build and a GPU); docs/device.md\n"
    "\n"
    "Waiting threads: qforge sets OMP_WAIT_POLICY=PASSIVE unless it is already set, so idle\n"
    "OpenMP threads sleep instead of spinning (spinning slows a run 10-100x beside any other\n"
    "busy process). OMP_WAIT_POLICY=ACTIVE restores spinning; run.json records the policy.\n"
    "\n"
    "The run directory receives recipe.lua, lua/ (local modules it required), options.json\n"
    "(every resolved option), run.json, results.json, log.jsonl and rerun.sh\n"
    "(= qforge rerun RUN_DIR).\n"
    "\n"
    "exit codes:\n"
    "  0  ok (also --help)\n"
    "  1  the run failed (an error while working: bad model file, a solver failure, ...)\n"
    "  2  usage or option error: unknown command or option, an option value out of its\n"
    "     range, options that contradict each other; found before any work is done\n"
    "     (a run refused so, having recorded, logged and written nothing, leaves no run\n"
    "     directory: the one it created is removed)\n";

int main(int argc, char** argv) {
  qf::default_passive_wait(argv);  // before any OpenMP use; see omp_wait.h
  std::vector<std::string> args(argv, argv + argc);
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string cmd = args[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    std::cout << kUsage;
    return 0;
  }
  if (cmd == "version" || cmd == "--version") {
    std::cout << "qforge " << QFORGE_VERSION << " (commit " << QFORGE_GIT_COMMIT << ")\n";
    return 0;
  }
  if (cmd == "rerun") {
    qf::lua::RerunArgs ra;
    ra.argv = args;
    for (int i = 2; i < argc; ++i) {
      if (args[i] == "--help" || args[i] == "-h") {
        std::cout << "usage: qforge rerun RUN_DIR [out=DIR] [--force]\n\n"
                     "Reruns RUN_DIR/recipe.lua with every option of RUN_DIR/options.json, the seed and\n"
                     "the recorded threads, from the run's working directory, into out=DIR (default\n"
                     "RUN_DIR-rerun-<timestamp>). First checks that this binary's git commit, the recipe\n"
                     "and module copies and every input file's fingerprint are those in run.json;\n"
                     "prints each difference and exits 1 unless --force.\n";
        return 0;
      }
      if (args[i] == "--force") ra.force = true;
      else if (args[i].rfind("out=", 0) == 0 && args[i].size() > 4) ra.out = args[i].substr(4);
      else if (ra.run_dir.empty() && args[i].find('=') == std::string::npos && args[i][0] != '-') ra.run_dir = args[i];
      else {
        std::cerr << "qforge: error: unexpected argument '" << args[i] << "'\n"
                  << "usage: qforge rerun RUN_DIR [out=DIR] [--force]\n";
        return 2;
      }
    }
    if (ra.run_dir.empty()) {
      std::cerr << "qforge: error: 'rerun' needs a run directory\nusage: qforge rerun RUN_DIR [out=DIR] [--force]\n";
      return 2;
    }
    try {
      return qf::lua::rerun(ra);
    } catch (const std::exception& e) {
      std::cerr << "qforge: error: " << e.what() << "\n";
      return 1;
    }
  }
  if (cmd == "sweep" || cmd == "table") {
    try {
      return cmd == "sweep" ? qf::lua::sweep_command(args) : qf::lua::table_command(args);
    } catch (const std::exception& e) {
      std::cerr << "qforge " << cmd << ": error: " << e.what() << "\n";
      return 1;
    }
  }
  if (cmd != "run") {
    std::cerr << "qforge: error: unknown command '" << cmd << "'\n\n" << kUsage;
    return 2;
  }
  if (argc < 3) {
    std::cerr << "qforge: error: 'run' needs a recipe file\n\n" << kRunUsage;
    return 2;
  }
  if (args[2] == "--help" || args[2] == "-h") {
    std::cout << kRunUsage;
    return 0;
  }
  qf::lua::RunArgs ra;
  ra.recipe = args[2];
  ra.argv = args;
  for (int i = 3; i < argc; ++i) {
    if (args[i] == "--help" || args[i] == "-h") {
      ra.help = true;
    } else if (args[i].find('=') == std::string::npos || args[i][0] == '=') {
      std::cerr << "qforge: error: unexpected argument '" << args[i] << "' (expected key=value or --help)\n";
      return 2;
    } else {
      ra.kv.push_back(args[i]);
    }
  }
  try {
    return qf::lua::run_recipe(ra);
  } catch (const std::exception& e) {
    std::cerr << "qforge: error: " << e.what() << "\n";
    return 1;
  }
}
