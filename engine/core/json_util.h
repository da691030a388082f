// qforge — reading untrusted JSON (safetensors headers, config.json, tokenizer.json, the
// qforge header): nesting depth bounded before nlohmann parses (its parser, dump() and
// destructor recurse once per level, so a deep file would overflow the stack), and values
// described briefly in messages instead of being dumped whole.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace qf {

constexpr int kMaxJsonDepth = 64;  // real files nest < 10 levels

// Parses text; fails "<what>: not valid JSON (...)" or "<what>: JSON nested deeper than 64
// levels (at byte N)". The result is never discarded.
nlohmann::json parse_json_bounded(const std::string& text, const std::string& what);
// Depth check alone: 0 when text nests at most max_depth levels, else 1 + the byte offset
// where it goes deeper (strings and escapes are skipped).
size_t json_too_deep(const std::string& text, int max_depth = kMaxJsonDepth);

// A short description for error messages: 42, -1.5, true, null, "text" (first 40 bytes),
// an array of 3 elements, an object of 2 fields.
std::string json_brief(const nlohmann::json& v);

}  // namespace qf
