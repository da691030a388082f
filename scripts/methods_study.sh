#!/usr/bin/env bash
# Issue 19's evidence: RTN, GPTQ, QuantEase and the related-work methods alone and composed — MagR
# (pre=magr), QuIP incoherence (pre=quip), OWQ at ~3.01 bits, Qronos (and GPFQ), stochastic OPTQ,
# AWQ → RTN/GPTQ/QuantEase — at 4, 3 and 2 bits per channel, with the calibration of the existing
# tables. Each family is one resumable `qforge sweep` under DIR; rerun the same command to resume.
#   scripts/methods_study.sh [build/qforge] [DIR] [stories260k|smollm2]
# stories260k (default): the recipes' defaults (TinyStories, 128 × 256 windows; minutes in all).
# smollm2: models/SmolLM2-135M-Instruct.Q4_1.gguf, 128 × 512 windows from the first half of PTB
# valid, perplexity/KLD on its held-out half and 20 WikiText-2 windows of 2048 (hours: 10–40 min a
# run on 2 cores; the 3-bit runs come first). Then:
#   build/qforge table DIR/* --x bits --y ppl_heldout
set -u
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}
D=${2:-runs/methods}
WHICH=${3:-stories260k}
case "$WHICH" in
  stories260k) COMMON="cache=$D/cache"; ORDER="4,3,2" ;;
  smollm2)
    M=models/SmolLM2-135M-Instruct.Q4_1.gguf
    [ -f "$M" ] || { echo "run scripts/fetch-models.sh first" >&2; exit 1; }
    COMMON="model=$M calib_text=../shared/data/ptb_valid.txt seqlen=512 eval_seqlen=2048 wiki_windows=20 cache=$D/cache"
    ORDER="3,4,2" ;;
  *) echo "unknown model set '$WHICH' (stories260k, smollm2)" >&2; exit 2 ;;
esac
mkdir -p "$D"
rc=0
run() {  # run NAME RECIPE OPTIONS...
  local name=$1 recipe=$2
  shift 2
  "$Q" sweep "$recipe" "$@" $COMMON --out "$D/$name" || rc=1
}
run rtn            recipes/rtn.lua       bits=$ORDER
run gptq           recipes/gptq.lua      bits=$ORDER
run quantease      recipes/quantease.lua bits=$ORDER
run qronos         recipes/qronos.lua    bits=$ORDER solver=qronos
run gpfq           recipes/qronos.lua    bits=$ORDER solver=gpfq
# Qronos's own setting: a block's linears in order, X̃ of o/down through the quantized q/k/v, gate/up
run qronos_ts      recipes/qronos.lua    bits=$ORDER true_sequential=true
run gpfq_ts        recipes/qronos.lua    bits=$ORDER solver=gpfq true_sequential=true
run gptq_ts        recipes/gptq.lua      bits=$ORDER true_sequential=true
run magr_gptq      recipes/gptq.lua      bits=$ORDER pre=magr
run magr_quantease recipes/quantease.lua bits=$ORDER pre=magr
run quip_gptq      recipes/gptq.lua      bits=$ORDER pre=quip
run quip_quantease recipes/quantease.lua bits=$ORDER pre=quip
run quipin_gptq    recipes/gptq.lua      bits=$ORDER pre=quip quip_sides=input
run quipin_quantease recipes/quantease.lua bits=$ORDER pre=quip quip_sides=input
run owq3           recipes/owq.lua       bits=3 target_bits=3.01
run owq4           recipes/owq.lua       bits=4 target_bits=4.01
run awq_rtn        recipes/awq.lua       bits=$ORDER solver=rtn
run awq_gptq       recipes/awq.lua       bits=$ORDER solver=gptq
run awq_quantease  recipes/awq.lua       bits=$ORDER solver=quantease
run qronos_magr    recipes/qronos.lua    bits=2 pre=magr
run qronos_quip_magr recipes/qronos.lua  bits=2 pre=magr+quip quip_sides=input
run gptq_stochastic recipes/gptq.lua     bits=$ORDER stochastic=true seed=0,1,2
exit $rc
