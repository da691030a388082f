// qforge — round to nearest (docs/methods.md#rtn): every weight to its grid's nearest value.
#pragma once
#include "quant/grid.h"

namespace qf {

// Fits the grid on W and rounds; returns the quantized linear (dequantize() gives Ŵ).
// importance: W.size(1) column importances (diag Σ), needed when spec.importance is set.
QuantizedLinear rtn(const Tensor& W, const GridSpec& spec, const float* importance = nullptr);

}  // namespace qf
