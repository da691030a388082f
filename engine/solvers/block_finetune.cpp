#include "solvers/block_finetune.h"

#include <omp.h>

#include <algorithm>
#include <cfloat>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>

#include "solvers/adam.h"
#include "model/backward.h"
#include "model/forward.h"
#include "core/rng.h"

namespace qf {

namespace {

constexpr int64_t kRowChunk = 64;  // rows per partial sum of the loss (fixed: thread-count independent)
constexpr int64_t kParallelMin = 1 << 18;  // elements below which a loop runs on one thread (same bits either way)

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Σ (y − t)² over contiguous f32 [N, D] tensors: f64 partial sums per fixed row chunk, added in order.
double sum_sq_diff(const Tensor& y, const Tensor& t) {
  const int64_t N = y.size(0), D = y.size(1);
  const float* yp = y.f32();
  const float* tp = t.f32();
  const int64_t nchunks = (N + kRowChunk - 1) / kRowChunk;
  std::vector<double> part((size_t)nchunks, 0.0);
#pragma omp parallel for schedule(static) if (N * D >= kParallelMin)
  for (int64_t c = 0; c < nchunks; ++c) {
    double s = 0;
    for (int64_t i = c * kRowChunk * D; i < std::min(N, (c + 1) * kRowChunk) * D; ++i) {
      const double d = (double)yp[i] - (double)tp[i];
      s += d * d;
    }
    part[(size_t)c] = s;
  }
  double s = 0;
  for (double v : part) s += v;
  return s;
}

// dL/dy of L = Σ(y − t)²/count: 2(y − t)/count, f32.
Tensor mse_grad(const Tensor& y, const Tensor& t, double count) {
  Tensor dy = Tensor::empty(y.shape());
  const int64_t n = y.numel();
  const float* yp = y.f32();
  const float* tp = t.f32();
  float* dp = dy.f32();
  const double k = 2.0 / count;
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) dp[i] = (float)(k * ((double)yp[i] - (double)tp[i]));
  return dy;
}

void check_acts(const char* fn, const char* what, const Tensor& t, int64_t N, int64_t D, int B, int T) {
  if (!t.defined() || t.dtype() != DType::F32 || t.dim() != 2 || t.size(0) != N || t.size(1) != D)
    fail(fn, ": ", what, " is ",
         t.defined() ? std::string(dtype_name(t.dtype())) + " " + shape_str(t.shape()) : std::string("undefined"),
         ", expected f32 [B·T, dim] = [", N, ", ", D, "] (B = ", B, " windows of T = ", T, " tokens)");
}

struct StepGrads {
  double sse = 0, count = 0;
  BlockParamGrads g;
};

// One forward (the loss) and one backward (the gradients) on the windows in x.
StepGrads step_grads(const Model& m, int layer, const Tensor& x_, const Tensor& t_, int B, int T, bool grid,
                     bool bias, bool norms) {
  const Tensor x = x_.contiguous(), t = t_.contiguous();
  StepGrads s;
  const Tensor y = block_forward(m, layer, x, B, T);
  s.sse = sum_sq_diff(y, t);
  s.count = (double)y.numel();
  s.g.loss = s.sse / s.count;
  const Block& blk = m.block(layer);
  BlockGradRequest req;
  req.norms = norms;
  for (const Linear& l : blk.linears)
    if ((grid && l.quant) || (bias && l.bias.defined())) req.linears.push_back(l.name);
  BlockGrads bg;
  block_backward(m, layer, x, B, T, mse_grad(y, t, s.count), &bg, req);
  const size_t nl = blk.linears.size();
  s.g.names = bg.names;
  s.g.dscale.assign(nl, {});
  s.g.dzero.assign(nl, {});
  s.g.dbias.assign(nl, {});
  for (size_t i = 0; i < nl; ++i) {
    const Linear& l = blk.linears[i];
    if (grid && l.quant) grid_param_grads(*l.quant, bg.dW[i], s.g.dscale[i], s.g.dzero[i]);
    if (bias && l.bias.defined()) {
      const std::vector<float> v = bg.db[i].to_vector();
      s.g.dbias[i].assign(v.begin(), v.end());
    }
  }
  if (norms) {
    const std::vector<float> a = bg.d_attn_norm.to_vector(), f = bg.d_ffn_norm.to_vector();
    s.g.d_attn_norm.assign(a.begin(), a.end());
    s.g.d_ffn_norm.assign(f.begin(), f.end());
    for (const NormSpec& n : arch_of(m.cfg).norms) {
      const std::vector<float> v = bg.norm(n.name).to_vector();
      s.g.norm_names.push_back(n.name);
      s.g.dnorms.emplace_back(v.begin(), v.end());
    }
  }
  return s;
}

// Rows of windows `wins` of X [B·T, D] (contiguous): a view when they are consecutive, else a copy.
Tensor window_rows(const Tensor& X, const int* wins, int n, int T) {
  bool consecutive = true;
  for (int i = 1; i < n; ++i) consecutive = consecutive && wins[i] == wins[0] + i;
  if (consecutive) return X.rows((int64_t)wins[0] * T, (int64_t)n * T);
  Tensor out = Tensor::empty({(int64_t)n * T, X.size(1)});
  for (int i = 0; i < n; ++i) out.rows((int64_t)i * T, T).copy_(X.rows((int64_t)wins[i] * T, T));
  return out;
}


}  // namespace

void FinetuneOptions::validate(int B) const {
  if (params.empty()) fail("option 'params' is empty (give any of scales, zeros, norms, biases)");
  for (const std::string& p : params)
    if (p != "scales" && p != "zeros" && p != "norms" && p != "biases")
      fail("option 'params': unknown parameter group '", p, "' (expected scales, zeros, norms or biases)");
  if (!std::isfinite(lr) || lr < 0) fail("option 'lr' must be a finite number >= 0, got ", lr);
  if (!std::isfinite(beta1) || beta1 < 0 || beta1 >= 1) fail("option 'betas': beta1 must be in [0, 1), got ", beta1);
  if (!std::isfinite(beta2) || beta2 < 0 || beta2 >= 1) fail("option 'betas': beta2 must be in [0, 1), got ", beta2);
  if (!std::isfinite(eps) || !(eps > 0)) fail("option 'eps' must be a finite number > 0, got ", eps);
  if (!std::isfinite(weight_decay) || weight_decay < 0)
    fail("option 'weight_decay' must be a finite number >= 0, got ", weight_decay);
  if (epochs < 1) fail("option 'epochs' must be >= 1, got ", epochs);
  if (B < 1) fail("need at least one window, got ", B);
  if (batch < 1 || batch > B) fail("option 'batch' (windows per step) must be in 1..", B, " (the number of windows), got ", batch);
}

double compand_unit_level(int k, int bits) {
  const double u = (k + 0.5) / std::ldexp(1.0, bits);
  return u < 0.5 ? std::log(2.0 * u) : -std::log(2.0 * (1.0 - u));
}

void grid_param_grads(const QuantizedLinear& q, const Tensor& dW_, std::vector<double>& dscale, std::vector<double>& dzero) {
  const Grid& g = q.grid;
  if (!dW_.defined() || dW_.dtype() != DType::F32 || dW_.dim() != 2 || dW_.size(0) != g.rows || dW_.size(1) != g.cols)
    fail("grid_param_grads: dW must be f32 [", g.rows, ", ", g.cols, "], got ",
         dW_.defined() ? std::string(dtype_name(dW_.dtype())) + " " + shape_str(dW_.shape()) : std::string("nothing"));
  if (!q.codes.defined() || q.codes.dtype() != DType::U8 || q.codes.numel() != g.rows * g.cols)
    fail("grid_param_grads: the codes do not match the grid's [", g.rows, ", ", g.cols, "]");
  const Tensor dW = dW_.contiguous(), codes = q.codes.contiguous();
  const float* dw = dW.f32();
  const uint8_t* cp = codes.data<uint8_t>();
  const int64_t nrg = g.nrowgroups(), ng = g.ngroups, cols = g.cols;
  dscale.assign((size_t)(nrg * ng), 0.0);
  dzero.assign((size_t)(nrg * ng), 0.0);
  const bool compand = g.spec.kind == GridKind::Compand;
  std::vector<std::vector<double>> unit(9);  // compand: t(k) per bit width
  if (compand)
    for (int b = 1; b <= 8; ++b)
      for (int k = 0; k < (1 << b); ++k) unit[(size_t)b].push_back(compand_unit_level(k, b));
  // rows of each row group, ascending (none: row r is row group r)
  std::vector<std::vector<int64_t>> rows_of;
  if (!g.spec.row_group.empty()) {
    rows_of.resize((size_t)nrg);
    for (int64_t r = 0; r < g.rows; ++r) rows_of[(size_t)g.rg(r)].push_back(r);
  }
  // Each row group owns its parameters: parallel over row groups, a fixed order inside.
#pragma omp parallel for schedule(dynamic, 8) if (g.rows * g.cols >= kParallelMin)
  for (int64_t k = 0; k < nrg; ++k) {
    const int64_t* rows = rows_of.empty() ? &k : rows_of[(size_t)k].data();
    const size_t nr = rows_of.empty() ? 1 : rows_of[(size_t)k].size();
    double* ds = dscale.data() + k * ng;
    double* dz = dzero.data() + k * ng;
    for (size_t ri = 0; ri < nr; ++ri) {
      const int64_t r = rows[ri];
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t gj = g.g_idx[(size_t)j];
        const size_t p = (size_t)(k * ng + gj);
        const int bits = g.spec.group_bits.empty() ? g.spec.bits : g.spec.group_bits[p];
        const double d = dw[r * cols + j];
        const int c = cp[r * cols + j];
        dz[gj] += d;  // Σ dL/dW: ∂v/∂z = 1 (0-bit, compand μ); uniform: scaled by −s below
        if (bits == 0) continue;
        if (compand) {
          if (g.scale[p] > 0.f) ds[gj] += d * unit[(size_t)bits][(size_t)c];
        } else {
          ds[gj] += d * ((double)c - (double)g.zero[p]);
        }
      }
    }
    if (!compand)
      for (int64_t gj = 0; gj < ng; ++gj) {
        const size_t p = (size_t)(k * ng + gj);
        const int bits = g.spec.group_bits.empty() ? g.spec.bits : g.spec.group_bits[p];
        if (bits > 0) dz[gj] *= -(double)g.scale[p];
      }
  }
}

double block_mse(const Model& m, int layer, const Tensor& x, const Tensor& target, int B, int T) {
  if (B <= 0 || T <= 0) fail("block_mse: B = ", B, ", T = ", T, " must be positive");
  check_acts("block_mse", "the input", x, (int64_t)B * T, m.cfg.dim, B, T);
  check_acts("block_mse", "the target", target, (int64_t)B * T, m.cfg.dim, B, T);
  const Tensor y = block_forward(m, layer, x.contiguous(), B, T);
  return sum_sq_diff(y, target.contiguous()) / (double)y.numel();
}

BlockParamGrads block_param_grads(const Model& m, int layer, const Tensor& x, const Tensor& target, int B, int T,
                                  bool linears, bool norms) {
  if (B <= 0 || T <= 0) fail("block_param_grads: B = ", B, ", T = ", T, " must be positive");
  check_acts("block_param_grads", "the input", x, (int64_t)B * T, m.cfg.dim, B, T);
  check_acts("block_param_grads", "the target", target, (int64_t)B * T, m.cfg.dim, B, T);
  return step_grads(m, layer, x, target, B, T, linears, linears, norms).g;
}

FinetuneResult block_finetune(Model& m, int layer, const Tensor& inputs, const Tensor& targets, int B, int T,
                              const FinetuneOptions& opt, const SolverLog& log) {
  const char* fn = "block_finetune";
  const auto t_start = Clock::now();
  // ---- options
  try {
    opt.validate(B);
  } catch (const Error& e) {
    fail(fn, ": ", e.what());
  }
  if (T < 1) fail(fn, ": windows must hold at least one token (T = ", T, ")");
  bool tr_scales = false, tr_zeros = false, tr_norms = false, tr_biases = false;
  for (const std::string& p : opt.params) {
    tr_scales = tr_scales || p == "scales";
    tr_zeros = tr_zeros || p == "zeros";
    tr_norms = tr_norms || p == "norms";
    tr_biases = tr_biases || p == "biases";
  }
  if (layer < 0 || layer >= m.n_blocks())
    fail(fn, ": block ", layer + 1, " out of range (the model has ", m.n_blocks(), " blocks, numbered from 1)");
  const int64_t N = (int64_t)B * T, D = m.cfg.dim;
  check_acts(fn, "inputs", inputs, N, D, B, T);
  check_acts(fn, "targets", targets, N, D, B, T);
  const Tensor X = inputs.contiguous(), Y = targets.contiguous();

  // ---- the trainable parameters, flattened: per linear (block order) scales, zeros, bias; then the norms
  Block& blk = m.block_mut(layer);
  struct Slots {
    size_t li;
    std::vector<size_t> sp, zp;  // grid parameter indices trained
    size_t s_off = 0, z_off = 0, b_off = 0;
    bool bias = false;
  };
  std::vector<Slots> slots;
  std::vector<float> theta;
  for (size_t li = 0; li < blk.linears.size(); ++li) {
    const Linear& lin = blk.linears[li];
    Slots s{li, {}, {}};
    if (lin.quant && (tr_scales || tr_zeros)) {
      const Grid& g = lin.quant->grid;
      // A K-quant grid's scales are d·sc with stored integers: a gradient step would leave the format.
      if (g.spec.kind == GridKind::KQuant)
        fail(fn, ": block ", layer + 1, " linear '", lin.name, "' has a ", g.spec.str(),
             " grid, whose scales and mins are the format's integers; finetune params norms/biases only");
      // Its effective weight is O·Ŵ·T (methods.md#transforms): gradients of scales and zeros would
      // have to pass through the transforms, which this stage does not do.
      if (lin.quant->has_transforms())
        fail(fn, ": block ", layer + 1, " linear '", lin.name, "' carries ", lin.quant->input.none() ? "an output" : "an input",
             " transform (docs/methods.md#transforms); finetuning scales/zeros in a transformed basis is not supported: finetune params norms/biases only");
      std::vector<int64_t> nrows((size_t)g.nrowgroups(), 0);
      for (int64_t r = 0; r < g.rows; ++r) ++nrows[(size_t)g.rg(r)];
      const bool compand = g.spec.kind == GridKind::Compand;
      for (int64_t k = 0; k < g.nrowgroups(); ++k) {
        if (nrows[(size_t)k] == 0) continue;  // a row group without rows: unused parameters
        for (int64_t gj = 0; gj < g.ngroups; ++gj) {
          const size_t p = (size_t)(k * g.ngroups + gj);
          const int bits = g.spec.group_bits.empty() ? g.spec.bits : g.spec.group_bits[p];
          if (tr_scales && bits > 0 && (!compand || g.scale[p] > 0.f)) s.sp.push_back(p);
          if (tr_zeros && (bits == 0 || compand || !g.spec.sym)) s.zp.push_back(p);
        }
      }
    }
    s.bias = tr_biases && lin.bias.defined();
    s.s_off = theta.size();
    for (size_t p : s.sp) theta.push_back(lin.quant->grid.scale[p]);
    s.z_off = theta.size();
    for (size_t p : s.zp) theta.push_back(lin.quant->grid.zero[p]);
    s.b_off = theta.size();
    if (s.bias) {
      const std::vector<float> b = lin.bias.contiguous().to_vector();
      theta.insert(theta.end(), b.begin(), b.end());
    }
    if (!s.sp.empty() || !s.zp.empty() || s.bias) slots.push_back(std::move(s));
  }
  // Every norm of the architecture, in its table's order (gradients come in the same order).
  const std::vector<NormSpec>& norm_specs = arch_of(m.cfg).norms;
  std::vector<size_t> norm_offs;
  if (tr_norms) {
    for (const NormSpec& ns : norm_specs) {
      norm_offs.push_back(theta.size());
      const std::vector<float> v = blk.norm(ns.name).contiguous().to_vector();
      theta.insert(theta.end(), v.begin(), v.end());
    }
  }
  if (theta.empty()) {
    std::string ps;
    for (const std::string& p : opt.params) ps += (ps.empty() ? "" : ", ") + p;
    fail(fn, ": block ", layer + 1, " has nothing to train for params {", ps,
         "} (scales and zeros need quantized linears, i.e. set with a QLinear; biases need linears that have one)");
  }
  bool need_grid = false, need_bias = false;
  for (const Slots& s : slots) {
    need_grid = need_grid || !s.sp.empty() || !s.zp.empty();
    need_bias = need_bias || s.bias;
  }

  // ---- a snapshot to restore if training diverges
  struct Snapshot {
    std::vector<std::shared_ptr<const QuantizedLinear>> quant;
    std::vector<Tensor> weight, bias;
    std::vector<Tensor> norms;  // norm_specs order
  } snap;
  for (const Linear& l : blk.linears) {
    snap.quant.push_back(l.quant);
    snap.weight.push_back(l.quant ? l.weight.clone() : Tensor());
    snap.bias.push_back(l.bias.defined() ? l.bias.clone() : Tensor());
  }
  for (const NormSpec& ns : norm_specs) snap.norms.push_back(blk.norm(ns.name).clone());
  auto restore = [&] {
    for (size_t i = 0; i < blk.linears.size(); ++i) {
      Linear& l = blk.linears[i];
      if (snap.weight[i].defined()) l.weight.copy_(snap.weight[i]);
      l.quant = snap.quant[i];
      if (snap.bias[i].defined()) l.bias.copy_(snap.bias[i]);
    }
    for (size_t k = 0; k < norm_specs.size(); ++k) blk.norm(norm_specs[k].name).copy_(snap.norms[k]);
  };

  // ---- writes theta into the block: new grids (same codes, outliers), weights, biases, norms
  auto scatter = [&] {
    for (Slots& s : slots) {
      Linear& lin = blk.linears[s.li];
      if (!s.sp.empty() || !s.zp.empty()) {
        auto nq = std::make_shared<QuantizedLinear>();
        nq->grid = lin.quant->grid;
        nq->codes = lin.quant->codes;
        nq->outliers = lin.quant->outliers;
        Grid& g = nq->grid;
        bool moved = false;
        for (size_t k = 0; k < s.sp.size(); ++k) {
          float& v = theta[s.s_off + k];
          if (!(v >= FLT_MIN)) v = FLT_MIN;  // scales stay positive
          moved = moved || v != g.scale[s.sp[k]];
          g.scale[s.sp[k]] = v;
        }
        bool frac = false;
        for (size_t k = 0; k < s.zp.size(); ++k) {
          const size_t p = s.zp[k];
          const float v = theta[s.z_off + k];
          moved = moved || v != g.zero[p];
          g.zero[p] = v;
          const int bits = g.spec.group_bits.empty() ? g.spec.bits : g.spec.group_bits[p];
          if (g.spec.kind == GridKind::Uniform && bits > 0 && v != std::nearbyint(v)) frac = true;
        }
        if (moved) g.spec.f16_scales = false;
        if (frac) g.spec.float_zero = true;
        lin.weight.copy_(nq->dequantize());
        lin.quant = std::move(nq);
      }
      if (s.bias) {
        const int64_t n = lin.bias.numel();
        lin.bias.copy_(Tensor::from_data(lin.bias.shape(), std::vector<float>(theta.begin() + (ptrdiff_t)s.b_off,
                                                                             theta.begin() + (ptrdiff_t)(s.b_off + n))));
      }
    }
    if (tr_norms)
      for (size_t k = 0; k < norm_specs.size(); ++k) {
        Tensor& g = blk.norm(norm_specs[k].name);
        g.copy_(Tensor::from_data(g.shape(), std::vector<float>(theta.begin() + (ptrdiff_t)norm_offs[k],
                                                                theta.begin() + (ptrdiff_t)(norm_offs[k] + g.numel()))));
      }
  };

  // ---- gradient of the flat vector from one step's gradients
  std::vector<double> grad(theta.size(), 0.0);
  auto gather = [&](const BlockParamGrads& g) {
    for (const Slots& s : slots) {
      for (size_t k = 0; k < s.sp.size(); ++k) grad[s.s_off + k] = g.dscale[s.li][s.sp[k]];
      for (size_t k = 0; k < s.zp.size(); ++k) grad[s.z_off + k] = g.dzero[s.li][s.zp[k]];
      if (s.bias)
        for (size_t k = 0; k < g.dbias[s.li].size(); ++k) grad[s.b_off + k] = g.dbias[s.li][k];
    }
    if (tr_norms)
      for (size_t k = 0; k < norm_specs.size(); ++k)
        for (size_t j = 0; j < g.dnorms[k].size(); ++j) grad[norm_offs[k] + j] = g.dnorms[k][j];
    for (double v : grad)
      if (!std::isfinite(v)) return false;
    return true;
  };

  const int bs = opt.batch, steps_per_epoch = (B + bs - 1) / bs;
  std::vector<int> order((size_t)B);
  std::iota(order.begin(), order.end(), 0);
  // MSE over every window, in chunks of `batch` windows in order (the unshuffled epoch's chunks)
  auto full_loss = [&] {
    double sse = 0, count = 0;
    for (int s = 0; s < steps_per_epoch; ++s) {
      const int n = std::min(bs, B - s * bs);
      const Tensor y = block_forward(m, layer, X.rows((int64_t)s * bs * T, (int64_t)n * T), n, T);
      sse += sum_sq_diff(y, Y.rows((int64_t)s * bs * T, (int64_t)n * T));
      count += (double)y.numel();
    }
    return sse / count;
  };

  FinetuneResult res;
  res.nparams = (int64_t)theta.size();
  res.loss_before = full_loss();
  if (!std::isfinite(res.loss_before)) fail(fn, ": block ", layer + 1, ": the loss before training is not finite (", res.loss_before, ")");
  char line[512];
  std::snprintf(line, sizeof line, "block %d: %lld floats, %d epochs x %d steps (batch %d), lr %g, loss before %.6e",
                layer + 1, (long long)res.nparams, opt.epochs, steps_per_epoch, bs, opt.lr, res.loss_before);
  if (log) log("start", line);

  AdamOptions ao;
  ao.lr = opt.lr;
  ao.beta1 = opt.beta1;
  ao.beta2 = opt.beta2;
  ao.eps = opt.eps;
  ao.weight_decay = opt.weight_decay;
  Adam adam(theta.size(), ao);
  Rng rng(opt.seed);
  for (int e = 1; e <= opt.epochs; ++e) {
    const auto te = Clock::now();
    if (opt.shuffle)  // Fisher–Yates from the options' Rng
      for (int i = B - 1; i > 0; --i) std::swap(order[(size_t)i], order[(size_t)rng.randint(0, i)]);
    double sse = 0, count = 0;
    for (int s = 0; s < steps_per_epoch; ++s) {
      const int n = std::min(bs, B - s * bs);
      const int* wins = order.data() + (size_t)s * bs;
      StepGrads sg = step_grads(m, layer, window_rows(X, wins, n, T), window_rows(Y, wins, n, T), n, T, need_grid,
                                need_bias, tr_norms);
      if (!std::isfinite(sg.sse) || !gather(sg.g)) {
        restore();
        fail(fn, ": block ", layer + 1, ": the loss or its gradient became non-finite at epoch ", e, " step ", s + 1,
             " (lr ", opt.lr, " too large?); the block was restored to its state before finetuning");
      }
      sse += sg.sse;
      count += sg.count;
      adam.step(theta, grad);
      scatter();
      ++res.steps;
    }
    res.epoch_loss.push_back(sse / count);
    res.epoch_seconds.push_back(since(te));
    std::snprintf(line, sizeof line, "block %d: epoch %d/%d loss %.6e (before %.6e)  %.2fs", layer + 1, e, opt.epochs,
                  res.epoch_loss.back(), res.loss_before, res.epoch_seconds.back());
    if (log) log("epoch", line);
  }
  res.loss_after = full_loss();
  if (!std::isfinite(res.loss_after)) {
    restore();
    fail(fn, ": block ", layer + 1, ": the loss after training is not finite (lr ", opt.lr,
         " too large?); the block was restored to its state before finetuning");
  }
  res.seconds = since(t_start);
  std::snprintf(line, sizeof line, "block %d: loss %.6e -> %.6e (%.2f%%)  %.2fs", layer + 1, res.loss_before,
                res.loss_after, res.loss_before > 0 ? 100.0 * (res.loss_after - res.loss_before) / res.loss_before : 0.0,
                res.seconds);
  if (log) log("done", line);
  return res;
}

}  // namespace qf
