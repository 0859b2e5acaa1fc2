//! llama.cpp's "gemma2" architecture: Gemma 2 (RMSNorm gains stored as `w` and applied as
//! `1 + w`, which the converter writes as `1 + w`; norms before and after attention and MLP;
//! GELU (tanh) MLP; attention and final logit soft-capping; every other layer attends to a
//! sliding window; embeddings scaled by √hidden; tied output head). The converter writes its own
//! short list of keys (no rope keys: llama.cpp's default theta 10000 is Gemma 2's).

use super::{Arch, HeadDim, Keys, ModelType, OwnKey, VocabStyle, GEMMA_NORMS};

pub const ARCH: Arch = Arch {
    name: "gemma2",
    model_types: &[ModelType {
        name: "gemma2",
        max_position_embeddings: 8192,
        head_dim: HeadDim::Fixed(256),
        defaults: &[
            ("attn_logit_softcapping", 50.0),
            ("final_logit_softcapping", 30.0),
            ("sliding_window", 4096.0),
            ("query_pre_attn_scalar", 256.0),
        ],
    }],
    hf_class: "Gemma2ForCausalLM",
    permute_qk: false,
    keys: Keys::Gemma2,
    own_keys: &[
        OwnKey::AttnSoftcap,
        OwnKey::FinalSoftcap,
        OwnKey::SlidingWindow,
    ],
    llama3_rope_freqs: false,
    vocab: VocabStyle::Gemma,
    layers_70b: None,
    nope_every: None,
    norm_shift: true,
    dropped: &["lm_head.weight"],
    embeddings_to_vocab: false,
    swa_every: Some(2),
    layer_norms: GEMMA_NORMS,
};
