// compressed-tensors `pack-quantized` export (docs/formats.md, "Exports": compressed-tensors):
// the format llm-compressor writes and vLLM loads. An HF directory whose quantized linears hold
//   weight_packed      int32 [out, ceil(in·b/32)]  codes, LSB-first dense bitstream along the input
//   weight_scale       fp16  [out, in/g]            (per channel: [out, 1])
//   weight_zero_point  int32 [ceil(out·b/32), in/g] asymmetric grids only, packed along the outputs
//   weight_shape       int64 [2]                    [out, in]
// and config.json's quantization_config: one config group per (bits, group, sym) of the model's
// grids, targeting its linears by "re:" patterns, linears left in full precision in `ignore`.
// compressed-tensors stores signed codes q − 2^(b−1) and zero points z − 2^(b−1) and packs both
// with the offset 2^(b−1) added back, so the unsigned words hold qforge's codes and integer zeros
// as they are; a symmetric grid is one whose zero is 2^(b−1) (signed zero point 0).
//
// Exactness as the GPTQ export: codes and zeros exact, scales rounded to fp16 (exact with
// f16_scales; the largest relative error and weight deviation go into the config's
// qforge_meta). Refused, naming block and linear: outliers, companded / K-quant / per-group-bit /
// float-zero grids, act-order column maps, groups that do not divide the width, non-positive
// scales, and weights edited after quantization.
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <tuple>

#include "core/half.h"
#include "core/io.h"
#include "formats/export.h"
#include "formats/export_hf.h"
#include "formats/loader_hf.h"
#include "formats/safetensors.h"

namespace qf {

namespace {

struct CtLinear {
  const Linear* lin;
  const QuantizedLinear* q;  // nullptr: kept in full precision (`ignore`)
  int block;
  std::vector<int64_t> order;  // HF row o = our row order[o]
};

using CtKey = std::tuple<int, int64_t, bool>;  // bits, group size (-1: per channel), sym

std::string ct_what(const std::string& what, int b, const std::string& name) {
  return what + ": block " + std::to_string(b + 1) + " linear '" + name + "'";
}

// The HF module of block b's linear (an expert's: its per-expert module, as transformers saves it).
std::string hf_module(const ModelConfig& c, int b, const std::string& name) {
  const std::string w = hf_tensor_name("blocks." + std::to_string(b) + "." + name + ".weight", arch_of(c));
  return w.substr(0, w.size() - 7);
}

int64_t dense_words(int64_t n, int bits) { return (n * bits + 31) / 32; }

// Every check before anything is written.
void check_linears(const Model& m, const std::string& what, std::vector<CtLinear>* out) {
  if (!m.cfg.hf_layout.empty())
    fail(what, ": the model came in the fused ", m.cfg.hf_layout, " layout; compressed-tensors export of fused layouts is not implemented");
  validate_config(m.cfg, what);
  std::string first_float;
  bool any = false;
  for (int b = 0; b < m.n_blocks(); ++b) {
    if (m.is_lazy() && m.resident[b] == 0)
      fail(ct_what(what, b, "q"), ": not quantized (block ", b + 1, " was loaded lazily and never quantized); quantize every linear first");
    for (const Linear& l : m.block(b).linears) {
      const std::string lw = ct_what(what, b, l.name);
      if (!l.quant) {
        if (first_float.empty()) first_float = lw;
        out->push_back({&l, nullptr, b, hf_row_order(m, l.name, l.out_features())});
        continue;
      }
      const QuantizedLinear& q = *l.quant;
      const Grid& g = q.grid;
      const std::string alt = " (use format 'qforge')";
      if (g.rows != l.out_features() || g.cols != l.in_features() || q.codes.numel() != g.rows * g.cols)
        fail(lw, ": codes [", g.rows, ", ", g.cols, "] do not match the weight ", shape_str(l.weight.shape()));
      if (q.outliers.nnz()) fail(lw, ": has ", q.outliers.nnz(), " outliers, which pack-quantized cannot store", alt);
      if (g.spec.kind != GridKind::Uniform || g.spec.float_zero || g.spec.mixed_bits())
        fail(lw, ": grid ", g.spec.str(), "; pack-quantized stores uniform grids with integer zeros, one bit width per linear", alt);
      if (g.spec.bits < 2 || g.spec.bits > 8) fail(lw, ": ", g.spec.bits, "-bit grid; pack-quantized packs 2..8 bits here", alt);
      const int64_t G = g.group_size();
      if (g.spec.group > 0 && g.cols % G)
        fail(lw, ": ", g.cols, " input columns is not a multiple of the group size ", G, " (compressed-tensors' groups divide the width)", alt);
      for (int64_t j = 0; j < g.cols; ++j)
        if (g.g_idx[(size_t)j] != j / G)
          fail(lw, ": column ", j + 1, " is in group ", g.g_idx[(size_t)j] + 1, " (an act-order column map); pack-quantized is written without g_idx here", alt);
      g.spec.validate_layout(g.rows, g.ngroups);
      const int maxq = g.maxq(), half = 1 << (g.spec.bits - 1);
      for (int64_t r = 0; r < g.rows; ++r)
        for (int64_t k = 0; k < g.ngroups; ++k) {
          const float s = g.s(r, k), z = g.z(r, k), s16 = f16_to_f32(f32_to_f16(s));
          if (z != std::floor(z) || z < 0 || z > maxq) fail(lw, ": zero point ", z, " at row ", r + 1, " group ", k + 1, " is not an integer in [0, ", maxq, "]");
          if (g.spec.sym && z != (float)half)
            fail(lw, ": symmetric grid with zero ", z, " at row ", r + 1, " group ", k + 1, "; compressed-tensors' symmetric zero point is ", half);
          if (!(s > 0) || !(s16 > 0) || !std::isfinite(s16))
            fail(lw, ": scale ", s, " at row ", r + 1, " group ", k + 1, " is not a positive float16 (", s16, "; mapping=llamacpp gives negative scales)");
        }
      const Tensor d = q.dequantize(), w = l.weight.contiguous();
      const float *dp = d.f32(), *wp = w.f32();
      for (int64_t i = 0; i < d.numel(); ++i)
        if (dp[i] != wp[i])
          fail(lw, ": weight was edited after quantization (element [", i / g.cols + 1, ", ", i % g.cols + 1, "] is ", wp[i], ", its codes give ", dp[i],
               "); re-quantize it or save with format 'hf'");
      any = true;
      out->push_back({&l, &q, b, hf_row_order(m, l.name, g.rows)});
    }
  }
  if (!any)
    fail(first_float, ": not quantized, and no linear of the model is (attach codes with m:set_linear(b, name, qlinear)); pack-quantized stores linears as codes");
}

CtKey key_of(const GridSpec& s) { return {s.bits, s.group > 0 ? s.group : -1, s.sym}; }

std::string re_escape(const std::string& x) {
  std::string r;
  for (char ch : x) {
    if (ch == '.') r += '\\';
    r += ch;
  }
  return r;
}

}  // namespace

void check_compressed_tensors(const Model& m, const Tokenizer* tok, const std::string& dir) {
  const std::string what = "save compressed-tensors '" + dir + "'";
  std::vector<CtLinear> lins;
  check_linears(m, what, &lins);
  hf_config_json(m, tok, "float16", what);
}

void save_compressed_tensors(const Model& m, const Tokenizer* tok, const std::string& dir) {
  const std::string what = "save compressed-tensors '" + dir + "'";
  std::vector<CtLinear> lins;
  check_linears(m, what, &lins);
  const ModelConfig& c = m.cfg;

  double max_rel_scale = 0, max_abs_dev = 0;  // the fp16 scale rounding, measured
  for (const CtLinear& cl : lins) {
    if (!cl.q) continue;
    const Grid& g = cl.q->grid;
    const uint8_t* codes = cl.q->codes.data<uint8_t>();
    for (int64_t r = 0; r < g.rows; ++r)
      for (int64_t j = 0; j < g.cols; ++j) {
        const int64_t k = g.g_idx[(size_t)j];
        const float s = g.s(r, k), s16 = f16_to_f32(f32_to_f16(s)), z = g.z(r, k), code = codes[r * g.cols + j];
        max_rel_scale = std::max(max_rel_scale, std::fabs((double)s16 - s) / s);
        max_abs_dev = std::max(max_abs_dev, (double)std::fabs(s16 * (code - z) - s * (code - z)));
      }
  }

  std::vector<SafetensorsEntry> entries;
  auto add_f16 = [&](const std::string& name, const Shape& shape, std::function<Tensor()> get) {
    SafetensorsEntry e{name, "F16", shape, "", nullptr};
    e.produce = [get, name, what] { return tensor_bytes(get(), "F16", what + ": tensor '" + name + "'"); };
    entries.push_back(std::move(e));
  };
  auto add_i32 = [&](const std::string& name, const Shape& shape, std::function<std::vector<int32_t>()> get) {
    SafetensorsEntry e{name, "I32", shape, "", nullptr};
    e.produce = [get] { return bytes_of_i32(get()); };
    entries.push_back(std::move(e));
  };
  add_f16("model.embed_tokens.weight", {c.vocab_size, c.dim}, [&m] { return m.tok_emb; });
  size_t li = 0;
  for (int b = 0; b < m.n_blocks(); ++b) {
    const Block& blk = m.block(b);
    for (const NormSpec& n : arch_of(c).norms) {
      const std::string nname = n.name;
      add_f16(hf_tensor_name("blocks." + std::to_string(b) + "." + nname, arch_of(c)), {norm_size(c, n)},
         [&m, &blk, nname] { return hf_norm(m, blk.norm(nname)); });
    }
    for (size_t k = 0; k < blk.linears.size(); ++k, ++li) {  // every linear, experts' too
      const CtLinear* cl = &lins[li];
      const std::string pre = hf_module(c, b, cl->lin->name);
      if (cl->lin->bias.defined())
        add_f16(pre + ".bias", {cl->lin->out_features()}, [&m, cl] { return hf_rows(m, cl->lin->name, cl->lin->bias); });
      if (!cl->q) {
        add_f16(pre + ".weight", {cl->lin->out_features(), cl->lin->in_features()}, [&m, cl] { return hf_rows(m, cl->lin->name, cl->lin->weight); });
        continue;
      }
      const Grid& g = cl->q->grid;
      const int64_t out = g.rows, in = g.cols, ng = g.ngroups;
      const int bits = g.spec.bits;
      // weight_packed [out, words(in)]: row o is the bitstream of HF row o's codes along the inputs.
      add_i32(pre + ".weight_packed", {out, dense_words(in, bits)}, [cl, bits, out, in] {
        const int64_t nw = dense_words(in, bits);
        std::vector<int32_t> qw((size_t)(nw * out), 0);
        std::vector<uint32_t> row((size_t)in);
        const uint8_t* codes = cl->q->codes.data<uint8_t>();
        for (int64_t o = 0; o < out; ++o) {
          const int64_t r = cl->order[(size_t)o];
          for (int64_t i = 0; i < in; ++i) row[(size_t)i] = codes[r * in + i];
          pack_bits(row, bits, (uint32_t*)qw.data() + o * nw);
        }
        return qw;
      });
      SafetensorsEntry sc{pre + ".weight_scale", "F16", {out, ng}, "", nullptr};
      sc.produce = [cl, out, ng] {
        std::string bytes((size_t)(ng * out * 2), '\0');
        for (int64_t o = 0; o < out; ++o)
          for (int64_t k2 = 0; k2 < ng; ++k2) {
            const uint16_t h = f32_to_f16(cl->q->grid.s(cl->order[(size_t)o], k2));
            std::memcpy(bytes.data() + 2 * (o * ng + k2), &h, 2);
          }
        return bytes;
      };
      entries.push_back(std::move(sc));
      SafetensorsEntry sh{pre + ".weight_shape", "I64", {2}, "", nullptr};
      const int64_t shape2[2] = {out, in};
      sh.bytes.assign((const char*)shape2, sizeof shape2);
      entries.push_back(std::move(sh));
      if (!g.spec.sym)  // [words(out), groups]: column k is the bitstream of the rows' zeros along the outputs
        add_i32(pre + ".weight_zero_point", {dense_words(out, bits), ng}, [cl, bits, out, ng] {
          const int64_t nw = dense_words(out, bits);
          std::vector<uint32_t> col((size_t)out), words((size_t)nw);
          std::vector<int32_t> zp((size_t)(nw * ng), 0);
          for (int64_t k2 = 0; k2 < ng; ++k2) {
            for (int64_t o = 0; o < out; ++o) col[(size_t)o] = (uint32_t)cl->q->grid.z(cl->order[(size_t)o], k2);
            std::fill(words.begin(), words.end(), 0u);
            pack_bits(col, bits, words.data());
            for (int64_t w = 0; w < nw; ++w) zp[(size_t)(w * ng + k2)] = (int32_t)words[(size_t)w];
          }
          return zp;
        });
    }
  }
  add_f16("model.norm.weight", {c.dim}, [&m] { return hf_norm(m, m.final_norm); });
  if (!c.tied_classifier) add_f16("lm_head.weight", {c.vocab_size, c.dim}, [&m] { return m.classifier; });

  // Config groups: one per (bits, group, sym), targets "re:" patterns per linear name (\d+ when
  // every block shares the grid); full-precision linears and lm_head in `ignore`.
  std::map<CtKey, std::map<std::string, std::vector<int>>> by_key;  // key -> HF suffix -> blocks
  std::vector<CtKey> key_order;
  nlohmann::ordered_json ignore = nlohmann::ordered_json::array();
  for (const CtLinear& cl : lins) {
    const std::string mod = hf_module(m.cfg, cl.block, cl.lin->name);
    if (!cl.q) {
      ignore.push_back(mod);
      continue;
    }
    const CtKey key = key_of(cl.q->grid.spec);
    if (!by_key.count(key)) key_order.push_back(key);
    const std::string lead = "model.layers." + std::to_string(cl.block) + ".";
    by_key[key][mod.substr(lead.size())].push_back(cl.block);
  }
  ignore.push_back("lm_head");
  nlohmann::ordered_json groups = nlohmann::ordered_json::object();
  for (size_t gi = 0; gi < key_order.size(); ++gi) {
    const auto& [bits, group, sym] = key_order[gi];
    nlohmann::ordered_json targets = nlohmann::ordered_json::array();
    for (const auto& [suffix, bl] : by_key[key_order[gi]]) {
      std::string blocks;
      if ((int)bl.size() == m.n_blocks()) {
        blocks = "\\d+";
      } else {
        for (size_t i = 0; i < bl.size(); ++i) blocks += (i ? "|" : "") + std::to_string(bl[i]);
        if (bl.size() > 1) blocks = "(?:" + blocks + ")";
      }
      targets.push_back("re:^model\\.layers\\." + blocks + "\\." + re_escape(suffix) + "$");
    }
    nlohmann::ordered_json wq = {{"num_bits", bits},
                                 {"type", "int"},
                                 {"symmetric", sym},
                                 {"group_size", group > 0 ? nlohmann::ordered_json(group) : nlohmann::ordered_json(nullptr)},
                                 {"strategy", group > 0 ? "group" : "channel"},
                                 {"block_structure", nullptr},
                                 {"dynamic", false},
                                 {"actorder", nullptr},
                                 {"observer", "minmax"},
                                 {"observer_kwargs", nlohmann::ordered_json::object()}};
    groups["group_" + std::to_string(gi)] = {{"targets", targets},
                                             {"weights", wq},
                                             {"input_activations", nullptr},
                                             {"output_activations", nullptr},
                                             {"format", "pack-quantized"}};
  }
  nlohmann::ordered_json qc;
  qc["quant_method"] = "compressed-tensors";
  qc["format"] = "pack-quantized";
  qc["quantization_status"] = "compressed";
  qc["config_groups"] = groups;
  qc["ignore"] = ignore;
  qc["kv_cache_scheme"] = nullptr;
  qc["global_compression_ratio"] = nullptr;
  qc["qforge_meta"] = {{"quantizer", "qforge"},
                       {"packing", "dense (32 values of b bits in b int32 words; compressed-tensors >= 2026-05-29, identical before for 2/4/8 bits)"},
                       {"scale_fp16_max_rel_error", max_rel_scale},
                       {"weight_max_abs_deviation", max_abs_dev}};
  nlohmann::ordered_json cfg = hf_config_json(m, tok, "float16", what);
  cfg["quantization_config"] = qc;

  AtomicDir outdir(dir);
  safetensors_write(outdir.tmp() + "/model.safetensors", entries, {{"format", "pt"}});
  write_file_atomic(outdir.tmp() + "/config.json", cfg.dump(2) + "\n");
  hf_write_tokenizer(m, tok, outdir.tmp());
  outdir.commit();
}

}  // namespace qf
