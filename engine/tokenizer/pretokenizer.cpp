// qforge — hand-written pre-tokenizer regexes (see pretokenizer.h for the patterns).
#include "tokenizer/pretokenizer.h"

#include <cstdint>

#include "tokenizer/unicode.h"

namespace qf {

const char* const kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
const char* const kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

bool pre_split_from_name(const std::string& name, PreSplit* out) {
  // llama.cpp writes no pre name for old GPT-2-style files and treats them with the GPT-2 split.
  if (name.empty() || name == "gpt2" || name == "gpt-2") *out = PreSplit::gpt2;
  else if (name == "llama-bpe" || name == "llama3") *out = PreSplit::llama3;
  else if (name == "smollm") *out = PreSplit::smollm;
  else return false;
  return true;
}

const char* pre_split_name(PreSplit kind) {
  switch (kind) {
    case PreSplit::gpt2: return "gpt2";
    case PreSplit::llama3: return "llama-bpe";
    case PreSplit::smollm: return "smollm";
  }
  return "?";
}

namespace {

enum Cls : uint8_t { kL, kN, kS, kO };  // letter, number, whitespace, anything else

// The text as codepoints with their classes and byte offsets (offs has n+1 entries).
struct Cps {
  std::vector<uint32_t> cp;
  std::vector<uint8_t> cls;
  std::vector<uint32_t> offs;
  explicit Cps(std::string_view s) {
    cp.reserve(s.size());
    cls.reserve(s.size());
    offs.reserve(s.size() + 1);
    for (size_t i = 0; i < s.size();) {
      int len;
      const uint32_t c = utf8_next(s, i, &len);
      cp.push_back(c);
      cls.push_back(uni_is_letter(c) ? kL : uni_is_number(c) ? kN : uni_is_space(c) ? kS : kO);
      offs.push_back((uint32_t)i);
      i += (size_t)len;
    }
    offs.push_back((uint32_t)s.size());
  }
  size_t size() const { return cp.size(); }
  // End of the run of class c starting at i, not beyond end.
  size_t run(size_t i, size_t end, uint8_t c) const {
    while (i < end && cls[i] == c) i++;
    return i;
  }
};

uint32_t lower_ascii(uint32_t c) { return c < 0x80 ? (c | 0x20) : c; }
bool is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }

// Length (in codepoints) of the contraction at i, 0 if none. ci: case-insensitive (Llama 3).
size_t contraction(const Cps& t, size_t i, size_t end, bool ci) {
  if (t.cp[i] != '\'' || i + 1 >= end) return 0;
  auto at = [&](size_t k) { return ci ? lower_ascii(t.cp[k]) : t.cp[k]; };
  const uint32_t a = at(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= end) return 0;
  const uint32_t b = at(i + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

// \s+(?!\S)|\s+ at i (t.cls[i] is whitespace): the run, less its last char when a
// non-space follows and the run is longer than one.
size_t trailing_space(const Cps& t, size_t i, size_t end) {
  const size_t e = t.run(i, end, kS);
  if (e == end || e - i == 1) return e - i;
  return e - i - 1;
}

// One GPT-2 match at i, in codepoints (always >= 1).
size_t match_gpt2(const Cps& t, size_t i, size_t end) {
  if (size_t k = contraction(t, i, end, false)) return k;
  const size_t s = (t.cp[i] == ' ' && i + 1 < end) ? i + 1 : i;  // ` ?` before L, N or other
  if (t.cls[s] != kS) return t.run(s, end, t.cls[s]) - i;
  return trailing_space(t, i, end);
}

// One Llama 3 match at i, in codepoints (always >= 1).
size_t match_llama3(const Cps& t, size_t i, size_t end) {
  if (size_t k = contraction(t, i, end, true)) return k;
  const uint32_t c = t.cp[i];
  const uint8_t cl = t.cls[i];
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (cl != kL && cl != kN && !is_crlf(c) && i + 1 < end && t.cls[i + 1] == kL) return t.run(i + 1, end, kL) - i;
  if (cl == kL) return t.run(i, end, kL) - i;
  // \p{N}{1,3}
  if (cl == kN) {
    const size_t e = t.run(i, end, kN);
    return e - i < 3 ? e - i : 3;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  const size_t s = (c == ' ' && i + 1 < end && t.cls[i + 1] == kO) ? i + 1 : i;
  if (t.cls[s] == kO) {
    size_t e = t.run(s, end, kO);
    while (e < end && is_crlf(t.cp[e])) e++;
    return e - i;
  }
  // \s*[\r\n]+ : the whitespace run up to its last newline
  const size_t e = t.run(i, end, kS);
  for (size_t k = e; k > i; k--)
    if (is_crlf(t.cp[k - 1])) return k - i;
  return trailing_space(t, i, end);
}

void split_range(const Cps& t, std::string_view text, size_t b, size_t end, bool llama3,
                 std::vector<std::string_view>& words) {
  for (size_t i = b; i < end;) {
    const size_t k = llama3 ? match_llama3(t, i, end) : match_gpt2(t, i, end);
    words.push_back(text.substr(t.offs[i], t.offs[i + k] - t.offs[i]));
    i += k;
  }
}

}  // namespace

void pre_split(PreSplit kind, std::string_view text, std::vector<std::string_view>& words) {
  if (text.empty()) return;
  const Cps t(text);
  const size_t n = t.size();
  if (kind != PreSplit::smollm) {
    split_range(t, text, 0, n, kind == PreSplit::llama3, words);
    return;
  }
  // smollm: digits one by one; the GPT-2 split sees only the text between them.
  for (size_t i = 0; i < n;) {
    if (t.cls[i] == kN) {
      words.push_back(text.substr(t.offs[i], t.offs[i + 1] - t.offs[i]));
      i++;
      continue;
    }
    size_t e = i;
    while (e < n && t.cls[e] != kN) e++;
    split_range(t, text, i, e, false, words);
    i = e;
  }
}

}  // namespace qf
