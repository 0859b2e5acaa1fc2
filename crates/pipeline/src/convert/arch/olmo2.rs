//! llama.cpp's "olmo2" architecture: OLMo 2 (no norm before attention or MLP; their outputs
//! are normed instead, `post_attention_layernorm` and `post_feedforward_layernorm`; q/k RMS
//! norms over all heads; NEOX rope, so q/k rows are not permuted; rms_norm_eps 1e-5 by
//! default). The converter writes only the common text-model keys.

use super::{Arch, HeadDim, ModelType, TEXT};

pub const ARCH: Arch = Arch {
    name: "olmo2",
    model_types: &[ModelType {
        name: "olmo2",
        max_position_embeddings: 2048,
        head_dim: HeadDim::Absent,
    }],
    hf_class: "Olmo2ForCausalLM",
    layer_norms: &[
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("post_attention_layernorm", "post_attention_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm"),
    ],
    ..TEXT
};
