// qforge — a tokenizer as a checkpoint carries it, before it is built into a Tokenizer.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qf {

// Tokenizer as carried by a checkpoint (GGUF metadata, tokenizer.json, tokenizer.bin).
struct TokenizerSpec {
  std::string model;                  // "" none | "llama" (SentencePiece scores) | "gpt2" (byte-level BPE)
  std::string pre;                    // gpt2 pre-tokenizer name: "gpt2", "llama-bpe", "smollm", ...
  std::vector<std::string> tokens;
  std::vector<float> scores;          // llama
  std::vector<int32_t> token_type;    // GGUF convention: 1 normal 2 unknown 3 control 4 user-defined 5 unused 6 byte
  std::vector<std::string> merges;    // gpt2: "left right", highest priority first
  int32_t bos_id = -1, eos_id = -1, unk_id = -1, pad_id = -1;
  bool add_bos = true, add_eos = false;
  bool add_space_prefix = true;       // llama: SentencePiece dummy prefix
  std::string source;                 // file it came from
};

}  // namespace qf
