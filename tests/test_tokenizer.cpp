// Tests of the llama2.c tokenizer: golden encodings, round trips, agreement with the
// naive quadratic llama2.c algorithm (random text, ties, the 32k vocab), loader errors.
#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <unistd.h>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/io.h"
#include "tokenizer/tokenizer.h"

namespace fs = std::filesystem;
using qf::Tokenizer;
using Ids = std::vector<int32_t>;

namespace {

const std::string kShared = QF_SHARED_DIR;
const std::string kTok512 = kShared + "/models/stories260K/tok512.bin";
const std::string kTok32k = kShared + "/models/llama2-tokenizer/tokenizer.bin";
const std::string kStories = kShared + "/data/tinystories_head.txt";

// ---- the reference: llama2.c's encode(), quadratic, written as in run.c ----
struct NaiveVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::unordered_map<std::string, int32_t> index;  // lowest id on duplicates
  explicit NaiveVocab(const Tokenizer& t) {
    for (int32_t i = 0; i < t.vocab_size(); i++) {
      pieces.push_back(t.piece(i));
      scores.push_back(t.score(i));
      index.emplace(pieces.back(), i);
    }
  }
  int32_t lookup(const std::string& s) const {
    auto it = index.find(s);
    return it == index.end() ? -1 : it->second;
  }
};

Ids naive_encode(const NaiveVocab& v, const std::string& text, bool bos, bool eos) {
  Ids tokens;
  if (bos) tokens.push_back(1);
  if (!text.empty()) {
    int32_t sp = v.lookup(" ");
    tokens.push_back(sp != -1 ? sp : ' ' + 3);
  }
  std::string buf;
  for (size_t i = 0; i < text.size(); i++) {
    const unsigned char c = (unsigned char)text[i];
    if ((c & 0xC0) != 0x80) buf.clear();
    buf += (char)c;
    if (i + 1 < text.size() && ((unsigned char)text[i + 1] & 0xC0) == 0x80 && buf.size() < 4) continue;
    int32_t id = v.lookup(buf);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (unsigned char b : buf) tokens.push_back((int32_t)b + 3);
    }
    buf.clear();
  }
  while (true) {
    float best_score = -1e10f;
    int32_t best_id = -1;
    int64_t best_idx = -1;
    for (size_t i = 0; i + 1 < tokens.size(); i++) {
      int32_t id = v.lookup(v.pieces[tokens[i]] + v.pieces[tokens[i + 1]]);
      if (id != -1 && v.scores[id] > best_score) {
        best_score = v.scores[id];
        best_id = id;
        best_idx = (int64_t)i;
      }
    }
    if (best_idx == -1) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + best_idx + 1);
  }
  if (eos) tokens.push_back(2);
  return tokens;
}

// ---- helpers ----
struct TempDir {
  fs::path dir;
  TempDir() {
    static int counter = 0;
    dir = fs::temp_directory_path() /
          ("qf_test_tokenizer_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string file(const std::string& name, const std::string& bytes) const {
    const std::string p = (dir / name).string();
    std::ofstream f(p, std::ios::binary);
    f.write(bytes.data(), (std::streamsize)bytes.size());
    return p;
  }
};

void put_i32(std::string& s, int32_t v) { s.append((const char*)&v, 4); }
void put_f32(std::string& s, float v) { s.append((const char*)&v, 4); }
void put_token(std::string& s, const std::string& piece, float score) {
  put_f32(s, score);
  put_i32(s, (int32_t)piece.size());
  s += piece;
}

// The 259 mandatory tokens of a llama2.c vocabulary, all with score 0.
std::vector<std::pair<std::string, float>> base_vocab() {
  std::vector<std::pair<std::string, float>> v = {{"<unk>", 0}, {"\n<s>\n", 0}, {"\n</s>\n", 0}};
  for (int b = 0; b < 256; b++) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    v.push_back({buf, 0});
  }
  return v;
}

std::string tok_bytes(const std::vector<std::pair<std::string, float>>& vocab, int32_t max_len = 16) {
  std::string s;
  put_i32(s, max_len);
  for (auto& [piece, score] : vocab) put_token(s, piece, score);
  return s;
}

// Random valid UTF-8: ASCII, 2-, 3- (no surrogates) and 4-byte codepoints.
std::string random_utf8(std::mt19937& rng, int ncp) {
  std::string s;
  for (int i = 0; i < ncp; i++) {
    uint32_t cp;
    switch (rng() % 4) {
      case 0: cp = 1 + rng() % 0x7F; break;
      case 1: cp = 0x80 + rng() % (0x800 - 0x80); break;
      case 2: do cp = 0x800 + rng() % (0x10000 - 0x800); while (cp >= 0xD800 && cp <= 0xDFFF); break;
      default: cp = 0x10000 + rng() % (0x110000 - 0x10000); break;
    }
    if (cp < 0x80) {
      s += (char)cp;
    } else if (cp < 0x800) {
      s += (char)(0xC0 | (cp >> 6));
      s += (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += (char)(0xE0 | (cp >> 12));
      s += (char)(0x80 | ((cp >> 6) & 0x3F));
      s += (char)(0x80 | (cp & 0x3F));
    } else {
      s += (char)(0xF0 | (cp >> 18));
      s += (char)(0x80 | ((cp >> 12) & 0x3F));
      s += (char)(0x80 | ((cp >> 6) & 0x3F));
      s += (char)(0x80 | (cp & 0x3F));
    }
  }
  return s;
}

bool is_cont(char c) { return ((unsigned char)c & 0xC0) == 0x80; }

// A random substring of text, moved to UTF-8 codepoint boundaries.
std::string random_slice(std::mt19937& rng, const std::string& text, size_t max_len) {
  size_t a = rng() % text.size();
  size_t b = std::min(text.size(), a + 1 + rng() % max_len);
  while (a < text.size() && is_cont(text[a])) a++;
  while (b < text.size() && is_cont(text[b])) b++;
  return text.substr(a, b - a);
}

// Catches the loader's qf::Error and checks it names the file and the problem.
void check_load_error(const std::string& path, const std::string& fragment) {
  try {
    Tokenizer::load(path);
    FAIL("loading '", path, "' did not throw (expected: ", fragment, ")");
  } catch (const qf::Error& e) {
    const std::string msg = e.what();
    INFO("message: ", msg);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find(fragment) != std::string::npos);
  }
}

const Tokenizer& tok512() {
  static const Tokenizer t = Tokenizer::load(kTok512);
  return t;
}
const Tokenizer& tok32k() {
  static const Tokenizer t = Tokenizer::load(kTok32k);
  return t;
}

}  // namespace

TEST_CASE("tok512 loads with the llama2.c layout") {
  const Tokenizer& t = tok512();
  CHECK(t.vocab_size() == 512);
  CHECK(t.path() == kTok512);
  CHECK(t.piece(0) == "<unk>");
  CHECK(t.piece(1) == "\n<s>\n");
  CHECK(t.piece(2) == "\n</s>\n");
  CHECK(t.piece(3) == "<0x00>");
  CHECK(t.piece(3 + 0x0A) == "<0x0A>");
  CHECK(t.piece(258) == "<0xFF>");
  CHECK(t.piece(410) == " ");
  CHECK(t.score(260) == -1.0f);
  CHECK_THROWS_WITH_AS(t.piece(512), doctest::Contains("token id 512 out of range (vocab size 512)"), qf::Error);
  CHECK_THROWS_WITH_AS(t.score(-1), doctest::Contains("token id -1 out of range"), qf::Error);
  CHECK_THROWS_WITH_AS(t.decode({1, 600}), doctest::Contains("token id 600 out of range"), qf::Error);
}

TEST_CASE("golden encodings of stories260K are reproduced exactly") {
  const auto golden = nlohmann::json::parse(qf::read_file(kShared + "/reference/golden/stories260K.json"));
  REQUIRE(golden.at("encodings").size() >= 5);
  const NaiveVocab nv(tok512());
  for (const auto& e : golden.at("encodings")) {
    const std::string text = e.at("text").get<std::string>();
    const Ids want = e.at("ids").get<Ids>();
    INFO("text: ", text);
    CHECK(tok512().encode(text, true, false) == want);
    CHECK(naive_encode(nv, text, true, false) == want);  // the reference is itself right
    CHECK(tok512().decode(want) == text);
  }
}

TEST_CASE("bos, eos and the empty string") {
  const Tokenizer& t = tok512();
  CHECK(t.encode("", true, false) == Ids{1});
  CHECK(t.encode("", false, false) == Ids{});
  CHECK(t.encode("", true, true) == Ids{1, 2});
  CHECK(t.decode({}) == "");
  CHECK(t.decode({1, 2}) == "");
  const Ids a = t.encode("The end.", false, true);
  REQUIRE(a.size() >= 2);
  CHECK(a.front() == 291);  // " The", no BOS
  CHECK(a.back() == 2);
  CHECK(t.decode({0}) == "<unk>");  // <unk> keeps its text
}

TEST_CASE("byte fallback for codepoints missing from the vocabulary") {
  const Tokenizer& t = tok512();
  for (int32_t i = 0; i < t.vocab_size(); i++) REQUIRE(t.piece(i) != "\xE2\x9C\x93");
  // "✓" = E2 9C 93 -> ids byte+3, after the dummy-prefix space (410).
  CHECK(t.encode("\xE2\x9C\x93", false, false) == Ids{410, 0xE2 + 3, 0x9C + 3, 0x93 + 3});
  CHECK(t.decode({410, 0xE2 + 3, 0x9C + 3, 0x93 + 3}) == "\xE2\x9C\x93");
  // A 4-byte emoji in the 32k vocab: also absent, so 4 byte tokens.
  const std::string emoji = "\xF0\x9F\x99\x82";  // U+1F642
  for (int32_t i = 0; i < tok32k().vocab_size(); i++) REQUIRE(tok32k().piece(i) != emoji);
  CHECK(tok32k().encode(emoji, true, false) == Ids{1, 29871, 0xF0 + 3, 0x9F + 3, 0x99 + 3, 0x82 + 3});
  // Raw bytes in the middle of a decode come out as bytes.
  const std::string p291 = t.piece(291);
  REQUIRE(p291.size() > 1);
  REQUIRE(p291[0] == ' ');
  CHECK(t.decode({1, 291, 3 + 0x0A, 3 + 0xFF}) == p291.substr(1) + "\n\xFF");
}

TEST_CASE("decode(encode(s)) == s") {
  std::vector<std::string> texts = {
      "Once upon a time, there was a little girl named Lily.",
      "line one\nline two\n\nline four\n",
      "\ttabbed\tcolumns\t\t end",
      "  leading spaces and trailing  ",
      " ",
      "\n",
      "emoji \xF0\x9F\x98\x80\xF0\x9F\x8E\x89 party \xE2\x9C\x93",
      "\xE4\xB8\xAD\xE6\x96\x87\xE6\xB5\x8B\xE8\xAF\x95 Chinese text \xE4\xBD\xA0\xE5\xA5\xBD",
      "caf\xC3\xA9 na\xC3\xAFve 123 xyz",
  };
  std::mt19937 rng(1234);
  for (int i = 0; i < 20; i++) texts.push_back(random_utf8(rng, 1 + (int)(rng() % 80)));
  for (const Tokenizer* t : {&tok512(), &tok32k()}) {
    for (const auto& s : texts) {
      INFO("tokenizer ", t->path(), " text: ", s);
      CHECK(t->decode(t->encode(s, true, false)) == s);
      CHECK(t->decode(t->encode(s, false, true)) == s);
    }
    CHECK(t->decode(t->encode("", true, true)) == "");
  }
}

TEST_CASE("fast encoder agrees with the naive llama2.c algorithm on TinyStories slices") {
  const std::string text = qf::read_file(kStories);
  REQUIRE(text.size() > 100000);
  const NaiveVocab nv(tok512());
  std::mt19937 rng(42);
  int compared = 0;
  size_t tokens = 0;
  for (int i = 0; i < 200; i++) {
    const std::string s = random_slice(rng, text, 400);
    const bool bos = (i % 3) != 0, eos = (i % 5) == 0;
    const Ids fast = tok512().encode(s, bos, eos);
    INFO("slice: ", s);
    REQUIRE(fast == naive_encode(nv, s, bos, eos));
    CHECK(tok512().decode(fast) == s);
    compared++;
    tokens += fast.size();
  }
  CHECK(compared == 200);
  CHECK(tokens > 200 * 10);  // slices are real text, not empty
  // Random valid UTF-8 exercises the byte fallback on every path.
  for (int i = 0; i < 50; i++) {
    const std::string s = random_utf8(rng, 1 + (int)(rng() % 60));
    REQUIRE(tok512().encode(s) == naive_encode(nv, s, true, false));
  }
}

TEST_CASE("the 32k Llama-2 tokenizer loads and agrees with the naive algorithm") {
  const Tokenizer& t = tok32k();
  CHECK(t.vocab_size() == 32000);
  CHECK(t.piece(29871) == " ");
  CHECK(t.piece(259) == "  ");
  CHECK(t.score(259) == -1e9f);  // below every real merge, but above llama2.c's -1e10 floor
  const std::string text = qf::read_file(kStories);
  const NaiveVocab nv(t);
  std::mt19937 rng(7);
  for (int i = 0; i < 30; i++) {
    const std::string s = random_slice(rng, text, 500);
    INFO("slice: ", s);
    const Ids fast = t.encode(s, true, false);
    REQUIRE(fast == naive_encode(nv, s, true, false));
    CHECK(t.decode(fast) == s);
  }
  // Runs of spaces use the -1e9 "  " token.
  const Ids sp = t.encode("a    b", false, false);
  CHECK(t.decode(sp) == "a    b");
  CHECK(sp == naive_encode(nv, "a    b", false, false));
  // Known ids: "Hello world" -> " Hello" 15043, " world" 3186 in the Llama-2 vocab.
  CHECK(t.encode("Hello world", true, false) == Ids{1, 15043, 3186});
}

TEST_CASE("ties: equal scores merge leftmost first, like llama2.c") {
  TempDir tmp;
  auto v = base_vocab();
  // ids 259.. : all merges share score -1, so only position decides.
  const std::vector<std::string> extra = {" ", "a", "b", "c", "aa", "ab", "ba", "bb", " a", " b",
                                          "aab", "aba", "abab", "baba", "aaaa", "ca", "ac", "cc"};
  for (const auto& e : extra) v.push_back({e, -1.0f});
  v.back().second = -2e10f;  // "cc": below llama2.c's -1e10 start value, never merged
  const std::string path = tmp.file("ties.bin", tok_bytes(v));
  const Tokenizer t = Tokenizer::load(path);
  auto id = [&](const std::string& s) {
    for (int32_t i = 0; i < t.vocab_size(); i++)
      if (t.piece(i) == s) return i;
    FAIL("missing piece ", s);
    return -1;
  };
  // " aaa": pairs " a", "aa", "aa" all score -1; leftmost " a" wins, then "aa".
  CHECK(t.encode("aaa", false, false) == Ids{id(" a"), id("aa")});
  // Without the prefix pair: "caaa" -> "ca" first (leftmost), then "aa".
  CHECK(t.encode("xcaaa", false, false) == Ids{id(" "), 3 + 'x', id("ca"), id("aa")});
  CHECK(t.encode("cc", false, false) == Ids{id(" "), id("c"), id("c")});

  const NaiveVocab nv(t);
  std::mt19937 rng(99);
  const std::string alphabet = "aabbc x";
  for (int i = 0; i < 400; i++) {
    std::string s;
    const int n = 1 + (int)(rng() % 60);
    for (int k = 0; k < n; k++) s += alphabet[rng() % alphabet.size()];
    INFO("text: ", s);
    const Ids fast = t.encode(s, i % 2 == 0, false);
    REQUIRE(fast == naive_encode(nv, s, i % 2 == 0, false));
    CHECK(t.decode(fast) == s);
  }
}

TEST_CASE("scores -0 and +0 tie, as under llama2.c's '>'") {
  TempDir tmp;
  auto v = base_vocab();
  v.push_back({" ", -1});     // 259
  v.push_back({"x", -1});     // 260
  v.push_back({"y", -1});     // 261
  v.push_back({"xy", -0.0f}); // 262
  v.push_back({"yx", 0.0f});  // 263
  const Tokenizer t = Tokenizer::load(tmp.file("zeros.bin", tok_bytes(v)));
  // Pairs "xy" (-0) and "yx" (+0) tie; the leftmost, "xy", merges.
  CHECK(t.encode("xyx", false, false) == Ids{259, 262, 260});
  CHECK(t.encode("yxy", false, false) == Ids{259, 263, 261});
  const NaiveVocab nv(t);
  CHECK(naive_encode(nv, "xyx", false, false) == Ids{259, 262, 260});
}

TEST_CASE("codepoints are grouped as llama2.c does: a byte plus up to 3 continuation bytes") {
  TempDir tmp;
  auto v = base_vocab();
  v.push_back({" ", -1});                  // 259
  v.push_back({"\xF0\x9F\x99\x82", -1});  // 260: U+1F642, a 4-byte codepoint
  v.push_back({"\xC3\xA9", -1});          // 261: e-acute
  v.push_back({"\x82", -1});               // 262: a lone continuation byte
  const Tokenizer t = Tokenizer::load(tmp.file("cp.bin", tok_bytes(v)));
  CHECK(t.encode("\xF0\x9F\x99\x82\xC3\xA9", false, false) == Ids{259, 260, 261});
  // A fifth continuation byte starts a new group (llama2.c stops at 4 bytes).
  CHECK(t.encode("\xF0\x9F\x99\x82\x82", false, false) == Ids{259, 260, 262});
  // Stray continuation bytes group among themselves; "\x82\x82" is absent, so bytes.
  CHECK(t.encode("a\x82\x82", false, false) == Ids{259, 3 + 'a', 3 + 0x82, 3 + 0x82});

  // Arbitrary bytes (not UTF-8; no NUL, as llama2.c takes C strings): same ids as the
  // reference, and decode gives the bytes back.
  const NaiveVocab nv512(tok512());
  std::mt19937 rng(5);
  for (int i = 0; i < 100; i++) {
    std::string s;
    const int n = 1 + (int)(rng() % 40);
    for (int k = 0; k < n; k++) s += (char)(1 + rng() % 255);
    REQUIRE(tok512().encode(s, true, false) == naive_encode(nv512, s, true, false));
    CHECK(tok512().decode(tok512().encode(s, true, false)) == s);
  }
}

TEST_CASE("without a ' ' token the dummy prefix falls back to byte 0x20") {
  TempDir tmp;
  auto v = base_vocab();
  v.push_back({"h", -1});
  v.push_back({"i", -1});
  v.push_back({"hi", -2});
  const Tokenizer t = Tokenizer::load(tmp.file("nospace.bin", tok_bytes(v)));
  CHECK(t.encode("hi", true, false) == Ids{1, 3 + ' ', 261});
  CHECK(t.decode({1, 3 + ' ', 261}) == "hi");
}

TEST_CASE("duplicate vocabulary strings resolve to the lowest id") {
  TempDir tmp;
  auto v = base_vocab();
  v.push_back({" ", -1});   // 259
  v.push_back({"q", -1});   // 260
  v.push_back({"q", -1});   // 261, duplicate
  v.push_back({" q", -3});  // 262
  v.push_back({" q", -1});  // 263, duplicate with a better score: never used
  const Tokenizer t = Tokenizer::load(tmp.file("dups.bin", tok_bytes(v)));
  CHECK(t.encode("q", false, false) == Ids{262});
  CHECK(t.decode({263}) == "q");
}

TEST_CASE("encoding 1 MB of text is fast") {
  const std::string head = qf::read_file(kStories);
  std::string text;
  while (text.size() < (1u << 20)) text += head;
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = tok512().encode(text, true, false);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("tok512 encode of ", text.size(), " bytes: ", sec, " s, ", ids.size(), " tokens");
  CHECK(ids.size() > text.size() / 8);  // a 512 vocab gives a few bytes per token
  CHECK(ids.size() < text.size());
  CHECK(sec < 20.0);  // loose: the quadratic algorithm would take hours here
  CHECK(tok512().decode(ids) == text);
}

TEST_CASE("loader errors name the file and the record") {
  TempDir tmp;
  std::string good;  // 17 well-formed tokens, reused as a prefix
  put_i32(good, 8);
  for (int i = 0; i < 17; i++) put_token(good, std::string(1, (char)('A' + i)) + std::to_string(i), -(float)i);

  check_load_error(tmp.file("empty.bin", ""), "empty");
  check_load_error(tmp.file("header.bin", std::string("\x07\x00", 2)), "truncated header");
  {
    std::string s;
    put_i32(s, -5);
    check_load_error(tmp.file("maxlen.bin", s), "bad max_token_length -5");
  }
  check_load_error(tmp.file("notokens.bin", good.substr(0, 4)), "no tokens");
  {
    std::string s = good;
    put_f32(s, 0.f);
    put_i32(s, 5);
    s += "ab";
    const std::string p = tmp.file("trunc.bin", s);
    std::string want = "tokenizer file '";
    want += p;
    want += "': truncated at token 17 (needs 5 bytes, 2 left)";
    CHECK_THROWS_WITH_AS(Tokenizer::load(p), want.c_str(), qf::Error);
  }
  {
    std::string s = good + std::string("\x00\x00\x80", 3);  // half a record header
    check_load_error(tmp.file("trunc2.bin", s), "truncated at token 17 (needs 8 bytes for score and length, 3 left)");
  }
  {
    std::string s = good;
    put_f32(s, 0.f);
    put_i32(s, -3);
    check_load_error(tmp.file("neg.bin", s), "token 17 has negative length -3");
  }
  {
    std::string s = good;
    put_f32(s, 0.f);
    put_i32(s, 0x7fffffff);
    s += "abc";
    check_load_error(tmp.file("huge.bin", s), "token 17 has length 2147483647 > max_token_length 8");
  }
  {
    std::string s = good;
    put_f32(s, std::numeric_limits<float>::quiet_NaN());
    put_i32(s, 1);
    s += "x";
    check_load_error(tmp.file("nan.bin", s), "token 17 has non-finite score");
  }
  check_load_error(tmp.file("few.bin", good), "has only 17 tokens, needs at least 259");
  {
    auto v = base_vocab();
    std::swap(v[3], v[4]);
    check_load_error(tmp.file("order.bin", tok_bytes(v)), "token 3 is '<0x01>', expected");
  }
  {
    auto v = base_vocab();
    v[3 + 0x41].first = "<0x41 >";
    check_load_error(tmp.file("bytes.bin", tok_bytes(v)), "token 68 is '<0x41 >', expected byte token '<0x41>'");
  }
  const std::string missing = (tmp.dir / "does_not_exist.bin").string();
  check_load_error(missing, "cannot open");
  // A well-formed minimal file loads: the checks above are not over-strict.
  const Tokenizer t = Tokenizer::load(tmp.file("ok.bin", tok_bytes(base_vocab())));
  CHECK(t.vocab_size() == 259);
}
