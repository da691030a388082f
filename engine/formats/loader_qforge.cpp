// qforge format loader (layout in loader_qforge.h). Rebuilds the Model and every
// Linear::quant from the stored codes; every size is checked against the header first.
#include "formats/loader_qforge.h"

#include "core/half.h"

#include <cmath>
#include <cstring>

#include "core/json_util.h"
#include "formats/model_source.h"
#include "formats/safetensors.h"

namespace qf {

using json = nlohmann::json;

bool is_qforge_file(const std::string& path) {
  std::map<std::string, std::string> md;
  return safetensors_peek_metadata(path, &md) && md.count("qforge_format");
}

nlohmann::ordered_json qforge_config_json(const ModelConfig& c) {
  nlohmann::ordered_json j = {{"arch", c.arch},
          {"dim", c.dim},
          {"hidden_dim", c.hidden_dim},
          {"n_layers", c.n_layers},
          {"n_heads", c.n_heads},
          {"n_kv_heads", c.n_kv_heads},
          {"vocab_size", c.vocab_size},
          {"seq_len", c.seq_len},
          {"norm_eps", c.norm_eps},  // f32 -> f64 is exact, and nlohmann prints f64 round-trip
          {"rope_theta", c.rope_theta},
          {"rope_scaling", c.rope_scaling},
          {"rope_factor", c.rope_factor},
          {"rope_low_freq_factor", c.rope_low_freq_factor},
          {"rope_high_freq_factor", c.rope_high_freq_factor},
          {"rope_orig_ctx", c.rope_orig_ctx},
          {"rope_interleaved", c.rope_interleaved},
          {"tied_classifier", c.tied_classifier}};
  // Written only when set, so files of models without them keep their bytes.
  if (c.head_size > 0) j["head_dim"] = c.head_size;
  if (c.sliding_window > 0) {
    j["sliding_window"] = c.sliding_window;
    j["swa_layers"] = c.swa_layers;
  }
  if (c.rope_theta_swa > 0.f) j["rope_theta_swa"] = c.rope_theta_swa;
  if (c.attn_scale > 0.f) j["attn_scale"] = c.attn_scale;
  if (c.attn_softcap > 0.f) j["attn_softcap"] = c.attn_softcap;
  if (c.final_softcap > 0.f) j["final_softcap"] = c.final_softcap;
  if (c.n_experts > 0) {
    j["n_experts"] = c.n_experts;
    j["n_experts_used"] = c.n_experts_used;
    j["expert_hidden"] = c.expert_hidden;
    j["shared_hidden"] = c.shared_hidden;
    j["moe_norm_topk"] = c.moe_norm_topk;
  }
  return j;
}

// Typed field access: the error names the file and the field.
struct Fields {
  const json& j;
  std::string what, where;
  const json& at(const char* f) const {
    auto it = j.find(f);
    if (it == j.end()) fail(what, ": field '", where, f, "' is missing");
    return *it;
  }
  int64_t integer(const char* f, int64_t lo, int64_t hi) const {
    const json& v = at(f);
    if (!v.is_number_integer()) fail(what, ": field '", where, f, "' = ", json_brief(v), " is not an integer");
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi) fail(what, ": field '", where, f, "' = ", x, " is out of range (", lo, "..", hi, ")");
    return x;
  }
  float number(const char* f) const {
    const json& v = at(f);
    if (!v.is_number()) fail(what, ": field '", where, f, "' = ", json_brief(v), " is not a number");
    return (float)v.get<double>();
  }
  bool boolean(const char* f) const {
    const json& v = at(f);
    if (!v.is_boolean()) fail(what, ": field '", where, f, "' = ", json_brief(v), " is not true/false");
    return v.get<bool>();
  }
  std::string str(const char* f) const {
    const json& v = at(f);
    if (!v.is_string()) fail(what, ": field '", where, f, "' = ", json_brief(v), " is not a string");
    return v.get<std::string>();
  }
};

ModelConfig qforge_config_from_json(const json& j, const std::string& what) {
  if (!j.is_object()) fail(what, ": field 'config' is not an object");
  const Fields f{j, what, "config."};
  ModelConfig c;
  c.arch = f.str("arch");
  c.dim = (int)f.integer("dim", 1, 1 << 16);
  c.hidden_dim = (int)f.integer("hidden_dim", 1, 1 << 18);
  c.n_layers = (int)f.integer("n_layers", 1, 1024);
  c.n_heads = (int)f.integer("n_heads", 1, 1 << 16);
  c.n_kv_heads = (int)f.integer("n_kv_heads", 1, 1 << 16);
  c.vocab_size = (int)f.integer("vocab_size", 1, 1 << 22);
  c.seq_len = (int)f.integer("seq_len", 1, 1 << 24);
  c.norm_eps = f.number("norm_eps");
  c.rope_theta = f.number("rope_theta");
  c.rope_scaling = f.str("rope_scaling");
  c.rope_factor = f.number("rope_factor");
  c.rope_low_freq_factor = f.number("rope_low_freq_factor");
  c.rope_high_freq_factor = f.number("rope_high_freq_factor");
  c.rope_orig_ctx = (int)f.integer("rope_orig_ctx", 0, 1 << 24);
  c.rope_interleaved = f.boolean("rope_interleaved");
  c.tied_classifier = f.boolean("tied_classifier");
  if (j.contains("head_dim")) c.head_size = (int)f.integer("head_dim", 1, 1 << 14);
  if (j.contains("sliding_window")) {
    c.sliding_window = (int)f.integer("sliding_window", 1, 1 << 24);
    const json& sl = f.at("swa_layers");
    if (!sl.is_array() || (int64_t)sl.size() != c.n_layers) fail(what, ": field 'config.swa_layers' must hold ", c.n_layers, " flags");
    for (const json& v : sl) {
      if (!v.is_number_integer() || (v.get<int64_t>() != 0 && v.get<int64_t>() != 1))
        fail(what, ": field 'config.swa_layers' holds ", json_brief(v), " (expected 0 or 1)");
      c.swa_layers.push_back((uint8_t)v.get<int64_t>());
    }
  }
  for (auto [name, field] : {std::pair{"rope_theta_swa", &c.rope_theta_swa}, std::pair{"attn_scale", &c.attn_scale},
                             std::pair{"attn_softcap", &c.attn_softcap}, std::pair{"final_softcap", &c.final_softcap}})
    if (j.contains(name)) {
      *field = f.number(name);
      if (!(*field > 0.f) || !std::isfinite(*field)) fail(what, ": field 'config.", name, "' = ", *field, " (expected > 0)");
    }
  if (j.contains("n_experts")) {
    c.n_experts = (int)f.integer("n_experts", 1, 4096);
    c.n_experts_used = (int)f.integer("n_experts_used", 1, 4096);
    c.expert_hidden = (int)f.integer("expert_hidden", 1, 1 << 18);
    c.shared_hidden = (int)f.integer("shared_hidden", 0, 1 << 18);
    c.moe_norm_topk = f.boolean("moe_norm_topk");
  }
  // Values the forward pass would turn into NaN silently.
  if (!(c.norm_eps > 0.f && c.norm_eps < 1.f)) fail(what, ": field 'config.norm_eps' = ", c.norm_eps, " (expected in (0, 1))");
  if (!(c.rope_theta > 1.f && std::isfinite(c.rope_theta))) fail(what, ": field 'config.rope_theta' = ", c.rope_theta, " (expected > 1)");
  if (c.rope_scaling != "" && !(c.rope_factor > 0.f && std::isfinite(c.rope_factor)))
    fail(what, ": field 'config.rope_factor' = ", c.rope_factor, " (expected > 0)");
  if (c.rope_scaling != "" && c.rope_scaling != "linear" && c.rope_scaling != "llama3")
    fail(what, ": field 'config.rope_scaling' = '", c.rope_scaling, "' (expected \"\", linear or llama3)");
  validate_config(c, what);
  return c;
}

// An F32 tensor of the given shape (file and tensor named on mismatch).
static Tensor load_f32(const SafetensorsFile& st, const std::string& name, const Shape& shape) {
  const TensorSource& ts = st.get(name);
  if (ts.dtype != "F32" || ts.shape != shape)
    fail("qforge file '", st.file->path, "': tensor '", name, "' is ", ts.dtype, " ", shape_str(ts.shape), ", expected F32 ", shape_str(shape));
  return tensor_source_load(ts);
}

template <class T>
static std::vector<T> load_vec(const SafetensorsFile& st, const std::string& name, const char* dtype, const Shape& shape) {
  const TensorSource& ts = st.get(name);
  if (ts.shape != shape)
    fail("qforge file '", st.file->path, "': tensor '", name, "' has shape ", shape_str(ts.shape), ", expected ", shape_str(shape));
  return safetensors_read<T>(ts, dtype);
}


static std::shared_ptr<const QuantizedLinear> load_quant(const SafetensorsFile& st, const std::string& ln, const json& d,
                                                         const Shape& shape, const std::string& what, int64_t version) {
  const Fields f{d, what, "linears." + ln + "."};
  const std::string w = "qforge file '" + st.file->path + "': linear '" + ln + "'";
  auto q = std::make_shared<QuantizedLinear>();
  Grid& g = q->grid;
  g.spec.bits = (int)f.integer("bits", 1, 8);
  g.spec.group = f.integer("group", -1, 1 << 30);
  g.spec.sym = f.boolean("sym");
  g.spec.mse = f.boolean("mse");
  g.spec.maxshrink = f.number("maxshrink");
  g.spec.grid_points = (int)f.integer("grid_points", 0, 1 << 30);
  g.spec.norm = f.number("norm");
  const std::string kind = f.str("kind");
  if (kind != "uniform" && kind != "compand" && kind != "kquant") fail(w, ": field 'kind' = '", kind, "' (expected uniform, compand or kquant)");
  g.spec.kind = kind == "compand" ? GridKind::Compand : kind == "kquant" ? GridKind::KQuant : GridKind::Uniform;
  if (g.spec.kind == GridKind::KQuant && !kquant_from_name(f.str("ktype"), &g.spec.ktype))
    fail(w, ": field 'ktype' = '", f.str("ktype"), "' (expected Q2_K, Q3_K, Q4_K, Q5_K or Q6_K)");
  if (g.spec.kind == GridKind::KQuant) g.spec.f16_scales = true;  // the layout's (fp16 d, dmin)
  g.spec.compand_mult = f.number("compand_mult");
  g.spec.compand_bias = f.number("compand_bias");
  g.spec.compand_search = f.boolean("compand_search");
  // float_zero arrived after format version 1's first files: absent means integer zeros.
  if (d.contains("float_zero")) g.spec.float_zero = f.boolean("float_zero");
  // mapping (how sym ranges became scales) is written only when not gptq.
  if (d.contains("mapping") && !grid_mapping_from_name(f.str("mapping"), &g.spec.mapping))
    fail(w, ": field 'mapping' = '", f.str("mapping"), "' (expected gptq or llamacpp)");
  if (d.contains("importance") && !grid_importance_from_name(f.str("importance"), &g.spec.importance))
    fail(w, ": field 'importance' = '", f.str("importance"), "' (expected none, diag or diag_x)");
  g.rows = f.integer("rows", 1, 1 << 20);
  g.cols = f.integer("cols", 1, 1 << 20);
  g.ngroups = f.integer("ngroups", 1, 1 << 20);
  if (Shape{g.rows, g.cols} != shape) fail(w, ": field 'rows'/'cols' [", g.rows, ", ", g.cols, "] differ from the config's ", shape_str(shape));
  if (g.ngroups != (g.cols + g.group_size() - 1) / g.group_size()) fail(w, ": field 'ngroups' = ", g.ngroups, " does not fit group ", g.spec.group);
  const int64_t nrg_field = f.integer("row_groups", 0, g.rows);
  if (nrg_field > 0) {
    g.spec.nrowgroups = nrg_field;
    g.spec.row_group = load_vec<int32_t>(st, ln + ".row_group", "I32", {g.rows});
  }
  const int64_t nrg = g.nrowgroups();
  if (f.boolean("mixed_bits")) g.spec.group_bits = load_vec<uint8_t>(st, ln + ".group_bits", "U8", {nrg, g.ngroups});
  try {
    g.spec.validate();
    g.spec.validate_layout(g.rows, g.ngroups);
  } catch (const Error& e) {
    fail(w, ": ", e.what());
  }
  g.scale = load_vec<float>(st, ln + ".scales", "F32", {nrg, g.ngroups});
  g.zero = load_vec<float>(st, ln + ".zeros", "F32", {nrg, g.ngroups});
  g.g_idx = load_vec<int32_t>(st, ln + ".g_idx", "I32", {g.cols});
  for (int64_t j = 0; j < g.cols; ++j)
    if (g.g_idx[j] < 0 || g.g_idx[j] >= g.ngroups) fail(w, ": tensor 'g_idx' holds ", g.g_idx[j], " at ", j, " (", g.ngroups, " groups)");
  for (size_t i = 0; i < g.scale.size(); ++i)
    if (!std::isfinite(g.scale[i]) || !std::isfinite(g.zero[i])) fail(w, ": non-finite scale or zero at ", i);
  if (g.spec.kind == GridKind::KQuant) {
    // The stored integers are the truth: rebuild scale/zero from them, which must equal the file's.
    const KQuantLayout& L = kquant_layout(g.spec.ktype);
    if (g.cols % kKQuantSuper) fail(w, ": ", L.name, " needs a multiple of ", kKQuantSuper, " columns, got ", g.cols);
    const int64_t nsb = g.cols / kKQuantSuper;
    const std::vector<float> kd = load_vec<float>(st, ln + ".kq_d", "F32", {g.rows, nsb});
    const std::vector<float> kdm = load_vec<float>(st, ln + ".kq_dmin", "F32", {g.rows, nsb});
    const std::vector<int32_t> ksc = load_vec<int32_t>(st, ln + ".kq_sc", "I32", {g.rows, g.ngroups});
    const std::vector<int32_t> kmn = load_vec<int32_t>(st, ln + ".kq_mn", "I32", {g.rows, g.ngroups});
    const std::vector<float> scale = g.scale, zero = g.zero;
    Grid k = grid_new(g.spec, g.rows, g.cols);
    for (int64_t r = 0; r < g.rows; ++r)
      for (int64_t b = 0; b < nsb; ++b) {
        const size_t q = (size_t)(r * nsb + b), p0 = (size_t)(r * g.ngroups + b * L.nsub());
        if (!(std::isfinite(kd[q]) && f16_to_f32(f32_to_f16(kd[q])) == kd[q] && std::isfinite(kdm[q]) && f16_to_f32(f32_to_f16(kdm[q])) == kdm[q]))
          fail(w, ": super-block d/dmin at row ", r + 1, ", super-block ", b + 1, " is not an fp16 value");
        for (int j = 0; j < L.nsub(); ++j)
          if (ksc[p0 + j] < L.sc_lo || ksc[p0 + j] > L.sc_hi || kmn[p0 + j] < 0 || kmn[p0 + j] > L.mn_hi)
            fail(w, ": sub-block integers (", ksc[p0 + j], ", ", kmn[p0 + j], ") at row ", r + 1, ", sub-block ", b * L.nsub() + j + 1,
                 " are outside ", L.name, "'s ranges");
        kquant_set_superblock(k, r, b, kd[q], kdm[q], &ksc[p0], &kmn[p0]);
      }
    for (size_t i = 0; i < scale.size(); ++i)
      if (k.scale[i] != scale[i] || k.zero[i] != zero[i])
        fail(w, ": tensor 'scales'/'zeros' at ", i, " differ from the K-quant integers (", k.scale[i], ", ", k.zero[i], ")");
    g.kq_d = k.kq_d;
    g.kq_dmin = k.kq_dmin;
    g.kq_sc = k.kq_sc;
    g.kq_mn = k.kq_mn;
  }
  const std::vector<uint8_t> codes = load_vec<uint8_t>(st, ln + ".codes", "U8", {g.rows, g.cols});
  for (int64_t r = 0; r < g.rows; ++r)
    for (int64_t j = 0; j < g.cols; ++j) {
      const int64_t i = r * g.cols + j;
      if (codes[i] > g.maxq_at(r, g.g_idx[j]))
        fail(w, ": tensor 'codes' holds ", (int)codes[i], " at ", i, ", above the ", g.bits_at(r, g.g_idx[j]), "-bit maximum");
    }
  q->codes = Tensor::empty({g.rows, g.cols}, DType::U8);
  std::memcpy(q->codes.data<uint8_t>(), codes.data(), codes.size());
  const int64_t nnz = f.integer("outliers", 0, g.rows * g.cols);
  if (nnz) {
    q->outliers.row = load_vec<int32_t>(st, ln + ".outlier_rows", "I32", {nnz});
    q->outliers.col = load_vec<int32_t>(st, ln + ".outlier_cols", "I32", {nnz});
    q->outliers.val = load_vec<float>(st, ln + ".outlier_vals", "F32", {nnz});
    for (int64_t k = 0; k < nnz; ++k)
      if (q->outliers.row[k] < 0 || q->outliers.row[k] >= g.rows || q->outliers.col[k] < 0 || q->outliers.col[k] >= g.cols ||
          !std::isfinite(q->outliers.val[k]))
        fail(w, ": outlier ", k, " at (", q->outliers.row[k], ", ", q->outliers.col[k], ") is outside the weight or not finite");
  }
  // Transforms (methods.md#transforms), present only when written.
  for (const char* side : {"input", "output"}) {
    const std::string key = std::string(side) + "_transform";
    if (!d.contains(key)) continue;
    LinearTransform& t = std::string(side) == "input" ? q->input : q->output;
    const std::string kname = f.str(key.c_str());
    if (!transform_kind_from_name(kname, &t.kind) || t.kind == TransformKind::None)
      fail(w, ": field '", key, "' = '", kname, "' (expected perm, diag, hadamard, butterfly or dense)");
    if (t.kind == TransformKind::Butterfly && version < kQforgeFormatSeededDiag)
      fail(w, ": field '", key, "' = 'butterfly' needs qforge_format ", kQforgeFormatSeededDiag, ", the file says ", version);
    t.n = std::string(side) == "input" ? g.cols : g.rows;
    const std::string tn = ln + "." + side;
    switch (t.kind) {
      case TransformKind::Permutation: t.perm = load_vec<int32_t>(st, tn + "_perm", "I32", {t.n}); break;
      case TransformKind::Diagonal: t.diag = load_vec<float>(st, tn + "_diag", "F32", {t.n}); break;
      case TransformKind::Hadamard:
      case TransformKind::Butterfly: {
        const std::string seed = f.str((std::string(side) + "_seed").c_str());
        if (seed.empty() || seed.size() > 20 || seed.find_first_not_of("0123456789") != std::string::npos)
          fail(w, ": field '", side, "_seed' = '", seed, "' is not an unsigned 64-bit integer");
        t.seed = 0;
        for (char ch : seed) {
          const uint64_t digit = (uint64_t)(ch - '0');
          if (t.seed > (UINT64_MAX - digit) / 10) fail(w, ": field '", side, "_seed' = '", seed, "' is above 2^64 − 1");
          t.seed = t.seed * 10 + digit;
        }
        if (f.integer((std::string(side) + "_size").c_str(), 1, 1 << 30) != t.n)
          fail(w, ": field '", side, "_size' differs from the weight's ", t.n);
        if (d.contains(std::string(side) + "_diag") && f.boolean((std::string(side) + "_diag").c_str())) {  // T = R·diag(d)
          if (version < kQforgeFormatSeededDiag)
            fail(w, ": field '", side, "_diag' needs qforge_format ", kQforgeFormatSeededDiag, ", the file says ", version);
          t.diag = load_vec<float>(st, tn + "_diag", "F32", {t.n});
        }
        break;
      }
      case TransformKind::Dense: {
        const std::vector<float> v = load_vec<float>(st, tn + "_dense", "F32", {t.n, t.n});
        t.dense = Tensor::from_data({t.n, t.n}, v);
        break;
      }
      default: break;
    }
    try {
      t.validate(std::string(side) + " transform");
    } catch (const Error& e) {
      fail(w, ": ", e.what());
    }
  }
  return q;
}

static std::vector<std::string> unblob(const SafetensorsFile& st, const std::string& name, const std::string& offs_name) {
  const std::vector<uint8_t> all = safetensors_read<uint8_t>(st.get(name), "U8");
  const std::vector<int32_t> off = safetensors_read<int32_t>(st.get(offs_name), "I32");
  std::vector<std::string> out;
  for (size_t i = 0; i + 1 < off.size(); ++i) {
    if (off[i] < 0 || off[i] > off[i + 1] || (size_t)off[i + 1] > all.size())
      fail("qforge file '", st.file->path, "': tensor '", offs_name, "' holds a bad offset at ", i + 1);
    out.emplace_back((const char*)all.data() + off[i], (size_t)(off[i + 1] - off[i]));
  }
  return out;
}

static TokenizerSpec load_tokenizer(const SafetensorsFile& st, const json& t, const std::string& what) {
  const Fields f{t, what, "tokenizer."};
  TokenizerSpec s;
  s.model = f.str("model");
  s.pre = f.str("pre");
  s.bos_id = (int32_t)f.integer("bos_id", -1, INT32_MAX);
  s.eos_id = (int32_t)f.integer("eos_id", -1, INT32_MAX);
  s.unk_id = (int32_t)f.integer("unk_id", -1, INT32_MAX);
  s.pad_id = (int32_t)f.integer("pad_id", -1, INT32_MAX);
  s.add_bos = f.boolean("add_bos");
  s.add_eos = f.boolean("add_eos");
  s.add_space_prefix = f.boolean("add_space_prefix");
  s.source = st.file->path;
  s.tokens = unblob(st, "tokenizer.tokens", "tokenizer.token_offsets");
  const Shape n{(int64_t)s.tokens.size()};
  if (st.find("tokenizer.scores")) s.scores = load_vec<float>(st, "tokenizer.scores", "F32", n);
  if (st.find("tokenizer.token_type")) s.token_type = load_vec<int32_t>(st, "tokenizer.token_type", "I32", n);
  if (st.find("tokenizer.merges")) s.merges = unblob(st, "tokenizer.merges", "tokenizer.merge_offsets");
  return s;
}

// The header of a qforge file, checked (version, metadata agreement); sets *version.
static json read_header(const SafetensorsFile& st, const std::string& what, int64_t* version) {
  auto v = st.metadata.find("qforge_format");
  if (v == st.metadata.end()) fail(what, ": field '__metadata__.qforge_format' is missing (not a qforge file)");
  if (v->second != std::to_string(kQforgeFormat) && v->second != std::to_string(kQforgeFormatSeededDiag))
    fail(what, ": field '__metadata__.qforge_format' = '", v->second, "' (this qforge reads versions ", kQforgeFormat, " and ",
         kQforgeFormatSeededDiag, ")");
  auto h = st.metadata.find("qforge");
  if (h == st.metadata.end()) fail(what, ": field '__metadata__.qforge' (the header) is missing");
  const json header = parse_json_bounded(h->second, what + ": field '__metadata__.qforge'");
  if (!header.is_object()) fail(what, ": field '__metadata__.qforge' is not a JSON object");
  const Fields top{header, what, ""};
  *version = top.integer("qforge_format", 0, 1 << 30);
  if (std::to_string(*version) != v->second) fail(what, ": field 'qforge_format' disagrees with the metadata");
  return header;
}

// Block b (0-based) as the file stores it.
static Block load_block(const SafetensorsFile& st, const ModelConfig& c, const json& lins, int b, const std::string& what,
                        int64_t version) {
  const std::string pre = "blocks." + std::to_string(b) + ".";
  Block blk;
  for (const NormSpec& n : arch_of(c).norms) blk.norm(n.name) = load_f32(st, pre + n.name, {norm_size(c, n)});
  for (const BlockLinear& s : block_linears(c)) {
    const std::string ln = pre + s.name;
    const Shape shape = linear_shape(c, s.name);
    Linear l;
    l.name = s.name;
    l.input = s.spec->input;
    if (st.find(ln + ".bias")) l.bias = load_f32(st, ln + ".bias", {shape[0]});
    auto d = lins.find(ln);
    if (d == lins.end()) {
      l.weight = load_f32(st, ln + ".weight", shape);
    } else {
      l.quant = load_quant(st, ln, *d, shape, what, version);
      const std::string kind = Fields{*d, what, "linears." + ln + "."}.str("weight");
      if (kind == "codes") l.weight = l.quant->dequantize();
      else if (kind == "f32") l.weight = load_f32(st, ln + ".weight", shape);
      else fail(what, ": field 'linears.", ln, ".weight' = '", kind, "' (expected codes or f32)");
    }
    blk.linears.push_back(std::move(l));
  }
  return blk;
}

Model load_qforge(const std::string& path) {
  SafetensorsFile st = safetensors_open(path);
  const std::string what = "qforge file '" + path + "'";
  int64_t version = 0;
  const json header = read_header(st, what, &version);
  const Fields top{header, what, ""};
  if (header.contains("blocks"))
    fail(what, ": a block checkpoint (field 'blocks'), not a model: it holds only some blocks' weights");

  auto src = std::make_shared<ModelSource>();
  src->format = "qforge";
  src->path = path;
  src->files = {path};
  src->cfg = qforge_config_from_json(top.at("config"), what);
  const json& lins = top.at("linears");
  if (!lins.is_object()) fail(what, ": field 'linears' is not an object");
  if (auto t = header.find("tokenizer"); t != header.end()) src->tokenizer = load_tokenizer(st, *t, what);

  const ModelConfig& c = src->cfg;
  Model m;
  m.cfg = c;
  m.source = path;
  m.format = "qforge";
  m.tok_emb = load_f32(st, "tok_emb", {c.vocab_size, c.dim});
  m.final_norm = load_f32(st, "final_norm", {c.dim});
  m.classifier = c.tied_classifier ? m.tok_emb : load_f32(st, "classifier", {c.vocab_size, c.dim});
  for (int b = 0; b < c.n_layers; ++b) m.blocks.push_back(load_block(st, c, lins, b, what, version));
  m.src = src;
  return m;
}

std::pair<int, int> load_qforge_blocks(const std::string& path, Model& m) {
  SafetensorsFile st = safetensors_open(path);
  const std::string what = "qforge block checkpoint '" + path + "'";
  int64_t version = 0;
  const json header = read_header(st, what, &version);
  const Fields top{header, what, ""};
  if (!header.contains("blocks")) fail(what, ": field 'blocks' is missing (a whole model, not a block checkpoint)");
  const Fields bl{top.at("blocks"), what, "blocks."};
  const int first = (int)bl.integer("first", 0, 1 << 20), count = (int)bl.integer("count", 1, 1 << 20);
  const ModelConfig c = qforge_config_from_json(top.at("config"), what);
  {
    const nlohmann::ordered_json have = qforge_config_json(c), want = qforge_config_json(m.cfg);
    if (have != want) {
      std::string keys;
      for (auto it = want.begin(); it != want.end(); ++it)
        if (!have.contains(it.key()) || have[it.key()] != it.value()) keys += (keys.empty() ? "" : ", ") + it.key();
      for (auto it = have.begin(); it != have.end(); ++it)
        if (!want.contains(it.key())) keys += (keys.empty() ? "" : ", ") + it.key();
      fail(what, ": its config differs from the model's (field 'config': ", keys, ")");
    }
  }
  if (first + count > m.n_blocks())
    fail(what, ": field 'blocks' = ", first + 1, "..", first + count, " (1-based), the model has ", m.n_blocks(), " blocks");
  const json& lins = top.at("linears");
  if (!lins.is_object()) fail(what, ": field 'linears' is not an object");
  std::vector<Block> loaded;  // all read before any is replaced: a bad file leaves the model as it was
  for (int b = first; b < first + count; ++b) loaded.push_back(load_block(st, c, lins, b, what, version));
  for (int b = first; b < first + count; ++b) m.block_mut(b) = std::move(loaded[b - first]);
  return {first, count};
}

}  // namespace qf
