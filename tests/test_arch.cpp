// The architecture table (model/arch.h): shapes, sites, stages and names against what the forward
// code and the formats expect; and the proof of the seam: an HF layout that stores q/k/v as one
// qkv_proj and gate/up as one gate_up_proj (Phi-3's checkpoints) loads — split into the canonical
// linears by table rows alone — and exports back fused, byte for byte, on a tiny model written here.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/io.h"
#include "formats/export.h"
#include "formats/loader.h"
#include "formats/loader_hf.h"
#include "formats/safetensors.h"
#include "model/arch.h"
#include "model/forward.h"
#include "scratch_dir.h"
#include "tiny_model.h"

using namespace qf;
using json = nlohmann::json;

static std::string tmpdir() {
  static const std::string d = qf_test::scratch_dir("arch");
  return d;
}

static bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  const Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.f32(), y.f32(), sizeof(float) * (size_t)x.numel()) == 0;
}

TEST_CASE("arch table: the Llama block's shapes, sites, stages, RoPE and names") {
  const Model m = test::tiny_model(1);
  const ModelConfig& c = m.cfg;
  const ArchSpec& a = arch_of(c);
  CHECK(std::string(a.name) == "llama");
  CHECK(a.names() == "q, k, v, o, gate, up, down");
  CHECK(a.stages() == 4);
  // Every table shape is the shape the model holds (tiny_model builds them by hand).
  for (const Linear& l : m.block(0).linears) {
    CAPTURE(l.name);
    CHECK(linear_shape(c, l.name) == l.weight.shape());
    CHECK(a.linear(l.name).input == l.input);
  }
  CHECK(linear_shape(c, "w2") == Shape{16, 24});  // aliases resolve
  CHECK(std::string(site_name(a.linear("w1").input)) == "ffn_in");
  CHECK(rope_heads(c, a.linear("q")) == 4);
  CHECK(rope_heads(c, a.linear("k")) == 2);
  CHECK(rope_heads(c, a.linear("v")) == 0);
  CHECK(a.linear("o").stage == 2);
  CHECK(a.linear("down").stage == 4);
  CHECK(hf_tensor_name("blocks.3.gate.weight") == "model.layers.3.mlp.gate_proj.weight");
  CHECK(hf_tensor_name("blocks.0.ffn_norm") == "model.layers.0.post_attention_layernorm.weight");
  CHECK(hf_canonical_name("model.layers.2.self_attn.k_proj.bias") == "blocks.2.k.bias");
  CHECK(hf_canonical_name("model.layers.2.self_attn.rotary_emb.inv_freq") == "");
  CHECK(linear_of_tensor(a, "blocks.1.up.weight") == &a.linear("up"));
  CHECK(linear_of_tensor(a, "blocks.1.attn_norm") == nullptr);
  CHECK_THROWS_WITH_AS(a.linear("qkv"), doctest::Contains("unknown linear 'qkv' (llama blocks have: q, k, v, o, gate, up, down"), Error);
  CHECK_THROWS_WITH_AS(arch_spec("mamba"), doctest::Contains("unknown architecture 'mamba' (known: llama, qwen3, gemma2, gemma3, mixtral, qwen2_moe, qwen3_moe)"), Error);
  const HfLayout* phi3 = hf_layout("Phi3ForCausalLM");
  REQUIRE(phi3);
  CHECK(std::string(phi3->fused_of("k")->hf) == "self_attn.qkv_proj");
  CHECK(std::string(phi3->fused_of("up")->hf) == "mlp.gate_up_proj");
  CHECK(phi3->fused_of("o") == nullptr);
  CHECK(hf_layout("LlamaForCausalLM")->fused.empty());
}

TEST_CASE("fused HF layout: qkv_proj and gate_up_proj load split by rows and export back fused") {
  Model m = test::tiny_model(7, /*interleaved=*/true, /*qkv_bias=*/false, /*tied=*/false, /*n_layers=*/3);
  m.cfg.hf_layout = "Phi3ForCausalLM";
  const std::vector<int32_t> tok = {1, 5, 2, 7, 3, 9, 4, 0};
  const Tensor ref = forward(m, tok, 1, 8);
  const std::string dir = tmpdir() + "/phi3";
  save_model(m, nullptr, dir, {"hf", "F32"});

  const json cfg = json::parse(read_file(dir + "/config.json"));
  CHECK(cfg["architectures"][0] == "Phi3ForCausalLM");
  CHECK(cfg["model_type"] == "phi3");
  SafetensorsFile st = safetensors_open(dir + "/model.safetensors");
  CHECK(st.get("model.layers.0.self_attn.qkv_proj.weight").shape == Shape{16 + 8 + 8, 16});
  CHECK(st.get("model.layers.2.mlp.gate_up_proj.weight").shape == Shape{48, 16});
  CHECK(st.find("model.layers.0.self_attn.q_proj.weight") == nullptr);
  CHECK(st.find("model.layers.0.mlp.up_proj.weight") == nullptr);
  CHECK(st.get("model.layers.1.self_attn.o_proj.weight").shape == Shape{16, 16});

  // The same model in the plain layout: per-linear tensors. Loaded, it is the reference the
  // fused load must match bit for bit (both in HF row order, so the same RoPE code runs).
  Model plain = m.clone();
  plain.cfg.hf_layout = "";
  save_model(plain, nullptr, tmpdir() + "/plain", {"hf", "F32"});
  SafetensorsFile sp = safetensors_open(tmpdir() + "/plain/model.safetensors");
  CHECK(sp.find("model.layers.0.self_attn.qkv_proj.weight") == nullptr);
  CHECK(sp.get("model.layers.0.self_attn.q_proj.weight").shape == Shape{16, 16});
  const Model hp = load_model(resolve_model_files(tmpdir() + "/plain"));
  const Tensor ref_hf = forward(hp, tok, 1, 8);
  double dmax = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) dmax = std::max(dmax, (double)std::fabs(ref.f32()[i] - ref_hf.f32()[i]));
  CHECK(dmax < 1e-5);  // interleaved and rotate-half RoPE: the same math, other rounding

  for (bool lazy : {false, true}) {
    CAPTURE(lazy);
    const Model h = load_model(resolve_model_files(dir), lazy);
    CHECK(h.cfg.hf_layout == "Phi3ForCausalLM");
    CHECK_FALSE(h.cfg.rope_interleaved);  // HF row order on disk
    CHECK(h.n_params() == m.n_params());
    // The split parts are the plain layout's linears, bit for bit; so are the logits.
    for (int b = 0; b < 3; ++b)
      for (const LinearSpec& s : kLlama.linears) CHECK(same_bits(h.block(b).linear(s.name).weight, hp.block(b).linear(s.name).weight));
    for (int b = 0; b < 3; ++b) {
      CHECK(same_bits(h.block(b).linear("v").weight, m.block(b).linear("v").weight));
      CHECK(same_bits(h.block(b).linear("gate").weight, m.block(b).linear("gate").weight));
      CHECK(same_bits(h.block(b).linear("up").weight, m.block(b).linear("up").weight));
      CHECK(same_bits(h.block(b).linear("down").weight, m.block(b).linear("down").weight));
    }
    CHECK(same_bits(forward(h, tok, 1, 8), ref_hf));
    // And back: fused again, byte for byte (the second export starts from HF row order).
    const std::string again = tmpdir() + (lazy ? "/phi3_lazy" : "/phi3_again");
    save_model(h, nullptr, again, {"hf", "F32"});
    CHECK(read_file(again + "/model.safetensors") == read_file(dir + "/model.safetensors"));
  }

  // GPTQ export does not silently unfuse.
  CHECK_THROWS_WITH_AS(save_model(m, nullptr, tmpdir() + "/phi3_gptq", {"gptq", ""}),
                       doctest::Contains("fused Phi3ForCausalLM layout; GPTQ export of fused layouts is not implemented"), Error);
}

TEST_CASE("fused HF layout: a fused tensor of the wrong size, or an unfused one, is refused naming it") {
  Model m = test::tiny_model(8, true, false, true, 1);
  m.cfg.hf_layout = "Phi3ForCausalLM";
  const std::string dir = tmpdir() + "/phi3_bad";
  save_model(m, nullptr, dir, {"hf", "F32"});
  const SafetensorsFile st = safetensors_open(dir + "/model.safetensors");
  // Rewrite the file with qkv_proj one row short, then with q_proj stored on its own.
  auto rewrite = [&](const std::string& drop, const std::string& add_name, const Shape& add_shape) {
    std::vector<SafetensorsEntry> es;
    for (const TensorSource& t : st.tensors) {
      if (t.name == drop) continue;
      SafetensorsEntry e;
      e.name = t.name;
      e.dtype = t.dtype;
      e.shape = t.shape;
      e.bytes.assign((const char*)t.file->data + t.offset, t.nbytes);
      es.push_back(std::move(e));
    }
    if (!add_name.empty()) {
      int64_t n = 1;
      for (int64_t d : add_shape) n *= d;
      es.push_back({add_name, "F32", add_shape, std::string((size_t)n * 4, '\0'), nullptr});
    }
    safetensors_write(dir + "/model.safetensors", es, {{"format", "pt"}});
  };
  rewrite("model.layers.0.self_attn.qkv_proj.weight", "model.layers.0.self_attn.qkv_proj.weight", {31, 16});
  CHECK_THROWS_WITH_AS(load_model(resolve_model_files(dir)),
                       doctest::Contains("tensor 'model.layers.0.self_attn.qkv_proj.weight' has shape [31, 16], the config implies [32, 16] "
                                         "(self_attn.qkv_proj stacks q, k, v)"),
                       Error);
  rewrite("", "model.layers.0.self_attn.q_proj.weight", {16, 16});
  CHECK_THROWS_WITH_AS(load_model(resolve_model_files(dir)),
                       doctest::Contains("tensor 'model.layers.0.self_attn.q_proj.weight' is stored unfused, but Phi3ForCausalLM stores q in "
                                         "self_attn.qkv_proj"),
                       Error);
}
