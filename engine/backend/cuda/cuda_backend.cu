// qforge — the CUDA backend: the device code of engine/backend/thrust/device_backend.inl compiled
// by nvcc for Thrust's CUDA system, with cuBLAS and cuSOLVER behind the dense-LA seam
// (docs/architecture.md#backends, docs/device.md). Device memory comes from cudaMalloc through the
// caching allocator of device.h (no managed memory); all work runs on one stream. f32 GEMMs use
// CUBLAS_DEFAULT_MATH — no TF32 — unless QF_CUDA_TF32=1 is set in the environment (reference
// results are f32; TF32 changes them at the 1e-3 level).
//
// The Backend interface hands host buffers to every op, so each op stages its inputs to the
// device and its outputs back (the staging is explicit in device.h's Staged); a solver kernel on
// a device-resident problem is what bench/bench_device.cpp times besides the op as called.
#define QF_DEV_NS cuda_dev
#define QF_DEV_NAME "cuda"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <thrust/system/cuda/execution_policy.h>

#include <climits>
#include <cstdlib>
#include <string>

#include "backend/thrust/device.h"

namespace qf::cuda_dev {

namespace {

struct Ctx {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  cusolverDnHandle_t solver = nullptr;
};

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error("cuda: " + what); }

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail(std::string(what) + ": " + cudaGetErrorString(e));
}
void check(cublasStatus_t e, const char* what) {
  if (e != CUBLAS_STATUS_SUCCESS) fail(std::string(what) + ": cuBLAS status " + std::to_string((int)e));
}
void check(cusolverStatus_t e, const char* what) {
  if (e != CUSOLVER_STATUS_SUCCESS) fail(std::string(what) + ": cuSOLVER status " + std::to_string((int)e));
}

Ctx& ctx() {
  static Ctx c = [] {
    Ctx x;
    check(cudaStreamCreateWithFlags(&x.stream, cudaStreamNonBlocking), "cudaStreamCreate");
    check(cublasCreate(&x.blas), "cublasCreate");
    check(cublasSetStream(x.blas, x.stream), "cublasSetStream");
    const char* tf32 = std::getenv("QF_CUDA_TF32");
    const bool use_tf32 = tf32 && std::string(tf32) == "1";
    check(cublasSetMathMode(x.blas, use_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    check(cusolverDnCreate(&x.solver), "cusolverDnCreate");
    check(cusolverDnSetStream(x.solver, x.stream), "cusolverDnSetStream");
    return x;
  }();
  return c;
}

}  // namespace

void* raw_alloc(size_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, bytes) != cudaSuccess) {
    (void)cudaGetLastError();
    fail("out of device memory allocating " + std::to_string(bytes) + " bytes");
  }
  return p;
}
void raw_free(void* p) { cudaFree(p); }
void copy_to_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, ctx().stream), "copy to device");
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, ctx().stream), "copy to host");
  check(cudaStreamSynchronize(ctx().stream), "synchronize after copy to host");
}
void copy_on_device(void* dst, const void* src, size_t bytes) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, ctx().stream), "copy on device");
}
void synchronize() { check(cudaStreamSynchronize(ctx().stream), "synchronize"); }
bool zero_copy() { return false; }
BlockCache& block_cache() {
  static BlockCache c;
  return c;
}

namespace dla {

namespace {
cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }
}  // namespace

void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A, int64_t lda, const float* B,
           int64_t ldb, float beta, float* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  check(cublasSgemm_64(ctx().blas, op(ta), op(tb), m, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc), "cublasSgemm");
}

void sgemm_batched(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* const* A, int64_t lda,
                   const float* const* B, int64_t ldb, float beta, float* const* C, int64_t ldc, int batch) {
  if (batch == 0) return;
  Buf<const float*> ptrs((size_t)3 * batch);
  check(cudaMemcpyAsync(ptrs.get(), A, sizeof(float*) * batch, cudaMemcpyHostToDevice, ctx().stream), "batch pointers");
  check(cudaMemcpyAsync(ptrs.get() + batch, B, sizeof(float*) * batch, cudaMemcpyHostToDevice, ctx().stream),
        "batch pointers");
  check(cudaMemcpyAsync(ptrs.get() + 2 * batch, C, sizeof(float*) * batch, cudaMemcpyHostToDevice, ctx().stream),
        "batch pointers");
  check(cublasSgemmBatched_64(ctx().blas, op(ta), op(tb), m, n, k, &alpha, ptrs.get(), lda, ptrs.get() + batch, ldb,
                              &beta, (float* const*)(ptrs.get() + 2 * batch), ldc, batch),
        "cublasSgemmBatched");
  synchronize();  // the pointer buffer goes back to the cache
}

void ssyrk_lower(int64_t n, int64_t k, const float* A, int64_t lda, float* C, int64_t ldc) {
  const float one = 1.f, zero = 0.f;
  check(cublasSsyrk_64(ctx().blas, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, n, k, &one, A, lda, &zero, C, ldc),
        "cublasSsyrk");
}

bool dpotrf_lower(double* A, int64_t n, int64_t lda) {
  if (n > INT_MAX || lda > INT_MAX) fail("cholesky: n = " + std::to_string(n) + " is beyond cusolverDnDpotrf's int");
  int lwork = 0;
  check(cusolverDnDpotrf_bufferSize(ctx().solver, CUBLAS_FILL_MODE_LOWER, (int)n, A, (int)lda, &lwork),
        "cusolverDnDpotrf_bufferSize");
  Buf<double> work((size_t)std::max(lwork, 1));
  Buf<int> info(1);
  check(cusolverDnDpotrf(ctx().solver, CUBLAS_FILL_MODE_LOWER, (int)n, A, (int)lda, work.get(), lwork, info.get()),
        "cusolverDnDpotrf");
  int h = 0;
  copy_to_host(&h, info.get(), sizeof(int));
  return h == 0;
}

void dtrsm_lower(int64_t m, int64_t nrhs, const double* A, int64_t lda, double* B, int64_t ldb) {
  const double one = 1.0;
  check(cublasDtrsm_64(ctx().blas, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N, CUBLAS_DIAG_NON_UNIT, m, nrhs,
                       &one, A, lda, B, ldb),
        "cublasDtrsm");
}

}  // namespace dla
}  // namespace qf::cuda_dev

#define QF_EXEC thrust::cuda::par.on(qf::cuda_dev::ctx().stream)
#include "backend/thrust/device_backend.inl"

namespace qf::cuda_dev {

// nullptr with the reason when no GPU can be used (no driver, no device, or a context that
// cannot be created); checked once.
Backend* device_backend(std::string* why) {
  static std::string reason = [] {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return std::string("device 'cuda': no CUDA GPU is present (cudaGetDeviceCount: ") + cudaGetErrorString(e) + ")";
    }
    if (n == 0) return std::string("device 'cuda': no CUDA GPU is present (cudaGetDeviceCount found 0 devices)");
    try {
      ctx();
    } catch (const std::exception& ex) {
      return std::string("device 'cuda': ") + ex.what();
    }
    return std::string();
  }();
  if (!reason.empty()) {
    *why = reason;
    return nullptr;
  }
  static DeviceBackend b;
  return &b;
}

}  // namespace qf::cuda_dev
