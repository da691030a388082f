// qforge — the transformer forward pass, block by block.
//
// Activations are [N, dim] row-major f32 tensors holding B windows of T tokens each
// (N = B·T, window-major). block_forward runs one block on such a batch, so a calibration
// pipeline can run "block i on these inputs" by itself and observe each linear's input.
#pragma once
#include <functional>
#include <vector>

#include "backend/backend.h"
#include "model/model.h"

namespace qf {

// Called with the activation feeding the linears of `site` (shape [N, in_features]).
using SiteObserver = std::function<void(const SiteKey& site, const Tensor& x)>;

// ---- primitive ops (exposed for tests) ----
// out[i,:] = x[i,:] / sqrt(mean(x[i,:]²) + eps) * g
void rmsnorm(const Tensor& x, const Tensor& g, float eps, Tensor& out);
// Rotates q [N, n_heads·hd] in place; token i of each window sits at position i % T.
void rope(Tensor& x, int n_heads, int head_dim, int T, float theta, bool interleaved);
void rope(Tensor& x, int n_heads, int head_dim, int T, const std::vector<float>& inv_freq, bool interleaved);
// The rotation (transpose = false) or its transpose Rᵀ (the backward of rope).
void rope_rotate(Tensor& x, int n_heads, int head_dim, int T, const std::vector<float>& inv_freq, bool interleaved,
                 bool transpose);
// The head_dim/2 RoPE frequencies θ^(−2i/hd) with c's scaling applied: "linear" divides by
// rope_factor; "llama3" divides long wavelengths (> rope_orig_ctx/low_freq_factor) by it, keeps
// short ones (< rope_orig_ctx/high_freq_factor) and interpolates between (HF's formulas, f32).
std::vector<float> rope_inv_freq(const ModelConfig& c, int head_dim);
// The RoPE frequencies of one layer: a sliding layer rotates with rope_theta_swa (when set) and
// no scaling, the others as rope_inv_freq.
std::vector<float> layer_inv_freq(const ModelConfig& c, int layer);
// Causal grouped-query attention on rotated q/k and v; out [N, n_heads·hd].
void attention(const Tensor& q, const Tensor& k, const Tensor& v, int B, int T, int n_heads, int n_kv_heads,
               int head_dim, Tensor& out);
// The same with the layer's variant (window, score scale, soft cap) from the config.
void attention(const Tensor& q, const Tensor& k, const Tensor& v, const ModelConfig& c, int layer, int B, int T, Tensor& out);
AttentionShape attention_shape(const ModelConfig& c, int layer, int B, int T);
// RMSNorm of every head of x [N, H·hd] with one gain g [hd] (Qwen3's and Gemma 3's q/k norms).
Tensor head_rmsnorm(const Tensor& x, const Tensor& g, float eps);
// The FFN's gated activation of the architecture, in place: g ← act(g) ⊙ u.
void glu_forward(const ModelConfig& c, Tensor& g, const Tensor& u);
// c·tanh(x/c) in place over every element (Gemma 2's final-logit soft cap).
void softcap_inplace(Tensor& x, float cap);
// y = x Wᵀ (+ bias); x [N, in], W [out, in].
Tensor linear_forward(const Tensor& x, const Linear& lin);
// The same for several linears of one input (q, k, v; gate, up) in one backend call: each
// result bit for bit linear_forward's.
std::vector<Tensor> linear_forward(const Tensor& x, const std::vector<const Linear*>& lins);

// ---- model pieces ----
// The embedding multiplier: √dim as an f32 where the architecture scales embeddings (Gemma), else 1.
float embed_scale(const ModelConfig& c);
// [N, dim] (× embed_scale); errors on an id out of range.
Tensor embed(const Model& m, const std::vector<int32_t>& tokens);
// Mixture of experts (ModelConfig n_experts, …): each token's n_experts_used experts, best first,
// and their weights (softmax over all experts in f32, the top k, renormalized when moe_norm_topk).
struct MoeRouting {
  int k = 0;
  std::vector<int32_t> expert;  // [N·k]
  std::vector<float> weight;    // [N·k]
};
MoeRouting moe_route(const ModelConfig& c, const Tensor& router_logits);
// Each expert's routed rows: rows[e] the tokens routed to expert e (ascending), slot[e] parallel to
// it, which of the token's k choices was e (its weight is r.weight[t·k + slot]).
struct ExpertRows {
  std::vector<std::vector<int64_t>> rows;
  std::vector<std::vector<int>> slot;
};
ExpertRows expert_rows(const MoeRouting& r, int n_experts);
// Rows idx of x [N, c] (contiguous), in order -> [idx.size(), c].
Tensor take_rows(const Tensor& x, const std::vector<int64_t>& idx);
// The MoE FFN of block blk on its normed input xn [N, dim]: Σ_k weight · expert(xn) (+ the shared
// expert scaled by sigmoid(shared_gate·xn)) -> [N, dim].
// obs sees each expert's input and mid activations (experts.E.ffn_in / ffn_mid) of the tokens routed
// to it — or, with all_experts, of every token (llm-compressor's moe_calibrate_all_experts: the
// statistics of every expert over all tokens; the output still combines only the routed ones) —
// and the shared expert's mid.
Tensor moe_ffn_forward(const ModelConfig& c, const Block& blk, const Tensor& xn, const SiteObserver& obs = nullptr,
                       bool all_experts = false);
// One transformer block: x [B·T, dim] -> new tensor [B·T, dim].
// moe_all_experts: see moe_ffn_forward (dense blocks ignore it).
Tensor block_forward(const Model& m, int layer, const Tensor& x, int B, int T, const SiteObserver& obs = nullptr,
                     bool moe_all_experts = false);
Tensor head_forward(const Model& m, const Tensor& x);  // final norm + classifier (+ soft cap) -> [N, vocab]
// Full forward of B windows of T tokens (tokens.size() == B·T) -> logits [B·T, vocab].
Tensor forward(const Model& m, const std::vector<int32_t>& tokens, int B, int T);

}  // namespace qf
