// qforge — the gpt2 kind's encode: byte-level BPE by merge rank over pre-tokenized words.
//
// Each text stretch between special tokens is split into words (pretokenizer.h); a word's
// bytes start as the tokens of their GPT-2 characters, then the adjacent pair with the lowest
// merge rank merges (leftmost on ties) until no pair has a merge — as HF tokenizers' BPE and
// llama.cpp do. A heap keyed by (rank, position) over a linked list keeps it O(n log n) for
// long words; a per-call cache means each distinct word is merged once.
#include <cstring>
#include <functional>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace qf {

namespace {

struct Sym {
  int32_t id, prev, next;
  uint32_t ver;  // bumped whenever the pair (this, next) changes
};

struct Cand {
  uint64_t key;    // rank << 32 | left: the smallest key merges first
  uint32_t ver;
  int32_t merged;
  int32_t left() const { return (int32_t)(uint32_t)key; }
  bool operator>(const Cand& o) const { return key > o.key; }
};

}  // namespace

void Tokenizer::bpe_word(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {  // Llama 3: a word that is a token is that token
    auto it = raw_index_.find(std::string(word));
    if (it != raw_index_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const int32_t m = (int32_t)word.size();
  std::vector<Sym> sym((size_t)m);
  for (int32_t i = 0; i < m; i++) {
    int32_t id = byte_id_[(unsigned char)word[i]];
    if (id < 0) {
      if (unk_ < 0)
        fail("tokenizer '", path_, "': encode: byte 0x", std::hex, (int)(unsigned char)word[i], std::dec,
             " has no token and the vocabulary has no unknown token");
      id = unk_;
    }
    sym[i] = Sym{id, i - 1, i + 1 < m ? i + 1 : -1, 0};
  }
  auto pair_cand = [&](int32_t l, Cand* c) {
    if (l < 0 || sym[l].next < 0) return false;
    const uint64_t key = ((uint64_t)(uint32_t)sym[l].id << 32) | (uint32_t)sym[sym[l].next].id;
    auto it = merges_.find(key);
    if (it == merges_.end()) return false;
    *c = Cand{(it->second & 0xFFFFFFFF00000000ull) | (uint32_t)l, sym[l].ver, (int32_t)(uint32_t)it->second};
    return true;
  };
  std::vector<Cand> initial;
  for (int32_t i = 0; i + 1 < m; i++) {
    Cand c;
    if (pair_cand(i, &c)) initial.push_back(c);
  }
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap(std::greater<Cand>{}, std::move(initial));
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const int32_t l = c.left();
    Sym& L = sym[l];
    if (L.id < 0 || L.ver != c.ver) continue;
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
  for (int32_t i = 0; i >= 0 && i < m; i = sym[i].next) out.push_back(sym[i].id);
}

void Tokenizer::encode_bpe(std::string_view text, const std::vector<Section>& secs, std::vector<int32_t>& ids) const {
  // word -> [offset, length) in `done`; keys view the text or `prefixed` (both outlive the map).
  std::unordered_map<std::string_view, std::pair<uint32_t, uint32_t>> cache;
  std::vector<int32_t> done;
  std::vector<std::string_view> words;
  std::string prefixed;
  for (const Section& s : secs) {
    if (s.special >= 0) {
      ids.push_back(s.special);
      continue;
    }
    std::string_view part = text.substr(s.begin, s.end - s.begin);
    // ByteLevel's add_prefix_space: HF applies it to every stretch that lacks a leading space.
    // A fresh buffer per stretch: the cache keeps no view into an old one.
    if (add_space_prefix_ && part[0] != ' ') {
      cache.clear();
      prefixed.clear();
      prefixed.push_back(' ');
      prefixed.append(part);
      part = prefixed;
    }
    words.clear();
    pre_split(pre_, part, words);
    for (std::string_view w : words) {
      auto it = cache.find(w);
      if (it == cache.end()) {
        const uint32_t off = (uint32_t)done.size();
        bpe_word(w, done);
        it = cache.emplace(w, std::make_pair(off, (uint32_t)done.size() - off)).first;
      }
      ids.insert(ids.end(), done.begin() + it->second.first, done.begin() + it->second.first + it->second.second);
    }
  }
}

}  // namespace qf
