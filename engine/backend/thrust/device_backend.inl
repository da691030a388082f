// qforge — the device backend's code, written once as Thrust algorithms over __host__ __device__
// functors (docs/architecture.md#backends) and compiled twice: by g++ for Thrust's OpenMP device
// system (thrust_omp_backend.cpp, the CPU-run twin every CI run tests) and by nvcc for CUDA
// (cuda/cuda_backend.cu). The including file defines QF_DEV_NS (its namespace), QF_DEV_NAME (the
// backend's name), QF_EXEC (the Thrust execution policy) and the memory and dense-algebra
// functions of device.h.
//
// Layout of the work: every element-, row- or column-wise op is one thrust::for_each_n over an
// index, and each index computes its outputs alone with a sequential inner loop, so the results
// do not depend on how the system splits the index range (any thread count, any GPU launch
// shape). Sums over rows are taken per fixed chunk of rows and the chunks added in order
// (fixed_sum), never by a system reduction whose order depends on the thread count. GEMMs,
// Cholesky and triangular solves go through the dense-LA seam (dla::, device.h). No hand-written
// __global__ kernel is needed: the sequential parts (GPTQ's in-block column loop, the CD
// sub-block's coordinate loop) are sequential per row and rows are independent, so they are
// per-row functors.
//
// Ops the device code does not run are passed to the CPU backend with the caller's host buffers:
// companded and K-quant grids (grid_view.h) and GPTQ's stochastic rounding.
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/backend.h"
#include "backend/thrust/device.h"
#include "backend/thrust/grid_view.h"

#if defined(__CUDACC__)
#define QF_UNROLL _Pragma("unroll")
#else
#define QF_UNROLL _Pragma("GCC unroll 32")
#endif

namespace qf::QF_DEV_NS {

namespace {

constexpr int64_t kSumChunk = 256;     // rows per partial sum of fixed_sum
constexpr int64_t kNormRowChunk = 64;  // rows per f64 partial of the RMSNorm gain gradient (as the CPU backend)
constexpr int64_t kGramTok = 512;      // tokens per f32 SYRK added into Σ in f64 (as the CPU backend)
constexpr int64_t kTriBlock = 128;     // columns per block of the triangular inverse
constexpr int64_t kGptqRowChunk = 256; // rows per GPTQ loss chunk (GptqBlock::loss)
constexpr int64_t kCdBlock = 256;      // CD: columns per (EΣ) GEMM block (as the CPU backend)
constexpr int kCdSub = 32;             // CD: columns per sequential sub-block, held in registers
constexpr size_t kScoreBytes = size_t(256) << 20;  // attention: score buffers per batch of (sequence, head) pairs
constexpr int64_t kQBlock = 128;       // attention: queries per block (as the CPU backend)

template <class F>
void launch(int64_t n, const F& f) {
  if (n > 0) thrust::for_each_n(QF_EXEC, thrust::counting_iterator<int64_t>(0), n, f);
}

// ---------------------------------------------------------------- functors

struct FSumChunks {  // part[k] = Σ x[k·chunk .. ) in order
  const double* x;
  int64_t n, chunk;
  double* part;
  QF_HD void operator()(int64_t k) const {
    double s = 0;
    const int64_t e = (k + 1) * chunk < n ? (k + 1) * chunk : n;
    for (int64_t i = k * chunk; i < e; ++i) s += x[i];
    part[k] = s;
  }
};

struct FFill {
  float* x;
  float v;
  QF_HD void operator()(int64_t i) const { x[i] = v; }
};

struct FFillD {
  double* x;
  double v;
  QF_HD void operator()(int64_t i) const { x[i] = v; }
};

struct FRmsnorm {
  const float *x, *g;
  int64_t D;
  float eps;
  float* y;
  QF_HD void operator()(int64_t i) const {
    const float* r = x + i * D;
    double ss = 0;
    for (int64_t j = 0; j < D; ++j) ss += (double)r[j] * r[j];
    const float inv = 1.0f / sqrtf((float)(ss / D) + eps);
    for (int64_t j = 0; j < D; ++j) y[i * D + j] = g[j] * (inv * r[j]);
  }
};

// y = g x inv, inv = (Σx²/D + eps)^(−1/2):  dx = inv g dy − x inv³ (Σ g dy x) / D
struct FRmsnormBackward {
  const float *x, *g, *dy;
  int64_t D;
  float eps;
  float *dx, *inv_out;
  QF_HD void operator()(int64_t i) const {
    const float* r = x + i * D;
    const float* d = dy + i * D;
    double ss = 0, dot = 0;
    for (int64_t j = 0; j < D; ++j) {
      ss += (double)r[j] * r[j];
      dot += (double)g[j] * d[j] * r[j];
    }
    const float inv = 1.0f / sqrtf((float)(ss / D) + eps);
    const float k3 = (float)((double)inv * inv * inv * dot / (double)D);
    for (int64_t j = 0; j < D; ++j) dx[i * D + j] = inv * g[j] * d[j] - k3 * r[j];
    if (inv_out) inv_out[i] = inv;
  }
};

struct FRmsnormGainPart {  // part[c·D + j] = Σ over chunk c's rows of dy·x·inv (f64)
  const float *x, *dy, *inv;
  int64_t N, D;
  double* part;
  QF_HD void operator()(int64_t t) const {
    const int64_t c = t / D, j = t % D;
    const int64_t e = (c + 1) * kNormRowChunk < N ? (c + 1) * kNormRowChunk : N;
    double s = 0;
    for (int64_t i = c * kNormRowChunk; i < e; ++i) s += (double)dy[i * D + j] * x[i * D + j] * inv[i];
    part[t] = s;
  }
};

struct FRmsnormGainSum {
  const double* part;
  int64_t nchunks, D;
  float* dg;
  QF_HD void operator()(int64_t j) const {
    double s = 0;
    for (int64_t c = 0; c < nchunks; ++c) s += part[c * D + j];
    dg[j] = (float)s;
  }
};

struct FRope {
  float* x;
  int64_t W;
  int n_heads, head_dim, T, half;
  const float *cs, *sn;
  bool interleaved;
  QF_HD void operator()(int64_t t) const {
    const int64_t per_row = (int64_t)n_heads * half;
    const int64_t r = t / per_row;
    const int h = (int)((t % per_row) / half), i = (int)(t % half);
    const int p = (int)(r % T);
    float* v = x + r * W + (int64_t)h * head_dim;
    const float c = cs[(int64_t)p * half + i], s = sn[(int64_t)p * half + i];
    float& a = interleaved ? v[2 * i] : v[i];
    float& b = interleaved ? v[2 * i + 1] : v[i + half];
    const float a0 = a, b0 = b;
    a = a0 * c - b0 * s;
    b = a0 * s + b0 * c;
  }
};

struct FSwiglu {
  const float *a, *u;
  float* h;
  QF_HD void operator()(int64_t i) const { h[i] = a[i] / (1.0f + expf(-a[i])) * u[i]; }
};

// h = silu(a)·u, silu'(a) = σ(a)(1 + a(1 − σ(a))).
struct FSwigluBackward {
  float *a, *u;
  const float* dh;
  QF_HD void operator()(int64_t i) const {
    const float x = a[i], sig = 1.0f / (1.0f + expf(-x));
    a[i] = dh[i] * u[i] * sig * (1.0f + x * (1.0f - sig));
    u[i] = dh[i] * (x / (1.0f + expf(-x)));
  }
};

// gelu_tanh(a) = a/2·(1 + tanh(√(2/π)(a + 0.044715a³))) and its derivative, in the CPU backend's
// f32 formulas.
constexpr float kGeluC = 0.7978845608028654f;  // √(2/π)
QF_HD inline float gelu_tanh(float a) { return 0.5f * a * (1.0f + tanhf(kGeluC * (a + 0.044715f * a * a * a))); }
QF_HD inline float gelu_tanh_grad(float a) {
  const float t = tanhf(kGeluC * (a + 0.044715f * a * a * a));
  return 0.5f * (1.0f + t) + 0.5f * a * (1.0f - t * t) * kGeluC * (1.0f + 3.0f * 0.044715f * a * a);
}

struct FGeglu {
  const float *a, *u;
  float* h;
  QF_HD void operator()(int64_t i) const { h[i] = gelu_tanh(a[i]) * u[i]; }
};

// h = gelu_tanh(a)·u:  a ← dh·u·gelu_tanh'(a),  u ← dh·gelu_tanh(a).
struct FGegluBackward {
  float *a, *u;
  const float* dh;
  QF_HD void operator()(int64_t i) const {
    const float x = a[i];
    a[i] = dh[i] * u[i] * gelu_tanh_grad(x);
    u[i] = dh[i] * gelu_tanh(x);
  }
};

struct FAdd {
  float* a;
  const float* b;
  QF_HD void operator()(int64_t i) const { a[i] += b[i]; }
};

// The keys a query block starting at i0 sees: [first_key, i1), first_key = 0 unless a sliding
// window (AttentionShape::window) cuts it (as the CPU backend's attention).
QF_HD inline int64_t first_key(int64_t i0, int64_t window) {
  return window > 0 && i0 - window + 1 > 0 ? i0 - window + 1 : 0;
}

// One query block [i0, i0 + nq) of a batch of score matrices, keys [k0, k0 + nk): row t (query
// i0 + t % nq, nk floats, column c = key k0 + c) holds the scaled scores. The keys the query sees,
// [first, last] (causal, inside the window when window > 0), are soft-capped when softcap > 0
// (s ← softcap·tanh(s/softcap); th, when given, receives the tanh for the backward) and become
// their softmax, sums in f64; the rest of the row is zero.
struct FBandSoftmax {
  float* S;
  float* th;
  int64_t nq, nk, i0, k0, window;
  float softcap;
  QF_HD void operator()(int64_t t) const {
    const int64_t i = i0 + t % nq, first = first_key(i, window) - k0, last = i - k0;
    float* s = S + t * nk;
    if (softcap > 0.f) {
      const float inv_cap = 1.0f / softcap;
      for (int64_t j = first; j <= last; ++j) {
        const float tj = tanhf(s[j] * inv_cap);
        if (th) th[t * nk + j] = tj;
        s[j] = tj * softcap;
      }
    }
    float mx = s[first];
    for (int64_t j = first + 1; j <= last; ++j) mx = s[j] > mx ? s[j] : mx;
    double sum = 0;
    for (int64_t j = first; j <= last; ++j) {
      s[j] = expf(s[j] - mx);
      sum += s[j];
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < first; ++j) s[j] = 0.f;
    for (int64_t j = first; j <= last; ++j) s[j] *= inv;
    for (int64_t j = last + 1; j < nk; ++j) s[j] = 0.f;
  }
};

// Its backward, rows as FBandSoftmax: dS = P ⊙ (dP − Σ_j P dP) over the keys the query sees (the
// row dot in f64), times 1 − tanh² through the soft cap when th is given; the rest zero.
struct FBandSoftmaxBackward {
  const float* P;
  float* dP;
  const float* th;
  int64_t nq, nk, i0, k0, window;
  QF_HD void operator()(int64_t t) const {
    const int64_t i = i0 + t % nq, first = first_key(i, window) - k0, last = i - k0;
    const float* s = P + t * nk;
    float* d = dP + t * nk;
    double sum = 0;
    for (int64_t j = first; j <= last; ++j) sum += (double)s[j] * d[j];
    const float rs = (float)sum;
    for (int64_t j = 0; j < first; ++j) d[j] = 0.f;
    for (int64_t j = first; j <= last; ++j) d[j] = s[j] * (d[j] - rs);
    if (th)
      for (int64_t j = first; j <= last; ++j) d[j] *= 1.0f - th[t * nk + j] * th[t * nk + j];
    for (int64_t j = last + 1; j < nk; ++j) d[j] = 0.f;
  }
};

struct FColSum {  // out[o] = Σ_n a[n, o] in f64 in row order (written, or added onto out's f64)
  const float* a;
  int64_t rows, cols;
  float* out;
  double* out_d;
  QF_HD void operator()(int64_t o) const {
    double s = out_d ? out_d[o] : 0.0;
    for (int64_t n = 0; n < rows; ++n) s += a[n * cols + o];
    if (out_d) out_d[o] = s;
    else out[o] = (float)s;
  }
};

struct FGramAdd {  // S (column-major f64) += the symmetric matrix whose lower triangle G holds
  const float* G;
  int64_t c;
  double* S;
  QF_HD void operator()(int64_t t) const {
    const int64_t i = t % c, j = t / c;
    const int64_t a = i > j ? i : j, b = i > j ? j : i;
    S[t] += (double)G[b * c + a];
  }
};

struct FIdentityBlock {  // X[k0 + i, k0 + j] = (i == j) for the top b×b of column block k0
  double* X;
  int64_t n, k0, b;
  QF_HD void operator()(int64_t t) const {
    const int64_t i = t % b, j = t / b;
    X[(k0 + j) * n + k0 + i] = i == j ? 1.0 : 0.0;
  }
};

// GPTQ's in-block column loop for row i (docs/methods.md#gptq-update), W column-major
// [rows, cols] in processing order: q = Q(w_p), e_p = (w_p − q)/U_pp, W[:, p+1:i2] −= e_p·U[p, ·].
struct FGptqRows {
  float* W;
  const float* U;
  int64_t rows, cols, i1, n;
  GridView g;
  const int64_t *perm, *group;
  uint8_t* codes;
  float* E;
  double* rowloss;
  QF_HD void operator()(int64_t i) const {
    double l = 0;
    for (int64_t j = 0; j < n; ++j) {
      const int64_t p = i1 + j, col = perm[p], gg = group[p];
      const float d = U[p * cols + p];
      const float w = W[p * rows + i];
      const int q = g.code(w, i, gg);
      const float v = g.value(q, i, gg);
      codes[i * cols + col] = (uint8_t)q;
      const float diff = w - v;
      l += (double)(diff * diff / (d * d));  // the proxy loss (docs/methods.md#gptq-update)
      const float e = diff / d;
      E[j * rows + i] = e;
      for (int64_t k = j + 1; k < n; ++k) W[(i1 + k) * rows + i] -= e * U[(i1 + k) * cols + p];
    }
    rowloss[i] = l;
  }
};

struct FToColMajor {  // dst column-major [rows, cols] ← src row-major (optionally columns permuted)
  const float* src;
  const int64_t* perm;
  int64_t rows, cols;
  float* dst;
  QF_HD void operator()(int64_t t) const {
    const int64_t p = t / rows, i = t % rows;
    dst[t] = src[i * cols + (perm ? perm[p] : p)];
  }
};

struct FToRowMajor {  // dst row-major [rows, cols] ← src column-major
  const float* src;
  int64_t rows, cols;
  float* dst;
  QF_HD void operator()(int64_t t) const {
    const int64_t i = t / cols, p = t % cols;
    dst[t] = src[p * rows + i];
  }
};

// One CD sub-block for row i (docs/methods.md#cd-update): positions b0+s0 .. b0+s0+ns−1, their
// (EΣ) columns in registers; β = ŵ + (EΣ)_p/Σ_pp, q on the grid (or β), d = q − ŵ folded into the
// sub-block's later columns by the rank-1 correction (EΣ)_l −= d·Σ_pl. D keeps d for the later
// sub-blocks' GEMM. Wc, Tc, R, D column-major over rows; S row-major (= column-major, symmetric).
struct FCdSub {
  float* Wc;
  const float* Tc;
  const float* R;
  float* D;
  const float* S;
  const int64_t* perm;
  GridView g;
  double* dfrow;
  int64_t r, c, b0, s0, ns;
  bool continuous;
  QF_HD void operator()(int64_t i) const {
    float rl[kCdSub];
QF_UNROLL
    for (int l = 0; l < kCdSub; ++l) rl[l] = l < ns ? R[(s0 + l) * r + i] : 0.f;
    double df = 0;
    for (int jj = 0; jj < ns; ++jj) {
      const int64_t p = b0 + s0 + jj, col = perm[p], gg = g.g_idx[col];
      const float sjj = S[p * c + p];
      float rj = 0.f;
QF_UNROLL
      for (int l = 0; l < kCdSub; ++l)
        if (l == jj) rj = rl[l];  // a register pick: rl stays out of local memory
      const float w = Wc[p * r + i];
      float q;
      if (!(sjj > 0.f)) {
        q = g.quantize(Tc[p * r + i], i, gg);  // dead input: round T (docs/methods.md#cd-update)
      } else {
        const float beta = w + rj / sjj;  // the coordinate minimiser
        q = continuous ? beta : g.quantize(beta, i, gg);
      }
      const float d = q - w;
      D[(s0 + jj) * r + i] = d;
      // exact change of f_i = e_iᵀ Σ e_i when e_ip decreases by d: d (d Σ_pp − 2 (EΣ)_ip)
      df += (double)d * ((double)d * (double)sjj - 2.0 * (double)rj);
      Wc[p * r + i] = q;
      const float* srow = S + p * c + b0 + s0;
QF_UNROLL
      for (int l = 0; l < kCdSub; ++l)
        if (l > jj && l < ns) rl[l] -= d * srow[l];
    }
    dfrow[i] += df;
  }
};

struct FCdResidual {  // E_:p = T_:p − Ŵ_:p for the block's positions (column-major)
  float* Ec;
  const float *Tc, *Wc;
  int64_t off;
  QF_HD void operator()(int64_t t) const { Ec[off + t] = Tc[off + t] - Wc[off + t]; }
};

// ---------------------------------------------------------------- helpers

// Σ x[0..n) of a device array in a fixed order: chunk sums, then the chunks in order on the host.
double fixed_sum(const double* x, int64_t n, std::vector<double>* chunks = nullptr, int64_t chunk = kSumChunk) {
  const int64_t nch = (n + chunk - 1) / chunk;
  Buf<double> part((size_t)std::max<int64_t>(nch, 1));
  launch(nch, FSumChunks{x, n, chunk, part.get()});
  std::vector<double> h((size_t)nch);
  if (nch) copy_to_host(h.data(), part.get(), (size_t)nch * sizeof(double));
  double s = 0;
  for (double v : h) s += v;
  if (chunks) *chunks = std::move(h);
  return s;
}

// The grid's arrays on the device and its view of them.
struct StagedGrid {
  Staged<float> scale, zero;
  Staged<int32_t> g_idx, row_group;
  Staged<uint8_t> group_bits;
  GridView dev;
  explicit StagedGrid(const GridView& h)
      : scale(stage_in(h.scale, (size_t)(h.nrowgroups * h.ngroups))),
        zero(stage_in(h.zero, (size_t)(h.nrowgroups * h.ngroups))),
        g_idx(stage_in(h.g_idx, (size_t)h.cols)),
        row_group(stage_in(h.row_group, h.row_group ? (size_t)h.rows : 0)),
        group_bits(stage_in(h.group_bits, h.group_bits ? (size_t)(h.nrowgroups * h.ngroups) : 0)),
        dev(h) {
    dev.scale = scale.dev();
    dev.zero = zero.dev();
    dev.g_idx = g_idx.dev();
    dev.row_group = row_group.dev();
    dev.group_bits = group_bits.dev();
  }
};

// Row-major helpers over dla::sgemm (a row-major [r, c] buffer is the column-major [c, r]
// transpose): y[rows, m] = x[rows, k]·op(w) (+ y), see Backend::gemm_rows.
void gemm_rows_dev(const float* x, int64_t rows, const float* w, int64_t w_rows, int64_t w_cols, bool tr, float* y,
                   bool acc) {
  const int64_t k = tr ? w_cols : w_rows, m = tr ? w_rows : w_cols;
  // yᵀ[m, rows] = op(w)ᵀ·xᵀ: wᵀ is the column-major [w_cols, w_rows] view of w
  dla::sgemm(tr, false, m, rows, k, 1.f, w, tr ? k : m, x, k, acc ? 1.f : 0.f, y, m);
}

}  // namespace

// ---------------------------------------------------------------- the backend

class DeviceBackend final : public Backend {
 public:
  const char* name() const override { return QF_DEV_NAME; }

  void gemm_rows(const float* x, int64_t rows, const float* w, int64_t w_rows, int64_t w_cols, bool w_transposed,
                 float* y, bool accumulate) override {
    const int64_t k = w_transposed ? w_cols : w_rows, m = w_transposed ? w_rows : w_cols;
    auto X = stage_in(x, (size_t)(rows * k));
    auto Wd = stage_in(w, (size_t)(w_rows * w_cols));
    auto Y = Staged<float>(y, (size_t)(rows * m), accumulate);
    gemm_rows_dev(X.dev(), rows, Wd.dev(), w_rows, w_cols, w_transposed, Y.dev(), accumulate);
    Y.to_host();
  }

  void gemm_tn(const float* a, int64_t rows, int64_t a_cols, const float* b, int64_t b_cols, float* c, bool accumulate,
               float* a_colsum, int64_t) override {
    auto A = stage_in(a, (size_t)(rows * a_cols));
    auto B = stage_in(b, (size_t)(rows * b_cols));
    auto C = Staged<float>(c, (size_t)(a_cols * b_cols), accumulate);
    // cᵀ[b_cols, a_cols] = bᵀ·a
    dla::sgemm(false, true, b_cols, a_cols, rows, 1.f, B.dev(), b_cols, A.dev(), a_cols, accumulate ? 1.f : 0.f,
               C.dev(), b_cols);
    C.to_host();
    if (a_colsum) {
      auto CS = stage_out(a_colsum, (size_t)a_cols);
      launch(a_cols, FColSum{A.dev(), rows, a_cols, CS.dev(), nullptr});
      CS.to_host();
    }
  }

  // Jobs in order through the single ops: the same results as separate calls by construction.
  void gemm_rows_batch(int64_t rows, const GemmRowsJob* jobs, int n_jobs) override {
    for (int i = 0; i < n_jobs; ++i)
      gemm_rows(jobs[i].x, rows, jobs[i].w, jobs[i].w_rows, jobs[i].w_cols, jobs[i].w_transposed, jobs[i].y,
                jobs[i].accumulate);
  }
  void gemm_tn_batch(int64_t rows, const GemmTnJob* jobs, int n_jobs) override {
    for (int i = 0; i < n_jobs; ++i)
      gemm_tn(jobs[i].a, rows, jobs[i].a_cols, jobs[i].b, jobs[i].b_cols, jobs[i].c, jobs[i].accumulate,
              jobs[i].a_colsum, -1);
  }

  // Token blocks of kGramTok in order: G = X_blkᵀ X_blk by SYRK in f32, added into Σ in f64.
  void gram_accumulate(const float* x, int64_t n, int64_t c, double* S, double* xsum) override {
    auto Sd = stage_inout(S, (size_t)(c * c));
    auto Xs = stage_inout(xsum, xsum ? (size_t)c : 0);
    Buf<float> G((size_t)(c * c));
    for (int64_t t0 = 0; t0 < n; t0 += kGramTok) {
      const int64_t nt = std::min(kGramTok, n - t0);
      auto X = stage_in(x + t0 * c, (size_t)(nt * c));
      dla::ssyrk_lower(c, nt, X.dev(), c, G.get(), c);  // X_blk row-major = column-major [c, nt]
      launch(c * c, FGramAdd{G.get(), c, Sd.dev()});
      if (xsum) launch(c, FColSum{X.dev(), nt, c, nullptr, Xs.dev()});
    }
    Sd.to_host();
    Xs.to_host();
  }

  void rmsnorm(const float* x, int64_t n, int64_t d, const float* g, float eps, float* y) override {
    auto X = stage_in(x, (size_t)(n * d));
    auto Gd = stage_in(g, (size_t)d);
    auto Y = stage_out(y, (size_t)(n * d));
    launch(n, FRmsnorm{X.dev(), Gd.dev(), d, eps, Y.dev()});
    Y.to_host();
  }

  void rmsnorm_backward(const float* x, int64_t n, int64_t d, const float* g, float eps, const float* dy, float* dx,
                        float* dg) override {
    auto X = stage_in(x, (size_t)(n * d));
    auto Gd = stage_in(g, (size_t)d);
    auto DY = stage_in(dy, (size_t)(n * d));
    auto DX = stage_out(dx, (size_t)(n * d));
    Buf<float> inv((size_t)std::max<int64_t>(n, 1));
    launch(n, FRmsnormBackward{X.dev(), Gd.dev(), DY.dev(), d, eps, DX.dev(), inv.get()});
    DX.to_host();
    if (dg) {
      const int64_t nch = (n + kNormRowChunk - 1) / kNormRowChunk;
      Buf<double> part((size_t)std::max<int64_t>(nch * d, 1));
      auto DG = stage_out(dg, (size_t)d);
      launch(nch * d, FRmsnormGainPart{X.dev(), DY.dev(), inv.get(), n, d, part.get()});
      launch(d, FRmsnormGainSum{part.get(), nch, d, DG.dev()});
      DG.to_host();
    }
  }

  // The cos/sin table is computed on the host exactly as the CPU backend does (llama2.c's f32
  // formulas), so both rotate by the same numbers.
  void rope_rotate(float* x, int64_t n, int n_heads, int head_dim, int T, const float* inv_freq, bool interleaved,
                   bool transpose) override {
    const int half = head_dim / 2;
    std::vector<float> cs((size_t)T * half), sn((size_t)T * half);
    for (int p = 0; p < T; ++p)
      for (int i = 0; i < half; ++i) {
        const float val = (float)p * inv_freq[i];
        cs[(size_t)p * half + i] = std::cos(val);
        sn[(size_t)p * half + i] = transpose ? -std::sin(val) : std::sin(val);
      }
    const int64_t W = (int64_t)n_heads * head_dim;
    auto X = stage_inout(x, (size_t)(n * W));
    auto C = stage_in(cs.data(), cs.size());
    auto Sn = stage_in(sn.data(), sn.size());
    launch(n * n_heads * half, FRope{X.dev(), W, n_heads, head_dim, T, half, C.dev(), Sn.dev(), interleaved});
    X.to_host();
  }

  void swiglu(const float* a, const float* u, int64_t n, float* h) override {
    auto U = stage_in(u, (size_t)n);
    if (h == a) {  // h may be a
      auto H = stage_inout(h, (size_t)n);
      launch(n, FSwiglu{H.dev(), U.dev(), H.dev()});
      H.to_host();
      return;
    }
    auto A = stage_in(a, (size_t)n);
    auto H = stage_out(h, (size_t)n);
    launch(n, FSwiglu{A.dev(), U.dev(), H.dev()});
    H.to_host();
  }

  void swiglu_backward(float* a, float* u, const float* dh, int64_t n) override {
    auto A = stage_inout(a, (size_t)n);
    auto U = stage_inout(u, (size_t)n);
    auto DH = stage_in(dh, (size_t)n);
    launch(n, FSwigluBackward{A.dev(), U.dev(), DH.dev()});
    A.to_host();
    U.to_host();
  }

  void geglu(const float* a, const float* u, int64_t n, float* h) override {
    auto U = stage_in(u, (size_t)n);
    if (h == a) {  // h may be a
      auto H = stage_inout(h, (size_t)n);
      launch(n, FGeglu{H.dev(), U.dev(), H.dev()});
      H.to_host();
      return;
    }
    auto A = stage_in(a, (size_t)n);
    auto H = stage_out(h, (size_t)n);
    launch(n, FGeglu{A.dev(), U.dev(), H.dev()});
    H.to_host();
  }

  void geglu_backward(float* a, float* u, const float* dh, int64_t n) override {
    auto A = stage_inout(a, (size_t)n);
    auto U = stage_inout(u, (size_t)n);
    auto DH = stage_in(dh, (size_t)n);
    launch(n, FGegluBackward{A.dev(), U.dev(), DH.dev()});
    A.to_host();
    U.to_host();
  }

  void add_inplace(float* a, const float* b, int64_t n) override {
    auto A = stage_inout(a, (size_t)n);
    auto B = stage_in(b, (size_t)n);
    launch(n, FAdd{A.dev(), B.dev()});
    A.to_host();
  }

  // Attention by query blocks (the CPU backend's): block qb holds queries [i0, i1), i0 = qb·bq,
  // and sees keys [k0, i1), k0 = first_key(i0, window), so the causal upper part beyond the block
  // and, with a sliding window, the keys before it are never computed (T·(bq + window) scores per
  // head instead of T²). bq = kQBlock when that saves work, else T: one block of every key.
  struct AttnBlocks {
    int64_t bq, nb, nk_max;
    AttnBlocks(const AttentionShape& s) {
      const int64_t T = s.T;
      bq = T > kQBlock ? kQBlock : T;
      nb = (T + bq - 1) / bq;
      nk_max = s.window > 0 ? std::min<int64_t>(T, bq + s.window - 1) : T;
    }
    int64_t i0(int64_t qb) const { return qb * bq; }
    int64_t i1(int64_t qb, int64_t T) const { return std::min(T, (qb + 1) * bq); }
  };

  static float attention_scale(const AttentionShape& s) {
    return s.scale > 0.f ? s.scale : 1.0f / std::sqrt((float)s.head_dim);
  }

  // Per query block, batches of (sequence, head) pairs: scores Sᵀ = K_blk·Q_blkᵀ·scale (one
  // batched GEMM), the soft cap and softmax per row (FBandSoftmax), O_blk = P·V_blk.
  void attention(const float* q, const float* k, const float* v, const AttentionShape& s, float* out) override {
    const int64_t N = (int64_t)s.B * s.T, QW = (int64_t)s.n_heads * s.head_dim, KW = (int64_t)s.n_kv_heads * s.head_dim;
    const int64_t T = s.T, hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
    const float scale = attention_scale(s);
    auto Q = stage_in(q, (size_t)(N * QW));
    auto K = stage_in(k, (size_t)(N * KW));
    auto V = stage_in(v, (size_t)(N * KW));
    auto O = stage_out(out, (size_t)(N * QW));
    const AttnBlocks blk(s);
    const int64_t pairs = (int64_t)s.B * s.n_heads, per_pair = blk.bq * blk.nk_max;
    const int64_t per =
        std::max<int64_t>(1, std::min<int64_t>(pairs, (int64_t)(kScoreBytes / (sizeof(float) * per_pair))));
    Buf<float> S((size_t)(per * per_pair));
    std::vector<const float*> pa((size_t)per), pb((size_t)per);
    std::vector<float*> pc((size_t)per);
    for (int64_t qb = 0; qb < blk.nb; ++qb) {
      const int64_t i0 = blk.i0(qb), i1 = blk.i1(qb, T), nq = i1 - i0;
      const int64_t k0 = first_key(i0, s.window), nk = i1 - k0;
      for (int64_t t0 = 0; t0 < pairs; t0 += per) {
        const int64_t np = std::min(per, pairs - t0);
        auto at = [&](int64_t j, const float*& qp, const float*& kp, const float*& vp, float*& op) {
          const int64_t t = t0 + j, b = t / s.n_heads, h = t % s.n_heads, kh = h / group;
          qp = Q.dev() + (b * T + i0) * QW + h * hd;
          kp = K.dev() + (b * T + k0) * KW + kh * hd;
          vp = V.dev() + (b * T + k0) * KW + kh * hd;
          op = O.dev() + (b * T + i0) * QW + h * hd;
        };
        // Sᵀ[keys, queries] (column-major) = K_blk·Q_blkᵀ: row r of S (query i0 + r) is contiguous
        for (int64_t j = 0; j < np; ++j) {
          const float *qp, *kp, *vp;
          float* op;
          at(j, qp, kp, vp, op);
          pa[j] = kp, pb[j] = qp, pc[j] = S.get() + j * nq * nk;
        }
        dla::sgemm_batched(true, false, nk, nq, hd, scale, pa.data(), KW, pb.data(), QW, 0.f, pc.data(), nk, (int)np);
        launch(np * nq, FBandSoftmax{S.get(), nullptr, nq, nk, i0, k0, s.window, s.softcap});
        // Oᵀ[hd, queries] = V_blkᵀ·Pᵀ
        for (int64_t j = 0; j < np; ++j) {
          const float *qp, *kp, *vp;
          at(j, qp, kp, vp, pc[j]);
          pa[j] = vp, pb[j] = S.get() + j * nq * nk;
        }
        dla::sgemm_batched(false, false, hd, nq, nk, 1.f, pa.data(), KW, pb.data(), nk, 0.f, pc.data(), QW, (int)np);
      }
    }
    O.to_host();
  }

  // The heads sharing a kv head, and the query blocks, accumulate into its dK/dV in a fixed
  // order (head-group member, then query block): a batch holds one head of each group (member m
  // of every (sequence, kv head)) at one query block, so no two of its products write the same
  // dK/dV rows (the key ranges of consecutive blocks overlap under a window).
  void attention_backward(const float* q, const float* k, const float* v, const AttentionShape& s, const float* dy,
                          float* dq, float* dk, float* dv) override {
    const int64_t N = (int64_t)s.B * s.T, QW = (int64_t)s.n_heads * s.head_dim, KW = (int64_t)s.n_kv_heads * s.head_dim;
    const int64_t T = s.T, hd = s.head_dim, group = s.n_heads / s.n_kv_heads;
    const float scale = attention_scale(s);
    const bool capped = s.softcap > 0.f;
    auto Q = stage_in(q, (size_t)(N * QW));
    auto K = stage_in(k, (size_t)(N * KW));
    auto V = stage_in(v, (size_t)(N * KW));
    auto DY = stage_in(dy, (size_t)(N * QW));
    auto DQ = stage_out(dq, (size_t)(N * QW));
    auto DK = stage_out(dk, (size_t)(N * KW));
    auto DV = stage_out(dv, (size_t)(N * KW));
    launch(N * KW, FFill{DK.dev(), 0.f});  // accumulated into
    launch(N * KW, FFill{DV.dev(), 0.f});
    const AttnBlocks blk(s);
    const int64_t pairs = (int64_t)s.B * s.n_kv_heads, per_pair = blk.bq * blk.nk_max;  // per group member
    const int64_t nbuf = capped ? 3 : 2;
    const int64_t per =
        std::max<int64_t>(1, std::min<int64_t>(pairs, (int64_t)(kScoreBytes / (nbuf * sizeof(float) * per_pair))));
    Buf<float> P((size_t)(per * per_pair)), dP((size_t)(per * per_pair)), Th;
    if (capped) Th = Buf<float>((size_t)(per * per_pair));
    std::vector<const float*> pa((size_t)per), pb((size_t)per);
    std::vector<float*> pc((size_t)per);
    struct Ptr {
      const float *q, *k, *v, *dy;
      float *dq, *dk, *dv;
    };
    std::vector<Ptr> pt((size_t)per);
    for (int64_t m = 0; m < group; ++m)
      for (int64_t qb = 0; qb < blk.nb; ++qb) {
        const int64_t i0 = blk.i0(qb), i1 = blk.i1(qb, T), nq = i1 - i0;
        const int64_t k0 = first_key(i0, s.window), nk = i1 - k0;
        for (int64_t t0 = 0; t0 < pairs; t0 += per) {
          const int np = (int)std::min(per, pairs - t0);
          for (int j = 0; j < np; ++j) {
            const int64_t t = t0 + j, b = t / s.n_kv_heads, kh = t % s.n_kv_heads, h = kh * group + m;
            const int64_t qo = (b * T + i0) * QW + h * hd, ko = (b * T + k0) * KW + kh * hd;
            pt[j] = {Q.dev() + qo, K.dev() + ko, V.dev() + ko, DY.dev() + qo, DQ.dev() + qo, DK.dev() + ko, DV.dev() + ko};
          }
          auto run = [&](bool ta, bool tb, int64_t mm, int64_t nn, int64_t kk, float alpha, auto fa, int64_t lda, auto fb,
                         int64_t ldb, float beta, auto fc, int64_t ldc) {
            for (int j = 0; j < np; ++j) pa[j] = fa(j), pb[j] = fb(j), pc[j] = fc(j);
            dla::sgemm_batched(ta, tb, mm, nn, kk, alpha, pa.data(), lda, pb.data(), ldb, beta, pc.data(), ldc, np);
          };
          auto Pj = [&](int j) { return P.get() + (int64_t)j * nq * nk; };
          auto dPj = [&](int j) { return dP.get() + (int64_t)j * nq * nk; };
          // recompute P exactly as the forward does (and the soft cap's tanh)
          run(true, false, nk, nq, hd, scale, [&](int j) { return pt[j].k; }, KW, [&](int j) { return pt[j].q; }, QW,
              0.f, Pj, nk);
          launch(np * nq, FBandSoftmax{P.get(), capped ? Th.get() : nullptr, nq, nk, i0, k0, s.window, s.softcap});
          // dPᵀ[keys, queries] = V_blk·dOᵀ, then dS = P ⊙ (dP − rowsum(P ⊙ dP)) (⊙ (1 − tanh²)) in dP's place
          run(true, false, nk, nq, hd, 1.f, [&](int j) { return pt[j].v; }, KW, [&](int j) { return pt[j].dy; }, QW,
              0.f, dPj, nk);
          launch(np * nq, FBandSoftmaxBackward{P.get(), dP.get(), capped ? Th.get() : nullptr, nq, nk, i0, k0, s.window});
          // dQᵀ[hd, queries] = K_blkᵀ·dSᵀ·scale;  dKᵀ[hd, keys] += Qᵀ·dS·scale;  dVᵀ[hd, keys] += dOᵀ·P
          run(false, false, hd, nq, nk, scale, [&](int j) { return pt[j].k; }, KW,
              [&](int j) { return (const float*)dPj(j); }, nk, 0.f, [&](int j) { return pt[j].dq; }, QW);
          run(false, true, hd, nk, nq, scale, [&](int j) { return pt[j].q; }, QW,
              [&](int j) { return (const float*)dPj(j); }, nk, 1.f, [&](int j) { return pt[j].dk; }, KW);
          run(false, true, hd, nk, nq, 1.f, [&](int j) { return pt[j].dy; }, QW, [&](int j) { return (const float*)Pj(j); },
              nk, 1.f, [&](int j) { return pt[j].dv; }, KW);
        }
      }
    DQ.to_host();
    DK.to_host();
    DV.to_host();
  }

  bool cholesky_lower(double* A, int64_t n) override {
    auto Ad = stage_inout(A, (size_t)(n * n));
    const bool ok = dla::dpotrf_lower(Ad.dev(), n, n);
    Ad.to_host();
    return ok;
  }

  // L⁻¹ by column blocks: block [k0, k0+b) is zero above row k0 and solves the trailing system
  // L[k0:, k0:]·X = I[k0:, k0:k0+b] (n³/3 flops instead of n³).
  void lower_triangular_inverse(const double* A, int64_t n, double* X) override {
    auto Ad = stage_in(A, (size_t)(n * n));
    auto Xd = stage_out(X, (size_t)(n * n));
    launch(n * n, FFillD{Xd.dev(), 0.0});
    for (int64_t k0 = 0; k0 < n; k0 += kTriBlock) {
      const int64_t b = std::min(kTriBlock, n - k0), m = n - k0;
      launch(b * b, FIdentityBlock{Xd.dev(), n, k0, b});
      dla::dtrsm_lower(m, b, Ad.dev() + k0 * n + k0, n, Xd.dev() + k0 * n + k0, n);
    }
    Xd.to_host();
  }

  void gptq_block(const GptqBlock& b) override {
    GridView gv;
    if (b.stochastic || !grid_view(*b.grid, &gv)) return cpu_backend().gptq_block(b);
    const int64_t r = b.rows, c = b.cols, i1 = b.i1, n = b.i2 - b.i1;
    auto W = stage_inout(b.W, (size_t)(r * c));
    auto U = stage_in(b.U, (size_t)(c * c));
    auto perm = stage_in(b.perm, (size_t)c);
    auto group = stage_in(b.group, (size_t)c);
    auto codes = stage_inout(b.codes, (size_t)(r * c));
    auto E = stage_out(b.E, (size_t)(r * n));
    StagedGrid g(gv);
    Buf<double> rowloss((size_t)std::max<int64_t>(r, 1));
    launch(r, FGptqRows{W.dev(), U.dev(), r, c, i1, n, g.dev, perm.dev(), group.dev(), codes.dev(), E.dev(), rowloss.get()});
    // the lazy batch W[:, i2:] −= E·U[i1:i2, i2:]
    if (b.i2 < c) dla::sgemm(false, false, r, c - b.i2, n, -1.f, E.dev(), r, U.dev() + b.i2 * c + i1, c, 1.f,
                             W.dev() + b.i2 * r, r);
    std::vector<double> chunks;
    fixed_sum(rowloss.get(), r, &chunks, kGptqRowChunk);
    std::vector<double>& loss = *b.loss;
    if (loss.size() != chunks.size()) loss.assign(chunks.size(), 0.0);
    for (size_t k = 0; k < chunks.size(); ++k) loss[k] += chunks[k];
    W.to_host();
    codes.to_host();
    E.to_host();
  }

  // The CPU backend's blocked sweep (docs/methods.md#cd-update) on column-major copies: per block
  // of kCdBlock positions one GEMM (EΣ)_:,blk, then the sub-blocks of kCdSub in order, each a
  // small GEMM folding the block's earlier updates in and one per-row functor.
  double cd_sweep(const CdSweep& sw) override {
    GridView gv;
    if (!grid_view(*sw.grid, &gv)) return cpu_backend().cd_sweep(sw);
    const int64_t r = sw.rows, c = sw.cols;
    auto Wh = stage_inout(sw.W, (size_t)(r * c));
    auto Eh = stage_inout(sw.E, (size_t)(r * c));
    auto S = stage_in(sw.S, (size_t)(c * c));
    auto Th = stage_in(sw.T, (size_t)(r * c));
    auto perm = stage_in(sw.perm, (size_t)c);
    StagedGrid g(gv);
    Buf<float> Wc((size_t)(r * c)), Ec((size_t)(r * c)), Tc((size_t)(r * c));
    launch(r * c, FToColMajor{Wh.dev(), nullptr, r, c, Wc.get()});
    launch(r * c, FToColMajor{Eh.dev(), nullptr, r, c, Ec.get()});
    launch(r * c, FToColMajor{Th.dev(), perm.dev(), r, c, Tc.get()});
    const double df = cd_sweep_device(Wc.get(), Ec.get(), Tc.get(), S.dev(), perm.dev(), g.dev, r, c, sw.nsweep,
                                      sw.continuous);
    launch(r * c, FToRowMajor{Wc.get(), r, c, Wh.dev()});
    launch(r * c, FToRowMajor{Ec.get(), r, c, Eh.dev()});
    Wh.to_host();
    Eh.to_host();
    return df;
  }

  // The sweep on device-resident column-major W, E and permuted T (what cd_sweep stages; the
  // device benchmark times it alone).
  static double cd_sweep_device(float* Wc, float* Ec, const float* Tc, const float* S, const int64_t* perm,
                                const GridView& g, int64_t r, int64_t c, int64_t nsweep, bool continuous) {
    Buf<float> R((size_t)(r * kCdBlock)), D((size_t)(r * kCdBlock));
    Buf<double> dfrow((size_t)std::max<int64_t>(r, 1));
    launch(r, FFillD{dfrow.get(), 0.0});
    for (int64_t b0 = 0; b0 < nsweep; b0 += kCdBlock) {
      const int64_t nb = std::min(kCdBlock, nsweep - b0);
      // (EΣ)_:,blk = E·Σ[:, b0:b0+nb]
      dla::sgemm(false, false, r, nb, c, 1.f, Ec, r, S + b0 * c, c, 0.f, R.get(), r);
      for (int64_t s0 = 0; s0 < nb; s0 += kCdSub) {
        const int64_t ns = std::min<int64_t>(kCdSub, nb - s0);
        // the block's earlier updates: (EΣ)_:,sub −= D_:,<s0 · Σ[b0:b0+s0, sub]
        if (s0 > 0)
          dla::sgemm(false, false, r, ns, s0, -1.f, D.get(), r, S + (b0 + s0) * c + b0, c, 1.f, R.get() + s0 * r, r);
        launch(r, FCdSub{Wc, Tc, R.get(), D.get(), S, perm, g, dfrow.get(), r, c, b0, s0, ns, continuous});
      }
      launch(r * nb, FCdResidual{Ec, Tc, Wc, b0 * r});
    }
    return fixed_sum(dfrow.get(), r);
  }
};

}  // namespace qf::QF_DEV_NS

// ---------------------------------------------------------------- device-resident timings

#include <chrono>

#include "backend/device_bench.h"

namespace qf::QF_DEV_NS {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct FPattern {  // a deterministic pseudo-random fill in [−1, 1)
  float* x;
  uint64_t seed;
  QF_HD void operator()(int64_t i) const {
    uint64_t z = seed + (uint64_t)i * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    x[i] = (float)((double)(z >> 11) * 0x1.0p-52 - 1.0);
  }
};

struct FReverse {  // B = J·A·J (J the reversal), column-major [n, n]
  const double* A;
  int64_t n;
  double* B;
  QF_HD void operator()(int64_t t) const {
    const int64_t i = t % n, j = t / n;
    B[t] = A[(n - 1 - j) * n + (n - 1 - i)];
  }
};

struct FReverseToF32 {  // U = J·X·J as f32
  const double* X;
  int64_t n;
  float* U;
  QF_HD void operator()(int64_t t) const {
    const int64_t i = t % n, j = t / n;
    U[t] = (float)X[(n - 1 - j) * n + (n - 1 - i)];
  }
};

struct FIota {
  int64_t* x;
  QF_HD void operator()(int64_t i) const { x[i] = i; }
};

struct FGroupOf {
  const int32_t* g_idx;
  int64_t* group;
  QF_HD void operator()(int64_t i) const { group[i] = g_idx[i]; }
};

double bench_gemm_seconds(int64_t m, int64_t n, int64_t k, int reps) {
  Buf<float> A((size_t)(m * k)), B((size_t)(k * n)), C((size_t)(m * n));
  launch(m * k, FPattern{A.get(), 1});
  launch(k * n, FPattern{B.get(), 2});
  dla::sgemm(false, false, m, n, k, 1.f, A.get(), m, B.get(), k, 0.f, C.get(), m);
  synchronize();
  const double t0 = now_s();
  for (int i = 0; i < reps; ++i) dla::sgemm(false, false, m, n, k, 1.f, A.get(), m, B.get(), k, 0.f, C.get(), m);
  synchronize();
  return (now_s() - t0) / reps;
}

double bench_cd_sweeps(const CdSweep& sw, int sweeps, double* df) {
  GridView gv;
  if (!grid_view(*sw.grid, &gv)) throw std::runtime_error("device bench: the CD sweep needs a uniform grid");
  const int64_t r = sw.rows, c = sw.cols;
  auto Wh = stage_inout(sw.W, (size_t)(r * c));
  auto Eh = stage_inout(sw.E, (size_t)(r * c));
  auto S = stage_in(sw.S, (size_t)(c * c));
  auto Th = stage_in(sw.T, (size_t)(r * c));
  auto perm = stage_in(sw.perm, (size_t)c);
  StagedGrid g(gv);
  Buf<float> Wc((size_t)(r * c)), Ec((size_t)(r * c)), Tc((size_t)(r * c));
  launch(r * c, FToColMajor{Wh.dev(), nullptr, r, c, Wc.get()});
  launch(r * c, FToColMajor{Eh.dev(), nullptr, r, c, Ec.get()});
  launch(r * c, FToColMajor{Th.dev(), perm.dev(), r, c, Tc.get()});
  synchronize();
  const double t0 = now_s();
  double sum = 0;
  for (int s = 0; s < sweeps; ++s)
    sum += DeviceBackend::cd_sweep_device(Wc.get(), Ec.get(), Tc.get(), S.dev(), perm.dev(), g.dev, r, c, sw.nsweep,
                                          sw.continuous);
  synchronize();
  const double sec = now_s() - t0;
  launch(r * c, FToRowMajor{Wc.get(), r, c, Wh.dev()});
  launch(r * c, FToRowMajor{Ec.get(), r, c, Eh.dev()});
  Wh.to_host();
  Eh.to_host();
  *df = sum;
  return sec;
}

bool bench_gptq(float* W, int64_t rows, int64_t cols, const double* H, int64_t block, const Grid& grid, uint8_t* codes,
                double* sec_factor, double* sec_blocks) {
  GridView gv;
  if (!grid_view(grid, &gv)) throw std::runtime_error("device bench: GPTQ needs a uniform grid");
  const int64_t n = cols;
  auto Hd = stage_in(H, (size_t)(n * n));
  auto Wd = stage_inout(W, (size_t)(rows * n));
  auto C = stage_out(codes, (size_t)(rows * n));
  StagedGrid g(gv);
  synchronize();
  double t0 = now_s();
  // U = J·L⁻¹·J with L = chol(J·H·J): the upper Cholesky factor of H⁻¹ (docs/methods.md#gptq-cholesky)
  Buf<double> A((size_t)(n * n)), X((size_t)(n * n));
  launch(n * n, FReverse{Hd.dev(), n, A.get()});
  if (!dla::dpotrf_lower(A.get(), n, n)) return false;
  launch(n * n, FFillD{X.get(), 0.0});
  for (int64_t k0 = 0; k0 < n; k0 += kTriBlock) {
    const int64_t b = std::min(kTriBlock, n - k0);
    launch(b * b, FIdentityBlock{X.get(), n, k0, b});
    dla::dtrsm_lower(n - k0, b, A.get() + k0 * n + k0, n, X.get() + k0 * n + k0, n);
  }
  Buf<float> U((size_t)(n * n));
  launch(n * n, FReverseToF32{X.get(), n, U.get()});
  synchronize();
  *sec_factor = now_s() - t0;
  t0 = now_s();
  Buf<int64_t> perm((size_t)n), group((size_t)n);
  launch(n, FIota{perm.get()});
  launch(n, FGroupOf{g.dev.g_idx, group.get()});
  Buf<float> E((size_t)(rows * block));
  Buf<double> rowloss((size_t)rows);
  for (int64_t i1 = 0; i1 < n; i1 += block) {
    const int64_t i2 = std::min(n, i1 + block), nb = i2 - i1;
    launch(rows, FGptqRows{Wd.dev(), U.get(), rows, n, i1, nb, g.dev, perm.get(), group.get(), C.dev(), E.get(),
                           rowloss.get()});
    if (i2 < n)
      dla::sgemm(false, false, rows, n - i2, nb, -1.f, E.get(), rows, U.get() + i2 * n + i1, n, 1.f, Wd.dev() + i2 * rows,
                 rows);
  }
  synchronize();
  *sec_blocks = now_s() - t0;
  Wd.to_host();
  C.to_host();
  return true;
}

double bench_gram_seconds(int64_t n, int64_t c) {
  Buf<float> X((size_t)(n * c)), G((size_t)(c * c));
  Buf<double> S((size_t)(c * c));
  launch(n * c, FPattern{X.get(), 3});
  launch(c * c, FFillD{S.get(), 0.0});
  synchronize();
  const double t0 = now_s();
  for (int64_t t0k = 0; t0k < n; t0k += kGramTok) {
    const int64_t nt = std::min(kGramTok, n - t0k);
    dla::ssyrk_lower(c, nt, X.get() + t0k * c, c, G.get(), c);
    launch(c * c, FGramAdd{G.get(), c, S.get()});
  }
  synchronize();
  return now_s() - t0;
}

}  // namespace

const DeviceBench* device_bench_api() {
  static const DeviceBench b{bench_gemm_seconds, bench_cd_sweeps, bench_gptq, bench_gram_seconds};
  return &b;
}

}  // namespace qf::QF_DEV_NS
