// qforge — QuantEase cyclic coordinate descent (docs/methods.md#quantease).
//
// The sweep works on the residual E = T − Ŵ instead of TΣ: for column j
//   (TΣ)_:j − Σ_{k≠j} Ŵ_:k Σ_kj = (EΣ)_:j + Ŵ_:j Σ_jj   ⇒   β_:j = Ŵ_:j + (EΣ)_:j / Σ_jj,   (Q2, methods.md#cd-update)
// so no TΣ precompute is needed and β is formed from a small residual (no cancellation).
// The sweep itself (blocked: one GEMM per block of columns gives (EΣ) for the block, the
// columns inside it done one by one with rank-1 and small-GEMM corrections, ≈ 2·rows·cols² flops
// per sweep) is the backend's cd_sweep kernel (backend/backend.h); this file sets up the
// permuted problem, the damping and the sweep schedule around it.
#include "solvers/quantease.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "backend/backend.h"
#include "solvers/gptq.h"

namespace qf {

namespace {

// The full column permutation: `order` first (validated: distinct, in range), then the rest.
std::vector<int64_t> full_order(const std::vector<int64_t>& order, int64_t c, const char* fn) {
  if (order.empty()) {
    std::vector<int64_t> p((size_t)c);
    std::iota(p.begin(), p.end(), 0);
    return p;
  }
  std::vector<char> seen((size_t)c, 0);
  std::vector<int64_t> p;
  p.reserve((size_t)c);
  for (size_t i = 0; i < order.size(); ++i) {
    const int64_t j = order[i];
    if (j < 0 || j >= c) fail(fn, ": order entry ", i + 1, " = ", j + 1, " is not a column index in 1..", c, " (1-based)");
    if (seen[(size_t)j]) fail(fn, ": order lists column ", j + 1, " twice (1-based)");
    seen[(size_t)j] = 1;
    p.push_back(j);
  }
  for (int64_t j = 0; j < c; ++j)
    if (!seen[(size_t)j]) p.push_back(j);
  return p;
}

bool is_identity(const std::vector<int64_t>& p) {
  for (size_t i = 0; i < p.size(); ++i)
    if (p[i] != (int64_t)i) return false;
  return true;
}

}  // namespace

// The sweep, after check_layer_problem (quantease checks once, not every sweep).
static double sweep(const Tensor& target, const Tensor& Sigma, Tensor& What, const Grid& grid, const CdSweepOptions& opt) {
  const char* fn = "cd_sweep";
  const int64_t r = target.size(0), c = target.size(1);
  if (!What.defined() || What.dim() != 2 || What.size(0) != r || What.size(1) != c || What.dtype() != DType::F32)
    fail(fn, ": What must be f32 ", shape_str({r, c}), " like the target, got ",
         What.defined() ? shape_str(What.shape()) + " " + dtype_name(What.dtype()) : std::string("undefined"));
  if (grid.rows != r || grid.cols != c)
    fail(fn, ": grid is for [", grid.rows, ", ", grid.cols, "], the weight is ", shape_str({r, c}));
  const std::vector<int64_t> perm = full_order(opt.order, c, fn);
  const int64_t nsweep = opt.order.empty() ? c : (int64_t)opt.order.size();  // positions swept
  const bool ident = is_identity(perm);

  // Permuted views (position p holds column perm[p]): Σp = Σ[π, π], Wp = Ŵ[:, π], E = T[:, π] − Wp.
  // The identity order works in place (no copies of Σ or Ŵ). T stays in the original order
  // (read for dead columns and for E_:j). Σ is symmetric (check_layer_problem), so its row
  // Σ_j,: stands for the column Σ_:,j and every operand below is a contiguous slab.
  const Tensor Tc = target.contiguous();
  const float* T = Tc.f32();
  const Tensor Sc = Sigma.contiguous();
  MatRM Sbuf;
  if (!ident) {
    const CMatMap S0 = Sc.cmat();
    Sbuf.resize(c, c);
    for (int64_t a = 0; a < c; ++a)
      for (int64_t b = 0; b < c; ++b) Sbuf(a, b) = S0(perm[a], perm[b]);
  }
  const Eigen::Map<const MatRM> Sp(ident ? Sc.f32() : Sbuf.data(), c, c);
  const bool in_place = ident && What.is_contiguous() && !What.same_storage(target) && !What.same_storage(Sigma);
  MatRM Wbuf;
  if (!in_place) {
    Wbuf.resize(r, c);
    const CMatMap W0 = What.cmat();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < r; ++i)
      for (int64_t p = 0; p < c; ++p) Wbuf(i, p) = W0(i, perm[p]);
  }
  Eigen::Map<MatRM> Wp(in_place ? What.f32() : Wbuf.data(), r, c);
  MatRM E(r, c);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < r; ++i)
    for (int64_t p = 0; p < c; ++p) E(i, p) = T[i * c + perm[p]] - Wp(i, p);

  CdSweep k;
  k.W = Wp.data();
  k.E = E.data();
  k.rows = r;
  k.cols = c;
  k.S = Sp.data();
  k.T = T;
  k.perm = perm.data();
  k.nsweep = nsweep;
  k.grid = &grid;
  k.continuous = opt.continuous;
  const double df = backend().cd_sweep(k);  // the blocked sweep itself

  if (!in_place) {
    MatMap Wout = What.mat();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < r; ++i)
      for (int64_t p = 0; p < c; ++p) Wout(i, perm[p]) = Wp(i, p);
  }
  return df;
}

double cd_sweep(const Tensor& target, const Tensor& Sigma, Tensor& What, const Grid& grid, const CdSweepOptions& opt) {
  const LayerProblem p = LayerProblem::make(target, Sigma, {}, 0, "", "cd_sweep");
  return sweep(p.W, p.sigma, What, grid, opt);
}

double cd_sweep(const LayerProblem& p, const Tensor& target, Tensor& What, const Grid& grid, const CdSweepOptions& opt) {
  if (!target.defined() || target.shape() != p.W.shape() || target.dtype() != DType::F32)
    fail("cd_sweep: the target must be f32 ", shape_str(p.W.shape()), " like the problem's W, got ",
         target.defined() ? shape_str(target.shape()) : std::string("undefined"));
  return sweep(target, p.sigma, What, grid, opt);
}

// f under Σ from f under the damped S (S − Σ is diagonal): f_Σ = f_S − Σ_j (S_jj − Σ_jj)·‖(W − Ŵ)_:j‖².
static double undamp_objective(double f_damped, const Tensor& W, const Tensor& What, const std::vector<double>& ddiag) {
  const CMatMap A = W.cmat(), B = What.cmat();
  double corr = 0;
  for (int64_t i = 0; i < A.rows(); ++i)
    for (int64_t j = 0; j < A.cols(); ++j) {
      const double e = (double)A(i, j) - (double)B(i, j);
      corr += ddiag[(size_t)j] * e * e;
    }
  return f_damped - corr;
}

QuantEaseResult quantease(const Tensor& W, const Tensor& Sigma, const GridSpec& spec, const QuantEaseOptions& opt,
                          const SolverLog& log) {
  return quantease(LayerProblem::make(W, Sigma, {}, 0, "", "quantease"), spec, opt, log);
}

QuantEaseResult quantease(const LayerProblem& p, const GridSpec& spec, const QuantEaseOptions& opt, const SolverLog& log) {
  const char* fn = "quantease";
  if (opt.iters < 1) fail(fn, ": iters must be >= 1, got ", opt.iters);
  if (opt.init != "w" && opt.init != "rtn" && opt.init != "gptq")
    fail(fn, ": init must be \"w\", \"rtn\" or \"gptq\", got \"", opt.init, "\"");
  if (opt.continuous_every < 0) fail(fn, ": continuous_every must be >= 0, got ", opt.continuous_every);
  if (!(opt.percdamp >= 0) || !std::isfinite(opt.percdamp)) fail(fn, ": percdamp must be >= 0, got ", opt.percdamp);
  const int64_t c = p.W.size(1);

  const Tensor& Wc = p.W;  // contiguous, validated once (LayerProblem)
  const Tensor& Sc = p.sigma;
  // Damping (off by default, as the reference): S = Σ + λI, dead Σ_jj → 1 (damp_sigma).
  const Tensor S = opt.percdamp > 0 ? damp_sigma(Sc, opt.percdamp) : Sc;
  std::vector<double> ddiag((size_t)c, 0.0);
  if (opt.percdamp > 0)
    for (int64_t j = 0; j < c; ++j) ddiag[(size_t)j] = (double)S.cmat()(j, j) - (double)Sc.cmat()(j, j);

  // Grid fitted once from the original W (groups too: same params every sweep). With act_order
  // the sweep order changes but groups stay contiguous in the original column order (g_idx = identity).
  const Grid grid = grid_fit(Wc, spec, sigma_diag(Sc).data());
  CdSweepOptions so;
  if (opt.act_order) {
    const auto Sm = S.cmat();
    so.order.resize((size_t)c);
    std::iota(so.order.begin(), so.order.end(), 0);
    std::stable_sort(so.order.begin(), so.order.end(), [&](int64_t a, int64_t b) { return Sm(a, a) > Sm(b, b); });
  }

  Tensor What;
  if (opt.init == "w") {
    What = Wc.clone();  // the first sweep quantizes
  } else if (opt.init == "rtn") {
    What = quantize_to_grid(Wc, grid).dequantize();  // RTN on this grid
  } else {
    // GPTQ init (fmchisel): damped GPTQ, then CD with target = the original W (not the no-op
    // target = Q of gptq_quantease.py). Static groups make GPTQ's grid = grid_fit(W); the result is
    // projected onto our grid anyway (a no-op when the grids coincide).
    GptqOptions go;
    go.percdamp = std::max(opt.percdamp, 0.01);
    go.act_order = opt.act_order;
    go.static_groups = spec.group > 0;
    const Tensor G = gptq(p, spec, go, log).q.dequantize();
    What = quantize_to_grid(G, grid).dequantize();
    if (log) {
      int64_t moved = 0;
      const float* a = G.f32();
      const float* b = What.f32();
      for (int64_t k = 0; k < What.numel(); ++k) moved += a[k] != b[k];
      if (moved) log("gptq_projected", std::to_string(moved) + " entries of the GPTQ init moved onto the QuantEase grid");
    }
  }
  const Tensor Winit = opt.init == "w" ? Tensor() : What.clone();

  QuantEaseResult res;
  res.init_objective = opt.init == "w" ? 0.0 : objective(p, What).value;  // Ŵ = W: f = 0
  // f under S, tracked exactly per coordinate by cd_sweep (one objective() per sweep would double the cost).
  LayerProblem damped = p;  // S − Σ is diagonal
  damped.sigma = S;
  double fS = opt.percdamp > 0 ? objective(damped, What).value : res.init_objective;
  for (int it = 1; it <= opt.iters; ++it) {
    // Sweep schedule (methods.md#quantease-schedule): continuous on it % every == 1 (1, 4, 7, …),
    // it ≤ iters − 5, never the last sweep; none after an rtn/gptq init (fmchisel: the init is
    // already on the grid).
    so.continuous = opt.init == "w" && continuous_sweep(it, opt.iters, opt.continuous_every);
    fS += sweep(Wc, S, What, grid, so);
    const double f = opt.percdamp > 0 ? undamp_objective(fS, Wc, What, ddiag) : fS;
    res.objective.push_back(f);
    if (log) log("sweep", "it=" + std::to_string(it) + (so.continuous ? " continuous" : " quantized") + " objective=" + std::to_string(f));
  }
  res.objective.back() = objective(p, What).value;  // exact final value (the trace above is incremental)

  // Never end worse than an on-grid init (possible through damping or f32 near-ties).
  if (Winit.defined() && res.objective.back() > res.init_objective) {
    if (log) log("keep_init", "final objective " + std::to_string(res.objective.back()) + " > init " +
                                  std::to_string(res.init_objective) + "; returning the " + opt.init + " init");
    What = Winit;
    res.objective.back() = res.init_objective;
  }
  res.q = quantize_to_grid(What, grid);
  return res;
}

}  // namespace qf
