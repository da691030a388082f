// qforge — pre-tokenizer splits of byte-level BPE tokenizers, written by hand.
//
// Each splitter reproduces one regex as the reference engines (HF tokenizers' Oniguruma,
// llama.cpp's unicode_regex_split) apply it: find-all from left to right, the first
// alternative that matches at a position wins, and the matches tile the text.
//   gpt2       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   llama-bpe  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//              ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+            (Llama 3)
//   smollm     every \p{N} codepoint alone, then gpt2 on the text between them. This is our
//              reading of llama.cpp's "smollm" (regexes "\p{N}" then the GPT-2 one) and of
//              SmolLM2's tokenizer.json (Digits(individual_digits) then ByteLevel(use_regex)).
// std::regex is not used: it has no \p classes and is far too slow for megabytes of text.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace qf {

enum class PreSplit { gpt2, llama3, smollm };

// Maps a GGUF tokenizer.ggml.pre name ("gpt2", "llama-bpe", "smollm"; "" reads as gpt2)
// to a splitter; false if unknown.
bool pre_split_from_name(const std::string& name, PreSplit* out);
const char* pre_split_name(PreSplit kind);

// Appends the words of text to words, as views into text; they concatenate back to text.
void pre_split(PreSplit kind, std::string_view text, std::vector<std::string_view>& words);

// The regex strings tokenizer.json files carry for these splitters (Split pre-tokenizer).
extern const char* const kGpt2Regex;
extern const char* const kLlama3Regex;

}  // namespace qf
