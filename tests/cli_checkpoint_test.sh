#!/usr/bin/env bash
# Block checkpoints (checkpoint=DIR, docs/api/calibration.md#block-checkpoints): a run that fails at the
# start of block 4 of stories260K's 5 (decoupleQ layer stage + block finetuning, fp chain) leaves
# blocks 1–3, the calibration state after block 3 and the records; the same command then resumes
# after block 3 and gives a saved model byte-identical to an uninterrupted run's, with identical
# objectives, finetune losses, perplexities and KLD; the checkpoint is removed once the run ends ok.
# Another option gives another checkpoint (no resume); a damaged state is an error naming its
# file; recipes that cannot checkpoint refuse the option before any work; m:save_blocks /
# m:load_blocks and cal:save_state / cal:load_state refuse what does not fit.
# Usage: tests/cli_checkpoint_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh" "$@"

R=tests/recipes/checkpoint_interrupted.lua
ARGS=(nsamples=6 seqlen=64 eval_seqlen=128 wiki_windows=2 finetune=true ft_epochs=1 ft_lr=1e-3 save_format=qforge)
CK="$WORK/ck"
fields() {
  python3 - "$1/results.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(repr([d["objective_total"], d["ppl_heldout"], d["ppl_wikitext2"], d["kld_heldout"]["mean"], d["kld_wikitext2"]["p99"],
            [(l["block"], l["layer"], l["objective"], l["relative"]) for l in d["layers"]], [b["losses"] for b in d["finetune"]]]))
PY
}

# An uninterrupted run, no checkpoint.
run full run $R "${ARGS[@]}" save="$WORK/full.qforge" out="$WORK/full"
expect_rc "uninterrupted run" 0
# The same with checkpoint=, failing at block 4: blocks 1..3 and their state stay.
QF_TEST_FAIL_AT=4 run broken run $R "${ARGS[@]}" save="$WORK/resumed.qforge" checkpoint="$CK" out="$WORK/resumed"
expect_rc "run failing at block 4" 1
expect_in "the injected failure is reported" stderr "injected failure at the start of block 4"
D=$(ls -d "$CK"/*/ 2>/dev/null | head -1)
if [ -n "$D" ] && [ -f "$D/state.lua" ] && [ -f "$D/block-0003.qforge" ] && [ -f "$D/calibration-0003.safetensors" ] &&
   [ ! -e "$D/block-0004.qforge" ] && [ ! -e "$D/calibration-0002.safetensors" ]; then ok
else bad "checkpoint after the failure: expected state.lua, block-0001..0003, calibration-0003 only; got: $(ls "$D" 2>&1)"; fi
grep -qF '["done"]=3,' "$D/state.lua" 2>/dev/null && ok || bad "state.lua does not say block 3 is done"
[ -e "$WORK/resumed.qforge" ] && bad "the failed run saved a model" || ok
# The same command resumes after block 3 and ends like the uninterrupted run, bit for bit.
run resume run $R "${ARGS[@]}" save="$WORK/resumed.qforge" checkpoint="$CK" out="$WORK/resumed2"
expect_rc "resumed run" 0
expect_in "resume is announced" stderr "resuming after block 3/5"
if grep -qE "^block [123]/5 " "$WORK/stderr"; then bad "the resumed run solved blocks 1-3 again"; else ok; fi
expect_in "blocks 4-5 are solved" stderr "block 4/5"
expect_file_has "the log records the resume" "$WORK/resumed2/log.jsonl" '"event":"resume"'
if cmp -s "$WORK/full.qforge" "$WORK/resumed.qforge"; then ok; else bad "resumed model differs from the uninterrupted run's (full.qforge vs resumed.qforge)"; fi
a=$(fields "$WORK/full"); b=$(fields "$WORK/resumed2")
[ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "resumed results differ: $a vs $b"
[ -e "$D" ] && bad "checkpoint $D kept after the run ended ok" || ok
[ -e "$CK" ] && bad "empty checkpoint root $CK kept" || ok
# The comparison can fail: another seed gives another model.
run seed2 run $R "${ARGS[@]}" seed=2 save="$WORK/seed2.qforge" checkpoint="$CK" out="$WORK/seed2"
expect_rc "seed 2" 0
expect_in "another seed is a new checkpoint, not a resume" stderr "a new run (state saved after every block)"
cmp -s "$WORK/full.qforge" "$WORK/seed2.qforge" && bad "seed 2 saved the same model (the comparison cannot fail)" || ok

# A checkpoint of other options is not resumed: bits=3 after a bits=2 failure starts over.
QF_TEST_FAIL_AT=3 run broken2 run $R "${ARGS[@]}" checkpoint="$CK" out="$WORK/b2"
expect_rc "bits=2 failing at block 3" 1
run other run $R "${ARGS[@]}" bits=3 checkpoint="$CK" out="$WORK/other"
expect_rc "bits=3 with the bits=2 checkpoint present" 0
expect_in "other options: a new checkpoint" stderr "a new run (state saved after every block)"
# A damaged state names its file and is never silently restarted.
D2=$(ls -d "$CK"/*/ | head -1)
echo "return {garbage" > "$D2/state.lua"
run damaged run $R "${ARGS[@]}" checkpoint="$CK" out="$WORK/damaged"
expect_rc "damaged checkpoint" 1
expect_in "damaged checkpoint names its file" stderr "state.lua': unreadable or not this run's (remove"
# A missing block file names it.
printf 'return {["done"]=2,["key"]="x"}\n' > "$D2/state.lua"
run wrongkey run $R "${ARGS[@]}" checkpoint="$CK" out="$WORK/wrongkey"
expect_rc "a state of another key" 1
expect_in "a state of another key" stderr "unreadable or not this run's"
rm -rf "$CK"

# Recipes that never run P.quantize_model refuse checkpoint= before any work.
run cvxq run recipes/cvxq.lua checkpoint="$WORK/ck2" out="$WORK/cvxq"
expect_rc "cvxq checkpoint=" 2
expect_in "cvxq names the option" stderr "option 'checkpoint'"
run evalh run recipes/eval_heldout.lua checkpoint="$WORK/ck2" out="$WORK/evalh"
expect_rc "eval_heldout checkpoint=" 2
[ -e "$WORK/ck2" ] && bad "a refused checkpoint= made its directory" || ok

# The primitives: block files and calibration states refuse what does not fit.
cat > "$WORK/prims.lua" <<'LUA'
local m = qf.load_model("../shared/models/stories260K")
local W = m:weight(2, "q"):clone()
m:set_linear(2, "q", qf.rtn(W, qf.grid{ bits = 3, group = 16 }))
local d = qf.run_dir()
m:save_blocks(d .. "/b2.qforge", 2, 2)
local m2 = qf.load_model("../shared/models/stories260K")
local a, b = m2:load_blocks(d .. "/b2.qforge")
assert(a == 2 and b == 2, "load_blocks returns the range")
assert(m2:fingerprint() == m:fingerprint(), "a restored block gives the same model")
assert((m2:weight(2, "q") - m:weight(2, "q")):abs_max() == 0 and (m2:weight(1, "q") - m:weight(1, "q")):abs_max() == 0)
local ok, err = pcall(m.save_blocks, m, d .. "/x.qforge", 0, 1)
assert(not ok and tostring(err):find("not a range within 1..5"), tostring(err))
ok, err = pcall(qf.load_model, d .. "/b2.qforge")
assert(not ok and tostring(err):find("a block checkpoint"), tostring(err))
local ids = m:tokenizer():encode(qf.read_text("../shared/data/tinystories_head.txt"))
local cal = qf.calibration{ model = m2, tokens = ids, nsamples = 3, seqlen = 32 }
cal:save_state(d .. "/c0.safetensors")  -- before any block: valid, nothing done
local c2 = qf.calibration{ model = m2, tokens = ids, nsamples = 3, seqlen = 32 }
cal:capture(); cal:advance()
cal:save_state(d .. "/c1.safetensors")
c2:load_state(d .. "/c0.safetensors")
local fresh = qf.calibration{ model = m2, tokens = ids, nsamples = 3, seqlen = 32 }
assert(c2:block() == 1 and (c2:inputs() - fresh:inputs()):abs_max() == 0)
c2:load_state(d .. "/c1.safetensors")
assert(c2:block() == 2 and (c2:inputs() - cal:inputs()):abs_max() == 0 and (c2:fp_inputs() - cal:fp_inputs()):abs_max() == 0, "state restored")
local c3 = qf.calibration{ model = m2, tokens = ids, nsamples = 3, seqlen = 32, seed = 9 }
ok, err = pcall(c3.load_state, c3, d .. "/c1.safetensors")
assert(not ok and tostring(err):find("field '__metadata__.windows'"), tostring(err))
cal:capture()
ok, err = pcall(cal.save_state, cal, d .. "/c2.safetensors")
assert(not ok and tostring(err):find("has been captured"), tostring(err))
print("primitives ok")
LUA
run prims run "$WORK/prims.lua" out="$WORK/prims"
expect_rc "primitives" 0
expect_in "primitives" stdout "primitives ok"

finish cli_checkpoint
