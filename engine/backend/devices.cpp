// qforge — the backends by name (devices.h). The device backends are linked in only when the build
// has them: QF_HAVE_THRUST_OMP and QF_HAVE_CUDA are set on this file alone by CMakeLists.txt.
#include "backend/devices.h"

#include "backend/device_bench.h"

#include <cstring>

namespace qf {

#ifdef QF_HAVE_THRUST_OMP
namespace thrust_omp {
Backend* device_backend(std::string* why);  // engine/backend/thrust/thrust_omp_backend.cpp
const DeviceBench* device_bench_api();
}
#endif
#ifdef QF_HAVE_CUDA
namespace cuda_dev {
Backend* device_backend(std::string* why);  // engine/backend/cuda/cuda_backend.cu
const DeviceBench* device_bench_api();
}
#endif

const std::vector<std::string>& device_names() {
  static const std::vector<std::string> names{"cpu", "thrust-omp", "cuda"};
  return names;
}

bool device_built(const std::string& name) {
  if (name == "cpu") return true;
#ifdef QF_HAVE_THRUST_OMP
  if (name == "thrust-omp") return true;
#endif
#ifdef QF_HAVE_CUDA
  if (name == "cuda") return true;
#endif
  return false;
}

Backend* find_device(const std::string& name, std::string* why) {
  if (name == "cpu") return &cpu_backend();
  if (name == "thrust-omp") {
#ifdef QF_HAVE_THRUST_OMP
    return thrust_omp::device_backend(why);
#else
    *why = "device 'thrust-omp': qforge was built without the Thrust-OMP backend (QFORGE_THRUST_OMP=OFF)";
    return nullptr;
#endif
  }
  if (name == "cuda") {
#ifdef QF_HAVE_CUDA
    return cuda_dev::device_backend(why);
#else
    *why = "device 'cuda': qforge was built without CUDA (configure with -DQFORGE_CUDA=ON on a machine with the CUDA toolkit)";
    return nullptr;
#endif
  }
  *why = "unknown device '" + name + "' (expected cpu, thrust-omp or cuda)";
  return nullptr;
}

const DeviceBench* device_bench(const std::string& name) {
#ifdef QF_HAVE_THRUST_OMP
  if (name == "thrust-omp") return thrust_omp::device_bench_api();
#endif
#ifdef QF_HAVE_CUDA
  if (name == "cuda") return cuda_dev::device_bench_api();
#endif
  return nullptr;
}

std::string current_device() {
  const char* n = backend().name();
  return n;
}

}  // namespace qf
