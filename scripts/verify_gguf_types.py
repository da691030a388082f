#!/usr/bin/env python3
"""qforge's GGML block decoders and Q5 encoders against llama.cpp's gguf-py (numpy dequantizers,
no qforge code), bit for bit.

  python3 scripts/verify_gguf_types.py [--build build] [--venv build/venv-verify] [--work runs/verify/gguf_types]

1. qforge writes stories260K, RTN-quantized on grids that map exactly, as Q5_0 and Q5_1 (and
   Q4_0, Q4_1, Q8_0) GGUFs; gguf-py dequantizes every tensor, which must equal both the weights
   qforge evaluated (an F32 export of the quantized model in memory) and what qforge decodes
   from the file (the file loaded back and exported F32).
2. For every block type qforge reads (Q4_0 … Q6_K, Q2_K/Q3_K/Q5_K included, which qforge cannot
   write), gguf-py's GGUFWriter writes a tiny llama whose linears are random raw blocks (fp16
   scale fields set to finite random values); qforge loads it and exports F32; gguf-py's
   dequantization of the raw blocks must equal it.
3. qforge's K-quant exports (Q2_K … Q6_K): a one-block llama of width 256 with heavy-tailed F32
   weights (written by gguf-py), quantized by qforge on K-quant grids (RTN with the reference fit,
   and with the importance-weighted fit under random column importances) and written in that K
   type; gguf-py dequantizes every tensor, which must equal the weights qforge evaluated and
   qforge's decoding of the file.
4. When llama.cpp's llama-quantize is built (scripts/verify_llamacpp.sh build): it quantizes the
   same F32 llama with --pure to each K type (its reference quantizers, no imatrix); gguf-py's
   dequantization of its linears is compared with qforge's reference fit (step 3, importance
   none): the number of values that differ is printed (ties decided differently inside the
   searches are possible, see docs/methods.md#kquant-grids).
5. When scripts/fetch-models.sh gemma3 has fetched models/gemma-3-270m.Q4_K_M.gguf: gguf-py
   dequantizes every tensor of the real file; qforge's decoding of the same tensors comes from
   build/test_gguf's Gemma test case (QF_GGUF_DUMP_DIR: each tensor's f32 values). Prints, per
   tensor type, the tensors, elements, differing values and the max abs difference, and the
   per-type checksums that test case pins (sum of bits(x_i)·(2i + 1) mod 2^64).
Prints one line per file and exits 1 on any difference. gguf and numpy are installed into the venv
when missing (PyPI).
"""
import argparse, os, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPORT = """
local opt = qf.options({ dest = "" })
local m = qf.load_model("../shared/models/stories260K")
-- dtype, grid: each grid maps exactly onto its block type with fp16 scales
local cases = {
  { "Q5_0", { bits = 5, sym = true, group = 32 } },
  { "Q5_0", { bits = 5, sym = true, group = 32, mapping = "llamacpp" }, "llamacpp" },
  { "Q5_1", { bits = 4, group = 32 } },
  { "Q5_1", { bits = 5, sym = true, group = 32 }, "sym5" },
  { "Q4_0", { bits = 4, sym = true, group = 32 } },
  { "Q4_1", { bits = 4, group = 32 } },
  { "Q8_0", { bits = 8, sym = true, group = 32 } },
}
for _, c in ipairs(cases) do
  local spec = c[2]
  spec.f16_scales = true
  local g = qf.grid(spec)
  local q = m:clone()
  for b = 1, q:nblocks() do for _, n in ipairs(q:linear_names()) do q:set_linear(b, n, qf.rtn(q:weight(b, n), g)) end end
  local name = opt.dest .. "/" .. c[1] .. (c[3] and ("_" .. c[3]) or "")
  q:save(name .. ".gguf", { format = "gguf", dtype = c[1] })
  q:save(name .. ".mem_f32.gguf", { format = "gguf", dtype = "F32" })
  qf.load_model(name .. ".gguf"):save(name .. ".back_f32.gguf", { format = "gguf", dtype = "F32" })
  print("wrote " .. name .. ".gguf")
end
"""

EXPORT_K = """
local opt = qf.options({ src = "", dest = "" })
local m = qf.load_model(opt.src)
local rng = qf.rng(5)
for _, t in ipairs({ "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K" }) do
  for _, imp in ipairs({ "none", "diag" }) do
    local g = qf.grid{ ktype = t, importance = imp }
    local q = m:clone()
    for b = 1, q:nblocks() do
      for _, n in ipairs(q:linear_names()) do
        local W = q:weight(b, n)
        q:set_linear(b, n, imp == "none" and qf.rtn(W, g) or qf.rtn(W, g, rng:rand({ W:size(2) }) * 4 + 0.01))
      end
    end
    local name = opt.dest .. "/" .. t .. "_" .. imp
    q:save(name .. ".gguf", { format = "gguf", dtype = t })
    q:save(name .. ".mem_f32.gguf", { format = "gguf", dtype = "F32" })
    qf.load_model(name .. ".gguf"):save(name .. ".back_f32.gguf", { format = "gguf", dtype = "F32" })
    print("wrote " .. name .. ".gguf")
  end
end
"""

RELOAD = """
local opt = qf.options({ src = "", dest = "" })
qf.load_model(opt.src):save(opt.dest, { format = "gguf", dtype = "F32" })
"""

# Byte offsets of the fp16 fields (scales, mins) in each block type (formats.md's layouts).
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
              "IQ4_NL": [0], "IQ4_XS": [0]}

GEMMA = os.path.join(ROOT, "models", "gemma-3-270m.Q4_K_M.gguf")


def ensure_venv(venv):
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
    r = subprocess.run([py, "-c", "import gguf, numpy"], capture_output=True)
    if r.returncode != 0:
        subprocess.check_call([py, "-m", "pip", "install", "-q", "gguf", "numpy"])
    if os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(py, [py] + sys.argv)


def run_qforge(qf, script_text, work, name, args):
    script = os.path.join(work, name + ".lua")
    with open(script, "w") as f:
        f.write(script_text)
    r = subprocess.run([qf, "run", script] + args + ["out=" + os.path.join(work, "run_" + name)], cwd=ROOT,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"qforge run {name} failed:\n{r.stdout}\n{r.stderr}")


def tensors(path):
    """name -> (type name, gguf-py's dequantized float32 array)"""
    import numpy as np
    import gguf
    out = {}
    for t in gguf.GGUFReader(path).tensors:
        deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
        out[t.name] = (t.tensor_type.name, deq.reshape(-1))
    return out


def differing(a, b):
    """number of elements whose float32 bits differ (shape mismatch: all)"""
    import numpy as np
    if a.shape != b.shape:
        return max(a.size, b.size)
    return int(np.count_nonzero(a.view(np.uint32) != b.view(np.uint32)))


def compare(label, quant, ref, only_linears=False):
    """every tensor of the file `quant` (gguf-py dequantized) against the F32 file `ref`"""
    q, r = tensors(quant), tensors(ref)
    bad, n, types = 0, 0, set()
    for name, (ty, v) in q.items():
        if only_linears and not (name.startswith("blk.") and "norm" not in name):
            continue
        types.add(ty)
        d = differing(v, r[name][1])
        n += v.size
        if d:
            print(f"  {name} ({ty}): {d} of {v.size} values differ")
        bad += d
    print(f"{label}: {n} values in {len(q) if not only_linears else 'the linear'} tensors ({', '.join(sorted(types))}): "
          f"{'bit-identical' if bad == 0 else f'{bad} DIFFER'}")
    return bad == 0 and n > 0


def random_llama(path, tname, rng):
    """a one-block llama (dim 256, ffn 256, 2 heads, 1 kv head, vocab 8) whose linears are random raw `tname` blocks"""
    import numpy as np
    import gguf
    qt = gguf.GGMLQuantizationType[tname]
    elems, nbytes = gguf.GGML_QUANT_SIZES[qt]
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(16)
    w.add_embedding_length(256)
    w.add_block_count(1)
    w.add_feed_forward_length(256)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_dimension_count(128)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(8)
    w.add_file_type(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((8, 256)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(256, dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(256, dtype=np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(256, dtype=np.float32))
    shapes = {"attn_q": 256, "attn_k": 128, "attn_v": 128, "attn_output": 256, "ffn_gate": 256, "ffn_up": 256, "ffn_down": 256}
    for lin, rows in shapes.items():
        nblk = rows * 256 // elems
        raw = rng.integers(0, 256, size=(nblk, nbytes), dtype=np.uint8)
        for off in F16_FIELDS[tname]:  # finite scales of either sign, spanning several binades
            h = (rng.standard_normal(nblk) * np.exp2(rng.integers(-12, 0, nblk))).astype(np.float16)
            raw[:, off:off + 2] = h.view(np.uint8).reshape(nblk, 2)
        w.add_tensor(f"blk.0.{lin}.weight", raw.reshape(rows, -1), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def f32_llama(path, rng):
    """the random_llama shapes with heavy-tailed float32 weights (normal, every 37th value ×6)"""
    import numpy as np
    import gguf
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(16)
    w.add_embedding_length(256)
    w.add_block_count(1)
    w.add_feed_forward_length(256)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_dimension_count(128)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(8)
    w.add_file_type(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((8, 256)).astype(np.float32))
    w.add_tensor("output_norm.weight", np.ones(256, dtype=np.float32))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(256, dtype=np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(256, dtype=np.float32))
    shapes = {"attn_q": 256, "attn_k": 128, "attn_v": 128, "attn_output": 256, "ffn_gate": 256, "ffn_up": 256, "ffn_down": 256}
    for lin, rows in shapes.items():
        x = rng.standard_normal(rows * 256) * 0.02
        x[5::37] *= 6
        w.add_tensor(f"blk.0.{lin}.weight", x.reshape(rows, 256).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def checksum(v, start):
    """sum of bits(v_i)·(2(start + i) + 1) mod 2^64 (what test_gguf's Gemma case computes)"""
    import numpy as np
    bits = v.view(np.uint32).astype(np.uint64)
    w = np.arange(start, start + v.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return int((bits * w).sum(dtype=np.uint64))


def compare_gemma(build, work):
    """every tensor of the Gemma 3 270M file: gguf-py's dequantization against qforge's"""
    import numpy as np
    import gguf
    dump = os.path.join(work, "gemma_dump")
    os.makedirs(dump, exist_ok=True)
    test = os.path.join(build, "test_gguf")
    r = subprocess.run([test, "-tc=Gemma 3 270M*"], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, QF_GGUF_DUMP_DIR=dump))
    if r.returncode != 0 and "checksum" not in r.stdout:
        sys.exit(f"{test} failed:\n{r.stdout}\n{r.stderr}")
    per = {}  # type -> [tensors, elements, differing, max abs diff, checksum]
    for t in gguf.GGUFReader(GEMMA).tensors:
        ty = t.tensor_type.name
        ref = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(-1)
        path = os.path.join(dump, t.name + ".f32")
        ours = np.fromfile(path, dtype=np.float32)
        os.remove(path)
        p = per.setdefault(ty, [0, 0, 0, 0.0, 0])
        p[4] = (p[4] + checksum(ref, p[1])) % (1 << 64)
        p[0] += 1
        p[1] += ref.size
        if ours.shape != ref.shape:
            print(f"  {t.name} ({ty}): {ours.size} values from qforge, {ref.size} from gguf-py")
            p[2] += ref.size
            p[3] = float("inf")
            continue
        d = differing(ours, ref)
        if d:
            print(f"  {t.name} ({ty}): {d} of {ref.size} values differ")
        p[2] += d
        p[3] = max(p[3], float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0)
    ok = True
    for ty, (nt, ne, d, mx, cs) in sorted(per.items()):
        print(f"gemma-3-270m.Q4_K_M.gguf {ty}: {nt} tensors, {ne} values, {d} differ, max |qforge − gguf-py| = {mx:g}; "
              f"checksum {cs}")
        ok &= d == 0
    print("test_gguf's Gemma case: " + ("passed" if r.returncode == 0 else "FAILED (update its checksums if the lines above are bit-identical)"))
    return ok and r.returncode == 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--venv", default=os.path.join(ROOT, "build", "venv-verify"))
    ap.add_argument("--llama-quantize", default=os.path.join(ROOT, "build", "llamacpp", "build", "bin", "llama-quantize"))
    ap.add_argument("--work", default=os.path.join(ROOT, "runs", "verify", "gguf_types"))
    a = ap.parse_args()
    ensure_venv(os.path.abspath(a.venv))
    import numpy as np
    import gguf
    qf = os.path.join(os.path.abspath(a.build), "qforge")
    work = os.path.abspath(a.work)
    os.makedirs(work, exist_ok=True)
    ver = getattr(gguf, "__version__", None)
    if ver is None:
        from importlib.metadata import version
        ver = version("gguf")
    print(f"gguf-py {ver}, numpy {np.__version__}; qforge {qf}")
    ok = True

    print("-- 1. qforge's exact exports (stories260K, RTN on fp16-scale grids)")
    run_qforge(qf, EXPORT, work, "export", ["dest=" + work])
    for name in ["Q5_0", "Q5_0_llamacpp", "Q5_1", "Q5_1_sym5", "Q4_0", "Q4_1", "Q8_0"]:
        base = os.path.join(work, name)
        ok &= compare(f"{name}.gguf vs the quantized model in memory", base + ".gguf", base + ".mem_f32.gguf", only_linears=True)
        ok &= compare(f"{name}.gguf vs qforge's decoding of it", base + ".gguf", base + ".back_f32.gguf")

    print("-- 2. random raw blocks written by gguf-py, decoded by qforge")
    rng = np.random.default_rng(20)
    for tname in F16_FIELDS:
        src = os.path.join(work, f"random_{tname}.gguf")
        dst = os.path.join(work, f"random_{tname}.qforge_f32.gguf")
        random_llama(src, tname, rng)
        run_qforge(qf, RELOAD, work, "reload", ["src=" + src, "dest=" + dst])
        ok &= compare(f"random {tname} blocks", src, dst, only_linears=True)

    print("-- 3. qforge's K-quant exports (RTN on K-quant grids, reference and importance-weighted fits)")
    src = os.path.join(work, "f32_llama.gguf")
    f32_llama(src, rng)
    run_qforge(qf, EXPORT_K, work, "export_k", ["src=" + src, "dest=" + work])
    for t in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
        for imp in ["none", "diag"]:
            base = os.path.join(work, f"{t}_{imp}")
            ok &= compare(f"{t} ({imp}) .gguf vs the quantized model in memory", base + ".gguf", base + ".mem_f32.gguf", only_linears=True)
            ok &= compare(f"{t} ({imp}) .gguf vs qforge's decoding of it", base + ".gguf", base + ".back_f32.gguf")

    lq = os.path.abspath(a.llama_quantize)
    if os.path.exists(lq):
        print(f"-- 4. llama-quantize --pure (llama.cpp's reference K quantizers) against qforge's reference fit")
        for t in ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]:
            out = os.path.join(work, f"llama_{t}.gguf")
            r = subprocess.run([lq, "--pure", src, out, t, "1"], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"llama-quantize {t} failed:\n{r.stdout}\n{r.stderr}")
            ok &= compare(f"llama-quantize {t} vs qforge's reference fit", out, os.path.join(work, f"{t}_none.mem_f32.gguf"), only_linears=True)
    else:
        print(f"-- 4. skipped: no {lq} (scripts/verify_llamacpp.sh build)")

    if os.path.exists(GEMMA):
        print("-- 5. every tensor of the real Gemma 3 270M Q4_K_M file: gguf-py against qforge's decoding")
        ok &= compare_gemma(os.path.abspath(a.build), work)
    else:
        print(f"-- 5. skipped: no {GEMMA} (scripts/fetch-models.sh gemma3)")

    print("all identical" if ok else "DIFFERENCES FOUND")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
