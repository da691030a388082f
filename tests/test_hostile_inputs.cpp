// Hostile headers (issue 14): JSON nested 100 000 levels deep in every reader of untrusted
// JSON, shape products that overflow only in a partial stride, and a tokenizer merge of many
// spaces. Each is a clear qf::Error naming the file (and the tensor or field), never a crash,
// and construction stays linear in the input.
#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "scratch_dir.h"
#include "core/json_util.h"
#include "formats/loader_hf.h"
#include "formats/loader_qforge.h"
#include "formats/safetensors.h"
#include "tokenizer/tokenizer.h"

using namespace qf;
namespace fs = std::filesystem;

static std::string tmpdir() {
  static const std::string d = qf_test::scratch_dir("hostile");
  return d;
}
static std::string put(const std::string& name, const std::string& bytes) {
  const std::string p = tmpdir() + "/" + name;
  qf_test::write_bytes(p, bytes);
  return p;
}
static std::string safetensors_bytes(const std::string& header) {
  std::string s(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(s.data(), &n, 8);
  return s + header;
}
// [[[...0...]]] nested `levels` deep.
static std::string deep(int levels) { return std::string(levels, '[') + "0" + std::string(levels, ']'); }

static std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
#define CHECK_CONTAINS(msg, part) CHECK_MESSAGE((msg).find(part) != std::string::npos, "'", (msg).substr(0, 300), "' lacks '", part, "'")

TEST_CASE("JSON nested 100 000 levels deep: a clear error from every reader, no stack overflow") {
  const std::string d = deep(100000);
  // The old readers crashed here (SIGSEGV: dump() and the destructor recurse per level).
  {
    const std::string p = put("deep.safetensors", safetensors_bytes(R"({"t": {"dtype": "F32", "shape": )" + d + R"(, "data_offsets": [0, 0]}})"));
    const std::string msg = error_of([&] { safetensors_open(p); });
    CHECK_CONTAINS(msg, "safetensors file '" + p + "'");
    CHECK_CONTAINS(msg, "JSON nested deeper than 64 levels (at byte ");
  }
  {
    put("hfdeep/config.json", R"({"architectures": )" + d + "}");
    const std::string msg = error_of([&] { open_hf(tmpdir() + "/hfdeep"); });
    CHECK_CONTAINS(msg, "config.json '" + tmpdir() + "/hfdeep/config.json'");
    CHECK_CONTAINS(msg, "JSON nested deeper than 64 levels");
  }
  {
    const std::string p = put("tokdeep/tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": )" + d + "}}}");
    const std::string msg = error_of([&] { Tokenizer::load(p); });
    CHECK_CONTAINS(msg, "tokenizer file '" + p + "'");
    CHECK_CONTAINS(msg, "JSON nested deeper than 64 levels");
  }
  {
    // The qforge header is JSON inside the safetensors metadata: a string, so its brackets
    // do not count against the outer header's depth.
    nlohmann::json h = {{"__metadata__", {{"qforge_format", "1"}, {"qforge", R"({"qforge_format": )" + d + "}"}}},
                        {"x", {{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {0, 0}}}}};
    const std::string p = put("qfdeep.safetensors", safetensors_bytes(h.dump()));
    const std::string msg = error_of([&] { load_qforge(p); });
    CHECK_CONTAINS(msg, "qforge file '" + p + "': field '__metadata__.qforge'");
    CHECK_CONTAINS(msg, "JSON nested deeper than 64 levels");
  }
}

TEST_CASE("the depth bound: exactly 64 levels parse, 65 do not; brackets inside strings do not count") {
  CHECK(json_too_deep(deep(64)) == 0);
  CHECK(json_too_deep(deep(65)) == 65);
  CHECK(json_too_deep("[\"" + std::string(1000, '[') + "\\\"[\"]") == 0);
  CHECK(parse_json_bounded(deep(64), "x").is_array());
  CHECK_CONTAINS(error_of([] { parse_json_bounded("{\"a\": tru}", "thing 'y'"); }), "thing 'y': not valid JSON");
  // Messages describe values briefly instead of dumping them.
  CHECK(json_brief(nlohmann::json::parse(deep(3))) == "an array of 1 elements");
  CHECK(json_brief(nlohmann::json(std::string(100, 'x'))) == "\"" + std::string(40, 'x') + "\"...");
  CHECK(json_brief(nlohmann::json(-2.5)) == "-2.5");
  CHECK(json_brief(nlohmann::json::parse(R"({"a": 1, "b": 2})")) == "an object of 2 fields");
}

TEST_CASE("a shape whose element count is 0 but whose strides overflow is refused naming the file and tensor") {
  // [0, 2^40, 2^40, 2^40]: 0 elements, so 0 bytes match data_offsets [0, 0]; the old reader
  // accepted it and contiguous_strides overflowed (2^40 · 2^40 · 2^40).
  const std::string p = put("zero_first.safetensors",
                            safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [0, 1099511627776, 1099511627776, 1099511627776], "data_offsets": [0, 0]}})"));
  const std::string msg = error_of([&] { safetensors_open(p); });
  CHECK_CONTAINS(msg, "safetensors file '" + p + "': tensor 'w': field 'shape'");
  CHECK_CONTAINS(msg, "has too many elements");
  // A zero dimension with small others is an ordinary empty tensor.
  const std::string q = put("zero_ok.safetensors", safetensors_bytes(R"({"w": {"dtype": "F32", "shape": [0, 1024, 1024], "data_offsets": [0, 0]}})"));
  CHECK(safetensors_open(q).get("w").shape == Shape{0, 1024, 1024});
}

static TokenizerSpec spaces_spec(size_t n_spaces) {
  TokenizerSpec s;
  s.model = "gpt2";
  s.pre = "gpt2";
  s.tokens = {"a", "b", "c", "ab", "b c", "a b", "a b c"};
  s.merges = {std::string(n_spaces, ' ')};
  s.source = "spaces";
  return s;
}

TEST_CASE("a merge of 400 000 spaces is refused in linear time") {
  // The old split tried every space with two substring lookups: 31.7 s at 400 k spaces. The
  // linear one takes milliseconds; 3 s leaves room for a loaded machine.
  const auto t0 = std::chrono::steady_clock::now();
  const std::string msg = error_of([] { Tokenizer::from_spec(spaces_spec(400000)); });
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK_CONTAINS(msg, "tokenizer from 'spaces': merge 0 '");
  CHECK_CONTAINS(msg, "refers to unknown token");
  CHECK_MESSAGE(s < 3.0, "from_spec took ", s, " s");
}

TEST_CASE("merges with several spaces: some space must have a token on both sides") {
  TokenizerSpec s = spaces_spec(1);
  s.merges = {"a b c"};
  s.tokens = {"a", "b c", "ab c"};  // only the first space splits it (the result joins the sides)
  CHECK_NOTHROW(Tokenizer::from_spec(s));
  s.tokens = {"a b", "c", "a bc"};  // only the second
  CHECK_NOTHROW(Tokenizer::from_spec(s));
  s.tokens = {"a", "b", "c", "ab", "abc", "ab c", "a bc"};  // neither
  CHECK_CONTAINS(error_of([&] { Tokenizer::from_spec(s); }), "merge 0 'a b c' refers to unknown token");
  s.merges = {"  "};
  s.tokens = {"", " ", "  "};  // an empty token splits "  " at its first space: "" + " "
  CHECK_NOTHROW(Tokenizer::from_spec(s));
  s.tokens = {" ", "x"};  // "  " -> " " + "" needs the empty token
  CHECK_CONTAINS(error_of([&] { Tokenizer::from_spec(s); }), "refers to unknown token");
}
