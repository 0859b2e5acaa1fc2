#!/usr/bin/env python3
"""SHA-256 of every output the bundled fixtures produce, for every target, layout and method.

Prints one line per output file: `case  file  sha256`. The committed table beside this script
(`expected.txt`) is what the code produced when it was last changed on purpose; `--check`
compares with it and prints the differences (CI runs that). A restructuring that must not
change what users get proves it by this table not changing.

    python3 tests/hashes/output_hashes.py [--bin target/release/quantize] [--check | --write]

Needs only the `quantize` binary and python3 (standard library): the importance matrix is
generated here, in llama.cpp's legacy .dat form.
"""
import argparse
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "fixtures"
EXPECTED = Path(__file__).resolve().parent / "expected.txt"

GGUF_TYPES = [
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m",
    "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "iq4_nl", "iq4_xs",
]
# small calibration so the table is quick; the same text (shipped default) every time
CALIB = ["--calib-samples", "8", "--calib-seq-len", "64"]


def cases(tmp: Path):
    """(name, argv after the binary, output path) for every case."""
    tl = FIX / "tiny-llama"
    spm = tmp / "tiny-llama-spm"
    if not spm.exists():
        shutil.copytree(FIX / "tiny-llama-spm", spm)
        shutil.copy(tl / "model.safetensors", spm / "model.safetensors")
    imat = tmp / "imatrix.dat"
    write_imatrix(imat)
    st = tl / "model.safetensors"
    out = []

    def add(name, args, output):
        out.append((name, args, tmp / "out" / output))

    # HF folder -> GGUF, every file type (converter + llama-quantize layout)
    for t in GGUF_TYPES:
        add(f"gguf-{t}", [str(tl), "--to", t], f"gguf-{t}.gguf")
    for t in ["q4_k_m", "q4_0", "iq4_xs", "q2_k"]:
        add(f"gguf-{t}-imatrix", [str(tl), "--to", t, "--imatrix", imat.name], f"gguf-{t}-im.gguf")
    add("gguf-q4_k-pure", [str(tl), "--to", "q4_k", "--pure"], "gguf-q4k-pure.gguf")
    add("gguf-q5_0-types", [str(tl), "--to", "q5_0", "--output-tensor-type", "q8_0",
                            "--token-embedding-type", "q4_0"], "gguf-q5_0-types.gguf")
    add("gguf-keep-names", [str(st), "--to", "q4_0", "--keep-names"], "keep-names.gguf")
    add("gguf-spm-f16", [str(spm), "--to", "f16"], "spm-f16.gguf")
    add("gguf-split-q8_0", [str(tl), "--to", "q8_0", "--split-max-size", "1M"], "split.gguf")
    # GGUF input
    add("gguf-in-f16-to-q4_k_m", ["@gguf-f16", "--to", "q4_k_m"], "from-f16-q4km.gguf")
    add("gguf-in-q8_0-requant-q4_0", ["@gguf-q8_0", "--to", "q4_0", "--allow-requantize"],
        "requant.gguf")
    # safetensors outputs (compressed-tensors, AutoGPTQ, AutoAWQ, floats)
    st_cases = {
        "int8": ["--to", "int8"],
        "int8-tensor": ["--to", "int8", "--granularity", "tensor"],
        "int4-g128": ["--to", "int4", "--group", "128"],
        "int4-g64-asym": ["--to", "int4", "--group", "64", "--asym"],
        "int4-channel-asym": ["--to", "int4", "--granularity", "channel", "--asym"],
        "int3-g32": ["--to", "int3", "--group", "32"],
        "int2-g32-asym": ["--to", "int2", "--group", "32", "--asym"],
        "fp8": ["--to", "fp8"],
        "fp8-tensor": ["--to", "fp8", "--granularity", "tensor"],
        "fp8-block": ["--to", "fp8", "--granularity", "block"],
        "fp8-e5m2": ["--to", "fp8-e5m2"],
        "gptq-layout-int4-g64": ["--to", "int4", "--group", "64", "--format", "gptq"],
        "gptq-layout-int8": ["--to", "int8", "--format", "gptq"],
        "gptq-layout-int2-g32": ["--to", "int2", "--group", "32", "--format", "gptq"],
        "awq-layout-int4-g32": ["--to", "int4", "--group", "32", "--format", "awq"],
        "awq-layout-int4-channel-o-kept": ["--to", "int4", "--granularity", "channel",
                                           "--format", "awq", "--tensor-type", "o_proj=keep"],
        "int4-include-embed": ["--to", "int4", "--include", "embed_tokens"],
        "int4-tensor-type": ["--to", "int4", "--tensor-type", "down_proj=int8",
                             "--tensor-type", "o_proj=keep"],
    }
    for name, a in st_cases.items():
        add(f"st-{name}", [str(tl)] + a, f"st-{name}")
    add("st-f16-file", [str(st), "--to", "f16"], "f16.safetensors")
    add("st-bf16-file", [str(st), "--to", "bf16"], "bf16.safetensors")
    add("st-int4-file", [str(st), "--to", "int4"], "int4.safetensors")
    # GPTQ
    gptq = {
        "gptq-int4-g64": ["--to", "int4", "--group", "64"],
        "gptq-int4-g64-asym-mse": ["--to", "int4", "--group", "64", "--asym", "--mse-clip"],
        "gptq-int8-actorder": ["--to", "int8", "--act-order", "--damp", "0.05"],
        "gptq-int4-layout": ["--to", "int4", "--group", "64", "--format", "gptq"],
        "gptq-int4-layout-actgroup": ["--to", "int4", "--group", "64", "--format", "gptq",
                                      "--act-order", "group"],
        "gptq-int4-awq-layout-actorder": ["--to", "int4", "--group", "64", "--format", "awq",
                                          "--act-order"],
    }
    for name, a in gptq.items():
        add(name, [str(tl)] + a + ["--method", "gptq"] + CALIB, name)
    for t in ["q4_0", "q4_1", "q8_0"]:
        add(f"gptq-gguf-{t}", [str(tl), "--to", t, "--method", "gptq"] + CALIB, f"gptq-{t}.gguf")
    # AWQ (scales folded into norms; clipping) and AWQ + GPTQ
    awq = ["--awq-tokens", "128"] + CALIB
    add("awq-int4-g32-asym", [str(tl), "--to", "int4", "--group", "32", "--asym",
                              "--method", "awq"] + awq, "awq-int4-g32-asym")
    add("awq-gguf-q4_k_m", [str(tl), "--to", "q4_k_m", "--method", "awq"] + awq,
        "awq-q4_k_m.gguf")
    add("awq-gguf-q4_k_m-imatrix", [str(tl), "--to", "q4_k_m", "--method", "awq",
                                    "--imatrix", imat.name] + awq, "awq-q4_k_m-im.gguf")
    add("awq-gptq-gguf-q4_0", [str(tl), "--to", "q4_0", "--method", "awq+gptq"] + awq,
        "awq-gptq-q4_0.gguf")
    # learned rounding (few steps: the bytes, not the quality, are what is pinned)
    sr = ["--method", "signround", "--iters", "8", "--batch", "4"] + CALIB
    add("signround-int4-g32-asym", [str(tl), "--to", "int4", "--group", "32", "--asym"] + sr,
        "signround-int4-g32-asym")
    # 12 steps: one refit of the K-quant scales (every 10 steps)
    sr12 = ["--method", "signround", "--iters", "12", "--batch", "4"] + CALIB
    add("signround-gguf-q4_k_m", [str(tl), "--to", "q4_k_m"] + sr12, "signround-q4_k_m.gguf")
    add("signround-gguf-q4_0-from-gptq", [str(tl), "--to", "q4_0", "--init", "gptq"] + sr,
        "signround-gptq-q4_0.gguf")
    # GPTQ's error feedback on the search's grids, no steps
    add("signround-gguf-q4_k_m-search-gptq", [str(tl), "--to", "q4_k_m", "--method", "signround",
                                              "--init", "search+gptq", "--iters", "0"] + CALIB,
        "signround-q4_k_m-sg.gguf")
    # its zero-step search alone, and GPTQ on the Q3_K grids
    add("signround-gguf-q3_k_m-iters0", [str(tl), "--to", "q3_k_m", "--method", "signround",
                                         "--iters", "0"] + CALIB, "signround-q3_k_m-0.gguf")
    add("gptq-gguf-q3_k", [str(tl), "--to", "q3_k_s", "--method", "gptq"] + CALIB,
        "gptq-q3_k.gguf")
    # GGUF -> HF export
    add("export-q4_0", ["export", "@gguf-q4_0"], "export-q4_0")
    add("export-f16-bf16", ["export", "@gguf-f16", "--dtype", "bf16"], "export-f16")
    return out


def write_imatrix(path: Path):
    """A legacy llama-imatrix .dat for the tiny-llama fixture's linears (deterministic values)."""
    entries = []
    for layer in range(2):
        for t, n in [("attn_q", 256), ("attn_k", 256), ("attn_v", 256), ("attn_output", 256),
                     ("ffn_gate", 256), ("ffn_up", 256), ("ffn_down", 768)]:
            name = f"blk.{layer}.{t}.weight"
            vals = [0.5 + ((i * 2654435761 + layer * 97 + n) % 1000) / 250.0 for i in range(n)]
            entries.append((name, vals))
    b = struct.pack("<i", len(entries))
    for name, vals in entries:
        nb = name.encode()
        b += struct.pack("<i", len(nb)) + nb + struct.pack("<ii", 1, len(vals))
        b += struct.pack(f"<{len(vals)}f", *vals)
    b += struct.pack("<i", 3) + struct.pack("<i", 8) + b"calib.txt"
    path.write_bytes(b)


def run(binary: str, tmp: Path):
    rows = []
    made = {}
    for name, args, output in cases(tmp):
        args = [str(made[a[1:]]) if a.startswith("@") else a for a in args]
        if args[0] == "export":
            argv = [binary, "export", args[1], "-o", str(output), "-q", "-j", "2"] + args[2:]
        else:
            argv = [binary] + args + ["-o", str(output), "-q", "-j", "2"]
        output.parent.mkdir(parents=True, exist_ok=True)
        # from inside tmp: the imatrix path (recorded in the GGUF) is the same every run
        r = subprocess.run(argv, capture_output=True, text=True, cwd=tmp)
        if r.returncode != 0:
            rows.append((name, "-", f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"))
            continue
        made[name] = output
        files = [output] if output.is_file() else []
        if output.is_dir():
            files = sorted(p for p in output.rglob("*") if p.is_file())
        elif not output.exists():
            # split set: {stem}-0000k-of-0000n.gguf
            files = sorted(output.parent.glob(output.stem + "-*-of-*.gguf"))
        for f in files:
            rel = f.relative_to(output) if output.is_dir() else Path(f.name)
            rows.append((name, str(rel), hashlib.sha256(f.read_bytes()).hexdigest()))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=None)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--check", action="store_true", help="compare with expected.txt")
    g.add_argument("--write", action="store_true", help="rewrite expected.txt")
    a = ap.parse_args()
    binary = os.path.abspath(a.bin or str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "quantize"))
    with tempfile.TemporaryDirectory() as d:
        rows = run(binary, Path(d))
    text = "".join(f"{c:<28} {f:<34} {h}\n" for c, f, h in rows)
    if a.write:
        EXPECTED.write_text(text)
    if a.check:
        want = EXPECTED.read_text().splitlines()
        got = text.splitlines()
        if want != got:
            ws, gs = set(want), set(got)
            for line in want:
                if line not in gs:
                    print("- " + line)
            for line in got:
                if line not in ws:
                    print("+ " + line)
            print(f"output hashes differ from {EXPECTED.relative_to(ROOT)}", file=sys.stderr)
            sys.exit(1)
        print(f"output hashes: {len(got)} files equal to {EXPECTED.relative_to(ROOT)}")
    elif not a.write:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
