#!/usr/bin/env bash
# Times one fixed workload under three OpenMP wait settings — libgomp's default (what qforge ran
# with before it defaulted to passive: GOMP_SPINCOUNT=300000), OMP_WAIT_POLICY=ACTIVE and
# PASSIVE (qforge's default) — at threads 1 and 2, alone and beside a busy process (`yes >
# /dev/null` pinned to CPU 0) and as two copies at once ("pair"), and prints a markdown table with the machine load. Usage (from the repository root, after scripts/build.sh):
#   scripts/bench_wait_policy.sh [REPS]              # default workload: gradient statistics
#   WORKLOAD=cvxq scripts/bench_wait_policy.sh 1     # qforge run recipes/cvxq.lua (~20 s each)
# POLICIES (default "DEFAULT ACTIVE PASSIVE") picks the columns; SPIN<N> is GOMP_SPINCOUNT=N
# (spin N iterations, then sleep). WORKLOAD=gradient-smollm2 runs the gradient workload on
# models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-models.sh).
# Each cell is the median of REPS wall-clock times (default 3). SAMPLES (default 16) sets the
# gradient workload's windows (x 256 tokens); a run over TIMEOUT seconds (default 120) counts
# as TIMEOUT.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
reps="${1:-3}"
workload="${WORKLOAD:-gradient}"
samples="${SAMPLES:-16}"
limit="${TIMEOUT:-120}"
policies="${POLICIES:-DEFAULT ACTIVE PASSIVE}"
model=../shared/models/stories260K
out="$(mktemp -d)"
trap 'kill $busy 2>/dev/null || true; rm -rf "$out"' EXIT
busy=""
copies=1

workload_cmd() {  # workload_cmd THREADS
  case "$workload" in
    gradient) echo "build/bench_sensitivity $model gradient $samples 256" ;;
    gradient-smollm2) echo "build/bench_sensitivity models/SmolLM2-135M-Instruct.Q4_1.gguf gradient $samples 256" ;;
    cvxq) echo "build/qforge run recipes/cvxq.lua threads=$1 out=$out/run" ;;
    *) echo "unknown WORKLOAD '$workload' (gradient, gradient-smollm2 or cvxq)" >&2; exit 2 ;;
  esac
}

time_once() {  # time_once POLICY THREADS -> seconds
  local t0 t1 pol
  # Each setting is explicit, so qforge's own default does not interfere.
  case "$1" in
    DEFAULT) pol="GOMP_SPINCOUNT=300000" ;;
    SPIN*) pol="GOMP_SPINCOUNT=${1#SPIN}" ;;
    *) pol="OMP_WAIT_POLICY=$1" ;;
  esac
  t0=$(date +%s.%N)
  # "pair": two copies at once (two runs sharing the machine), timed until both end.
  for _ in $(seq 1 "$copies"); do
    timeout "$limit" env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT "$pol" OMP_NUM_THREADS="$2" $(workload_cmd "$2") >/dev/null 2>&1 &
  done
  wait
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

median() { sort -g | awk '{a[NR]=$1} END {printf "%.2f", (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

cell() {  # cell POLICY THREADS
  for _ in $(seq 1 "$reps"); do time_once "$1" "$2"; done | median
}

echo "workload: $(workload_cmd N) ; $reps reps, median wall seconds"
echo "host: $(nproc) CPUs; load before: $(uptime | sed 's/.*load average/load average/')"
echo
header="| condition | threads |"
rule="|---|---|"
for p in $policies; do
  case "$p" in DEFAULT) header+=" libgomp default |" ;; SPIN*) header+=" GOMP_SPINCOUNT=${p#SPIN} |" ;; *) header+=" $p |" ;; esac
  rule+="---|"
done
echo "$header"
echo "$rule"
for cond in alone busy pair; do
  copies=1
  [ "$cond" = pair ] && copies=2
  if [ "$cond" = busy ]; then
    taskset -c 0 yes >/dev/null &
    busy=$!
    sleep 0.5
  fi
  for t in 1 2; do
    row="| $cond | $t |"
    for p in $policies; do row+=" $(cell "$p" "$t") s |"; done
    echo "$row"
  done
  if [ -n "$busy" ]; then kill "$busy"; wait "$busy" 2>/dev/null || true; busy=""; fi
done
echo
echo "load after: $(uptime | sed 's/.*load average/load average/')"
