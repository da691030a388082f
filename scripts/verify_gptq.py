#!/usr/bin/env python3
"""Unpacks qforge's GPTQ exports with safetensors + numpy (no qforge code) and compares the
dequantized weights with the fake-quant HF export of the same quantized model.

  python3 scripts/verify_gptq.py            # stories260K, RTN at 2/3/4/8 bits, sym/asym, g32/per-channel
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
for b = 1, m:nblocks() do for _, n in ipairs(m:linear_names()) do m:set_linear(b, n, qf.rtn(m:weight(b, n), g)) end end
m:save(opt.dest .. "/gptq", { format = "gptq" })
m:save(opt.dest .. "/hf", { format = "hf" })
"""


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
    ok = checked > 0 and worst_all == 0.0
    print(f"{checked} exports compared: " + ("OK" if ok else "MISMATCH"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
