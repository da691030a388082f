#!/usr/bin/env bash
# decoupleQ evidence on stories260K (issue 6): at 2 bits per-channel, 2 bits group 32 and 3 bits
# per-channel — RTN, GPTQ, QuantEase, decoupleQ's layer stage alone, decoupleQ with its block
# stage (finetune=true), and GPTQ + the same block stage. Default protocol of qforge.pipeline.
# Run dirs under runs/decoupleq/.
#   scripts/decoupleq_table.sh [build/qforge]      env: FT_LR=1e-3 (block-stage learning rate)
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}
RUNS=runs/decoupleq
source scripts/table_lib.sh
lr=${FT_LR:-1e-3}
for cfg in "2 -1 2-bit per-channel" "2 32 2-bit g32" "3 -1 3-bit per-channel"; do
  set -- $cfg; b=$1; g=$2; shift 2; name="$*"; tag=${b}_${g#-}
  qf_hdr "$name"
  qf_row "RTN" rtn_$tag recipes/rtn.lua bits=$b group=$g
  qf_row "GPTQ" gptq_$tag recipes/gptq.lua bits=$b group=$g
  qf_row "QuantEase" qe_$tag recipes/quantease.lua bits=$b group=$g
  qf_row "decoupleQ layer stage" dq_$tag recipes/decoupleq.lua bits=$b group=$g
  qf_row "decoupleQ + block stage (lr $lr)" dqft_$tag recipes/decoupleq.lua bits=$b group=$g finetune=true ft_lr=$lr
  qf_row "GPTQ + block stage (lr $lr)" gptqft_$tag recipes/gptq.lua bits=$b group=$g finetune=true ft_lr=$lr
done
