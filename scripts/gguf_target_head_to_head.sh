#!/usr/bin/env bash
# Issue 17's target-size head-to-head: llama.cpp's mixed presets (llama-quantize --imatrix, e.g.
# Q4_K_M: its per-tensor type rules) against qforge's recipes/gguf_target.lua at the same bits per
# weight over the block linears (the allocation over real bytes, then GPTQ on each chosen grid),
# calibrated on the same PTB half. Run scripts/kquant_head_to_head.sh DIR first (the F32 base, the
# text halves, the imatrix and the base measurements live there). Every file measured by
# llama-perplexity as in that script; scripts/verify/h2h_table.py DIR prints all rows.
#
#   scripts/gguf_target_head_to_head.sh [DIR]          (default runs/h2h)
#   PRESETS="Q4_K_M Q3_K_M Q2_K" SOLVERS="gptq" scripts/gguf_target_head_to_head.sh /root/h2h
#
# --token-embedding-type f16 keeps the embedding as qforge does; the file's linears decide the
# bits/weight qforge is asked for (gguf-py reads them, the venv of scripts/verify_gguf_types.py).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-runs/h2h}
Q=${QFORGE:-build/qforge}
V=scripts/verify_llamacpp.sh
BIN=build/llamacpp/build/bin
PY=${PYTHON:-build/venv-verify/bin/python}
M=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
PRESETS=${PRESETS:-"Q4_K_M Q3_K_M Q2_K"}
SOLVERS=${SOLVERS:-"gptq"}
TYPES=${TYPES:-"Q2_K,Q3_K,Q4_0,Q4_1,Q4_K,Q5_0,Q5_1,Q5_K,Q6_K,Q8_0"}
WIKI=../shared/data/wikitext2_test.txt
for f in "$D/base_f32.gguf" "$D/imatrix.gguf" "$D/base.kld" "$D/ptb_heldout.txt"; do
  [ -f "$f" ] || { echo "no $f: run scripts/kquant_head_to_head.sh $D first" >&2; exit 2; }
done
timed() {
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  echo "$name $(echo "$t1 - $t0" | bc)" >>"$D/wall.txt"
}
measure() {
  local f=$1
  [ -f "${f%.gguf}.wiki.json" ] || "$V" kld "$f" "$WIKI" 2048 "$D/base.kld" 20 -o "${f%.gguf}.wiki.json"
  [ -f "${f%.gguf}.ptb.json" ] || "$V" ppl "$f" "$D/ptb_heldout.txt" 2048 -o "${f%.gguf}.ptb.json"
}
linear_bpw() {
  "$PY" - "$1" <<'PY'
import sys, gguf
nb = nw = 0
for t in gguf.GGUFReader(sys.argv[1]).tensors:
    if t.name.startswith("blk.") and "norm" not in t.name:
        nb += int(t.n_bytes); nw += int(t.n_elements)
print(repr(8.0 * nb / nw))
PY
}
COMMON="model=$M calib_text=../shared/data/ptb_valid.txt nsamples=128 seqlen=512 eval_seqlen=2048 wiki_windows=0 kld=false
  grad_iters=32 cache=$D/cache types=$TYPES save_format=gguf"
for P in $PRESETS; do
  f=$D/llama_mix_$P.gguf
  [ -f "$f" ] || timed "llama_mix_$P" "$BIN/llama-quantize" --token-embedding-type f16 --imatrix "$D/imatrix.gguf" \
    "$D/base_f32.gguf" "$f" "$P" 2 >"${f%.gguf}.log" 2>&1
  measure "$f"
  bpw=$(linear_bpw "$f")
  for S in $SOLVERS; do
    g=$D/qforge_mix_${P}_$S.gguf
    [ -f "$g" ] || timed "qforge_mix_${P}_$S" "$Q" run recipes/gguf_target.lua $COMMON target_bpw="$bpw" solver="$S" \
      save="$g" out="$D/run_mix_${P}_$S" >"$D/run_mix_${P}_$S.log" 2>&1
    measure "$g"
  done
done
echo "done: $PY scripts/verify/h2h_table.py $D"
