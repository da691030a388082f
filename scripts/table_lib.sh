# scripts/table_lib.sh — sourced by the *_table.sh scripts: run one qforge recipe per table row
# and print its markdown row from the run directory's results.json / run.json.
#   Q=build/qforge; RUNS=runs/x; source scripts/table_lib.sh
#   qf_hdr "title"; qf_row "label" run_dir_name recipes/gptq.lua bits=3 ...
# Columns: code bits and realized bits/weight (m:storage(): scales, zeros, bit-depth side info,
# row-cluster indices, outliers, biases), pruned fraction, summed layer objective, held-out and
# WikiText-2 perplexity, dual ascent steps (allocated runs), seconds: statistics + allocation,
# layer solves, block finetuning, whole run.
qf_hdr() {
  echo; echo "$1"; echo
  echo "| run | code bits | realized bits/weight | pruned | summed objective | held-out PPL | WikiText-2 PPL | dual ascent | alloc s | solve s | finetune s | wall s |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
}
qf_row() {
  local label=$1 d=$RUNS/$2; shift 2
  mkdir -p "$RUNS"
  "$Q" run "$@" out="$d" > "$d.log" 2>&1 || { echo "| $label | FAILED (see $d.log) |"; return 0; }
  python3 - "$label" "$d" <<'PY'
import json, sys
d = json.load(open(sys.argv[2] + "/results.json")); run = json.load(open(sys.argv[2] + "/run.json"))
s = d["storage"]; a = d.get("allocation", {})
ft = sum(b["seconds"] for b in d.get("finetune", []))
solve = d.get("quantize_seconds", 0) - ft
print("| %s | %.3f | %.3f | %.2f%% | %.4g | %.3f | %.2f | %s | %s | %.1f | %s | %.1f |" % (
      sys.argv[1], s["codes"], s["bits_per_weight"], 100 * s["pruned_fraction"], d["objective_total"],
      d["ppl_heldout"], d["ppl_wikitext2"], "%d steps" % (a["steps"] + a["bisections"]) if a else "",
      "%.1f" % a["seconds"] if "seconds" in a else "", solve, "%.1f" % ft if ft else "", run["wall_seconds"]))
PY
}
