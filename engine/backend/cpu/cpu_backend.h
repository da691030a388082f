// qforge — the CPU backend: Eigen products and OpenMP loops over fixed chunks, so every op
// gives the same bits on one thread or many (the reference every other backend is tested
// against). The ops live by kind in gemm.cpp, model_ops.cpp, linalg.cpp and solver_kernels.cpp.
#pragma once
#include "backend/backend.h"

namespace qf::cpu {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void gemm_rows(const float* x, int64_t rows, const float* w, int64_t w_rows, int64_t w_cols, bool w_transposed,
                 float* y, bool accumulate) override;
  void gemm_tn(const float* a, int64_t rows, int64_t a_cols, const float* b, int64_t b_cols, float* c, bool accumulate,
               float* a_colsum, int64_t work) override;
  void gemm_rows_batch(int64_t rows, const GemmRowsJob* jobs, int n_jobs) override;
  void gemm_tn_batch(int64_t rows, const GemmTnJob* jobs, int n_jobs) override;
  void gram_accumulate(const float* x, int64_t n, int64_t c, double* S, double* xsum) override;
  void rmsnorm(const float* x, int64_t n, int64_t d, const float* g, float eps, float* y) override;
  void rmsnorm_backward(const float* x, int64_t n, int64_t d, const float* g, float eps, const float* dy, float* dx,
                        float* dg) override;
  void rope_rotate(float* x, int64_t n, int n_heads, int head_dim, int T, const float* inv_freq, bool interleaved,
                   bool transpose) override;
  void swiglu(const float* a, const float* u, int64_t n, float* h) override;
  void swiglu_backward(float* a, float* u, const float* dh, int64_t n) override;
  void geglu(const float* a, const float* u, int64_t n, float* h) override;
  void geglu_backward(float* a, float* u, const float* dh, int64_t n) override;
  void add_inplace(float* a, const float* b, int64_t n) override;
  void attention(const float* q, const float* k, const float* v, const AttentionShape& s, float* out) override;
  void attention_backward(const float* q, const float* k, const float* v, const AttentionShape& s, const float* dy,
                          float* dq, float* dk, float* dv) override;
  bool cholesky_lower(double* A, int64_t n) override;
  void lower_triangular_inverse(const double* A, int64_t n, double* X) override;
  void gptq_block(const GptqBlock& b) override;
  double cd_sweep(const CdSweep& s) override;
};

}  // namespace qf::cpu
