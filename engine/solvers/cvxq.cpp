#include "solvers/cvxq.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace qf {

std::vector<int32_t> row_clusters(const std::vector<double>& score, int64_t nclusters) {
  const int64_t n = (int64_t)score.size();
  if (n == 0) fail("row_clusters: no rows");
  if (nclusters < 1 || nclusters > n) fail("row_clusters: nclusters must be in 1..", n, " (the number of rows), got ", nclusters);
  for (int64_t i = 0; i < n; ++i)
    if (std::isnan(score[(size_t)i])) fail("row_clusters: score of row ", i + 1, " is NaN");
  std::vector<int64_t> order((size_t)n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return score[(size_t)a] < score[(size_t)b]; });
  std::vector<int32_t> rg((size_t)n);
  const int64_t base = n / nclusters, extra = n % nclusters;
  int64_t at = 0;
  for (int64_t k = 0; k < nclusters; ++k) {
    const int64_t len = base + (k < extra ? 1 : 0);
    for (int64_t t = 0; t < len; ++t) rg[(size_t)order[(size_t)(at + t)]] = (int32_t)k;
    at += len;
  }
  return rg;
}

std::vector<double> row_log2_variance(const Tensor& W_) {
  if (W_.dim() != 2) fail("row_log2_variance: expected a 2-d weight, got ", shape_str(W_.shape()));
  const Tensor W = W_.contiguous();
  const int64_t r = W.size(0), c = W.size(1);
  std::vector<double> out((size_t)r);
  for (int64_t i = 0; i < r; ++i) {
    const float* w = W.f32() + i * c;
    double m = 0, v = 0;
    for (int64_t j = 0; j < c; ++j) m += w[j];
    m /= (double)c;
    for (int64_t j = 0; j < c; ++j) v += ((double)w[j] - m) * ((double)w[j] - m);
    out[(size_t)i] = std::log2(v / (double)c);
  }
  return out;
}

// Checks a (row group × column group) layout against a [r, c] matrix; returns {G, ng, nrg}.
static std::array<int64_t, 3> group_layout(const char* fn, int64_t r, int64_t c, const std::vector<int32_t>& row_group,
                                           int64_t nrowgroups, int64_t group) {
  if (group == 0 || group < -1) fail(fn, ": group must be -1 or >= 1, got ", group);
  const int64_t G = group > 0 ? group : c, ng = (c + G - 1) / G;
  const int64_t nrg = row_group.empty() ? r : nrowgroups;
  if (!row_group.empty()) {
    if ((int64_t)row_group.size() != r) fail(fn, ": row_group has ", row_group.size(), " entries, the weight has ", r, " rows");
    for (int32_t k : row_group)
      if (k < 0 || k >= nrg) fail(fn, ": row group ", k + 1, " outside 1..", nrg);
  }
  return {G, ng, nrg};
}

std::vector<double> group_spread(const Tensor& W_, const std::vector<int32_t>& row_group, int64_t nrowgroups, int64_t group) {
  const char* fn = "group_spread";
  if (W_.dim() != 2) fail(fn, ": expected a 2-d weight, got ", shape_str(W_.shape()));
  const Tensor W = W_.contiguous();
  const int64_t r = W.size(0), c = W.size(1);
  const auto [G, ng, nrg] = group_layout(fn, r, c, row_group, nrowgroups, group);
  std::vector<std::vector<float>> cells((size_t)(nrg * ng));
  for (int64_t i = 0; i < r; ++i) {
    const int64_t k = row_group.empty() ? i : row_group[(size_t)i];
    for (int64_t j = 0; j < c; ++j) cells[(size_t)(k * ng + j / G)].push_back(W.f32()[i * c + j]);
  }
  std::vector<double> out(cells.size(), 0.0);
  for (size_t p = 0; p < cells.size(); ++p) {
    std::vector<float>& v = cells[p];
    if (v.empty()) continue;
    std::vector<float> tmp = v;
    const size_t mid = (tmp.size() - 1) / 2;  // lower median, as the grid's
    std::nth_element(tmp.begin(), tmp.begin() + (ptrdiff_t)mid, tmp.end());
    const double m = tmp[mid];
    double s = 0;
    for (float x : v) s += ((double)x - m) * ((double)x - m);
    out[p] = s / (double)v.size();
  }
  return out;
}

std::vector<double> group_mean(const Tensor& M_, const std::vector<int32_t>& row_group, int64_t nrowgroups, int64_t group) {
  const char* fn = "group_mean";
  if (M_.dim() != 2) fail(fn, ": expected a 2-d tensor, got ", shape_str(M_.shape()));
  const Tensor M = M_.contiguous();
  const int64_t r = M.size(0), c = M.size(1);
  const auto [G, ng, nrg] = group_layout(fn, r, c, row_group, nrowgroups, group);
  std::vector<double> sum((size_t)(nrg * ng), 0.0), cnt(sum.size(), 0.0);
  for (int64_t i = 0; i < r; ++i) {
    const int64_t k = row_group.empty() ? i : row_group[(size_t)i];
    for (int64_t j = 0; j < c; ++j) {
      sum[(size_t)(k * ng + j / G)] += M.f32()[i * c + j];
      cnt[(size_t)(k * ng + j / G)] += 1;
    }
  }
  for (size_t p = 0; p < sum.size(); ++p) sum[p] = cnt[p] > 0 ? sum[p] / cnt[p] : 0.0;
  return sum;
}

Tensor bias_correction(const Tensor& W_, const Tensor& What_, const Tensor& mu_, const Tensor& bias) {
  const char* fn = "bias_correction";
  if (W_.dim() != 2 || What_.shape() != W_.shape())
    fail(fn, ": W ", shape_str(W_.shape()), " and Ŵ ", shape_str(What_.shape()), " must be the same 2-d shape");
  const int64_t r = W_.size(0), c = W_.size(1);
  if (mu_.numel() != c) fail(fn, ": μ_x has ", mu_.numel(), " entries, the layer has ", c, " inputs");
  if (bias.defined() && bias.numel() != r) fail(fn, ": bias has ", bias.numel(), " entries, the layer has ", r, " outputs");
  const Tensor W = W_.contiguous(), What = What_.contiguous(), mu = mu_.contiguous();
  Tensor out = Tensor::empty({r});
  const std::vector<float> b0 = bias.defined() ? bias.contiguous().to_vector() : std::vector<float>((size_t)r, 0.f);
  for (int64_t i = 0; i < r; ++i) {
    double d = 0;
    for (int64_t j = 0; j < c; ++j) d += ((double)What.f32()[i * c + j] - W.f32()[i * c + j]) * mu.f32()[j];
    out.f32()[i] = (float)(b0[(size_t)i] - d);
    if (!std::isfinite(out.f32()[i])) fail(fn, ": corrected bias of output ", i + 1, " is not finite");
  }
  return out;
}

}  // namespace qf
