#include "model/moe_from_dense.h"

#include <cmath>
#include <cstring>

#include "core/error.h"

namespace qf {

Model moe_from_dense(const Model& dense, const MoeFromDenseOptions& o) {
  const ModelConfig& dc = dense.cfg;
  const std::string what = "moe_from_dense";
  if (dc.arch != "llama") fail(what, ": the model is ", dc.arch, "; only llama-architecture models become Mixtral models");
  if (o.experts < 1 || o.experts > 4096) fail(what, ": experts = ", o.experts, " (expected 1..4096)");
  if (o.used < 1 || o.used > o.experts) fail(what, ": used = ", o.used, " (expected 1..experts = ", o.experts, ")");
  if (dc.hidden_dim % o.experts) fail(what, ": the FFN width ", dc.hidden_dim, " is not divisible by experts = ", o.experts);
  if (!std::isfinite(o.router_scale)) fail(what, ": router_scale is not finite");
  const int E = o.experts, H = dc.hidden_dim, F = H / E, D = dc.dim;
  Model m;
  m.cfg = dc;
  m.cfg.arch = "mixtral";
  m.cfg.hf_layout = "";
  m.cfg.n_experts = E;
  m.cfg.n_experts_used = o.used;
  m.cfg.expert_hidden = F;
  m.cfg.hidden_dim = F;  // Mixtral states its experts' width as the FFN width
  m.cfg.shared_hidden = 0;
  m.cfg.moe_norm_topk = true;
  validate_config(m.cfg, what);
  m.tok_emb = dense.tok_emb.clone();
  m.final_norm = dense.final_norm.clone();
  m.classifier = dc.tied_classifier ? m.tok_emb : dense.classifier.clone();
  m.source = dense.source;
  m.format = dense.format;
  m.src = dense.src;  // the tokenizer the checkpoint carried travels on (exports read it)
  // With every expert used and a zero router each weight is exactly 1/E (E a power of two) and the
  // scale E undoes it; otherwise `used` undoes the ≈ 1/used of a small router.
  const float scale = o.used == E && o.router_scale == 0.f ? (float)E : (float)o.used;
  for (int b = 0; b < dense.n_blocks(); ++b) {
    const Block& db = dense.block(b);
    for (const char* n : {"gate", "up", "down"})
      if (db.linear(n).bias.defined()) fail(what, ": block ", b + 1, " linear '", n, "' has a bias (Mixtral's experts have none)");
    const Tensor G = db.linear("gate").weight.contiguous(), U = db.linear("up").weight.contiguous(),
                 Dn = db.linear("down").weight.contiguous();
    Block nb;
    nb.attn_norm = db.attn_norm.clone();
    nb.ffn_norm = db.ffn_norm.clone();
    for (const char* n : {"q", "k", "v", "o"}) {
      Linear l = db.linear(n);
      l.weight = l.weight.clone();
      if (l.bias.defined()) l.bias = l.bias.clone();
      l.quant = nullptr;
      nb.linears.push_back(std::move(l));
    }
    Linear router;
    router.name = "router";
    router.input = Site::FfnIn;
    router.weight = Tensor::empty({E, D});
    for (int e = 0; e < E; ++e)
      for (int d = 0; d < D; ++d) {
        double s = 0;
        for (int j = e * F; j < (e + 1) * F; ++j) s += G.f32()[(int64_t)j * D + d];
        router.weight.f32()[(int64_t)e * D + d] = (float)(o.router_scale * s / F);
      }
    nb.linears.push_back(std::move(router));
    for (int e = 0; e < E; ++e) {
      const std::string pre = "experts." + std::to_string(e) + ".";
      Linear g, u, dn;
      g.name = pre + "gate", u.name = pre + "up", dn.name = pre + "down";
      g.input = u.input = Site::ExpertIn;
      dn.input = Site::ExpertMid;
      g.weight = Tensor::empty({F, D});
      u.weight = Tensor::empty({F, D});
      dn.weight = Tensor::empty({D, F});
      std::memcpy(g.weight.f32(), G.f32() + (int64_t)e * F * D, sizeof(float) * F * D);
      std::memcpy(u.weight.f32(), U.f32() + (int64_t)e * F * D, sizeof(float) * F * D);
      for (int d = 0; d < D; ++d)
        for (int j = 0; j < F; ++j) dn.weight.f32()[(int64_t)d * F + j] = scale * Dn.f32()[(int64_t)d * H + e * F + j];
      nb.linears.push_back(std::move(g));
      nb.linears.push_back(std::move(u));
      nb.linears.push_back(std::move(dn));
    }
    m.blocks.push_back(std::move(nb));
    dense.release_block(b);
  }
  return m;
}

}  // namespace qf
