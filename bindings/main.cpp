// qforge — the command: `qforge run RECIPE.lua [key=value ...]`, `qforge version`, `qforge help`.
// Exit codes: 0 ok, 1 the run failed, 2 usage or option error (see kRunUsage).
#include <exception>
#include <iostream>
#include <string>
#include <vector>

#include "qforge_version.h"
#include "runner.h"

static const char* kUsage =
    "usage: qforge <command> [arguments]\n"
    "\n"
    "commands:\n"
    "  run RECIPE.lua [key=value ...]   run a Lua recipe (see 'qforge run --help')\n"
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
    "\n"
    "The run directory receives recipe.lua, options.json, run.json, results.json,\n"
    "log.jsonl and rerun.sh.\n"
    "\n"
    "exit codes:\n"
    "  0  ok (also --help)\n"
    "  1  the run failed (an error while working: bad model file, a solver failure, ...)\n"
    "  2  usage or option error: unknown command or option, an option value out of its\n"
    "     range, options that contradict each other; found before any work is done\n";

int main(int argc, char** argv) {
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
