#!/usr/bin/env python3
"""qforge's compressed-tensors pack-quantized exports, decompressed by the compressed-tensors package
itself (PackedQuantizationCompressor.decompress with the QuantizationScheme of the config group whose
targets match the module, matched by compressed_tensors' own match_name), against the weights qforge
evaluated (an HF fake-quant export of the same model in memory), element by element. decompress
computes (q − z)·scale in the scale's dtype (fp16), so the decompressed weight must equal the fp16
rounding of qforge's value exactly (codes, zeros and fp16 scales are stored exactly); the largest
difference from qforge's f32 value is printed too.

  python3 scripts/verify_compressed_tensors.py [--venv build/venv-ct]

Cases (stories260K, RTN on fp16-scale grids): 4-bit sym per channel; 3-bit asym per channel (the
dense 3-bit packing across word boundaries); 8-bit sym per channel; a mixed model (q/k/v/o/gate/up
4-bit asym g32, down 2-bit asym per channel, block 2's v in full precision: three config groups
and an `ignore` entry). Installs compressed-tensors (with torch, from PyPI) into the venv when
missing. Prints one line per case; exit 1 on any difference.
"""
import argparse, json, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CT_VERSION = "0.20.1"

EXPORT = """
local opt = qf.options({ case = "", dest = "" })
local m = qf.load_model("../shared/models/stories260K")
local function g(bits, sym, group) return qf.grid{ bits = bits, sym = sym, group = group, f16_scales = true } end
local cases = {
  sym4 = function(b, n) return g(4, true, -1) end,
  asym3 = function(b, n) return g(3, false, -1) end,
  sym8 = function(b, n) return g(8, true, -1) end,
  mixed = function(b, n)
    if b == 2 and n == "v" then return nil end
    if n == "down" then return g(2, false, -1) end
    return g(4, false, 32)
  end,
}
local pick = cases[opt.case]
for b = 1, m:nblocks() do
  for _, n in ipairs(m:linear_names()) do
    local spec = pick(b, n)
    if spec then m:set_linear(b, n, qf.rtn(m:weight(b, n), spec)) end
  end
end
m:save(opt.dest .. "/ct", { format = "compressed-tensors" })
m:save(opt.dest .. "/hf", { format = "hf" })
"""


def ensure_venv(venv):
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
    r = subprocess.run([py, "-c", "import compressed_tensors, safetensors, numpy"], capture_output=True)
    if r.returncode != 0:
        subprocess.check_call([py, "-m", "pip", "install", "-q", f"compressed-tensors=={CT_VERSION}", "safetensors", "numpy"])
    if os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(py, [py] + sys.argv)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=os.path.join(ROOT, "build", "venv-ct"))
    ap.add_argument("--qforge", default=os.path.join(ROOT, "build", "qforge"))
    a = ap.parse_args()
    ensure_venv(os.path.abspath(a.venv))
    import torch
    import compressed_tensors
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.utils.match import match_name
    from safetensors.torch import load_file
    print(f"compressed-tensors {compressed_tensors.__version__}, torch {torch.__version__}")
    work = os.path.join(ROOT, "runs", "verify", "compressed_tensors")
    os.makedirs(work, exist_ok=True)
    script = os.path.join(work, "export.lua")
    open(script, "w").write(EXPORT)
    ok = True
    for case in ["sym4", "asym3", "sym8", "mixed"]:
        dest = os.path.join(work, case)
        r = subprocess.run([a.qforge, "run", script, "case=" + case, "dest=" + dest, "out=" + dest + "/run"], cwd=ROOT,
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"qforge export {case} failed:\n{r.stderr}")
        qc = json.load(open(os.path.join(dest, "ct", "config.json")))["quantization_config"]
        schemes = {name: QuantizationScheme.model_validate(grp) for name, grp in qc["config_groups"].items()}
        sd = load_file(os.path.join(dest, "ct", "model.safetensors"))
        ref = load_file(os.path.join(dest, "hf", "model.safetensors"))
        worst, worst_f32, n, ignored, used = 0.0, 0.0, 0, 0, set()
        for name, W in ref.items():
            if not name.endswith("proj.weight"):
                continue
            mod = name[: -len(".weight")]
            if any(match_name(mod, t) for t in qc["ignore"]):
                d = (sd[name].double() - W.half().double()).abs().max().item()  # kept in fp16
                ignored += 1
            else:
                hits = [g for g, s in schemes.items() if any(match_name(mod, t) for t in s.targets)]
                if len(hits) != 1:
                    print(f"  {mod}: matched by config groups {hits} (expected exactly one)")
                    ok = False
                    continue
                used.add(hits[0])
                st = {k[len(mod) + 1:]: v for k, v in sd.items() if k.startswith(mod + ".")}
                out = PackedQuantizationCompressor.decompress(st, schemes[hits[0]])["weight"]
                # decompress computes in the scale's dtype (fp16): the fp16 rounding of qforge's value
                if out.dtype != torch.float16:
                    print(f"  {mod}: decompressed to {out.dtype}, expected float16")
                    ok = False
                d = (out.double() - W.half().double()).abs().max().item()
                worst_f32 = max(worst_f32, (out.double() - W.double()).abs().max().item())
            worst = max(worst, d)
            n += 1
        good = worst == 0.0 and n == 35
        ok &= good
        print(f"{case}: {n} linears ({ignored} ignored), config groups used {sorted(used)}, "
              f"max |decompressed - fp16(qforge)| = {worst:.3e} {'OK' if good else 'MISMATCH'} "
              f"(max |decompressed - qforge f32| = {worst_f32:.3e}: the fp16 rounding of the product)")
    print("all identical" if ok else "DIFFERENCES FOUND")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
