#include "eval/eval.h"

#include <chrono>
#include <cmath>
#include <sstream>

#include "model/forward.h"

namespace qf {

// Logits are produced for a slice of rows at a time so a 32k-vocab model never holds
// [B·T, vocab] floats at once.
static constexpr int64_t kHeadRows = 256;

PplResult perplexity(const Model& m, const std::vector<int32_t>& tokens, const PplOptions& opt,
                     const ProgressFn& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  const int L = opt.seqlen > 0 ? opt.seqlen : m.cfg.seq_len;
  if (opt.seqlen < 0) fail("perplexity: seqlen must be >= 0 (0 = the model's ", m.cfg.seq_len, "), got ", opt.seqlen);
  if (opt.max_windows < 0) fail("perplexity: max_windows must be >= 0 (0 = all), got ", opt.max_windows);
  if (opt.batch < 0) fail("perplexity: batch must be >= 0 (0 = automatic), got ", opt.batch);
  if (L < 2) fail("perplexity: seqlen ", L, " is too short (need at least 2 tokens per window)");
  if (L > m.cfg.seq_len)
    fail("perplexity: seqlen ", L, " exceeds the model's context length ", m.cfg.seq_len, " (seq_len of '", m.source, "')");
  int nwin = (int)(tokens.size() / (size_t)L);
  if (nwin == 0) fail("perplexity: text has ", tokens.size(), " tokens, fewer than one window of ", L);
  if (opt.max_windows > 0) nwin = std::min(nwin, opt.max_windows);

  // Windows per forward call: bound the widest activation to ~16 MB unless asked otherwise.
  const int64_t width = std::max<int64_t>(m.cfg.dim, m.cfg.hidden_dim);
  int batch = opt.batch > 0 ? opt.batch : (int)std::max<int64_t>(1, (int64_t)(4 << 20) / ((int64_t)L * width));
  batch = std::min(batch, nwin);

  const int64_t V = m.cfg.vocab_size;
  double nll_sum = 0;
  int64_t scored = 0;
  for (int w0 = 0; w0 < nwin; w0 += batch) {
    const int B = std::min(batch, nwin - w0);
    std::vector<int32_t> ids(tokens.begin() + (int64_t)w0 * L, tokens.begin() + (int64_t)(w0 + B) * L);
    Tensor x = embed(m, ids);
    for (int l = 0; l < m.n_blocks(); ++l) {
      x = block_forward(m, l, x, B, L);
      m.release_block(l);  // lazy models stream: one converted block at a time
    }
    const int64_t N = (int64_t)B * L;
    for (int64_t r0 = 0; r0 < N; r0 += kHeadRows) {
      const int64_t nr = std::min(kHeadRows, N - r0);
      const Tensor logits = head_forward(m, x.rows(r0, nr));
      const float* lp = logits.f32();
      // Per-row NLL into a buffer, then a serial sum: an OpenMP reduction would combine
      // thread partials in arrival order and break bit-reproducibility.
      std::vector<double> row_nll((size_t)nr, 0.0);
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < nr; ++i) {
        const int64_t r = r0 + i;
        if ((r % L) == L - 1) continue;  // last position of a window predicts nothing inside it
        const float* z = lp + i * V;
        float mx = z[0];
        for (int64_t j = 1; j < V; ++j) mx = std::max(mx, z[j]);
        double se = 0;
        for (int64_t j = 0; j < V; ++j) se += std::exp((double)(z[j] - mx));
        row_nll[i] = std::log(se) + mx - z[ids[r + 1]];
      }
      for (int64_t i = 0; i < nr; ++i) {
        if (((r0 + i) % L) == L - 1) continue;
        nll_sum += row_nll[i];
        scored += 1;
      }
    }
    if (!std::isfinite(nll_sum)) fail("perplexity: the NLL became non-finite in windows ", w0 + 1, "..", w0 + B, " (NaN/Inf in the model?)");
    if (progress) progress(w0 + B, nwin, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }

  PplResult r;
  r.nll = nll_sum / (double)scored;
  r.ppl = std::exp(r.nll);
  r.tokens_scored = scored;
  r.text_tokens = (int64_t)tokens.size();
  r.windows = nwin;
  r.seqlen = L;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::ostringstream p;
  p << "protocol nonoverlap-L" << L << ": " << opt.stream << ", " << nwin << " non-overlapping " << L
    << "-token windows (tail dropped), " << (L - 1) << " next-token predictions per window, " << scored
    << " scored, PPL = exp(mean NLL)";
  r.protocol = p.str();
  return r;
}

}  // namespace qf
