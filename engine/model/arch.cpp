#include "model/arch.h"

#include <algorithm>

#include "core/error.h"
#include "model/model.h"

namespace qf {

const char* site_name(Site s) {
  switch (s) {
    case Site::AttnIn: return "attn_in";
    case Site::AttnOut: return "attn_out";
    case Site::FfnIn: return "ffn_in";
    case Site::FfnMid: return "ffn_mid";
  }
  return "?";
}

int64_t extent(const ModelConfig& c, Extent e) {
  switch (e) {
    case Extent::Dim: return c.dim;
    case Extent::KvDim: return c.kv_dim();
    case Extent::Hidden: return c.hidden_dim;
    case Extent::QDim: return c.q_dim();
    case Extent::HeadDim: return c.head_dim();
  }
  return 0;
}

// The Llama block (RMSNorm, RoPE, grouped-query attention, SwiGLU). gate = w1, up = w3,
// down = w2 (llama2.c: out = w2(silu(w1 x) * w3 x)). Stages as GPTQ's true-sequential order:
// q/k/v, then o, then gate/up, then down. Qwen3 and Gemma share its linears.
static const std::vector<LinearSpec> kDenseLinears = {
    {"q", "wq", Site::AttnIn, Extent::QDim, Extent::Dim, 1, Rope::Heads, "attn_q", "self_attn.q_proj"},
    {"k", "wk", Site::AttnIn, Extent::KvDim, Extent::Dim, 1, Rope::KvHeads, "attn_k", "self_attn.k_proj"},
    {"v", "wv", Site::AttnIn, Extent::KvDim, Extent::Dim, 1, Rope::None, "attn_v", "self_attn.v_proj"},
    {"o", "wo", Site::AttnOut, Extent::Dim, Extent::QDim, 2, Rope::None, "attn_output", "self_attn.o_proj"},
    {"gate", "w1", Site::FfnIn, Extent::Hidden, Extent::Dim, 3, Rope::None, "ffn_gate", "mlp.gate_proj"},
    {"up", "w3", Site::FfnIn, Extent::Hidden, Extent::Dim, 3, Rope::None, "ffn_up", "mlp.up_proj"},
    {"down", "w2", Site::FfnMid, Extent::Dim, Extent::Hidden, 4, Rope::None, "ffn_down", "mlp.down_proj"},
};

static const std::vector<ModelTensorSpec> kDenseTensors = {
    {"tok_emb", "token_embd.weight", "model.embed_tokens.weight"},
    {"final_norm", "output_norm.weight", "model.norm.weight"},
    {"classifier", "output.weight", "lm_head.weight"},
};

static const NormSpec kQNorm = {"q_norm", "", "attn_q_norm", "self_attn.q_norm", Extent::HeadDim};
static const NormSpec kKNorm = {"k_norm", "", "attn_k_norm", "self_attn.k_norm", Extent::HeadDim};

const ArchSpec kLlama = {
    "llama",
    BlockKind::LlamaDense,
    kDenseLinears,
    {
        {"attn_norm", "rms_att", "attn_norm", "input_layernorm"},
        {"ffn_norm", "rms_ffn", "ffn_norm", "post_attention_layernorm"},
    },
    kDenseTensors,
};

// Qwen3: the Llama block with a per-head RMSNorm of q and k before RoPE.
const ArchSpec kQwen3 = {
    "qwen3",
    BlockKind::LlamaDense,
    kDenseLinears,
    {
        {"attn_norm", "rms_att", "attn_norm", "input_layernorm"},
        {"ffn_norm", "rms_ffn", "ffn_norm", "post_attention_layernorm"},
        kQNorm,
        kKNorm,
    },
    kDenseTensors,
};

// Gemma 2: norms before and after attention and the FFN (HF's post_attention_layernorm is the
// norm of the attention output here, not the FFN's input norm as in Llama), GeGLU, embeddings
// scaled by √dim, gains stored as w with (1 + w) applied. Soft caps and sliding layers are config.
static const std::vector<NormSpec> kGemmaNorms = {
    {"attn_norm", "rms_att", "attn_norm", "input_layernorm"},
    {"post_attn_norm", "", "post_attention_norm", "post_attention_layernorm"},
    {"ffn_norm", "rms_ffn", "ffn_norm", "pre_feedforward_layernorm"},
    {"post_ffn_norm", "", "post_ffw_norm", "post_feedforward_layernorm"},
};

const ArchSpec kGemma2 = {"gemma2", BlockKind::LlamaDense, kDenseLinears, kGemmaNorms, kDenseTensors,
                          GluAct::GeluTanh, true, 1.f};

// Gemma 3: Gemma 2's block with Qwen3's q/k norms; sliding layers rotate with their own base.
const ArchSpec kGemma3 = {"gemma3",
                          BlockKind::LlamaDense,
                          kDenseLinears,
                          {kGemmaNorms[0], kGemmaNorms[1], kGemmaNorms[2], kGemmaNorms[3], kQNorm, kKNorm},
                          kDenseTensors,
                          GluAct::GeluTanh,
                          true,
                          1.f};

const std::vector<const ArchSpec*>& arch_specs() {
  static const std::vector<const ArchSpec*> all = {&kLlama, &kQwen3, &kGemma2, &kGemma3};
  return all;
}

bool ArchSpec::has_norm(const std::string& n) const {
  for (const NormSpec& s : norms)
    if (n == s.name) return true;
  return false;
}

int64_t norm_size(const ModelConfig& c, const NormSpec& n) { return extent(c, n.size); }

int ArchSpec::stages() const {
  int n = 0;
  for (const LinearSpec& s : linears) n = std::max(n, s.stage);
  return n;
}

const LinearSpec* ArchSpec::find(const std::string& n) const {
  for (const LinearSpec& s : linears)
    if (n == s.name) return &s;
  for (const LinearSpec& s : linears)
    if (n == s.alias) return &s;
  return nullptr;
}

std::string ArchSpec::names() const {
  std::string s;
  for (const LinearSpec& l : linears) s += (s.empty() ? "" : ", ") + std::string(l.name);
  return s;
}

const LinearSpec& ArchSpec::linear(const std::string& n) const {
  if (const LinearSpec* s = find(n)) return *s;
  std::string aliases;
  for (const LinearSpec& l : linears) aliases += (aliases.empty() ? "" : " ") + std::string(l.alias);
  fail("unknown linear '", n, "' (", name, " blocks have: ", names(), "; llama2.c aliases ", aliases, ")");
}

const NormSpec& ArchSpec::norm(const std::string& n) const {
  for (const NormSpec& s : norms)
    if (n == s.name || (*s.alias && n == s.alias)) return s;
  std::string known;
  for (const NormSpec& s : norms) known += (known.empty() ? "" : ", ") + std::string(s.name);
  fail("unknown norm '", n, "' (", name, " blocks have: ", known, ")");
}

const ModelTensorSpec& ArchSpec::tensor(const std::string& n) const {
  for (const ModelTensorSpec& s : tensors)
    if (n == s.name) return s;
  std::string known;
  for (const ModelTensorSpec& s : tensors) {
    if (!known.empty()) known += ", ";
    known += s.name;
  }
  fail("unknown model tensor '", n, "' (", name, " models have: ", known, ")");
}

const ArchSpec& arch_spec(const std::string& name) {
  std::string known;
  for (const ArchSpec* a : arch_specs()) {
    if (name == a->name) return *a;
    known += (known.empty() ? "" : ", ") + std::string(a->name);
  }
  fail("unknown architecture '", name, "' (known: ", known, ")");
}

const ArchSpec& arch_of(const ModelConfig& c) { return arch_spec(c.arch); }

Shape linear_shape(const ModelConfig& c, const std::string& name) {
  const LinearSpec& s = arch_of(c).linear(name);
  return {extent(c, s.out), extent(c, s.in)};
}

int rope_heads(const ModelConfig& c, const LinearSpec& s) {
  return s.rope == Rope::Heads ? c.n_heads : s.rope == Rope::KvHeads ? c.n_kv_heads : 0;
}

const LinearSpec* linear_of_tensor(const ArchSpec& a, const std::string& n) {
  if (n.rfind("blocks.", 0) != 0) return nullptr;
  const size_t d1 = n.find('.', 7), d2 = n.rfind('.');
  if (d1 == std::string::npos || d2 <= d1) return nullptr;
  const std::string kind = n.substr(d2 + 1);
  if (kind != "weight" && kind != "bias") return nullptr;
  const std::string lin = n.substr(d1 + 1, d2 - d1 - 1);
  for (const LinearSpec& s : a.linears)
    if (lin == s.name) return &s;
  return nullptr;
}

// Llama, Mistral, Qwen2 and Phi-3 are the Llama block. Qwen2 adds q/k/v biases, which the
// loader picks up from the tensors whatever the architecture says. Phi-3's checkpoints store
// q/k/v as one qkv_proj and gate/up as one gate_up_proj, stacked by rows.
const std::vector<HfLayout> kHfLayouts = {
    {"LlamaForCausalLM", "llama", "llama", {}},
    {"MistralForCausalLM", "mistral", "llama", {}, "all"},
    {"Qwen2ForCausalLM", "qwen2", "llama", {}, "from_max_window_layers"},
    {"Phi3ForCausalLM", "phi3", "llama", {{"self_attn.qkv_proj", {"q", "k", "v"}}, {"mlp.gate_up_proj", {"gate", "up"}}}, "all"},
    {"Qwen3ForCausalLM", "qwen3", "qwen3", {}, "from_max_window_layers"},
    {"Gemma2ForCausalLM", "gemma2", "gemma2", {}, "even"},
    {"Gemma3ForCausalLM", "gemma3_text", "gemma3", {}, "pattern"},
};

// llama.cpp writes Mistral as "llama"; Qwen2 is the Llama block with biases. Only "llama" has its
// q/k rows permuted by the converter (the others use llama.cpp's NEOX RoPE, HF's rotate-half).
const std::vector<GgufArch> kGgufArchs = {
    // gguf     arch      permuted swa_pattern window theta  attn cap final cap 27B layers
    {"llama", "llama", true, 0, 0, 0.f, 0.f, 0.f, 0},
    {"qwen2", "llama", false, 0, 0, 0.f, 0.f, 0.f, 0},
    {"qwen3", "qwen3", false, 0, 0, 0.f, 0.f, 0.f, 0},
    {"gemma2", "gemma2", false, 2, 4096, 0.f, 50.f, 30.f, 46},
    {"gemma3", "gemma3", false, 6, 0, 10000.f, 0.f, 0.f, 62},
    // Phi-3: q/k/v in attn_qkv, gate and up in ffn_up (gate first, as HF's gate_up_proj)
    {"phi3", "llama", false, 0, 0, 0.f, 0.f, 0.f, 0, true, {{"attn_qkv", {"q", "k", "v"}}, {"ffn_up", {"gate", "up"}}}},
};

const GgufArch* gguf_arch(const std::string& g) {
  for (const GgufArch& a : kGgufArchs)
    if (g == a.gguf) return &a;
  return nullptr;
}

const GgufArch& gguf_arch_of(const std::string& arch) {
  for (const GgufArch& a : kGgufArchs)
    if (arch == a.arch) return a;  // the first row of an architecture is the one written
  fail("architecture '", arch, "' has no GGUF name");
}

const HfFused* HfLayout::fused_of(const std::string& linear) const {
  for (const HfFused& f : fused)
    for (const char* p : f.parts)
      if (linear == p) return &f;
  return nullptr;
}

const HfLayout* hf_layout(const std::string& architecture) {
  for (const HfLayout& l : kHfLayouts)
    if (architecture == l.architecture) return &l;
  return nullptr;
}

std::string hf_layout_names() {
  std::string s;
  for (const HfLayout& l : kHfLayouts) s += (s.empty() ? "" : ", ") + std::string(l.architecture);
  return s;
}

}  // namespace qf
