#!/usr/bin/env python3
"""Loads qforge's mixed GPTQ export (per-linear bits/group/sym in GPTQModel's `dynamic`, one
linear kept in fp16) with GPTQModel itself on the CPU (its torch kernel), and compares
(1) every linear's weights as GPTQModel dequantizes them with qforge's values (the HF fake-quant
export of the same model), and (2) the logits of GPTQModel's model with transformers' logits of
that fake-quant export, on the same tokens.

  build/venv-ct/bin/python scripts/verify_gptqmodel.py

Needs build/venv-ct with torch, transformers and gptqmodel (`pip install gptqmodel` and its
dependencies; no CUDA build: BUILD_CUDA_EXT=0) and build/qforge. The export is the mixed case of
scripts/verify_gptq.py (stories260K: 4-bit g32 sym, block 2 `v` 8-bit g32, every `down` 3-bit
per-channel asym, block 4 `o` fp16).
"""
import importlib.util, json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QF = os.environ.get("QFORGE", os.path.join(ROOT, "build", "qforge"))


def export(out):
    spec = importlib.util.spec_from_file_location("verify_gptq", os.path.join(ROOT, "scripts", "verify_gptq.py"))
    vg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vg)
    os.makedirs(out, exist_ok=True)
    script = os.path.join(out, "export_mixed.lua")
    open(script, "w").write(vg.MIXED)
    r = subprocess.run([QF, "run", script, "dest=" + out, "out=" + out + "/run"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("mixed export failed: " + r.stderr)


def main():
    import torch
    from safetensors.numpy import load_file
    import numpy as np
    import gptqmodel
    from gptqmodel import GPTQModel, BACKEND
    from transformers import AutoModelForCausalLM

    out = os.path.join(ROOT, "runs", "verify", "gptqmodel_mixed")
    export(out)
    cfg = json.load(open(os.path.join(out, "gptq", "config.json")))["quantization_config"]
    print(f"gptqmodel {gptqmodel.__version__}, torch {torch.__version__}; dynamic: {json.dumps(cfg.get('dynamic'))}")
    model = GPTQModel.load(os.path.join(out, "gptq"), device="cpu", backend=BACKEND.TORCH, dtype=torch.float16)
    ref = load_file(os.path.join(out, "hf", "model.safetensors"))

    # (1) Weights as GPTQModel's kernel dequantizes them.
    worst, kinds = 0.0, {}
    for name, mod in model.model.named_modules():
        key = name + ".weight"
        if key not in ref or not name.endswith("proj"):
            continue
        W = ref[key].astype(np.float64)
        if hasattr(mod, "dequantize_weight"):
            deq = mod.dequantize_weight().to(torch.float64).cpu().numpy()       # [in, out]
            if deq.shape != W.T.shape:
                sys.exit(f"{name}: GPTQModel dequantized shape {deq.shape}, expected {W.T.shape}")
            want = W.T.astype(np.float16).astype(np.float64)                    # its fp16 arithmetic
            d = float(np.abs(deq - want).max())
            k = f"{mod.bits}-bit g{mod.group_size}"
        else:
            d = float(np.abs(mod.weight.detach().to(torch.float64).cpu().numpy() - W.astype(np.float16).astype(np.float64)).max())
            k = f"fp16 {type(mod).__name__}"
        kinds[k] = kinds.get(k, 0) + 1
        worst = max(worst, d)
    print(f"linears as GPTQModel loaded them: {kinds}")
    print(f"max |GPTQModel's dequantized weight - fp16(qforge's value)| = {worst:.3e}")

    # (2) Logits: GPTQModel's model against transformers on the fake-quant export (both fp32 math
    # would differ only by the fp16 weight rounding; compare in float32 after casting).
    ids = torch.tensor([[1, 400, 27, 300, 15, 99, 7, 250, 3, 128, 64, 11]])
    with torch.no_grad():
        a = model.model(ids).logits.float()
        hf = AutoModelForCausalLM.from_pretrained(os.path.join(out, "hf"), dtype=torch.float16)
        b = hf(ids).logits.float()
    dl = float((a - b).abs().max())
    rel = dl / float(b.abs().max())
    print(f"logits on {ids.shape[1]} tokens: max |GPTQModel - transformers(fake-quant fp16)| = {dl:.3e} ({rel:.2e} of max |logit|); "
          f"same argmax at {int((a.argmax(-1) == b.argmax(-1)).sum())}/{ids.shape[1]} positions")
    ok = worst == 0.0 and rel < 1e-2 and sum(kinds.values()) == 35
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
