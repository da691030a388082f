// qforge — architectures as data: one table per architecture family says, for every linear of a
// block, its canonical name and llama2.c alias, the activation site that feeds it, its shape in
// terms of the config, its true-sequential stage, whether RoPE rotates its rows, and its GGUF and
// Hugging Face tensor names; and for the block's norms their names. Loaders, exporters, forward,
// backward, calibration, storage accounting and the Lua side (m:arch()) read these tables; nothing
// else spells a linear's name. HF checkpoint layouts (which `architectures` entry, which tensors
// are stored fused and how they split by rows) are rows of kHfLayouts.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"

namespace qf {

struct ModelConfig;

// Activation sites inside a block: each linear reads exactly one of them. Linears that share a
// site share a calibration Gram matrix (q/k/v; gate/up).
// Mixture of experts: each expert's gate/up read ExpertIn (the FFN input of the tokens routed to
// it), its down ExpertMid; the shared expert's down reads SharedMid (the router, the shared
// expert's gate/up and its sigmoid gate read FfnIn, every token).
enum class Site { AttnIn, AttnOut, FfnIn, FfnMid, ExpertIn, ExpertMid, SharedMid };
const char* site_name(Site s);  // "attn_in", "attn_out", "ffn_in", "ffn_mid", "expert_in", "expert_mid", "shared_mid"

// A site of one block as calibration keys it: an expert's sites are one per expert.
struct SiteKey {
  Site site = Site::AttnIn;
  int expert = -1;  // ExpertIn / ExpertMid: the expert, 0-based; −1 otherwise
  SiteKey() = default;
  SiteKey(Site s, int e = -1) : site(s), expert(e) {}  // NOLINT: a Site is its own key
  bool operator<(const SiteKey& o) const { return site != o.site ? site < o.site : expert < o.expert; }
  bool operator==(const SiteKey& o) const { return site == o.site && expert == o.expert; }
};
// "attn_in", "attn_out", "ffn_in", "ffn_mid", "experts.3.ffn_in", "experts.3.ffn_mid", "shared.ffn_mid"
std::string site_key_name(const SiteKey& k);

// A linear's out or in size, from the config: dim, n_kv_heads·head_dim, the FFN width,
// n_heads·head_dim (= dim unless the head size is decoupled), one head.
// MoE: the number of experts (the router's rows), one expert's width, the shared expert's, 1
// (the shared expert's gate is a single row).
enum class Extent { Dim, KvDim, Hidden, QDim, HeadDim, Experts, ExpertHidden, SharedHidden, One };
int64_t extent(const ModelConfig& c, Extent e);

// Whether RoPE rotates the linear's output rows, and over how many heads.
enum class Rope { None, Heads, KvHeads };

// Which forward/backward code runs a block.
// LlamaMoe: the FFN is a routed mixture of SwiGLU experts (config n_experts, …).
enum class BlockKind { LlamaDense, LlamaMoe };

// The FFN's gated activation: h = act(gate) ⊙ up.
enum class GluAct { Silu, GeluTanh };  // SwiGLU; GeGLU with the tanh-approximated GELU

// A row whose name holds "{e}" (experts.{e}.gate) is one linear per expert: block_linears
// expands it to experts.0.gate … experts.<n_experts−1>.gate, and its GGUF/HF names' "{e}" the same.
struct LinearSpec {
  const char* name;   // canonical name
  const char* alias;  // llama2.c name
  Site input;         // which activation it multiplies
  Extent out, in;     // weight shape [out, in]
  int stage;          // true-sequential stage, 1-based: a stage's linears see the quantized outputs of earlier stages
  Rope rope;
  const char* gguf;   // llama.cpp tensor name inside "blk.N."
  const char* hf;     // Hugging Face module inside "model.layers.N."
};

struct NormSpec {
  const char* name;   // canonical name: attn_norm, ffn_norm, q_norm, k_norm, post_attn_norm, post_ffn_norm
  const char* alias;  // llama2.c name ("" when none)
  const char* gguf;   // "attn_norm" → "blk.N.attn_norm.weight"
  const char* hf;     // "input_layernorm" → "model.layers.N.input_layernorm.weight"
  Extent size = Extent::Dim;  // [dim], or [head_dim] for the per-head q/k norms
};

// A model-level tensor (outside the blocks): its canonical name and its full name per format,
// one row read both ways (loader: file name -> canonical; exporter: canonical -> file name).
struct ModelTensorSpec {
  const char* name;   // canonical: tok_emb, final_norm, classifier
  const char* gguf;   // "token_embd.weight"
  const char* hf;     // "model.embed_tokens.weight"
};

struct ArchSpec {
  const char* name;  // ModelConfig::arch
  BlockKind kind;
  std::vector<LinearSpec> linears;  // forward order; Block::linears holds them in this order
  std::vector<NormSpec> norms;      // every norm a block of this architecture has
  std::vector<ModelTensorSpec> tensors;  // model-level tensors
  GluAct act = GluAct::Silu;
  bool embed_scaled = false;  // embeddings × √dim (Gemma)
  // HF checkpoints store RMSNorm gains as g − hf_norm_shift (Gemma's (1 + w)); loaded gains add
  // it back in f32, as transformers' forward does; GGUF files store g itself.
  float hf_norm_shift = 0.f;
  bool has_norm(const std::string& name) const;
  const ModelTensorSpec& tensor(const std::string& name) const;  // canonical name; error when unknown
  int stages() const;                                 // the last stage number
  // nullptr when unknown; "experts.3.gate" finds the row experts.{e}.gate (*expert = 3, else −1)
  const LinearSpec* find(const std::string& name_or_alias, int* expert = nullptr) const;
  const LinearSpec& linear(const std::string& name_or_alias) const;  // error lists the names
  std::string names() const;                          // "q, k, v, o, gate, up, down"
  const NormSpec& norm(const std::string& name) const;  // canonical name; error when unknown
};

extern const ArchSpec kLlama, kQwen3, kGemma2, kGemma3, kMixtral, kQwen2Moe, kQwen3Moe;

// One linear of a block under a config: its canonical name (per-expert rows expanded), its row.
struct BlockLinear {
  std::string name;
  const LinearSpec* spec;
  int expert = -1;  // per-expert rows: the expert, 0-based
};
// Every linear of a block of config c, in forward order (the arch table's, each per-expert row
// expanded in place, expert 0 first). Block::linears holds them in this order.
std::vector<BlockLinear> block_linears(const ModelConfig& c);
// The site feeding linear `name` of a block of config c (an expert's linears: that expert's site).
SiteKey linear_site(const ModelConfig& c, const std::string& name);
// Every site of a block of config c, once each, in forward order of their first linear.
std::vector<SiteKey> block_sites(const ModelConfig& c);
// A site by its name (site_key_name); the error names the block's sites.
SiteKey parse_site_key(const ModelConfig& c, const std::string& name);
// The width of a site's activations (the in-features of the linears reading it).
int64_t site_width(const ModelConfig& c, const SiteKey& k);
// A name pattern with "{e}" replaced by the expert's number (no "{e}": the pattern itself).
std::string expert_name(const char* pattern, int expert);
// Whether name is pattern with its "{e}" replaced by a decimal expert number (no leading zeros);
// sets *expert. A pattern without "{e}" matches nothing here.
bool match_expert(const char* pattern, const std::string& name, int* expert);
// Every architecture table, kLlama first.
const std::vector<const ArchSpec*>& arch_specs();
// The table of an architecture by name (ModelConfig::arch); error names the known ones.
const ArchSpec& arch_spec(const std::string& name);
// [size] of the norm under config c.
int64_t norm_size(const ModelConfig& c, const NormSpec& n);
const ArchSpec& arch_of(const ModelConfig& c);

// [out, in] of the block linear `name` (canonical or alias) under config c.
Shape linear_shape(const ModelConfig& c, const std::string& name);
// Heads RoPE rotates a linear's rows over (n_heads or n_kv_heads), 0 when it does not.
int rope_heads(const ModelConfig& c, const LinearSpec& s);
// The linear of a canonical tensor name "blocks.<i>.<linear>.weight|bias", or nullptr.
const LinearSpec* linear_of_tensor(const ArchSpec& a, const std::string& canonical);

// ---- Hugging Face checkpoint layouts ----

// A tensor stored fused: `hf` (inside "model.layers.N.") holds `parts` stacked by rows, in order.
struct HfFused {
  const char* hf;
  std::vector<const char*> parts;  // canonical linear names
};

struct HfLayout {
  const char* architecture;  // config.json "architectures" entry
  const char* model_type;    // config.json "model_type"
  const char* arch;          // ArchSpec name
  std::vector<HfFused> fused;
  // How layers are marked sliding when config.json has no layer_types: "" none, "all" (Mistral:
  // every layer when sliding_window is set), "from_max_window_layers" (Qwen2/3: layers ≥
  // max_window_layers when use_sliding_window), "pattern" (Gemma 3: every sliding_window_pattern-th
  // layer, default 6, is global), "even" (Gemma 2: even layers slide), "qwen2_moe" (even layers
  // below max_window_layers, when use_sliding_window), "all_if_used" (Qwen3-MoE: every layer, when
  // use_sliding_window).
  const char* swa_rule = "";
  const HfFused* fused_of(const std::string& linear) const;  // the fused tensor holding `linear`, or nullptr
};
extern const std::vector<HfLayout> kHfLayouts;
const HfLayout* hf_layout(const std::string& architecture);  // nullptr when unknown
std::string hf_layout_names();                                // the known architectures, for messages

// ---- GGUF architectures ----

// A GGUF general.architecture and the table it loads into; its metadata keys are "<gguf>.*".
// Defaults are llama.cpp's where the file leaves a key out.
struct GgufArch {
  const char* gguf;      // "llama", "qwen2", "qwen3", "gemma2", "gemma3"
  const char* arch;      // ArchSpec name
  bool permuted_qk;      // llama.cpp's converter stores q/k rows in RoPE-pair order (arch llama only)
  int swa_pattern;       // sliding layers: il % n < n − 1 (0: no sliding layers)
  int swa_window;        // window when <gguf>.attention.sliding_window is absent (0: none)
  float swa_theta;       // sliding layers' RoPE base when <gguf>.rope.freq_base_swa is absent (0: the global base)
  float attn_softcap;    // when <gguf>.attn_logit_softcapping is absent
  float final_softcap;   // when <gguf>.final_logit_softcapping is absent
  int big_model_layers;  // Gemma's 27B (this many layers) scales scores by (dim/heads)^−½, others by head_dim^−½; 0: no rule
  // llama.cpp ignores <gguf>.attention.sliding_window (Phi-3: "SWA is currently disabled"); so does qforge
  bool ignores_window = false;
  // Tensors stored fused, stacked by rows: "blk.N.<hf>.weight" holds its parts (HfFused's rows, GGUF names)
  std::vector<HfFused> fused = {};
  // Mixture of experts: llama.cpp hard-codes whether the top-k weights are renormalized per
  // architecture (1 yes, 0 no; −1: not an MoE row). Experts are merged tensors "blk.N.<gguf>.weight"
  // of ggml shape {in, out, n_experts} (expert e's rows consecutive, in HF order).
  int moe_norm_topk = -1;
};
extern const std::vector<GgufArch> kGgufArchs;
const GgufArch* gguf_arch(const std::string& gguf);  // nullptr when unknown
const GgufArch& gguf_arch_of(const std::string& arch);  // the row to write an ArchSpec name as

}  // namespace qf
