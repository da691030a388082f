// K-quant grids (quant/kquant.h, docs/methods.md#kquant-grids): the layout table against the block
// table, the reference fit's values on the format's grid, the importance fit never worse than the
// reference under its weights, solvers on K-quant grids (GPTQ below RTN, QuantEase below GPTQ on
// the layer objective), and exact GGUF (with the 32-block fallback) and qforge round trips.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "core/half.h"
#include "formats/dtypes.h"
#include "formats/export.h"
#include "formats/gguf.h"
#include "formats/kquant_blocks.h"
#include "formats/loader.h"
#include "formats/loader_qforge.h"
#include "formats/model_source.h"
#include "formats/quant_blocks.h"
#include "layer_problems.h"
#include "quant/layer_problem.h"
#include "quant/storage.h"
#include "solvers/gptq.h"
#include "solvers/quantease.h"
#include "tiny_model.h"

using namespace qf;
namespace fs = std::filesystem;

static const KQuantType kTypes[] = {KQuantType::Q2_K, KQuantType::Q3_K, KQuantType::Q4_K, KQuantType::Q5_K, KQuantType::Q6_K};

static std::string tmpdir() {
  static std::string d = [] {
    auto p = fs::temp_directory_path() / ("qf_kquant_" + std::to_string(getpid()));
    fs::create_directories(p);
    return p.string();
  }();
  return d;
}

// Heavy-tailed weights: normal, every 37th ×6 (outliers decide a sub-block's range).
static Tensor heavy_weights(int64_t r, int64_t c, uint64_t seed) {
  Rng g(seed);
  std::vector<float> v((size_t)(r * c));
  for (size_t i = 0; i < v.size(); ++i) v[i] = (float)(g.normal() * (i % 37 == 5 ? 6.0 : 1.0) * 0.02);
  return Tensor::from_data({r, c}, v);
}

static double rel_err(const Tensor& W, const Tensor& Wh) {
  const auto a = W.cmat(), b = Wh.cmat();
  return (a - b).norm() / a.norm();
}

TEST_CASE("K-quant layouts agree with the block table: bytes per super-block, bits per weight") {
  for (KQuantType t : kTypes) {
    const KQuantLayout& L = kquant_layout(t);
    const DTypeTraits* d = dtype_by_name(L.name);
    REQUIRE(d);
    CHECK(d->block_elems == kKQuantSuper);
    CHECK(L.bpw * kKQuantSuper / 8 == doctest::Approx((double)d->block_bytes));
    CHECK(L.nsub() * L.sub == kKQuantSuper);
    KQuantType u;
    CHECK(kquant_from_name(std::string(L.name), &u));
    CHECK(u == t);
  }
  CHECK(kquant_layout(KQuantType::Q4_K).bpw == 4.5);
  KQuantType u;
  CHECK(!kquant_from_name("Q4_0", &u));
}

TEST_CASE("reference fit: values are the format's (exact GGUF blocks), errors shrink with bits") {
  const Tensor W = heavy_weights(6, 512, 3);
  double prev = 1e9;
  const double bound[] = {0.50, 0.26, 0.12, 0.06, 0.03};  // relative Frobenius error, 2..6 bits
  int i = 0;
  for (KQuantType t : kTypes) {
    const KQuantLayout& L = kquant_layout(t);
    const Grid g = grid_fit(W, grid_spec_kquant(t));
    const QuantizedLinear q = quantize_to_grid(W, g);
    const Tensor Wh = q.dequantize();
    const double e = rel_err(W, Wh);
    MESSAGE(std::string(L.name), " relative error ", e);
    CHECK(e < bound[i++]);
    CHECK(e < prev);
    prev = e;
    // Every super-block: d, dmin fp16 values; integers in range; scale/zero what they give.
    for (size_t k = 0; k < g.kq_d.size(); ++k) {
      CHECK(f16_to_f32(f32_to_f16(g.kq_d[k])) == g.kq_d[k]);
      CHECK(f16_to_f32(f32_to_f16(g.kq_dmin[k])) == g.kq_dmin[k]);
    }
    for (size_t p = 0; p < g.kq_sc.size(); ++p) {
      CHECK((g.kq_sc[p] >= L.sc_lo && g.kq_sc[p] <= L.sc_hi));
      CHECK((g.kq_mn[p] >= 0 && g.kq_mn[p] <= L.mn_hi));
    }
    // The GGUF blocks decode to exactly the grid's values (encode_kquant_row checks, and so do we).
    check_kquant_encodable(q, L.name, "test");
    const DTypeTraits& d = *dtype_by_name(L.name);
    std::vector<uint8_t> row((size_t)(W.size(1) / 256 * d.block_bytes));
    std::vector<float> y((size_t)W.size(1));
    for (int64_t r = 0; r < W.size(0); ++r) {
      encode_kquant_row(q, r, L.name, row.data(), "test");
      dequantize_blocks(L.name, row.data(), W.size(1), y.data());
      for (int64_t c = 0; c < W.size(1); ++c) REQUIRE(y[c] == Wh.cmat()(r, c));
    }
  }
}

// The golden hashes: FNV-1a 64 of the blocks llama.cpp's quantize_row_q*_K_ref (ggml-base of the
// llama.cpp that llama-cpp-python 0.3.36 vendors, ggml-org/llama.cpp@0c1e57098) writes for this
// input: 8 super-blocks, xorshift64* uniforms, Box-Muller in double, every 37th value ×6.
static std::vector<float> golden_input(int n) {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  auto u = [&] {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return ((double)((s * 2685821657736338717ull) >> 40) + 0.5) / 16777216.0;
  };
  std::vector<float> x((size_t)n);
  for (int i = 0; i < n; ++i) {
    const double g = std::sqrt(-2 * std::log(u())) * std::cos(6.283185307179586 * u());
    x[(size_t)i] = (float)(g * (i % 37 == 5 ? 6.0 : 1.0) * 0.02);
  }
  return x;
}

TEST_CASE("reference K quantizers write llama.cpp's bytes (golden hashes from its quantize_row_q*_K_ref)") {
  const struct {
    const char* name;
    uint64_t hash;
  } golden[] = {{"Q2_K", 0xcd75671be80ae68aull}, {"Q3_K", 0xf86c08c317c5c1afull}, {"Q4_K", 0x9ce03983260fa2c9ull},
                {"Q5_K", 0x3782a7f19bad1229ull}, {"Q6_K", 0x1269f48593c2b7cbull}};
  const std::vector<float> x = golden_input(8 * 256);
  for (const auto& g : golden) {
    CAPTURE(g.name);
    std::vector<uint8_t> b((size_t)(8 * dtype_by_name(g.name)->block_bytes));
    quantize_blocks_ref(g.name, x.data(), (int64_t)x.size(), b.data());
    uint64_t h = 1469598103934665603ull;
    for (uint8_t c : b) h = (h ^ c) * 1099511628211ull;
    CHECK(h == g.hash);
  }
}

TEST_CASE("reference fit of a constant and an all-zero super-block") {
  for (KQuantType t : kTypes) {
    const KQuantLayout& L = kquant_layout(t);
    std::vector<float> x(256, 0.f);
    float d, dmin;
    std::vector<int> sc((size_t)L.nsub()), mn((size_t)L.nsub());
    kquant_fit_superblock(L, x.data(), nullptr, &d, &dmin, sc.data(), mn.data());
    CHECK(d == 0.f);
    Tensor W = Tensor::from_data({1, 256}, x);
    const QuantizedLinear q = quantize_to_grid(W, grid_fit(W, grid_spec_kquant(t)));
    for (float v : q.dequantize().to_vector()) CHECK(v == 0.f);
  }
}

TEST_CASE("importance fit: never above the reference's weighted error, clearly below on skewed weights") {
  Rng g(9);
  for (KQuantType t : kTypes) {
    const KQuantLayout& L = kquant_layout(t);
    double tot_ref = 0, tot_imp = 0;
    for (int trial = 0; trial < 40; ++trial) {
      std::vector<float> x(256), w(256);
      for (int i = 0; i < 256; ++i) {
        x[i] = (float)(g.normal() * (i % 29 == trial % 29 ? 5.0 : 1.0));
        w[i] = (float)std::exp(3.0 * g.normal());  // importances over orders of magnitude
      }
      float d0, m0, d1, m1;
      std::vector<int> s0((size_t)L.nsub()), n0((size_t)L.nsub()), s1((size_t)L.nsub()), n1((size_t)L.nsub());
      kquant_fit_superblock(L, x.data(), nullptr, &d0, &m0, s0.data(), n0.data());
      kquant_fit_superblock(L, x.data(), w.data(), &d1, &m1, s1.data(), n1.data());
      auto werr = [&](float d, float dm, const std::vector<int>& s, const std::vector<int>& m) {
        double e = 0;
        for (int i = 0; i < 256; ++i) {
          const int k = i / L.sub;
          const float sc = d * (float)s[k], z = L.has_min() ? dm * (float)m[k] : (float)L.zero;
          const double r = kquant_value(L, kquant_code(L, x[i], sc, z), sc, z) - x[i];
          e += w[i] * r * r;
        }
        return e;
      };
      const double e0 = werr(d0, m0, s0, n0), e1 = werr(d1, m1, s1, n1);
      CHECK(e1 <= e0);
      tot_ref += e0;
      tot_imp += e1;
    }
    MESSAGE(std::string(L.name), " weighted error: importance / reference = ", tot_imp / tot_ref);
    CHECK(tot_imp < 0.9 * tot_ref);
  }
}

TEST_CASE("solvers on K-quant grids: GPTQ below RTN, QuantEase below GPTQ on the layer objective") {
  const test::Problem P = test::scaled_problem(24, 512, 5, 2048, 2.0);
  for (KQuantType t : {KQuantType::Q3_K, KQuantType::Q4_K, KQuantType::Q6_K}) {
    const GridSpec spec = grid_spec_kquant(t);
    const QuantizedLinear rq = quantize_to_grid(P.W, grid_fit(P.W, spec));
    const double f_rtn = objective(P.W, rq.dequantize(), P.S).value;
    GptqOptions go;
    const GptqResult gr = gptq(P.W, P.S, spec, go);
    const double f_gptq = objective(P.W, gr.q.dequantize(), P.S).value;
    QuantEaseOptions qo;
    qo.iters = 6;
    const QuantEaseResult qr = quantease(P.W, P.S, spec, qo);
    const double f_qe = objective(P.W, qr.q.dequantize(), P.S).value;
    MESSAGE(std::string(kquant_layout(t).name), " objective RTN ", f_rtn, " GPTQ ", f_gptq, " QuantEase ", f_qe);
    CHECK(f_gptq < 0.9 * f_rtn);
    CHECK(f_qe < f_gptq);
    // The solvers' codes are on the format: exact blocks.
    check_kquant_encodable(gr.q, kquant_layout(t).name, "gptq");
    check_kquant_encodable(qr.q, kquant_layout(t).name, "quantease");
    std::vector<uint8_t> row((size_t)(512 / 256 * dtype_by_name(kquant_layout(t).name)->block_bytes));
    for (int64_t r = 0; r < P.W.size(0); ++r) encode_kquant_row(qr.q, r, kquant_layout(t).name, row.data(), "quantease");
  }
}

TEST_CASE("K-quant grids refuse widths that are not a multiple of 256, naming both") {
  const Tensor W = heavy_weights(2, 320, 1);
  CHECK_THROWS_WITH_AS(grid_fit(W, grid_spec_kquant(KQuantType::Q4_K)), doctest::Contains("Q4_K needs rows of a multiple of 256 weights; this weight has 320"), Error);
  GridSpec s = grid_spec_kquant(KQuantType::Q4_K);
  s.bits = 3;
  CHECK_THROWS_WITH_AS(s.validate(), doctest::Contains("a Q4_K grid has 4-bit codes in sub-blocks of 32"), Error);
}

// Every linear on its K grid (RTN), the weight replaced by the dequantized codes; linears whose
// input width is not a multiple of 256 get the 32-block fallback (4-bit sym, llama.cpp mapping).
static void quantize_k(Model& m, KQuantType t) {
  for (int b = 0; b < m.n_blocks(); ++b)
    for (Linear& l : m.block_mut(b).linears) {
      GridSpec s = grid_spec_kquant(t);
      if (l.in_features() % 256) {
        s = GridSpec{};
        s.bits = 4;
        s.sym = true;
        s.group = 32;
        s.mapping = GridMapping::Llamacpp;
        s.f16_scales = true;
      }
      auto q = std::make_shared<QuantizedLinear>(quantize_to_grid(l.weight, grid_fit(l.weight, s)));
      l.weight = q->dequantize();
      l.quant = q;
    }
}

TEST_CASE("K-quant model -> GGUF -> load: weights exact, K types where 256 divides, Q4_0 fallback elsewhere") {
  for (KQuantType t : kTypes) {
    const char* name = kquant_layout(t).name;
    Model m = test::tiny_model(4, true, false, true, 1, 256, 320);  // down: 320 inputs -> fallback
    quantize_k(m, t);
    const std::string p = tmpdir() + "/" + name + ".gguf";
    save_gguf(m, nullptr, p, name);
    GGUFFile f = gguf_read(p);
    for (auto& ti : f.tensors) {
      if (ti.name.find("ffn_down.") != std::string::npos) CHECK(ti.type_name() == "Q4_0");
      else if (ti.name.find("attn_q.") != std::string::npos || ti.name.find("ffn_up.") != std::string::npos) CHECK(ti.type_name() == name);
    }
    Model g = load_model(resolve_model_files(p), false);
    for (const LinearSpec& s : kLlama.linears) {
      Tensor want = m.block(0).linear(s.name).weight;
      const std::string n = s.name;
      if (n == "q") want = rope_halves_from_pairs(want, m.cfg.n_heads);
      if (n == "k") want = rope_halves_from_pairs(want, m.cfg.n_kv_heads);
      CHECK_MESSAGE(g.block(0).linear(n).weight.to_vector() == want.to_vector(), name, " linear ", n);
    }
    // Storage: the K type's bits per weight on its linears.
    const StorageBits sb = storage_bits(*m.block(0).linear("q").quant);
    CHECK((sb.codes + sb.params) / (double)sb.weights == doctest::Approx(kquant_layout(t).bpw));
  }
}

TEST_CASE("K-quant model -> qforge format -> load: grids, integers and codes exact") {
  Model m = test::tiny_model(6, true, false, true, 1, 256, 512);
  quantize_k(m, KQuantType::Q5_K);
  const std::string p = tmpdir() + "/k.safetensors";
  save_qforge(m, nullptr, p);
  Model g = load_qforge(p);
  for (const LinearSpec& s : kLlama.linears) {
    const QuantizedLinear& a = *m.block(0).linear(s.name).quant;
    const QuantizedLinear& b = *g.block(0).linear(s.name).quant;
    CHECK(b.grid.spec.kind == GridKind::KQuant);
    CHECK(b.grid.spec.ktype == KQuantType::Q5_K);
    CHECK(a.grid.kq_d == b.grid.kq_d);
    CHECK(a.grid.kq_dmin == b.grid.kq_dmin);
    CHECK(a.grid.kq_sc == b.grid.kq_sc);
    CHECK(a.grid.kq_mn == b.grid.kq_mn);
    CHECK(a.dequantize().to_vector() == b.dequantize().to_vector());
  }
}
