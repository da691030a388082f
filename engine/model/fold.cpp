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

std::vector<FoldEntry> fold_transforms(Model& m) {
  std::vector<FoldEntry> out;
  const ArchSpec& arch = arch_of(m.cfg);
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
        if (!l->quant || l->quant->input.kind != TransformKind::Diagonal || !l->quant->output.none()) {
          why = std::string("'") + l->name + "' does not carry the same diagonal input transform as the other linears of " + site_name(site);
          break;
        }
        if (!first) first = &l->quant->input;
        else if (std::memcmp(first->diag.data(), l->quant->input.diag.data(), sizeof(float) * first->diag.size()) != 0) {
          why = std::string("the diagonals of the linears reading ") + site_name(site) + " differ";
          break;
        }
      }
      if (!norm) why = std::string("no norm precedes ") + site_name(site) + " (its input is a product, not a norm's output)";
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
