#!/usr/bin/env python3
"""Checks qforge against HF transformers on CPU (run on demand; needs PyPI, not part of the tests).

  python3 scripts/verify_transformers.py smollm2   # SmolLM2 GGUF: logits on a prompt + WikiText-2 ppl (20 x 2048)
  python3 scripts/verify_transformers.py hf DIR    # an HF directory qforge exported: logits on a prompt

A venv with torch, transformers and gguf is created under build/venv-verify. qforge's numbers
come from `build/qforge run` of scripts/verify/dump_logits.lua and recipes/eval.lua.
"""
import json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "build", "venv-verify")
QF = os.environ.get("QFORGE", os.path.join(ROOT, "build", "qforge"))
PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside"


def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    if sys.executable != py:
        if not os.path.exists(py):
            subprocess.check_call([sys.executable, "-m", "venv", VENV])
            subprocess.check_call([py, "-m", "pip", "install", "-q", "numpy", "torch", "transformers", "gguf", "safetensors", "accelerate"])
        os.execv(py, [py] + sys.argv)


def qforge(args, out):
    subprocess.check_call([QF, "run"] + args + ["out=" + out], cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.load(open(os.path.join(out, "results.json")))


def compare_logits(model, qf_path, tmp):
    import numpy as np, torch
    r = qforge(["scripts/verify/dump_logits.lua", "model=" + qf_path, "prompt=" + PROMPT], tmp)
    ids = r["ids"]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].double().numpy()
    ours = np.array(r["logits"], dtype=np.float64)
    err = float(np.abs(ref - ours).max())
    print(f"logits on {len(ids)} tokens: max |qforge - transformers| = {err:.3e} (max |logit| {np.abs(ref).max():.2f})")
    return err


def wikitext_ppl(model, tok_ids, L=2048, windows=20):
    import torch, math
    nll, n = 0.0, 0
    with torch.no_grad():
        for w in range(windows):
            x = torch.tensor([tok_ids[w * L:(w + 1) * L]])
            logits = model(x).logits[0, :-1].double()
            lp = torch.log_softmax(logits, -1)
            nll -= lp.gather(1, x[0, 1:, None]).sum().item()
            n += L - 1
    return math.exp(nll / n), n


def main():
    ensure_venv()
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(os.cpu_count())
    what = sys.argv[1] if len(sys.argv) > 1 else "smollm2"
    tmp = os.path.join(ROOT, "runs", "verify")
    if what == "smollm2":
        gg = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
        if not os.path.exists(gg):
            sys.exit("run scripts/fetch-models.sh first")
        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gg), gguf_file=os.path.basename(gg), dtype=torch.float32)
        model.eval()
        err = compare_logits(model, gg, os.path.join(tmp, "smollm2_logits"))
        r = qforge(["scripts/verify/wiki_ids.lua", "model=" + gg, "windows=20", "seqlen=2048"], os.path.join(tmp, "smollm2_ids"))
        ppl, n = wikitext_ppl(model, r["ids"])
        print(f"WikiText-2 test, 20 x 2048 (qforge's token ids): transformers ppl {ppl:.4f} over {n} predictions; qforge ppl {r['ppl']:.4f}")
        ok = err < 1e-3 and abs(ppl - r["ppl"]) / ppl < 1e-4
    else:
        d = sys.argv[2]
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        model.eval()
        ok = compare_logits(model, d, os.path.join(tmp, "hf_logits")) < 1e-4
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
