#!/usr/bin/env python3
"""Compare qforge's tokenizers with HF `tokenizers` on real text.

usage: scripts/verify_tokenizer.py [--build build] [--venv build/venv-verify]
                                   [--tokenizer PATH ...] [--text FILE ...] [--no-train]

For each tokenizer it encodes each text (no BOS/EOS) with HF `tokenizers` and with
`BUILD/qforge run` (a small Lua recipe) and reports identical / the first difference.
Tokenizers checked:
  * every --tokenizer PATH: a tokenizer.json is used as is; anything else (tokenizer.bin) is
    written to tokenizer.json by qforge's tokenizer_json() (`BUILD/bench_tokenizer --to-json`);
  * by default ../shared/models/stories260K/tok512.bin and the llama2 32k tokenizer.bin that way
    (the llama kind: BPE + byte_fallback + Metaspace);
  * unless --no-train: byte-level BPE vocabularies trained here by HF on TinyStories with the
    GPT-2 ByteLevel split, the Llama 3 Split regex, and SmolLM2's Digits + ByteLevel (the gpt2 kind).
Run it from the repository root; the first run creates the venv and installs `tokenizers`.
Exit status 0 when every encoding is identical.
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")

LUA = """local opt = qf.options({ tok = "", text = "", ids = "" },
  { tok = "tokenizer file", text = "text file", ids = "output: ids separated by spaces" })
local t = qf.load_tokenizer(opt.tok)
local ids = t:encode(qf.read_text(opt.text), { bos = false, eos = false })
local f = assert(io.open(opt.ids, "w"))
f:write(table.concat(ids, " "))
f:close()
"""

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def ensure_venv(venv):
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", venv])
    if subprocess.call([py, "-c", "import tokenizers"], stderr=subprocess.DEVNULL) != 0:
        subprocess.check_call([py, "-m", "pip", "install", "-q", "tokenizers"])
    return py


def in_venv(py):
    """Re-runs this script inside the venv (where `tokenizers` is importable)."""
    if os.environ.get("QF_VERIFY_IN_VENV") != "1":  # (a venv's python is a symlink: compare nothing)
        env = dict(os.environ, QF_VERIFY_IN_VENV="1")
        sys.exit(subprocess.call([py] + sys.argv, env=env))


def train(kind, text_file, out_path, vocab_size=3000):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers, Regex

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "gpt2":
        tok.pre_tokenizer = byte_level
    elif kind == "llama-bpe":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif kind == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([text_file], trainer)
    tok.save(out_path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--venv", default=os.path.join(ROOT, "build", "venv-verify"))
    ap.add_argument("--tokenizer", action="append", default=[])
    ap.add_argument("--text", action="append", default=[])
    ap.add_argument("--no-train", action="store_true")
    a = ap.parse_args()
    py = ensure_venv(a.venv)
    in_venv(py)
    from tokenizers import Tokenizer

    work = os.path.join(a.build, "verify_tokenizer")
    os.makedirs(work, exist_ok=True)
    qforge = os.path.join(a.build, "qforge")
    tool = os.path.join(a.build, "bench_tokenizer")
    texts = a.text or [os.path.join(SHARED, "data", f) for f in
                       ("tinystories_head.txt", "wikitext2_test.txt", "ptb_valid.txt")]
    tricky = os.path.join(work, "tricky.txt")
    with open(tricky, "w", encoding="utf-8", newline="") as f:
        f.write("I'm here  123 45678 !!  \nHello\n\nworld  \n x\r\n\ty don't WON'T they'll I'VE\n"
                "café naïve Привет мир 你好 3.14159 emoji 😀🎉 party!!! (really) [x] {y} <z>\n"
                "e\u0301t\u00a0nbsp\u2003em 안녕하세요 ελληνικά עברית العربية हिन्दी ๑๒๓ ١٢٣\n"
                "<|endoftext|>special<|endoftext|> <s> </s> <unk>   trailing   ")
    texts.append(tricky)

    tokenizers = []  # (name, tokenizer.json path)
    srcs = a.tokenizer or [os.path.join(SHARED, "models", "stories260K", "tok512.bin"),
                           os.path.join(SHARED, "models", "llama2-tokenizer", "tokenizer.bin")]
    for i, src in enumerate(srcs):
        with open(src, "rb") as f:
            head = f.read(64).lstrip()
        if head.startswith(b"{"):
            tokenizers.append((src, src))
            continue
        d = os.path.join(work, "from_bin_%d" % i)
        os.makedirs(d, exist_ok=True)
        out = os.path.join(d, "tokenizer.json")
        subprocess.check_call([tool, "--to-json", src, out])
        tokenizers.append((src + " -> tokenizer_json()", out))
    if not a.no_train:
        for kind in ("gpt2", "llama-bpe", "smollm"):
            d = os.path.join(work, "trained_" + kind)
            os.makedirs(d, exist_ok=True)
            out = os.path.join(d, "tokenizer.json")
            train(kind, os.path.join(SHARED, "data", "tinystories_head.txt"), out)
            tokenizers.append(("HF-trained byte-level BPE, " + kind + " split", out))

    lua = os.path.join(work, "encode.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    failed = 0
    for name, path in tokenizers:
        hf = Tokenizer.from_file(path)
        for text in texts:
            with open(text, encoding="utf-8", newline="") as f:
                s = f.read()
            want = hf.encode(s, add_special_tokens=False).ids
            ids_file = os.path.join(work, "ids.txt")
            r = subprocess.run([qforge, "run", lua, "tok=" + path, "text=" + text, "ids=" + ids_file,
                                "out=" + os.path.join(work, "run")], capture_output=True, text=True)
            if r.returncode != 0:
                print("FAIL %s on %s: qforge failed:\n%s" % (name, text, r.stderr[-2000:]))
                failed += 1
                continue
            with open(ids_file) as f:
                got = [int(x) for x in f.read().split()]
            if got == want:
                print("ok   %-60s %-22s %8d tokens identical" % (name[-60:], os.path.basename(text), len(got)))
                continue
            failed += 1
            k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
            print("FAIL %s on %s: %d vs %d tokens, first difference at %d:\n  qforge %s\n  HF     %s" %
                  (name, text, len(got), len(want), k, got[max(0, k - 3):k + 5], want[max(0, k - 3):k + 5]))
            print("  HF tokens: %s" % [hf.id_to_token(i) for i in want[max(0, k - 3):k + 5]])
            print("  qf tokens: %s" % [hf.id_to_token(i) for i in got[max(0, k - 3):k + 5]])
    print("%d tokenizer/text pairs differ" % failed if failed else "all identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
