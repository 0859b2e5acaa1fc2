//! llama.cpp's "gemma3" architecture: Gemma 3 text models (Gemma 2's layer with per-head q/k
//! norms instead of attention soft-capping; five of every six layers attend to a sliding
//! window with their own rope theta, `rope.freq_base_swa`). The converter drops embedding rows
//! beyond the tokenizer's vocabulary.

use super::{Arch, HeadDim, ModelType, OwnKey, VocabStyle, GEMMA_NORMS, TEXT};
use serde_json::{json, Map, Value as Json};

pub const ARCH: Arch = Arch {
    name: "gemma3",
    model_types: &[ModelType {
        name: "gemma3_text",
        max_position_embeddings: 131072,
        head_dim: HeadDim::Fixed(256),
    }],
    hf_class: "Gemma3ForCausalLM",
    own_keys: &[OwnKey::FinalSoftcap, OwnKey::SlidingWindow],
    vocab: VocabStyle::Gemma,
    norm_shift: true,
    embeddings_to_vocab: true,
    swa_every: Some(6),
    query_scale_27b_layers: Some(LAYERS_27B),
    hf_keys: Some(hf_keys),
    layer_norms: GEMMA_NORMS,
    ..TEXT
};

/// The layer count llama.cpp takes for Gemma 3 27B (queries scaled by (hidden / heads)^-½).
const LAYERS_27B: u64 = 62;

fn hf_keys(key: &dyn Fn(&str) -> Option<f64>, layers: u64, c: &mut Map<String, Json>) {
    super::gemma2::gemma_keys(key, layers, LAYERS_27B, 6, c);
    // the sliding-window layers' rope theta (llama.cpp's default: the global one)
    let local = key("rope.freq_base_swa").or(key("rope.freq_base"));
    c.insert(
        "rope_local_base_freq".into(),
        json!(local.map(super::gemma2::short)),
    );
}
