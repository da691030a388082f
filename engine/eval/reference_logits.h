// qforge — reference next-token distributions, kept in memory or in a file (docs/formats.md
// "Reference logits"), so a quantized model's KL divergence is measured without the
// full-precision model resident (llama-perplexity's --kl-divergence-base, in a compact form:
// top-k log-probabilities per position instead of the whole vocabulary).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace qf {

struct ReferenceLogits {
  // What the rows were made from; perplexity() refuses rows whose protocol, seqlen, windows,
  // vocabulary or token fingerprint differ from its own run's.
  std::string model;           // source of the reference model
  std::string protocol_name;   // "nonoverlap", "llamacpp", "gptq"
  std::string protocol;        // the protocol line
  int seqlen = 0, windows = 0;
  int64_t vocab = 0, topk = 0;  // topk == vocab: full distributions, ids implicit (0 … vocab−1)
  uint64_t tokens_hash = 0;     // fnv1a64 of the windows' tokens as evaluated (BOS included)

  // Per scored position p (in window order, then position order):
  std::vector<double> logp_target;  // [n] log p(correct next token)
  std::vector<double> tail;         // [n] 1 − Σ_{kept} p: the mass of the tokens not kept (0 if all)
  std::vector<int32_t> top;         // [n] argmax (lowest id on ties)
  std::vector<int32_t> ids;         // [n·topk] kept tokens, decreasing log-prob (empty when topk == vocab)
  std::vector<double> logp;         // [n·topk] their log-probabilities (id order when topk == vocab)

  int64_t positions() const { return (int64_t)logp_target.size(); }
  // Atomic write (temporary file, then rename).
  void save(const std::string& path) const;
  // Every size is checked against the file's length before anything is allocated; errors name
  // the file and the field.
  static ReferenceLogits load(const std::string& path);
};

}  // namespace qf
