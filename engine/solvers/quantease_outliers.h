// qforge — outlier-aware QuantEase: a quantized dense part plus a sparse full-precision
// outlier matrix Hs, by CD sweeps alternating with iterative hard thresholding
// (docs/methods.md#outliers).
#pragma once
#include "quant/grid.h"
#include "quant/layer_problem.h"

namespace qf {

struct IhtOptions {
  int64_t k = 0;            // entries (or columns when structured) to keep
  double alpha = 1.0;       // step α/(2 λmax(Σ))
  bool structured = false;  // keep whole input columns by L2 norm
  double lambda_max = 0;    // λmax(Σ) if known (0: computed by power iteration)
};

// Hs ← P_k(Hs − η (Ŵ + Hs − W) Σ), η = α/(2 λmax(Σ)). Updates Hs [rows, cols] in place.
// P_k keeps exactly k entries (structured: k columns); ties go to the lower row-major index
// (column index). λmax(Σ) = 0 (Σ = 0) skips the gradient step.
void iht_step(const Tensor& W, const Tensor& Sigma, const Tensor& What, Tensor& Hs, const IhtOptions& opt);
void iht_step(const LayerProblem& p, const Tensor& What, Tensor& Hs, const IhtOptions& opt);  // W, Σ validated

// Largest eigenvalue of a symmetric PSD matrix (power iteration, f64).
double lambda_max(const Tensor& Sigma, int iters = 100);

// s = round(rows·cols·ratio) entries (structured: round(cols·ratio) columns). Init: Hs = the s
// largest |w| (structured: largest-norm columns), Ŵ = W − Hs. Dense grid: unstructured — per
// (row, group) range with the round(width·ratio/2) smallest and largest values excluded;
// structured — per (row, group) min/max over the non-outlier columns, refitted from the current
// outlier columns before every sweep. spec.mse is not applied (logged). Iteration = one cd_sweep
// (target W − Hs, quantease's continuous schedule for init "w") + one iht_step with λmax computed once.
struct OutlierOptions {
  double ratio = 0.005;     // fraction of entries (unstructured) or of columns (structured)
  bool structured = false;
  int iters = 30;
  double alpha = 1.0;
  int continuous_every = 3;
};

struct OutlierResult {
  QuantizedLinear q;  // dense part on the grid, outliers in q.outliers (Ŵ + Hs = q.dequantize())
  std::vector<double> objective;  // objective() of Ŵ + Hs after every iteration
};

OutlierResult quantease_outliers(const Tensor& W, const Tensor& Sigma, const GridSpec& spec,
                                 const OutlierOptions& opt = {}, const SolverLog& log = nullptr);
OutlierResult quantease_outliers(const LayerProblem& p, const GridSpec& spec, const OutlierOptions& opt = {},
                                 const SolverLog& log = nullptr);

}  // namespace qf
