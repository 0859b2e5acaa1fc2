//! llama.cpp's "smollm3" architecture: SmolLM3 (a llama with every 4th layer's rope left
//! out, which llama.cpp assumes rather than reads; rope theta 2,000,000 and tied embeddings by
//! default). The converter treats it as llama: q/k rows permuted, the same keys and tensors.

use super::{Arch, HeadDim, ModelType, LLAMA_NORMS};

pub const ARCH: Arch = Arch {
    name: "smollm3",
    model_types: &[ModelType {
        name: "smollm3",
        max_position_embeddings: 32768,
        head_dim: HeadDim::Absent,
    }],
    hf_class: "SmolLM3ForCausalLM",
    permute_qk: true,
    vocab_size_key: true,
    rope_dim_key: true,
    llama3_rope_freqs: true,
    sentencepiece: true,
    layers_70b: None,
    nope_every: Some(4),
    layer_norms: LLAMA_NORMS,
};
