// qforge tests — the architectures beyond Llama (docs/architecture.md#architectures): Qwen3's
// per-head q/k norms, Gemma 2/3's pre- and post-norms, GeGLU, √dim embeddings, score scale,
// soft caps, decoupled head size and sliding-window layers with their own RoPE base; Mistral's
// sliding window on the Llama block. Each tiny random model (every feature switched on) is run
// against an f64 reference forward written here from the formulas, its gradients against
// central differences of that reference, and its HF / GGUF / qforge exports are loaded back
// and must give the same logits bit for bit.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>

#include "calib/calibration.h"
#include "core/io.h"
#include "core/rng.h"
#include "formats/export.h"
#include "formats/export_hf.h"
#include "formats/gguf.h"
#include "formats/loader.h"
#include "model/backward.h"
#include "model/forward.h"
#include "model/moe_from_dense.h"
#include "solvers/block_finetune.h"
#include "ref_llama.h"
#include "scratch_dir.h"
#include "tiny_model.h"

using namespace qf;
using namespace qf::test;

namespace {

// A tiny model of architecture `arch` with every feature it can have switched on: head size 6
// with 3 heads over dim 16 (q is [18, 16]), 1 kv head, sliding layers (window 3 in 8-token
// windows) alternating with global ones, a sliding-layer RoPE base, and for Gemma the score
// scale and (Gemma 2) both soft caps.
Model tiny_arch_model(const std::string& arch, uint64_t seed, int n_layers = 3) {
  Model m;
  ModelConfig& c = m.cfg;
  c.arch = arch;
  c.dim = 16;
  c.hidden_dim = 20;
  c.n_layers = n_layers;
  c.n_heads = 3;
  c.n_kv_heads = 1;
  c.head_size = 6;
  c.vocab_size = 13;
  c.seq_len = 8;
  c.norm_eps = 1e-6f;
  c.rope_theta = 1000.f;
  c.rope_interleaved = false;  // HF order, as every non-llama2.c checkpoint
  c.tied_classifier = arch != "llama";
  c.sliding_window = 3;
  c.swa_layers.assign(n_layers, 0);
  for (int l = 0; l < n_layers; ++l) c.swa_layers[l] = l % 2 == 0;
  if (arch == "llama") c.swa_layers.assign(n_layers, 1);  // Mistral: every layer slides
  if (arch == "gemma3") c.rope_theta_swa = 50.f;
  if (arch == "gemma2" || arch == "gemma3") c.attn_scale = 0.3f;
  if (arch == "gemma2") c.attn_softcap = 2.f, c.final_softcap = 4.f;
  if (arch_spec(arch).kind == BlockKind::LlamaMoe) {  // 5 experts, top 2, of width 12; Qwen2-MoE's shared expert 10
    c.n_experts = 5, c.n_experts_used = 2, c.expert_hidden = 12;
    c.shared_hidden = arch_spec(arch).find("shared.gate") ? 10 : 0;
    c.moe_norm_topk = arch != "qwen2_moe";  // Qwen2-MoE's default norm_topk_prob is false
    if (arch == "mixtral") c.hidden_dim = 12;  // Mixtral's FFN width is its experts'
    if (arch != "mixtral") c.swa_layers.clear(), c.sliding_window = 0;
  }
  validate_config(c, "tiny " + arch);
  const ArchSpec& a = arch_of(c);
  Rng rng(seed);
  m.tok_emb = randn_tensor(rng, {c.vocab_size, c.dim}, arch == "llama" ? 1.0 : 0.3);
  for (int l = 0; l < n_layers; ++l) {
    Block b;
    // Gemma's HF files store g − 1: exact (and so round-trips) for g in [0.5, 2].
    for (const NormSpec& n : a.norms) b.norm(n.name) = randn_tensor(rng, {norm_size(c, n)}, a.hf_norm_shift ? 0.1 : 0.2, 1.0);
    for (const BlockLinear& s : block_linears(c)) {
      Linear lin;
      lin.name = s.name;
      lin.input = s.spec->input;
      const Shape sh = linear_shape(c, s.name);
      lin.weight = randn_tensor(rng, sh, 1.0 / std::sqrt((double)sh[1]));
      if (arch == "qwen2_moe" && (s.name == "q" || s.name == "k" || s.name == "v")) lin.bias = randn_tensor(rng, {sh[0]}, 0.2);
      b.linears.push_back(std::move(lin));
    }
    m.blocks.push_back(std::move(b));
  }
  m.final_norm = randn_tensor(rng, {c.dim}, 0.2, 1.0);
  m.classifier = c.tied_classifier ? m.tok_emb : randn_tensor(rng, {c.vocab_size, c.dim}, 0.5);
  return m;
}

// ---- the f64 reference, from the formulas (parameters held as Vec so differences can move them)

struct RefBlock {
  std::map<std::string, Vec> norm;   // by canonical name
  std::map<std::string, Vec> w;      // linear weights by canonical name
  std::map<std::string, Shape> shape;
  std::map<std::string, Vec> bias;   // absent: none
};
struct RefModel {
  ModelConfig c;
  Vec emb, fnorm, cls;
  std::vector<RefBlock> blocks;
};

RefModel ref_of(const Model& m) {
  RefModel r{m.cfg, to_vec(m.tok_emb), to_vec(m.final_norm), m.cfg.tied_classifier ? Vec{} : to_vec(m.classifier), {}};
  for (int l = 0; l < m.n_blocks(); ++l) {
    RefBlock rb;
    for (const NormSpec& n : arch_of(m.cfg).norms) rb.norm[n.name] = to_vec(m.block(l).norm(n.name));
    for (const Linear& lin : m.block(l).linears) {
      rb.w[lin.name] = to_vec(lin.weight), rb.shape[lin.name] = lin.weight.shape();
      if (lin.bias.defined()) rb.bias[lin.name] = to_vec(lin.bias);
    }
    r.blocks.push_back(std::move(rb));
  }
  return r;
}

Vec lin(const RefBlock& b, const std::string& n, const Vec& x) {
  return ref_linear(x, b.w.at(n), b.bias.count(n) ? b.bias.at(n) : Vec{}, (int)b.shape.at(n)[0], (int)b.shape.at(n)[1]);
}
Vec add(Vec a, const Vec& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

// The MoE FFN in f64 (docs/architecture.md#mixture-of-experts): per token, softmax over every
// expert's router logit, the k most probable (renormalized when moe_norm_topk), Σ weight ·
// down(silu(gate x) ⊙ up x); plus the shared expert times sigmoid(shared_gate · x).
Vec ref_moe(const ModelConfig& c, const RefBlock& b, const Vec& xn) {
  const int D = c.dim, E = c.n_experts, K = c.n_experts_used;
  const size_t N = xn.size() / D;
  Vec out(xn.size(), 0.0);
  const Vec logits = lin(b, "router", xn);
  for (size_t t = 0; t < N; ++t) {
    const Vec x(xn.begin() + t * D, xn.begin() + (t + 1) * D);
    Vec p(E);
    double mx = -1e300, sum = 0;
    for (int e = 0; e < E; ++e) mx = std::max(mx, logits[t * E + e]);
    for (int e = 0; e < E; ++e) sum += (p[e] = std::exp(logits[t * E + e] - mx));
    for (double& v : p) v /= sum;
    std::vector<int> order(E);
    for (int e = 0; e < E; ++e) order[e] = e;
    std::sort(order.begin(), order.end(), [&](int a, int b2) { return p[a] > p[b2]; });
    double ks = 0;
    for (int j = 0; j < K; ++j) ks += p[order[j]];
    for (int j = 0; j < K; ++j) {
      const int e = order[j];
      const double w = c.moe_norm_topk ? p[e] / ks : p[e];
      const std::string pre = "experts." + std::to_string(e) + ".";
      const Vec y = lin(b, pre + "down", ref_swiglu(lin(b, pre + "gate", x), lin(b, pre + "up", x)));
      for (int d = 0; d < D; ++d) out[t * D + d] += w * y[d];
    }
    if (c.shared_hidden > 0) {
      const Vec y = lin(b, "shared.down", ref_swiglu(lin(b, "shared.gate", x), lin(b, "shared.up", x)));
      const double sg = 1.0 / (1.0 + std::exp(-lin(b, "shared_gate", x)[0]));
      for (int d = 0; d < D; ++d) out[t * D + d] += sg * y[d];
    }
  }
  return out;
}

Vec ref_block(const RefModel& r, int layer, const Vec& x, int B, int T) {
  const ModelConfig& c = r.c;
  const RefBlock& b = r.blocks[(size_t)layer];
  const double eps = c.norm_eps;
  const int hd = c.head_dim();
  // RoPE frequencies: a sliding layer's own base when set, in f64
  const double theta = c.is_swa(layer) && c.rope_theta_swa > 0 ? c.rope_theta_swa : c.rope_theta;
  Vec freq(hd / 2);
  for (int i = 0; i < hd / 2; ++i) freq[i] = std::pow(theta, -2.0 * i / hd);
  const Vec xn = ref_rmsnorm(x, b.norm.at("attn_norm"), eps);
  Vec q = lin(b, "q", xn), k = lin(b, "k", xn);
  const Vec v = lin(b, "v", xn);
  if (b.norm.count("q_norm")) q = ref_rmsnorm(q, b.norm.at("q_norm"), eps), k = ref_rmsnorm(k, b.norm.at("k_norm"), eps);
  q = ref_rope(q, c.n_heads, hd, T, freq, false);
  k = ref_rope(k, c.n_kv_heads, hd, T, freq, false);
  Vec a = lin(b, "o", ref_attention_ex(q, k, v, B, T, c.n_heads, c.n_kv_heads, hd, c.window(layer), c.attn_scale, c.attn_softcap));
  if (b.norm.count("post_attn_norm")) a = ref_rmsnorm(a, b.norm.at("post_attn_norm"), eps);
  const Vec h = add(x, a);
  const Vec xn2 = ref_rmsnorm(h, b.norm.at("ffn_norm"), eps);
  if (arch_of(c).kind == BlockKind::LlamaMoe) return add(h, ref_moe(c, b, xn2));
  const Vec g = lin(b, "gate", xn2), u = lin(b, "up", xn2);
  Vec f = lin(b, "down", arch_of(c).act == GluAct::GeluTanh ? ref_geglu(g, u) : ref_swiglu(g, u));
  if (b.norm.count("post_ffn_norm")) f = ref_rmsnorm(f, b.norm.at("post_ffn_norm"), eps);
  return add(h, f);
}

// logits [N, V]
Vec ref_logits(const RefModel& r, const std::vector<int32_t>& tok, int B, int T) {
  const int D = r.c.dim, V = r.c.vocab_size;
  const double es = arch_of(r.c).embed_scaled ? std::sqrt((double)D) : 1.0;
  Vec x(tok.size() * D);
  for (size_t i = 0; i < tok.size(); ++i)
    for (int j = 0; j < D; ++j) x[i * D + j] = es * r.emb[(size_t)tok[i] * D + j];
  for (int l = 0; l < (int)r.blocks.size(); ++l) x = ref_block(r, l, x, B, T);
  const Vec hn = ref_rmsnorm(x, r.fnorm, r.c.norm_eps);
  Vec z = ref_linear(hn, r.cls.empty() ? r.emb : r.cls, {}, V, D);
  if (r.c.final_softcap > 0)
    for (double& e : z) e = r.c.final_softcap * std::tanh(e / r.c.final_softcap);
  return z;
}

double ref_loss(const RefModel& r, const std::vector<int32_t>& tok, int B, int T) {
  const int V = r.c.vocab_size;
  const Vec z = ref_logits(r, tok, B, T);
  double loss = 0;
  int n = 0;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t + 1 < T; ++t) {
      const double* row = z.data() + (size_t)(b * T + t) * V;
      double mx = -1e300, se = 0;
      for (int j = 0; j < V; ++j) mx = std::max(mx, row[j]);
      for (int j = 0; j < V; ++j) se += std::exp(row[j] - mx);
      loss += std::log(se) + mx - row[tok[(size_t)(b * T + t + 1)]];
      ++n;
    }
  return loss / n;
}

double max_rel(const Vec& a, const Vec& b) {
  double d = 0, s = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i])), s = std::max(s, std::abs(b[i]));
  return d / s;
}

// Central differences of L w.r.t. every entry of p against the analytic gradient: the worst
// |a − n| / max(|n|, 1e-3·max|n|).
double fd_rel(Vec& p, const std::vector<float>& analytic, const std::function<double()>& L) {
  REQUIRE(analytic.size() == p.size());
  std::vector<double> num(p.size());
  double scale = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    const double p0 = p[i], h = 1e-5 * std::max(1.0, std::abs(p0));
    p[i] = p0 + h;
    const double lp = L();
    p[i] = p0 - h;
    const double lm = L();
    p[i] = p0;
    num[i] = (lp - lm) / (2 * h);
    scale = std::max(scale, std::abs(num[i]));
  }
  double worst = 0;
  for (size_t i = 0; i < p.size(); ++i) worst = std::max(worst, std::abs(analytic[i] - num[i]) / std::max(std::abs(num[i]), 1e-3 * scale));
  return worst;
}

std::vector<int32_t> tokens(uint64_t seed, int n, int V) {
  Rng g(seed);
  std::vector<int32_t> t((size_t)n);
  for (auto& e : t) e = (int32_t)g.randint(0, V - 1);
  return t;
}

const char* const kArchs[] = {"llama", "qwen3", "gemma2", "gemma3"};
const char* const kMoeArchs[] = {"mixtral", "qwen2_moe", "qwen3_moe"};

Model load(const std::string& path) { return load_model(resolve_model_files(path)); }

}  // namespace

TEST_CASE("architectures: tables") {
  CHECK(arch_spec("qwen3").has_norm("q_norm"));
  CHECK_FALSE(arch_spec("gemma2").has_norm("q_norm"));
  CHECK(arch_spec("gemma3").has_norm("post_ffn_norm"));
  CHECK(arch_spec("gemma3").act == GluAct::GeluTanh);
  CHECK(std::string(arch_spec("gemma3").norm("post_attn_norm").hf) == "post_attention_layernorm");
  CHECK(std::string(arch_spec("llama").norm("ffn_norm").hf) == "post_attention_layernorm");  // the name clash the tables resolve
  CHECK(std::string(arch_spec("gemma3").norm("ffn_norm").hf) == "pre_feedforward_layernorm");
  CHECK_THROWS_WITH_AS(arch_spec("mamba"), doctest::Contains("known: llama, qwen3, gemma2, gemma3, mixtral, qwen2_moe, qwen3_moe"), Error);
  CHECK_THROWS_WITH_AS(arch_spec("qwen3").norm("post_ffn_norm"), doctest::Contains("qwen3 blocks have: attn_norm, ffn_norm, q_norm, k_norm"), Error);
  REQUIRE(gguf_arch("qwen2"));
  CHECK(std::string(gguf_arch("qwen2")->arch) == "llama");
  CHECK_FALSE(gguf_arch("qwen2")->permuted_qk);
  CHECK(gguf_arch("llama")->permuted_qk);
  REQUIRE(gguf_arch("phi3"));
  CHECK(std::string(gguf_arch("phi3")->arch) == "llama");
  CHECK(gguf_arch("phi3")->fused.size() == 2);  // attn_qkv = q, k, v; ffn_up = gate, up
  CHECK(gguf_arch("phi3")->ignores_window);     // as llama.cpp ("Phi SWA is currently disabled")
  CHECK(gguf_arch("mamba") == nullptr);
}

TEST_CASE("architectures: forward equals the f64 reference; gradients equal its differences") {
  for (const char* arch : kArchs) {
    const std::string arch_name = arch;
    CAPTURE(arch_name);
    const Model m = tiny_arch_model(arch, 100 + std::string(arch).size());
    RefModel r = ref_of(m);
    const int B = 2, T = 8;
    const std::vector<int32_t> tok = tokens(7, B * T, m.cfg.vocab_size);
    const Vec ours = to_vec(forward(m, tok, B, T)), ref = ref_logits(r, tok, B, T);
    CHECK(max_rel(ours, ref) < 2e-6);

    BlockGrads g0;
    const ModelGrads mg = model_loss_backward(
        m, tok, B, T, [](int l) { return l == 0 ? BlockGradRequest::all() : BlockGradRequest::none(); },
        [&](int l, BlockGrads& g) {
          if (l == 0) g0 = g;
        },
        true);
    auto L = [&] { return ref_loss(r, tok, B, T); };
    CHECK(std::abs(mg.loss - L()) < 1e-5 * L());
    for (const LinearSpec& s : arch_of(m.cfg).linears) {
      CAPTURE(s.name);
      CHECK(fd_rel(r.blocks[0].w[s.name], g0.weight(s.name).to_vector(), L) < 1e-3);
    }
    const std::map<std::string, const Tensor*> dnorm = {{"attn_norm", &g0.d_attn_norm},       {"ffn_norm", &g0.d_ffn_norm},
                                                        {"q_norm", &g0.d_q_norm},             {"k_norm", &g0.d_k_norm},
                                                        {"post_attn_norm", &g0.d_post_attn_norm}, {"post_ffn_norm", &g0.d_post_ffn_norm}};
    for (const NormSpec& n : arch_of(m.cfg).norms) {
      CAPTURE(n.name);
      REQUIRE(dnorm.at(n.name)->defined());
      CHECK(fd_rel(r.blocks[0].norm[n.name], dnorm.at(n.name)->to_vector(), L) < 1e-3);
    }
    CHECK(fd_rel(r.fnorm, mg.d_final_norm.to_vector(), L) < 1e-3);
    CHECK(fd_rel(r.emb, mg.d_tok_emb.to_vector(), L) < 1e-3);  // √dim embedding scale (Gemma), tied classifier
  }
}

TEST_CASE("architectures: a sliding layer does not see past its window") {
  // One sliding layer: the logits at positions ≥ window cannot depend on token 0.
  Model m = tiny_arch_model("gemma3", 3, 1);
  REQUIRE(m.cfg.is_swa(0));
  const int T = 8, W = m.cfg.sliding_window;
  std::vector<int32_t> a = tokens(9, T, m.cfg.vocab_size), b = a;
  b[0] = (a[0] + 5) % m.cfg.vocab_size;
  const Tensor la = forward(m, a, 1, T), lb = forward(m, b, 1, T);
  const int64_t V = m.cfg.vocab_size;
  for (int t = 0; t < T; ++t) {
    double d = 0;
    for (int64_t j = 0; j < V; ++j) d = std::max(d, (double)std::abs(la.f32()[t * V + j] - lb.f32()[t * V + j]));
    if (t >= W) CHECK(d == 0.0);
    else CHECK(d > 0.0);
  }
  // The same layer made global sees it.
  m.cfg.swa_layers.clear();
  m.cfg.sliding_window = 0;
  const Tensor ga = forward(m, a, 1, T), gb = forward(m, b, 1, T);
  CHECK(std::abs(ga.f32()[(T - 1) * V] - gb.f32()[(T - 1) * V]) > 0);
}

TEST_CASE("architectures: HF, GGUF and qforge exports load back with the same logits") {
  const std::string dir = qf_test::scratch_dir("archs");
  for (const char* arch : kArchs) {
    const std::string arch_name = arch;
    CAPTURE(arch_name);
    const Model m = tiny_arch_model(arch, 200 + std::string(arch).size());
    const std::vector<int32_t> tok = tokens(11, 16, m.cfg.vocab_size);
    const Tensor want = forward(m, tok, 2, 8);
    auto same = [&](const Model& back, const char* what) {
      const std::string what_s = what;
      CAPTURE(what_s);
      CHECK(back.cfg.arch == m.cfg.arch);
      CHECK(back.cfg.swa_layers == m.cfg.swa_layers);
      CHECK(back.cfg.head_dim() == 6);
      const Tensor got = forward(back, tok, 2, 8);
      CHECK(std::memcmp(got.f32(), want.f32(), sizeof(float) * want.numel()) == 0);
      CHECK(back.fingerprint() == m.fingerprint());
    };
    const std::string hf = dir + "/" + arch + "-hf";
    save_hf(m, nullptr, hf, "F32");
    same(load(hf), "hf");
    const std::string q = dir + "/" + arch + ".safetensors";
    save_qforge(m, nullptr, q);
    same(load(q), "qforge");
    const std::string gg = dir + "/" + arch + ".gguf";
    // What llama.cpp's architecture cannot hold is refused, not written silently wrong: llama and
    // qwen3 have no sliding layers; Gemma's score scale is derived from the head size.
    const bool no_swa = std::string(arch) == "llama" || std::string(arch) == "qwen3";
    CHECK_THROWS_WITH_AS(save_gguf(m, nullptr, gg, "F32"),
                         doctest::Contains(no_swa ? "no sliding-window layers" : "differs from the 0.408248 llama.cpp's"), Error);
    Model fit = m.clone();
    if (no_swa) fit.cfg.swa_layers.clear(), fit.cfg.sliding_window = 0;
    else fit.cfg.attn_scale = 1.0f / std::sqrt(6.0f);
    const Tensor fit_logits = forward(fit, tok, 2, 8);
    save_gguf(fit, nullptr, gg, "F32");
    const Model back = load(gg);
    const Tensor got = forward(back, tok, 2, 8);
    CHECK(std::memcmp(got.f32(), fit_logits.f32(), sizeof(float) * got.numel()) == 0);
    CHECK(back.fingerprint() == fit.fingerprint());
  }
}

TEST_CASE("architectures: HF configs that do not fit are refused by name") {
  const std::string dir = qf_test::scratch_dir("archs_bad");
  const Model m = tiny_arch_model("qwen3", 5);
  const std::string hf = dir + "/q";
  save_hf(m, nullptr, hf, "F32");
  const std::string cfg = read_file(hf + "/config.json");
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = cfg;
    const size_t at = s.find(from);
    REQUIRE(at != std::string::npos);
    s.replace(at, from.size(), to);
    write_file_atomic(hf + "/config.json", s);
  };
  with("\"full_attention\"", "\"chunked_attention\"");
  CHECK_THROWS_WITH_AS(load(hf), doctest::Contains("field 'layer_types' entry 2"), Error);
  with("\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"");
  CHECK_THROWS_WITH_AS(load(hf), doctest::Contains("field 'hidden_act'"), Error);
  with("\"sliding_window\": 3", "\"sliding_window\": null");
  CHECK_THROWS_WITH_AS(load(hf), doctest::Contains("'sliding_window' is not set"), Error);
  write_file_atomic(hf + "/config.json", cfg);
  CHECK(load(hf).cfg.sliding_window == 3);

  // transformers' Gemma 3 never applies an attention soft cap: one in its config is refused.
  const Model g = tiny_arch_model("gemma3", 6);
  const std::string gd = dir + "/g";
  save_hf(g, nullptr, gd, "F32");
  std::string gc = read_file(gd + "/config.json");
  const std::string from = "\"attn_logit_softcapping\": null";
  REQUIRE(gc.find(from) != std::string::npos);
  gc.replace(gc.find(from), from.size(), "\"attn_logit_softcapping\": 50.0");
  write_file_atomic(gd + "/config.json", gc);
  CHECK_THROWS_WITH_AS(load(gd), doctest::Contains("field 'attn_logit_softcapping' is set for Gemma3ForCausalLM"), Error);
  Model capped = g.clone();
  capped.cfg.attn_softcap = 50.f;
  CHECK_THROWS_WITH_AS(save_hf(capped, nullptr, dir + "/g2", "F32"), doctest::Contains("ignores attn_logit_softcapping"), Error);
}

TEST_CASE("architectures: block finetuning trains every norm a Gemma 3 block has, with the backward's gradients") {
  Model m = tiny_arch_model("gemma3", 21, 2);
  const Model target_model = tiny_arch_model("gemma3", 22, 2);  // another block's outputs as targets
  const int B = 2, T = 8;
  const std::vector<int32_t> tok = tokens(23, B * T, m.cfg.vocab_size);
  const Tensor x = embed(m, tok);
  const Tensor t = block_forward(target_model, 0, x, B, T);
  const BlockParamGrads pg = block_param_grads(m, 0, x, t, B, T, false, true);
  REQUIRE(pg.norm_names.size() == 6);
  // The same numbers the backward gives (checked against differences above) for dy = 2(y − t)/n.
  const Tensor y = block_forward(m, 0, x, B, T);
  Tensor dy = y.clone();
  {
    float* d = dy.f32();
    const float *yp = y.f32(), *tp = t.f32();
    for (int64_t i = 0; i < dy.numel(); ++i) d[i] = (float)(2.0 * ((double)yp[i] - tp[i]) / (double)dy.numel());
  }
  BlockGrads bg;
  BlockGradRequest req;
  req.norms = true;
  block_backward(m, 0, x, B, T, dy, &bg, req);
  for (size_t k = 0; k < pg.norm_names.size(); ++k) {
    CAPTURE(pg.norm_names[k]);
    const std::vector<float> want = bg.norm(pg.norm_names[k]).to_vector();
    REQUIRE(want.size() == pg.dnorms[k].size());
    double worst = 0, scale = 0;
    for (size_t j = 0; j < want.size(); ++j) worst = std::max(worst, std::abs(pg.dnorms[k][j] - want[j])), scale = std::max(scale, (double)std::abs(want[j]));
    CHECK(worst <= 1e-5 * scale);
    CHECK(scale > 0);
  }
  std::map<std::string, Tensor> before;
  for (const NormSpec& n : arch_of(m.cfg).norms) before[n.name] = m.block(0).norm(n.name).clone();
  FinetuneOptions opt;
  opt.params = {"norms"};
  opt.lr = 1e-2;
  opt.epochs = 3;
  const FinetuneResult r = block_finetune(m, 0, x, t, B, T, opt);
  CHECK(r.loss_after < r.loss_before);
  CHECK(r.nparams == 4 * 16 + 2 * 6);
  for (const NormSpec& n : arch_of(m.cfg).norms) {
    CAPTURE(n.name);
    const std::vector<float> a = before[n.name].to_vector(), b = m.block(0).norm(n.name).to_vector();
    CHECK(a != b);  // every norm moved
  }
}

TEST_CASE("architectures: a Phi-3 GGUF (fused attn_qkv and ffn_up, as llama.cpp's converter writes) loads as its parts") {
  // A llama-table model in HF row order, written by hand in llama.cpp's phi3 layout.
  const Model m = tiny_model(32, /*interleaved=*/false, /*qkv_bias=*/false, /*tied=*/false, 2);
  const ModelConfig& c = m.cfg;
  const std::string path = qf_test::scratch_dir("archs_phi3") + "/phi3.gguf";
  GGUFWriter w;
  const std::string A = "phi3.";
  w.add_kv("general.architecture", GGUFValue::make_str("phi3"));
  w.add_kv(A + "context_length", GGUFValue::make_u32((uint32_t)c.seq_len));
  w.add_kv(A + "embedding_length", GGUFValue::make_u32((uint32_t)c.dim));
  w.add_kv(A + "block_count", GGUFValue::make_u32((uint32_t)c.n_layers));
  w.add_kv(A + "feed_forward_length", GGUFValue::make_u32((uint32_t)c.hidden_dim));
  w.add_kv(A + "rope.dimension_count", GGUFValue::make_u32((uint32_t)c.head_dim()));
  w.add_kv(A + "attention.head_count", GGUFValue::make_u32((uint32_t)c.n_heads));
  w.add_kv(A + "attention.head_count_kv", GGUFValue::make_u32((uint32_t)c.n_kv_heads));
  w.add_kv(A + "attention.layer_norm_rms_epsilon", GGUFValue::make_f32(c.norm_eps));
  w.add_kv(A + "rope.freq_base", GGUFValue::make_f32(c.rope_theta));
  w.add_kv(A + "attention.sliding_window", GGUFValue::make_u32(3));  // llama.cpp's phi3 ignores it; so must qforge
  w.add_kv(A + "vocab_size", GGUFValue::make_u32((uint32_t)c.vocab_size));
  const uint32_t f32 = 0;
  auto rows = [](std::vector<Tensor> parts) {
    return [parts](const GGUFWriter::Sink& out) {
      for (const Tensor& t : parts) {
        const Tensor ct = t.contiguous();
        out(ct.f32(), (size_t)ct.numel() * 4);
      }
    };
  };
  const uint64_t D = c.dim, V = c.vocab_size, F = c.hidden_dim, Q = c.q_dim(), KV = c.kv_dim();
  w.add_tensor("token_embd.weight", {D, V}, f32, rows({m.tok_emb}));
  for (int b = 0; b < c.n_layers; ++b) {
    const Block& blk = m.block(b);
    const std::string p = "blk." + std::to_string(b) + ".";
    w.add_tensor(p + "attn_norm.weight", {D}, f32, rows({blk.attn_norm}));
    w.add_tensor(p + "attn_qkv.weight", {D, Q + 2 * KV}, f32, rows({blk.linear("q").weight, blk.linear("k").weight, blk.linear("v").weight}));
    w.add_tensor(p + "attn_output.weight", {Q, D}, f32, rows({blk.linear("o").weight}));
    w.add_tensor(p + "ffn_norm.weight", {D}, f32, rows({blk.ffn_norm}));
    w.add_tensor(p + "ffn_up.weight", {D, 2 * F}, f32, rows({blk.linear("gate").weight, blk.linear("up").weight}));
    w.add_tensor(p + "ffn_down.weight", {F, D}, f32, rows({blk.linear("down").weight}));
  }
  w.add_tensor("output_norm.weight", {D}, f32, rows({m.final_norm}));
  w.add_tensor("output.weight", {D, V}, f32, rows({m.classifier}));
  w.write(path);
  const Model back = load(path);
  CHECK(back.cfg.arch == "llama");
  CHECK(back.cfg.sliding_window == 0);
  const std::vector<int32_t> tok = tokens(33, 16, c.vocab_size);
  const Tensor a = forward(m, tok, 2, 8), b = forward(back, tok, 2, 8);
  CHECK(std::memcmp(a.f32(), b.f32(), sizeof(float) * a.numel()) == 0);
}

TEST_CASE("architectures: mixture-of-experts tables, forward against the f64 reference, round trips, refusals") {
  {  // per-expert rows expand by the config; names resolve to their row and expert
    Model m = tiny_arch_model("qwen2_moe", 1);
    const std::vector<BlockLinear> ls = block_linears(m.cfg);
    REQUIRE(ls.size() == 4 + 1 + 3 * 5 + 4);  // q k v o, router, 5 × (gate, up, down), shared gate/up/down, shared_gate
    CHECK(ls[4].name == "router");
    CHECK(ls[5].name == "experts.0.gate");
    CHECK(ls[7].name == "experts.0.down");
    CHECK(ls[19].name == "experts.4.down");
    CHECK(ls[19].expert == 4);
    CHECK(ls[23].name == "shared_gate");
    int e = -1;
    REQUIRE(arch_spec("qwen2_moe").find("experts.3.up", &e));
    CHECK(e == 3);
    CHECK(arch_spec("qwen2_moe").find("experts.03.up") == nullptr);
    CHECK(linear_shape(m.cfg, "experts.3.down") == Shape{16, 12});
    CHECK(linear_shape(m.cfg, "router") == Shape{5, 16});
    CHECK(linear_shape(m.cfg, "shared_gate") == Shape{1, 16});
    CHECK_THROWS_WITH_AS(linear_shape(m.cfg, "experts.5.gate"), doctest::Contains("expert 5 out of range (the model has 5 experts"), Error);
    CHECK(m.block(0).linear("experts.2.gate").input == Site::ExpertIn);
    CHECK(arch_spec("mixtral").find("shared.gate") == nullptr);
    ModelConfig bad = m.cfg;
    bad.n_experts_used = 6;
    CHECK_THROWS_WITH_AS(validate_config(bad, "x"), doctest::Contains("n_experts_used"), Error);
    bad = m.cfg;
    bad.shared_hidden = 0;
    CHECK_THROWS_WITH_AS(validate_config(bad, "x"), doctest::Contains("this architecture has a shared expert"), Error);
  }
  const std::string dir = qf_test::scratch_dir("archs_moe");
  for (const char* arch : kMoeArchs) {
    const std::string arch_name = arch;
    CAPTURE(arch_name);
    const Model m = tiny_arch_model(arch, 300 + std::string(arch).size());
    const int B = 2, T = 8;
    const std::vector<int32_t> tok = tokens(13, B * T, m.cfg.vocab_size);
    const Tensor want = forward(m, tok, B, T);
    CHECK(max_rel(to_vec(want), ref_logits(ref_of(m), tok, B, T)) < 2e-6);
    // Routing: every token's k experts are distinct, best first, weights as configured.
    const Tensor xn = m.tok_emb.rows(0, 3).contiguous();
    const MoeRouting r = moe_route(m.cfg, linear_forward(xn, m.block(0).linear("router")));
    for (int t = 0; t < 3; ++t) {
      CHECK(r.expert[t * 2] != r.expert[t * 2 + 1]);
      CHECK(r.weight[t * 2] >= r.weight[t * 2 + 1]);
      if (m.cfg.moe_norm_topk) CHECK(std::abs(r.weight[t * 2] + r.weight[t * 2 + 1] - 1.f) < 1e-6f);
      else CHECK(r.weight[t * 2] + r.weight[t * 2 + 1] < 1.f);
    }
    // The qforge format keeps every expert.
    const std::string q = dir + "/" + arch + ".safetensors";
    save_qforge(m, nullptr, q);
    const Model back = load(q);
    CHECK(back.cfg.n_experts == 5);
    CHECK(back.cfg.moe_norm_topk == m.cfg.moe_norm_topk);
    const Tensor got = forward(back, tok, B, T);
    CHECK(std::memcmp(got.f32(), want.f32(), sizeof(float) * want.numel()) == 0);
    CHECK(back.fingerprint() == m.fingerprint());
    // The HF export (transformers' per-expert module names) loads back bit-exactly.
    const std::string hf = dir + "/" + arch + "-hf";
    save_hf(m, nullptr, hf, "F32");
    const Model hb = load(hf);
    CHECK(hb.cfg.n_experts_used == 2);
    CHECK(hb.cfg.shared_hidden == m.cfg.shared_hidden);
    CHECK(hb.cfg.swa_layers == m.cfg.swa_layers);
    const Tensor hg = forward(hb, tok, B, T);
    CHECK(std::memcmp(hg.f32(), want.f32(), sizeof(float) * want.numel()) == 0);
    // Per-expert statistics: an expert's Σ sums exactly the tokens routed to it; every token goes to
    // k experts, so the experts' Σ add up to k times the FFN input's.
    {
      Calibration cal(m, tok, B, T, /*fp_chain=*/true);
      cal.advance(m);  // block 2: its inputs come from block 1
      const auto st = cal.capture(m);
      const SiteStats& fin = st.at(Site::FfnIn);
      Eigen::MatrixXd sum = Eigen::MatrixXd::Zero(16, 16);
      int64_t total = 0;
      for (int e = 0; e < 5; ++e) {
        const SiteStats& se = st.at(SiteKey(Site::ExpertIn, e));
        total += se.tokens;
        sum += se.sum;
        CHECK(st.at(SiteKey(Site::ExpertMid, e)).tokens == se.tokens);
        CHECK(st.at(SiteKey(Site::ExpertMid, e)).sum.rows() == 12);
      }
      CHECK(total == 2 * (int64_t)B * T);
      CHECK((sum - 2.0 * fin.sum).norm() <= 1e-6 * fin.sum.norm());
      // Expert 0's Σ again, from the routing of the FFN input's activations.
      const Tensor xn = cal.activations(m, Site::FfnIn, 0, B);
      const MoeRouting rt = moe_route(m.cfg, linear_forward(xn, m.block(1).linear("router")));
      Eigen::MatrixXd s0 = Eigen::MatrixXd::Zero(16, 16);
      int64_t n0 = 0;
      for (int64_t t = 0; t < (int64_t)B * T; ++t)
        for (int j = 0; j < rt.k; ++j)
          if (rt.expert[t * rt.k + j] == 0) {
            Eigen::VectorXd x(16);
            for (int d = 0; d < 16; ++d) x(d) = xn.f32()[t * 16 + d];
            s0 += x * x.transpose();
            ++n0;
          }
      CHECK(st.at(SiteKey(Site::ExpertIn, 0)).tokens == n0);
      CHECK((st.at(SiteKey(Site::ExpertIn, 0)).sum - s0).norm() <= 1e-6 * s0.norm() + 1e-12);
      // all_experts: every expert sees every token; its input Σ is the FFN input's, bit for bit.
      const auto all = cal.capture(m, {}, /*moe_all_experts=*/true);
      for (int e = 0; e < 5; ++e) {
        CHECK(all.at(SiteKey(Site::ExpertIn, e)).tokens == (int64_t)B * T);
        CHECK(all.at(SiteKey(Site::ExpertIn, e)).sum == all.at(Site::FfnIn).sum);
      }
      CHECK(all.at(Site::FfnIn).sum == fin.sum);  // the dense sites are unchanged by the option
      CHECK_THROWS_WITH_AS(cal.capture_cross(m, {SiteKey(Site::ExpertIn, 1)}), doctest::Contains("route tokens to experts differently"), Error);
      CHECK(site_key_name(SiteKey(Site::ExpertMid, 3)) == "experts.3.ffn_mid");
      CHECK(parse_site_key(m.cfg, "experts.4.ffn_in") == SiteKey(Site::ExpertIn, 4));
      CHECK_THROWS_WITH_AS(parse_site_key(m.cfg, "experts.5.ffn_in"), doctest::Contains("unknown site 'experts.5.ffn_in'"), Error);
    }
    // The backward (routing held fixed; through the renormalized softmax into the router): every
    // linear and norm of block 1 against central differences of the f64 loss.
    {
      RefModel r = ref_of(m);
      BlockGrads g0;
      const ModelGrads mg = model_loss_backward(
          m, tok, B, T, [&](int l) { return l == 0 ? BlockGradRequest::all(m.cfg) : BlockGradRequest::none(); },
          [&](int l, BlockGrads& g) {
            if (l == 0) g0 = g;
          },
          true);
      auto L = [&] { return ref_loss(r, tok, B, T); };
      CHECK(std::abs(mg.loss - L()) < 1e-5 * L());
      for (const BlockLinear& s : block_linears(m.cfg)) {
        CAPTURE(s.name);
        CHECK(fd_rel(r.blocks[0].w[s.name], g0.weight(s.name).to_vector(), L) < 1e-3);
      }
      CHECK(fd_rel(r.blocks[0].norm["ffn_norm"], g0.d_ffn_norm.to_vector(), L) < 1e-3);
      CHECK(fd_rel(r.blocks[0].norm["attn_norm"], g0.d_attn_norm.to_vector(), L) < 1e-3);
    }
    // GGUF: llama.cpp's merged expert tensors; what llama.cpp hard-codes must hold (refused otherwise).
    const std::string gg = dir + "/" + arch + ".gguf";
    if (arch_name == "qwen2_moe") {  // llama.cpp's qwen2moe: attn_output is [dim, dim]
      CHECK_THROWS_WITH_AS(save_gguf(m, nullptr, gg, "F32"), doctest::Contains("needs n_heads·head_dim = dim"), Error);
    } else {
      Model fit = m.clone();
      fit.cfg.swa_layers.clear(), fit.cfg.sliding_window = 0;  // llama.cpp's llama/qwen3moe have no window
      Model flip = fit.clone();
      flip.cfg.moe_norm_topk = !flip.cfg.moe_norm_topk;
      CHECK_THROWS_WITH_AS(save_gguf(flip, nullptr, gg, "F32"), doctest::Contains("always renormalizes the top-k routing weights"), Error);
      save_gguf(fit, nullptr, gg, "F32");
      const Model gb = load(gg);
      CHECK(gb.cfg.arch == arch_name);
      CHECK(gb.cfg.n_experts == 5);
      CHECK(gb.cfg.expert_hidden == 12);
      const Tensor fl = forward(fit, tok, B, T), gl = forward(gb, tok, B, T);
      CHECK(std::memcmp(gl.f32(), fl.f32(), sizeof(float) * fl.numel()) == 0);
      CHECK(gb.fingerprint() == fit.fingerprint());
    }
  }
}

TEST_CASE("architectures: a dense model split into experts computes the same function when every expert is used") {
  const Model dense = tiny_model(41, /*interleaved=*/false, /*qkv_bias=*/false, /*tied=*/true, 2);
  const std::vector<int32_t> tok = tokens(5, 16, dense.cfg.vocab_size);
  const Tensor want = forward(dense, tok, 2, 8);
  const int H = dense.cfg.hidden_dim;
  int E = 1;
  while (E * 2 <= 8 && H % (E * 2) == 0) E *= 2;  // a power of two dividing the width
  REQUIRE(E >= 2);
  const Model moe = moe_from_dense(dense, {E, E, 0.f});
  CHECK(moe.cfg.arch == "mixtral");
  CHECK(moe.cfg.expert_hidden == H / E);
  CHECK(max_rel(to_vec(forward(moe, tok, 2, 8)), to_vec(want)) < 1e-5);
  // Fewer experts per token: a different function, still the reference's.
  const Model sparse = moe_from_dense(dense, {E, 1, 0.5f});
  CHECK(max_rel(to_vec(forward(sparse, tok, 2, 8)), ref_logits(ref_of(sparse), tok, 2, 8)) < 2e-6);
  CHECK(max_rel(to_vec(forward(sparse, tok, 2, 8)), to_vec(want)) > 1e-3);
  CHECK_THROWS_WITH_AS(moe_from_dense(dense, {5, 1, 0.f}), doctest::Contains("not divisible by experts = 5"), Error);
  CHECK_THROWS_WITH_AS(moe_from_dense(dense, {E, E + 1, 0.f}), doctest::Contains("used = "), Error);
}
