//! llama.cpp's "qwen3" architecture: Qwen3 (q/k norms, head_dim 128 by default).

use super::{Arch, HeadDim, ModelType, TEXT};

pub const ARCH: Arch = Arch {
    name: "qwen3",
    model_types: &[ModelType {
        name: "qwen3",
        max_position_embeddings: 32768,
        head_dim: HeadDim::Fixed(128),
    }],
    hf_class: "Qwen3ForCausalLM",
    ..TEXT
};
