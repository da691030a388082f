// qforge — the gpt2 kind's encode: byte-level BPE by merge rank over pre-tokenized words.
//
// Each text stretch between special tokens is split into words (pretokenizer.h); a word's
// bytes start as the tokens of their GPT-2 characters, then the adjacent pair with the lowest
// merge rank merges (leftmost on ties) until no pair has a merge — as HF tokenizers' BPE and
// llama.cpp do, with bpe_merge.h's heap (O(n log n) for long words); a per-call cache means
// each distinct word is merged once.
#include <unordered_map>

#include "core/error.h"
#include "tokenizer/bpe_merge.h"
#include "tokenizer/tokenizer.h"

namespace qf {

void Tokenizer::bpe_word(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {  // Llama 3: a word that is a token is that token
    auto it = raw_index_.find(std::string(word));
    if (it != raw_index_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  std::vector<int32_t> ids(word.size());
  for (size_t i = 0; i < word.size(); i++) {
    int32_t id = byte_id_[(unsigned char)word[i]];
    if (id < 0) {
      if (unk_ < 0)
        fail("tokenizer '", path_, "': encode: byte 0x", std::hex, (int)(unsigned char)word[i], std::dec,
             " has no token and the vocabulary has no unknown token");
      id = unk_;
    }
    ids[i] = id;
  }
  // Merge by rank (bpe_merge.h): merges_ maps (left id, right id) to (rank << 32 | merged id).
  bpe_merge(ids.data(), (int32_t)ids.size(), [&](int32_t a, int32_t b, uint32_t* priority, int32_t* merged) {
    auto it = merges_.find(((uint64_t)(uint32_t)a << 32) | (uint32_t)b);
    if (it == merges_.end()) return false;
    *priority = (uint32_t)(it->second >> 32);
    *merged = (int32_t)(uint32_t)it->second;
    return true;
  }, out);
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
