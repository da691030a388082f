// qforge tests — an f64 reference of the Llama block's ops (RMSNorm, linear, RoPE, causal GQA
// attention, SwiGLU), written from the formulas for finite-difference and parity checks.
// Activations are row-major [rows, width] vectors of doubles; row r is position r % T.
#pragma once
#include <algorithm>
#include <cmath>
#include <vector>

#include "core/tensor.h"

namespace qf::test {

using Vec = std::vector<double>;

inline Vec to_vec(const Tensor& t) {
  const std::vector<float> f = t.contiguous().to_vector();
  return Vec(f.begin(), f.end());
}

inline Vec ref_rmsnorm(const Vec& x, const Vec& g, double eps) {
  const size_t D = g.size(), N = x.size() / D;
  Vec y(x.size());
  for (size_t i = 0; i < N; ++i) {
    double ss = 0;
    for (size_t j = 0; j < D; ++j) ss += x[i * D + j] * x[i * D + j];
    const double inv = 1.0 / std::sqrt(ss / D + eps);
    for (size_t j = 0; j < D; ++j) y[i * D + j] = g[j] * x[i * D + j] * inv;
  }
  return y;
}

// y = x Wᵀ + b, W [out, in] row-major, b empty or [out]
inline Vec ref_linear(const Vec& x, const Vec& w, const Vec& b, int out, int in) {
  const size_t N = x.size() / in;
  Vec y(N * out);
  for (size_t n = 0; n < N; ++n)
    for (int o = 0; o < out; ++o) {
      double s = b.empty() ? 0.0 : b[o];
      for (int i = 0; i < in; ++i) s += x[n * in + i] * w[(size_t)o * in + i];
      y[n * out + o] = s;
    }
  return y;
}

// RoPE on every head of x [rows, H·hd] at position r % T: pairs (2i, 2i+1) when interleaved,
// else (i, i + hd/2); freq[i] per pair.
inline Vec ref_rope(Vec x, int H, int hd, int T, const Vec& freq, bool inter) {
  const size_t W = (size_t)H * hd, N = x.size() / W;
  for (size_t r = 0; r < N; ++r)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < hd / 2; ++i) {
        const double ang = (double)(r % T) * freq[i];
        double& a = x[r * W + h * hd + (inter ? 2 * i : i)];
        double& b = x[r * W + h * hd + (inter ? 2 * i + 1 : i + hd / 2)];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(ang) - b0 * std::sin(ang);
        b = a0 * std::sin(ang) + b0 * std::cos(ang);
      }
  return x;
}

// softmax(s) v with s = scale·q kᵀ (scale 0: 1/√hd), soft-capped s ← cap·tanh(s/cap) when
// cap > 0, causal, and with window > 0 only keys j > i − window; query head h reads kv head
// h / (H / KVH).
inline Vec ref_attention_ex(const Vec& q, const Vec& k, const Vec& v, int B, int T, int H, int KVH, int hd, int window,
                            double scale, double cap) {
  const int QW = H * hd, KW = KVH * hd;
  if (scale <= 0) scale = 1.0 / std::sqrt((double)hd);
  Vec out((size_t)B * T * QW);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int kh = h / (H / KVH);
      for (int i = 0; i < T; ++i) {
        const int j0 = window > 0 ? std::max(0, i - window + 1) : 0;
        Vec w(i + 1, 0.0);
        double mx = -1e300, sum = 0;
        for (int j = j0; j <= i; ++j) {
          double d = 0;
          for (int c = 0; c < hd; ++c) d += q[(size_t)(b * T + i) * QW + h * hd + c] * k[(size_t)(b * T + j) * KW + kh * hd + c];
          d *= scale;
          if (cap > 0) d = cap * std::tanh(d / cap);
          w[j] = d;
          mx = std::max(mx, d);
        }
        for (int j = j0; j <= i; ++j) sum += (w[j] = std::exp(w[j] - mx));
        for (int c = 0; c < hd; ++c) {
          double o = 0;
          for (int j = j0; j <= i; ++j) o += w[j] / sum * v[(size_t)(b * T + j) * KW + kh * hd + c];
          out[(size_t)(b * T + i) * QW + h * hd + c] = o;
        }
      }
    }
  return out;
}

inline Vec ref_geglu(const Vec& a, const Vec& u) {
  Vec h(a.size());
  const double c = std::sqrt(2.0 / 3.141592653589793238);
  for (size_t i = 0; i < a.size(); ++i) h[i] = 0.5 * a[i] * (1 + std::tanh(c * (a[i] + 0.044715 * a[i] * a[i] * a[i]))) * u[i];
  return h;
}

// softmax(q kᵀ/√hd) v, causal, query head h reading kv head h / (H / KVH).
inline Vec ref_attention(const Vec& q, const Vec& k, const Vec& v, int B, int T, int H, int KVH, int hd) {
  const int QW = H * hd, KW = KVH * hd;
  Vec out((size_t)B * T * QW);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int kh = h / (H / KVH);
      for (int i = 0; i < T; ++i) {
        Vec w(i + 1);
        double mx = -1e300, sum = 0;
        for (int j = 0; j <= i; ++j) {
          double d = 0;
          for (int c = 0; c < hd; ++c) d += q[(size_t)(b * T + i) * QW + h * hd + c] * k[(size_t)(b * T + j) * KW + kh * hd + c];
          w[j] = d / std::sqrt((double)hd);
          mx = std::max(mx, w[j]);
        }
        for (auto& e : w) sum += (e = std::exp(e - mx));
        for (int c = 0; c < hd; ++c) {
          double o = 0;
          for (int j = 0; j <= i; ++j) o += w[j] / sum * v[(size_t)(b * T + j) * KW + kh * hd + c];
          out[(size_t)(b * T + i) * QW + h * hd + c] = o;
        }
      }
    }
  return out;
}

inline Vec ref_swiglu(const Vec& a, const Vec& u) {
  Vec h(a.size());
  for (size_t i = 0; i < a.size(); ++i) h[i] = a[i] / (1 + std::exp(-a[i])) * u[i];
  return h;
}

}  // namespace qf::test
