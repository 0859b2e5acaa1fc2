//! llama.cpp's "qwen3" architecture: Qwen3 (q/k norms, head_dim 128 by default).

use super::{Arch, HeadDim, Keys, ModelType, VocabStyle, LLAMA_NORMS};

pub const ARCH: Arch = Arch {
    name: "qwen3",
    model_types: &[ModelType {
        name: "qwen3",
        max_position_embeddings: 32768,
        head_dim: HeadDim::Fixed(128),
    }],
    hf_class: "Qwen3ForCausalLM",
    permute_qk: false,
    keys: Keys::Text,
    own_keys: &[],
    llama3_rope_freqs: false,
    vocab: VocabStyle::Bpe,
    layers_70b: None,
    nope_every: None,
    norm_shift: false,
    dropped: &[],
    embeddings_to_vocab: false,
    swa_every: None,
    query_scale_27b_layers: None,
    hf_keys: None,
    layer_norms: LLAMA_NORMS,
    fused: &[],
};
