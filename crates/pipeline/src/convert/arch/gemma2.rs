//! llama.cpp's "gemma2" architecture: Gemma 2 (RMSNorm gains stored as `w` and applied as
//! `1 + w`, which the converter writes as `1 + w`; norms before and after attention and MLP;
//! GELU (tanh) MLP; attention and final logit soft-capping; every other layer attends to a
//! sliding window; embeddings scaled by √hidden; tied output head). The converter writes its own
//! short list of keys (no rope keys: llama.cpp's default theta 10000 is Gemma 2's).

use super::{Arch, HeadDim, Keys, ModelType, OwnKey, VocabStyle, GEMMA_NORMS, TEXT};
use serde_json::{json, Map, Value as Json};

pub const ARCH: Arch = Arch {
    name: "gemma2",
    model_types: &[ModelType {
        name: "gemma2",
        max_position_embeddings: 8192,
        head_dim: HeadDim::Fixed(256),
    }],
    hf_class: "Gemma2ForCausalLM",
    keys: Keys::Gemma2,
    own_keys: &[
        OwnKey::AttnSoftcap,
        OwnKey::FinalSoftcap,
        OwnKey::SlidingWindow,
    ],
    vocab: VocabStyle::Gemma,
    norm_shift: true,
    dropped: &["lm_head.weight"],
    swa_every: Some(2),
    query_scale_27b_layers: Some(LAYERS_27B),
    hf_keys: Some(hf_keys),
    layer_norms: GEMMA_NORMS,
    ..TEXT
};

/// The layer count llama.cpp takes for Gemma 2 27B, whose queries it scales by
/// (hidden / heads)^-½ rather than head_dim^-½.
const LAYERS_27B: u64 = 46;

fn hf_keys(key: &dyn Fn(&str) -> Option<f64>, layers: u64, c: &mut Map<String, Json>) {
    gemma_keys(key, layers, LAYERS_27B, 2, c);
    c.insert(
        "attn_logit_softcapping".into(),
        json!(key("attn_logit_softcapping").map(short)),
    );
}

/// A GGUF f32 value as the shortest decimal that reads back to it.
pub(super) fn short(x: f64) -> f64 {
    (x as f32).to_string().parse().unwrap_or(x)
}

/// The config.json keys of a Gemma model llama.cpp runs: GELU (tanh), tied embeddings, the
/// query scale llama.cpp uses (head_dim, or hidden/heads at the 27B layer count), final
/// soft-capping (none when the GGUF has none), the sliding window and which layers use it
/// (llama.cpp's fixed pattern: every `every`-th layer attends to everything).
pub(super) fn gemma_keys(
    key: &dyn Fn(&str) -> Option<f64>,
    layers: u64,
    layers_27b: u64,
    every: u64,
    c: &mut Map<String, Json>,
) {
    c.remove("hidden_act");
    c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
    c.insert("tie_word_embeddings".into(), json!(true));
    let scalar = if layers == layers_27b {
        key("embedding_length")
            .zip(key("attention.head_count"))
            .map(|(e, h)| (e / h).floor())
    } else {
        key("attention.key_length")
    };
    c.insert("query_pre_attn_scalar".into(), json!(scalar));
    c.insert(
        "final_logit_softcapping".into(),
        json!(key("final_logit_softcapping").map(short)),
    );
    match key("attention.sliding_window") {
        Some(w) => {
            c.insert("sliding_window".into(), json!(w as u64));
            let types: Vec<&str> = (0..layers)
                .map(|l| {
                    if (l + 1) % every != 0 {
                        "sliding_attention"
                    } else {
                        "full_attention"
                    }
                })
                .collect();
            c.insert("layer_types".into(), json!(types));
        }
        None => {
            c.insert("sliding_window".into(), Json::Null);
        }
    }
}
