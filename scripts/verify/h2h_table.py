#!/usr/bin/env python3
"""The head-to-head table of scripts/kquant_head_to_head.sh DIR (markdown on stdout).

  build/venv-verify/bin/python scripts/verify/h2h_table.py DIR

One row per GGUF in DIR (llama_*.gguf, qforge_*.gguf): the tensor types its linears hold (gguf-py's
reader, counted), bits per weight over the linears (stored bytes × 8 / weights), llama-perplexity's
WikiText-2 KLD against the F32 base (mean ± stderr, 99th percentile, same top token), WikiText-2
perplexity, held-out PTB perplexity, and the pipeline's wall time (DIR/wall.txt; llama.cpp's
imatrix time is added to each imatrix file's).
"""
import glob, json, os, sys
from collections import Counter


def linears(path):
    import gguf
    types, nbytes, nweights = Counter(), 0, 0
    for t in gguf.GGUFReader(path).tensors:
        if not t.name.startswith("blk.") or "norm" in t.name:
            continue
        types[t.tensor_type.name] += 1
        nbytes += int(t.n_bytes)
        nweights += int(t.n_elements)
    return types, 8.0 * nbytes / nweights


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "runs/h2h"
    wall = {}
    if os.path.exists(os.path.join(d, "wall.txt")):
        for line in open(os.path.join(d, "wall.txt")):
            k, v = line.split()
            wall[k] = float(v)
    rows = []
    for f in sorted(glob.glob(os.path.join(d, "*.gguf"))):
        name = os.path.basename(f)[:-5]
        if name.startswith("imatrix"):
            continue
        wj, pj = os.path.join(d, name + ".wiki.json"), os.path.join(d, name + ".ptb.json")
        if not (os.path.exists(pj) and (os.path.exists(wj) or name == "base_f32")):
            continue
        types, bpw = linears(f)
        p = json.load(open(pj))
        w = json.load(open(wj)) if os.path.exists(wj) else None
        secs = wall.get(name)
        if secs is not None and name.startswith("llama_") and not name.endswith("_noimat"):
            secs += wall.get("imatrix", 0.0)
        rows.append((name, ", ".join(f"{n}×{k}" for k, n in sorted(types.items())), bpw, w, p, secs))
    print("| file | linear types | bits/weight (linears) | WikiText-2 mean KLD | 99% KLD | same top | WikiText-2 PPL | PTB held-out PPL | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, types, bpw, w, p, secs in rows:
        if w and "kld" in w:
            k = w["kld"]
            kl = f"{k['mean']:.4f} ± {k['mean_stderr']:.4f}", f"{k['p99']:.3f}", f"{100 * k['same_top']:.2f}%", f"{w['ppl']:.3f}"
        elif w:
            kl = "—", "—", "—", f"{w.get('ppl', float('nan')):.3f}"
        else:
            kl = "—", "—", "—", "—"
        print(f"| {name} | {types} | {bpw:.3f} | {kl[0]} | {kl[1]} | {kl[2]} | {kl[3]} | {p['ppl']:.3f} | "
              f"{'' if secs is None else f'{secs:.0f}'} |")


if __name__ == "__main__":
    main()
