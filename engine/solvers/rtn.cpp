#include "solvers/rtn.h"

namespace qf {

// RTN (docs/methods.md#rtn): fit the grid (methods.md#grid) on W itself, then every weight to its
// nearest grid value.
QuantizedLinear rtn(const Tensor& W, const GridSpec& spec, const float* importance) {
  if (!W.defined() || W.dim() != 2) fail("rtn: expected a 2-d weight, got ", W.defined() ? shape_str(W.shape()) : std::string("undefined"));
  const Grid g = grid_fit(W, spec, importance);
  return quantize_to_grid(W, g);
}

}  // namespace qf
