#!/usr/bin/env python3
"""Paired comparison of two models on the same text, from `quantize eval --nll` files.

    quantize eval A.gguf --text T --nll a.npy ; quantize eval B.gguf --text T --nll b.npy
    python3 benches/nll_diff.py a.npy b.npy [c.npy ...]

Each file holds one model's negative log-likelihood of every scored token (same text, same
--ctx, same --chunks, so position k is the same token in every file). For each file after the
first it prints the mean per-position difference against the first (nats per prediction,
= ln(PPL_file / PPL_first)) with one standard error (llama-perplexity's formula,
sqrt(var / (n - 1))), and the fraction of positions where the file's is lower. Pairing removes
the text's own variation, which dominates each perplexity's standard error.
No third-party packages: reads the .npy header itself.
"""
import array
import ast
import math
import sys


def read_nll(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x93NUMPY\x01\x00":
        sys.exit(f"{path}: not a version 1.0 .npy file")
    hlen = int.from_bytes(data[8:10], "little")
    header = ast.literal_eval(data[10 : 10 + hlen].decode("latin1"))
    if header["descr"] != "<f4" or len(header["shape"]) != 1:
        sys.exit(f"{path}: expected a float32 vector, found {header}")
    values = array.array("f")
    values.frombytes(data[10 + hlen :])
    if len(values) != header["shape"][0]:
        sys.exit(f"{path}: {len(values)} values, the header says {header['shape'][0]}")
    return values


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    first = read_nll(sys.argv[1])
    n = len(first)
    base = sum(first) / n
    print(f"{sys.argv[1]}: {n} predictions, PPL {math.exp(base):.4f}")
    for path in sys.argv[2:]:
        other = read_nll(path)
        if len(other) != n:
            sys.exit(f"{path}: {len(other)} predictions, {sys.argv[1]} has {n}")
        d = [b - a for a, b in zip(first, other)]
        mean = sum(d) / n
        var = sum((x - mean) ** 2 for x in d) / n
        se = math.sqrt(var / (n - 1)) if n > 1 else 0.0
        lower = sum(x < 0 for x in d) / n
        ppl = math.exp(sum(other) / n)
        print(
            f"{path}: PPL {ppl:.4f}; minus the first: {mean:+.5f} ± {se:.5f} nats per prediction"
            f" ({mean / se if se else 0:+.1f} SE), lower at {100 * lower:.1f} % of positions"
        )


if __name__ == "__main__":
    main()
