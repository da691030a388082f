#!/usr/bin/env bash
# Issue 17 (b): which levers make the full-Σ solvers generalize beyond their calibration text?
# SmolLM2-135M on the Q4_0 layout (4-bit, groups of 32, llama.cpp's mapping, fp16 scales, the
# diag-Σ importance fit), calibrated on 128 × 512 windows; every run records qforge's KL
# divergence from the full-precision model on 20 WikiText-2 windows of 2048 (out of domain for
# PTB calibration; qforge's KLD agrees with llama-perplexity's, docs/results.md) and on the
# held-out half of its calibration text. One resumable `qforge sweep` per lever under DIR:
#   shrink_gptq, shrink_quantease   sigma_shrink 0 … 0.9 (Σ toward its diagonal; 1 is the imatrix view)
#   damp_gptq                       percdamp 0.01 … 0.3 (damping as a ridge toward plain rounding)
#   actorder                        GPTQ with and without act-order
#   text_gptq, text_quantease       the calibration text: PTB, TinyStories, WikiText-2 valid
# Hours on 2 cores; rerun to resume. Then, per lever:
#   build/qforge table DIR/shrink_gptq DIR/shrink_quantease --x sigma_shrink --y kld_wikitext2
#   scripts/generalization_study.sh [build/qforge] [DIR]      (default runs/generalization)
set -u
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}
D=${2:-runs/generalization}
M=models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$M" ] || { echo "run scripts/fetch-models.sh first" >&2; exit 1; }
mkdir -p "$D"
S=../shared/data
GRID="bits=4 group=32 sym=true mapping=llamacpp f16_scales=true importance=diag"
COMMON="model=$M nsamples=128 seqlen=512 eval_seqlen=2048 wiki_windows=20 cache=$D/cache $GRID"
PTB="calib_text=$S/ptb_valid.txt"
rc=0
"$Q" sweep recipes/gptq.lua sigma_shrink=0,0.25,0.5,0.75,0.9 $PTB $COMMON --out "$D/shrink_gptq" || rc=1
"$Q" sweep recipes/quantease.lua sigma_shrink=0,0.5,0.9 $PTB $COMMON --out "$D/shrink_quantease" || rc=1
"$Q" sweep recipes/gptq.lua percdamp=0.01,0.1,0.3 $PTB $COMMON --out "$D/damp_gptq" || rc=1
"$Q" sweep recipes/gptq.lua act_order=false,true $PTB $COMMON --out "$D/actorder" || rc=1
TEXTS="calib_text=$S/ptb_valid.txt,$S/tinystories_head.txt,$S/wikitext2_valid_tokens.txt"
"$Q" sweep recipes/gptq.lua $TEXTS $COMMON --out "$D/text_gptq" || rc=1
"$Q" sweep recipes/quantease.lua $TEXTS $COMMON --out "$D/text_quantease" || rc=1
exit $rc
