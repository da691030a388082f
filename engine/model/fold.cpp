#include "model/fold.h"

#include <cstring>

namespace qf {

// The RMSNorm whose output each site reads, where there is one (llama blocks).
static const struct {
  Site site;
  const char* norm;
} kNormBeforeSite[] = {{Site::AttnIn, "attn_norm"}, {Site::FfnIn, "ffn_norm"}};

static const char* norm_before(Site s) {
  for (const auto& e : kNormBeforeSite)
    if (e.site == s) return e.norm;
  return nullptr;
}

// v's output transform O (dense, block-diagonal per kv head: blocks B_g) and o's input transform T
// (dense, blockdiag over the q heads h of B_{g(h)}ᵀ) cancel across attention, which mixes tokens
// within each head and never features: head h's output is B_{g(h)}·z'_h, and T maps it back to z'_h.
// True when both are dense and T is exactly that arrangement of O's blocks (bit for bit).
static bool vo_pair_cancels(const Model& m, const LinearTransform& O, const LinearTransform& T) {
  if (O.kind != TransformKind::Dense || T.kind != TransformKind::Dense) return false;
  const int64_t hd = m.cfg.head_dim(), nkv = m.cfg.n_kv_heads, nh = m.cfg.n_heads;
  if (O.n != hd * nkv || T.n != hd * nh) return false;
  const Tensor Oc = O.dense.contiguous(), Tc = T.dense.contiguous();
  const float* o = Oc.f32();
  const float* t = Tc.f32();
  for (int64_t i = 0; i < O.n; ++i)  // O block-diagonal
    for (int64_t j = 0; j < O.n; ++j)
      if (i / hd != j / hd && o[i * O.n + j] != 0.f) return false;
  const int64_t group = nh / nkv;
  for (int64_t i = 0; i < T.n; ++i)
    for (int64_t j = 0; j < T.n; ++j) {
      const int64_t hi = i / hd, hj = j / hd;
      const float want = hi != hj ? 0.f : o[((hi / group) * hd + j % hd) * O.n + (hi / group) * hd + i % hd];  // Bᵀ[i, j] = B[j, i]
      if (t[i * T.n + j] != want) return false;
    }
  return true;
}

std::vector<FoldEntry> fold_transforms(Model& m) {
  std::vector<FoldEntry> out;
  const ArchSpec& arch = arch_of(m.cfg);
  // The v/o pair first: it removes an output transform of v and an input transform of o.
  for (int b = 0; b < m.n_blocks(); ++b) {
    if (m.is_lazy() && m.resident[(size_t)b] == 0) continue;
    Block& blk = m.block_mut(b);
    Linear& v = blk.linear("v");
    Linear& o = blk.linear("o");
    if (!v.quant || !o.quant || !vo_pair_cancels(m, v.quant->output, o.quant->input)) continue;
    auto qv = std::make_shared<QuantizedLinear>(*v.quant);
    auto qo = std::make_shared<QuantizedLinear>(*o.quant);
    qv->output = LinearTransform{};
    qo->input = LinearTransform{};
    v.weight.copy_(qv->dequantize());
    o.weight.copy_(qo->dequantize());
    v.quant = qv;
    o.quant = qo;
    out.push_back({b, "v", "dense", "output", true, "o's input (per-head orthogonal pair)"});
    out.push_back({b, "o", "dense", "input", true, "v's output (per-head orthogonal pair)"});
  }
  for (int b = 0; b < m.n_blocks(); ++b) {
    if (m.is_lazy() && m.resident[(size_t)b] == 0) continue;  // untouched file blocks hold no transforms
    Block& blk = m.block_mut(b);
    // Group the linears by the site they read.
    for (Site site : {Site::AttnIn, Site::AttnOut, Site::FfnIn, Site::FfnMid}) {
      std::vector<Linear*> lins;
      for (size_t i = 0; i < blk.linears.size(); ++i)
        if (arch.linears[i].input == site) lins.push_back(&blk.linears[i]);
      bool any = false;
      for (Linear* l : lins) any = any || (l->quant && l->quant->has_transforms());
      if (!any) continue;
      const char* norm = norm_before(site);
      // Foldable: every linear of the site quantized with the same diagonal input transform and no
      // output transform.
      std::string why;
      const LinearTransform* first = nullptr;
      for (Linear* l : lins) {
        if (l->quant && !l->quant->output.none()) {
          why = std::string("'") + l->name + "' carries an output transform (only v's, against o's input as a per-head orthogonal pair, folds)";
          break;
        }
        if (!l->quant || l->quant->input.kind != TransformKind::Diagonal) {
          why = std::string("'") + l->name + "' does not carry the same diagonal input transform as the other linears of " + site_name(site);
          break;
        }
        if (!first) first = &l->quant->input;
        else if (std::memcmp(first->diag.data(), l->quant->input.diag.data(), sizeof(float) * first->diag.size()) != 0) {
          why = std::string("the diagonals of the linears reading ") + site_name(site) + " differ";
          break;
        }
      }
      if (!norm)
        why = std::string("no norm precedes ") + site_name(site) + " (its input is a product, not a norm's output; " +
              (site == Site::AttnOut ? "o's input folds only against v's output as a per-head orthogonal pair"
                                     : "SwiGLU's product passes no rotation") + ")";
      if (why.empty()) {
        const std::vector<float> d = first->diag;
        Tensor& g = blk.norm(norm);
        float* gp = g.f32();
        for (size_t c = 0; c < d.size(); ++c) gp[c] *= d[c];
        for (Linear* l : lins) {
          auto q = std::make_shared<QuantizedLinear>(*l->quant);
          q->input = LinearTransform{};
          l->weight.copy_(q->dequantize());
          l->quant = q;
          out.push_back({b, l->name, "diag", "input", true, norm});
        }
        continue;
      }
      for (Linear* l : lins) {
        if (!l->quant) continue;
        for (const auto& [side, t] : {std::pair<const char*, const LinearTransform*>{"input", &l->quant->input}, {"output", &l->quant->output}})
          if (!t->none()) out.push_back({b, l->name, transform_kind_name(t->kind), side, false, why});
      }
    }
  }
  return out;
}

}  // namespace qf
