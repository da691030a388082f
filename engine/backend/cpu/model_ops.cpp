// qforge — the CPU backend's model ops: RMSNorm, RoPE, SwiGLU, residual adds and causal
// grouped-query attention, forward and backward (backend.h). f32 throughout; f64 only for the
// reductions that need it (RMSNorm row dots and gain sums, the softmax backward's row dots).
// Chunking is fixed, so the bits do not depend on the thread count. Loops hand out their
// chunks dynamically: under passive waiting a woken thread starts late, and the calling
// thread takes its share meanwhile instead of waiting for it at the end.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/parallel.h"
#include "core/tensor.h"

namespace qf::cpu {

namespace {

constexpr int64_t kNormRowChunk = 64;  // rows per f64 partial sum of the RMSNorm gain gradient
// Attention query rows go in blocks of kQBlock: block [i0, i1) needs keys [0, i1) only, so the
// score buffer is kQBlock×T per thread (not T×T) and the masked upper half is mostly skipped.
constexpr int kQBlock = 128;

float silu(float a) { return a / (1.0f + std::exp(-a)); }

// The keys a query block [i0, i1) can see: [k0, i1), k0 = 0 unless a sliding window cuts it.
int first_key(int i0, int window) { return window > 0 ? std::max(0, i0 - window + 1) : 0; }

// Rows [0, nq) of S hold the scaled scores of queries i0 + r against keys [k0, i1) (column
// j − k0). Soft-capped when softcap > 0 (th, when given, receives tanh(s/softcap), which the
// backward needs); then each row becomes the softmax over the keys its query sees (causal, and
// inside the window), the rest zero. Shared by the forward and by the backward's recompute, so
// both see the same P bit for bit.
void causal_softmax_rows(MatRM& S, int i0, int k0, int i1, int nq, int window, float softcap, MatRM* th) {
  const int nk = i1 - k0;
  if (softcap > 0.f) {
    auto Sb = S.topLeftCorner(nq, nk).array();
    if (th) {
      auto Tb = th->topLeftCorner(nq, nk).array();
      Tb = (Sb * (1.0f / softcap)).tanh();
      Sb = Tb * softcap;
    } else {
      Sb = (Sb * (1.0f / softcap)).tanh() * softcap;
    }
  }
  for (int r = 0; r < nq; ++r) {
    float* s = S.data() + (int64_t)r * S.cols();
    const int last = i0 + r - k0, first = window > 0 ? std::max(0, i0 + r - window + 1 - k0) : 0;
    // Eigen's vectorized exp: the scalar std::exp loop was most of the forward's time.
    Eigen::Map<Eigen::ArrayXf> row(s + first, last - first + 1);
    row = (row - row.maxCoeff()).exp();
    row *= 1.0f / row.sum();
    for (int j = 0; j < first; ++j) s[j] = 0.f;
    for (int j = last + 1; j < nk; ++j) s[j] = 0.f;
  }
}

float attention_scale(const AttentionShape& sh) { return sh.scale > 0.f ? sh.scale : 1.0f / std::sqrt((float)sh.head_dim); }

// gelu_tanh(a) and its derivative (docs/architecture.md#architectures).
constexpr float kGeluC = 0.7978845608028654f;  // √(2/π)
float gelu_tanh(float a) { return 0.5f * a * (1.0f + std::tanh(kGeluC * (a + 0.044715f * a * a * a))); }
float gelu_tanh_grad(float a) {
  const float t = std::tanh(kGeluC * (a + 0.044715f * a * a * a));
  return 0.5f * (1.0f + t) + 0.5f * a * (1.0f - t * t) * kGeluC * (1.0f + 3.0f * 0.044715f * a * a);
}

using Strided = Eigen::Map<const MatRM, 0, Eigen::OuterStride<>>;
using StridedOut = Eigen::Map<MatRM, 0, Eigen::OuterStride<>>;

}  // namespace

void CpuBackend::rmsnorm(const float* xp, int64_t N, int64_t D, const float* gp, float eps, float* op) {
#pragma omp parallel for schedule(dynamic, 8) if (worth_parallel(N * D * 4))
  for (int64_t i = 0; i < N; ++i) {
    const float* r = xp + i * D;
    double ss = 0;
    for (int64_t j = 0; j < D; ++j) ss += (double)r[j] * r[j];
    const float inv = 1.0f / std::sqrt((float)(ss / D) + eps);
    for (int64_t j = 0; j < D; ++j) op[i * D + j] = gp[j] * (inv * r[j]);
  }
}

void CpuBackend::rmsnorm_backward(const float* xp, int64_t N, int64_t D, const float* gp, float eps,
                                  const float* dyp, float* dxp, float* dgp) {
  const bool want_dg = dgp != nullptr;
  // dg = Σ_rows dy ⊙ x·inv: f64 partial sums per fixed row chunk, added in chunk order.
  const int64_t nchunks = (N + kNormRowChunk - 1) / kNormRowChunk;
  std::vector<double> part(want_dg ? (size_t)(nchunks * D) : 0, 0.0);
#pragma omp parallel for schedule(dynamic) if (worth_parallel(N * D * 4))
  for (int64_t c = 0; c < nchunks; ++c) {
    double* pc = want_dg ? part.data() + c * D : nullptr;
    for (int64_t i = c * kNormRowChunk; i < std::min(N, (c + 1) * kNormRowChunk); ++i) {
      const float* r = xp + i * D;
      const float* d = dyp + i * D;
      double ss = 0, dot = 0;
      for (int64_t j = 0; j < D; ++j) {
        ss += (double)r[j] * r[j];
        dot += (double)gp[j] * d[j] * r[j];
      }
      const float inv = 1.0f / std::sqrt((float)(ss / D) + eps);  // exactly as rmsnorm
      // y = g x inv, inv = (Σx²/D + eps)^(−1/2):  dx = inv g dy − x inv³ (Σ g dy x) / D
      const float k3 = (float)((double)inv * inv * inv * dot / (double)D);
      for (int64_t j = 0; j < D; ++j) dxp[i * D + j] = inv * gp[j] * d[j] - k3 * r[j];
      if (pc)
        for (int64_t j = 0; j < D; ++j) pc[j] += (double)d[j] * r[j] * inv;
    }
  }
  if (want_dg)
    for (int64_t j = 0; j < D; ++j) {
      double s = 0;
      for (int64_t c = 0; c < nchunks; ++c) s += part[c * D + j];
      dgp[j] = (float)s;
    }
}

// Rᵀ (transpose) negates the angle's sine, which is exact, so it is bit for bit the rotation
// by −angle.
void CpuBackend::rope_rotate(float* xp, int64_t N, int n_heads, int head_dim, int T, const float* inv_freq,
                             bool interleaved, bool transpose) {
  const int64_t W = (int64_t)n_heads * head_dim;
  const int half = head_dim / 2;
  // cos/sin table [T, half], computed in f32 exactly as llama2.c does.
  std::vector<float> cs((size_t)T * half), sn((size_t)T * half);
  for (int p = 0; p < T; ++p)
    for (int i = 0; i < half; ++i) {
      const float val = (float)p * inv_freq[i];
      cs[(size_t)p * half + i] = std::cos(val);
      sn[(size_t)p * half + i] = transpose ? -std::sin(val) : std::sin(val);
    }
#pragma omp parallel for schedule(static) if (worth_parallel_stream(N * W))
  for (int64_t r = 0; r < N; ++r) {
    const int p = (int)(r % T);
    for (int h = 0; h < n_heads; ++h) {
      float* v = xp + r * W + (int64_t)h * head_dim;
      for (int i = 0; i < half; ++i) {
        const float c = cs[(size_t)p * half + i], s = sn[(size_t)p * half + i];
        float& a = interleaved ? v[2 * i] : v[i];
        float& b = interleaved ? v[2 * i + 1] : v[i + half];
        const float a0 = a, b0 = b;
        a = a0 * c - b0 * s;
        b = a0 * s + b0 * c;
      }
    }
  }
}

void CpuBackend::swiglu(const float* ap, const float* up, int64_t n, float* hp) {
#pragma omp parallel for schedule(dynamic, 4096) if (worth_parallel(n * 16))
  for (int64_t i = 0; i < n; ++i) hp[i] = ap[i] / (1.0f + std::exp(-ap[i])) * up[i];  // silu(gate)·up
}

// h = silu(a)·u, silu'(a) = σ(a)(1 + a(1 − σ(a))).
void CpuBackend::swiglu_backward(float* ap, float* up, const float* dp, int64_t n) {
#pragma omp parallel for schedule(dynamic, 4096) if (worth_parallel(n * 16))
  for (int64_t i = 0; i < n; ++i) {
    const float x = ap[i], sig = 1.0f / (1.0f + std::exp(-x));
    ap[i] = dp[i] * up[i] * sig * (1.0f + x * (1.0f - sig));
    up[i] = dp[i] * silu(x);
  }
}

void CpuBackend::geglu(const float* ap, const float* up, int64_t n, float* hp) {
#pragma omp parallel for schedule(dynamic, 4096) if (worth_parallel(n * 24))
  for (int64_t i = 0; i < n; ++i) hp[i] = gelu_tanh(ap[i]) * up[i];
}

void CpuBackend::geglu_backward(float* ap, float* up, const float* dp, int64_t n) {
#pragma omp parallel for schedule(dynamic, 4096) if (worth_parallel(n * 24))
  for (int64_t i = 0; i < n; ++i) {
    const float x = ap[i];
    ap[i] = dp[i] * up[i] * gelu_tanh_grad(x);
    up[i] = dp[i] * gelu_tanh(x);
  }
}

void CpuBackend::add_inplace(float* ap, const float* bp, int64_t n) {
#pragma omp parallel for schedule(static) if (worth_parallel_stream(n))
  for (int64_t i = 0; i < n; ++i) ap[i] += bp[i];
}

void CpuBackend::attention(const float* qp, const float* kp, const float* vp, const AttentionShape& sh, float* op) {
  const int B = sh.B, T = sh.T, n_heads = sh.n_heads, head_dim = sh.head_dim;
  const int64_t QW = (int64_t)n_heads * head_dim, KW = (int64_t)sh.n_kv_heads * head_dim;
  const int group = n_heads / sh.n_kv_heads;
  const float scale = attention_scale(sh);
  const int nqb = (T + kQBlock - 1) / kQBlock;
  // Scratch allocated here, outside the parallel region: an exception must not escape OpenMP.
  std::vector<MatRM> scratch(omp_get_max_threads(), MatRM(std::min(kQBlock, T), T));
#pragma omp parallel for schedule(dynamic) collapse(3) if (worth_parallel((int64_t)B * n_heads * T * T * head_dim))
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < n_heads; ++h)
      for (int qb = 0; qb < nqb; ++qb) {
        MatRM& S = scratch[omp_get_thread_num()];
        const int kh = h / group;
        const int64_t r0 = (int64_t)b * T;
        const int i0 = qb * kQBlock, i1 = std::min(T, i0 + kQBlock), nq = i1 - i0;
        const int k0 = first_key(i0, sh.window), nk = i1 - k0;
        Strided Q(qp + (r0 + i0) * QW + (int64_t)h * head_dim, nq, head_dim, Eigen::OuterStride<>(QW));
        Strided K(kp + (r0 + k0) * KW + (int64_t)kh * head_dim, nk, head_dim, Eigen::OuterStride<>(KW));
        Strided V(vp + (r0 + k0) * KW + (int64_t)kh * head_dim, nk, head_dim, Eigen::OuterStride<>(KW));
        StridedOut O(op + (r0 + i0) * QW + (int64_t)h * head_dim, nq, head_dim, Eigen::OuterStride<>(QW));
        auto Sb = S.topLeftCorner(nq, nk);
        Sb.noalias() = (Q * K.transpose()) * scale;
        causal_softmax_rows(S, i0, k0, i1, nq, sh.window, sh.softcap, nullptr);
        O.noalias() = Sb * V;
      }
}

void CpuBackend::attention_backward(const float* qp, const float* kp, const float* vp, const AttentionShape& sh,
                                    const float* dyp, float* dqp, float* dkp, float* dvp) {
  const int B = sh.B, T = sh.T, n_heads = sh.n_heads, n_kv_heads = sh.n_kv_heads, head_dim = sh.head_dim;
  const int64_t N = (int64_t)B * T, QW = (int64_t)n_heads * head_dim, KW = (int64_t)n_kv_heads * head_dim;
  std::fill(dkp, dkp + N * KW, 0.f);  // accumulated into
  std::fill(dvp, dvp + N * KW, 0.f);
  const int group = n_heads / n_kv_heads;
  const float scale = attention_scale(sh);
  const int nqb = (T + kQBlock - 1) / kQBlock;
  const int rows = std::min(kQBlock, T);
  std::vector<MatRM> scratchS(omp_get_max_threads(), MatRM(rows, T)), scratchP(omp_get_max_threads(), MatRM(rows, T));
  std::vector<MatRM> scratchT(sh.softcap > 0.f ? omp_get_max_threads() : 0, MatRM(rows, T));
  // One task per (window, kv head): the heads sharing that kv head, and all query blocks,
  // accumulate into its dK/dV slice in a fixed order inside the task.
#pragma omp parallel for schedule(dynamic) collapse(2) if (worth_parallel((int64_t)B * n_heads * T * T * head_dim * 2))
  for (int b = 0; b < B; ++b)
    for (int kh = 0; kh < n_kv_heads; ++kh) {
      MatRM& S = scratchS[omp_get_thread_num()];
      MatRM& dP = scratchP[omp_get_thread_num()];
      const int64_t r0 = (int64_t)b * T;
      for (int h = kh * group; h < (kh + 1) * group; ++h)
        for (int qb = 0; qb < nqb; ++qb) {
          const int i0 = qb * kQBlock, i1 = std::min(T, i0 + kQBlock), nq = i1 - i0;
          const int k0 = first_key(i0, sh.window), nk = i1 - k0;
          Strided Q(qp + (r0 + i0) * QW + (int64_t)h * head_dim, nq, head_dim, Eigen::OuterStride<>(QW));
          Strided K(kp + (r0 + k0) * KW + (int64_t)kh * head_dim, nk, head_dim, Eigen::OuterStride<>(KW));
          Strided V(vp + (r0 + k0) * KW + (int64_t)kh * head_dim, nk, head_dim, Eigen::OuterStride<>(KW));
          Strided dO(dyp + (r0 + i0) * QW + (int64_t)h * head_dim, nq, head_dim, Eigen::OuterStride<>(QW));
          StridedOut dQ(dqp + (r0 + i0) * QW + (int64_t)h * head_dim, nq, head_dim, Eigen::OuterStride<>(QW));
          StridedOut dK(dkp + (r0 + k0) * KW + (int64_t)kh * head_dim, nk, head_dim, Eigen::OuterStride<>(KW));
          StridedOut dV(dvp + (r0 + k0) * KW + (int64_t)kh * head_dim, nk, head_dim, Eigen::OuterStride<>(KW));
          MatRM* th = sh.softcap > 0.f ? &scratchT[omp_get_thread_num()] : nullptr;
          // recompute P exactly as the forward does
          auto Sb = S.topLeftCorner(nq, nk);
          Sb.noalias() = (Q * K.transpose()) * scale;
          causal_softmax_rows(S, i0, k0, i1, nq, sh.window, sh.softcap, th);
          // dP = dO Vᵀ; softmax backward dS = P ⊙ (dP − Σ_j P dP) row by row (masked entries: P = 0)
          auto dPb = dP.topLeftCorner(nq, nk);
          dPb.noalias() = dO * V.transpose();
          for (int r = 0; r < nq; ++r) {
            const float* s = S.data() + (int64_t)r * S.cols();
            float* d = dP.data() + (int64_t)r * dP.cols();
            const int last = i0 + r - k0, first = sh.window > 0 ? std::max(0, i0 + r - sh.window + 1 - k0) : 0;
            double sum = 0;
            for (int j = first; j <= last; ++j) sum += (double)s[j] * d[j];
            const float rs = (float)sum;
            for (int j = 0; j < first; ++j) d[j] = 0.f;
            for (int j = first; j <= last; ++j) d[j] = s[j] * (d[j] - rs);
            for (int j = last + 1; j < nk; ++j) d[j] = 0.f;
            if (th) {  // through the soft cap: d tanh = 1 − tanh²
              const float* t = th->data() + (int64_t)r * th->cols();
              for (int j = first; j <= last; ++j) d[j] *= 1.0f - t[j] * t[j];
            }
          }
          // S = Q Kᵀ·scale:  dQ = dS K·scale,  dK += dSᵀ Q·scale;  O = P V:  dV += Pᵀ dO
          dQ.noalias() = (dPb * K) * scale;
          dK.noalias() += (dPb.transpose() * Q) * scale;
          dV.noalias() += Sb.transpose() * dO;
        }
    }
}

}  // namespace qf::cpu
