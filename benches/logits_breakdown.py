#!/usr/bin/env python3
"""Where a quantized model's perplexity comes from, from the logits `quantize eval --logits` writes.

    quantize eval MODEL --against FLOAT --text T --chunks N --logits q.npy     # each file
    python3 benches/logits_breakdown.py --tokenizer HF_FOLDER --text T --chunks N \\
        --float f.npy q1.npy [q2.npy ...]

For each quantized file: its perplexity and mean KL divergence against the float logits (which
must equal `quantize eval`'s: the check that the targets below are the scored tokens), the
per-prediction excess over the float model's log-loss with its standard error, the perplexity
and KL divergence with the logits scaled by a few factors (a temperature correction), and the
excess and KL divergence split by the float model's probability of the true token. With two
or more files, the paired difference of the first two per prediction, with its standard error.

The scored tokens are cut as `quantize eval` (and llama-perplexity) cut them: the text tokenized
once (BOS first when the tokenizer adds one), chunks of --ctx tokens, in each chunk the logits at
positions ctx/2 .. ctx-2 scored against the next token. Needs numpy and tokenizers (the CI venv
has both).
"""
import argparse
import json
import os

import numpy as np
import tokenizers


def targets(folder, text_path, ctx, chunks):
    tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
    ids = tok.encode(open(text_path, encoding="utf-8").read(), add_special_tokens=False).ids
    if cfg.get("add_bos_token"):
        model_cfg = json.load(open(os.path.join(folder, "config.json")))
        ids = [model_cfg["bos_token_id"]] + ids
    n = len(ids) // ctx if chunks is None else min(chunks, len(ids) // ctx)
    first = ctx // 2
    out = []
    for c in range(n):
        out += ids[c * ctx:(c + 1) * ctx][first + 1:ctx]
    return np.array(out)


def log_softmax(x):
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def load(path, rows):
    x = np.asarray(np.load(path, mmap_mode="r"), dtype=np.float64)
    if x.shape[0] != rows:
        raise SystemExit(f"{path}: {x.shape[0]} rows, {rows} scored tokens")
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True, help="HF folder with tokenizer.json")
    ap.add_argument("--text", required=True)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int)
    ap.add_argument("--float", required=True, help="the float model's logits")
    ap.add_argument("--scales", default="0.99,1.0,1.004,1.008,1.02")
    ap.add_argument("quantized", nargs="+")
    a = ap.parse_args()
    t = targets(a.tokenizer, a.text, a.ctx, a.chunks)
    r = np.arange(len(t))
    f = log_softmax(load(a.float, len(t)))
    pf = np.exp(f)
    lf = f[r, t]
    print(f"{len(t)} scored tokens; float PPL {np.exp(-lf.mean()):.4f}")
    edges = [0, 0.01, 0.1, 0.3, 0.6, 0.9, 1.01]
    bucket = np.digitize(np.exp(lf), edges) - 1
    excess = {}
    for path in a.quantized:
        raw = load(path, len(t))
        q = log_softmax(raw)
        kl = (pf * (f - q)).sum(1)
        d = lf - q[r, t]
        excess[path] = d
        se = d.std() / np.sqrt(len(d))
        print(f"\n{path}: PPL {np.exp(-q[r, t].mean()):.4f}, mean KL {kl.mean():.6f}, "
              f"excess log-loss {d.mean():.5f} ± {se:.5f} nats per prediction")
        for s in (float(v) for v in a.scales.split(",")):
            qs = log_softmax(raw * s)
            print(f"  logits × {s}: PPL {np.exp(-qs[r, t].mean()):.4f}, "
                  f"KL {(pf * (f - qs)).sum(1).mean():.6f}")
        print("  by the float model's probability of the true token (shares of the means):")
        for k in range(len(edges) - 1):
            m = bucket == k
            print(f"    [{edges[k]:.2f}, {min(edges[k + 1], 1):.2f}): {m.sum():5d} tokens, "
                  f"excess {d[m].sum() / len(d):+.5f}, KL {kl[m].sum() / len(d):.5f}")
    if len(a.quantized) >= 2:
        p, q = a.quantized[:2]
        d = excess[p] - excess[q]
        print(f"\n{p} − {q}: {d.mean():+.5f} ± {d.std() / np.sqrt(len(d)):.5f} nats per prediction")


if __name__ == "__main__":
    main()
