//! llama.cpp's "smollm3" architecture: SmolLM3 (a llama with every 4th layer's rope left
//! out, which llama.cpp assumes rather than reads; rope theta 2,000,000 and tied embeddings by
//! default). The converter treats it as llama: q/k rows permuted, the same keys and tensors.

use super::{Arch, HeadDim, Keys, ModelType, OwnKey, VocabStyle, LLAMA_NORMS};

pub const ARCH: Arch = Arch {
    name: "smollm3",
    model_types: &[ModelType {
        name: "smollm3",
        max_position_embeddings: 32768,
        head_dim: HeadDim::Absent,
    }],
    hf_class: "SmolLM3ForCausalLM",
    permute_qk: true,
    keys: Keys::Text,
    own_keys: &[OwnKey::VocabSize, OwnKey::RopeDim],
    llama3_rope_freqs: true,
    vocab: VocabStyle::Llama,
    layers_70b: None,
    nope_every: Some(4),
    norm_shift: false,
    dropped: &[],
    embeddings_to_vocab: false,
    swa_every: None,
    query_scale_27b_layers: None,
    hf_keys: None,
    layer_norms: LLAMA_NORMS,
    fused: &[],
};
