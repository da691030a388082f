#!/usr/bin/env python3
"""Helpers of scripts/verify_llamacpp.sh (standard library only): parse llama-perplexity's output,
read its KL-divergence base file, and compare its numbers with qforge's.

  llamacpp.py parse ppl|kld LOG [key=value ...]   -> JSON on stdout (key=value pairs are added as fields)
  llamacpp.py base-info BASEFILE                  -> JSON: n_ctx, n_vocab, n_chunk (the header)
  llamacpp.py check-tokens BASEFILE QF_RESULTS     -> compares the ids llama.cpp scored with qforge's
  llamacpp.py compare NAME LL_PPL.json QF_PPL_RESULTS [LL_KLD.json QF_KLD_RESULTS]
                                                   -> table of both tools' numbers; exit 1 on disagreement

Every parsed number keeps the resolution llama.cpp printed it with (res.<key>): two numbers
agree when they differ by at most 5e-4 of llama.cpp's value (4 significant digits) or by half
the printed resolution, whichever is larger. Percent values (Δp, same top p) are converted to
fractions, as qforge records them.
"""
import json, math, re, struct, sys

NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"


def num(s, scale=1.0):
    v = float(f"{float(s) * scale:.12g}")
    dec = len(s.split(".")[1]) if "." in s and "e" not in s.lower() else 0
    return v, 10.0 ** (-dec) * scale


def find(pattern, text, what):
    m = re.search(pattern, text, re.M)
    if not m:
        sys.exit(f"llamacpp.py: '{what}' not found in the llama-perplexity output")
    return m


def parse_common(text, out, res):
    m = re.search(r"(?:calculating perplexity|computing) over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", text)
    if m:
        out["chunks"], out["n_ctx"], out["batch_size"], out["n_seq"] = (int(g) for g in m.groups())
        c = out["n_ctx"]
        out["positions"] = out["chunks"] * (c - c // 2 - 1)
    m = re.search(r"print_info: n_vocab\s*=\s*(\d+)", text)
    if m:
        out["n_vocab"] = int(m.group(1))
    m = re.search(r"build: (\d+) \(([^)]*)\)", text)
    if m:
        out["llama_build"] = {"number": int(m.group(1)), "commit": m.group(2)}
    m = re.search(r"(\d+\.\d+) seconds per pass", text)
    if m:
        out["seconds_per_pass"] = float(m.group(1))


def parse_ppl(text):
    out, res = {"tool": "llama-perplexity", "mode": "ppl"}, {}
    parse_common(text, out, res)
    m = find(r"Final estimate: PPL = " + NUM + r" \+/- " + NUM, text, "Final estimate: PPL")
    (out["ppl"], res["ppl"]), (out["ppl_stderr"], res["ppl_stderr"]) = num(m.group(1)), num(m.group(2))
    out["res"] = res
    return out


KLD_QUANTILES = [("Maximum", "max"), ("99.9%", "p999"), ("99.0%", "p99"), ("95.0%", "p95"), ("90.0%", "p90"),
                 ("Median ", "median"), ("10.0%", "p10"), (" 5.0%", "p05"), (" 1.0%", "p01"), (" 0.1%", "p001"),
                 ("Minimum", "min")]
DP_QUANTILES = [("Maximum", "dp_max"), ("99.9%", "dp_p999"), ("99.0%", "dp_p99"), ("95.0%", "dp_p95"), ("90.0%", "dp_p90"),
                ("75.0%", "dp_p75"), ("Median ", "dp_median"), ("25.0%", "dp_p25"), ("10.0%", "dp_p10"),
                (" 5.0%", "dp_p05"), (" 1.0%", "dp_p01"), (" 0.1%", "dp_p001"), ("Minimum", "dp_min")]


def parse_kld(text):
    out, res = {"tool": "llama-perplexity", "mode": "kld"}, {}
    parse_common(text, out, res)
    pm = r"\s*:\s*" + NUM + r"\s*±\s*" + NUM

    def pair(label, key, scale=1.0, pct=False):
        m = find("^" + re.escape(label) + pm + (r"\s*%" if pct else ""), text, label)
        (out[key], res[key]), (out[key + "_stderr"], res[key + "_stderr"]) = num(m.group(1), scale), num(m.group(2), scale)

    pair("Mean PPL(Q)", "ppl")
    pair("Mean PPL(base)", "ppl_reference")
    pair("Mean ln(PPL(Q)/PPL(base))", "ln_ppl_ratio")
    pair("Mean PPL(Q)/PPL(base)", "ppl_ratio")
    pair("Mean PPL(Q)-PPL(base)", "ppl_diff")
    m = find(r"^Cor\(ln\(PPL\(Q\)\), ln\(PPL\(base\)\)\)\s*:\s*" + NUM + "%", text, "Cor(ln(PPL(Q)), ln(PPL(base)))")
    out["ln_ppl_correlation"], res["ln_ppl_correlation"] = num(m.group(1), 0.01)
    kld, kres = {}, {}
    m = find(r"^Mean    KLD:\s*" + NUM + r"\s*±\s*" + NUM, text, "Mean KLD")
    (kld["mean"], kres["mean"]), (kld["mean_stderr"], kres["mean_stderr"]) = num(m.group(1)), num(m.group(2))
    for label, key in KLD_QUANTILES:
        m = find("^" + re.escape(label) + r"\s*KLD:\s*" + NUM, text, label + " KLD")
        kld[key], kres[key] = num(m.group(1))
    m = find(r"^Mean    Δp:\s*" + NUM + r"\s*±\s*" + NUM + r"\s*%", text, "Mean Δp")
    (kld["dp_mean"], kres["dp_mean"]), (kld["dp_stderr"], kres["dp_stderr"]) = num(m.group(1), 0.01), num(m.group(2), 0.01)
    for label, key in DP_QUANTILES:
        m = find("^" + re.escape(label) + r"\s*Δp:\s*" + NUM + "%", text, label + " Δp")
        kld[key], kres[key] = num(m.group(1), 0.01)
    m = find(r"^RMS Δp\s*:\s*" + NUM + r"\s*±\s*" + NUM + r"\s*%", text, "RMS Δp")
    (kld["dp_rms"], kres["dp_rms"]), (kld["dp_rms_stderr"], kres["dp_rms_stderr"]) = num(m.group(1), 0.01), num(m.group(2), 0.01)
    m = find(r"^Same top p:\s*" + NUM + r"\s*±\s*" + NUM + r"\s*%", text, "Same top p")
    (kld["same_top"], kres["same_top"]), (kld["same_top_stderr"], kres["same_top_stderr"]) = num(m.group(1), 0.01), num(m.group(2), 0.01)
    kld["ppl_reference"], kres["ppl_reference"] = out["ppl_reference"], res["ppl_reference"]
    if "positions" in out:
        kld["positions"] = out["positions"]
    out["kld"] = kld
    for k, v in kres.items():
        res["kld." + k] = v
    out["res"] = res
    return out


def base_header(path):
    with open(path, "rb") as f:
        magic = f.read(8)
        if magic != b"_logits_":
            sys.exit(f"llamacpp.py: {path} is not a llama-perplexity logits file")
        n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", f.read(12))
        return n_ctx, n_vocab, n_chunk


def base_tokens(path):
    n_ctx, n_vocab, n_chunk = base_header(path)
    with open(path, "rb") as f:
        f.seek(20)
        n = n_ctx * n_chunk
        return n_ctx, n_chunk, list(struct.unpack(f"<{n}i", f.read(4 * n)))


def check_tokens(basefile, qf_results):
    n_ctx, n_chunk, ll = base_tokens(basefile)
    qf = json.load(open(qf_results))["ids"]
    n = min(len(ll), len(qf))
    first = next((i for i in range(n) if ll[i] != qf[i]), None)
    out = {"compared": n, "llama_tokens": len(ll), "qforge_tokens": len(qf), "identical": first is None and len(qf) >= len(ll)}
    if first is not None:
        out["first_difference"] = {"index": first, "chunk": first // n_ctx + 1, "llama": ll[first:first + 8], "qforge": qf[first:first + 8]}
        out["differing"] = sum(1 for i in range(n) if ll[i] != qf[i])
    return out


def flat(d, prefix=""):
    r = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "res":
            r.update(flat(v, prefix + k + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            r[prefix + k] = float(v)
        elif isinstance(v, str) and v in ("nan", "inf", "-inf"):
            r[prefix + k] = float(v)
    return r


# What is compared: (key in llama.cpp's JSON, key in qforge's results.json; "a|b": a when
# qforge records it, else b). Keys qforge does not record are shown as n/a and not counted.
# llama.cpp's mean KLD sums only the tokens whose base log-probability is above -16; qforge
# records that divergence's statistics as kld.llamacpp.* (and the exact divergence as kld.*, shown as info).
PPL_KEYS = [("positions", "tokens"), ("ppl", "ppl")]
# kld.ppl_reference is compared with llama.cpp's perplexity of the base model itself (its
# kld-base run, "base:ppl"): the "Mean PPL(base)" of the kld run is not that number — it is
# computed from the stored 16-bit log-probabilities, in which every token more than 16 nats below
# the row's top logit is raised to that floor, so it comes out lower; it is shown, not compared.
KLD_KEYS = [("positions", "tokens"), ("ppl", "ppl"), ("base:ppl", "kld.ppl_reference"), ("kld.positions", "kld.positions"),
            ("kld.mean", "kld.llamacpp.mean|kld.mean"), ("kld.mean_stderr", "kld.llamacpp.mean_stderr|kld.mean_stderr"),
            ("kld.median", "kld.llamacpp.median|kld.median"), ("kld.p90", "kld.llamacpp.p90|kld.p90"),
            ("kld.p95", "kld.llamacpp.p95|kld.p95"), ("kld.p99", "kld.llamacpp.p99|kld.p99"),
            ("kld.p999", "kld.llamacpp.p999|kld.p999"), ("kld.max", "kld.llamacpp.max|kld.max"),
 ("kld.same_top", "kld.same_top"),
            ("kld.same_top_stderr", "kld.same_top_stderr"), ("kld.dp_mean", "kld.dp_mean"),
            ("kld.dp_stderr", "kld.dp_stderr"), ("kld.dp_rms", "kld.dp_rms")]


def agree(ll, qf, res):
    if math.isnan(ll) or math.isnan(qf):
        return False
    tol = max(5e-4 * abs(ll), 0.5 * res * (1 + 1e-9))
    return abs(ll - qf) <= tol


def compare_rows(name, ll_json, qf_json, keys, rows, base_json=None):
    ll, qf = json.load(open(ll_json)), json.load(open(qf_json))
    lf, qff, res = flat(ll), flat(qf), dict(ll.get("res", {}))
    if base_json:
        base = json.load(open(base_json))
        for k, v in flat(base).items():
            lf["base:" + k] = v
        for k, v in base.get("res", {}).items():
            res["base:" + k] = v
    bad = 0
    for lk, qk in keys:
        if lk not in lf:
            continue
        lv = lf[lk]
        exact = lk in ("positions", "kld.positions")
        r = res.get(lk, 0.0)
        qk = next((k for k in qk.split("|") if k in qff), qk.split("|")[-1])
        if qk not in qff:
            rows.append((name, "kld.ppl_reference" if lk == "base:ppl" else lk, f"{lv:.10g}", "n/a", "", "not recorded by qforge"))
            continue
        qv = qff[qk]
        ok = lv == qv if exact else agree(lv, qv, r)
        bad += not ok
        rel = abs(qv - lv) / abs(lv) if lv else abs(qv - lv)
        label = "kld.ppl_reference (llama.cpp: its base run's ppl)" if lk == "base:ppl" else lk if qk == lk else f"{lk} (qforge: {qk})"
        rows.append((name, label, f"{lv:.10g}", f"{qv:.10g}", f"{rel:.2e}", "ok" if ok else "DISAGREE"))
    return bad


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    if a[0] == "parse":
        text = open(a[2], encoding="utf-8", errors="replace").read()
        out = parse_ppl(text) if a[1] == "ppl" else parse_kld(text)
        if a[1] == "ppl" and "calculating perplexity" not in text:
            out["mode"] = "kld-base"
        for kv in a[3:]:
            k, v = kv.split("=", 1)
            try:
                out[k] = json.loads(v)
            except ValueError:
                out[k] = v
        print(json.dumps(out, indent=1, ensure_ascii=False))
    elif a[0] == "base-info":
        n_ctx, n_vocab, n_chunk = base_header(a[1])
        print(json.dumps({"n_ctx": n_ctx, "n_vocab": n_vocab, "n_chunk": n_chunk}))
    elif a[0] == "check-tokens":
        r = check_tokens(a[1], a[2])
        print(json.dumps(r))
        sys.exit(0 if r["identical"] else 1)
    elif a[0] == "compare":
        name, rows = a[1], []
        bad = compare_rows(name + " F32", a[2], a[3], PPL_KEYS, rows)
        if len(a) >= 6:
            bad += compare_rows(name + " RTN vs F32", a[4], a[5], KLD_KEYS, rows, base_json=a[2])
            q = json.load(open(a[5])).get("kld", {})
            # The minimum divergence is ~2e-5, printed by llama.cpp with two significant digits
            # (%10.6f) and moved by ~1e-6 by its 16-bit base log-probabilities: shown, not compared.
            llk = flat(json.load(open(a[4]))).get("kld.min")
            qmin = flat(q).get("llamacpp.min")
            if llk is not None and qmin is not None:
                rows.append((name + " RTN vs F32", "kld.min (qforge: kld.llamacpp.min)", f"{llk:.10g}", f"{qmin:.10g}", "",
                             "info: printed to 2 significant digits; not compared"))
            if "llamacpp" in q and "mean" in q:
                rows.append((name + " RTN vs F32", "qforge's exact mean KLD (E2)", "-", f"{q['mean']:.10g}", "", "info: not compared"))
            ll = json.load(open(a[4]))
            if "ppl_reference" in ll:
                rows.append((name + " RTN vs F32", "Mean PPL(base) of the kld run", f"{ll['ppl_reference']:.10g}", "-", "",
                             "info: from the stored base log-probs, clamped at top-16 nats; not compared"))
        w = [max(len(r[i]) for r in rows + [("model", "quantity", "llama.cpp", "qforge", "rel diff", "")]) for i in range(6)]
        print("  ".join(h.ljust(w[i]) for i, h in enumerate(("model", "quantity", "llama.cpp", "qforge", "rel diff", ""))))
        for r in rows:
            print("  ".join(c.ljust(w[i]) for i, c in enumerate(r)))
        good = sum(1 for r in rows if r[5] == "ok")
        print(f"{name}: {good} agree, {bad} disagree, {sum(1 for r in rows if r[3] == 'n/a')} not recorded by qforge")
        sys.exit(1 if bad or good == 0 else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
