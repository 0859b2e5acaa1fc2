#!/usr/bin/env python3
"""Independent oracle: decompress a compressed-tensors folder (pack-quantized integers or
float-quantized FP8) with the PyPI `compressed-tensors` package (the code vLLM and
llm-compressor use) into a float folder.

    ct_decompress.py QUANTIZED_DIR OUT_DIR [QUANTIZED_DIR OUT_DIR ...]

OUT_DIR gets model.safetensors (every quantized linear's weight as the package decompresses it,
in f32 arithmetic; every other tensor as stored) and config.json without quantization_config, so
`quantize verify OUT_DIR QUANTIZED_DIR` compares our dequantization with the package's.
"""
import json
import os
import sys

import torch
from compressed_tensors.compressors import FloatQuantizationCompressor, PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationConfig
from safetensors.torch import load_file, save_file


def decompress(src, out):
    config = json.load(open(os.path.join(src, "config.json")))
    qc = QuantizationConfig.model_validate(config.pop("quantization_config"))
    compressor = {
        "pack-quantized": PackedQuantizationCompressor,
        "float-quantized": FloatQuantizationCompressor,
    }[qc.format]
    # each module's scheme: the config group whose targets name it (a size-targeted mixture
    # has several groups), else the group targeting "Linear"
    groups = list(qc.config_groups.values())

    def scheme_of(module):
        for g in groups:
            if module in g.targets:
                return g
        fallback = [g for g in groups if "Linear" in g.targets]
        assert len(fallback) == 1, f"no config group targets {module}"
        return fallback[0]
    sd = {}
    for f in sorted(os.listdir(src)):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(src, f)))
    result = {}
    # a quantized module: its packed weight, or (float-quantized) a weight with a scale beside it
    modules = sorted(
        k[: -len(".weight_scale")]
        for k in sd
        if k.endswith(".weight_scale") and (k[: -len("_scale")] + "_packed" in sd or k[: -len("_scale")] in sd)
    )
    for m in modules:
        local = {k[len(m) + 1:]: v for k, v in sd.items() if k.startswith(m + ".") and k.count(".") == m.count(".") + 1}
        # scales in f32 so the package's (q - zero) * scale is computed at our precision; the
        # unpacking (bit layout, packed zero points, shape) is entirely the package's
        local["weight_scale"] = local["weight_scale"].to(torch.float32)
        dec = compressor.decompress(local, scheme_of(m))
        result[m + ".weight"] = dec["weight"].to(torch.float32).contiguous()
    quant_parts = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape", "weight_g_idx")
    for k, v in sd.items():
        if k.rsplit(".", 1)[-1] not in quant_parts and k not in result:
            result[k] = v.contiguous()
    os.makedirs(out, exist_ok=True)
    save_file(result, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
    return len(modules)


args = sys.argv[1:]
counts = [decompress(src, out) for src, out in zip(args[0::2], args[1::2])]
print(json.dumps({"ok": True, "modules": counts[0] if len(counts) == 1 else counts}))
