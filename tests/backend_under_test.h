// qforge tests — the backend a test binary checks: QF_TEST_BACKEND=cpu|thrust-omp|cuda (ctest
// registers one variant per backend built, CMakeLists.txt). A binary including this header exits
// with 77 (ctest's SKIP_RETURN_CODE) before any test runs when the named backend cannot run here
// (not built, or no GPU), so a CUDA variant reports skipped, never passed or failed.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <string>

#include "backend/devices.h"

namespace qf::test {

inline std::string backend_under_test_name() {
  const char* n = std::getenv("QF_TEST_BACKEND");
  return n && *n ? n : "cpu";
}

// Runs before main(): the skip (exit 77) when QF_TEST_BACKEND names a backend that cannot run.
inline const bool kBackendUnderTestChecked = [] {
  const char* n = std::getenv("QF_TEST_BACKEND");
  std::string why;
  if (n && *n && !find_device(n, &why)) {
    std::printf("SKIPPED: %s\n", why.c_str());
    std::fflush(stdout);
    std::_Exit(77);
  }
  return true;
}();

// The backend named by QF_TEST_BACKEND (checked above).
inline Backend& backend_under_test() {
  static Backend* b = [] {
    std::string why;
    Backend* x = find_device(backend_under_test_name(), &why);
    return x ? x : &cpu_backend();
  }();
  return *b;
}

// Sets a backend for one scope.
struct ScopedBackend {
  Backend* prev;
  explicit ScopedBackend(Backend* b) : prev(set_backend(b)) {}
  ~ScopedBackend() { set_backend(prev); }
};

}  // namespace qf::test
