// Zero-shot multiple choice (engine/eval/multiple_choice.h) on stories260K: each choice's
// log-likelihood against an independent computation (the model's full forward on the
// concatenated tokens, a brute-force log-softmax in f64), acc vs acc_norm, the tie rule, left
// truncation, the JSONL reader's errors, and thread-count invariance.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "eval/multiple_choice.h"
#include "formats/loader.h"
#include "model/forward.h"
#include "scratch_dir.h"

using namespace qf;

static const std::string kShared = QF_SHARED_DIR;
static const std::string kTask = std::string(QF_SOURCE_DIR) + "/tests/data/stories_mc.jsonl";
static const std::string kTaskContexts = std::string(QF_SOURCE_DIR) + "/tests/data/stories_mc_contexts.jsonl";

static const Model& stories() {
  static Model m = load_model(resolve_model_files(kShared + "/models/stories260K"));
  return m;
}
static const Tokenizer& tok() {
  static Tokenizer t = Tokenizer::load(kShared + "/models/stories260K/tok512.bin");
  return t;
}

// The scored sequence by the documented rule, built here from the tokenizer alone: ctx =
// encode(context), whole = encode(context + continuation), sequence = ctx ++ whole[len(ctx):]
// (context without trailing whitespace, so nothing moves).
static std::pair<std::vector<int32_t>, int64_t> ref_tokens(const std::string& context, const std::string& continuation) {
  REQUIRE((context.empty() || context.back() != ' '));
  std::vector<int32_t> c = tok().encode(context, true, false);
  const std::vector<int32_t> w = tok().encode(context + continuation, true, false);
  REQUIRE(w.size() > c.size());
  const int64_t n_cont = (int64_t)(w.size() - c.size());
  c.insert(c.end(), w.begin() + (int64_t)(w.size() - n_cont), w.end());
  return {c, n_cont};
}

// Σ log p(last n_cont tokens | preceding) from one full forward of the last seq_len tokens before
// the final one, log-softmax by brute force in f64: log p_t = −log Σ_j exp(z_j − z_t).
static double ref_loglik(const std::vector<int32_t>& seq, int64_t n_cont, int64_t* truncated = nullptr, bool* greedy = nullptr) {
  const Model& m = stories();
  const int64_t n = (int64_t)seq.size(), L = m.cfg.seq_len;
  const int64_t start = std::max<int64_t>(0, n - 1 - L), len = n - 1 - start;
  if (truncated) *truncated = start;
  std::vector<int32_t> in(seq.begin() + start, seq.begin() + start + len);
  const Tensor logits = forward(m, in, 1, (int)len);
  const int64_t V = logits.size(1);
  double s = 0;
  bool all_top = true;
  for (int64_t p = len - n_cont; p < len; ++p) {
    const int32_t t = seq[(size_t)(start + p + 1)];
    double sum = 0;
    int64_t best = 0;
    for (int64_t j = 0; j < V; ++j) {
      sum += std::exp((double)logits.get({p, j}) - (double)logits.get({p, t}));
      if (logits.get({p, j}) > logits.get({p, best})) best = j;
    }
    s += -std::log(sum);
    all_top = all_top && best == t;
  }
  if (greedy) *greedy = all_top;
  return s;
}

TEST_CASE("each choice's log-likelihood equals a full forward with a brute-force f64 log-softmax") {
  const std::vector<McItem> items = read_mc_jsonl(kTask);
  REQUIRE(items.size() == 12);
  const McResult r = multiple_choice(stories(), tok(), items, McOptions{});
  REQUIRE(r.items.size() == items.size());
  CHECK(r.n == 12);
  CHECK(r.requests == 34);
  double maxerr = 0;
  int n_greedy = 0;
  for (size_t i = 0; i < items.size(); ++i)
    for (size_t c = 0; c < items[i].choices.size(); ++c) {
      const auto [seq, n_cont] = ref_tokens(items[i].context, " " + items[i].choices[c]);
      bool greedy = false;
      const double want = ref_loglik(seq, n_cont, nullptr, &greedy);
      INFO("item ", i + 1, " choice ", c, ": ", items[i].choices[c]);
      CHECK(r.items[i].tokens[c] == n_cont);
      CHECK(r.items[i].greedy[c] == greedy);
      n_greedy += greedy;
      // the engine's request is the same sequence
      const LoglikRequest q = mc_request(tok(), items[i].context, " " + items[i].choices[c]);
      CHECK(q.tokens == seq);
      CHECK(q.n_cont == n_cont);
      maxerr = std::max(maxerr, std::abs(r.items[i].loglik[c] - want));
    }
  MESSAGE("max |loglik − reference| over 34 requests: " << maxerr << "; " << n_greedy << " continuations are greedy");
  CHECK(n_greedy >= 1);  // "Once upon a" → " time" at least
  CHECK(maxerr < 1e-4);
  // acc / acc_norm are the argmaxes against the labels
  double acc = 0, acc_norm = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    std::vector<double> normed;
    for (size_t c = 0; c < items[i].choices.size(); ++c)
      normed.push_back(r.items[i].loglik[c] / (double)items[i].choices[c].size());
    CHECK(r.items[i].pred == argmax_first(r.items[i].loglik));
    CHECK(r.items[i].pred_norm == argmax_first(normed));
    acc += r.items[i].pred == items[i].label;
    acc_norm += r.items[i].pred_norm == items[i].label;
  }
  CHECK(r.acc == doctest::Approx(acc / 12));
  CHECK(r.acc_norm == doctest::Approx(acc_norm / 12));
  MESSAGE("stories260K on tests/data/stories_mc.jsonl: acc " << r.acc << " ± " << r.acc_stderr << ", acc_norm "
                                                            << r.acc_norm << " ± " << r.acc_norm_stderr);
  CHECK(r.truncated_requests == 0);
  CHECK(r.protocol.find("left-truncated to 512 tokens") != std::string::npos);
  CHECK(r.protocol.find("with BOS") != std::string::npos);
}

TEST_CASE("requests: trailing context whitespace moves to the continuation; an empty context is BOS") {
  const LoglikRequest a = mc_request(tok(), "Once upon a ", "time");
  const LoglikRequest b = mc_request(tok(), "Once upon a", " time");
  CHECK(a.tokens == b.tokens);
  CHECK(a.n_cont == b.n_cont);
  const LoglikRequest c = mc_request(tok(), "Once upon a\n", " time");
  const LoglikRequest d = mc_request(tok(), "Once upon a", "\n time");
  CHECK(c.tokens == d.tokens);
  CHECK(c.n_cont == d.n_cont);
  const LoglikRequest e = mc_request(tok(), "", " time");
  REQUIRE(e.tokens.size() >= 2);
  CHECK(e.tokens[0] == tok().bos_id());
  CHECK(e.n_cont == (int64_t)e.tokens.size() - 1);
  // the continuation's tokens are those of whole[len(ctx):]
  const std::vector<int32_t> ctx = tok().encode("Once upon a", true, false);
  const std::vector<int32_t> whole = tok().encode("Once upon a time", true, false);
  CHECK(std::vector<int32_t>(b.tokens.end() - b.n_cont, b.tokens.end()) ==
        std::vector<int32_t>(whole.begin() + (int64_t)ctx.size(), whole.end()));
}

TEST_CASE("acc and acc_norm differ when a long choice has the lower total but the higher per-character log-likelihood") {
  McItem it;
  it.context = "Once upon a time, there was a little girl named Lily. She";
  it.choices = {"was", "liked to play with her toys in the park every day"};
  it.label = 1;
  const McResult r = multiple_choice(stories(), tok(), {it}, McOptions{});
  const std::vector<double>& ll = r.items[0].loglik;
  INFO("loglik ", ll[0], " (", it.choices[0].size(), " chars), ", ll[1], " (", it.choices[1].size(), " chars)");
  REQUIRE(ll[0] > ll[1]);                                                      // the short one wins on the total
  REQUIRE(ll[0] / (double)it.choices[0].size() < ll[1] / (double)it.choices[1].size());  // the long one per character
  CHECK(r.items[0].pred == 0);
  CHECK(r.items[0].pred_norm == 1);
  CHECK(r.acc == 0);
  CHECK(r.acc_norm == 1);
  CHECK(std::isnan(r.acc_stderr));  // n = 1: no sample standard deviation
}

TEST_CASE("acc_norm divides by characters (code points), not bytes") {
  CHECK(utf8_length("hug.") == 4);
  CHECK(utf8_length("caf\xc3\xa9") == 4);            // é: 2 bytes, 1 character
  CHECK(utf8_length("\xe2\x96\x81\xf0\x9f\x98\x80") == 2);  // ▁ (3 bytes) and an emoji (4)
  McItem it;
  it.context = "The cat said";
  it.choices = {"caf\xc3\xa9", "cafe"};
  it.label = 0;
  const McResult r = multiple_choice(stories(), tok(), {it}, McOptions{});
  const std::vector<double>& ll = r.items[0].loglik;
  CHECK(r.items[0].pred_norm == argmax_first({ll[0] / 4, ll[1] / 4}));
}

TEST_CASE("ties go to the first choice") {
  CHECK(argmax_first({1, 3, 3, 2}) == 1);
  CHECK(argmax_first({-2, -2}) == 0);
  CHECK(argmax_first({}) == -1);
  McItem it;
  it.context = "Lily went to the";
  it.choices = {"park.", "park.", "zoo."};
  for (int label : {0, 1}) {
    it.label = label;
    const McResult r = multiple_choice(stories(), tok(), {it}, McOptions{});
    REQUIRE(r.items[0].loglik[0] == r.items[0].loglik[1]);  // the same request, the same bits
    const int want = r.items[0].loglik[2] > r.items[0].loglik[0] ? 2 : 0;
    CHECK(r.items[0].pred == want);
    CHECK(r.items[0].pred_norm == argmax_first({r.items[0].loglik[0] / 5, r.items[0].loglik[1] / 5, r.items[0].loglik[2] / 4}));
    if (want == 0) CHECK(r.acc == (label == 0 ? 1.0 : 0.0));
  }
}

TEST_CASE("contexts longer than the model's context are left-truncated as lm-eval does") {
  // A context of well over 512 tokens: the story text repeated.
  std::string ctx;
  while (tok().encode(ctx, true, false).size() < 700) ctx += "Lily and Ben went to the park. They played on the swings and laughed. ";
  while (!ctx.empty() && ctx.back() == ' ') ctx.pop_back();
  McItem it;
  it.context = ctx;
  it.choices = {"The sun was warm.", "Then they went home."};
  it.label = 1;
  const McResult r = multiple_choice(stories(), tok(), {it}, McOptions{});
  for (int c = 0; c < 2; ++c) {
    const auto [seq, n_cont] = ref_tokens(ctx, " " + it.choices[c]);
    int64_t dropped = 0;
    const double want = ref_loglik(seq, n_cont, &dropped);
    CHECK(dropped == (int64_t)seq.size() - 1 - 512);
    CHECK(dropped > 150);
    CHECK(std::abs(r.items[0].loglik[c] - want) < 1e-4);
  }
  CHECK(r.truncated_requests == 2);
  CHECK(r.items[0].truncated >= 150);
  // A continuation longer than the context cannot be scored.
  LoglikRequest q;
  q.tokens.assign(600, 300);
  q.n_cont = 513;
  CHECK_THROWS_WITH_AS(loglikelihoods(stories(), {q}), doctest::Contains("the continuation has 513 tokens, more than the model's context length 512"), Error);
  q.n_cont = 512;  // exactly the context: the whole window predicts it
  q.tokens.assign(513, 300);
  const auto lr = loglikelihoods(stories(), {q});
  CHECK(lr[0].truncated == 0);
  CHECK(std::abs(lr[0].loglik - ref_loglik(q.tokens, 512)) < 1e-3);
}

TEST_CASE("token-level requests: batching and padding leave each request's value, errors name the request") {
  std::vector<LoglikRequest> reqs;
  for (const char* s : {"Once upon a time", "Lily", "The dog ran to the park and barked at the big red ball."}) {
    LoglikRequest q;
    q.tokens = tok().encode(s, true, false);
    q.n_cont = (int64_t)q.tokens.size() - 1;
    reqs.push_back(q);
  }
  const auto all = loglikelihoods(stories(), reqs);
  const auto one_by_one = loglikelihoods(stories(), reqs, LoglikOptions{1});  // one request per forward
  for (size_t i = 0; i < reqs.size(); ++i) {
    CHECK(std::abs(all[i].loglik - ref_loglik(reqs[i].tokens, reqs[i].n_cont)) < 1e-4);
    CHECK(std::abs(all[i].loglik - one_by_one[i].loglik) < 1e-4);  // other batches: f32 rounding
  }
  LoglikRequest bad;
  bad.tokens = {1, 2};
  bad.n_cont = 2;
  CHECK_THROWS_WITH_AS(loglikelihoods(stories(), {reqs[0], bad}), doctest::Contains("request 2 scores 2 of its 2 tokens"), Error);
  bad.tokens = {1, 512};
  bad.n_cont = 1;
  CHECK_THROWS_WITH_AS(loglikelihoods(stories(), {bad}), doctest::Contains("token id 512 at position 2 is outside the vocabulary [0, 512)"), Error);
  bad.n_cont = 0;
  CHECK_THROWS_WITH_AS(loglikelihoods(stories(), {bad}), doctest::Contains("request 1 scores no token"), Error);
}

TEST_CASE("the thread count does not change a bit; other batches change f32 rounding only") {
  std::vector<McItem> items = read_mc_jsonl(kTask);
  for (const McItem& it : read_mc_jsonl(kTaskContexts)) items.push_back(it);
  const int nt = omp_get_max_threads();
  omp_set_num_threads(1);
  const McResult a = multiple_choice(stories(), tok(), items, McOptions{});
  omp_set_num_threads(4);
  const McResult b = multiple_choice(stories(), tok(), items, McOptions{});
  omp_set_num_threads(3);
  McOptions small;
  small.max_batch_rows = 40;  // other batches too (a few requests per forward), a 3-thread team
  omp_set_num_threads(1);
  const McResult c1 = multiple_choice(stories(), tok(), items, small);
  omp_set_num_threads(3);
  const McResult c = multiple_choice(stories(), tok(), items, small);
  omp_set_num_threads(nt);
  REQUIRE(a.items.size() == b.items.size());
  for (size_t i = 0; i < a.items.size(); ++i) {
    REQUIRE(a.items[i].loglik.size() == b.items[i].loglik.size());
    CHECK(std::memcmp(c.items[i].loglik.data(), c1.items[i].loglik.data(), c.items[i].loglik.size() * sizeof(double)) == 0);
    CHECK(std::memcmp(a.items[i].loglik.data(), b.items[i].loglik.data(), a.items[i].loglik.size() * sizeof(double)) == 0);
    for (size_t k = 0; k < a.items[i].loglik.size(); ++k) CHECK(std::abs(a.items[i].loglik[k] - c.items[i].loglik[k]) < 1e-4);
  }
  CHECK(a.acc == b.acc);
  CHECK(a.acc_norm == b.acc_norm);
}

TEST_CASE("the contexts form (lm-eval's multiple-input tasks, Winogrande): options are contexts, one continuation") {
  const std::vector<McItem> items = read_mc_jsonl(kTaskContexts);
  REQUIRE(items.size() == 3);
  CHECK(items[0].contexts_form);
  CHECK(items[0].continuation == "swing.");
  const McResult r = multiple_choice(stories(), tok(), items, McOptions{});
  for (size_t i = 0; i < items.size(); ++i) {
    std::vector<double> normed;
    for (size_t c = 0; c < items[i].choices.size(); ++c) {
      const auto [seq, n_cont] = ref_tokens(items[i].choices[c], " " + items[i].continuation);
      CHECK(std::abs(r.items[i].loglik[c] - ref_loglik(seq, n_cont)) < 1e-4);
      normed.push_back(r.items[i].loglik[c] / (double)items[i].choices[c].size());  // by the context's length, as lm-eval
    }
    CHECK(r.items[i].pred_norm == argmax_first(normed));
  }
  MESSAGE("stories260K on tests/data/stories_mc_contexts.jsonl: acc " << r.acc << ", acc_norm " << r.acc_norm);
}

TEST_CASE("the delimiter option is put before every choice") {
  McItem it;
  it.context = "Once upon a";
  it.choices = {"time", "spreadsheet"};
  McOptions o;
  for (const char* d : {"", " ", "\n"}) {
    o.delimiter = d;
    const McResult r = multiple_choice(stories(), tok(), {it}, o);
    for (int c = 0; c < 2; ++c) {
      const auto [seq, n_cont] = ref_tokens(it.context, std::string(d) + it.choices[c]);
      CHECK(std::abs(r.items[0].loglik[c] - ref_loglik(seq, n_cont)) < 1e-4);
    }
    CHECK(r.protocol.find(std::string("delimiter ") + (std::string(d) == "\n" ? "\"\\n\"" : "\"" + std::string(d) + "\"")) != std::string::npos);
  }
  o.max_items = -1;
  CHECK_THROWS_WITH_AS(multiple_choice(stories(), tok(), {it}, o), doctest::Contains("max_items must be >= 0"), Error);
  o.max_items = 0;
  CHECK_THROWS_WITH_AS(multiple_choice(stories(), tok(), {}, o), doctest::Contains("multiple_choice: no items"), Error);
}

TEST_CASE("stderr is the sample standard deviation over sqrt(n), as lm-eval's mean_stderr") {
  CHECK(mean_stderr({1, 0, 1, 1}) == doctest::Approx(0.25));  // mean 0.75, sample variance 0.25
  CHECK(mean_stderr({1, 1}) == 0);
  CHECK(std::isnan(mean_stderr({1})));
  const std::vector<McItem> items = read_mc_jsonl(kTask);
  const McResult r = multiple_choice(stories(), tok(), items, McOptions{});
  std::vector<double> x, y;
  for (size_t i = 0; i < items.size(); ++i) {
    x.push_back(r.items[i].pred == items[i].label);
    y.push_back(r.items[i].pred_norm == items[i].label);
  }
  CHECK(r.acc_stderr == doctest::Approx(mean_stderr(x)));
  CHECK(r.acc_norm_stderr == doctest::Approx(mean_stderr(y)));
  const double p = r.acc;
  if (p > 0 && p < 1) CHECK(r.acc_stderr == doctest::Approx(std::sqrt(p * (1 - p) * 12.0 / 11.0 / 12.0)));
  McOptions o;
  o.max_items = 5;
  const McResult r5 = multiple_choice(stories(), tok(), items, o);
  CHECK(r5.n == 5);
  for (int i = 0; i < 5; ++i)
    for (size_t k = 0; k < r5.items[i].loglik.size(); ++k) CHECK(std::abs(r5.items[i].loglik[k] - r.items[i].loglik[k]) < 1e-4);
  CHECK(read_mc_jsonl(kTask, 3).size() == 3);
}

TEST_CASE("malformed JSONL lines: each error names the file, the line and the field") {
  const std::string ok = R"({"context": "a", "choices": ["b", "c"], "label": 1})";
  struct Case {
    std::string text, want;
  };
  const std::vector<Case> cases = {
      {ok + "\n{\"context\": \"a\", ", "t.jsonl:2: not valid JSON"},
      {"[1, 2]", "t.jsonl:1: expected a JSON object {\"context\": ..., \"choices\": [...], \"label\": N}, got an array of 2 elements"},
      {"\"text\"", "t.jsonl:1: expected a JSON object"},
      {R"({"choices": ["b", "c"], "label": 0})", "t.jsonl:1: field 'context' is missing"},
      {R"({"context": "a", "label": 0})", "t.jsonl:1: field 'choices' is missing"},
      {R"({"context": "a", "choices": ["b", "c"]})", "t.jsonl:1: field 'label' is missing"},
      {R"({"context": 5, "choices": ["b", "c"], "label": 0})", "t.jsonl:1: field 'context' must be a string, got 5"},
      {R"({"context": "a", "choices": "b", "label": 0})", "t.jsonl:1: field 'choices' must be an array of strings, got \"b\""},
      {R"({"context": "a", "choices": ["b", null], "label": 0})", "t.jsonl:1: field 'choices[1]' must be a string, got null"},
      {R"({"context": "a", "choices": ["b"], "label": 0})", "t.jsonl:1: field 'choices' has 1 entry; an item needs at least 2"},
      {R"({"context": "a", "choices": [], "label": 0})", "t.jsonl:1: field 'choices' has 0 entries; an item needs at least 2"},
      {R"({"context": "a", "choices": ["b", ""], "label": 0})", "t.jsonl:1: field 'choices[1]' is empty (acc_norm divides by its length)"},
      {R"({"context": "a", "choices": ["b", "c"], "label": 1.0})", "t.jsonl:1: field 'label' must be an integer (0-based index into 'choices'), got 1.0"},
      {R"({"context": "a", "choices": ["b", "c"], "label": "1"})", "t.jsonl:1: field 'label' must be an integer (0-based index into 'choices'), got \"1\""},
      {R"({"context": "a", "choices": ["b", "c"], "label": true})", "t.jsonl:1: field 'label' must be an integer"},
      {R"({"context": "a", "choices": ["b", "c"], "label": 2})", "t.jsonl:1: field 'label': 2 is out of range for 2 options (0..1)"},
      {R"({"context": "a", "choices": ["b", "c"], "label": -1})", "t.jsonl:1: field 'label': -1 is out of range for 2 options (0..1)"},
      {R"({"context": "a", "choices": ["b", "c"], "label": 18446744073709551615})", "t.jsonl:1: field 'label': 18446744073709551615 is out of range"},
      {R"({"context": "a", "choices": ["b", "c"], "label": 0, "gold": 0})", "t.jsonl:1: unknown field \"gold\" (known: context, choices, label; or contexts, continuation, label)"},
      {R"({"context": "a", "contexts": ["b", "c"], "label": 0})", "t.jsonl:1: fields 'context' and 'contexts' together"},
      {R"({"contexts": ["b", "c"], "label": 0})", "t.jsonl:1: field 'continuation' is missing"},
      {R"({"contexts": ["b", "c"], "choices": ["d", "e"], "continuation": "x", "label": 0})", "t.jsonl:1: fields 'contexts' and 'choices' together"},
      {R"({"context": "a", "choices": ["b", "c"], "continuation": "x", "label": 0})", "t.jsonl:1: field 'continuation' belongs with 'contexts'"},
      {R"({"contexts": ["b", 3], "continuation": "x", "label": 0})", "t.jsonl:1: field 'contexts[1]' must be a string, got 3"},
      {R"({"contexts": ["b", "c"], "continuation": "x", "label": 5})", "t.jsonl:1: field 'label': 5 is out of range for 2 options (0..1)"},
      {ok + "\n\n  \n" + R"({"context": "a", "choices": ["b", "c"], "label": 7})", "t.jsonl:4: field 'label': 7"},  // blank lines count
      {"{\"context\": \"\xff\", \"choices\": [\"b\", \"c\"], \"label\": 0}", "t.jsonl:1: not valid JSON"},    // not UTF-8
      {R"({"context": "\ud800", "choices": ["b", "c"], "label": 0})", "t.jsonl:1: not valid JSON"},          // a lone surrogate
      {std::string(100, '[') + std::string(100, ']'), "t.jsonl:1: JSON nested deeper than 64 levels"},
      {"{\"context\": \"" + std::string((size_t)kMcMaxLineBytes, 'a') + "\", \"choices\": [\"b\", \"c\"], \"label\": 0}",
       "t.jsonl:1: line of 1048626 bytes, longer than the limit of 1048576 bytes"},
      {"", "t.jsonl: no items (expected one JSON object per line)"},
      {"\n \n\r\n", "t.jsonl: no items"},
  };
  for (const Case& c : cases) {
    INFO("input: ", c.text.substr(0, 120));
    CHECK_THROWS_WITH_AS(parse_mc_jsonl(c.text, "t.jsonl"), doctest::Contains(c.want.c_str()), Error);
  }
  // 65 choices: over the limit, refused before the strings are kept
  std::string many = R"({"context": "a", "choices": [)";
  for (int i = 0; i < 65; ++i) many += std::string(i ? ", " : "") + "\"x\"";
  many += R"(], "label": 0})";
  CHECK_THROWS_WITH_AS(parse_mc_jsonl(many, "t.jsonl"), doctest::Contains("t.jsonl:1: field 'choices' has 65 entries, more than the limit of 64"), Error);
  // accepted: CRLF line ends, a last line without newline, max_items stops before a bad line
  const auto items = parse_mc_jsonl(ok + "\r\n" + ok, "t.jsonl");
  CHECK(items.size() == 2);
  CHECK(items[1].label == 1);
  CHECK(items[1].choices == std::vector<std::string>{"b", "c"});
  CHECK(parse_mc_jsonl(ok + "\nnot json", "t.jsonl", 1).size() == 1);
  CHECK_THROWS_WITH_AS(parse_mc_jsonl(ok, "t.jsonl", -1), doctest::Contains("max_items must be >= 0"), Error);
  // files: missing, a directory, and a good one
  const std::string dir = qf_test::scratch_dir("mc");
  CHECK_THROWS_WITH_AS(read_mc_jsonl(dir + "/none.jsonl"), doctest::Contains("none.jsonl"), Error);
  CHECK_THROWS_WITH_AS(read_mc_jsonl(dir), doctest::Contains(dir.c_str()), Error);
  qf_test::write_bytes(dir + "/bad.jsonl", ok + "\n" + R"({"context": "a", "choices": ["b", "c"], "label": 3})" + "\n");
  CHECK_THROWS_WITH_AS(read_mc_jsonl(dir + "/bad.jsonl"), doctest::Contains((dir + "/bad.jsonl:2: field 'label': 3 is out of range").c_str()), Error);
  std::filesystem::resize_file(dir + "/bad.jsonl", (uintmax_t)kMcMaxFileBytes + 1);  // sparse: nothing is written
  CHECK_THROWS_WITH_AS(read_mc_jsonl(dir + "/bad.jsonl"),
                       doctest::Contains((dir + "/bad.jsonl: 67108865 bytes, over the limit of 67108864 bytes (64 MiB) for a task file").c_str()), Error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("check_mc_item: items built in code are checked too") {
  McItem it;
  it.context = "a";
  it.choices = {"b", "c"};
  it.label = 2;
  CHECK_THROWS_WITH_AS(multiple_choice(stories(), tok(), {it}, McOptions{}),
                       doctest::Contains("multiple_choice: item #1: field 'label': 2 is out of range for 2 options (0..1)"), Error);
  CHECK_THROWS_WITH_AS(check_mc_item(it, "x", true), doctest::Contains("x: field 'label': 3 is out of range for 2 options (1..2)"), Error);
  it.label = 0;
  it.choices = {"b", ""};
  CHECK_THROWS_WITH_AS(check_mc_item(it, "x", true), doctest::Contains("x: field 'choices[2]' is empty"), Error);
}
