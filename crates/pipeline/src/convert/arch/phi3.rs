//! llama.cpp's "phi3" architecture: Phi-3 and Phi-4 (q, k and v in one `qkv_proj`, gate and up
//! in one `gate_up_proj`, both kept fused; NEOX rope, possibly over part of each head;
//! LongRoPE's per-pair factors as generated `rope_factors_long`/`rope_factors_short` tensors
//! with their attention factor). The converter writes its own list of keys, and a sliding
//! window of 0 when the model has none.

use super::{Arch, HeadDim, Keys, ModelType, OwnKey, VocabStyle, TEXT};

pub const ARCH: Arch = Arch {
    name: "phi3",
    model_types: &[ModelType {
        name: "phi3",
        max_position_embeddings: 4096,
        head_dim: HeadDim::Absent,
    }],
    hf_class: "Phi3ForCausalLM",
    keys: Keys::Phi3,
    own_keys: &[OwnKey::SlidingWindowOrZero],
    vocab: VocabStyle::Phi3,
    fused: &[
        ("self_attn.qkv_proj", "attn_qkv"),
        ("mlp.gate_up_proj", "ffn_up"),
    ],
    ..TEXT
};
