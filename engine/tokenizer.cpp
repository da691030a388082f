// qforge — llama2.c tokenizer.bin loader and the BPE encode/decode of llama2.c.
#include "tokenizer.h"

#include <cmath>
#include <cstdio>
#include <cstring>
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
  int32_t id;     // current token id; -1 once merged into its left neighbour
  int32_t prev;   // index of the previous live symbol, -1 at the head
  int32_t next;   // index of the next live symbol, -1 at the tail
  uint32_t ver;   // bumped whenever id changes, so heap entries can detect staleness
};

// A candidate merge of the adjacent symbols left,right. The left symbol's index is its
// position in the initial sequence, and the list keeps that order, so "smallest left"
// is exactly llama2.c's "leftmost pair".
struct Cand {
  float score;
  int32_t left, right;
  uint32_t lver, rver;
  int32_t merged;
};

struct CandWorse {
  bool operator()(const Cand& a, const Cand& b) const {
    if (a.score != b.score) return a.score < b.score;  // higher score first
    return a.left > b.left;                            // then leftmost
  }
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
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    while (j < n && j - i < 4 && ((unsigned char)text[j] & 0xC0) == 0x80) j++;
    buf.assign(text, i, j - i);
    const int32_t id = lookup(buf);
    if (id >= 0) ids.push_back(id);
    else push_bytes(text.data() + i, j - i);
    i = j;
  }

  // Merge with a heap of candidate pairs over a linked list; stale entries are skipped.
  const int32_t m = (int32_t)ids.size();
  if (m >= 2) {
    std::vector<Sym> sym(m);
    for (int32_t i = 0; i < m; i++) sym[i] = Sym{ids[i], i - 1, i + 1 < m ? i + 1 : -1, 0};

    std::vector<Cand> store;
    store.reserve((size_t)m * 2);
    std::priority_queue<Cand, std::vector<Cand>, CandWorse> heap(CandWorse{}, std::move(store));

    auto try_pair = [&](int32_t l, int32_t r) {
      if (l < 0 || r < 0) return;
      const std::string& a = vocab_[sym[l].id];
      const std::string& b = vocab_[sym[r].id];
      buf.assign(a);
      buf += b;
      const int32_t id = lookup(buf);
      if (id < 0 || !(scores_[id] > kMergeFloor)) return;
      heap.push(Cand{scores_[id], l, r, sym[l].ver, sym[r].ver, id});
    };

    for (int32_t i = 0; i + 1 < m; i++) try_pair(i, i + 1);

    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      Sym& L = sym[c.left];
      Sym& R = sym[c.right];
      if (L.id < 0 || R.id < 0 || L.next != c.right || L.ver != c.lver || R.ver != c.rver) continue;
      L.id = c.merged;
      L.ver++;
      R.id = -1;
      L.next = R.next;
      if (R.next >= 0) sym[R.next].prev = c.left;
      try_pair(L.prev, c.left);
      try_pair(c.left, L.next);
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
    if (id < 0 || id >= vocab_size()) fail("decode: token id ", id, " out of range (vocab size ", vocab_size(), ")");
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

}  // namespace qf
