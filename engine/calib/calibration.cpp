#include "calib/calibration.h"

#include <cstdlib>

#include "backend/backend.h"
#include "model/forward.h"
#include "formats/safetensors.h"
#include "core/io.h"

namespace qf {

std::vector<int32_t> draw_windows(const std::vector<int32_t>& tokens, const CalibWindowsOptions& opt,
                                  std::vector<int64_t>* offsets) {
  const int64_t n = (int64_t)tokens.size();
  const int64_t end = opt.end < 0 ? n : opt.end;
  if (opt.nsamples <= 0) fail("calibration: nsamples must be >= 1, got ", opt.nsamples);
  if (opt.seqlen <= 0) fail("calibration: seqlen must be >= 1, got ", opt.seqlen);
  if (opt.begin < 0 || end > n || opt.begin >= end)
    fail("calibration: token range [", opt.begin + 1, ", ", end, "] (1-based) is not inside the ", n, " tokens [1, ", n, "] of the text");
  if (end - opt.begin < opt.seqlen)
    fail("calibration: token range [", opt.begin + 1, ", ", end, "] holds ", end - opt.begin, " tokens, fewer than one window of ",
         opt.seqlen);
  Rng rng(opt.seed);
  std::vector<int32_t> out;
  out.reserve((size_t)opt.nsamples * opt.seqlen);
  for (int s = 0; s < opt.nsamples; ++s) {
    const int64_t o = rng.randint(opt.begin, end - opt.seqlen);
    if (offsets) offsets->push_back(o);
    out.insert(out.end(), tokens.begin() + o, tokens.begin() + o + opt.seqlen);
  }
  return out;
}

Tensor SiteStats::sigma() const {
  Tensor t = Tensor::empty({sum.rows(), sum.cols()});
  t.mat() = sum.cast<float>();
  return t;
}

Tensor SiteStats::mu() const {
  if (tokens <= 0) fail("calibration: no tokens captured for site ", site_key_name(site));
  Tensor t = Tensor::empty({(int64_t)xsum.size()});
  for (int64_t j = 0; j < (int64_t)xsum.size(); ++j) t.f32()[j] = (float)(xsum(j) / (double)tokens);
  return t;
}

void accumulate_gram(Eigen::MatrixXd& S, const Tensor& X_) {
  if (X_.dim() != 2 || X_.dtype() != DType::F32) fail("accumulate_gram: expected f32 [N, c], got ", shape_str(X_.shape()));
  const Tensor X = X_.contiguous();
  const int64_t N = X.size(0), c = X.size(1);
  if (S.rows() != c || S.cols() != c) fail("accumulate_gram: Σ is [", S.rows(), ", ", S.cols(), "], inputs have ", c, " features");
  backend().gram_accumulate(X.f32(), N, c, S.data(), nullptr);
}

// Adds one site's activations x [N, c] into st (Σ and Σx in f64, the token count); returns x contiguous.
static Tensor accumulate_site(SiteStats& st, const Tensor& x) {
  if (st.sum.size() == 0) {
    st.sum = Eigen::MatrixXd::Zero(x.size(1), x.size(1));
    st.xsum = Eigen::VectorXd::Zero(x.size(1));
  }
  if (x.dim() != 2 || x.dtype() != DType::F32 || x.size(1) != st.sum.rows())
    fail("calibration: site ", site_key_name(st.site), " gave ", shape_str(x.shape()), ", expected f32 [N, ", st.sum.rows(), "]");
  Tensor xc = x.contiguous();
  backend().gram_accumulate(xc.f32(), xc.size(0), xc.size(1), st.sum.data(), st.xsum.data());
  st.tokens += x.size(0);
  return xc;
}

// block_forward over the windows in chunks of ~kChunkTokens tokens (whole windows), so the
// block's transient activations (q, k, v, attention, gate, up: ~10 buffers of [N, ·]) are
// bounded by the chunk, not by nsamples·seqlen. Rows are independent between windows, and
// 8192 is a multiple of accumulate_gram's 512-token and linear_forward's 64-row blocks, so
// when seqlen divides it the result is bit-identical to one call on all windows.
static Tensor chunked_block_forward(const Model& m, int layer, const Tensor& x, int B, int T, const SiteObserver& obs,
                                    bool moe_all_experts = false) {
  constexpr int64_t kChunkTokens = 8192;
  const int wc = (int)std::max<int64_t>(1, kChunkTokens / T);
  if (wc >= B) return block_forward(m, layer, x, B, T, obs, moe_all_experts);
  Tensor out = Tensor::empty(x.shape());
  for (int w0 = 0; w0 < B; w0 += wc) {
    const int nb = std::min(wc, B - w0);
    const Tensor y = block_forward(m, layer, x.rows((int64_t)w0 * T, (int64_t)nb * T), nb, T, obs, moe_all_experts);
    out.rows((int64_t)w0 * T, (int64_t)nb * T).copy_(y);
  }
  return out;
}

Calibration::Calibration(const Model& m, const std::vector<int32_t>& windows, int nsamples, int seqlen, bool fp_chain)
    : B_(nsamples), T_(seqlen), nblocks_(m.n_blocks()), fp_chain_(fp_chain), windows_(windows) {
  if (nsamples <= 0 || seqlen <= 0 || (int64_t)windows.size() != (int64_t)nsamples * seqlen)
    fail("calibration: ", windows.size(), " tokens is not nsamples·seqlen = ", nsamples, "·", seqlen);
  if (seqlen > m.cfg.seq_len) fail("calibration: seqlen ", seqlen, " exceeds the model's context length ", m.cfg.seq_len);
  xq_ = embed(m, windows);
  if (fp_chain_) xfp_ = xq_.clone();
}

std::map<SiteKey, SiteStats> Calibration::capture(const Model& m, const std::vector<SiteKey>& sites_, bool moe_all_experts) {
  if (block_ >= nblocks_) fail("calibration: all ", nblocks_, " blocks are done (capture after the last advance)");
  const std::vector<SiteKey> sites = sites_.empty() ? block_sites(m.cfg) : sites_;
  std::map<SiteKey, SiteStats> out;
  for (const SiteKey& s : sites) {
    SiteStats st;
    st.site = s;
    const int64_t w = site_width(m.cfg, s);  // zeros first: an expert no token reaches still has its (empty) statistics
    st.sum = Eigen::MatrixXd::Zero(w, w);
    st.xsum = Eigen::VectorXd::Zero(w);
    out[s] = st;
  }
  auto obs = [&](const SiteKey& s, const Tensor& x) {
    auto it = out.find(s);
    if (it != out.end()) accumulate_site(it->second, x);
  };
  chunked_block_forward(m, block_, xq_, B_, T_, obs, moe_all_experts);
  // exact symmetry; .eval(): assigning A + Aᵀ to A in place would read entries it already overwrote
  for (auto& [s, st] : out) st.sum = (0.5 * (st.sum + st.sum.transpose())).eval();
  if (fp_chain_ && !yfp_.defined()) yfp_ = chunked_block_forward(m, block_, xfp_, B_, T_, nullptr);  // weights still full precision here
  return out;
}

// G += Xᵀ·Y over rows (X, Y [N, c] f32 contiguous): f32 products of 512-row pieces summed into f64
// in a fixed order (the same for any thread count), like accumulate_gram.
static void accumulate_cross(Eigen::MatrixXd& G, const Tensor& X, const Tensor& Y) {
  using MatRM = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const int64_t N = X.size(0), c = X.size(1);
  Eigen::Map<const MatRM> x(X.f32(), N, c), y(Y.f32(), N, c);
  Eigen::MatrixXf P(c, c);
  for (int64_t r0 = 0; r0 < N; r0 += 512) {
    const int64_t n = std::min<int64_t>(512, N - r0);
    P.noalias() = x.middleRows(r0, n).transpose() * y.middleRows(r0, n);
    G += P.cast<double>();
  }
}

std::map<SiteKey, CrossStats> Calibration::capture_cross(const Model& m, const std::vector<SiteKey>& sites_) {
  if (block_ >= nblocks_) fail("calibration: all ", nblocks_, " blocks are done (capture after the last advance)");
  if (!fp_chain_) fail("calibration: cross statistics need the full-precision chain (made with fp_chain=false)");
  const std::vector<SiteKey> sites = sites_.empty() ? block_sites(m.cfg) : sites_;
  for (const SiteKey& s : sites)
    if (s.expert >= 0)
      fail("calibration: cross statistics of site ", site_key_name(s), ": the full-precision and quantized chains route tokens to experts differently, so their activations do not pair");
  std::map<SiteKey, CrossStats> out;
  for (const SiteKey& s : sites) out[s].q.site = s;
  // The full-precision chain runs through the block as it was at its first capture_cross: a model
  // holding only that block's copy (block_forward reads m.cfg and m.block(block_) alone).
  if (fp_block_of_ != block_) {
    fp_block_ = m.block(block_).clone(/*drop_quant=*/true);
    fp_block_of_ = block_;
  }
  Model fpm;
  fpm.cfg = m.cfg;
  fpm.blocks.resize((size_t)m.n_blocks());
  fpm.blocks[(size_t)block_] = fp_block_;
  // Whole windows per chunk, as chunked_block_forward: the quantized chain's Σ is bit-identical to capture()'s.
  constexpr int64_t kChunkTokens = 8192;
  const int wc = (int)std::max<int64_t>(1, kChunkTokens / T_);
  for (int w0 = 0; w0 < B_; w0 += std::min(wc, B_)) {
    const int nb = std::min(std::min(wc, B_), B_ - w0);
    const int64_t r0 = (int64_t)w0 * T_, nr = (int64_t)nb * T_;
    std::map<SiteKey, Tensor> xfp;
    auto obs_fp = [&](const SiteKey& s, const Tensor& x) {
      auto it = out.find(s);
      if (it == out.end()) return;
      CrossStats& cs = it->second;
      const Tensor xc = x.contiguous().clone();
      if (cs.fp.size() == 0) {
        cs.fp = Eigen::MatrixXd::Zero(x.size(1), x.size(1));
        cs.cross = Eigen::MatrixXd::Zero(x.size(1), x.size(1));
      }
      backend().gram_accumulate(xc.f32(), xc.size(0), xc.size(1), cs.fp.data(), nullptr);
      xfp[s] = xc;
    };
    auto obs_q = [&](const SiteKey& s, const Tensor& x) {
      auto it = out.find(s);
      if (it == out.end()) return;
      const Tensor xc = accumulate_site(it->second.q, x);
      auto f = xfp.find(s);
      if (f == xfp.end() || f->second.shape() != xc.shape())
        fail("calibration: site ", site_key_name(s), ": the two chains gave different activations");  // cannot happen: same block
      accumulate_cross(it->second.cross, f->second, xc);
    };
    const Tensor yf = block_forward(fpm, block_, xfp_.rows(r0, nr), nb, T_, obs_fp);
    if (!yfp_.defined()) {  // as capture(): the full-precision outputs, before the recipe changes the block
      if (w0 == 0) yfp_partial_ = Tensor::empty(xfp_.shape());
      yfp_partial_.rows(r0, nr).copy_(yf);
    }
    block_forward(m, block_, xq_.rows(r0, nr), nb, T_, obs_q);
  }
  if (!yfp_.defined()) {
    yfp_ = yfp_partial_;
    yfp_partial_ = Tensor();
  }
  for (auto& [s, cs] : out) {
    cs.q.sum = (0.5 * (cs.q.sum + cs.q.sum.transpose())).eval();
    cs.fp = (0.5 * (cs.fp + cs.fp.transpose())).eval();
  }
  return out;
}

Tensor Calibration::activations(const Model& m, const SiteKey& site, int w0, int nw, bool fp) const {
  if (block_ >= nblocks_) fail("activations: all ", nblocks_, " blocks are done");
  if (site.expert >= 0) fail("activations: site ", site_key_name(site), " holds only the tokens routed to the expert; not available here");
  if (fp && !fp_chain_) fail("activations: this calibration has no full-precision chain (made with fp_chain=false)");
  if (w0 < 0 || nw < 1 || w0 + nw > B_)
    fail("activations: windows ", w0 + 1, "..", w0 + nw, " are outside the calibration's 1..", B_);
  const Tensor& x = fp ? xfp_ : xq_;
  Tensor out;
  int64_t filled = 0;
  auto obs = [&](const SiteKey& s, const Tensor& a) {
    if (!(s == site)) return;
    if (!out.defined()) out = Tensor::empty({(int64_t)nw * T_, a.size(1)});
    out.rows(filled, a.size(0)).copy_(a);
    filled += a.size(0);
  };
  chunked_block_forward(m, block_, x.rows((int64_t)w0 * T_, (int64_t)nw * T_), nw, T_, obs);
  if (filled != (int64_t)nw * T_) fail("activations: site ", site_key_name(site), " gave ", filled, " rows, expected ", (int64_t)nw * T_);
  return out;
}

void Calibration::advance(const Model& m) {
  if (block_ >= nblocks_) fail("calibration: all ", nblocks_, " blocks are done");
  if (fp_chain_ && !yfp_.defined()) yfp_ = chunked_block_forward(m, block_, xfp_, B_, T_, nullptr);
  xq_ = chunked_block_forward(m, block_, xq_, B_, T_, nullptr);
  if (fp_chain_) {
    xfp_ = yfp_;
    yfp_ = Tensor();
  }
  fp_block_ = Block{};
  fp_block_of_ = -1;
  ++block_;
}

int64_t Calibration::memory_bytes() const {
  int64_t b = 0;
  for (const Tensor* t : {&xq_, &xfp_, &yfp_})
    if (t->defined()) b += t->numel() * 4;
  return b;
}

static std::string windows_fingerprint(const std::vector<int32_t>& w) {
  return fingerprint(std::string((const char*)w.data(), w.size() * sizeof(int32_t)));
}

void Calibration::save_state(const std::string& path) const {
  if (yfp_.defined() || fp_block_of_ >= 0)
    fail("calibration save_state '", path, "': block ", block_ + 1, " has been captured; the state is saved between blocks (after advance)");
  std::vector<SafetensorsEntry> e;
  auto add = [&](const char* name, const Tensor& t) {
    e.push_back({name, "F32", t.shape(), "", [t] {
                   const Tensor c = t.contiguous();
                   return std::string((const char*)c.f32(), sizeof(float) * c.numel());
                 }});
  };
  add("xq", xq_);
  if (fp_chain_) add("xfp", xfp_);
  safetensors_write(path, e, {{"qforge_calibration", "1"}, {"block", std::to_string(block_)}, {"nblocks", std::to_string(nblocks_)},
                              {"nsamples", std::to_string(B_)}, {"seqlen", std::to_string(T_)},
                              {"fp_chain", fp_chain_ ? "true" : "false"}, {"windows", windows_fingerprint(windows_)}});
}

void Calibration::load_state(const std::string& path) {
  const std::string what = "calibration state '" + path + "'";
  SafetensorsFile st = safetensors_open(path);
  auto field = [&](const char* k) -> std::string {
    auto it = st.metadata.find(k);
    if (it == st.metadata.end()) fail(what, ": field '__metadata__.", k, "' is missing");
    return it->second;
  };
  if (field("qforge_calibration") != "1") fail(what, ": field '__metadata__.qforge_calibration' = '", field("qforge_calibration"), "' (expected 1)");
  auto expect = [&](const char* k, const std::string& want) {
    const std::string have = field(k);
    if (have != want) fail(what, ": field '__metadata__.", k, "' = '", have, "', this calibration has '", want, "'");
  };
  expect("nblocks", std::to_string(nblocks_));
  expect("nsamples", std::to_string(B_));
  expect("seqlen", std::to_string(T_));
  expect("fp_chain", fp_chain_ ? "true" : "false");
  expect("windows", windows_fingerprint(windows_));
  int64_t block = -1;
  {
    const std::string b = field("block");
    char* end = nullptr;
    block = b.empty() ? -1 : std::strtoll(b.c_str(), &end, 10);
    if (end && *end) block = -1;
  }
  if (block < 0 || block > nblocks_)
    fail(what, ": field '__metadata__.block' = '", field("block"), "' (expected 0..", nblocks_, ": the blocks done)");
  auto read = [&](const char* name) {
    const TensorSource& ts = st.get(name);
    if (ts.shape != xq_.shape()) fail(what, ": tensor '", name, "' has shape ", shape_str(ts.shape), ", expected ", shape_str(xq_.shape()));
    const std::vector<float> v = safetensors_read<float>(ts, "F32");
    return Tensor::from_data(xq_.shape(), v);
  };
  Tensor xq = read("xq"), xfp = fp_chain_ ? read("xfp") : Tensor();
  xq_ = std::move(xq);
  xfp_ = std::move(xfp);
  yfp_ = yfp_partial_ = Tensor();
  fp_block_ = Block{};
  fp_block_of_ = -1;
  block_ = (int)block;
}

}  // namespace qf
