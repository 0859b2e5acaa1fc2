//! llama.cpp's "llama" architecture: Llama 1–3 and Mistral (q/k rows permuted for
//! interleaved rope, SentencePiece or byte-level BPE vocabularies, Llama 3 rope frequencies as
//! a generated tensor).

use super::{Arch, HeadDim, ModelType, OwnKey, VocabStyle, TEXT};

pub const ARCH: Arch = Arch {
    name: "llama",
    model_types: &[
        ModelType {
            name: "llama",
            max_position_embeddings: 2048,
            head_dim: HeadDim::FromHidden,
        },
        ModelType {
            name: "mistral",
            max_position_embeddings: 131072,
            head_dim: HeadDim::FromHidden,
        },
    ],
    hf_class: "LlamaForCausalLM",
    permute_qk: true,
    own_keys: &[OwnKey::VocabSize, OwnKey::RopeDim],
    llama3_rope_freqs: true,
    vocab: VocabStyle::Llama,
    layers_70b: Some(80),
    ..TEXT
};
