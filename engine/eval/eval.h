// qforge — perplexity under a named protocol, and the KL divergence of a model's next-token
// distributions from a reference's (docs/methods.md#evaluation).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/reference_logits.h"
#include "model/model.h"

namespace qf {

// The protocols, as a table (eval.cpp kProtocols): how windows are cut from the token stream,
// which positions are scored, and how the perplexity is formed.
//   nonoverlap  non-overlapping seqlen-token windows, tail dropped, every next-token prediction
//               inside a window scored (seqlen − 1 per window); PPL = exp(mean NLL).
//   llamacpp    llama-perplexity's: chunks of seqlen tokens, the first token of each chunk set to
//               BOS when the model's tokenizer adds one, only the second half scored (the logits
//               at positions seqlen/2 … seqlen−2); PPL = exp(mean NLL).
//   gptq        the GPTQ repos' (docs/methods.md#evaluation): seqlen 2048 by default (the model's
//               context if shorter), non-overlapping windows, PPL = exp(Σ_w nll_w / (n·L)) with
//               nll_w = L · (the window's mean NLL over its L − 1 predictions).
struct ProtocolInfo {
  const char* name;
  int default_seqlen;       // 0: the model's context
  bool bos_each_window;     // the window's first token is replaced by BOS (when there is one)
  bool score_second_half;   // only positions seqlen/2 … seqlen−2 are scored
  bool window_mean_times_L;  // GPTQ's formula (the same number in exact arithmetic)
  const char* summary;
};
const ProtocolInfo& protocol_info(const std::string& name);  // error lists the known names
std::vector<std::string> protocol_names();

struct PplOptions {
  std::string protocol = "nonoverlap";
  int seqlen = 0;       // 0: the protocol's default
  int max_windows = 0;  // 0: all
  int batch = 0;        // windows per forward call; 0: automatic
  int32_t bos_id = -1;  // BOS for protocols that put one at each window (-1: the model has none)
  // How the token stream was made, for the protocol line (the caller knows; the engine does not).
  std::string stream = "token ids as given";
};

// D(reference ‖ model) over the scored positions (docs/methods.md#kl-divergence), the
// statistics llama-perplexity prints: mean with its standard error, quantiles, the
// same-top-token rate and the change Δp = p_model − p_reference of the correct token.
struct KldSummary {  // mean, its standard error and quantiles of per-position divergences
  double mean = 0, mean_stderr = 0;
  double median = 0, p90 = 0, p95 = 0, p99 = 0, p999 = 0, max = 0, min = 0;
};
struct KldStats : KldSummary {  // the summary of the exact divergence (E2), and:
  int64_t n = 0;
  double same_top = 0, same_top_stderr = 0;  // fraction of positions with the same argmax
  double dp_mean = 0, dp_stderr = 0, dp_rms = 0;  // Δp of the correct token (fraction, not %)
  double nll_reference = 0, ppl_reference = 0;    // the reference's own NLL/PPL on these positions
  // llama-perplexity's definition of D_t: the sum over the tokens whose reference
  // log-probability is above −16 only (its perplexity.cpp); the same as the exact one where the
  // tail is negligible.
  KldSummary llamacpp;
  int64_t topk = 0;  // reference tokens kept per position (vocab: the full distribution)
};

struct PplResult {
  double ppl = 0, nll = 0;  // nll: mean negative log-likelihood (nats)
  int64_t tokens_scored = 0, text_tokens = 0;
  int windows = 0, seqlen = 0;
  double seconds = 0;
  std::string protocol_name;
  std::string protocol;  // one line naming the protocol, printed beside every number
  bool has_kld = false;
  KldStats kld;
};

// Progress callback: (windows done, windows total, seconds so far).
using ProgressFn = std::function<void(int done, int total, double seconds)>;

// What an evaluation will score, without running it: for checking recorded reference logits
// before long work starts.
struct EvalPlan {
  std::string protocol_name;
  int seqlen = 0, windows = 0;
  int64_t positions = 0;
  uint64_t tokens_hash = 0;  // as ReferenceLogits::tokens_hash
};
EvalPlan eval_plan(const Model& m, const std::vector<int32_t>& tokens, const PplOptions& opt);

// What the KL divergence is measured against: a second model in memory (its full distribution at
// every position, computed window by window beside the evaluated model's), or reference logits
// recorded earlier from the same tokens under the same protocol (reference_logits()).
struct KldReference {
  const Model* model = nullptr;
  const ReferenceLogits* logits = nullptr;
};

// Scores m on the protocol's windows of tokens; with ref also the KL divergence. Logits exist
// for kHeadRows rows at a time, never for the whole text.
PplResult perplexity(const Model& m, const std::vector<int32_t>& tokens, const PplOptions& opt,
                     const ProgressFn& progress = nullptr, const KldReference& ref = {});

// The reference distributions of m at every scored position of the protocol's windows: the top
// `topk` tokens (0 or ≥ vocab: all) with their log-probabilities, the tail mass and the correct
// token's log-probability — what perplexity() needs to measure KL divergence without m.
ReferenceLogits reference_logits(const Model& m, const std::vector<int32_t>& tokens, const PplOptions& opt,
                                 int64_t topk, const ProgressFn& progress = nullptr);

}  // namespace qf
