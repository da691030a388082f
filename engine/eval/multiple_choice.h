// qforge — zero-shot multiple-choice evaluation, scored as lm-evaluation-harness's
// `loglikelihood` requests of a `multiple_choice` task (docs/zeroshot.md).
//
// An item is a context, two or more choices and the index of the right one. Every choice c
// becomes one request (context, continuation = delimiter + c), tokenized as lm-eval's HF
// backend does:
//   * trailing whitespace of the context (ASCII: space, \t, \n, \v, \f, \r) moves to the
//     front of the continuation;
//   * ctx = encode(context) with BOS when the tokenizer adds one; whole = encode(context +
//     continuation) the same way; the continuation's tokens are whole[len(ctx):] (a merge across
//     the boundary stays on the continuation's side); an empty ctx (no BOS, empty context) is
//     the one token BOS, or EOS when there is no BOS;
//   * the scored sequence is ctx followed by those tokens; its log-likelihood is
//     Σ log p(token | all tokens before it) over the continuation's tokens, each log-softmax
//     in f64 from the row maximum (stable), summed in f64 in token order.
// A sequence longer than the model's context is left-truncated as lm-eval does: the model
// reads the last seq_len tokens before the final one (the first tokens, BOS included, are
// dropped); a continuation of more than seq_len tokens is an error.
//
// acc: argmax of the log-likelihoods equals the label; acc_norm: argmax of log-likelihood /
// length of the choice (without the delimiter) in characters — Unicode code points, Python's
// len(str), which lm-eval divides by; the same as bytes for ASCII text. Ties go to the first
// (lowest-index) choice, as numpy's argmax. stderr = sample standard deviation (n − 1) / √n
// (lm-eval's mean_stderr); NaN for n = 1.
//
// Requests are batched: sorted by length (longest first, then item and choice order), padded
// on the right to the batch's longest (causal attention: padding never reaches a real
// position), up to a bound on the activations. Only the rows that predict continuation tokens
// go through the final norm and classifier. The batches depend on the requests alone and every
// kernel has fixed chunking, so results are the same bits for any thread count; another batch
// (other requests beside it, another max_batch_rows) moves a request's value by f32 rounding.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"
#include "tokenizer/tokenizer.h"

namespace qf {

constexpr int kMcMaxChoices = 64;                  // choices per item (real tasks: 2–5)
constexpr int64_t kMcMaxLineBytes = 1 << 20;       // one JSONL line
constexpr int64_t kMcMaxFileBytes = 64ll << 20;    // a task file (HellaSwag's validation split: ~10 MB)

// Two forms, as lm-eval's multiple_choice tasks:
//   choices form   one context, the options are continuations of it (HellaSwag, PIQA, ARC):
//                  option i is the request (context, delimiter + choices[i]);
//   contexts form  the options are contexts, one shared continuation (lm-eval's "multiple
//                  input" tasks: Winogrande): option i is (choices[i], delimiter + continuation).
// Either way `choices` holds the option strings, the ones acc_norm divides by (lm-eval's
// doc_to_choice), and label indexes them.
struct McItem {
  std::string context;               // choices form
  std::vector<std::string> choices;  // the options
  std::string continuation;          // contexts form
  bool contexts_form = false;
  int label = 0;  // 0-based index into choices
};

// Checks one item (at least 2 and at most kMcMaxChoices choices, each non-empty; label in
// range). Errors start with `where` and name the field: "<where>: field 'label': ...".
// `one_based` only changes how label and choice indices are printed (Lua tables).
void check_mc_item(const McItem& it, const std::string& where, bool one_based = false);

// A JSONL task: one object per line, exactly {"context": string, "choices": [string, ...],
// "label": integer (0-based)} or {"contexts": [string, ...], "continuation": string, "label":
// integer}; blank lines are skipped. Errors name the source, the 1-based
// line and the field ("task.jsonl:3: field 'choices': ..."). max_items > 0: stop after that
// many items (the lines after are not read).
std::vector<McItem> parse_mc_jsonl(const std::string& text, const std::string& source, int64_t max_items = 0);
// The same from a file (a regular file of at most kMcMaxFileBytes).
std::vector<McItem> read_mc_jsonl(const std::string& path, int64_t max_items = 0);

// Characters (Unicode code points) of a UTF-8 string: the bytes that do not continue a sequence.
int64_t utf8_length(const std::string& s);

// ---- token level --------------------------------------------------------------------
// One loglikelihood request: the whole token sequence, of which the last n_cont are scored.
struct LoglikRequest {
  std::vector<int32_t> tokens;
  int64_t n_cont = 0;
};
struct LoglikOptions {
  int64_t max_batch_rows = 0;  // B·T per forward; 0: automatic (~16 MB of the widest activation)
};
struct LoglikResult {
  double loglik = 0;        // Σ log p over the n_cont tokens
  bool greedy = false;      // every continuation token is its row's argmax (lm-eval's is_greedy; ties: first id)
  int64_t truncated = 0;    // tokens dropped on the left (0: the whole sequence fit)
};
// Progress: (requests done, requests total, seconds so far).
using McProgressFn = std::function<void(int64_t done, int64_t total, double seconds)>;
std::vector<LoglikResult> loglikelihoods(const Model& m, const std::vector<LoglikRequest>& reqs,
                                         const LoglikOptions& opt = {}, const McProgressFn& progress = nullptr);

// The request of (context, continuation) as described above (no truncation here).
LoglikRequest mc_request(const Tokenizer& tok, const std::string& context, const std::string& continuation);

// ---- items --------------------------------------------------------------------------
struct McOptions {
  std::string delimiter = " ";  // lm-eval's target_delimiter, put before every choice
  int64_t max_items = 0;        // 0: all
  int64_t max_batch_rows = 0;   // LoglikOptions::max_batch_rows
};
struct McItemResult {
  std::vector<double> loglik;    // per choice
  std::vector<int64_t> tokens;   // continuation tokens per choice
  std::vector<bool> greedy;      // per choice: the continuation is the model's greedy one
  int pred = 0, pred_norm = 0;   // 0-based
  int64_t truncated = 0;         // the most tokens any of its choices dropped on the left
};
struct McResult {
  int64_t n = 0;
  double acc = 0, acc_stderr = 0, acc_norm = 0, acc_norm_stderr = 0;
  int64_t requests = 0, truncated_requests = 0;
  double seconds = 0;
  std::vector<McItemResult> items;
  std::string protocol;  // one line naming how it was scored
};

// The first index of the largest value (ties: the lowest index). Empty: -1.
int argmax_first(const std::vector<double>& v);
// lm-eval's mean_stderr of 0/1 outcomes: sample standard deviation / √n; NaN for n < 2.
double mean_stderr(const std::vector<double>& x);

McResult multiple_choice(const Model& m, const Tokenizer& tok, const std::vector<McItem>& items, const McOptions& opt,
                         const McProgressFn& progress = nullptr);

}  // namespace qf
