// qforge — outlier-aware QuantEase: a quantized dense part plus a sparse full-precision
// outlier matrix Hs, by CD sweeps alternating with iterative hard thresholding (§5).
#pragma once
#include "grid.h"
#include "layer_problem.h"

namespace qf {

struct IhtOptions {
  int64_t k = 0;            // entries (or columns when structured) to keep
  double alpha = 1.0;       // step α/(2 λmax(Σ))
  bool structured = false;  // keep whole input columns by L2 norm
  double lambda_max = 0;    // λmax(Σ) if known (0: computed by power iteration)
};

// Hs ← P_k(Hs − η (Ŵ + Hs − W) Σ), η = α/(2 λmax(Σ)). Updates Hs [rows, cols] in place.
void iht_step(const Tensor& W, const Tensor& Sigma, const Tensor& What, Tensor& Hs, const IhtOptions& opt);

// Largest eigenvalue of a symmetric PSD matrix (power iteration, f64).
double lambda_max(const Tensor& Sigma, int iters = 100);

struct OutlierOptions {
  double ratio = 0.005;     // fraction of entries (unstructured) or of columns (structured)
  bool structured = false;
  int iters = 30;
  double alpha = 1.0;
  int continuous_every = 3;
};

struct OutlierResult {
  QuantizedLinear q;  // dense part on the grid, outliers in q.outliers (Ŵ + Hs = q.dequantize())
  std::vector<double> objective;
};

OutlierResult quantease_outliers(const Tensor& W, const Tensor& Sigma, const GridSpec& spec,
                                 const OutlierOptions& opt = {}, const SolverLog& log = nullptr);

}  // namespace qf
