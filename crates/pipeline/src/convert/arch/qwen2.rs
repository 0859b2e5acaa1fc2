//! llama.cpp's "qwen2" architecture: Qwen2 / Qwen2.5 (q/k/v biases, byte-level BPE).

use super::{Arch, HeadDim, ModelType, TEXT};

pub const ARCH: Arch = Arch {
    name: "qwen2",
    model_types: &[ModelType {
        name: "qwen2",
        max_position_embeddings: 32768,
        head_dim: HeadDim::Absent,
    }],
    hf_class: "Qwen2ForCausalLM",
    ..TEXT
};
