#include "formats/export.h"

#include <cmath>
#include <cstdio>

namespace qf {

// Every tensor a writer stores, checked before anything is written: qforge's loaders refuse
// non-finite weights, so a file holding one would be written but never read back.
static void check_values(const std::string& what, const Tensor& t, const char* kind) {
  if (!t.defined()) return;
  const std::vector<float> v = t.to_vector();
  for (size_t i = 0; i < v.size(); ++i) {
    if (std::isfinite(v[i])) continue;
    const char* val = std::isnan(v[i]) ? "NaN" : v[i] > 0 ? "+inf" : "-inf";
    if (t.dim() == 2) {
      const int64_t cols = t.size(1);
      fail("save: ", what, ": ", kind, " is ", val, " at row ", (int64_t)i / cols + 1, ", column ",
           (int64_t)i % cols + 1, " (1-based); nothing was written");
    }
    fail("save: ", what, ": ", kind, " is ", val, " at element ", i + 1, " (1-based); nothing was written");
  }
}

static void check_floats(const std::string& what, const std::vector<float>& v, const char* kind) {
  for (size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      fail("save: ", what, ": ", kind, " ", i + 1, " of ", v.size(), " is not finite (", v[i], "); nothing was written");
}

static void check_finite_model(const Model& m) {
  check_values("token embedding", m.tok_emb, "weight");
  check_values("final norm", m.final_norm, "weight");
  if (!m.cfg.tied_classifier) check_values("classifier", m.classifier, "weight");
  for (int b = 0; b < m.n_blocks(); ++b) {
    const bool was_unconverted = m.is_lazy() && m.resident[(size_t)b] == 0;
    const Block& blk = m.block(b);
    const std::string bn = "block " + std::to_string(b + 1);
    check_values(bn + " attn_norm", blk.attn_norm, "weight");
    check_values(bn + " ffn_norm", blk.ffn_norm, "weight");
    for (const Linear& l : blk.linears) {
      const std::string ln = bn + " linear '" + l.name + "'";
      check_values(ln, l.weight, "weight");
      check_values(ln, l.bias, "bias");
      if (!l.quant) continue;
      check_floats(ln, l.quant->grid.scale, "grid scale");
      check_floats(ln, l.quant->grid.zero, "grid zero");
      const SparseEntries& o = l.quant->outliers;
      for (size_t k = 0; k < o.val.size(); ++k)
        if (!std::isfinite(o.val[k]))
          fail("save: ", ln, ": outlier ", k + 1, " at row ", (int64_t)o.row[k] + 1, ", column ", (int64_t)o.col[k] + 1,
               " (1-based) is not finite (", o.val[k], "); nothing was written");
    }
    if (was_unconverted) m.release_block(b);  // checking must not keep a lazy model resident
  }
}

void save_model(const Model& m, const Tokenizer* tok, const std::string& path, const SaveOptions& o) {
  if (path.empty()) fail("save: empty output path");
  if (o.format != "hf" && o.format != "gguf" && o.format != "gptq" && o.format != "qforge")
    fail("save: unknown format '", o.format, "' (expected hf, gguf, gptq or qforge)");
  if ((o.format == "gptq" || o.format == "qforge") && !o.dtype.empty())
    fail("save: format '", o.format, "' takes no dtype (got '", o.dtype, "')");
  check_finite_model(m);
  if (o.format == "hf") return save_hf(m, tok, path, o.dtype.empty() ? "F32" : o.dtype);
  if (o.format == "gguf") return save_gguf(m, tok, path, o.dtype.empty() ? "F16" : o.dtype);
  if (o.format == "gptq") return save_gptq(m, tok, path);
  return save_qforge(m, tok, path);
}

}  // namespace qf
