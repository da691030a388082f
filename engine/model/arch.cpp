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
  }
  return 0;
}

// The Llama block (RMSNorm, RoPE, grouped-query attention, SwiGLU). gate = w1, up = w3,
// down = w2 (llama2.c: out = w2(silu(w1 x) * w3 x)). Stages as GPTQ's true-sequential order:
// q/k/v, then o, then gate/up, then down.
const ArchSpec kLlama = {
    "llama",
    BlockKind::LlamaDense,
    {
        {"q", "wq", Site::AttnIn, Extent::Dim, Extent::Dim, 1, Rope::Heads, "attn_q", "self_attn.q_proj"},
        {"k", "wk", Site::AttnIn, Extent::KvDim, Extent::Dim, 1, Rope::KvHeads, "attn_k", "self_attn.k_proj"},
        {"v", "wv", Site::AttnIn, Extent::KvDim, Extent::Dim, 1, Rope::None, "attn_v", "self_attn.v_proj"},
        {"o", "wo", Site::AttnOut, Extent::Dim, Extent::Dim, 2, Rope::None, "attn_output", "self_attn.o_proj"},
        {"gate", "w1", Site::FfnIn, Extent::Hidden, Extent::Dim, 3, Rope::None, "ffn_gate", "mlp.gate_proj"},
        {"up", "w3", Site::FfnIn, Extent::Hidden, Extent::Dim, 3, Rope::None, "ffn_up", "mlp.up_proj"},
        {"down", "w2", Site::FfnMid, Extent::Dim, Extent::Hidden, 4, Rope::None, "ffn_down", "mlp.down_proj"},
    },
    {
        {"attn_norm", "rms_att", "attn_norm", "input_layernorm"},
        {"ffn_norm", "rms_ffn", "ffn_norm", "post_attention_layernorm"},
    },
    {
        {"tok_emb", "token_embd.weight", "model.embed_tokens.weight"},
        {"final_norm", "output_norm.weight", "model.norm.weight"},
        {"classifier", "output.weight", "lm_head.weight"},
    },
};

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
    if (n == s.name || n == s.alias) return s;
  fail("unknown norm '", n, "' (", name, " blocks have: ", norms[0].name, ", ", norms[1].name, ")");
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
  if (name == kLlama.name) return kLlama;
  fail("unknown architecture '", name, "' (known: ", kLlama.name, ")");
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

// All are the Llama block. Qwen2 adds q/k/v biases, which the loader picks up from the tensors
// whatever the architecture says. Phi-3's checkpoints store q/k/v as one qkv_proj and gate/up
// as one gate_up_proj, stacked by rows.
const std::vector<HfLayout> kHfLayouts = {
    {"LlamaForCausalLM", "llama", "llama", {}},
    {"MistralForCausalLM", "mistral", "llama", {}},
    {"Qwen2ForCausalLM", "qwen2", "llama", {}},
    {"Phi3ForCausalLM", "phi3", "llama", {{"self_attn.qkv_proj", {"q", "k", "v"}}, {"mlp.gate_up_proj", {"gate", "up"}}}},
};

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
