//! llama.cpp's "gpt-oss" architecture: OpenAI's gpt-oss (attention with biases and a learned
//! sink logit per head, every other layer on a sliding window, YaRN rope; in every layer a
//! router with a bias choosing experts whose clamped SwiGLU projections have biases).
//!
//! The checkpoint stores each layer's experts already stacked: gate and up fused with their
//! rows interleaved (gate even, up odd), either as floats transposed to `[experts, in, out]`
//! or as OCP MXFP4 blocks and exponents `[experts, out, in/32, 16]` + `[experts, out, in/32]`.
//! Views read them as the converter writes them: `ffn_{gate,up,down}_exps` (MXFP4 kept as
//! ggml MXFP4 blocks, written first as the converter repacks them before anything else) and
//! their biases.

use super::{Arch, HeadDim, ModelType, Moe, OwnKey, QWEN_EXPERTS, TEXT};
use crate::error::Result;
use qs_formats::source::{ModelSource, ViewKind, ViewSpec};
use qs_model::hparams::HParams;
use serde_json::{json, Map, Value as Json};

/// config.json of a gpt-oss GGUF (`eval` reads it so): the released model's YaRN, whose
/// correction range is not rounded out (`truncate: false`; nothing in the GGUF says so), its
/// sliding window on every other layer and its SwiGLU clamp.
fn hf_keys(key: &dyn Fn(&str) -> Option<f64>, layers: u64, c: &mut Map<String, Json>) {
    if let Some(Json::Object(r)) = c.get_mut("rope_scaling") {
        r.insert("truncate".into(), json!(false));
        for (k, g) in [
            ("beta_fast", "rope.scaling.yarn_beta_fast"),
            ("beta_slow", "rope.scaling.yarn_beta_slow"),
        ] {
            if let Some(v) = key(g) {
                r.insert(k.into(), json!(super::gemma2::short(v)));
            }
        }
    }
    if let Some(w) = key("attention.sliding_window") {
        c.insert("sliding_window".into(), json!(w as u64));
        let types: Vec<&str> = (0..layers)
            .map(|l| {
                if l % 2 == 0 {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
            })
            .collect();
        c.insert("layer_types".into(), json!(types));
    }
    c.insert("swiglu_limit".into(), json!(7.0));
    c.insert("attention_bias".into(), json!(true));
}

pub const ARCH: Arch = Arch {
    name: "gpt-oss",
    model_types: &[ModelType {
        name: "gpt_oss",
        max_position_embeddings: 131072,
        head_dim: HeadDim::Fixed(64),
    }],
    hf_class: "GptOssForCausalLM",
    own_keys: &[OwnKey::SlidingWindow, OwnKey::ExpertFfIsFf],
    swa_every: Some(2),
    layer_norms: &[
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "post_attention_norm"),
    ],
    moe: Some(Moe {
        experts: "mlp.experts",
        projs: QWEN_EXPERTS,
        modules: &[("mlp.router", "ffn_gate_inp")],
        // a softmax over the chosen experts' logits: the renormalised softmax
        renormalize: Some(true),
        count_key: "num_local_experts",
        stored_stacked: true,
    }),
    bare: &[("self_attn.sinks", "attn_sinks.weight")],
    views: Some(views),
    // llama.cpp's clamped SwiGLU has gpt-oss's constants built in
    fixed: &[("swiglu_limit", 7.0, 7.0), ("swiglu_alpha", 1.702, 1.702)],
    hf_keys: Some(hf_keys),
    ..TEXT
};

/// Each layer's experts as the per-projection tensors the converter writes (see the module
/// documentation).
fn views(src: &ModelSource, hp: &HParams) -> Result<Vec<ViewSpec>> {
    let (h, ff) = (hp.n_embd as usize, hp.n_ff.unwrap_or(0) as usize);
    let experts = hp.moe.map_or(0, |m| m.experts as usize);
    let has = |n: &str| src.tensors.iter().any(|t| t.info.name == n);
    let mut out = Vec::new();
    for l in 0..hp.n_layer {
        let p = format!("model.layers.{l}.mlp.experts.");
        let view =
            |name: &str, shape: Vec<usize>, kind, stored: &[&str], early, sort: (&str, &str)| {
                ViewSpec {
                    name: format!("{p}{name}"),
                    shape,
                    kind,
                    stored: stored.iter().map(|s| format!("{p}{s}")).collect(),
                    early,
                    sort_as: (format!("{p}{}", sort.0), sort.1.to_string()),
                }
            };
        // gate from the even rows of the fused tensor, up from the odd ones
        let halves = [("gate_proj", 0, "\u{0}0"), ("up_proj", 1, "\u{0}1")];
        if has(&format!("{p}gate_up_proj_blocks")) || has(&format!("{p}down_proj_blocks")) {
            let codes = ["down_proj_blocks", "down_proj_scales"];
            out.push(view(
                "down_proj.weight",
                vec![experts, h, ff],
                ViewKind::Mxfp4 { step: 1, offset: 0 },
                &codes,
                true,
                ("down_proj_scales", ""),
            ));
            for (name, offset, sfx) in halves {
                out.push(view(
                    &format!("{name}.weight"),
                    vec![experts, ff, h],
                    ViewKind::Mxfp4 { step: 2, offset },
                    &["gate_up_proj_blocks", "gate_up_proj_scales"],
                    true,
                    ("gate_up_proj_scales", sfx),
                ));
            }
        } else {
            out.push(view(
                "down_proj.weight",
                vec![experts, h, ff],
                ViewKind::Transposed { step: 1, offset: 0 },
                &["down_proj"],
                false,
                ("down_proj", ""),
            ));
            for (name, offset, sfx) in halves {
                out.push(view(
                    &format!("{name}.weight"),
                    vec![experts, ff, h],
                    ViewKind::Transposed { step: 2, offset },
                    &["gate_up_proj"],
                    false,
                    ("gate_up_proj", sfx),
                ));
            }
        }
        out.push(view(
            "down_proj.bias",
            vec![experts, h],
            ViewKind::Columns { step: 1, offset: 0 },
            &["down_proj_bias"],
            false,
            ("down_proj_bias", ""),
        ));
        for (name, offset, sfx) in halves {
            out.push(view(
                &format!("{name}.bias"),
                vec![experts, ff],
                ViewKind::Columns { step: 2, offset },
                &["gate_up_proj_bias"],
                false,
                ("gate_up_proj_bias", sfx),
            ));
        }
    }
    Ok(out)
}
