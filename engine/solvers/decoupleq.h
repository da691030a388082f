// qforge — decoupleQ's layer stage (docs/methods.md#decoupleq): alternating minimization of the
// layer problem f(Ŵ) = Σ_rows (w − ŵ) Σ (w − ŵ)ᵀ over integers and per-(row, group) floats,
//   ŵ_j = s·w_int,j + z   (j in the group),
// stored as a float_zero grid (grid.h): code = w_int − min_int ∈ [0, maxq], value =
// scale·(code − zero) with scale = s, zero = −(z + s·min_int)/s; sym drops z (zero = (maxq+1)/2,
// i.e. decoupleQ's signed integers times s).
//
//   init     (methods.md#decoupleq-init, steps 1–2) min/max (s, z) with RTN integers, then GPTQ
//            rounding on that fixed grid;
//   round 1  (shrink_search, methods.md#decoupleq-shrink) (s, z) by a range-shrink search scored
//            by the Σ-weighted loss, refit in closed form; the integer step of round 1 rounds on
//            that grid;
//   round t  integer step with (s, z) fixed — GPTQ error feedback on the fixed grid
//            (methods.md#decoupleq-gptq) or projected Adam on the relaxed codes, then column-wise
//            round-and-freeze (methods.md#decoupleq-pgd) —
//            then the float step with the integers fixed: per row the closed-form least squares
//            in (s, z) (2×2 normal equations per channel, 2G×2G with G groups; f64).
// Every step is kept per row only where it lowers that row's loss, so the loss never increases;
// rounds stop early when fewer than min_improved of the rows improve in one.
// The loss is under the given Σ (undamped: the objective() every recipe reports); percdamp only
// damps GPTQ's Cholesky. Row-parallel, bit-identical for any OpenMP thread count.
#pragma once
#include <string>
#include <vector>

#include "quant/grid.h"
#include "quant/layer_problem.h"

namespace qf {

struct AltMinOptions {
  int iters = 4;                // max_iter_num (methods.md#decoupleq-rounds): the init is iteration 1, then iters − 1 alternation rounds
  enum class Round { Gptq, Pgd };
  Round round = Round::Gptq;    // integer step (methods.md#decoupleq-integer): "gptq" or "pgd" (projected gradient)
  bool shrink_search = true;    // round 1: (s, z) from range-shrink factors p = 1 − i/shrink_grid
  int shrink_steps = 160;       //   i = 0 … shrink_steps − 1 (methods.md#decoupleq-shrink: 160 of 200)
  int shrink_grid = 200;
  double percdamp = 0.01;       // GPTQ rounding: H = Σ + percdamp·mean(diag Σ)·I, ×10 on Cholesky failure
  bool act_order = false;       // GPTQ rounding in decreasing diag(Σ) order (the grid is fixed: no g_idx)
  int64_t blocksize = 128;      // GPTQ lazy batch
  int pgd_steps = 200;          // iters_before_round (methods.md#decoupleq-pgd): projected Adam steps before rounding
  int pgd_inner_steps = 5;      // inner_iters_for_round (methods.md#decoupleq-pgd): steps after each column is frozen
  double pgd_lr = 0.02;         // Adam step in code units (the box is [0, maxq])
  double min_improved = 1e-4;   // stop when fewer than this fraction of rows improved in a round (0.01 %)
};

struct AltMinStep {
  std::string name;           // init_rtn, init_gptq, shrink_search, gptq | pgd, float
  double loss = 0;            // layer loss after the step
  int64_t rows_improved = 0;  // rows the step changed (each strictly lowered its loss)
};

struct AltMinResult {
  QuantizedLinear q;                  // float_zero grid; q.dequantize() is the Ŵ of history.back()
  std::vector<double> history;        // layer loss Σ_rows (w − ŵ)Σ(w − ŵ)ᵀ after the init and after each round
  std::vector<double> rows_improved;  // per history entry: fraction of rows whose loss dropped in it
  std::vector<AltMinStep> steps;      // every step in order
  int iters = 0;                      // iterations done (= history.size(); < opt.iters after an early stop)
  int64_t damped_rows = 0;            // float-step row solves that needed damping (singular normal equations)
};

AltMinResult alt_min(const Tensor& W, const Tensor& Sigma, const GridSpec& spec, const AltMinOptions& opt = {},
                     const SolverLog& log = nullptr);
AltMinResult alt_min(const LayerProblem& p, const GridSpec& spec, const AltMinOptions& opt = {}, const SolverLog& log = nullptr);

// ---- building blocks (exposed for tests) ----

// ℓ_i = (w_i − ŵ_i) Σ (w_i − ŵ_i)ᵀ per row, f64 with Σ's symmetric part (the rows of objective()).
std::vector<double> alt_min_row_losses(const Tensor& W, const Tensor& What, const Tensor& Sigma);

// The float step alone (methods.md#decoupleq-float): with codes [rows, cols] (u8, 0..maxq) fixed,
// per row the (s, z) of every group minimizing ℓ_i for ŵ_j = s_g·code_j + z_g (sym:
// ŵ_j = s_g·(code_j − (maxq+1)/2), z_g = −s_g·(maxq+1)/2). f64 normal equations (2G×2G, G groups
// per row); a parameter the loss does not see (its diagonal is 0) is NaN; singular systems are
// damped (counted in damped_rows).
struct AffineFit {
  int64_t rows = 0, ngroups = 0;
  std::vector<double> s, z;  // [rows × ngroups], row-major
  int64_t damped_rows = 0;
};
AffineFit alt_min_fit_affine(const Tensor& W, const Tensor& Sigma, const Tensor& codes, const GridSpec& spec);

}  // namespace qf
