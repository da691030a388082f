#!/usr/bin/env bash
# Issue-3 quality table on stories260K: calibrate on the first half of the TinyStories head
# (128 × 256-token windows, seed 0), evaluate on the held-out half (512-token windows) and
# on the first 40 WikiText-2 windows. Prints a markdown table; run dirs under runs/quality/.
#   scripts/quality_table.sh [build/qforge]
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}
out=runs/quality
mkdir -p "$out"
get() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get(sys.argv[2], float('nan')))" "$1" "$2"; }
# kld FILE KEY FIELD: a field of a recorded KL divergence table (nan when absent).
kld() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])).get(sys.argv[2], {}); print(d.get(sys.argv[3], float('nan')))" "$1" "$2" "$3"; }
row() {  # name config recipe args...
  local name=$1 cfg=$2 recipe=$3; shift 3
  local dir="$out/${name// /_}-${cfg// /_}"
  "$Q" run "recipes/$recipe" "$@" out="$dir" >/dev/null 2>"$dir.log" || { echo "| $name | $cfg | FAILED (see $dir.log) | | | | | | |"; return; }
  local r="$dir/results.json"
  printf "| %s | %s | %.4g | %.4f | %.4f | %.3f | %.4f | %.2f%% | %.1f |\n" "$name" "$cfg" "$(get "$r" objective_total)" \
    "$(get "$r" ppl_heldout)" "$(kld "$r" kld_heldout mean)" "$(get "$r" ppl_wikitext2)" "$(kld "$r" kld_wikitext2 mean)" \
    "$(python3 -c "import sys; print(100 * float(sys.argv[1]))" "$(kld "$r" kld_wikitext2 same_top)")" "$(get "$r" quantize_seconds)"
}
echo "| method | grid | summed layer objective | held-out TinyStories PPL | held-out KLD | WikiText-2 PPL (40 win) | WikiText-2 KLD | same top token (WikiText-2) | quantize s |"
echo "|---|---|---|---|---|---|---|---|---|"
"$Q" run recipes/rtn.lua eval_fp=true bits=8 out="$out/fp" >/dev/null 2>"$out/fp.log"
printf "| full precision | f32 | 0 | %.4f | 0 | %.3f | 0 | 100%% | |\n" "$(get "$out/fp/results.json" fp_ppl_heldout)" "$(get "$out/fp/results.json" fp_ppl_wikitext2)"
for cfg in "4 -1" "3 -1" "2 -1" "3 32"; do
  set -- $cfg
  b=$1 g=$2
  label="${b}-bit $([ "$g" = -1 ] && echo per-channel || echo g$g)"
  row "RTN" "$label" rtn.lua bits=$b group=$g
  row "GPTQ" "$label" gptq.lua bits=$b group=$g
  row "QuantEase init w" "$label" quantease.lua bits=$b group=$g init=w
  row "QuantEase init gptq" "$label" quantease.lua bits=$b group=$g init=gptq
  row "QuantEase + 0.5% outliers" "$label" quantease_outliers.lua bits=$b group=$g ratio=0.005
  row "QuantEase + 1% outliers" "$label" quantease_outliers.lua bits=$b group=$g ratio=0.01
done
