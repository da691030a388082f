// Tests of the byte-level BPE (gpt2) kind, the pre-tokenizer splits, specs, tokenizer.json
// reading and writing, and their errors. Expectations are hand-computed for tiny vocabularies
// built here, or checked against a naive reference written here; nothing is downloaded.
#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <unistd.h>
#include <vector>

#include "core/error.h"
#include "core/io.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace fs = std::filesystem;
using qf::Tokenizer;
using qf::TokenizerSpec;
using Ids = std::vector<int32_t>;
using Words = std::vector<std::string>;

namespace {

const std::string kShared = QF_SHARED_DIR;
const std::string kTok512 = kShared + "/models/stories260K/tok512.bin";
const std::string kTok32k = kShared + "/models/llama2-tokenizer/tokenizer.bin";
const std::string kStories = kShared + "/data/tinystories_head.txt";
const std::string kG = "\xC4\xA0";  // 'Ġ', GPT-2's byte-level space

struct TempDir {
  fs::path dir;
  TempDir() {
    static int counter = 0;
    dir = fs::temp_directory_path() /
          ("qf_test_tokenizer_bpe_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
    fs::create_directories(dir);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  std::string file(const std::string& name, const std::string& bytes) const {
    const std::string p = (dir / name).string();
    fs::create_directories(fs::path(p).parent_path());
    std::ofstream f(p, std::ios::binary);
    f.write(bytes.data(), (std::streamsize)bytes.size());
    return p;
  }
};

Words split(qf::PreSplit kind, const std::string& text) {
  std::vector<std::string_view> w;
  qf::pre_split(kind, text, w);
  return Words(w.begin(), w.end());
}

std::string byte_char(int b) {
  std::string s;
  qf::utf8_append(s, qf::gpt2_byte_to_cp((uint8_t)b));
  return s;
}

// A tiny GPT-2-style vocabulary: ids 0..255 are the byte characters in byte order, then
// the merges below in rank order, then <|endoftext|> (265, control, BOS and EOS).
TokenizerSpec tiny_gpt2() {
  TokenizerSpec s;
  s.model = "gpt2";
  s.pre = "gpt2";
  s.source = "tiny-gpt2";
  for (int b = 0; b < 256; b++) s.tokens.push_back(byte_char(b));
  const std::vector<std::pair<std::string, std::string>> merges = {
      {kG, "t"},        // 0: Ġt    256
      {"h", "e"},       // 1: he    257
      {kG + "t", "he"}, // 2: Ġthe  258
      {"i", "n"},       // 3: in    259
      {"in", "g"},      // 4: ing   260
      {kG, "a"},        // 5: Ġa    261
      {"e", "r"},       // 6: er    262
      {"t", "h"},       // 7: th    263 (ranks below "h e")
      {"a", "a"},       // 8: aa    264
  };
  for (const auto& [a, b] : merges) {
    s.merges.push_back(a + " " + b);
    s.tokens.push_back(a + b);
  }
  s.tokens.push_back("<|endoftext|>");
  s.token_type.assign(s.tokens.size(), 1);
  s.token_type.back() = 3;
  s.bos_id = s.eos_id = 265;
  s.add_bos = false;
  s.add_space_prefix = false;
  return s;
}

// Catches qf::Error and checks that the message has every fragment.
template <class F>
void check_error(F&& f, std::initializer_list<std::string> fragments) {
  try {
    f();
    std::string all;
    for (const auto& s : fragments) all += "[" + s + "] ";
    FAIL("no error thrown (expected: ", all, ")");
  } catch (const qf::Error& e) {
    const std::string msg = e.what();
    INFO("message: ", msg);
    for (const auto& s : fragments) CHECK(msg.find(s) != std::string::npos);
  }
}

void check_json_error(const TempDir& tmp, const std::string& name, const std::string& content, const std::string& field) {
  const std::string p = tmp.file(name + "/tokenizer.json", content);
  check_error([&] { Tokenizer::load(p); }, {p, field});
}

// ---- a reference byte-level BPE: trained here, applied naively ----

// Trains merges on the pre-tokenized words of text (most frequent pair first; ties by the
// smaller pair), as a realistic vocabulary for agreement and speed tests.
TokenizerSpec train_bpe(const std::string& text, int n_merges, const std::string& pre) {
  qf::PreSplit ps;
  REQUIRE(qf::pre_split_from_name(pre, &ps));
  std::vector<std::string_view> words;
  qf::pre_split(ps, text, words);
  std::map<std::string, long> counts;
  for (auto w : words) counts[std::string(w)]++;
  std::vector<std::pair<std::vector<std::string>, long>> syms;
  for (const auto& [w, c] : counts) {
    std::vector<std::string> v;
    for (unsigned char b : w) v.push_back(byte_char(b));
    syms.emplace_back(v, c);
  }
  TokenizerSpec s;
  s.model = "gpt2";
  s.pre = pre;
  s.source = "trained-" + pre;
  s.add_bos = false;
  s.add_space_prefix = false;
  for (int b = 0; b < 256; b++) s.tokens.push_back(byte_char(b));
  std::map<std::string, int> have;
  for (int b = 0; b < 256; b++) have[s.tokens[b]] = b;
  for (int m = 0; m < n_merges; m++) {
    std::map<std::pair<std::string, std::string>, long> pairs;
    for (const auto& [v, c] : syms)
      for (size_t i = 0; i + 1 < v.size(); i++) pairs[{v[i], v[i + 1]}] += c;
    std::pair<std::string, std::string> best;
    long best_c = 1;
    for (const auto& [p, c] : pairs)
      if (c > best_c) best = p, best_c = c;
    if (best_c < 2) break;
    s.merges.push_back(best.first + " " + best.second);
    const std::string joined = best.first + best.second;
    if (!have.count(joined)) {
      have[joined] = (int)s.tokens.size();
      s.tokens.push_back(joined);
    }
    for (auto& [v, c] : syms) {
      std::vector<std::string> out;
      for (size_t i = 0; i < v.size(); i++) {
        if (i + 1 < v.size() && v[i] == best.first && v[i + 1] == best.second) {
          out.push_back(joined);
          i++;
        } else {
          out.push_back(v[i]);
        }
      }
      v = out;
    }
  }
  s.token_type.assign(s.tokens.size(), 1);
  return s;
}

// Naive rank-order BPE of every word: repeatedly merge the leftmost lowest-rank pair. With
// Llama 3's ignore_merges (pre "llama-bpe"), a word that is a token is taken whole.
Ids naive_bpe(const TokenizerSpec& s, const std::string& text) {
  std::map<std::pair<std::string, std::string>, size_t> rank;
  for (size_t r = 0; r < s.merges.size(); r++) {
    const size_t sp = s.merges[r].find(' ');
    rank.emplace(std::make_pair(s.merges[r].substr(0, sp), s.merges[r].substr(sp + 1)), r);
  }
  std::map<std::string, int32_t> id;
  for (size_t i = 0; i < s.tokens.size(); i++) id.emplace(s.tokens[i], (int32_t)i);
  qf::PreSplit ps;
  qf::pre_split_from_name(s.pre, &ps);
  std::vector<std::string_view> words;
  qf::pre_split(ps, text, words);
  Ids out;
  for (auto w : words) {
    const std::string whole = qf::gpt2_bytes_to_unicode(w);
    if (s.pre == "llama-bpe" && id.count(whole)) {
      out.push_back(id.at(whole));
      continue;
    }
    std::vector<std::string> v;
    for (unsigned char b : w) v.push_back(byte_char(b));
    while (true) {
      size_t best = SIZE_MAX, at = 0;
      for (size_t i = 0; i + 1 < v.size(); i++) {
        auto it = rank.find({v[i], v[i + 1]});
        if (it != rank.end() && it->second < best) best = it->second, at = i;
      }
      if (best == SIZE_MAX) break;
      v[at] += v[at + 1];
      v.erase(v.begin() + (long)at + 1);
    }
    for (const auto& x : v) out.push_back(id.at(x));
  }
  return out;
}

const std::string& stories() {
  static const std::string t = qf::read_file(kStories);
  return t;
}

const TokenizerSpec& trained(const std::string& pre) {
  static std::map<std::string, TokenizerSpec> cache;
  auto it = cache.find(pre);
  if (it == cache.end()) it = cache.emplace(pre, train_bpe(stories().substr(0, 60000), 400, pre)).first;
  return it->second;
}

std::string random_bytes(std::mt19937& rng, int n) {
  std::string s;
  for (int k = 0; k < n; k++) s += (char)(rng() % 256);
  return s;
}

// Some strings with every kind of character class the splitters care about.
const std::vector<std::string>& tricky_texts() {
  static const std::vector<std::string> t = {
      "Once upon a time, there was a little girl named Lily.",
      "I'm here  123 45678 !!  ",
      "Hello\n\nworld  \n x\r\n\ty",
      "don't WON'T they'll I'VE we'd",
      "caf\xC3\xA9 na\xC3\xAFve \xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xE4\xBD\xA0\xE5\xA5\xBD 3.14159",
      "emoji \xF0\x9F\x98\x80\xF0\x9F\x8E\x89 party!!! (really) [x] {y} <z>",
      "   leading and trailing   ",
      "",
      " ",
      "\n",
      "a",
  };
  return t;
}

}  // namespace

// ---- Unicode and the byte mapping ----

TEST_CASE("unicode classes and GPT-2's byte mapping") {
  for (uint32_t cp : {0x41u, 0x7Au, 0xE9u, 0x100u, 0x3B1u, 0x416u, 0x5D0u, 0x627u, 0x915u, 0xE01u, 0x4E2Du, 0xAC00u,
                      0x3042u, 0x30A2u, 0xFF21u, 0x20000u})
    CHECK_MESSAGE(qf::uni_is_letter(cp), "U+", std::hex, cp);
  for (uint32_t cp : {0x30u, 0x39u, 0xB2u, 0xBDu, 0x663u, 0x967u, 0xFF15u, 0x2460u, 0x2163u})
    CHECK_MESSAGE(qf::uni_is_number(cp), "U+", std::hex, cp);
  for (uint32_t cp : {0x21u, 0x27u, 0x5Fu, 0xD7u, 0x301u, 0x93Eu, 0x2014u, 0x1F600u, 0xFFFDu, 0x20u, 0x3000u})
    CHECK_MESSAGE(!qf::uni_is_letter(cp), "U+", std::hex, cp);
  for (uint32_t cp : {0x41u, 0x21u, 0x2014u, 0x1F600u}) CHECK(!qf::uni_is_number(cp));
  for (uint32_t cp : {0x20u, 0x09u, 0x0Au, 0x0Du, 0xA0u, 0x2003u, 0x3000u}) CHECK(qf::uni_is_space(cp));
  for (uint32_t cp : {0x41u, 0x1Cu, 0x200Bu}) CHECK(!qf::uni_is_space(cp));

  CHECK(byte_char(' ') == kG);
  CHECK(byte_char('\n') == "\xC4\x8A");  // 'Ċ'
  CHECK(byte_char('A') == "A");
  CHECK(byte_char(0) == "\xC4\x80");     // U+0100
  CHECK(byte_char(0xAD) == "\xC5\x83");  // U+0143, the last of the 68 shifted bytes
  CHECK(byte_char(0xFF) == "\xC3\xBF");  // 'ÿ' maps to itself
  std::string all;
  for (int b = 0; b < 256; b++) all += (char)b;
  std::string back;
  REQUIRE(qf::gpt2_unicode_to_bytes(qf::gpt2_bytes_to_unicode(all), &back));
  CHECK(back == all);
  CHECK(!qf::gpt2_unicode_to_bytes("a b", &back));  // ' ' is not in the image of the map

  int len;
  CHECK(qf::utf8_next("\xE2\x96\x81", 0, &len) == 0x2581);
  CHECK(len == 3);
  CHECK(qf::utf8_next("\xE2\x96", 0, &len) == 0xFFFD);  // truncated: one byte
  CHECK(len == 1);
  CHECK(qf::utf8_next("\xC0\xAF", 0, &len) == 0xFFFD);  // overlong
}

// ---- pre-tokenizer splits, against hand-written expectations ----

TEST_CASE("gpt2 pre-tokenizer splits") {
  using qf::PreSplit;
  CHECK(split(PreSplit::gpt2, "I'm here  123 45678 !!  ") == Words{"I", "'m", " here", " ", " 123", " 45678", " !!", "  "});
  CHECK(split(PreSplit::gpt2, "Hello\n\nworld  \n x") == Words{"Hello", "\n", "\n", "world", "  \n", " x"});
  CHECK(split(PreSplit::gpt2, "don't I'M we'll they've") == Words{"don", "'t", " I", "'", "M", " we", "'ll", " they", "'ve"});
  CHECK(split(PreSplit::gpt2, "caf\xC3\xA9 \xD0\x9C\xD0\xB8\xD1\x80 \xE4\xBD\xA0\xE5\xA5\xBD 123abc") ==
        Words{"caf\xC3\xA9", " \xD0\x9C\xD0\xB8\xD1\x80", " \xE4\xBD\xA0\xE5\xA5\xBD", " 123", "abc"});
  CHECK(split(PreSplit::gpt2, "(hello) x2") == Words{"(", "hello", ")", " x", "2"});
  CHECK(split(PreSplit::gpt2, "a\tb") == Words{"a", "\t", "b"});
  CHECK(split(PreSplit::gpt2, "x ") == Words{"x", " "});
  CHECK(split(PreSplit::gpt2, " ") == Words{" "});
  CHECK(split(PreSplit::gpt2, "") == Words{});
  // A combining mark is neither \p{L} nor \p{N}: "é" written e + U+0301 splits there.
  CHECK(split(PreSplit::gpt2, "e\xCC\x81t") == Words{"e", "\xCC\x81", "t"});
  // Invalid UTF-8 bytes count as "other" and stay in the text.
  CHECK(split(PreSplit::gpt2, "ab\xFF\xFE cd") == Words{"ab", "\xFF\xFE", " cd"});
}

TEST_CASE("llama-bpe (Llama 3) pre-tokenizer splits") {
  using qf::PreSplit;
  CHECK(split(PreSplit::llama3, "I'm here  123 45678 !!  ") ==
        Words{"I", "'m", " here", " ", " ", "123", " ", "456", "78", " !!", "  "});
  CHECK(split(PreSplit::llama3, "Hello\n\nworld  \n x") == Words{"Hello", "\n\n", "world", "  \n", " x"});
  CHECK(split(PreSplit::llama3, "don't I'M WE'LL") == Words{"don", "'t", " I", "'M", " WE", "'LL"});
  CHECK(split(PreSplit::llama3, "(hello) \tworld") == Words{"(hello", ")", " ", "\tworld"});
  CHECK(split(PreSplit::llama3, "ok!!\n\nnext") == Words{"ok", "!!\n\n", "next"});
  CHECK(split(PreSplit::llama3, "1234567") == Words{"123", "456", "7"});
  CHECK(split(PreSplit::llama3, "caf\xC3\xA9 \xD0\x9C\xD0\xB8\xD1\x80 \xE4\xBD\xA0\xE5\xA5\xBD 12abc") ==
        Words{"caf\xC3\xA9", " \xD0\x9C\xD0\xB8\xD1\x80", " \xE4\xBD\xA0\xE5\xA5\xBD", " ", "12", "abc"});
  CHECK(split(PreSplit::llama3, "a \r\n b") == Words{"a", " \r\n", " b"});
}

TEST_CASE("smollm pre-tokenizer: digits one by one, GPT-2 split between them") {
  using qf::PreSplit;
  CHECK(split(PreSplit::smollm, "I'm here  123 45678 !!  ") ==
        Words{"I", "'m", " here", "  ", "1", "2", "3", " ", "4", "5", "6", "7", "8", " !!", "  "});
  CHECK(split(PreSplit::smollm, "x2y 10") == Words{"x", "2", "y", " ", "1", "0"});
  qf::PreSplit p;
  CHECK(qf::pre_split_from_name("smollm", &p));
  CHECK(p == PreSplit::smollm);
  CHECK(qf::pre_split_from_name("llama-bpe", &p));
  CHECK(p == PreSplit::llama3);
  CHECK(qf::pre_split_from_name("", &p));
  CHECK(p == PreSplit::gpt2);
  CHECK(!qf::pre_split_from_name("qwen2", &p));
}

TEST_CASE("splits tile the text") {
  std::mt19937 rng(7);
  for (auto kind : {qf::PreSplit::gpt2, qf::PreSplit::llama3, qf::PreSplit::smollm}) {
    for (int i = 0; i < 200; i++) {
      const std::string s = random_bytes(rng, 1 + (int)(rng() % 50));
      std::string joined;
      for (const auto& w : split(kind, s)) {
        CHECK(!w.empty());
        joined += w;
      }
      CHECK(joined == s);
    }
  }
}

// ---- the gpt2 kind on a tiny vocabulary ----

TEST_CASE("gpt2 kind: hand-computed encodings of a tiny vocabulary") {
  const Tokenizer t = Tokenizer::from_spec(tiny_gpt2());
  CHECK(t.kind() == Tokenizer::Kind::gpt2);
  CHECK(t.vocab_size() == 266);
  CHECK(t.bos_id() == 265);
  CHECK(t.eos_id() == 265);
  CHECK(t.piece(258) == kG + "the");
  // "the": (h,e) rank 1 beats (t,h) rank 7, and "t he" is no merge.
  CHECK(t.encode("the", false) == Ids{'t', 257});
  // " the": Ġt (0), then he (1), then Ġthe (2).
  CHECK(t.encode(" the", false) == Ids{258});
  CHECK(t.encode("the thing", false) == Ids{'t', 257, 256, 'h', 260});
  CHECK(t.encode("singer", false) == Ids{'s', 260, 262});
  // Ties go to the leftmost pair: "aaa" -> aa a, not a aa.
  CHECK(t.encode("aaa", false) == Ids{264, 'a'});
  CHECK(t.encode(" a  a", false) == Ids{261, ' ', 261});
  CHECK(t.encode("", false) == Ids{});
  // add_bos is false: bos=true adds nothing; eos is appended on request.
  CHECK(t.encode("the", true, true) == Ids{'t', 257, 265});
  CHECK(t.decode({258, 256, 'h', 260}) == " the thing");
  CHECK(t.decode({265, 't', 257, 265}) == "the");  // control tokens are skipped

  TokenizerSpec s = tiny_gpt2();
  s.add_bos = true;
  const Tokenizer tb = Tokenizer::from_spec(s);
  CHECK(tb.encode("the", true) == Ids{265, 't', 257});
  CHECK(tb.encode("the", false) == Ids{'t', 257});
}

TEST_CASE("gpt2 kind: special tokens are matched literally before splitting") {
  TokenizerSpec s = tiny_gpt2();
  s.tokens.push_back("<|user|>");  // 266, user-defined
  s.token_type.push_back(4);
  s.tokens.push_back("<|endoftext|>x");  // 267, longer control token sharing a prefix
  s.token_type.push_back(3);
  const Tokenizer t = Tokenizer::from_spec(s);
  CHECK(t.encode("<|endoftext|>the", false) == Ids{265, 't', 257});
  CHECK(t.encode("the<|endoftext|> the", false) == Ids{'t', 257, 265, 258});
  CHECK(t.encode("<|endoftext|>x", false) == Ids{267});  // longest match wins
  CHECK(t.encode("<|user|><|user|>", false) == Ids{266, 266});
  CHECK(t.encode("<|user|", false) == Ids{'<', '|', 'u', 's', 262, '|'});  // incomplete: plain text
  CHECK(t.decode({266, 258}) == "<|user|> the");                          // user-defined tokens decode as text
}

TEST_CASE("gpt2 kind: decode(encode(s)) == s for random bytes and text") {
  const Tokenizer tiny = Tokenizer::from_spec(tiny_gpt2());
  const Tokenizer tr = Tokenizer::from_spec(trained("gpt2"));
  const Tokenizer tl = Tokenizer::from_spec(trained("llama-bpe"));
  std::mt19937 rng(99);
  std::vector<std::string> texts = tricky_texts();
  for (int i = 0; i < 300; i++) texts.push_back(random_bytes(rng, (int)(rng() % 64)));
  for (const Tokenizer* t : {&tiny, &tr, &tl})
    for (const auto& s : texts) {
      INFO("tokenizer ", t->path(), " text: ", s);
      CHECK(t->decode(t->encode(s, true, true)) == s);
    }
}

TEST_CASE("gpt2 kind: the heap encoder agrees with naive rank-order BPE") {
  for (const std::string pre : {"gpt2", "llama-bpe", "smollm"}) {
    const TokenizerSpec& s = trained(pre);
    REQUIRE(s.merges.size() > 300);
    const Tokenizer t = Tokenizer::from_spec(s);
    // Words whose merges were learnt and words they were not (the tail of the file).
    const std::string text = stories().substr(0, 20000) + stories().substr(stories().size() - 20000);
    INFO("pre ", pre);
    CHECK(t.encode(text, false) == naive_bpe(s, text));
    std::mt19937 rng(3);
    for (const auto& x : tricky_texts()) CHECK(t.encode(x, false) == naive_bpe(s, x));
    for (int i = 0; i < 50; i++) {
      const std::string x = random_bytes(rng, 1 + (int)(rng() % 40));
      CHECK(t.encode(x, false) == naive_bpe(s, x));
    }
  }
}

TEST_CASE("gpt2 kind: ignore_merges (llama-bpe) takes a word that is a token whole") {
  // "abc" is a token, but the merges would make "a" + "bc".
  TokenizerSpec s;
  s.model = "gpt2";
  s.source = "ignore-merges";
  s.add_bos = false;
  s.add_space_prefix = false;
  for (int b = 0; b < 256; b++) s.tokens.push_back(byte_char(b));
  s.tokens.push_back("bc");   // 256
  s.tokens.push_back("abc");  // 257
  s.tokens.push_back("ab");   // 258
  s.merges = {"b c", "a bc", "a b"};
  s.pre = "gpt2";
  CHECK(Tokenizer::from_spec(s).encode("abc", false) == Ids{257});  // a bc -> abc by merges
  s.merges = {"b c", "a b"};                                        // now no merge makes abc
  CHECK(Tokenizer::from_spec(s).encode("abc", false) == Ids{'a', 256});
  s.pre = "llama-bpe";
  CHECK(Tokenizer::from_spec(s).encode("abc", false) == Ids{257});
}

TEST_CASE("gpt2 kind: encoding 1 MB of text is fast") {
  const Tokenizer t = Tokenizer::from_spec(trained("gpt2"));
  std::string text;
  while (text.size() < (1u << 20)) text += stories();
  const auto t0 = std::chrono::steady_clock::now();
  const Ids ids = t.encode(text, false);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("gpt2 kind (", t.vocab_size(), " tokens) encode of ", text.size(), " bytes: ", sec, " s, ", ids.size(), " tokens");
  CHECK(ids.size() < text.size() / 2);
  CHECK(sec < 5.0);
  CHECK(t.decode(ids) == text);
}

// ---- specs ----

TEST_CASE("spec() of a tokenizer.bin, and from_spec of it, match the llama2.c tokenizer") {
  const Tokenizer bin = Tokenizer::load(kTok512);
  const TokenizerSpec s = bin.spec();
  CHECK(s.model == "llama");
  CHECK(s.source == kTok512);
  REQUIRE(s.tokens.size() == 512);
  REQUIRE(s.scores.size() == 512);
  REQUIRE(s.token_type.size() == 512);
  CHECK(s.tokens[0] == "<unk>");
  CHECK(s.tokens[1] == "<s>");
  CHECK(s.tokens[2] == "</s>");
  CHECK(s.tokens[3] == "<0x00>");
  CHECK(s.tokens[410] == "\xE2\x96\x81");  // ' ' is '▁' in a spec
  CHECK(s.token_type[0] == 2);
  CHECK(s.token_type[1] == 3);
  CHECK(s.token_type[2] == 3);
  for (int i = 3; i < 259; i++) CHECK(s.token_type[i] == 6);
  CHECK(s.token_type[259] == 1);
  CHECK(s.scores[260] == -1.0f);
  CHECK(s.bos_id == 1);
  CHECK(s.eos_id == 2);
  CHECK(s.unk_id == 0);
  CHECK(s.add_bos);
  CHECK(s.add_space_prefix);

  const Tokenizer t = Tokenizer::from_spec(s);
  CHECK(t.kind() == Tokenizer::Kind::llama);
  CHECK(t.bos_id() == 1);
  CHECK(t.eos_id() == 2);
  CHECK(t.piece(410) == " ");
  const std::string text = stories().substr(0, 50000);
  CHECK(t.encode(text, true, true) == bin.encode(text, true, true));
  for (const auto& x : tricky_texts()) CHECK(t.encode(x, true, false) == bin.encode(x, true, false));
  CHECK(t.decode(t.encode(text)) == text);
  // Unlike llama2.c's tokenizer.bin, a spec's special tokens are matched in the text.
  CHECK(t.encode("<s>", false) == Ids{1});
}

TEST_CASE("llama kind from a spec: ids from the spec, no byte tokens means <unk>, no prefix") {
  TokenizerSpec s;
  s.model = "llama";
  s.source = "tiny-llama";
  s.tokens = {"<pad>", "<unk>", "<bos>", "<eos>", "\xE2\x96\x81", "a", "b", "\xE2\x96\x81" "a", "ab", "\xE2\x96\x81" "ab"};
  s.scores = {0, 0, 0, 0, -1, -1, -1, -3, -2, -4};
  s.token_type = {3, 2, 3, 3, 1, 1, 1, 1, 1, 1};
  s.bos_id = 2;
  s.eos_id = 3;
  s.unk_id = 1;
  s.pad_id = 0;
  const Tokenizer t = Tokenizer::from_spec(s);
  CHECK(t.bos_id() == 2);
  CHECK(t.eos_id() == 3);
  // "ab": ▁ a b -> (a,b) "ab" -2 beats (▁,a) -3 -> ▁ ab -> ▁ab.
  CHECK(t.encode("ab", true, true) == Ids{2, 9, 3});
  CHECK(t.encode("a b", false) == Ids{7, 4, 6});
  CHECK(t.encode("ac", false) == Ids{7, 1});  // 'c' has no token and there are no byte tokens
  CHECK(t.decode({2, 9, 4, 5, 3}) == "ab a");
  s.add_space_prefix = false;
  CHECK(Tokenizer::from_spec(s).encode("ab", false) == Ids{8});
}

TEST_CASE("from_spec rejects bad specs, naming the source") {
  auto bad = [](auto edit, const std::string& what) {
    TokenizerSpec s = tiny_gpt2();
    s.source = "bad-spec.gguf";
    edit(s);
    check_error([&] { Tokenizer::from_spec(s); }, {"bad-spec.gguf", what});
  };
  bad([](TokenizerSpec& s) { s.model = "bert"; }, "model 'bert' is not supported");
  bad([](TokenizerSpec& s) { s.tokens.clear(); }, "has no tokens");
  bad([](TokenizerSpec& s) { s.scores = {1.0f, 2.0f}; }, "has 2 scores for 266 tokens");
  bad([](TokenizerSpec& s) { s.token_type.pop_back(); }, "has 265 token types for 266 tokens");
  bad([](TokenizerSpec& s) { s.token_type[5] = 9; }, "token 5 has token type 9");
  bad([](TokenizerSpec& s) { s.bos_id = 266; }, "bos_id 266 is out of range (266 tokens)");
  bad([](TokenizerSpec& s) { s.eos_id = -7; }, "eos_id -7 is out of range");
  bad([](TokenizerSpec& s) { s.merges.push_back("x qq"); }, "merge 9 'x qq' refers to unknown token 'qq'");
  bad([](TokenizerSpec& s) { s.merges.push_back("xy"); }, "merge 9 'xy' is not two tokens");
  bad([](TokenizerSpec& s) { s.merges.push_back("x y"); }, "merge 9 'x y' makes 'xy', which is not a token");
  bad([](TokenizerSpec& s) { s.pre = "qwen2"; }, "pre-tokenizer 'qwen2' is not supported");
  bad([](TokenizerSpec& s) { s.model = "llama"; }, "needs one score per token");
  bad(
      [](TokenizerSpec& s) {
        s.model = "llama";
        s.scores.assign(s.tokens.size(), 0.0f);
        s.token_type.assign(s.tokens.size(), 1);
      },
      "has no byte token <0x00> and no unknown token");
  bad(
      [](TokenizerSpec& s) {
        s.model = "llama";
        s.scores.assign(s.tokens.size(), 0.0f);
        s.token_type[7] = 6;
      },
      "token 7 has type 6 (byte) but is");
}

// ---- tokenizer.json ----

namespace {

// A GPT-2-style tokenizer.json of the tiny vocabulary, written by hand.
std::string tiny_json(bool pair_merges, const std::string& pre_tokenizer) {
  const TokenizerSpec s = tiny_gpt2();
  nlohmann::json vocab = nlohmann::json::object();
  for (size_t i = 0; i + 1 < s.tokens.size(); i++) vocab[s.tokens[i]] = i;
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& m : s.merges) {
    const size_t sp = m.find(' ');
    if (pair_merges) merges.push_back({m.substr(0, sp), m.substr(sp + 1)});
    else merges.push_back(m);
  }
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens", {{{"id", 265}, {"content", "<|endoftext|>"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", nlohmann::json::parse(pre_tokenizer)},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
  };
  return j.dump(2);
}

const char* kByteLevel = R"({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})";

}  // namespace

TEST_CASE("tokenizer.json (GPT-2 style) written here loads and gives the expected ids") {
  TempDir tmp;
  for (bool pairs : {false, true}) {
    const std::string p = tmp.file(std::string(pairs ? "pairs" : "strings") + "/tokenizer.json", tiny_json(pairs, kByteLevel));
    const Tokenizer t = Tokenizer::load(p);
    INFO("merges as ", pairs ? "pairs" : "strings");
    CHECK(t.kind() == Tokenizer::Kind::gpt2);
    CHECK(t.path() == p);
    CHECK(t.vocab_size() == 266);
    CHECK(t.encode("the thing", false) == Ids{'t', 257, 256, 'h', 260});
    CHECK(t.encode("<|endoftext|> the", false) == Ids{265, 258});
    CHECK(t.token_type(265) == 3);
    CHECK(t.bos_id() == 265);  // by name: <|endoftext|>
    CHECK(t.eos_id() == 265);
    CHECK(!t.add_bos());
    CHECK(t.spec().pre == "gpt2");
  }
  // ByteLevel's add_prefix_space.
  {
    const std::string p = tmp.file("prefix/tokenizer.json", tiny_json(false, R"({"type": "ByteLevel"})"));
    const Tokenizer t = Tokenizer::load(p);
    CHECK(t.encode("the", false) == Ids{258});
  }
  // Llama 3's Split + ByteLevel(use_regex=false), and SmolLM2's Digits + ByteLevel.
  {
    nlohmann::json pre = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", qf::kLlama3Regex}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
    const Tokenizer t = Tokenizer::load(tmp.file("l3/tokenizer.json", tiny_json(false, pre.dump())));
    CHECK(t.spec().pre == "llama-bpe");
    CHECK(t.encode("a 1234", false) == Ids{'a', ' ', '1', '2', '3', '4'});
    nlohmann::json pre2 = {{"type", "Sequence"},
                           {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, nlohmann::json::parse(kByteLevel)}}};
    CHECK(Tokenizer::load(tmp.file("smol/tokenizer.json", tiny_json(false, pre2.dump()))).spec().pre == "smollm");
  }
  // BOS/EOS and add_bos from tokenizer_config.json beside the file.
  {
    const std::string p = tmp.file("cfg/tokenizer.json", tiny_json(false, kByteLevel));
    tmp.file("cfg/tokenizer_config.json",
             R"({"add_bos_token": true, "bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|endoftext|>"})");
    const Tokenizer t = Tokenizer::load(p);
    CHECK(t.add_bos());
    CHECK(t.encode("the", true) == Ids{265, 't', 257});
  }
}

TEST_CASE("tokenizer_json(spec) round trip: same ids after writing and loading") {
  TempDir tmp;
  // gpt2 kind: trained vocabularies with a special token.
  for (const std::string pre : {"gpt2", "llama-bpe", "smollm"}) {
    TokenizerSpec s = trained(pre);
    s.tokens.push_back("<|endoftext|>");
    s.token_type.push_back(3);
    s.bos_id = s.eos_id = (int32_t)s.tokens.size() - 1;
    s.add_bos = true;
    const Tokenizer a = Tokenizer::from_spec(s);
    const std::string p = tmp.file(pre + "/tokenizer.json", qf::tokenizer_json(s));
    const Tokenizer b = Tokenizer::load(p);
    INFO("pre ", pre);
    CHECK(b.kind() == Tokenizer::Kind::gpt2);
    CHECK(b.vocab_size() == a.vocab_size());
    CHECK(b.bos_id() == a.bos_id());
    CHECK(b.add_bos());
    CHECK(b.spec().pre == pre);
    CHECK(b.spec().merges == s.merges);
    for (const auto& x : tricky_texts()) CHECK(b.encode(x) == a.encode(x));
    const std::string text = stories().substr(0, 30000) + "<|endoftext|>" + stories().substr(30000, 30000);
    CHECK(b.encode(text, true, true) == a.encode(text, true, true));
  }
  // llama kind: Metaspace + byte_fallback, merges derived from the scores.
  for (const std::string& path : {kTok512, kTok32k}) {
    const Tokenizer bin = Tokenizer::load(path);
    const std::string js = qf::tokenizer_json(bin.spec());
    const std::string p = tmp.file(fs::path(path).stem().string() + "/tokenizer.json", js);
    const Tokenizer j = Tokenizer::load(p);
    INFO("from ", path);
    CHECK(j.kind() == Tokenizer::Kind::llama);
    CHECK(j.vocab_size() == bin.vocab_size());
    CHECK(j.bos_id() == 1);  // "<s>" from the post-processor template
    CHECK(j.eos_id() == 2);  // "</s>" by name
    CHECK(j.add_bos());
    CHECK(j.token_type(3 + 0x41) == 6);
    const std::string text = path == kTok512 ? stories() : stories().substr(0, 40000);
    CHECK(j.encode(text, true, false) == bin.encode(text, true, false));
    for (const auto& x : tricky_texts()) CHECK(j.encode(x, true, false) == bin.encode(x, true, false));
    CHECK(j.decode(j.encode(text)) == text);
    // Writing the loaded one again gives the same file.
    CHECK(qf::tokenizer_json(j.spec()) == js);
  }
}

TEST_CASE("tokenizer.json with a Metaspace pre-tokenizer reads as the llama kind") {
  TempDir tmp;
  const Tokenizer bin = Tokenizer::load(kTok512);
  for (const char* form : {R"({"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": false})",
                           R"({"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": true})",
                           R"({"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "never"})"}) {
    nlohmann::json j = nlohmann::json::parse(qf::tokenizer_json(bin.spec()));
    j["normalizer"] = nullptr;
    j["pre_tokenizer"] = nlohmann::json::parse(form);
    const std::string p = tmp.file(std::to_string(std::hash<std::string>{}(form)) + "/tokenizer.json", j.dump());
    const Tokenizer t = Tokenizer::load(p);
    INFO("pre_tokenizer ", std::string(form));
    CHECK(t.kind() == Tokenizer::Kind::llama);
    const std::string text = stories().substr(0, 20000);
    if (std::string(form).find("never") == std::string::npos) {
      CHECK(t.spec().add_space_prefix);
      CHECK(t.encode(text, true) == bin.encode(text, true));
    } else {
      CHECK(!t.spec().add_space_prefix);
      TokenizerSpec no_prefix = bin.spec();
      no_prefix.add_space_prefix = false;
      const Tokenizer ref = Tokenizer::from_spec(no_prefix);
      CHECK(t.encode(text, true) == ref.encode(text, true));
      CHECK(t.encode("Once", false) != bin.encode("Once", false));
      CHECK(t.decode(t.encode(text)) == text);
    }
  }
  // Without byte_fallback the byte tokens are ordinary tokens, and a missing character is <unk>.
  nlohmann::json j = nlohmann::json::parse(qf::tokenizer_json(bin.spec()));
  j["model"]["byte_fallback"] = false;
  const Tokenizer t = Tokenizer::load(tmp.file("nofallback/tokenizer.json", j.dump()));
  CHECK(t.token_type(3) == 1);
  CHECK(t.encode("\xE2\x9C\x93", false) == Ids{410, 0});
}

TEST_CASE("tokenizer.json errors name the file and the field") {
  TempDir tmp;
  const std::string good = tiny_json(false, kByteLevel);
  check_json_error(tmp, "trunc", good.substr(0, good.size() / 2), "not valid JSON");
  check_json_error(tmp, "notobj", "{\"model\": 3}", "field 'model'");
  check_json_error(tmp, "novocab", R"({"model": {"type": "BPE", "merges": []}})", "field 'model.vocab'");
  check_json_error(tmp, "unigram", R"({"model": {"type": "Unigram", "vocab": {}}})", "field 'model.type' is 'Unigram'");
  check_json_error(tmp, "range", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 5}}})", "field 'model.vocab': id 5 is beyond");
  check_json_error(tmp, "huge", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 4000000000}}})", "field 'model.vocab': token 'b' has id 4000000000");
  check_json_error(tmp, "neg", R"({"model": {"type": "BPE", "vocab": {"a": -1}}})", "field 'model.vocab': token 'a' has id -1");
  check_json_error(tmp, "dup", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 0, "c": 1}}})",
                   "field 'model.vocab': id 0 is given to both");
  check_json_error(tmp, "str", R"({"model": {"type": "BPE", "vocab": {"a": "0"}}})", "field 'model.vocab'");
  const std::string pre = std::string(R"("pre_tokenizer": )") + kByteLevel;
  check_json_error(tmp, "merge1", R"({)" + pre + R"(, "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a x"]}})",
                   "field 'model.merges[0]': 'x' is not in model.vocab");
  check_json_error(tmp, "merge2", R"({)" + pre + R"(, "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]}})",
                   "field 'model.merges[0]': the merge result 'ab'");
  check_json_error(tmp, "merge3", R"({)" + pre + R"(, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": [7]}})",
                   "field 'model.merges[0]'");
  check_json_error(tmp, "added", R"({"added_tokens": [{"id": 0, "content": "<s>"}], "model": {"type": "BPE", "vocab": {"a": 0}}})",
                   "field 'added_tokens[0]': id 0 is '<s>' here but 'a' in model.vocab");
  check_json_error(tmp, "added2", R"({"added_tokens": [{"id": "x"}], "model": {"type": "BPE", "vocab": {"a": 0}}})",
                   "field 'added_tokens[0]'");
  check_json_error(tmp, "regex",
                   R"({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\p{N}+"}, "behavior": "Isolated"}, {"type": "ByteLevel", "use_regex": false}]}, "model": {"type": "BPE", "vocab": {"a": 0}}})",
                   "field 'pre_tokenizer.pretokenizers[0].pattern.Regex': unknown regex");
  check_json_error(tmp, "nopre", R"({"pre_tokenizer": {"type": "Whitespace"}, "model": {"type": "BPE", "vocab": {"a": 0}}})",
                   "field 'pre_tokenizer'");
  check_json_error(tmp, "unk", R"({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"type": "BPE", "unk_token": "<unk>", "vocab": {"a": 0}}})",
                   "field 'model.unk_token'");
  check_json_error(tmp, "types", R"({"pre_tokenizer": 5, "model": {"type": "BPE", "vocab": {"a": 0}}})", "field 'pre_tokenizer'");
  // A bad tokenizer_config.json beside a good file names the config and the field.
  {
    const std::string p = tmp.file("cfgbad/tokenizer.json", good);
    const std::string c = tmp.file("cfgbad/tokenizer_config.json", R"({"bos_token": "<nope>"})");
    check_error([&] { Tokenizer::load(p); }, {c, "field 'bos_token': '<nope>' is not a token"});
    tmp.file("cfgbad/tokenizer_config.json", "{\"bos_token\": ");
    check_error([&] { Tokenizer::load(p); }, {c, "not valid JSON"});
  }
  // A tokenizer.bin whose max_token_length is 123 ('{') is still read as tokenizer.bin.
  {
    std::string s;
    const int32_t ml = 123;
    s.append((const char*)&ml, 4);
    check_error([&] { Tokenizer::load(tmp.file("brace.bin", s)); }, {"brace.bin", "contains no tokens"});
  }
}

TEST_CASE("gpt2 kind: a byte without a token is an error naming the tokenizer and the byte") {
  TokenizerSpec s;
  s.model = "gpt2";
  s.source = "ascii-only.gguf";
  s.add_bos = false;
  s.add_space_prefix = false;
  for (int b = 0; b < 128; b++) s.tokens.push_back(byte_char(b));
  const Tokenizer t = Tokenizer::from_spec(s);
  CHECK(t.encode("plain", false).size() == 5);
  check_error([&] { t.encode("caf\xC3\xA9", false); }, {"ascii-only.gguf", "byte 0xc3 has no token"});
  s.tokens.push_back("<unk>");
  s.unk_id = 128;
  CHECK(Tokenizer::from_spec(s).encode("\xC3\xA9", false) == Ids{128, 128});
}

TEST_CASE("tokenizer_json rejects specs it cannot write") {
  TokenizerSpec s = tiny_gpt2();
  s.source = "dups.gguf";
  s.tokens.push_back("he");  // a second "he"
  s.token_type.push_back(1);
  check_error([&] { qf::tokenizer_json(s); }, {"dups.gguf", "token 266 'he' repeats token 257"});
  s = tiny_gpt2();
  s.source = "badpre.gguf";
  s.pre = "falcon";
  check_error([&] { qf::tokenizer_json(s); }, {"badpre.gguf", "pre-tokenizer 'falcon'"});
}
