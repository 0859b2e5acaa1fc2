#!/usr/bin/env python3
"""Independent reference: the Hugging Face llama/qwen2/qwen3/smollm3/olmo2/gemma2/gemma3_text/phi3
and mixture-of-experts mixtral/qwen2_moe/qwen3_moe/gpt_oss/deepseek_v3 forward pass in numpy
(float64), straight from a model folder's config.json and safetensors — HF conventions
(rotate-half RoPE on the unpermuted weights; DeepSeek-V3's interleaved); gpt-oss experts either
float or MXFP4 (blocks and scales); any family's linears either float or block-scaled FP8
(`weight_scale_inv`). Writes the logits of every position.

  ref_forward.py MODEL_DIR OUT.f32 TOKEN_ID...
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from st_read import read  # noqa: E402


def load(path):
    """Float tensors of a safetensors file, as float64; uint8 ones (MXFP4 blocks and scales) raw."""
    out = {}
    for k, a in read(path).items():
        if a.dtype == np.uint8:
            out[k] = a
        elif a.dtype.kind != "f":
            raise SystemExit(f"{k}: dtype {a.dtype} not handled")
        else:
            out[k] = a.astype(np.float64)
    return out


def dequant_fp8(W, cfg):
    """Block-scaled FP8 checkpoints (quantization_config quant_method fp8, as DeepSeek-V3's and
    transformers' FineGrainedFP8): each `X.weight` stored as E4M3 codes (decoded by st_read) has an
    `X.weight_scale_inv` with one factor per weight_block_size block (default 128×128, the last
    blocks partial); the weight is code × factor (transformers' dequantize)."""
    q = cfg.get("quantization_config") or {}
    br, bc = q.get("weight_block_size") or (128, 128)
    for k in [k for k in W if k.endswith(".weight_scale_inv")]:
        name = k[: -len("_scale_inv")]
        w, s = W[name], W.pop(k)
        full = np.repeat(np.repeat(s, br, axis=0), bc, axis=1)
        W[name] = w * full[: w.shape[0], : w.shape[1]]


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


# GptOssConfig's rope when config.json names none
GPT_OSS_ROPE = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                "truncate": False, "original_max_position_embeddings": 4096}


def yarn(cfg, r, d, theta):
    """transformers' _compute_yarn_parameters: per frequency a blend of the original (fast, above
    beta_fast rotations over the original context) and the factor-interpolated (slow, below
    beta_slow) inverse frequency, linear in between over the dimension index; the correction range
    floored/ceiled only when `truncate` (default true; gpt-oss says false). cos and sin are
    multiplied by the attention factor (0.1 ln(factor) + 1 unless given)."""
    dim = int(d * r.get("partial_rotary_factor", 1.0))
    # a top-level original_max_position_embeddings wins over the rope dict's one
    # (standardize_rope_params)
    key = "original_max_position_embeddings"
    orig = cfg.get(key) or r.get(key) or cfg["max_position_embeddings"]
    factor = r.get("factor") or cfg["max_position_embeddings"] / orig
    mscale = lambda s, m=1.0: 1.0 if s <= 1 else 0.1 * m * np.log(s) + 1.0  # noqa: E731
    attn = r.get("attention_factor")
    if attn is None:
        m, m_all = r.get("mscale"), r.get("mscale_all_dim")
        attn = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    fast, slow = r.get("beta_fast") or 32, r.get("beta_slow") or 1
    corr = lambda rot: dim * np.log(orig / (rot * 2 * np.pi)) / (2 * np.log(theta))  # noqa: E731
    lo, hi = corr(fast), corr(slow)
    if r.get("truncate", True):
        lo, hi = np.floor(lo), np.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - lo) / (hi - lo), 0, 1)
    base = theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    return (1 / (factor * base)) * ramp + (1 / base) * (1 - ramp), attn


def inv_freq(cfg, d, theta):
    """HF's rotary inverse frequencies and the factor on cos/sin, with linear, Llama 3
    (transformers' _compute_llama3_parameters: long wavelengths divided by `factor`, a smooth
    blend between the low- and high-frequency wavelengths) or YaRN scaling."""
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    r = cfg.get("rope_scaling") or cfg.get("rope_parameters") \
        or (GPT_OSS_ROPE if cfg.get("model_type") == "gpt_oss" else {})
    kind = r.get("rope_type", r.get("type", "default"))
    if kind == "yarn":
        return yarn(cfg, r, d, theta)
    if kind == "linear":
        return inv / r["factor"], 1.0
    if kind == "llama3":
        factor, lo, hi = r["factor"], r["low_freq_factor"], r["high_freq_factor"]
        old = r["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        mid = (wavelen >= old / hi) & (wavelen <= old / lo)
        return np.where(mid, blended, scaled), 1.0
    if kind != "default":
        raise SystemExit(f"rope scaling {kind} not handled")
    return inv, 1.0


# transformers' config defaults where they differ from llama's
DEFAULT_THETA = {"smollm3": 2000000.0, "gemma3_text": 1000000.0, "mixtral": 1000000.0,
                 "gpt_oss": 150000.0}
DEFAULT_EPS = {"olmo2": 1e-5, "phi3": 1e-5, "mixtral": 1e-5, "gpt_oss": 1e-5}
# Gemma2Config / Gemma3TextConfig: every this-many-th layer is full attention, the others slide
GEMMA_PATTERN = {"gemma2": 2, "gemma3_text": 6}
# and GptOssConfig's default layer_types alternate the same way, sliding first
SLIDING_PATTERN = {**GEMMA_PATTERN, "gpt_oss": 2}
GEMMA_DEFAULTS = {
    "gemma2": {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
    "gemma3_text": {},
}


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def sliding(cfg, layers):
    """Per layer, whether it attends within the sliding window (Gemma's, gpt-oss's layer_types)."""
    if cfg.get("layer_types"):
        return [t == "sliding_attention" for t in cfg["layer_types"][:layers]]
    every = cfg.get("sliding_window_pattern") or SLIDING_PATTERN[cfg["model_type"]]
    return [(l + 1) % every != 0 for l in range(layers)]


def uses_rope(cfg, layers):
    """Per layer, 1 when it applies rope: SmolLM3Config's no_rope_layers, or by default no rope
    in every no_rope_layer_interval-th layer (4); every other family ropes every layer."""
    if cfg.get("no_rope_layers") is not None:
        return [int(v) for v in cfg["no_rope_layers"][:layers]]
    if cfg.get("model_type") == "smollm3":
        every = cfg.get("no_rope_layer_interval") or 4
        return [int((l + 1) % every != 0) for l in range(layers)]
    return [1] * layers


def rope(x, pos, inv, mscale=1.0):
    # x: (T, H, D), HF rotate_half convention over the first 2 * len(inv) dimensions (partial
    # rotary: the rest pass through); cos and sin scaled by LongRoPE's attention factor
    r = 2 * len(inv)
    xr, xp = x[..., :r], x[..., r:]
    ang = pos[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :] * mscale
    sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :] * mscale
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    return np.concatenate([xr * cos + np.concatenate([-x2, x1], -1) * sin, xp], -1)


def phi3_rope(cfg, hd, theta, T):
    """Phi3Config: rotary dims = head_dim * partial_rotary_factor; LongRoPE (transformers'
    _compute_longrope_parameters): short factors up to original_max_position_embeddings, long
    beyond, cos/sin times sqrt(1 + ln(max/orig) / ln(orig))."""
    r = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    f = r.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    dim = int(hd * f)
    base = theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    kind = r.get("rope_type", r.get("type", "default"))
    if kind not in ("longrope", "su"):
        return 1.0 / base, 1.0
    orig = r.get("original_max_position_embeddings", cfg.get("original_max_position_embeddings", 4096))
    factors = r["long_factor"] if T > orig else r["short_factor"]
    scale = cfg["max_position_embeddings"] / orig
    mscale = np.sqrt(1 + np.log(scale) / np.log(orig)) if scale > 1 else 1.0
    return 1.0 / (np.array(factors, dtype=np.float64) * base), mscale


# Mixture of experts (MixtralSparseMoeBlock, Qwen2MoeSparseMoeBlock, Qwen3MoeSparseMoeBlock):
# expert module, its gate/up/down names, router
MOE = {
    "mixtral": ("block_sparse_moe.experts", "w1", "w3", "w2", "block_sparse_moe.gate"),
    "qwen2_moe": ("mlp.experts", "gate_proj", "up_proj", "down_proj", "mlp.gate"),
    "qwen3_moe": ("mlp.experts", "gate_proj", "up_proj", "down_proj", "mlp.gate"),
}


def moe(cfg, mt, lin, h):
    """Softmax over the router's logits, the top num_experts_per_tok experts per token (their
    probabilities renormalised when Mixtral, or norm_topk_prob), each a SiLU-gated MLP; Qwen2-MoE
    adds its shared expert scaled by sigmoid(shared_expert_gate)."""
    experts, gate, up, down, router = MOE[mt]
    n = cfg.get("num_local_experts") or cfg["num_experts"]
    k = cfg["num_experts_per_tok"]
    logits = lin(router, h)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-probs[t], kind="stable")[:k]
        w = probs[t, top]
        if mt == "mixtral" or cfg.get("norm_topk_prob"):
            w = w / w.sum()
        for e, we in zip(top, w):
            x = h[t:t + 1]
            g, u = lin(f"{experts}.{e}.{gate}", x), lin(f"{experts}.{e}.{up}", x)
            out[t] += we * lin(f"{experts}.{e}.{down}", g / (1 + np.exp(-g)) * u)[0]
    if mt == "qwen2_moe":
        g, u = lin("mlp.shared_expert.gate_proj", h), lin("mlp.shared_expert.up_proj", h)
        s = lin("mlp.shared_expert.down_proj", g / (1 + np.exp(-g)) * u)
        out += s / (1 + np.exp(-lin("mlp.shared_expert_gate", h)))
    return out


# FP4 (e2m1) values of the 16 codes, as transformers' FP4_VALUES
FP4 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def mxfp4(blocks, scales):
    """transformers' convert_moe_packed_tensors: blocks [E, out, in/32, 16] hold two FP4 codes a
    byte, low nibble first; scales [E, out, in/32] are e8m0 exponents (bias 127) of each 32-value
    block. Returns [E, in, out], the float experts' layout (the stored one is transposed)."""
    v = np.empty(blocks.shape[:-1] + (32,))
    v[..., 0::2], v[..., 1::2] = FP4[blocks & 0x0F], FP4[blocks >> 4]
    v = np.ldexp(v, scales.astype(np.int32)[..., None] - 127)
    return v.reshape(*blocks.shape[:2], -1).transpose(0, 2, 1)


def expert_matrix(W, name):
    """A gpt-oss expert stack [E, in, out], stored float or as MXFP4 blocks and scales (dequantized
    per layer on use, so the packed form stays small in memory)."""
    if name in W:
        return W[name]
    return mxfp4(W[name + "_blocks"], W[name + "_scales"])


def gpt_oss_moe(cfg, W, p, lin, h):
    """GptOssMLP: the router (with bias) picks the top num_experts_per_tok logits and softmaxes
    just those; each expert is x @ gate_up + bias with gate and up interleaved (even and odd
    columns), a clamped SwiGLU — gate capped above at swiglu_limit, up clamped to ±limit,
    (up + 1) * gate * sigmoid(alpha * gate) — then @ down + bias."""
    k, limit = cfg["num_experts_per_tok"], cfg.get("swiglu_limit", 7.0)
    alpha = cfg.get("swiglu_alpha", 1.702)
    pre = p + "mlp.experts."
    gate_up, down = expert_matrix(W, pre + "gate_up_proj"), expert_matrix(W, pre + "down_proj")
    gate_up_b, down_b = W[pre + "gate_up_proj_bias"], W[pre + "down_proj_bias"]
    logits = lin("mlp.router", h)
    out = np.zeros_like(h)
    for t in range(h.shape[0]):
        top = np.argsort(-logits[t], kind="stable")[:k]
        w = np.exp(logits[t, top] - logits[t, top].max())
        w /= w.sum()
        for e, we in zip(top, w):
            gu = h[t] @ gate_up[e] + gate_up_b[e]
            g, u = np.minimum(gu[0::2], limit), np.clip(gu[1::2], -limit, limit)
            # sigmoid as exp(-log(1 + e^-z)): the gate is unbounded below
            glu = g * np.exp(-np.logaddexp(0, -alpha * g))
            out[t] += we * ((u + 1) * glu @ down[e] + down_b[e])
    return out


# DeepseekV3Config's defaults for what config.json may leave out
DEEPSEEK_V3 = {"q_lora_rank": 1536, "first_k_dense_replace": 3, "n_group": 8, "topk_group": 4,
               "n_shared_experts": 1, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
               "rope_interleave": True, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
               "tie_word_embeddings": False}


def rope_interleave(x, pos, inv, mscale=1.0):
    """transformers' apply_rotary_pos_emb_interleave: x (T, H, D) holds D/2 pairs (x0, x1),
    (x2, x3), ..., pair i rotated by frequency i; the result lays the rotated evens first, then
    the odds (the same for q and k, so their dot products are unchanged)."""
    ang = pos[:, None] * inv[None, :]
    cos, sin = np.cos(ang)[:, None, :] * mscale, np.sin(ang)[:, None, :] * mscale
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


def deepseek_v3_moe(cfg, W, p, lin, h):
    """DeepseekV3MoE: DeepseekV3TopkRouter scores each expert by sigmoid(router logit); the choice
    adds e_score_correction_bias and is grouped — n_group groups, each scored by the sum of its 2
    best biased scores, the topk_group best groups kept, the num_experts_per_tok best experts
    among them; the weights are the chosen experts' unbiased scores, renormalised (+1e-20) when
    norm_topk_prob, times routed_scaling_factor. Each expert a SiLU-gated MLP; the shared experts
    (one MLP moe_intermediate_size × n_shared_experts wide) added for every token."""
    c = {**DEEPSEEK_V3, **{k: v for k, v in cfg.items() if v is not None}}
    n, k = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    groups, keep = c["n_group"], c["topk_group"]
    scores = 1 / (1 + np.exp(-lin("mlp.gate", h)))
    choice = scores + W.get(p + "mlp.gate.e_score_correction_bias", np.zeros(n))
    def mlp(q, x):
        return lin(q + ".down_proj", silu(lin(q + ".gate_proj", x)) * lin(q + ".up_proj", x))
    out = mlp("mlp.shared_experts", h)
    for t in range(h.shape[0]):
        per_group = np.sort(choice[t].reshape(groups, n // groups), -1)[:, -2:].sum(-1)
        kept = np.argsort(-per_group, kind="stable")[:keep]
        in_kept = np.repeat(np.isin(np.arange(groups), kept), n // groups)
        top = np.argsort(-np.where(in_kept, choice[t], -np.inf), kind="stable")[:k]
        w = scores[t, top]
        if c["norm_topk_prob"]:
            w = w / (w.sum() + 1e-20)
        w = w * c["routed_scaling_factor"]
        for e, we in zip(top, w):
            out[t] += we * mlp(f"mlp.experts.{e}", h[t:t + 1])[0]
    return out


def silu(x):
    return x / (1 + np.exp(-x))


def deepseek_v3(cfg, W, ids):
    """DeepseekV3ForCausalLM (transformers' modeling_deepseek_v3), its logits. Multi-head latent
    attention (DeepseekV3Attention): q = q_b_proj(q_a_layernorm(q_a_proj(x))) (q_proj when
    q_lora_rank is null), per head qk_nope_head_dim + qk_rope_head_dim; kv_a_proj_with_mqa gives a
    kv_lora_rank latent and one qk_rope_head_dim key shared by every head; kv_b_proj of the normed
    latent (kv_a_layernorm) gives per head the nope key and the value (v_head_dim). Rope only on
    the rope parts, interleaved (rope_interleave, the default) over qk_rope_head_dim (the config's
    head_dim is always qk_rope_head_dim), YaRN frequencies and cos/sin factor as for every family;
    scores scaled by qk_head_dim^-1/2 times yarn_get_mscale(factor, mscale_all_dim)^2 when the rope
    is scaled and names mscale_all_dim (yarn_apply_mscale). The q_a/kv_a norms have
    DeepseekV3RMSNorm's own eps (1e-6), not rms_norm_eps. Layers below first_k_dense_replace have
    a dense MLP, the rest deepseek_v3_moe; layers from num_hidden_layers on (the
    multi-token-prediction ones) are not run."""
    c = {**DEEPSEEK_V3, **{k: v for k, v in cfg.items() if v is not None}}
    if "q_lora_rank" in cfg and cfg["q_lora_rank"] is None:
        c["q_lora_rank"] = None
    H, L, eps = cfg["num_attention_heads"], cfg["num_hidden_layers"], c["rms_norm_eps"]
    nope, rd, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    kv_lora = cfg["kv_lora_rank"]
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") \
        or DEEPSEEK_V3["rope_theta"]
    inv, mscale = inv_freq(cfg, rd, theta)
    scale = (nope + rd) ** -0.5
    r = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if r.get("rope_type", r.get("type", "default")) != "default" and r.get("mscale_all_dim"):
        m = 0.1 * r["mscale_all_dim"] * np.log(r["factor"]) + 1.0 if r["factor"] > 1 else 1.0
        scale *= m * m
    rot = rope_interleave if c["rope_interleave"] else rope
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    causal = np.triu(np.full((T, T), -np.inf), 1)
    x = W["model.embed_tokens.weight"][ids]
    for l in range(L):
        p = f"model.layers.{l}."
        def lin(name, v):
            y = v @ W[p + name + ".weight"].T
            b = W.get(p + name + ".bias")
            return y if b is None else y + b
        h = rms(x, W[p + "input_layernorm.weight"], eps)
        if c["q_lora_rank"] is None:
            q = lin("self_attn.q_proj", h)
        else:
            q_a = rms(lin("self_attn.q_a_proj", h), W[p + "self_attn.q_a_layernorm.weight"], 1e-6)
            q = lin("self_attn.q_b_proj", q_a)
        q = q.reshape(T, H, nope + rd)
        q_pass, q_rot = q[..., :nope], q[..., nope:]
        ckv = lin("self_attn.kv_a_proj_with_mqa", h)
        latent = rms(ckv[:, :kv_lora], W[p + "self_attn.kv_a_layernorm.weight"], 1e-6)
        k_rot = ckv[:, None, kv_lora:]
        q_rot, k_rot = rot(q_rot, pos, inv, mscale), rot(k_rot, pos, inv, mscale)
        kv = lin("self_attn.kv_b_proj", latent).reshape(T, H, nope + vd)
        k_nope, v = kv[..., :nope], kv[..., nope:]
        att = (np.einsum("thd,shd->hts", q_pass, k_nope)
               + np.einsum("thd,sd->hts", q_rot, k_rot[:, 0])) * scale + causal
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + lin("self_attn.o_proj", np.einsum("hts,shd->thd", att, v).reshape(T, H * vd))
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        if l < c["first_k_dense_replace"]:
            m = lin("mlp.down_proj", silu(lin("mlp.gate_proj", h)) * lin("mlp.up_proj", h))
        else:
            m = deepseek_v3_moe(cfg, W, p, lin, h)
        x = x + m
    x = rms(x, W["model.norm.weight"], eps)
    return x @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T


def main():
    d = Path(sys.argv[1])
    cfg = json.loads((d / "config.json").read_text())
    ids = np.array([int(t) for t in sys.argv[3:]])
    W = {}
    for f in sorted(d.glob("*.safetensors")):
        W.update(load(f))
    dequant_fp8(W, cfg)
    if cfg.get("model_type") == "deepseek_v3":
        deepseek_v3(cfg, W, ids).astype("<f4").tofile(sys.argv[2])
        return
    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    mt = cfg.get("model_type")
    gemma = mt in GEMMA_PATTERN
    # gpt-oss (GptOssDecoderLayer): llama-shaped with q/k/v/o biases, YaRN rope, sliding layers
    # (window 128 by default), attention sinks and its own MoE (gpt_oss_moe); GptOssConfig's
    # head_dim defaults to 64, not hidden / heads
    gpt_oss = mt == "gpt_oss"
    hd = cfg.get("head_dim") or (256 if gemma else 64 if gpt_oss else cfg["hidden_size"] // H)
    eps = cfg.get("rms_norm_eps") or DEFAULT_EPS.get(mt, 1e-6)
    # OLMo 2 (Olmo2DecoderLayer): no norm before attention or MLP; their outputs are normed
    # (post_attention_layernorm, post_feedforward_layernorm), and q/k are normed over all heads
    # before the split into heads
    olmo2 = mt == "olmo2"
    theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") \
        or DEFAULT_THETA.get(cfg.get("model_type"), 10000.0)
    L = cfg["num_hidden_layers"]
    roped = uses_rope(cfg, L)
    # Gemma (Gemma2/Gemma3 modeling): RMSNorm multiplies by 1 + w; norms before and after
    # attention and MLP; embeddings times sqrt(hidden); GELU (tanh) MLP; scores scaled by
    # query_pre_attn_scalar^-1/2 and soft-capped (Gemma 2); sliding-window layers; Gemma 3's
    # sliding layers use rope_local_base_freq (10000); final logits soft-capped (Gemma 2)
    norm_w = (lambda w: 1.0 + w) if gemma else (lambda w: w)
    extra = dict(GEMMA_DEFAULTS.get(mt, {}))
    extra.update({k: cfg[k] for k in ("attn_logit_softcapping", "final_logit_softcapping") if k in cfg})
    window = cfg.get("sliding_window", 128 if gpt_oss else None) if gemma or gpt_oss else None
    slides = sliding(cfg, L) if gemma or gpt_oss else [False] * L
    local_theta = cfg.get("rope_local_base_freq", 10000.0) if mt == "gemma3_text" else theta
    scale = (cfg.get("query_pre_attn_scalar") or 256) ** -0.5 if gemma else 1 / np.sqrt(hd)
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    # Phi-3 (Phi3DecoderLayer): q, k, v fused in qkv_proj, gate and up in gate_up_proj (gate
    # first); partial rotary and LongRoPE
    phi3 = mt == "phi3"
    if phi3:
        inter = W["model.layers.0.mlp.gate_up_proj.weight"].shape[0] // 2
        for l in range(L):
            p = f"model.layers.{l}."
            qkv = W.pop(p + "self_attn.qkv_proj.weight")
            W[p + "self_attn.q_proj.weight"] = qkv[: H * hd]
            W[p + "self_attn.k_proj.weight"] = qkv[H * hd: (H + KV) * hd]
            W[p + "self_attn.v_proj.weight"] = qkv[(H + KV) * hd:]
            gu = W.pop(p + "mlp.gate_up_proj.weight")
            W[p + "mlp.gate_proj.weight"], W[p + "mlp.up_proj.weight"] = gu[:inter], gu[inter:]
        phi_inv, phi_mscale = phi3_rope(cfg, hd, theta, T)
    x = W["model.embed_tokens.weight"][ids]
    if gemma:
        x = x * np.sqrt(cfg["hidden_size"])
    causal = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(L):
        p = f"model.layers.{l}."
        n = lambda name: norm_w(W[p + name + ".weight"])  # noqa: E731
        h = x if olmo2 else rms(x, n("input_layernorm"), eps)
        def lin(name, v):
            y = v @ W[p + name + ".weight"].T
            b = W.get(p + name + ".bias")
            return y if b is None else y + b
        q, k = lin("self_attn.q_proj", h), lin("self_attn.k_proj", h)
        if olmo2:
            q = rms(q, W[p + "self_attn.q_norm.weight"], eps)
            k = rms(k, W[p + "self_attn.k_norm.weight"], eps)
        q, k = q.reshape(T, H, hd), k.reshape(T, KV, hd)
        v = lin("self_attn.v_proj", h).reshape(T, KV, hd)
        if not olmo2 and p + "self_attn.q_norm.weight" in W:
            q = rms(q, n("self_attn.q_norm"), eps)
            k = rms(k, n("self_attn.k_norm"), eps)
        if phi3:
            inv, mscale = phi_inv, phi_mscale
        else:
            inv, mscale = inv_freq(cfg, hd, local_theta if slides[l] else theta)
        if roped[l]:
            q, k = rope(q, pos, inv, mscale), rope(k, pos, inv, mscale)
        rep = H // KV
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        att = np.einsum("thd,shd->hts", q, k) * scale
        if gemma and extra.get("attn_logit_softcapping"):
            cap = extra["attn_logit_softcapping"]
            att = np.tanh(att / cap) * cap
        mask = causal
        if slides[l] and window:
            t, s_ = np.arange(T)[:, None], np.arange(T)[None, :]
            mask = np.where(t - s_ >= window, -np.inf, causal)
        att = att + mask
        sinks = W.get(p + "self_attn.sinks")
        if sinks is not None:
            # gpt-oss: each head's learned sink logit joins every softmax row, then is dropped,
            # so the kept weights sum to less than 1
            att = np.concatenate([att, np.broadcast_to(sinks[:, None, None], (H, T, 1))], -1)
        att = np.exp(att - att.max(-1, keepdims=True))
        att = (att / att.sum(-1, keepdims=True))[..., :T]
        o = np.einsum("hts,shd->thd", att, v).reshape(T, H * hd)
        o = lin("self_attn.o_proj", o)
        if olmo2 or gemma:
            x = x + rms(o, n("post_attention_layernorm"), eps)
            h = rms(x, n("pre_feedforward_layernorm"), eps) if gemma else x
        else:
            x = x + o
            h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        if mt in MOE:
            m = moe(cfg, mt, lin, h)
        elif gpt_oss:
            m = gpt_oss_moe(cfg, W, p, lin, h)
        else:
            g, u = lin("mlp.gate_proj", h), lin("mlp.up_proj", h)
            m = lin("mlp.down_proj", (gelu_tanh(g) if gemma else g / (1 + np.exp(-g))) * u)
        x = x + (rms(m, n("post_feedforward_layernorm"), eps) if olmo2 or gemma else m)
    x = rms(x, norm_w(W["model.norm.weight"]), eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    logits = x @ head.T
    if gemma and extra.get("final_logit_softcapping"):
        cap = extra["final_logit_softcapping"]
        logits = np.tanh(logits / cap) * cap
    logits.astype("<f4").tofile(sys.argv[2])


if __name__ == "__main__":
    main()
