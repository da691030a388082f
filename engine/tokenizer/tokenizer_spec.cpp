// qforge — Tokenizer <-> TokenizerSpec: validation of a spec (GGUF metadata, tokenizer.json)
// and building either kind from it; spec() for exports.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace qf {

namespace {

constexpr size_t kMaxVocab = 1 << 24;   // far above any real vocabulary (Llama 3: 128256)
constexpr size_t kMaxMerges = 1 << 24;
constexpr size_t kMaxTokenLen = 1 << 16;
const std::string kSpace = "\xE2\x96\x81";  // '▁', SentencePiece's space

// Linear in |s| (replacing in place would move the tail once per hit).
std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  out.reserve(s.size());
  size_t at = 0;
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, at)) {
    out.append(s, at, p - at);
    out += to;
    at = p + from.size();
  }
  out.append(s, at, std::string::npos);
  return out;
}

// A byte trie over the vocabulary (forward, or over the reversed tokens), so that one walk
// along a merge string tells, for every cut, whether the part before (after) it is a token.
// Without it, a merge of N spaces costs N lookups of O(N) bytes each.
struct Trie {
  std::unordered_map<uint64_t, uint32_t> edges;  // (node << 8 | byte) -> child
  std::vector<char> terminal{0};
  void insert(const std::string& t, bool reversed) {
    uint32_t node = 0;
    for (size_t k = 0; k < t.size(); k++) {
      const unsigned char c = (unsigned char)t[reversed ? t.size() - 1 - k : k];
      auto [it, fresh] = edges.emplace(((uint64_t)node << 8) | c, (uint32_t)terminal.size());
      if (fresh) terminal.push_back(0);
      node = it->second;
    }
    terminal[node] = 1;
  }
  // ok[i] = 1 when m[0, i) (forward) or m[i + 1, end) (reversed) is a token, for the cuts i
  // where m[i] is a space.
  void mark(const std::string& m, bool reversed, std::vector<char>* ok) const {
    const size_t n = m.size();
    uint32_t node = 0;
    for (size_t k = 0; k < n; k++) {
      const size_t i = reversed ? n - 1 - k : k;  // the cut at i needs the k bytes walked so far
      if (m[i] == ' ' && terminal[node]) (*ok)[i] = 1;
      auto it = edges.find(((uint64_t)node << 8) | (unsigned char)m[i]);
      if (it == edges.end()) return;
      node = it->second;
    }
  }
};

// "<0xAB>" -> 0xAB, or -1.
int parse_byte_token(const std::string& s) {
  if (s.size() != 6 || s.compare(0, 3, "<0x") != 0 || s[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; k++) {
    const char c = s[k];
    v *= 16;
    if (c >= '0' && c <= '9') v += c - '0';
    else if (c >= 'A' && c <= 'F') v += c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') v += c - 'a' + 10;
    else return -1;
  }
  return v;
}

}  // namespace

Tokenizer Tokenizer::from_spec(const TokenizerSpec& s) {
  const std::string where = "tokenizer from '" + s.source + "': ";
  Tokenizer t;
  if (s.model == "llama") t.kind_ = Kind::llama;
  else if (s.model == "gpt2") t.kind_ = Kind::gpt2;
  else fail(where, "model '", s.model, "' is not supported (expected 'llama' or 'gpt2')");
  t.path_ = s.source;
  t.format_ = "spec";

  const size_t n = s.tokens.size();
  if (n == 0) fail(where, "has no tokens");
  if (n > kMaxVocab) fail(where, "has ", n, " tokens, more than the limit ", kMaxVocab);
  if (!s.scores.empty() && s.scores.size() != n)
    fail(where, "has ", s.scores.size(), " scores for ", n, " tokens");
  if (s.scores.empty() && t.kind_ == Kind::llama) fail(where, "model 'llama' needs one score per token, none given");
  if (!s.token_type.empty() && s.token_type.size() != n)
    fail(where, "has ", s.token_type.size(), " token types for ", n, " tokens");
  if (s.merges.size() > kMaxMerges) fail(where, "has ", s.merges.size(), " merges, more than the limit ", kMaxMerges);
  auto check_id = [&](const char* name, int32_t id) {
    if (id < -1 || id >= (int64_t)n) fail(where, name, " ", id, " is out of range (", n, " tokens)");
  };
  check_id("bos_id", s.bos_id);
  check_id("eos_id", s.eos_id);
  check_id("unk_id", s.unk_id);
  check_id("pad_id", s.pad_id);
  for (size_t i = 0; i < n; i++) {
    if (s.tokens[i].size() > kMaxTokenLen)
      fail(where, "token ", i, " is ", s.tokens[i].size(), " bytes long (limit ", kMaxTokenLen, ")");
    if (!s.scores.empty() && !std::isfinite(s.scores[i])) fail(where, "token ", i, " has non-finite score ", s.scores[i]);
    if (!s.token_type.empty() && (s.token_type[i] < 0 || s.token_type[i] > 6))
      fail(where, "token ", i, " has token type ", s.token_type[i], " (expected 0..6)");
  }

  t.bos_ = s.bos_id;
  t.eos_ = s.eos_id;
  t.unk_ = s.unk_id;
  t.pad_ = s.pad_id;
  t.add_bos_ = s.add_bos;
  t.add_eos_ = s.add_eos;
  t.add_space_prefix_ = s.add_space_prefix;

  // Types: as given (0, undefined, reads as normal), else inferred from the names and ids.
  t.types_.resize(n);
  for (size_t i = 0; i < n; i++) {
    int32_t ty = s.token_type.empty() ? 1 : s.token_type[i];
    if (ty == 0) ty = 1;
    if (s.token_type.empty()) {
      if ((int32_t)i == s.unk_id) ty = 2;
      else if ((int32_t)i == s.bos_id || (int32_t)i == s.eos_id) ty = 3;
      else if (t.kind_ == Kind::llama && parse_byte_token(s.tokens[i]) >= 0) ty = 6;
    }
    t.types_[i] = ty;
  }

  t.vocab_.resize(n);
  for (size_t i = 0; i < n; i++)
    t.vocab_[i] = t.kind_ == Kind::llama ? replace_all(s.tokens[i], kSpace, " ") : s.tokens[i];
  t.index_.reserve(n * 2);
  for (size_t i = 0; i < n; i++) t.index_.emplace(t.vocab_[i], (int32_t)i);  // duplicates: lowest id
  t.byte_id_.fill(-1);

  if (t.kind_ == Kind::llama) {
    t.scores_ = s.scores;
    t.byte_of_.assign(n, -1);
    for (size_t i = 0; i < n; i++) {
      if (t.types_[i] != 6) continue;
      const int b = parse_byte_token(s.tokens[i]);
      if (b < 0) fail(where, "token ", i, " has type 6 (byte) but is '", s.tokens[i], "', expected <0xXX>");
      if (t.byte_id_[b] < 0) t.byte_id_[b] = (int32_t)i;
      t.byte_of_[i] = (int16_t)b;
    }
    for (int b = 0; b < 256; b++) {
      if (t.byte_id_[b] >= 0 || t.unk_ >= 0) continue;
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      fail(where, "has no byte token ", name, " and no unknown token (unk_id) to fall back to");
    }
    t.index_specials();
    return t;
  }

  // gpt2: what each token stands for. Normal tokens are byte-level text; added tokens
  // (control, user-defined) are literal text, as llama.cpp's converter stores them.
  t.scores_ = s.scores.empty() ? std::vector<float>(n, 0.0f) : s.scores;
  t.raw_.resize(n);
  for (size_t i = 0; i < n; i++) {
    const int32_t ty = t.types_[i];
    if (ty == 3 || ty == 4 || !gpt2_unicode_to_bytes(s.tokens[i], &t.raw_[i])) t.raw_[i] = s.tokens[i];
  }
  for (int b = 0; b < 256; b++) {
    std::string ch;
    utf8_append(ch, gpt2_byte_to_cp((uint8_t)b));
    t.byte_id_[b] = t.lookup(ch);
  }
  for (size_t i = 0; i < n; i++)
    if (t.types_[i] == 1) t.raw_index_.emplace(t.raw_[i], (int32_t)i);

  if (!pre_split_from_name(s.pre, &t.pre_))
    fail(where, "pre-tokenizer '", s.pre, "' is not supported (known: gpt2, llama-bpe, smollm)");
  t.pre_name_ = s.pre;
  t.ignore_merges_ = t.pre_ == PreSplit::llama3;  // as llama.cpp and Llama 3's tokenizer.json

  // Merges "left right", rank = position. A token may contain spaces only in odd
  // vocabularies; then the split is the first space with a token on both sides.
  t.merges_.reserve(s.merges.size() * 2);
  t.merge_list_ = s.merges;
  std::string both;
  std::unique_ptr<Trie> fwd, bwd;  // built on the first merge with several spaces
  std::vector<char> pre_ok, suf_ok;
  for (size_t r = 0; r < s.merges.size(); r++) {
    const std::string& m = s.merges[r];
    int32_t a = -1, b = -1;
    const size_t sp1 = m.find(' ');
    if (sp1 != std::string::npos && m.find(' ', sp1 + 1) == std::string::npos) {
      const int32_t x = t.lookup(m.substr(0, sp1)), y = t.lookup(m.substr(sp1 + 1));
      if (x >= 0 && y >= 0) a = x, b = y;
    } else if (sp1 != std::string::npos) {
      if (!fwd) {
        fwd = std::make_unique<Trie>();
        bwd = std::make_unique<Trie>();
        for (const std::string& v : t.vocab_) fwd->insert(v, false), bwd->insert(v, true);
      }
      pre_ok.assign(m.size(), 0);
      suf_ok.assign(m.size(), 0);
      fwd->mark(m, false, &pre_ok);
      bwd->mark(m, true, &suf_ok);
      for (size_t sp = sp1; sp < m.size(); sp++)
        if (pre_ok[sp] && suf_ok[sp]) {
          a = t.lookup(m.substr(0, sp));
          b = t.lookup(m.substr(sp + 1));
          break;
        }
    }
    if (a < 0) {
      const size_t sp = m.find(' ');
      if (sp == std::string::npos) fail(where, "merge ", r, " '", m, "' is not two tokens separated by a space");
      const std::string l = m.substr(0, sp), rt = m.substr(sp + 1);
      fail(where, "merge ", r, " '", m, "' refers to unknown token '", t.lookup(l) < 0 ? l : rt, "'");
    }
    both = t.vocab_[a] + t.vocab_[b];
    const int32_t merged = t.lookup(both);
    if (merged < 0) fail(where, "merge ", r, " '", m, "' makes '", both, "', which is not a token");
    t.merges_.emplace(((uint64_t)(uint32_t)a << 32) | (uint32_t)b, ((uint64_t)r << 32) | (uint32_t)merged);
  }
  t.index_specials();
  return t;
}

TokenizerSpec Tokenizer::spec() const {
  TokenizerSpec s;
  s.model = kind_ == Kind::llama ? "llama" : "gpt2";
  s.source = path_;
  const size_t n = vocab_.size();
  s.tokens.resize(n);
  for (size_t i = 0; i < n; i++) {
    if (kind_ == Kind::gpt2) {
      s.tokens[i] = vocab_[i];
      continue;
    }
    std::string tok = vocab_[i];
    // llama2.c wrote BOS/EOS as "\n<s>\n" / "\n</s>\n"; GGUF and HF call them "<s>" / "</s>".
    if (format_ == "llama2c" && types_[i] == 3) {
      while (!tok.empty() && tok.front() == '\n') tok.erase(0, 1);
      while (!tok.empty() && tok.back() == '\n') tok.pop_back();
    }
    s.tokens[i] = replace_all(tok, " ", kSpace);
  }
  if (kind_ == Kind::llama) s.scores = scores_;
  s.token_type = types_;
  s.merges = merge_list_;
  if (kind_ == Kind::gpt2) s.pre = pre_name_.empty() ? pre_split_name(pre_) : pre_name_;
  s.bos_id = bos_;
  s.eos_id = eos_;
  s.unk_id = unk_;
  s.pad_id = pad_;
  s.add_bos = add_bos_;
  s.add_eos = add_eos_;
  s.add_space_prefix = add_space_prefix_;
  return s;
}

}  // namespace qf
