#include "model/arch.h"

#include <algorithm>
#include <deque>

#include "core/error.h"
#include "model/model.h"

namespace qf {

const char* site_name(Site s) {
  switch (s) {
    case Site::AttnIn: return "attn_in";
    case Site::AttnOut: return "attn_out";
    case Site::FfnIn: return "ffn_in";
    case Site::FfnMid: return "ffn_mid";
    case Site::ExpertIn: return "expert_in";
    case Site::ExpertMid: return "expert_mid";
    case Site::SharedMid: return "shared_mid";
  }
  return "?";
}

std::string site_key_name(const SiteKey& k) {
  switch (k.site) {
    case Site::ExpertIn: return "experts." + std::to_string(k.expert) + ".ffn_in";
    case Site::ExpertMid: return "experts." + std::to_string(k.expert) + ".ffn_mid";
    case Site::SharedMid: return "shared.ffn_mid";
    default: return site_name(k.site);
  }
}

int64_t extent(const ModelConfig& c, Extent e) {
  switch (e) {
    case Extent::Dim: return c.dim;
    case Extent::KvDim: return c.kv_dim();
    case Extent::Hidden: return c.hidden_dim;
    case Extent::QDim: return c.q_dim();
    case Extent::HeadDim: return c.head_dim();
    case Extent::Experts: return c.n_experts;
    case Extent::ExpertHidden: return c.expert_hidden;
    case Extent::SharedHidden: return c.shared_hidden;
    case Extent::One: return 1;
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

// ---- Mixture of experts (docs/architecture.md#mixture-of-experts) ----
// The Llama attention, then an FFN of routed SwiGLU experts: the router (full precision by
// default in the recipes: it decides, it does not compute), each expert's gate/up/down, and for
// Qwen2-MoE a shared expert every token passes through, scaled by sigmoid(shared_gate · x).
// True-sequential stages as the dense block's: router and gate/up after o, downs last.
// HF names are the per-expert names transformers' save_pretrained writes (Mixtral's
// block_sparse_moe.experts.E.w1/w3/w2); transformers 5's fused 3-d tensors are read too
// (loader_hf.cpp add_moe_fused). GGUF's merged [n_experts, …] tensors are not read yet.
static std::vector<LinearSpec> moe_linears(const char* router_hf, const char* expert_hf, const char* gate, const char* up,
                                           const char* down, bool shared) {
  std::vector<LinearSpec> v(kDenseLinears.begin(), kDenseLinears.begin() + 4);  // q, k, v, o
  static std::deque<std::string> names;  // the HF patterns, alive (and never moved) as long as the tables
  auto keep = [](std::string s) {
    names.push_back(std::move(s));
    return names.back().c_str();
  };
  v.push_back({"router", "", Site::FfnIn, Extent::Experts, Extent::Dim, 3, Rope::None, "ffn_gate_inp", router_hf});
  v.push_back({"experts.{e}.gate", "", Site::ExpertIn, Extent::ExpertHidden, Extent::Dim, 3, Rope::None, "ffn_gate_exps",
               keep(std::string(expert_hf) + ".{e}." + gate)});
  v.push_back({"experts.{e}.up", "", Site::ExpertIn, Extent::ExpertHidden, Extent::Dim, 3, Rope::None, "ffn_up_exps",
               keep(std::string(expert_hf) + ".{e}." + up)});
  v.push_back({"experts.{e}.down", "", Site::ExpertMid, Extent::Dim, Extent::ExpertHidden, 4, Rope::None, "ffn_down_exps",
               keep(std::string(expert_hf) + ".{e}." + down)});
  if (shared) {
    v.push_back({"shared.gate", "", Site::FfnIn, Extent::SharedHidden, Extent::Dim, 3, Rope::None, "ffn_gate_shexp", "mlp.shared_expert.gate_proj"});
    v.push_back({"shared.up", "", Site::FfnIn, Extent::SharedHidden, Extent::Dim, 3, Rope::None, "ffn_up_shexp", "mlp.shared_expert.up_proj"});
    v.push_back({"shared.down", "", Site::SharedMid, Extent::Dim, Extent::SharedHidden, 4, Rope::None, "ffn_down_shexp", "mlp.shared_expert.down_proj"});
    v.push_back({"shared_gate", "", Site::FfnIn, Extent::One, Extent::Dim, 3, Rope::None, "ffn_gate_inp_shexp", "mlp.shared_expert_gate"});
  }
  return v;
}

static const std::vector<NormSpec> kLlamaNorms = {
    {"attn_norm", "rms_att", "attn_norm", "input_layernorm"},
    {"ffn_norm", "rms_ffn", "ffn_norm", "post_attention_layernorm"},
};

const ArchSpec kMixtral = {"mixtral", BlockKind::LlamaMoe,
                           moe_linears("block_sparse_moe.gate", "block_sparse_moe.experts", "w1", "w3", "w2", false), kLlamaNorms,
                           kDenseTensors};
const ArchSpec kQwen2Moe = {"qwen2_moe", BlockKind::LlamaMoe,
                            moe_linears("mlp.gate", "mlp.experts", "gate_proj", "up_proj", "down_proj", true), kLlamaNorms,
                            kDenseTensors};
const ArchSpec kQwen3Moe = {"qwen3_moe", BlockKind::LlamaMoe,
                            moe_linears("mlp.gate", "mlp.experts", "gate_proj", "up_proj", "down_proj", false),
                            {kLlamaNorms[0], kLlamaNorms[1], kQNorm, kKNorm}, kDenseTensors};

const std::vector<const ArchSpec*>& arch_specs() {
  static const std::vector<const ArchSpec*> all = {&kLlama, &kQwen3, &kGemma2, &kGemma3, &kMixtral, &kQwen2Moe, &kQwen3Moe};
  return all;
}

std::string expert_name(const char* pattern, int expert) {
  std::string s = pattern;
  const size_t p = s.find("{e}");
  if (p != std::string::npos) s.replace(p, 3, std::to_string(expert));
  return s;
}

bool match_expert(const char* pattern, const std::string& name, int* e) {
  const std::string p = pattern;
  const size_t at = p.find("{e}");
  if (at == std::string::npos) return false;
  const std::string pre = p.substr(0, at), post = p.substr(at + 3);
  if (name.size() <= pre.size() + post.size() || name.compare(0, pre.size(), pre) != 0 ||
      name.compare(name.size() - post.size(), post.size(), post) != 0)
    return false;
  const std::string digits = name.substr(pre.size(), name.size() - pre.size() - post.size());
  if (digits.empty() || digits.size() > 6 || (digits.size() > 1 && digits[0] == '0')) return false;
  int v = 0;
  for (char ch : digits) {
    if (ch < '0' || ch > '9') return false;
    v = v * 10 + (ch - '0');
  }
  *e = v;
  return true;
}

// Consecutive per-expert rows expand expert by expert: experts.0.gate, experts.0.up,
// experts.0.down, experts.1.gate, …
SiteKey linear_site(const ModelConfig& c, const std::string& name) {
  int e = -1;
  const ArchSpec& a = arch_of(c);
  const LinearSpec* s = a.find(name, &e);
  if (!s) a.linear(name);  // the error naming the block's linears
  return SiteKey(s->input, e);
}

std::vector<SiteKey> block_sites(const ModelConfig& c) {
  std::vector<SiteKey> out;
  for (const BlockLinear& l : block_linears(c)) {
    const SiteKey k(l.spec->input, l.expert);
    if (std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
  }
  return out;
}

SiteKey parse_site_key(const ModelConfig& c, const std::string& name) {
  std::string known;
  for (const SiteKey& k : block_sites(c)) {
    if (site_key_name(k) == name) return k;
    if (known.size() < 200) known += (known.empty() ? "" : ", ") + site_key_name(k);
  }
  fail("unknown site '", name, "' (", c.arch, " blocks have: ", known, known.size() >= 200 ? ", …" : "", ")");
}

int64_t site_width(const ModelConfig& c, const SiteKey& k) {
  for (const BlockLinear& l : block_linears(c))
    if (SiteKey(l.spec->input, l.expert) == k) return extent(c, l.spec->in);
  fail("site '", site_key_name(k), "' is not a site of ", c.arch, " blocks");
}

std::vector<BlockLinear> block_linears(const ModelConfig& c) {
  const std::vector<LinearSpec>& rows = arch_of(c).linears;
  auto per_expert = [](const LinearSpec& s) { return std::string(s.name).find("{e}") != std::string::npos; };
  std::vector<BlockLinear> out;
  for (size_t i = 0; i < rows.size();) {
    if (!per_expert(rows[i])) {
      out.push_back({rows[i].name, &rows[i], -1});
      ++i;
      continue;
    }
    size_t j = i;
    while (j < rows.size() && per_expert(rows[j])) ++j;
    for (int e = 0; e < c.n_experts; ++e)
      for (size_t k = i; k < j; ++k) out.push_back({expert_name(rows[k].name, e), &rows[k], e});
    i = j;
  }
  return out;
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

const LinearSpec* ArchSpec::find(const std::string& n, int* expert) const {
  if (expert) *expert = -1;
  for (const LinearSpec& s : linears)
    if (n == s.name) return &s;
  for (const LinearSpec& s : linears)
    if (*s.alias && n == s.alias) return &s;
  int e = -1;
  for (const LinearSpec& s : linears)
    if (match_expert(s.name, n, &e)) {
      if (expert) *expert = e;
      return &s;
    }
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
  for (const LinearSpec& l : linears)
    if (*l.alias) aliases += (aliases.empty() ? "" : " ") + std::string(l.alias);
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
  int e = -1;
  const ArchSpec& a = arch_of(c);
  const LinearSpec& s = a.find(name, &e) ? *a.find(name, &e) : a.linear(name);
  if (e >= c.n_experts) fail("linear '", name, "': expert ", e, " out of range (the model has ", c.n_experts, " experts, numbered from 0)");
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
  int e = -1;
  const LinearSpec* s = a.find(lin, &e);
  return s && (lin == s->name || e >= 0) ? s : nullptr;  // canonical names only, not llama2.c aliases
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
    {"MixtralForCausalLM", "mixtral", "mixtral", {}, "all"},
    {"Qwen2MoeForCausalLM", "qwen2_moe", "qwen2_moe", {}, "qwen2_moe"},
    {"Qwen3MoeForCausalLM", "qwen3_moe", "qwen3_moe", {}, "all_if_used"},
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
    // Mixtral is llama.cpp's "llama" with <arch>.expert_count set (the loader picks this row then);
    // its experts are feed_forward_length wide. Qwen2-MoE never renormalizes the top-k weights in
    // llama.cpp, Qwen3-MoE and Mixtral always (whatever norm_topk_prob said).
    {"llama", "mixtral", true, 0, 0, 0.f, 0.f, 0.f, 0, false, {}, 1},
    {"qwen2moe", "qwen2_moe", false, 0, 0, 0.f, 0.f, 0.f, 0, false, {}, 0},
    {"qwen3moe", "qwen3_moe", false, 0, 0, 0.f, 0.f, 0.f, 0, false, {}, 1},
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
