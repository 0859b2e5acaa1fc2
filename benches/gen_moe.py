#!/usr/bin/env python3
"""Writes a small random mixture-of-experts Hugging Face folder (float32 safetensors, config.json,
the fixture's tokenizer) for the manual MoE check in docs/QUALITY.md: 2 layers, hidden 256,
4 experts of width 256 (top-2), a router with large weights so routing matters; Qwen2-MoE adds a
shared expert (width 512) and its gate. DeepSeek-V3: 3 layers (the first dense), latent
attention (q_lora 128, kv_lora 64, nope/rope/v 32 per head), 8 experts of width 128 in 4 groups
(top-2 of the best 2 groups, sigmoid scores with a correction bias), one shared expert, YaRN
rope as released. Deterministic (numpy seed 0).

  gen_moe.py mixtral|qwen2_moe|qwen3_moe|deepseek_v3 OUT_DIR
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
def deepseek_v3():
    L, ql, kvl, nope, rd, vd, inter, mi, E = 3, 128, 64, 32, 32, 32, 512, 128, 8
    g = lambda n: (1 + rng.standard_normal(n) * 0.05).astype(np.float32)
    for l in range(L):
        p = f"model.layers.{l}."
        T[p+"input_layernorm.weight"] = g(H); T[p+"post_attention_layernorm.weight"] = g(H)
        T[p+"self_attn.q_a_proj.weight"] = w(ql, H); T[p+"self_attn.q_a_layernorm.weight"] = g(ql)
        T[p+"self_attn.q_b_proj.weight"] = w(NH*(nope+rd), ql)
        T[p+"self_attn.kv_a_proj_with_mqa.weight"] = w(kvl+rd, H); T[p+"self_attn.kv_a_layernorm.weight"] = g(kvl)
        T[p+"self_attn.kv_b_proj.weight"] = w(NH*(nope+vd), kvl, sc=0.05); T[p+"self_attn.o_proj.weight"] = w(H, NH*vd)
        if l == 0:
            T[p+"mlp.gate_proj.weight"] = w(inter, H); T[p+"mlp.up_proj.weight"] = w(inter, H); T[p+"mlp.down_proj.weight"] = w(H, inter)
            continue
        T[p+"mlp.gate.weight"] = w(E, H, sc=0.3); T[p+"mlp.gate.e_score_correction_bias"] = w(E, sc=0.1)
        for e in range(E):
            q = f"{p}mlp.experts.{e}."
            T[q+"gate_proj.weight"] = w(mi, H); T[q+"up_proj.weight"] = w(mi, H); T[q+"down_proj.weight"] = w(H, mi)
        for n, s in [("gate_proj", (mi, H)), ("up_proj", (mi, H)), ("down_proj", (H, mi))]:
            T[p+"mlp.shared_experts."+n+".weight"] = w(*s)
    return {"model_type": mt, "architectures": ["DeepseekV3ForCausalLM"], "num_hidden_layers": L, "hidden_size": H,
            "intermediate_size": inter, "moe_intermediate_size": mi, "first_k_dense_replace": 1, "num_attention_heads": NH,
            "num_key_value_heads": NH, "q_lora_rank": ql, "kv_lora_rank": kvl, "qk_nope_head_dim": nope, "qk_rope_head_dim": rd,
            "v_head_dim": vd, "n_routed_experts": E, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2, "n_shared_experts": 1,
            "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "topk_method": "noaux_tc", "norm_topk_prob": True,
            "vocab_size": V, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 163840,
            "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
                             "original_max_position_embeddings": 4096}, "tie_word_embeddings": False}
ds = deepseek_v3() if mt == "deepseek_v3" else None
for l in range(0 if ds else L):
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
cfg = {"model_type": mt, "architectures": [{"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}.get(mt)],
       "num_hidden_layers": L, "hidden_size": H, "intermediate_size": I if mt == "mixtral" else 1024, "num_attention_heads": NH, "num_key_value_heads": KV,
       "vocab_size": V, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048, "num_experts_per_tok": 2, "tie_word_embeddings": False}
if mt == "mixtral": cfg["num_local_experts"] = E
else:
    cfg["num_experts"] = E; cfg["moe_intermediate_size"] = I; cfg["norm_topk_prob"] = mt == "qwen3_moe"
if mt == "qwen2_moe": cfg["shared_expert_intermediate_size"] = 512
(d/"config.json").write_text(json.dumps(ds or cfg))
for f in ["tokenizer.json", "tokenizer_config.json"]: shutil.copy(Path(__file__).resolve().parent.parent / "fixtures" / "tiny-llama" / f, d / f)
