#!/usr/bin/env bash
# Layer-solver recipes on SmolLM2-135M (issue 4 evidence): 128 × 512-token calibration windows
# from the first half of PTB valid, perplexity on the held-out half and on WikiText-2 test
# (20 windows × 2048), KL divergence from the FP model (its reference shared by the runs in
# runs/smol/fp_ref), wall time and peak RSS per recipe. Run dirs under runs/smol/.
#   scripts/smollm2_table.sh [build/qforge] [recipe:bits ...]     (default: all six)
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}; shift || true
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$M" ] || { echo "run scripts/fetch-models.sh first" >&2; exit 1; }
runs=("$@"); [ ${#runs[@]} -gt 0 ] || runs=(rtn:4 gptq:4 quantease:4 rtn:3 gptq:3 quantease:3)
mkdir -p runs/smol
get() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get(sys.argv[2], float('nan')))" "$1" "$2"; }
kld() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])).get(sys.argv[2], {}); print(d.get(sys.argv[3], float('nan')))" "$1" "$2" "$3"; }
echo "| recipe | bits | summed objective | held-out PTB PPL | held-out KLD | WikiText-2 PPL (20×2048) | WikiText-2 KLD | same top (WikiText-2) | quantize s | wall s | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for rb in "${runs[@]}"; do
  r=${rb%%:*}; b=${rb##*:}; d=runs/smol/${r}_$b
  /usr/bin/time -f "%e %M" -o "$d.time" "$Q" run recipes/$r.lua model=$M bits=$b calib_text=../shared/data/ptb_valid.txt \
    nsamples=128 seqlen=512 eval_seqlen=2048 wiki_windows=20 fp_logits=runs/smol/fp_ref out="$d" > "$d.log" 2>&1 || { echo "| $r | $b | FAILED (see $d.log) |"; continue; }
  read -r wall rss < "$d.time"
  printf "| %s | %s | %.4g | %.4f | %.5f | %.4f | %.5f | %.2f%% | %.1f | %.0f | %.0f |\n" "$r" "$b" "$(get "$d/results.json" objective_total)" \
    "$(get "$d/results.json" ppl_heldout)" "$(kld "$d/results.json" kld_heldout mean)" "$(get "$d/results.json" ppl_wikitext2)" \
    "$(kld "$d/results.json" kld_wikitext2 mean)" "$(python3 -c "import sys; print(100 * float(sys.argv[1]))" "$(kld "$d/results.json" kld_wikitext2 same_top)")" \
    "$(get "$d/results.json" quantize_seconds)" "$wall" "$((rss / 1024))"
done
