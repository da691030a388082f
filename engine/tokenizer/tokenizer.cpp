// qforge — the Tokenizer core, the llama2.c tokenizer.bin loader and the llama (SentencePiece
// scores) kind's encode. The gpt2 kind lives in tokenizer_bpe.cpp, specs in tokenizer_spec.cpp,
// tokenizer.json in tokenizer_json.cpp.
#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "core/io.h"
#include "tokenizer/bpe_merge.h"

namespace qf {

namespace {

// A piece longer than this is not a real vocabulary entry but a corrupt header.
constexpr int32_t kMaxPieceLen = 1 << 20;
constexpr int32_t kMinVocab = 259;  // <unk>, <s>, </s> and 256 byte tokens

// llama2.c starts its search with best_score = -1e10 and uses '>', so a merge whose
// score is not above -1e10 never happens. Kept for exact agreement.
constexpr float kMergeFloor = -1e10f;

std::string byte_piece(int b) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", b);
  return buf;
}

// tokenizer.json starts with '{' and then (after spaces) a key or '}'; a tokenizer.bin whose
// max_token_length happens to be 123 ('{') is followed by zero bytes.
bool looks_like_json(const std::string& d) {
  size_t i = 0;
  auto skip = [&]() {
    while (i < d.size() && (d[i] == ' ' || d[i] == '\t' || d[i] == '\n' || d[i] == '\r')) i++;
  };
  skip();
  if (i >= d.size() || d[i] != '{') return false;
  i++;
  skip();
  return i < d.size() && (d[i] == '"' || d[i] == '}');
}

// The merge priority of a pair whose merged token has this score: score high first, as
// bpe_merge merges the smallest priority first.
uint32_t score_priority(float score) {
  if (score == 0.0f) score = 0.0f;  // -0 ties with +0 under llama2.c's '>', so give them one key
  uint32_t bits;
  std::memcpy(&bits, &score, 4);
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // float order as unsigned order
  return ~bits;
}

// Open-addressing cache (a, b) -> merged id or -1 for one encode() call: text repeats the
// same few thousand pairs, and a string concat + hash per pair dominated the run time.
class PairCache {
 public:
  PairCache() : keys_(1024, kEmpty), vals_(1024) {}
  // Returns a pointer to the slot for (a, b); *found says whether it was filled.
  int32_t* slot(int32_t a, int32_t b, bool* found) {
    if (used_ * 2 >= keys_.size()) grow();
    const uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = pos(key);
    while (keys_[i] != kEmpty && keys_[i] != key) i = (i + 1) & (keys_.size() - 1);
    *found = keys_[i] == key;
    if (!*found) {
      keys_[i] = key;
      used_++;
    }
    return &vals_[i];
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;  // ids are < 2^31, so never a real key
  // Fibonacci hashing: the top bits of the product depend on every bit of the key.
  size_t pos(uint64_t key) const { return (size_t)((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  void grow() {
    std::vector<uint64_t> keys(keys_.size() * 2, kEmpty);
    shift_--;
    std::vector<int32_t> vals(keys.size());
    keys.swap(keys_);
    vals.swap(vals_);
    for (size_t j = 0; j < keys.size(); j++) {
      if (keys[j] == kEmpty) continue;
      size_t i = pos(keys[j]);
      while (keys_[i] != kEmpty) i = (i + 1) & (keys_.size() - 1);
      keys_[i] = keys[j];
      vals_[i] = vals[j];
    }
  }
  std::vector<uint64_t> keys_;
  std::vector<int32_t> vals_;
  size_t used_ = 0;
  int shift_ = 64 - 10;  // log2 of the table size is 64 - shift_
};

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  const std::string data = read_file(path);
  if (looks_like_json(data)) {
    bool ignore_merges = false;
    Tokenizer t = from_spec(tokenizer_json_spec(path, data, &ignore_merges));
    t.ignore_merges_ = ignore_merges;  // the file says; from_spec's default follows llama.cpp
    t.format_ = "tokenizer.json";
    return t;
  }
  return load_bin(path, data);
}

Tokenizer Tokenizer::load_bin(const std::string& path, const std::string& data) {
  const size_t size = data.size();
  const char* p = data.data();
  auto where = [&]() { return "tokenizer file '" + path + "': "; };

  if (size == 0) fail(where(), "file is empty");
  if (size < 4) fail(where(), "truncated header (needs 4 bytes for max_token_length, ", size, " present)");
  int32_t max_len;
  std::memcpy(&max_len, p, 4);
  if (max_len <= 0 || max_len > kMaxPieceLen)
    fail(where(), "bad max_token_length ", max_len, " in header (expected 1..", kMaxPieceLen, ")");

  Tokenizer t;
  t.path_ = path;
  t.format_ = "llama2c";
  size_t off = 4;
  while (off < size) {
    const size_t idx = t.vocab_.size();
    size_t left = size - off;
    if (left < 8) fail(where(), "truncated at token ", idx, " (needs 8 bytes for score and length, ", left, " left)");
    float score;
    int32_t len;
    std::memcpy(&score, p + off, 4);
    std::memcpy(&len, p + off + 4, 4);
    off += 8;
    left -= 8;
    if (len < 0) fail(where(), "token ", idx, " has negative length ", len);
    if (len > max_len) fail(where(), "token ", idx, " has length ", len, " > max_token_length ", max_len);
    if ((size_t)len > left) fail(where(), "truncated at token ", idx, " (needs ", len, " bytes, ", left, " left)");
    if (!std::isfinite(score)) fail(where(), "token ", idx, " has non-finite score ", score);
    t.vocab_.emplace_back(p + off, (size_t)len);
    t.scores_.push_back(score);
    off += (size_t)len;
  }

  const int32_t n = (int32_t)t.vocab_.size();
  if (n == 0) fail(where(), "contains no tokens (only the header)");
  if (n < kMinVocab)
    fail(where(), "has only ", n, " tokens, needs at least ", kMinVocab,
         " (<unk>, <s>, </s> and the 256 byte tokens <0x00>..<0xFF>)");

  // Duplicate strings keep the lowest id (emplace does not overwrite).
  t.index_.reserve((size_t)n * 2);
  for (int32_t i = 0; i < n; i++) t.index_.emplace(t.vocab_[i], i);

  if (t.vocab_[3] != "<0x00>")
    fail(where(), "token 3 is '", t.vocab_[3], "', expected the first byte token '<0x00>'");
  if (t.lookup("<0x00>") != 3)
    fail(where(), "byte token '<0x00>' first appears at id ", t.lookup("<0x00>"), ", expected 3");
  for (int b = 0; b < 256; b++) {
    const std::string want = byte_piece(b);
    if (t.vocab_[3 + b] != want)
      fail(where(), "token ", 3 + b, " is '", t.vocab_[3 + b], "', expected byte token '", want, "'");
  }
  // llama2.c's fixed layout: 0 <unk>, 1 BOS, 2 EOS, 3..258 bytes. Its special tokens are
  // never matched in the text (llama2.c did not), so specials_ stays empty.
  t.types_.assign((size_t)n, 1);
  t.types_[0] = 2;
  t.types_[1] = t.types_[2] = 3;
  t.byte_of_.assign((size_t)n, -1);
  for (int b = 0; b < 256; b++) {
    t.types_[3 + b] = 6;
    t.byte_id_[b] = 3 + b;
    t.byte_of_[3 + b] = (int16_t)b;
  }
  t.bos_ = 1;
  t.eos_ = 2;
  t.unk_ = 0;
  t.special_start_.fill(0);
  return t;
}

int32_t Tokenizer::lookup(const std::string& s) const {
  auto it = index_.find(s);
  return it == index_.end() ? -1 : it->second;
}

// Special tokens (unknown, control, user-defined) by first byte, longest first, so the
// scan tries at most the few that start with the byte at hand.
void Tokenizer::index_specials() {
  specials_.clear();
  for (int32_t i = 0; i < vocab_size(); i++) {
    const int32_t ty = types_[i];
    if (ty != 2 && ty != 3 && ty != 4) continue;
    const std::string& s = kind_ == Kind::gpt2 ? raw_[i] : vocab_[i];
    if (!s.empty()) specials_.emplace_back(s, i);
  }
  std::stable_sort(specials_.begin(), specials_.end(), [](const auto& a, const auto& b) {
    if (a.first[0] != b.first[0]) return (unsigned char)a.first[0] < (unsigned char)b.first[0];
    return a.first.size() > b.first.size();
  });
  special_start_.fill(0);
  for (const auto& sp : specials_) special_start_[(unsigned char)sp.first[0] + 1]++;
  for (int b = 0; b < 256; b++) special_start_[b + 1] += special_start_[b];
}

std::vector<Tokenizer::Section> Tokenizer::sections(std::string_view text) const {
  std::vector<Section> out;
  const size_t n = text.size();
  size_t start = 0;
  for (size_t i = 0; i < n && !specials_.empty();) {
    const unsigned char c = (unsigned char)text[i];
    int32_t hit = -1;
    size_t len = 0;
    for (uint32_t k = special_start_[c]; k < special_start_[c + 1]; k++) {
      const std::string& s = specials_[k].first;
      if (s.size() <= n - i && std::memcmp(text.data() + i, s.data(), s.size()) == 0) {
        hit = specials_[k].second;
        len = s.size();
        break;
      }
    }
    if (hit < 0) {
      i++;
      continue;
    }
    if (i > start) out.push_back({start, i, -1});
    out.push_back({i, i + len, hit});
    i += len;
    start = i;
  }
  if (start < n) out.push_back({start, n, -1});
  return out;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool bos, bool eos) const {
  // Symbol indices, and the per-symbol version counters (at most 2 bumps per merge), fit 32 bits.
  if (text.size() > (size_t)INT32_MAX - 8)
    fail("tokenizer '", path_, "': encode: text of ", text.size(), " bytes is too long (max ", INT32_MAX - 8, ")");
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 2 + 3);
  if (bos && add_bos_ && bos_ >= 0) ids.push_back(bos_);
  const std::vector<Section> secs = sections(text);
  if (kind_ == Kind::gpt2) {
    encode_bpe(text, secs, ids);
  } else {
    for (const Section& s : secs) {
      if (s.special >= 0) ids.push_back(s.special);
      else encode_spm(std::string_view(text).substr(s.begin, s.end - s.begin), ids);
    }
  }
  if (eos && eos_ >= 0) ids.push_back(eos_);
  return ids;
}

void Tokenizer::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 1);
  std::string buf;  // reused for every lookup: no allocation per codepoint or pair
  auto push_bytes = [&](const char* s, size_t n) {
    for (size_t i = 0; i < n; i++) {
      const int32_t id = byte_id_[(unsigned char)s[i]];
      if (id >= 0) {
        ids.push_back(id);
      } else {  // no byte tokens: SentencePiece's <unk> (one per codepoint)
        if (unk_ < 0) fail("tokenizer '", path_, "': encode: byte 0x", std::hex, (int)(unsigned char)s[i], std::dec,
                           " has no byte token and the vocabulary has no unknown token");
        ids.push_back(unk_);
        break;
      }
    }
  };

  // The dummy prefix of SentencePiece's add_dummy_prefix, on every stretch between special
  // tokens (as llama.cpp, and HF's Prepend("▁") normalizer, which runs on each stretch).
  if (!text.empty() && add_space_prefix_) {
    const int32_t sp = lookup(" ");
    if (sp >= 0) ids.push_back(sp);
    else push_bytes(" ", 1);
  }

  // Group a byte with up to 3 following continuation bytes (llama2.c's UTF-8 splitting,
  // which also accepts stray continuation bytes without a lead).
  const size_t n = text.size();
  PairCache cp_cache;  // (length, bytes) of a codepoint -> id or -1
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    while (j < n && j - i < 4 && ((unsigned char)text[j] & 0xC0) == 0x80) j++;
    uint32_t packed = 0;
    std::memcpy(&packed, text.data() + i, j - i);
    bool found;
    int32_t* id = cp_cache.slot((int32_t)(j - i), (int32_t)packed, &found);
    if (!found) {
      buf.assign(text.data() + i, j - i);
      *id = lookup(buf);
      // Special tokens are matched before (or, in tokenizer.bin, never): not as text.
      if (*id >= 0 && types_[*id] != 1 && types_[*id] != 6 && types_[*id] != 0) *id = -1;
    }
    if (*id >= 0) ids.push_back(*id);
    else push_bytes(text.data() + i, j - i);
    i = j;
  }

  // Merge by score (bpe_merge.h); a pair merges when its concatenation is a vocab token above
  // the floor.
  if (ids.size() < 2) {
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }
  PairCache cache;
  bpe_merge(ids.data(), (int32_t)ids.size(), [&](int32_t a, int32_t b, uint32_t* priority, int32_t* merged) {
    bool found;
    int32_t* slot = cache.slot(a, b, &found);
    if (!found) {
      buf.assign(vocab_[a]);
      buf += vocab_[b];
      const int32_t id = lookup(buf);
      *slot = (id >= 0 && scores_[id] > kMergeFloor) ? id : -1;
    }
    if (*slot < 0) return false;
    *merged = *slot;
    *priority = score_priority(scores_[*slot]);
    return true;
  }, out);
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size())
      fail("tokenizer '", path_, "': decode: token id ", id, " out of range (vocab size ", vocab_size(), ")");
    if (types_[id] == 3) continue;  // BOS, EOS and other control tokens
    if (kind_ == Kind::gpt2) {
      out += raw_[id];
      continue;
    }
    std::string_view s;
    char byte;
    if (byte_of_[id] >= 0) {
      byte = (char)byte_of_[id];
      s = std::string_view(&byte, 1);
    } else {
      s = vocab_[id];
    }
    // The encoder's dummy-prefix space sits at the start of the first piece.
    if (first && add_space_prefix_ && !s.empty() && s[0] == ' ') s.remove_prefix(1);
    first = false;
    out += s;
  }
  return out;
}

std::string Tokenizer::piece(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    fail("tokenizer '", path_, "': token id ", id, " out of range (vocab size ", vocab_size(), ")");
  return vocab_[id];
}

float Tokenizer::score(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    fail("tokenizer '", path_, "': token id ", id, " out of range (vocab size ", vocab_size(), ")");
  return scores_.empty() ? 0.0f : scores_[id];
}

int32_t Tokenizer::token_type(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    fail("tokenizer '", path_, "': token id ", id, " out of range (vocab size ", vocab_size(), ")");
  return types_[id];
}

}  // namespace qf
