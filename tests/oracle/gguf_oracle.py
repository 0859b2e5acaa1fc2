#!/usr/bin/env python3
"""Independent checks of quantsmith output with llama.cpp's own Python package `gguf`
(and `ml_dtypes` for FP8). Called by tests/integration/oracle.rs; prints one JSON line.

  codecs DIR          DIR/<TYPE>.in.f32, <TYPE>.q, <TYPE>.deq.f32 for each ggml type; fp8 files too
  gguf FILE INPUT     read FILE with gguf.GGUFReader; every tensor must match INPUT (safetensors)
                      re-quantized by gguf.quants.quantize (or equal, for float tensors)
  decode HF_DIR OUT DIR [OUT DIR ...]
                      OUT (a GGUF converted from the llama folder HF_DIR, or a float safetensors
                      file) decoded independently into DIR/model.safetensors in f32 with HF_DIR's
                      names and row order (gguf-py's dequantizers; llama.cpp's converter's q/k
                      permutation undone), plus HF_DIR's config.json: `quantize verify DIR OUT`
                      then compares our decoding with this one
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize

TYPES = {"F16": T.F16, "BF16": T.BF16, "Q8_0": T.Q8_0, "Q4_0": T.Q4_0, "Q4_1": T.Q4_1, "Q5_0": T.Q5_0, "Q5_1": T.Q5_1}


def fail(msg):
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(1)


def first_diff(a, b):
    a = np.frombuffer(a, np.uint8)
    b = np.frombuffer(b, np.uint8)
    if a.shape != b.shape:
        return f"sizes differ: {a.size} vs {b.size}"
    i = int(np.argmax(a != b))
    return f"first difference at byte {i}: ours {a[i]} vs reference {b[i]}"


def codecs(d):
    d = Path(d)
    checked = []
    for name, qt in TYPES.items():
        x = np.fromfile(d / f"{name}.in.f32", dtype="<f4")
        ours = (d / f"{name}.q").read_bytes()
        ours_deq = np.fromfile(d / f"{name}.deq.f32", dtype="<f4")
        rows = x.reshape(-1, 256)
        ref = quantize(rows, qt).tobytes()
        if ref != ours:
            fail(f"{name}: our bytes differ from gguf.quants.quantize: {first_diff(ours, ref)}")
        deq = dequantize(np.frombuffer(ours, np.uint8).reshape(rows.shape[0], -1), qt).reshape(-1).astype(np.float32)
        if not np.array_equal(deq, ours_deq):
            i = int(np.argmax(deq != ours_deq))
            fail(f"{name}: dequantized value {i} differs: ours {ours_deq[i]!r} vs gguf {deq[i]!r}")
        checked.append(name)
    import ml_dtypes
    for name, dt, mx in [("E4M3", ml_dtypes.float8_e4m3fn, 448.0), ("E5M2", ml_dtypes.float8_e5m2, 57344.0)]:
        x = np.fromfile(d / f"{name}.in.f32", dtype="<f4")
        ours = np.frombuffer((d / f"{name}.q").read_bytes(), np.uint8)
        # ml_dtypes casts with round-to-nearest-even but does not saturate: clamp first,
        # as compressed-tensors does before its cast.
        ref = np.clip(x, -mx, mx).astype(dt).view(np.uint8)
        if not np.array_equal(ref, ours):
            i = int(np.argmax(ref != ours))
            fail(f"fp8 {name}: value {x[i]!r}: ours {ours[i]:#04x} vs ml_dtypes {ref[i]:#04x}")
        back = ours.view(dt).astype(np.float32)
        ours_deq = np.fromfile(d / f"{name}.deq.f32", dtype="<f4")
        if not np.array_equal(back, ours_deq):
            fail(f"fp8 {name}: decode differs from ml_dtypes")
        checked.append(name)
    print(json.dumps({"ok": True, "checked": checked}))


def read_safetensors(path):
    """Minimal independent safetensors reader -> {name: float32 array} (F32/F16/BF16)."""
    buf = Path(path).read_bytes()
    n = struct.unpack("<Q", buf[:8])[0]
    header = json.loads(buf[8:8 + n])
    base = 8 + n
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        raw = buf[base + b:base + e]
        if v["dtype"] == "BF16":
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif v["dtype"] == "F16":
            a = np.frombuffer(raw, "<f2").astype(np.float32)
        elif v["dtype"] == "F32":
            a = np.frombuffer(raw, "<f4").copy()
        else:
            continue
        out[k] = (a.reshape(v["shape"]), v["dtype"])
    return out


def check_gguf(path, input_path):
    r = gguf.GGUFReader(path)
    src = read_safetensors(input_path)
    seen = []
    for t in r.tensors:
        if t.name not in src:
            fail(f"tensor {t.name} not in the input")
        x, dtype = src[t.name]
        ne = [int(v) for v in t.shape]
        if list(reversed(ne)) != list(x.shape) and not (len(x.shape) == 1 and ne == [x.shape[0]]):
            fail(f"{t.name}: GGUF shape {ne} is not the input shape {list(x.shape)} reversed")
        qt = t.tensor_type
        data = np.asarray(t.data)
        if qt == T.F32:
            if not np.array_equal(data.reshape(-1), x.reshape(-1)):
                fail(f"{t.name}: F32 data differs from the input")
        elif qt in (T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1):
            if qt == T.BF16 and dtype == "BF16":
                ref = (x.reshape(-1).view(np.uint32) >> 16).astype(np.uint16).tobytes()
            else:
                ref = quantize(x.reshape(-1, x.shape[-1]), qt).tobytes()
            if data.tobytes() != ref:
                fail(f"{t.name} ({qt.name}): bytes differ from gguf.quants.quantize: {first_diff(data.tobytes(), ref)}")
        elif qt in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL):
            # gguf-py has no reference quantizer for these (tests compare with ggml itself);
            # its dequantizer must still give back the weights.
            deq = dequantize(data, qt).reshape(-1).astype(np.float64)
            xs = x.reshape(-1).astype(np.float64)
            sqnr = 10 * np.log10((xs ** 2).sum() / max(((xs - deq) ** 2).sum(), 1e-300))
            floor = {T.Q2_K: 5.0, T.Q3_K: 10.0}.get(qt, 15.0)
            if sqnr < floor:
                fail(f"{t.name} ({qt.name}): gguf-py dequantizes to SQNR {sqnr:.1f} dB < {floor}")
        else:
            fail(f"{t.name}: unexpected type {qt.name}")
        seen.append(t.name)
    align = r.fields.get("general.alignment")
    print(json.dumps({"ok": True, "tensors": len(seen), "alignment": int(align.parts[-1][0]) if align else 32}))


# llama.cpp's names for a llama folder's tensors (convert_hf_to_gguf.py / gguf-py's tensor map)
LLAMA_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(gguf_name):
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        return f"model.layers.{parts[1]}.{LLAMA_NAMES[parts[2]]}.{parts[3]}"
    return f"{LLAMA_NAMES[parts[0]]}.{parts[1]}"


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute (rotary halves interleaved)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def decode(out_path, hf_dir, dest):
    from safetensors.numpy import save_file

    hf_dir, dest = Path(hf_dir), Path(dest)
    config = json.loads((hf_dir / "config.json").read_text())
    result = {}
    if str(out_path).endswith(".gguf"):
        heads = config["num_attention_heads"]
        kv = config.get("num_key_value_heads", heads)
        for t in gguf.GGUFReader(out_path).tensors:
            rows_first = [int(v) for v in reversed(t.shape)]
            w = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(rows_first)
            name = hf_name(t.name)
            if t.name.endswith("attn_q.weight"):
                w = unpermute(w, heads)
            elif t.name.endswith("attn_k.weight"):
                w = unpermute(w, kv)
            result[name] = np.ascontiguousarray(w)
    else:
        for k, (a, _) in read_safetensors(out_path).items():
            result[k] = np.ascontiguousarray(a.astype(np.float32))
    dest.mkdir(parents=True, exist_ok=True)
    save_file(result, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return len(result)


if __name__ == "__main__":
    if sys.argv[1] == "codecs":
        codecs(sys.argv[2])
    elif sys.argv[1] == "gguf":
        check_gguf(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "decode":
        n = [decode(out, sys.argv[2], dest) for out, dest in zip(sys.argv[3::2], sys.argv[4::2])]
        print(json.dumps({"ok": True, "tensors": n}))
    else:
        fail("unknown command")
