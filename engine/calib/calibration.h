// qforge — calibration capture and the sequential block pipeline (docs/methods.md#calibration).
//
// Windows of `seqlen` tokens are drawn at seeded random offsets from a token range. The
// pipeline keeps two chains of block inputs for all windows: the quantized-prefix chain
// (inputs as produced by the already-quantized blocks) and the full-precision chain. For the
// current block, capture() runs it on the quantized-prefix inputs and accumulates
// Σ = Σ_tokens x xᵀ for each requested activation site (q/k/v share attn_in, gate/up share
// ffn_in, o and down have their own); advance() re-runs the (now quantized) block to make
// the next block's inputs. The full-precision outputs of the block are taken on the first
// capture, before the recipe changes the block's weights.
#pragma once
#include <cstdint>
#include <map>
#include <vector>

#include "model/model.h"
#include "core/rng.h"

namespace qf {

struct CalibWindowsOptions {
  int nsamples = 128;
  int seqlen = 0;           // 0: the model's seq_len
  uint64_t seed = 0;
  int64_t begin = 0;        // token range [begin, end) the windows are drawn from
  int64_t end = -1;         // -1: end of the tokens
};

// nsamples windows, concatenated: each starts at a uniform offset in [begin, end − seqlen]
// drawn from Rng(seed).randint (windows may overlap each other).
std::vector<int32_t> draw_windows(const std::vector<int32_t>& tokens, const CalibWindowsOptions& opt,
                                  std::vector<int64_t>* offsets = nullptr);

// Gram matrix of one activation site, accumulated in f64.
struct SiteStats {
  SiteKey site;
  Eigen::MatrixXd sum;   // Σ_tokens x xᵀ  [c, c]
  Eigen::VectorXd xsum;  // Σ_tokens x     [c]  (first moment, for bias correction, methods.md#bias-correction)
  int64_t tokens = 0;
  Tensor sigma() const;  // f32 copy of the raw sum
  Tensor mu() const;     // f32 mean input xsum / tokens  [c]
};

// Adds XᵀX (X [N, c] f32 rows = tokens) into S (f64) deterministically: fixed 512-token
// chunks and 64-row output blocks, f32 products summed into f64, the same for any thread count.
void accumulate_gram(Eigen::MatrixXd& S, const Tensor& X);

// Statistics of one site for mismatched objectives (Qronos, GPFQ; docs/methods.md#qronos), with
// x the full-precision chain's input at the site and x̃ the quantized-prefix chain's, token by token.
struct CrossStats {
  SiteStats q;             // Σ x̃x̃ᵀ, Σ x̃ (what capture() returns for the site)
  Eigen::MatrixXd cross;   // G = Σ x·x̃ᵀ  [c, c] (row: full-precision feature, column: quantized)
  Eigen::MatrixXd fp;      // Σ x·xᵀ      [c, c]
};

class Calibration {
 public:
  // fp_chain: also carry the full-precision chain (FP inputs of every block and the FP block's
  // outputs, the targets of block-wise finetuning). It costs one more block forward per block and
  // the memory of two more activation sets; without it fp_inputs()/fp_outputs() are undefined.
  Calibration(const Model& m, const std::vector<int32_t>& windows, int nsamples, int seqlen, bool fp_chain = true);

  int block() const { return block_; }  // current block, 0-based
  int nblocks() const { return nblocks_; }
  int nsamples() const { return B_; }
  int seqlen() const { return T_; }
  int64_t tokens() const { return (int64_t)B_ * T_; }
  bool fp_chain() const { return fp_chain_; }

  // Runs the current block on the quantized-prefix inputs and returns Σ of each requested
  // site (empty: every site of the block, block_sites). With true-sequential quantization call it
  // again after each sub-group so later linears see the quantized earlier ones. Mixture of
  // experts: an expert's sites sum only the tokens routed to it (tokens = their count; an expert
  // no token reached has Σ = 0, tokens = 0), or with moe_all_experts every token.
  std::map<SiteKey, SiteStats> capture(const Model& m, const std::vector<SiteKey>& sites = {}, bool moe_all_experts = false);
  // capture() plus the cross statistics of each requested site. The quantized-prefix chain runs
  // through the block with its current weights; the full-precision chain through the block's
  // full-precision weights, copied at the first capture_cross of each block (so make that first
  // call before the block's linears change). A later call in the same block — true-sequential
  // quantization, docs/methods.md#qronos — thus pairs X of the full-precision block with X̃ of the
  // partly quantized one. Needs the full-precision chain. The quantized-prefix Σ is bit-identical
  // to capture()'s.
  // Expert sites are refused: the two chains route tokens differently.
  std::map<SiteKey, CrossStats> capture_cross(const Model& m, const std::vector<SiteKey>& sites = {});
  // The input activations of one site of the current block, [nw·seqlen, c], for windows
  // w0 .. w0+nw−1 (0-based) of the quantized-prefix chain (fp: the full-precision chain), with the
  // model's current weights — what capture() sums into Σ, for output-based searches in Lua
  // (AWQ-style scales, SmoothQuant-style migration). Memory is the caller's choice of nw.
  // Not for expert sites (their rows are the routed tokens').
  Tensor activations(const Model& m, const SiteKey& site, int w0, int nw, bool fp = false) const;
  // Re-runs the current block with the model's current weights; moves to the next block.
  void advance(const Model& m);

  const std::vector<int32_t>& windows() const { return windows_; }  // the token ids, window-major
  const Tensor& inputs() const { return xq_; }       // quantized-prefix inputs of the current block
  const Tensor& fp_inputs() const { return xfp_; }   // full-precision inputs of the current block
  const Tensor& fp_outputs() const { return yfp_; }  // FP block on FP inputs (after the first capture)
  int64_t memory_bytes() const;  // activations held (both chains, FP outputs)

  // The state between blocks (after an advance, before the next capture): the current block and
  // both chains' inputs, as a safetensors file (tensors xq, xfp; metadata qforge_calibration 1,
  // block, nblocks, nsamples, seqlen, fp_chain, windows = fingerprint of the token ids). Written
  // atomically. load_state restores it into a calibration made over the same windows (every field
  // is checked, naming the file and the field) — a run's block checkpoint, resumed bit-identically.
  void save_state(const std::string& path) const;
  void load_state(const std::string& path);

 private:
  int B_, T_, nblocks_, block_ = 0;
  bool fp_chain_ = true;
  Tensor xq_, xfp_, yfp_;
  Tensor yfp_partial_;  // capture_cross's full-precision outputs while they are being filled
  Block fp_block_;       // capture_cross: the current block's full-precision weights (a deep copy)
  int fp_block_of_ = -1; // the block fp_block_ holds
  std::vector<int32_t> windows_;
};

}  // namespace qf
