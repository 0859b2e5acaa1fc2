#!/usr/bin/env python3
"""Writes a 2.6 GB random DeepSeek-V3 Hugging Face folder (float32 safetensors, config.json, the
fixture's tokenizer) for the streaming check in docs/QUALITY.md: hidden 2048, 16 heads of latent
attention (q_lora 512, kv_lora 256), 5 layers (the first dense, 5632 wide), 16 experts of 1408
(top-4 from the best 2 of 4 groups) and a shared expert per layer. Tensors are written one at a
time (a few MB of memory). Deterministic (numpy seed 0).

  gen_deepseek.py OUT_DIR
"""
import json, struct, sys, numpy as np, shutil
from pathlib import Path
d = Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
H, NH, L, V, ql, kvl, nope, rd, vd, inter, mi, E = 2048, 16, 5, 512, 512, 256, 64, 32, 64, 5632, 1408, 16
def w(*s, sc=0.02): return (rng.standard_normal(s, dtype=np.float32) * sc)
hdr = {}; off = 0
f = open(d/"body.bin", "wb")
def put(k, a):
    global off
    b = a.astype("<f4").tobytes(); hdr[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off+len(b)]}; off += len(b); f.write(b)
put("lm_head.weight", w(V, H)); put("model.embed_tokens.weight", w(V, H))
for l in range(L):
    p = f"model.layers.{l}."
    put(p+"input_layernorm.weight", np.ones(H)); 
    if l == 0:
        for n, s in [("down_proj", (H, inter)), ("gate_proj", (inter, H)), ("up_proj", (inter, H))]: put(p+"mlp."+n+".weight", w(*s))
    else:
        for e in range(E):
            for n, s in [("down_proj", (H, mi)), ("gate_proj", (mi, H)), ("up_proj", (mi, H))]: put(f"{p}mlp.experts.{e}.{n}.weight", w(*s))
        put(p+"mlp.gate.e_score_correction_bias", w(E, sc=0.1)); put(p+"mlp.gate.weight", w(E, H, sc=0.3))
        for n, s in [("down_proj", (H, mi)), ("gate_proj", (mi, H)), ("up_proj", (mi, H))]: put(p+"mlp.shared_experts."+n+".weight", w(*s))
    put(p+"post_attention_layernorm.weight", np.ones(H))
    put(p+"self_attn.kv_a_layernorm.weight", np.ones(kvl)); put(p+"self_attn.kv_a_proj_with_mqa.weight", w(kvl+rd, H))
    put(p+"self_attn.kv_b_proj.weight", w(NH*(nope+vd), kvl)); put(p+"self_attn.o_proj.weight", w(H, NH*vd))
    put(p+"self_attn.q_a_layernorm.weight", np.ones(ql)); put(p+"self_attn.q_a_proj.weight", w(ql, H)); put(p+"self_attn.q_b_proj.weight", w(NH*(nope+rd), ql))
put("model.norm.weight", np.ones(H))
f.close()
h = json.dumps(hdr).encode(); h += b" " * ((8 - len(h) % 8) % 8)
with open(d/"model.safetensors", "wb") as o:
    o.write(struct.pack("<Q", len(h))); o.write(h)
    with open(d/"body.bin", "rb") as b: shutil.copyfileobj(b, o, 1 << 24)
(d/"body.bin").unlink()
cfg = {"model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "num_hidden_layers": L, "hidden_size": H, "intermediate_size": inter,
  "moe_intermediate_size": mi, "first_k_dense_replace": 1, "num_attention_heads": NH, "num_key_value_heads": NH, "q_lora_rank": ql, "kv_lora_rank": kvl,
  "qk_nope_head_dim": nope, "qk_rope_head_dim": rd, "v_head_dim": vd, "n_routed_experts": E, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2,
  "n_shared_experts": 1, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "norm_topk_prob": True, "vocab_size": V, "rms_norm_eps": 1e-6,
  "rope_theta": 10000.0, "max_position_embeddings": 4096, "tie_word_embeddings": False}
(d/"config.json").write_text(json.dumps(cfg))
for n in ["tokenizer.json", "tokenizer_config.json"]: shutil.copy(Path(__file__).resolve().parent.parent / "fixtures" / "tiny-llama"/n, d/n)
