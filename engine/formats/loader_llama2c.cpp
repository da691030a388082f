// llama2.c legacy checkpoint: int32 {dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size, seq_len}; vocab_size < 0 means a separate classifier at the end. Then f32:
// tok_emb[vocab,dim], rms_att[L,dim], wq[L,dim,dim], wk[L,kv_dim,dim], wv[L,kv_dim,dim],
// wo[L,dim,dim], rms_ffn[L,dim], w1[L,hidden,dim], w2[L,dim,hidden], w3[L,hidden,dim],
// rms_final[dim], freq_cis_real/imag[seq_len, head_dim/2] (legacy, skipped), [wcls[vocab,dim]].
#include "formats/loader_llama2c.h"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "core/io.h"

namespace qf {

Model load_llama2c(const std::string& path) {
  const int64_t fsize = file_size(path);
  const std::string what = "llama2.c checkpoint '" + path + "'";
  if (fsize == 0) fail(what, ": file is empty");
  if (fsize < 28) fail(what, ": truncated header (", fsize, " bytes, need 28)");
  // Reject the versioned llama2.c export ("ak42" magic) explicitly rather than misreading it.
  std::string head(28, '\0');
  {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail("cannot open file '", path, "'");
    size_t n = std::fread(head.data(), 1, 28, f);
    std::fclose(f);
    if (n != 28) fail(what, ": cannot read header");
  }
  int32_t h[7];
  std::memcpy(h, head.data(), 28);
  if (h[0] == 0x616b3432) fail(what, ": versioned llama2.c export (magic 'ak42') is not supported; export with the legacy format");

  ModelConfig c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.tied_classifier = h[5] > 0;
  c.vocab_size = h[5] > 0 ? h[5] : (h[5] == INT32_MIN ? 0 : -h[5]);
  c.seq_len = h[6];
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.f;
  c.rope_interleaved = true;
  validate_config(c, what);

  // Expected size from the (now bounded) header, in 64-bit arithmetic.
  const int64_t D = c.dim, F = c.hidden_dim, L = c.n_layers, V = c.vocab_size, KV = c.kv_dim(), HD = c.head_dim();
  const int64_t n_floats = V * D + L * D + L * D * D + 2 * L * KV * D + L * D * D + L * D + 3 * L * F * D + D +
                           (int64_t)c.seq_len * HD + (c.tied_classifier ? 0 : V * D);
  const int64_t expect = 28 + 4 * n_floats;
  if (fsize < expect)
    fail(what, ": truncated (", fsize, " bytes, header dim=", c.dim, " hidden=", c.hidden_dim, " layers=", c.n_layers,
         " vocab=", h[5], " seq_len=", c.seq_len, " needs ", expect, ")");
  if (fsize > expect)
    fail(what, ": ", fsize - expect, " unexpected trailing bytes (header implies ", expect, " bytes): not a legacy llama2.c checkpoint?");

  // Read the weights straight into the tensor storage (no second full-size copy).
  auto st = Storage::alloc((size_t)(fsize - 28));
  {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) fail("cannot open file '", path, "'");
    const bool ok = std::fseek(f, 28, SEEK_SET) == 0 && std::fread(st->data, 1, st->nbytes, f) == st->nbytes;
    std::fclose(f);
    if (!ok) fail(what, ": read error (file changed while reading?)");
  }

  // Views into the one storage, in file order.
  int64_t at = 0;
  auto take = [&](const Shape& s) {
    Tensor t = Tensor::wrap(st, DType::F32, s, at);
    at += t.numel();
    return t;
  };
  Model m;
  m.cfg = c;
  m.source = path;
  m.tok_emb = take({V, D});
  Tensor rms_att = take({L, D}), wq = take({L, D, D}), wk = take({L, KV, D}), wv = take({L, KV, D}),
         wo = take({L, D, D}), rms_ffn = take({L, D}), w1 = take({L, F, D}), w2 = take({L, D, F}),
         w3 = take({L, F, D});
  m.final_norm = take({D});
  at += (int64_t)c.seq_len * HD;  // freq_cis_real + freq_cis_imag
  m.classifier = c.tied_classifier ? m.tok_emb : take({V, D});

  for (int l = 0; l < c.n_layers; ++l) {
    Block b;
    b.attn_norm = rms_att.select(0, l);
    b.ffn_norm = rms_ffn.select(0, l);
    const Tensor* src[] = {&wq, &wk, &wv, &wo, &w1, &w3, &w2};  // kLlama.linears order
    for (size_t i = 0; i < kLlama.linears.size(); ++i) {
      Linear lin;
      lin.name = kLlama.linears[i].name;
      lin.input = kLlama.linears[i].input;
      lin.weight = src[i]->select(0, l);
      b.linears.push_back(lin);
    }
    m.blocks.push_back(std::move(b));
  }

  // A NaN/Inf weight would silently poison every perplexity: refuse it here.
  const float* p = static_cast<const float*>(st->data);
  for (int64_t i = 0; i < at; ++i)
    if (!std::isfinite(p[i])) fail(what, ": non-finite weight at float index ", i);
  return m;
}

}  // namespace qf
