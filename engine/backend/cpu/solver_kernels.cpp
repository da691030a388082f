// qforge — the CPU backend's solver kernels: GPTQ's block quantize and QuantEase's
// coordinate-descent sweep (backend.h). Rows are independent problems in both, so fixed row
// chunks run on separate threads with no communication; each chunk's GEMMs are single-threaded
// (Eigen does not nest inside an OpenMP region) and per-chunk sums are added in chunk order, so
// results do not depend on the thread count.
#include "core/rng.h"
#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/cpu/cpu_backend.h"
#include "core/tensor.h"
#include "quant/grid.h"

namespace qf::cpu {

namespace {

using MatF = Eigen::MatrixXf;  // column-major
using MatCM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

constexpr int64_t kGptqRowChunk = 256;  // rows per GPTQ task: a [256, B] slice of the block stays in L2
// Measured on dev-2c (bench_solvers): B = 128…256 and 256-row chunks are within noise of each
// other; 32-column sub-blocks cut the sequential rank-1 work 8× against unblocked blocks.
constexpr int64_t kCdBlock = 256;     // columns per GEMM block
constexpr int64_t kCdSub = 32;        // columns per sequential sub-block inside a block
constexpr int64_t kCdRowChunk = 256;  // rows per task

// grid.quantize with the row's (scale, zero) at hand: the rounding rule of quant/grid.h.
inline float qvalue(float x, float s, float z, float maxq) { return uniform_value(uniform_code(x, s, z, maxq), s, z); }

}  // namespace

// Lazy-batch update (docs/methods.md#gptq-update), inside the block (W1 = W[:, i1:i2] updated
// in place), rows independent:
//   q = Q(w_p),  e_p = (w_p − q)/U_pp,  W1[:, p+1:i2] −= e_p·U[p, p+1:i2],
// then the lazy batch W[:, i2:] −= E_block·U[i1:i2, i2:] (one GEMM).
void CpuBackend::gptq_block(const GptqBlock& b) {
  const int64_t r = b.rows, c = b.cols, i1 = b.i1, n = b.i2 - b.i1;
  Eigen::Map<MatF> Wp(b.W, r, c);
  Eigen::Map<const MatF> U(b.U, c, c);
  Eigen::Map<MatF> E(b.E, r, n);
  const Grid& grid = *b.grid;
  uint8_t* codes = b.codes;
  const int64_t nch = (r + kGptqRowChunk - 1) / kGptqRowChunk;
  std::vector<double>& loss = *b.loss;
  if ((int64_t)loss.size() != nch) loss.assign((size_t)nch, 0.0);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ch = 0; ch < nch; ++ch) {
    const int64_t r0 = ch * kGptqRowChunk, r1 = std::min(r, r0 + kGptqRowChunk);
    for (int64_t j = 0; j < n; ++j) {
      const int64_t p = i1 + j, col = b.perm[p], g = b.group[p];
      const float d = U(p, p);
      float* w = Wp.col(p).data();
      float* e = E.col(j).data();
      double l = 0;
      for (int64_t i = r0; i < r1; ++i) {
        const int q = b.stochastic ? grid.stochastic_code(w[i], i, g, counter_uniform(b.stochastic_key, (uint64_t)(i * c + col)))
                                   : grid.code(w[i], i, g);
        const float v = grid.value(q, i, g);  // = QuantizedLinear::dequantize
        codes[i * c + col] = (uint8_t)q;
        const float diff = w[i] - v;
        l += (double)(diff * diff / (d * d));  // proxy-loss bookkeeping (docs/methods.md#gptq-update)
        e[i] = diff / d;
      }
      loss[(size_t)ch] += l;
      for (int64_t k = j + 1; k < n; ++k) {
        const float u = U(p, i1 + k);
        float* wk = Wp.col(i1 + k).data();
        for (int64_t i = r0; i < r1; ++i) wk[i] -= e[i] * u;
      }
    }
  }
  if (b.i2 < c) Wp.rightCols(c - b.i2).noalias() -= E * U.block(i1, b.i2, n, c - b.i2);
}

// The sweep on the residual E = T − Ŵ (docs/methods.md#cd-update): for position p,
//   β_:p = Ŵ_:p + (EΣ)_:p / Σ_pp,
// with (EΣ) for a block of kCdBlock columns from one GEMM, the block's columns done one by one
// in sub-blocks of kCdSub: an update Ŵ_:j += d_j is folded into the sub-block's later columns by
// the rank-1 correction R_:,l −= d_j Σ_jl, and into later sub-blocks by one small GEMM
// R_:,sub −= Δ_:,earlier Σ_earlier,sub. Σ is symmetric, so its rows stand for its columns.
double CpuBackend::cd_sweep(const CdSweep& sw) {
  const int64_t r = sw.rows, c = sw.cols, nsweep = sw.nsweep;
  Eigen::Map<MatRM> Wp(sw.W, r, c), E(sw.E, r, c);
  const Eigen::Map<const MatRM> Sp(sw.S, c, c);
  const float* T = sw.T;
  const int64_t* perm = sw.perm;
  const Grid& grid = *sw.grid;
  const int64_t nchunks = (r + kCdRowChunk - 1) / kCdRowChunk;
  const float maxq = (float)grid.maxq();
  // Mixed bits, pruned groups and companded grids take the general nearest-value path.
  const bool fast = grid.fast_uniform();
  std::vector<double> df((size_t)nchunks, 0.0);  // f(after) − f(before), per chunk, summed in order
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t r0 = ch * kCdRowChunk, nr = std::min(kCdRowChunk, r - r0);
    // Column-major chunk buffers: one column over the chunk's rows is contiguous, so each
    // column update is a vector operation over rows (no per-row dependency chain).
    MatCM R(nr, kCdBlock), Wb(nr, kCdBlock), D(nr, kCdBlock);  // (EΣ)_:,blk, Ŵ_:,blk, updates Δ_:,blk
    Eigen::VectorXf sc(nr), zr(nr), q(nr);
    double dfc = 0;
    for (int64_t b0 = 0; b0 < nsweep; b0 += kCdBlock) {
      const int64_t nb = std::min(kCdBlock, nsweep - b0);
      // (EΣ)_:,blk for this chunk's rows — the matrix–matrix part (2·nr·c·nb flops).
      R.leftCols(nb).noalias() = E.middleRows(r0, nr) * Sp.middleRows(b0, nb).transpose();
      Wb.leftCols(nb) = Wp.block(r0, b0, nr, nb);
      int64_t gcur = -1;
      for (int64_t s0 = 0; s0 < nb; s0 += kCdSub) {
        const int64_t ns = std::min(kCdSub, nb - s0);
        // updates of the block's earlier sub-blocks: (EΣ)_:,sub −= D_:,<s0 Σ_<s0,sub (a small GEMM)
        if (s0 > 0) R.middleCols(s0, ns).noalias() -= D.leftCols(s0) * Sp.block(b0, b0 + s0, s0, ns);
        for (int64_t jj = s0; jj < s0 + ns; ++jj) {
          const int64_t p = b0 + jj, col = perm[p];
          const int64_t g = grid.g_idx[col];
          const float sjj = Sp(p, p);
          if (g != gcur) {  // this group's (scale, zero) for the chunk's rows
            for (int64_t i = 0; i < nr; ++i) {
              sc(i) = grid.s(r0 + i, g);
              zr(i) = grid.z(r0 + i, g);
            }
            gcur = g;
          }
          if (!(sjj > 0.f)) {
            for (int64_t i = 0; i < nr; ++i) q(i) = grid.quantize(T[(r0 + i) * c + col], r0 + i, g);  // dead input: round T (docs/methods.md#cd-update)
          } else {
            const float* rc = &R(0, jj);
            const float* wc = &Wb(0, jj);
            for (int64_t i = 0; i < nr; ++i) {
              const float beta = wc[i] + rc[i] / sjj;  // coordinate minimiser (docs/methods.md#cd-update)
              q(i) = sw.continuous ? beta : fast ? qvalue(beta, sc(i), zr(i), maxq) : grid.quantize(beta, r0 + i, g);
            }
          }
          D.col(jj) = q - Wb.col(jj);
          // exact change of f_i = e_iᵀ Σ e_i when e_ij decreases by d_i: d_i (d_i Σ_jj − 2 (EΣ)_ij)
          const auto dd = D.col(jj).cast<double>().array();
          dfc += (dd * (dd * (double)sjj - 2.0 * R.col(jj).cast<double>().array())).sum();
          Wb.col(jj) = q;
          // fold the update into the sub-block's later columns: (EΣ)_:l −= d Σ_jl (rank 1)
          const int64_t rest = s0 + ns - jj - 1;
          if (rest > 0) R.middleCols(jj + 1, rest).noalias() -= D.col(jj) * Sp.row(p).segment(p + 1, rest);
        }
      }
      // write the block back; E_:j = T_:j − Ŵ_:j for the next blocks' GEMMs
      Wp.block(r0, b0, nr, nb) = Wb.leftCols(nb);
      for (int64_t i = 0; i < nr; ++i) {
        const float* t = T + (r0 + i) * c;
        for (int64_t p = b0; p < b0 + nb; ++p) E(r0 + i, p) = t[perm[p]] - Wp(r0 + i, p);
      }
    }
    df[(size_t)ch] = dfc;
  }
  return std::accumulate(df.begin(), df.end(), 0.0);
}

}  // namespace qf::cpu
