// qforge fuzz harnesses: shared helpers. Each harness (fuzz/fuzz_<target>.cpp) defines
// LLVMFuzzerTestOneInput; it is linked with libFuzzer for fuzzing (scripts/fuzz.sh) and with
// fuzz/replay_main.cpp for the regression replay that ctest runs (fuzz_replay_<target>).
// The readers take paths, so the input goes to a file under /dev/shm (tmpfs) when present.
// An expected rejection is a qf::Error; any other exception is a finding (abort), as are the
// sanitizers' reports and libFuzzer's timeouts and memory limit.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "core/error.h"
#include "core/io.h"

namespace qf_fuzz {

// A per-process scratch directory, removed and recreated for every input.
inline const std::string& scratch() {
  static const std::string d = [] {
    const char* base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    return std::string(base) + "/qf_fuzz_" + std::to_string(getpid());
  }();
  return d;
}
inline std::string fresh_dir() {
  qf::remove_tree(scratch());
  qf::make_dirs(scratch());
  return scratch();
}
inline void put(const std::string& path, const uint8_t* data, size_t size) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}
// Writes the input to <scratch>/<name> and returns the path.
inline std::string input_file(const uint8_t* data, size_t size, const std::string& name) {
  const std::string p = fresh_dir() + "/" + name;
  put(p, data, size);
  return p;
}

// Runs the reader: qf::Error is the expected rejection; anything else is a finding.
// QF_FUZZ_VERBOSE=1: print each input's outcome (to check that seeds get past the header).
template <class F>
int run(F&& f) {
  static const bool verbose = std::getenv("QF_FUZZ_VERBOSE") != nullptr;
  try {
    f();
    if (verbose) std::fprintf(stderr, "  accepted\n");
  } catch (const qf::Error& e) {
    if (verbose) std::fprintf(stderr, "  rejected: %.300s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FINDING: exception other than qf::Error: %s\n", e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "FINDING: unknown exception\n");
    std::abort();
  }
  return 0;
}

// A step after the reader that may refuse the input with a qf::Error (encoding text the
// vocabulary cannot spell); the harness goes on either way.
template <class F>
void expect_error(F&& f) {
  try {
    f();
  } catch (const qf::Error&) {
  }
}

[[noreturn]] inline void finding(const std::string& what) {
  std::fprintf(stderr, "FINDING: %s\n", what.c_str());
  std::abort();
}

}  // namespace qf_fuzz
