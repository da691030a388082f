#!/usr/bin/env bash
# CVXQ evidence on stories260K (issue 5): uniform allocation vs CVXQ allocation, each with RTN,
# GPTQ and QuantEase, at realized bits per weight that include scales, zeros, bit-depth side
# information and row-cluster indices (m:storage()); companded vs uniform grid; gradient
# statistics vs the diag-Σ proxy. Default protocol of qforge.pipeline (128 × 256 TinyStories
# calibration windows, held-out second half, WikiText-2 40 × 512). Run dirs under runs/cvxq/.
#   scripts/cvxq_table.sh [build/qforge] [section ...]   sections: uniform cvxq grid proxy (default all)
#   env: TARGETS="2.0 2.5 3.0 4.0" (CVXQ target code bits), BITS="2 3 4", UGROUPS="pc g64" (uniform rows)
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}; shift || true
sections=("$@"); [ ${#sections[@]} -gt 0 ] || sections=(uniform cvxq grid proxy)
mkdir -p runs/cvxq
row() {  # label, run dir, then the qforge run arguments
  local label=$1 d=runs/cvxq/$2; shift 2
  "$Q" run "$@" out="$d" > "$d.log" 2>&1 || { echo "| $label | FAILED (see $d.log) |"; return; }
  python3 - "$label" "$d/results.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[2])); s = d["storage"]; a = d.get("allocation", {}); g = d.get("gradient_statistics", {})
print("| %s | %.3f | %.3f | %.2f%% | %.4g | %.3f | %.2f | %s |" % (sys.argv[1], s["codes"], s["bits_per_weight"],
      100 * s["pruned_fraction"], d["objective_total"], d["ppl_heldout"], d["ppl_wikitext2"],
      "%d steps" % (a["steps"] + a["bisections"]) if a else ""))
PY
}
hdr() { echo; echo "$1"; echo; echo "| run | code bits | realized bits/weight | pruned | summed objective | held-out PPL | WikiText-2 PPL | dual ascent |"; echo "|---|---|---|---|---|---|---|---|"; }
for s in "${sections[@]}"; do case $s in
uniform)
  hdr "Uniform allocation (same bits everywhere), per-channel and g64 asymmetric min/max grids"
  for g in ${UGROUPS:-pc g64}; do for b in ${BITS:-2 3 4}; do for r in rtn gptq quantease; do
    if [ "$g" = pc ]; then row "$r $b-bit per-channel" ${r}_${b}_pc recipes/$r.lua bits=$b
    else row "$r $b-bit $g" ${r}_${b}_$g recipes/$r.lua bits=$b group=${g#g}; fi
  done; done; done ;;
cvxq)
  hdr "CVXQ allocation (gradient statistics, 64-row clusters × columns), companded grid + bias correction"
  for t in ${TARGETS:-2.0 2.5 3.0 4.0}; do
    row "CVXQ RTN target $t" cvxq_rtn_$t recipes/cvxq.lua target_bits=$t cluster_rows=64
    row "CVXQ GPTQ target $t" cvxq_gptq_$t recipes/cvxq_quantease.lua target_bits=$t cluster_rows=64 solver=gptq
    row "CVXQ QuantEase target $t" cvxq_qe_$t recipes/cvxq_quantease.lua target_bits=$t cluster_rows=64
  done ;;
grid)
  hdr "Uniform min/max grid instead of the compander on the same CVXQ allocation (RTN + bias correction; compare CVXQ RTN rows)"
  for t in 2.0 3.0; do
    row "uniform grid, target $t" grid_uniform_$t recipes/cvxq.lua target_bits=$t cluster_rows=64 kind=uniform
  done ;;
proxy)
  hdr "diag-Σ proxy instead of the gradient statistics (compare CVXQ RTN / QuantEase rows)"
  for t in 2.0 3.0; do
    row "proxy RTN, target $t" sens_proxy_rtn_$t recipes/cvxq.lua target_bits=$t cluster_rows=64 sensitivity=proxy
    row "proxy QuantEase, target $t" sens_proxy_qe_$t recipes/cvxq_quantease.lua target_bits=$t cluster_rows=64 sensitivity=proxy
  done ;;
*) echo "unknown section $s" >&2; exit 2 ;;
esac; done
