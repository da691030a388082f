#include "quant/kquant.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/half.h"

namespace qf {

// The table (bytes per super-block: 84, 110, 144, 176, 210).
static const KQuantLayout kLayouts[] = {
    {KQuantType::Q2_K, "Q2_K", 2, 16, 0, 15, 15, 0, 84 * 8 / 256.0},
    {KQuantType::Q3_K, "Q3_K", 3, 16, -32, 31, 0, 4, 110 * 8 / 256.0},
    {KQuantType::Q4_K, "Q4_K", 4, 32, 0, 63, 63, 0, 144 * 8 / 256.0},
    {KQuantType::Q5_K, "Q5_K", 5, 32, 0, 63, 63, 0, 176 * 8 / 256.0},
    {KQuantType::Q6_K, "Q6_K", 6, 16, -128, 127, 0, 32, 210 * 8 / 256.0},
};

const KQuantLayout& kquant_layout(KQuantType t) {
  const int i = (int)t - 1;  // the table is in enum order
  if (i < 0 || i >= (int)(sizeof kLayouts / sizeof kLayouts[0])) fail("kquant: no layout for type ", (int)t);
  return kLayouts[i];
}

bool kquant_from_name(const std::string& name, KQuantType* t) {
  std::string u = name;
  std::transform(u.begin(), u.end(), u.begin(), [](unsigned char c) { return (char)std::toupper(c); });
  for (const KQuantLayout& L : kLayouts)
    if (u == L.name) {
      *t = L.type;
      return true;
    }
  return false;
}

// ggml's nearest_int: round half to even (the FPU's mode), for |v| < 2^22.
static int nearest_int(float v) { return (int)std::nearbyint(v); }
static float f16r(float v) { return f16_to_f32(f32_to_f16(v)); }

int kquant_code(const KQuantLayout& L, float x, float s, float z) {
  const int maxq = (1 << L.bits) - 1;
  if (s == 0.f) return L.has_min() ? 0 : (int)z;  // every code has the same value
  const int l = L.has_min() ? nearest_int((x + z) / s) : nearest_int(x / s) + (int)z;
  return std::clamp(l, 0, maxq);
}

// ---- llama.cpp's sub-block searches (docs/methods.md#kquant-grids) ------------------------------

// Weighted least-squares scale and min (x ≈ scale·L + min, min <= 0) over codes 0..nmax: the
// min/max mapping, then nstep + 1 trial inverse scales (rmin + rdelta·is + nmax)/(max − min),
// each with its codes' LS fit, keeping the least Σ w·|err|^(1 or 2). Returns the scale; *the_min
// = −min >= 0. (make_qkx2_quants.)
static float search_scale_min(int n, int nmax, const float* x, const float* w, float* the_min, float rmin, float rdelta, int nstep,
                              bool use_mad) {
  float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    min = std::min(min, x[i]);
    max = std::max(max, x[i]);
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    *the_min = -min;
    return 0.f;
  }
  float iscale = nmax / (max - min), scale = 1 / iscale, best_error = 0;
  auto err = [&](float d) { return use_mad ? std::fabs(d) : d * d; };
  for (int i = 0; i < n; ++i) {
    const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
    best_error += w[i] * err(scale * l + min - x[i]);
  }
  std::vector<int> Laux((size_t)n);
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * is + nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      Laux[i] = l;
      sum_l += w[i] * l;
      sum_l2 += w[i] * l * l;
      sum_xl += w[i] * l * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float cur_error = 0;
      for (int i = 0; i < n; ++i) cur_error += w[i] * err(this_scale * Laux[i] + this_min - x[i]);
      if (cur_error < best_error) {
        best_error = cur_error;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Signed scale of a symmetric sub-block with codes −nmax..nmax−1: the signed extreme on −nmax,
// then the LS scale for the codes of 18 trial inverse scales −(nmax + 0.1·is)/max, weights w
// (nullptr: x², llama.cpp's rmse_type 1). (make_qx_quants.)
static float search_scale_sym(int n, int nmax, const float* x, const float* w) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  if (amax < 1e-15f) return 0.f;
  auto wt = [&](int i) { return w ? w[i] : x[i] * x[i]; };
  auto fit = [&](float iscale, float* sumlx, float* suml2) {
    *sumlx = *suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
      *sumlx += wt(i) * x[i] * l;
      *suml2 += wt(i) * l * l;
    }
  };
  float sumlx, suml2;
  fit(-nmax / max, &sumlx, &suml2);
  float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    fit(-(nmax + 0.1f * is) / max, &sumlx, &suml2);
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q3_K's sub-block scale: codes −nmax..nmax−1 from the signed extreme, then up to 5 passes of
// per-weight code moves that raise (Σwxl)²/Σwl² (w = x²). (make_q3_quants with rmse.)
static float search_scale_q3(int n, int nmax, const float* x) {
  float max = 0, amax = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) {
      amax = std::fabs(x[i]);
      max = x[i];
    }
  if (amax < 1e-15f) return 0.f;
  const float iscale = -nmax / max;
  std::vector<int> L((size_t)n);
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    const float w = x[i] * x[i];
    sumlx += w * x[i] * L[i];
    suml2 += w * L[i] * L[i];
  }
  for (int itry = 0; itry < 5; ++itry) {
    int n_changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0) {
        float sl2 = suml2 - w * L[i] * L[i];
        const int new_l = std::clamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (new_l != L[i]) {
          slx += w * x[i] * new_l;
          sl2 += w * new_l * new_l;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = new_l;
            sumlx = slx;
            suml2 = sl2;
            ++n_changed;
          }
        }
      }
    }
    if (!n_changed) break;
  }
  return suml2 > 0 ? sumlx / suml2 : 0.f;
}

// ---- super-block fit ------------------------------------------------------------------------------

// Σ w·(x − Q(x))² of sub-block k at (d·sc, dmin·mn), codes recomputed (f64 sum).
static double sub_error(const KQuantLayout& L, const float* x, const float* w, float d, float dmin, int sc, int mn) {
  const float s = d * (float)sc, z = L.has_min() ? dmin * (float)mn : (float)L.zero;
  double e = 0;
  for (int i = 0; i < L.sub; ++i) {
    const double r = (double)kquant_value(L, kquant_code(L, x[i], s, z), s, z) - x[i];
    e += (w ? (double)w[i] : 1.0) * r * r;
  }
  return e;
}

// The sub-block scales (and mins) onto integers: d = fp16(max / top) where `max` is the largest
// scale (signed extreme for signed scales: it lands on sc_lo), sc_k = round(s_k / d) clamped —
// llama.cpp's rule (inverse scale top / max, nearest integer, clamp).
static void map_scales(const KQuantLayout& L, const float* s, int n, int* out, float* d, float scale_mult) {
  if (L.sc_lo < 0) {  // signed (Q3_K: −32/max, Q6_K: −128/max)
    float amax = 0, max = 0;
    for (int k = 0; k < n; ++k)
      if (std::fabs(s[k]) > amax) {
        amax = std::fabs(s[k]);
        max = s[k];
      }
    if (amax < 1e-15f || max == 0.f) {
      std::fill(out, out + n, 0);
      *d = 0.f;
      return;
    }
    const float iscale = (float)L.sc_lo / max * scale_mult;
    for (int k = 0; k < n; ++k) out[k] = std::clamp(nearest_int(iscale * s[k]), L.sc_lo, L.sc_hi);
    *d = f16r(1 / iscale);
    return;
  }
  float max = 0;
  for (int k = 0; k < n; ++k) max = std::max(max, s[k]);
  if (!(max > 0)) {
    std::fill(out, out + n, 0);
    *d = 0.f;
    return;
  }
  const float top = (float)L.sc_hi, inv = top / max * scale_mult;
  for (int k = 0; k < n; ++k) out[k] = std::min(L.sc_hi, std::max(0, nearest_int(inv * s[k])));
  *d = f16r(max / top / scale_mult);
}

static void fit_superblock(const KQuantLayout& L, const float* x, const float* w, float* d, float* dmin, int* sc, int* mn);

void kquant_fit_superblock(const KQuantLayout& L, const float* x, const float* w, float* d, float* dmin, int* sc, int* mn) {
  fit_superblock(L, x, w, d, dmin, sc, mn);
  if (!w) return;
  // The unweighted reference mapping is a candidate too: the weighted fit never scores worse.
  const int ns = L.nsub();
  float d0, dm0;
  std::vector<int> s0((size_t)ns), m0((size_t)ns);
  fit_superblock(L, x, nullptr, &d0, &dm0, s0.data(), m0.data());
  double e = 0, e0 = 0;
  for (int k = 0; k < ns; ++k) {
    e += sub_error(L, x + k * L.sub, w + k * L.sub, *d, *dmin, sc[k], mn[k]);
    e0 += sub_error(L, x + k * L.sub, w + k * L.sub, d0, dm0, s0[k], m0[k]);
  }
  if (e0 < e) {
    *d = d0;
    *dmin = dm0;
    std::copy(s0.begin(), s0.end(), sc);
    std::copy(m0.begin(), m0.end(), mn);
  }
}

static void fit_superblock(const KQuantLayout& L, const float* x, const float* w, float* d, float* dmin, int* sc, int* mn) {
  const int ns = L.nsub(), nmax = (1 << L.bits) - 1;
  std::vector<float> scales((size_t)ns), mins((size_t)ns, 0.f), wt((size_t)L.sub);
  for (int k = 0; k < ns; ++k) {
    const float* xs = x + k * L.sub;
    const float* ws = w ? w + k * L.sub : nullptr;
    switch (L.type) {
      case KQuantType::Q2_K:  // weights |x|
        for (int i = 0; i < L.sub; ++i) wt[i] = ws ? ws[i] : std::fabs(xs[i]);
        scales[k] = ws ? search_scale_min(L.sub, nmax, xs, wt.data(), &mins[k], -0.9f, 0.05f, 36, false)
                       : search_scale_min(L.sub, nmax, xs, wt.data(), &mins[k], -0.5f, 0.1f, 15, true);
        break;
      case KQuantType::Q4_K:
      case KQuantType::Q5_K: {  // weights av_x + |x|, av_x the sub-block's RMS
        float sum_x2 = 0;
        for (int i = 0; i < L.sub; ++i) sum_x2 += xs[i] * xs[i];
        const float av_x = std::sqrt(sum_x2 / (float)L.sub);
        for (int i = 0; i < L.sub; ++i) wt[i] = ws ? ws[i] : av_x + std::fabs(xs[i]);
        if (ws) scales[k] = search_scale_min(L.sub, nmax, xs, wt.data(), &mins[k], -0.9f, 0.05f, 36, false);
        else if (L.type == KQuantType::Q4_K) scales[k] = search_scale_min(L.sub, nmax, xs, wt.data(), &mins[k], -1.f, 0.1f, 20, false);
        else scales[k] = search_scale_min(L.sub, nmax, xs, wt.data(), &mins[k], -0.5f, 0.1f, 15, false);
        break;
      }
      case KQuantType::Q3_K:
        scales[k] = ws ? search_scale_sym(L.sub, 4, xs, ws) : search_scale_q3(L.sub, 4, xs);
        break;
      case KQuantType::Q6_K:
        scales[k] = search_scale_sym(L.sub, 32, xs, ws);
        break;
      case KQuantType::None:
        fail("kquant: no type");
    }
  }
  map_scales(L, scales.data(), ns, sc, d, 1.f);
  *dmin = 0.f;
  if (L.has_min()) {
    std::vector<int> m((size_t)ns);
    map_scales(L, mins.data(), ns, m.data(), dmin, 1.f);
    std::copy(m.begin(), m.end(), mn);
  } else {
    std::fill(mn, mn + ns, 0);
  }
  if (!w) return;  // llama.cpp's reference mapping

  // Importance-weighted: search (d, dmin) multipliers 1 + t/32, t = −3..3, then (sc, mn) ±1 per
  // sub-block; every candidate scored with its codes recomputed.
  auto total = [&](float dd, float dm, const int* s, const int* m) {
    double e = 0;
    for (int k = 0; k < ns; ++k) e += sub_error(L, x + k * L.sub, w + k * L.sub, dd, dm, s[k], m[k]);
    return e;
  };
  double best = total(*d, *dmin, sc, mn);
  std::vector<int> s1((size_t)ns), m1((size_t)ns, 0);
  const int tm = L.has_min() ? 3 : 0;
  for (int t = -3; t <= 3; ++t)
    for (int u = -tm; u <= tm; ++u) {
      if (t == 0 && u == 0) continue;
      float d1, dm1 = 0.f;
      map_scales(L, scales.data(), ns, s1.data(), &d1, 1.f + (float)t / 32.f);
      if (L.has_min()) map_scales(L, mins.data(), ns, m1.data(), &dm1, 1.f + (float)u / 32.f);
      const double e = total(d1, dm1, s1.data(), m1.data());
      if (e < best) {
        best = e;
        *d = d1;
        *dmin = dm1;
        std::copy(s1.begin(), s1.end(), sc);
        std::copy(m1.begin(), m1.end(), mn);
      }
    }
  for (int k = 0; k < ns; ++k) {
    const float* xs = x + k * L.sub;
    const float* ws = w + k * L.sub;
    double eb = sub_error(L, xs, ws, *d, *dmin, sc[k], mn[k]);
    const int s0 = sc[k], m0 = mn[k];
    for (int a = -1; a <= 1; ++a)
      for (int b = -tm / 3; b <= tm / 3; ++b) {
        const int sa = s0 + a, mb = m0 + b;
        if ((a == 0 && b == 0) || sa < L.sc_lo || sa > L.sc_hi || mb < 0 || mb > L.mn_hi) continue;
        const double e = sub_error(L, xs, ws, *d, *dmin, sa, mb);
        if (e < eb) {
          eb = e;
          sc[k] = sa;
          mn[k] = mb;
        }
      }
  }
}

}  // namespace qf
