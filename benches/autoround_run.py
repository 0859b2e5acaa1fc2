#!/usr/bin/env python3
"""Run Intel's AutoRound (PyPI `auto-round`) on CPU, in f32, on the same calibration windows
quantsmith's `--method signround --calib FILE --calib-samples 32 --calib-seq-len 512` uses, and
export one GGUF file for `quantize eval`.  Driven by benches/autoround.sh.

Calibration windows: benches/calib_windows.py (quantsmith's selection: tokenizer.json without
special tokens, disjoint windows, the last tenth held out, the seeded SplitMix64 choice, in
text order).  They go to AutoRound pre-tokenized, as its `dataset` argument: a list whose items
are LongTensors of shape (batch, seq_len), one per batch of --batch-size windows (what its own
dataloader yields).  AutoRound runs the model on each item (calibration.llm.calib), caches the
block inputs and tunes on them in mini-batches of batch_size.

Modes: --iters 0 is AutoRound's "optimized RTN" (RTNConfig -> OptimizedRTNConfig: an imatrix
from the calibration data, then its GGUF scale/min search weighted by it); --iters N > 0 is
SignRound (signed-gradient tuning of rounding offsets and min/max clipping, N steps per decoder
block, lr default 1/iters, then the same GGUF packing).
"""
import argparse
import glob
import json
import os
import shutil
import time

# AutoRound's GGUF targets (auto_round/export/export_to_gguf/config.py GGUF_CONFIG).  It has
# no plain llama.cpp Q2_K file type (MOSTLY_Q2_K): q2_k_s (MOSTLY_Q2_K_S) is its only Q2_K
# mixture apart from q2_k_mixed (a MoE recipe).
TYPES = ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k_s", "q3_k_s", "q3_k_m", "q3_k_l",
         "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--calib", required=True, help="plain-text calibration file")
    p.add_argument("--out", required=True, help="output GGUF file")
    p.add_argument("--type", required=True, choices=TYPES, help="AutoRound GGUF format gguf:TYPE")
    p.add_argument("--iters", type=int, default=0, help="0: optimized RTN; N: SignRound steps")
    p.add_argument("--lr", type=float, default=None, help="SignRound lr (default AutoRound's, 1/iters)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8, help="AutoRound batch_size (its default 8)")
    p.add_argument("--seed", type=int, default=0, help="window choice, as quantsmith --seed")
    p.add_argument("--ar-seed", type=int, default=42, help="AutoRound's seed (its default 42)")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="enable_torch_compile: auto = AutoRound's default (on for SignRound on "
                        "Linux, off for RTN), on, off")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default=None, help="AutoRound's output folder (default OUT.d)")
    return p.parse_args()


def main():
    a = parse()
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import auto_round
    from auto_round import AutoRound

    from calib_windows import windows  # benches/calib_windows.py (the script's folder)

    text = open(a.calib, encoding="utf-8").read()
    wins, chosen, ntok, nwin, held = windows(os.path.join(a.model, "tokenizer.json"), text,
                                             a.seq_len, a.samples, a.seed)
    print(f"calibration: {ntok} tokens, {nwin} windows of {a.seq_len}, {held} held out, "
          f"{len(wins)} fitted: windows {chosen}", flush=True)
    ids = torch.tensor(wins, dtype=torch.long)
    batches = list(torch.split(ids, a.batch_size, dim=0))

    t_load = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    t_load = time.perf_counter() - t_load

    fmt = f"gguf:{a.type}"
    kw = {}
    if a.iters > 0 and a.lr is not None:
        kw["lr"] = a.lr
    ar = AutoRound(model, tokenizer, scheme=fmt, iters=a.iters, dataset=batches,
                   nsamples=len(wins), seqlen=a.seq_len, batch_size=a.batch_size,
                   device_map="cpu", amp=False,
                   enable_torch_compile={"auto": None, "on": True, "off": False}[a.compile],
                   low_gpu_mem_usage=False, seed=a.ar_seed, **kw)
    qc = getattr(ar, "quantize_config", None)
    print(f"AutoRound: {type(ar).__name__}, torch.compile (at construction) "
          f"{ar.enable_torch_compile}, quantize config {type(qc).__name__}: "
          f"{ {k: v for k, v in vars(qc).items() if not k.startswith('_')} if qc else None}",
          flush=True)

    workdir = a.workdir or a.out + ".d"
    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    t_q = time.perf_counter()
    ar.quantize_and_save(workdir, format=fmt)
    t_q = time.perf_counter() - t_q

    ggufs = sorted(glob.glob(os.path.join(workdir, "**", "*.gguf"), recursive=True))
    if len(ggufs) != 1:
        raise SystemExit(f"expected one GGUF under {workdir}, found {ggufs}")
    shutil.move(ggufs[0], a.out)
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes; AutoRound named it "
          f"{os.path.relpath(ggufs[0], workdir)})", flush=True)

    from importlib.metadata import version

    import transformers

    summary = {
        "type": a.type, "format": fmt, "iters": a.iters, "lr": a.lr,
        "mode": "optimized RTN (imatrix)" if a.iters == 0 else "SignRound",
        "calib_windows": chosen, "seq_len": a.seq_len, "nsamples": len(wins),
        "batch_size": a.batch_size, "ar_seed": a.ar_seed, "threads": a.threads,
        "torch_compile": bool(ar.enable_torch_compile),
        "bytes": os.path.getsize(a.out),
        "load_s": round(t_load, 2), "quantize_and_save_s": round(t_q, 2),
        "total_s": round(time.perf_counter() - t0, 2),
        "versions": {"auto_round": auto_round.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__,
                     "gguf": version("gguf")},
    }
    with open(a.out + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
