#!/usr/bin/env bash
# Fuzzes one reader: scripts/fuzz.sh TARGET SECONDS [libFuzzer args...]
#   TARGET: gguf safetensors hf_config tokenizer_json tokenizer_bin llama2c qforge allocation mc_jsonl reference_logits
# Builds the libFuzzer + ASan/UBSan harnesses with clang under build/fuzz/ (separate from the
# normal build), generates seeds from stories260K exports under build/fuzz/seeds/ (needs the
# normal build's build/qforge), and runs TARGET for SECONDS with final stats. The working
# corpus grows in build/fuzz/corpus/TARGET; crashers land in build/fuzz/artifacts/TARGET/ —
# copy each (shrunk: -minimize_crash=1) to fuzz/findings/TARGET/ once fixed.
# Environment: JOBS (build parallelism, default 2), RSS_MB (default 2048), NO_BUILD=1.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:?usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer args]}"
secs="${2:?usage: scripts/fuzz.sh TARGET SECONDS [libFuzzer args]}"
shift 2
case "$target" in
  gguf|safetensors|qforge) max_len=1500000 ;;
  llama2c) max_len=1200000 ;;
  tokenizer_json|allocation) max_len=262144 ;;
  hf_config|tokenizer_bin|mc_jsonl) max_len=65536 ;;
  reference_logits) max_len=262144 ;;
  *) echo "fuzz.sh: unknown target '$target'" >&2; exit 2 ;;
esac
B="$root/build/fuzz"
if [ -z "${NO_BUILD:-}" ]; then
  if [ ! -f "$B/CMakeCache.txt" ]; then
    launcher=()
    command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    cmake -S "$root" -B "$B" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DQF_FUZZ=ON "${launcher[@]}" \
      -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" >&2
  fi
  cmake --build "$B" -j"${JOBS:-2}" --target "fuzz_$target" >&2
fi
# Seeds from stories260K exports (the project's own writers), generated once.
seeds="$B/seeds"
if [ ! -f "$seeds/.done" ]; then
  [ -x "$root/build/qforge" ] || { echo "fuzz.sh: build/qforge is needed to generate seeds (scripts/build.sh)" >&2; exit 2; }
  rm -rf "$seeds"
  (cd "$root" && build/qforge run fuzz/make_seeds.lua out="$B/seeds_run" dir="$seeds" >&2)
  touch "$seeds/.done"
fi
corpus="$B/corpus/$target"
mkdir -p "$seeds/$target"  # targets without generated seeds (mc_jsonl) start from the committed ones
mkdir -p "$corpus" "$B/artifacts/$target" "$B/logs"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=0:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export OMP_NUM_THREADS=1
cd "$root"
exec "$B/fuzz_$target" "$corpus" "$seeds/$target" "fuzz/corpus/$target" \
  -max_total_time="$secs" -rss_limit_mb="${RSS_MB:-2048}" -timeout=10 -max_len="$max_len" -print_final_stats=1 \
  -artifact_prefix="$B/artifacts/$target/" "$@"
