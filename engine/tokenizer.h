// qforge — the llama2.c tokenizer.bin format (SentencePiece-BPE vocabulary with scores).
//
// File layout: int32 max_token_length, then per token {f32 score, int32 len, len bytes},
// repeated to end of file (the vocab size is the number of records).
// Encoding follows llama2.c: optional BOS, a dummy-prefix space, one token per UTF-8
// codepoint (byte fallback <0xXX> = id byte+3 when the codepoint is not in the vocab),
// then repeatedly merge the adjacent pair whose concatenation has the highest score
// (leftmost on ties). Implemented with a heap over a linked list: O(n log n), not O(n²).
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer_spec.h"

namespace qf {

class Tokenizer {
 public:
  static Tokenizer load(const std::string& path);  // errors name the file and the record
  // From a checkpoint's tokenizer description (GGUF metadata, tokenizer.json).
  static Tokenizer from_spec(const TokenizerSpec& spec);
  // This tokenizer as a spec (what exports embed or write out).
  TokenizerSpec spec() const;

  std::vector<int32_t> encode(const std::string& text, bool bos = true, bool eos = false) const;
  std::string decode(const std::vector<int32_t>& ids) const;  // skips BOS/EOS, strips the dummy-prefix space
  std::string piece(int32_t id) const;  // raw vocab string ("<0x0A>" for byte tokens)

  int32_t vocab_size() const { return (int32_t)vocab_.size(); }
  int32_t bos_id() const { return 1; }
  int32_t eos_id() const { return 2; }
  float score(int32_t id) const;
  const std::string& path() const { return path_; }

 private:
  int32_t lookup(const std::string& s) const;  // -1 if absent
  std::vector<std::string> vocab_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> index_;
  int32_t byte_base_ = 3;  // id of <0x00>
  std::string path_;
};

}  // namespace qf
