// qforge — what the device code (device_backend.inl) needs from the build that compiles it
// (docs/architecture.md#backends). The same declarations are implemented twice: by
// thrust_omp_backend.cpp (g++, Thrust's OpenMP device system, Eigen for dense algebra, device
// memory = host memory) and by cuda/cuda_backend.cu (nvcc, CUDA device system, cuBLAS and
// cuSOLVER, device memory from cudaMalloc). Each build puts them in its own namespace, QF_DEV_NS.
//
// Dense algebra uses cuBLAS's conventions: column-major, leading dimensions, C = α·op(A)·op(B) +
// β·C with β = 0 never reading C. A row-major [r, c] buffer is the column-major [c, r] transpose.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#ifndef QF_DEV_NS
#error "QF_DEV_NS must name the device build's namespace"
#endif

namespace qf::QF_DEV_NS {

// ---- memory: the build's raw device allocation and copies
void* raw_alloc(size_t bytes);  // throws std::runtime_error naming the size on failure
void raw_free(void* p);
void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_on_device(void* dst, const void* src, size_t bytes);
void synchronize();
// true when device memory is host memory (Thrust-OMP): staging a host buffer is then free.
bool zero_copy();

// A caching allocator over raw_alloc: freed blocks are kept by size and reused, so the per-op
// scratch of a sweep costs no cudaMalloc after the first call (no managed memory anywhere).
class BlockCache {
 public:
  void* get(size_t bytes) {
    bytes = round(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* p = it->second;
        free_.erase(it);
        return p;
      }
    }
    try {
      return raw_alloc(bytes);
    } catch (const std::exception&) {
      release_all();  // cached blocks may be what is missing
      return raw_alloc(bytes);
    }
  }
  void put(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.emplace(round(bytes), p);
  }
  void release_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [n, p] : free_) raw_free(p);
    free_.clear();
  }
  static size_t round(size_t b) {
    if (b == 0) b = 1;
    if (b <= (size_t(1) << 20)) return (b + 255) & ~size_t(255);
    return (b + (size_t(1) << 20) - 1) & ~((size_t(1) << 20) - 1);  // 1 MiB steps
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
};
BlockCache& block_cache();

// Device scratch of n elements (uninitialised), back to the cache when it goes out of scope.
template <class T>
class Buf {
 public:
  Buf() = default;
  explicit Buf(size_t n) : n_(n), p_((T*)block_cache().get(n * sizeof(T))) {}
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  Buf(Buf&& o) noexcept : n_(o.n_), p_(o.p_) { o.p_ = nullptr; }
  Buf& operator=(Buf&& o) noexcept {
    std::swap(n_, o.n_);
    std::swap(p_, o.p_);
    return *this;
  }
  ~Buf() {
    if (p_) block_cache().put(p_, n_ * sizeof(T));
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  size_t n_ = 0;
  T* p_ = nullptr;
};

// A host buffer as the device code reads or writes it: the host pointer itself when zero_copy,
// else a device copy (in: uploaded now; out: written back by to_host()).
template <class T>
class Staged {
 public:
  Staged(T* host, size_t n, bool upload) : host_(host), n_(n) {
    if (!host || zero_copy()) {
      dev_ = host;
      return;
    }
    buf_ = Buf<T>(n);
    dev_ = buf_.get();
    if (upload && n) copy_to_device(dev_, host, n * sizeof(T));
  }
  T* dev() const { return dev_; }
  void to_host() const {
    if (host_ && dev_ != host_ && n_) copy_to_host(host_, dev_, n_ * sizeof(T));
  }

 private:
  T* host_;
  size_t n_;
  T* dev_ = nullptr;
  Buf<T> buf_;
};
template <class T>
Staged<T> stage_in(const T* host, size_t n) { return Staged<T>(const_cast<T*>(host), n, true); }
template <class T>
Staged<T> stage_inout(T* host, size_t n) { return Staged<T>(host, n, true); }
template <class T>
Staged<T> stage_out(T* host, size_t n) { return Staged<T>(host, n, false); }

// ---- dense linear algebra on device pointers (the dense-LA seam)
namespace dla {
// C[m, n] = α·op(A)·op(B) + β·C, f32, column-major (ta/tb: op = transpose).
void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* A, int64_t lda, const float* B,
           int64_t ldb, float beta, float* C, int64_t ldc);
// batch independent sgemms of one shape; the pointer arrays live on the host.
void sgemm_batched(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* const* A, int64_t lda,
                   const float* const* B, int64_t ldb, float beta, float* const* C, int64_t ldc, int batch);
// The lower triangle of C[n, n] = A·Aᵀ (A column-major [n, k]), f32; the strict upper part is
// not written.
void ssyrk_lower(int64_t n, int64_t k, const float* A, int64_t lda, float* C, int64_t ldc);
// In place: A's lower triangle ← L, A = L·Lᵀ (f64); false when not positive definite.
bool dpotrf_lower(double* A, int64_t n, int64_t lda);
// In place: B[m, nrhs] ← L⁻¹·B for the lower triangle L of A[m, m] (f64, non-unit diagonal).
void dtrsm_lower(int64_t m, int64_t nrhs, const double* A, int64_t lda, double* B, int64_t ldb);
}  // namespace dla

}  // namespace qf::QF_DEV_NS
