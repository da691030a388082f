#!/usr/bin/env bash
# Reruns the cheap stories260K result tables (scripts/quality_table.sh, decoupleq_table.sh,
# composed_table.sh, cvxq_table.sh) and compares every number their runs recorded — perplexities,
# objectives, storage, allocations, per-layer records; not times — with the values saved from an
# earlier binary, exactly (the JSON holds 17 significant digits, so equal means bit-identical).
#   scripts/check_results.sh save  [build/qforge]   # writes tests/golden/stories260k_results.json
#   scripts/check_results.sh check [build/qforge]   # exit 1 and the differences if any value moved
# About 5 minutes on a 2-core machine. Run dirs under runs/{quality,decoupleq,composed,cvxq}/.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-check}
Q=${2:-build/qforge}
golden=tests/golden/stories260k_results.json
case "$mode" in save | check) ;; *) echo "usage: scripts/check_results.sh save|check [build/qforge]" >&2; exit 2 ;; esac
[ -x "$Q" ] || { echo "check_results: no qforge binary at $Q (run scripts/build.sh)" >&2; exit 2; }
dirs="runs/quality runs/decoupleq runs/composed runs/cvxq"
rm -rf $dirs
mkdir -p runs
t0=$(date +%s)
for s in quality decoupleq composed cvxq; do
  echo "check_results: scripts/${s}_table.sh ($(( $(date +%s) - t0 )) s)" >&2
  scripts/${s}_table.sh "$Q" > "runs/${s}_table.md"
  if grep -q FAILED "runs/${s}_table.md"; then
    echo "check_results: a run of ${s}_table.sh failed:" >&2
    grep FAILED "runs/${s}_table.md" >&2
    exit 1
  fi
done
python3 - "$mode" "$golden" $dirs <<'PY'
import json, math, os, sys
mode, golden, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
SKIP = ("seconds", "wall", "eta", "threads")  # times and machine facts, not results
def leaves(x, path, out):
    if isinstance(x, dict):
        for k, v in x.items():
            if not any(s in k for s in SKIP):
                leaves(v, path + "." + k if path else k, out)
    elif isinstance(x, list):
        for i, v in enumerate(x):
            leaves(v, "%s[%d]" % (path, i + 1), out)
    elif isinstance(x, bool):
        out[path] = x
    elif isinstance(x, (int, float)):
        out[path] = x
    elif isinstance(x, str) and x in ("nan", "inf", "-inf"):
        out[path] = x
got = {}
for d in dirs:
    for run in sorted(os.listdir(d)):
        f = os.path.join(d, run, "results.json")
        if os.path.isfile(f):
            vals = {}
            leaves(json.load(open(f)), "", vals)
            got[os.path.join(d, run)] = vals
nvals = sum(len(v) for v in got.values())
if mode == "save":
    os.makedirs(os.path.dirname(golden), exist_ok=True)
    tmp = golden + ".tmp"
    json.dump(got, open(tmp, "w"), indent=1, sort_keys=True)
    os.replace(tmp, golden)
    print("check_results: saved %d values of %d runs to %s" % (nvals, len(got), golden))
    sys.exit(0)
want = json.load(open(golden))
diffs = []
for run in sorted(set(want) | set(got)):
    if run not in got: diffs.append("%s: run missing" % run); continue
    if run not in want: diffs.append("%s: new run (not in %s)" % (run, golden)); continue
    w, g = want[run], got[run]
    for k in sorted(set(w) | set(g)):
        if k not in g: diffs.append("%s: %s missing (was %r)" % (run, k, w[k]))
        elif k not in w: diffs.append("%s: %s new (%r)" % (run, k, g[k]))
        elif w[k] != g[k]: diffs.append("%s: %s = %r, was %r" % (run, k, g[k], w[k]))
if diffs:
    print("check_results: %d differences from %s:" % (len(diffs), golden))
    for d in diffs[:200]: print("  " + d)
    # How far the numbers moved, by key (the last path component): for a deliberate change's note.
    moved = {}
    for run in set(want) & set(got):
        w, g = want[run], got[run]
        for k in set(w) & set(g):
            a, b = w[k], g[k]
            if a != b and isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
                key = k.split(".")[-1].split("[")[0]
                rel = abs(b - a) / max(abs(a), 1e-300)
                n, m = moved.get(key, (0, 0.0))
                moved[key] = (n + 1, max(m, rel))
    for key in sorted(moved): print("  moved %-28s %6d values, largest relative change %.3g" % (key, *moved[key]))
    new = os.path.join("runs", "check_results_got.json")
    json.dump(got, open(new, "w"), indent=1, sort_keys=True)
    print("check_results: this binary's values are in %s (a deliberate change: copy it over %s)" % (new, golden))
    sys.exit(1)
print("check_results: all %d values of %d runs identical to %s" % (nvals, len(got), golden))
PY
