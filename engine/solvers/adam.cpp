#include "solvers/adam.h"

#include <cmath>

#include "core/error.h"

namespace qf {

void AdamOptions::validate() const {
  if (!std::isfinite(lr) || lr < 0) fail("adam: lr must be a finite number >= 0, got ", lr);
  if (!std::isfinite(beta1) || beta1 < 0 || beta1 >= 1) fail("adam: beta1 must be in [0, 1), got ", beta1);
  if (!std::isfinite(beta2) || beta2 < 0 || beta2 >= 1) fail("adam: beta2 must be in [0, 1), got ", beta2);
  if (!std::isfinite(eps) || !(eps > 0)) fail("adam: eps must be a finite number > 0, got ", eps);
  if (!std::isfinite(weight_decay) || weight_decay < 0) fail("adam: weight_decay must be a finite number >= 0, got ", weight_decay);
}

Adam::Adam(size_t n, const AdamOptions& opt) : opt_(opt), m_(n, 0.0), v_(n, 0.0) { opt_.validate(); }

void Adam::step(std::vector<float>& p, const std::vector<double>& g) {
  if (p.size() != m_.size() || g.size() != m_.size())
    fail("adam: optimizer holds ", m_.size(), " parameters, got ", p.size(), " parameters and ", g.size(), " gradients");
  step(p.data(), g.data());
}

void Adam::step(float* p, const double* g) {
  ++t_;
  const double b1 = opt_.beta1, b2 = opt_.beta2;
  const double c1 = 1.0 - std::pow(b1, (double)t_), c2 = 1.0 - std::pow(b2, (double)t_);
  const size_t n = m_.size();
  for (size_t i = 0; i < n; ++i) {
    const double gi = g[i] + opt_.weight_decay * (double)p[i];
    m_[i] = b1 * m_[i] + (1.0 - b1) * gi;
    v_[i] = b2 * v_[i] + (1.0 - b2) * gi * gi;
    if (opt_.lr == 0.0) continue;
    const double upd = opt_.lr * (m_[i] / c1) / (std::sqrt(v_[i] / c2) + opt_.eps);
    p[i] = (float)((double)p[i] - upd);
  }
}

}  // namespace qf
