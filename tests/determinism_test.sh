#!/usr/bin/env bash
# Reproducibility of the composed recipe (issue 6): recipes/cvxq_quantease_outliers_ft.lua on a
# reduced configuration (gradient statistics → dual ascent → QuantEase + 0.5 % outliers → block
# finetuning), run twice with the same seed, must save byte-identical models (qforge format:
# codes, grids, outliers, norms, biases) and report identical objective, storage and perplexity;
# a run with another seed (other calibration windows) must differ, so the comparison can fail.
# A fourth run reuses the first run's saved allocation (alloc_file=) and must give the same bytes:
# an allocation saved once serves every later run exactly.
# Usage: tests/determinism_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
QF="$1"
WORK="$2"
rm -rf "$WORK"
mkdir -p "$WORK"
failed=0
bad() { failed=$((failed + 1)); echo "FAIL: $*" >&2; }
ARGS=(recipes/cvxq_quantease_outliers_ft.lua target_bits=2.5 nsamples=8 seqlen=64 pca=16 stride=16 iters=4
      ft_epochs=1 wiki_windows=1 save_format=qforge)
run() {  # run NAME SEED [more options]
  local name="$1" seed="$2"
  shift 2
  if ! "$QF" run "${ARGS[@]}" seed="$seed" save="$WORK/$name.qforge" out="$WORK/$name" "$@" >"$WORK/$name.out" 2>&1; then
    bad "run $name (seed $seed) failed"; sed 's/^/  /' "$WORK/$name.out" | tail -20 >&2; exit 1
  fi
}
run a 3
run b 3
run c 4
run d 3 alloc_file="$WORK/a/allocation.safetensors"
# results.json minus nothing time-dependent: the fields a comparison uses.
fields() {
  python3 - "$1/results.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(repr([d["objective_total"], d["ppl_heldout"], d["ppl_wikitext2"], d["storage"], d["allocation"]["rate"],
            [l["objective"] for l in d["layers"]], [b["losses"] for b in d["finetune"]]]))
PY
}
[ -s "$WORK/a.qforge" ] || bad "no saved model $WORK/a.qforge"
cmp -s "$WORK/a.qforge" "$WORK/b.qforge" || bad "same seed: saved models differ (a.qforge vs b.qforge)"
[ "$(fields "$WORK/a")" = "$(fields "$WORK/b")" ] || bad "same seed: results differ: $(fields "$WORK/a") vs $(fields "$WORK/b")"
cmp -s "$WORK/a.qforge" "$WORK/d.qforge" || bad "alloc_file: the reused allocation gave a different model (a.qforge vs d.qforge)"
[ "$(fields "$WORK/a")" = "$(fields "$WORK/d")" ] || bad "alloc_file: results differ: $(fields "$WORK/a") vs $(fields "$WORK/d")"
grep -q '"loaded_from": *"[^"]' "$WORK/d/results.json" || bad "run d does not record the allocation file it loaded"
cmp -s "$WORK/a.qforge" "$WORK/c.qforge" && bad "seed 3 and seed 4 saved identical models (the comparison cannot fail)"
[ "$(fields "$WORK/a")" = "$(fields "$WORK/c")" ] && bad "seed 3 and seed 4 gave identical results"
echo "determinism: composed recipe, 4 runs, $failed failures"
[ "$failed" -eq 0 ]
