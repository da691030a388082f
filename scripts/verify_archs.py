#!/usr/bin/env python3
"""Checks qforge's architectures against HF transformers (and llama.cpp) on tiny random models
(run on demand; not part of the tests: it needs torch and transformers).

  python3 scripts/verify_archs.py [all]          # every case below: (a), (b), (c)
  python3 scripts/verify_archs.py CASE [CASE...]   # some of them (names: `list`)
  python3 scripts/verify_archs.py list             # the cases and what each switches on
  python3 scripts/verify_archs.py gemma3-gguf      # (d) models/gemma-3-270m.Q4_K_M.gguf: transformers' GGUF loader vs qforge
  python3 scripts/verify_archs.py convert [CASE...]  # (e) llama.cpp's own convert_hf_to_gguf.py, then qforge on its GGUF

For each case transformers creates a tiny float32 model (hidden 64, 3–4 layers, 4 heads, 2 KV
heads, the 512-token vocabulary of ../shared/models/stories260K/tok512.bin, copied into the
directory as tokenizer.bin so that qforge's GGUF export carries a tokenizer llama.cpp can use)
with every weight random, norm gains included (Gemma's stored w of (1 + w) too), and saves it under
build/verify_archs/<case>/hf. Then, with transformers' "eager" attention (which honours sliding
windows and soft caps):
  (a) qforge's logits on a fixed 24-token prompt (sliding windows are 8) vs transformers': max abs
      difference ≤ 1e-4 (scripts/verify/dump_logits_ids.lua: token ids in, no tokenizer);
  (b) qforge's HF export of the loaded model (m:save(dir, {format = "hf"})) loaded back by
      transformers: its logits vs the original model's, ≤ 1e-4;
  (c) qforge's GGUF export (F32) run by llama.cpp's llama-perplexity (build/llamacpp/build/bin,
      scripts/verify_llamacpp.sh build) on one 32-token chunk of WikiText-2 with an f32 KV cache
      and no flash attention, --kl-divergence-base: the log-probabilities it stores (positions
      16..30, 16-bit quantized per row: step = row range / 65535) vs transformers' on the same
      token ids: max abs difference ≤ 1e-4 + half a step. Cases llama.cpp cannot represent
      (sliding windows in its "llama" architecture, Gemma 3's attention soft cap or a score scale
      other than head_dim^-1/2) are refused by qforge's exporter: the refusal is reported, and a
      variant of the case without the feature checks (c). The same GGUF is also loaded back by
      qforge ("gguf→qf": its log-probabilities vs transformers', same positions, ≤ 1e-4).
      GeGLU models (Gemma): llama.cpp's CPU GELU is a table of f16 values indexed by the input
      rounded to f16 (GGML_GELU_FP16), ~1e-3 off; (c) compares with transformers' forward using
      that table, and the tolerance adds the table's own discontinuity (how far 1e-6 relative
      noise on its input moves the log-probabilities, over 8 perturbed runs: ~2e-3).
  (d) `gemma3-gguf`: models/gemma-3-270m.Q4_K_M.gguf (scripts/fetch-models.sh gemma3) loaded by
      transformers' GGUF loader (dequantized to f32, as qforge does) vs qforge on the same file: a
      14-token prompt (every position) and the first 600 tokens of WikiText-2, beyond the 512-token
      sliding window (the last 16 positions); max abs logit difference ≤ 1e-3.
  (e) `convert [CASE...]` (default: every case, plus gemma3-p6): the HF model converted by llama.cpp's
      own convert_hf_to_gguf.py (f32; tokenizer: ../shared/models/llama2-tokenizer/tokenizer.model,
      truncated by the converter to the 512-token vocabulary), loaded by qforge: its logits vs
      transformers', ≤ 1e-4; where the converter drops a feature llama.cpp cannot represent, vs
      transformers with the config as the GGUF describes it. See scripts/verify/convert_check.py.
      Needs sentencepiece in the venv; LLAMACPP_SRC (default
      build/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp) has the converter.
Mixture-of-experts cases (8 experts, top-2, expert feed-forward 32; a case whose architecture or layout qforge
does not load reports "qforge could not load it" in (a)-(c)): `mixtral` (sliding_window 8; GGUF variant
`mixtral-nowin`, llama.cpp's "llama" has no window), `qwen2-moe` (shared expert 48 with its sigmoid gate,
q/k/v biases, norm_topk_prob False), `qwen3-moe` (norm_topk_prob True, q/k norms, head_dim 32 != hidden/heads).
They are saved as transformers 5 saves by default (save_original_format=True): the per-expert layout of the
hub checkpoints (Mixtral block_sparse_moe.experts.E.w1/w2/w3 + block_sparse_moe.gate; Qwen
mlp.experts.E.gate_proj/up_proj/down_proj + mlp.gate), which transformers fuses on load into
mlp.experts.gate_up_proj [E, 2*ff, dim] (gate rows first) and mlp.experts.down_proj [E, dim, ff].
`mixtral-fused` / `qwen2-moe-fused` are saved in that fused in-memory layout (save_original_format=False),
which transformers also loads. The MoE references run with experts_implementation="eager".

Environment: the venv build/venv-ct (torch, transformers ≥ 5, safetensors, gguf); VENV=DIR picks
another. It is not created here (torch is large); to make one:
  python3 -m venv build/venv-ct && build/venv-ct/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
  build/venv-ct/bin/pip install transformers safetensors gguf numpy
QFORGE (default build/qforge), LLAMACPP_BIN (default build/llamacpp/build/bin), TEXT
(../shared/data/wikitext2_test.txt). Exit status 1 when any check mismatches.
"""
import functools, json, os, shutil, struct, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("VENV", os.path.join(ROOT, "build", "venv-ct"))
QF = os.environ.get("QFORGE", os.path.join(ROOT, "build", "qforge"))
LLAMA_BIN = os.environ.get("LLAMACPP_BIN", os.path.join(ROOT, "build", "llamacpp", "build", "bin"))
TEXT = os.environ.get("TEXT", os.path.join(ROOT, "..", "shared", "data", "wikitext2_test.txt"))
TOKENIZER = os.path.join(ROOT, "..", "shared", "models", "stories260K", "tok512.bin")
WORK = os.path.join(ROOT, "build", "verify_archs")
TOL = 1e-4
WINDOW = 8
VOCAB = 512
PROMPT_IDS = [1, 403, 17, 288, 96, 511, 42, 250, 7, 333, 150, 64, 480, 12, 199, 301, 77, 5, 420, 260, 31, 88, 367, 140]
GELU_SEEDS = 8  # perturbed runs of the f16-table GELU emulation that size (c)'s tolerance for GeGLU models
D_LONG, D_LAST, D_TOL = 600, 16, 1e-3  # (d): a WikiText-2 window beyond Gemma 3 270M's 512-token sliding window
LL_CTX = 32  # llama-perplexity's context: log-probabilities of positions 16..30 are stored

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
              pad_token_id=0)
ROPE = {"rope_type": "default", "rope_theta": 10000.0}
GEMMA3_ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
               "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}
MOE = dict(num_experts_per_tok=2)  # with 8 experts (num_local_experts / num_experts) and an expert feed-forward of 32

# name: (config class, config overrides, what it switches on, GGUF variant case or None)
CASES = {
    "llama": ("LlamaConfig", dict(rope_parameters=dict(ROPE, rope_theta=500.0), tie_word_embeddings=False),
              "Llama, untied classifier", None),
    "mistral": ("MistralConfig", dict(rope_parameters=ROPE, sliding_window=WINDOW, tie_word_embeddings=False),
                "sliding_window 8 on every layer", "llama"),
    "qwen2": ("Qwen2Config", dict(rope_parameters=ROPE, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
                                  tie_word_embeddings=True),
              "q/k/v biases, tied embeddings, layers >= max_window_layers=1 slide (window 8)", "qwen2-nowin"),
    "qwen2-nowin": ("Qwen2Config", dict(rope_parameters=ROPE, use_sliding_window=False, tie_word_embeddings=True),
                    "q/k/v biases, tied embeddings, no sliding window", None),
    "qwen3": ("Qwen3Config", dict(rope_parameters=ROPE, head_dim=32, use_sliding_window=False, tie_word_embeddings=False),
              "per-head q/k RMSNorm, head_dim 32 != hidden/heads", None),
    "qwen3-swa": ("Qwen3Config", dict(rope_parameters=ROPE, head_dim=32, use_sliding_window=True, sliding_window=WINDOW,
                                      max_window_layers=1, tie_word_embeddings=False),
                  "q/k norms, head_dim 32, layers >= 1 slide (window 8)", "qwen3"),
    "phi3": ("Phi3Config", dict(rope_parameters=ROPE, sliding_window=WINDOW, tie_word_embeddings=False),
             "fused qkv_proj / gate_up_proj, sliding_window 8", "phi3-nowin"),
    "phi3-nowin": ("Phi3Config", dict(rope_parameters=ROPE, sliding_window=None, tie_word_embeddings=False),
                   "fused qkv_proj / gate_up_proj, no window", None),
    "gemma2": ("Gemma2Config", dict(rope_parameters=ROPE, head_dim=16, query_pre_attn_scalar=16, sliding_window=WINDOW,
                                    attn_logit_softcapping=2.0, final_logit_softcapping=3.0, num_hidden_layers=4),
               "(1+w) norms, pre/post norms, GeGLU tanh, sqrt(dim) embeddings, even layers slide (window 8), "
               "attention soft cap 2, final soft cap 3", None),
    "gemma3": ("Gemma3TextConfig", dict(rope_parameters=GEMMA3_ROPE, head_dim=32, query_pre_attn_scalar=24, sliding_window=WINDOW,
                                        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
                                        num_hidden_layers=4, final_logit_softcapping=3.0, attn_logit_softcapping=None),
               "(1+w) norms and q/k norms, head_dim 32 != hidden/heads, query_pre_attn_scalar 24, layer_types "
               "S,F,S,S (window 8), sliding RoPE base 1e4 vs global 1e6, final soft cap 3", "gemma3-gguf"),
    "gemma3-gguf": ("Gemma3TextConfig", dict(rope_parameters=GEMMA3_ROPE, head_dim=32, query_pre_attn_scalar=32, sliding_window=WINDOW,
                                             layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
                                             num_hidden_layers=4, final_logit_softcapping=3.0, attn_logit_softcapping=None),
                    "gemma3 with query_pre_attn_scalar = head_dim (what llama.cpp's gemma3 uses)", None),
    "gemma3-attncap": ("Gemma3TextConfig", dict(rope_parameters=GEMMA3_ROPE, head_dim=32, query_pre_attn_scalar=32, sliding_window=WINDOW,
                                                layer_types=["full_attention", "sliding_attention", "sliding_attention"],
                                                attn_logit_softcapping=2.0, final_logit_softcapping=3.0),
                       "gemma3 with an attention soft cap 2 too, layer_types F,S,S", "gemma3-gguf"),
    # mixture of experts: 8 experts, top-2, expert feed-forward 32 (Mixtral's intermediate_size is the expert's)
    "mixtral": ("MixtralConfig", dict(MOE, intermediate_size=32, num_local_experts=8, rope_parameters=dict(ROPE, rope_theta=1e6),
                                      sliding_window=WINDOW, tie_word_embeddings=False),
                "MoE 8 experts top-2 (softmax, top-2, renormalized), per-expert layout, sliding_window 8", "mixtral-nowin"),
    "mixtral-nowin": ("MixtralConfig", dict(MOE, intermediate_size=32, num_local_experts=8, rope_parameters=dict(ROPE, rope_theta=1e6),
                                            sliding_window=None, tie_word_embeddings=False),
                      "MoE 8 experts top-2, per-expert layout, no window", None),
    "mixtral-fused": ("MixtralConfig", dict(MOE, intermediate_size=32, num_local_experts=8, rope_parameters=dict(ROPE, rope_theta=1e6),
                                            sliding_window=None, tie_word_embeddings=False),
                      "mixtral-nowin's config, saved in transformers' fused layout (mlp.gate, mlp.experts.gate_up_proj / down_proj)", None),
    "qwen2-moe": ("Qwen2MoeConfig", dict(MOE, moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=8,
                                         norm_topk_prob=False, rope_parameters=ROPE, use_sliding_window=False, tie_word_embeddings=False),
                  "MoE 8 experts top-2 without renormalization, shared expert 48 x sigmoid(shared_expert_gate), q/k/v biases, "
                  "per-expert layout", None),
    "qwen2-moe-fused": ("Qwen2MoeConfig", dict(MOE, moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=8,
                                               norm_topk_prob=False, rope_parameters=ROPE, use_sliding_window=False,
                                               tie_word_embeddings=False),
                        "qwen2-moe's config, saved in transformers' fused layout (mlp.experts.gate_up_proj / down_proj)", None),
    "qwen3-moe": ("Qwen3MoeConfig", dict(MOE, moe_intermediate_size=32, num_experts=8, norm_topk_prob=True, head_dim=32,
                                         rope_parameters=ROPE, use_sliding_window=False, tie_word_embeddings=False),
                  "MoE 8 experts top-2 renormalized, q/k norms, head_dim 32 != hidden/heads, per-expert layout", None),
}
GEMMA = ("Gemma2Config", "Gemma3TextConfig")
MOE_CLASSES = ("MixtralConfig", "Qwen2MoeConfig", "Qwen3MoeConfig")
# Cases saved in transformers' fused in-memory expert layout instead of its default per-expert (hub) layout.
FUSED_LAYOUT = ("mixtral-fused", "qwen2-moe-fused")
# Cases qforge must refuse to load, with the words its message must contain: transformers' Gemma 3
# keeps attn_logit_softcapping but never applies it, llama.cpp has none, so qforge will not guess.
EXPECT_REFUSAL = {"gemma3-attncap": "field 'attn_logit_softcapping' is set for Gemma3ForCausalLM"}


def ensure_venv():
    py = os.path.join(VENV, "bin", "python")
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV):
        return
    if not os.path.exists(py):
        sys.exit(f"verify_archs: no venv at {VENV}; create one (torch is large, it is not installed here):\n"
                 f"  python3 -m venv {VENV} && {VENV}/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu\n"
                 f"  {VENV}/bin/pip install transformers safetensors gguf numpy")
    os.execv(py, [py] + sys.argv)


def qforge(args, out):
    os.makedirs(out, exist_ok=True)
    r = subprocess.run([QF, "run"] + args + ["out=" + out], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError("qforge " + " ".join(args) + " failed:\n" + r.stdout[-3000:])
    return json.load(open(os.path.join(out, "results.json")))


def make_model(name, torch):
    import transformers
    cls, over, _, _ = CASES[name]
    kw = dict(COMMON)
    kw.update(over)
    cfg = getattr(transformers, cls)(**kw)
    torch.manual_seed(1234 + sum(map(ord, name)))
    # MoE: the reference is transformers' eager experts loop (its default may be grouped_mm)
    extra = dict(experts_implementation="eager") if cls in MOE_CLASSES else {}
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32, **extra)
    gemma = cls in GEMMA
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname:  # gains: Gemma stores w of (1 + w), the others g itself
                p.normal_(0.0 if gemma else 1.0, 0.3)
            elif p.dim() == 1:  # biases
                p.normal_(0.0, 0.2)
            elif "embed_tokens" in pname:
                p.normal_(0.0, 1.0)
            else:  # fan-in is the last dimension (MoE's 3-d expert tensors [E, out, in] too)
                p.normal_(0.0, p.shape[-1] ** -0.5)
    model.eval()
    if name in FUSED_LAYOUT:
        # every save of this case (here and in scripts/verify/convert_check.py) writes the fused layout
        model.save_pretrained = functools.partial(model.save_pretrained, save_original_format=False)
    return model


def router_margin(model, ids, torch):
    """MoE: the smallest gap between the k-th and (k+1)-th routing probability over all layers and
    positions (a gap near f32 noise would let a correct implementation pick another expert)."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_router_logits=True)
    k = model.config.num_experts_per_tok
    gaps = []
    for logits in out.router_logits:
        p = torch.softmax(logits.float(), dim=-1).sort(dim=-1, descending=True).values
        gaps.append(float((p[:, k - 1] - p[:, k]).min()))
    return min(gaps)


def logits_of(model, ids, torch):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def load_hf(d, torch):
    from transformers import AutoModelForCausalLM
    moe = "num_experts_per_tok" in json.load(open(os.path.join(d, "config.json")))
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager",
                                             **(dict(experts_implementation="eager") if moe else {}))
    m.eval()
    return m


def log_softmax(x, np):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def read_base(path, np):
    """llama-perplexity's --kl-divergence-base file: tokens, and per stored position the
    log-probabilities (scale, min_log_prob, uint16 codes; codes 0 are floored)."""
    with open(path, "rb") as f:
        if f.read(8) != b"_logits_":
            raise RuntimeError(f"{path} is not a llama-perplexity logits file")
        n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", f.read(12))
        tokens = np.frombuffer(f.read(4 * n_ctx * n_chunk), dtype="<i4").tolist()
        nv = 2 * ((n_vocab + 1) // 2) + 4
        first = n_ctx // 2
        n = n_ctx - 1 - first
        raw = np.frombuffer(f.read(2 * nv * n), dtype="<u2").reshape(n, nv)
    hdr = raw[:, :4].copy().view("<f4")  # [n, 2]: scale, min_log_prob
    codes = raw[:, 4:4 + n_vocab].astype(np.float64)
    lp = hdr[:, 0:1].astype(np.float64) * codes + hdr[:, 1:2].astype(np.float64)
    return tokens[:n_ctx], first, lp, hdr[:, 0].astype(np.float64), codes == 0


def ggml_gelu(torch, seed=None):
    """ggml's CPU GELU (GGML_GELU_FP16, on by default): x rounded to f16, looked up in a table of
    f16 values of the tanh-approximated GELU; 0 below -10, x above 10. Its rounding is ~1e-3 of
    the value. With a seed, x is first perturbed by 1e-6 relative noise (the size of f32
    summation-order differences), to measure how far that rounding can move the result."""
    import torch.nn.functional as F
    gen = torch.Generator().manual_seed(seed) if seed is not None else None

    class GgmlGelu(torch.nn.Module):
        def forward(self, x):
            xp = x if gen is None else x * (1 + 1e-6 * torch.randn(x.shape, generator=gen, dtype=x.dtype))
            y = F.gelu(xp.half().float(), approximate="tanh").half().to(x.dtype)
            return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, y))
    return GgmlGelu()


def with_ggml_gelu(model, torch, seed=None):
    """A copy of a GeGLU model whose MLPs use ggml's f16-table GELU, or None when it has no GELU."""
    import copy
    if "gelu" not in str(getattr(model.config, "hidden_activation", "") or getattr(model.config, "hidden_act", "")):
        return None
    m = copy.deepcopy(model)
    for layer in m.model.layers:
        layer.mlp.act_fn = ggml_gelu(torch, seed)
    return m


def check_llamacpp(gguf, hf_model, work, torch, np):
    """(c): llama.cpp's stored log-probabilities of the GGUF vs transformers' on the same ids, and
    qforge's reload of the GGUF on the same ids. A GeGLU model is compared with transformers' forward
    with ggml's f16-table GELU (llama.cpp's CPU GELU rounds through f16; the difference from the exact
    reference is returned too). Returns (diff_ll, tol_ll, diff_qf, diff_ll_exact or None) or raises."""
    exe = os.path.join(LLAMA_BIN, "llama-perplexity")
    if not os.path.exists(exe):
        raise FileNotFoundError(f"{exe} missing (scripts/verify_llamacpp.sh build)")
    base = os.path.join(work, "ll_base.bin")
    cmd = [exe, "-m", gguf, "-f", TEXT, "-c", str(LL_CTX), "-b", str(LL_CTX), "--chunks", "1", "-t", "2",
           "-fa", "off", "-ctk", "f32", "-ctv", "f32", "--kl-divergence-base", base]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    open(os.path.join(work, "llama-perplexity.log"), "w").write(r.stdout)
    if r.returncode != 0 or not os.path.exists(base):
        raise RuntimeError("llama-perplexity failed:\n" + r.stdout[-2000:])
    ids, first, lp, scale, floored = read_base(base, np)
    ref = log_softmax(logits_of(hf_model, ids, torch), np)[first:LL_CTX - 1]

    def diff_to(r):  # a floored code says only "at most the floor"
        keep = ~floored | (r > lp + scale[:, None])
        return float(np.where(keep, np.abs(r - lp), 0.0).max())
    ok_tol = TOL + 0.5 * float(scale.max())
    q = qforge(["scripts/verify/dump_logits_ids.lua", "model=" + gguf, "ids=" + ",".join(map(str, ids))], os.path.join(work, "qf_gguf"))
    qlp = log_softmax(np.array(q["logits"], dtype=np.float64), np)[first:LL_CTX - 1]
    gm = with_ggml_gelu(hf_model, torch)
    if gm is None:
        return diff_to(ref), ok_tol, float(np.abs(qlp - ref).max()), None
    ref_g = log_softmax(logits_of(gm, ids, torch), np)[first:LL_CTX - 1]
    # The f16 table is discontinuous: an input within f32 noise of an f16 rounding midpoint flips
    # to the neighbouring entry. The tolerance adds how far 1e-6 relative input noise moves the
    # emulated log-probabilities (largest over GELU_SEEDS perturbed runs).
    spread = max(float(np.abs(log_softmax(logits_of(with_ggml_gelu(hf_model, torch, s), ids, torch), np)[first:LL_CTX - 1]
                              - ref_g).max()) for s in range(GELU_SEEDS))
    return diff_to(ref_g), ok_tol + spread, float(np.abs(qlp - ref).max()), diff_to(ref)


def run_case(name, torch, np, gguf_of=None):
    """Returns a result row (dict)."""
    cls, _, what, variant = CASES[name]
    work = os.path.join(WORK, name)
    shutil.rmtree(work, ignore_errors=True)
    hf = os.path.join(work, "hf")
    model = make_model(name, torch)
    model.save_pretrained(hf)
    shutil.copy(TOKENIZER, os.path.join(hf, "tokenizer.bin"))
    ref = logits_of(model, PROMPT_IDS, torch)
    row = {"case": name, "arch": model.config.architectures[0] if model.config.architectures else cls, "max_logit": float(np.abs(ref).max())}
    moe_notes = []
    if cls in MOE_CLASSES:
        # transformers loads its own save back (per-expert or fused layout) to the same logits
        back = float(np.abs(logits_of(load_hf(hf, torch), PROMPT_IDS, torch) - ref).max())
        moe_notes.append(f"{'fused' if name in FUSED_LAYOUT else 'per-expert'} layout saved; transformers' reload: max |dlogit| = {back:.1e}; "
                         f"smallest top-{model.config.num_experts_per_tok} routing margin {router_margin(model, PROMPT_IDS, torch):.1e}")
        if back > TOL:
            row["reload_failed"] = True
    qf_hf, qf_gguf = os.path.join(work, "qf_hf"), os.path.join(work, "qf.gguf")
    try:
        r = qforge(["scripts/verify/dump_logits_ids.lua", "model=" + hf, "ids=" + ",".join(map(str, PROMPT_IDS)),
                    "save_hf=" + qf_hf, "save_gguf=" + qf_gguf], os.path.join(work, "qf"))
    except RuntimeError as e:
        row["a"] = row["b"] = row["c"] = row["c_qf"] = row["c_tol"] = None
        want = EXPECT_REFUSAL.get(name)
        if want and want in str(e):
            row["refused_as_expected"] = True
            row["notes"] = [f"refused as expected ({want})"]
        else:
            row["notes"] = moe_notes + [f"qforge could not load it: {e}"]
        return row
    notes = moe_notes
    ours = np.array(r["logits"], dtype=np.float64)
    row["a"] = float(np.abs(ours - ref).max())
    cap = getattr(model.config, "attn_logit_softcapping", None)
    if cls == "Gemma3TextConfig" and cap and row["a"] > TOL:
        # transformers' Gemma3Attention keeps attn_logit_softcapping but never passes it to the
        # attention function (Gemma2Attention does): its Gemma 3 has no attention soft cap
        import transformers.models.gemma3.modeling_gemma3 as g3
        orig = g3.eager_attention_forward
        g3.eager_attention_forward = lambda *a, **k: orig(*a, **dict(k, softcap=cap))
        try:
            forced = float(np.abs(ours - logits_of(load_hf(hf, torch), PROMPT_IDS, torch)).max())
        finally:
            g3.eager_attention_forward = orig
        notes.append(f"transformers' Gemma 3 ignores attn_logit_softcapping={cap} (Gemma3Attention does not pass softcap to "
                     f"the attention function), qforge applies it: with the cap forced into transformers, (a) = {forced:.2e}")
    # (b) qforge's HF export, loaded back by transformers
    if "error" in r.get("saved_hf", {}):
        row["b"] = None
        notes.append("HF export refused: " + r["saved_hf"]["error"])
    else:
        try:
            row["b"] = float(np.abs(logits_of(load_hf(qf_hf, torch), PROMPT_IDS, torch) - ref).max())
        except Exception as e:  # noqa: BLE001 — reported as a failure
            row["b"] = None
            row["b_failed"] = True
            notes.append(f"transformers could not load qforge's HF export: {type(e).__name__}: {e}")
            cfg = json.load(open(os.path.join(qf_hf, "config.json")))
            if "pad_token_id" not in cfg and model.config.pad_token_id is not None:
                # the export's config.json leaves pad_token_id out: transformers' default (Phi-3:
                # 32000) is outside a small vocabulary; retried with the source model's
                try:
                    from transformers import AutoModelForCausalLM
                    m2 = AutoModelForCausalLM.from_pretrained(qf_hf, dtype=torch.float32, attn_implementation="eager",
                                                              pad_token_id=model.config.pad_token_id)
                    m2.eval()
                    row["b"] = float(np.abs(logits_of(m2, PROMPT_IDS, torch) - ref).max())
                    notes.append(f"its config.json has no pad_token_id (transformers' default for {cfg.get('model_type')} is "
                                 f"{type(model.config)().pad_token_id}); "
                                 f"loaded with pad_token_id={model.config.pad_token_id} given, (b) = {row['b']:.2e}")
                except Exception as e2:  # noqa: BLE001
                    notes.append(f"retry with pad_token_id given failed too: {type(e2).__name__}: {e2}")
    # (c) qforge's GGUF export in llama.cpp
    row["c"] = row["c_qf"] = row["c_tol"] = None
    if "error" in r.get("saved_gguf", {}):
        err = r["saved_gguf"]["error"]
        notes.append("GGUF export refused: " + err.split("save gguf")[-1].split(": ", 1)[-1].strip())
        row["c_refused"] = True
        if variant:
            notes.append(f"(c) checked on the variant '{variant}'")
    else:
        try:
            row["c"], row["c_tol"], row["c_qf"], exact = check_llamacpp(qf_gguf, model, work, torch, np)
            if exact is not None:
                notes.append(f"(c) is against transformers with ggml's f16-table GELU (llama.cpp's CPU GELU rounds through f16); "
                             f"against the exact GELU llama.cpp differs by {exact:.2e}; the tolerance adds the emulation's own spread under "
                             f"1e-6 relative noise on the GELU input ({GELU_SEEDS} runs)")
        except Exception as e:  # noqa: BLE001
            notes.append(f"llama.cpp check failed: {type(e).__name__}: {str(e)[-600:]}")
            row["c_failed"] = True
    row["notes"] = notes
    return row


def ok_row(row):
    if row.get("refused_as_expected"):
        return True
    good = row["a"] is not None and row["a"] <= TOL
    good = good and not row.get("b_failed") and (row["b"] is None or row["b"] <= TOL)
    good = good and not row.get("c_failed") and not row.get("reload_failed")
    if row["c"] is not None:
        good = good and row["c"] <= row["c_tol"] and row["c_qf"] <= TOL
    return good


def fmt(v):
    return "—" if v is None else f"{v:.2e}"


def print_table(rows):
    print()
    print(f"{'case':<15} {'architecture':<20} {'max|logit|':>10} {'(a) qf-tf':>10} {'(b) export':>10} {'(c) llama':>10} {'c tol':>9} {'gguf→qf':>9}  ok")
    for r in rows:
        c = "refused" if r.get("c_refused") else fmt(r["c"])
        print(f"{r['case']:<15} {r['arch']:<20} {r['max_logit']:>10.3f} {fmt(r['a']):>10} {fmt(r['b']):>10} {c:>10} "
              f"{fmt(r['c_tol']):>9} {fmt(r['c_qf']):>9}  {'OK' if ok_row(r) else 'MISMATCH'}")
    for r in rows:
        for n in r["notes"]:
            print(f"  {r['case']}: {n}")


def gemma3_gguf(torch, np):
    """(d) models/gemma-3-270m.Q4_K_M.gguf: transformers' GGUF loader (dequantizes to float32) vs qforge."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    if "gemma3" not in GGUF_SUPPORTED_ARCHITECTURES:
        print("transformers' GGUF loader does not support gemma3 (GGUF_SUPPORTED_ARCHITECTURES: "
              + ", ".join(GGUF_SUPPORTED_ARCHITECTURES) + "): (d) skipped")
        return True
    gg = os.path.join(ROOT, "models", "gemma-3-270m.Q4_K_M.gguf")
    if not os.path.exists(gg):
        sys.exit("verify_archs: models/gemma-3-270m.Q4_K_M.gguf missing (scripts/fetch-models.sh gemma3)")
    prompt = "The capital of France is Paris, and the capital of Italy is"
    r = qforge(["scripts/verify/dump_logits.lua", "model=" + gg, "prompt=" + prompt], os.path.join(WORK, "gemma3-gguf-d"))
    ids = r["ids"]
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gg), gguf_file=os.path.basename(gg), dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    ref = logits_of(model, ids, torch)
    ours = np.array(r["logits"], dtype=np.float64)
    err = float(np.abs(ref - ours).max())
    print(f"(d) gemma-3-270m Q4_K_M GGUF, \"{prompt}\", {len(ids)} tokens (qforge's ids): max |qforge - transformers| = {err:.3e} "
          f"(max |logit| {np.abs(ref).max():.2f}; argmax agree on {int((ref.argmax(-1) == ours.argmax(-1)).sum())}/{len(ids)})")
    # beyond the 512-token sliding window: the first D_LONG tokens of WikiText-2 (qforge's ids),
    # the logits of the last D_LAST positions
    t = qforge(["scripts/verify/token_ids.lua", "model=" + gg, "text=" + TEXT, f"n={D_LONG}"], os.path.join(WORK, "gemma3-gguf-ids"))
    lids = t["ids"]
    r = qforge(["scripts/verify/dump_logits_ids.lua", "model=" + gg, "ids=" + ",".join(map(str, lids)), f"last={D_LAST}"],
               os.path.join(WORK, "gemma3-gguf-long"))
    with torch.no_grad():
        lref = model(torch.tensor([lids]), logits_to_keep=D_LAST).logits[0].double().numpy()
    lours = np.array(r["logits"], dtype=np.float64)
    lerr = float(np.abs(lref - lours).max())
    print(f"(d) WikiText-2, {len(lids)} tokens (sliding window {getattr(model.config, 'sliding_window', None)}), last {D_LAST} positions: "
          f"max |qforge - transformers| = {lerr:.3e} (max |logit| {np.abs(lref).max():.2f}; argmax agree on "
          f"{int((lref.argmax(-1) == lours.argmax(-1)).sum())}/{D_LAST})")
    err = max(err, lerr)
    c = model.config
    print(f"    transformers' config from the GGUF: sliding_window={getattr(c, 'sliding_window', None)} "
          f"layer_types={getattr(c, 'layer_types', None)} query_pre_attn_scalar={getattr(c, 'query_pre_attn_scalar', None)} "
          f"rope_parameters={getattr(c, 'rope_parameters', None)}")
    ok = err <= D_TOL
    print(("OK" if ok else "MISMATCH") + f" (tolerance {D_TOL:g}: both dequantize to f32; a 262k-way classifier over 640-wide rows, "
          "summed in different orders)")
    return ok


def main():
    args = sys.argv[1:] or ["all"]
    if args == ["list"]:
        for n, (cls, _, what, var) in CASES.items():
            print(f"{n:<15} {cls:<17} {what}" + (f" [GGUF variant: {var}]" if var else ""))
        return
    ensure_venv()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import numpy as np, torch
    import transformers
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if not os.path.exists(QF):
        sys.exit(f"verify_archs: no qforge binary at {QF} (set QFORGE)")
    os.makedirs(WORK, exist_ok=True)
    if args == ["gemma3-gguf"]:
        sys.exit(0 if gemma3_gguf(torch, np) else 1)
    if args[0] == "convert":
        sys.path.insert(0, os.path.join(ROOT, "scripts", "verify"))
        import convert_check as cc
        CASES.update(cc.EXTRA)
        names = args[1:] or list(CASES)
        for n in names:
            if n not in CASES:
                sys.exit(f"verify_archs: unknown case '{n}' (list: {', '.join(CASES)})")
        rows = cc.run(names, CASES, make_model, logits_of, load_hf, qforge, PROMPT_IDS, ROOT, WORK, TOL, torch, np)
        json.dump(rows, open(os.path.join(WORK, "convert", "results.json"), "w"), indent=1)
        sys.exit(0 if cc.report(rows, TOL) else 1)
    names = list(CASES) if args == ["all"] else args
    for n in names:
        if n not in CASES:
            sys.exit(f"verify_archs: unknown case '{n}' (list: {', '.join(CASES)}, gemma3-gguf)")
    rows = []
    for n in names:
        print(f"[{n}] {CASES[n][2]}", flush=True)
        rows.append(run_case(n, torch, np))
    json.dump(rows, open(os.path.join(WORK, "results.json"), "w"), indent=1)
    print_table(rows)
    bad = [r["case"] for r in rows if not ok_row(r)]
    print("\n" + ("OK" if not bad else "MISMATCH: " + ", ".join(bad)))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
