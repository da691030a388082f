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
  int64_t vocab = 0;
  uint64_t tokens_hash = 0;    // fnv1a64 of the windows' tokens as evaluated (BOS included)

  // Two forms. topk == 0, "hidden": the reference's last hidden states (every row of every
  // window, before the final norm) with its final norm and classifier, so its full
  // distributions are recomputed exactly — dim floats per position instead of vocab, and the
  // divergence bit for bit the in-memory reference model's. topk > 0: the top-k tokens per
  // scored position and the mass of the rest (docs/methods.md#kl-divergence, (E3)).
  int64_t topk = 0;

  // hidden form
  int64_t dim = 0;
  float norm_eps = 0;
  std::vector<float> final_norm;  // [dim]
  std::vector<float> classifier;  // [vocab, dim]
  std::vector<float> x;           // [windows·seqlen, dim]

  // top-k form, per scored position (in window order, then position order)
  std::vector<double> logp_target;  // [n] log p(correct next token)
  std::vector<double> tail;         // [n] 1 − Σ_{kept} p: the mass of the tokens not kept
  std::vector<int32_t> top;         // [n] argmax (lowest id on ties)
  std::vector<int32_t> ids;         // [n·topk] kept tokens, decreasing log-prob (lowest id on ties)
  std::vector<double> logp;         // [n·topk] their log-probabilities

  bool hidden_form() const { return topk == 0; }
  // Scored positions (the hidden form holds every row; see EvalPlan::positions).
  int64_t positions() const { return hidden_form() ? scored_ : (int64_t)logp_target.size(); }
  void set_positions(int64_t n) { scored_ = n; }
  // Atomic write (temporary file, then rename).
  void save(const std::string& path) const;
  // Every size is checked against the file's length before anything is allocated; errors name
  // the file and the field.
  static ReferenceLogits load(const std::string& path);

 private:
  int64_t scored_ = 0;
};

}  // namespace qf
