// qforge — folding a quantized linear's transforms into its neighbours (methods.md#transforms),
// so a model quantized in a transformed basis exports to formats that store plain codes.
#pragma once
#include <string>
#include <vector>

#include "model/model.h"

namespace qf {

struct FoldEntry {
  int block = 0;        // 0-based
  std::string linear;   // canonical name
  std::string kind;     // the transform's kind ("diag", …)
  std::string side;     // "input" | "output"
  bool folded = false;
  std::string into;     // folded: where to ("attn_norm"); not folded: why not
};

// Folds what the algebra allows and leaves the rest, reporting every transform found:
//   a diagonal input transform d shared (bit for bit) by every linear reading an RMSNorm's
//   output (q/k/v after attn_norm, gate/up after ffn_norm) moves into the norm's gain: g ← g ⊙ d,
//   since RMSNorm(x)·g then feeds T·x = d ⊙ (RMSNorm(x)·g). The codes are unchanged.
//   v's dense output transform O, block-diagonal per kv head, and o's dense input transform made
//   of the same blocks transposed (per q head, its kv head's block) cancel across attention, which
//   mixes tokens, never features, within a head: both are removed, the codes unchanged.
// Other transforms stay (exports that store codes refuse them, naming the linear); down/up never
// pair, since SwiGLU's elementwise product passes no rotation.
std::vector<FoldEntry> fold_transforms(Model& m);

}  // namespace qf
