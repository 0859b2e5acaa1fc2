#!/usr/bin/env python3
"""Writes a small random mixture-of-experts Hugging Face folder (float32 safetensors, config.json,
the fixture's tokenizer) for the manual MoE check in docs/QUALITY.md: 2 layers, hidden 256,
4 experts of width 256 (top-2), a router with large weights so routing matters; Qwen2-MoE adds a
shared expert (width 512) and its gate. Deterministic (numpy seed 0).

  gen_moe.py mixtral|qwen2_moe|qwen3_moe OUT_DIR
"""
import json, struct, sys, numpy as np, shutil
from pathlib import Path
mt = sys.argv[1]; d = Path(sys.argv[2]); d.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
H, I, E, L, V, NH, KV = 256, 256, 4, 2, 512, 4, 2
hd = H // NH
T = {}
def w(*s, sc=0.02): return (rng.standard_normal(s) * sc).astype(np.float32)
T["model.embed_tokens.weight"] = w(V, H)
names = {"mixtral": ("block_sparse_moe.experts", "w1", "w3", "w2", "block_sparse_moe.gate")}.get(mt, ("mlp.experts", "gate_proj", "up_proj", "down_proj", "mlp.gate"))
for l in range(L):
    p = f"model.layers.{l}."
    T[p+"input_layernorm.weight"] = np.ones(H, np.float32)
    T[p+"post_attention_layernorm.weight"] = np.ones(H, np.float32)
    T[p+"self_attn.q_proj.weight"] = w(NH*hd, H); T[p+"self_attn.k_proj.weight"] = w(KV*hd, H)
    T[p+"self_attn.v_proj.weight"] = w(KV*hd, H); T[p+"self_attn.o_proj.weight"] = w(H, NH*hd)
    if mt == "qwen3_moe":
        T[p+"self_attn.q_norm.weight"] = np.ones(hd, np.float32); T[p+"self_attn.k_norm.weight"] = np.ones(hd, np.float32)
    for e in range(E):
        q = f"{p}{names[0]}.{e}."
        T[q+names[1]+".weight"] = w(I, H); T[q+names[2]+".weight"] = w(I, H); T[q+names[3]+".weight"] = w(H, I)
    T[p+names[4]+".weight"] = w(E, H, sc=0.5)
    if mt == "qwen2_moe":
        for n, s in [("gate_proj", (512, H)), ("up_proj", (512, H)), ("down_proj", (H, 512))]:
            T[p+"mlp.shared_expert."+n+".weight"] = w(*s)
        T[p+"mlp.shared_expert_gate.weight"] = w(1, H, sc=0.3)
T["model.norm.weight"] = np.ones(H, np.float32)
T["lm_head.weight"] = w(V, H)
hdr = {}; off = 0; blobs = []
for k in sorted(T):
    b = T[k].astype("<f4").tobytes(); hdr[k] = {"dtype": "F32", "shape": list(T[k].shape), "data_offsets": [off, off+len(b)]}; off += len(b); blobs.append(b)
h = json.dumps(hdr).encode(); h += b" " * ((8 - len(h) % 8) % 8)
with open(d/"model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h); [f.write(b) for b in blobs]
cfg = {"model_type": mt, "architectures": [{"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}[mt]],
       "num_hidden_layers": L, "hidden_size": H, "intermediate_size": I if mt == "mixtral" else 1024, "num_attention_heads": NH, "num_key_value_heads": KV,
       "vocab_size": V, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048, "num_experts_per_tok": 2, "tie_word_embeddings": False}
if mt == "mixtral": cfg["num_local_experts"] = E
else:
    cfg["num_experts"] = E; cfg["moe_intermediate_size"] = I; cfg["norm_topk_prob"] = mt == "qwen3_moe"
if mt == "qwen2_moe": cfg["shared_expert_intermediate_size"] = 512
(d/"config.json").write_text(json.dumps(cfg))
for f in ["tokenizer.json", "tokenizer_config.json"]: shutil.copy(Path(__file__).resolve().parent.parent / "fixtures" / "tiny-llama" / f, d / f)
