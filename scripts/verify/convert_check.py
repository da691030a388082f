"""`verify_archs.py convert [CASES...]`: the tiny random models of verify_archs.py converted by
llama.cpp's OWN converter (convert_hf_to_gguf.py, outtype f32), then loaded by qforge: its logits on
the fixed prompt vs transformers' on the HF model, max abs difference <= 1e-4. An independent check of
qforge's GGUF loader conventions (which architectures' q/k rows the converter permutes, Gemma's +1
on norm gains, key names, sliding-window keys, head_dim / key_length, tied embeddings): qforge's own
GGUF export and reload (verify_archs.py (c)) cannot catch a convention it shares with itself.

The converter needs a tokenizer in the HF directory: the Llama-2 SentencePiece model
(../shared/models/llama2-tokenizer/tokenizer.model) is copied in for every architecture (the
converter's Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2 and Gemma 3 classes all take a
tokenizer.model first). The models keep their 512-token vocabulary: the converter's SentencePiece
reader keeps ids < config.vocab_size (warning "ignore tokens from 512"), so the GGUF vocabulary is the
first 512 Llama-2 pieces, and the logits stay small.

What llama.cpp cannot represent the converter drops silently (a sliding window in its "llama" and
"qwen2"/"qwen3" architectures; Gemma 3's layer_types, for which llama.cpp assumes every 6th layer
global; Gemma 3's query_pre_attn_scalar, for which llama.cpp uses head_dim). For those cases the
GGUF is a different model from the HF one, and qforge (which reads a GGUF as llama.cpp does) is
expected to differ from transformers: the case is then also compared with transformers on the same
weights with the config as llama.cpp reads it (ALT below), and is OK when that matches, the expected
difference being reported. The GGUF's attention / sliding-window keys are printed per case.

Environment: LLAMACPP_SRC (default build/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp: its
convert_hf_to_gguf.py, conversion/ and gguf-py/), run with the venv's python (torch, transformers,
sentencepiece, protobuf).
"""
import json, os, re, shutil, subprocess, sys

# Cases for this mode only (not part of `all`): what the converter and llama.cpp CAN represent.
EXTRA = {
    "gemma3-p6": ("Gemma3TextConfig", dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                                           head_dim=32, query_pre_attn_scalar=32, sliding_window=8, num_hidden_layers=6,
                                           layer_types=["sliding_attention"] * 5 + ["full_attention"], final_logit_softcapping=3.0,
                                           attn_logit_softcapping=None),
                  "gemma3 with llama.cpp's layer pattern (5 sliding : 1 global, 6 layers) and query_pre_attn_scalar = head_dim", None),
}

# case: (config overrides giving the model as the converter's GGUF describes it, why)
ALT = {
    "mistral": (dict(sliding_window=None),
                "the converter writes no sliding window for MistralForCausalLM (GGUF arch 'llama', which has none in llama.cpp)"),
    "qwen2": (dict(use_sliding_window=False, layer_types=["full_attention"] * 3),
              "the converter writes no sliding window for Qwen2ForCausalLM (llama.cpp's qwen2 has none)"),
    "qwen3-swa": (dict(use_sliding_window=False, layer_types=["full_attention"] * 3),
                  "the converter writes no sliding window for Qwen3ForCausalLM (llama.cpp's qwen3 has none)"),
    "gemma3": (dict(layer_types=["sliding_attention"] * 4, query_pre_attn_scalar=32),
               "the converter writes no layer pattern for Gemma 3 (llama.cpp assumes 5 sliding : 1 global, so layers 0-3 all "
               "slide; HF's layer 1 is global) and no query_pre_attn_scalar (llama.cpp scales by head_dim^-1/2 = 32^-1/2, HF by 24^-1/2)"),
    "phi3": (dict(sliding_window=None),
             "llama.cpp's phi3 ignores phi3.attention.sliding_window ('Phi SWA is currently disabled'), and qforge's GGUF loader "
             "follows it (kGgufArchs ignores_window)"),
    "mixtral": (dict(sliding_window=None),
                "the converter writes no sliding window for MixtralForCausalLM (GGUF arch 'llama', which has none in llama.cpp)"),
    "gemma3-gguf": (dict(layer_types=["sliding_attention"] * 4),
                    "the converter writes no layer pattern for Gemma 3 (llama.cpp assumes 5 sliding : 1 global, so layers 0-3 "
                    "all slide; HF's layer 1 is global)"),
}

META_KEYS = re.compile(r"\.(attention\.(sliding_window.*|key_length|value_length|head_count.*|logit_softcapping|scale)|"
                       r"attn_logit_softcapping|final_logit_softcapping|rope\.(freq_base.*|dimension_count)|block_count|vocab_size)$")


# Phi-3's own tokenizer reader (conversion/phi.py set_vocab) does not truncate the SentencePiece
# vocabulary to config.vocab_size (IndexError at tokens[token_id] with 512): these cases get the
# tokenizer's 32000 here.
VOCAB = {"phi3": 32000, "phi3-nowin": 32000}

# Known gaps in qforge's GGUF loader: the words of its refusal, and what is missing. Such a case is
# reported (GAP), not counted as a mismatch; once qforge reads it, it is compared like the others.
QF_GAPS = {c: ("metadata 'general.architecture' = 'phi3' is not supported",
               "qforge's GGUF loader has no 'phi3' (engine/model/arch.cpp kGgufArchs): the converter writes "
               "general.architecture=phi3 with fused blk.N.attn_qkv.weight [q;k;v rows] and blk.N.ffn_up.weight [gate;up rows, 2*ff], "
               "rope.dimension_count, attention.sliding_window (0 = none)") for c in ("phi3", "phi3-nowin")}

# Cases the converter must refuse, with the words its log must contain.
EXPECT_REFUSAL = {"gemma3-attncap": 'assert hparams.get("attn_logit_softcapping") is None',
                  # its Mixtral (LlamaModel) class merges only block_sparse_moe.experts.E.w1/w2/w3, not transformers' fused layout
                  "mixtral-fused": "Can not map tensor 'model.layers.0.mlp.experts.gate_up_proj'"}


def src_dir(root):
    return os.environ.get("LLAMACPP_SRC", os.path.join(root, "build", "llamacpp", "llama_cpp_python-0.3.36", "vendor", "llama.cpp"))


def convert(root, hf, out, log):
    """Runs convert_hf_to_gguf.py; returns None or the converter's error (its last exception line)."""
    src = src_dir(root)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(src, "gguf-py"), src] +
                                                      ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    r = subprocess.run([sys.executable, os.path.join(src, "convert_hf_to_gguf.py"), hf, "--outfile", out, "--outtype", "f32"],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    open(log, "w").write(r.stdout)
    if r.returncode == 0 and os.path.exists(out):
        return None
    lines = [l for l in r.stdout.strip().splitlines() if l.strip()]
    exc = [i for i, l in enumerate(lines) if re.match(r"^\w*(Error|Exception)\b", l) or l.startswith("ERROR:")]
    if not exc:
        return lines[-1].strip() if lines else f"exit status {r.returncode}"
    i = exc[-1]
    where = [l.strip() for l in lines[max(0, i - 4):i] if l.startswith("  File ")]
    src_line = lines[i - 1].strip() if i > 0 and not lines[i - 1].startswith("  File ") and set(lines[i - 1].strip()) != {"^"} else ""
    if not src_line and i > 1 and set(lines[i - 1].strip()) <= set("^~ "):
        src_line = lines[i - 2].strip()
    return lines[i].strip() + (f" at `{src_line}`" if src_line else "") + (f" ({where[-1]})" if where else "")


def gguf_summary(root, path):
    """The GGUF's architecture, attention / window keys, and whether it has a separate output.weight."""
    src = src_dir(root)
    sys.path.insert(0, os.path.join(src, "gguf-py"))
    try:
        import gguf
        rd = gguf.GGUFReader(path)
    finally:
        sys.path.pop(0)
    kv = {}
    for name, f in rd.fields.items():
        if name == "general.architecture" or META_KEYS.search(name):
            v = f.contents()
            kv[name] = v
    names = {t.name for t in rd.tensors}
    kv["output.weight"] = "present" if "output.weight" in names else "absent (tied)"
    return kv


def run(cases, CASES, make_model, logits_of, load_hf, qforge, PROMPT_IDS, ROOT, WORK, TOL, torch, np):
    tok = os.path.join(ROOT, "..", "shared", "models", "llama2-tokenizer", "tokenizer.model")
    if not os.path.exists(tok):
        sys.exit(f"verify_archs convert: {tok} missing")
    src = src_dir(ROOT)
    if not os.path.exists(os.path.join(src, "convert_hf_to_gguf.py")):
        sys.exit(f"verify_archs convert: no convert_hf_to_gguf.py in {src} (set LLAMACPP_SRC)")
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        sys.exit(f"verify_archs convert: the venv lacks sentencepiece (the converter reads tokenizer.model): "
                 f"{sys.prefix}/bin/pip install sentencepiece")
    rows = []
    for name in cases:
        print(f"[convert {name}] {CASES[name][2]}", flush=True)
        work = os.path.join(WORK, "convert", name)
        shutil.rmtree(work, ignore_errors=True)
        hf = os.path.join(work, "hf")
        cls, over, what, var = CASES[name]
        if name in VOCAB:
            CASES[name] = (cls, dict(over, vocab_size=VOCAB[name]), what, var)
        try:
            model = make_model(name, torch)
        finally:
            CASES[name] = (cls, over, what, var)
        model.save_pretrained(hf)
        shutil.copy(tok, os.path.join(hf, "tokenizer.model"))
        ref = logits_of(model, PROMPT_IDS, torch)
        row = dict(case=name, arch=model.config.architectures[0], conv=None, load=None, diff=None, alt=None, notes=[])
        gg = os.path.join(work, "llamacpp.gguf")
        err = convert(ROOT, hf, gg, os.path.join(work, "convert.log"))
        if name in VOCAB:
            row["notes"].append(f"vocab_size {VOCAB[name]} (the converter's Phi-3 tokenizer reader needs the tokenizer's full vocabulary)")
        if err:
            row["conv"] = False
            want = EXPECT_REFUSAL.get(name)
            if want and want in open(os.path.join(work, "convert.log")).read():
                row["refused_as_expected"] = True
                row["notes"].append("converter refused as expected: " + err)
            else:
                row["notes"].append("converter failed: " + err)
            rows.append(row)
            continue
        row["conv"] = True
        try:
            meta = gguf_summary(ROOT, gg)
            row["notes"].append("GGUF: " + ", ".join(f"{k}={v}" for k, v in meta.items()))
        except Exception as e:  # noqa: BLE001 — informational only
            row["notes"].append(f"(could not read the GGUF's keys: {type(e).__name__}: {e})")
        try:
            r = qforge(["scripts/verify/dump_logits_ids.lua", "model=" + gg, "ids=" + ",".join(map(str, PROMPT_IDS))],
                       os.path.join(work, "qf"))
        except RuntimeError as e:
            row["load"] = False
            msg = [l.strip() for l in str(e).splitlines() if "error:" in l] or [l for l in str(e).splitlines() if l.strip()][-3:]
            msg = " | ".join(msg)
            gap = QF_GAPS.get(name)
            if gap and gap[0] in msg:
                row["gap"] = True
                row["notes"].append(f"GAP: qforge refused the GGUF: {msg}; {gap[1]}")
            else:
                row["notes"].append("qforge refused the GGUF: " + msg)
            rows.append(row)
            continue
        row["load"] = True
        ours = np.array(r["logits"], dtype=np.float64)
        row["diff"] = float(np.abs(ours - ref).max())
        if name in ALT:
            over, why = ALT[name]
            from transformers import AutoConfig, AutoModelForCausalLM
            cfg = AutoConfig.from_pretrained(hf)
            for k, v in over.items():
                setattr(cfg, k, v)
            m2 = AutoModelForCausalLM.from_pretrained(hf, config=cfg, dtype=torch.float32, attn_implementation="eager")
            m2.eval()
            row["alt"] = float(np.abs(ours - logits_of(m2, PROMPT_IDS, torch)).max())
            row["notes"].append(f"expected to differ from transformers: {why}; vs transformers with {over}: {row['alt']:.2e}")
        rows.append(row)
    return rows


def ok(row, TOL):
    if row.get("refused_as_expected") or row.get("gap"):
        return True
    if not (row["conv"] and row["load"]):
        return False
    return (row["alt"] if row["alt"] is not None else row["diff"]) <= TOL


def report(rows, TOL):
    fmt = lambda v: "—" if v is None else f"{v:.2e}"  # noqa: E731
    yn = lambda v: "—" if v is None else ("yes" if v else "NO")  # noqa: E731
    print()
    print(f"{'case':<15} {'architecture':<20} {'converter':>9} {'qf load':>8} {'|qf - tf|':>10} {'as GGUF':>10}  ok")
    for r in rows:
        print(f"{r['case']:<15} {r['arch']:<20} {yn(r['conv']):>9} {yn(r['load']):>8} {fmt(r['diff']):>10} {fmt(r['alt']):>10}  "
              f"{'GAP' if r.get('gap') else 'OK' if ok(r, TOL) else 'MISMATCH'}")
    print("  (|qf - tf|: qforge on the converter's GGUF vs transformers on the HF model, max abs logit difference; "
          "'as GGUF': vs transformers with the config as the GGUF describes it, where the converter drops a feature)")
    for r in rows:
        for n in r["notes"]:
            print(f"  {r['case']}: {n}")
    bad = [r["case"] for r in rows if not ok(r, TOL)]
    gaps = [r["case"] for r in rows if r.get("gap")]
    print("\n" + ("OK" if not bad else "MISMATCH: " + ", ".join(bad)) + (f" (known gaps: {', '.join(gaps)})" if gaps else ""))
    return not bad
