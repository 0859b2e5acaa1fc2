//! llama.cpp's "smollm3" architecture: SmolLM3 (a llama with every 4th layer's rope left
//! out, which llama.cpp assumes rather than reads; rope theta 2,000,000 and tied embeddings by
//! default). The converter treats it as llama: q/k rows permuted, the same keys and tensors.

use super::{Arch, HeadDim, ModelType, OwnKey, VocabStyle, TEXT};

pub const ARCH: Arch = Arch {
    name: "smollm3",
    model_types: &[ModelType {
        name: "smollm3",
        max_position_embeddings: 32768,
        head_dim: HeadDim::Absent,
    }],
    hf_class: "SmolLM3ForCausalLM",
    permute_qk: true,
    own_keys: &[OwnKey::VocabSize, OwnKey::RopeDim],
    llama3_rope_freqs: true,
    vocab: VocabStyle::Llama,
    nope_every: Some(4),
    ..TEXT
};
