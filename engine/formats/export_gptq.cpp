// GPTQ v1 checkpoint export (docs/formats.md, "Exports": gptq): an HF directory whose linears are
// stored as qweight/qzeros/scales/g_idx, everything else fp16, config.json with
// quantization_config.
//
// Exactness: the codes, zero points and g_idx are written exactly; every quantized linear must
// carry codes that still dequantize to its weight, no outliers, bits in {2, 3, 4, 8}. Linears may
// differ in bits/group/sym: the config states the most common one and GPTQModel's `dynamic`
// overrides ("+:REGEX": {bits, group_size, sym}) the others; a linear left unquantized (a
// pipeline `skip:` override) is written as its fp16 weight under a "-:REGEX" entry (GPTQModel's
// "not quantized"), as long as some linear is quantized. GPTQ stores scales in fp16, so an f32
// scale is rounded: the export accepts this (every GPTQ tool does the same) and records the
// largest relative scale error and weight deviation in quantization_config.meta. v1 stores
// zero−1 and cannot hold zero 0 (real tools clamp it to 1, silently moving every weight of
// the group by a step): the export refuses it. Row groups (shared params) are expanded per row;
// companded grids and per-group bit allocations cannot be stated in GPTQ and are refused.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <tuple>

#include "formats/export.h"
#include "formats/export_hf.h"
#include "core/half.h"
#include "core/io.h"
#include "formats/loader_hf.h"
#include "formats/safetensors.h"

namespace qf {

// Words holding n packed values: whole 32-value units for 3 bits (3 words each), whole words
// otherwise. Dimensions that are not a multiple are padded with zero codes.
// The codes are one little-endian bitstream (3-bit codes straddle words: AutoGPTQ's 10|1|10|1|10
// layout is exactly that stream), cut after the last code: ceil(n·bits/32) words, the buffer shape
// GPTQModel allocates (for n a multiple of 32 the same as whole 32-code blocks).
static int64_t packed_words(int64_t n, int bits) { return (n * bits + 31) / 32; }

struct GptqLinear {
  const Linear* lin;
  const QuantizedLinear* q;  // nullptr: stored unquantized (a "-:" dynamic entry)
  int block;
  std::vector<int64_t> order;  // HF row o = our row order[o]
};

static std::string linear_what(const std::string& what, int b, const std::string& name) {
  return what + ": block " + std::to_string(b + 1) + " linear '" + name + "'";
}

// (bits, group, sym) of a linear's grid: what the config (or a dynamic entry) states for it.
static std::tuple<int, int64_t, bool> gptq_key(const GridSpec& s) { return {s.bits, s.group > 0 ? s.group : -1, s.sym}; }

// Every check before anything is written; returns the base grid spec (the most common
// bits/group/sym among the quantized linears; the first seen on ties).
static GridSpec check_linears(const Model& m, const std::string& what, std::vector<GptqLinear>* out) {
  std::string first_unquantized;
  for (int b = 0; b < m.n_blocks(); ++b) {
    if (m.is_lazy() && m.resident[b] == 0)
      fail(linear_what(what, b, "q"), ": not quantized (block ", b + 1, " was loaded lazily and never quantized); quantize every linear first");
    for (const Linear& l : m.block(b).linears) {
      const std::string lw = linear_what(what, b, l.name);
      if (!l.quant) {  // kept in full precision: a "-:" dynamic entry
        if (first_unquantized.empty()) first_unquantized = lw;
        out->push_back({&l, nullptr, b, hf_row_order(m, l.name, l.out_features())});
        continue;
      }
      const QuantizedLinear& q = *l.quant;
      const Grid& g = q.grid;
      if (g.rows != l.out_features() || g.cols != l.in_features() || q.codes.numel() != g.rows * g.cols)
        fail(lw, ": codes [", g.rows, ", ", g.cols, "] do not match the weight ", shape_str(l.weight.shape()));
      if (q.outliers.nnz())
        fail(lw, ": has ", q.outliers.nnz(), " outliers, which GPTQ cannot store; save with format 'qforge' instead");
      if (g.spec.kind != GridKind::Uniform)
        fail(lw, ": companded (non-uniform) grid; GPTQ stores uniform affine grids only (use format 'qforge')");
      if (g.spec.mixed_bits())
        fail(lw, ": per-group bit allocation (", g.spec.str(), "); GPTQ stores one bit width (use format 'qforge')");
      g.spec.validate_layout(g.rows, g.ngroups);
      if ((int64_t)g.scale.size() != g.nrowgroups() * g.ngroups || g.zero.size() != g.scale.size())
        fail(lw, ": grid holds ", g.scale.size(), " scales for ", g.nrowgroups(), " row groups × ", g.ngroups, " groups");
      if (g.spec.bits != 2 && g.spec.bits != 3 && g.spec.bits != 4 && g.spec.bits != 8)
        fail(lw, ": ", g.spec.bits, "-bit grid; GPTQ packs 2, 3, 4 or 8 bits (use format 'qforge' for others)");
      if (g.spec.bits == 3 && (g.cols % 32 || g.rows % 32))
        fail(lw, ": 3-bit codes of a [", g.rows, ", ", g.cols, "] linear; GPTQ readers (GPTQModel, AutoGPTQ) unpack 3-bit qweight and qzeros in whole 32-code "
             "blocks, so both widths must be multiples of 32 (use 2, 4 or 8 bits here, or format 'qforge')");
      const int64_t gs = g.group_size(), want_groups = (g.cols + gs - 1) / gs;
      if (g.ngroups != want_groups || (int64_t)g.g_idx.size() != g.cols)
        fail(lw, ": ", g.ngroups, " groups for ", g.cols, " columns of group size ", gs, " (GPTQ needs ceil(in/group) = ", want_groups, ")");
      for (int64_t j = 0; j < g.cols; ++j)
        if (g.g_idx[j] < 0 || g.g_idx[j] >= g.ngroups) fail(lw, ": g_idx of column ", j + 1, " = ", g.g_idx[j] + 1, " is not a group (1..", g.ngroups, ")");
      const int maxq = g.maxq();
      for (int64_t r = 0; r < g.rows; ++r)
        for (int64_t k = 0; k < g.ngroups; ++k) {
          const float z = g.z(r, k), s = g.s(r, k);
          if (z != std::floor(z) || z < 0 || z > maxq) fail(lw, ": zero point ", z, " at row ", r + 1, " group ", k + 1, " is not an integer in [0, ", maxq, "]");
          if (z == 0)
            fail(lw, ": zero point 0 at row ", r + 1, " group ", k + 1, ": GPTQ v1 stores zero-1 and cannot hold 0 (tools clamp it, moving the ",
                 "group by one step); use a symmetric grid or format 'qforge'");
          const float s16 = f16_to_f32(f32_to_f16(s));
          if (!(s > 0) || !(s16 > 0) || !std::isfinite(s16))
            fail(lw, ": scale ", s, " at row ", r + 1, " group ", k + 1, " is not a positive float16 (", s16, ")");
        }
      // The codes must still be what the weight holds (a recipe may have edited it since).
      const Tensor d = q.dequantize();
      const Tensor w = l.weight.contiguous();
      const float *dp = d.f32(), *wp = w.f32();
      for (int64_t i = 0; i < d.numel(); ++i)
        if (dp[i] != wp[i])
          fail(lw, ": weight was edited after quantization (element [", i / g.cols + 1, ", ", i % g.cols + 1, "] is ", wp[i], ", its codes give ", dp[i],
               "); re-quantize it or save with format 'hf'");
      out->push_back({&l, &q, b, hf_row_order(m, l.name, g.rows)});
    }
  }
  // The base spec: the most common (bits, group, sym); the others become dynamic overrides.
  std::map<std::tuple<int, int64_t, bool>, int> count;
  const GridSpec* base = nullptr;
  int best = 0;
  for (const GptqLinear& gl : *out)
    if (gl.q) {
      const int n = ++count[gptq_key(gl.q->grid.spec)];
      if (n > best) best = n, base = &gl.q->grid.spec;
    }
  if (!base)
    fail(first_unquantized, ": not quantized, and no linear of the model is (no codes; attach them with m:set_linear(b, name, qlinear)); ",
         "GPTQ stores linears as codes");
  return *base;
}

// The HF module of block b's linear (an expert's: its per-expert module, as transformers saves it).
static std::string hf_linear_prefix(const ModelConfig& c, int b, const std::string& name) {
  const std::string w = hf_tensor_name("blocks." + std::to_string(b) + "." + name + ".weight", arch_of(c));
  return w.substr(0, w.size() - 7);  // drop ".weight"
}

// The checks before writing: the layout, the config, every linear.
static GridSpec check_all(const Model& m, const std::string& what, std::vector<GptqLinear>* lins) {
  if (!m.cfg.hf_layout.empty())
    fail(what, ": the model came in the fused ", m.cfg.hf_layout, " layout; GPTQ export of fused layouts is not implemented (save hf keeps it)");
  validate_config(m.cfg, what);
  return check_linears(m, what, lins);
}

void check_gptq(const Model& m, const Tokenizer* tok, const std::string& dir) {
  const std::string what = "save gptq '" + dir + "'";
  std::vector<GptqLinear> lins;
  check_all(m, what, &lins);
  hf_config_json(m, tok, "float16", what);
}

void save_gptq(const Model& m, const Tokenizer* tok, const std::string& dir) {
  const std::string what = "save gptq '" + dir + "'";
  std::vector<GptqLinear> lins;
  const GridSpec spec = check_all(m, what, &lins);
  const int bits = spec.bits;
  const ModelConfig& c = m.cfg;

  // desc_act: some g_idx is not the contiguous i / group map (act-order permutation).
  bool desc_act = false;
  for (const GptqLinear& gl : lins)
    if (gl.q)
      for (int64_t j = 0; j < gl.q->grid.cols; ++j) desc_act |= gl.q->grid.g_idx[j] != j / gl.q->grid.group_size();

  // fp16 scale rounding: the one place the file differs from the model; measured, not hidden.
  double max_rel_scale = 0, max_abs_dev = 0;
  for (const GptqLinear& gl : lins) {
    if (!gl.q) continue;
    const Grid& g = gl.q->grid;
    const uint8_t* codes = gl.q->codes.data<uint8_t>();
    for (int64_t r = 0; r < g.rows; ++r)
      for (int64_t j = 0; j < g.cols; ++j) {
        const int64_t k = g.g_idx[j];
        const float s = g.s(r, k), s16 = f16_to_f32(f32_to_f16(s)), z = g.z(r, k);
        max_rel_scale = std::max(max_rel_scale, std::fabs((double)s16 - s) / s);
        const float code = codes[r * g.cols + j];
        max_abs_dev = std::max(max_abs_dev, (double)std::fabs(s16 * (code - z) - s * (code - z)));
      }
  }

  std::vector<SafetensorsEntry> entries;
  auto add_float = [&](const std::string& hf_name, const Shape& shape, std::function<Tensor()> get) {
    SafetensorsEntry e{hf_name, "F16", shape, "", nullptr};
    e.produce = [get, hf_name, what] { return tensor_bytes(get(), "F16", what + ": tensor '" + hf_name + "'"); };
    entries.push_back(std::move(e));
  };
  auto add_i32 = [&](const std::string& name, const Shape& shape, std::function<std::vector<int32_t>()> get) {
    SafetensorsEntry e{name, "I32", shape, "", nullptr};
    e.produce = [get] { return bytes_of_i32(get()); };
    entries.push_back(std::move(e));
  };
  add_float("model.embed_tokens.weight", {c.vocab_size, c.dim}, [&m] { return m.tok_emb; });
  size_t li = 0;
  for (int b = 0; b < m.n_blocks(); ++b) {
    const Block& blk = m.block(b);
    for (const NormSpec& n : arch_of(c).norms) {
      const std::string nname = n.name;
      add_float(hf_tensor_name("blocks." + std::to_string(b) + "." + nname, arch_of(c)), {norm_size(c, n)},
         [&m, &blk, nname] { return hf_norm(m, blk.norm(nname)); });
    }
    for (size_t k = 0; k < blk.linears.size(); ++k, ++li) {  // every linear, experts' too (block_linears order)
      const GptqLinear* gl = &lins[li];
      const std::string pre = hf_linear_prefix(c, b, gl->lin->name);
      if (!gl->q) {  // full precision ("-:" dynamic entry)
        add_float(pre + ".weight", {gl->lin->out_features(), gl->lin->in_features()}, [&m, gl] { return hf_rows(m, gl->lin->name, gl->lin->weight); });
        if (gl->lin->bias.defined())
          add_float(pre + ".bias", {gl->lin->out_features()}, [&m, gl] { return hf_rows(m, gl->lin->name, gl->lin->bias); });
        continue;
      }
      const Grid& g = gl->q->grid;
      const int64_t out = g.rows, in = g.cols, ng = g.ngroups;
      const int bits = g.spec.bits;  // this linear's (a dynamic override when not the base)
      // qweight [words(in), out]: column o is the bitstream of the codes of HF row o along the inputs.
      add_i32(pre + ".qweight", {packed_words(in, bits), out}, [gl, bits, out, in] {
        const int64_t nw = packed_words(in, bits);
        std::vector<int32_t> qw((size_t)(nw * out), 0);
        std::vector<uint32_t> col((size_t)in), words((size_t)nw);
        const uint8_t* codes = gl->q->codes.data<uint8_t>();
        for (int64_t o = 0; o < out; ++o) {
          const int64_t r = gl->order[o];
          for (int64_t i = 0; i < in; ++i) col[i] = codes[r * in + i];
          std::fill(words.begin(), words.end(), 0u);
          pack_bits(col, bits, words.data());
          for (int64_t w = 0; w < nw; ++w) qw[w * out + o] = (int32_t)words[w];
        }
        return qw;
      });
      // qzeros [groups, words(out)]: zero−1 of each HF row, packed along the outputs (v1).
      add_i32(pre + ".qzeros", {ng, packed_words(out, bits)}, [gl, bits, out, ng] {
        const int64_t nw = packed_words(out, bits);
        std::vector<int32_t> qz((size_t)(ng * nw), 0);
        std::vector<uint32_t> zs((size_t)out);
        for (int64_t k = 0; k < ng; ++k) {
          for (int64_t o = 0; o < out; ++o) zs[o] = (uint32_t)gl->q->grid.z(gl->order[o], k) - 1;
          pack_bits(zs, bits, (uint32_t*)qz.data() + k * nw);
        }
        return qz;
      });
      SafetensorsEntry sc{pre + ".scales", "F16", {ng, out}, "", nullptr};
      sc.produce = [gl, out, ng] {
        std::string bytes((size_t)(ng * out * 2), '\0');
        for (int64_t k = 0; k < ng; ++k)
          for (int64_t o = 0; o < out; ++o) {
            const uint16_t h = f32_to_f16(gl->q->grid.s(gl->order[o], k));
            std::memcpy(bytes.data() + 2 * (k * out + o), &h, 2);
          }
        return bytes;
      };
      entries.push_back(std::move(sc));
      add_i32(pre + ".g_idx", {in}, [gl] { return gl->q->grid.g_idx; });
      if (gl->lin->bias.defined())
        add_float(pre + ".bias", {out}, [&m, gl] { return hf_rows(m, gl->lin->name, gl->lin->bias); });
    }
  }
  add_float("model.norm.weight", {c.dim}, [&m] { return hf_norm(m, m.final_norm); });
  if (!c.tied_classifier) add_float("lm_head.weight", {c.vocab_size, c.dim}, [&m] { return m.classifier; });

  nlohmann::ordered_json qc;
  qc["quant_method"] = "gptq";
  qc["bits"] = bits;
  qc["group_size"] = spec.group > 0 ? spec.group : -1;
  qc["desc_act"] = desc_act;
  qc["sym"] = spec.sym;
  qc["static_groups"] = false;
  qc["true_sequential"] = true;
  qc["lm_head"] = false;
  qc["checkpoint_format"] = "gptq";
  qc["pack_dtype"] = "int32";
  // GPTQModel's per-module overrides: "+:REGEX" {bits, group_size, sym} for linears whose grid is
  // not the base, "-:REGEX" for linears kept in full precision. One entry per (linear name, spec)
  // with the blocks that share it (\d+ when all do); matched by re.match on the module name.
  {
    std::map<std::pair<std::string, std::string>, std::vector<int>> groups;  // (suffix, spec json) -> blocks
    std::vector<std::pair<std::string, std::string>> order;
    std::map<std::string, nlohmann::ordered_json> specs;
    for (const GptqLinear& gl : lins) {
      nlohmann::ordered_json o = nlohmann::ordered_json::object();
      if (gl.q) {
        if (gptq_key(gl.q->grid.spec) == gptq_key(spec)) continue;
        const GridSpec& s = gl.q->grid.spec;
        o["bits"] = s.bits;
        o["group_size"] = s.group > 0 ? s.group : -1;
        o["sym"] = s.sym;
      }
      const std::string full = hf_linear_prefix(m.cfg, gl.block, gl.lin->name);
      const std::string lead = "model.layers." + std::to_string(gl.block) + ".";
      const std::string suffix = full.substr(lead.size());
      const std::string key = gl.q ? o.dump() : "-";
      specs[key] = o;
      auto k = std::make_pair(suffix, key);
      if (!groups.count(k)) order.push_back(k);
      groups[k].push_back(gl.block);
    }
    if (!order.empty()) {
      auto esc = [](const std::string& x) {
        std::string r;
        for (char ch : x) {
          if (ch == '.') r += "\\";
          r += ch;
        }
        return r;
      };
      nlohmann::ordered_json dyn = nlohmann::ordered_json::object();
      for (const auto& k : order) {
        const std::vector<int>& bl = groups[k];
        std::string blocks;
        if ((int)bl.size() == m.n_blocks()) {
          blocks = "\\d+";
        } else {
          for (size_t i = 0; i < bl.size(); ++i) blocks += (i ? "|" : "") + std::to_string(bl[i]);
          if (bl.size() > 1) blocks = "(?:" + blocks + ")";
        }
        const std::string re = "^model\\.layers\\." + blocks + "\\." + esc(k.first) + "$";
        dyn[(k.second == "-" ? "-:" : "+:") + re] = specs[k.second];
      }
      qc["dynamic"] = dyn;
    }
  }
  qc["meta"] = {{"quantizer", {"qforge"}},
                {"qforge_grid", spec.str()},
                {"qforge_scale_fp16_max_rel_error", max_rel_scale},
                {"qforge_weight_max_abs_deviation", max_abs_dev}};
  nlohmann::ordered_json cfg = hf_config_json(m, tok, "float16", what);
  cfg["quantization_config"] = qc;
  // AutoGPTQ and GPTQModel read quantize_config.json beside the weights (GPTQModel in preference
  // to config.json), so it carries the same per-module overrides: without `dynamic` there a mixed
  // export loads every linear at the base bits (found by scripts/verify_gptqmodel.py).
  nlohmann::ordered_json old = {{"bits", bits}, {"group_size", qc["group_size"]}, {"desc_act", desc_act}, {"sym", spec.sym},
                                {"static_groups", false}, {"true_sequential", true}, {"model_file_base_name", "model"},
                                {"checkpoint_format", "gptq"}, {"quant_method", "gptq"}};
  if (qc.contains("dynamic")) old["dynamic"] = qc["dynamic"];
  old["meta"] = qc["meta"];

  AtomicDir outdir(dir);
  safetensors_write(outdir.tmp() + "/model.safetensors", entries, {{"format", "pt"}});
  write_file_atomic(outdir.tmp() + "/config.json", cfg.dump(2) + "\n");
  write_file_atomic(outdir.tmp() + "/quantize_config.json", old.dump(2) + "\n");
  hf_write_tokenizer(m, tok, outdir.tmp());
  outdir.commit();
}

}  // namespace qf
