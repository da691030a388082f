// qforge — CVXQ's per-layer pieces (docs/methods.md#cvxq) other than the solvers: row clustering,
// group weight spread, bias correction. Bit allocation itself is cvxq_dual_ascent.h; the companded
// quantizer is a grid kind (grid.h); gradient statistics come from the backward pass.
#pragma once
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace qf {

// "Regroup": sort rows by score_i (= log₂ Var(W_i,:) + log₂ Ḡ²_i) and split the order into
// `nclusters` equal consecutive chunks (the first rows % nclusters chunks one row longer).
// Returns the 0-based row group of every row. Ties keep row order (stable sort).
std::vector<int32_t> row_clusters(const std::vector<double>& score, int64_t nclusters);

// log₂ of the row variance of W [rows, cols] (population variance; −inf for a constant row).
std::vector<double> row_log2_variance(const Tensor& W);

// σ²_g of every (row group, column group): mean over the group's weights of (w − median_g)².
// Groups as in grid.h: `group` consecutive columns (−1: whole rows), row_group (empty: each row
// its own). Returns [nrowgroups × ngroups], row-major.
std::vector<double> group_spread(const Tensor& W, const std::vector<int32_t>& row_group, int64_t nrowgroups,
                                 int64_t group);

// The mean of M's entries over every (row group, column group), same layout and result shape as
// group_spread: CVXQ's G²_g from a per-weight squared-gradient mean (sensitivity.h). f64 sums.
std::vector<double> group_mean(const Tensor& M, const std::vector<int32_t>& row_group, int64_t nrowgroups, int64_t group);

// Bias correction (methods.md#bias-correction): b' = b − (Ŵ − W) μ_x, so the layer's mean output on
// the calibration inputs is unchanged. bias may be undefined (treated as 0: the linear gains a
// bias). f64 sums.
Tensor bias_correction(const Tensor& W, const Tensor& What, const Tensor& mu, const Tensor& bias);

}  // namespace qf
