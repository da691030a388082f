// qforge — the Llama-family model as a list of blocks with a declarative linear map.
//
// Every block holds its linears by canonical name (q, k, v, o, gate, up, down) and its
// norms (attn_norm, ffn_norm). Which activation feeds each linear is stated in the
// architecture table (model/arch.h), so calibration capture and weight replacement never need
// to know the forward code: they look a linear up by name and read its input site.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/arch.h"
#include "quant/grid.h"

namespace qf {

struct ModelConfig {
  std::string arch = "llama";
  int dim = 0;         // model width
  int hidden_dim = 0;  // FFN width
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;  // grouped-query attention: n_heads % n_kv_heads == 0
  int vocab_size = 0;
  int seq_len = 0;     // max context the model was trained for
  float norm_eps = 1e-5f;
  float rope_theta = 10000.f;
  // RoPE frequency scaling as HF configs state it: "" none, "linear" (positions / factor),
  // "llama3" (wavelength-dependent: low_freq_factor, high_freq_factor, original context).
  std::string rope_scaling;
  float rope_factor = 1.f, rope_low_freq_factor = 1.f, rope_high_freq_factor = 4.f;
  int rope_orig_ctx = 8192;
  bool rope_interleaved = true;  // llama2.c/GGUF pairs (2i, 2i+1); false = HF rotate-half halves
  bool tied_classifier = true;   // classifier shares the token embedding
  // The HF checkpoint layout (kHfLayouts) the model was read from; "" = the architecture's
  // plain layout. The hf export writes it back (fused tensors stay fused).
  std::string hf_layout;
  // Decoupled head size (Gemma, Qwen3): q is [n_heads·head_dim, dim]; 0 = dim / n_heads.
  int head_size = 0;
  // Sliding-window attention (docs/architecture.md#architectures): a query at position i sees
  // keys i − sliding_window < j ≤ i on the layers swa_layers marks (empty: none); those layers
  // rotate with rope_theta_swa (0 = rope_theta) and no frequency scaling (Gemma's local layers).
  int sliding_window = 0;
  std::vector<uint8_t> swa_layers;
  float rope_theta_swa = 0.f;
  float attn_scale = 0.f;     // score scale; 0 = 1/√head_dim (Gemma: query_pre_attn_scalar^−½)
  float attn_softcap = 0.f;   // scores ← c·tanh(scores/c) before the softmax (Gemma 2); 0 = off
  float final_softcap = 0.f;  // logits ← c·tanh(logits/c) (Gemma 2); 0 = off
  // Mixture of experts (architectures with BlockKind::LlamaMoe; docs/architecture.md#mixture-of-experts):
  // the FFN is n_experts SwiGLU experts of width expert_hidden, of which a router picks
  // n_experts_used per token (softmax over all experts, then the top k; moe_norm_topk: the k
  // weights renormalized to sum 1), plus a shared expert of width shared_hidden (0: none).
  int n_experts = 0;
  int n_experts_used = 0;
  int expert_hidden = 0;
  int shared_hidden = 0;
  bool moe_norm_topk = true;
  int head_dim() const { return head_size > 0 ? head_size : dim / n_heads; }
  int q_dim() const { return head_dim() * n_heads; }
  int kv_dim() const { return head_dim() * n_kv_heads; }
  bool is_swa(int layer) const { return layer >= 0 && layer < (int)swa_layers.size() && swa_layers[layer]; }
  int window(int layer) const { return is_swa(layer) ? sliding_window : 0; }  // 0 = full causal
};

// y = x Wᵀ (+ b). W is [out, in], row-major, f32.
struct Linear {
  std::string name;
  Site input = Site::AttnIn;
  Tensor weight;
  Tensor bias;  // undefined when the layer has none
  // The integer form of `weight` when a solver produced it (codes, grid, outliers); exports
  // that store codes (GPTQ, GGUF Q4/Q8, qforge) read it and check it still dequantizes to `weight`.
  std::shared_ptr<const QuantizedLinear> quant;
  int64_t out_features() const { return weight.size(0); }
  int64_t in_features() const { return weight.size(1); }
};

struct Block {
  std::vector<Linear> linears;  // in the architecture table's order
  Tensor attn_norm, ffn_norm;   // RMSNorm gains [dim] before attention and before the FFN
  // Optional norms, undefined unless the architecture table lists them: per-head q/k norms
  // [head_dim] before RoPE (Qwen3, Gemma 3), norms of the attention and FFN outputs before
  // their residual adds [dim] (Gemma 2/3).
  Tensor q_norm, k_norm, post_attn_norm, post_ffn_norm;
  Linear& linear(const std::string& name_or_alias);  // error names the block's linears
  const Linear& linear(const std::string& name_or_alias) const;
  // A norm by canonical name (or llama2.c alias rms_att, rms_ffn); error names the known ones.
  Tensor& norm(const std::string& name);
  const Tensor& norm(const std::string& name) const;
  // Deep copy of every norm, weight and bias; quant kept unless drop_quant (the float block alone).
  Block clone(bool drop_quant = false) const;
};

struct ModelSource;

// How a lazily loaded model reaches its unconverted blocks. formats/ implements it over the
// opened checkpoint, so the model depends on no file format.
struct BlockLoader {
  virtual ~BlockLoader() = default;
  virtual Block load(int i) const = 0;                                   // block i in f32
  virtual int64_t n_params(int i) const = 0;                             // without converting
  virtual Shape weight_shape(int i, const std::string& linear) const = 0;  // canonical name
  virtual bool has_bias(int i, const std::string& linear) const = 0;
};

struct Model {
  ModelConfig cfg;
  Tensor tok_emb;     // [vocab, dim]
  // blocks[i] is only valid after block(i) when the model was loaded lazily; use block(i).
  mutable std::vector<Block> blocks;
  Tensor final_norm;  // [dim]
  Tensor classifier;  // [vocab, dim]; a view of tok_emb when tied
  std::string source; // file it came from
  std::string format; // "llama2c" | "hf" | "gguf" | "" (built in memory)
  std::shared_ptr<const ModelSource> src;  // the opened checkpoint (null when built in memory)
  std::shared_ptr<const BlockLoader> lazy_blocks;  // lazy models: converts blocks on first use

  // Lazy loading: a block's f32 weights are converted from the file mapping on first use.
  // block(i) converts if needed; block_mut(i) also pins it (edits must survive);
  // release_block(i) drops an unpinned lazy block's f32 copy again (streaming evaluation).
  int n_blocks() const { return (int)blocks.size(); }
  const Block& block(int i) const;
  Block& block_mut(int i);
  void release_block(int i) const;
  bool is_lazy() const { return !resident.empty(); }
  mutable std::vector<uint8_t> resident;  // lazy only: 0 unconverted, 1 converted, 2 pinned

  // Block b's linear `name` (canonical): its weight shape and whether it has a bias, without
  // converting an unconverted lazy block.
  Shape weight_shape(int b, const std::string& name) const;
  bool has_bias(int b, const std::string& name) const;

  Model clone() const;  // deep copy of every weight (ties preserved); materializes lazy blocks
  int64_t n_params() const;
  // "fnv1a64:<hex>" of the architecture, the config and every weight's bytes (embedding, each
  // block's norms, weights and biases, final norm, untied classifier): two models with the same
  // fingerprint compute the same function. Lazy blocks are converted one at a time and released.
  std::string fingerprint() const;
};

// Checks a config for internal consistency; `what` names the source in the message.
void validate_config(const ModelConfig& c, const std::string& what);

}  // namespace qf
