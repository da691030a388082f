#!/usr/bin/env bash
# Issue 16's calibration-size study: how quality depends on the number of calibration windows
# (nsamples 16 … 256) on SmolLM2-135M at 3 bits per channel, for GPTQ, QuantEase and decoupleQ
# with and without its block stage (decoupleQ's authors warn that it overfits small calibration
# sets). Same protocol as scripts/smollm2_table.sh (512-token windows from the first half of PTB
# valid; perplexity and KLD on the held-out half and 20 WikiText-2 windows of 2048). Each recipe is
# one resumable `qforge sweep` under DIR (default runs/calib_size; keep it outside the work tree to
# survive a fresh checkout); the full-precision references are computed once (cache=DIR/cache).
# Hours on 2 cores (about 15–40 min a run); rerun the same command to resume. Then:
#   build/qforge table DIR/gptq DIR/quantease DIR/decoupleq --plot DIR/kld.png --x nsamples --y kld_heldout
# (decoupleQ with and without the block stage are two curves only when plotted per sweep: --curve finetune)
#   scripts/calib_size_study.sh [build/qforge] [DIR]
set -u
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}
D=${2:-runs/calib_size}
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$M" ] || { echo "run scripts/fetch-models.sh first" >&2; exit 1; }
mkdir -p "$D"
COMMON="model=$M bits=3 calib_text=../shared/data/ptb_valid.txt seqlen=512 eval_seqlen=2048 wiki_windows=20 cache=$D/cache"
rc=0
for r in gptq quantease; do
  "$Q" sweep recipes/$r.lua nsamples=16,32,64,128,256 $COMMON --out "$D/$r" || rc=1
done
# The block stage at the learning rate found on stories260K, one epoch (docs/results.md: 4 epochs
# take ~66 min per run on SmolLM2), so a run with few windows also takes few Adam steps.
"$Q" sweep recipes/decoupleq.lua nsamples=16,32,64,128,256 finetune=false,true ft_lr=1e-3 ft_epochs=1 $COMMON --out "$D/decoupleq" || rc=1
exit $rc
