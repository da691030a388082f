#!/usr/bin/env python3
"""Unpacks qforge's GPTQ exports with safetensors + numpy (no qforge code) and compares the
dequantized weights with the fake-quant HF export of the same quantized model.

  python3 scripts/verify_gptq.py            # stories260K, RTN at 2/3/4/8 bits, sym/asym, g32/per-channel,
                                            # a mixed model (GPTQModel's `dynamic` overrides) and a
                                            # mixture of experts (per-expert modules, router in fp16)
Uses build/venv-verify (numpy, safetensors) and build/qforge.
"""
import json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "build", "venv-verify")
QF = os.environ.get("QFORGE", os.path.join(ROOT, "build", "qforge"))

EXPORT = """
local opt = qf.options({ bits = 4, group = 32, sym = false, dest = "" })
local m = qf.load_model("../shared/models/stories260K")
local g = qf.grid{ bits = opt.bits, group = opt.group, sym = opt.sym, f16_scales = true }
for b = 1, m:nblocks() do
  for _, n in ipairs(m:linear_names()) do
    local W = m:weight(b, n)
    -- 3-bit GPTQ needs widths that are multiples of 32: the 172-wide linears stay float (fp16 in the file)
    if opt.bits ~= 3 or (W:size(1) % 32 == 0 and W:size(2) % 32 == 0) then m:set_linear(b, n, qf.rtn(W, g)) end
  end
end
m:save(opt.dest .. "/gptq", { format = "gptq" })
m:save(opt.dest .. "/hf", { format = "hf" })
"""


MIXED = """
local opt = qf.options({ dest = "" })
local m = qf.load_model("../shared/models/stories260K")
local g4 = qf.grid{ bits = 4, group = 32, sym = true, f16_scales = true }
local g8 = qf.grid{ bits = 8, group = 32, sym = true, f16_scales = true }
local g2 = qf.grid{ bits = 2, group = -1, sym = false, f16_scales = true }
local g3 = qf.grid{ bits = 3, group = 32, sym = false, f16_scales = true }
for b = 1, m:nblocks() do
  for _, n in ipairs(m:linear_names()) do
    local g = (b == 2 and n == "v") and g8 or n == "down" and g2 or (b == 3 and n == "q") and g3 or g4
    if not (b == 4 and n == "o") then m:set_linear(b, n, qf.rtn(m:weight(b, n), g)) end  -- block 4 'o' stays float
  end
end
m:save(opt.dest .. "/gptq", { format = "gptq" })
m:save(opt.dest .. "/hf", { format = "hf" })
"""

# A mixture of experts (stories260K split into 4 Mixtral experts): every expert's gate/up at 4 bits
# g32 sym, its down (43 wide) per channel, the router left in full precision — the GPTQModel
# module names transformers saves (block_sparse_moe.experts.E.w1/w3/w2, block_sparse_moe.gate).
MOE = """
local opt = qf.options({ dest = "" })
local m = qf.load_model("../shared/models/stories260K"):to_moe{ experts = 4, used = 2 }
local g4 = qf.grid{ bits = 4, group = 32, sym = true, f16_scales = true }
local gc = qf.grid{ bits = 4, group = -1, sym = false, f16_scales = true }
for b = 1, m:nblocks() do
  for _, n in ipairs(m:linear_names()) do
    if n ~= "router" then m:set_linear(b, n, qf.rtn(m:weight(b, n), n:match("down$") and gc or g4)) end
  end
end
m:save(opt.dest .. "/gptq", { format = "gptq" })
m:save(opt.dest .. "/hf", { format = "hf" })
"""


def rule_for(dynamic, module, base):
    """GPTQModel's reading of `dynamic`: the first key whose regex re.match-es the module name;
    "-:" not quantized, "+:" (or no prefix) overrides of the base config."""
    import re
    for key, over in dynamic.items():
        neg, pat = key.startswith("-:"), key[2:] if key[:2] in ("+:", "-:") else key
        if re.match(pat, module):
            return None if neg else {**base, **over}
    return base


def unpack(words, bits, n):
    """words: int32 array [nwords, cols] packed along axis 0 as a little-endian bitstream -> [n, cols]."""
    import numpy as np
    w = words.astype(np.uint32).astype(np.uint64)
    nw, cols = w.shape
    out = np.zeros((n, cols), dtype=np.int64)
    for i in range(n):
        bit = i * bits
        k, off = divmod(bit, 32)
        v = w[k] >> np.uint64(off)
        if off + bits > 32:
            v = v | (w[k + 1] << np.uint64(32 - off))
        out[i] = (v & np.uint64((1 << bits) - 1)).astype(np.int64)
    return out


def main():
    py = os.path.join(VENV, "bin", "python")
    if sys.executable != py and os.path.exists(py):
        os.execv(py, [py] + sys.argv)
    import numpy as np
    from safetensors.numpy import load_file
    script = os.path.join(ROOT, "runs", "verify", "gptq_export.lua")
    os.makedirs(os.path.dirname(script), exist_ok=True)
    open(script, "w").write(EXPORT)
    worst_all, checked = 0.0, 0
    for bits in (2, 3, 4, 8):
        for sym in (True, False):
            for group in (32, -1):
                out = os.path.join(ROOT, "runs", "verify", f"gptq_{bits}_{'sym' if sym else 'asym'}_{group}")
                r = subprocess.run([QF, "run", script, f"bits={bits}", f"group={group}", f"sym={'true' if sym else 'false'}",
                                    "dest=" + out, "out=" + out + "/run"], cwd=ROOT, capture_output=True, text=True)
                if r.returncode != 0:
                    msg = (r.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"{bits}-bit {'sym' if sym else 'asym'} g{group}: refused by qforge: {msg}")
                    continue
                cfg = json.load(open(os.path.join(out, "gptq", "config.json")))["quantization_config"]
                q = load_file(os.path.join(out, "gptq", "model.safetensors"))
                ref = load_file(os.path.join(out, "hf", "model.safetensors"))
                worst = 0.0
                for name in ref:
                    if not name.endswith("proj.weight"):
                        continue
                    base = name[: -len(".weight")]
                    W = ref[name].astype(np.float64)
                    out_f, in_f = W.shape
                    if rule_for(cfg.get("dynamic", {}), base, {}) is None:  # float (3-bit: a width not a multiple of 32)
                        worst = max(worst, float(np.abs(q[name].astype(np.float64) - W.astype(np.float16).astype(np.float64)).max()))
                        continue
                    codes = unpack(q[base + ".qweight"], bits, in_f)                       # [in, out]
                    zeros = unpack(q[base + ".qzeros"].T, bits, out_f).T + 1              # v1: stored zero - 1
                    scales = q[base + ".scales"].astype(np.float64)                       # [ngroups, out]
                    g_idx = q[base + ".g_idx"].astype(np.int64)
                    deq = scales[g_idx] * (codes - zeros[g_idx])                          # [in, out]
                    worst = max(worst, float(np.abs(deq.T - W).max()))
                worst_all = max(worst_all, worst)
                checked += 1
                print(f"{bits}-bit {'sym' if sym else 'asym'} g{group}: group_size {cfg['group_size']}, "
                      f"max |numpy-unpacked GPTQ - qforge| = {worst:.3e}")
    # Mixed: per-linear bits/group/sym through `dynamic`, one linear kept in fp16; then the MoE.
    for case, src in (("mixed", MIXED), ("moe", MOE)):
        checked, worst_all = compare_mixed(case, src, script, checked, worst_all, np, load_file)
    ok = checked > 0 and worst_all == 0.0
    print(f"{checked} exports compared: " + ("OK" if ok else "MISMATCH"))
    sys.exit(0 if ok else 1)


def compare_mixed(case, src, script, checked, worst_all, np, load_file):
    out = os.path.join(ROOT, "runs", "verify", "gptq_" + case)
    open(script, "w").write(src)
    r = subprocess.run([QF, "run", script, "dest=" + out, "out=" + out + "/run"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(case + " export failed: " + r.stderr)
    cfg = json.load(open(os.path.join(out, "gptq", "config.json")))["quantization_config"]
    base = {"bits": cfg["bits"], "group_size": cfg["group_size"], "sym": cfg["sym"]}
    q = load_file(os.path.join(out, "gptq", "model.safetensors"))
    ref = load_file(os.path.join(out, "hf", "model.safetensors"))
    worst, kinds = 0.0, {}
    for name in ref:
        # every block linear: 2-d weights under model.layers (norms are 1-d)
        if not (name.startswith("model.layers.") and name.endswith(".weight") and ref[name].ndim == 2):
            continue
        mod = name[: -len(".weight")]
        rule = rule_for(cfg.get("dynamic", {}), mod, base)
        W = ref[name].astype(np.float64)
        if rule is None:  # kept in fp16
            d = np.abs(q[name].astype(np.float64) - W.astype(np.float16).astype(np.float64)).max()
            kinds["fp16"] = kinds.get("fp16", 0) + 1
        else:
            bits = rule["bits"]
            out_f, in_f = W.shape
            codes = unpack(q[mod + ".qweight"], bits, in_f)
            zeros = unpack(q[mod + ".qzeros"].T, bits, out_f).T + 1
            scales = q[mod + ".scales"].astype(np.float64)
            g_idx = q[mod + ".g_idx"].astype(np.int64)
            assert scales.shape[0] == (1 if rule["group_size"] == -1 else -(-in_f // rule["group_size"])), mod
            d = np.abs((scales[g_idx] * (codes - zeros[g_idx])).T - W).max()
            k = f"{bits}-bit g{rule['group_size']} {'sym' if rule['sym'] else 'asym'}"
            kinds[k] = kinds.get(k, 0) + 1
        worst = max(worst, float(d))
    checked += 1
    worst_all = max(worst_all, worst)
    print(f"{case} (dynamic {json.dumps(cfg.get('dynamic'))}): linears {kinds}, max |numpy-unpacked GPTQ - qforge| = {worst:.3e}")
    return checked, worst_all


if __name__ == "__main__":
    main()
