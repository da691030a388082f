// qforge — the backends by name: what `device=` selects (docs/device.md). The CPU backend is
// always there and is the default; "thrust-omp" (the device code of engine/backend/thrust run by
// Thrust's OpenMP system on the CPU, the twin every CI run tests) and "cuda" (the same device code
// compiled by nvcc, with cuBLAS/cuSOLVER) exist when the build has them (CMake QFORGE_THRUST_OMP,
// QFORGE_CUDA; docs/architecture.md#backends).
#pragma once
#include <string>
#include <vector>

#include "backend/backend.h"

namespace qf {

// Every name `device=` accepts, built or not, in a fixed order: cpu, thrust-omp, cuda.
const std::vector<std::string>& device_names();
// Whether this binary was built with the backend (a known name; false for an unknown one).
bool device_built(const std::string& name);
// The backend of that name, ready to use; nullptr with *why set when the name is unknown, the
// build lacks it ("qforge was built without CUDA (QFORGE_CUDA=OFF or no nvcc)") or it cannot run
// here ("no CUDA GPU is present: ..."). The object lives for the whole process.
Backend* find_device(const std::string& name, std::string* why);
// The name `device=` would give the current backend ("cpu" unless set_backend chose another).
std::string current_device();

}  // namespace qf
