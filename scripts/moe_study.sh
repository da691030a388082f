#!/usr/bin/env bash
# Issue 20's tiny mixture-of-experts evidence: stories260K split into 4 experts of 43 hidden units,
# 3 used per token (m:to_moe, docs/architecture.md#mixture-of-experts: a real-weight MoE whose
# experts are contiguous slices of the dense FFN), quantized per channel at 4 and 3 bits by GPTQ
# and QuantEase with each expert's Σ from its routed tokens (moe_calibrate=routed, the default) or
# from every token (all), 128 windows of 256 tokens; held-out perplexity and KLD against the
# full-precision MoE. The per-expert token counts and the fallbacks are in each run's results.json
# (moe_tokens, moe_fallbacks). Then a starved setting: the top-1 split (1 expert per token) with
# 16 windows and moe_min_tokens=256, under each fallback (all_tokens, rtn, fp).
#   scripts/moe_study.sh [build/qforge] [DIR]      then: qforge table DIR/*
set -u
cd "$(dirname "$0")/.."
Q=${1:-build/qforge}
D=${2:-runs/moe}
mkdir -p "$D"
cat > "$D/make_moe.lua" <<'LUA'
local m = qf.load_model("../shared/models/stories260K")
local d = qf.run_dir() .. "/.."
m:to_moe{ experts = 4, used = 3, router_scale = 0.01 }:save(d .. "/stories260K-moe4x3.qforge", { format = "qforge" })
m:to_moe{ experts = 4, used = 1, router_scale = 0.01 }:save(d .. "/stories260K-moe4x1.qforge", { format = "qforge" })
LUA
[ -f "$D/stories260K-moe4x1.qforge" ] || "$Q" run "$D/make_moe.lua" out="$D/make" >/dev/null || exit 1
rc=0
M="$D/stories260K-moe4x3.qforge"
"$Q" run recipes/eval_heldout.lua model="$M" out="$D/fp" > /dev/null 2>&1 || [ -f "$D/fp/run.json" ] || rc=1
for r in gptq quantease; do
  "$Q" sweep recipes/$r.lua model="$M" bits=4,3 moe_calibrate=routed,all cache="$D/cache" --out "$D/$r" || rc=1
done
"$Q" sweep recipes/gptq.lua model="$D/stories260K-moe4x1.qforge" bits=3 nsamples=16 moe_min_tokens=256 \
  moe_fallback=all_tokens,rtn,fp cache="$D/cache" --out "$D/starved" || rc=1
exit $rc
