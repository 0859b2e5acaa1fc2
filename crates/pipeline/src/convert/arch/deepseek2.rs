//! llama.cpp's "deepseek2" architecture: DeepSeek-V3 (multi-head latent attention; after a
//! few dense layers, a sigmoid router choosing experts within the best groups, plus shared
//! experts every token goes through).
//!
//! Latent attention: queries through a low-rank bottleneck (`q_a_proj`, its norm, `q_b_proj`),
//! keys and values decompressed by `kv_b_proj` from one normed `kv_lora_rank` vector per token
//! (`kv_a_proj_with_mqa`, which also makes the rope part every head shares). The converter
//! writes llama.cpp's absorbed form: `kv_b_proj` split per head into its key half, transposed
//! (`attn_k_b` `[heads, kv_lora_rank, qk_nope]`), and its value half (`attn_v_b`), read here
//! as views of the stored tensor (block-scaled FP8 too). Layers past `num_hidden_layers`
//! (multi-token prediction) are left out, as the converter leaves them.

use super::{Arch, HeadDim, ModelType, Moe, OwnKey, QWEN_EXPERTS, TEXT};
use crate::error::Result;
use qs_formats::source::{ModelSource, ViewKind, ViewSpec};
use qs_model::hparams::HParams;
use serde_json::{json, Map, Value as Json};

/// config.json of a deepseek2 GGUF (`eval` reads it so): the latent attention's sizes, the
/// dense layers, the routing (groups, sigmoid scores, scale, renormalisation) and YaRN's
/// mscale, from the keys the converter wrote. 0.1 × `mscale_all_dim` is stored; the released
/// configs give `mscale` the same value.
fn hf_keys(key: &dyn Fn(&str) -> Option<f64>, _layers: u64, c: &mut Map<String, Json>) {
    let short = super::gemma2::short;
    let int = |v: f64| json!(v as u64);
    if let Some(heads) = c.get("num_attention_heads").cloned() {
        c.insert("num_key_value_heads".into(), heads);
    }
    let rope = key("rope.dimension_count");
    for (k, gk) in [
        ("kv_lora_rank", "attention.kv_lora_rank"),
        ("v_head_dim", "attention.value_length_mla"),
        ("first_k_dense_replace", "leading_dense_block_count"),
        ("n_shared_experts", "expert_shared_count"),
        ("n_group", "expert_group_count"),
        ("topk_group", "expert_group_used_count"),
    ] {
        if let Some(v) = key(gk) {
            c.insert(k.into(), int(v));
        }
    }
    c.insert(
        "q_lora_rank".into(),
        key("attention.q_lora_rank").map_or(Json::Null, int),
    );
    if let Some(r) = rope {
        c.insert("qk_rope_head_dim".into(), int(r));
        c.insert("head_dim".into(), int(r));
        if let Some(k) = key("attention.key_length_mla") {
            c.insert("qk_nope_head_dim".into(), int(k - r));
        }
    }
    if let Some(s) = key("expert_weights_scale") {
        c.insert("routed_scaling_factor".into(), json!(short(s)));
    }
    let scoring = match key("expert_gating_func") {
        Some(2.0) => "sigmoid",
        Some(3.0) => "sqrtsoftplus",
        _ => "softmax",
    };
    c.insert("scoring_func".into(), json!(scoring));
    c.insert(
        "norm_topk_prob".into(),
        json!(key("expert_weights_norm") == Some(1.0)),
    );
    if let Some(Json::Object(r)) = c.get_mut("rope_scaling") {
        for (k, g) in [
            ("beta_fast", "rope.scaling.yarn_beta_fast"),
            ("beta_slow", "rope.scaling.yarn_beta_slow"),
        ] {
            if let Some(v) = key(g) {
                r.insert(k.into(), json!(short(v)));
            }
        }
        if let Some(m) = key("rope.scaling.yarn_log_multiplier") {
            let all = (short(m) * 10.0 * 1e6).round() / 1e6;
            r.insert("mscale_all_dim".into(), json!(all));
            r.insert("mscale".into(), json!(all));
        }
    }
}

pub const ARCH: Arch = Arch {
    name: "deepseek2",
    model_types: &[ModelType {
        name: "deepseek_v3",
        max_position_embeddings: 4096,
        // DeepseekV3Config sets head_dim to the rope part of a head
        head_dim: HeadDim::FromKey("qk_rope_head_dim"),
    }],
    hf_class: "DeepseekV3ForCausalLM",
    own_keys: &[
        OwnKey::LeadingDense,
        OwnKey::VocabSize,
        OwnKey::QLoraRank,
        OwnKey::KvLoraRank,
        OwnKey::KeyLengthMla,
        OwnKey::ValueLengthMla,
        OwnKey::ExpertFf,
        OwnKey::ExpertSharedCount,
        OwnKey::ExpertWeightsScale,
        OwnKey::ExpertWeightsNorm,
        OwnKey::RopeDimQkRope,
        OwnKey::YarnLogMul,
    ],
    layer_norms: &[
        ("input_layernorm", "attn_norm"),
        ("self_attn.q_a_layernorm", "attn_q_a_norm"),
        ("self_attn.kv_a_layernorm", "attn_kv_a_norm"),
        ("post_attention_layernorm", "ffn_norm"),
    ],
    attention: &[
        ("self_attn.q_a_proj", "attn_q_a"),
        ("self_attn.q_b_proj", "attn_q_b"),
        ("self_attn.kv_a_proj_with_mqa", "attn_kv_a_mqa"),
        ("self_attn.k_b_proj", "attn_k_b"),
        ("self_attn.v_b_proj", "attn_v_b"),
    ],
    moe: Some(Moe {
        experts: "mlp.experts",
        projs: QWEN_EXPERTS,
        modules: &[
            ("mlp.gate", "ffn_gate_inp"),
            ("mlp.shared_experts.gate_proj", "ffn_gate_shexp"),
            ("mlp.shared_experts.up_proj", "ffn_up_shexp"),
            ("mlp.shared_experts.down_proj", "ffn_down_shexp"),
        ],
        // the file says (expert_weights_norm)
        renormalize: None,
        count_key: "n_routed_experts",
        stored_stacked: false,
    }),
    bare: &[("mlp.gate.e_score_correction_bias", "exp_probs_b.bias")],
    views: Some(views),
    // transformers' DeepseekV3 scores experts with a sigmoid whatever the config says;
    // llama.cpp reads the scoring function from the file, softmax when it is absent
    scoring: Some("sigmoid"),
    hf_keys: Some(hf_keys),
    ..TEXT
};

/// Each layer's `kv_b_proj` as the converter's two halves: per head, the key rows transposed
/// and the value rows (both written where `kv_b_proj` is, key half first).
fn views(_: &ModelSource, hp: &HParams) -> Result<Vec<ViewSpec>> {
    let Some(m) = hp.mla else {
        return Ok(vec![]);
    };
    let (heads, kv) = (hp.n_head as usize, m.kv_lora as usize);
    let (nope, v) = (m.qk_nope as usize, m.v_head as usize);
    let mut out = Vec::new();
    for l in 0..hp.n_layer {
        let p = format!("model.layers.{l}.self_attn.");
        let stored = format!("{p}kv_b_proj.weight");
        for (name, shape, start, transpose, sfx) in [
            ("k_b_proj", vec![heads, kv, nope], 0, true, "\u{0}0"),
            ("v_b_proj", vec![heads, v, kv], nope, false, "\u{0}1"),
        ] {
            out.push(ViewSpec {
                name: format!("{p}{name}.weight"),
                shape,
                kind: ViewKind::HeadRows {
                    per: nope + v,
                    start,
                    transpose,
                },
                stored: vec![stored.clone()],
                early: false,
                sort_as: (stored.clone(), sfx.to_string()),
            });
        }
    }
    Ok(out)
}
