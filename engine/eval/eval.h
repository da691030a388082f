// qforge — perplexity with a named protocol.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"

namespace qf {

struct PplOptions {
  int seqlen = 0;       // 0: the model's seq_len
  int max_windows = 0;  // 0: all
  int batch = 0;        // windows per forward call; 0: automatic
  // How the token stream was made, for the protocol line (the caller knows; the engine does not).
  std::string stream = "token ids as given";
};

struct PplResult {
  double ppl = 0, nll = 0;  // nll: mean negative log-likelihood (nats)
  int64_t tokens_scored = 0, text_tokens = 0;
  int windows = 0, seqlen = 0;
  double seconds = 0;
  std::string protocol;  // one line naming the protocol, printed beside every number
};

// Progress callback: (windows done, windows total, seconds so far).
using ProgressFn = std::function<void(int done, int total, double seconds)>;

// Protocol "nonoverlap": the token stream (e.g. a text tokenized with BOS once at its start), non-overlapping windows
// of seqlen tokens, tail dropped, every next-token prediction inside a window scored
// (seqlen−1 per window), PPL = exp(mean NLL). NLL accumulated in f64.
PplResult perplexity(const Model& m, const std::vector<int32_t>& tokens, const PplOptions& opt,
                     const ProgressFn& progress = nullptr);

}  // namespace qf
