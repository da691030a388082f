// qforge bench — a device backend's kernels on device-resident layer problems (docs/device.md,
// docs/benchmarks.md "GPU"): the f32 GEMM rate of the dense-LA seam (cuBLAS on CUDA), one CD sweep
// and a 30-sweep QuantEase, GPTQ (inverse factor + blocks), Σ accumulation, per layer shape; plus
// QuantEase through the Backend interface as the engine calls it (per-op staging included) on
// the first shape, and a projection to Llama-2-7B and -70B from the measured per-layer times.
// scripts/device_check.sh runs it with --device cuda; with --device thrust-omp --quick it runs
// the same code paths on the CPU in seconds (what the script's --cpu-twin mode checks).
//
//   bench_device --device cuda|thrust-omp [--quick] [--sweeps N] [--json FILE]
//   bench_device --device thrust-omp --ops     ops through the Backend interface, CPU backend beside
#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend/device_bench.h"
#include "backend/devices.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "quant/grid.h"
#include "solvers/gptq.h"
#include "solvers/quantease.h"

using namespace qf;
using json = nlohmann::json;

namespace {

struct ScopedBackendGuard {
  Backend* prev;
  explicit ScopedBackendGuard(Backend* b) : prev(set_backend(b)) {}
  ~ScopedBackendGuard() { set_backend(prev); }
};

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

struct LayerShape {
  int64_t rows, cols;
  std::string name() const { return std::to_string(rows) + "x" + std::to_string(cols); }
};

// W [r, c] ~ N(0, 1)/√c (rows in parallel, one generator per row: the same numbers for any
// thread count); Σ = diag(d) + ρ·v vᵀ + 0.1·I-ish, filled in O(c²): positive definite with
// correlated inputs and a spread of scales, cheap enough for c = 28672.
void make_problem(const LayerShape& s, std::vector<float>& W, std::vector<float>& S, std::vector<double>* H) {
  const int64_t r = s.rows, c = s.cols;
  W.resize((size_t)(r * c));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < r; ++i) {
    Rng g(1000 + (uint64_t)i);
    for (int64_t j = 0; j < c; ++j) W[(size_t)(i * c + j)] = (float)(g.normal() / std::sqrt((double)c));
  }
  std::vector<double> d((size_t)c), v((size_t)c);
  Rng g(7);
  for (int64_t j = 0; j < c; ++j) {
    d[(size_t)j] = 0.5 + 2.0 * g.uniform();
    v[(size_t)j] = g.normal();
  }
  const double rho = 0.5 / (double)c;
  S.resize((size_t)(c * c));
  if (H) H->resize((size_t)(c * c));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j) {
      const double e = (i == j ? d[(size_t)i] : 0.0) + rho * v[(size_t)i] * v[(size_t)j] * 10.0;
      S[(size_t)(i * c + j)] = (float)e;
      if (H) (*H)[(size_t)(j * c + i)] = e + (i == j ? 0.01 * d[(size_t)i] : 0.0);  // GPTQ's 1% damping
    }
}

Tensor wrap_rm(std::vector<float>& v, int64_t r, int64_t c) { return Tensor::from_data({r, c}, v); }

// Best of `reps` wall times of f (after one warm-up run).
double best_of(int reps, const std::function<void()>& f) {
  f();
  double best = 1e300;
  for (int i = 0; i < reps; ++i) {
    const double t0 = now();
    f();
    best = std::min(best, now() - t0);
  }
  return best;
}

// Ops through the Backend interface on the CPU backend and on `dev`, milliseconds (docs/benchmarks.md).
int compare_ops(Backend& dev) {
  Backend& cpu = cpu_backend();
  Rng g(3);
  auto randv = [&](int64_t n) {
    std::vector<float> v((size_t)n);
    for (auto& e : v) e = (float)g.normal();
    return v;
  };
  const int64_t N = 2048, D = 512, H = 2048;
  auto x = randv(N * D), w = randv(H * D), y = randv(N * H), gain = randv(D), u = randv(N * H);
  const int B = 4, T = 512, nh = 8, hd = 64;
  auto q = randv((int64_t)B * T * nh * hd), k = randv((int64_t)B * T * nh * hd), v = randv((int64_t)B * T * nh * hd),
       o = randv((int64_t)B * T * nh * hd);
  std::vector<double> S((size_t)(D * D));
  const int64_t r = 1024, c = 1024;
  std::vector<float> W, Sg;
  make_problem({r, c}, W, Sg, nullptr);
  const Tensor Wt = wrap_rm(W, r, c), St = wrap_rm(Sg, c, c);
  GridSpec spec;
  spec.bits = 4;
  spec.group = 128;
  struct Op {
    const char* name;
    std::function<void(Backend&)> f;
  };
  const std::vector<Op> ops = {
      {"gemm_rows 2048x512 · (2048x512)T", [&](Backend& b) { b.gemm_rows(x.data(), N, w.data(), H, D, true, y.data(), false); }},
      {"gram_accumulate 2048 tokens x 512", [&](Backend& b) { b.gram_accumulate(x.data(), N, D, S.data(), nullptr); }},
      {"rmsnorm 2048x512", [&](Backend& b) { b.rmsnorm(x.data(), N, D, gain.data(), 1e-5f, x.data()); }},
      {"swiglu 2048x2048", [&](Backend& b) { b.swiglu(y.data(), u.data(), N * H, y.data()); }},
      {"attention B4 T512 8 heads x 64",
       [&](Backend& b) { b.attention(q.data(), k.data(), v.data(), AttentionShape{B, T, nh, nh, hd}, o.data()); }},
      {"GPTQ 1024x1024 (blocks of 128)", [&](Backend& b) {
         ScopedBackendGuard use(&b);
         gptq(Wt, St, spec, GptqOptions{});
       }},
      {"QuantEase 1024x1024, 3 sweeps", [&](Backend& b) {
         ScopedBackendGuard use(&b);
         QuantEaseOptions qo;
         qo.iters = 3;
         quantease(Wt, St, spec, qo);
       }},
  };
  std::printf("| op | cpu ms | %s ms | ratio |\n|---|---:|---:|---:|\n", dev.name());
  for (const Op& op : ops) {
    const double tc = best_of(3, [&] { op.f(cpu); }) * 1e3, td = best_of(3, [&] { op.f(dev); }) * 1e3;
    std::printf("| %s | %.2f | %.2f | %.2f |\n", op.name, tc, td, td / tc);
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = "cuda", json_out;
  bool quick = false, ops = false;
  int sweeps = 30;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--quick") quick = true;
    else if (a == "--ops") ops = true;
    else if (a == "--sweeps" && i + 1 < argc) sweeps = std::atoi(argv[++i]);
    else if (a == "--json" && i + 1 < argc) json_out = argv[++i];
    else {
      std::fprintf(stderr, "usage: bench_device --device cuda|thrust-omp [--quick] [--sweeps N] [--json FILE] [--ops]\n");
      return 2;
    }
  }
  std::string why;
  Backend* be = find_device(device, &why);
  const DeviceBench* db = device_bench(device);
  if (!be || !db) {
    std::fprintf(stderr, "bench_device: %s\n", be ? ("no timings for device '" + device + "'").c_str() : why.c_str());
    return 2;
  }
  if (ops) return compare_ops(*be);
  json out;
  out["device"] = device;
  out["threads"] = omp_get_max_threads();
  out["quick"] = quick;
  out["sweeps"] = sweeps;

  // 1. the f32 GEMM rate (TF32 off unless QF_CUDA_TF32=1)
  const int64_t gn = quick ? 512 : 8192;
  const double gs = db->gemm_seconds(gn, gn, gn, quick ? 2 : 10);
  const double gemm_tflops = 2.0 * gn * gn * gn / gs / 1e12;
  out["gemm"] = {{"n", gn}, {"seconds", gs}, {"tflops", gemm_tflops}};
  std::printf("GEMM f32 %lldx%lldx%lld: %.3f ms, %.2f TFLOP/s\n", (long long)gn, (long long)gn, (long long)gn, gs * 1e3,
              gemm_tflops);
  std::fflush(stdout);

  // 2. per layer shape: CD (1 sweep, `sweeps` sweeps), GPTQ, all device-resident
  std::vector<LayerShape> shapes = quick ? std::vector<LayerShape>{{300, 256}, {600, 256}, {256, 600}}
                                    : std::vector<LayerShape>{{4096, 4096}, {11008, 4096}, {4096, 11008}, {8192, 28672}};
  GridSpec spec;
  spec.bits = 4;
  spec.group = 128;
  json layers = json::array();
  for (const LayerShape& s : shapes) {
    const double t_setup = now();
    std::vector<float> W, S;
    std::vector<double> H;
    make_problem(s, W, S, &H);
    const Tensor Wt = wrap_rm(W, s.rows, s.cols);
    const Grid grid = grid_fit(Wt, spec);
    const Tensor Q = quantize_to_grid(Wt, grid).dequantize().contiguous();
    std::vector<float> Wq = Q.to_vector(), E((size_t)(s.rows * s.cols));
    for (size_t i = 0; i < E.size(); ++i) E[i] = W[i] - Wq[i];
    std::vector<int64_t> perm((size_t)s.cols);
    for (int64_t p = 0; p < s.cols; ++p) perm[(size_t)p] = p;
    const double setup = now() - t_setup;
    CdSweep sw;
    sw.W = Wq.data();
    sw.E = E.data();
    sw.rows = s.rows;
    sw.cols = s.cols;
    sw.S = S.data();
    sw.T = W.data();
    sw.perm = perm.data();
    sw.nsweep = s.cols;
    sw.grid = &grid;
    double df1 = 0, dfn = 0;
    const double t1 = db->cd_sweeps(sw, 1, &df1);
    const double tn = db->cd_sweeps(sw, sweeps, &dfn);
    const double sweep_flops = 2.0 * s.rows * s.cols * (double)s.cols;  // the (EΣ) GEMMs
    std::vector<float> Wg((size_t)(s.rows * s.cols));  // column-major copy for GPTQ
    for (int64_t i = 0; i < s.rows; ++i)
      for (int64_t j = 0; j < s.cols; ++j) Wg[(size_t)(j * s.rows + i)] = W[(size_t)(i * s.cols + j)];
    std::vector<uint8_t> codes((size_t)(s.rows * s.cols));
    double gf = 0, gb = 0;
    const bool gok = db->gptq(Wg.data(), s.rows, s.cols, H.data(), 128, grid, codes.data(), &gf, &gb);
    const json L = {{"shape", s.name()},
                    {"rows", s.rows},
                    {"cols", s.cols},
                    {"setup_seconds", setup},
                    {"cd_sweep_seconds", t1},
                    {"cd_sweep_tflops", sweep_flops / t1 / 1e12},
                    {"cd_sweep_vs_gemm", sweep_flops / t1 / 1e12 / gemm_tflops},
                    {"quantease_sweeps", sweeps},
                    {"quantease_seconds", tn},
                    {"quantease_objective_change", dfn},
                    {"gptq_ok", gok},
                    {"gptq_factor_seconds", gf},
                    {"gptq_blocks_seconds", gb},
                    {"gptq_seconds", gf + gb}};
    layers.push_back(L);
    std::printf("%-12s CD sweep %.4f s (%.1f%% of GEMM rate)  QuantEase %d sweeps %.3f s  GPTQ %.3f s (factor %.3f, "
                "blocks %.3f)%s\n",
                s.name().c_str(), t1, 100.0 * sweep_flops / t1 / 1e12 / gemm_tflops, sweeps, tn, gf + gb, gf, gb,
                gok ? "" : " [H not positive definite]");
    std::fflush(stdout);
  }
  out["layers"] = layers;

  // 3. Σ accumulation for 128 windows × 2048 tokens
  json gram = json::array();
  for (const int64_t c : quick ? std::vector<int64_t>{256} : std::vector<int64_t>{4096, 11008}) {
    const int64_t n = quick ? 2048 : 128 * 2048;
    const double t = db->gram_seconds(n, c);
    gram.push_back({{"tokens", n}, {"cols", c}, {"seconds", t}});
    std::printf("Sigma accumulation %lld tokens x %lld: %.3f s\n", (long long)n, (long long)c, t);
  }
  out["gram"] = gram;

  // 4. QuantEase through the Backend interface (what a recipe runs), first shape
  {
    const LayerShape s = shapes[0];
    std::vector<float> W, S;
    make_problem(s, W, S, nullptr);
    const Tensor Wt = wrap_rm(W, s.rows, s.cols), St = wrap_rm(S, s.cols, s.cols);
    QuantEaseOptions qo;
    qo.iters = sweeps;
    Backend* prev = set_backend(be);
    const double t0 = now();
    const auto r = quantease(Wt, St, spec, qo);
    const double t = now() - t0;
    set_backend(prev);
    out["quantease_engine"] = {{"shape", s.name()}, {"sweeps", sweeps}, {"seconds", t}, {"objective", r.objective.back()}};
    std::printf("QuantEase via the Backend interface %s, %d sweeps: %.3f s\n", s.name().c_str(), sweeps, t);
  }

  // 5. projection: per linear, the measured time of the same (rows, cols), else scaled by r·c²
  //    from the measured shape with the nearest cols (the sweep is GEMM-bound: 2·r·c² per sweep)
  auto per_layer = [&](const std::string& key, int64_t r, int64_t c) {
    const json* best = nullptr;
    for (const json& L : layers) {
      if (L["rows"] == r && L["cols"] == c) return L[key].get<double>();
      if (!best || std::abs(std::log((double)L["cols"].get<int64_t>() / c)) <
                       std::abs(std::log((double)(*best)["cols"].get<int64_t>() / c)))
        best = &L;
    }
    const double rm = (*best)["rows"].get<double>(), cm = (*best)["cols"].get<double>();
    return (*best)[key].get<double>() * (r * (double)c * c) / (rm * cm * cm);
  };
  struct Model {
    const char* name;
    int64_t dim, hidden, kv, layers;
  };
  json proj = json::array();
  for (const Model& m : {Model{"Llama-2-7B", 4096, 11008, 4096, 32}, Model{"Llama-2-70B", 8192, 28672, 1024, 80}}) {
    const int64_t lin[7][2] = {{m.dim, m.dim}, {m.kv, m.dim}, {m.kv, m.dim}, {m.dim, m.dim},
                               {m.hidden, m.dim}, {m.hidden, m.dim}, {m.dim, m.hidden}};
    double qe = 0, gq = 0;
    for (const auto& l : lin) {
      qe += per_layer("quantease_seconds", l[0], l[1]);
      gq += per_layer("gptq_seconds", l[0], l[1]);
    }
    qe *= m.layers;
    gq *= m.layers;
    proj.push_back({{"model", m.name}, {"quantease_seconds", qe}, {"gptq_seconds", gq}});
    std::printf("projection %s (solver time only, %d sweeps): QuantEase %.1f min, GPTQ %.1f min\n", m.name, sweeps,
                qe / 60, gq / 60);
  }
  out["projection"] = proj;
  if (!json_out.empty()) std::ofstream(json_out) << out.dump(2) << "\n";
  return 0;
}
