#!/usr/bin/env bash
# Issue 17's head-to-head: GGUF files of the same types written by llama.cpp (llama-imatrix on the
# calibration half of PTB, then llama-quantize --imatrix) and by qforge (GPTQ / QuantEase on
# K-quant grids with the diag-Σ importance fit, calibrated on the same half), every file measured
# by llama.cpp's llama-perplexity against the same F32 base (qforge's F32 export of the dequantized
# SmolLM2 Q4_1 file): KL divergence on WikiText-2 test (20 chunks of 2048; mean, 99th percentile,
# same top token, perplexity) and perplexity on the held-out PTB half (chunks of 2048).
# On demand (not part of the tests): needs scripts/verify_llamacpp.sh build and
# scripts/fetch-models.sh. Resumable: finished files and measurements are kept.
#
#   scripts/kquant_head_to_head.sh [DIR]        (default runs/h2h)
#   TYPES="Q4_K Q3_K" SOLVERS="gptq quantease" scripts/kquant_head_to_head.sh /root/h2h
#
# Types Q4_0, Q5_0, Q8_0 get llama.cpp's legacy mapping at groups of 32 (bits, sym, mapping=llamacpp),
# K types a ktype grid. Per type T: llama_T_noimat.gguf (llama-quantize --pure, no imatrix), llama_T.gguf (--pure
# --imatrix), qforge_rtn_T.gguf (RTN on the reference fit, no calibration), qforge_S_T.gguf per
# solver S. --pure keeps every linear at T (llama.cpp still falls back per tensor where the width is
# not a multiple of 256, and qforge's pipeline gives those linears the same fallback grid);
# --token-embedding-type f16 keeps the embedding as qforge does. Then
# scripts/verify/h2h_table.py DIR prints the table (types per file from gguf-py, bits per weight of
# the linears, the measurements, each pipeline's wall time).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-runs/h2h}
Q=${QFORGE:-build/qforge}
V=scripts/verify_llamacpp.sh
BIN=build/llamacpp/build/bin
M=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
TYPES=${TYPES:-"Q4_0 Q4_K Q3_K Q2_K"}
SOLVERS=${SOLVERS:-"gptq quantease"}
BASELINES=${BASELINES:-1}  # 0: skip the no-imatrix llama.cpp file and qforge's RTN (the context rows)
WIKI=../shared/data/wikitext2_test.txt
[ -f "$M" ] || { echo "no $M: run scripts/fetch-models.sh" >&2; exit 2; }
for t in llama-perplexity llama-quantize llama-imatrix; do
  [ -x "$BIN/$t" ] || { echo "no $BIN/$t: run scripts/verify_llamacpp.sh build" >&2; exit 2; }
done
mkdir -p "$D"
timed() {  # timed NAME CMD...: runs CMD, appends "NAME seconds" to DIR/wall.txt
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  echo "$name $(echo "$t1 - $t0" | bc)" >>"$D/wall.txt"
}

# The F32 base and the two PTB halves as text (the tokens the pipeline splits at calib_fraction 0.5).
[ -f "$D/base_f32.gguf" ] || "$Q" run scripts/verify/export_gguf.lua model="$M" save="$D/base_f32.gguf" out="$D/run_base" >"$D/run_base.log" 2>&1
[ -f "$D/ptb_heldout.txt" ] || "$Q" run scripts/verify/split_text.lua model="$M" text=../shared/data/ptb_valid.txt \
  first="$D/ptb_calib.txt" second="$D/ptb_heldout.txt" out="$D/run_split" >"$D/run_split.log" 2>&1

# llama.cpp's importance matrix on the calibration half (chunks of 512, all of it).
[ -f "$D/imatrix.gguf" ] || timed imatrix "$BIN/llama-imatrix" -m "$D/base_f32.gguf" -f "$D/ptb_calib.txt" -c 512 -b 512 -t 2 \
  -o "$D/imatrix.gguf" >"$D/imatrix.log" 2>&1

# Measurements of one file: KLD on WikiText-2 against the base, perplexity on the held-out half.
[ -f "$D/base.kld" ] || "$V" kld-base "$D/base_f32.gguf" "$WIKI" 2048 "$D/base.kld" 20 -o "$D/base_f32.wiki.json"
measure() {
  local f=$1
  [ -f "${f%.gguf}.wiki.json" ] || "$V" kld "$f" "$WIKI" 2048 "$D/base.kld" 20 -o "${f%.gguf}.wiki.json"
  [ -f "${f%.gguf}.ptb.json" ] || "$V" ppl "$f" "$D/ptb_heldout.txt" 2048 -o "${f%.gguf}.ptb.json"
}
[ -f "$D/base_f32.ptb.json" ] || "$V" ppl "$D/base_f32.gguf" "$D/ptb_heldout.txt" 2048 -o "$D/base_f32.ptb.json"

COMMON="model=$M calib_text=../shared/data/ptb_valid.txt nsamples=128 seqlen=512 eval_seqlen=2048 wiki_windows=0 kld=false save_format=gguf"
grid_opts() {  # qforge's grid for type T: a K-quant grid, or llama.cpp's legacy mapping at groups of 32
  case $1 in
    Q4_0) echo "bits=4 group=32 sym=true mapping=llamacpp f16_scales=true" ;;
    Q5_0) echo "bits=5 group=32 sym=true mapping=llamacpp f16_scales=true" ;;
    Q8_0) echo "bits=8 group=32 sym=true mapping=llamacpp f16_scales=true" ;;
    *) echo "ktype=$1" ;;
  esac
}
for T in $TYPES; do
  G=$(grid_opts "$T")
  f=$D/llama_${T}_noimat.gguf
  [ "$BASELINES" = 1 ] && { [ -f "$f" ] || timed "llama_${T}_noimat" "$BIN/llama-quantize" --pure --token-embedding-type f16 "$D/base_f32.gguf" "$f" "$T" 2 >"${f%.gguf}.log" 2>&1; measure "$f"; }
  f=$D/llama_${T}.gguf
  [ -f "$f" ] || timed "llama_${T}" "$BIN/llama-quantize" --pure --token-embedding-type f16 --imatrix "$D/imatrix.gguf" \
    "$D/base_f32.gguf" "$f" "$T" 2 >"${f%.gguf}.log" 2>&1
  measure "$f"
  f=$D/qforge_rtn_${T}.gguf
  [ "$BASELINES" = 1 ] && { [ -f "$f" ] || timed "qforge_rtn_${T}" "$Q" run recipes/rtn.lua $COMMON $G save="$f" save_dtype="$T" out="$D/run_rtn_$T" >"$D/run_rtn_$T.log" 2>&1; measure "$f"; }
  for S in $SOLVERS; do
    f=$D/qforge_${S}_${T}.gguf
    [ -f "$f" ] || timed "qforge_${S}_${T}" "$Q" run "recipes/$S.lua" $COMMON $G importance=diag save="$f" save_dtype="$T" \
      out="$D/run_${S}_$T" >"$D/run_${S}_$T.log" 2>&1
    measure "$f"
  done
done
echo "done: python3 scripts/verify/h2h_table.py $D"
