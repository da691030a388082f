// qforge — reference logits files (docs/formats.md "Reference logits"), little-endian:
//   "QFREFLG1" | u64 header bytes | JSON header | then
//   hidden form (topk 0): f32 final_norm[dim] | f32 classifier[vocab·dim] | f32 x[windows·seqlen·dim]
//   top-k form:           f64 logp_target[n] | f64 tail[n] | i32 top[n] | i32 ids[n·k] | f64 logp[n·k]
#include "eval/reference_logits.h"

#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/io.h"
#include "core/json_util.h"
#include "core/mapped_file.h"

namespace qf {

namespace {

constexpr char kMagic[8] = {'Q', 'F', 'R', 'E', 'F', 'L', 'G', '1'};
constexpr uint64_t kMaxHeader = 1 << 20;

template <class T>
void put(AtomicFile& f, const std::vector<T>& v) {
  f.write(v.data(), v.size() * sizeof(T));
}

}  // namespace

void ReferenceLogits::save(const std::string& path) const {
  const int64_t n = positions();
  const int64_t rows = (int64_t)windows * seqlen;
  if (hidden_form() ? ((int64_t)final_norm.size() != dim || (int64_t)classifier.size() != vocab * dim ||
                       (int64_t)x.size() != rows * dim)
                    : ((int64_t)tail.size() != n || (int64_t)top.size() != n || (int64_t)logp.size() != n * topk ||
                       (int64_t)ids.size() != n * topk))
    fail("reference logits '", path, "': inconsistent contents (", n, " positions, top-", topk, ")");
  nlohmann::json h = {{"format", "qforge-reference-logits"},
                      {"version", 1},
                      {"form", hidden_form() ? "hidden" : "topk"},
                      {"model", model},
                      {"protocol_name", protocol_name},
                      {"protocol", protocol},
                      {"seqlen", seqlen},
                      {"windows", windows},
                      {"vocab", vocab},
                      {"topk", topk},
                      {"positions", n},
                      {"tokens_fnv1a64", fingerprint_text(tokens_hash)}};
  if (hidden_form()) {
    h["dim"] = dim;
    h["norm_eps"] = norm_eps;
  }
  const std::string hs = h.dump();
  const uint64_t hl = hs.size();
  AtomicFile f(path);
  f.write(kMagic, 8);
  f.write(&hl, 8);
  f.write(hs);
  if (hidden_form()) {
    put(f, final_norm);
    put(f, classifier);
    put(f, x);
  } else {
    put(f, logp_target);
    put(f, tail);
    put(f, top);
    put(f, ids);
    put(f, logp);
  }
  f.commit();
}

ReferenceLogits ReferenceLogits::load(const std::string& path) {
  const auto mf = MappedFile::open(path);
  const std::string what = "reference logits '" + path + "'";
  if (mf->size < 16 || std::memcmp(mf->data, kMagic, 8) != 0)
    fail(what, ": not a qforge reference-logits file (no QFREFLG1 magic)");
  uint64_t hl;
  std::memcpy(&hl, mf->data + 8, 8);
  if (hl > kMaxHeader) fail(what, ": header length ", hl, " exceeds ", kMaxHeader, " bytes");
  const uint8_t* hp = mf->at(16, hl, "header");
  const nlohmann::json h = parse_json_bounded(std::string((const char*)hp, hl), what + " header");
  if (!h.is_object()) fail(what, ": header is not a JSON object");
  auto field = [&](const char* k) -> const nlohmann::json& {
    if (!h.contains(k)) fail(what, ": header field '", k, "' is missing");
    return h[k];
  };
  auto int_field = [&](const char* k, int64_t lo, int64_t hi) {
    const nlohmann::json& v = field(k);
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
      fail(what, ": header field '", k, "' must be an integer in [", lo, ", ", hi, "], got ", json_brief(v));
    return v.get<int64_t>();
  };
  auto str_field = [&](const char* k) {
    const nlohmann::json& v = field(k);
    if (!v.is_string()) fail(what, ": header field '", k, "' must be a string, got ", json_brief(v));
    return v.get<std::string>();
  };
  if (str_field("format") != "qforge-reference-logits") fail(what, ": header field 'format' is not qforge-reference-logits");
  if (int_field("version", 1, 1000) != 1) fail(what, ": version ", h["version"].get<int64_t>(), " is not supported (1)");
  ReferenceLogits r;
  const std::string form = str_field("form");
  if (form != "hidden" && form != "topk") fail(what, ": header field 'form' must be hidden or topk, got '", form, "'");
  r.model = str_field("model");
  r.protocol_name = str_field("protocol_name");
  r.protocol = str_field("protocol");
  r.seqlen = (int)int_field("seqlen", 2, 1 << 24);
  r.windows = (int)int_field("windows", 1, 1 << 30);
  r.vocab = int_field("vocab", 1, (int64_t(1) << 31) - 1);
  r.topk = int_field("topk", form == "hidden" ? 0 : 1, form == "hidden" ? 0 : r.vocab - 1);
  const int64_t n = int_field("positions", 1, int64_t(1) << 40);
  const std::string fp = str_field("tokens_fnv1a64");
  if (fp.rfind("fnv1a64:", 0) != 0 || fp.size() != 24 || fp.find_first_not_of("0123456789abcdef", 8) != std::string::npos)
    fail(what, ": header field 'tokens_fnv1a64' is not fnv1a64:<16 hex digits>");
  r.tokens_hash = std::stoull(fp.substr(8), nullptr, 16);
  const uint64_t off = 16 + hl;
  uint64_t at = off;
  auto take = [&](auto& v, uint64_t count, const char* name) {
    using T = typename std::decay_t<decltype(v)>::value_type;
    const uint8_t* p = mf->at(at, count * sizeof(T), name);
    v.resize(count);
    std::memcpy(v.data(), p, count * sizeof(T));
    at += count * sizeof(T);
  };
  // Sizes from the header must match the file exactly before anything is allocated.
  auto expect_bytes = [&](long double need, const char* what_rows) {
    if (need != (long double)(mf->size - off))
      fail(what, ": ", what_rows, " need ", need, " bytes after the header, the file has ", mf->size - off);
  };
  if (form == "hidden") {
    r.dim = int_field("dim", 1, 1 << 20);
    const nlohmann::json& e = field("norm_eps");
    if (!e.is_number() || !(e.get<double>() >= 0) || e.get<double>() > 1)
      fail(what, ": header field 'norm_eps' must be a number in [0, 1], got ", json_brief(e));
    r.norm_eps = e.get<float>();
    const uint64_t rows = (uint64_t)r.windows * (uint64_t)r.seqlen;
    expect_bytes(4.0L * (long double)r.dim * (1.0L + (long double)r.vocab + (long double)rows),
                 (std::to_string(rows) + " rows of dim " + std::to_string(r.dim) + " and a vocab-" + std::to_string(r.vocab) + " classifier").c_str());
    if ((uint64_t)n > rows) fail(what, ": ", n, " scored positions cannot come from ", rows, " rows");
    take(r.final_norm, (uint64_t)r.dim, "final_norm");
    take(r.classifier, (uint64_t)r.vocab * (uint64_t)r.dim, "classifier");
    take(r.x, rows * (uint64_t)r.dim, "x");
    r.set_positions(n);
    for (const auto* v : {&r.final_norm, &r.classifier, &r.x})
      for (size_t j = 0; j < v->size(); ++j)
        if (!std::isfinite((*v)[j]))
          fail(what, ": ", v == &r.x ? "hidden state" : v == &r.classifier ? "classifier" : "final_norm", " value ", j + 1, " is ", (*v)[j],
               " (must be finite)");
    return r;
  }
  const long double row = 8.0L + 8.0L + 4.0L + (long double)r.topk * (4 + 8);
  expect_bytes((long double)n * row, (std::to_string(n) + " positions of top-" + std::to_string(r.topk) + " rows").c_str());
  const uint64_t nk = (uint64_t)n * (uint64_t)r.topk;
  take(r.logp_target, (uint64_t)n, "logp_target");
  take(r.tail, (uint64_t)n, "tail");
  take(r.top, (uint64_t)n, "top");
  take(r.ids, nk, "ids");
  take(r.logp, nk, "logp");
  // Values: log-probabilities finite and ≤ 0 (a little rounding above), masses in [0, 1], ids
  // in the vocabulary — a crafted file gives an error, never a NaN or an out-of-range read.
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(r.logp_target[i]) || r.logp_target[i] > 1e-9)
      fail(what, ": logp_target of position ", i + 1, " is ", r.logp_target[i], " (a log-probability must be finite and <= 0)");
    if (!(r.tail[i] >= 0 && r.tail[i] <= 1)) fail(what, ": tail of position ", i + 1, " is ", r.tail[i], ", not in [0, 1]");
    if (r.top[i] < 0 || r.top[i] >= r.vocab) fail(what, ": top token of position ", i + 1, " is ", r.top[i], ", outside [0, ", r.vocab, ")");
  }
  for (uint64_t j = 0; j < nk; ++j) {
    if (!std::isfinite(r.logp[j]) || r.logp[j] > 1e-9)
      fail(what, ": logp ", j % r.topk + 1, " of position ", j / r.topk + 1, " is ", r.logp[j], " (must be finite and <= 0)");
    if (r.ids[j] < 0 || r.ids[j] >= r.vocab)
      fail(what, ": token ", j % r.topk + 1, " of position ", j / r.topk + 1, " is ", r.ids[j], ", outside [0, ", r.vocab, ")");
  }
  return r;
}

}  // namespace qf
