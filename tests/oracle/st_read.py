"""A safetensors reader for the numpy oracles, written from the format's description (8-byte
header length, JSON header, raw little-endian data), not from our Rust reader: arrays in their
stored dtype, BF16 widened to F32 and FP8 (F8_E4M3, F8_E5M2) decoded to F32 (numpy has neither);
FP8 block scales (`weight_scale_inv`) are the caller's to apply."""
import json
import struct
from pathlib import Path

import numpy as np

KINDS = {"F32": "<f4", "F16": "<f2", "I32": "<i4", "I64": "<i8", "I8": "i1", "U8": "u1"}


def _e4m3_table():
    """The 256 values of OCP FP8 E4M3 ("e4m3fn", as torch.float8_e4m3fn): sign, 4 exponent bits
    (bias 7), 3 mantissa bits; exponent 0 is subnormal (m/8 * 2^-6); no infinities, only
    S.1111.111 is NaN (so the largest finite is 448)."""
    c = np.arange(256)
    sign = np.where(c & 0x80, -1.0, 1.0)
    e, m = (c >> 3) & 0xF, c & 0x7
    v = np.where(e == 0, m / 8 * 2.0 ** -6, (1 + m / 8) * 2.0 ** (e - 7))
    v = np.where((e == 15) & (m == 7), np.nan, v)
    return (sign * v).astype(np.float32)


E4M3 = _e4m3_table()


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
        elif dt == "F8_E4M3":
            a = E4M3[np.frombuffer(raw, "u1")]
        elif dt == "F8_E5M2":
            # E5M2 is the high byte of an IEEE half
            a = (np.frombuffer(raw, "u1").astype(np.uint16) << 8).view(np.float16)
            a = a.astype(np.float32)
        elif dt in KINDS:
            a = np.frombuffer(raw, KINDS[dt])
        else:
            raise SystemExit(f"{k}: dtype {dt} not handled")
        out[k] = a.reshape(v["shape"])
    return out
