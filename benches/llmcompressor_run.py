#!/usr/bin/env python3
"""Run llm-compressor's oneshot (GPTQ or AWQ, W4A16, group-wise) on CPU on the same
calibration windows quantsmith's `--method gptq|awq --calib FILE` uses, and save a
compressed-tensors folder for `quantize eval`.  Driven by benches/llmcompressor.sh.

Calibration windows (crates/formats/src/calib.rs): the text is tokenized with the model's
tokenizer.json without special tokens (no BOS), cut into disjoint windows of --seq-len tokens
(tail dropped); the last tenth of the windows (at least one) is held out, and the fit set is
the remaining windows; when --samples is below their number, the same seeded choice as
quantsmith's (SplitMix64 partial shuffle), kept in text order.  quantsmith's --method awq
searches on --awq-tokens (2048) tokens = the first 4 such windows (--calib-samples 4 here).
"""
import argparse
import json
import os
import shutil
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Hugging Face model folder")
    p.add_argument("--calib", required=True, help="plain-text calibration file")
    p.add_argument("--out", required=True, help="output folder (compressed-tensors)")
    p.add_argument("--method", choices=["gptq", "awq"], required=True)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group", type=int, default=64)
    p.add_argument("--asym", action="store_true", help="zero points (default: symmetric)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="window choice, as quantsmith --seed")
    p.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening_frac")
    p.add_argument("--actorder", default="none",
                   help="GPTQ actorder: none (quantsmith's default), static, group, weight")
    p.add_argument("--duo-scaling", default="true", choices=["true", "false", "both"],
                   help="AWQ duo_scaling")
    p.add_argument("--layers", type=int, default=0,
                   help="keep only the first N decoder layers (timing runs; output not evaluable)")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def patch_pin_memory_for_cpu():
    """AWQ on CPU: AWQModifier._apply_smoothing pins the cached layer inputs
    (IntermediatesCache.pin_memory) for faster host->device copies.  Without an accelerator
    Tensor.pin_memory() raises, so make pinning a no-op when none is available (the values
    stay where they are; nothing else changes).  LLMC_NO_PIN_PATCH=1 skips it (to check
    whether a later llm-compressor still needs it)."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if os.environ.get("LLMC_NO_PIN_PATCH"):
        return False
    if not torch.accelerator.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
        return True
    return False


def main():
    a = parse()
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    import llmcompressor
    from llmcompressor import oneshot

    from calib_windows import windows  # benches/calib_windows.py (the script's folder)

    text = open(a.calib, encoding="utf-8").read()
    wins, chosen, ntok, nwin, held = windows(os.path.join(a.model, "tokenizer.json"), text,
                                             a.seq_len, a.samples, a.seed)
    print(f"calibration: {ntok} tokens, {nwin} windows of {a.seq_len}, {held} held out, "
          f"{len(wins)} fitted: windows {chosen}", flush=True)
    ds = Dataset.from_dict({"input_ids": wins, "attention_mask": [[1] * len(w) for w in wins]})

    t_load = time.perf_counter()
    kw = {"num_hidden_layers": a.layers} if a.layers else {}
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, **kw)
    model.eval()
    t_load = time.perf_counter() - t_load

    weights = QuantizationArgs(num_bits=a.bits, type="int", symmetric=not a.asym,
                               strategy="group", group_size=a.group)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    if a.method == "gptq":
        from llmcompressor.modifiers.gptq import GPTQModifier

        actorder = None if a.actorder == "none" else a.actorder
        recipe = [GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"],
                               dampening_frac=a.damp, actorder=actorder, block_size=128)]
    else:
        from llmcompressor.modifiers.quantization import QuantizationModifier
        from llmcompressor.modifiers.transform.awq import AWQModifier

        patched = patch_pin_memory_for_cpu()
        print(f"pin_memory patch for CPU: {'applied' if patched else 'not needed'}", flush=True)
        duo = {"true": True, "false": False, "both": "both"}[a.duo_scaling]
        awq = AWQModifier(duo_scaling=duo)
        recipe = [awq, QuantizationModifier(config_groups={"group_0": scheme},
                                            ignore=["lm_head"])]

    t_cal = time.perf_counter()
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=a.seq_len,
            num_calibration_samples=len(wins), shuffle_calibration_samples=False,
            batch_size=1)
    t_cal = time.perf_counter() - t_cal

    t_save = time.perf_counter()
    if os.path.exists(a.out):
        shutil.rmtree(a.out)
    model.save_pretrained(a.out, save_compressed=True)
    # the original tokenizer files, byte for byte (the evaluator tokenizes with them)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json",
              "special_tokens_map.json"):
        src = os.path.join(a.model, f)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(a.out, f))
    t_save = time.perf_counter() - t_save

    import compressed_tensors
    import transformers

    summary = {
        "method": a.method, "bits": a.bits, "group": a.group,
        "symmetric": not a.asym, "damp": a.damp if a.method == "gptq" else None,
        "actorder": a.actorder if a.method == "gptq" else None,
        "duo_scaling": a.duo_scaling if a.method == "awq" else None,
        "calib_windows": chosen, "layers": a.layers or None, "seq_len": a.seq_len, "threads": a.threads,
        "load_s": round(t_load, 2), "oneshot_s": round(t_cal, 2), "save_s": round(t_save, 2),
        "total_s": round(time.perf_counter() - t0, 2),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "llmcompressor": llmcompressor.__version__,
                     "compressed_tensors": compressed_tensors.__version__},
    }
    with open(os.path.join(a.out, "llmc_run.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
