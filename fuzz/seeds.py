#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora, fuzz/corpus/<target>/<seed> (docs/RELIABILITY.md).

Standard library only and deterministic: a tiny llama-style folder (hidden 32, one layer, a
64-token byte-level BPE vocabulary cut from fixtures/tiny-llama's) is generated here, and the
GGUF seeds are what our `quantize` makes of it; the rest are small files written directly
(safetensors, sharded sets, legacy and GGUF importance matrices, SentencePiece models, config
variants). Every seed stays under 100 KB.

  python3 fuzz/seeds.py [--quantize PATH]   # PATH: the quantize binary (default: build it with
                                            # cargo into $CARGO_TARGET_DIR or target/)
Multi-file inputs are the files joined by SEP (fuzz/src/lib.rs), after an option byte where the
target takes one (its doc comment says which).
"""
import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")
FIXTURES = os.path.join(ROOT, "fixtures")
SEP = b"\n--qsfuzz-file--\n"
MAX_SEED = 100_000
TARGETS = ["safetensors_header", "safetensors_source", "gguf", "imatrix", "spm", "config", "tokenizer", "plan"]
# fuzz/fuzz_targets/plan.rs's TARGETS, by name
PLAN_TARGETS = ["f16", "bf16", "f32", "q4_0", "q4_k_m", "q8_0", "q6_k", "iq4_xs", "q2_k", "q5_1", "q3_k_s",
                "iq4_nl", "int4", "int8", "fp8", "fp8-e5m2"]


def join(*parts):
    for p in parts:
        assert SEP not in p, "a part holds the separator"
    return SEP.join(parts)


def jdump(v):
    return json.dumps(v, indent=1).encode()


# ---------------------------------------------------------------- safetensors

def f32_bytes(vals):
    return struct.pack(f"<{len(vals)}f", *vals)


def bf16_bytes(vals):
    out = bytearray()
    for v in vals:
        b = struct.unpack("<I", struct.pack("<f", v))[0]
        b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16  # round to nearest even
        out += struct.pack("<H", b)
    return bytes(out)


def f16_bytes(vals):
    return struct.pack(f"<{len(vals)}e", *vals)


def safetensors(tensors, metadata=None, pad_to=8):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % pad_to)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


# ---------------------------------------------------------------- a tiny model

HIDDEN, INTER, HEADS, KV_HEADS, VOCAB = 32, 64, 2, 1, 64
HEAD_DIM = HIDDEN // HEADS


def tiny_tokenizer():
    """fixtures/tiny-llama's tokenizer cut to VOCAB tokens: its 3 specials, the byte tokens of
    the text's characters, then its merges in order while they fit."""
    tok = json.load(open(os.path.join(FIXTURES, "tiny-llama", "tokenizer.json"), encoding="utf-8"))
    specials = [a["content"] for a in tok["added_tokens"]]
    chars = "Ġabcdefghilmnoprstuvwy.,"
    vocab = specials + [c for c in chars]
    merges = []
    have = set(vocab)
    for m in tok["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        if len(vocab) >= VOCAB:
            break
        if a in have and b in have and a + b not in have:
            vocab.append(a + b)
            have.add(a + b)
            merges.append(f"{a} {b}")
    assert len(vocab) <= VOCAB
    tok["model"]["vocab"] = {t: i for i, t in enumerate(vocab)}
    tok["model"]["merges"] = merges
    return tok


def tiny_config(**over):
    c = json.load(open(os.path.join(FIXTURES, "tiny-llama", "config.json")))
    c.update(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=1, num_attention_heads=HEADS,
             num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, vocab_size=VOCAB, tie_word_embeddings=True)
    c.update(over)
    return c


def tiny_weights(rng, inter=INTER, layers=1, dtype="BF16", lm_head=False):
    enc = {"BF16": bf16_bytes, "F16": f16_bytes, "F32": f32_bytes}[dtype]

    def w(shape, scale=0.05):
        n = 1
        for d in shape:
            n *= d
        return enc([rng.gauss(0.0, scale) for _ in range(n)])

    def norm():
        return enc([1.0 + rng.gauss(0.0, 0.02) for _ in range(HIDDEN)])

    kv = KV_HEADS * HEAD_DIM
    ts = [("model.embed_tokens.weight", dtype, [VOCAB, HIDDEN], w([VOCAB, HIDDEN]))]
    for i in range(layers):
        p = f"model.layers.{i}."
        ts += [
            (p + "input_layernorm.weight", dtype, [HIDDEN], norm()),
            (p + "self_attn.q_proj.weight", dtype, [HIDDEN, HIDDEN], w([HIDDEN, HIDDEN])),
            (p + "self_attn.k_proj.weight", dtype, [kv, HIDDEN], w([kv, HIDDEN])),
            (p + "self_attn.v_proj.weight", dtype, [kv, HIDDEN], w([kv, HIDDEN])),
            (p + "self_attn.o_proj.weight", dtype, [HIDDEN, HIDDEN], w([HIDDEN, HIDDEN])),
            (p + "post_attention_layernorm.weight", dtype, [HIDDEN], norm()),
            (p + "mlp.gate_proj.weight", dtype, [inter, HIDDEN], w([inter, HIDDEN])),
            (p + "mlp.up_proj.weight", dtype, [inter, HIDDEN], w([inter, HIDDEN])),
            (p + "mlp.down_proj.weight", dtype, [HIDDEN, inter], w([HIDDEN, inter])),
        ]
    ts.append(("model.norm.weight", dtype, [HIDDEN], norm()))
    if lm_head:
        ts.append(("lm_head.weight", dtype, [VOCAB, HIDDEN], w([VOCAB, HIDDEN])))
    return ts


def tiny_tokenizer_config():
    c = json.load(open(os.path.join(FIXTURES, "tiny-llama", "tokenizer_config.json")))
    return c


# ---------------------------------------------------------------- GGUF (imatrix and hand-made seeds)

def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(t, v):
    fmt = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    if t == 8:
        return gguf_str(v)
    if t == 9:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(gguf_value(et, x) for x in items)
    return struct.pack("<" + fmt[t], v)


def gguf(kvs, tensors, version=3, align=32):
    """kvs: (key, type, value); tensors: (name, ne, ggml type id, raw bytes)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gguf_str(k) + struct.pack("<I", t) + gguf_value(t, v)
    off, offs = 0, []
    for _, _, _, raw in tensors:
        offs.append(off)
        off += len(raw)
        off += -off % align
    for (name, ne, ty, _), o in zip(tensors, offs):
        out += gguf_str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", ty, o)
    out += b"\0" * (-len(out) % align)
    for _, _, _, raw in tensors:
        out += raw + b"\0" * (-len(raw) % align)
    return out


def imatrix_gguf(rng, names, cols, n_mat=1, datasets=("wiki.train.raw",)):
    ts = []
    for n in names:
        sums = [abs(rng.gauss(0.0, 4.0)) for _ in range(cols * n_mat)]
        ts.append((n + ".in_sum2", [cols, n_mat], 0, f32_bytes(sums)))
        ts.append((n + ".counts", [1, n_mat], 0, f32_bytes([float(rng.randint(1, 64)) for _ in range(n_mat)])))
    kvs = [("general.type", 8, "imatrix"), ("imatrix.datasets", 9, (8, list(datasets))),
           ("imatrix.chunk_count", 4, 10), ("imatrix.chunk_size", 4, 512)]
    return gguf(kvs, ts)


def imatrix_dat(rng, names, cols, trailer=True):
    b = struct.pack("<i", len(names))
    for n in names:
        nb = n.encode()
        b += struct.pack("<i", len(nb)) + nb + struct.pack("<ii", 10, cols)
        b += f32_bytes([abs(rng.gauss(0.0, 4.0)) * 10 for _ in range(cols)])
    if trailer:
        b += struct.pack("<ii", 10, 4) + b"wiki"
    return b


# ---------------------------------------------------------------- SentencePiece

def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v == 0:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def pb_bytes(num, b):
    return varint(num << 3 | 2) + varint(len(b)) + b


def pb_uint(num, v):
    return varint(num << 3) + varint(v)


def spm_model(pieces, model_type=2, byte_fallback=True, dummy_prefix=True):
    out = b""
    for text, score, kind in pieces:
        p = pb_bytes(1, text.encode()) + varint(2 << 3 | 5) + struct.pack("<f", score)
        if kind != 1:
            p += pb_uint(3, kind)
        out += pb_bytes(1, p)
    out += pb_bytes(2, pb_uint(3, model_type) + pb_uint(4, len(pieces)) + pb_uint(35, int(byte_fallback)))
    out += pb_bytes(3, pb_bytes(1, b"identity") + pb_uint(3, int(dummy_prefix)))
    return out


def tiny_spm():
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(8)]
    for i, t in enumerate(["\u2581", "a", "e", "t", "\u2581t", "he", "\u2581the", "in", "or", "user"]):
        pieces.append((t, -float(i), 4 if t == "user" else 1))
    return spm_model(pieces)


# ---------------------------------------------------------------- quantize

def find_quantize(given):
    if given:
        return given
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "build", "--quiet", "--bin", "quantize"], cwd=ROOT, check=True)
    return os.path.join(target, "debug", "quantize")


def quantize(bin_, model, out, *args):
    subprocess.run([bin_, model, "-o", out, "-q", "--force", *args], check=True, stdout=subprocess.DEVNULL)
    with open(out, "rb") as f:
        return f.read()


def write_folder(d, files):
    os.makedirs(d, exist_ok=True)
    for name, b in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(b)


# ---------------------------------------------------------------- seeds

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quantize", help="the quantize binary (default: cargo build it)")
    a = ap.parse_args()
    rng = random.Random(9)
    seeds = {t: {} for t in TARGETS}

    # the tiny folder, in two sizes of MLP (64: 32-value blocks only; 256: K-quants too)
    tok = jdump(tiny_tokenizer())
    tcfg = jdump(tiny_tokenizer_config())
    cfg = jdump(tiny_config())
    st = safetensors(tiny_weights(rng), {"format": "pt"})
    cfg256 = jdump(tiny_config(intermediate_size=256, tie_word_embeddings=False))
    st256 = safetensors(tiny_weights(rng, inter=256, lm_head=True, dtype="F16"), {"format": "pt"})
    spm_tok = tiny_spm()
    spm_cfg = jdump(tiny_config(vocab_size=24, bos_token_id=1, eos_token_id=2))
    spm_tcfg = open(os.path.join(FIXTURES, "tiny-llama-spm", "tokenizer_config.json"), "rb").read()

    # safetensors_header: whole files
    s = seeds["safetensors_header"]
    s["tiny-bf16"] = st
    s["tiny-f16-k"] = st256
    s["dtypes"] = safetensors([
        ("f32", "F32", [2, 2], f32_bytes([1.0, -2.0, 0.5, 3.0e38])),
        ("f16", "F16", [3], f16_bytes([1.0, 65504.0, -0.0])),
        ("bf16", "BF16", [1, 2], bf16_bytes([1.0, -1e-40])),
        ("f64", "F64", [1], struct.pack("<d", 2.5)),
        ("i8", "I8", [4], bytes([0, 1, 0x7F, 0x80])),
        ("u8", "U8", [2], b"\x00\xff"),
        ("i16", "I16", [1], struct.pack("<h", -3)),
        ("i32", "I32", [1], struct.pack("<i", 7)),
        ("i64", "I64", [1], struct.pack("<q", -7)),
        ("u16", "U16", [1], struct.pack("<H", 9)),
        ("u32", "U32", [1], struct.pack("<I", 9)),
        ("u64", "U64", [1], struct.pack("<Q", 9)),
        ("bool", "BOOL", [2], b"\x00\x01"),
        ("e4m3", "F8_E4M3", [2], b"\x38\x7e"),
        ("e5m2", "F8_E5M2", [2], b"\x3c\x7b"),
        ("empty", "F32", [0, 4], b""),
        ("scalar", "F32", [], f32_bytes([1.0])),
    ], {"format": "pt", "note": "every dtype"})
    s["no-metadata"] = safetensors([("a", "F32", [1], f32_bytes([0.0]))], None)
    s["empty-header"] = struct.pack("<Q", 2) + b"{}"

    # safetensors_source: index.json, config.json, shards
    s = seeds["safetensors_source"]
    ws = tiny_weights(random.Random(3))
    half = len(ws) // 2
    shard1, shard2 = safetensors(ws[:half], {"format": "pt"}), safetensors(ws[half:], {"format": "pt"})
    names = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors"]
    index = {"metadata": {"total_size": len(shard1) + len(shard2)},
             "weight_map": {t[0]: names[0 if i < half else 1] for i, t in enumerate(ws)}}
    s["sharded"] = join(jdump(index), cfg, shard1, shard2)
    s["single"] = join(b"", cfg, st)
    s["single-no-config"] = join(b"", b"", st)
    s["quantized-config"] = join(b"", jdump(tiny_config(quantization_config={"quant_method": "compressed-tensors"})), st)

    # spm
    s = seeds["spm"]
    s["tiny"] = spm_tok
    s["fixture"] = open(os.path.join(FIXTURES, "tiny-llama-spm", "tokenizer.model"), "rb").read()

    # config
    s = seeds["config"]
    fixture_cfg = open(os.path.join(FIXTURES, "tiny-llama", "config.json"), "rb").read()
    s["llama"] = fixture_cfg
    s["mistral"] = jdump(tiny_config(model_type="mistral", head_dim=None))
    s["qwen2"] = jdump(tiny_config(model_type="qwen2", architectures=["Qwen2ForCausalLM"]))
    s["qwen3"] = jdump(tiny_config(model_type="qwen3", architectures=["Qwen3ForCausalLM"]))
    s["llama3-rope"] = jdump(tiny_config(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                                         rope_theta=500000.0))
    s["yarn"] = jdump(tiny_config(model_type="qwen2", rope_scaling={"type": "yarn", "factor": 4.0,
                                                                    "original_max_position_embeddings": 32768,
                                                                    "beta_fast": 32.0, "beta_slow": 1.0}))
    s["linear-rope-params"] = jdump(tiny_config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}))
    s["minimal"] = jdump({"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 1,
                          "vocab_size": 10})

    # tokenizer: arch byte, then tokenizer.json, tokenizer_config.json, config.json, tokenizer.model
    s = seeds["tokenizer"]
    s["bpe-llama"] = b"\x00" + join(tok, tcfg, cfg)
    s["bpe-qwen2"] = b"\x01" + join(tok, tcfg, jdump(tiny_config(model_type="qwen2")))
    s["bpe-pre-override"] = b"\x82" + join(tok, tcfg, cfg)
    s["spm"] = b"\x00" + join(b"", spm_tcfg, spm_cfg, spm_tok)
    llama_hf = {"version": "1.0", "added_tokens": [{"id": 0, "content": "<unk>", "special": True},
                                                   {"id": 1, "content": "<s>", "special": True},
                                                   {"id": 2, "content": "</s>", "special": True},
                                                   {"id": 8, "content": "<extra>", "special": False}],
                "decoder": {"type": "Sequence", "decoders": [{"type": "Replace"}, {"type": "ByteFallback"}]},
                "model": {"type": "BPE", "byte_fallback": True,
                          "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "\u2581": 4, "a": 5, "b": 6,
                                    "\u2581a": 7},
                          "merges": ["\u2581 a"]}}
    s["llama-hf"] = b"\x00" + join(jdump(llama_hf), spm_tcfg, jdump(tiny_config(vocab_size=12)))

    # plan: option byte, then config.json, tokenizer.json, model.safetensors, tokenizer_config.json,
    # tokenizer.model
    s = seeds["plan"]
    for t in ["f16", "q4_0", "q8_0", "int4", "fp8"]:
        s[f"dry-{t}"] = bytes([PLAN_TARGETS.index(t)]) + join(cfg, tok, st, tcfg)
    s["dry-f16-gguf"] = bytes([PLAN_TARGETS.index("f16") | 128]) + join(cfg, tok, st, tcfg)
    s["dry-q4_k_m-k"] = bytes([PLAN_TARGETS.index("q4_k_m")]) + join(cfg256, tok, st256, tcfg)
    s["dry-q2_k-pure"] = bytes([PLAN_TARGETS.index("q2_k") | 64]) + join(cfg256, tok, st256, tcfg)
    s["dry-int4-g32"] = bytes([PLAN_TARGETS.index("int4") | 64]) + join(cfg, tok, st, tcfg)
    s["dry-keep-names"] = bytes([PLAN_TARGETS.index("q8_0") | 16]) + join(cfg, tok, st, tcfg)
    s["dry-spm"] = bytes([PLAN_TARGETS.index("q4_0")]) + join(spm_cfg, b"", safetensors(
        tiny_weights(random.Random(5))[1:] + [("model.embed_tokens.weight", "BF16", [24, HIDDEN],
                                               bf16_bytes([0.01] * 24 * HIDDEN))]), spm_tcfg, spm_tok)
    s["run-q4_0"] = bytes([PLAN_TARGETS.index("q4_0") | 32]) + join(cfg, tok, st, tcfg)
    s["run-int8"] = bytes([PLAN_TARGETS.index("int8") | 32]) + join(cfg, tok, st, tcfg)
    s["run-q4_k_m-k"] = bytes([PLAN_TARGETS.index("q4_k_m") | 32]) + join(cfg256, tok, st256, tcfg)

    # imatrix: GGUF and legacy .dat
    s = seeds["imatrix"]
    lin = ["blk.0.attn_q.weight", "blk.0.ffn_down.weight"]
    s["gguf"] = imatrix_gguf(rng, lin, 32)
    s["gguf-experts"] = imatrix_gguf(rng, ["blk.0.ffn_up_exps.weight"], 32, n_mat=2)
    s["dat"] = imatrix_dat(rng, lin, 32)
    s["dat-no-trailer"] = imatrix_dat(rng, lin[:1], 8, trailer=False)

    # gguf: what quantize writes for the tiny folders, and hand-made files
    s = seeds["gguf"]
    qbin = find_quantize(a.quantize)
    with tempfile.TemporaryDirectory() as tmp:
        small, big, spm_dir = (os.path.join(tmp, n) for n in ("small", "big", "spm"))
        write_folder(small, {"config.json": cfg, "tokenizer.json": tok, "tokenizer_config.json": tcfg,
                             "model.safetensors": st})
        write_folder(big, {"config.json": cfg256, "tokenizer.json": tok, "tokenizer_config.json": tcfg,
                           "model.safetensors": st256})
        write_folder(spm_dir, {"config.json": spm_cfg, "tokenizer.model": spm_tok, "tokenizer_config.json": spm_tcfg,
                               "model.safetensors": safetensors(
                                   tiny_weights(random.Random(5))[1:] + [("model.embed_tokens.weight", "BF16",
                                                                          [24, HIDDEN], bf16_bytes([0.01] * 24 * HIDDEN))])})
        out = os.path.join(tmp, "o.gguf")
        s["f16"] = quantize(qbin, small, out, "--to", "f16")
        s["q4_0"] = quantize(qbin, small, out, "--to", "q4_0")
        s["q8_0-keep-names"] = quantize(qbin, small, out, "--to", "q8_0", "--keep-names")
        s["q4_k_m"] = quantize(qbin, big, out, "--to", "q4_k_m")
        s["q6_k-pure"] = quantize(qbin, big, out, "--to", "q6_k", "--pure")
        s["iq4_xs"] = quantize(qbin, big, out, "--to", "iq4_xs", "--pure")
        s["q2_k-q5_1"] = quantize(qbin, big, out, "--to", "q2_k", "--tensor-type", "attn=q5_1")
        s["spm-q4_1"] = quantize(qbin, spm_dir, out, "--to", "q4_1")
    s["kv-types-v2"] = gguf([("general.architecture", 8, "llama"), ("u8", 0, 1), ("i8", 1, -1), ("u16", 2, 2),
                             ("i16", 3, -2), ("u32", 4, 3), ("i32", 5, -3), ("f32", 6, 0.5), ("bool", 7, True),
                             ("u64", 10, 4), ("i64", 11, -4), ("f64", 12, 0.25),
                             ("arr", 9, (5, [1, -2, 3])), ("strs", 9, (8, ["a", "bc"])),
                             ("general.alignment", 4, 64)],
                            [("a", [32, 2], 0, f32_bytes([0.5] * 64)), ("b", [64], 30, bf16_bytes([1.0] * 64)),
                             ("c", [4], 24, b"\x01\x02\x03\x04"), ("d", [32], 8, b"\x00\x3c" + bytes(range(32)))],
                            version=2, align=64)
    s["imatrix"] = seeds["imatrix"]["gguf"]

    # write
    for t, ss in seeds.items():
        d = os.path.join(CORPUS, t)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, b in sorted(ss.items()):
            assert len(b) <= MAX_SEED, f"{t}/{name}: {len(b)} bytes"
            with open(os.path.join(d, name), "wb") as f:
                f.write(b)
        print(f"{t}: {len(ss)} seeds, {sum(len(b) for b in ss.values())} bytes")


if __name__ == "__main__":
    sys.exit(main())
