// qforge — HF tokenizer.json: reading it into a TokenizerSpec, and writing one for a spec.
//
// Read: model.type "BPE" only, in its two common shapes —
//   byte-level (GPT-2, Llama 3, SmolLM2): pre_tokenizer ByteLevel, or a Sequence of a
//     Split(Regex) / Digits(individual_digits) and ByteLevel; the regex must be one we have a
//     splitter for (pretokenizer.h). -> spec.model "gpt2", merges as given.
//   SentencePiece-style (Llama 2, TinyLlama): byte_fallback and the Prepend("▁") +
//     Replace(" ", "▁") normalizer (what we write), or a Metaspace pre-tokenizer — read as
//     add_space_prefix on/off; its prepend_scheme "first" and its skipping of the prefix when
//     the text already starts with a space are not reproduced. -> spec.model "llama", the merge
//     rank becomes the score (score = -rank of the first merge that makes the token; tokens
//     no merge makes get -1e30, below llama2.c's merge floor, so they are never merged).
// BOS/EOS: tokenizer_config.json beside the file when present (bos_token, eos_token,
// add_bos_token, add_eos_token, pad_token); else the post_processor's TemplateProcessing
// (a leading special token is an added BOS); else the added tokens named "<s>",
// "<|begin_of_text|>", "<|im_start|>", "<|endoftext|>" (BOS) and "</s>", "<|end_of_text|>",
// "<|im_end|>", "<|endoftext|>" (EOS), first found. add_bos defaults to true for the
// SentencePiece style and false for byte-level BPE (llama.cpp's defaults).
// Ignored: added-token flags lstrip/rstrip/single_word/normalized, dropout, truncation, padding.
#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/io.h"
#include "core/json_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace qf {

using nlohmann::json;

namespace {

constexpr size_t kMaxVocab = 1 << 24;
constexpr size_t kMaxMerges = 1 << 24;
constexpr float kNoMerge = -1e30f;           // below the llama kind's merge floor (-1e10)
const std::string kSpace = "\xE2\x96\x81";  // '▁'

std::string dir_of(const std::string& path) {
  const size_t p = path.find_last_of('/');
  return p == std::string::npos ? "." : path.substr(0, p);
}

// A special token given as "text" or {"content": "text", ...} (tokenizer_config.json).
bool token_text(const json& v, std::string* out) {
  if (v.is_string()) *out = v.get<std::string>();
  else if (v.is_object() && v.contains("content") && v["content"].is_string()) *out = v["content"].get<std::string>();
  else return false;
  return true;
}

// The pre-tokenizer(s) as a flat list with their field paths.
std::vector<std::pair<std::string, const json*>> flatten(const json& j, const std::string& name) {
  std::vector<std::pair<std::string, const json*>> out;
  if (j.is_null()) return out;
  if (j.is_object() && j.value("type", "") == "Sequence") {
    const char* key = j.contains("pretokenizers") ? "pretokenizers" : "normalizers";
    if (j.contains(key) && j[key].is_array())
      for (size_t i = 0; i < j[key].size(); i++) {
        auto sub = flatten(j[key][i], name + "." + key + "[" + std::to_string(i) + "]");
        out.insert(out.end(), sub.begin(), sub.end());
      }
    return out;
  }
  out.emplace_back(name, &j);
  return out;
}

}  // namespace

namespace {

TokenizerSpec read_json(const std::string& path, const std::string& text, bool* ignore_merges) {
  const std::string where = "tokenizer file '" + path + "': ";
  const json j = parse_json_bounded(text, where.substr(0, where.size() - 2));
  if (!j.is_object()) fail(where, "the top level is not a JSON object");
  if (!j.contains("model") || !j["model"].is_object()) fail(where, "field 'model' is missing or not an object");
  const json& model = j["model"];
  const std::string type = model.contains("type") && model["type"].is_string() ? model["type"].get<std::string>() : "BPE";
  if (type != "BPE") fail(where, "field 'model.type' is '", type, "'; only 'BPE' is supported");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(k) && model[k].is_string() && !model[k].get<std::string>().empty())
      fail(where, "field 'model.", k, "' is set; not supported");
  if (!model.contains("vocab") || !model["vocab"].is_object()) fail(where, "field 'model.vocab' is missing or not an object");
  const json& vocab = model["vocab"];
  const json empty_array = json::array();
  const json& added = j.contains("added_tokens") && !j["added_tokens"].is_null() ? j["added_tokens"] : empty_array;
  if (!added.is_array()) fail(where, "field 'added_tokens' is not an array");
  if (vocab.size() > kMaxVocab || added.size() > kMaxVocab)
    fail(where, "field 'model.vocab' has ", vocab.size(), " entries and 'added_tokens' ", added.size(), " (limit ", kMaxVocab, ")");

  // Ids first: bounded by the number of entries before anything is allocated by id.
  const size_t entries = vocab.size() + added.size();
  int64_t max_id = -1;
  for (const auto& [tok, v] : vocab.items()) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= (int64_t)kMaxVocab)
      fail(where, "field 'model.vocab': token '", tok, "' has id ", json_brief(v), ", expected an integer in 0..", kMaxVocab - 1);
    max_id = std::max(max_id, v.get<int64_t>());
  }
  for (size_t i = 0; i < added.size(); i++) {
    const json& a = added[i];
    const std::string f = "added_tokens[" + std::to_string(i) + "]";
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
        !a["content"].is_string())
      fail(where, "field '", f, "' needs an integer 'id' and a string 'content'");
    const int64_t id = a["id"].get<int64_t>();
    if (id < 0 || id >= (int64_t)kMaxVocab) fail(where, "field '", f, ".id' is ", id, ", expected 0..", kMaxVocab - 1);
    max_id = std::max(max_id, id);
  }
  if (max_id < 0) fail(where, "field 'model.vocab' is empty");
  if ((size_t)max_id >= entries)
    fail(where, "field 'model.vocab': id ", max_id, " is beyond the ", entries, " tokens given (ids must be 0..n-1)");

  TokenizerSpec s;
  s.source = path;
  const size_t n = (size_t)max_id + 1;
  s.tokens.resize(n);
  std::vector<char> filled(n, 0);
  s.token_type.assign(n, 1);
  for (const auto& [tok, v] : vocab.items()) {
    const size_t id = (size_t)v.get<int64_t>();
    if (filled[id]) fail(where, "field 'model.vocab': id ", id, " is given to both '", s.tokens[id], "' and '", tok, "'");
    s.tokens[id] = tok;
    filled[id] = 1;
  }
  for (size_t i = 0; i < added.size(); i++) {
    const json& a = added[i];
    const size_t id = (size_t)a["id"].get<int64_t>();
    const std::string content = a["content"].get<std::string>();
    if (filled[id] && s.tokens[id] != content)
      fail(where, "field 'added_tokens[", i, "]': id ", id, " is '", content, "' here but '", s.tokens[id], "' in model.vocab");
    s.tokens[id] = content;
    filled[id] = 1;
    s.token_type[id] = a.value("special", false) ? 3 : 4;
  }
  for (size_t i = 0; i < n; i++)
    if (!filled[i]) fail(where, "field 'model.vocab': id ", i, " has no token (ids must be 0..", n - 1, " without gaps)");

  std::map<std::string, int32_t> index;  // lowest id per string
  for (size_t i = 0; i < n; i++) index.emplace(s.tokens[i], (int32_t)i);
  auto find = [&](const std::string& t) {
    auto it = index.find(t);
    return it == index.end() ? -1 : it->second;
  };

  // Merges: "a b" strings or [a, b] pairs; both sides and the result must be tokens.
  std::vector<std::pair<int32_t, int32_t>> merges;  // (left, right) ids in rank order
  std::vector<int32_t> merged_ids;
  if (model.contains("merges") && !model["merges"].is_null()) {
    const json& ms = model["merges"];
    if (!ms.is_array()) fail(where, "field 'model.merges' is not an array");
    if (ms.size() > kMaxMerges) fail(where, "field 'model.merges' has ", ms.size(), " entries (limit ", kMaxMerges, ")");
    merges.reserve(ms.size());
    for (size_t r = 0; r < ms.size(); r++) {
      const json& m = ms[r];
      const std::string f = "model.merges[" + std::to_string(r) + "]";
      std::string a, b;
      if (m.is_string()) {
        const std::string str = m.get<std::string>();
        const size_t sp = str.find(' ');
        if (sp == std::string::npos) fail(where, "field '", f, "' is '", str, "', expected two tokens separated by a space");
        a = str.substr(0, sp);
        b = str.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        fail(where, "field '", f, "' is neither \"a b\" nor [\"a\", \"b\"]");
      }
      const int32_t ia = find(a), ib = find(b);
      if (ia < 0) fail(where, "field '", f, "': '", a, "' is not in model.vocab");
      if (ib < 0) fail(where, "field '", f, "': '", b, "' is not in model.vocab");
      const int32_t im = find(a + b);
      if (im < 0) fail(where, "field '", f, "': the merge result '", a + b, "' is not in model.vocab");
      merges.emplace_back(ia, ib);
      merged_ids.push_back(im);
    }
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const std::string u = model["unk_token"].get<std::string>();
    s.unk_id = find(u);
    if (s.unk_id < 0) fail(where, "field 'model.unk_token': '", u, "' is not in model.vocab");
    s.token_type[(size_t)s.unk_id] = 2;
  }
  const bool byte_fallback = model.value("byte_fallback", false);
  if (ignore_merges) *ignore_merges = model.value("ignore_merges", false);

  // Which kind: look through the pre-tokenizer and normalizer.
  const json null_json;
  const auto pres = flatten(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : null_json, "pre_tokenizer");
  const auto norms = flatten(j.contains("normalizer") ? j["normalizer"] : null_json, "normalizer");
  bool byte_level = false, metaspace = false, prepend = false, replace_space = false;
  for (const auto& [f, p] : pres) {
    const std::string t = p->is_object() ? p->value("type", "") : "";
    byte_level |= t == "ByteLevel";
    metaspace |= t == "Metaspace";
  }
  for (const auto& [f, p] : norms) {
    const std::string t = p->is_object() ? p->value("type", "") : "";
    if (t == "Prepend" && p->value("prepend", "") == kSpace) prepend = true;
    else if (t == "Replace" && p->value("content", "") == kSpace) replace_space = true;
    else if (!t.empty()) fail(where, "field '", f, "': normalizer '", t, "' is not supported");
  }

  if (byte_level) {
    s.model = "gpt2";
    std::string split;  // the Split regex's splitter name
    bool digits = false, bl_regex = false, bl_prefix = false;
    for (const auto& [f, p] : pres) {
      const std::string t = p->value("type", "");
      if (t == "ByteLevel") {
        bl_regex = p->value("use_regex", true);
        bl_prefix = p->value("add_prefix_space", true);
      } else if (t == "Split") {
        const json* pat = p->contains("pattern") ? &(*p)["pattern"] : nullptr;
        if (!pat || !pat->is_object() || !pat->contains("Regex") || !(*pat)["Regex"].is_string())
          fail(where, "field '", f, ".pattern' is not a {\"Regex\": ...} pattern");
        const std::string re = (*pat)["Regex"].get<std::string>();
        const std::string gpt2 = kGpt2Regex;
        if (re == gpt2 || re + "|\\s+" == gpt2) split = "gpt2";
        else if (re == kLlama3Regex) split = "llama-bpe";
        else fail(where, "field '", f, ".pattern.Regex': unknown regex '", re, "' (known: the GPT-2 and Llama 3 patterns)");
        if (p->value("behavior", "Isolated") != "Isolated" || p->value("invert", false))
          fail(where, "field '", f, "': only behavior 'Isolated' without invert is supported");
      } else if (t == "Digits") {
        if (!p->value("individual_digits", false)) fail(where, "field '", f, "': Digits without individual_digits is not supported");
        digits = true;
      } else {
        fail(where, "field '", f, "': pre-tokenizer '", t, "' is not supported with ByteLevel");
      }
    }
    if (!split.empty() && !bl_regex && !digits) s.pre = split;
    else if (split.empty() && bl_regex) s.pre = digits ? "smollm" : "gpt2";
    else fail(where, "field 'pre_tokenizer': this combination of Split/Digits/ByteLevel(use_regex) is not supported");
    s.add_space_prefix = bl_prefix;
    for (const auto& [ia, ib] : merges) s.merges.push_back(s.tokens[(size_t)ia] + " " + s.tokens[(size_t)ib]);
  } else if (metaspace || byte_fallback || prepend || replace_space) {
    s.model = "llama";
    s.add_space_prefix = prepend;
    for (const auto& [f, p] : pres) {
      const std::string t = p->value("type", "");
      if (t != "Metaspace") fail(where, "field '", f, "': pre-tokenizer '", t, "' is not supported with Metaspace");
      if (p->value("replacement", kSpace) != kSpace) fail(where, "field '", f, ".replacement' is not '▁'");
      if (p->contains("prepend_scheme")) s.add_space_prefix = p->value("prepend_scheme", "always") != "never";
      else s.add_space_prefix = p->value("add_prefix_space", true);
    }
    s.scores.assign(n, kNoMerge);
    for (size_t r = merges.size(); r-- > 0;) s.scores[(size_t)merged_ids[r]] = -(float)r;  // lowest rank wins
    if (byte_fallback)
      for (size_t i = 0; i < n; i++) {
        const std::string& t = s.tokens[i];
        if (s.token_type[i] == 1 && t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') s.token_type[i] = 6;
      }
  } else {
    fail(where, "field 'pre_tokenizer': neither ByteLevel (GPT-2 style) nor Metaspace/byte_fallback "
                "(SentencePiece style); not supported");
  }

  // BOS / EOS / add_bos: tokenizer_config.json, else the post-processor template, else names.
  s.add_bos = s.model == "llama";
  s.add_eos = false;
  bool have_bos = false, have_eos = false, have_add_bos = false;
  const std::string cfg_path = dir_of(path) + "/tokenizer_config.json";
  if (path_exists(cfg_path)) {
    const std::string cw = "tokenizer config '" + cfg_path + "': ";
    const json c = parse_json_bounded(read_file(cfg_path), cw.substr(0, cw.size() - 2));
    if (!c.is_object()) fail(cw, "the top level is not a JSON object");
    auto special = [&](const char* key, int32_t* id, bool* have) {
      std::string name;
      if (!c.contains(key) || c[key].is_null()) return;
      if (!token_text(c[key], &name)) fail(cw, "field '", key, "' is neither a string nor {\"content\": ...}");
      *id = find(name);
      if (*id < 0) fail(cw, "field '", key, "': '", name, "' is not a token of '", path, "'");
      *have = true;
    };
    bool have_pad = false;
    special("bos_token", &s.bos_id, &have_bos);
    special("eos_token", &s.eos_id, &have_eos);
    special("pad_token", &s.pad_id, &have_pad);
    if (c.contains("add_bos_token") && c["add_bos_token"].is_boolean()) {
      s.add_bos = c["add_bos_token"].get<bool>();
      have_add_bos = true;
    }
    if (c.contains("add_eos_token") && c["add_eos_token"].is_boolean()) s.add_eos = c["add_eos_token"].get<bool>();
  }
  if (j.contains("post_processor") && !have_add_bos) {
    std::vector<const json*> procs;
    const json& pp = j["post_processor"];
    if (pp.is_object() && pp.value("type", "") == "Sequence" && pp.contains("processors") && pp["processors"].is_array())
      for (const json& q : pp["processors"]) procs.push_back(&q);
    else procs.push_back(&pp);
    for (const json* q : procs) {
      if (!q->is_object() || q->value("type", "") != "TemplateProcessing" || !q->contains("single")) continue;
      const json& single = (*q)["single"];
      if (!single.is_array() || single.empty()) continue;
      auto special_at = [&](const json& e) -> int32_t {
        if (!e.is_object() || !e.contains("SpecialToken") || !e["SpecialToken"].is_object()) return -1;
        return find(e["SpecialToken"].value("id", ""));
      };
      const int32_t first = special_at(single.front()), last = special_at(single.back());
      s.add_bos = first >= 0;
      if (first >= 0 && !have_bos) s.bos_id = first, have_bos = true;
      if (last >= 0 && single.size() > 1) {
        s.add_eos = true;
        if (!have_eos) s.eos_id = last, have_eos = true;
      }
    }
  }
  for (const char* name : {"<s>", "<|begin_of_text|>", "<|im_start|>", "<|endoftext|>"})
    if (!have_bos && find(name) >= 0) s.bos_id = find(name), have_bos = true;
  for (const char* name : {"</s>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>"})
    if (!have_eos && find(name) >= 0) s.eos_id = find(name), have_eos = true;
  for (int32_t id : {s.bos_id, s.eos_id})
    if (id >= 0 && s.token_type[(size_t)id] == 1) s.token_type[(size_t)id] = 3;
  return s;
}

}  // namespace

TokenizerSpec tokenizer_json_spec(const std::string& path, const std::string& text, bool* ignore_merges) {
  try {
    return read_json(path, text, ignore_merges);
  } catch (const json::exception& e) {  // a field of an unexpected JSON type somewhere
    fail("tokenizer file '", path, "': unexpected JSON structure: ", e.what());
  }
}

// ---- writing -------------------------------------------------------------------------------

namespace {

// A JSON string literal; fails (naming the token) on invalid UTF-8.
std::string jstr(const std::string& s, const std::string& where, size_t id) {
  try {
    return json(s).dump();
  } catch (const json::exception&) {
    fail(where, "token ", id, " is not valid UTF-8; tokenizer.json cannot hold it");
  }
}

json template_processing(const std::string& bos, int32_t bos_id) {
  json st = {{"SpecialToken", {{"id", bos}, {"type_id", 0}}}};
  json a = {{"Sequence", {{"id", "A"}, {"type_id", 0}}}};
  json st1 = {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}};
  json b = {{"Sequence", {{"id", "B"}, {"type_id", 1}}}};
  json special = json::object();
  special[bos] = {{"id", bos}, {"ids", {bos_id}}, {"tokens", {bos}}};
  return {{"type", "TemplateProcessing"}, {"single", {st, a}}, {"pair", {st, a, st1, b}}, {"special_tokens", special}};
}

}  // namespace

std::string tokenizer_json(const TokenizerSpec& spec) {
  const std::string where = "tokenizer.json for '" + spec.source + "': ";
  const Tokenizer check = Tokenizer::from_spec(spec);  // validates sizes, ids, merges, pre
  const bool llama = spec.model == "llama";
  const size_t n = spec.tokens.size();
  std::vector<int32_t> types = spec.token_type;
  if (types.empty())
    for (size_t i = 0; i < n; i++) types.push_back(check.token_type((int32_t)i));
  std::map<std::string, int32_t> index;
  for (size_t i = 0; i < n; i++) {
    auto [it, fresh] = index.emplace(spec.tokens[i], (int32_t)i);
    if (!fresh)
      fail(where, "token ", i, " '", spec.tokens[i], "' repeats token ", it->second,
           "; tokenizer.json's vocab cannot hold both");
  }

  // Merges: given (gpt2), or derived from the scores (llama): each normal token t that can
  // merge (score above the -1e10 floor) is made by every split t = a + b into two tokens,
  // ranked by descending score of t (then id, then split position).
  std::vector<std::pair<std::string, std::string>> merges;
  if (llama) {
    struct M {
      float score;
      int32_t id;
      size_t cut;
    };
    std::vector<M> ms;
    for (size_t i = 0; i < n; i++) {
      const std::string& t = spec.tokens[i];
      if (types[i] != 1 || !(spec.scores[i] > -1e10f)) continue;
      for (size_t cut = 1; cut < t.size(); cut++) {
        if (((unsigned char)t[cut] & 0xC0) == 0x80) continue;  // codepoint boundaries only
        if (index.count(t.substr(0, cut)) && index.count(t.substr(cut))) ms.push_back({spec.scores[i], (int32_t)i, cut});
      }
    }
    std::sort(ms.begin(), ms.end(), [](const M& a, const M& b) {
      if (a.score != b.score) return a.score > b.score;
      return a.id != b.id ? a.id < b.id : a.cut < b.cut;
    });
    for (const M& m : ms) {
      const std::string& t = spec.tokens[(size_t)m.id];
      merges.emplace_back(t.substr(0, m.cut), t.substr(m.cut));
    }
  } else {
    for (const std::string& m : spec.merges) {
      // from_spec accepted it: the first space with a token on both sides splits it.
      for (size_t sp = m.find(' '); sp != std::string::npos; sp = m.find(' ', sp + 1))
        if (index.count(m.substr(0, sp)) && index.count(m.substr(sp + 1))) {
          merges.emplace_back(m.substr(0, sp), m.substr(sp + 1));
          break;
        }
    }
  }

  json doc = json::object();
  // Added tokens: unknown, control and user-defined ones, as HF lists them.
  json added = json::array();
  for (size_t i = 0; i < n; i++) {
    if (types[i] != 2 && types[i] != 3 && types[i] != 4) continue;
    added.push_back({{"id", i}, {"content", spec.tokens[i]}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", types[i] == 4}, {"special", types[i] != 4}});
  }
  const bool bos_template = spec.add_bos && spec.bos_id >= 0;
  const std::string bos = spec.bos_id >= 0 ? spec.tokens[(size_t)spec.bos_id] : "";
  json norm, pre, post, dec;
  if (llama) {
    // Llama 2's own tokenizer.json form: the normalizer always prepends '▁' to each stretch
    // (Metaspace would skip it when the text starts with a space, SentencePiece does not).
    norm = {{"type", "Sequence"}, {"normalizers", json::array()}};
    if (spec.add_space_prefix) norm["normalizers"].push_back({{"type", "Prepend"}, {"prepend", kSpace}});
    norm["normalizers"].push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}});
    post = bos_template ? template_processing(bos, spec.bos_id) : json(nullptr);
    dec = {{"type", "Sequence"},
           {"decoders",
            {{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
             {{"type", "ByteFallback"}},
             {{"type", "Fuse"}}}}};
    if (spec.add_space_prefix)
      dec["decoders"].push_back({{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  } else {
    json bl = {{"type", "ByteLevel"}, {"add_prefix_space", spec.add_space_prefix}, {"trim_offsets", true}, {"use_regex", true}};
    PreSplit ps;
    pre_split_from_name(spec.pre, &ps);
    if (ps == PreSplit::gpt2) {
      pre = bl;
    } else if (ps == PreSplit::smollm) {
      pre = {{"type", "Sequence"}, {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, bl}}};
    } else {
      bl["use_regex"] = false;
      pre = {{"type", "Sequence"},
             {"pretokenizers",
              {{{"type", "Split"}, {"pattern", {{"Regex", kLlama3Regex}}}, {"behavior", "Isolated"}, {"invert", false}},
               bl}}};
    }
    post = bos_template ? template_processing(bos, spec.bos_id)
                        : json{{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
    dec = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  }

  // The vocab and merges are written by hand: large, and in id / rank order.
  std::string out = "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n";
  out += "  \"added_tokens\": " + added.dump() + ",\n";
  out += "  \"normalizer\": " + norm.dump() + ",\n";
  out += "  \"pre_tokenizer\": " + pre.dump() + ",\n";
  out += "  \"post_processor\": " + post.dump() + ",\n";
  out += "  \"decoder\": " + dec.dump() + ",\n";
  out += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n";
  out += "    \"unk_token\": " + (spec.unk_id >= 0 ? jstr(spec.tokens[(size_t)spec.unk_id], where, (size_t)spec.unk_id) : "null") + ",\n";
  out += "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n";
  out += std::string("    \"fuse_unk\": ") + (llama ? "true" : "false") + ",\n";
  out += std::string("    \"byte_fallback\": ") + (llama ? "true" : "false") + ",\n";
  out += std::string("    \"ignore_merges\": ") + (!llama && spec.pre == "llama-bpe" ? "true" : "false") + ",\n";
  out += "    \"vocab\": {";
  for (size_t i = 0; i < n; i++) {
    out += i ? ",\n      " : "\n      ";
    out += jstr(spec.tokens[i], where, i) + ": " + std::to_string(i);
  }
  out += "\n    },\n    \"merges\": [";
  for (size_t r = 0; r < merges.size(); r++) {
    out += r ? ",\n      " : "\n      ";
    const size_t ia = (size_t)index[merges[r].first], ib = (size_t)index[merges[r].second];
    out += "[" + jstr(merges[r].first, where, ia) + ", " + jstr(merges[r].second, where, ib) + "]";
  }
  out += "\n    ]\n  }\n}\n";
  return out;
}

}  // namespace qf
