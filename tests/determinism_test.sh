#!/usr/bin/env bash
# Reproducibility of the composed recipe (issue 6): recipes/cvxq_quantease_outliers_ft.lua on a
# reduced configuration (gradient statistics → dual ascent → QuantEase + 0.5 % outliers → block
# finetuning), run twice with the same seed, must save byte-identical models (qforge format:
# codes, grids, outliers, norms, biases) and report identical objective, storage and perplexity;
# a run with another seed (other calibration windows) must differ, so the comparison can fail.
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
run() {  # run NAME SEED
  if ! "$QF" run "${ARGS[@]}" seed="$2" save="$WORK/$1.qforge" out="$WORK/$1" >"$WORK/$1.out" 2>&1; then
    bad "run $1 (seed $2) failed"; sed 's/^/  /' "$WORK/$1.out" | tail -20 >&2; exit 1
  fi
}
run a 3
run b 3
run c 4
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
cmp -s "$WORK/a.qforge" "$WORK/c.qforge" && bad "seed 3 and seed 4 saved identical models (the comparison cannot fail)"
[ "$(fields "$WORK/a")" = "$(fields "$WORK/c")" ] && bad "seed 3 and seed 4 gave identical results"
echo "determinism: composed recipe, 3 runs, $failed failures"
[ "$failed" -eq 0 ]
