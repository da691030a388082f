// qforge — small least-squares solves shared by the scale refits (decoupleQ's float step,
// refit_scales): the normal equations M θ = b of one row, f64.
#pragma once
#include <Eigen/Dense>

namespace qf {

// Solves M θ = b (M symmetric positive semi-definite). Parameters whose diagonal is 0 (the loss
// does not see them: a dead group, or all codes of an s at its zero) stay NaN. The active block is
// Jacobi-scaled to a unit diagonal; if its Cholesky fails or has a pivot² ≤ 1e-10 (collinear
// columns, e.g. a group whose codes are all equal), λ·I is added with λ = 0.01, ×10 per retry.
// Returns false if no solve succeeded; *damped is set when λ > 0 was needed.
bool solve_normal_equations(const Eigen::MatrixXd& M, const Eigen::VectorXd& b, Eigen::VectorXd& theta, bool* damped);

}  // namespace qf
