#include "core/json_util.h"

#include "core/error.h"

namespace qf {

size_t json_too_deep(const std::string& text, int max_depth) {
  int depth = 0;
  bool in_str = false;
  for (size_t i = 0; i < text.size(); i++) {
    const char c = text[i];
    if (in_str) {
      if (c == '\\') i++;  // the escaped byte cannot end the string
      else if (c == '"') in_str = false;
    } else if (c == '"') {
      in_str = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return i + 1;
    } else if (c == ']' || c == '}') {
      depth--;  // unbalanced input is the parser's to report
    }
  }
  return 0;
}

nlohmann::json parse_json_bounded(const std::string& text, const std::string& what) {
  if (const size_t at = json_too_deep(text))
    fail(what, ": JSON nested deeper than ", kMaxJsonDepth, " levels (at byte ", at, ")");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    // The parser's message quotes the last token read, which may be long: keep its head.
    std::string m = e.what();
    if (m.size() > 200) m = m.substr(0, 200) + "...";
    fail(what, ": not valid JSON (", m, ")");
  }
}

std::string json_brief(const nlohmann::json& v) {
  switch (v.type()) {
    case nlohmann::json::value_t::array: return "an array of " + std::to_string(v.size()) + " elements";
    case nlohmann::json::value_t::object: return "an object of " + std::to_string(v.size()) + " fields";
    case nlohmann::json::value_t::string: {
      const std::string& s = v.get_ref<const std::string&>();
      std::string head = s.substr(0, 40);
      // Cut at a UTF-8 boundary so the dump below never meets a half character.
      while (!head.empty() && head.size() < s.size() && ((unsigned char)s[head.size()] & 0xC0) == 0x80) head.pop_back();
      return nlohmann::json(head).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + (head.size() < s.size() ? "..." : "");
    }
    case nlohmann::json::value_t::binary: return "binary data";
    case nlohmann::json::value_t::discarded: return "nothing";
    default: return v.dump();  // a scalar: short
  }
}

}  // namespace qf
