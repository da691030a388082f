// decoupleQ's layer stage, docs/methods.md#decoupleq (see decoupleq.h for the outline).
//
// Internally a row's weights are ŵ_j = s_g·a_j + z_g with a_j = code_j (asym) or
// a_j = code_j − (maxq+1)/2 (sym, z_g ≡ 0) and the grid stores scale = s, zero = −z/s (asym). The
// state is a float_zero Grid plus u8 codes; every candidate is scored on the f32 values
// grid.value(code) — exactly what QuantizedLinear::dequantize returns — so the loss we report is
// the loss of the weight we return.
//
// Determinism: rows are processed in fixed chunks of kRowChunk (a chunk's result does not depend
// on which thread runs it), every GEMM runs serially inside one chunk, and every reduction is a
// plain loop in a fixed order.
#include "solvers/decoupleq.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cfloat>
#include <cstdio>
#include <cmath>
#include <limits>
#include <utility>

#include "solvers/gptq.h"
#include "solvers/normal_equations.h"

namespace qf {

namespace {

using MatD = Eigen::MatrixXd;  // column-major
using RowMatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using VecD = Eigen::VectorXd;

constexpr int64_t kRowChunk = 32;  // rows per parallel task

// The layer problem in f64, shared by every step.
struct Problem {
  const LayerProblem* lp = nullptr;  // the caller's validated W and Σ (GPTQ rounding reads them directly)
  int64_t r = 0, c = 0, gs = 0, ng = 0;  // rows, columns, group size, groups per row
  GridSpec spec;                          // the caller's spec with float_zero
  int maxq = 0;
  bool sym = false;
  float zero_sym = 0;  // sym grids: the fixed zero (maxq+1)/2
  RowMatD W;           // f64 copy of W (exact)
  MatD S;              // (Σ + Σᵀ)/2, f64
  RowMatD T;           // W·S: the float step's right-hand sides
  MatD S1;             // [ng, ng]: 1_gᵀ S 1_h (the z–z block of the normal equations)
  double mean_diag = 1;
  int64_t nchunks() const { return (r + kRowChunk - 1) / kRowChunk; }
  int64_t group_of(int64_t j) const { return j / gs; }
};

// A candidate (or the current) solution.
struct State {
  Grid grid;
  std::vector<uint8_t> codes;  // [r, c] row-major
  std::vector<double> loss;    // [r]
};

// Runs f(r0, n) for every row chunk [r0, r0 + n) in one parallel region. Always a real region:
// Eigen's GEMMs inside it see a team of several threads (or a 1-thread limit) and stay serial —
// Eigen's own threading picks its blocking by thread count, which would change the sums.
// A single tiny chunk (r·c² < 5e4) runs inline: Eigen never threads a GEMM that small.
template <class F>
void for_row_chunks(int64_t r, int64_t c, F&& f) {
  const int64_t nch = (r + kRowChunk - 1) / kRowChunk;
  if (nch == 1 && (double)r * (double)c * (double)c < 5e4) return f(0, r);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t ch = 0; ch < nch; ++ch) f(ch * kRowChunk, std::min(kRowChunk, r - ch * kRowChunk));
}
template <class F>
void for_chunks(const Problem& P, F&& f) {
  for_row_chunks(P.r, P.c, std::forward<F>(f));
}

// Σ_j E(i, j)·Y(i, j) for every row of the chunk, in column order.
void rowwise_dot(const RowMatD& E, const RowMatD& Y, double* out) {
  for (int64_t i = 0; i < E.rows(); ++i) {
    double acc = 0;
    for (int64_t j = 0; j < E.cols(); ++j) acc += E(i, j) * Y(i, j);
    out[i] = acc;
  }
}

// The layer problem (methods.md#decoupleq-form) on rows [r0, r0 + n): ℓ_i = (w_i − ŵ_i) Σ
// (w_i − ŵ_i)ᵀ with Ŵ = grid.value(code) in f32, exactly as QuantizedLinear::dequantize.
void chunk_losses(const Problem& P, const Grid& g, const uint8_t* codes, int64_t r0, int64_t n, double* loss) {
  RowMatD E(n, P.c), Y;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < P.c; ++j)
      E(i, j) = P.W(r0 + i, j) - (double)g.value(codes[(r0 + i) * P.c + j], r0 + i, P.group_of(j));
  Y.noalias() = E * P.S;
  rowwise_dot(E, Y, loss + r0);
}

void score(const Problem& P, State& s) {
  s.loss.assign((size_t)P.r, 0.0);
  for_chunks(P, [&](int64_t r0, int64_t n) { chunk_losses(P, s.grid, s.codes.data(), r0, n, s.loss.data()); });
}

double total(const std::vector<double>& v) {
  double t = 0;
  for (double x : v) t += x;
  return t;
}

// Row i of `from` (codes, grid row, loss) into `to`.
void copy_row(const Problem& P, State& to, const State& from, int64_t i) {
  std::copy_n(&from.codes[(size_t)(i * P.c)], P.c, &to.codes[(size_t)(i * P.c)]);
  for (int64_t g = 0; g < P.ng; ++g) {
    to.grid.scale[to.grid.pidx(i, g)] = from.grid.scale[from.grid.pidx(i, g)];
    to.grid.zero[to.grid.pidx(i, g)] = from.grid.zero[from.grid.pidx(i, g)];
  }
  to.loss[(size_t)i] = from.loss[(size_t)i];
}

// Accept rule (methods.md#decoupleq-accept): row i of `cand` replaces row i of `cur` only if it
// lowers ℓ_i. Returns the count.
int64_t accept(const Problem& P, State& cur, const State& cand) {
  int64_t k = 0;
  for (int64_t i = 0; i < P.r; ++i)
    if (cand.loss[(size_t)i] < cur.loss[(size_t)i]) {
      copy_row(P, cur, cand, i);
      ++k;
    }
  return k;
}

// (scale, zero) for ŵ = s·code + z (asym) or s·(code − zero_sym) (sym). False if not representable
// (s zero or non-finite, or zero overflowing f32).
bool to_grid_params(const Problem& P, double s, double z, float* scale, float* zero) {
  const float sf = (float)s;
  if (!std::isfinite(sf) || std::fabs(sf) < FLT_MIN) return false;
  const float zf = P.sym ? P.zero_sym : (float)(-z / (double)sf);
  if (!std::isfinite(zf)) return false;
  *scale = sf;
  *zero = zf;
  return true;
}

// Init A (methods.md#decoupleq-init) on rows [r0, r0 + n): plain min/max per (row, group),
// s = (xmax − xmin)/maxq, z = xmin (code 0 ↔ xmin; decoupleQ's z = xmin − s·min_int is the same
// grid in signed integers); sym: s = 2·max|x|/maxq with the fixed zero (the symmetric range of
// methods.md#grid). The range is scaled by p (the shrink search). A constant group gets s = 1,
// z = its value (exactly representable).
void chunk_range_grid(const Problem& P, double p, Grid& g, int64_t r0, int64_t n) {
  for (int64_t i = r0; i < r0 + n; ++i)
    for (int64_t k = 0; k < P.ng; ++k) {
      const int64_t j0 = k * P.gs, j1 = std::min(P.c, j0 + P.gs);
      double lo = P.W(i, j0), hi = lo, amax = 0;
      for (int64_t j = j0; j < j1; ++j) {
        lo = std::min(lo, P.W(i, j));
        hi = std::max(hi, P.W(i, j));
        amax = std::max(amax, std::fabs(P.W(i, j)));
      }
      const double s = P.sym ? p * 2 * amax / P.maxq : p * (hi - lo) / P.maxq;
      float* sc = &g.scale[g.pidx(i, k)];
      float* ze = &g.zero[g.pidx(i, k)];
      if (!to_grid_params(P, s, p * lo, sc, ze)) to_grid_params(P, 1.0, lo, sc, ze);
    }
}

// Nearest code of every weight of rows [r0, r0 + n) (RTN on the grid).
void chunk_round(const Problem& P, const Grid& g, uint8_t* codes, int64_t r0, int64_t n) {
  const float* w = P.lp->W.f32();  // contiguous (LayerProblem)
  for (int64_t i = r0; i < r0 + n; ++i)
    for (int64_t j = 0; j < P.c; ++j) codes[i * P.c + j] = (uint8_t)g.code(w[i * P.c + j], i, P.group_of(j));
}

// Init A as a state: min/max grid, RTN codes, losses.
State init_rtn(const Problem& P) {
  State s{grid_new(P.spec, P.r, P.c), std::vector<uint8_t>((size_t)(P.r * P.c)), std::vector<double>((size_t)P.r)};
  for_chunks(P, [&](int64_t r0, int64_t n) {
    chunk_range_grid(P, 1.0, s.grid, r0, n);
    chunk_round(P, s.grid, s.codes.data(), r0, n);
    chunk_losses(P, s.grid, s.codes.data(), r0, n, s.loss.data());
  });
  return s;
}

// Integer step "gptq" (methods.md#decoupleq-gptq): GPTQ error-feedback rounding of W onto the fixed
// grid (Cholesky damping escalates in gptq_on_grid and is logged there).
std::vector<uint8_t> gptq_codes(const Problem& P, const Grid& g, const AltMinOptions& opt, const SolverLog& log) {
  GptqOptions o;
  o.blocksize = opt.blocksize;
  o.percdamp = opt.percdamp;
  o.act_order = opt.act_order;
  const GptqResult res = gptq_on_grid(*P.lp, g, o, log);
  const uint8_t* c = res.q.codes.data<uint8_t>();
  return std::vector<uint8_t>(c, c + P.r * P.c);
}

// Integer step "pgd" (methods.md#decoupleq-pgd) on rows [r0, r0 + n): projected gradient on the
// codes relaxed to the box [0, maxq] (ŵ = scale·(u − zero)): pgd_steps Adam steps from u = W
// clamped into the box, then for each column in order: round it, freeze it, pgd_inner_steps Adam
// steps on the columns still free. ∂ℓ/∂u = 2·s·((Ŵ − W)Σ); Adam sees it divided by
// 2·s²·mean(diag Σ), a fixed positive factor per coordinate (Adam is invariant to it) that keeps
// the gradient O(1) next to eps.
void chunk_pgd(const Problem& P, const Grid& g, const AltMinOptions& opt, uint8_t* codes, int64_t r0, int64_t n) {
  const int64_t c = P.c;
  const double maxq = P.maxq, b1 = 0.9, b2 = 0.999, eps = 1e-8, lr = opt.pgd_lr;
  RowMatD U(n, c), Sc(n, c), Ze(n, c), E(n, c), Y, M1 = RowMatD::Zero(n, c), V = RowMatD::Zero(n, c);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < c; ++j) {
      const size_t p = g.pidx(r0 + i, P.group_of(j));
      Sc(i, j) = g.scale[p];
      Ze(i, j) = g.zero[p];
      U(i, j) = std::clamp(P.W(r0 + i, j) / Sc(i, j) + Ze(i, j), 0.0, maxq);
    }
  int t = 0;
  auto adam_step = [&](int64_t j0) {  // one projected Adam step on the free columns [j0, c)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) E(i, j) = Sc(i, j) * (U(i, j) - Ze(i, j)) - P.W(r0 + i, j);
    Y.noalias() = E * P.S.rightCols(c - j0);  // (Ŵ − W)Σ on the free columns
    ++t;
    const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = j0; j < c; ++j) {
        const double gr = Y(i, j - j0) / (Sc(i, j) * P.mean_diag);
        M1(i, j) = b1 * M1(i, j) + (1 - b1) * gr;
        V(i, j) = b2 * V(i, j) + (1 - b2) * gr * gr;
        U(i, j) = std::clamp(U(i, j) - lr * (M1(i, j) / c1) / (std::sqrt(V(i, j) / c2) + eps), 0.0, maxq);
      }
  };
  for (int k = 0; k < opt.pgd_steps; ++k) adam_step(0);
  for (int64_t j = 0; j < c; ++j) {
    for (int64_t i = 0; i < n; ++i) U(i, j) = std::clamp(std::nearbyint(U(i, j)), 0.0, maxq);  // round, freeze
    if (j + 1 < c)
      for (int k = 0; k < opt.pgd_inner_steps; ++k) adam_step(j + 1);
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < c; ++j) codes[(r0 + i) * c + j] = (uint8_t)U(i, j);
}

// The integer step's candidate on grid g (methods.md#decoupleq-integer): GPTQ rounding or
// projected gradient.
State integer_step(const Problem& P, const Grid& g, const AltMinOptions& opt, const SolverLog& log) {
  State s{g, {}, std::vector<double>((size_t)P.r)};
  if (opt.round == AltMinOptions::Round::Gptq) {
    s.codes = gptq_codes(P, g, opt, log);
    score(P, s);
    return s;
  }
  s.codes.resize((size_t)(P.r * P.c));
  for_chunks(P, [&](int64_t r0, int64_t n) {  // rows are independent: each chunk runs its own Adam
    chunk_pgd(P, g, opt, s.codes.data(), r0, n);
    chunk_losses(P, g, s.codes.data(), r0, n, s.loss.data());
  });
  return s;
}

// The float step (methods.md#decoupleq-float) on rows [r0, r0 + n): with a = codes (asym) or
// codes − zero_sym (sym) fixed and ŵ_j = s_g a_j + z_g for j in group g, minimize
// ℓ_i = (w − ŵ)Σ(w − ŵ)ᵀ. Normal equations (DᵀΣD)θ = DᵀΣw with the design D = [a∘1_g, 1_g]_g
// (block indicators); per channel this is methods.md's (D2)
//   [aᵀΣa  aᵀΣ1; 1ᵀΣa  1ᵀΣ1]·[s; z] = [aᵀΣw; 1ᵀΣw],
// with G groups the 2G×2G system (Σ couples the groups). Params ordered s_0, z_0, s_1, z_1, …
// (sym: s_0, s_1, …); with q_h = Σ·(a∘1_h) (a row of the GEMM A_{:,h}·Σ_{h,:}) and t = Σw (a row of T):
//   M[s_g, s_h] = Σ_{j∈g} a_j q_h,j     M[z_g, s_h] = M[s_h, z_g] = Σ_{j∈g} q_h,j
//   M[z_g, z_h] = S1(g, h)              b[s_g] = Σ_{j∈g} a_j t_j,   b[z_g] = Σ_{j∈g} t_j.
// s/z [r × ng] receive θ (NaN: not seen by the loss); ok[i] = 0 where row i's solve failed.
void chunk_fit(const Problem& P, const uint8_t* codes, int64_t r0, int64_t n, double* out_s, double* out_z, char* ok,
               char* damped) {
  const int64_t ng = P.ng, k = P.sym ? ng : 2 * ng;
  const double off = P.sym ? (double)P.zero_sym : 0.0;
  auto si = [&](int64_t g) { return P.sym ? g : 2 * g; };
  auto zi = [&](int64_t g) { return 2 * g + 1; };
  RowMatD A(n, P.c), Q;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < P.c; ++j) A(i, j) = (double)codes[(r0 + i) * P.c + j] - off;
  std::vector<MatD> M((size_t)n, MatD::Zero(k, k));
  for (int64_t h = 0; h < ng; ++h) {
    const int64_t h0 = h * P.gs, hw = std::min(P.gs, P.c - h0);
    Q.noalias() = A.middleCols(h0, hw) * P.S.middleRows(h0, hw);  // row i: q_h of row r0 + i
    for (int64_t i = 0; i < n; ++i)
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t g0 = g * P.gs, g1 = std::min(P.c, g0 + P.gs);
        double sa = 0, s1 = 0;
        for (int64_t j = g0; j < g1; ++j) {
          sa += A(i, j) * Q(i, j);
          s1 += Q(i, j);
        }
        M[(size_t)i](si(g), si(h)) = sa;
        if (!P.sym) {
          M[(size_t)i](zi(g), si(h)) = s1;
          M[(size_t)i](si(h), zi(g)) = s1;
        }
      }
  }
  VecD b(k), theta;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = r0 + i;
    for (int64_t g = 0; g < ng; ++g) {
      const int64_t g0 = g * P.gs, g1 = std::min(P.c, g0 + P.gs);
      double ba = 0, b1 = 0;
      for (int64_t j = g0; j < g1; ++j) {
        ba += A(i, j) * P.T(row, j);
        b1 += P.T(row, j);
      }
      b(si(g)) = ba;
      if (!P.sym) {
        b(zi(g)) = b1;
        for (int64_t h = 0; h < ng; ++h) M[(size_t)i](zi(g), zi(h)) = P.S1(g, h);
      }
    }
    bool dmp = false;
    ok[row] = solve_normal_equations(M[(size_t)i], b, theta, &dmp);
    damped[row] = dmp;
    for (int64_t g = 0; g < ng; ++g) {
      out_s[row * ng + g] = theta(si(g));
      out_z[row * ng + g] = P.sym ? -theta(si(g)) * off : theta(zi(g));
    }
  }
}

// The float step as a candidate state: (s, z) refit on `base`'s codes. A parameter the loss does
// not see keeps its current value; a row whose solve failed (or gives a non-representable s, z)
// keeps its current grid row.
State float_step(const Problem& P, const State& base, int64_t* damped_rows) {
  State out = base;
  std::vector<double> s((size_t)(P.r * P.ng)), z((size_t)(P.r * P.ng));
  std::vector<char> ok((size_t)P.r, 0), damped((size_t)P.r, 0);
  for_chunks(P, [&](int64_t r0, int64_t n) {
    chunk_fit(P, base.codes.data(), r0, n, s.data(), z.data(), ok.data(), damped.data());
    std::vector<float> sc((size_t)P.ng), ze((size_t)P.ng);
    for (int64_t i = r0; i < r0 + n; ++i) {
      bool row_ok = ok[(size_t)i];
      for (int64_t g = 0; g < P.ng && row_ok; ++g) {
        const size_t p = base.grid.pidx(i, g);
        double sv = s[(size_t)(i * P.ng + g)], zv = z[(size_t)(i * P.ng + g)];
        sc[(size_t)g] = base.grid.scale[p];
        ze[(size_t)g] = base.grid.zero[p];
        if (std::isnan(sv) && std::isnan(zv)) continue;  // group unseen by the loss
        if (std::isnan(sv)) sv = base.grid.scale[p];      // all codes 0 (asym): only z is seen
        if (std::isnan(zv)) zv = -sv * (double)base.grid.zero[p];
        row_ok = to_grid_params(P, sv, zv, &sc[(size_t)g], &ze[(size_t)g]);
      }
      if (!row_ok) continue;
      for (int64_t g = 0; g < P.ng; ++g) {
        out.grid.scale[out.grid.pidx(i, g)] = sc[(size_t)g];
        out.grid.zero[out.grid.pidx(i, g)] = ze[(size_t)g];
      }
    }
    chunk_losses(P, out.grid, out.codes.data(), r0, n, out.loss.data());
  });
  *damped_rows = 0;
  for (char d : damped) *damped_rows += d;
  return out;
}

// Round 1, range-shrink search (methods.md#decoupleq-shrink): per row the shrink factor
// p = 1 − i/shrink_grid (i < shrink_steps) whose min/max grid with RTN codes has the least
// ℓ_i (ties: the larger range), then the closed-form refit of (s, z) on those codes where
// it lowers ℓ_i.
State shrink_search(const Problem& P, const AltMinOptions& opt, int64_t* damped_rows) {
  State best{grid_new(P.spec, P.r, P.c), std::vector<uint8_t>((size_t)(P.r * P.c)), std::vector<double>((size_t)P.r)};
  State trial = best;  // each chunk writes only its own rows of both
  for_chunks(P, [&](int64_t r0, int64_t n) {
    for (int i = 0; i < opt.shrink_steps; ++i) {
      chunk_range_grid(P, 1.0 - (double)i / opt.shrink_grid, trial.grid, r0, n);
      chunk_round(P, trial.grid, trial.codes.data(), r0, n);
      chunk_losses(P, trial.grid, trial.codes.data(), r0, n, trial.loss.data());
      for (int64_t row = r0; row < r0 + n; ++row)
        if (i == 0 || trial.loss[(size_t)row] < best.loss[(size_t)row]) copy_row(P, best, trial, row);
    }
  });
  const State refit = float_step(P, best, damped_rows);
  accept(P, best, refit);
  return best;
}

Problem make_problem(const LayerProblem& lp, const GridSpec& spec) {
  const Tensor& W = lp.W;
  const Tensor& Sigma = lp.sigma;
  Problem P;
  P.lp = &lp;
  P.r = W.size(0);
  P.c = W.size(1);
  P.gs = spec.group > 0 ? std::min<int64_t>(spec.group, P.c) : P.c;
  P.ng = (P.c + P.gs - 1) / P.gs;
  P.spec = spec;
  P.spec.float_zero = true;
  P.maxq = (1 << spec.bits) - 1;
  P.sym = spec.sym;
  P.zero_sym = (float)(P.maxq + 1) / 2.f;
  P.W = W.cmat().cast<double>();
  P.S = Sigma.cmat().cast<double>();
  P.S = (0.5 * (P.S + P.S.transpose())).eval();
  P.T.resize(P.r, P.c);
  for_chunks(P, [&](int64_t r0, int64_t n) { P.T.middleRows(r0, n).noalias() = P.W.middleRows(r0, n) * P.S; });
  P.S1 = MatD::Zero(P.ng, P.ng);
  for (int64_t j = 0; j < P.c; ++j)
    for (int64_t k = 0; k < P.c; ++k) P.S1(P.group_of(j), P.group_of(k)) += P.S(j, k);
  double tr = 0;
  for (int64_t j = 0; j < P.c; ++j) tr += P.S(j, j);
  P.mean_diag = tr > 0 ? tr / (double)P.c : 1.0;
  return P;
}

void check_spec(const char* fn, const GridSpec& spec) {
  try {
    spec.validate();
  } catch (const Error& e) {
    fail(fn, ": ", e.what());
  }
  if (spec.kind != GridKind::Uniform) fail(fn, ": needs a uniform grid (decoupleQ's ŵ = s·w_int + z), got ", spec.str());
  if (spec.mixed_bits()) fail(fn, ": mixed-bit allocations (grid option 'alloc') are not supported");
  if (!spec.row_group.empty()) fail(fn, ": row groups (grid option 'row_groups') are not supported");
  if (spec.mse) fail(fn, ": grid option 'mse' does not apply; the (s, z) range search is the option 'shrink_search'");
  if (spec.f16_scales) fail(fn, ": grid option 'f16_scales' does not apply: decoupleQ's scales and offsets are free floats");
}

void check_options(const char* fn, const AltMinOptions& o) {
  if (o.iters < 1) fail(fn, ": option 'iters' must be >= 1, got ", o.iters);
  if (o.round != AltMinOptions::Round::Gptq && o.round != AltMinOptions::Round::Pgd) fail(fn, ": option 'round' is invalid");
  if (o.shrink_grid < 1) fail(fn, ": option 'shrink_grid' must be >= 1, got ", o.shrink_grid);
  if (o.shrink_steps < 1 || o.shrink_steps > o.shrink_grid)
    fail(fn, ": option 'shrink_steps' must be in 1..shrink_grid (", o.shrink_grid, "), got ", o.shrink_steps);
  if (!(o.percdamp >= 0) || !std::isfinite(o.percdamp)) fail(fn, ": option 'percdamp' must be >= 0, got ", o.percdamp);
  if (o.blocksize < 1) fail(fn, ": option 'blocksize' must be >= 1, got ", o.blocksize);
  if (o.pgd_steps < 0) fail(fn, ": option 'pgd_steps' must be >= 0, got ", o.pgd_steps);
  if (o.pgd_inner_steps < 0) fail(fn, ": option 'pgd_inner_steps' must be >= 0, got ", o.pgd_inner_steps);
  if (!(o.pgd_lr > 0) || !std::isfinite(o.pgd_lr)) fail(fn, ": option 'pgd_lr' must be > 0, got ", o.pgd_lr);
  if (!(o.min_improved >= 0 && o.min_improved <= 1)) fail(fn, ": option 'min_improved' must be in [0, 1], got ", o.min_improved);
}

std::string fmt_g(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

}  // namespace

std::vector<double> alt_min_row_losses(const Tensor& W, const Tensor& What, const Tensor& Sigma) {
  const char* fn = "alt_min_row_losses";
  const LayerProblem lp = LayerProblem::make(W, Sigma, {}, 0, "", fn);
  if (!What.defined() || What.shape() != W.shape() || What.dtype() != DType::F32)
    fail(fn, ": What must be f32 ", shape_str(W.shape()), ", got ", What.defined() ? shape_str(What.shape()) : std::string("undefined"));
  const int64_t r = W.size(0), c = W.size(1);
  MatD S = lp.sigma.cmat().cast<double>();
  S = (0.5 * (S + S.transpose())).eval();
  const RowMatD E = W.cmat().cast<double>() - What.cmat().cast<double>();
  std::vector<double> loss((size_t)r);
  for_row_chunks(r, c, [&](int64_t r0, int64_t n) {  // the same chunks and GEMMs as alt_min's own losses
    const RowMatD Ec = E.middleRows(r0, n);
    RowMatD Y(n, c);
    Y.noalias() = Ec * S;
    rowwise_dot(Ec, Y, &loss[(size_t)r0]);
  });
  return loss;
}

AffineFit alt_min_fit_affine(const Tensor& W, const Tensor& Sigma, const Tensor& codes, const GridSpec& spec) {
  const char* fn = "alt_min_fit_affine";
  const LayerProblem lp = LayerProblem::make(W, Sigma, {}, 0, "", fn);
  check_spec(fn, spec);
  if (!codes.defined() || codes.dtype() != DType::U8 || codes.shape() != W.shape())
    fail(fn, ": codes must be u8 ", shape_str(W.shape()));
  const Tensor Cc = codes.contiguous();
  const Problem P = make_problem(lp, spec);
  const uint8_t* cp = Cc.data<uint8_t>();
  std::vector<uint8_t> cv(cp, cp + P.r * P.c);
  for (uint8_t q : cv)
    if (q > P.maxq) fail(fn, ": code ", (int)q, " exceeds maxq ", P.maxq);
  AffineFit f;
  f.rows = P.r;
  f.ngroups = P.ng;
  f.s.assign((size_t)(P.r * P.ng), 0.0);
  f.z = f.s;
  std::vector<char> ok((size_t)P.r, 0), damped((size_t)P.r, 0);
  for_chunks(P, [&](int64_t r0, int64_t n) { chunk_fit(P, cv.data(), r0, n, f.s.data(), f.z.data(), ok.data(), damped.data()); });
  for (int64_t i = 0; i < P.r; ++i) {
    if (!ok[(size_t)i]) fail(fn, ": the normal equations of row ", i + 1, " could not be solved even with damping");
    f.damped_rows += damped[(size_t)i];
  }
  return f;
}

AltMinResult alt_min(const Tensor& W, const Tensor& Sigma, const GridSpec& spec, const AltMinOptions& opt, const SolverLog& log) {
  return alt_min(LayerProblem::make(W, Sigma, {}, 0, "", "alt_min"), spec, opt, log);
}

AltMinResult alt_min(const LayerProblem& lp, const GridSpec& spec, const AltMinOptions& opt, const SolverLog& log) {
  const char* fn = "alt_min";
  check_spec(fn, spec);
  check_options(fn, opt);
  const Problem P = make_problem(lp, spec);
  AltMinResult res;
  auto note = [&](const char* name, int64_t k, const State& s) {
    res.steps.push_back({name, total(s.loss), k});
    if (log) log("iter", "step " + std::string(name) + ": loss " + fmt_g(res.steps.back().loss) + ", " + std::to_string(k) + "/" +
                             std::to_string(P.r) + " rows improved");
  };
  auto note_damped = [&](int64_t d, const char* where) {
    res.damped_rows += d;
    if (d > 0 && log)
      log("damping", std::string(where) + ": " + std::to_string(d) + " row(s) had singular (s, z) normal equations; solved with damping");
  };
  auto end_iteration = [&](const std::vector<double>& before, const State& cur) {
    int64_t k = 0;
    for (int64_t i = 0; i < P.r; ++i) k += cur.loss[(size_t)i] < before[(size_t)i];
    res.history.push_back(total(cur.loss));
    res.rows_improved.push_back((double)k / (double)P.r);
    if (log)
      log("iter", "iteration " + std::to_string(res.history.size()) + ": loss " + fmt_g(res.history.back()) + ", rows improved " +
                      std::to_string(k) + "/" + std::to_string(P.r));
    return k;
  };

  // Init A (methods.md#decoupleq-init): min/max (s, z), integers by RTN.
  State cur = init_rtn(P);
  note("init_rtn", 0, cur);
  const std::vector<double> start = cur.loss;
  // Init B (methods.md#decoupleq-init): GPTQ rounding with those (s, z) fixed; kept for the rows
  // where it is better.
  {
    State cand{cur.grid, gptq_codes(P, cur.grid, opt, log), {}};
    score(P, cand);
    note("init_gptq", accept(P, cur, cand), cur);
  }
  end_iteration(start, cur);

  // Rounds t = 1 … iters − 1 (methods.md#decoupleq-rounds).
  for (int t = 1; t < opt.iters; ++t) {
    const std::vector<double> before = cur.loss;
    Grid on = cur.grid;  // the grid the integer step rounds on
    if (t == 1 && opt.shrink_search) {
      // (first round only) (s, z) re-initialised by the shrink search + closed-form refit; the
      // integer step below rounds on that grid for every row (kept per row only if better).
      int64_t d = 0;
      State sh = shrink_search(P, opt, &d);
      note_damped(d, "shrink_search refit");
      on = sh.grid;
      note("shrink_search", accept(P, cur, sh), cur);
    }
    // Integer step with (s, z) fixed (methods.md#decoupleq-integer): GPTQ or projected gradient.
    {
      const State cand = integer_step(P, on, opt, log);
      note(opt.round == AltMinOptions::Round::Gptq ? "gptq" : "pgd", accept(P, cur, cand), cur);
    }
    // Float step with the integers fixed: closed-form least squares per row.
    {
      int64_t d = 0;
      const State cand = float_step(P, cur, &d);
      note_damped(d, "float step");
      note("float", accept(P, cur, cand), cur);
    }
    const int64_t k = end_iteration(before, cur);
    if ((double)k < opt.min_improved * (double)P.r) {
      if (log) log("iter", "early stop after iteration " + std::to_string(res.history.size()) + ": " + std::to_string(k) + "/" +
                                     std::to_string(P.r) + " rows improved (< " + fmt_g(100 * opt.min_improved) + " %)");
      break;
    }
  }

  res.iters = (int)res.history.size();
  res.q.grid = std::move(cur.grid);
  res.q.codes = Tensor::empty({P.r, P.c}, DType::U8);
  std::copy(cur.codes.begin(), cur.codes.end(), res.q.codes.data<uint8_t>());
  return res;
}

}  // namespace qf
