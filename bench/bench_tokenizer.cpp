// Tokenizer throughput: encode/decode of >= 1 MB of TinyStories with the 512 and 32k
// vocabularies (tokenizer.bin, and the 32k one written to tokenizer.json and read back), the
// byte-level BPE (gpt2) kind on the 32k vocabulary recast as GPT-2-style byte-level BPE, an
// optional tokenizer.json of your own, and the naive quadratic llama2.c merge loop on a 20 KB
// slice for scale.
// usage: bench_tokenizer [tok512.bin] [llama2 tokenizer.bin] [text.txt] [tokenizer.json]
//        bench_tokenizer --to-json TOKENIZER OUT.json   (writes tokenizer_json(spec) of any tokenizer)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <unordered_map>
#include <unistd.h>
#include <vector>

#include "core/omp_wait.h"
#include "core/error.h"
#include "core/io.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

using qf::Tokenizer;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// llama2.c's encode() as written in run.c (hash lookups instead of bsearch): O(n²) merges.
std::vector<int32_t> naive_encode(const Tokenizer& t, const std::string& text) {
  std::unordered_map<std::string, int32_t> index;
  std::vector<std::string> pieces;
  for (int32_t i = 0; i < t.vocab_size(); i++) {
    pieces.push_back(t.piece(i));
    index.emplace(pieces.back(), i);
  }
  auto lookup = [&](const std::string& s) {
    auto it = index.find(s);
    return it == index.end() ? -1 : it->second;
  };
  std::vector<int32_t> tokens{1};
  if (!text.empty()) tokens.push_back(lookup(" ") >= 0 ? lookup(" ") : ' ' + 3);
  std::string buf;
  for (size_t i = 0; i < text.size(); i++) {
    buf += text[i];
    if (i + 1 < text.size() && ((unsigned char)text[i + 1] & 0xC0) == 0x80 && buf.size() < 4) continue;
    int32_t id = lookup(buf);
    if (id >= 0) tokens.push_back(id);
    else for (unsigned char b : buf) tokens.push_back((int32_t)b + 3);
    buf.clear();
  }
  std::string pair;
  while (true) {
    float best = -1e10f;
    int32_t best_id = -1;
    int64_t best_idx = -1;
    for (size_t i = 0; i + 1 < tokens.size(); i++) {
      pair.assign(pieces[tokens[i]]);
      pair += pieces[tokens[i + 1]];
      int32_t id = lookup(pair);
      if (id >= 0 && t.score(id) > best) {
        best = t.score(id);
        best_id = id;
        best_idx = (int64_t)i;
      }
    }
    if (best_idx < 0) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + best_idx + 1);
  }
  return tokens;
}

void bench(const char* name, const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids;
  double enc = 1e30, dec = 1e30;
  std::string back;
  for (int rep = 0; rep < 3; rep++) {
    auto t0 = Clock::now();
    ids = tok.encode(text, true, false);
    enc = std::min(enc, seconds_since(t0));
  }
  for (int rep = 0; rep < 3; rep++) {
    auto t0 = Clock::now();
    back = tok.decode(ids);
    dec = std::min(dec, seconds_since(t0));
  }
  const double mb = (double)text.size() / 1e6;
  std::printf("%-11s vocab %5d: %zu bytes -> %zu tokens (%.2f bytes/token)%s\n", name, tok.vocab_size(),
              text.size(), ids.size(), (double)text.size() / (double)ids.size(),
              back == text ? "" : "  ROUND TRIP MISMATCH");
  std::printf("  encode: %8.4f s  %8.2f MB/s  %12.0f tokens/s   (best of 3)\n", enc, mb / enc, ids.size() / enc);
  std::printf("  decode: %8.4f s  %8.2f MB/s  %12.0f tokens/s   (best of 3)\n", dec, mb / dec, ids.size() / dec);
}

// The llama2 SentencePiece vocabulary as GPT-2-style byte-level BPE: '▁' becomes ' ', every
// token is written in GPT-2's byte characters, <0xXX> become the byte characters, and the
// merges are every split of a token into two tokens, by descending score. A realistic
// 32k vocabulary with tens of thousands of merges, for timing the gpt2 kind.
qf::TokenizerSpec as_byte_level(const Tokenizer& sp) {
  const qf::TokenizerSpec in = sp.spec();
  qf::TokenizerSpec s;
  s.model = "gpt2";
  s.pre = "gpt2";
  s.source = in.source + " (as byte-level BPE)";
  s.add_bos = false;
  s.add_space_prefix = false;
  std::unordered_map<std::string, int32_t> index;
  for (size_t i = 0; i < in.tokens.size(); i++) {
    std::string t = in.tokens[i];
    int32_t ty = in.token_type[i];
    if (ty == 6) {
      t = qf::gpt2_bytes_to_unicode(std::string(1, (char)std::stoi(t.substr(3, 2), nullptr, 16)));
      ty = 1;
    } else if (ty == 1) {
      std::string spaced;  // '▁' -> ' '
      for (size_t k = 0; k < t.size(); k++) {
        if (t.compare(k, 3, "\xE2\x96\x81") == 0) spaced += ' ', k += 2;
        else spaced += t[k];
      }
      t = spaced;
      t = qf::gpt2_bytes_to_unicode(t);
    }
    s.tokens.push_back(t);
    s.token_type.push_back(ty);
    index.emplace(t, (int32_t)i);
  }
  std::vector<std::pair<float, std::string>> merges;
  for (size_t i = 0; i < s.tokens.size(); i++) {
    const std::string& t = s.tokens[i];
    if (s.token_type[i] != 1 || in.scores[i] <= -1e10f) continue;
    for (size_t cut = 1; cut < t.size(); cut++) {
      if (((unsigned char)t[cut] & 0xC0) == 0x80) continue;
      if (index.count(t.substr(0, cut)) && index.count(t.substr(cut)))
        merges.emplace_back(in.scores[i], t.substr(0, cut) + " " + t.substr(cut));
    }
  }
  std::stable_sort(merges.begin(), merges.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (auto& m : merges) s.merges.push_back(m.second);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  qf::default_passive_wait(argv);  // same OpenMP wait policy as qforge
  if (argc == 4 && std::string(argv[1]) == "--to-json") {
    try {
      qf::write_file_atomic(argv[3], qf::tokenizer_json(Tokenizer::load(argv[2]).spec()));
      return 0;
    } catch (const qf::Error& e) {
      std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
      return 1;
    }
  }
  const std::string p512 = argc > 1 ? argv[1] : "../shared/models/stories260K/tok512.bin";
  const std::string p32k = argc > 2 ? argv[2] : "../shared/models/llama2-tokenizer/tokenizer.bin";
  const std::string ptxt = argc > 3 ? argv[3] : "../shared/data/tinystories_head.txt";
  try {
    const Tokenizer t512 = Tokenizer::load(p512);
    const Tokenizer t32k = Tokenizer::load(p32k);
    const std::string head = qf::read_file(ptxt);
    if (head.empty()) qf::fail("text file '", ptxt, "' is empty");
    std::string text;
    while (text.size() < (1u << 20)) text += head;
    std::printf("text: %s repeated to %zu bytes\n", ptxt.c_str(), text.size());
    bench("tok512", t512, text);
    bench("llama2", t32k, text);
    {
      const std::string json_path = "/tmp/bench_tokenizer_" + std::to_string(getpid()) + ".json";
      qf::write_file_atomic(json_path, qf::tokenizer_json(t32k.spec()));
      auto t0 = Clock::now();
      const Tokenizer tj = Tokenizer::load(json_path);
      std::printf("llama2 32k written as tokenizer.json and loaded back in %.3f s\n", seconds_since(t0));
      std::remove(json_path.c_str());
      bench("llama2.json", tj, text);
      const std::string dif = tj.encode(text, true, false) == t32k.encode(text, true, false) ? "identical" : "DIFFERENT";
      std::printf("  ids vs tokenizer.bin: %s\n", dif.c_str());
    }
    {
      auto t0 = Clock::now();
      const qf::TokenizerSpec bl = as_byte_level(t32k);
      const Tokenizer tb = Tokenizer::from_spec(bl);
      std::printf("byte-level BPE from the 32k vocab: %zu merges, built in %.3f s\n", bl.merges.size(), seconds_since(t0));
      bench("gpt2-bpe", tb, text);
    }
    if (argc > 4) bench("json", Tokenizer::load(argv[4]), text);

    // The quadratic algorithm on a 20 KB slice (cut at a codepoint boundary).
    size_t n = 20000;
    while (n < head.size() && ((unsigned char)head[n] & 0xC0) == 0x80) n++;
    const std::string slice = head.substr(0, n);
    auto t0 = Clock::now();
    const auto slow = naive_encode(t512, slice);
    const double naive = seconds_since(t0);
    t0 = Clock::now();
    const auto fast = t512.encode(slice, true, false);
    const double quick = seconds_since(t0);
    std::printf("naive O(n^2) llama2.c merge, tok512, %zu bytes: %.3f s (%.4f MB/s); fast: %.5f s; %.0fx; %s\n",
                slice.size(), naive, slice.size() / 1e6 / naive, quick, naive / quick,
                slow == fast ? "identical ids" : "IDS DIFFER");
    return slow == fast ? 0 : 1;
  } catch (const qf::Error& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
}
