//! llama.cpp's "gemma3" architecture: Gemma 3 text models (Gemma 2's layer with per-head q/k
//! norms instead of attention soft-capping; five of every six layers attend to a sliding
//! window with their own rope theta, `rope.freq_base_swa`). The converter drops embedding rows
//! beyond the tokenizer's vocabulary.

use super::{Arch, HeadDim, Keys, ModelType, OwnKey, VocabStyle, GEMMA_NORMS};

pub const ARCH: Arch = Arch {
    name: "gemma3",
    model_types: &[ModelType {
        name: "gemma3_text",
        max_position_embeddings: 131072,
        head_dim: HeadDim::Fixed(256),
        defaults: &[("sliding_window", 4096.0), ("query_pre_attn_scalar", 256.0)],
    }],
    hf_class: "Gemma3ForCausalLM",
    permute_qk: false,
    keys: Keys::Text,
    own_keys: &[OwnKey::FinalSoftcap, OwnKey::SlidingWindow],
    llama3_rope_freqs: false,
    vocab: VocabStyle::Gemma,
    layers_70b: None,
    nope_every: None,
    norm_shift: true,
    dropped: &[],
    embeddings_to_vocab: true,
    swa_every: Some(6),
    layer_norms: GEMMA_NORMS,
};
