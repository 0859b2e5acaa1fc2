#!/usr/bin/env python3
"""Independent oracle: dequantize an AutoAWQ GEMM checkpoint (qweight/qzeros/scales) in numpy,
written from the layout's description (AutoAWQ's `unpack_awq` + `reverse_awq_order`), not from
our Rust code, into a float folder.

    awq_dequant.py QUANTIZED_DIR OUT_DIR [ORIGINAL_DIR]

    qweight I32 [in, out/8], qzeros I32 [in/group, out/8], scales F16 [in/group, out]
    nibble n of a word (bits 4n..4n+3) holds logical column [0, 2, 4, 6, 1, 3, 5, 7][n], so
    logical column j is read from nibble [0, 4, 1, 5, 2, 6, 3, 7][j] (AWQ_REVERSE_ORDER)
    weight[o, i] = (q[i, o] - z[i // group, o]) * scales[i // group, o]     (zeros as stored)

config.json's quantization_config must say AWQ GEMM, 4 bits, zero points, and its group_size
must be the one the shapes imply (-1: the whole input row). OUT_DIR gets model.safetensors
(every linear's weight in f32, other tensors widened to f32) and config.json without
quantization_config, so `quantize verify OUT_DIR QUANTIZED_DIR` compares our dequantization
with this one.

With ORIGINAL_DIR (round to nearest only): AutoAWQ's rule bounds the error against the original
weights: within half a step of the group's f16 scale (plus what rounding the scale to f16 moves
the grid's far end) where the group spans zero, and the scale is the group's range / 15 rounded
to f16. Prints the largest error in steps.
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_read import read as load_file  # noqa: E402

AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def unpack(packed):
    """[r, c] int32 words -> [r, 8c] logical 4-bit values."""
    p = packed.view(np.uint32)
    shifts = np.arange(0, 32, 4, dtype=np.uint32)
    nib = (p[:, :, None] >> shifts[None, None, :]) & np.uint32(0xF)  # [r, c, nibble]
    logical = nib[:, :, AWQ_REVERSE_ORDER]                          # [r, c, column j]
    return logical.reshape(p.shape[0], -1).astype(np.int64)


def fail(msg):
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(1)


src, out = sys.argv[1], sys.argv[2]
orig = load_file(os.path.join(sys.argv[3], "model.safetensors")) if len(sys.argv) > 3 else None
config = json.load(open(os.path.join(src, "config.json")))
qc = config.pop("quantization_config", None) or fail("no quantization_config")
for k, v in [("quant_method", "awq"), ("bits", 4), ("zero_point", True), ("version", "gemm")]:
    if qc.get(k) != v:
        fail(f"quantization_config {k} = {qc.get(k)!r}, expected {v!r}")
sd = load_file(os.path.join(src, "model.safetensors"))
result = {}
worst = 0.0
for k in sorted(sd):
    if not k.endswith(".qweight"):
        continue
    p = k[: -len(".qweight")]
    if p + ".g_idx" in sd:
        fail(f"{p}: AWQ stores no g_idx")
    q = unpack(sd[k])                                    # [in, out]
    z = unpack(sd[p + ".qzeros"])                        # [groups, out]
    scales = sd[p + ".scales"]
    if scales.dtype != np.float16:
        fail(f"{p}: scales are {scales.dtype}")
    scales = scales.astype(np.float32)                   # [groups, out]
    n_in, n_out = q.shape
    groups = scales.shape[0]
    if z.shape != (groups, n_out) or scales.shape[1] != n_out or n_in % groups:
        fail(f"{p}: shapes qweight {sd[k].shape} qzeros {sd[p + '.qzeros'].shape} scales {scales.shape}")
    group = n_in // groups
    if qc["group_size"] != (-1 if groups == 1 else group):
        fail(f"{p}: group {group}, config says {qc['group_size']}")
    gi = np.arange(n_in) // group
    deq = (q - z[gi]).astype(np.float32) * scales[gi]    # [in, out]
    w = np.ascontiguousarray(deq.T)                      # [out, in]
    result[p + ".weight"] = w
    if orig is not None:
        x = orig[p + ".weight"].astype(np.float32)       # [out, in]
        xg = x.reshape(n_out, groups, group)
        mn, mx = xg.min(-1), xg.max(-1)                  # [out, groups]
        s = scales.T                                     # [out, groups]
        want = np.maximum(mx - mn, np.float32(1e-5)) / np.float32(15)
        if not np.array_equal(s, want.astype(np.float16).astype(np.float32)):
            fail(f"{p}: scales are not the groups' range / 15 in f16")
        spans = (mn <= 0) & (mx >= 0)
        err = np.abs(x - w).reshape(n_out, groups, group).max(-1)
        bound = s * (0.5 + 16 * 2.0**-11)
        if not np.all(err[spans] <= bound[spans]):
            fail(f"{p}: an error beyond half a step")
        worst = max(worst, float((err / s)[spans].max()))
parts = (".qweight", ".qzeros", ".scales")
for k, v in sd.items():
    if not k.endswith(parts):
        result[k] = v.astype(np.float32) if v.dtype == np.float16 else v
os.makedirs(out, exist_ok=True)
save_file(result, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
print(json.dumps({"ok": True, "linears": sum(k.endswith(".qweight") for k in sd),
                  "max_err_steps": worst}))
