#!/usr/bin/env bash
# Issue 17's grid-fitting levers on stories260K at the Q4_0 layout (4-bit symmetric, groups of
# 32, fp16 scales — every row exports exactly to GGUF Q4_0): the symmetric mapping (GPTQ's vs
# llama.cpp's), the importance-weighted scale search (diag Σ, llama.cpp's imatrix) and the scale
# refit for fixed codes, under RTN, GPTQ and QuantEase. Prints a markdown table; runs under
# runs/grid_fit/ (docs/results.md "Fitting the grid").
#   scripts/grid_fit_table.sh [build/qforge]
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}
D=runs/grid_fit
mkdir -p $D
COMMON="bits=4 sym=true group=32 f16_scales=true wiki_windows=10 fp_logits=$D/fp_ref"
echo "| solver | mapping | importance | refit | summed objective | held-out PPL | held-out KLD | WikiText-2 PPL (10 win) | WikiText-2 KLD | bits/weight |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for solver in rtn gptq quantease; do
  for cfg in "gptq none false" "llamacpp none false" "llamacpp diag false" "llamacpp diag_x false" "llamacpp diag true"; do
    set -- $cfg
    name=${solver}_$1_$2_$3
    "$Q" run recipes/$solver.lua $COMMON mapping=$1 importance=$2 refit_scales=$3 out=$D/$name > $D/$name.log 2>&1 \
      || { echo "| $solver | $1 | $2 | $3 | FAILED (see $D/$name.log) |"; continue; }
    python3 - "$D/$name/results.json" "$solver" "$1" "$2" "$3" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print("| %s | %s | %s | %s | %.4g | %.4f | %.4f | %.3f | %.4f | %.3f |" % (*sys.argv[2:6], d["objective_total"], d["ppl_heldout"],
      d["kld_heldout"]["mean"], d["ppl_wikitext2"], d["kld_wikitext2"]["mean"], d["storage"]["bits_per_weight"]))
PY
  done
done
