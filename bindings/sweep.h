// qforge — `qforge sweep` (one recipe over the cartesian product of option lists, one run
// directory each, resumable) and `qforge table` (run directories → markdown, CSV, a plot).
#pragma once
#include <string>
#include <vector>

namespace qf::lua {

// `qforge sweep RECIPE key=v1,v2 ... [--out DIR] [--fail-fast] [--dry-run]`; args is the whole
// argv (args[1] == "sweep"). Returns the exit code: 0 every run complete, 1 a run failed (or the
// sweep was interrupted), 2 usage or option error (found before any run).
int sweep_command(const std::vector<std::string>& args);
extern const char* kSweepUsage;

// `qforge table DIR... [--csv FILE] [--md FILE] [--plot FILE.png] [--x KEY] [--y KEY]
// [--curve KEY] [--keys K1,K2]` (bindings/table.cpp). Exit codes as above.
int table_command(const std::vector<std::string>& args);
extern const char* kTableUsage;

}  // namespace qf::lua
