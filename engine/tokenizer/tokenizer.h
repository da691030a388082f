// qforge — tokenizers of two kinds behind one API.
//
// llama  SentencePiece-BPE with scores (llama2.c tokenizer.bin, GGUF "llama", tokenizer.json
//        BPE with byte_fallback + Metaspace). Encoding follows llama2.c: a dummy-prefix space
//        (add_space_prefix; on each stretch of text between special tokens, as llama.cpp and
//        HF's Prepend normalizer), one token per UTF-8 codepoint (byte fallback <0xXX> when the
//        codepoint is not in the vocab, <unk> without byte tokens), then repeatedly merge the
//        adjacent pair whose concatenation has the highest score (leftmost on ties). A heap
//        over a linked list makes it O(n log n), not O(n²). Spaces are ' ' inside (as in
//        tokenizer.bin); specs and tokenizer.json carry them as '▁' (U+2581).
// gpt2   byte-level BPE (GGUF "gpt2", tokenizer.json BPE + ByteLevel): text is split by a
//        pre-tokenizer regex (pretokenizer.h), each word's bytes map to GPT-2's printable
//        characters, and the pair with the lowest merge rank merges first (leftmost on ties),
//        with a heap per word and a per-call word cache.
// Both kinds match the added/special tokens (token types 2 unknown, 3 control, 4 user-defined)
// literally in the text first, longest first — except tokenizer.bin files (llama2.c never did).
//
// Token types follow GGUF: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer_spec.h"

namespace qf {

class Tokenizer {
 public:
  enum class Kind { llama, gpt2 };

  // A llama2.c tokenizer.bin, or a HF tokenizer.json (a file whose first non-space byte is
  // '{'; BOS/EOS from a tokenizer_config.json beside it when present). Errors name the file
  // and the record or field.
  static Tokenizer load(const std::string& path);
  // From a checkpoint's tokenizer description (GGUF metadata, tokenizer.json); validated,
  // errors name spec.source.
  static Tokenizer from_spec(const TokenizerSpec& spec);
  // This tokenizer as a spec (what exports embed or write out): tokens with '▁' for spaces
  // in the llama kind; a tokenizer.bin's "\n<s>\n" / "\n</s>\n" become "<s>" / "</s>".
  TokenizerSpec spec() const;

  // bos: prepend BOS when the tokenizer has one and its convention adds it (add_bos; true
  // for tokenizer.bin and SentencePiece, usually false for GPT-2-style BPE). eos: append EOS
  // when the tokenizer has one.
  std::vector<int32_t> encode(const std::string& text, bool bos = true, bool eos = false) const;
  // Skips control tokens (BOS, EOS, ...); the llama kind strips the dummy-prefix space.
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string piece(int32_t id) const;  // raw vocab string ("<0x0A>" for byte tokens, "Ġthe" for gpt2)

  int32_t vocab_size() const { return (int32_t)vocab_.size(); }
  int32_t bos_id() const { return bos_; }  // -1 when there is none
  int32_t eos_id() const { return eos_; }
  bool add_bos() const { return add_bos_; }
  float score(int32_t id) const;           // llama: the merge score; gpt2: 0 unless the spec had scores
  int32_t token_type(int32_t id) const;
  Kind kind() const { return kind_; }
  const std::string& path() const { return path_; }

 private:
  static Tokenizer load_bin(const std::string& path, const std::string& data);
  void index_specials();
  int32_t lookup(const std::string& s) const;  // -1 if absent
  // The input cut at literal special tokens: text stretches (special < 0) and special ids.
  struct Section {
    size_t begin, end;
    int32_t special;
  };
  std::vector<Section> sections(std::string_view text) const;
  // llama kind: appends the ids of one text stretch.
  void encode_spm(std::string_view text, std::vector<int32_t>& ids) const;
  // gpt2 kind (tokenizer_bpe.cpp): appends the ids of all sections.
  void encode_bpe(std::string_view text, const std::vector<Section>& secs, std::vector<int32_t>& ids) const;
  void bpe_word(std::string_view word, std::vector<int32_t>& out) const;

  Kind kind_ = Kind::llama;
  std::string format_;                  // "llama2c", "spec", "tokenizer.json"
  std::vector<std::string> vocab_;      // llama: spaces as ' '; gpt2: byte-level text as in the file
  std::vector<float> scores_;
  std::vector<int32_t> types_;
  std::unordered_map<std::string, int32_t> index_;  // vocab_ string -> lowest id
  std::array<int32_t, 256> byte_id_{};  // token of each byte (llama <0xXX>, gpt2 its char); -1 none
  std::vector<int16_t> byte_of_;        // llama: byte value of byte tokens, -1 for others
  int32_t bos_ = 1, eos_ = 2, unk_ = 0, pad_ = -1;
  bool add_bos_ = true, add_eos_ = false, add_space_prefix_ = true;
  // Special tokens matched literally, grouped by first byte, longest first.
  std::vector<std::pair<std::string, int32_t>> specials_;
  std::array<uint32_t, 257> special_start_{};
  // gpt2 kind
  PreSplit pre_ = PreSplit::gpt2;
  std::string pre_name_;
  bool ignore_merges_ = false;          // a word that is a whole token is not merged (Llama 3)
  std::vector<std::string> raw_;        // bytes each token stands for
  std::unordered_map<std::string, int32_t> raw_index_;  // normal tokens by their bytes (ignore_merges)
  std::unordered_map<uint64_t, uint64_t> merges_;  // (left id, right id) -> (rank, merged id)
  std::vector<std::string> merge_list_;            // "left right", for spec()
  std::string path_;
};

// HF tokenizer.json (text = the file's content) -> spec; errors name the file and the field.
// The second form also returns whether the file asks for ignore_merges.
TokenizerSpec tokenizer_json_spec(const std::string& path, const std::string& text, bool* ignore_merges = nullptr);
// The tokenizer.json HF `tokenizers` loads for a spec: gpt2 -> BPE + ByteLevel (and the
// Split regex of its pre-tokenizer), llama -> BPE with byte_fallback + Metaspace, merges
// derived from the scores. Errors name spec.source.
std::string tokenizer_json(const TokenizerSpec& spec);

}  // namespace qf
