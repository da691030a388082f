// block_backward time against block_forward time on one block: stories260K (B=8, T=256)
// and a synthetic block of SmolLM2-135M's shape (dim 576, hidden 1536, 9/3 heads; B=1, T=512).
// A backward costs about 2× the forward's FLOPs (dx and dW GEMMs) plus the recomputed forward,
// so block_backward with every weight gradient should take ≈ 2–3× block_forward.
//   build/bench_backward [stories260K.bin] [reps]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "core/omp_wait.h"
#include "model/backward.h"
#include "model/forward.h"
#include "formats/loader_llama2c.h"
#include "core/rng.h"

using namespace qf;
using clk = std::chrono::steady_clock;

static double secs(clk::time_point a) { return std::chrono::duration<double>(clk::now() - a).count(); }

static Tensor randn(Rng& rng, const Shape& s, double sd, double mean = 0.0) {
  Tensor t = Tensor::empty(s);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = (float)(mean + sd * rng.normal());
  return t;
}

// One block of random weights with the given shape (the rest of the model is a stub).
static Model synthetic(int dim, int hidden, int heads, int kv_heads, int seq) {
  Model m;
  ModelConfig& c = m.cfg;
  c.dim = dim;
  c.hidden_dim = hidden;
  c.n_layers = 1;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.vocab_size = 16;
  c.seq_len = seq;
  c.rope_interleaved = false;
  validate_config(c, "synthetic block");
  Rng rng(1);
  const int64_t QW = (int64_t)heads * c.head_dim(), KW = c.kv_dim();
  Block b;
  b.attn_norm = randn(rng, {dim}, 0.1, 1.0);
  b.ffn_norm = randn(rng, {dim}, 0.1, 1.0);
  const int64_t shapes[7][2] = {{QW, dim}, {KW, dim}, {KW, dim}, {dim, QW}, {hidden, dim}, {hidden, dim}, {dim, hidden}};
  for (int i = 0; i < 7; ++i) {
    Linear l;
    l.name = kLlama.linears[i].name;
    l.input = kLlama.linears[i].input;
    l.weight = randn(rng, {shapes[i][0], shapes[i][1]}, 1.0 / std::sqrt((double)shapes[i][1]));
    b.linears.push_back(std::move(l));
  }
  m.blocks.push_back(std::move(b));
  m.tok_emb = randn(rng, {c.vocab_size, dim}, 1.0);
  m.final_norm = Tensor::full({dim}, 1.f);
  m.classifier = m.tok_emb;
  return m;
}

static void bench(const char* name, const Model& m, int layer, const Tensor& x, int B, int T, int reps) {
  Rng rng(2);
  const Tensor dy = randn(rng, x.shape(), 1.0);
  BlockGrads g;
  auto fwd_f = [&] { block_forward(m, layer, x, B, T); };
  auto dx_f = [&] { block_backward(m, layer, x, B, T, dy, nullptr, BlockGradRequest::none()); };
  auto all_f = [&] { block_backward(m, layer, x, B, T, dy, &g, BlockGradRequest::all()); };
  // the three are timed in turn within each repetition, so a noisy neighbour hits them alike
  double fwd = 1e30, dx_only = 1e30, all = 1e30;
  fwd_f(), dx_f(), all_f();  // warm up
  for (int r = 0; r < reps; ++r) {
    auto t = clk::now();
    fwd_f();
    fwd = std::min(fwd, secs(t));
    t = clk::now();
    dx_f();
    dx_only = std::min(dx_only, secs(t));
    t = clk::now();
    all_f();
    all = std::min(all, secs(t));
  }
  std::printf("%-34s B=%d T=%-4d forward %8.2f ms | backward dx only %8.2f ms (%.2fx) | all dW + norms %8.2f ms (%.2fx)\n",
              name, B, T, 1e3 * fwd, 1e3 * dx_only, dx_only / fwd, 1e3 * all, all / fwd);
}

int main(int argc, char** argv) {
  qf::default_passive_wait(argv);  // same OpenMP wait policy as qforge
  const std::string path = argc > 1 ? argv[1] : "../shared/models/stories260K/stories260K.bin";
  const int reps = argc > 2 ? std::atoi(argv[2]) : 5;
  try {
    std::printf("threads: %d; best of %d; ratios are backward / forward (backward includes the recomputed forward)\n",
                omp_get_max_threads(), reps);
    {
      const Model m = load_llama2c(path);
      const int B = 8, T = 256;
      std::vector<int32_t> ids((size_t)B * T);
      for (size_t i = 0; i < ids.size(); ++i) ids[i] = (int32_t)((i * 7919 + 13) % (size_t)m.cfg.vocab_size);
      const Tensor x = block_forward(m, 0, embed(m, ids), B, T);  // block 1 sees real activations
      bench("stories260K block 1", m, 1, x, B, T, reps);
    }
    {
      const Model m = synthetic(576, 1536, 9, 3, 2048);
      const int B = 1, T = 512;
      Rng rng(3);
      const Tensor x = randn(rng, {(int64_t)B * T, 576}, 1.0);
      bench("SmolLM2-135M-shaped block", m, 0, x, B, T, reps);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_backward: %s\n", e.what());
    return 1;
  }
  return 0;
}
