#!/usr/bin/env python3
"""Independent oracle: dequantize an AutoGPTQ "v1" checkpoint (qweight/qzeros/scales/g_idx) the
way AutoGPTQ's and GPTQModel's torch fallback kernels do, in numpy, into a float folder.

    gptq_dequant.py QUANTIZED_DIR OUT_DIR

    weight[o, i] = (unpack(qweight)[i, o] - (unpack(qzeros)[g_idx[i], o] + 1)) * scales[g_idx[i], o]

Bits come from quantize_config.json. OUT_DIR gets model.safetensors (every linear's weight
in f32, other tensors widened to f32) and config.json without quantization_config, so
`quantize verify OUT_DIR QUANTIZED_DIR` compares our dequantization with this one.
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_read import read as load_file  # noqa: E402


src, out = sys.argv[1], sys.argv[2]
qcfg = json.load(open(os.path.join(src, "quantize_config.json")))
bits = qcfg["bits"]
assert qcfg.get("checkpoint_format", "gptq") == "gptq"
config = json.load(open(os.path.join(src, "config.json")))
config.pop("quantization_config", None)
sd = load_file(os.path.join(src, "model.safetensors"))
shifts = np.arange(0, 32, bits, dtype=np.uint32)
mask = np.uint32((1 << bits) - 1)
result = {}
for k in sorted(sd):
    if not k.endswith(".qweight"):
        continue
    p = k[: -len(".qweight")]
    qweight = sd[k].view(np.uint32)          # [in / per, out]
    qzeros = sd[p + ".qzeros"].view(np.uint32)  # [groups, out / per]
    scales = sd[p + ".scales"].astype(np.float32)  # [groups, out]
    g_idx = sd[p + ".g_idx"].astype(np.int64)   # [in]
    w = (qweight[:, None, :] >> shifts[None, :, None]) & mask  # [in/per, per, out]
    w = w.reshape(-1, qweight.shape[1]).astype(np.int64)      # [in, out]
    z = (qzeros[:, :, None] >> shifts[None, None, :]) & mask  # [groups, out/per, per]
    z = z.reshape(qzeros.shape[0], -1).astype(np.int64) + 1   # [groups, out]
    deq = (w - z[g_idx]).astype(np.float32) * scales[g_idx]   # [in, out]
    result[p + ".weight"] = np.ascontiguousarray(deq.T)
parts = (".qweight", ".qzeros", ".scales", ".g_idx")
for k, v in sd.items():
    if not k.endswith(parts):
        result[k] = v
os.makedirs(out, exist_ok=True)
save_file(result, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
print(json.dumps({"ok": True, "linears": sum(k.endswith(".qweight") for k in sd)}))
