#!/usr/bin/env bash
# QuIP as a preprocessing step (pre=quip, docs/methods.md#quip) on stories260K: GPTQ and QuantEase
# after it run and record what they claim: the transforms cost the hand formula over the plain
# recipe's storage, the objective (on the original W, Σ) stays near plain GPTQ's at 4 bits, a
# rerun gives the same bits; a QuIP option without pre=quip, finetuning scales after it and
# formats that cannot hold the transforms are refused before any work.
# Usage: tests/cli_quip_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh" "$@"  # sets QF (absolute) and WORK (emptied)
SMALL="nsamples=8 wiki_windows=0 eval_seqlen=128 kld=false"

check() {
  if python3 -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if ($3) else 1)" "$2" 2>"$WORK/py.err"; then ok
  else bad "$1: ($3) is false on $2 $(cat "$WORK/py.err")"; fi
}

run g run recipes/gptq.lua bits=4 pre=quip $SMALL save_format=qforge save="$WORK/quip.safetensors" out="$WORK/g"
expect_rc "gptq.lua pre=quip" 0
run g2 run recipes/gptq.lua bits=4 pre=quip $SMALL out="$WORK/g2"
expect_rc "gptq.lua pre=quip again" 0
run q run recipes/quantease.lua bits=4 iters=6 pre=quip quip_kind=butterfly $SMALL out="$WORK/q"
expect_rc "quantease.lua pre=quip quip_kind=butterfly" 0
run p run recipes/gptq.lua bits=4 $SMALL out="$WORK/p"
expect_rc "gptq.lua (the baseline)" 0
G="$WORK/g/results.json"
check "a rerun gives the same objective and perplexity, bit for bit" "$WORK/g2/results.json" \
  "(r['objective_total'], r['ppl_heldout']) == (lambda g: (g['objective_total'], g['ppl_heldout']))(json.load(open('$G')))"
# Per linear: input seed + 32 bits per input (the diagonal 1/s) + output seed; 5 blocks of q, k, v,
# o, gate, up (64 inputs) and down (172 inputs).
check "storage: the transforms cost 64 + 32·cols + 64 bits per linear" "$G" \
  "abs((r['storage']['bits_per_weight'] - json.load(open('$WORK/p/results.json'))['storage']['bits_per_weight']) * r['storage']['weights'] - 5 * (6 * (128 + 32 * 64) + (128 + 32 * 172))) < 1e-6"
check "the objective on (W, Σ) stays near plain GPTQ's at 4 bits" "$G" \
  "0.5 < r['objective_total'] / json.load(open('$WORK/p/results.json'))['objective_total'] < 1.5"
[ -s "$WORK/quip.safetensors" ] && ok || bad "pre=quip: the qforge file was written"

run bad1 run recipes/gptq.lua quip_kind=butterfly $SMALL out="$WORK/bad1"
expect_rc "a QuIP option without pre=quip is an option error" 2
expect_in "names it" stderr "quip_kind"
run bad2 run recipes/gptq.lua pre=quip quip_sides=rows $SMALL out="$WORK/bad2"
expect_rc "a bad QuIP option" 2
expect_in "names it" stderr "quip_sides"
run bad3 run recipes/gptq.lua bits=4 group=32 sym=true f16_scales=true pre=quip save_format=gguf save_dtype=Q4_0 save="$WORK/q.gguf" out="$WORK/bad3"
expect_rc "GGUF Q4_0 cannot hold QuIP's transforms: refused before any work" 2
expect_in "names the reason" stderr "transforms"
run bad4 run recipes/gptq.lua pre=quip finetune=true $SMALL out="$WORK/bad4"
expect_rc "finetuning scales after pre=quip is refused before any work" 2
expect_in "names the reason" stderr "ft_params"
run bad5 run recipes/gptq.lua pre=magr+quip finetune=true $SMALL out="$WORK/bad5"
expect_rc "the same when QuIP is the second of two steps (pre=magr+quip)" 2
expect_in "names the reason" stderr "ft_params"
run bad6 run recipes/gptq.lua bits=4 group=32 sym=true f16_scales=true pre=magr+quip save_format=gguf save_dtype=Q4_0 save="$WORK/q6.gguf" out="$WORK/bad6"
expect_rc "GGUF Q4_0 after pre=magr+quip: refused before any work" 2
expect_in "names the reason" stderr "transforms"

finish cli_quip
