// qforge — the backward pass through the Llama model, op by op and block by block.
//
// Each op's backward is a function of its own (checked against finite differences in
// tests/test_backward.cpp). block_backward recomputes one block's forward from its input
// and backpropagates a gradient on its output; model_backward_from_hidden and
// model_loss_backward chain blocks, handing each block's weight gradients to a callback so
// a caller (CVXQ's squared-gradient statistics, decoupleQ's block finetuning) never has to
// hold the gradients of the whole model.
//
// Conventions: activations are [N, ·] row-major f32 with N = B·T (window-major), as in
// forward.h; a linear is y = x Wᵀ (+ b), so dx = dy W, dW = dyᵀ x, db = Σ_rows dy.
// Every reduction runs in fixed chunks in a fixed order: gradients are bit-identical for
// any OpenMP thread count.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/model.h"

namespace qf {

// ---- op backwards ----

struct RmsnormGrads {
  Tensor dx;  // [N, D]
  Tensor dg;  // [D]
};
// y = g ⊙ x / sqrt(mean(x²) + eps) (forward.h rmsnorm). dg is computed only when want_dg.
RmsnormGrads rmsnorm_backward(const Tensor& x, const Tensor& g, float eps, const Tensor& dy, bool want_dg = true);

// RoPE is a rotation per (position, pair), so its backward is the inverse rotation: dx = Rᵀ dy.
// Rotates dy [N, n_heads·hd] in place into dx; same arguments as forward.h rope(): unscaled
// frequencies from theta, or the frequencies forward.h rope_inv_freq(cfg, hd) gives (scaling included).
void rope_backward(Tensor& dy, int n_heads, int head_dim, int T, float theta, bool interleaved);
void rope_backward(Tensor& dy, int n_heads, int head_dim, int T, const std::vector<float>& inv_freq, bool interleaved);

struct AttentionGrads {
  Tensor dq;  // [N, n_heads·hd]
  Tensor dk;  // [N, n_kv_heads·hd]; heads sharing a kv head accumulate into it
  Tensor dv;  // [N, n_kv_heads·hd]
};
// Backward of forward.h attention() (causal GQA softmax on rotated q, k): recomputes the
// probabilities block by block (never a T×T matrix per head) and uses
// dS = P ⊙ (dP − rowsum(P ⊙ dP)), the row sums in f64.
AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, int B, int T, int n_heads,
                                  int n_kv_heads, int head_dim, const Tensor& dy);
// The same for an attention variant (window, score scale, soft cap: backend.h AttentionShape).
AttentionGrads attention_backward(const Tensor& q, const Tensor& k, const Tensor& v, const AttentionShape& s, const Tensor& dy);
// Backward of forward.h head_rmsnorm (one gain [hd] over every head of x [N, H·hd]).
RmsnormGrads head_rmsnorm_backward(const Tensor& x, const Tensor& g, float eps, const Tensor& dy, bool want_dg = true);

struct LinearGrads {
  Tensor dx;  // [N, in]       when want_dx
  Tensor dW;  // [out, in]     when want_dW
  Tensor db;  // [out]         when want_dW and the linear has a bias
};
// Backward of y = x Wᵀ (+ b): dx = dy W, dW = dyᵀ x (f32 GEMM), db = Σ_rows dy (f64 sum).
LinearGrads linear_backward(const Tensor& x, const Linear& lin, const Tensor& dy, bool want_dx = true,
                            bool want_dW = true);

// SwiGLU: h = silu(a) ⊙ u. swiglu() is the forward (as block_forward computes it).
Tensor swiglu(const Tensor& a, const Tensor& u);
struct SwigluGrads {
  Tensor da, du;
};
SwigluGrads swiglu_backward(const Tensor& a, const Tensor& u, const Tensor& dh);

// Embedding backward: d_tok_emb[tokens[i], :] += scale·dx[i, :] (in token order; scale is the
// forward's embedding multiplier, forward.h embed_scale). d_tok_emb must be an f32 [vocab, dim]
// tensor; it is added to, not overwritten.
void embed_backward(const std::vector<int32_t>& tokens, const Tensor& dx, Tensor& d_tok_emb, float scale = 1.f);

struct HeadGrads {
  double loss = 0;      // mean cross-entropy over the rows with a target
  int64_t scored = 0;   // rows with a target
  Tensor dx;            // dL/dx [N, dim] (x = the last block's output, before the final norm)
  Tensor d_final_norm;  // [dim]         when param_grads
  Tensor d_classifier;  // [vocab, dim]  when param_grads
};
// Final RMSNorm + classifier + mean token cross-entropy. targets[i] is row i's target id,
// or −1 to leave the row out of the mean. Logits are made 256 rows at a time (never
// [N, vocab] at once); log-sum-exp and the loss are summed in f64.
HeadGrads head_backward(const Model& m, const Tensor& x, const std::vector<int32_t>& targets, bool param_grads = false);

// ---- block backward ----

// Which gradients block_backward computes. dx (w.r.t. the block input) is always computed.
struct BlockGradRequest {
  std::vector<std::string> linears;  // names (or llama2.c aliases) whose dW (and db) to compute
  bool norms = false;                // the gradients of every norm the block has
  static BlockGradRequest none() { return {}; }
  static BlockGradRequest all();     // every linear of kLlama.linears and both norms
  static BlockGradRequest all(const ModelConfig& c);  // every linear of a block of config c (experts too) and its norms
};

struct BlockGrads {
  std::vector<std::string> names;  // the block's linears, in Block::linears order
  std::vector<Tensor> dW;          // parallel to names; undefined where not requested
  std::vector<Tensor> db;          // defined where requested and the linear has a bias
  Tensor d_attn_norm, d_ffn_norm;  // [dim] when req.norms
  // The optional norms' gradients, when req.norms and the block has them.
  Tensor d_q_norm, d_k_norm, d_post_attn_norm, d_post_ffn_norm;
  // A norm's gradient by canonical name (undefined when not computed); error for an unknown name.
  const Tensor& norm(const std::string& name) const;
  // The weight gradient of one linear by name or alias; fails if it was not requested.
  const Tensor& weight(const std::string& name) const;
};

// Recomputes block `layer`'s forward from its input x [B·T, dim] and backpropagates dy
// (dL/d block output, [B·T, dim]). Returns dL/dx; fills *g (overwriting it) as requested
// (g may be null when nothing but dx is wanted).
// Memory (f32, N = B·T): the recomputed forward keeps q [N, n_heads·hd], k, v [N, kv_dim],
// h [N, dim] and the gate/up pre-activations a, u [N, hidden] (the block output is never
// formed), plus xn1 [N, dim] if a q/k/v dW is requested, att [N, n_heads·hd] if o's is, xn2
// [N, dim] if gate's or up's is. a, u are overwritten in place by their gradients; one more
// [N, hidden] holds silu(a)·u (down's dW) and then its gradient. Peak: N·(3·dim + 2·n_heads·hd
// + 2·kv_dim + 3·hidden) with every dW requested, N·(dim + n_heads·hd + 2·kv_dim + 3·hidden)
// for dx only; attention adds 2·threads·128·T scratch; requested dW/db: the block's parameters.
Tensor block_backward(const Model& m, int layer, const Tensor& x, int B, int T, const Tensor& dy, BlockGrads* g,
                      const BlockGradRequest& req);

// ---- whole model ----

// Gradient on the final hidden states *after the final norm* (hn = rmsnorm(h_L, final_norm),
// [N, dim], the states CVXQ projects): returns dL/dhn.
using HiddenGradFn = std::function<Tensor(const Tensor& hn)>;
// Per layer: what block_backward should compute (null: dx only everywhere).
using BlockRequestFn = std::function<BlockGradRequest(int layer)>;
// Called once per layer, last layer first, with that layer's gradients.
using BlockGradsFn = std::function<void(int layer, BlockGrads& g)>;

struct ModelGrads {
  double loss = 0;      // model_loss_backward: mean next-token NLL over B·(T−1) positions
  Tensor d_embed;       // dL/d(embedding output) [N, dim]
  Tensor d_final_norm;  // [dim]          when head_grads
  Tensor d_classifier;  // [vocab, dim]   when head_grads and the classifier is not tied
  Tensor d_tok_emb;     // [vocab, dim]   when head_grads: embedding scatter (+ classifier grad when tied)
};

// Forward through every block keeping each block's input (n_layers × [N, dim] f32), then
// dL/dhn from dH flows back through the final norm and block by block (each block's input is
// freed once its backward is done). The classifier is not on this path: with head_grads,
// d_final_norm and d_tok_emb (the embedding scatter) are filled, d_classifier is not.
ModelGrads model_backward_from_hidden(const Model& m, const std::vector<int32_t>& tokens, int B, int T,
                                      const HiddenGradFn& dH, const BlockRequestFn& request,
                                      const BlockGradsFn& on_block_grads, bool head_grads = false);

// Next-token cross-entropy (window b, position t < T−1 predicts token t+1 of the same window),
// mean over the B·(T−1) scored positions, backpropagated through the whole model.
ModelGrads model_loss_backward(const Model& m, const std::vector<int32_t>& tokens, int B, int T,
                               const BlockRequestFn& request, const BlockGradsFn& on_block_grads,
                               bool head_grads = false);

}  // namespace qf
