#!/usr/bin/env bash
# The toolkit's example recipes (recipes/examples/, issue 18) on stories260K: each runs, records what
# it claims, and the claims hold (properties checked from results.json with python3).
# Usage: tests/cli_examples_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh" "$@"  # sets QF (absolute) and WORK (emptied)
SMALL="nsamples=8 wiki_windows=0 eval_seqlen=128"

# check WHAT FILE PYTHON_EXPR: the expression over r (results.json) must be true.
check() {
  if python3 -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if ($3) else 1)" "$2" 2>"$WORK/py.err"; then ok
  else bad "$1: ($3) is false on $2 $(cat "$WORK/py.err")"; fi
}

run cdr run recipes/examples/cd_refit.lua bits=3 rounds=2 sweeps=2 $SMALL out="$WORK/cdr"
expect_rc "cd_refit.lua" 0
R="$WORK/cdr/results.json"
check "cd_refit: one objective trace per linear (35), 1 + 2·rounds entries" "$R" "len(r['objective_traces']) == 35 and all(len(t) == 5 for t in r['objective_traces'])"
check "cd_refit: refit and sweeps never increase the objective" "$R" "all(b <= a * (1 + 1e-6) for t in r['objective_traces'] for a, b in zip(t, t[1:]))"
check "cd_refit: and they lower it below GPTQ's" "$R" "sum(t[-1] for t in r['objective_traces']) < 0.97 * sum(t[0] for t in r['objective_traces'])"
check "cd_refit: 3-bit codes + an fp16 scale and zero per row (rows of 64 and 172 inputs)" "$R" "3 + 32 / 172 < r['storage']['bits_per_weight'] < 3 + 32 / 64"
run cdr_bad run recipes/examples/cd_refit.lua group=32 out="$WORK/cdr_bad"
expect_rc "cd_refit.lua group=32 is an option error" 2
expect_in "cd_refit names the option" stderr "option 'group': cd_refit refits one scale per row"

run mp run recipes/examples/mixed_precision.lua bits=3 $SMALL out="$WORK/mp"
expect_rc "mixed_precision.lua" 0
R="$WORK/mp/results.json"
count() { echo "sum(v for k, v in r['linears_by_bits_per_weight'].items() if $1)"; }
check "mixed_precision: the 14 linears of blocks 1 and 5 at 8 bits" "$R" "$(count 'float(k) >= 8') == 14"
check "mixed_precision: v and down of blocks 2-4 at 4 bits" "$R" "$(count '4 <= float(k) < 5') == 6"
check "mixed_precision: the other 15 at 3 bits" "$R" "$(count 'float(k) < 4') == 15"

run rot run recipes/examples/rotate_gptq.lua bits=3 sides=input $SMALL save_format=qforge save="$WORK/rot.safetensors" out="$WORK/rot"
expect_rc "rotate_gptq.lua" 0
R="$WORK/rot/results.json"
run rot0 run recipes/examples/rotate_gptq.lua bits=3 sides=none $SMALL out="$WORK/rot0"
expect_rc "rotate_gptq.lua sides=none" 0
check "rotate_gptq: 64 bits per seed, one per linear, over the model's weights" "$R" \
  "abs(r['storage']['bits_per_weight'] - json.load(open('$WORK/rot0/results.json'))['storage']['bits_per_weight'] - 35 * 64 / r['storage']['weights']) < 1e-9"
check "rotate_gptq: every rotation kept (none folds)" "$R" "r['transforms_kept'] == 35"
check "rotate_gptq: the layer objective is the rotated problem's, close to plain GPTQ's" "$R" \
  "0.8 < r['objective_total'] / json.load(open('$WORK/rot0/results.json'))['objective_total'] < 1.2"
[ -s "$WORK/rot.safetensors" ] && ok || bad "rotate_gptq: the qforge file was written"
run rot_gguf run recipes/examples/rotate_gptq.lua bits=4 group=32 sym=true f16_scales=true save_format=gguf save_dtype=Q4_0 save="$WORK/rot.gguf" out="$WORK/rot_gguf"
expect_rc "rotate_gptq.lua to GGUF Q4_0 is refused before any work" 2
expect_in "names the reason" stderr "rotations and other transforms around them cannot be stored"

run magr run recipes/examples/magr_gptq.lua bits=3 alpha=0.05 $SMALL out="$WORK/magr"
expect_rc "magr_gptq.lua" 0
run magr0 run recipes/examples/magr_gptq.lua bits=3 alpha=0 $SMALL out="$WORK/magr0"
expect_rc "magr_gptq.lua alpha=0" 0
R="$WORK/magr/results.json"
check "magr_gptq: the clipping lowers every row's max |w| on average" "$R" "0.5 < r['linf_ratio_mean'] < 0.99"
check "magr_gptq alpha=0 is plain GPTQ: the same objective as rotate_gptq sides=none" "$WORK/magr0/results.json" \
  "r['objective_total'] == json.load(open('$WORK/rot0/results.json'))['objective_total']"
check "magr_gptq: a smaller range, a lower objective against the original W than plain GPTQ" "$R" \
  "r['objective_total'] < json.load(open('$WORK/magr0/results.json'))['objective_total']"

# AWQ (recipes/awq.lua, bindings/lua/awq.lua, docs/methods.md#awq): one search per block and site,
# the alpha of least recorded error picked; awq_grid=1 (alpha = 0, s = 1) is the plain solver
# through the whole run; the same run twice gives the same numbers; misspelled options and another
# solver's options are refused before any work.
AWQ="awq_windows=2 awq_grid=5 $SMALL"
run awq run recipes/awq.lua bits=3 solver=rtn $AWQ out="$WORK/awq"
expect_rc "awq.lua solver=rtn" 0
R="$WORK/awq/results.json"
check "awq: one search per block and site (5 x 4), 5 errors each" "$R" \
  "len(r['awq']['searches']) == 20 and all(len(s['errors']) == 5 for s in r['awq']['searches'])"
check "awq: each picks the alpha of least error, on the grid 0, 0.25, .., 1" "$R" \
  "all(s['errors'][s['alpha_index'] - 1] == min(s['errors']) and s['alpha'] == (s['alpha_index'] - 1) / 4 for s in r['awq']['searches'])"
check "awq: not trivial (some alpha > 0)" "$R" "any(s['alpha'] > 0 for s in r['awq']['searches'])"
run awq2 run recipes/awq.lua bits=3 solver=rtn $AWQ out="$WORK/awq2"
check "awq: deterministic (objective, held-out ppl, alphas)" "$WORK/awq2/results.json" \
  "(lambda a: r['objective_total'] == a['objective_total'] and r['ppl_heldout'] == a['ppl_heldout'] and [s['alpha'] for s in r['awq']['searches']] == [s['alpha'] for s in a['awq']['searches']])(json.load(open('$R')))"
run awq_a0 run recipes/awq.lua bits=3 solver=gptq awq_grid=1 $SMALL out="$WORK/awq_a0"
expect_rc "awq.lua awq_grid=1" 0
run gptq_a0 run recipes/gptq.lua bits=3 $SMALL out="$WORK/gptq_a0"
check "awq_grid=1 (s = 1) is gptq.lua bit for bit: objective and held-out ppl" "$WORK/awq_a0/results.json" \
  "(lambda g: r['objective_total'] == g['objective_total'] and r['ppl_heldout'] == g['ppl_heldout'])(json.load(open('$WORK/gptq_a0/results.json')))"
run awq_typo run recipes/awq.lua awq_grd=3 $SMALL out="$WORK/awq_typo"
expect_rc "awq.lua awq_grd=3 is an option error" 2
expect_in "names the unknown option" stderr "unknown option 'awq_grd'"
run awq_other run recipes/awq.lua solver=rtn percdamp=0.1 $SMALL out="$WORK/awq_other"
expect_rc "awq.lua solver=rtn with gptq's percdamp is an option error" 2
expect_in "names it" stderr "unknown option 'percdamp'"
run awq_site run recipes/awq.lua awq_sites=attn_in,mlp $SMALL out="$WORK/awq_site"
expect_rc "awq.lua awq_sites=attn_in,mlp is an option error" 2
expect_in "names the site" stderr "option 'awq_sites': unknown site 'mlp'"
run awq_help run recipes/awq.lua solver=quantease --help
expect_in "solver=quantease --help lists QuantEase's options" stdout "iters = 30"

finish cli_examples
