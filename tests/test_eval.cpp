// Evaluation: the protocols (windows, BOS, scored positions, formulas) and the KL divergence
// against a model or recorded reference logits, each checked against a brute-force f64
// computation over full logits from qf::forward.
#include <doctest/doctest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/io.h"
#include "eval/eval.h"
#include "formats/loader.h"
#include "model/forward.h"
#include "scratch_dir.h"

using namespace qf;

static const std::string kShared = QF_SHARED_DIR;

static const Model& stories() {
  static Model m = load_model(resolve_model_files(kShared + "/models/stories260K"));
  return m;
}

// A copy with every linear's weights perturbed (a stand-in for a quantized model).
static const Model& perturbed() {
  static Model q = [] {
    Model c = stories().clone();
    uint64_t s = 12345;
    for (Block& b : c.blocks)
      for (Linear& l : b.linears) {
        Tensor W = l.weight.contiguous().clone();
        float* p = W.f32();
        for (int64_t i = 0; i < W.numel(); ++i) {
          s = s * 6364136223846793005ull + 1442695040888963407ull;
          p[i] *= 1.0f + 0.3f * ((float)(s >> 40) / (float)(1 << 24) - 0.5f);
        }
        l.weight = W;
      }
    return c;
  }();
  return q;
}

static std::vector<int32_t> stream(size_t n) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = (int32_t)(3 + (i * 7919 + i / 7) % 500);
  t[0] = 1;
  return t;
}

// f64 log-softmax of one logits row.
static std::vector<double> log_softmax(const Tensor& lg, int64_t row) {
  const int64_t V = lg.size(1);
  double mx = -1e300, se = 0;
  for (int64_t j = 0; j < V; ++j) mx = std::max(mx, (double)lg.get({row, j}));
  for (int64_t j = 0; j < V; ++j) se += std::exp((double)lg.get({row, j}) - mx);
  std::vector<double> out((size_t)V);
  for (int64_t j = 0; j < V; ++j) out[(size_t)j] = (double)lg.get({row, j}) - mx - std::log(se);
  return out;
}

struct Brute {
  std::vector<double> nll, kl, kl_lc, dp;
  std::vector<int> same;
};

// Brute force over windows of L tokens: positions first … L−2, BOS (when ≥ 0) at each window start.
static Brute brute(const Model& q, const Model& ref, const std::vector<int32_t>& toks, int L, int nwin, int first, int32_t bos) {
  Brute b;
  for (int w = 0; w < nwin; ++w) {
    std::vector<int32_t> ids(toks.begin() + (int64_t)w * L, toks.begin() + (int64_t)(w + 1) * L);
    if (bos >= 0) ids[0] = bos;
    const Tensor lq = forward(q, ids, 1, L), lr = forward(ref, ids, 1, L);
    for (int t = first; t < L - 1; ++t) {
      const auto a = log_softmax(lq, t), r = log_softmax(lr, t);
      double d = 0, dl = 0;
      for (size_t j = 0; j < a.size(); ++j) {
        d += std::exp(r[j]) * (r[j] - a[j]);
        if (r[j] > -16) dl += std::exp(r[j]) * (r[j] - a[j]);
      }
      b.kl_lc.push_back(dl);
      b.nll.push_back(-a[(size_t)ids[t + 1]]);
      b.kl.push_back(d);
      b.dp.push_back(std::exp(a[(size_t)ids[t + 1]]) - std::exp(r[(size_t)ids[t + 1]]));
      b.same.push_back(std::max_element(a.begin(), a.end()) - a.begin() == std::max_element(r.begin(), r.end()) - r.begin());
    }
  }
  return b;
}

static double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / (double)v.size();
}

TEST_CASE("protocols: the table, unknown names, defaults") {
  CHECK(protocol_names() == std::vector<std::string>{"nonoverlap", "llamacpp", "gptq"});
  CHECK_THROWS_WITH_AS(protocol_info("wikitext"), doctest::Contains("unknown protocol 'wikitext' (known: nonoverlap, llamacpp, gptq)"), Error);
  PplOptions o;
  o.protocol = "bogus";
  CHECK_THROWS_WITH_AS(perplexity(stories(), stream(1200), o), doctest::Contains("unknown protocol 'bogus'"), Error);
  // gptq's 2048-token default is capped at stories260K's 512-token context
  o.protocol = "gptq";
  const PplResult g = perplexity(stories(), stream(1200), o);
  CHECK(g.seqlen == 512);
  CHECK(g.windows == 2);
  CHECK(g.protocol.rfind("protocol gptq-L512: ", 0) == 0);
}

TEST_CASE("protocol llamacpp: BOS at each chunk, the second half scored, as brute force") {
  const auto toks = stream(1100);
  PplOptions o;
  o.protocol = "llamacpp";
  o.seqlen = 128;
  o.max_windows = 3;
  o.bos_id = 1;
  const PplResult r = perplexity(stories(), toks, o);
  CHECK(r.windows == 3);
  CHECK(r.tokens_scored == 3 * (127 - 64));
  const Brute b = brute(stories(), stories(), toks, 128, 3, 64, 1);
  CHECK(r.nll == doctest::Approx(mean(b.nll)).epsilon(1e-10));
  CHECK(r.protocol.find("first token of each chunk set to BOS (id 1)") != std::string::npos);
  // without BOS (a tokenizer that adds none) the chunks keep their first token
  o.bos_id = -1;
  const Brute nb = brute(stories(), stories(), toks, 128, 3, 64, -1);
  const PplResult r2 = perplexity(stories(), toks, o);
  CHECK(r2.nll == doctest::Approx(mean(nb.nll)).epsilon(1e-10));
  CHECK(r2.nll != r.nll);
  o.seqlen = 3;
  CHECK_THROWS_WITH_AS(perplexity(stories(), toks, o), doctest::Contains("protocol llamacpp needs seqlen >= 4"), Error);
}

TEST_CASE("protocol gptq: exp(Σ L·mean_w / (n·L)) equals nonoverlap's exp(mean NLL)") {
  const auto toks = stream(1300);
  PplOptions o;
  o.seqlen = 256;
  const PplResult a = perplexity(stories(), toks, o);
  o.protocol = "gptq";
  const PplResult g = perplexity(stories(), toks, o);
  CHECK(g.windows == a.windows);
  CHECK(g.tokens_scored == a.tokens_scored);
  CHECK(g.nll == doctest::Approx(a.nll).epsilon(1e-12));
  CHECK(a.protocol_name == "nonoverlap");
  CHECK(g.protocol_name == "gptq");
}

TEST_CASE("KL divergence: a model against itself is exactly 0, top-1 agreement 100%") {
  const auto toks = stream(1100);
  PplOptions o;
  o.seqlen = 256;
  for (const char* proto : {"nonoverlap", "llamacpp"}) {
    o.protocol = proto;
    o.bos_id = 1;
    const PplResult r = perplexity(stories(), toks, o, nullptr, KldReference{&stories(), nullptr});
    REQUIRE(r.has_kld);
    CHECK(r.kld.mean == 0.0);
    CHECK(r.kld.max == 0.0);
    CHECK(r.kld.same_top == 1.0);
    CHECK(r.kld.dp_mean == 0.0);
    CHECK(r.kld.ppl_reference == r.ppl);
    // recorded references, whole vocabulary and top-k with a tail bucket
    for (const int64_t k : {0, 40}) {
      const ReferenceLogits ref = reference_logits(stories(), toks, o, k);
      const PplResult f = perplexity(stories(), toks, o, nullptr, KldReference{nullptr, &ref});
      CHECK(f.kld.mean == 0.0);
      CHECK(f.kld.same_top == 1.0);
      CHECK(f.kld.topk == (k ? 40 : 512));
    }
  }
}

TEST_CASE("KL divergence against a perturbed copy matches an f64 brute force") {
  const auto toks = stream(1100);
  PplOptions o;
  o.seqlen = 256;
  o.batch = 2;
  const PplResult r = perplexity(perturbed(), toks, o, nullptr, KldReference{&stories(), nullptr});
  const Brute b = brute(perturbed(), stories(), toks, 256, 4, 0, -1);
  REQUIRE(r.kld.n == (int64_t)b.kl.size());
  const double m = mean(b.kl);
  CHECK(m > 0.05);  // the perturbation is visible
  CHECK(r.kld.mean == doctest::Approx(m).epsilon(1e-9));
  CHECK(r.nll == doctest::Approx(mean(b.nll)).epsilon(1e-10));
  std::vector<double> s = b.kl;
  std::sort(s.begin(), s.end());
  const size_t n = s.size();
  CHECK(r.kld.max == doctest::Approx(s.back()).epsilon(1e-9));
  CHECK(r.kld.min == doctest::Approx(s.front()).epsilon(1e-6));
  const double med = n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
  CHECK(r.kld.median == doctest::Approx(med).epsilon(1e-9));
  const double x = 0.99 * (double)(n - 1);
  const size_t i = (size_t)x;
  CHECK(r.kld.p99 == doctest::Approx(s[i] + (x - (double)i) * (s[i + 1] - s[i])).epsilon(1e-9));
  double var = 0;
  for (double v : b.kl) var += (v - m) * (v - m);
  CHECK(r.kld.mean_stderr == doctest::Approx(std::sqrt(var / (double)n / (double)(n - 1))).epsilon(1e-6));
  int agree = 0;
  for (int v : b.same) agree += v;
  CHECK(r.kld.same_top == doctest::Approx((double)agree / (double)n).epsilon(1e-12));
  CHECK(r.kld.same_top < 1.0);
  CHECK(r.kld.dp_mean == doctest::Approx(mean(b.dp)).epsilon(1e-9));
  // llama-perplexity's truncated sum (reference log-probabilities above −16 only)
  CHECK(r.kld.llamacpp.mean == doctest::Approx(mean(b.kl_lc)).epsilon(1e-9));
  CHECK(r.kld.llamacpp.mean != r.kld.mean);
  std::vector<double> sl = b.kl_lc;
  std::sort(sl.begin(), sl.end());
  CHECK(r.kld.llamacpp.median == doctest::Approx(n % 2 ? sl[n / 2] : 0.5 * (sl[n / 2 - 1] + sl[n / 2])).epsilon(1e-9));
  CHECK(r.kld.llamacpp.max == doctest::Approx(sl.back()).epsilon(1e-9));
  CHECK(r.kld.ppl_reference == doctest::Approx(perplexity(stories(), toks, o).ppl).epsilon(1e-12));
  CHECK(r.kld.p90 <= r.kld.p95);
  CHECK(r.kld.p95 <= r.kld.p99);
  CHECK(r.kld.p99 <= r.kld.p999);
  CHECK(r.kld.p999 <= r.kld.max);
}

TEST_CASE("reference logits: a file round-trips and gives the in-memory KL divergence") {
  const auto toks = stream(1100);
  const std::string dir = qf_test::scratch_dir("eval");
  PplOptions o;
  o.seqlen = 256;
  const PplResult mem = perplexity(perturbed(), toks, o, nullptr, KldReference{&stories(), nullptr});
  const ReferenceLogits all = reference_logits(stories(), toks, o, 0);
  all.save(dir + "/all.qfref");
  const ReferenceLogits back = ReferenceLogits::load(dir + "/all.qfref");
  CHECK(all.hidden_form());
  CHECK(back.x == all.x);
  CHECK(back.classifier == all.classifier);
  CHECK(back.final_norm == all.final_norm);
  CHECK(back.norm_eps == all.norm_eps);
  CHECK(back.positions() == all.positions());
  CHECK(back.tokens_hash == all.tokens_hash);
  CHECK(back.protocol == all.protocol);
  const PplResult file = perplexity(perturbed(), toks, o, nullptr, KldReference{nullptr, &back});
  CHECK(file.kld.mean == mem.kld.mean);  // bit for bit: the reference model's own head on its own hidden rows
  CHECK(file.kld.p99 == mem.kld.p99);
  CHECK(file.kld.same_top == mem.kld.same_top);
  CHECK(file.kld.dp_mean == mem.kld.dp_mean);
  // top-k: the kept tokens plus one "rest" bucket — a lower bound on the full divergence, close to it
  const ReferenceLogits k64 = reference_logits(stories(), toks, o, 64);
  k64.save(dir + "/k64.qfref");
  const ReferenceLogits k64b = ReferenceLogits::load(dir + "/k64.qfref");
  CHECK(k64b.ids == k64.ids);
  const PplResult t = perplexity(perturbed(), toks, o, nullptr, KldReference{nullptr, &k64b});
  CHECK(t.kld.mean <= mem.kld.mean);
  CHECK(t.kld.mean > 0.9 * mem.kld.mean);
  CHECK(t.kld.same_top == mem.kld.same_top);
  CHECK(t.nll == mem.nll);
  // sizes: the hidden form is dim floats per row plus the head, top-k (8 + 8 + 4 + 64·12) bytes per position
  CHECK(file_size(dir + "/all.qfref") < 4 * (4 * 256 * 64 + 513 * 64) + 4096);
  CHECK(file_size(dir + "/k64.qfref") > 4 * 255 * (20 + 64 * 12));
  // thread count: the same bits
  omp_set_num_threads(1);
  const PplResult one = perplexity(perturbed(), toks, o, nullptr, KldReference{nullptr, &k64b});
  omp_set_num_threads(omp_get_num_procs());
  CHECK(one.kld.mean == t.kld.mean);
  CHECK(one.kld.p999 == t.kld.p999);
  CHECK(one.nll == t.nll);
}

TEST_CASE("reference logits: made under another protocol, seqlen, window count or text, they are refused") {
  const auto toks = stream(1100);
  PplOptions o;
  o.seqlen = 256;
  const ReferenceLogits ref = reference_logits(stories(), toks, o, 16);
  auto refused = [&](PplOptions oo, const std::vector<int32_t>& tt, const char* msg) {
    CHECK_THROWS_WITH_AS(perplexity(perturbed(), tt, oo, nullptr, KldReference{nullptr, &ref}), doctest::Contains(msg), Error);
  };
  PplOptions a = o;
  a.protocol = "llamacpp";
  refused(a, toks, "made with protocol nonoverlap, this evaluation uses llamacpp");
  a = o;
  a.seqlen = 128;
  refused(a, toks, "made with seqlen 256, this evaluation uses 128");
  a = o;
  a.max_windows = 2;
  refused(a, toks, "made with windows 4, this evaluation uses 2");
  auto other = toks;
  other[300] = 7;
  refused(o, other, "made with tokens fnv1a64:");
  CHECK_THROWS_WITH_AS(perplexity(perturbed(), toks, o, nullptr, KldReference{&stories(), &ref}), doctest::Contains("not both"), Error);
}

TEST_CASE("reference logits files: corrupt, truncated and lying files give errors naming the file and field") {
  const auto toks = stream(600);
  const std::string dir = qf_test::scratch_dir("eval_bad");
  PplOptions o;
  o.seqlen = 256;
  const ReferenceLogits ref = reference_logits(stories(), toks, o, 8);
  const std::string good = dir + "/good.qfref";
  ref.save(good);
  const std::string bytes = qf_test::read_bytes(good);
  uint64_t hl;
  std::memcpy(&hl, bytes.data() + 8, 8);
  const std::string header = bytes.substr(16, hl);
  auto with_header = [&](std::string h) {  // same body, another header
    std::string b = bytes.substr(0, 8);
    const uint64_t n = h.size();
    b.append((const char*)&n, 8);
    return b + h + bytes.substr(16 + hl);
  };
  auto bad = [&](const std::string& name, const std::string& content, const char* msg) {
    const std::string p = dir + "/" + name;
    qf_test::write_bytes(p, content);
    CAPTURE(name);
    CHECK_THROWS_WITH_AS(ReferenceLogits::load(p), doctest::Contains(msg), Error);
  };
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string h = header;
    const size_t at = h.find(from);
    REQUIRE(at != std::string::npos);
    h.replace(at, from.size(), to);
    return h;
  };
  bad("magic.qfref", "NOTAREF!" + bytes.substr(8), "no QFREFLG1 magic");
  bad("short.qfref", bytes.substr(0, 10), "no QFREFLG1 magic");
  bad("trunc.qfref", bytes.substr(0, bytes.size() - 5), "bytes after the header, the file has");
  bad("lying.qfref", with_header(replace("\"positions\":510", "\"positions\":100000000000")), "positions of top-8 rows need");
  bad("topk.qfref", with_header(replace("\"topk\":8", "\"topk\":9999")), "header field 'topk' must be an integer in [1, 511]");
  bad("form.qfref", with_header(replace("\"form\":\"topk\"", "\"form\":\"logits\"")), "header field 'form' must be hidden or topk");
  bad("nofmt.qfref", with_header(replace("\"format\"", "\"formet\"")), "header field 'format' is missing");
  bad("json.qfref", with_header("{\"format\":"), "not valid JSON");
  std::string hdr = bytes.substr(0, 8);
  const uint64_t huge = uint64_t(1) << 40;
  hdr.append((const char*)&huge, 8);
  bad("hugeheader.qfref", hdr + "{}", "header length 1099511627776 exceeds");
  // values: a NaN log-probability and a token id outside the vocabulary
  const size_t body = 16 + hl;
  std::string nan = bytes;
  const double qnan = std::nan("");
  std::memcpy(&nan[body], &qnan, 8);
  bad("nan.qfref", nan, "logp_target of position 1 is nan");
  std::string id = bytes;
  const int32_t big = 600;
  std::memcpy(&id[body + 510 * 20], &big, 4);  // the first kept id of position 1
  bad("id.qfref", id, "token 1 of position 1 is 600, outside [0, 512)");
  CHECK_THROWS_WITH_AS(ReferenceLogits::load(dir + "/missing.qfref"), doctest::Contains("missing.qfref"), Error);
  // the hidden form: sizes from windows, seqlen, dim and vocab; finite values
  const ReferenceLogits hid = reference_logits(stories(), toks, o, 0);
  const std::string hp = dir + "/hidden.qfref";
  hid.save(hp);
  const std::string hb = qf_test::read_bytes(hp);
  uint64_t hhl;
  std::memcpy(&hhl, hb.data() + 8, 8);
  std::string hh = hb.substr(16, hhl);
  const size_t wat = hh.find("\"windows\":2");
  REQUIRE(wat != std::string::npos);
  std::string lying = hh;
  lying.replace(wat, 11, "\"windows\":900000");
  std::string lb = hb.substr(0, 8);
  const uint64_t ln = lying.size();
  lb.append((const char*)&ln, 8);
  bad("hidden_lying.qfref", lb + lying + hb.substr(16 + hhl), "rows of dim 64 and a vocab-512 classifier need");
  std::string hnan = hb;
  const float fnan = std::nanf("");
  std::memcpy(&hnan[16 + hhl + 4 * (64 + 512 * 64) + 4 * 100], &fnan, 4);
  bad("hidden_nan.qfref", hnan, "hidden state value 101 is nan");
  CHECK(std::filesystem::is_regular_file(good));
}
