#include "formats/export.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>

#include "formats/dtypes.h"
#include "quant/kquant.h"

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
    // An unconverted lazy block holds exactly its file's tensors (edits pin a block), and
    // converting them refuses a non-finite value (tensor_source_to_f32). The writer converts each
    // block anyway, so it is not converted here a second time: its refusal then comes mid-write,
    // and the writers' temporaries (AtomicFile, AtomicDir) leave no output and no temporary.
    if (m.is_lazy() && m.resident[(size_t)b] == 0) continue;
    const Block& blk = m.block(b);
    const std::string bn = "block " + std::to_string(b + 1);
    for (const NormSpec& n : arch_of(m.cfg).norms) check_values(bn + " " + n.name, blk.norm(n.name), "weight");
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
  }
}

// Formats that store a quantized linear's codes (gptq, compressed-tensors, gguf block types) have
// no place for a transform around them (methods.md#transforms): such a linear is refused by name
// unless m:fold_transforms() folded it away. Dense formats store the effective weight O·Ŵ·T.
static void refuse_transforms(const ExportFormat& f, const std::string& dtype, const Model& m) {
  std::string up = dtype;
  for (char& c : up) c = (char)std::toupper((unsigned char)c);
  const DTypeTraits* d = up.empty() ? nullptr : dtype_by_name(up);
  KQuantType kt;
  const bool codes = f.codes || (d && (d->grid.cols > 0 || kquant_from_name(d->name, &kt)));
  if (!codes) return;
  for (int b = 0; b < m.n_blocks(); ++b) {
    if (m.is_lazy() && m.resident[(size_t)b] == 0) continue;  // a file's block holds no transforms
    for (const Linear& l : m.block(b).linears)
      if (l.quant && l.quant->has_transforms()) {
        const LinearTransform& t = l.quant->input.none() ? l.quant->output : l.quant->input;
        fail("save: block ", b + 1, " linear '", l.name, "' is quantized with ", l.quant->input.none() ? "an output" : "an input", " ",
             transform_kind_name(t.kind), " transform, which ", f.display, dtype.empty() ? "" : " " + dtype,
             " cannot store (fold it first with m:fold_transforms(), or save_format=qforge or hf); nothing was written");
      }
  }
}

static const std::vector<ExportFormat> kExportFormats = {
    {"hf", "HF", {"F32", "F16", "BF16"}, "F32", false, true, false, {},
     [](const Model& m, const Tokenizer* t, const std::string& p, const std::string& d) { save_hf(m, t, p, d); },
     [](const Model& m, const Tokenizer* t, const std::string& p, const std::string& d) { check_hf(m, t, p, d); }},
    {"gguf", "GGUF", {"F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}, "F16", true, false, false, {},
     [](const Model& m, const Tokenizer* t, const std::string& p, const std::string& d) { save_gguf(m, t, p, d); },
     [](const Model& m, const Tokenizer*, const std::string& p, const std::string& d) { check_gguf(m, p, d); }},
    {"gptq", "GPTQ", {}, "", false, true, true, {2, 3, 4, 8},
     [](const Model& m, const Tokenizer* t, const std::string& p, const std::string&) { save_gptq(m, t, p); },
     [](const Model& m, const Tokenizer* t, const std::string& p, const std::string&) { check_gptq(m, t, p); }},
    {"compressed-tensors", "compressed-tensors", {}, "", false, true, true, {2, 3, 4, 5, 6, 7, 8},
     [](const Model& m, const Tokenizer* t, const std::string& p, const std::string&) { save_compressed_tensors(m, t, p); },
     [](const Model& m, const Tokenizer* t, const std::string& p, const std::string&) { check_compressed_tensors(m, t, p); }},
    {"qforge", "qforge", {}, "", false, false, false, {},
     [](const Model& m, const Tokenizer* t, const std::string& p, const std::string&) { save_qforge(m, t, p); },
     [](const Model& m, const Tokenizer*, const std::string& p, const std::string&) { check_qforge(m, p); }},
};

const std::vector<ExportFormat>& export_formats() { return kExportFormats; }

const ExportFormat* export_format(const std::string& name) {
  for (const ExportFormat& f : kExportFormats)
    if (name == f.name) return &f;
  return nullptr;
}

bool ExportFormat::takes(const std::string& d) const {
  for (const char* x : dtypes)
    if (d == x) return true;
  return false;
}

static std::string join_or(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i == 0 ? "" : i + 1 == v.size() ? " or " : ", ") + v[i];
  return s;
}

std::string export_format_names() {
  std::vector<std::string> n;
  for (const ExportFormat& f : kExportFormats) n.push_back(f.name);
  return join_or(n);
}

void save_model(const Model& m, const Tokenizer* tok, const std::string& path, const SaveOptions& o) {
  if (path.empty()) fail("save: empty output path");
  const ExportFormat* f = export_format(o.format);
  if (!f) fail("save: unknown format '", o.format, "' (expected ", export_format_names(), ")");
  if (f->dtypes.empty() && !o.dtype.empty()) fail("save: format '", o.format, "' takes no dtype (got '", o.dtype, "')");
  check_finite_model(m);
  refuse_transforms(*f, o.dtype.empty() ? f->default_dtype : o.dtype, m);
  f->save(m, tok, path, o.dtype.empty() ? f->default_dtype : o.dtype);
}

// f16_scales makes the min −scale·zero fp16-exact too for asymmetric grids of at most this many
// bits (quant/grid.cpp, round_scale_f16); a type that stores a min needs it.
static constexpr int kF16MinBits = 5;

// Why grids as `p` describes them cannot be stored by format f in dtype d ("" = storable).
static std::string plan_refusal(const ExportFormat& f, const DTypeTraits* d, const GridPlan& p) {
  KQuantType kt;
  if (d && kquant_from_name(d->name, &kt)) {  // K-quant files: the linears' grids are that K type
    if (p.transforms) return "it stores plain codes: rotations and other transforms around them cannot be stored (use save_format=qforge)";
    if (p.outliers) return "it stores no sparse outliers (use ratio=0 or save_format=qforge)";
    if (p.allocated) return "the CVXQ allocation gives every column its own bit depth (use save_format=qforge)";
    if (p.float_zero) return "decoupleQ's float zero points (use save_format=qforge)";
    if (p.ktype != d->name) return std::string("its ") + d->name + " super-blocks need ktype=" + d->name + (p.ktype.empty() ? "" : ", got ktype=" + p.ktype);
    return "";
  }
  if (!p.ktype.empty() && f.codes) return "a " + p.ktype + " grid is stored by gguf " + p.ktype + " only (or save_format=qforge)";
  if (!p.ktype.empty() && d && d->grid.cols > 0) return "a " + p.ktype + " grid is stored by gguf " + p.ktype + " (save_dtype=" + p.ktype + ")";
  const bool blocks = d && d->grid.cols > 0;
  if ((blocks || f.codes) && p.transforms)
    return "it stores plain codes: rotations and other transforms around them cannot be stored (use save_format=qforge, or hf for the dense weights)";
  if (blocks || f.codes) {
    if (p.outliers) return "it stores no sparse outliers (use ratio=0 or save_format=qforge)";
    if (p.allocated) return "the CVXQ allocation gives every column its own bit depth (use save_format=qforge)";
    if (p.float_zero) return "decoupleQ's float zero points (use save_format=qforge)";
  }
  if (f.codes && p.signed_scales)
    return "its scales are positive: mapping=llamacpp puts a group's signed extreme on code 0 with a negative scale (use save_format=gguf or qforge)";
  if (blocks) {
    const GridFit& g = d->grid;
    const std::string cols = std::to_string(g.cols), bits = std::to_string(p.bits);
    if (!(p.group == -1 || (p.group > 0 && p.group % g.cols == 0)))
      return "its " + cols + "-column blocks need group=-1 or a multiple of " + cols + ", got group=" + std::to_string(p.group);
    if (!p.f16_scales) return "its block scales are fp16: pass f16_scales=true";
    const int S = g.max_bits(true), A = g.max_bits(false);
    if (!p.sym && p.bits > A) {
      // A type of the same block width with a min holds asymmetric codes of this width.
      for (const DTypeTraits& o : dtype_table())
        if (o.grid.cols == g.cols && o.grid.stores_min && p.bits <= o.grid.max_bits(false))
          return std::string(d->name) + " is symmetric: pass sym=true (an asymmetric grid exports as " + o.name + ", or fits " + d->name +
                 " with bits <= " + std::to_string(A) + ")";
      if (p.bits <= S)
        return std::string(d->name) + " holds signed " + std::to_string(S) + "-bit codes: an asymmetric grid needs bits <= " + std::to_string(A) +
               " (or sym=true)";
    }
    if (p.bits > S) {
      std::string alt;  // a type of the same block width that holds them
      for (const DTypeTraits& o : dtype_table())
        if (alt.empty() && o.grid.cols == g.cols && p.bits <= o.grid.max_bits(p.sym)) alt = std::string(" (") + o.name + " holds them)";
      return std::string(d->name) + " holds " + std::to_string(S) + "-bit codes, got bits=" + bits + alt;
    }
    if (g.stores_min && !p.sym && p.bits > kF16MinBits)
      return std::string(d->name) + "'s fp16 min −scale·zero: f16_scales makes it exact for asymmetric grids of at most " +
             std::to_string(kF16MinBits) + " bits, got bits=" + bits + " (or sym=true)";
  }
  if (!f.bits.empty()) {
    bool ok = false;
    std::vector<std::string> b;
    for (int x : f.bits) {
      ok = ok || x == p.bits;
      b.push_back(std::to_string(x));
    }
    if (!ok) return std::string(f.display) + " packs " + join_or(b) + " bits, got bits=" + std::to_string(p.bits);
  }
  return "";
}

SaveRefusal check_save(const SaveOptions& o, const GridPlan* plan, const Model* m, const Tokenizer* tok, const std::string& path) {
  const ExportFormat* f = export_format(o.format);
  if (!f) return {"save_format", "unknown format '" + o.format + "' (expected " + export_format_names() + ")"};
  std::string dtype = o.dtype;
  if (f->dtypes.empty()) {
    if (!dtype.empty()) return {"save_dtype", "format '" + o.format + "' takes no dtype, got '" + dtype + "'"};
  } else if (!dtype.empty()) {
    if (f->dtype_any_case)
      for (char& c : dtype) c = (char)std::toupper((unsigned char)c);
    if (!f->takes(dtype)) {
      std::vector<std::string> known(f->dtypes.begin(), f->dtypes.end());
      std::sort(known.begin(), known.end());
      std::string list;
      for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
      return {"save_dtype", "'" + o.dtype + "' is not a " + o.format + " dtype (" + list + ")"};
    }
  }
  const std::string resolved = dtype.empty() ? f->default_dtype : dtype;
  if (plan) {
    const std::string why = plan_refusal(*f, resolved.empty() ? nullptr : dtype_by_name(resolved), *plan);
    if (!why.empty()) return {"save_format", o.format + (dtype.empty() ? "" : " " + dtype) + " cannot store this run's model: " + why};
  }
  if (m) {
    try {
      check_finite_model(*m);
      refuse_transforms(*f, resolved, *m);
      f->check(*m, tok, path, resolved);
    } catch (const Error& e) {
      return {"save", e.what()};
    }
  }
  return {};
}

}  // namespace qf
