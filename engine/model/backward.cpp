// The Llama backward pass: op backwards, block_backward (recompute the block forward,
// then backpropagate), and the whole-model drivers. f32 throughout; f64 only for the
// reductions that need it (RMSNorm row dots and gain sums, softmax row sums, the loss).
#include "model/backward.h"

#include <cmath>
#include <cstring>
#include <functional>

#include "backend/backend.h"
#include "core/parallel.h"
#include "model/forward.h"

namespace qf {

// The ops run on the backend (backend/backend.h), whose chunking is fixed: gradients are
// bit-identical for 1 or N threads.

static void check_2d(const Tensor& t, int64_t cols, const char* what) {
  if (!t.defined() || t.dim() != 2 || t.size(1) != cols || t.dtype() != DType::F32)
    fail(what, ": expected an f32 [N, ", cols, "] tensor, got ",
         t.defined() ? std::string(dtype_name(t.dtype())) + " " + shape_str(t.shape()) : std::string("nothing"));
}

static void check_rows(const Tensor& t, int64_t n, const char* what) {
  if (t.size(0) != n) fail(what, " has ", t.size(0), " rows, expected ", n);
}

static void add_inplace(Tensor& a, const Tensor& b) { backend().add_inplace(a.f32(), b.f32(), a.numel()); }

// dx = dy W (or dx += dy W): dy [N, out], W [out, in] contiguous, dx [N, in] contiguous.
static void dy_times_w(const Tensor& dy, const Tensor& W, Tensor& dx, bool accumulate) {
  const int64_t N = dy.size(0), outf = W.size(0), in = W.size(1);
  if (!accumulate) dx = Tensor::empty({N, in});
  backend().gemm_rows(dy.f32(), N, W.f32(), outf, in, /*w_transposed=*/false, dx.f32(), accumulate);
}

// dx = Σ_i dy_i W_i (dy_i [N, out_i] contiguous, W_i [out_i, in]) in one backend call, added in
// list order: the same bits as dy_times_w on each term in turn.
static Tensor sum_dy_times_w(std::initializer_list<std::pair<const Tensor*, const Linear*>> terms) {
  std::vector<Tensor> W;
  std::vector<GemmRowsJob> jobs;
  const int64_t N = terms.begin()->first->size(0);
  Tensor dx;
  for (const auto& [dy, lin] : terms) {
    W.push_back(lin->weight.contiguous());
    const int64_t outf = W.back().size(0), in = W.back().size(1);
    if (!dx.defined()) dx = Tensor::empty({N, in});
    jobs.push_back(GemmRowsJob{dy->f32(), W.back().f32(), outf, in, /*w_transposed=*/false, dx.f32(),
                               /*accumulate=*/!jobs.empty()});
  }
  backend().gemm_rows_batch(N, jobs.data(), (int)jobs.size());
  return dx;
}

// dW = dyᵀ x [out, in]; db[o] = Σ_n dy[n, o] in f64 when db is non-null.
static void dyt_times_x(const Tensor& dy, const Tensor& x, Tensor& dW, Tensor* db) {
  const int64_t N = dy.size(0), outf = dy.size(1), in = x.size(1);
  dW = Tensor::empty({outf, in});
  if (db) *db = Tensor::empty({outf});
  backend().gemm_tn(dy.f32(), N, outf, x.f32(), in, dW.f32(), /*accumulate=*/false, db ? db->f32() : nullptr);
}

// ---------------------------------------------------------------- rmsnorm

RmsnormGrads rmsnorm_backward(const Tensor& x_, const Tensor& g_, float eps, const Tensor& dy_, bool want_dg) {
  const int64_t D = g_.numel();
  check_2d(x_, D, "rmsnorm_backward input");
  check_2d(dy_, D, "rmsnorm_backward gradient");
  const int64_t N = x_.size(0);
  check_rows(dy_, N, "rmsnorm_backward gradient");
  const Tensor x = x_.contiguous(), g = g_.contiguous(), dy = dy_.contiguous();
  RmsnormGrads out;
  out.dx = Tensor::empty({N, D});
  if (want_dg) out.dg = Tensor::empty({D});
  backend().rmsnorm_backward(x.f32(), N, D, g.f32(), eps, dy.f32(), out.dx.f32(), want_dg ? out.dg.f32() : nullptr);
  return out;
}

// ---------------------------------------------------------------- rope

void rope_backward(Tensor& dy, int n_heads, int head_dim, int T, float theta, bool interleaved) {
  ModelConfig c;  // unscaled frequencies, as forward.h rope(…, theta, …)
  c.rope_theta = theta;
  rope_backward(dy, n_heads, head_dim, T, rope_inv_freq(c, head_dim), interleaved);
}

void rope_backward(Tensor& dy, int n_heads, int head_dim, int T, const std::vector<float>& inv_freq, bool interleaved) {
  rope_rotate(dy, n_heads, head_dim, T, inv_freq, interleaved, true);  // dx = Rᵀ dy
}

// ---------------------------------------------------------------- attention

AttentionGrads attention_backward(const Tensor& q_, const Tensor& k_, const Tensor& v_, int B, int T, int n_heads,
                                  int n_kv_heads, int head_dim, const Tensor& dy_) {
  return attention_backward(q_, k_, v_, AttentionShape{B, T, n_heads, n_kv_heads, head_dim}, dy_);
}

AttentionGrads attention_backward(const Tensor& q_, const Tensor& k_, const Tensor& v_, const AttentionShape& sh, const Tensor& dy_) {
  const int B = sh.B, T = sh.T, n_heads = sh.n_heads, n_kv_heads = sh.n_kv_heads, head_dim = sh.head_dim;
  const int64_t N = (int64_t)B * T, QW = (int64_t)n_heads * head_dim, KW = (int64_t)n_kv_heads * head_dim;
  check_2d(q_, QW, "attention_backward q");
  check_2d(k_, KW, "attention_backward k");
  check_2d(v_, KW, "attention_backward v");
  check_2d(dy_, QW, "attention_backward gradient");
  if (q_.size(0) != N || k_.size(0) != N || v_.size(0) != N || dy_.size(0) != N)
    fail("attention_backward: q/k/v/dy rows (", q_.size(0), ", ", k_.size(0), ", ", v_.size(0), ", ", dy_.size(0),
         ") != B·T = ", N);
  if (n_kv_heads <= 0 || n_heads % n_kv_heads)
    fail("attention_backward: n_heads ", n_heads, " is not a multiple of n_kv_heads ", n_kv_heads);
  const Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous(), dy = dy_.contiguous();
  AttentionGrads g;
  g.dq = Tensor::empty({N, QW});
  g.dk = Tensor::empty({N, KW});
  g.dv = Tensor::empty({N, KW});
  backend().attention_backward(q.f32(), k.f32(), v.f32(), sh, dy.f32(), g.dq.f32(), g.dk.f32(), g.dv.f32());
  return g;
}

// ---------------------------------------------------------------- linear, swiglu, embedding

LinearGrads linear_backward(const Tensor& x_, const Linear& lin, const Tensor& dy_, bool want_dx, bool want_dW) {
  const Tensor W = lin.weight.contiguous();
  if (W.dim() != 2 || W.dtype() != DType::F32)
    fail("linear_backward '", lin.name, "': weight must be an f32 matrix, got ", shape_str(W.shape()));
  const int64_t in = W.size(1), outf = W.size(0);
  if (x_.dim() != 2 || x_.size(1) != in || x_.dtype() != DType::F32)
    fail("linear_backward '", lin.name, "': input ", shape_str(x_.shape()), " does not match weight ", shape_str(W.shape()));
  if (dy_.dim() != 2 || dy_.size(1) != outf || dy_.size(0) != x_.size(0) || dy_.dtype() != DType::F32)
    fail("linear_backward '", lin.name, "': gradient ", shape_str(dy_.shape()), " does not match output [",
         x_.size(0), ", ", outf, "]");
  if (lin.bias.defined() && lin.bias.numel() != outf)
    fail("linear_backward '", lin.name, "': bias has ", lin.bias.numel(), " elements, expected ", outf);
  const Tensor x = x_.contiguous(), dy = dy_.contiguous();
  LinearGrads g;
  if (want_dx) dy_times_w(dy, W, g.dx, false);
  if (want_dW) dyt_times_x(dy, x, g.dW, lin.bias.defined() ? &g.db : nullptr);
  return g;
}

Tensor swiglu(const Tensor& a_, const Tensor& u_) {
  if (a_.shape() != u_.shape() || a_.dim() != 2 || a_.dtype() != DType::F32 || u_.dtype() != DType::F32)
    fail("swiglu: gate ", shape_str(a_.shape()), " and up ", shape_str(u_.shape()), " must be f32 matrices of one shape");
  Tensor h = a_.clone();
  const Tensor u = u_.contiguous();
  backend().swiglu(h.f32(), u.f32(), h.numel(), h.f32());  // as block_forward
  return h;
}

// In place: a ← da, u ← du for h = silu(a)·u.
static void swiglu_backward_inplace(Tensor& a, Tensor& u, const Tensor& dh) {
  backend().swiglu_backward(a.f32(), u.f32(), dh.f32(), a.numel());
}

// The architecture's gated activation and its backward (forward.h glu_forward).
static Tensor glu(const ModelConfig& c, const Tensor& a, const Tensor& u) {
  Tensor h = a.clone();
  glu_forward(c, h, u.contiguous());
  return h;
}
static void glu_backward_inplace(const ModelConfig& c, Tensor& a, Tensor& u, const Tensor& dh) {
  switch (arch_of(c).act) {
    case GluAct::Silu: backend().swiglu_backward(a.f32(), u.f32(), dh.f32(), a.numel()); return;
    case GluAct::GeluTanh: backend().geglu_backward(a.f32(), u.f32(), dh.f32(), a.numel()); return;
  }
}

RmsnormGrads head_rmsnorm_backward(const Tensor& x, const Tensor& g, float eps, const Tensor& dy, bool want_dg) {
  const int64_t hd = g.numel();
  if (x.dim() != 2 || x.shape() != dy.shape() || hd <= 0 || x.size(1) % hd)
    fail("head norm backward: input ", shape_str(x.shape()), " and gradient ", shape_str(dy.shape()), " are not whole heads of ", hd);
  const Shape rows{x.size(0) * (x.size(1) / hd), hd};
  RmsnormGrads r = rmsnorm_backward(x.contiguous().view(rows), g, eps, dy.contiguous().view(rows), want_dg);
  r.dx = r.dx.view(x.shape());
  return r;
}

SwigluGrads swiglu_backward(const Tensor& a, const Tensor& u, const Tensor& dh) {
  if (a.shape() != u.shape() || a.shape() != dh.shape() || a.dim() != 2)
    fail("swiglu_backward: gate ", shape_str(a.shape()), ", up ", shape_str(u.shape()), " and gradient ",
         shape_str(dh.shape()), " must be matrices of one shape");
  SwigluGrads g{a.clone(), u.clone()};
  if (g.da.dtype() != DType::F32 || g.du.dtype() != DType::F32 || dh.dtype() != DType::F32)
    fail("swiglu_backward: f32 tensors expected");
  swiglu_backward_inplace(g.da, g.du, dh.contiguous());
  return g;
}

void embed_backward(const std::vector<int32_t>& tokens, const Tensor& dx_, Tensor& d_tok_emb, float scale) {
  if (!d_tok_emb.defined() || d_tok_emb.dim() != 2 || d_tok_emb.dtype() != DType::F32 || !d_tok_emb.is_contiguous())
    fail("embed_backward: the embedding gradient must be a contiguous f32 [vocab, dim] tensor");
  const int64_t V = d_tok_emb.size(0), D = d_tok_emb.size(1);
  check_2d(dx_, D, "embed_backward gradient");
  check_rows(dx_, (int64_t)tokens.size(), "embed_backward gradient");
  const Tensor dx = dx_.contiguous();
  float* ep = d_tok_emb.f32();
  const float* dp = dx.f32();
  for (size_t i = 0; i < tokens.size(); ++i) {  // token order: repeated ids add up deterministically
    if (tokens[i] < 0 || tokens[i] >= V)
      fail("token id ", tokens[i], " at position ", i + 1, " is outside the vocabulary [0, ", V, ")");
    float* row = ep + (int64_t)tokens[i] * D;
    if (scale == 1.f)
      for (int64_t j = 0; j < D; ++j) row[j] += dp[(int64_t)i * D + j];
    else
      for (int64_t j = 0; j < D; ++j) row[j] += scale * dp[(int64_t)i * D + j];
  }
}

// ---------------------------------------------------------------- head + cross-entropy

HeadGrads head_backward(const Model& m, const Tensor& x_, const std::vector<int32_t>& targets, bool param_grads) {
  const int64_t D = m.cfg.dim;
  check_2d(x_, D, "head_backward input");
  const int64_t N = x_.size(0);
  if ((int64_t)targets.size() != N) fail("head_backward: ", targets.size(), " targets for ", N, " rows");
  const Tensor x = x_.contiguous(), W = m.classifier.contiguous();
  const int64_t V = W.size(0);
  if (W.dim() != 2 || W.size(1) != D) fail("head_backward: classifier ", shape_str(W.shape()), " is not [vocab, ", D, "]");
  int64_t scored = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (targets[i] < -1 || targets[i] >= V)
      fail("head_backward: target ", targets[i], " of row ", i + 1, " is outside the vocabulary [0, ", V, ") (−1 skips a row)");
    scored += targets[i] >= 0;
  }
  if (scored == 0) fail("head_backward: no row has a target");

  HeadGrads hg;
  hg.scored = scored;
  Tensor xn;
  rmsnorm(x, m.final_norm, m.cfg.norm_eps, xn);
  Tensor dxn = Tensor::empty({N, D});
  if (param_grads) hg.d_classifier = Tensor::empty({V, D});
  const float inv_count = (float)(1.0 / (double)scored);
  const float cap = m.cfg.final_softcap;
  // Rows go in super-chunks of 256 (logits [256, vocab] at a time), sequentially, so the
  // classifier gradient sums the super-chunks in a fixed order.
  constexpr int64_t kSuper = 256;
  Tensor logits = Tensor::empty({std::min(kSuper, N), V});
  std::vector<double> row_loss(kSuper);
  double loss = 0;
  for (int64_t s0 = 0; s0 < N; s0 += kSuper) {
    const int64_t ns = std::min(kSuper, N - s0);
    backend().gemm_rows(xn.f32() + s0 * D, ns, W.f32(), V, D, /*w_transposed=*/true, logits.f32(), false);
    if (cap > 0.f) {
      Tensor rows = logits.narrow(0, 0, ns);
      softcap_inplace(rows, cap);
    }
    // softmax − one-hot, scaled by 1/scored: dL/dlogits, in place
#pragma omp parallel for schedule(static) if (worth_parallel(ns * V * 4))
    for (int64_t r = 0; r < ns; ++r) {
      float* l = logits.f32() + r * V;
      const int32_t t = targets[s0 + r];
      if (t < 0) {
        std::memset(l, 0, V * sizeof(float));
        row_loss[r] = 0;
        continue;
      }
      float mx = l[0];
      for (int64_t j = 1; j < V; ++j) mx = std::max(mx, l[j]);
      double se = 0;
      for (int64_t j = 0; j < V; ++j) se += std::exp((double)l[j] - mx);
      row_loss[r] = std::log(se) + mx - (double)l[t];
      for (int64_t j = 0; j < V; ++j) {
        const float lj = l[j];
        l[j] = (float)(std::exp((double)lj - mx) / se) * inv_count;
        if (j == t) l[j] -= inv_count;
        if (cap > 0.f) l[j] *= 1.0f - (lj / cap) * (lj / cap);  // through c·tanh(z/c): 1 − tanh²
      }
    }
    for (int64_t r = 0; r < ns; ++r) loss += row_loss[r];
    backend().gemm_rows(logits.f32(), ns, W.f32(), V, D, /*w_transposed=*/false, dxn.f32() + s0 * D, false);
    if (param_grads)  // threads by the whole pass's N·D·V, as before the backend
      backend().gemm_tn(logits.f32(), ns, V, xn.f32() + s0 * D, D, hg.d_classifier.f32(), /*accumulate=*/true, nullptr,
                        N * D * V);
  }
  hg.loss = loss / (double)scored;
  RmsnormGrads ng = rmsnorm_backward(x, m.final_norm, m.cfg.norm_eps, dxn, param_grads);
  hg.dx = std::move(ng.dx);
  hg.d_final_norm = std::move(ng.dg);
  return hg;
}

// ---------------------------------------------------------------- block

BlockGradRequest BlockGradRequest::all() {
  BlockGradRequest r;
  for (const LinearSpec& s : kLlama.linears) r.linears.push_back(s.name);  // every dense table has these linears
  r.norms = true;
  return r;
}

BlockGradRequest BlockGradRequest::all(const ModelConfig& c) {
  BlockGradRequest r;
  for (const BlockLinear& s : block_linears(c)) r.linears.push_back(s.name);
  r.norms = true;
  return r;
}

const Tensor& BlockGrads::norm(const std::string& n) const {
  if (n == "attn_norm") return d_attn_norm;
  if (n == "ffn_norm") return d_ffn_norm;
  if (n == "q_norm") return d_q_norm;
  if (n == "k_norm") return d_k_norm;
  if (n == "post_attn_norm") return d_post_attn_norm;
  if (n == "post_ffn_norm") return d_post_ffn_norm;
  fail("BlockGrads: unknown norm '", n, "'");
}

const Tensor& BlockGrads::weight(const std::string& name) const {
  std::string canon = name;
  for (const LinearSpec& s : kLlama.linears)
    if (name == s.alias) canon = s.name;
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == canon) {
      if (!dW[i].defined()) fail("BlockGrads: the gradient of linear '", name, "' was not requested");
      return dW[i];
    }
  fail("BlockGrads: no linear '", name, "' in this block's gradients");
}

// The MoE FFN's backward (docs/architecture.md#mixture-of-experts): y = Σ_{j∈top-k} w_j f_j(x)
// (+ σ(z) f_sh(x), z = shared_gate·x). With the top-k set held fixed (it is piecewise constant):
// df_j = w_j dy, dw_j = ⟨dy, f_j(x)⟩; renormalized w_j = p_j/s gives dp_j = (dw_j − Σ_i w_i dw_i)/s on
// the set (else dp_j = dw_j); the softmax gives dr_e = p_e (dp_e − Σ_i p_i dp_i) over every expert;
// the router dW = drᵀ x. Each expert's SwiGLU backward runs on its routed rows; dx adds the
// experts' (in expert order, as the forward), the router's and the shared expert's parts.
// want(i): whether linear i of the block (Block::linears index) needs its dW.
using WantGrad = std::function<bool(const std::string&)>;
using PutGrad = std::function<void(const std::string&, Tensor)>;

// One SwiGLU FFN's backward (an expert, the shared expert) on its inputs x with upstream dy; a, u
// are its gate/up pre-activations (overwritten by their gradients), mid = act(a)·u. The requested
// weight gradients go to put; returns dx = da·W_gate + du·W_up.
static Tensor glu_ffn_backward(const ModelConfig& c, const Tensor& x, Tensor& a, Tensor& u, const Tensor& mid, const Tensor& dy,
                               const Linear& gate, const Linear& up, const Linear& down, const WantGrad& want, const PutGrad& put) {
  if (want(down.name)) {
    Tensor dW;
    dyt_times_x(dy, mid, dW, nullptr);
    put(down.name, std::move(dW));
  }
  Tensor dmid;
  dy_times_w(dy, down.weight.contiguous(), dmid, false);
  glu_backward_inplace(c, a, u, dmid);  // a ← da, u ← du
  for (const auto& [l, d] : {std::pair<const Linear*, const Tensor*>{&gate, &a}, {&up, &u}})
    if (want(l->name)) {
      Tensor dW;
      dyt_times_x(*d, x, dW, nullptr);
      put(l->name, std::move(dW));
    }
  return sum_dy_times_w({{&a, &gate}, {&u, &up}});
}

static Tensor moe_ffn_backward(const ModelConfig& c, const Block& blk, const Tensor& xn, const Tensor& dy, const WantGrad& want,
                               BlockGrads* g) {
  const int64_t N = xn.size(0), D = c.dim;
  const int E = c.n_experts;
  const PutGrad put = [&](const std::string& name, Tensor dW) {
    for (size_t i = 0; i < g->names.size(); ++i)
      if (g->names[i] == name) g->dW[i] = std::move(dW);
  };
  const Linear& router = blk.linear("router");
  const Tensor logits = linear_forward(xn, router);
  const MoeRouting rt = moe_route(c, logits);
  const int K = rt.k;
  const ExpertRows er = expert_rows(rt, E);
  const auto& rows = er.rows;
  const auto& slot = er.slot;
  std::vector<double> dw((size_t)(N * K), 0.0);  // dL/dw of each token's slots
  Tensor dx = Tensor::empty({N, D});
  const float* dyp = dy.f32();
  for (int e = 0; e < E; ++e) {
    const std::vector<int64_t>& idx = rows[e];
    const int64_t n = (int64_t)idx.size();
    const std::string pre = "experts." + std::to_string(e) + ".";
    const Linear &gate = blk.linear(pre + "gate"), &up = blk.linear(pre + "up"), &down = blk.linear(pre + "down");
    if (n == 0) {  // no token: zero gradients where asked
      for (const Linear* l : {&gate, &up, &down})
        if (want(l->name)) put(l->name, Tensor::zeros(l->weight.shape()));
      continue;
    }
    const Tensor xe = take_rows(xn, idx);
    Tensor dye = Tensor::empty({n, D});
    for (int64_t i = 0; i < n; ++i) {
      const float w = rt.weight[idx[i] * K + slot[e][i]];
      for (int64_t d = 0; d < D; ++d) dye.f32()[i * D + d] = w * dyp[idx[i] * D + d];
    }
    std::vector<Tensor> gu = linear_forward(xe, {&gate, &up});
    Tensor a = std::move(gu[0]), u = std::move(gu[1]);
    const Tensor mid = glu(c, a, u);
    const Tensor f = linear_forward(mid, down);  // f_j(x) for dw_j
    for (int64_t i = 0; i < n; ++i) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += (double)dyp[idx[i] * D + d] * f.f32()[i * D + d];
      dw[(size_t)(idx[i] * K + slot[e][i])] = s;
    }
    const Tensor dxe = glu_ffn_backward(c, xe, a, u, mid, dye, gate, up, down, want, put);
    // rows of one expert are distinct tokens; experts in order: the same sums for any thread count
    for (int64_t i = 0; i < n; ++i) {
      float* dst = dx.f32() + idx[i] * D;
      const float* src = dxe.f32() + i * D;
      for (int64_t d = 0; d < D; ++d) dst[d] += src[d];
    }
  }
  // Router: through the renormalization and the softmax over every expert.
  Tensor dr = Tensor::empty({N, E});
  {
    const Tensor lg = logits.contiguous();
    for (int64_t t = 0; t < N; ++t) {
      const float* l = lg.f32() + t * E;
      double mx = l[0], sum = 0;
      for (int e = 1; e < E; ++e) mx = std::max(mx, (double)l[e]);
      std::vector<double> p(E), dp(E, 0.0);
      for (int e = 0; e < E; ++e) sum += (p[e] = std::exp((double)l[e] - mx));
      for (double& v : p) v /= sum;
      double ssel = 0, wdw = 0;
      for (int j = 0; j < K; ++j) ssel += p[rt.expert[t * K + j]];
      for (int j = 0; j < K; ++j) wdw += (p[rt.expert[t * K + j]] / ssel) * dw[(size_t)(t * K + j)];
      for (int j = 0; j < K; ++j) {
        const int e = rt.expert[t * K + j];
        dp[e] = c.moe_norm_topk ? (dw[(size_t)(t * K + j)] - wdw) / ssel : dw[(size_t)(t * K + j)];
      }
      double pdp = 0;
      for (int e = 0; e < E; ++e) pdp += p[e] * dp[e];
      for (int e = 0; e < E; ++e) dr.f32()[t * E + e] = (float)(p[e] * (dp[e] - pdp));
    }
  }
  if (want("router")) {
    Tensor dW;
    dyt_times_x(dr, xn, dW, nullptr);
    put("router", std::move(dW));
  }
  dy_times_w(dr, router.weight.contiguous(), dx, /*accumulate=*/true);
  if (c.shared_hidden > 0) {  // y += σ(z) f_sh(x), z = shared_gate·x
    const Linear &sg = blk.linear("shared.gate"), &su = blk.linear("shared.up"), &sd = blk.linear("shared.down"),
                 &sgate = blk.linear("shared_gate");
    std::vector<Tensor> gu = linear_forward(xn, {&sg, &su});
    Tensor a = std::move(gu[0]), u = std::move(gu[1]);
    const Tensor mid = glu(c, a, u);
    const Tensor f = linear_forward(mid, sd);
    const Tensor z = linear_forward(xn, sgate);  // [N, 1]
    Tensor dys = Tensor::empty({N, D}), dz = Tensor::empty({N, 1});
    for (int64_t t = 0; t < N; ++t) {
      const double sig = 1.0 / (1.0 + std::exp(-(double)z.f32()[t]));
      double dsig = 0;
      for (int64_t d = 0; d < D; ++d) {
        dys.f32()[t * D + d] = (float)sig * dyp[t * D + d];
        dsig += (double)dyp[t * D + d] * f.f32()[t * D + d];
      }
      dz.f32()[t] = (float)(dsig * sig * (1.0 - sig));
    }
    Tensor dxs = glu_ffn_backward(c, xn, a, u, mid, dys, sg, su, sd, want, put);
    if (want(sgate.name)) {
      Tensor dW;
      dyt_times_x(dz, xn, dW, nullptr);
      put(sgate.name, std::move(dW));
    }
    dy_times_w(dz, sgate.weight.contiguous(), dxs, /*accumulate=*/true);
    add_inplace(dx, dxs);
  }
  return dx;
}

Tensor block_backward(const Model& m, int layer, const Tensor& x_, int B, int T, const Tensor& dy_, BlockGrads* g,
                      const BlockGradRequest& req) {
  const ModelConfig& c = m.cfg;
  if (layer < 0 || layer >= m.n_blocks()) fail("block_backward: block ", layer + 1, " out of range (model has ", m.n_blocks(), " blocks, numbered from 1)");
  if (B <= 0 || T <= 0) fail("block_backward: B = ", B, ", T = ", T, " must be positive");
  const int64_t N = (int64_t)B * T;
  check_2d(x_, c.dim, "block_backward input");
  check_2d(dy_, c.dim, "block_backward output gradient");
  check_rows(x_, N, "block_backward input");
  check_rows(dy_, N, "block_backward output gradient");
  const Block& blk = m.block(layer);
  const int hd = c.head_dim();

  // resolve the request to indices of blk.linears (unknown names fail, naming the block's linears)
  std::vector<char> want(blk.linears.size(), 0);
  for (const std::string& name : req.linears) want[&blk.linear(name) - blk.linears.data()] = 1;
  bool any = req.norms;
  for (char w : want) any = any || w;
  if (any && !g) fail("block_backward: gradients were requested for block ", layer + 1, " but no BlockGrads was given");
  if (g) {
    *g = BlockGrads{};
    for (const Linear& l : blk.linears) g->names.push_back(l.name);
    g->dW.resize(blk.linears.size());
    g->db.resize(blk.linears.size());
  }
  auto idx = [&](const char* name) { return &blk.linear(name) - blk.linears.data(); };
  // dW = dyᵀ x and db for the requested linears among `dys` (all read x), in one backend call.
  auto weight_grads = [&](std::initializer_list<std::pair<const char*, const Tensor*>> dys, const Tensor& x) {
    std::vector<GemmTnJob> jobs;
    for (const auto& [name, d] : dys) {
      const auto i = idx(name);
      if (!want[i]) continue;
      const Linear& l = blk.linears[i];
      if (l.bias.defined() && l.bias.numel() != l.out_features())
        fail("linear '", l.name, "' of block ", layer + 1, ": bias has ", l.bias.numel(), " elements, expected ", l.out_features());
      const int64_t outf = d->size(1), in = x.size(1);
      g->dW[i] = Tensor::empty({outf, in});
      if (l.bias.defined()) g->db[i] = Tensor::empty({outf});
      jobs.push_back(GemmTnJob{d->f32(), outf, x.f32(), in, g->dW[i].f32(), /*accumulate=*/false,
                               l.bias.defined() ? g->db[i].f32() : nullptr});
    }
    if (!jobs.empty()) backend().gemm_tn_batch(x.size(0), jobs.data(), (int)jobs.size());
  };
  const Tensor x = x_.contiguous(), dy = dy_.contiguous();

  // ---- forward recompute: the same calls as block_forward; buffers a requested dW does
  //      not need are dropped as soon as the forward is past them.
  Tensor xn1;
  rmsnorm(x, blk.attn_norm, c.norm_eps, xn1);
  std::vector<Tensor> qkv = linear_forward(xn1, {&blk.linear("q"), &blk.linear("k"), &blk.linear("v")});
  Tensor q = std::move(qkv[0]), k = std::move(qkv[1]), v = std::move(qkv[2]);
  if (!want[idx("q")] && !want[idx("k")] && !want[idx("v")]) xn1 = Tensor();
  Tensor q0, k0;  // before the per-head norms (their backward reads them)
  if (blk.q_norm.defined()) q0 = q, q = head_rmsnorm(q0, blk.q_norm, c.norm_eps);
  if (blk.k_norm.defined()) k0 = k, k = head_rmsnorm(k0, blk.k_norm, c.norm_eps);
  const std::vector<float> inv_freq = layer_inv_freq(c, layer);  // RoPE scaling, sliding layers' base
  rope(q, c.n_heads, hd, T, inv_freq, c.rope_interleaved);
  rope(k, c.n_kv_heads, hd, T, inv_freq, c.rope_interleaved);
  Tensor att;
  attention(q, k, v, c, layer, B, T, att);
  Tensor h = x.clone();
  Tensor a0 = linear_forward(att, blk.linear("o"));  // before the post-attention norm
  if (blk.post_attn_norm.defined()) {
    Tensor an;
    rmsnorm(a0, blk.post_attn_norm, c.norm_eps, an);
    add_inplace(h, an);
  } else {
    add_inplace(h, a0);
    a0 = Tensor();
  }
  if (!want[idx("o")]) att = Tensor();
  Tensor xn2;
  rmsnorm(h, blk.ffn_norm, c.norm_eps, xn2);
  Tensor dxn2;
  RmsnormGrads npf;
  if (arch_of(c).kind == BlockKind::LlamaMoe) {
    if (blk.post_ffn_norm.defined()) fail("block_backward: a post-FFN norm around experts is not implemented");
    dxn2 = moe_ffn_backward(c, blk, xn2, dy, [&](const std::string& n) { return (bool)want[idx(n.c_str())]; }, g);
    xn2 = Tensor();
  } else {
  std::vector<Tensor> gu = linear_forward(xn2, {&blk.linear("gate"), &blk.linear("up")});
  Tensor a = std::move(gu[0]), u = std::move(gu[1]);
  if (!want[idx("gate")] && !want[idx("up")]) xn2 = Tensor();
  // the block output itself is not needed; act(a)·u only for down's dW and a post-FFN norm
  Tensor f0;  // down's output before the post-FFN norm
  Tensor dF = dy;
  if (blk.post_ffn_norm.defined()) {
    const Tensor mid = glu(c, a, u);
    f0 = linear_forward(mid, blk.linear("down"));
    npf = rmsnorm_backward(f0, blk.post_ffn_norm, c.norm_eps, dy, req.norms);
    dF = std::move(npf.dx);
    f0 = Tensor();
    if (want[idx("down")]) weight_grads({{"down", &dF}}, mid);
  } else if (want[idx("down")]) {
    weight_grads({{"down", &dy}}, glu(c, a, u));
  }

  // ---- FFN: out = h + post_ffn_norm(down(act(a)·u))
  const Tensor Wdown = blk.linear("down").weight.contiguous();
  Tensor dmid;
  dy_times_w(dF, Wdown, dmid, false);
  dF = Tensor();
  glu_backward_inplace(c, a, u, dmid);  // a ← da, u ← du
  dmid = Tensor();
  weight_grads({{"gate", &a}, {"up", &u}}, xn2);
  dxn2 = sum_dy_times_w({{&a, &blk.linear("gate")}, {&u, &blk.linear("up")}});
  a = u = xn2 = Tensor();
  }
  RmsnormGrads n2 = rmsnorm_backward(h, blk.ffn_norm, c.norm_eps, dxn2, req.norms);
  h = dxn2 = Tensor();
  Tensor dh = dy.clone();  // dL/dh: the residual path plus the FFN branch
  add_inplace(dh, n2.dx);
  n2.dx = Tensor();

  // ---- attention: h = x + post_attn_norm(o(att))
  Tensor dA = dh;
  RmsnormGrads npa;
  if (blk.post_attn_norm.defined()) {
    npa = rmsnorm_backward(a0, blk.post_attn_norm, c.norm_eps, dh, req.norms);
    dA = std::move(npa.dx);
    a0 = Tensor();
  }
  weight_grads({{"o", &dA}}, att);
  att = Tensor();
  Tensor datt;
  dy_times_w(dA, blk.linear("o").weight.contiguous(), datt, false);
  dA = Tensor();
  AttentionGrads ag = attention_backward(q, k, v, attention_shape(c, layer, B, T), datt);
  q = k = v = datt = Tensor();
  rope_backward(ag.dq, c.n_heads, hd, T, inv_freq, c.rope_interleaved);
  rope_backward(ag.dk, c.n_kv_heads, hd, T, inv_freq, c.rope_interleaved);
  RmsnormGrads nq, nk;
  if (blk.q_norm.defined()) {
    nq = head_rmsnorm_backward(q0, blk.q_norm, c.norm_eps, ag.dq, req.norms);
    ag.dq = std::move(nq.dx);
    q0 = Tensor();
  }
  if (blk.k_norm.defined()) {
    nk = head_rmsnorm_backward(k0, blk.k_norm, c.norm_eps, ag.dk, req.norms);
    ag.dk = std::move(nk.dx);
    k0 = Tensor();
  }
  weight_grads({{"q", &ag.dq}, {"k", &ag.dk}, {"v", &ag.dv}}, xn1);
  xn1 = Tensor();
  Tensor dxn1 = sum_dy_times_w({{&ag.dq, &blk.linear("q")}, {&ag.dk, &blk.linear("k")}, {&ag.dv, &blk.linear("v")}});
  ag = AttentionGrads{};
  RmsnormGrads n1 = rmsnorm_backward(x, blk.attn_norm, c.norm_eps, dxn1, req.norms);
  add_inplace(dh, n1.dx);  // dL/dx = dL/dh (residual) + the attention branch
  if (req.norms) {
    g->d_attn_norm = std::move(n1.dg);
    g->d_ffn_norm = std::move(n2.dg);
    g->d_q_norm = std::move(nq.dg);
    g->d_k_norm = std::move(nk.dg);
    g->d_post_attn_norm = std::move(npa.dg);
    g->d_post_ffn_norm = std::move(npf.dg);
  }
  return dh;
}

// ---------------------------------------------------------------- whole model

static void check_tokens(const Model& m, const std::vector<int32_t>& tokens, int B, int T, const char* what) {
  if (B <= 0 || T <= 0 || (int64_t)tokens.size() != (int64_t)B * T)
    fail(what, ": ", tokens.size(), " tokens is not B·T = ", B, "·", T);
}

// Forward keeping every block's input; returns the last block's output.
static Tensor forward_keeping_inputs(const Model& m, const std::vector<int32_t>& tokens, int B, int T,
                                     std::vector<Tensor>& inputs) {
  inputs.assign(m.n_blocks(), Tensor());
  Tensor x = embed(m, tokens);
  for (int l = 0; l < m.n_blocks(); ++l) {
    inputs[l] = x;
    x = block_forward(m, l, x, B, T);
    m.release_block(l);  // lazy models: one converted block at a time
  }
  return x;
}

// d (gradient on the last block's output) back to the embedding output, freeing inputs as it goes.
static Tensor backward_blocks(const Model& m, std::vector<Tensor>& inputs, int B, int T, Tensor d,
                              const BlockRequestFn& request, const BlockGradsFn& on_block_grads) {
  for (int l = m.n_blocks() - 1; l >= 0; --l) {
    BlockGrads g;
    const BlockGradRequest req = request ? request(l) : BlockGradRequest::none();
    d = block_backward(m, l, inputs[l], B, T, d, &g, req);
    inputs[l] = Tensor();
    if (on_block_grads) on_block_grads(l, g);
    m.release_block(l);
  }
  return d;
}

ModelGrads model_backward_from_hidden(const Model& m, const std::vector<int32_t>& tokens, int B, int T,
                                      const HiddenGradFn& dH, const BlockRequestFn& request,
                                      const BlockGradsFn& on_block_grads, bool head_grads) {
  check_tokens(m, tokens, B, T, "model_backward_from_hidden");
  if (!dH) fail("model_backward_from_hidden: no gradient function for the final hidden states");
  std::vector<Tensor> inputs;
  const Tensor x = forward_keeping_inputs(m, tokens, B, T, inputs);
  Tensor hn;
  rmsnorm(x, m.final_norm, m.cfg.norm_eps, hn);
  const Tensor dhn = dH(hn);
  if (!dhn.defined() || dhn.shape() != hn.shape() || dhn.dtype() != DType::F32)
    fail("model_backward_from_hidden: the hidden-state gradient must be f32 ", shape_str(hn.shape()), ", got ",
         dhn.defined() ? shape_str(dhn.shape()) : std::string("nothing"));
  RmsnormGrads fn = rmsnorm_backward(x, m.final_norm, m.cfg.norm_eps, dhn, head_grads);
  ModelGrads mg;
  mg.d_embed = backward_blocks(m, inputs, B, T, std::move(fn.dx), request, on_block_grads);
  if (head_grads) {
    mg.d_final_norm = std::move(fn.dg);
    mg.d_tok_emb = Tensor::empty(m.tok_emb.shape());
    embed_backward(tokens, mg.d_embed, mg.d_tok_emb, embed_scale(m.cfg));
  }
  return mg;
}

ModelGrads model_loss_backward(const Model& m, const std::vector<int32_t>& tokens, int B, int T,
                               const BlockRequestFn& request, const BlockGradsFn& on_block_grads, bool head_grads) {
  check_tokens(m, tokens, B, T, "model_loss_backward");
  if (T < 2) fail("model_loss_backward: windows of ", T, " token(s) have no next token to predict");
  std::vector<int32_t> targets(tokens.size(), -1);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t + 1 < T; ++t) targets[(size_t)b * T + t] = tokens[(size_t)b * T + t + 1];
  std::vector<Tensor> inputs;
  const Tensor x = forward_keeping_inputs(m, tokens, B, T, inputs);
  HeadGrads hg = head_backward(m, x, targets, head_grads);
  ModelGrads mg;
  mg.loss = hg.loss;
  mg.d_embed = backward_blocks(m, inputs, B, T, std::move(hg.dx), request, on_block_grads);
  if (head_grads) {
    mg.d_final_norm = std::move(hg.d_final_norm);
    mg.d_tok_emb = Tensor::empty(m.tok_emb.shape());
    embed_backward(tokens, mg.d_embed, mg.d_tok_emb, embed_scale(m.cfg));
    if (m.cfg.tied_classifier) add_inplace(mg.d_tok_emb, hg.d_classifier);
    else mg.d_classifier = std::move(hg.d_classifier);
  }
  return mg;
}

}  // namespace qf
