#!/usr/bin/env bash
# CVXQ evidence on stories260K (issue 5): uniform allocation vs CVXQ allocation, each with RTN,
# GPTQ and QuantEase, at realized bits per weight that include scales, zeros, bit-depth side
# information and row-cluster indices (m:storage()); companded vs uniform grid; gradient
# statistics vs the diag-Σ proxy. Default protocol of qforge.pipeline (128 × 256 TinyStories
# calibration windows, held-out second half, WikiText-2 40 × 512). Run dirs under runs/cvxq/.
#   scripts/cvxq_table.sh [build/qforge] [section ...]   sections: uniform cvxq equal equal_nobias grid bias proxy (default all)
#   env: TARGETS="2.0 2.5 3.0 4.0" (CVXQ target code bits), BITS="2 3 4", UGROUPS="pc g64" (uniform rows)
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}; shift || true
sections=("$@"); [ ${#sections[@]} -gt 0 ] || sections=(uniform cvxq equal equal_nobias grid bias proxy)
RUNS=runs/cvxq
source scripts/table_lib.sh
# The three solvers on one CVXQ allocation: trio TARGET LABEL_SUFFIX DIR_PREFIX [recipe options]
trio() {
  local t=$1 suf=$2 pre=$3; shift 3
  qf_row "CVXQ RTN target $t$suf" ${pre}cvxq_rtn_$t recipes/cvxq.lua target_bits=$t cluster_rows=64 "$@"
  qf_row "CVXQ GPTQ target $t$suf" ${pre}cvxq_gptq_$t recipes/cvxq_quantease.lua target_bits=$t cluster_rows=64 solver=gptq "$@"
  qf_row "CVXQ QuantEase target $t$suf" ${pre}cvxq_qe_$t recipes/cvxq_quantease.lua target_bits=$t cluster_rows=64 "$@"
}
for s in "${sections[@]}"; do case $s in
uniform)
  qf_hdr "Uniform allocation (same bits everywhere), per-channel and g64 asymmetric min/max grids"
  for g in ${UGROUPS:-pc g64}; do for b in ${BITS:-2 3 4}; do for r in rtn gptq quantease; do
    if [ "$g" = pc ]; then qf_row "$r $b-bit per-channel" ${r}_${b}_pc recipes/$r.lua bits=$b
    else qf_row "$r $b-bit $g" ${r}_${b}_$g recipes/$r.lua bits=$b group=${g#g}; fi
  done; done; done ;;
cvxq)
  qf_hdr "CVXQ allocation (gradient statistics, 64-row clusters × columns), companded grid + bias correction"
  for t in ${TARGETS:-2.0 2.5 3.0 4.0}; do
    trio $t "" ""
  done ;;
equal)
  # CVXQ's side information (per (cluster, column) fp16 scale + zero, 4-bit depths, cluster
  # indices, the bias correction's new biases) costs ~0.34 bits/weight more than a per-channel
  # grid's: targets 1.66 / 2.66 / 3.66 land on the realized bits of uniform 2 / 3 / 4-bit.
  qf_hdr "CVXQ allocation at the realized bits of the uniform per-channel rows (companded grid + bias correction)"
  for t in ${EQ_TARGETS:-1.66 2.66 3.66}; do
    trio $t "" ""
  done ;;
equal_nobias)
  # Without the bias correction's new biases the side information is ~0.13 bits/weight above a
  # per-channel grid's: targets 1.87 / 2.87 / 3.87 land on uniform 2 / 3 / 4-bit realized bits.
  qf_hdr "CVXQ allocation without bias correction at the realized bits of the uniform per-channel rows (companded grid)"
  for t in ${EQ_NB_TARGETS:-1.87 2.87 3.87}; do
    trio $t ", no BC" nb_ bias_correction=false
  done ;;
bias)
  qf_hdr "Without bias correction (saves the new biases' 16 bits per output row; compare the CVXQ RTN rows)"
  for t in 2.0 3.0; do
    qf_row "no bias correction, target $t" nobias_rtn_$t recipes/cvxq.lua target_bits=$t cluster_rows=64 bias_correction=false
  done ;;
grid)
  qf_hdr "Uniform min/max grid instead of the compander on the same CVXQ allocation (RTN + bias correction; compare CVXQ RTN rows)"
  for t in 2.0 3.0; do
    qf_row "uniform grid, target $t" grid_uniform_$t recipes/cvxq.lua target_bits=$t cluster_rows=64 kind=uniform
  done ;;
proxy)
  qf_hdr "diag-Σ proxy instead of the gradient statistics (compare CVXQ RTN / QuantEase rows)"
  for t in 2.0 3.0; do
    qf_row "proxy RTN, target $t" sens_proxy_rtn_$t recipes/cvxq.lua target_bits=$t cluster_rows=64 sensitivity=proxy
    qf_row "proxy QuantEase, target $t" sens_proxy_qe_$t recipes/cvxq_quantease.lua target_bits=$t cluster_rows=64 sensitivity=proxy
  done ;;
*) echo "unknown section $s" >&2; exit 2 ;;
esac; done
