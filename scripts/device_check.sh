#!/usr/bin/env bash
# scripts/device_check.sh — the GPU check of the CUDA backend (issue 21, docs/device.md): builds
# the CUDA backend, runs its parity tests against the CPU backend, times its kernels and one whole
# recipe, and writes a summary. Nothing is downloaded: the build uses the machine's CUDA toolkit
# and Debian packages (scripts/setup.sh's list), the recipe the model in ../shared.
#
#   scripts/device_check.sh [--cpu-twin] [--build DIR] [--out DIR] [--shared DIR]
#
#   --cpu-twin   run every step with the Thrust-OMP backend instead of CUDA (same device code on
#                the CPU), small bench shapes, the existing build in build/ (no reconfigure): checks
#                this script's logic on a machine without a GPU in about two minutes
#   --build DIR  build directory (default build-cuda; --cpu-twin: build)
#   --out DIR    where the logs and summary.md go (default $OUT when set, else DIR/device_check)
#   --shared DIR the shared data (default ../shared, else ./shared)
#
# Budget: under 8 minutes on one H100/H200 with 16 cores; each step has a timeout, so a step that
# hangs costs its slot and the summary still comes out:
#   configure + build of the 4 targets it needs (qforge, test_backend_ops, test_backend_parity,
#   bench_device) on all cores          ≤ 240 s  (≈ 150 engine/binding files, the .cu ≈ 60 s)
#   CUDA parity tests (ctest, 2 tests)   ≤  60 s
#   bench_device (GEMM rate; CD sweep, 30-sweep QuantEase and GPTQ on 4096², 11008×4096,
#   4096×11008, 8192×28672; Σ for 128×2048 tokens; QuantEase through the Backend interface;
#   projection to Llama-2-7B/70B)         ≤ 150 s  (host-side problem setup is most of it)
#   stories260K QuantEase recipe, GPU then CPU   ≤ 2 × 45 s
# The summary lists each step's status and seconds, the device, and the numbers.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

twin=false
build=""
out="${OUT:-}"
shared=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-twin) twin=true ;;
    --build) build="$2"; shift ;;
    --out) out="$2"; shift ;;
    --shared) shared="$2"; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "device_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if $twin; then dev=thrust-omp; build="${build:-build}"; else dev=cuda; build="${build:-build-cuda}"; fi
out="${out:-$build/device_check}"
mkdir -p "$out"
if [ -z "$shared" ]; then
  if [ -d ../shared ]; then shared=../shared; elif [ -d shared ]; then shared=shared; else shared=../shared; fi
fi
summary="$out/summary.md"
jobs="$(nproc)"
t_start=$(date +%s)

{
  echo "# device check ($dev)"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "- host: $(hostname), $jobs cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  else
    echo "- GPU: none (no nvidia-smi)"
  fi
  echo "- nvcc: $(command -v nvcc >/dev/null 2>&1 && nvcc --version | tail -1 || (test -x /usr/local/cuda/bin/nvcc && /usr/local/cuda/bin/nvcc --version | tail -1) || echo none)"
  echo
  echo "| step | status | seconds |"
  echo "|---|---|---:|"
} > "$summary"

failed=0
# step NAME TIMEOUT CMD...: runs CMD with its output in $out/NAME.log, one summary row.
step() {
  local name="$1" limit="$2"
  shift 2
  local t0=$(date +%s) rc
  echo "== $name (limit ${limit}s): $*" >&2
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local st=ok
  if [ $rc -eq 124 ]; then st="TIMEOUT"; failed=1;
  elif [ $rc -ne 0 ]; then st="FAILED (exit $rc)"; failed=1; fi
  echo "| $name | $st | $dt |" >> "$summary"
  echo "   $st in ${dt}s (log: $out/$name.log)" >&2
  tail -5 "$out/$name.log" >&2
  return $rc
}

# 1. configure and build only what the check runs
targets="qforge test_backend_ops test_backend_parity bench_device"
if $twin; then
  step build 900 cmake --build "$build" -j"$jobs" --target $targets
else
  step configure 120 cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DQFORGE_CUDA=ON -DQFORGE_THRUST_OMP=ON &&
    step build 300 cmake --build "$build" -j"$jobs" --target $targets
fi
built=$?

if [ $built -eq 0 ]; then
  # 2. parity tests of the device backend against the CPU backend
  if $twin; then pattern='^test_backend_(ops_thrust_omp|parity)$'; else pattern='^test_backend_(ops|parity)_cuda$'; fi
  step parity_tests 240 ctest --test-dir "$build" -R "$pattern" --output-on-failure
  # a skipped CUDA test is a failed check here: the GPU must run them
  if ! $twin && grep -q "Skipped\|\*\*\*Not Run" "$out/parity_tests.log"; then
    echo "| parity_tests | SKIPPED on the device: no GPU seen (see log) | |" >> "$summary"; failed=1
  fi

  # 3. kernel timings and the projection
  if $twin; then bench_args="--device thrust-omp --quick --sweeps 3"; else bench_args="--device cuda"; fi
  step bench 240 "$build/bench_device" $bench_args --json "$out/bench.json"

  # 4. one whole recipe on stories260K, on the device and on the CPU
  model="$shared/models/stories260K"
  for d in "$dev" cpu; do
    step "recipe_$d" 120 "$build/qforge" run recipes/quantease.lua "model=$model" device=$d "out=$out/run_$d"
  done
fi

{
  echo
  echo "## bench_device"
  echo
  echo '```'
  cat "$out/bench.log" 2>/dev/null || echo "(not run)"
  echo '```'
  echo
  echo "## stories260K QuantEase recipe"
  echo
  for d in "$dev" cpu; do
    if [ -f "$out/run_$d/run.json" ]; then
      wall=$(grep -o '"wall_seconds": *[0-9.e+-]*' "$out/run_$d/run.json" | head -1 | sed 's/.*: *//')
      ppl=$(grep -o '"ppl[a-z_0-9]*": *[0-9.e+-]*' "$out/run_$d/results.json" 2>/dev/null | tr '\n' ' ')
      echo "- $d: ${wall:-?} s; $ppl"
    else
      echo "- $d: no run directory"
    fi
  done
  echo
  echo "## parity tests"
  echo
  echo '```'
  grep -E "tests passed|tests failed|Passed|Failed|Skipped|max \\|device|objective cpu" "$out/parity_tests.log" 2>/dev/null | head -40 || echo "(not run)"
  echo '```'
  echo
  echo "total: $(( $(date +%s) - t_start )) s; $([ $failed -eq 0 ] && echo 'all steps ok' || echo 'SOME STEPS FAILED')"
} >> "$summary"
echo "device_check: summary in $summary" >&2
cat "$summary"
exit $failed
