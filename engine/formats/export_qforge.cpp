// qforge format export (layout in loader_qforge.h): everything a quantized model holds, exactly.
#include <cstring>

#include "formats/export.h"
#include "formats/loader_qforge.h"
#include "formats/safetensors.h"

namespace qf {

static std::string blob(const std::vector<std::string>& items, std::vector<int32_t>* offsets) {
  std::string all;
  offsets->assign(1, 0);
  for (const std::string& s : items) {
    all += s;
    if (all.size() > (size_t)INT32_MAX) fail("save qforge: tokenizer strings exceed 2 GB");
    offsets->push_back((int32_t)all.size());
  }
  return all;
}

static void add_tokenizer(const TokenizerSpec& t, nlohmann::ordered_json& header, std::vector<SafetensorsEntry>& entries) {
  header["tokenizer"] = {{"model", t.model},       {"pre", t.pre},           {"bos_id", t.bos_id},
                         {"eos_id", t.eos_id},     {"unk_id", t.unk_id},     {"pad_id", t.pad_id},
                         {"add_bos", t.add_bos},   {"add_eos", t.add_eos},   {"add_space_prefix", t.add_space_prefix},
                         {"source", t.source}};
  std::vector<int32_t> off;
  std::string b = blob(t.tokens, &off);
  entries.push_back({"tokenizer.tokens", "U8", {(int64_t)b.size()}, b, nullptr});
  entries.push_back({"tokenizer.token_offsets", "I32", {(int64_t)off.size()}, bytes_of_i32(off), nullptr});
  if (!t.scores.empty()) entries.push_back({"tokenizer.scores", "F32", {(int64_t)t.scores.size()}, bytes_of_f32(t.scores), nullptr});
  if (!t.token_type.empty())
    entries.push_back({"tokenizer.token_type", "I32", {(int64_t)t.token_type.size()}, bytes_of_i32(t.token_type), nullptr});
  if (!t.merges.empty()) {
    b = blob(t.merges, &off);
    entries.push_back({"tokenizer.merges", "U8", {(int64_t)b.size()}, b, nullptr});
    entries.push_back({"tokenizer.merge_offsets", "I32", {(int64_t)off.size()}, bytes_of_i32(off), nullptr});
  }
}

// qforge stores any grid; what is checked before writing is the config (the per-linear size
// checks below run while the header is assembled, before any file is opened).
void check_qforge(const Model& m, const std::string& path) { validate_config(m.cfg, "save qforge '" + path + "'"); }

// The whole model, or (count >= 0) only blocks first .. first+count−1: a block checkpoint.
static void write_qforge(const Model& m, const Tokenizer* tok, const std::string& path, int first, int count) {
  const std::string what = "save qforge '" + path + "'";
  const ModelConfig& c = m.cfg;
  check_qforge(m, path);
  const bool partial = count >= 0;
  if (!partial) first = 0, count = m.n_blocks();
  if (first < 0 || count < 0 || first + count > m.n_blocks())
    fail(what, ": blocks ", first + 1, "..", first + count, " are outside the model's ", m.n_blocks());
  nlohmann::ordered_json header;
  // Version 2 only for what version 1 cannot hold (a butterfly transform, a diagonal on a seeded
  // transform), so every other file keeps its bytes and older readers refuse what they would misread.
  int version = kQforgeFormat;
  header["qforge_format"] = version;  // set again after the linears (the key keeps its place)
  header["config"] = qforge_config_json(c);
  header["source"] = {{"path", m.source}, {"format", m.format}};
  if (partial) header["blocks"] = {{"first", first}, {"count", count}};  // 0-based; loader_qforge.h
  nlohmann::ordered_json lins = nlohmann::ordered_json::object();
  std::vector<SafetensorsEntry> entries;

  auto f32 = [&](const std::string& name, const Tensor& t) {
    entries.push_back({name, "F32", t.shape(), "", [t] { return bytes_of_f32(t.to_vector()); }});
  };
  if (!partial) {
    f32("tok_emb", m.tok_emb);
    f32("final_norm", m.final_norm);
    if (!c.tied_classifier) f32("classifier", m.classifier);
  }
  for (int b = first; b < first + count; ++b) {
    const Block& blk = m.block(b);  // small tensors are captured by reference-counted view
    const std::string pre = "blocks." + std::to_string(b) + ".";
    for (const NormSpec& n : arch_of(c).norms) f32(pre + n.name, blk.norm(n.name));
    for (const Linear& l : blk.linears) {
      const std::string ln = pre + l.name;
      if (l.bias.defined()) f32(ln + ".bias", l.bias);
      if (!l.quant) {
        f32(ln + ".weight", l.weight);
        continue;
      }
      const QuantizedLinear& q = *l.quant;
      const Grid& g = q.grid;
      const int64_t nrg = g.nrowgroups();
      if (g.rows != l.out_features() || g.cols != l.in_features() || q.codes.numel() != g.rows * g.cols ||
          (int64_t)g.scale.size() != nrg * g.ngroups || (int64_t)g.zero.size() != nrg * g.ngroups || (int64_t)g.g_idx.size() != g.cols)
        fail(what, ": block ", b + 1, " linear '", l.name, "': codes/grid sizes do not match the weight ", shape_str(l.weight.shape()));
      g.spec.validate_layout(g.rows, g.ngroups);
      // Codes are the truth; the f32 weight is stored too only when it no longer equals them.
      const Tensor d = q.dequantize(), w = l.weight.contiguous();
      const bool same = std::memcmp(d.f32(), w.f32(), sizeof(float) * d.numel()) == 0;
      const GridSpec& s = g.spec;
      lins[ln] = {{"bits", s.bits},
                  {"group", s.group},
                  {"sym", s.sym},
                  {"mse", s.mse},
                  {"maxshrink", s.maxshrink},
                  {"grid_points", s.grid_points},
                  {"norm", s.norm},
                  {"kind", s.kind == GridKind::Compand ? "compand" : s.kind == GridKind::KQuant ? "kquant" : "uniform"},
                  {"compand_mult", s.compand_mult},
                  {"compand_bias", s.compand_bias},
                  {"compand_search", s.compand_search},
                  {"float_zero", s.float_zero},
                  {"row_groups", s.row_group.empty() ? 0 : s.nrowgroups},  // 0: every row its own params
                  {"mixed_bits", s.mixed_bits()},
                  {"rows", g.rows},
                  {"cols", g.cols},
                  {"ngroups", g.ngroups},
                  {"outliers", q.outliers.nnz()},
                  {"weight", same ? "codes" : "f32"}};
      // Written only when not the default, so files of gptq-mapped grids keep their bytes.
      if (s.mapping != GridMapping::Gptq) lins[ln]["mapping"] = grid_mapping_name(s.mapping);
      if (s.importance != GridImportance::None) lins[ln]["importance"] = grid_importance_name(s.importance);  // how it was fitted
      if (s.kind == GridKind::KQuant) {  // the format's integers (scales/zeros follow from them)
        lins[ln]["ktype"] = kquant_layout(s.ktype).name;
        const int64_t nsb = g.cols / kKQuantSuper;
        std::vector<int32_t> sc(g.kq_sc.begin(), g.kq_sc.end()), mn(g.kq_mn.begin(), g.kq_mn.end());
        entries.push_back({ln + ".kq_d", "F32", {g.rows, nsb}, bytes_of_f32(g.kq_d), nullptr});
        entries.push_back({ln + ".kq_dmin", "F32", {g.rows, nsb}, bytes_of_f32(g.kq_dmin), nullptr});
        entries.push_back({ln + ".kq_sc", "I32", {g.rows, g.ngroups}, bytes_of_i32(sc), nullptr});
        entries.push_back({ln + ".kq_mn", "I32", {g.rows, g.ngroups}, bytes_of_i32(mn), nullptr});
      }
      if (!same) f32(ln + ".weight", l.weight);
      auto qp = l.quant;  // keeps the codes alive while the writer runs
      entries.push_back({ln + ".codes", "U8", {g.rows, g.cols}, "", [qp] {
                           return std::string((const char*)qp->codes.contiguous().data<uint8_t>(), qp->codes.numel());
                         }});
      entries.push_back({ln + ".scales", "F32", {nrg, g.ngroups}, bytes_of_f32(g.scale), nullptr});
      entries.push_back({ln + ".zeros", "F32", {nrg, g.ngroups}, bytes_of_f32(g.zero), nullptr});
      if (!s.row_group.empty()) entries.push_back({ln + ".row_group", "I32", {g.rows}, bytes_of_i32(s.row_group), nullptr});
      if (s.mixed_bits())
        entries.push_back({ln + ".group_bits", "U8", {nrg, g.ngroups}, std::string(s.group_bits.begin(), s.group_bits.end()), nullptr});
      entries.push_back({ln + ".g_idx", "I32", {g.cols}, bytes_of_i32(g.g_idx), nullptr});
      // Transforms (methods.md#transforms): written only when present, so other files keep their bytes.
      for (const auto& [side, t] : {std::pair<const char*, const LinearTransform*>{"input", &q.input}, {"output", &q.output}}) {
        if (t->none()) continue;
        const std::string key = std::string(side) + "_transform", tn = ln + "." + side;
        lins[ln][key] = transform_kind_name(t->kind);
        if (t->kind == TransformKind::Butterfly || (t->seeded() && !t->diag.empty())) version = kQforgeFormatSeededDiag;
        switch (t->kind) {
          case TransformKind::Permutation: entries.push_back({tn + "_perm", "I32", {t->n}, bytes_of_i32(t->perm), nullptr}); break;
          case TransformKind::Diagonal: entries.push_back({tn + "_diag", "F32", {t->n}, bytes_of_f32(t->diag), nullptr}); break;
          case TransformKind::Hadamard:
          case TransformKind::Butterfly:
            lins[ln][std::string(side) + "_seed"] = std::to_string(t->seed);  // a string: JSON readers lose 64-bit integers
            lins[ln][std::string(side) + "_size"] = t->n;
            if (!t->diag.empty()) {  // T = R·diag(d) (format 2)
              lins[ln][std::string(side) + "_diag"] = true;
              entries.push_back({tn + "_diag", "F32", {t->n}, bytes_of_f32(t->diag), nullptr});
            }
            break;
          case TransformKind::Dense: entries.push_back({tn + "_dense", "F32", {t->n, t->n}, bytes_of_f32(t->dense.to_vector()), nullptr}); break;
          default: break;
        }
      }
      if (q.outliers.nnz()) {
        const int64_t n = q.outliers.nnz();
        entries.push_back({ln + ".outlier_rows", "I32", {n}, bytes_of_i32(q.outliers.row), nullptr});
        entries.push_back({ln + ".outlier_cols", "I32", {n}, bytes_of_i32(q.outliers.col), nullptr});
        entries.push_back({ln + ".outlier_vals", "F32", {n}, bytes_of_f32(q.outliers.val), nullptr});
      }
    }
  }
  header["linears"] = lins;
  header["qforge_format"] = version;
  if (!partial) {  // a block checkpoint carries no tokenizer
    if (tok) add_tokenizer(tok->spec(), header, entries);
    else if (m.src && !m.src->tokenizer.model.empty()) add_tokenizer(m.src->tokenizer, header, entries);
  }
  // Paths and tokenizer names may hold bytes that are not UTF-8: replaced in the JSON only.
  const std::string text = header.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  safetensors_write(path, entries, {{"qforge_format", std::to_string(version)}, {"qforge", text}});
}

void save_qforge(const Model& m, const Tokenizer* tok, const std::string& path) { write_qforge(m, tok, path, 0, -1); }

void save_qforge_blocks(const Model& m, const std::string& path, int first, int count) {
  if (count < 1) fail("save qforge '", path, "': a block checkpoint needs at least one block");
  write_qforge(m, nullptr, path, first, count);
}

}  // namespace qf
