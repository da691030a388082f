// qforge — a mixture-of-experts model made from a dense one (docs/architecture.md#mixture-of-experts):
// each block's SwiGLU FFN of width H split into E experts of H/E contiguous hidden units
// (MoEfication, arXiv:2110.01786, with contiguous groups instead of its clustering). The experts'
// outputs sum to the dense FFN's, so with every expert used (used = E) and a zero router (uniform
// weights 1/E, each expert's down scaled by E) the MoE computes the dense function; with used < E
// the router — row e = router_scale · the mean of expert e's gate rows, a linear guess of which
// experts' units fire — picks `used` experts and each down is scaled by `used` (weights ≈ 1/used
// when router_scale is small). A Mixtral-architecture model (llama attention, renormalized top-k):
// a small, real-weight MoE for tests and calibration studies, loadable by transformers.
#pragma once
#include "model/model.h"

namespace qf {

struct MoeFromDenseOptions {
  int experts = 8;
  int used = 2;
  float router_scale = 1e-2f;  // 0: a zero router (uniform weights; ties go to the lower experts)
};

// Refuses (naming the field) a non-llama model, a width not divisible by `experts`, FFN biases,
// used outside 1..experts.
Model moe_from_dense(const Model& dense, const MoeFromDenseOptions& o);

}  // namespace qf
