// qforge — the current backend (backend.h).
#include "backend/backend.h"

#include "backend/cpu/cpu_backend.h"

namespace qf {

static Backend* g_backend = nullptr;

Backend& cpu_backend() {
  static cpu::CpuBackend cpu;
  return cpu;
}

Backend& backend() { return g_backend ? *g_backend : cpu_backend(); }

Backend* set_backend(Backend* b) {
  Backend* prev = g_backend ? g_backend : &cpu_backend();
  g_backend = b;
  return prev;
}

}  // namespace qf
