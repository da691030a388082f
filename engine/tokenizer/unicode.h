// qforge — the little Unicode the tokenizers need: UTF-8 stepping, the \p{L} / \p{N} / \s
// classes of the pre-tokenizer regexes, and GPT-2's byte <-> unicode-char mapping.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace qf {

// Decodes the codepoint at s[i]; *len gets its byte length (1..4). Invalid or truncated
// sequences decode as one byte with codepoint 0xFFFD: they never match \p{L}, \p{N} or \s,
// and the byte itself stays in the text (byte-level BPE encodes it as such).
uint32_t utf8_next(std::string_view s, size_t i, int* len);
void utf8_append(std::string& out, uint32_t cp);

// Unicode classes from a compact range table (engine/tokenizer/unicode.cpp states its limits).
bool uni_is_letter(uint32_t cp);  // \p{L}
bool uni_is_number(uint32_t cp);  // \p{N} (Nd, Nl, No)
bool uni_is_space(uint32_t cp);   // \s = White_Space

// GPT-2's bytes_to_unicode(): every byte maps to a printable codepoint ('!'..'~', '¡'..'¬',
// '®'..'ÿ' map to themselves, the other 68 bytes to U+0100.. in byte order; ' ' -> 'Ġ').
uint32_t gpt2_byte_to_cp(uint8_t b);
int gpt2_cp_to_byte(uint32_t cp);  // -1 if cp is not in the image of the mapping
std::string gpt2_bytes_to_unicode(std::string_view bytes);  // raw bytes -> byte-level token text
// Byte-level token text -> raw bytes; false (out untouched) if a codepoint is outside the map.
bool gpt2_unicode_to_bytes(std::string_view text, std::string* out);

}  // namespace qf
