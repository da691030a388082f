// qforge — the default OpenMP wait policy of qforge's programs (qforge, benchmarks, tests).
//
// Idle OpenMP threads spin by default (libgomp: GOMP_SPINCOUNT 300000), which beside any
// other busy process slows a run 10-100x. libgomp reads OMP_WAIT_POLICY once, when it loads
// (before main), so the default can only take effect in a fresh process image: main() sets
// OMP_WAIT_POLICY=PASSIVE and re-executes itself, once. A value the user set (OMP_WAIT_POLICY
// or GOMP_SPINCOUNT) is respected. QFORGE_DEFAULT_WAIT_POLICY=1 marks the default for run.json.
#pragma once
#include <stdlib.h>
#include <unistd.h>

namespace qf {

inline void default_passive_wait(char** argv) {
  if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  setenv("QFORGE_DEFAULT_WAIT_POLICY", "1", 1);
  execv("/proc/self/exe", argv);
  unsetenv("QFORGE_DEFAULT_WAIT_POLICY");  // exec failed (no /proc): the runtime's default stays
}

}  // namespace qf
