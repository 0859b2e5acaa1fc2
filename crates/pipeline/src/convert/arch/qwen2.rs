//! llama.cpp's "qwen2" architecture: Qwen2 / Qwen2.5 (q/k/v biases, byte-level BPE).

use super::{Arch, HeadDim, Keys, ModelType, VocabStyle, LLAMA_NORMS};

pub const ARCH: Arch = Arch {
    name: "qwen2",
    model_types: &[ModelType {
        name: "qwen2",
        max_position_embeddings: 32768,
        head_dim: HeadDim::Absent,
    }],
    hf_class: "Qwen2ForCausalLM",
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
