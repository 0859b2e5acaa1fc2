"""A safetensors reader for the numpy oracles, written from the format's description (8-byte
header length, JSON header, raw little-endian data), not from our Rust reader: arrays in their
stored dtype, BF16 widened to F32 (numpy has no bfloat16)."""
import json
import struct
from pathlib import Path

import numpy as np

KINDS = {"F32": "<f4", "F16": "<f2", "I32": "<i4", "I64": "<i8", "I8": "i1", "U8": "u1"}


def read(path):
    buf = Path(path).read_bytes()
    n = struct.unpack("<Q", buf[:8])[0]
    header = json.loads(buf[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        raw = buf[8 + n + b:8 + n + e]
        dt = v["dtype"]
        if dt == "BF16":
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt in KINDS:
            a = np.frombuffer(raw, KINDS[dt])
        else:
            raise SystemExit(f"{k}: dtype {dt} not handled")
        out[k] = a.reshape(v["shape"])
    return out
