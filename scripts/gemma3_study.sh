#!/usr/bin/env bash
# Issue 20's Gemma 3 evidence: Gemma 3 270M (models/gemma-3-270m.Q4_K_M.gguf, scripts/fetch-models.sh
# gemma3; dequantized to f32 on load, so "full precision" below is that Q4_K_M file's weights) —
# load time, peak RSS and forward tokens/s (bench_forward, beside the machine's SGEMM rate), then
# RTN, GPTQ and QuantEase at 4 and 3 bits per channel with 128 × 512-token calibration windows from
# the first half of PTB valid (scripts/smollm2_table.sh's protocol), perplexity and KLD on the
# held-out half and on WikiText-2 test (WIKI windows of 2048, default 8: Gemma's 262,144-entry
# classifier makes every scored token cost ~170 M multiply-adds). Each recipe is one resumable
# `qforge sweep` under DIR (default runs/gemma3); the full-precision references are made once
# (cache=DIR/cache). Hours on 2 cores; rerun the same command to resume. Then:
#   build/qforge table DIR/rtn DIR/gptq DIR/quantease
#   scripts/gemma3_study.sh [build/qforge] [DIR]
set -u
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}
D=${2:-runs/gemma3}
M=models/gemma-3-270m.Q4_K_M.gguf
[ -f "$M" ] || { echo "run scripts/fetch-models.sh gemma3 first" >&2; exit 1; }
mkdir -p "$D"
B=$(dirname "$Q")/bench_forward
if [ -x "$B" ] && [ ! -f "$D/bench_forward.txt" ]; then
  /usr/bin/time -f "wall %e s, peak RSS %M KB" "$B" "$M" 1 512 > "$D/bench_forward.txt" 2>&1
  echo "load: $(uptime | sed 's/.*load average/load average/')" >> "$D/bench_forward.txt"
fi
COMMON="model=$M calib_text=../shared/data/ptb_valid.txt nsamples=128 seqlen=512 eval_seqlen=2048 wiki_windows=${WIKI:-8} cache=$D/cache"
rc=0
for r in rtn gptq quantease; do
  "$Q" sweep recipes/$r.lua bits=4,3 $COMMON --out "$D/$r" || rc=1
done
exit $rc
