#!/usr/bin/env bash
# Mixture-of-experts calibration through the pipeline (issue 20, docs/methods.md#moe-calibration) on
# stories260K split into experts (m:to_moe: 4 experts of 43 hidden units, Mixtral architecture):
# with every expert used and a zero router the split model is the dense one (same perplexity);
# GPTQ on a top-1 split records each block's routed tokens per expert (they add up to the
# calibration tokens), names the experts under moe_min_tokens with their fallback in the progress,
# the log and results.json (all_tokens: Σ from every token; rtn; fp: left unquantized and counted
# so by the storage), moe_calibrate=all gives every expert every token, the router stays in full
# precision unless moe_router=quantize; the moe_* options are refused on a dense model; decoupleQ's
# block stage trains an MoE block; the HF and Q4_0 GGUF exports of the quantized MoE load back with the same
# perplexity; the GPTQ and compressed-tensors exports name every expert and leave the router unquantized.
# Usage: tests/cli_moe_test.sh QFORGE_BIN WORKDIR   (run from the repository root)
set -u
source "$(dirname "${BASH_SOURCE[0]}")/cli_lib.sh" "$@"

cat > "$WORK/mk.lua" <<'LUA'
local m = qf.load_model("../shared/models/stories260K")
local d = qf.run_dir()
m:to_moe{ experts = 4, used = 4, router_scale = 0 }:save(d .. "/moe_dense.qforge", { format = "qforge" })
m:to_moe{ experts = 4, used = 1, router_scale = 0.01 }:save(d .. "/moe41.qforge", { format = "qforge" })
local ok, err = pcall(m.to_moe, m, { experts = 8 })
assert(not ok and tostring(err):find("172 is not divisible by experts = 8"), tostring(err))
ok, err = pcall(m.to_moe, m, { experts = 4, bogus = 1 })
assert(not ok and tostring(err):find("bogus"), tostring(err))
local a = m:to_moe{ experts = 4, used = 1 }:arch()
assert(a.name == "mixtral" and a.block_kind == "llama_moe")
assert(a.site_of["experts.2.gate"] == "experts.2.ffn_in" and a.site_of["experts.2.down"] == "experts.2.ffn_mid")
assert(a.site_of.router == "ffn_in" and #a.linears == 4 + 1 + 4 * 3)
print("made")
LUA
run mk run "$WORK/mk.lua" out="$WORK/mk"
expect_rc "to_moe" 0
expect_in "to_moe" stdout "made"
MD="$WORK/mk/moe_dense.qforge"
M1="$WORK/mk/moe41.qforge"
FAST="nsamples=8 seqlen=64 eval_seqlen=128 wiki_windows=2 bits=3"

# The split with every expert and a zero router is the dense model.
run evd run recipes/eval_heldout.lua eval_seqlen=128 wiki_windows=2 out="$WORK/evd"
run evm run recipes/eval_heldout.lua model="$MD" eval_seqlen=128 wiki_windows=2 out="$WORK/evm"
expect_rc "eval of the 4/4 split" 0
python3 - "$WORK/evd/results.json" "$WORK/evm/results.json" <<'PY' && ok || bad "4/4 split perplexity differs from the dense model's"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for k in ("ppl_heldout", "ppl_wikitext2"):
    assert abs(a[k] - b[k]) <= 1e-5 * a[k], (k, a[k], b[k])
PY

# GPTQ, routed statistics, a threshold that starves experts: the default fallback all_tokens.
run routed run recipes/gptq.lua model="$M1" $FAST moe_min_tokens=100 out="$WORK/routed"
expect_rc "gptq on the top-1 split" 0
expect_in "per-block token counts" stderr "block 1/5 experts: routed tokens per expert min"
expect_in "starved experts named" stderr "-> moe_fallback=all_tokens"
expect_in "the layer line says why" stderr "routed tokens < moe_min_tokens=100: Σ from all tokens]"
expect_in "router left in full precision" stderr "block 1/5 router skipped: full precision (the router (moe_router=fp))"
expect_file_has "the log has the counts" "$WORK/routed/log.jsonl" '"event":"moe_tokens"'
python3 - "$WORK/routed/results.json" <<'PY' && ok || bad "routed: moe_tokens / moe_fallbacks (see above)"
import json, sys
d = json.load(open(sys.argv[1]))
t = d["moe_tokens"]
assert len(t) == 5 and all(len(b["tokens"]) == 4 for b in t), t
assert all(sum(b["tokens"]) == 8 * 64 for b in t), t          # top-1: each token in one expert
fb = d["moe_fallbacks"]
starved = {(b["block"], e) for b in t for e, n in enumerate(b["tokens"]) if n < 100}
assert starved and {(f["block"], f["expert"]) for f in fb} == starved, (fb, starved)
assert all(f["fallback"] == "all_tokens" and f["tokens"] < 100 for f in fb)
assert len(fb) == 3 * len(starved)                            # gate, up, down of each
lay = {(l["block"], l["layer"]): l for l in d["layers"]}
assert lay[(1, "router")]["skipped"] and "moe_router=fp" in lay[(1, "router")]["reason"]
for f in fb:
    assert lay[(f["block"], f["layer"])]["moe_fallback"] == "all_tokens"
assert d["storage"]["unquantized"] > 0                        # the routers
PY

# fp: the starved experts stay in full precision; rtn: rounded, no Σ.
run fp run recipes/gptq.lua model="$M1" $FAST moe_min_tokens=100 moe_fallback=fp out="$WORK/fp"
expect_rc "moe_fallback=fp" 0
expect_in "fp fallback named" stderr "moe_fallback=fp)"
run rtn run recipes/gptq.lua model="$M1" $FAST moe_min_tokens=100 moe_fallback=rtn moe_router=quantize out="$WORK/rtn"
expect_rc "moe_fallback=rtn" 0
expect_in "rtn fallback named" stderr ": round to nearest]"
if grep -q "router skipped" "$WORK/stderr"; then bad "moe_router=quantize left the router unquantized"; else ok; fi
python3 - "$WORK/routed/results.json" "$WORK/fp/results.json" "$WORK/rtn/results.json" <<'PY' && ok || bad "fp/rtn fallbacks (see above)"
import json, sys
r, f, q = (json.load(open(p)) for p in sys.argv[1:4])
assert f["storage"]["unquantized"] > r["storage"]["unquantized"]   # the starved experts too
assert all(l.get("skipped") for l in f["layers"] if l.get("moe_fallback") == "fp")
assert any(l.get("moe_fallback") == "rtn" and l["objective"] > 0 for l in q["layers"])
assert q["storage"]["unquantized"] < r["storage"]["unquantized"]   # the router quantized
PY

# moe_calibrate=all: every expert every token, none starved.
run all run recipes/gptq.lua model="$M1" $FAST moe_min_tokens=100 moe_calibrate=all out="$WORK/all"
expect_rc "moe_calibrate=all" 0
expect_in "all tokens" stderr "block 1/5 experts: all tokens per expert min 512, median 512, max 512"
python3 - "$WORK/all/results.json" "$WORK/routed/results.json" <<'PY' && ok || bad "moe_calibrate=all (see above)"
import json, sys
a, r = (json.load(open(p)) for p in sys.argv[1:3])
assert all(b["tokens"] == [512] * 4 for b in a["moe_tokens"]), a["moe_tokens"]
assert "moe_fallbacks" not in a
assert a["ppl_heldout"] != r["ppl_heldout"]
PY

# Options that do not apply are refused before any work.
run dense_moeopt run recipes/gptq.lua $FAST moe_min_tokens=5 out="$WORK/x1"
expect_rc "moe_min_tokens on a dense model" 2
expect_in "moe option on a dense model" stderr "option 'moe_min_tokens': applies to mixture-of-experts models; llama has none"
# decoupleQ's block stage trains through the experts' and router's backward (tests/test_archs.cpp
# checks it against differences): every block's loss goes down.
run moe_ft run recipes/decoupleq.lua model="$M1" $FAST finetune=true ft_lr=1e-3 out="$WORK/ft"
expect_rc "decoupleQ + block finetuning on an MoE model" 0
python3 - "$WORK/ft/results.json" <<'PY' && ok || bad "MoE block finetuning did not lower every block's loss"
import json, sys
f = json.load(open(sys.argv[1]))["finetune"]
assert len(f) == 5 and all(b["after"] < b["losses"][0] for b in f), f
PY

# The quantized MoE as an HF directory (fake-quantized f32) loads back with the same perplexity, to
# 1e-3: HF stores q/k in rotate-half order, so attention sums its dot products in another order
# (~1e-9 relative on the dense model), and a token near a routing tie may then pick another expert.
run hf run recipes/gptq.lua model="$M1" $FAST save="$WORK/hf" save_format=hf out="$WORK/hfrun"
expect_rc "hf export of a quantized MoE" 0
expect_file_has "Mixtral config" "$WORK/hf/config.json" '"num_local_experts": 4'
run hfev run recipes/eval_heldout.lua model="$WORK/hf" eval_seqlen=128 wiki_windows=2 out="$WORK/hfev"
expect_rc "eval of the exported MoE" 0
python3 - "$WORK/hfrun/results.json" "$WORK/hfev/results.json" <<'PY' && ok || bad "exported MoE perplexity differs"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert abs(a["ppl_heldout"] - b["ppl_heldout"]) <= 1e-3 * a["ppl_heldout"], (a["ppl_heldout"], b["ppl_heldout"])
PY
# The same as a Q4_0 GGUF (llama.cpp's merged ffn_*_exps tensors; the downs, 43 columns wide, F32).
run gguf run recipes/gptq.lua model="$M1" nsamples=8 seqlen=64 eval_seqlen=128 wiki_windows=2 bits=4 group=32 sym=true \
  f16_scales=true mapping=llamacpp save="$WORK/moe.gguf" save_format=gguf save_dtype=Q4_0 out="$WORK/ggrun"
expect_rc "gguf Q4_0 export of a quantized MoE" 0
run ggev run recipes/eval_heldout.lua model="$WORK/moe.gguf" eval_seqlen=128 wiki_windows=2 out="$WORK/ggev"
expect_rc "eval of the MoE GGUF" 0
python3 - "$WORK/ggrun/results.json" "$WORK/ggev/results.json" <<'PY' && ok || bad "MoE GGUF perplexity differs"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert abs(a["ppl_heldout"] - b["ppl_heldout"]) <= 1e-3 * a["ppl_heldout"], (a["ppl_heldout"], b["ppl_heldout"])
PY
# GPTQ and compressed-tensors: the experts as transformers' per-expert modules, the router left in
# full precision as a GPTQModel "-:" dynamic entry / a compressed-tensors ignore entry
# (scripts/verify_gptq.py unpacks such an export with numpy: identical weights).
run gptqsave run recipes/gptq.lua model="$M1" nsamples=8 seqlen=64 eval_seqlen=128 wiki_windows=2 bits=4 f16_scales=true \
  save="$WORK/g" save_format=gptq out="$WORK/x3"
expect_rc "gptq export of an MoE" 0
expect_file_has "router unquantized in dynamic" "$WORK/g/config.json" '"-:^model\\.layers\\.\\d+\\.block_sparse_moe\\.gate$"'
python3 - "$WORK/g/model.safetensors" <<'PY' && ok || bad "gptq MoE tensors"
import json, struct, sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n))
assert "model.layers.0.block_sparse_moe.experts.3.w2.qweight" in h, sorted(h)[:20]
assert "model.layers.4.block_sparse_moe.gate.weight" in h and h["model.layers.4.block_sparse_moe.gate.weight"]["dtype"] == "F16"
PY
run ctsave run recipes/gptq.lua model="$M1" nsamples=8 seqlen=64 eval_seqlen=128 wiki_windows=2 bits=4 f16_scales=true \
  save="$WORK/ct" save_format=compressed-tensors out="$WORK/x4"
expect_rc "compressed-tensors export of an MoE" 0
expect_file_has "router in ignore" "$WORK/ct/config.json" '"model.layers.0.block_sparse_moe.gate"'


# A killed MoE run (decoupleQ + block stage, starved experts) resumes with its experts' token counts
# and fallbacks: the same bytes and records as an uninterrupted run (block checkpoints).
R=tests/recipes/checkpoint_interrupted.lua
CKA=(model="$M1" nsamples=8 seqlen=64 eval_seqlen=128 wiki_windows=2 moe_min_tokens=100 finetune=true ft_epochs=1 ft_lr=1e-3
     save_format=qforge)
run ckfull run $R "${CKA[@]}" save="$WORK/ckfull.qforge" out="$WORK/ckfull"
expect_rc "uninterrupted MoE run" 0
QF_TEST_FAIL_AT=3 run ckbroken run $R "${CKA[@]}" save="$WORK/ckres.qforge" checkpoint="$WORK/ck" out="$WORK/ckb"
expect_rc "MoE run failing at block 3" 1
run ckres run $R "${CKA[@]}" save="$WORK/ckres.qforge" checkpoint="$WORK/ck" out="$WORK/ckr"
expect_rc "resumed MoE run" 0
expect_in "MoE resume announced" stderr "resuming after block 2/5"
cmp -s "$WORK/ckfull.qforge" "$WORK/ckres.qforge" && ok || bad "resumed MoE model differs from the uninterrupted one"
python3 - "$WORK/ckfull/results.json" "$WORK/ckr/results.json" <<'PY' && ok || bad "resumed MoE records differ"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert a["moe_tokens"] == b["moe_tokens"] and len(a["moe_tokens"]) == 5, (a["moe_tokens"], b["moe_tokens"])
assert a["moe_fallbacks"] == b["moe_fallbacks"] and a["moe_fallbacks"], b["moe_fallbacks"]
assert [l["objective"] for l in a["layers"]] == [l["objective"] for l in b["layers"]]
assert a["ppl_heldout"] == b["ppl_heldout"]
PY

finish cli_moe
