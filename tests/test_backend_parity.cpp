// qforge tests — a device backend (QF_TEST_BACKEND: thrust-omp in the default test run, cuda on a
// GPU; backend_under_test.h) against the CPU backend, the reference, on what the engine computes
// with them (docs/architecture.md#backends, tolerances in docs/device.md):
//   - RTN-like problems (diagonal Σ: GPTQ and QuantEase reduce to rounding): identical codes;
//   - GPTQ and QuantEase on correlated problems: the same objective within 1e-4 / 1e-3 relative,
//     and almost every code the same (f32 sums in another order may flip a near-tie);
//   - stories260K's forward: logits within 1e-4 absolute;
//   - GeGLU and the attention variants (sliding window, score scale, soft cap), forward and
//     backward, within 1e-5 of the CPU backend, and the same bits on 1 and 2 threads;
//   - grids the device code does not run (companded) and stochastic GPTQ: the CPU backend's bits;
//   - the device backend's results are the same bits for 1 and 2 threads.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <string>

#include "backend/backend.h"
#include "backend_under_test.h"
#include "core/rng.h"
#include "formats/loader.h"
#include "layer_problems.h"
#include "model/forward.h"
#include "quant/grid.h"
#include "quant/layer_problem.h"
#include "solvers/gptq.h"
#include "solvers/quantease.h"

using namespace qf;
using namespace qf::test;

namespace {

const std::string kShared = QF_SHARED_DIR;

Backend& dev() { return backend_under_test(); }

// Runs f with backend b current.
template <class F>
auto with(Backend& b, F f) {
  ScopedBackend use(&b);
  return f();
}

std::vector<float> vals(const Tensor& t) { return t.contiguous().to_vector(); }

int64_t code_diff(const QuantizedLinear& a, const QuantizedLinear& b) {
  const Tensor ca = a.codes.contiguous(), cb = b.codes.contiguous();
  const uint8_t* pa = ca.data<uint8_t>();
  const uint8_t* pb = cb.data<uint8_t>();
  int64_t n = 0;
  for (int64_t i = 0; i < ca.numel(); ++i) n += pa[i] != pb[i];
  return n;
}

// A problem whose Σ is diagonal (uncorrelated inputs of different scales).
Problem diagonal_problem(int64_t r, int64_t c, uint64_t seed) {
  Problem P = scaled_problem(r, c, seed, 2 * c, 0.0);
  Eigen::MatrixXd S = to_md(P.S);
  S = Eigen::MatrixXd(S.diagonal().asDiagonal());
  P.S = to_tensor(S);
  return P;
}

std::vector<float> randv(Rng& g, int64_t n, double sd = 1.0) {
  std::vector<float> v((size_t)n);
  for (auto& e : v) e = (float)(sd * g.normal());
  return v;
}

// max |a − b| / max |b|
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double num = 0, den = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs((double)a[i] - b[i]));
    den = std::max(den, std::abs((double)b[i]));
  }
  return num / den;
}

// One attention call and its backward on backend b: out, dq, dk, dv one after another.
std::vector<float> attention_run(Backend& b, const AttentionShape& sh, const std::vector<float>& q,
                                 const std::vector<float>& k, const std::vector<float>& v, const std::vector<float>& dy) {
  const size_t nq = q.size(), nk = k.size();
  std::vector<float> r(2 * nq + 2 * nk, 9.f);
  b.attention(q.data(), k.data(), v.data(), sh, r.data());
  b.attention_backward(q.data(), k.data(), v.data(), sh, dy.data(), r.data() + nq, r.data() + 2 * nq,
                       r.data() + 2 * nq + nk);
  return r;
}

GridSpec spec_of(int bits, int64_t group) {
  GridSpec s;
  s.bits = bits;
  s.group = group;
  return s;
}

}  // namespace

TEST_CASE("parity: the backend under test is a device backend") {
  MESSAGE("backend under test: ", std::string(dev().name()));
  CHECK(std::string(dev().name()) == backend_under_test_name());
}

TEST_CASE("parity: RTN-like problems (diagonal Σ) give identical codes for GPTQ and QuantEase") {
  for (const int64_t r : {37, 300})
    for (const int64_t c : {48, 290}) {
      const Problem P = diagonal_problem(r, c, 100 + r + c);
      const GridSpec spec = spec_of(3, 16);
      CAPTURE(r);
      CAPTURE(c);
      const auto g_cpu = with(cpu_backend(), [&] { return gptq(P.W, P.S, spec, GptqOptions{}); });
      const auto g_dev = with(dev(), [&] { return gptq(P.W, P.S, spec, GptqOptions{}); });
      CHECK(code_diff(g_cpu.q, g_dev.q) == 0);
      QuantEaseOptions qo;
      qo.iters = 4;
      const auto q_cpu = with(cpu_backend(), [&] { return quantease(P.W, P.S, spec, qo); });
      const auto q_dev = with(dev(), [&] { return quantease(P.W, P.S, spec, qo); });
      CHECK(code_diff(q_cpu.q, q_dev.q) == 0);
      // and both are RTN's codes
      const QuantizedLinear rtn = quantize_to_grid(P.W, grid_fit(P.W, spec));
      CHECK(code_diff(rtn, g_dev.q) == 0);
    }
}

TEST_CASE("parity: GPTQ and QuantEase on correlated problems: the CPU backend's objective and codes") {
  const Problem P = scaled_problem(300, 290, 7, 600, 0.6);
  for (const int bits : {2, 4}) {
    const GridSpec spec = spec_of(bits, 32);
    CAPTURE(bits);
    const auto g_cpu = with(cpu_backend(), [&] { return gptq(P.W, P.S, spec, GptqOptions{}); });
    const auto g_dev = with(dev(), [&] { return gptq(P.W, P.S, spec, GptqOptions{}); });
    const double oc = objective(P.W, g_cpu.q.dequantize(), P.S).value, od = objective(P.W, g_dev.q.dequantize(), P.S).value;
    MESSAGE("gptq ", bits, " bits: objective cpu ", oc, " device ", od, ", codes differing ", code_diff(g_cpu.q, g_dev.q));
    CHECK(std::abs(od - oc) / oc < 1e-4);
    CHECK(code_diff(g_cpu.q, g_dev.q) <= 300 * 290 / 1000);
    QuantEaseOptions qo;  // 30 sweeps, every third continuous
    const auto q_cpu = with(cpu_backend(), [&] { return quantease(P.W, P.S, spec, qo); });
    const auto q_dev = with(dev(), [&] { return quantease(P.W, P.S, spec, qo); });
    const double qc = q_cpu.objective.back(), qd = q_dev.objective.back();
    MESSAGE("quantease ", bits, " bits: objective cpu ", qc, " device ", qd, ", codes differing ", code_diff(q_cpu.q, q_dev.q));
    CHECK(std::abs(qd - qc) / qc < 1e-3);
    CHECK(code_diff(q_cpu.q, q_dev.q) <= 300 * 290 / 100);
    // the tracked objective is the true one on the device too
    CHECK(std::abs(qd - objective(P.W, q_dev.q.dequantize(), P.S).value) / qd < 1e-6);
  }
}

TEST_CASE("parity: grids the device code does not run, and stochastic GPTQ, are the CPU backend's bits") {
  const Problem P = scaled_problem(64, 96, 8, 200, 0.5);
  GridSpec sc = spec_of(3, 32);
  sc.kind = GridKind::Compand;
  QuantEaseOptions qo;
  qo.iters = 3;
  CHECK(vals(with(cpu_backend(), [&] { return quantease(P.W, P.S, sc, qo); }).q.dequantize()) ==
        vals(with(dev(), [&] { return quantease(P.W, P.S, sc, qo); }).q.dequantize()));
  GptqOptions go;
  go.stochastic = true;
  go.seed = 5;
  const GridSpec su = spec_of(3, 32);
  CHECK(vals(with(cpu_backend(), [&] { return gptq(P.W, P.S, su, go); }).q.dequantize()) ==
        vals(with(dev(), [&] { return gptq(P.W, P.S, su, go); }).q.dequantize()));
}

TEST_CASE("parity: the device backend gives the same bits on 1 and 2 threads") {
  const Problem P = scaled_problem(300, 290, 9, 600, 0.6);
  const GridSpec spec = spec_of(3, 32);
  std::vector<std::vector<float>> runs;
  for (const int threads : {1, 2}) {
    omp_set_num_threads(threads);
    QuantEaseOptions qo;
    qo.iters = 3;
    const auto q = with(dev(), [&] { return quantease(P.W, P.S, spec, qo); });
    const auto g = with(dev(), [&] { return gptq(P.W, P.S, spec, GptqOptions{}); });
    auto v = vals(q.q.dequantize());
    const auto w = vals(g.q.dequantize());
    v.insert(v.end(), w.begin(), w.end());
    runs.push_back(v);
  }
  omp_set_num_threads(omp_get_num_procs());
  CHECK(runs[0] == runs[1]);
}

TEST_CASE("parity: stories260K forward logits within 1e-4 of the CPU backend") {
  const Model m = load_model(resolve_model_files(kShared + "/models/stories260K"));
  const int B = 2, T = 200;  // two query blocks of the CPU backend's attention
  std::vector<int32_t> tokens((size_t)(B * T));
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = (int32_t)((i * 37 + 11) % m.cfg.vocab_size);
  const auto lc = vals(with(cpu_backend(), [&] { return forward(m, tokens, B, T); }));
  const auto ld = vals(with(dev(), [&] { return forward(m, tokens, B, T); }));
  REQUIRE(lc.size() == ld.size());
  double d = 0, mx = 0;
  for (size_t i = 0; i < lc.size(); ++i) {
    d = std::max(d, std::abs((double)lc[i] - ld[i]));
    mx = std::max(mx, std::abs((double)lc[i]));
  }
  MESSAGE("stories260K logits: max |device − cpu| = ", d, " (max |logit| ", mx, ")");
  CHECK(d < 1e-4);
}

TEST_CASE("parity: geglu and the attention variants against the CPU backend; the same bits on 1 and 2 threads") {
  Rng g(31);
  const int64_t n = 5000;
  const auto a = randv(g, n, 3.0), u = randv(g, n), dh = randv(g, n);
  std::vector<float> hc((size_t)n), hd((size_t)n);
  cpu_backend().geglu(a.data(), u.data(), n, hc.data());
  dev().geglu(a.data(), u.data(), n, hd.data());
  CHECK(rel_diff(hd, hc) < 1e-6);
  std::vector<float> ac = a, uc = u, ad = a, ud = u;
  cpu_backend().geglu_backward(ac.data(), uc.data(), dh.data(), n);
  dev().geglu_backward(ad.data(), ud.data(), dh.data(), n);
  CHECK(rel_diff(ad, ac) < 1e-6);
  CHECK(rel_diff(ud, uc) < 1e-6);

  struct Case {
    int T, window;
    float scale, cap;
  };
  // windows inside one query block, across blocks, wider than T; Gemma-like scale and caps
  for (const Case cs : {Case{300, 40, 0.f, 0.f}, Case{260, 129, 0.4f, 3.f}, Case{200, 0, 0.f, 2.f},
                        Case{150, 500, 0.25f, 0.f}, Case{131, 1, 0.f, 0.f}}) {
    const int B = 2, H = 4, KVH = 2, hdim = 8, T = cs.T;
    const int64_t N = (int64_t)B * T;
    const auto q = randv(g, N * H * hdim, 1.5), k = randv(g, N * KVH * hdim, 1.5), v = randv(g, N * KVH * hdim);
    const auto dy = randv(g, N * H * hdim);
    AttentionShape sh{B, T, H, KVH, hdim};
    sh.window = cs.window, sh.scale = cs.scale, sh.softcap = cs.cap;
    CAPTURE(T);
    CAPTURE(cs.window);
    CAPTURE(cs.scale);
    CAPTURE(cs.cap);
    const auto rc = attention_run(cpu_backend(), sh, q, k, v, dy);
    std::vector<std::vector<float>> rd;
    for (const int threads : {1, 2}) {
      omp_set_num_threads(threads);
      rd.push_back(attention_run(dev(), sh, q, k, v, dy));
    }
    omp_set_num_threads(omp_get_num_procs());
    CHECK(rd[0] == rd[1]);
    // out, dq, dk, dv each against the CPU backend's
    const size_t nq = q.size(), nk = k.size();
    const size_t off[5] = {0, nq, 2 * nq, 2 * nq + nk, 2 * nq + 2 * nk};
    for (int p = 0; p < 4; ++p) {
      CAPTURE(p);
      const std::vector<float> c(rc.begin() + off[p], rc.begin() + off[p + 1]);
      const std::vector<float> d(rd[0].begin() + off[p], rd[0].begin() + off[p + 1]);
      CHECK(rel_diff(d, c) < 1e-5);
    }
  }
}
