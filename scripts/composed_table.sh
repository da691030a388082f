#!/usr/bin/env bash
# The composed pipeline on stories260K (issue 6): recipes/cvxq_quantease_outliers_ft.lua — CVXQ
# allocation → QuantEase with 0.5 % outliers → block finetuning of scales, zeros and norms — at
# target 3.0 and 2.5 bits, against the same command with one stage switched off (alloc=false at
# uniform bits=3 and bits=2, ratio=0, finetune=false) and with all three off. Realized bits
# include every piece of side information (m:storage()). Run dirs under runs/composed/.
#   scripts/composed_table.sh [build/qforge]      env: TARGETS="3.0 2.5", FT_LR=1e-3
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}
RUNS=runs/composed
source scripts/table_lib.sh
R=recipes/cvxq_quantease_outliers_ft.lua
lr=${FT_LR:-1e-3}
for t in ${TARGETS:-3.0 2.5}; do
  qf_hdr "Composed pipeline, target $t bits (cluster_rows=64, compand, ratio=0.005, ft_lr=$lr, 4 epochs)"
  qf_row "full pipeline" full_$t $R target_bits=$t ft_lr=$lr
  qf_row "no allocation (uniform 3-bit per-channel)" noalloc3_$t $R target_bits=$t alloc=false bits=3 ft_lr=$lr
  qf_row "no allocation (uniform 2-bit per-channel)" noalloc2_$t $R target_bits=$t alloc=false bits=2 ft_lr=$lr
  qf_row "no outliers (ratio=0)" noout_$t $R target_bits=$t ratio=0 ft_lr=$lr
  qf_row "no finetune" noft_$t $R target_bits=$t finetune=false
  qf_row "allocation only (ratio=0 finetune=false)" alloconly_$t $R target_bits=$t ratio=0 finetune=false
done
qf_hdr "Every stage off: plain QuantEase (init=rtn) at uniform bits"
for b in 3 2; do
  qf_row "QuantEase uniform $b-bit per-channel" none_$b $R alloc=false bits=$b ratio=0 finetune=false
done
