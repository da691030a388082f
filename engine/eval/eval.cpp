#include "eval/eval.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include "core/io.h"
#include "model/forward.h"

namespace qf {

// Logits are produced for a slice of rows at a time so a 32k-vocab model never holds
// [B·T, vocab] floats at once.
static constexpr int64_t kHeadRows = 256;

static const ProtocolInfo kProtocols[] = {
    // name        seqlen  BOS/window  2nd half  GPTQ formula
    {"nonoverlap", 0, false, false, false, "non-overlapping windows, every next-token prediction scored"},
    {"llamacpp", 0, true, true, false, "llama-perplexity's chunks: BOS first, the second half scored"},
    {"gptq", 2048, false, false, true, "the GPTQ repos' 2048-token windows and formula"},
};

const ProtocolInfo& protocol_info(const std::string& name) {
  for (const ProtocolInfo& p : kProtocols)
    if (name == p.name) return p;
  std::string known;
  for (const ProtocolInfo& p : kProtocols) known += (known.empty() ? "" : ", ") + std::string(p.name);
  fail("perplexity: unknown protocol '", name, "' (known: ", known, ")");
}

std::vector<std::string> protocol_names() {
  std::vector<std::string> v;
  for (const ProtocolInfo& p : kProtocols) v.push_back(p.name);
  return v;
}

namespace {

// Which windows and positions a protocol scores.
struct WindowPlan {
  const ProtocolInfo* info = nullptr;
  int L = 0, nwin = 0, first = 0;  // positions first … L−2 of each window predict the next token
  int32_t bos = -1;                // written over each window's first token when ≥ 0
  int batch = 1;
  int64_t positions() const { return (int64_t)nwin * (L - 1 - first); }
};

WindowPlan plan_windows(const Model& m, const std::vector<int32_t>& tokens, const PplOptions& opt) {
  WindowPlan p;
  p.info = &protocol_info(opt.protocol);
  if (opt.seqlen < 0) fail("perplexity: seqlen must be >= 0 (0 = the protocol's default), got ", opt.seqlen);
  if (opt.max_windows < 0) fail("perplexity: max_windows must be >= 0 (0 = all), got ", opt.max_windows);
  if (opt.batch < 0) fail("perplexity: batch must be >= 0 (0 = automatic), got ", opt.batch);
  const int ctx = m.cfg.seq_len;
  p.L = opt.seqlen > 0 ? opt.seqlen : (p.info->default_seqlen > 0 ? std::min(p.info->default_seqlen, ctx) : ctx);
  if (p.L < 2) fail("perplexity: seqlen ", p.L, " is too short (need at least 2 tokens per window)");
  if (p.L > ctx) fail("perplexity: seqlen ", p.L, " exceeds the model's context length ", ctx, " (seq_len of '", m.source, "')");
  if (p.info->score_second_half && p.L < 4) fail("perplexity: protocol ", p.info->name, " needs seqlen >= 4, got ", p.L);
  p.first = p.info->score_second_half ? p.L / 2 : 0;
  p.bos = p.info->bos_each_window ? opt.bos_id : -1;
  if (p.bos >= m.cfg.vocab_size) fail("perplexity: BOS id ", p.bos, " is outside the vocabulary [0, ", m.cfg.vocab_size, ")");
  p.nwin = (int)(tokens.size() / (size_t)p.L);
  if (p.nwin == 0) fail("perplexity: text has ", tokens.size(), " tokens, fewer than one window of ", p.L);
  if (opt.max_windows > 0) p.nwin = std::min(p.nwin, opt.max_windows);
  // Windows per forward call: bound the widest activation to ~16 MB unless asked otherwise.
  const int64_t width = std::max<int64_t>(m.cfg.dim, m.cfg.hidden_dim);
  p.batch = opt.batch > 0 ? opt.batch : (int)std::max<int64_t>(1, (int64_t)(4 << 20) / ((int64_t)p.L * width));
  p.batch = std::min(p.batch, p.nwin);
  return p;
}

std::string protocol_line(const WindowPlan& p, const PplOptions& opt, int64_t scored) {
  std::ostringstream s;
  const int per = p.L - 1 - p.first;
  s << "protocol " << p.info->name << "-L" << p.L << ": " << opt.stream << ", ";
  if (p.info->score_second_half) {
    s << p.nwin << " chunks of " << p.L << " tokens (tail dropped), ";
    if (p.bos >= 0) s << "the first token of each chunk set to BOS (id " << p.bos << "), ";
    else s << "no BOS (the tokenizer adds none), ";
    s << "the " << per << " predictions of each chunk's second half scored (positions " << p.first << ".." << p.L - 2
      << "), " << scored << " scored, PPL = exp(mean NLL)";
  } else {
    s << p.nwin << " non-overlapping " << p.L << "-token windows (tail dropped), " << per
      << " next-token predictions per window, " << scored << " scored, ";
    if (p.info->window_mean_times_L) s << "PPL = exp(sum_w L*meanNLL_w / (n*L)) as the GPTQ repos";
    else s << "PPL = exp(mean NLL)";
  }
  return s.str();
}

// The windows [w0, w0 + B) as evaluated (BOS written over each window's first token).
std::vector<int32_t> window_ids(const std::vector<int32_t>& tokens, const WindowPlan& p, int w0, int B) {
  std::vector<int32_t> ids(tokens.begin() + (int64_t)w0 * p.L, tokens.begin() + (int64_t)(w0 + B) * p.L);
  if (p.bos >= 0)
    for (int b = 0; b < B; ++b) ids[(size_t)b * p.L] = p.bos;
  return ids;
}

uint64_t plan_hash(const std::vector<int32_t>& tokens, const WindowPlan& p) {
  const std::vector<int32_t> ids = window_ids(tokens, p, 0, p.nwin);
  return fnv1a64(ids.data(), ids.size() * sizeof(int32_t));
}

// Hidden states of windows [w0, w0 + B) through every block of m.
Tensor hidden(const Model& m, const std::vector<int32_t>& ids, int B, int L) {
  Tensor x = embed(m, ids);
  for (int l = 0; l < m.n_blocks(); ++l) {
    x = block_forward(m, l, x, B, L);
    m.release_block(l);  // lazy models stream: one converted block at a time
  }
  return x;
}

// One row's log-softmax pieces: lse = log Σ exp(z) in f64 (max-shifted), argmax (lowest id).
struct RowSoftmax {
  double lse = 0;
  int32_t top = 0;
};
RowSoftmax row_softmax(const float* z, int64_t V) {
  RowSoftmax r;
  float mx = z[0];
  for (int64_t j = 1; j < V; ++j)
    if (z[j] > mx) mx = z[j], r.top = (int32_t)j;
  double se = 0;
  // The shift in f64: an f32 z − mx would round every term by up to 2^-24 relative and move
  // lse by ~1e-8, as large as a good 4-bit model's KL divergence at some positions.
  for (int64_t j = 0; j < V; ++j) se += std::exp((double)z[j] - (double)mx);
  r.lse = std::log(se) + (double)mx;
  return r;
}

// The reference's hidden form as a head-only model: head_forward on its stored rows gives the
// reference model's logits bit for bit.
Model head_model(const ReferenceLogits& r) {
  Model h;
  h.cfg.norm_eps = r.norm_eps;
  h.cfg.vocab_size = (int)r.vocab;
  h.final_norm = Tensor::from_data({r.dim}, r.final_norm);
  h.classifier = Tensor::from_data({r.vocab, r.dim}, r.classifier);
  return h;
}

// Runs every scored row of the plan's windows through fn(logits of m [V], logits of the
// reference or nullptr, target, scored position index), rows of one head slice in parallel.
// The reference is a second model (its own forward on the same windows) or stored hidden rows
// with their head. fn must write only its own position's results: the caller sums them in order.
template <class RowFn>
void for_each_scored_row(const Model& m, const Model* second, const ReferenceLogits* stored,
                         const std::vector<int32_t>& tokens, const WindowPlan& p, const ProgressFn& progress,
                         std::chrono::steady_clock::time_point t0, RowFn fn) {
  const int64_t per = p.L - 1 - p.first;
  const int64_t V = m.cfg.vocab_size;
  const Model stored_head = stored ? head_model(*stored) : Model();
  const Model* ref_head = second ? second : stored ? &stored_head : nullptr;
  for (int w0 = 0; w0 < p.nwin; w0 += p.batch) {
    const int B = std::min(p.batch, p.nwin - w0);
    const std::vector<int32_t> ids = window_ids(tokens, p, w0, B);
    const Tensor x = hidden(m, ids, B, p.L);
    const int64_t N = (int64_t)B * p.L;
    Tensor x2;
    if (second) x2 = hidden(*second, ids, B, p.L);
    else if (stored)
      x2 = Tensor::from_data({N, stored->dim}, std::vector<float>(stored->x.begin() + (int64_t)w0 * p.L * stored->dim,
                                                                  stored->x.begin() + ((int64_t)w0 * p.L + N) * stored->dim));
    for (int64_t r0 = 0; r0 < N; r0 += kHeadRows) {
      const int64_t nr = std::min(kHeadRows, N - r0);
      const Tensor logits = head_forward(m, x.rows(r0, nr));
      const Tensor logits2 = ref_head ? head_forward(*ref_head, x2.rows(r0, nr)) : Tensor();
#pragma omp parallel for schedule(dynamic, 8)
      for (int64_t i = 0; i < nr; ++i) {
        const int64_t r = r0 + i, pos = r % p.L;
        if (pos < p.first || pos == p.L - 1) continue;  // unscored, or predicts nothing inside its window
        const int64_t index = ((int64_t)w0 + r / p.L) * per + (pos - p.first);
        fn(logits.f32() + i * V, ref_head ? logits2.f32() + i * V : nullptr, ids[(size_t)r + 1], index);
      }
    }
    if (progress) progress(w0 + B, p.nwin, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
}

double percentile(const std::vector<double>& sorted, double f) {  // linear between order statistics
  if (f <= 0) return sorted.front();
  if (f >= 1) return sorted.back();
  const double x = f * (double)(sorted.size() - 1);
  const size_t i = (size_t)x;
  const double t = x - (double)i;
  return (1 - t) * sorted[i] + t * sorted[std::min(i + 1, sorted.size() - 1)];
}

// Mean and its standard error sqrt((E[x²] − E[x]²) / (n − 1)) over values in order.
void mean_stderr(const std::vector<double>& v, double& mean, double& err) {
  double s = 0, s2 = 0;
  for (double x : v) s += x, s2 += x * x;
  const double n = (double)v.size();
  mean = s / n;
  err = v.size() > 1 ? std::sqrt(std::max(0.0, s2 / n - mean * mean) / (n - 1)) : 0.0;
}

KldSummary kld_summary(const std::vector<double>& v) {
  KldSummary s;
  mean_stderr(v, s.mean, s.mean_stderr);
  std::vector<double> sorted = v;
  std::sort(sorted.begin(), sorted.end());
  s.median = percentile(sorted, 0.5);
  s.p90 = percentile(sorted, 0.90), s.p95 = percentile(sorted, 0.95);
  s.p99 = percentile(sorted, 0.99), s.p999 = percentile(sorted, 0.999);
  s.max = sorted.back(), s.min = sorted.front();
  return s;
}

}  // namespace

EvalPlan eval_plan(const Model& m, const std::vector<int32_t>& tokens, const PplOptions& opt) {
  const WindowPlan p = plan_windows(m, tokens, opt);
  return EvalPlan{p.info->name, p.L, p.nwin, p.positions(), plan_hash(tokens, p)};
}

PplResult perplexity(const Model& m, const std::vector<int32_t>& tokens, const PplOptions& opt,
                     const ProgressFn& progress, const KldReference& ref) {
  const auto t0 = std::chrono::steady_clock::now();
  const WindowPlan p = plan_windows(m, tokens, opt);
  const int64_t V = m.cfg.vocab_size, n = p.positions();
  if (ref.model && ref.logits) fail("perplexity: give the KL reference as a model or as reference logits, not both");
  const ReferenceLogits* rl = ref.logits;
  if (ref.model) {
    const Model& r = *ref.model;
    if (r.cfg.vocab_size != V) fail("perplexity: the reference model has vocabulary ", r.cfg.vocab_size, ", the model ", V);
    if (r.cfg.seq_len < p.L) fail("perplexity: seqlen ", p.L, " exceeds the reference model's context length ", r.cfg.seq_len);
  }
  if (rl) {  // every fact the rows were made from must be this run's
    auto differs = [&](const char* what, const std::string& theirs, const std::string& ours) {
      if (theirs != ours)
        fail("perplexity: the reference logits were made with ", what, " ", theirs, ", this evaluation uses ", ours,
             " (make them again with the same text, protocol, seqlen and max_windows)");
    };
    differs("protocol", rl->protocol_name, p.info->name);
    differs("seqlen", std::to_string(rl->seqlen), std::to_string(p.L));
    differs("windows", std::to_string(rl->windows), std::to_string(p.nwin));
    differs("vocabulary", std::to_string(rl->vocab), std::to_string(V));
    differs("tokens", fingerprint_text(rl->tokens_hash), fingerprint_text(plan_hash(tokens, p)));
    if (rl->positions() != n) fail("perplexity: the reference logits hold ", rl->positions(), " positions, this evaluation scores ", n);
  }
  const bool kld = ref.model || rl;
  std::vector<double> nll((size_t)n), kl(kld ? (size_t)n : 0), dp(kld ? (size_t)n : 0), ref_nll(kld ? (size_t)n : 0),
      kl_lc(kld ? (size_t)n : 0);
  std::vector<char> same(kld ? (size_t)n : 0);
  const bool all = !rl || rl->hidden_form();  // full distributions (a model, or stored hidden rows)
  const int64_t k = all ? V : rl->topk;
  if (rl && rl->hidden_form() && rl->dim <= 0) fail("perplexity: the reference logits hold no hidden states");
  for_each_scored_row(m, ref.model, rl && rl->hidden_form() ? rl : nullptr, tokens, p, progress, t0,
                      [&](const float* z, const float* zr, int32_t target, int64_t i) {
    const RowSoftmax q = row_softmax(z, V);
    nll[(size_t)i] = q.lse - z[target];
    if (!kld) return;
    // The reference row: the second model's full distribution, or the recorded one.
    double lpt, tail = 0;
    int32_t rtop;
    const int32_t* rid = nullptr;
    const double* rlp;
    std::vector<double> full;
    if (zr) {
      const RowSoftmax s = row_softmax(zr, V);
      full.resize((size_t)V);
      for (int64_t j = 0; j < V; ++j) full[(size_t)j] = (double)zr[j] - s.lse;
      rlp = full.data(), lpt = full[(size_t)target], rtop = s.top;
    } else {
      rlp = rl->logp.data() + i * k, lpt = rl->logp_target[(size_t)i], tail = rl->tail[(size_t)i], rtop = rl->top[(size_t)i];
      rid = rl->ids.data() + i * k;
    }
    // D(ref ‖ q) = Σ_v p (log p − log q) over the whole vocabulary (E2), or from top-k rows
    // Σ_kept p (log p − log q) + tail·(log tail − log q_tail): the kept tokens plus one "rest"
    // bucket, a lower bound on the full divergence (E3, docs/methods.md#kl-divergence).
    double d = 0, d_lc = 0;  // d_lc: llama-perplexity's sum, tokens with log p_ref > −16 only
    if (all) {
      for (int64_t j = 0; j < V; ++j) {
        const double t = std::exp(rlp[j]) * (rlp[j] - ((double)z[j] - q.lse));
        d += t;
        if (rlp[j] > -16.0) d_lc += t;
      }
    } else {
      std::vector<char> kept((size_t)V, 0);
      for (int64_t j = 0; j < k; ++j) {
        kept[(size_t)rid[j]] = 1;
        const double t = std::exp(rlp[j]) * (rlp[j] - ((double)z[rid[j]] - q.lse));
        d += t;
        if (rlp[j] > -16.0) d_lc += t;
      }
      if (tail > 0) {
        double qt = 0;
        for (int64_t j = 0; j < V; ++j)
          if (!kept[(size_t)j]) qt += std::exp((double)z[j] - q.lse);
        d += tail * (std::log(tail) - std::log(std::max(qt, 1e-300)));
      }
    }
    kl[(size_t)i] = d;
    kl_lc[(size_t)i] = d_lc;
    same[(size_t)i] = rtop == q.top;
    dp[(size_t)i] = std::exp(-nll[(size_t)i]) - std::exp(lpt);
    ref_nll[(size_t)i] = -lpt;
  });

  // Sums in position order: the same bits for any thread count.
  PplResult r;
  double nll_sum = 0;
  if (p.info->window_mean_times_L) {  // Σ_w L·mean_w / (n·L), as the GPTQ repos compute it
    const int64_t per = p.L - 1 - p.first;
    for (int w = 0; w < p.nwin; ++w) {
      double s = 0;
      for (int64_t j = 0; j < per; ++j) s += nll[(size_t)(w * per + j)];
      nll_sum += (double)p.L * (s / (double)per);
    }
    r.nll = nll_sum / ((double)p.nwin * p.L);
  } else {
    for (double x : nll) nll_sum += x;
    r.nll = nll_sum / (double)n;
  }
  if (!std::isfinite(r.nll)) fail("perplexity: the NLL is non-finite (NaN/Inf in the model?)");
  r.ppl = std::exp(r.nll);
  r.tokens_scored = n;
  r.text_tokens = (int64_t)tokens.size();
  r.windows = p.nwin;
  r.seqlen = p.L;
  r.protocol_name = p.info->name;
  r.protocol = protocol_line(p, opt, n);
  if (kld) {
    KldStats& s = r.kld;
    r.has_kld = true;
    s.n = n;
    s.topk = k;
    static_cast<KldSummary&>(s) = kld_summary(kl);
    if (!std::isfinite(s.mean)) fail("perplexity: the KL divergence is non-finite (NaN/Inf in the model?)");
    s.llamacpp = kld_summary(kl_lc);
    int64_t agree = 0;
    for (char c : same) agree += c;
    s.same_top = (double)agree / (double)n;
    s.same_top_stderr = n > 1 ? std::sqrt(s.same_top * (1 - s.same_top) / (double)(n - 1)) : 0.0;
    mean_stderr(dp, s.dp_mean, s.dp_stderr);
    double dp2 = 0, rn = 0;
    for (double x : dp) dp2 += x * x;
    for (double x : ref_nll) rn += x;
    s.dp_rms = std::sqrt(dp2 / (double)n);
    s.nll_reference = rn / (double)n;
    s.ppl_reference = std::exp(s.nll_reference);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

ReferenceLogits reference_logits(const Model& m, const std::vector<int32_t>& tokens, const PplOptions& opt, int64_t topk,
                                 const ProgressFn& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const WindowPlan p = plan_windows(m, tokens, opt);
  const int64_t V = m.cfg.vocab_size, n = p.positions(), D = m.cfg.dim;
  if (topk < 0) fail("reference_logits: topk must be >= 0 (0 = the whole distribution, from hidden states), got ", topk);
  ReferenceLogits r;
  r.model = m.source;
  r.protocol_name = p.info->name;
  r.protocol = protocol_line(p, opt, n);
  r.seqlen = p.L;
  r.windows = p.nwin;
  r.vocab = V;
  r.topk = topk >= V ? 0 : topk;  // every token kept: the exact (hidden) form is smaller
  r.tokens_hash = plan_hash(tokens, p);
  if (r.hidden_form()) {
    // The last block's output of every row, and the head that turns it into logits.
    const int64_t rows = (int64_t)p.nwin * p.L;
    const double bytes = 4.0 * (double)D * (double)(rows + V + 1);
    if (bytes > 64e9) fail("reference_logits: ", rows, " rows of dim ", D, " need ", bytes / 1e9, " GB; lower max_windows");
    if (m.cfg.final_softcap > 0.f)
      fail("reference_logits: the hidden form stores the head without Gemma 2's final soft cap; use topk > 0");
    r.dim = D;
    r.norm_eps = m.cfg.norm_eps;
    r.final_norm = m.final_norm.contiguous().to_vector();
    r.classifier = m.classifier.contiguous().to_vector();
    if ((int64_t)r.classifier.size() != V * D) fail("reference_logits: the classifier is not [vocab, dim]");
    r.x.reserve((size_t)(rows * D));
    for (int w0 = 0; w0 < p.nwin; w0 += p.batch) {
      const int B = std::min(p.batch, p.nwin - w0);
      const Tensor x = hidden(m, window_ids(tokens, p, w0, B), B, p.L);
      r.x.insert(r.x.end(), x.f32(), x.f32() + x.numel());
      if (progress) progress(w0 + B, p.nwin, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    r.set_positions(n);
    return r;
  }
  const int64_t k = r.topk;
  const double bytes = (double)n * (20.0 + (double)k * 12);
  if (bytes > 64e9) fail("reference_logits: ", n, " positions × top-", k, " need ", bytes / 1e9, " GB; lower topk or max_windows");
  r.logp_target.resize((size_t)n);
  r.tail.assign((size_t)n, 0.0);
  r.top.resize((size_t)n);
  r.logp.resize((size_t)(n * k));
  r.ids.resize((size_t)(n * k));
  for_each_scored_row(m, nullptr, nullptr, tokens, p, progress, t0, [&](const float* z, const float*, int32_t target, int64_t i) {
    const RowSoftmax s = row_softmax(z, V);
    double* lp = r.logp.data() + i * k;
    r.logp_target[(size_t)i] = (double)z[target] - s.lse;
    r.top[(size_t)i] = s.top;
    // The k most likely tokens (lowest id first on ties), then the mass of the rest, summed in id order.
    std::vector<int32_t> order((size_t)V);
    for (int64_t j = 0; j < V; ++j) order[(size_t)j] = (int32_t)j;
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&](int32_t a, int32_t b) { return z[a] > z[b] || (z[a] == z[b] && a < b); });
    std::vector<char> kept((size_t)V, 0);
    int32_t* id = r.ids.data() + i * k;
    for (int64_t j = 0; j < k; ++j) {
      id[j] = order[(size_t)j];
      kept[(size_t)id[j]] = 1;
      lp[j] = (double)z[id[j]] - s.lse;
    }
    double tail = 0;
    for (int64_t j = 0; j < V; ++j)
      if (!kept[(size_t)j]) tail += std::exp((double)z[j] - s.lse);
    r.tail[(size_t)i] = std::min(1.0, tail);
  });
  return r;
}

}  // namespace qf
