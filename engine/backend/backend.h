// qforge — the compute backend seam: every heavy op the model, the calibration and the solvers
// run, behind one interface (ggml's backend idea, docs/architecture.md#backends).
//
// Callers above this line (model/, calib/, solvers/) validate shapes and own the memory; a
// backend only computes. Every op takes raw pointers to contiguous buffers with the layout
// stated at the op, so a device backend can map them to its own buffers without knowing about
// Tensor. The CPU backend (backend/cpu) is the reference: its chunking is fixed, so its results
// are the same bits for any thread count, and a later backend is tested op by op against it
// (tests/test_backend_ops.cpp). Layouts: "row-major [r, c]" means element (i, j) at i·c + j;
// "column-major [r, c]" at j·r + i (Eigen's default, used by the f64 solves and the solvers'
// working matrices).
#pragma once
#include <cstdint>
#include <vector>

namespace qf {

struct Grid;  // quant/grid.h: the solver kernels round on it

// Shapes of one attention call: B windows of T tokens, grouped-query heads; and its variant
// (docs/architecture.md#architectures): scores s = scale·q·k (scale 0: 1/√head_dim), soft-capped
// s ← softcap·tanh(s/softcap) when softcap > 0, causal, and with window > 0 a query at position i
// sees only keys j with i − window < j ≤ i.
struct AttentionShape {
  int B = 0, T = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0;
  int window = 0;
  float scale = 0.f;
  float softcap = 0.f;
};

// One GPTQ block (docs/methods.md#gptq-update), columns [i1, i2) of the working weight.
struct GptqBlock {
  float* W = nullptr;            // column-major [rows, cols] working weight, processing order; updated
  int64_t rows = 0, cols = 0;
  const float* U = nullptr;      // column-major [cols, cols] upper Cholesky factor of H⁻¹ (f32)
  int64_t i1 = 0, i2 = 0;        // the block's processing positions
  const Grid* grid = nullptr;    // codes of position p on group group[p]
  const int64_t* perm = nullptr;   // perm[p]: the original column at processing position p
  const int64_t* group = nullptr;  // group[p]: the grid group of processing position p
  uint8_t* codes = nullptr;      // row-major [rows, cols] in the original column order; written
  float* E = nullptr;            // column-major [rows, ≥ i2 − i1] scratch: errors / U_pp
  // Per row chunk of the backend's own size, the proxy loss Σ (w − q)²/U_pp², accumulated over
  // blocks (the backend sizes it on first use); the caller adds the chunks in order at the end.
  std::vector<double>* loss = nullptr;
  // Stochastic rounding (methods.md#stochastic-rounding): element (row i, original column col) is
  // rounded with the draw counter_uniform(stochastic_key, i·cols + col).
  bool stochastic = false;
  uint64_t stochastic_key = 0;
};

// One coordinate-descent sweep (docs/methods.md#cd-update) over positions [0, nsweep) of a
// permuted problem: position p holds the original column perm[p].
struct CdSweep {
  float* W = nullptr;          // row-major [rows, cols] Ŵ[:, π]; updated
  float* E = nullptr;          // row-major [rows, cols] residual T[:, π] − Ŵ[:, π]; kept in step
  int64_t rows = 0, cols = 0;
  const float* S = nullptr;    // row-major [cols, cols] Σ[π, π], symmetric
  const float* T = nullptr;    // row-major [rows, cols] target, original column order
  const int64_t* perm = nullptr;
  int64_t nsweep = 0;
  const Grid* grid = nullptr;
  bool continuous = false;     // unquantized coordinate minimisers instead of grid values
};

// One product of a gemm_rows_batch: y = x · op(w), or y += when accumulate (shapes as
// gemm_rows; every job of a batch has the same rows).
struct GemmRowsJob {
  const float* x = nullptr;
  const float* w = nullptr;
  int64_t w_rows = 0, w_cols = 0;
  bool w_transposed = false;
  float* y = nullptr;
  bool accumulate = false;
};

// One product of a gemm_tn_batch: c = aᵀ b (+= when accumulate), a_colsum as gemm_tn.
struct GemmTnJob {
  const float* a = nullptr;
  int64_t a_cols = 0;
  const float* b = nullptr;
  int64_t b_cols = 0;
  float* c = nullptr;
  bool accumulate = false;
  float* a_colsum = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // ---- GEMM (f32)
  // y = x · op(w), or y += when accumulate. w row-major [w_rows, w_cols]; op(w) = wᵀ when
  // w_transposed (x [rows, w_cols], y [rows, w_rows]: a linear layer's x Wᵀ), else w (x [rows,
  // w_rows], y [rows, w_cols]).
  virtual void gemm_rows(const float* x, int64_t rows, const float* w, int64_t w_rows, int64_t w_cols,
                         bool w_transposed, float* y, bool accumulate) = 0;
  // c = aᵀ b, or c += when accumulate: a row-major [rows, a_cols], b [rows, b_cols], c [a_cols,
  // b_cols] (a weight gradient dyᵀx). a_colsum, when given, receives Σ_n a[n, o] summed in f64
  // in row order (a bias gradient), written, never accumulated. work < 0 means rows·a_cols·b_cols
  // (the size that decides threading; it never changes the bits).
  virtual void gemm_tn(const float* a, int64_t rows, int64_t a_cols, const float* b, int64_t b_cols, float* c,
                       bool accumulate, float* a_colsum = nullptr, int64_t work = -1) = 0;
  // The jobs' results exactly as if run one after another with gemm_rows (a later job may
  // accumulate into an earlier job's y; no job reads another's y), in one pass: q, k and v of
  // one input, or dx = Σ_i dy_i W_i. One parallel region instead of n (waking a sleeping
  // team costs tens of µs each, docs/benchmarks.md "OpenMP wait policy").
  virtual void gemm_rows_batch(int64_t rows, const GemmRowsJob* jobs, int n_jobs) = 0;
  // Independent gemm_tn products over the same rows (no c or a_colsum aliases another), as if
  // run one after another: the weight gradients of q, k and v.
  virtual void gemm_tn_batch(int64_t rows, const GemmTnJob* jobs, int n_jobs) = 0;

  // ---- calibration statistics
  // S += xᵀ x in f64 (S column-major [c, c], i.e. Eigen::MatrixXd), x row-major [n, c]; xsum,
  // when given, += the column sums of x, added row by row in f64.
  virtual void gram_accumulate(const float* x, int64_t n, int64_t c, double* S, double* xsum) = 0;

  // ---- norms, RoPE, activations (row-major f32)
  // y = g ⊙ x / sqrt(mean(x²) + eps) per row of x [n, d]; the row's Σx² in f64.
  virtual void rmsnorm(const float* x, int64_t n, int64_t d, const float* g, float eps, float* y) = 0;
  // Its backward: dx [n, d] written; dg [d] (when non-null) = Σ_rows dy ⊙ x · inv, f64 sums.
  virtual void rmsnorm_backward(const float* x, int64_t n, int64_t d, const float* g, float eps, const float* dy,
                                float* dx, float* dg) = 0;
  // Rotates x [n, n_heads·head_dim] in place, row r at position r mod T, by the angles
  // position·inv_freq[i] (head_dim/2 frequencies); transpose applies Rᵀ (the backward).
  virtual void rope_rotate(float* x, int64_t n, int n_heads, int head_dim, int T, const float* inv_freq,
                           bool interleaved, bool transpose) = 0;
  // h = silu(a) ⊙ u over n elements; h may be a.
  virtual void swiglu(const float* a, const float* u, int64_t n, float* h) = 0;
  // In place: a ← dh ⊙ u ⊙ silu'(a), u ← dh ⊙ silu(a).
  virtual void swiglu_backward(float* a, float* u, const float* dh, int64_t n) = 0;
  // h = gelu_tanh(a) ⊙ u, gelu_tanh(a) = a/2·(1 + tanh(√(2/π)(a + 0.044715a³))); h may be a.
  virtual void geglu(const float* a, const float* u, int64_t n, float* h) = 0;
  // In place: a ← dh ⊙ u ⊙ gelu_tanh'(a), u ← dh ⊙ gelu_tanh(a).
  virtual void geglu_backward(float* a, float* u, const float* dh, int64_t n) = 0;
  // a += b over n elements.
  virtual void add_inplace(float* a, const float* b, int64_t n) = 0;

  // ---- causal grouped-query attention (q [B·T, H·hd], k and v [B·T, KVH·hd], row-major)
  virtual void attention(const float* q, const float* k, const float* v, const AttentionShape& s, float* out) = 0;
  // dq [B·T, H·hd], dk and dv [B·T, KVH·hd] written (the backend zeroes what it accumulates).
  virtual void attention_backward(const float* q, const float* k, const float* v, const AttentionShape& s,
                                  const float* dy, float* dq, float* dk, float* dv) = 0;

  // ---- dense f64 linear algebra (column-major [n, n])
  // A's lower triangle ← L with A = L Lᵀ, reading A's lower triangle; false when not positive
  // definite (A is then undefined).
  virtual bool cholesky_lower(double* A, int64_t n) = 0;
  // X = L⁻¹ for the lower triangle L of A; X's strict upper triangle is zero.
  virtual void lower_triangular_inverse(const double* A, int64_t n, double* X) = 0;

  // ---- solver kernels
  // GPTQ: quantizes the block's columns in order with the in-block error feedback, then the
  // lazy-batch update W[:, i2:] −= E U[i1:i2, i2:].
  virtual void gptq_block(const GptqBlock& b) = 0;
  // QuantEase: one sweep; returns the exact change f(after) − f(before) of Σ_i e_iᵀ Σ e_i.
  virtual double cd_sweep(const CdSweep& s) = 0;
};

// The backend every caller uses; the CPU backend unless set_backend chose another. Set it
// before work starts (it is one process-wide pointer, read without locking).
Backend& backend();
Backend& cpu_backend();
// Makes b the current backend (nullptr: the CPU backend again); returns the previous one.
Backend* set_backend(Backend* b);

}  // namespace qf
