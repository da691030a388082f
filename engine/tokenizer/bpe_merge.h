// qforge — the merge loop both tokenizer kinds share: repeatedly merge the adjacent pair with
// the best priority (leftmost on ties) until no pair merges.
//
// The llama kind ranks a pair by its merged token's score (highest first), the gpt2 kind by
// its merge rank (lowest first); each passes a `pair` function that says whether (a, b) merges,
// into which token and with what priority (smaller merges first). A min-heap of candidates
// keyed by (priority, left index) over a doubly-linked list of symbols keeps it O(n log n);
// entries made stale by a merge carry an old version counter and are skipped. The list keeps
// the initial order, so "smallest left index" is exactly "leftmost pair".
#pragma once
#include <cstdint>
#include <functional>
#include <queue>
#include <vector>

namespace qf {

namespace bpe_detail {

// One symbol of the working sequence: a doubly-linked list over the initial tokens.
struct Sym {
  int32_t id;    // current token id; -1 once merged into its left neighbour
  int32_t prev;  // index of the previous live symbol, -1 at the head
  int32_t next;  // index of the next live symbol, -1 at the tail
  uint32_t ver;  // bumped whenever the pair (this, next) changes: heap entries carry it
};

// A candidate merge of symbol left() with its next symbol; the smallest key merges first.
struct Cand {
  uint64_t key;    // priority << 32 | left
  uint32_t ver;    // sym[left].ver when pushed; any other value means stale
  int32_t merged;  // id of the merged token
  int32_t left() const { return (int32_t)(uint32_t)key; }
  bool operator>(const Cand& o) const { return key > o.key; }
};

}  // namespace bpe_detail

// Merges the tokens ids[0, m) and appends the result to `out`. `pair(a, b, &priority, &merged)`
// returns whether the adjacent tokens (a, b) merge, and if so sets the merged token's id and
// the merge's priority (smaller first). m < 2^31; the version counters (at most 2 bumps per
// merge) fit 32 bits.
template <class PairFn>
void bpe_merge(const int32_t* ids, int32_t m, PairFn&& pair, std::vector<int32_t>& out) {
  using bpe_detail::Cand;
  using bpe_detail::Sym;
  if (m < 2) {
    out.insert(out.end(), ids, ids + m);
    return;
  }
  std::vector<Sym> sym((size_t)m);
  for (int32_t i = 0; i < m; i++) sym[i] = Sym{ids[i], i - 1, i + 1 < m ? i + 1 : -1, 0};

  // The candidate for the pair (l, l.next), if it merges.
  auto pair_cand = [&](int32_t l, Cand* c) {
    if (l < 0 || sym[l].next < 0) return false;
    uint32_t priority;
    int32_t merged;
    if (!pair(sym[l].id, sym[sym[l].next].id, &priority, &merged)) return false;
    *c = Cand{((uint64_t)priority << 32) | (uint32_t)l, sym[l].ver, merged};
    return true;
  };

  std::vector<Cand> initial;  // heapified in O(n) rather than pushed one by one
  initial.reserve((size_t)m);
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
  for (int32_t i = 0; i >= 0; i = sym[i].next) out.push_back(sym[i].id);
}

}  // namespace qf
