//! llama.cpp's "qwen3" architecture: Qwen3 (q/k norms, head_dim 128 by default).

use super::{Arch, HeadDim, ModelType, LLAMA_NORMS};

pub const ARCH: Arch = Arch {
    name: "qwen3",
    model_types: &[ModelType {
        name: "qwen3",
        max_position_embeddings: 32768,
        head_dim: HeadDim::Fixed(128),
    }],
    hf_class: "Qwen3ForCausalLM",
    permute_qk: false,
    vocab_size_key: false,
    rope_dim_key: false,
    llama3_rope_freqs: false,
    sentencepiece: false,
    layers_70b: None,
    nope_every: None,
    layer_norms: LLAMA_NORMS,
};
