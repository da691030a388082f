#!/usr/bin/env bash
# The pipeline recipes from the command line (issue 14): every bad option value exits 2 with a
# message naming the option, before any calibration work; export options are checked up front;
# help texts and defaults; realized bits of custom_loop.lua; the ETA counts capture time.
# Usage: tests/cli_pipeline_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh" "$@"  # sets QF (absolute) and WORK (emptied)

# Small and fast: stories260K, a few short windows, no WikiText-2.
FAST="nsamples=2 seqlen=32 eval_seqlen=64 wiki_windows=0"

# opt_err RECIPE 'EXPECTED TEXT' key=value...: exit 2, the message names the option, and the
# run stopped before any work (no calibration split, no block progress line).
n=0
opt_err() {
  local recipe="$1" want="$2"
  shift 2
  n=$((n + 1))
  run "opt$n" run "recipes/$recipe" "$@" out="$WORK/opt$n"
  local what="$recipe $*"
  expect_rc "$what" 2
  expect_in "$what" stderr "$want"
  if [ -e "$WORK/opt$n" ]; then bad "$what: an option error left its run directory $WORK/opt$n"; else ok; fi
  if grep -qE "calibration tokens|^calibration: |^block [0-9]+/|full-precision statistics|dual ascent" "$WORK/stderr" "$WORK/stdout"; then
    bad "$what: work started before the option error"
  else ok; fi
}

# ---- item 14: every option of the pipeline and of every recipe ------------------------------
opt_err rtn.lua "option 'bits' must be an integer in 1..8, got 0" bits=0
opt_err rtn.lua "option 'bits' must be an integer in 1..8, got 9" bits=9
opt_err rtn.lua "option 'bits' expects an integer, got '3.5'" bits=3.5
opt_err rtn.lua "option 'group' must be -1 or an integer >= 1, got 0" group=0
opt_err rtn.lua "option 'group' must be -1 or an integer >= 1, got -2" group=-2
opt_err rtn.lua "option 'sym' expects a boolean" sym=maybe
opt_err rtn.lua "option 'nsamples' must be an integer >= 1, got 0" nsamples=0
opt_err rtn.lua "option 'nsamples' must be an integer >= 1, got -4" nsamples=-4
opt_err rtn.lua "option 'seqlen' must be an integer >= 1, got 0" seqlen=0
opt_err rtn.lua "option 'seqlen': 600 exceeds the model's context length 512" seqlen=600
opt_err rtn.lua "option 'eval_seqlen' must be 0 or an integer >= 2, got 1" eval_seqlen=1
opt_err rtn.lua "option 'eval_seqlen': 600 exceeds the model's context length 512" eval_seqlen=600
opt_err rtn.lua "option 'calib_fraction' expects a finite number, got 'nan'" calib_fraction=nan
opt_err rtn.lua "option 'calib_fraction' expects a finite number, got 'inf'" calib_fraction=inf
opt_err rtn.lua "option 'calib_fraction' must be a finite number > 0 and < 1, got 0" calib_fraction=0
opt_err rtn.lua "option 'calib_fraction' must be a finite number > 0 and < 1, got 1" calib_fraction=1
opt_err rtn.lua "option 'calib_fraction' must be a finite number > 0 and < 1, got -0.5" calib_fraction=-0.5
opt_err rtn.lua "option 'calib_fraction': the first 0.0001 of" calib_fraction=0.0001
opt_err rtn.lua "option 'eval_seqlen': the held-out tokens" calib_fraction=0.9999 eval_seqlen=512
opt_err rtn.lua "option 'wiki_windows' must be an integer >= 0, got -1" wiki_windows=-1
opt_err rtn.lua "option 'wiki_text': cannot read" wiki_text=/nonexistent/wiki.txt
opt_err rtn.lua "option 'model': cannot read '/nonexistent/model'" model=/nonexistent/model
opt_err rtn.lua "option 'calib_text': cannot read" calib_text=/nonexistent/calib.txt
opt_err rtn.lua "option 'ft_epochs' must be an integer >= 1, got 0" ft_epochs=0
opt_err rtn.lua "option 'ft_batch' must be an integer >= 1, got 0" ft_batch=0
opt_err rtn.lua "option 'ft_lr' must be a finite number >= 0, got -1" ft_lr=-1
opt_err rtn.lua "option 'ft_lr' expects a finite number" ft_lr=nan
opt_err rtn.lua "option 'ft_params': unknown parameter group 'bogus'" finetune=true ft_params=bogus
opt_err rtn.lua "unknown option 'bitz' for recipe rtn.lua" bitz=3
opt_err gptq.lua "option 'blocksize' must be an integer >= 1, got 0" blocksize=0
opt_err gptq.lua "option 'percdamp' must be a finite number >= 0, got -0.1" percdamp=-0.1
opt_err gptq.lua "option 'percdamp' expects a finite number" percdamp=inf
opt_err quantease.lua "option 'iters' must be an integer >= 1, got 0" iters=0
opt_err quantease.lua "option 'init' must be one of w, rtn, gptq; got \"zero\"" init=zero
opt_err quantease.lua "option 'continuous_every' must be an integer >= 0, got -1" continuous_every=-1
opt_err quantease_outliers.lua "option 'ratio' must be a finite number >= 0 and < 1, got 1" ratio=1
opt_err quantease_outliers.lua "option 'ratio' must be a finite number >= 0 and < 1, got -0.1" ratio=-0.1
opt_err quantease_outliers.lua "option 'alpha' must be a finite number > 0, got 0" alpha=0
opt_err quantease_outliers.lua "option 'iters' must be an integer >= 1, got 0" iters=0
opt_err custom_loop.lua "option 'rounds' must be an integer >= 1, got 0" rounds=0
opt_err custom_loop.lua "option 'sweeps' must be an integer >= 1, got -1" sweeps=-1
opt_err custom_loop.lua "option 'ratio' must be a finite number >= 0 and < 1, got 2" ratio=2
opt_err compare_solvers.lua "option 'apply' must be one of rtn, gptq, gptq_static, qe_w, qe_gptq, qe_out05, qe_out1; got \"best\"" apply=best
opt_err compare_solvers.lua "option 'iters' must be an integer >= 1, got 0" iters=0
opt_err compare_solvers.lua "option 'methods': unknown method 'qe'" methods=gptq,qe
opt_err compare_solvers.lua "option 'only': invalid regular expression '('" only='('
run cso run recipes/compare_solvers.lua $FAST methods=gptq,qe_w 'only=^[23]\.down$' out="$WORK/cso"
expect_rc "compare_solvers on two linears, two columns" 0
expect_in "the chosen columns only" stdout "| block | layer | GPTQ | QE init w |"
python3 - "$WORK/cso/results.json" <<'PY' && ok || bad "compare_solvers only=: two rows, sweeps recorded"
import json, sys
rows = json.load(open(sys.argv[1]))["comparison"]
assert [(r["block"], r["layer"]) for r in rows] == [(2, "down"), (3, "down")], rows
assert all("qe_w_sweeps" in r and "rtn" not in r and r["qe_w"] > 0 for r in rows), rows
PY
opt_err cvxq.lua "option 'cluster_rows' must be an integer >= 1, got 0" cluster_rows=0
opt_err cvxq.lua "option 'target_bits' must be a finite number > 0 and <= 8, got 0" target_bits=0
opt_err cvxq.lua "option 'target_bits' must be a finite number > 0 and <= 8, got 9" target_bits=9
opt_err cvxq.lua "option 'target_bits' expects a finite number, got 'nan'" target_bits=nan
opt_err cvxq.lua "option 'target_bits': 5 exceeds bmax=4" target_bits=5 bmax=4
opt_err cvxq.lua "option 'bmax' must be an integer in 1..8, got 0" bmax=0
opt_err cvxq.lua "option 'kind' must be one of compand, uniform; got \"laplace\"" kind=laplace
opt_err cvxq.lua "option 'sensitivity' must be one of gradient, proxy; got \"hessian\"" sensitivity=hessian
opt_err cvxq.lua "option 'pca' must be an integer >= 1, got 0" pca=0
opt_err cvxq.lua "option 'stride' must be an integer >= 1, got 0" stride=0
opt_err cvxq.lua "option 'grad_iters' must be an integer >= 0, got -1" grad_iters=-1
opt_err cvxq.lua "option 'alloc_file'" alloc_file=/nonexistent/allocation.safetensors
opt_err cvxq_quantease.lua "option 'solver' must be one of quantease, gptq; got \"rtn\"" solver=rtn
opt_err cvxq_quantease.lua "option 'iters' must be an integer >= 1, got 0" iters=0
opt_err cvxq_quantease.lua "option 'init' must be one of w, rtn, gptq; got \"x\"" init=x
opt_err cvxq_quantease.lua "option 'cluster_rows' must be an integer >= 1, got -3" cluster_rows=-3
opt_err cvxq_quantease_outliers_ft.lua "option 'ratio' must be a finite number >= 0 and < 1, got 1" ratio=1
opt_err cvxq_quantease_outliers_ft.lua "option 'cluster_rows' must be an integer >= 1, got 0" cluster_rows=0
opt_err cvxq_quantease_outliers_ft.lua "option 'ft_epochs' must be an integer >= 1, got 0" ft_epochs=0
opt_err decoupleq.lua "option 'iters' must be an integer >= 1, got 0" iters=0
opt_err decoupleq.lua "option 'round' must be one of gptq, pgd; got \"nearest\"" round=nearest
opt_err decoupleq.lua "option 'pgd_lr' must be a finite number > 0, got 0" pgd_lr=0
opt_err decoupleq.lua "option 'pgd_steps' must be an integer >= 0, got -1" pgd_steps=-1
opt_err decoupleq.lua "option 'mse': does not apply to decoupleQ" mse=true
opt_err eval_heldout.lua "option 'nsamples' must be an integer >= 1, got 0" nsamples=0
opt_err eval.lua "option 'seqlen' must be 0 or an integer >= 2, got 1" seqlen=1
opt_err eval.lua "option 'max_windows' must be an integer >= 0, got -1" max_windows=-1
opt_err eval.lua "option 'seqlen': 600 exceeds the model's context length 512" seqlen=600
opt_err zero_row.lua "option 'block' must be an integer >= 1, got 0" block=0
opt_err zero_row.lua "option 'block': 99 is past the model's 5 blocks" block=99
opt_err zero_row.lua "option 'row': 9999 is past the 64 rows of block 1 'q'" row=9999
opt_err zero_row.lua "option 'linear': must be one of q (wq), k (wk)" linear=qq  # names from m:arch()
# A recipe that declares no options and gets one: the same kind, the same code.
echo 'print("no options")' >"$WORK/noopts.lua"
run noopts run "$WORK/noopts.lua" bits=3 out="$WORK/noopts"
expect_rc "key=value to a recipe without qf.options" 2
# qf.option_error from a recipe's own check; a plain error stays exit 1.
cat >"$WORK/own_check.lua" <<'EOF'
local o = qf.options({ k = 2 })
if o.k > 3 then qf.option_error("k", "must be <= 3, got " .. o.k) end
if o.k == 0 then error("a failure while working") end
EOF
run own1 run "$WORK/own_check.lua" k=4 out="$WORK/own1"
expect_rc "qf.option_error" 2
expect_in "qf.option_error" stderr "option 'k': must be <= 3, got 4"
run own2 run "$WORK/own_check.lua" k=0 out="$WORK/own2"
expect_rc "a run failure is exit 1" 1
# A recipe's bad declaration is a recipe bug (exit 1), not an option error.
echo 'qf.options({ k = 2 }, { k = { "help", min = "one" } })' >"$WORK/bad_decl.lua"
run baddecl run "$WORK/bad_decl.lua" out="$WORK/baddecl"
expect_rc "bad declaration" 1
expect_in "bad declaration" stderr "qf.options: option 'k': 'min' must be a number"

# ---- exit codes are documented -------------------------------------------------------------
run help_top --help
expect_in "qforge --help: exit codes" stdout "2 usage or option error"
run help_run run --help
expect_in "qforge run --help: exit codes" stdout "2  usage or option error"
run help_recipe run recipes/rtn.lua --help
expect_in "recipe --help: exit codes" stdout "exit codes: 0 ok, 1 the run failed, 2 usage or option error"

# ---- item 22: help texts of the most used options ------------------------------------------
for o in bits group sym mse model calib_text eval_seqlen wiki_text nsamples seqlen; do
  line=$(grep -E "^  $o = " "$WORK/stdout" | head -1)
  # a help text follows the "(type)" column
  if echo "$line" | grep -qE "\((integer|number|boolean|string)\) +[^ ]"; then ok; else bad "rtn.lua --help: no help for '$o': $line"; fi
done
expect_in "help shows accepted values" stdout "[1..8]"

# ---- item 5: cvxq target_bits means code bits; cluster_rows default 64 as in docs/results.md --
for r in cvxq.lua cvxq_quantease.lua cvxq_quantease_outliers_ft.lua; do
  run "help_$r" run "recipes/$r" --help
  expect_in "$r --help: cluster_rows default" stdout "cluster_rows = 64 "
  expect_in "$r --help: target_bits is code bits" stdout "average code bits per weight"
  expect_in "$r --help: realized bits differ" stdout "realized bits/weight add scales"
done
expect_file_has "results.md: stories260K CVXQ uses 64-row clusters" docs/results.md "(64-row cluster × input column)"

# ---- item 23: the docs say what solve gets and returns, ctx, P.grid, grid:spec(), copies; the
# README lists every recipe ---------------------------------------------------------------------
for r in recipes/*.lua; do
  expect_file_has "README lists $r" README.md "\`$(basename "$r")\`"
done
cat docs/lua_api.md docs/api/*.md > "$WORK/api_all.md"  # the API: the index page and one page per object
for s in "solve(l)" "must return a \`QLinear\`" "\`W\` is a **copy**" "| \`ctx\` |" "| \`P.grid(opt)\` |" "| \`grid:spec()\` |" "copies: editing them does not change the grid"; do
  expect_file_has "the API docs: $s" "$WORK/api_all.md" "$s"
done

# ---- item 20: export options before any work -----------------------------------------------
opt_err rtn.lua "option 'save_format' must be one of qforge, gguf, gptq, compressed-tensors, hf; got \"onnx\"" save="$WORK/m.onnx" save_format=onnx
opt_err rtn.lua "option 'save_dtype': 'Q8_K' is not a gguf dtype" save="$WORK/m.gguf" save_format=gguf save_dtype=Q8_K
opt_err rtn.lua "option 'save_format': gguf Q5_K cannot store this run's model: its Q5_K super-blocks need ktype=Q5_K" save="$WORK/m.gguf" save_format=gguf save_dtype=Q5_K
opt_err rtn.lua "option 'bits': does not go with ktype=Q4_K" ktype=Q4_K bits=3
opt_err rtn.lua "option 'ktype' must be one of" ktype=Q8_K
opt_err decoupleq.lua "option 'ktype': this recipe makes decoupleQ float-zero grids, not K-quant grids" ktype=Q4_K
opt_err rtn.lua "Q4_0 is symmetric: pass sym=true" save="$WORK/m.gguf" save_format=gguf save_dtype=Q4_0 group=32 f16_scales=true
opt_err rtn.lua "pass f16_scales=true" save="$WORK/m.gguf" save_format=gguf save_dtype=Q4_0 group=32 sym=true
opt_err rtn.lua "need group=-1 or a multiple of 32, got group=48" save="$WORK/m.gguf" save_format=gguf save_dtype=Q4_1 group=48 f16_scales=true
opt_err rtn.lua "GPTQ packs 2, 3, 4 or 8 bits, got bits=5" save="$WORK/gptq" save_format=gptq bits=5
opt_err rtn.lua "option 'save_dtype': format 'qforge' takes no dtype" save="$WORK/m.safetensors" save_dtype=F16
opt_err rtn.lua "option 'save': cannot write into directory '/nonexistent/dir'" save=/nonexistent/dir/m.safetensors
opt_err rtn.lua "option 'save_dtype': given without save=" save_dtype=F16
opt_err quantease_outliers.lua "stores no sparse outliers" save="$WORK/m.gguf" save_format=gguf save_dtype=Q8_0 sym=true f16_scales=true
opt_err cvxq.lua "the CVXQ allocation" save="$WORK/gptq" save_format=gptq
opt_err decoupleq.lua "decoupleQ's float zero points" save="$WORK/gptq" save_format=gptq
# ... and a storable configuration runs through and is written.
run save_ok run recipes/rtn.lua $FAST bits=4 sym=true group=32 f16_scales=true save="$WORK/ok.gguf" save_format=gguf save_dtype=Q4_0 out="$WORK/save_ok"
expect_rc "rtn -> gguf Q4_0 with storable options" 0
if [ -s "$WORK/ok.gguf" ]; then ok; else bad "ok.gguf not written"; fi
# ktype on a model whose widths are not multiples of 256 (stories260K: 64, 172): every linear gets
# llama-quantize's fallback grid (Q4_K -> Q5_0's), said on each progress line and recorded; down
# (172 columns) has no block type and is written F32 in the Q4_K file.
run kq_ok run recipes/gptq.lua $FAST ktype=Q4_K importance=diag save="$WORK/k.gguf" save_format=gguf save_dtype=Q4_K out="$WORK/kq_ok"
expect_rc "gptq ktype=Q4_K -> gguf Q4_K" 0
expect_in "gptq ktype=Q4_K" stderr "[5-bit g32 sym: K-quant fallback, 64 columns]"
if [ -s "$WORK/k.gguf" ]; then ok; else bad "k.gguf not written"; fi
if grep -q '"fallback":true' "$WORK/kq_ok/log.jsonl" 2>/dev/null || grep -rq '"fallback": *true' "$WORK/kq_ok/" ; then ok; else bad "kq_ok: no fallback record"; fi

# ---- item 4: custom_loop.lua stores codes + outliers, not a 16-bit float tensor -------------
run custom run recipes/custom_loop.lua $FAST bits=3 rounds=1 sweeps=1 ratio=0.005 out="$WORK/custom"
expect_rc "custom_loop.lua" 0
bpw=$(grep -A12 '"storage"' "$WORK/custom/results.json" | grep '"bits_per_weight"' | head -1 | sed -E 's/.*: ([0-9.e+-]+).*/\1/')
codes=$(grep -A12 '"storage"' "$WORK/custom/results.json" | grep '"codes"' | head -1 | sed -E 's/.*: ([0-9.e+-]+).*/\1/')
outl=$(grep -A12 '"storage"' "$WORK/custom/results.json" | grep '"outliers"' | head -1 | sed -E 's/.*: ([0-9.e+-]+).*/\1/')
if awk -v b="$bpw" -v c="$codes" -v o="$outl" 'BEGIN { exit !(c == 3 && o > 0.2 && o < 0.3 && b > 3.2 && b < 4.5) }'; then ok
else bad "custom_loop realized bits: bits_per_weight=$bpw codes=$codes outliers=$outl (want 3 code bits + ~0.24 outliers + scales)"; fi
expect_in "custom_loop storage line" stdout "unquantized 0.0000 [none]"
# item 19: the calibration line's token range is 1-based, like the split line beside it
expect_in "calibration range 1-based" stderr "tokens [1, "
if grep -q "tokens \[0, " "$WORK/stderr"; then bad "a 0-based token range is printed"; else ok; fi

# ---- item 4: an unquantized f32 model is 32 bits/weight, labelled f32 ----------------------
run fp run recipes/eval_heldout.lua $FAST out="$WORK/fp"
expect_rc "eval_heldout.lua" 0
expect_in "fp storage" stdout "storage 32.0000 bits/weight"
expect_in "fp storage label" stdout "unquantized 32.0000 [f32]"

# ---- item 21: the ETA counts the per-block capture/advance time ------------------------------
run eta run recipes/rtn.lua nsamples=16 seqlen=256 eval_seqlen=64 wiki_windows=0 out="$WORK/eta"
expect_rc "rtn.lua for the ETA" 0
python3 - "$WORK/eta" <<'EOF' && ok || bad "ETA check (see above)"
import json, sys
d = sys.argv[1]
ev = [json.loads(l) for l in open(d + "/log.jsonl")]
layers = [e for e in ev if e.get("event") == "layer"]
caps = [e for e in ev if e.get("event") == "block_capture"]
res = json.load(open(d + "/results.json"))
nb, nl = layers[0]["nblocks"], len(layers)
bad = []
if not caps or "capture_seconds" not in layers[0]:
    print("no capture time logged"); sys.exit(1)
# The formula, from the logged fields: remaining solves at the mean solve time, plus the per-block
# overhead (capture, advance) of the rest of this block and of the blocks to come; in block 1 the
# overhead per block is 1.5 times its capture (the advance: one more forward, no Σ).
for i, e in enumerate(layers, 1):
    b = e["block"]
    per = 1.5 * e["overhead_seconds"] if b == 1 else e["overhead_done"] / (b - 1)
    left = max(0.0, per - (e["overhead_seconds"] - e["overhead_done"]))
    want = (nl - i) * e["solve_seconds"] / i + left + (nb - b) * per
    if abs(e["block_overhead"] - per) > 1e-9 * max(1, per) or abs(e["eta"] - want) > 1e-6 * max(1, want):
        bad.append((i, e["eta"], want))
first = layers[0]
# The first ETA must include the capture of every later block: at least (nb - 1) captures.
if first["eta"] < (nb - 1) * first["capture_seconds"]:
    bad.append(("first ETA leaves out capture", first["eta"], first["capture_seconds"]))
pred = first["elapsed"] + first["eta"]
actual = res["quantize_seconds"]
print("first-line prediction %.3f s, actual %.3f s" % (pred, actual))
if not (actual / 4 <= pred <= actual * 4):
    bad.append(("prediction off by more than 4x", pred, actual))
if bad:
    print("ETA mismatches:", bad[:5]); sys.exit(1)
EOF

# ---- issue 16: KL divergence beside every perplexity, reference logits reused, protocols --------
run kld1 run recipes/rtn.lua $FAST bits=3 out="$WORK/kld1"
expect_rc "rtn with the default kld" 0
expect_in "held-out KLD printed" stdout "held-out KLD "
python3 - "$WORK/kld1/results.json" <<'PY' && ok || bad "kld_heldout recorded with a positive mean and its statistics"
import json, sys
r = json.load(open(sys.argv[1]))
k = r["kld_heldout"]
assert k["mean"] > 0 and 0 < k["same_top"] < 1 and k["median"] <= k["p99"] <= k["max"], k
assert k["topk"] == 512 and k["positions"] > 0 and abs(k["ppl_reference"] - r["ppl_heldout"]) > 1e-6, k
PY
run kld0 run recipes/rtn.lua $FAST bits=3 kld=false out="$WORK/kld0"
expect_rc "rtn kld=false" 0
if grep -q '"kld_heldout"' "$WORK/kld0/results.json"; then bad "kld=false still records kld_heldout"; else ok; fi
if [ "$(json_value "$WORK/kld0/results.json" ppl_heldout)" = "$(json_value "$WORK/kld1/results.json" ppl_heldout)" ]; then ok
else bad "kld changes the perplexity"; fi
# fp_logits: written by the first run, read by the second (same KLD, bit for bit), refused when they no longer match
mkdir -p "$WORK/fpl"
run fpl1 run recipes/rtn.lua $FAST bits=3 fp_logits="$WORK/fpl" out="$WORK/fpl1"
expect_rc "fp_logits written" 0
if [ -s "$WORK/fpl/heldout.qfref" ]; then ok; else bad "fp_logits: heldout.qfref not written"; fi
run fpl2 run recipes/rtn.lua $FAST bits=3 fp_logits="$WORK/fpl" out="$WORK/fpl2"
expect_rc "fp_logits read" 0
expect_in "fp_logits read" stderr "held-out reference logits: $WORK/fpl/heldout.qfref"
python3 - "$WORK/kld1/results.json" "$WORK/fpl2/results.json" <<'PY' && ok || bad "KLD from the file differs from the in-memory one"
import json, sys
a, b = (json.load(open(p))["kld_heldout"] for p in sys.argv[1:3])
assert a == b, (a, b)
PY
opt_err rtn.lua "option 'fp_logits': $WORK/fpl/heldout.qfref was made with seqlen 64, this run evaluates 32" nsamples=2 seqlen=32 eval_seqlen=32 wiki_windows=0 fp_logits="$WORK/fpl"
opt_err rtn.lua "option 'fp_logits': $WORK/fpl/heldout.qfref holds full distributions (kld_topk=0), this run asks kld_topk=16" $FAST kld_topk=16 fp_logits="$WORK/fpl"
# cache=DIR: full-precision results shared between runs, each file named by the fingerprint of the
# model, the tokens and the options it came from: a run with other bits reads the reference (the
# KLD of the in-memory reference, bit for bit); another eval_seqlen gets a file of its own.
run cache1 run recipes/rtn.lua $FAST bits=4 cache="$WORK/cache" out="$WORK/cache1"
expect_rc "cache= writes" 0
expect_in "cache= writes the reference" stderr "-> $WORK/cache/fp_logits-heldout-"
run cache2 run recipes/rtn.lua $FAST bits=3 cache="$WORK/cache" out="$WORK/cache2"
expect_rc "cache= reads" 0
expect_in "cache= reads the reference" stderr "held-out reference logits: $WORK/cache/fp_logits-heldout-"
python3 - "$WORK/kld1/results.json" "$WORK/cache2/results.json" <<'PY' && ok || bad "KLD from the cache differs from the in-memory one"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["kld_heldout"] == b["kld_heldout"] and a["ppl_heldout"] == b["ppl_heldout"], (a["kld_heldout"], b["kld_heldout"])
PY
run cache3 run recipes/rtn.lua nsamples=2 seqlen=32 eval_seqlen=32 wiki_windows=0 bits=3 cache="$WORK/cache" out="$WORK/cache3"
expect_rc "cache= another eval_seqlen" 0
[ "$(ls "$WORK/cache" | grep -c '^fp_logits-heldout-.*\.qfref$')" = 2 ] && ok || bad "cache holds $(ls "$WORK/cache") (one reference per eval_seqlen)"
# CVXQ's gradient statistics: written by the first allocation, read by one for another target;
# the allocation and the quantized model are those of a run without the cache.
CX="nsamples=4 seqlen=32 eval_seqlen=64 wiki_windows=0 kld=false"
run cx1 run recipes/cvxq.lua $CX target_bits=3 cache="$WORK/cache" out="$WORK/cx1"
expect_rc "cvxq cache= writes" 0
expect_in "cvxq cache= writes the statistics" stderr "gradient statistics: written to $WORK/cache/gradient_statistics-"
run cx2 run recipes/cvxq.lua $CX target_bits=2.5 cache="$WORK/cache" out="$WORK/cx2"
expect_rc "cvxq cache= reads" 0
expect_in "cvxq cache= reads the statistics" stderr "gradient statistics: read $WORK/cache/gradient_statistics-"
expect_file_has "the record says where they came from" "$WORK/cx2/results.json" "\"loaded_from\": \"$WORK/cache/gradient_statistics-"
run cx3 run recipes/cvxq.lua $CX target_bits=2.5 out="$WORK/cx3"
expect_rc "cvxq without cache" 0
cmp -s "$WORK/cx2/allocation.safetensors" "$WORK/cx3/allocation.safetensors" && ok || bad "allocation from cached statistics differs"
[ -n "$(json_value "$WORK/cx3/results.json" ppl_heldout)" ] && [ "$(json_value "$WORK/cx2/results.json" ppl_heldout)" = "$(json_value "$WORK/cx3/results.json" ppl_heldout)" ] && ok || bad "ppl_heldout with cached statistics differs"
run cx4 run recipes/cvxq.lua nsamples=5 seqlen=32 eval_seqlen=64 wiki_windows=0 kld=false target_bits=2.5 cache="$WORK/cache" out="$WORK/cx4"
expect_in "other windows: statistics of their own" stderr "gradient statistics: written to $WORK/cache/gradient_statistics-"
opt_err rtn.lua "option 'eval_protocol' must be one of nonoverlap, llamacpp, gptq" $FAST eval_protocol=wikitext
run proto run recipes/rtn.lua $FAST bits=4 eval_protocol=llamacpp out="$WORK/proto"
expect_rc "eval_protocol=llamacpp" 0
expect_file_has "llamacpp protocol recorded" "$WORK/proto/results.json" "protocol llamacpp-L64: "
# eval.lua: record reference logits once, then KLD against the file, and against a model
run ref1 run recipes/eval.lua max_windows=4 seqlen=128 save_reference="$WORK/fp.qfref" out="$WORK/ref1"
expect_rc "eval.lua save_reference" 0
run ref2 run recipes/eval.lua max_windows=4 seqlen=128 reference="$WORK/fp.qfref" out="$WORK/ref2"
expect_rc "eval.lua reference=file" 0
expect_in "self KLD from the file" stdout "KLD from $WORK/fp.qfref: mean 0.000000"
expect_in "self top token" stdout "same top token 100.000"
run ref3 run recipes/eval.lua max_windows=4 seqlen=64 reference="$WORK/fp.qfref" out="$WORK/ref3"
expect_rc "eval.lua: a reference made with another seqlen" 1
expect_in "the mismatch is named" stderr "made with seqlen 128, this evaluation uses 64"
run ref4 run recipes/eval.lua max_windows=2 seqlen=128 reference=../shared/models/stories260K out="$WORK/ref4"
expect_rc "eval.lua reference=model" 0
expect_in "self KLD from a model" stdout "mean 0.000000 ± 0.000000"

# ---- issue 16: per-layer overrides: first match wins, every rule must match, never ignored --------
run ov run recipes/gptq.lua $FAST bits=3 'overrides=block:1,-1=bits:8;re:^[2-4]\.(gate|up)$=bits:4,group:32;skip:name:down' out="$WORK/ov"
expect_rc "gptq with overrides" 0
expect_in "override shown in the progress line" stderr "block 2/5 gate  objective"
expect_in "override label" stderr "[4-bit g32: override rule 2]"
expect_in "first match: block 1's down is 8-bit" stderr "block 1/5 down  objective"
expect_in "skipped linear" stderr "block 2/5 down  skipped: full precision (override rule 3 'skip:name:down')"
python3 - "$WORK/ov/results.json" <<'PY' && ok || bad "override records: per-layer grid, skipped layers in full precision, per-linear storage"
import json, sys
r = json.load(open(sys.argv[1]))
lay = {(l["block"], l["layer"]): l for l in r["layers"]}
assert lay[(1, "q")]["grid"] == "8-bit per-channel" and lay[(1, "q")]["rule"] == 1
assert lay[(5, "down")]["rule"] == 1 and "skipped" not in lay[(5, "down")]
assert lay[(3, "up")]["grid"] == "4-bit g32" and "grid" not in lay[(3, "q")]
assert lay[(2, "down")]["skipped"] is True and lay[(2, "down")]["objective"] == 0
st = {(l["block"], l["layer"]): l for l in r["storage_linears"]}
assert st[(2, "down")]["quantized"] is False and st[(2, "down")]["bits_per_weight"] in (16, 32), st[(2, "down")]
assert 8 < st[(1, "q")]["bits_per_weight"] < 9 and 3 < st[(3, "q")]["bits_per_weight"] < 4, (st[(1, "q")], st[(3, "q")])
assert abs(st[(3, "gate")]["bits_per_weight"] - 5.0) < 1e-9, st[(3, "gate")]  # 4 bits + 32 bits per 32 weights
PY
opt_err gptq.lua "option 'overrides': rule 1 're:^9\.q\$=bits:3': matches no linear" $FAST 'overrides=re:^9\.q$=bits:3'
opt_err gptq.lua "option 'overrides': rule 2 'name:q=bits:4': matches no linear (or only linears an earlier rule took)" $FAST 'overrides=name:q=bits:8;name:q=bits:4'
opt_err gptq.lua "rule 1 'name:q=bitz:3': unknown key 'bitz'" $FAST 'overrides=name:q=bitz:3'
opt_err gptq.lua "rule 1 'name:q=bits:9': bits must be in 1..8" $FAST 'overrides=name:q=bits:9'
opt_err gptq.lua "rule 1 'block:7=bits:8': block 7 is not in 1..5 or -5..-1" $FAST 'overrides=block:7=bits:8'
opt_err gptq.lua "rule 1 'name:qkv=bits:8': no linear 'qkv' in the llama architecture" $FAST 'overrides=name:qkv=bits:8'
opt_err gptq.lua "rule 1 're:(=bits:3': invalid regular expression '('" $FAST 'overrides=re:(=bits:3'
opt_err gptq.lua "rule 1 'name:q': expected SELECTOR=key:value,... or skip:SELECTOR" $FAST 'overrides=name:q'
# Overrides under the CVXQ allocation: a rule pins its linears' bits (counted in target_bits), skip
# keeps them in full precision (outside the budget); the dual ascent spreads the rest.
opt_err cvxq.lua "option 'overrides': rule 1 'name:q=group:32': under the CVXQ allocation a rule pins its linears' grid and its bits count in target_bits: give bits" $FAST 'overrides=name:q=group:32'
opt_err cvxq.lua "option 'overrides': the pinned linears (rule 1 're:^[1-5]\.(q|k|v|o|gate|up)\$=bits:8') take 6.056 of the 3 bits/weight budget" $FAST target_bits=3 'overrides=re:^[1-5]\.(q|k|v|o|gate|up)$=bits:8'
opt_err cvxq.lua "option 'overrides': every linear is pinned or skipped" $FAST 'overrides=block:1..5=bits:4'
# Grid mapping and importance (methods.md#grid-mappings, #grid-importance): refused where they do not apply.
opt_err gptq.lua "option 'sigma_shrink' must be a finite number in 0..1, got 1.5" $FAST sigma_shrink=1.5
opt_err decoupleq.lua "unknown option 'refit_scales'" $FAST refit_scales=true
opt_err gptq.lua "option 'mapping': llamacpp is llama.cpp's symmetric mapping: give sym=true" $FAST mapping=llamacpp
opt_err gptq.lua "option 'mapping' must be one of" $FAST mapping=q4_0
opt_err rtn.lua "option 'importance': and mse are two range searches" $FAST importance=diag mse=true
opt_err quantease_outliers.lua "option 'importance': does not apply to the outlier grid" $FAST importance=diag
opt_err decoupleq.lua "option 'mapping': does not apply to decoupleQ" $FAST mapping=llamacpp sym=true
opt_err decoupleq.lua "option 'importance': does not apply to decoupleQ" $FAST importance=diag
opt_err compare_solvers.lua "option 'importance': does not apply to the outlier columns" $FAST importance=diag
opt_err cvxq.lua "option 'mapping': does not apply to the CVXQ allocation's grids" $FAST mapping=llamacpp sym=true
opt_err gptq.lua "its scales are positive: mapping=llamacpp" $FAST mapping=llamacpp sym=true bits=4 save="$WORK/neg" save_format=gptq
run cxo run recipes/cvxq.lua $FAST target_bits=3 'overrides=block:1=bits:8;skip:name:down' out="$WORK/cxo"
expect_rc "cvxq with overrides" 0
expect_in "cvxq overrides summary" stdout "overrides: 7 linears pinned, 4 skipped (full precision); the other 24 linears get"
expect_in "cvxq pinned layer line" stderr "block 1 q     8.00 bits"
expect_in "cvxq skipped layer line" stderr "block 2 down  skipped: full precision (override rule 2 'skip:name:down')"
# stories260K per block: q 4096, k 2048, v 2048, o 4096, gate/up/down 11008 weights (45 312). Covered:
# 5 blocks − 4 skipped downs = 182 528; pinned block 1 at 8 bits; free 137 216 weights get
# (3·182 528 − 8·45 312) / 137 216 = 1.348880… bits, and the whole covered rate is 3.
python3 - "$WORK/cxo/results.json" <<'PY' && ok || bad "cvxq overrides: budget (see above)"
import json, sys
r = json.load(open(sys.argv[1]))
a = r["allocation"]
t = (3 * 182528 - 8 * 45312) / 137216
assert abs(a["free_target"] - t) < 1e-12, (a["free_target"], t)
assert abs(a["rate"] - (a["free_rate"] * 137216 + 8 * 45312) / 182528) < 1e-9, a
assert abs(a["rate"] - 3) < 0.01, a["rate"]
L = {(l["block"], l["layer"]): l for l in r["layers"]}
assert L[(1, "q")]["bits"] == 8 and L[(1, "q")]["rule"] == 1, L[(1, "q")]
assert L[(1, "down")]["bits"] == 8, L[(1, "down")]
assert L[(3, "down")].get("skipped") is True and L[(3, "down")]["rule"] == 2, L[(3, "down")]
assert 0 < L[(2, "q")]["bits"] < 8 and "rule" not in L[(2, "q")], L[(2, "q")]
PY
run cxo2 run recipes/cvxq.lua $FAST target_bits=3 'overrides=block:1=bits:8;skip:name:down' alloc_file="$WORK/cxo/allocation.safetensors" out="$WORK/cxo2"
expect_rc "cvxq overrides + alloc_file of the same overrides" 0
[ "$(json_value "$WORK/cxo/results.json" ppl_heldout)" = "$(json_value "$WORK/cxo2/results.json" ppl_heldout)" ] && ok || bad "alloc_file with overrides: another perplexity"
opt_err cvxq.lua "made with overrides=\"block:1=bits:8;skip:name:down\", this run gives overrides=\"\"" $FAST target_bits=3 alloc_file="$WORK/cxo/allocation.safetensors"
run cxq run recipes/cvxq_quantease.lua $FAST target_bits=3 iters=2 'overrides=block:-1=bits:8;skip:re:^1\.o$' out="$WORK/cxq"
expect_rc "cvxq_quantease with overrides" 0
expect_in "cvxq_quantease skipped" stderr "block 1/5 o     skipped: full precision (override rule 2"
expect_file_has "cvxq_quantease pinned grid recorded" "$WORK/cxq/results.json" '"grid": "8-bit per-channel"'
cat > "$WORK/ignores_grid.lua" <<'LUA'
local P = require("qforge.pipeline")
local opt = P.options({})
local ctx = P.prepare(opt)
P.quantize_model(ctx.model, ctx.cal, function(l) return qf.rtn(l.W, qf.grid{ bits = 4 }) end)
LUA
run ign run "$WORK/ignores_grid.lua" $FAST 'overrides=block:2/down=bits:8' out="$WORK/ign"
expect_rc "a solve that ignores the override's grid" 1
expect_in "ignored override named" stderr "override rule 1 'block:2/down=bits:8' asks 8-bit per-channel for block 2 linear 'down', but solve returned 4-bit per-channel"

# ---- issue 17: GGUF types as override grids; a GGUF file of a requested size -------------------
run ovt run recipes/gptq.lua $FAST 'overrides=name:q,k=type:Q8_0;name:gate=type:Q4_K' out="$WORK/ovt"
expect_rc "gptq with type: overrides" 0
expect_in "type: rule label" stderr "[Q8_0: override rule 1]"
expect_in "K type on a 64-wide linear: llama-quantize's fallback" stderr "[Q5_0: override rule 2, Q4_K's fallback for 64 columns]"
opt_err gptq.lua "rule 1 'name:q=type:Q9_K': type expects a GGUF type (Q2_K Q3_K Q4_0" $FAST 'overrides=name:q=type:Q9_K'
opt_err gptq.lua "rule 1 'name:q=type:Q8_0,bits:4': type:Q8_0 fixes the grid: it takes no other key (got bits)" $FAST 'overrides=name:q=type:Q8_0,bits:4'
run gt run recipes/gguf_target.lua nsamples=8 seqlen=128 eval_seqlen=64 wiki_windows=0 target_bpw=5.5 types=Q4_0,Q5_0,Q5_1,Q8_0 sensitivity=proxy \
  save="$WORK/gt.gguf" save_format=gguf out="$WORK/gt"
expect_rc "gguf_target.lua" 0
expect_in "allocation summary" stdout "bits/weight over the block linears (target 5.5; cheapest 4.5000, dearest 8.5000)"
# The file holds each linear in its allocated type, the bytes add up to the record, the budget holds,
# and no single upgrade that fits the bytes left would lower the distortion (the fill is complete).
python3 - "$WORK/gt/results.json" "$WORK/gt.gguf" <<'PY' && ok || bad "gguf_target: file types, bytes and budget (see above)"
import json, struct, sys
r = json.load(open(sys.argv[1]))["type_allocation"]
f = open(sys.argv[2], "rb")
def u32(): return struct.unpack("<I", f.read(4))[0]
def u64(): return struct.unpack("<Q", f.read(8))[0]
def s(): return f.read(u64()).decode()
SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
def value(t):
    if t == 8: return s()
    if t == 9:
        et, n = u32(), u64()
        return [value(et) for _ in range(n)]
    return f.read(SIZE[t])
assert f.read(4) == b"GGUF" and u32() == 3
nt, nkv = u64(), u64()
for _ in range(nkv):
    s(); value(u32())
types = {}
for _ in range(nt):
    name = s(); nd = u32(); [u64() for _ in range(nd)]; types[name] = u32(); u64()
GG = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "F32": 0}
NAME = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output", "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}
for l in r["layers"]:
    assert types["blk.%d.%s.weight" % (l["block"] - 1, NAME[l["layer"]])] == GG[l["type"]], l
for u in r["full_precision"]:  # stories260K's 172-wide down: no 32-block fits
    assert u["layer"] == "down" and types["blk.%d.ffn_down.weight" % (u["block"] - 1)] == GG["F32"], u
assert len(r["layers"]) == 30 and len(r["full_precision"]) == 5
assert abs(sum(l["bytes"] for l in r["layers"]) - r["bytes"]) < 1e-6
assert r["bytes"] <= r["target_bpw"] * r["weights"] / 8 and r["bits_per_weight"] <= 5.5
left = r["target_bpw"] * r["weights"] / 8 - r["bytes"]
for l in r["layers"]:
    cur = l["candidates"].index(l["type"])
    for k, t in enumerate(l["candidates"]):
        if l["candidate_bytes"][k] - l["candidate_bytes"][cur] <= left:
            assert l["candidate_distortion"][k] >= l["candidate_distortion"][cur], (l["block"], l["layer"], t)
assert len(set(l["type"] for l in r["layers"])) >= 2, "a 5.5-bit target between 4.5 and 8.5 mixes types"
PY
opt_err gguf_target.lua "option 'target_bpw': 4 is below the cheapest of these types on this model (4.5000 bits/weight" $FAST target_bpw=4 types=Q4_0,Q8_0
opt_err gguf_target.lua "option 'types': unknown GGUF type 'Q9'" $FAST types=Q4_0,Q9
opt_err gguf_target.lua "option 'iters': is not an option of solver=gptq (it would be ignored)" $FAST iters=5
opt_err gguf_target.lua "option 'refit_scales': refits uniform grids only, and types lists Q4_K" $FAST refit_scales=true types=Q4_0,Q4_K

run zr run recipes/zero_row.lua max_windows=2 out="$WORK/zr"
expect_rc "zero_row.lua" 0
python3 - "$WORK/zr/results.json" <<'PY' && ok || bad "zero_row.lua records the KL divergence of the edit"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["kld"]["mean"] > 0 and r["kld"]["same_top"] < 1 and r["ppl_after"] != r["ppl_before"], r["kld"]
assert abs(r["kld"]["ppl_reference"] - r["ppl_before"]) < 1e-9 * r["ppl_before"], (r["kld"]["ppl_reference"], r["ppl_before"])
PY

# The levers around a solve (methods.md#sigma-shrink, #refit-scales): objectives are measured on the
# calibrated Σ — RTN does not read Σ, so shrinking it must leave RTN's recorded objective exactly as
# it was; the refit lowers GPTQ's; importance and mapping reach the grid.
G4="bits=4 sym=true group=32 f16_scales=true mapping=llamacpp"
run lv0 run recipes/rtn.lua $FAST $G4 kld=false out="$WORK/lv0"
run lv1 run recipes/rtn.lua $FAST $G4 kld=false sigma_shrink=0.7 out="$WORK/lv1"
run lv2 run recipes/gptq.lua $FAST $G4 kld=false importance=diag out="$WORK/lv2"
run lv3 run recipes/gptq.lua $FAST $G4 kld=false importance=diag refit_scales=true out="$WORK/lv3"
run lv4 run recipes/gptq.lua $FAST $G4 kld=false importance=diag sigma_shrink=1 out="$WORK/lv4"
python3 - "$WORK" <<'PY' && ok || bad "sigma_shrink / refit_scales / importance through the recipes"
import json, sys
r = {k: json.load(open("%s/%s/results.json" % (sys.argv[1], k))) for k in ("lv0", "lv1", "lv2", "lv3", "lv4")}
assert r["lv0"]["objective_total"] == r["lv1"]["objective_total"], (r["lv0"]["objective_total"], r["lv1"]["objective_total"])
assert r["lv3"]["objective_total"] < r["lv2"]["objective_total"], (r["lv3"]["objective_total"], r["lv2"]["objective_total"])
assert r["lv4"]["objective_total"] != r["lv2"]["objective_total"]
assert abs(r["lv2"]["storage"]["bits_per_weight"] - r["lv0"]["storage"]["bits_per_weight"]) < 1e-12
PY
expect_file_has "the grid line names mapping and importance" "$WORK/lv2.stdout" "grid: qforge.grid 4-bit sym g32 llamacpp importance-diag f16-scales"
finish cli_pipeline
