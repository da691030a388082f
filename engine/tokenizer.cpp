// qforge — llama2.c tokenizer.bin loader and the BPE encode/decode of llama2.c.
#include "tokenizer.h"

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <queue>

#include "error.h"
#include "io.h"

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

// One symbol of the working sequence: a doubly-linked list over the initial tokens.
struct Sym {
  int32_t id;    // current token id; -1 once merged into its left neighbour
  int32_t prev;  // index of the previous live symbol, -1 at the head
  int32_t next;  // index of the next live symbol, -1 at the tail
  uint32_t ver;  // bumped whenever the pair (this, next) changes: heap entries carry it
};

// A candidate merge of symbol `left` with its next symbol. key orders the heap: score
// high, then left low. The list keeps the initial order, so "smallest left index" is
// exactly llama2.c's "leftmost pair".
struct Cand {
  uint64_t key;
  uint32_t ver;    // sym[left].ver when pushed; any other value means stale
  int32_t merged;  // id of the merged token
  int32_t left() const { return (int32_t)(0xFFFFFFFFu - (uint32_t)key); }
  bool operator<(const Cand& o) const { return key < o.key; }
};

Cand make_cand(float score, int32_t left, uint32_t ver, int32_t merged) {
  if (score == 0.0f) score = 0.0f;  // -0 ties with +0 under llama2.c's '>', so give them one key
  uint32_t bits;
  std::memcpy(&bits, &score, 4);
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // float order as unsigned order
  return Cand{((uint64_t)bits << 32) | (0xFFFFFFFFu - (uint32_t)left), ver, merged};
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
  t.byte_base_ = t.lookup("<0x00>");
  if (t.byte_base_ != 3)
    fail(where(), "byte token '<0x00>' first appears at id ", t.byte_base_, ", expected 3");
  for (int b = 0; b < 256; b++) {
    const std::string want = byte_piece(b);
    if (t.vocab_[t.byte_base_ + b] != want)
      fail(where(), "token ", t.byte_base_ + b, " is '", t.vocab_[t.byte_base_ + b], "', expected byte token '",
           want, "'");
  }
  return t;
}

int32_t Tokenizer::lookup(const std::string& s) const {
  auto it = index_.find(s);
  return it == index_.end() ? -1 : it->second;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool bos, bool eos) const {
  // Symbol indices, and the per-symbol version counters (at most 2 bumps per merge), fit 32 bits.
  if (text.size() > (size_t)INT32_MAX - 8)
    fail("tokenizer '", path_, "': encode: text of ", text.size(), " bytes is too long (max ", INT32_MAX - 8, ")");
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 3);
  if (bos) ids.push_back(bos_id());

  std::string buf;  // reused for every lookup: no allocation per codepoint or pair
  auto push_bytes = [&](const char* s, size_t n) {
    for (size_t i = 0; i < n; i++) ids.push_back(byte_base_ + (unsigned char)s[i]);
  };

  if (!text.empty()) {
    const int32_t sp = lookup(" ");  // dummy prefix, as SentencePiece's add_dummy_prefix
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
      buf.assign(text, i, j - i);
      *id = lookup(buf);
    }
    if (*id >= 0) ids.push_back(*id);
    else push_bytes(text.data() + i, j - i);
    i = j;
  }

  // Merge with a heap of candidate pairs over a linked list; stale entries are skipped.
  const int32_t m = (int32_t)ids.size();
  if (m >= 2) {
    std::vector<Sym> sym(m);
    for (int32_t i = 0; i < m; i++) sym[i] = Sym{ids[i], i - 1, i + 1 < m ? i + 1 : -1, 0};

    PairCache cache;
    // The candidate for the pair (l, l.next), if its concatenation is a vocab token above the floor.
    auto pair_cand = [&](int32_t l, Cand* out) {
      if (l < 0 || sym[l].next < 0) return false;
      const int32_t a = sym[l].id, b = sym[sym[l].next].id;
      bool found;
      int32_t* merged = cache.slot(a, b, &found);
      if (!found) {
        buf.assign(vocab_[a]);
        buf += vocab_[b];
        const int32_t id = lookup(buf);
        *merged = (id >= 0 && scores_[id] > kMergeFloor) ? id : -1;
      }
      if (*merged < 0) return false;
      *out = make_cand(scores_[*merged], l, sym[l].ver, *merged);
      return true;
    };

    std::vector<Cand> initial;  // heapified in O(n) rather than pushed one by one
    initial.reserve((size_t)m);
    for (int32_t i = 0; i + 1 < m; i++) {
      Cand c;
      if (pair_cand(i, &c)) initial.push_back(c);
    }
    std::priority_queue<Cand> heap(std::less<Cand>{}, std::move(initial));

    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      const int32_t l = c.left();
      Sym& L = sym[l];
      if (L.id < 0 || L.ver != c.ver) continue;
      // Merge L with its next symbol R. The pairs (L, R), (R, R.next) and (P, L) change.
      const int32_t r = L.next;
      Sym& R = sym[r];
      L.id = c.merged;
      L.next = R.next;
      if (R.next >= 0) sym[R.next].prev = l;
      R.id = -1;
      L.ver++;
      if (L.prev >= 0) sym[L.prev].ver++;
      Cand nc;
      if (pair_cand(L.prev, &nc)) heap.push(nc);
      if (pair_cand(l, &nc)) heap.push(nc);
    }

    // Symbol 0 is never merged away (it is always a left side), so the list starts there.
    ids.clear();
    for (int32_t i = 0; i >= 0; i = sym[i].next) ids.push_back(sym[i].id);
  }

  if (eos) ids.push_back(eos_id());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size())
      fail("tokenizer '", path_, "': decode: token id ", id, " out of range (vocab size ", vocab_size(), ")");
    if (id == bos_id() || id == eos_id()) continue;
    std::string_view s;
    char byte;
    if (id >= byte_base_ && id < byte_base_ + 256) {
      byte = (char)(id - byte_base_);
      s = std::string_view(&byte, 1);
    } else {
      s = vocab_[id];
    }
    // The encoder's dummy-prefix space sits at the start of the first piece.
    if (first && !s.empty() && s[0] == ' ') s.remove_prefix(1);
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
  return scores_[id];
}

// Placeholders until the tokenizer work lands.
Tokenizer Tokenizer::from_spec(const TokenizerSpec& spec) { fail("tokenizer from '", spec.source, "': not built yet"); }
TokenizerSpec Tokenizer::spec() const { fail("tokenizer '", path_, "': spec() not built yet"); }

}  // namespace qf
