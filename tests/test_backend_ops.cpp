// qforge tests — the backend seam (engine/backend/backend.h), op by op, the way ggml's
// test-backend-ops checks a backend: every op of the current backend against a naive f64
// reference written from the formula, on odd shapes that cross every chunk boundary of the CPU
// backend (GEMM rows 64 / outputs 32, Gram tokens 512 / rows 64, norm rows 64, attention query
// blocks 128, triangular-inverse blocks 128, GPTQ row chunks 256, CD blocks 256 / sub-blocks 32 /
// row chunks 256). The op tests check the backend named by QF_TEST_BACKEND (backend_under_test.h):
// ctest runs this binary once per backend built (test_backend_ops, test_backend_ops_thrust_omp,
// test_backend_ops_cuda — the last skipped without a GPU). A counting decorator proves that the
// forward, the backward, calibration, GPTQ and QuantEase reach the seam.
#include <omp.h>
#include <doctest/doctest.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "backend/backend.h"
#include "backend_under_test.h"
#include "calib/calibration.h"
#include "core/rng.h"
#include "layer_problems.h"
#include "model/backward.h"
#include "model/forward.h"
#include "quant/grid.h"
#include "ref_llama.h"
#include "solvers/gptq.h"
#include "solvers/quantease.h"
#include "tiny_model.h"

using namespace qf;
using namespace qf::test;

namespace {

std::vector<float> randv(Rng& g, int64_t n, double sd = 1.0) {
  std::vector<float> v((size_t)n);
  for (auto& e : v) e = (float)(sd * g.normal());
  return v;
}

// max |a − b| / (max |b| + tiny): one scale per array, so near-zero entries don't inflate it.
double rel_err(const std::vector<float>& a, const Vec& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs((double)a[i] - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / den;
}

Vec dvec(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

Backend& be() { return backend_under_test(); }

}  // namespace

TEST_CASE("backend: the current backend is the CPU backend unless set") {
  CHECK(std::string(backend().name()) == "cpu");
  CHECK(&backend() == &cpu_backend());
  CHECK(std::string(be().name()) == backend_under_test_name());  // the backend these tests check
}

TEST_CASE("backend gemm_rows: x·Wᵀ and x·W, written and accumulated, across 64-row chunks") {
  Rng g(1);
  for (const int64_t rows : {1, 63, 64, 65, 130, 300}) {
    const int64_t wr = 37, wc = 29;
    const auto w = randv(g, wr * wc);
    for (const bool tr : {true, false}) {
      const int64_t k = tr ? wc : wr, m = tr ? wr : wc;
      const auto x = randv(g, rows * k);
      const auto y0 = randv(g, rows * m);
      for (const bool acc : {false, true}) {
        std::vector<float> y = y0;
        be().gemm_rows(x.data(), rows, w.data(), wr, wc, tr, y.data(), acc);
        Vec ref((size_t)(rows * m));
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t o = 0; o < m; ++o) {
            double s = acc ? y0[(size_t)(i * m + o)] : 0.0;
            for (int64_t j = 0; j < k; ++j) s += (double)x[(size_t)(i * k + j)] * (tr ? w[(size_t)(o * wc + j)] : w[(size_t)(j * wc + o)]);
            ref[(size_t)(i * m + o)] = s;
          }
        CHECK(rel_err(y, ref) < 1e-5);
      }
    }
  }
}

// A batch is bit for bit its jobs run one after another through the single ops, on 1 and 2
// threads (the single ops are checked against f64 above).
TEST_CASE("backend gemm_rows_batch: q/k/v of one input and dx = Σ dy_i W_i, as separate calls") {
  Rng g(11);
  for (const int64_t rows : {1, 63, 64, 65, 130, 300}) {
    // three products of one x (x·Wᵢᵀ, different widths), then a sum of three into one y (dyᵢ·Wᵢ)
    const int64_t in = 29;
    const int64_t outs[3] = {37, 11, 64};
    std::vector<std::vector<float>> w, x2;
    for (const int64_t o : outs) w.push_back(randv(g, o * in));
    const auto x = randv(g, rows * in);
    for (const int64_t o : outs) x2.push_back(randv(g, rows * o));
    std::vector<std::vector<float>> ys(3), ys_ref(3);
    std::vector<float> dx = randv(g, rows * in), dx_ref = dx;
    for (int i = 0; i < 3; ++i) ys[i] = ys_ref[i] = randv(g, rows * outs[i]);
    for (int i = 0; i < 3; ++i) {
      be().gemm_rows(x.data(), rows, w[i].data(), outs[i], in, true, ys_ref[i].data(), i == 1);
      be().gemm_rows(x2[i].data(), rows, w[i].data(), outs[i], in, false, dx_ref.data(), i > 0);
    }
    for (const int threads : {1, 2}) {
      omp_set_num_threads(threads);
      auto y = ys;
      auto d = dx;
      std::vector<GemmRowsJob> fwd, bwd;
      for (int i = 0; i < 3; ++i) {
        fwd.push_back(GemmRowsJob{x.data(), w[i].data(), outs[i], in, true, y[i].data(), i == 1});
        bwd.push_back(GemmRowsJob{x2[i].data(), w[i].data(), outs[i], in, false, d.data(), i > 0});
      }
      be().gemm_rows_batch(rows, fwd.data(), 3);
      be().gemm_rows_batch(rows, bwd.data(), 3);
      CAPTURE(rows);
      CAPTURE(threads);
      for (int i = 0; i < 3; ++i) CHECK(y[i] == ys_ref[i]);
      CHECK(d == dx_ref);
    }
    omp_set_num_threads(omp_get_num_procs());
  }
}

TEST_CASE("backend gemm_tn_batch: the weight gradients of several linears, as separate calls") {
  Rng g(12);
  for (const int64_t rows : {1, 77, 600}) {
    const int64_t b_cols = 19;
    const int64_t a_cols[3] = {1, 33, 70};
    const auto b = randv(g, rows * b_cols);
    std::vector<std::vector<float>> a, c0, c_ref, cs_ref;
    for (const int64_t ac : a_cols) {
      a.push_back(randv(g, rows * ac));
      c0.push_back(randv(g, ac * b_cols));
      cs_ref.push_back(std::vector<float>((size_t)ac, -7.f));
    }
    c_ref = c0;
    for (int i = 0; i < 3; ++i)
      be().gemm_tn(a[i].data(), rows, a_cols[i], b.data(), b_cols, c_ref[i].data(), i == 2, i == 1 ? nullptr : cs_ref[i].data(), -1);
    for (const int threads : {1, 2}) {
      omp_set_num_threads(threads);
      auto c = c0;
      std::vector<std::vector<float>> cs(3);
      for (int i = 0; i < 3; ++i) cs[i].assign((size_t)a_cols[i], -7.f);
      std::vector<GemmTnJob> jobs;
      for (int i = 0; i < 3; ++i)
        jobs.push_back(GemmTnJob{a[i].data(), a_cols[i], b.data(), b_cols, c[i].data(), i == 2, i == 1 ? nullptr : cs[i].data()});
      be().gemm_tn_batch(rows, jobs.data(), 3);
      CAPTURE(rows);
      CAPTURE(threads);
      for (int i = 0; i < 3; ++i) {
        CHECK(c[i] == c_ref[i]);
        CHECK(cs[i] == cs_ref[i]);
      }
    }
    omp_set_num_threads(omp_get_num_procs());
  }
}

TEST_CASE("backend gemm_tn: aᵀb across 32-row output chunks, with the bias column sums") {
  Rng g(2);
  for (const int64_t a_cols : {1, 31, 32, 33, 70}) {
    const int64_t rows = 77, b_cols = 19;
    const auto a = randv(g, rows * a_cols), b = randv(g, rows * b_cols), c0 = randv(g, a_cols * b_cols);
    for (const bool acc : {false, true}) {
      std::vector<float> c = c0, colsum((size_t)a_cols, -7.f);
      be().gemm_tn(a.data(), rows, a_cols, b.data(), b_cols, c.data(), acc, colsum.data(), -1);
      Vec ref((size_t)(a_cols * b_cols)), refsum((size_t)a_cols, 0.0);
      for (int64_t o = 0; o < a_cols; ++o) {
        for (int64_t n = 0; n < rows; ++n) refsum[(size_t)o] += a[(size_t)(n * a_cols + o)];
        for (int64_t j = 0; j < b_cols; ++j) {
          double s = acc ? c0[(size_t)(o * b_cols + j)] : 0.0;
          for (int64_t n = 0; n < rows; ++n) s += (double)a[(size_t)(n * a_cols + o)] * b[(size_t)(n * b_cols + j)];
          ref[(size_t)(o * b_cols + j)] = s;
        }
      }
      CHECK(rel_err(c, ref) < 1e-5);
      CHECK(rel_err(colsum, refsum) < 1e-6);  // written, not accumulated onto the −7s
    }
  }
}

TEST_CASE("backend gram_accumulate: Σ += xᵀx and Σx in f64 across 512-token and 64-row blocks") {
  Rng g(3);
  const int64_t n = 1100, c = 70;
  const auto x = randv(g, n * c);
  Eigen::MatrixXd S = Eigen::MatrixXd::Constant(c, c, 0.25), ref = S;  // accumulated onto
  Eigen::VectorXd xs = Eigen::VectorXd::Constant(c, 1.0), xref = xs;
  be().gram_accumulate(x.data(), n, c, S.data(), xs.data());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < c; ++i) {
      xref(i) += x[(size_t)(t * c + i)];
      for (int64_t j = 0; j < c; ++j) ref(i, j) += (double)x[(size_t)(t * c + i)] * x[(size_t)(t * c + j)];
    }
  CHECK((S - ref).cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff() < 1e-6);
  CHECK((xs - xref).cwiseAbs().maxCoeff() < 1e-9 * n);  // f64 sums of f32 values: exact to rounding
  Eigen::MatrixXd S2 = Eigen::MatrixXd::Zero(c, c);
  be().gram_accumulate(x.data(), n, c, S2.data(), nullptr);  // without Σx
  CHECK((S2 - (ref - Eigen::MatrixXd::Constant(c, c, 0.25))).cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff() < 1e-6);
}

TEST_CASE("backend rmsnorm and rmsnorm_backward against f64, across 64-row gain chunks") {
  Rng g(4);
  const int64_t n = 130, d = 37;
  const float eps = 1e-5f;
  const auto x = randv(g, n * d), gain = randv(g, d), dy = randv(g, n * d);
  std::vector<float> y((size_t)(n * d)), dx((size_t)(n * d)), dg((size_t)d);
  be().rmsnorm(x.data(), n, d, gain.data(), eps, y.data());
  CHECK(rel_err(y, ref_rmsnorm(dvec(x), dvec(gain), eps)) < 1e-6);
  be().rmsnorm_backward(x.data(), n, d, gain.data(), eps, dy.data(), dx.data(), dg.data());
  Vec rdx((size_t)(n * d)), rdg((size_t)d, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0, dot = 0;
    for (int64_t j = 0; j < d; ++j) {
      ss += (double)x[(size_t)(i * d + j)] * x[(size_t)(i * d + j)];
      dot += (double)gain[(size_t)j] * dy[(size_t)(i * d + j)] * x[(size_t)(i * d + j)];
    }
    const double inv = 1.0 / std::sqrt(ss / d + eps);
    for (int64_t j = 0; j < d; ++j) {
      const size_t e = (size_t)(i * d + j);
      rdx[e] = inv * gain[(size_t)j] * dy[e] - x[e] * inv * inv * inv * dot / d;
      rdg[(size_t)j] += dy[e] * x[e] * inv;
    }
  }
  CHECK(rel_err(dx, rdx) < 1e-5);
  CHECK(rel_err(dg, rdg) < 1e-5);
  std::vector<float> dx2((size_t)(n * d));
  be().rmsnorm_backward(x.data(), n, d, gain.data(), eps, dy.data(), dx2.data(), nullptr);  // no dg
  CHECK(dx2 == dx);
}

TEST_CASE("backend rope_rotate: both layouts against f64; Rᵀ undoes R") {
  Rng g(5);
  const int H = 3, hd = 6, T = 7;
  const int64_t n = 2 * T;
  std::vector<float> freq(hd / 2);
  for (int i = 0; i < hd / 2; ++i) freq[(size_t)i] = 1.0f / std::pow(100.f, (float)(2 * i) / hd);
  for (const bool inter : {true, false}) {
    const auto x0 = randv(g, n * H * hd);
    std::vector<float> x = x0;
    be().rope_rotate(x.data(), n, H, hd, T, freq.data(), inter, false);
    CHECK(rel_err(x, ref_rope(dvec(x0), H, hd, T, dvec(freq), inter)) < 1e-5);
    be().rope_rotate(x.data(), n, H, hd, T, freq.data(), inter, true);
    CHECK(rel_err(x, dvec(x0)) < 1e-5);
  }
}

TEST_CASE("backend swiglu, swiglu_backward and add_inplace against their formulas") {
  Rng g(6);
  const int64_t n = 1000;
  const auto a = randv(g, n, 3.0), u = randv(g, n), dh = randv(g, n);
  std::vector<float> h((size_t)n);
  be().swiglu(a.data(), u.data(), n, h.data());
  CHECK(rel_err(h, ref_swiglu(dvec(a), dvec(u))) < 1e-6);
  std::vector<float> ha = a;
  be().swiglu(ha.data(), u.data(), n, ha.data());  // h may be a
  CHECK(ha == h);
  std::vector<float> da = a, du = u;
  be().swiglu_backward(da.data(), du.data(), dh.data(), n);
  Vec rda((size_t)n), rdu((size_t)n);
  for (int64_t i = 0; i < n; ++i) {
    const double x = a[(size_t)i], s = 1 / (1 + std::exp(-x));
    rda[(size_t)i] = dh[(size_t)i] * u[(size_t)i] * s * (1 + x * (1 - s));
    rdu[(size_t)i] = dh[(size_t)i] * x * s;
  }
  CHECK(rel_err(da, rda) < 1e-5);
  CHECK(rel_err(du, rdu) < 1e-5);
  std::vector<float> s = a;
  be().add_inplace(s.data(), u.data(), n);
  for (int64_t i = 0; i < n; ++i) CHECK(s[(size_t)i] == a[(size_t)i] + u[(size_t)i]);  // exact
}

TEST_CASE("backend geglu and geglu_backward against the tanh-GELU formula and f64 differences") {
  Rng g(61);
  const int64_t n = 1000;
  const auto a = randv(g, n, 3.0), u = randv(g, n), dh = randv(g, n);
  std::vector<float> h((size_t)n);
  be().geglu(a.data(), u.data(), n, h.data());
  CHECK(rel_err(h, ref_geglu(dvec(a), dvec(u))) < 1e-6);
  std::vector<float> ha = a;
  be().geglu(ha.data(), u.data(), n, ha.data());  // h may be a
  CHECK(ha == h);
  std::vector<float> da = a, du = u;
  be().geglu_backward(da.data(), du.data(), dh.data(), n);
  Vec rda((size_t)n), rdu((size_t)n);
  for (int64_t i = 0; i < n; ++i) {  // central differences of the f64 formula
    const double x = a[(size_t)i], e = 1e-6;
    const Vec up{1.0};
    const double gp = ref_geglu(Vec{x + e}, up)[0], gm = ref_geglu(Vec{x - e}, up)[0];
    rda[(size_t)i] = dh[(size_t)i] * u[(size_t)i] * (gp - gm) / (2 * e);
    rdu[(size_t)i] = dh[(size_t)i] * ref_geglu(Vec{x}, up)[0];
  }
  CHECK(rel_err(da, rda) < 1e-5);
  CHECK(rel_err(du, rdu) < 1e-5);
}

TEST_CASE("backend attention variants (sliding window, score scale, soft cap) against f64, backward by differences") {
  Rng g(62);
  struct Case {
    int T, window;
    float scale, cap;
  };
  for (const Case cs : {Case{9, 3, 0.f, 0.f}, Case{300, 40, 0.f, 0.f}, Case{130, 0, 0.7f, 0.f}, Case{140, 0, 0.f, 2.5f},
                        Case{260, 129, 0.4f, 3.f}, Case{7, 1, 0.f, 0.f}}) {
    const int B = 2, H = 4, KVH = 2, hd = 3, T = cs.T;
    const int64_t N = (int64_t)B * T;
    auto q = randv(g, N * H * hd, 1.5), k = randv(g, N * KVH * hd, 1.5), v = randv(g, N * KVH * hd);
    const auto dy = randv(g, N * H * hd);
    AttentionShape sh{B, T, H, KVH, hd};
    sh.window = cs.window, sh.scale = cs.scale, sh.softcap = cs.cap;
    auto ref = [&](const std::vector<float>& Q, const std::vector<float>& K, const std::vector<float>& V) {
      return ref_attention_ex(dvec(Q), dvec(K), dvec(V), B, T, H, KVH, hd, cs.window, cs.scale, cs.cap);
    };
    std::vector<float> out((size_t)(N * H * hd));
    be().attention(q.data(), k.data(), v.data(), sh, out.data());
    CHECK(rel_err(out, ref(q, k, v)) < 1e-5);
    std::vector<float> dq((size_t)(N * H * hd), 9.f), dk((size_t)(N * KVH * hd), 9.f), dv((size_t)(N * KVH * hd), 9.f);
    be().attention_backward(q.data(), k.data(), v.data(), sh, dy.data(), dq.data(), dk.data(), dv.data());
    // L = Σ dy ⊙ out: central differences on random entries of q, k and v.
    auto L = [&] {
      const Vec o = ref(q, k, v);
      double s = 0;
      for (size_t i = 0; i < o.size(); ++i) s += dy[i] * o[i];
      return s;
    };
    for (auto [p, d] : {std::pair{&q, &dq}, std::pair{&k, &dk}, std::pair{&v, &dv}}) {
      double worst = 0, scale = 0;
      for (float x : *d) scale = std::max(scale, (double)std::abs(x));
      for (int c = 0; c < 12; ++c) {
        const size_t i = (size_t)g.randint(0, (int64_t)p->size() - 1);
        const float p0 = (*p)[i];
        const double h = 1e-2;
        (*p)[i] = (float)(p0 + h);
        const double lp = L();
        (*p)[i] = (float)(p0 - h);
        const double lm = L();
        (*p)[i] = p0;
        const double num = (lp - lm) / (((double)(float)(p0 + h)) - (double)(float)(p0 - h));
        worst = std::max(worst, std::abs(num - (*d)[i]) / std::max(std::abs(num), 1e-2 * scale));
      }
      CHECK_MESSAGE(worst < 2e-3, "T " << T << " window " << cs.window << " scale " << cs.scale << " cap " << cs.cap << ": " << worst);
    }
  }
}

// f64 attention backward from the formulas: P = softmax(QKᵀ/√d) causal, O = PV;
// dV = Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − rowsum(P ⊙ dP)), dQ = dS K/√d, dK = dSᵀ Q/√d.
static void ref_attention_backward(const Vec& q, const Vec& k, const Vec& v, const Vec& dy, int B, int T, int H, int KVH,
                                   int hd, Vec& dq, Vec& dk, Vec& dv) {
  const int QW = H * hd, KW = KVH * hd;
  dq.assign(q.size(), 0.0);
  dk.assign(k.size(), 0.0);
  dv.assign(v.size(), 0.0);
  const double sc = 1 / std::sqrt((double)hd);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      const int kh = h / (H / KVH);
      auto Q = [&](int i, int c) { return q[(size_t)(b * T + i) * QW + h * hd + c]; };
      auto K = [&](int j, int c) { return k[(size_t)(b * T + j) * KW + kh * hd + c]; };
      auto V = [&](int j, int c) { return v[(size_t)(b * T + j) * KW + kh * hd + c]; };
      auto dO = [&](int i, int c) { return dy[(size_t)(b * T + i) * QW + h * hd + c]; };
      for (int i = 0; i < T; ++i) {
        Vec p(i + 1), dp(i + 1);
        double mx = -1e300, sum = 0, rs = 0;
        for (int j = 0; j <= i; ++j) {
          double s = 0;
          for (int c = 0; c < hd; ++c) s += Q(i, c) * K(j, c);
          p[j] = s * sc;
          mx = std::max(mx, p[j]);
        }
        for (auto& e : p) sum += (e = std::exp(e - mx));
        for (auto& e : p) e /= sum;
        for (int j = 0; j <= i; ++j) {
          for (int c = 0; c < hd; ++c) dp[j] += dO(i, c) * V(j, c);
          rs += p[j] * dp[j];
        }
        for (int j = 0; j <= i; ++j) {
          const double ds = p[j] * (dp[j] - rs);
          for (int c = 0; c < hd; ++c) {
            dq[(size_t)(b * T + i) * QW + h * hd + c] += ds * K(j, c) * sc;
            dk[(size_t)(b * T + j) * KW + kh * hd + c] += ds * Q(i, c) * sc;
            dv[(size_t)(b * T + j) * KW + kh * hd + c] += p[j] * dO(i, c);
          }
        }
      }
    }
}

TEST_CASE("backend attention and attention_backward against f64, across 128-query blocks, grouped heads") {
  Rng g(7);
  for (const int T : {5, 130, 300}) {
    const int B = 2, H = 4, KVH = 2, hd = 3;
    const int64_t N = (int64_t)B * T;
    const auto q = randv(g, N * H * hd), k = randv(g, N * KVH * hd), v = randv(g, N * KVH * hd), dy = randv(g, N * H * hd);
    const AttentionShape sh{B, T, H, KVH, hd};
    std::vector<float> out((size_t)(N * H * hd));
    be().attention(q.data(), k.data(), v.data(), sh, out.data());
    CHECK(rel_err(out, ref_attention(dvec(q), dvec(k), dvec(v), B, T, H, KVH, hd)) < 1e-5);
    // garbage in the outputs first: the backend writes (and zeroes what it accumulates)
    std::vector<float> dq((size_t)(N * H * hd), 9.f), dk((size_t)(N * KVH * hd), 9.f), dv((size_t)(N * KVH * hd), 9.f);
    be().attention_backward(q.data(), k.data(), v.data(), sh, dy.data(), dq.data(), dk.data(), dv.data());
    Vec rq, rk, rv;
    ref_attention_backward(dvec(q), dvec(k), dvec(v), dvec(dy), B, T, H, KVH, hd, rq, rk, rv);
    CHECK(rel_err(dq, rq) < 1e-4);
    CHECK(rel_err(dk, rk) < 1e-4);
    CHECK(rel_err(dv, rv) < 1e-4);
  }
}

TEST_CASE("backend cholesky_lower and lower_triangular_inverse across 128-column blocks") {
  Rng g(8);
  for (const int64_t n : {1, 127, 128, 129, 300}) {
    Eigen::MatrixXd X(n, n + 5);
    for (int64_t i = 0; i < X.size(); ++i) X.data()[i] = g.normal();
    const Eigen::MatrixXd A = X * X.transpose() + 0.1 * Eigen::MatrixXd::Identity(n, n);
    Eigen::MatrixXd L = A;
    REQUIRE(be().cholesky_lower(L.data(), n));
    const Eigen::MatrixXd Ll = L.triangularView<Eigen::Lower>();
    CHECK((Ll * Ll.transpose() - A).cwiseAbs().maxCoeff() / A.cwiseAbs().maxCoeff() < 1e-12);
    Eigen::MatrixXd Xi = Eigen::MatrixXd::Constant(n, n, 5.0);  // written whole, upper part zero
    be().lower_triangular_inverse(L.data(), n, Xi.data());
    CHECK((Ll * Xi - Eigen::MatrixXd::Identity(n, n)).cwiseAbs().maxCoeff() < 1e-9);
    CHECK(Xi.triangularView<Eigen::StrictlyUpper>().toDenseMatrix().cwiseAbs().maxCoeff() == 0.0);
  }
  Eigen::MatrixXd I = -Eigen::MatrixXd::Identity(4, 4);  // negative definite
  CHECK_FALSE(be().cholesky_lower(I.data(), 4));
}

// GPTQ's block with a naive f64 reference of the same equations (docs/methods.md#gptq-update):
// one column at a time, over all rows, q = Q(w), e = (w − q)/U_pp, later in-block columns
// −= e·U_p,·, then W[:, i2:] −= E·U[i1:i2, i2:].
TEST_CASE("backend gptq_block against the equations, across 256-row chunks, permuted columns") {
  Rng g(9);
  const int64_t r = 300, c = 70, i1 = 16, i2 = 48;
  Problem P = scaled_problem(r, c, 9, 2 * c, 0.5);
  GridSpec spec;
  spec.bits = 3;
  spec.group = 16;
  const Grid grid = grid_fit(P.W, spec);
  // an upper factor with a positive diagonal; processing order reversed (perm), groups by position
  Eigen::MatrixXf U = Eigen::MatrixXf::Zero(c, c);
  for (int64_t i = 0; i < c; ++i) {
    U(i, i) = (float)(0.5 + g.uniform());
    for (int64_t j = i + 1; j < c; ++j) U(i, j) = (float)(0.2 * g.normal());
  }
  std::vector<int64_t> perm((size_t)c), group((size_t)c);
  for (int64_t p = 0; p < c; ++p) {
    perm[(size_t)p] = c - 1 - p;
    group[(size_t)p] = grid.g_idx[(size_t)perm[(size_t)p]];
  }
  Eigen::MatrixXf W0(r, c);  // column-major, processing order
  for (int64_t p = 0; p < c; ++p)
    for (int64_t i = 0; i < r; ++i) W0(i, p) = P.W.cmat()(i, perm[(size_t)p]);
  Eigen::MatrixXf W = W0, E = Eigen::MatrixXf::Zero(r, i2 - i1);
  std::vector<uint8_t> codes((size_t)(r * c), 255);
  std::vector<double> loss;
  GptqBlock kb;
  kb.W = W.data();
  kb.rows = r;
  kb.cols = c;
  kb.U = U.data();
  kb.i1 = i1;
  kb.i2 = i2;
  kb.grid = &grid;
  kb.perm = perm.data();
  kb.group = group.data();
  kb.codes = codes.data();
  kb.E = E.data();
  kb.loss = &loss;
  be().gptq_block(kb);

  Eigen::MatrixXd Wr = W0.cast<double>();
  double rloss = 0;
  int64_t code_mismatch = 0;
  for (int64_t p = i1; p < i2; ++p) {
    for (int64_t i = 0; i < r; ++i) {
      const int q = grid.code((float)Wr(i, p), i, group[(size_t)p]);
      code_mismatch += codes[(size_t)(i * c + perm[(size_t)p])] != q;
      const double e = (Wr(i, p) - grid.value(q, i, group[(size_t)p])) / U(p, p);
      rloss += e * e;
      for (int64_t k = p + 1; k < c; ++k) Wr(i, k) -= e * U(p, k);  // in-block and lazy batch at once
    }
  }
  CHECK(code_mismatch == 0);  // the same f32 ops inside the block
  double tot = 0;
  for (double l : loss) tot += l;
  CHECK(std::abs(tot - rloss) / rloss < 1e-5);
  CHECK((W.cast<double>() - Wr).cwiseAbs().maxCoeff() / Wr.cwiseAbs().maxCoeff() < 1e-5);
  CHECK(W.leftCols(i1) == W0.leftCols(i1));  // earlier columns untouched
  for (int64_t p = 0; p < c; ++p)            // only the block's codes are written
    for (int64_t i = 0; i < r; ++i)
      if (p < i1 || p >= i2) CHECK(codes[(size_t)(i * c + perm[(size_t)p])] == 255);
}

// The CD sweep (docs/methods.md#cd-update) one coordinate at a time in f64: β = ŵ_p + (EΣ)_p/Σ_pp.
static double ref_cd_sweep(const Eigen::MatrixXd& S, const Eigen::MatrixXd& T, Eigen::MatrixXd& W,
                           const std::vector<int64_t>& perm, int64_t nsweep, const Grid* grid) {
  auto f = [&] {
    const Eigen::MatrixXd E = T - W;
    return (E * S * E.transpose()).trace();
  };
  const double f0 = f();
  for (int64_t p = 0; p < nsweep; ++p) {
    const int64_t j = perm[(size_t)p];
    for (int64_t i = 0; i < W.rows(); ++i) {
      const double es = ((T.row(i) - W.row(i)) * S.col(j))(0);
      const double beta = W(i, j) + es / S(j, j);
      W(i, j) = grid ? grid->quantize((float)beta, i, grid->g_idx[(size_t)j]) : beta;
    }
  }
  return f() - f0;
}

TEST_CASE("backend cd_sweep against a coordinate-at-a-time f64 sweep: blocks, sub-blocks, row chunks, partial order") {
  const int64_t r = 300, c = 290;  // one full 256-column block and a partial one; two row chunks
  Problem P = scaled_problem(r, c, 10, 2 * c, 0.5);
  GridSpec spec;
  spec.bits = 4;
  spec.group = 32;
  const Grid grid = grid_fit(P.W, spec);
  const Eigen::MatrixXd Sd = to_md(P.S), Td = to_md(P.W);
  for (const bool reversed : {false, true}) {
    std::vector<int64_t> perm((size_t)c);
    for (int64_t p = 0; p < c; ++p) perm[(size_t)p] = reversed ? c - 1 - p : p;
    const int64_t nsweep = reversed ? 270 : c;  // a partial order sweeps its first positions only
    for (const bool continuous : {true, false}) {
      // start from RTN on the grid, permuted: W[:, π], E = T[:, π] − W[:, π], Σ[π, π]
      const Tensor W0 = quantize_to_grid(P.W, grid).dequantize();
      MatRM Wp(r, c), E(r, c), Sp(c, c);
      for (int64_t i = 0; i < r; ++i)
        for (int64_t p = 0; p < c; ++p) {
          Wp(i, p) = W0.cmat()(i, perm[(size_t)p]);
          E(i, p) = P.W.cmat()(i, perm[(size_t)p]) - Wp(i, p);
        }
      for (int64_t a = 0; a < c; ++a)
        for (int64_t b = 0; b < c; ++b) Sp(a, b) = P.S.cmat()(perm[(size_t)a], perm[(size_t)b]);
      CdSweep k;
      k.W = Wp.data();
      k.E = E.data();
      k.rows = r;
      k.cols = c;
      k.S = Sp.data();
      k.T = P.W.contiguous().f32();
      k.perm = perm.data();
      k.nsweep = nsweep;
      k.grid = &grid;
      k.continuous = continuous;
      const double df = be().cd_sweep(k);
      Eigen::MatrixXd Wr = to_md(W0);
      const double rdf = ref_cd_sweep(Sd, Td, Wr, perm, nsweep, continuous ? nullptr : &grid);
      CHECK(rdf < 0);
      CHECK(std::abs(df - rdf) / std::abs(rdf) < (continuous ? 1e-5 : 1e-4));
      int64_t moved = 0, off = 0;
      double werr = 0;
      for (int64_t i = 0; i < r; ++i)
        for (int64_t p = 0; p < c; ++p) {
          const double ref = Wr(i, perm[(size_t)p]);
          moved += Wp(i, p) != (float)ref;
          werr = std::max(werr, std::abs((double)Wp(i, p) - ref));
          // E kept in step with Ŵ: E = T[:, π] − Ŵ[:, π] exactly as the kernel forms it
          off += E(i, p) != P.W.cmat()(i, perm[(size_t)p]) - Wp(i, p);
        }
      CHECK(off == 0);
      if (continuous) {
        CHECK(werr < 1e-5);
      } else {
        // f32 against f64 may flip a code at a near-tie (and everything after it in that row
        // shifts slightly); the sweep must agree on almost every coordinate
        CHECK(moved <= r * c / 1000);  // the CPU backend: 0
      }
    }
  }
}

// ---------------------------------------------------------------- the seam is used

namespace {

// Forwards every op to the CPU backend and counts it.
class CountingBackend final : public Backend {
 public:
  std::map<std::string, int> calls;
  Backend& cpu = cpu_backend();
  const char* name() const override { return "counting"; }
  void gemm_rows(const float* x, int64_t rows, const float* w, int64_t wr, int64_t wc, bool t, float* y, bool a) override {
    ++calls["gemm_rows"];
    cpu.gemm_rows(x, rows, w, wr, wc, t, y, a);
  }
  void gemm_tn(const float* a, int64_t rows, int64_t ac, const float* b, int64_t bc, float* c, bool acc, float* cs,
               int64_t work) override {
    ++calls["gemm_tn"];
    cpu.gemm_tn(a, rows, ac, b, bc, c, acc, cs, work);
  }
  void gemm_rows_batch(int64_t rows, const GemmRowsJob* jobs, int n) override {
    ++calls["gemm_rows_batch"];
    cpu.gemm_rows_batch(rows, jobs, n);
  }
  void gemm_tn_batch(int64_t rows, const GemmTnJob* jobs, int n) override {
    ++calls["gemm_tn_batch"];
    cpu.gemm_tn_batch(rows, jobs, n);
  }
  void gram_accumulate(const float* x, int64_t n, int64_t c, double* S, double* xs) override {
    ++calls["gram_accumulate"];
    cpu.gram_accumulate(x, n, c, S, xs);
  }
  void rmsnorm(const float* x, int64_t n, int64_t d, const float* g, float eps, float* y) override {
    ++calls["rmsnorm"];
    cpu.rmsnorm(x, n, d, g, eps, y);
  }
  void rmsnorm_backward(const float* x, int64_t n, int64_t d, const float* g, float eps, const float* dy, float* dx,
                        float* dg) override {
    ++calls["rmsnorm_backward"];
    cpu.rmsnorm_backward(x, n, d, g, eps, dy, dx, dg);
  }
  void rope_rotate(float* x, int64_t n, int H, int hd, int T, const float* f, bool inter, bool tr) override {
    ++calls[tr ? "rope_rotate_t" : "rope_rotate"];
    cpu.rope_rotate(x, n, H, hd, T, f, inter, tr);
  }
  void swiglu(const float* a, const float* u, int64_t n, float* h) override {
    ++calls["swiglu"];
    cpu.swiglu(a, u, n, h);
  }
  void swiglu_backward(float* a, float* u, const float* dh, int64_t n) override {
    ++calls["swiglu_backward"];
    cpu.swiglu_backward(a, u, dh, n);
  }
  void geglu(const float* a, const float* u, int64_t n, float* h) override {
    ++calls["geglu"];
    cpu.geglu(a, u, n, h);
  }
  void geglu_backward(float* a, float* u, const float* dh, int64_t n) override {
    ++calls["geglu_backward"];
    cpu.geglu_backward(a, u, dh, n);
  }
  void add_inplace(float* a, const float* b, int64_t n) override {
    ++calls["add_inplace"];
    cpu.add_inplace(a, b, n);
  }
  void attention(const float* q, const float* k, const float* v, const AttentionShape& s, float* o) override {
    ++calls["attention"];
    cpu.attention(q, k, v, s, o);
  }
  void attention_backward(const float* q, const float* k, const float* v, const AttentionShape& s, const float* dy,
                          float* dq, float* dk, float* dv) override {
    ++calls["attention_backward"];
    cpu.attention_backward(q, k, v, s, dy, dq, dk, dv);
  }
  bool cholesky_lower(double* A, int64_t n) override {
    ++calls["cholesky_lower"];
    return cpu.cholesky_lower(A, n);
  }
  void lower_triangular_inverse(const double* A, int64_t n, double* X) override {
    ++calls["lower_triangular_inverse"];
    cpu.lower_triangular_inverse(A, n, X);
  }
  void gptq_block(const GptqBlock& b) override {
    ++calls["gptq_block"];
    cpu.gptq_block(b);
  }
  double cd_sweep(const CdSweep& s) override {
    ++calls["cd_sweep"];
    return cpu.cd_sweep(s);
  }
};

std::vector<float> bits(const Tensor& t) { return t.contiguous().to_vector(); }

}  // namespace

TEST_CASE("backend seam: forward, backward, calibration, GPTQ and QuantEase go through it with the same bits") {
  const Model m = tiny_model(11);
  const int B = 2, T = 8;
  std::vector<int32_t> tokens((size_t)(B * T));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = (int32_t)((i * 7 + 3) % 11);
  const Problem P = scaled_problem(40, 48, 12, 96, 0.5);
  GridSpec spec;
  spec.bits = 3;
  spec.group = 16;

  struct Out {
    std::vector<float> logits, d_embed, sigma, gptq, qe;
    double loss = 0;
  };
  auto run = [&] {
    Out o;
    o.logits = bits(forward(m, tokens, B, T));
    ModelGrads mg = model_loss_backward(m, tokens, B, T, [](int) { return BlockGradRequest::all(); }, nullptr, true);
    o.loss = mg.loss;
    o.d_embed = bits(mg.d_embed);
    Calibration cal(m, tokens, B, T, false);
    const auto st = cal.capture(m, {});
    o.sigma = bits(st.at(Site::FfnMid).sigma());
    o.gptq = bits(gptq(P.W, P.S, spec, GptqOptions{}).q.dequantize());
    QuantEaseOptions qo;
    qo.iters = 3;
    o.qe = bits(quantease(P.W, P.S, spec, qo).q.dequantize());
    return o;
  };
  const Out plain = run();
  CountingBackend counting;
  Out seen;
  {
    ScopedBackend use(&counting);
    CHECK(std::string(backend().name()) == "counting");
    seen = run();
  }
  CHECK(&backend() == &cpu_backend());
  CHECK(seen.logits == plain.logits);
  CHECK(seen.loss == plain.loss);
  CHECK(seen.d_embed == plain.d_embed);
  CHECK(seen.sigma == plain.sigma);
  CHECK(seen.gptq == plain.gptq);
  CHECK(seen.qe == plain.qe);
  for (const char* op : {"gemm_rows", "gemm_tn", "gemm_rows_batch", "gemm_tn_batch", "gram_accumulate", "rmsnorm", "rmsnorm_backward", "rope_rotate",
                         "rope_rotate_t", "swiglu", "swiglu_backward", "add_inplace", "attention", "attention_backward",
                         "cholesky_lower", "lower_triangular_inverse", "gptq_block", "cd_sweep"}) {
    CAPTURE(op);
    CHECK(counting.calls[op] > 0);
  }
  // one attention per block forward: 2 blocks × (forward, the backward's forward pass, its
  // recompute in block_backward) + calibration's capture of block 1 = 7; one backward per block
  CHECK(counting.calls["attention"] == 7);
  CHECK(counting.calls["attention_backward"] == 2);
  CHECK(counting.calls["cd_sweep"] == 3);  // QuantEase: one per iteration
}
