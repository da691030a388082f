#!/usr/bin/env bash
# Checks qforge's perplexity and KL divergence against llama.cpp's llama-perplexity (an
# independent implementation). On demand only: not part of scripts/test.sh / CTest.
#
#   scripts/verify_llamacpp.sh build                       # fetch + build llama.cpp (once; idempotent)
#   scripts/verify_llamacpp.sh version                     # the llama.cpp version used
#   scripts/verify_llamacpp.sh ppl GGUF TEXT CTX [CHUNKS] [-o OUT.json]
#   scripts/verify_llamacpp.sh kld-base GGUF TEXT CTX BASEFILE [CHUNKS] [-o OUT.json]
#   scripts/verify_llamacpp.sh kld GGUF TEXT CTX BASEFILE [CHUNKS] [-o OUT.json]
#   scripts/verify_llamacpp.sh compare [stories|smollm2|gemma3|all]   # default all; exit 1 on disagreement
#   scripts/verify_llamacpp.sh compare-types [TYPE...]   # every GGUF type qforge writes, on SmolLM2
#
# build: `pip download --no-deps --no-binary :all: llama-cpp-python==$LLAMACPP_PY_VERSION` into
# build/llamacpp/ (sha256 pinned), extracts the sdist and builds its vendored llama.cpp
# (vendor/llama.cpp, CPU only, -DGGML_NATIVE=ON, static) under build/llamacpp/build — only the
# targets llama-perplexity, llama-quantize and llama-imatrix. Nothing of llama.cpp enters the repo;
# the build tree gets one patch (llama-perplexity's main() flushes the logger: see build()).
#
# ppl / kld-base / kld run llama-perplexity -m GGUF -f TEXT -c CTX -b CTX -t 2 [--chunks N]
# plus $LLAMACPP_ARGS (default "-fa off -ctk f32 -ctv f32": an f32 KV cache and no flash attention,
# so that an F32 GGUF is evaluated without rounding any activation to f16; set LLAMACPP_ARGS= for
# llama.cpp's defaults), and print the parsed numbers as JSON (stdout, or -o FILE). The tool's
# whole output goes to OUT.log (or build/llamacpp/logs/). kld-base also writes BASEFILE, the base
# model's log-probabilities (--kl-divergence-base); kld reads it (--kl-divergence; the chunks and
# tokens come from BASEFILE).
#
# compare: for stories260K (../shared/models/stories260K) and SmolLM2-135M
# (models/SmolLM2-135M-Instruct.Q4_1.gguf, scripts/fetch-models.sh): qforge exports the model as
# an F32 GGUF and an RTN-perturbed copy (4 bits, group 32, asym) as F32 GGUF
# (scripts/verify/export_gguf.lua); llama-perplexity scores the F32 GGUF (kld-base) and the KL
# divergence of the copy from it (kld); qforge scores the same GGUFs with recipes/eval.lua
# protocol=llamacpp (and reference=F32.gguf); the token ids llama.cpp scored (stored in BASEFILE)
# are checked against qforge's tokenization; every number is compared to 4 significant digits
# (or half llama.cpp's printed resolution, when it prints fewer digits).
# Work files under build/llamacpp/work/<model>/ (the GGUFs are exported again when the qforge
# binary is newer). gemma3 is Gemma 3 270M (models/gemma-3-270m.Q4_K_M.gguf, scripts/fetch-models.sh
# gemma3): its 262,144-token vocabulary makes llama.cpp's base file 128 MiB per chunk, hence few
# chunks. Settings: CTX (512), STORIES_CHUNKS (100), SMOLLM2_CHUNKS (20), GEMMA3_CHUNKS (4),
# TEXT (../shared/data/wikitext2_test.txt), QFORGE (build/qforge).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

LLAMACPP_PY_VERSION=0.3.36
LLAMACPP_PY_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TOP=build/llamacpp
SRC=$TOP/llama_cpp_python-$LLAMACPP_PY_VERSION
LL=$SRC/vendor/llama.cpp
BLD=$TOP/build
BIN=$BLD/bin
TARGETS="llama-perplexity llama-quantize llama-imatrix"
LLAMACPP_ARGS=${LLAMACPP_ARGS-"-fa off -ctk f32 -ctv f32"}
THREADS=${THREADS:-2}
QFORGE=${QFORGE:-build/qforge}
HELPER=scripts/verify/llamacpp.py

die() { echo "verify_llamacpp: $*" >&2; exit 2; }
note() { echo "verify_llamacpp: $*" >&2; }

# The llama.cpp commit the sdist vendors, from its changelog's newest "update llama.cpp to" line.
llama_commit() {
  sed -n 's/.*update llama\.cpp to ggml-org\/llama\.cpp@\([0-9a-f]*\).*/\1/p' "$SRC/CHANGELOG.md" | head -1
}

version() {
  [ -f "$SRC/CHANGELOG.md" ] || die "llama.cpp not fetched: run scripts/verify_llamacpp.sh build"
  local ggml
  ggml=$(sed -n 's/^set(GGML_VERSION_\(MAJOR\|MINOR\|PATCH\) \([0-9]*\))/\2/p' "$LL/ggml/CMakeLists.txt" | paste -sd.)
  # The sdist carries the submodule's shallow git directory: the full commit and its date from it
  # (only when it is the vendored tree's own repository, never an enclosing one).
  local full=""
  if [ "$(git -C "$LL" rev-parse --show-toplevel 2>/dev/null)" = "$(cd "$LL" && pwd -P)" ]; then
    full=" = $(git -C "$LL" log -1 --format='%H, %cs, "%s"' 2>/dev/null)"
  fi
  echo "llama.cpp ggml-org/llama.cpp@$(llama_commit)$full (vendored by llama-cpp-python $LLAMACPP_PY_VERSION, sdist sha256 $LLAMACPP_PY_SHA256; ggml $ggml)"
}

build() {
  mkdir -p "$TOP"
  local sdist=$TOP/llama_cpp_python-$LLAMACPP_PY_VERSION.tar.gz
  if [ ! -f "$sdist" ] || [ "$(sha256sum "$sdist" | cut -d' ' -f1)" != "$LLAMACPP_PY_SHA256" ]; then
    rm -f "$sdist"
    note "downloading llama-cpp-python $LLAMACPP_PY_VERSION (sdist)"
    python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$LLAMACPP_PY_VERSION" -d "$TOP" >&2
  fi
  local got
  got=$(sha256sum "$sdist" | cut -d' ' -f1)
  [ "$got" = "$LLAMACPP_PY_SHA256" ] || die "$sdist has sha256 $got, expected $LLAMACPP_PY_SHA256"
  if [ ! -f "$LL/tools/perplexity/perplexity.cpp" ]; then
    note "extracting $sdist"
    rm -rf "$SRC"
    tar -xzf "$sdist" -C "$TOP"
  fi
  # The one change to llama.cpp's tree (in build/, never in this repository): llama-perplexity's
  # main() flushes the asynchronous logger before it returns. This version's logger is a leaked
  # singleton with a worker thread (llama.cpp issue 22142), so whatever it still queues at exit is
  # lost — with output to a file that is the last chunk, "Final estimate" and every KLD statistic.
  local main_cpp=$LL/tools/perplexity/main.cpp
  if ! grep -q common_log_flush "$main_cpp"; then
    note "patching $main_cpp: flush the logger before exit"
    cat >"$main_cpp" <<'CPP'
// patched by qforge's scripts/verify_llamacpp.sh: flush the asynchronous logger before exit
#include "log.h"

int llama_perplexity(int argc, char ** argv);

int main(int argc, char ** argv) {
    const int rc = llama_perplexity(argc, argv);
    common_log_flush(common_log_main());
    return rc;
}
CPP
  fi
  local have=1 t
  for t in $TARGETS; do [ -x "$BIN/$t" ] || have=0; done
  [ "$BIN/llama-perplexity" -nt "$main_cpp" ] || have=0
  if [ $have = 1 ]; then
    note "llama.cpp tools present in $BIN ($TARGETS)"
  else
    if [ ! -f "$BLD/CMakeCache.txt" ]; then
      # The sdist's git directory is a one-commit shallow clone (a build count of 1 would
      # mislead), so the commit from the changelog is passed in with build number 0: it is what
      # llama-perplexity prints as its build.
      cmake -S "$LL" -B "$BLD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON \
        -DLLAMA_BUILD_COMMIT="$(llama_commit)" -DLLAMA_BUILD_NUMBER=0 >&2
    fi
    # shellcheck disable=SC2086
    cmake --build "$BLD" -j"${JOBS:-2}" --target $TARGETS >&2
  fi
  "$BIN/llama-perplexity" --version 2>&1 | grep -i "version\|built" >&2 || true
  version
}

need_tools() { [ -x "$BIN/llama-perplexity" ] || die "llama-perplexity not built: run scripts/verify_llamacpp.sh build"; }

# run_tool MODE JSON_OUT LOG GGUF TEXT CTX [CHUNKS] [BASEFILE]: runs llama-perplexity, writes its
# parsed numbers to JSON_OUT (or stdout when JSON_OUT is -).
run_tool() {
  local mode=$1 out=$2 log=$3 gguf=$4 text=$5 ctx=$6 chunks=${7:-} base=${8:-}
  need_tools
  [ -f "$gguf" ] || die "no model file $gguf"
  [ -f "$text" ] || die "no text file $text"
  local args=(-m "$gguf" -f "$text" -c "$ctx" -b "$ctx" -t "$THREADS")
  [ -n "$chunks" ] && args+=(--chunks "$chunks")
  case $mode in
    kld-base) args+=(--kl-divergence-base "$base") ;;
    kld) [ -f "$base" ] || die "no base file $base (run kld-base first)"; args+=(--kl-divergence-base "$base" --kl-divergence) ;;
  esac
  # shellcheck disable=SC2206
  local extra=($LLAMACPP_ARGS)
  mkdir -p "$(dirname "$log")"
  local t0 t1
  t0=$(date +%s.%N)
  note "$BIN/llama-perplexity ${args[*]} ${extra[*]}  (log: $log)"
  if ! "$BIN/llama-perplexity" "${args[@]}" "${extra[@]}" >"$log" 2>&1; then
    tail -20 "$log" >&2
    die "llama-perplexity failed (log: $log)"
  fi
  t1=$(date +%s.%N)
  local pmode=ppl
  [ "$mode" = kld ] && pmode=kld
  local json
  json=$(python3 "$HELPER" parse "$pmode" "$log" \
    "model=$gguf" "text=$text" "ctx=$ctx" "chunks_requested=${chunks:-0}" "args=${args[*]} ${extra[*]}" \
    "llama_cpp=$(version)" "seconds=$(awk "BEGIN{printf \"%.2f\", $t1 - $t0}")" "uptime=$(uptime | sed 's/.*load average/load average/')")
  if [ "$out" = - ]; then echo "$json"; else echo "$json" >"$out"; note "wrote $out"; fi
}

# Subcommand front end: strips -o FILE from the arguments.
tool_cmd() {
  local mode=$1; shift
  local out=- a=()
  while [ $# -gt 0 ]; do
    if [ "$1" = -o ]; then out=$2; shift 2; else a+=("$1"); shift; fi
  done
  local log
  if [ "$out" = - ]; then log=$TOP/logs/$mode-$(date +%Y%m%d-%H%M%S).log; else log=${out%.json}.log; fi
  case $mode in
    ppl) [ ${#a[@]} -ge 3 ] || die "usage: ppl GGUF TEXT CTX [CHUNKS] [-o OUT.json]"
         run_tool ppl "$out" "$log" "${a[0]}" "${a[1]}" "${a[2]}" "${a[3]:-}" ;;
    kld-base|kld) [ ${#a[@]} -ge 4 ] || die "usage: $mode GGUF TEXT CTX BASEFILE [CHUNKS] [-o OUT.json]"
         run_tool "$mode" "$out" "$log" "${a[0]}" "${a[1]}" "${a[2]}" "${a[4]:-}" "${a[3]}" ;;
  esac
}

# qforge_run OUT_DIR RECIPE ARGS...: a qforge run into OUT_DIR (replaced), its output in OUT_DIR.log.
qforge_run() {
  local dir=$1; shift
  rm -rf "$dir"
  note "$QFORGE run $*"
  if ! "$QFORGE" run "$@" "out=$dir" >"$dir.log" 2>&1; then
    tail -20 "$dir.log" >&2
    note "qforge run failed (log: $dir.log)"
    return 1
  fi
}

compare_model() {
  local name=$1 src=$2 chunks=$3
  local ctx=${CTX:-512} text=${TEXT:-../shared/data/wikitext2_test.txt}
  local w=$TOP/work/$name
  mkdir -p "$w"
  [ -x "$QFORGE" ] || die "no qforge binary at $QFORGE (run scripts/build.sh)"
  [ -e "$src" ] || die "no model at $src"
  note "== $name: $src, $text, ctx $ctx, $chunks chunks; $(uptime | sed 's/.*load average/load average/')"
  # 1. The GGUFs both tools read: the model in F32, and an RTN 4-bit (g32, asym) copy in F32.
  # (made again when the qforge binary is newer than them)
  [ -f "$w/f32.gguf" ] && [ "$w/f32.gguf" -nt "$QFORGE" ] || qforge_run "$w/qf_export_f32" scripts/verify/export_gguf.lua "model=$src" "save=$w/f32.gguf" || return 1
  [ -f "$w/rtn4.gguf" ] && [ "$w/rtn4.gguf" -nt "$QFORGE" ] || qforge_run "$w/qf_export_rtn4" scripts/verify/export_gguf.lua "model=$src" "save=$w/rtn4.gguf" rtn_bits=4 group=32 || return 1
  # 2. llama.cpp: perplexity of the F32 model (writing its log-probs), then the KLD of the copy.
  run_tool kld-base "$w/ll_f32.json" "$w/ll_f32.log" "$w/f32.gguf" "$text" "$ctx" "$chunks" "$w/f32.kldbase"
  run_tool kld "$w/ll_rtn4.json" "$w/ll_rtn4.log" "$w/rtn4.gguf" "$text" "$ctx" "$chunks" "$w/f32.kldbase"
  # 3. The token ids llama.cpp scored (stored in the base file) against qforge's tokenization.
  local n_tok
  n_tok=$(python3 -c "import json,sys; h=json.loads(sys.argv[1]); print(h['n_ctx']*h['n_chunk'])" "$(python3 "$HELPER" base-info "$w/f32.kldbase")")
  local rc=0
  qforge_run "$w/qf_ids" scripts/verify/token_ids.lua "model=$w/f32.gguf" "text=$text" "n=$n_tok" || return 1
  if python3 "$HELPER" check-tokens "$w/f32.kldbase" "$w/qf_ids/results.json" >"$w/tokens.json"; then
    echo "$name: token ids: llama.cpp's $n_tok scored ids = qforge's ($(cat "$w/tokens.json"))"
  else
    echo "$name: token ids DIFFER from llama.cpp's: $(cat "$w/tokens.json")"
    rc=1
  fi
  # 4. qforge on the same GGUFs under llama-perplexity's protocol.
  qforge_run "$w/qf_f32" recipes/eval.lua "model=$w/f32.gguf" "text=$text" "seqlen=$ctx" "max_windows=$chunks" protocol=llamacpp || rc=1
  qforge_run "$w/qf_rtn4" recipes/eval.lua "model=$w/rtn4.gguf" "text=$text" "seqlen=$ctx" "max_windows=$chunks" protocol=llamacpp "reference=$w/f32.gguf" || rc=1
  # 5. Both tools' numbers side by side (llama.cpp's alone when qforge's runs failed).
  echo '{}' >"$w/no_results.json"
  local qa="$w/qf_f32/results.json" qb="$w/qf_rtn4/results.json"
  [ -f "$qa" ] || qa="$w/no_results.json"
  [ -f "$qb" ] || qb="$w/no_results.json"
  python3 "$HELPER" compare "$name" "$w/ll_f32.json" "$qa" "$w/ll_rtn4.json" "$qb" || rc=1
  return $rc
}

compare() {
  local which=${1:-all} rc=0
  need_tools
  echo "$(version)"
  echo "machine: $(nproc) cores, $(uptime | sed 's/.*load average/load average/')"
  if [ "$which" = all ] || [ "$which" = stories ]; then
    compare_model stories260K ../shared/models/stories260K "${STORIES_CHUNKS:-100}" || rc=1
  fi
  if [ "$which" = all ] || [ "$which" = smollm2 ]; then
    local gg=models/SmolLM2-135M-Instruct.Q4_1.gguf
    [ -f "$gg" ] || scripts/fetch-models.sh >&2
    compare_model smollm2 "$gg" "${SMOLLM2_CHUNKS:-20}" || rc=1
  fi
  if [ "$which" = all ] || [ "$which" = gemma3 ]; then
    local gm=models/gemma-3-270m.Q4_K_M.gguf
    [ -f "$gm" ] || scripts/fetch-models.sh gemma3 >&2
    compare_model gemma3 "$gm" "${GEMMA3_CHUNKS:-4}" || rc=1
  fi
  echo "machine after: $(uptime | sed 's/.*load average/load average/')"
  [ $rc = 0 ] && echo "verify_llamacpp: qforge and llama.cpp agree" || echo "verify_llamacpp: DISAGREEMENT (see above)"
  return $rc
}

# compare-types: every GGUF type qforge writes (default Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K
# Q6_K), on SmolLM2 (its 1536-wide ffn_down takes the K types; the 576-wide linears get
# llama-quantize's fallbacks). Per type: qforge writes the reference fit of every linear in that
# type (export_gguf.lua type=T); llama-quantize --allow-requantize turns the file into F32 with
# llama.cpp's own dequantization (so llama.cpp must read every block), and llama-perplexity scores
# that F32 file — KLD against the F32 base and perplexity, ctx 512, TYPES_CHUNKS (default 8) chunks
# of WikiText-2 test; qforge scores the quantized file itself (its own dequantization) under
# protocol=llamacpp; the numbers must agree as in compare. llama-perplexity on the quantized file
# itself (its matmuls round activations to 8 bits) is shown beside them, not compared.
compare_types() {
  need_tools
  local types=("$@")
  [ ${#types[@]} -gt 0 ] || types=(Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K)
  local gg=models/SmolLM2-135M-Instruct.Q4_1.gguf chunks=${TYPES_CHUNKS:-8} ctx=512 text=../shared/data/wikitext2_test.txt
  [ -f "$gg" ] || scripts/fetch-models.sh >&2
  local w=$TOP/work/smollm2_types rc=0
  mkdir -p "$w"
  echo "$(version)"
  echo "machine: $(nproc) cores, $(uptime | sed 's/.*load average/load average/')"
  [ -f "$w/f32.gguf" ] && [ "$w/f32.gguf" -nt "$QFORGE" ] || qforge_run "$w/qf_export_f32" scripts/verify/export_gguf.lua "model=$gg" "save=$w/f32.gguf" || return 1
  run_tool kld-base "$w/ll_f32.json" "$w/ll_f32.log" "$w/f32.gguf" "$text" "$ctx" "$chunks" "$w/f32.kldbase"
  qforge_run "$w/qf_f32" recipes/eval.lua "model=$w/f32.gguf" "text=$text" "seqlen=$ctx" "max_windows=$chunks" protocol=llamacpp || return 1
  for T in "${types[@]}"; do
    qforge_run "$w/qf_export_$T" scripts/verify/export_gguf.lua "model=$gg" "save=$w/$T.gguf" "type=$T" || { rc=1; continue; }
    echo "$T: $(grep -h 'reference fit' "$w/qf_export_$T.log")"
    note "$BIN/llama-quantize --allow-requantize $w/$T.gguf $w/${T}_deq.gguf F32"
    if ! "$BIN/llama-quantize" --allow-requantize "$w/$T.gguf" "$w/${T}_deq.gguf" F32 2 >"$w/${T}_deq.log" 2>&1; then
      tail -5 "$w/${T}_deq.log" >&2; echo "$T: llama-quantize could not read qforge's file"; rc=1; continue
    fi
    run_tool kld "$w/ll_$T.json" "$w/ll_$T.log" "$w/${T}_deq.gguf" "$text" "$ctx" "$chunks" "$w/f32.kldbase"
    run_tool kld "$w/ll_${T}_native.json" "$w/ll_${T}_native.log" "$w/$T.gguf" "$text" "$ctx" "$chunks" "$w/f32.kldbase"
    qforge_run "$w/qf_$T" recipes/eval.lua "model=$w/$T.gguf" "text=$text" "seqlen=$ctx" "max_windows=$chunks" protocol=llamacpp "reference=$w/f32.gguf" || { rc=1; continue; }
    python3 "$HELPER" compare "smollm2 $T" "$w/ll_f32.json" "$w/qf_f32/results.json" "$w/ll_$T.json" "$w/qf_$T/results.json" || rc=1
    python3 - "$T" "$w/ll_${T}_native.json" "$w/ll_$T.json" <<'PY'
import json, sys
n, d = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
print("%s: llama-perplexity on the quantized file itself (8-bit activations in its matmuls): PPL %.4f, mean KLD %.6f (dequantized F32: %.4f, %.6f)"
      % (sys.argv[1], n["ppl"], n["kld"]["mean"], d["ppl"], d["kld"]["mean"]))
PY
  done
  echo "machine after: $(uptime | sed 's/.*load average/load average/')"
  [ $rc = 0 ] && echo "verify_llamacpp: every type agrees" || echo "verify_llamacpp: DISAGREEMENT (see above)"
  return $rc
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  build) build ;;
  version) version ;;
  ppl | kld-base | kld) tool_cmd "$cmd" "$@" ;;
  compare) compare "$@" ;;
  compare-types) compare_types "$@" ;;
  *) sed -n '2,10p' "$0" >&2; exit 2 ;;
esac
