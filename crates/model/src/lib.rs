//! The calibration forward pass: llama-style decoder layers (llama/Mistral, Qwen2 with q/k/v
//! biases, Qwen3 with per-head q/k norms, SmolLM3 with layers without rope, OLMo 2 with norms
//! after attention and MLP instead of before; [`FAMILIES`]) in
//! f32 on CPU, with faer's multi-threaded matrix
//! products. Layers run one at a time so only one layer's weights are in memory, and each layer
//! can hand back the inputs its linear layers saw (what GPTQ and AWQ calibrate on).
//!
//! Hugging Face conventions: weights `[out, in]`, rotate-half RoPE on the unpermuted q/k.

use faer::{Accum, Mat, MatRef, Par};
use qs_formats::source::ModelSource;
use qs_numeric::linalg::matmul;
use rayon::prelude::*;
use serde_json::Value as Json;

pub mod grad;
pub mod hparams;
pub use hparams::HParams;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Format(#[from] qs_formats::FormatError),
    #[error("config.json: {0}")]
    Config(String),
    #[error("tensor '{name}': {msg}")]
    Tensor { name: String, msg: String },
    #[error("generation: {0}")]
    Generation(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// The hyper-parameters the forward pass needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub eps: f32,
    /// Rope of the layers that attend to the whole context.
    pub rope: Rope,
    /// Rope of the sliding-window layers, when it differs (Gemma 3).
    pub rope_local: Option<Rope>,
    pub vocab: usize,
    /// Per layer, whether it applies rope (SmolLM3's NoPE layers do not).
    pub rope_layers: Vec<bool>,
    /// Per layer, the sliding window it attends within (a query sees keys fewer than this
    /// many positions back), or `None` for the whole context.
    pub windows: Vec<Option<usize>>,
    /// Which norms a layer has (the family's).
    pub norms: Norms,
    /// Added to every RMSNorm gain as read (Gemma's `1 + w`).
    pub norm_offset: f32,
    /// Token embeddings are multiplied by √hidden (Gemma).
    pub embed_scale: Option<f32>,
    pub act: Act,
    /// Attention scores are q·k times this (1/√head_dim, or Gemma's `query_pre_attn_scalar`^-½).
    pub attn_scale: f32,
    /// Gemma 2: scores become `cap·tanh(s/cap)` before the softmax.
    pub attn_softcap: Option<f32>,
    /// Gemma 2: logits become `cap·tanh(l/cap)`.
    pub final_softcap: Option<f32>,
    /// A mixture of experts in place of every layer's MLP (but the leading `dense_layers`).
    pub moe: Option<MoeConfig>,
    /// Leading layers with a dense MLP in a mixture of experts (DeepSeek's
    /// `first_k_dense_replace`).
    pub dense_layers: usize,
    /// Multi-head latent attention (DeepSeek) in place of q/k/v projections.
    pub mla: Option<hparams::MlaParams>,
}

/// How a layer's tokens are routed to its experts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeConfig {
    pub names: MoeNames,
    pub experts: usize,
    /// Experts per token (the top-k of the router's softmax).
    pub used: usize,
    /// The chosen experts' weights are renormalised to sum to 1.
    pub renormalize: bool,
    /// The chosen experts' weights are multiplied by this (DeepSeek's
    /// `routed_scaling_factor`; else 1).
    pub scale: f32,
    /// Experts are chosen within the best `topk_group` of `n_group` equal groups (DeepSeek):
    /// (n_group, topk_group).
    pub groups: Option<(usize, usize)>,
}

/// Rotary position embedding parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    /// Rotated dimensions of each head (the first ones; `partial_rotary_factor` × head_dim).
    pub dims: usize,
    /// Per rotary pair, the divisor of its frequency (Llama 3 scaling, LongRoPE's short factors;
    /// else all 1).
    pub factors: Vec<f32>,
    /// Position multiplier (linear rope scaling: 1/factor).
    pub pos_scale: f64,
    /// cos and sin are multiplied by this (LongRoPE's attention factor; else 1).
    pub mscale: f64,
    /// LongRoPE: the divisors for sequences longer than the original context, and that context.
    pub long: Option<(Vec<f32>, usize)>,
}

/// LongRoPE (Phi-3): per rotary pair frequency divisors for long and short sequences, and the
/// attention factor cos and sin are scaled by.
#[derive(Debug, Clone, PartialEq)]
pub struct LongRope {
    pub long: Vec<f32>,
    pub short: Vec<f32>,
    pub attn_factor: f64,
    pub original: usize,
}

/// The rotated dimensions of each head: `partial_rotary_factor` (in the rope parameters or at
/// the top level) of the hidden size per head, as llama.cpp's converter computes it.
pub fn rotary_dims(c: &Json, hidden: usize, heads: usize, head_dim: usize) -> usize {
    let f = rope_params(c)
        .and_then(|r| r.get("partial_rotary_factor"))
        .or_else(|| c.get("partial_rotary_factor"))
        .and_then(|v| v.as_f64())
        .filter(|f| *f > 0.0 && *f <= 1.0);
    match f {
        Some(f) if f < 1.0 => ((f * hidden as f64) as usize / heads.max(1)).min(head_dim),
        _ => head_dim,
    }
}

/// LongRoPE's parameters, when the rope type is `longrope` (or the older `su`) with long and
/// short factors: checked to have one factor per rotary pair of `dims`.
pub fn longrope(c: &Json, dims: usize) -> Result<Option<LongRope>> {
    let Some(r) = rope_params(c) else {
        return Ok(None);
    };
    let (Some(long), Some(short)) = (r.get("long_factor"), r.get("short_factor")) else {
        return Ok(None);
    };
    if !matches!(rope_type(r), "longrope" | "su") {
        return Ok(None);
    }
    let list = |v: &Json, k: &str| -> Result<Vec<f32>> {
        v.as_array()
            .filter(|a| a.len() == dims / 2)
            .and_then(|a| {
                a.iter()
                    .map(|x| {
                        x.as_f64()
                            .filter(|f| f.is_finite() && *f > 0.0)
                            .map(|f| f as f32)
                    })
                    .collect::<Option<Vec<f32>>>()
            })
            .ok_or_else(|| {
                ModelError::Config(format!(
                    "rope {k} must list {} positive numbers (one per rotary pair)",
                    dims / 2
                ))
            })
    };
    let key = "original_max_position_embeddings";
    let original = r
        .get(key)
        .or_else(|| c.get(key))
        .and_then(|v| v.as_u64())
        .filter(|&o| o >= 2)
        .ok_or_else(|| ModelError::Config(format!("longrope without {key}")))?;
    let max = c
        .get("max_position_embeddings")
        .and_then(|v| v.as_u64())
        .unwrap_or(original);
    let scale = max as f64 / original as f64;
    let attn_factor = match r.get("attention_factor").and_then(|v| v.as_f64()) {
        Some(f) => f,
        None if scale > 1.0 => (1.0 + scale.ln() / (original as f64).ln()).sqrt(),
        None => 1.0,
    };
    Ok(Some(LongRope {
        long: list(long, "long_factor")?,
        short: list(short, "short_factor")?,
        attn_factor,
        original: original as usize,
    }))
}

/// The norms of a decoder layer, by their Hugging Face module names (`None`: the layer has no
/// such norm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Norms {
    /// Before attention.
    pub attn_in: Option<&'static str>,
    /// On the attention output, before the residual add.
    pub attn_out: Option<&'static str>,
    /// Before the MLP.
    pub mlp_in: Option<&'static str>,
    /// On the MLP output, before the residual add.
    pub mlp_out: Option<&'static str>,
}

/// Llama's: a norm before attention and one before the MLP.
pub const PRE_NORMS: Norms = Norms {
    attn_in: Some("input_layernorm"),
    attn_out: None,
    mlp_in: Some("post_attention_layernorm"),
    mlp_out: None,
};

/// The MLP's activation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    /// silu(gate)·up.
    Silu,
    /// gelu(gate)·up with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
    /// gpt-oss's clamped SwiGLU: with g = min(gate, limit) and u = up clamped to ±limit,
    /// g·sigmoid(alpha·g)·(u + 1).
    SwigluOai { alpha: f32, limit: f32 },
}

impl Act {
    /// The gated MLP's activation of one gate value `g` and up value `u`.
    #[inline]
    pub fn gated(self, g: f32, u: f32) -> f32 {
        match self {
            Act::Silu => g / (1.0 + (-g).exp()) * u,
            Act::GeluTanh => gelu_tanh(g) * u,
            Act::SwigluOai { alpha, limit } => {
                let g = g.min(limit);
                let u = u.clamp(-limit, limit);
                g / (1.0 + (-alpha * g).exp()) * (u + 1.0)
            }
        }
    }
}

/// A Hugging Face model type the forward pass runs, with what its transformers (5.x) config
/// class fills in when config.json leaves it out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Family {
    pub model_type: &'static str,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub norms: Norms,
    /// Without `no_rope_layers`, every this-many-th layer (the 4th, 8th, …) has no rope.
    pub nope_interval: Option<usize>,
    /// Gemma: norms multiply by `1 + w`, embeddings are scaled by √hidden, the MLP is GELU
    /// (tanh), attention is scaled by `query_pre_attn_scalar`^-½, logits may be soft-capped.
    pub gemma: bool,
    /// Without `layer_types`, every this-many-th layer attends to the whole context and the
    /// others to `sliding_window` tokens.
    pub sliding_interval: Option<usize>,
    /// Sliding-window layers' own rope theta by default (their rope parameters are kept apart,
    /// by layer type, as transformers' Gemma 3 config keeps them).
    pub sliding_rope_theta: Option<f64>,
    /// Other values the config class fills in when config.json leaves them out.
    pub defaults: &'static [(&'static str, f64)],
    /// A mixture of experts in place of every layer's MLP.
    pub moe: Option<MoeNames>,
    /// gpt-oss: clamped SwiGLU experts ([`Act::SwigluOai`], `swiglu_limit`, `swiglu_alpha`).
    pub swiglu_oai: bool,
}

/// How a family names and routes its experts (modules under `model.layers.N.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeNames {
    /// The module holding expert `E` as `{experts}.E`.
    pub experts: &'static str,
    /// An expert's gate, up and down projections.
    pub gate: &'static str,
    pub up: &'static str,
    pub down: &'static str,
    /// The router: one logit per expert.
    pub router: &'static str,
    /// A shared expert every token goes through (gate/up/down_proj under it), scaled by the
    /// sigmoid of its own one-row gate (Qwen2-MoE) or not (DeepSeek's, without one).
    pub shared: Option<(&'static str, Option<&'static str>)>,
    /// Experts scored by a sigmoid of the router's logits (DeepSeek-V3), not a softmax.
    pub sigmoid: bool,
    /// A per-expert bias added to the scores only to choose the experts (DeepSeek-V3's
    /// `e_score_correction_bias`, under `model.layers.N.`).
    pub choice_bias: Option<&'static str>,
    /// [`MoeNames::renorm_key`]'s value when the config leaves it out.
    pub renorm_default: bool,
    /// The config key saying whether the chosen experts' softmax weights are renormalised to
    /// sum to 1 (false when absent); `None`: always renormalised.
    pub renorm_key: Option<&'static str>,
}

const QWEN_MOE: MoeNames = MoeNames {
    experts: "mlp.experts",
    gate: "gate_proj",
    up: "up_proj",
    down: "down_proj",
    router: "mlp.gate",
    shared: None,
    renorm_key: Some("norm_topk_prob"),
    sigmoid: false,
    choice_bias: None,
    renorm_default: false,
};

const fn llama_like(model_type: &'static str, rope_theta: f64) -> Family {
    Family {
        model_type,
        rope_theta,
        rms_norm_eps: 1e-6,
        norms: PRE_NORMS,
        nope_interval: None,
        gemma: false,
        sliding_interval: None,
        sliding_rope_theta: None,
        defaults: &[],
        moe: None,
        swiglu_oai: false,
    }
}

/// Gemma's norms: before and after both attention and MLP.
const GEMMA_NORMS: Norms = Norms {
    attn_in: Some("input_layernorm"),
    attn_out: Some("post_attention_layernorm"),
    mlp_in: Some("pre_feedforward_layernorm"),
    mlp_out: Some("post_feedforward_layernorm"),
};

/// The model types the forward pass runs, one entry each.
pub const FAMILIES: &[Family] = &[
    llama_like("llama", 10000.0),
    llama_like("mistral", 10000.0),
    llama_like("qwen2", 10000.0),
    llama_like("qwen3", 10000.0),
    Family {
        nope_interval: Some(4),
        ..llama_like("smollm3", 2_000_000.0)
    },
    Family {
        rms_norm_eps: 1e-5,
        norms: Norms {
            attn_in: None,
            attn_out: Some("post_attention_layernorm"),
            mlp_in: None,
            mlp_out: Some("post_feedforward_layernorm"),
        },
        ..llama_like("olmo2", 10000.0)
    },
    Family {
        rms_norm_eps: 1e-5,
        defaults: &[("original_max_position_embeddings", 4096.0)],
        ..llama_like("phi3", 10000.0)
    },
    Family {
        norms: GEMMA_NORMS,
        gemma: true,
        sliding_interval: Some(2),
        defaults: &[
            ("head_dim", 256.0),
            ("attn_logit_softcapping", 50.0),
            ("final_logit_softcapping", 30.0),
            ("sliding_window", 4096.0),
            ("query_pre_attn_scalar", 256.0),
        ],
        ..llama_like("gemma2", 10000.0)
    },
    Family {
        norms: GEMMA_NORMS,
        gemma: true,
        sliding_interval: Some(6),
        sliding_rope_theta: Some(10000.0),
        defaults: &[
            ("head_dim", 256.0),
            ("sliding_window", 4096.0),
            ("query_pre_attn_scalar", 256.0),
        ],
        ..llama_like("gemma3_text", 1_000_000.0)
    },
    Family {
        rms_norm_eps: 1e-5,
        moe: Some(MoeNames {
            experts: "block_sparse_moe.experts",
            gate: "w1",
            up: "w3",
            down: "w2",
            router: "block_sparse_moe.gate",
            shared: None,
            renorm_key: None,
            ..QWEN_MOE
        }),
        ..llama_like("mixtral", 1_000_000.0)
    },
    Family {
        moe: Some(MoeNames {
            shared: Some(("mlp.shared_expert", Some("mlp.shared_expert_gate"))),
            ..QWEN_MOE
        }),
        ..llama_like("qwen2_moe", 10000.0)
    },
    Family {
        moe: Some(QWEN_MOE),
        ..llama_like("qwen3_moe", 10000.0)
    },
    Family {
        rms_norm_eps: 1e-5,
        sliding_interval: Some(2),
        defaults: &[
            ("head_dim", 64.0),
            ("sliding_window", 128.0),
            ("swiglu_limit", 7.0),
        ],
        moe: Some(MoeNames {
            router: "mlp.router",
            // a softmax over the chosen experts' logits
            renorm_key: None,
            ..QWEN_MOE
        }),
        swiglu_oai: true,
        ..llama_like("gpt_oss", 150_000.0)
    },
    Family {
        // DeepseekV3Config's (q_lora_rank left out: null means no query bottleneck)
        defaults: &[
            ("first_k_dense_replace", 3.0),
            ("n_group", 8.0),
            ("topk_group", 4.0),
            ("n_shared_experts", 1.0),
            ("n_routed_experts", 256.0),
            ("num_experts_per_tok", 8.0),
            ("moe_intermediate_size", 2048.0),
            ("routed_scaling_factor", 2.5),
            ("kv_lora_rank", 512.0),
            ("qk_rope_head_dim", 64.0),
            ("qk_nope_head_dim", 128.0),
            ("v_head_dim", 128.0),
        ],
        moe: Some(MoeNames {
            shared: Some(("mlp.shared_experts", None)),
            sigmoid: true,
            choice_bias: Some("mlp.gate.e_score_correction_bias"),
            renorm_default: true,
            ..QWEN_MOE
        }),
        ..llama_like("deepseek_v3", 10000.0)
    },
];

/// The layer and projection (`Gate`, `Up`, `Down`) of a mixture of experts' stacked tensor
/// `model.layers.N.{experts}.{proj}.weight`.
pub fn parse_stacked(names: &MoeNames, name: &str) -> Option<(usize, Linear)> {
    let (l, proj) = experts_module(names, name)?;
    Some((l, expert_projection(names, proj)?))
}

/// The layer, expert and projection of one expert's weight in a checkpoint that stores each
/// expert apart: `model.layers.N.{experts}.E.{proj}.weight`.
pub fn parse_expert(names: &MoeNames, name: &str) -> Option<(usize, usize, Linear)> {
    let (l, rest) = experts_module(names, name)?;
    let (e, proj) = rest.split_once('.')?;
    Some((l, e.parse().ok()?, expert_projection(names, proj)?))
}

/// (layer, what follows `{experts}.`) of `model.layers.N.{experts}.….weight`.
fn experts_module<'a>(names: &MoeNames, name: &'a str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (l, module) = rest.split_once('.')?;
    let rest = module
        .strip_suffix(".weight")?
        .strip_prefix(names.experts)?
        .strip_prefix('.')?;
    Some((l.parse().ok()?, rest))
}

fn expert_projection(names: &MoeNames, proj: &str) -> Option<Linear> {
    [
        (names.gate, Linear::Gate),
        (names.up, Linear::Up),
        (names.down, Linear::Down),
    ]
    .into_iter()
    .find(|(n, _)| *n == proj)
    .map(|(_, lin)| lin)
}

/// Whether the chosen experts' weights are renormalised to sum to 1 in a config.json's
/// mixture of experts (false for a model without experts).
pub fn renormalizes_experts(c: &Json) -> Result<bool> {
    let Some(m) = family_of(c)?.moe else {
        return Ok(false);
    };
    let Some(key) = m.renorm_key else {
        return Ok(true);
    };
    match c.get(key) {
        None | Some(Json::Null) => Ok(m.renorm_default),
        Some(Json::Bool(b)) => Ok(*b),
        Some(v) => Err(ModelError::Config(format!(
            "{key} = {v} is not true or false"
        ))),
    }
}

/// A [`Family::defaults`] value as JSON: whole numbers as integers.
pub fn default_value(v: f64) -> Json {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        (v as i64).into()
    } else {
        v.into()
    }
}

/// config.json with the values the family's config class fills in ([`Family::defaults`]) where
/// it leaves them out (absent or null); whole numbers as integers.
pub fn with_family_defaults(c: &Json, family: &Family) -> Json {
    let mut c = c.clone();
    if let Some(o) = c.as_object_mut() {
        for &(k, v) in family.defaults {
            if o.get(k).is_none_or(|x| x.is_null()) {
                o.insert(k.to_string(), default_value(v));
            }
        }
    }
    c
}

/// Per layer, whether it attends within a sliding window: `layer_types`
/// ("sliding_attention"/"full_attention"), else every layer but each `sliding_window_pattern`-th
/// (the family's default), else none.
pub fn sliding_layers(c: &Json, family: &Family, layers: usize) -> Result<Vec<bool>> {
    layer_pattern(
        c,
        layers,
        (
            "layer_types",
            "\"sliding_attention\" or \"full_attention\"",
            |x| match x.as_str() {
                Some("sliding_attention") => Some(true),
                Some("full_attention") => Some(false),
                _ => None,
            },
        ),
        ("sliding_window_pattern", family.sliding_interval),
        false,
    )
}

/// A per-layer flag from config.json: the list under `list.0` (each entry read by `list.2`,
/// described by `list.1` in errors), else true for every layer but each `every.0`-th (its
/// default `every.1`), else `otherwise` for every layer.
#[allow(clippy::type_complexity)]
fn layer_pattern(
    c: &Json,
    layers: usize,
    list: (&str, &str, fn(&Json) -> Option<bool>),
    every: (&str, Option<usize>),
    otherwise: bool,
) -> Result<Vec<bool>> {
    let (key, what, entry) = list;
    if let Some(v) = c.get(key).filter(|v| !v.is_null()) {
        let items = v.as_array().filter(|a| a.len() >= layers).ok_or_else(|| {
            ModelError::Config(format!(
                "{key} must list at least num_hidden_layers = {layers} values ({what})"
            ))
        })?;
        return items[..layers]
            .iter()
            .map(|x| {
                entry(x).ok_or_else(|| ModelError::Config(format!("{key}: {x} is not {what}")))
            })
            .collect();
    }
    let (key, default) = every;
    let Some(default) = default else {
        return Ok(vec![otherwise; layers]);
    };
    let n = match c.get(key).filter(|v| !v.is_null()) {
        None => default,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=1 << 20).contains(n))
            .ok_or_else(|| {
                ModelError::Config(format!("{key} = {v}: expected a whole number from 1"))
            })? as usize,
    };
    Ok((0..layers).map(|l| (l + 1) % n != 0).collect())
}

/// Gemma 3's rope parameters by layer type, as transformers' config class completes them:
/// `{"full_attention": {..}, "sliding_attention": {..}}` from `rope_parameters` in that form,
/// or from the older top-level `rope_theta`, `rope_local_base_freq` and `rope_scaling` (which
/// applies to the full-attention layers).
pub fn rope_by_layer_type(c: &Json, family: &Family) -> Option<Json> {
    let local = family.sliding_rope_theta?;
    let given = c.get("rope_parameters").filter(|v| v.is_object());
    let mut full = given
        .and_then(|r| r.get("full_attention"))
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"rope_type": "default"}));
    let mut sliding = given
        .and_then(|r| r.get("sliding_attention"))
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"rope_type": "default"}));
    if let (Some(f), Some(Json::Object(s))) = (full.as_object_mut(), c.get("rope_scaling")) {
        for (k, v) in s {
            f.insert(k.clone(), v.clone());
        }
    }
    let set_theta = |r: &mut Json, key: &str, default: f64| {
        if let Some(o) = r.as_object_mut() {
            if o.get("rope_theta").is_none_or(|v| v.is_null()) {
                let t = c.get(key).filter(|v| !v.is_null()).cloned();
                o.insert("rope_theta".into(), t.unwrap_or(default.into()));
            }
            if let Some(t) = o.remove("type") {
                o.entry("rope_type").or_insert(t);
            }
        }
    };
    set_theta(&mut full, "rope_theta", family.rope_theta);
    set_theta(&mut sliding, "rope_local_base_freq", local);
    Some(serde_json::json!({"full_attention": full, "sliding_attention": sliding}))
}

/// Per layer, whether it applies rope: `no_rope_layers` (1 = rope, as transformers reads it),
/// else every layer but each `no_rope_layer_interval`-th (the family's default), else all.
pub fn rope_layers(c: &Json, family: &Family, layers: usize) -> Result<Vec<bool>> {
    layer_pattern(
        c,
        layers,
        ("no_rope_layers", "0 or 1", |x| match x.as_u64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        }),
        ("no_rope_layer_interval", family.nope_interval),
        true,
    )
}

/// The rope scaling parameters of a config.json (`rope_parameters` or `rope_scaling`), if any.
pub fn rope_params(c: &Json) -> Option<&Json> {
    c.get("rope_parameters")
        .or_else(|| c.get("rope_scaling"))
        .filter(|v| !v.is_null())
}

/// The rope type named by rope parameters (`rope_type`, or the older `type`).
pub fn rope_type(r: &Json) -> &str {
    r.get("rope_type")
        .or_else(|| r.get("type"))
        .and_then(|v| v.as_str())
        .unwrap_or("default")
}

/// Llama 3 frequency scaling: one divisor per rotary pair, computed as llama.cpp's converter
/// computes its `rope_freqs` tensor: float32 arithmetic, and `scalar / tensor` as torch does it
/// (reciprocal, then multiply). torch's vectorised `powf` can differ from libm's by an ulp, so
/// a factor in the smoothing band may too.
pub fn llama3_rope_factors(r: &Json, theta: f64, head_dim: usize) -> Vec<f32> {
    let f = |k: &str, d: f64| r.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    let factor = f("factor", 8.0) as f32;
    let low = f("low_freq_factor", 1.0);
    let high = f("high_freq_factor", 4.0);
    let old = f("original_max_position_embeddings", 8192.0);
    let (low_wavelen, high_wavelen) = ((old / low) as f32, (old / high) as f32);
    (0..head_dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0f32 / (theta as f32).powf(i as f32 / head_dim as f32);
            let wavelen = (1.0 / freq) * (2.0 * std::f64::consts::PI) as f32;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = ((1.0 / wavelen) * old as f32 - low as f32) / (high - low) as f32;
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        })
        .collect()
}

/// The family of a config.json's `model_type`, or an error naming the unsupported one.
pub fn family_of(c: &Json) -> Result<&'static Family> {
    let mt = c.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    FAMILIES.iter().find(|f| f.model_type == mt).ok_or_else(|| {
        let names: Vec<&str> = FAMILIES.iter().map(|f| f.model_type).collect();
        ModelError::Config(format!(
            "unsupported architecture '{}' ({})",
            qs_formats::error::shown(mt),
            names.join(", ")
        ))
    })
}

/// Rope from one set of rope parameters (`r`, possibly `None`), `theta` given, over `dims`
/// dimensions of each head; LongRoPE when `lr`.
/// `original`: the config's top-level `original_max_position_embeddings` (which takes
/// precedence over the rope parameters', as in transformers) and `max_position_embeddings`.
fn rope_of(
    r: Option<&Json>,
    theta: f64,
    dims: usize,
    lr: Option<LongRope>,
    original: (Option<f64>, Option<f64>),
) -> Result<Rope> {
    let mut rope = Rope {
        theta,
        dims,
        factors: vec![1.0; dims / 2],
        pos_scale: 1.0,
        mscale: 1.0,
        long: None,
    };
    if let Some(lr) = lr {
        rope.factors = lr.short;
        rope.mscale = lr.attn_factor;
        rope.long = Some((lr.long, lr.original));
        return Ok(rope);
    }
    if let Some(r) = r {
        let factor = r.get("factor").and_then(|v| v.as_f64());
        match (rope_type(r), factor) {
            ("default", _) => {}
            ("linear", Some(f)) if f > 0.0 => rope.pos_scale = 1.0 / f,
            (t, _) if t.eq_ignore_ascii_case("llama3") => {
                rope.factors = llama3_rope_factors(r, theta, dims)
            }
            ("yarn", f) if f.is_none_or(|f| f > 0.0) => {
                let (factors, mscale) = yarn(r, f, theta, dims, original);
                rope.factors = factors;
                rope.mscale = mscale;
            }
            (t, _) => {
                return Err(ModelError::Config(format!(
                    "rope scaling '{t}' is not supported by the calibration pass (default, linear, llama3 and yarn are)"
                )))
            }
        }
    }
    Ok(rope)
}

/// YaRN as transformers computes it (`_compute_yarn_parameters`): per rotary pair the divisor
/// of its frequency (interpolated by `factor` below the correction range, kept above it, a
/// linear ramp between; the range's ends rounded out unless `truncate` is false) and the
/// attention factor cos and sin are scaled by.
fn yarn(
    r: &Json,
    factor: Option<f64>,
    theta: f64,
    dims: usize,
    (top, max_pos): (Option<f64>, Option<f64>),
) -> (Vec<f32>, f64) {
    let num = |k: &str| r.get(k).and_then(|v| v.as_f64());
    // transformers: the top-level value, else the rope parameters', else the model's context
    let original = top
        .or_else(|| num("original_max_position_embeddings"))
        .or(max_pos)
        .filter(|&o| o > 0.0)
        .unwrap_or(4096.0);
    // without a factor, the context's ratio to the original
    let factor = factor.unwrap_or_else(|| max_pos.map_or(1.0, |m| m / original));
    let get_mscale = |scale: f64, m: f64| {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    };
    let attn = match (
        num("attention_factor"),
        num("mscale"),
        num("mscale_all_dim"),
    ) {
        (Some(a), _, _) => a,
        (None, Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
            get_mscale(factor, m) / get_mscale(factor, ma)
        }
        _ => get_mscale(factor, 1.0),
    };
    let beta_fast = num("beta_fast").filter(|&b| b != 0.0).unwrap_or(32.0);
    let beta_slow = num("beta_slow").filter(|&b| b != 0.0).unwrap_or(1.0);
    let d = dims as f64;
    let corr =
        |rot: f64| d * (original / (rot * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln());
    let (mut lo, mut hi) = (corr(beta_fast), corr(beta_slow));
    if r.get("truncate").and_then(|v| v.as_bool()).unwrap_or(true) {
        lo = lo.floor();
        hi = hi.ceil();
    }
    let (lo, mut hi) = (lo.max(0.0), hi.min(d - 1.0));
    if lo == hi {
        hi += 0.001;
    }
    let factors = (0..dims / 2)
        .map(|i| {
            let ramp = ((i as f64 - lo) / (hi - lo)).clamp(0.0, 1.0);
            let extrapolate = 1.0 - ramp;
            // inv = inv₀/factor·(1 − e) + inv₀·e, as a divisor of inv₀
            (1.0 / ((1.0 - extrapolate) / factor + extrapolate)) as f32
        })
        .collect();
    (factors, attn)
}

fn positive(c: &Json, key: &str) -> Result<Option<f32>> {
    match c.get(key).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x as f32)),
            Some(0.0) => Ok(None),
            _ => Err(ModelError::Config(format!(
                "{key} = {v}: expected a positive number"
            ))),
        },
    }
}

impl Config {
    pub fn from_hf(c: &Json) -> Result<Config> {
        let family = family_of(c)?;
        let c = &with_family_defaults(c, family);
        let hp = HParams::from_config(c).map_err(ModelError::Config)?;
        let (hidden, heads) = (hp.n_embd as usize, hp.n_head as usize);
        let head_dim = hp.head_dim as usize;
        let layers = hp.n_layer as usize;
        let max_pos = c.get("max_position_embeddings").and_then(|v| v.as_f64());
        let (rope, rope_local) = match rope_by_layer_type(c, family) {
            Some(by_type) => {
                let of = |t: &str| {
                    let r = &by_type[t];
                    let theta = r["rope_theta"].as_f64().ok_or_else(|| {
                        ModelError::Config(format!(
                            "rope_parameters.{t}.rope_theta is not a number"
                        ))
                    })?;
                    rope_of(Some(r), theta, head_dim, None, (None, max_pos))
                };
                (of("full_attention")?, Some(of("sliding_attention")?))
            }
            None => {
                let r = rope_params(c);
                let theta = c
                    .get("rope_theta")
                    .or_else(|| r.and_then(|r| r.get("rope_theta")))
                    .and_then(|v| v.as_f64())
                    .unwrap_or(family.rope_theta);
                // latent attention rotates only each head's (and the shared key's) rope part
                let dims = match hp.mla {
                    Some(m) => m.qk_rope as usize,
                    None => rotary_dims(c, hidden, heads, head_dim),
                };
                let original = c
                    .get("original_max_position_embeddings")
                    .and_then(|v| v.as_f64());
                (
                    rope_of(r, theta, dims, longrope(c, dims)?, (original, max_pos))?,
                    None,
                )
            }
        };
        let window = match c.get("sliding_window").filter(|v| !v.is_null()) {
            None => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|w| (1..=qs_numeric::limits::MAX_CONTEXT).contains(w))
                    .ok_or_else(|| {
                        ModelError::Config(format!(
                            "sliding_window = {v}: expected a whole number of tokens from 1"
                        ))
                    })? as usize,
            ),
        };
        let windows = match window {
            Some(w) if family.sliding_interval.is_some() => sliding_layers(c, family, layers)?
                .into_iter()
                .map(|s| s.then_some(w))
                .collect(),
            _ => vec![None; layers],
        };
        if hp.mla.is_some() {
            mla_supported(c)?;
        }
        let attn_scale = match (family.gemma, positive(c, "query_pre_attn_scalar")?, hp.mla) {
            (true, Some(q), _) => 1.0 / q.sqrt(),
            (_, _, Some(m)) => mla_scale(c, m),
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        Ok(Config {
            hidden,
            layers,
            heads,
            kv_heads: hp.n_head_kv as usize,
            head_dim,
            eps: c
                .get("rms_norm_eps")
                .and_then(|v| v.as_f64())
                .unwrap_or(family.rms_norm_eps) as f32,
            rope,
            rope_local,
            vocab: hp
                .vocab
                .ok_or_else(|| ModelError::Config("lacks vocab_size".into()))?
                as usize,
            rope_layers: rope_layers(c, family, layers)?,
            windows,
            norms: family.norms,
            norm_offset: if family.gemma { 1.0 } else { 0.0 },
            embed_scale: family.gemma.then(|| (hidden as f32).sqrt()),
            act: if family.gemma {
                Act::GeluTanh
            } else if family.swiglu_oai {
                Act::SwigluOai {
                    alpha: positive(c, "swiglu_alpha")?.unwrap_or(1.702),
                    limit: positive(c, "swiglu_limit")?.unwrap_or(7.0),
                }
            } else {
                Act::Silu
            },
            attn_scale,
            attn_softcap: if family.gemma {
                positive(c, "attn_logit_softcapping")?
            } else {
                None
            },
            final_softcap: if family.gemma {
                positive(c, "final_logit_softcapping")?
            } else {
                None
            },
            moe: match (family.moe, hp.moe) {
                (Some(names), Some(m)) => Some(MoeConfig {
                    names,
                    experts: m.experts as usize,
                    used: m.used as usize,
                    renormalize: renormalizes_experts(c)?,
                    scale: positive(c, "routed_scaling_factor")?.unwrap_or(1.0),
                    groups: moe_groups(c, m.experts as usize, m.used as usize)?,
                }),
                (Some(_), None) => {
                    return Err(ModelError::Config(format!(
                        "lacks the number of experts ({})",
                        hparams::EXPERT_KEYS.join(" or ")
                    )))
                }
                _ => None,
            },
            dense_layers: hp.dense_layers as usize,
            mla: hp.mla,
        })
    }

    /// A llama-style configuration (pre-norms, SiLU, rope everywhere, no windows): what
    /// synthetic layers in tests use.
    pub fn llama(
        hidden: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        layers: usize,
    ) -> Config {
        Config {
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim,
            eps: 1e-6,
            rope: Rope {
                theta: 10000.0,
                dims: head_dim,
                factors: vec![1.0; head_dim / 2],
                pos_scale: 1.0,
                mscale: 1.0,
                long: None,
            },
            rope_local: None,
            vocab: 16,
            rope_layers: vec![true; layers],
            windows: vec![None; layers],
            norms: PRE_NORMS,
            norm_offset: 0.0,
            embed_scale: None,
            act: Act::Silu,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            moe: None,
            dense_layers: 0,
            mla: None,
        }
    }
}

/// What the forward pass (and llama.cpp's deepseek2) computes of latent attention: interleaved
/// rope pairs (`rope_interleave`, true by default), no projection biases (`attention_bias`),
/// experts scored by a sigmoid (`scoring_func`, when given); another config is refused.
pub fn mla_supported(c: &Json) -> Result<()> {
    let refuse = |m: String| Err(ModelError::Config(m));
    if c.get("rope_interleave") == Some(&Json::Bool(false)) {
        return refuse("rope_interleave is false: latent attention is run with interleaved rope pairs only (as llama.cpp runs it)".into());
    }
    if c.get("attention_bias") == Some(&Json::Bool(true)) {
        return refuse("attention_bias is true: latent attention with projection biases is not supported (llama.cpp has none)".into());
    }
    match scoring_func(c) {
        None | Some("sigmoid") => Ok(()),
        Some(f) => refuse(format!(
            "scoring_func is '{}': DeepSeek-V3's experts are scored by a sigmoid",
            qs_formats::error::shown(f)
        )),
    }
}

/// The config keys naming the expert scoring function, in llama.cpp's converter's order.
pub const SCORING_KEYS: &[&str] = &[
    "score_function",
    "scoring_func",
    "score_func",
    "moe_router_activation",
    "moe_router_activation_func",
    "expert_selection_fn",
];

/// A config's expert scoring function as llama.cpp's converter finds it: the first of
/// [`SCORING_KEYS`] present (`None` when that one is null or not a string, or none is).
pub fn scoring_func(c: &Json) -> Option<&str> {
    SCORING_KEYS
        .iter()
        .find_map(|k| c.get(*k))
        .and_then(|v| v.as_str())
}

/// Latent attention's score scale as transformers' DeepseekV3Attention computes it: a head's
/// query size^-½, times YaRN's mscale(factor, `mscale_all_dim`)² when the rope is scaled.
fn mla_scale(c: &Json, m: hparams::MlaParams) -> f32 {
    let base = 1.0 / (m.qk_head() as f64).sqrt();
    let Some(r) = rope_params(c).filter(|r| rope_type(r) != "default") else {
        return base as f32;
    };
    let num = |k: &str| r.get(k).and_then(|v| v.as_f64());
    let (Some(all), Some(factor)) = (num("mscale_all_dim").filter(|&a| a != 0.0), num("factor"))
    else {
        return base as f32;
    };
    let mscale = if factor <= 1.0 {
        1.0
    } else {
        0.1 * all * factor.ln() + 1.0
    };
    (base * mscale * mscale) as f32
}

/// DeepSeek's expert groups (`n_group`, `topk_group`), checked: the groups split the experts
/// evenly, have at least the two experts a group is scored by, and the groups kept hold at
/// least `used` experts. `None` without them.
fn moe_groups(c: &Json, experts: usize, used: usize) -> Result<Option<(usize, usize)>> {
    let g = |k: &str| {
        hparams::int(c, &[k], qs_numeric::limits::MAX_EXPERTS).map_err(ModelError::Config)
    };
    match (g("n_group")?, g("topk_group")?) {
        (Some(n), Some(k)) => {
            let (n, k) = (n as usize, k as usize);
            if n == 0
                || k == 0
                || k > n
                || !experts.is_multiple_of(n)
                || experts / n < 2
                || k * (experts / n) < used
            {
                return Err(ModelError::Config(format!(
                    "n_group = {n}, topk_group = {k}: {experts} experts cannot be chosen {used} at a time from groups so made"
                )));
            }
            Ok(Some((n, k)))
        }
        _ => Ok(None),
    }
}

/// A model to run: weights read tensor by tensor from the source on demand.
pub struct Model<'a> {
    pub w: &'a dyn Weights,
    pub cfg: Config,
}

/// Where a model's weights come from: tensors by Hugging Face name, decoded to f32 in HF
/// layout. A float safetensors folder ([`ModelSource`]) is one; the pipeline adds dequantizing
/// views of GGUF and compressed-tensors files.
pub trait Weights: Sync {
    /// The tensor's shape, or `None` when the model has no such tensor.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The whole tensor as f32, row-major.
    fn read(&self, name: &str) -> Result<Vec<f32>>;
    /// Rows `ids` of a 2-D tensor (an embedding lookup), concatenated.
    fn rows(&self, name: &str, ids: &[usize]) -> Result<Vec<f32>> {
        let shape = self.shape(name).unwrap_or_default();
        let cols = shape.get(1).copied().unwrap_or(0);
        let all = self.read(name)?;
        let mut out = Vec::with_capacity(ids.len() * cols);
        for &i in ids {
            out.extend_from_slice(&all[i * cols..(i + 1) * cols]);
        }
        Ok(out)
    }
}

/// `Ok` when `v` (rows of `per` values; `row` maps a row of `v` to the tensor's) holds no NaN or
/// Inf, else the error naming the first (the scan is the run's vector-width one).
fn finite(name: &str, v: &[f32], per: usize, row: impl Fn(usize) -> usize) -> Result<()> {
    if !qs_numeric::dtype::any_nonfinite(v) {
        return Ok(());
    }
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(ModelError::Tensor {
            name: name.into(),
            msg: format!(
                "non-finite weight {} at row {}, column {}",
                v[i],
                row(i / per),
                i % per
            ),
        }),
    }
}

fn source_tensor<'s>(
    src: &'s ModelSource,
    name: &str,
) -> Result<&'s qs_formats::source::SourceTensor> {
    src.tensors
        .iter()
        .find(|t| t.info.name == name)
        .ok_or_else(|| ModelError::Tensor {
            name: name.into(),
            msg: "missing".into(),
        })
}

impl Weights for ModelSource {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors
            .iter()
            .find(|t| t.info.name == name)
            .map(|t| t.info.shape.clone())
    }

    fn read(&self, name: &str) -> Result<Vec<f32>> {
        let t = source_tensor(self, name)?;
        // (ggml blocks, packed layouts and views decode to f32 in `read_rows`)
        if !t.info.dtype.is_float() {
            return Err(ModelError::Tensor {
                name: name.into(),
                msg: format!("{} is not a float tensor", t.info.dtype),
            });
        }
        let mut out = vec![0f32; t.info.numel()];
        let rows = t.info.numel() / t.info.shape.last().copied().unwrap_or(1).max(1);
        self.read_rows(t, 0, rows, &mut out);
        Ok(out)
    }

    fn rows(&self, name: &str, ids: &[usize]) -> Result<Vec<f32>> {
        let t = source_tensor(self, name)?;
        if !t.info.dtype.is_float() || t.info.shape.len() != 2 {
            return Err(ModelError::Tensor {
                name: name.into(),
                msg: "not a 2-D float tensor".into(),
            });
        }
        let cols = t.info.shape[1];
        let mut out = vec![0f32; ids.len() * cols];
        for (k, &id) in ids.iter().enumerate() {
            if id >= t.info.shape[0] {
                return Err(ModelError::Tensor {
                    name: name.into(),
                    msg: format!("token id {id} out of range"),
                });
            }
            self.read_rows(t, id, id + 1, &mut out[k * cols..(k + 1) * cols]);
        }
        Ok(out)
    }
}

/// One expert (or a shared expert): a gated MLP, `[out, in]`.
#[derive(Clone)]
pub struct Expert {
    pub gate: Mat<f32>,
    pub up: Mat<f32>,
    pub down: Mat<f32>,
    /// gpt-oss: the projections' biases.
    pub gate_bias: Option<Vec<f32>>,
    pub up_bias: Option<Vec<f32>>,
    pub down_bias: Option<Vec<f32>>,
}

/// A mixture-of-experts feed-forward block.
#[derive(Clone)]
pub struct MoeLayer {
    /// One logit per expert: `[experts, hidden]`, plus a bias (gpt-oss).
    pub router: Mat<f32>,
    pub router_bias: Option<Vec<f32>>,
    pub experts: Vec<Expert>,
    /// The shared expert and its gate's row (Qwen2-MoE: the shared output is scaled by the
    /// sigmoid of `h · gate`; DeepSeek's has none).
    pub shared: Option<(Expert, Option<Vec<f32>>)>,
    /// DeepSeek-V3: added to the scores only to choose the experts.
    pub choice_bias: Option<Vec<f32>>,
}

impl MoeLayer {
    /// The router's logits for normed inputs `h2` (tokens × experts).
    pub fn router_logits(&self, h2: MatRef<'_, f32>) -> Mat<f32> {
        linear(h2, &self.router, self.router_bias.as_deref())
    }
}

/// One decoder layer's weights, f32, `[out, in]`.
#[derive(Clone)]
pub struct Layer {
    /// Whether its attention applies rope (SmolLM3's NoPE layers do not).
    pub rope: bool,
    /// The sliding window its attention keeps to ([`Config::windows`]); such a layer uses
    /// [`Config::rope_local`] when there is one.
    pub window: Option<usize>,
    /// RMSNorm gains (as applied: Gemma's `1 + w`) before attention (none in OLMo 2).
    pub input_norm: Option<Vec<f32>>,
    /// OLMo 2, Gemma: RMSNorm of the attention output and of the MLP output, before each is
    /// added to the residual.
    pub attn_out_norm: Option<Vec<f32>>,
    pub mlp_out_norm: Option<Vec<f32>>,
    pub q: Mat<f32>,
    pub k: Mat<f32>,
    pub v: Mat<f32>,
    pub o: Mat<f32>,
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
    /// gpt-oss: o_proj's bias, and per head a learned logit every query's softmax also
    /// weighs (its "sink", which takes weight from the keys and gives nothing back).
    pub o_bias: Option<Vec<f32>>,
    pub sinks: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// RMSNorm before the MLP ([`Norms::mlp_in`]; none in OLMo 2).
    pub post_norm: Option<Vec<f32>>,
    pub gate: Mat<f32>,
    pub up: Mat<f32>,
    pub down: Mat<f32>,
    /// A mixture of experts in place of the MLP (`gate`, `up`, `down` are then empty).
    pub moe: Option<MoeLayer>,
    /// Multi-head latent attention in place of `q`, `k`, `v` (then empty).
    pub mla: Option<MlaLayer>,
}

/// A layer's multi-head latent attention (DeepSeek), in llama.cpp's absorbed form: per head,
/// the key half of `kv_b_proj` transposed and its value half.
#[derive(Clone)]
pub struct MlaLayer {
    /// The query bottleneck (`q_a_proj` `[q_lora, hidden]` and its norm's gains), or none
    /// (then `q` is `q_proj`).
    pub q_a: Option<(Mat<f32>, Vec<f32>)>,
    /// `q_b_proj` (or `q_proj`): `[heads·(nope + rope), q_lora or hidden]`.
    pub q: Mat<f32>,
    /// `kv_a_proj_with_mqa` `[kv_lora + rope, hidden]` and the norm of its compressed part.
    pub kv_a: Mat<f32>,
    pub kv_a_norm: Vec<f32>,
    /// Per head: `[kv_lora, nope]` (a query's no-rope part → the compressed space) and
    /// `[v_head, kv_lora]` (the compressed attention output → the head's value).
    pub k_b: Vec<Mat<f32>>,
    pub v_b: Vec<Mat<f32>>,
}

/// The linears of a decoder layer, the one list calibration and export use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Linear {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// What a linear reads. Linears with the same input share its statistics (one Hessian for
/// q, k and v; one for gate and up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    /// The attention input, after the input norm (q, k, v).
    Attention,
    /// The attention output (o).
    AttentionOut,
    /// The MLP input, after the post-attention norm (gate, up).
    Mlp,
    /// The MLP's inner activation (down).
    MlpInner,
}

impl Linear {
    pub const ALL: [Linear; 7] = [
        Linear::Q,
        Linear::K,
        Linear::V,
        Linear::O,
        Linear::Gate,
        Linear::Up,
        Linear::Down,
    ];

    /// The module name under `model.layers.N.` in a Hugging Face checkpoint.
    pub fn hf_name(self) -> &'static str {
        match self {
            Linear::Q => "self_attn.q_proj",
            Linear::K => "self_attn.k_proj",
            Linear::V => "self_attn.v_proj",
            Linear::O => "self_attn.o_proj",
            Linear::Gate => "mlp.gate_proj",
            Linear::Up => "mlp.up_proj",
            Linear::Down => "mlp.down_proj",
        }
    }

    /// Fused modules (Phi-3): HF module name under `model.layers.N.` → the linears whose rows
    /// it holds, in order.
    pub const FUSED: [(&'static str, &'static [Linear]); 2] = [
        ("self_attn.qkv_proj", &[Linear::Q, Linear::K, Linear::V]),
        ("mlp.gate_up_proj", &[Linear::Gate, Linear::Up]),
    ];

    /// (layer, its linears) of a fused HF weight name `model.layers.N.<fused module>.weight`.
    pub fn parse_fused(name: &str) -> Option<(usize, &'static [Linear])> {
        let rest = name.strip_prefix("model.layers.")?;
        let (l, module) = rest.split_once('.')?;
        let module = module.strip_suffix(".weight")?;
        let (_, parts) = Linear::FUSED.into_iter().find(|(m, _)| *m == module)?;
        Some((l.parse().ok()?, parts))
    }

    /// The HF weight name of this linear in layer `l`.
    pub fn weight_name(self, l: usize) -> String {
        format!("model.layers.{l}.{}.weight", self.hf_name())
    }

    /// (layer, linear) of an HF weight name `model.layers.N.<module>.weight`.
    pub fn parse(name: &str) -> Option<(usize, Linear)> {
        let rest = name.strip_prefix("model.layers.")?;
        let (l, module) = rest.split_once('.')?;
        let module = module.strip_suffix(".weight")?;
        let lin = Linear::ALL.into_iter().find(|x| x.hf_name() == module)?;
        Some((l.parse().ok()?, lin))
    }

    pub fn input(self) -> Input {
        match self {
            Linear::Q | Linear::K | Linear::V => Input::Attention,
            Linear::O => Input::AttentionOut,
            Linear::Gate | Linear::Up => Input::Mlp,
            Linear::Down => Input::MlpInner,
        }
    }

    /// This linear's weight in a loaded layer (`[out, in]`).
    pub fn weight(self, layer: &Layer) -> &Mat<f32> {
        match self {
            Linear::Q => &layer.q,
            Linear::K => &layer.k,
            Linear::V => &layer.v,
            Linear::O => &layer.o,
            Linear::Gate => &layer.gate,
            Linear::Up => &layer.up,
            Linear::Down => &layer.down,
        }
    }

    pub fn weight_mut(self, layer: &mut Layer) -> &mut Mat<f32> {
        match self {
            Linear::Q => &mut layer.q,
            Linear::K => &mut layer.k,
            Linear::V => &mut layer.v,
            Linear::O => &mut layer.o,
            Linear::Gate => &mut layer.gate,
            Linear::Up => &mut layer.up,
            Linear::Down => &mut layer.down,
        }
    }
}

impl Input {
    pub const ALL: [Input; 4] = [
        Input::Attention,
        Input::AttentionOut,
        Input::Mlp,
        Input::MlpInner,
    ];

    /// The captured values of this input (tokens × features).
    pub fn of(self, cap: &Captured) -> MatRef<'_, f32> {
        match self {
            Input::Attention => cap.qkv_in.as_ref(),
            Input::AttentionOut => cap.o_in.as_ref(),
            Input::Mlp => cap.mlp_in.as_ref(),
            Input::MlpInner => cap.down_in.as_ref(),
        }
    }

    /// The linears that read this input.
    pub fn linears(self) -> impl Iterator<Item = Linear> {
        Linear::ALL.into_iter().filter(move |l| l.input() == self)
    }
}

/// The inputs each linear of a layer saw (rows = tokens).
pub struct Captured {
    /// Input of q/k/v (after the input norm).
    pub qkv_in: Mat<f32>,
    /// Input of o_proj (attention output).
    pub o_in: Mat<f32>,
    /// Input of gate/up (after the post-attention norm).
    pub mlp_in: Mat<f32>,
    /// Input of down_proj.
    pub down_in: Mat<f32>,
}

impl<'a> Model<'a> {
    pub fn new(src: &'a ModelSource) -> Result<Model<'a>> {
        let c = src
            .config
            .as_ref()
            .ok_or_else(|| ModelError::Config("the model folder has no config.json".into()))?;
        Model::with_weights(src, c)
    }

    /// A model over any weight source, with its HF config.json.
    pub fn with_weights(w: &'a dyn Weights, config: &Json) -> Result<Model<'a>> {
        Ok(Model {
            w,
            cfg: Config::from_hf(config)?,
        })
    }

    fn dims(&self, name: &str) -> Result<Vec<usize>> {
        self.w.shape(name).ok_or_else(|| ModelError::Tensor {
            name: name.into(),
            msg: "missing".into(),
        })
    }

    /// A tensor as f32, checked against the expected shape and for NaN/Inf (a forward pass
    /// through one is meaningless: calibration, `eval` and `imatrix` stop at it, naming it).
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let have = self.dims(name)?;
        if have != shape {
            return Err(ModelError::Tensor {
                name: name.into(),
                msg: format!("shape {have:?}, expected {shape:?}"),
            });
        }
        let v = self.w.read(name)?;
        // (a vector: one row)
        let per = match shape.get(1..) {
            Some(rest) if !rest.is_empty() => rest.iter().product::<usize>(),
            _ => v.len(),
        };
        finite(name, &v, per.max(1), |r| r)?;
        Ok(v)
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Mat<f32>> {
        let v = self.tensor(name, &[rows, cols])?;
        Ok(Mat::from_fn(rows, cols, |r, c| v[r * cols + c]))
    }

    fn optional(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        match self.w.shape(name) {
            None => Ok(None),
            Some(_) => self.tensor(name, &[n]).map(Some),
        }
    }

    pub fn layer(&self, l: usize) -> Result<Layer> {
        let c = &self.cfg;
        if let Some(m) = c.mla {
            return self.mla_layer(l, m);
        }
        let p = format!("model.layers.{l}.");
        let (qd, kd) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        let gains = |mut w: Vec<f32>| {
            if c.norm_offset != 0.0 {
                w.iter_mut().for_each(|v| *v += c.norm_offset);
            }
            w
        };
        // q/k norms per head (Qwen3, Gemma 3), or over all heads (OLMo 2: `all` values)
        let qk_norm = |name: &str, all: usize| -> Result<Option<Vec<f32>>> {
            let n = format!("{p}self_attn.{name}.weight");
            match self.w.shape(&n) {
                None => Ok(None),
                Some(s) if s == [all] && c.norms.attn_in.is_none() => {
                    self.tensor(&n, &[all]).map(|w| Some(gains(w)))
                }
                Some(_) => self.tensor(&n, &[c.head_dim]).map(|w| Some(gains(w))),
            }
        };
        // Phi-3 keeps q, k, v in one `qkv_proj` and gate, up in one `gate_up_proj`
        let qkv = format!("{p}self_attn.qkv_proj.weight");
        let (q, k, v) = if self.w.shape(&qkv).is_some() {
            let m = self.matrix(&qkv, qd + 2 * kd, c.hidden)?;
            let rows = |r0: usize, n: usize| m.as_ref().subrows(r0, n).to_owned();
            (rows(0, qd), rows(qd, kd), rows(qd + kd, kd))
        } else {
            (
                self.matrix(&Linear::Q.weight_name(l), qd, c.hidden)?,
                self.matrix(&Linear::K.weight_name(l), kd, c.hidden)?,
                self.matrix(&Linear::V.weight_name(l), kd, c.hidden)?,
            )
        };
        let attn =
            self.attention_layer(l, q, k, v, qk_norm("q_norm", qd)?, qk_norm("k_norm", kd)?)?;
        self.with_ffn(l, attn)
    }

    /// Layer `l`'s latent attention (`m`'s sizes) and its norms, then its feed-forward block.
    fn mla_layer(&self, l: usize, m: hparams::MlaParams) -> Result<Layer> {
        let c = &self.cfg;
        let p = format!("model.layers.{l}.self_attn.");
        let (h, e) = (c.heads, c.hidden);
        let (kv, nope, v) = (m.kv_lora as usize, m.qk_nope as usize, m.v_head as usize);
        let qk = m.qk_head() as usize;
        let (q_a, q) = match m.q_lora {
            Some(r) => {
                let r = r as usize;
                let a = self.matrix(&format!("{p}q_a_proj.weight"), r, e)?;
                let g = self.tensor(&format!("{p}q_a_layernorm.weight"), &[r])?;
                (
                    Some((a, g)),
                    self.matrix(&format!("{p}q_b_proj.weight"), h * qk, r)?,
                )
            }
            None => (None, self.matrix(&format!("{p}q_proj.weight"), h * qk, e)?),
        };
        let per_head = |name: &str, rows: usize, cols: usize| -> Result<Vec<Mat<f32>>> {
            let t = self.tensor(&format!("{p}{name}.weight"), &[h, rows, cols])?;
            Ok(t.chunks(rows * cols)
                .map(|x| Mat::from_fn(rows, cols, |i, j| x[i * cols + j]))
                .collect())
        };
        // the checkpoint's kv_b_proj `[heads·(nope + v), kv_lora]`, split here when it is not
        // read through the conversion's views (k_b_proj, v_b_proj)
        let (k_b, v_b) = if self.w.shape(&format!("{p}k_b_proj.weight")).is_some() {
            (
                per_head("k_b_proj", kv, nope)?,
                per_head("v_b_proj", v, kv)?,
            )
        } else {
            let kvb = self.matrix(&format!("{p}kv_b_proj.weight"), h * (nope + v), kv)?;
            split_kv_b(kvb.as_ref(), h, nope, v)
        };
        let mla = MlaLayer {
            q_a,
            q,
            kv_a: self.matrix(
                &format!("{p}kv_a_proj_with_mqa.weight"),
                kv + m.qk_rope as usize,
                e,
            )?,
            kv_a_norm: self.tensor(&format!("{p}kv_a_layernorm.weight"), &[kv])?,
            k_b,
            v_b,
        };
        let empty = || Mat::zeros(0, e);
        let attn = Layer {
            mla: Some(mla),
            ..self.attention_layer(l, empty(), empty(), empty(), None, None)?
        };
        self.with_ffn(l, attn)
    }

    /// `layer` (its attention read) with layer `l`'s feed-forward block: the mixture of
    /// experts, or (in a dense model, or a leading dense layer) the MLP.
    fn with_ffn(&self, l: usize, layer: Layer) -> Result<Layer> {
        let c = &self.cfg;
        let p = format!("model.layers.{l}.");
        if let Some(m) = c.moe.as_ref().filter(|_| l >= c.dense_layers) {
            return Ok(Layer {
                gate: Mat::zeros(0, c.hidden),
                up: Mat::zeros(0, c.hidden),
                down: Mat::zeros(c.hidden, 0),
                moe: Some(self.moe_layer(l, m)?),
                ..layer
            });
        }
        let gate_up = format!("{p}mlp.gate_up_proj.weight");
        let (gate, up) = match self.w.shape(&gate_up) {
            Some(s) => {
                let inter = s.first().copied().unwrap_or(0) / 2;
                let m = self.matrix(&gate_up, 2 * inter, c.hidden)?;
                (
                    m.as_ref().subrows(0, inter).to_owned(),
                    m.as_ref().subrows(inter, inter).to_owned(),
                )
            }
            None => {
                let name = Linear::Gate.weight_name(l);
                let inter = self.dims(&name)?.first().copied().unwrap_or(0);
                let gate = self.matrix(&name, inter, c.hidden)?;
                let name = Linear::Up.weight_name(l);
                let inter = self.dims(&name)?.first().copied().unwrap_or(0);
                (gate, self.matrix(&name, inter, c.hidden)?)
            }
        };
        Ok(Layer {
            gate,
            up,
            down: {
                let name = Linear::Down.weight_name(l);
                let inter = self.dims(&name)?.get(1).copied().unwrap_or(0);
                self.matrix(&name, c.hidden, inter)?
            },
            moe: None,
            ..layer
        })
    }

    /// Layer `l` with its attention weights (`q`, `k`, `v` and their norms given), its norms,
    /// and an empty MLP.
    fn attention_layer(
        &self,
        l: usize,
        q: Mat<f32>,
        k: Mat<f32>,
        v: Mat<f32>,
        q_norm: Option<Vec<f32>>,
        k_norm: Option<Vec<f32>>,
    ) -> Result<Layer> {
        let c = &self.cfg;
        let p = format!("model.layers.{l}.");
        let (qd, kd) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
        // o_proj reads the heads' values (latent attention's are v_head_dim wide)
        let od = c.mla.map_or(qd, |m| c.heads * m.v_head as usize);
        let norm = |name: Option<&str>| -> Result<Option<Vec<f32>>> {
            name.map(|n| {
                self.tensor(&format!("{p}{n}.weight"), &[c.hidden])
                    .map(|mut w| {
                        if c.norm_offset != 0.0 {
                            w.iter_mut().for_each(|v| *v += c.norm_offset);
                        }
                        w
                    })
            })
            .transpose()
        };
        Ok(Layer {
            rope: c.rope_layers.get(l).copied().unwrap_or(true),
            window: c.windows.get(l).copied().flatten(),
            input_norm: norm(c.norms.attn_in)?,
            attn_out_norm: norm(c.norms.attn_out)?,
            mlp_out_norm: norm(c.norms.mlp_out)?,
            q,
            k,
            v,
            o: self.matrix(&Linear::O.weight_name(l), c.hidden, od)?,
            q_bias: match c.mla {
                None => self.optional(&format!("{p}self_attn.q_proj.bias"), qd)?,
                Some(_) => None,
            },
            k_bias: self.optional(&format!("{p}self_attn.k_proj.bias"), kd)?,
            v_bias: self.optional(&format!("{p}self_attn.v_proj.bias"), kd)?,
            o_bias: self.optional(&format!("{p}self_attn.o_proj.bias"), c.hidden)?,
            sinks: self.optional(&format!("{p}self_attn.sinks"), c.heads)?,
            q_norm,
            k_norm,
            post_norm: norm(c.norms.mlp_in)?,
            gate: Mat::zeros(0, c.hidden),
            up: Mat::zeros(0, c.hidden),
            down: Mat::zeros(c.hidden, 0),
            moe: None,
            mla: None,
        })
    }

    /// Layer `l`'s experts, router and shared expert. Experts are read per expert
    /// (`{experts}.E.{proj}`) or, once stacked for a GGUF conversion, from the stacked
    /// `{experts}.{proj}` (`[experts, rows, cols]`).
    fn moe_layer(&self, l: usize, m: &MoeConfig) -> Result<MoeLayer> {
        let c = &self.cfg;
        let n = m.names;
        let p = format!("model.layers.{l}.");
        let proj = |name: &str, down: bool| -> Result<Vec<Mat<f32>>> {
            let stacked = format!("{p}{}.{name}.weight", n.experts);
            if let Some(s) = self.w.shape(&stacked) {
                let (rows, cols) = (
                    s.get(1).copied().unwrap_or(0),
                    s.get(2).copied().unwrap_or(0),
                );
                let ff = if down { cols } else { rows };
                let (r, cl) = if down { (c.hidden, ff) } else { (ff, c.hidden) };
                let v = self.tensor(&stacked, &[m.experts, r, cl])?;
                return Ok(v
                    .chunks(r * cl)
                    .map(|e| Mat::from_fn(r, cl, |i, j| e[i * cl + j]))
                    .collect());
            }
            (0..m.experts)
                .map(|x| {
                    let name = format!("{p}{}.{x}.{name}.weight", n.experts);
                    let s = self.dims(&name)?;
                    let ff = if down { s.get(1) } else { s.first() };
                    let ff = ff.copied().unwrap_or(0);
                    if down {
                        self.matrix(&name, c.hidden, ff)
                    } else {
                        self.matrix(&name, ff, c.hidden)
                    }
                })
                .collect()
        };
        let (gates, ups, downs) = (
            proj(n.gate, false)?,
            proj(n.up, false)?,
            proj(n.down, true)?,
        );
        // gpt-oss's experts have biases: stacked `{experts}.{proj}.bias`, one row per expert
        let biases = |name: &str, n_out: usize| -> Result<Vec<Option<Vec<f32>>>> {
            let b = format!("{p}{}.{name}.bias", n.experts);
            Ok(match self.w.shape(&b) {
                None => vec![None; m.experts],
                Some(_) => self
                    .tensor(&b, &[m.experts, n_out])?
                    .chunks(n_out.max(1))
                    .map(|r| Some(r.to_vec()))
                    .collect(),
            })
        };
        let ff = gates.first().map_or(0, |g| g.nrows());
        let (gb, ub, db) = (
            biases(n.gate, ff)?,
            biases(n.up, ff)?,
            biases(n.down, c.hidden)?,
        );
        let experts = gates
            .into_iter()
            .zip(ups)
            .zip(downs)
            .zip(gb.into_iter().zip(ub).zip(db))
            .map(
                |(((gate, up), down), ((gate_bias, up_bias), down_bias))| Expert {
                    gate,
                    up,
                    down,
                    gate_bias,
                    up_bias,
                    down_bias,
                },
            )
            .collect();
        let shared = match n.shared {
            None => None,
            Some((module, gate)) => {
                let gate = gate.map(|g| format!("{p}{g}.weight"));
                let name = |x: &str| format!("{p}{module}.{x}.weight");
                let ff = self.dims(&name("gate_proj"))?.first().copied().unwrap_or(0);
                let e = Expert {
                    gate: self.matrix(&name("gate_proj"), ff, c.hidden)?,
                    up: self.matrix(&name("up_proj"), ff, c.hidden)?,
                    down: self.matrix(&name("down_proj"), c.hidden, ff)?,
                    gate_bias: None,
                    up_bias: None,
                    down_bias: None,
                };
                let g = match gate {
                    None => None,
                    Some(g) => Some(match self.dims(&g)?.len() {
                        1 => self.tensor(&g, &[c.hidden])?,
                        _ => self.tensor(&g, &[1, c.hidden])?,
                    }),
                };
                Some((e, g))
            }
        };
        Ok(MoeLayer {
            router: self.matrix(&format!("{p}{}.weight", n.router), m.experts, c.hidden)?,
            router_bias: self.optional(&format!("{p}{}.bias", n.router), m.experts)?,
            experts,
            shared,
            choice_bias: match n.choice_bias {
                Some(b) => Some(self.tensor(&format!("{p}{b}"), &[m.experts])?),
                None => None,
            },
        })
    }

    /// Token embeddings of `ids` (tokens × hidden).
    pub fn embed(&self, ids: &[u32]) -> Result<Mat<f32>> {
        let c = &self.cfg;
        let name = "model.embed_tokens.weight";
        let vocab = self.dims(name)?[0];
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(ModelError::Tensor {
                name: name.into(),
                msg: format!("token id {bad} out of range"),
            });
        }
        let idx: Vec<usize> = ids.iter().map(|&i| i as usize).collect();
        let v = self.w.rows(name, &idx)?;
        finite(name, &v, c.hidden, |k| idx[k])?;
        let scale = c.embed_scale.unwrap_or(1.0);
        Ok(Mat::from_fn(ids.len(), c.hidden, |i, j| {
            v[i * c.hidden + j] * scale
        }))
    }

    /// The final norm's gains (as applied).
    fn final_norm(&self) -> Result<Vec<f32>> {
        let c = &self.cfg;
        let mut w = self.tensor("model.norm.weight", &[c.hidden])?;
        if c.norm_offset != 0.0 {
            w.iter_mut().for_each(|v| *v += c.norm_offset);
        }
        Ok(w)
    }

    /// The final norm and the output head matrix (vocab × hidden), for [`Model::apply_head`].
    pub fn head_weights(&self) -> Result<(Vec<f32>, Mat<f32>)> {
        let c = &self.cfg;
        let norm = self.final_norm()?;
        let name = if self.w.shape("lm_head.weight").is_some() {
            "lm_head.weight"
        } else {
            "model.embed_tokens.weight"
        };
        Ok((norm, self.matrix(name, c.vocab, c.hidden)?))
    }

    /// Logits (tokens × vocab) of final hidden states `x` with loaded head weights.
    pub fn apply_head(&self, hw: &(Vec<f32>, Mat<f32>), x: MatRef<'_, f32>) -> Mat<f32> {
        let h = rms_norm(x, &hw.0, self.cfg.eps);
        let mut out = linear(h.as_ref(), &hw.1, None);
        if let Some(cap) = self.cfg.final_softcap {
            softcap(&mut out, cap);
        }
        out
    }

    /// Final hidden states (before the final norm) of sequences of `seq_len` tokens laid end to
    /// end in `ids`, layer by layer (one layer's weights in memory at a time).
    pub fn hidden(&self, ids: &[u32], seq_len: usize) -> Result<Mat<f32>> {
        let mut x = self.embed(ids)?;
        for l in 0..self.cfg.layers {
            let layer = self.layer(l)?;
            x = layer_forward(&self.cfg, &layer, x.as_ref(), seq_len, false).0;
        }
        Ok(x)
    }

    /// Final norm and output head: logits (tokens × vocab).
    pub fn head(&self, x: &Mat<f32>) -> Result<Mat<f32>> {
        let hw = self.head_weights()?;
        Ok(self.apply_head(&hw, x.as_ref()))
    }

    /// Logits of every position of one sequence.
    pub fn logits(&self, ids: &[u32]) -> Result<Mat<f32>> {
        let mut x = self.embed(ids)?;
        for l in 0..self.cfg.layers {
            let layer = self.layer(l)?;
            x = layer_forward(&self.cfg, &layer, x.as_ref(), ids.len(), false).0;
        }
        self.head(&x)
    }
}

/// RMSNorm of each row: x / sqrt(mean(x²) + eps) · w.
pub fn rms_norm(x: MatRef<'_, f32>, w: &[f32], eps: f32) -> Mat<f32> {
    let n = x.ncols();
    // column by column (faer stores columns), each row's sum still in column order
    let mut ss = vec![0f64; x.nrows()];
    for j in 0..n {
        for (s, &v) in ss.iter_mut().zip(x.col(j).iter()) {
            *s += v as f64 * v as f64;
        }
    }
    let inv: Vec<f32> = ss
        .iter()
        .map(|&s| 1.0 / ((s / n as f64) as f32 + eps).sqrt())
        .collect();
    let mut out = Mat::<f32>::zeros(x.nrows(), n);
    out.as_mut()
        .par_col_iter_mut()
        .enumerate()
        .for_each(|(j, col)| {
            for ((o, &v), &r) in col.iter_mut().zip(x.col(j).iter()).zip(&inv) {
                *o = v * r * w[j];
            }
        });
    out
}

/// `a += b`, element by element (columns in parallel).
pub(crate) fn add_into(a: &mut Mat<f32>, b: MatRef<'_, f32>) {
    a.as_mut()
        .par_col_iter_mut()
        .enumerate()
        .for_each(|(j, col)| {
            for (o, &v) in col.iter_mut().zip(b.col(j).iter()) {
                *o += v;
            }
        });
}

/// `x Wᵀ (+ b)`: x is tokens × in, W is `[out, in]`.
pub fn linear(x: MatRef<'_, f32>, w: &Mat<f32>, b: Option<&[f32]>) -> Mat<f32> {
    let mut out = Mat::<f32>::zeros(x.nrows(), w.nrows());
    matmul(
        out.as_mut(),
        Accum::Replace,
        x,
        w.transpose(),
        1.0f32,
        Par::rayon(0),
    );
    if let Some(b) = b {
        add_bias(&mut out, b);
    }
    out
}

/// Adds `b[j]` to every value of column `j`.
pub(crate) fn add_bias(out: &mut Mat<f32>, b: &[f32]) {
    out.as_mut()
        .par_col_iter_mut()
        .zip(b.par_iter())
        .for_each(|(col, &bj)| col.iter_mut().for_each(|v| *v += bj));
}

/// `cap·tanh(x/cap)` of every value (Gemma's soft-capping).
fn softcap(x: &mut Mat<f32>, cap: f32) {
    x.as_mut().par_col_iter_mut().for_each(|col| {
        for v in col.iter_mut() {
            *v = (*v / cap).tanh() * cap;
        }
    });
}

/// The rope a layer applies ([`Config::rope_local`] for sliding-window layers that have one).
fn rope_of_layer<'c>(c: &'c Config, w: &Layer) -> &'c Rope {
    match (&c.rope_local, w.window) {
        (Some(local), Some(_)) => local,
        _ => &c.rope,
    }
}

/// Rotate-half RoPE on every head of `x` (tokens × heads·head_dim), positions restarting at 0
/// every `seq_len` tokens.
fn rope(x: &mut Mat<f32>, heads: usize, seq_len: usize, head_dim: usize, r: &Rope) {
    rope_at(x, heads, head_dim, r, seq_len, |t| t % seq_len.max(1))
}

/// Rotate-half RoPE over the first `r.dims` dimensions of each head, with row t at position
/// `pos(t)`, in sequences of `seq_len` tokens (LongRoPE's long factors beyond the original
/// context).
fn rope_at(
    x: &mut Mat<f32>,
    heads: usize,
    head_dim: usize,
    r: &Rope,
    seq_len: usize,
    pos: impl Fn(usize) -> usize,
) {
    rope_turn(x, heads, head_dim, r, seq_len, pos, false)
}

/// [`rope`]'s transpose (each pair turned back by its angle, times the same `mscale`): how a
/// gradient goes back through rope.
pub(crate) fn rope_transposed(
    x: &mut Mat<f32>,
    heads: usize,
    seq_len: usize,
    head_dim: usize,
    r: &Rope,
) {
    rope_turn(x, heads, head_dim, r, seq_len, |t| t % seq_len.max(1), true)
}

/// [`rope_at`], or its transpose with `back`.
fn rope_turn(
    x: &mut Mat<f32>,
    heads: usize,
    head_dim: usize,
    r: &Rope,
    seq_len: usize,
    pos: impl Fn(usize) -> usize,
    back: bool,
) {
    let dims = r.dims.min(head_dim);
    let half = dims / 2;
    let factors = match &r.long {
        Some((long, original)) if seq_len > *original => long,
        _ => &r.factors,
    };
    let inv: Vec<f64> = (0..half)
        .map(|i| 1.0 / r.theta.powf((2 * i) as f64 / dims as f64) / factors[i] as f64)
        .collect();
    let pos: Vec<usize> = (0..x.nrows()).map(pos).collect();
    // (sin, cos) of every position's angles, once per position rather than per row and head
    let npos = pos.iter().max().map_or(0, |&p| p + 1);
    let table: Vec<(f64, f64)> = (0..npos)
        .flat_map(|p| {
            let p = p as f64 * r.pos_scale;
            let m = r.mscale;
            inv.iter().map(move |&f| {
                let (s, c) = (p * f).sin_cos();
                (s * m, c * m)
            })
        })
        .collect();
    x.as_mut()
        .subcols_mut(0, heads * head_dim)
        .par_col_chunks_mut(head_dim)
        .for_each(|head| {
            let (rotated, _) = head.split_at_col_mut(dims);
            let (mut lo, mut hi) = rotated.split_at_col_mut(half);
            for i in 0..half {
                let a = lo.as_mut().col_mut(i);
                let b = hi.as_mut().col_mut(i);
                for ((a, b), &p) in a.iter_mut().zip(b.iter_mut()).zip(&pos) {
                    let (s, c) = table[p * half + i];
                    let s = if back { -s } else { s };
                    let (x0, x1) = (*a as f64, *b as f64);
                    *a = (x0 * c - x1 * s) as f32;
                    *b = (x1 * c + x0 * s) as f32;
                }
            }
        });
}

/// q/k RMSNorm: per head when `w` has one head's values (Qwen3), else over all heads (OLMo 2).
fn qk_norm(x: &mut Mat<f32>, heads: usize, head_dim: usize, w: &[f32], eps: f32) {
    if w.len() == head_dim {
        head_norm(x, heads, head_dim, w, eps)
    } else {
        head_norm(x, 1, heads * head_dim, w, eps)
    }
}

/// Per-head RMSNorm (Qwen3's q/k norms).
fn head_norm(x: &mut Mat<f32>, heads: usize, head_dim: usize, w: &[f32], eps: f32) {
    for t in 0..x.nrows() {
        for h in 0..heads {
            let base = h * head_dim;
            let ss: f64 = (0..head_dim)
                .map(|i| (x[(t, base + i)] as f64).powi(2))
                .sum();
            let inv = 1.0 / ((ss / head_dim as f64) as f32 + eps).sqrt();
            for i in 0..head_dim {
                x[(t, base + i)] = x[(t, base + i)] * inv * w[i];
            }
        }
    }
}

/// The attention heads' output (o_proj's input, tokens × heads·head_dim) for normed inputs `h`
/// (sequences of `seq_len` tokens back to back, causal attention within each).
pub fn attention_heads(c: &Config, w: &Layer, h: MatRef<'_, f32>, seq_len: usize) -> Mat<f32> {
    if let (Some(m), Some(p)) = (&w.mla, c.mla) {
        return mla_heads(c, p, m, w, h, seq_len).0;
    }
    let qkv = dense_qkv(c, w, h, seq_len, false);
    dense_attend(c, w, &qkv, seq_len, false).0
}

/// Grouped-query attention's q, k and v (tokens × heads·head_dim, kv_heads·head_dim) as
/// attention reads them: q and k through their head norms (Qwen3's) and rope; with `keep`, q
/// and k before their norms too (when the layer has them; the backward pass of [`grad`] reads
/// them).
pub(crate) struct Qkv {
    pub(crate) q: Mat<f32>,
    pub(crate) k: Mat<f32>,
    pub(crate) v: Mat<f32>,
    pub(crate) q_pre: Option<Mat<f32>>,
    pub(crate) k_pre: Option<Mat<f32>>,
}

/// [`Qkv`] of a dense (not latent) attention layer for normed inputs `h`.
pub(crate) fn dense_qkv(
    c: &Config,
    w: &Layer,
    h: MatRef<'_, f32>,
    seq_len: usize,
    keep: bool,
) -> Qkv {
    let q = linear(h, &w.q, w.q_bias.as_deref());
    let k = linear(h, &w.k, w.k_bias.as_deref());
    let v = linear(h, &w.v, w.v_bias.as_deref());
    finish_qkv(c, w, (q, k, v), seq_len, keep)
}

/// [`Qkv`] from the projections q, k and v (biases added): Qwen3's head norms and rope.
pub(crate) fn finish_qkv(
    c: &Config,
    w: &Layer,
    (mut q, mut k, v): (Mat<f32>, Mat<f32>, Mat<f32>),
    seq_len: usize,
    keep: bool,
) -> Qkv {
    let hd = c.head_dim;
    let (mut q_pre, mut k_pre) = (None, None);
    if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
        if keep {
            q_pre = Some(q.clone());
            k_pre = Some(k.clone());
        }
        qk_norm(&mut q, c.heads, hd, qn, c.eps);
        qk_norm(&mut k, c.kv_heads, hd, kn, c.eps);
    }
    if w.rope {
        let r = rope_of_layer(c, w);
        rope(&mut q, c.heads, seq_len, hd, r);
        rope(&mut k, c.kv_heads, seq_len, hd, r);
    }
    Qkv {
        q,
        k,
        v,
        q_pre,
        k_pre,
    }
}

/// Causal grouped-query attention over [`dense_qkv`]'s output: the heads' output and, with
/// `keep`, each (sequence, head)'s probabilities ([`attend_keeping`]).
pub(crate) fn dense_attend(
    c: &Config,
    w: &Layer,
    qkv: &Qkv,
    seq_len: usize,
    keep: bool,
) -> (Mat<f32>, Vec<Mat<f32>>) {
    let rep = c.heads / c.kv_heads.max(1);
    let heads = Heads {
        n: c.heads,
        qk: c.head_dim,
        v: c.head_dim,
        kv_of: &|head| head / rep,
    };
    attend_keeping(
        c,
        w,
        heads,
        (qkv.q.as_ref(), qkv.k.as_ref(), qkv.v.as_ref()),
        seq_len,
        c.attn_scale,
        keep,
    )
}

/// How attention heads lay out their queries, keys and values (each head's columns at
/// `head × width`): `n` heads of `qk` query/key and `v` value columns, head `h` reading key
/// and value head `kv_of(h)`.
pub(crate) struct Heads<'a> {
    pub(crate) n: usize,
    pub(crate) qk: usize,
    pub(crate) v: usize,
    pub(crate) kv_of: &'a (dyn Fn(usize) -> usize + Sync),
}

/// Causal attention per (sequence, head) of `q`, `k`, `v` (tokens × heads·width), with the
/// layer's window, soft-cap and sinks: the heads' outputs (tokens × heads·v). Two small
/// matrix products per block, blocks in parallel.
fn attend(
    c: &Config,
    w: &Layer,
    heads: Heads<'_>,
    qkv: (MatRef<'_, f32>, MatRef<'_, f32>, MatRef<'_, f32>),
    seq_len: usize,
    scale: f32,
) -> Mat<f32> {
    attend_keeping(c, w, heads, qkv, seq_len, scale, false).0
}

/// [`attend`], keeping with `keep` each block's probabilities too (in block order: sequence,
/// then head; column i is query i's over the keys, zero below the diagonal), as the backward
/// pass of [`grad`] reads them.
pub(crate) fn attend_keeping(
    c: &Config,
    w: &Layer,
    heads: Heads<'_>,
    (q, k, v): (MatRef<'_, f32>, MatRef<'_, f32>, MatRef<'_, f32>),
    seq_len: usize,
    scale: f32,
    keep: bool,
) -> (Mat<f32>, Vec<Mat<f32>>) {
    let tokens = q.nrows();
    let (qkd, vd) = (heads.qk, heads.v);
    let blocks: Vec<(usize, usize)> = (0..tokens)
        .step_by(seq_len.max(1))
        .flat_map(|s0| (0..heads.n).map(move |h| (s0, h)))
        .collect();
    let outs: Vec<(Mat<f32>, Option<Mat<f32>>)> = blocks
        .par_iter()
        .map(|&(s0, head)| {
            let n = seq_len.min(tokens - s0);
            let kvh = (heads.kv_of)(head);
            let qh = q.submatrix(s0, head * qkd, n, qkd);
            let kh = k.submatrix(s0, kvh * qkd, n, qkd);
            let vh = v.submatrix(s0, kvh * vd, n, vd);
            // transposed scores: column i holds query i's scores over the keys (contiguous)
            let mut st = Mat::<f32>::zeros(n, n);
            matmul(
                st.as_mut(),
                Accum::Replace,
                kh,
                qh.transpose(),
                scale,
                Par::Seq,
            );
            for i in 0..n {
                let col = st.col_as_slice_mut(i);
                let (seen, later) = col.split_at_mut(i + 1);
                // keys before the sliding window get no weight
                let first = w.window.map_or(0, |win| (i + 1).saturating_sub(win));
                let (gone, seen) = seen.split_at_mut(first);
                gone.fill(0.0);
                if let Some(cap) = c.attn_softcap {
                    seen.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
                }
                let sink = w.sinks.as_ref().map(|s| s[head]);
                let mx = seen
                    .iter()
                    .fold(sink.unwrap_or(f32::NEG_INFINITY), |m, &v| m.max(v));
                let mut sum = sink.map_or(0.0, |s| (s - mx).exp());
                for e in seen.iter_mut() {
                    *e = (*e - mx).exp();
                    sum += *e;
                }
                for e in seen.iter_mut() {
                    *e /= sum;
                }
                later.fill(0.0);
            }
            let mut out = Mat::<f32>::zeros(n, vd);
            matmul(
                out.as_mut(),
                Accum::Replace,
                st.transpose(),
                vh,
                1.0f32,
                Par::Seq,
            );
            (out, keep.then_some(st))
        })
        .collect();
    let mut attn = Mat::<f32>::zeros(tokens, heads.n * vd);
    let mut probs = Vec::with_capacity(if keep { outs.len() } else { 0 });
    for (&(s0, head), (out, p)) in blocks.iter().zip(outs) {
        attn.as_mut()
            .submatrix_mut(s0, head * vd, out.nrows(), vd)
            .copy_from(&out);
        probs.extend(p);
    }
    (attn, probs)
}

/// `kv_b_proj` `[heads·(nope + v), kv_lora]` as latent attention's per-head matrices: each
/// head's key rows transposed (`k_b`, `[kv_lora, nope]`) and its value rows (`v_b`).
pub fn split_kv_b(
    kvb: MatRef<'_, f32>,
    heads: usize,
    nope: usize,
    v: usize,
) -> (Vec<Mat<f32>>, Vec<Mat<f32>>) {
    let at = |hh: usize| hh * (nope + v);
    (
        (0..heads)
            .map(|hh| kvb.subrows(at(hh), nope).transpose().to_owned())
            .collect(),
        (0..heads)
            .map(|hh| kvb.subrows(at(hh) + nope, v).to_owned())
            .collect(),
    )
}

/// [`split_kv_b`]'s inverse: `kv_b_proj` from each head's `k_b` and `v_b`.
pub fn join_kv_b(k_b: &[Mat<f32>], v_b: &[Mat<f32>]) -> Mat<f32> {
    let (Some(k0), Some(v0)) = (k_b.first(), v_b.first()) else {
        return Mat::zeros(0, 0);
    };
    let (kv, nope, v) = (k0.nrows(), k0.ncols(), v0.nrows());
    let mut out = Mat::<f32>::zeros(k_b.len() * (nope + v), kv);
    for (hh, (k, vb)) in k_b.iter().zip(v_b).enumerate() {
        let at = hh * (nope + v);
        out.as_mut().subrows_mut(at, nope).copy_from(k.transpose());
        out.as_mut().subrows_mut(at + nope, v).copy_from(vb);
    }
    out
}

/// The inputs latent attention's per-head matrices read (tokens × heads·width): each head's
/// query without rope (`k_b`'s input) and its attention output in the compressed space
/// (`v_b`'s input).
pub struct MlaInputs {
    /// `q_b_proj`'s input (the normed bottleneck), when the queries have one.
    pub q_b: Option<Mat<f32>>,
    pub q_nope: Mat<f32>,
    pub latent: Mat<f32>,
    /// Every token's normed compressed vector (tokens × kv_lora): the whole `kv_b_proj`'s
    /// input in the checkpoint's unabsorbed form.
    pub ckv: Mat<f32>,
}

/// The epsilon of latent attention's bottleneck norms: transformers' DeepseekV3RMSNorm default
/// (not the config's `rms_norm_eps`; llama.cpp uses that, which DeepSeek-V3 sets equal).
const MLA_NORM_EPS: f32 = 1e-6;

/// Multi-head latent attention's heads' values (o_proj's input, tokens × heads·v_head), in
/// llama.cpp's absorbed form: each head's query without rope is mapped into the compressed
/// space by its `k_b` and scored against every token's normed compressed vector, its rope
/// part against the one rope key all heads share; the weighted compressed vectors map to the
/// head's values by its `v_b`. The rope pairs are interleaved (adjacent dimensions), as
/// transformers' DeepseekV3 rotates them. With them, the inputs of the per-head matrices.
pub fn mla_heads(
    c: &Config,
    p: hparams::MlaParams,
    m: &MlaLayer,
    w: &Layer,
    h: MatRef<'_, f32>,
    seq_len: usize,
) -> (Mat<f32>, MlaInputs) {
    let tokens = h.nrows();
    let nh = c.heads;
    let (kv, vd) = (p.kv_lora as usize, p.v_head as usize);
    let pr = mla_project(c, p, m, h, seq_len, &|t| t % seq_len.max(1));
    let (qs, ks, ckv) = (&pr.q, &pr.k, &pr.ckv);
    let rd = p.qk_rope as usize;
    let heads = Heads {
        n: nh,
        qk: kv + rd,
        v: kv,
        kv_of: &|_| 0,
    };
    let latent = attend(
        c,
        w,
        heads,
        (qs.as_ref(), ks.as_ref(), ckv.as_ref()),
        seq_len,
        c.attn_scale,
    );
    let mut out = Mat::<f32>::zeros(tokens, nh * vd);
    for (head, vb) in m.v_b.iter().enumerate() {
        let y = linear(latent.as_ref().subcols(head * kv, kv), vb, None);
        out.as_mut().subcols_mut(head * vd, vd).copy_from(&y);
    }
    (
        out,
        MlaInputs {
            q_b: pr.q_b,
            q_nope: pr.q_nope,
            latent,
            ckv: pr.ckv,
        },
    )
}

/// Latent attention's projections of normed inputs `h` (row t at position `pos(t)`, in
/// sequences of `seq_len`): per head the query `[q_nope·k_bᵀ | q_pe]` (kv_lora + rope wide),
/// the one key `[ckv | k_pe]` and value `ckv` every head reads, and the inputs of `q_b` and
/// `k_b`.
struct MlaProjected {
    q: Mat<f32>,
    k: Mat<f32>,
    ckv: Mat<f32>,
    q_b: Option<Mat<f32>>,
    q_nope: Mat<f32>,
}

fn mla_project(
    c: &Config,
    p: hparams::MlaParams,
    m: &MlaLayer,
    h: MatRef<'_, f32>,
    seq_len: usize,
    pos: &dyn Fn(usize) -> usize,
) -> MlaProjected {
    let tokens = h.nrows();
    let nh = c.heads;
    let (kv, nope, rd) = (p.kv_lora as usize, p.qk_nope as usize, p.qk_rope as usize);
    let qk = nope + rd;
    let q_b = m
        .q_a
        .as_ref()
        .map(|(a, g)| rms_norm(linear(h, a, None).as_ref(), g, MLA_NORM_EPS));
    let q = linear(q_b.as_ref().map_or(h, |x| x.as_ref()), &m.q, None);
    let kva = linear(h, &m.kv_a, None);
    let ckv = rms_norm(kva.as_ref().subcols(0, kv), &m.kv_a_norm, MLA_NORM_EPS);
    // rope parts with their pairs de-interleaved (evens, then odds): rotate-half on that
    // order is the interleaved rotation, and dot products do not see the order
    let deint = |i: usize| {
        if i < rd / 2 {
            2 * i
        } else {
            2 * (i - rd / 2) + 1
        }
    };
    let mut q_pe = Mat::from_fn(tokens, nh * rd, |t, j| {
        q[(t, (j / rd) * qk + nope + deint(j % rd))]
    });
    let mut k_pe = Mat::from_fn(tokens, rd, |t, j| kva[(t, kv + deint(j))]);
    rope_at(&mut q_pe, nh, rd, &c.rope, seq_len, pos);
    rope_at(&mut k_pe, 1, rd, &c.rope, seq_len, pos);
    let q_nope = Mat::from_fn(tokens, nh * nope, |t, j| q[(t, (j / nope) * qk + j % nope)]);
    let mut qs = Mat::<f32>::zeros(tokens, nh * (kv + rd));
    for (head, kb) in m.k_b.iter().enumerate() {
        let lat = linear(q_nope.as_ref().subcols(head * nope, nope), kb, None);
        qs.as_mut()
            .submatrix_mut(0, head * (kv + rd), tokens, kv)
            .copy_from(&lat);
        qs.as_mut()
            .submatrix_mut(0, head * (kv + rd) + kv, tokens, rd)
            .copy_from(q_pe.as_ref().subcols(head * rd, rd));
    }
    let mut ks = Mat::<f32>::zeros(tokens, kv + rd);
    ks.as_mut().subcols_mut(0, kv).copy_from(&ckv);
    ks.as_mut().subcols_mut(kv, rd).copy_from(&k_pe);
    MlaProjected {
        q: qs,
        k: ks,
        ckv,
        q_b,
        q_nope,
    }
}

/// The attention block's output (o_proj of the heads) for normed inputs `h`.
pub fn attention_out(c: &Config, w: &Layer, h: MatRef<'_, f32>, seq_len: usize) -> Mat<f32> {
    linear(
        attention_heads(c, w, h, seq_len).as_ref(),
        &w.o,
        w.o_bias.as_deref(),
    )
}

/// GELU with the tanh approximation, as `gelu_pytorch_tanh` computes it.
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + (K * (x + 0.044715 * x * x * x)).tanh())
}

/// The MLP's inner activation act(h2 gateᵀ) · (h2 upᵀ) (down_proj's input).
pub fn mlp_inner(c: &Config, w: &Layer, h2: MatRef<'_, f32>) -> Mat<f32> {
    gated(c, (&w.gate, None), (&w.up, None), h2)
}

/// The experts each token goes to, with their weights: per token, the `used` largest of the
/// router's scores (its softmax, or DeepSeek-V3's sigmoid; ties to the lower expert),
/// renormalised to sum to 1 when the model does, times the model's scale. DeepSeek-V3
/// chooses with `choice_bias` added to the scores, among the experts of the `topk_group`
/// groups whose two best biased scores sum highest (the others' experts out of the choice, as
/// transformers and llama.cpp mask them with −∞); the weights are the unbiased scores.
pub fn route(
    m: &MoeConfig,
    logits: MatRef<'_, f32>,
    choice_bias: Option<&[f32]>,
) -> Vec<Vec<(usize, f32)>> {
    (0..logits.nrows())
        .map(|t| {
            let row: Vec<f32> = (0..logits.ncols()).map(|e| logits[(t, e)]).collect();
            // (a softmax's experts are ordered by its numerators, the weights divided once)
            let (scores, mut choice): (Vec<f32>, Vec<f32>) = if m.names.sigmoid {
                let s: Vec<f32> = row.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect();
                let choice = match choice_bias {
                    Some(b) => s.iter().zip(b).map(|(s, b)| s + b).collect(),
                    None => s.clone(),
                };
                (s, choice)
            } else {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
                let sum: f32 = exp.iter().sum();
                (exp.iter().map(|&e| e / sum).collect(), exp)
            };
            if let Some((n, k)) = m.groups {
                let per = choice.len() / n.max(1);
                let mut best: Vec<(usize, f32)> = choice
                    .chunks(per.max(1))
                    .map(|g| {
                        let mut v = g.to_vec();
                        v.sort_by(|a, b| b.total_cmp(a));
                        v.iter().take(2).sum::<f32>()
                    })
                    .enumerate()
                    .collect();
                best.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let kept: Vec<usize> = best.iter().take(k).map(|g| g.0).collect();
                for (e, v) in choice.iter_mut().enumerate() {
                    if !kept.contains(&(e / per.max(1))) {
                        *v = f32::NEG_INFINITY;
                    }
                }
            }
            let mut order: Vec<usize> = (0..choice.len()).collect();
            order.sort_by(|&a, &b| choice[b].total_cmp(&choice[a]).then(a.cmp(&b)));
            let chosen: Vec<(usize, f32)> = order[..m.used.min(order.len())]
                .iter()
                .map(|&e| (e, scores[e]))
                .collect();
            let total: f32 = chosen.iter().map(|(_, w)| w).sum();
            // (DeepSeek's renormalisation divides by the sum + 1e-20: the same in f32)
            chosen
                .into_iter()
                .map(|(e, w)| (e, if m.renormalize { w / total } else { w } * m.scale))
                .collect()
        })
        .collect()
}

/// A mixture-of-experts block's output for normed inputs `h2`: each token's chosen experts'
/// outputs, weighted ([`route`]), plus the shared expert's scaled by its sigmoid gate. Experts
/// run in parallel; their outputs are added in expert order (the same sums for any thread
/// count).
pub fn moe_out(c: &Config, m: &MoeLayer, h2: MatRef<'_, f32>) -> Mat<f32> {
    let Some(mc) = &c.moe else {
        return Mat::zeros(h2.nrows(), c.hidden);
    };
    let routes = route(mc, m.router_logits(h2).as_ref(), m.choice_bias.as_deref());
    let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); m.experts.len()];
    for (t, r) in routes.iter().enumerate() {
        for &(e, w) in r {
            if let Some(v) = by_expert.get_mut(e) {
                v.push((t, w));
            }
        }
    }
    let outs: Vec<Mat<f32>> = m
        .experts
        .par_iter()
        .zip(by_expert.par_iter())
        .map(|(e, toks)| {
            let x = Mat::from_fn(toks.len(), h2.ncols(), |i, j| h2[(toks[i].0, j)]);
            expert_out(c, e, x.as_ref())
        })
        .collect();
    let mut out = Mat::<f32>::zeros(h2.nrows(), c.hidden);
    for (y, toks) in outs.iter().zip(&by_expert) {
        for (i, &(t, w)) in toks.iter().enumerate() {
            for j in 0..c.hidden {
                out[(t, j)] += w * y[(i, j)];
            }
        }
    }
    if let Some((e, g)) = &m.shared {
        let y = expert_out(c, e, h2);
        for t in 0..h2.nrows() {
            let s = match g {
                Some(g) => {
                    let s: f32 = (0..h2.ncols()).map(|j| h2[(t, j)] * g[j]).sum();
                    1.0 / (1.0 + (-s).exp())
                }
                None => 1.0,
            };
            for j in 0..c.hidden {
                out[(t, j)] += s * y[(t, j)];
            }
        }
    }
    out
}

/// One expert's inner activation act(x gateᵀ) · (x upᵀ) (its down projection's input; with
/// the expert's biases when it has them).
pub fn expert_inner(c: &Config, e: &Expert, x: MatRef<'_, f32>) -> Mat<f32> {
    gated(
        c,
        (&e.gate, e.gate_bias.as_deref()),
        (&e.up, e.up_bias.as_deref()),
        x,
    )
}

/// One expert's output: down(act(x gateᵀ) · (x upᵀ)).
pub fn expert_out(c: &Config, e: &Expert, x: MatRef<'_, f32>) -> Mat<f32> {
    linear(
        expert_inner(c, e, x).as_ref(),
        &e.down,
        e.down_bias.as_deref(),
    )
}

/// The feed-forward block's output for normed inputs `h2`: the MLP, or the mixture of experts.
pub fn ffn_out(c: &Config, w: &Layer, h2: MatRef<'_, f32>) -> Mat<f32> {
    match &w.moe {
        Some(m) => moe_out(c, m, h2),
        None => mlp_out(c, w, h2),
    }
}

/// act(x gateᵀ + gate bias) · (x upᵀ + up bias).
fn gated(
    c: &Config,
    (gate, gate_bias): (&Mat<f32>, Option<&[f32]>),
    (up, up_bias): (&Mat<f32>, Option<&[f32]>),
    x: MatRef<'_, f32>,
) -> Mat<f32> {
    let mut g = linear(x, gate, gate_bias);
    let u = linear(x, up, up_bias);
    let act = c.act;
    g.as_mut()
        .par_col_iter_mut()
        .zip(u.par_col_iter())
        .for_each(|(gc, uc)| {
            for (a, &b) in gc.iter_mut().zip(uc.iter()) {
                *a = act.gated(*a, b);
            }
        });
    g
}

/// The MLP block's output for normed inputs `h2`.
pub fn mlp_out(c: &Config, w: &Layer, h2: MatRef<'_, f32>) -> Mat<f32> {
    linear(mlp_inner(c, w, h2).as_ref(), &w.down, None)
}

/// One decoder layer on `x` (tokens × hidden, sequences of `seq_len` tokens back to back, causal
/// attention within each). Returns the new hidden states and, when asked, the linears' inputs.
pub fn layer_forward(
    c: &Config,
    w: &Layer,
    x: MatRef<'_, f32>,
    seq_len: usize,
    capture: bool,
) -> (Mat<f32>, Option<Captured>) {
    let h = pre_norm(x, w.input_norm.as_deref(), c.eps);
    let attn = attention_heads(c, w, h.as_ref(), seq_len);
    let o = linear(attn.as_ref(), &w.o, w.o_bias.as_deref());
    let mut x1 = post_norm(o, w.attn_out_norm.as_deref(), c.eps);
    add_into(&mut x1, x);
    let h2 = pre_norm(x1.as_ref(), w.post_norm.as_deref(), c.eps);
    let (act, ffn) = match &w.moe {
        Some(m) => (Mat::zeros(0, 0), moe_out(c, m, h2.as_ref())),
        None => {
            let act = mlp_inner(c, w, h2.as_ref());
            let d = linear(act.as_ref(), &w.down, None);
            (act, d)
        }
    };
    let d = post_norm(ffn, w.mlp_out_norm.as_deref(), c.eps);
    add_into(&mut x1, d.as_ref());
    let cap = capture.then(|| Captured {
        qkv_in: h,
        o_in: attn,
        mlp_in: h2,
        down_in: act,
    });
    (x1, cap)
}

/// Sequences the model writes itself: sequence i starts with `prefixes[i]` (at least one
/// token), then tokens sampled at temperature 1 with a KV cache up to `len`, in equal batches of
/// at most `batch` sequences. The seed fixes every token (sequence i draws from its own
/// generator, seeded by `seed` and i, once per sampled token). Memory: the output head, the cache (`batch × len` keys and values per
/// layer: `2·kv_heads·head_dim` floats, latent attention's `2·kv_lora + rope`; see
/// [`generation_batch`]) and the layers' f32 weights when they fit in
/// [`RESIDENT_LAYERS`] bytes, else one layer at a time, read again each step. `step` is called
/// with the tokens written after each step.
pub fn generate(
    model: &Model<'_>,
    prefixes: &[Vec<u32>],
    len: usize,
    batch: usize,
    seed: u64,
    step: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<u32>>> {
    let c = &model.cfg;
    let (kd, vd) = cache_widths(c);
    let hw = model.head_weights()?;
    // the layers stay in memory while they fit in RESIDENT_LAYERS bytes (else read each step)
    let first = model.layer(0)?;
    // (a mixture's leading dense layers are smaller than its expert layers: sized by the larger)
    let widest = match c
        .moe
        .as_ref()
        .filter(|_| c.dense_layers > 0 && c.dense_layers < c.layers)
    {
        Some(_) => layer_bytes(&model.layer(c.dense_layers)?).max(layer_bytes(&first)),
        None => layer_bytes(&first),
    };
    let resident: Option<Vec<Layer>> = if widest.saturating_mul(c.layers) <= RESIDENT_LAYERS {
        let mut v = vec![first];
        for l in 1..c.layers {
            v.push(model.layer(l)?);
        }
        Some(v)
    } else {
        None
    };
    let n = prefixes.len();
    if let Some(p) = prefixes
        .iter()
        .find(|p| p.is_empty() || p.iter().any(|&t| t as usize >= c.vocab))
    {
        return Err(ModelError::Generation(format!(
            "prefix {p:?} is empty or outside the vocabulary of {}",
            c.vocab
        )));
    }
    // equal batches of at most `batch` sequences
    let batches = n.div_ceil(batch.max(1)).max(1);
    let per = n.div_ceil(batches).max(1);
    let mut out = Vec::with_capacity(n);
    for b0 in (0..n).step_by(per) {
        let b = per.min(n - b0);
        let mut rngs: Vec<qs_numeric::synth::Rng> =
            (0..b).map(|i| sequence_rng(seed, b0 + i)).collect();
        let mut seqs: Vec<Vec<u32>> = prefixes[b0..b0 + b]
            .iter()
            .map(|p| p[..p.len().min(len)].to_vec())
            .collect();
        // per layer: keys and values, [sequence][position][kd]
        let mut kc = vec![vec![0f32; b * len * kd]; c.layers];
        let mut vc = vec![vec![0f32; b * len * vd]; c.layers];
        for pos in 0..len.saturating_sub(1) {
            let ids: Vec<u32> = seqs.iter().map(|s| s[pos]).collect();
            let mut x = model.embed(&ids)?;
            for l in 0..c.layers {
                x = match &resident {
                    Some(ls) => decode_step(c, &ls[l], x, pos, len, &mut kc[l], &mut vc[l]),
                    None => {
                        let w = model.layer(l)?;
                        decode_step(c, &w, x, pos, len, &mut kc[l], &mut vc[l])
                    }
                };
            }
            let logits = model.apply_head(&hw, x.as_ref());
            for (i, s) in seqs.iter_mut().enumerate() {
                if s.len() > pos + 1 {
                    continue; // the prefix gives the next token
                }
                let row: Vec<f32> = (0..logits.ncols()).map(|j| logits[(i, j)]).collect();
                s.push(sample(&row, &mut rngs[i]));
            }
            step(b);
        }
        out.extend(seqs);
    }
    Ok(out)
}

/// A token's cached key and value widths in one layer: every key/value head's, or latent
/// attention's compressed vector with its rope key, and the compressed vector.
fn cache_widths(c: &Config) -> (usize, usize) {
    match c.mla {
        Some(p) => ((p.kv_lora + p.qk_rope) as usize, p.kv_lora as usize),
        None => (c.kv_heads * c.head_dim, c.kv_heads * c.head_dim),
    }
}

/// Bytes of f32 layer weights [`generate`] keeps in memory instead of reading them every step.
pub const RESIDENT_LAYERS: usize = 2 << 30;

/// Bytes a loaded layer takes.
fn layer_bytes(w: &Layer) -> usize {
    let m = |x: &Mat<f32>| x.nrows() * x.ncols();
    let experts: usize = w.moe.as_ref().map_or(0, |e| {
        let x = |e: &Expert| m(&e.gate) + m(&e.up) + m(&e.down);
        m(&e.router)
            + e.experts.iter().map(x).sum::<usize>()
            + e.shared.as_ref().map_or(0, |s| x(&s.0))
    });
    let mla = w.mla.as_ref().map_or(0, |a| {
        m(&a.q)
            + a.q_a.as_ref().map_or(0, |q| m(&q.0))
            + m(&a.kv_a)
            + a.k_b.iter().chain(&a.v_b).map(m).sum::<usize>()
    });
    4 * (m(&w.q) + m(&w.k) + m(&w.v) + m(&w.o) + m(&w.gate) + m(&w.up) + m(&w.down) + experts + mla)
}

/// Sequences [`generate`] can write at once within `budget` bytes of KV cache.
pub fn generation_batch(c: &Config, len: usize, budget: usize) -> usize {
    let (kd, vd) = cache_widths(c);
    let per = c.layers * len * (kd + vd) * 4;
    (budget / per.max(1)).max(1)
}

/// The random generator of sequence `i` of [`generate`].
pub fn sequence_rng(seed: u64, i: usize) -> qs_numeric::synth::Rng {
    qs_numeric::synth::Rng::new(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d))
}

/// A token drawn from softmax(`logits`) (temperature 1).
pub fn sample(logits: &[f32], rng: &mut qs_numeric::synth::Rng) -> u32 {
    let mx = logits.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    let p: Vec<f64> = logits.iter().map(|&v| ((v - mx) as f64).exp()).collect();
    let total: f64 = p.iter().sum();
    let mut u = rng.uniform() * total;
    for (i, &pi) in p.iter().enumerate() {
        if u < pi {
            return i as u32;
        }
        u -= pi;
    }
    (p.len() - 1) as u32
}

/// One decoder layer on one new token per sequence (rows of `x`, all at position `pos`), with
/// the keys and values of earlier positions in the cache (`[sequence][len][kv dims]`).
fn decode_step(
    c: &Config,
    w: &Layer,
    x: Mat<f32>,
    pos: usize,
    len: usize,
    kc: &mut [f32],
    vc: &mut [f32],
) -> Mat<f32> {
    let b = x.nrows();
    let h = pre_norm(x.as_ref(), w.input_norm.as_deref(), c.eps);
    // per head, query/key width `hd` and value width `hv`; `kvn` key/value heads cached (latent
    // attention caches one: each token's compressed vector and rope key)
    let (q, k, v, hd, hv, kvn) = match (&w.mla, c.mla) {
        (Some(m), Some(p)) => {
            let pr = mla_project(c, p, m, h.as_ref(), len, &|_| pos);
            let (kv, rd) = (p.kv_lora as usize, p.qk_rope as usize);
            (pr.q, pr.k, pr.ckv, kv + rd, kv, 1)
        }
        _ => {
            let hd = c.head_dim;
            let mut q = linear(h.as_ref(), &w.q, w.q_bias.as_deref());
            let mut k = linear(h.as_ref(), &w.k, w.k_bias.as_deref());
            let v = linear(h.as_ref(), &w.v, w.v_bias.as_deref());
            if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
                qk_norm(&mut q, c.heads, hd, qn, c.eps);
                qk_norm(&mut k, c.kv_heads, hd, kn, c.eps);
            }
            if w.rope {
                let r = rope_of_layer(c, w);
                rope_at(&mut q, c.heads, hd, r, len, |_| pos);
                rope_at(&mut k, c.kv_heads, hd, r, len, |_| pos);
            }
            (q, k, v, hd, hd, c.kv_heads)
        }
    };
    let (kd, vd) = (kvn * hd, kvn * hv);
    for i in 0..b {
        let at = (i * len + pos) * kd;
        for d in 0..kd {
            kc[at + d] = k[(i, d)];
        }
        let at = (i * len + pos) * vd;
        for d in 0..vd {
            vc[at + d] = v[(i, d)];
        }
    }
    let rep = c.heads / kvn.max(1);
    let scale = c.attn_scale;
    // the earliest position the sliding window keeps
    let first = w.window.map_or(0, |win| (pos + 1).saturating_sub(win));
    let (kc, vc) = (&*kc, &*vc);
    let rows: Vec<Vec<f32>> = (0..b * c.heads)
        .into_par_iter()
        .map(|ih| {
            let (i, head) = (ih / c.heads, ih % c.heads);
            let kvh = head / rep;
            // this sequence's cached keys and values of this head: (pos + 1) rows, kd / vd apart
            let n = pos + 1 - first;
            let at = i * len * kd + first * kd + kvh * hd;
            let span = (n - 1) * kd + hd;
            let keys = MatRef::from_row_major_slice_with_stride(&kc[at..at + span], n, hd, kd);
            let at = i * len * vd + first * vd + kvh * hv;
            let span = (n - 1) * vd + hv;
            let vals = MatRef::from_row_major_slice_with_stride(&vc[at..at + span], n, hv, vd);
            let qh = q.as_ref().submatrix(i, head * hd, 1, hd);
            let mut scores = Mat::<f32>::zeros(n, 1);
            matmul(
                scores.as_mut(),
                Accum::Replace,
                keys,
                qh.transpose(),
                scale,
                Par::Seq,
            );
            let sc = scores.col_as_slice_mut(0);
            if let Some(cap) = c.attn_softcap {
                sc.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
            }
            let sink = w.sinks.as_ref().map(|s| s[head]);
            let mx = sc
                .iter()
                .fold(sink.unwrap_or(f32::NEG_INFINITY), |a, &v| a.max(v));
            let mut sum = sink.map_or(0.0, |s| (s - mx).exp());
            for s in sc.iter_mut() {
                *s = (*s - mx).exp();
                sum += *s;
            }
            let mut o = Mat::<f32>::zeros(hv, 1);
            matmul(
                o.as_mut(),
                Accum::Replace,
                vals.transpose(),
                scores.as_ref(),
                1.0 / sum,
                Par::Seq,
            );
            o.col_as_slice(0).to_vec()
        })
        .collect();
    let mut attn = Mat::<f32>::from_fn(b, c.heads * hv, |i, e| rows[i * c.heads + e / hv][e % hv]);
    if let (Some(m), Some(p)) = (&w.mla, c.mla) {
        // each head's compressed output to its values
        let vh = p.v_head as usize;
        let mut out = Mat::<f32>::zeros(b, c.heads * vh);
        for (head, vb) in m.v_b.iter().enumerate() {
            let y = linear(attn.as_ref().subcols(head * hv, hv), vb, None);
            out.as_mut().subcols_mut(head * vh, vh).copy_from(&y);
        }
        attn = out;
    }
    let o = linear(attn.as_ref(), &w.o, w.o_bias.as_deref());
    let mut x1 = post_norm(o, w.attn_out_norm.as_deref(), c.eps);
    add_into(&mut x1, x.as_ref());
    let h2 = pre_norm(x1.as_ref(), w.post_norm.as_deref(), c.eps);
    let m = post_norm(ffn_out(c, w, h2.as_ref()), w.mlp_out_norm.as_deref(), c.eps);
    add_into(&mut x1, m.as_ref());
    x1
}

/// A block's input: RMSNorm-ed by `w` when the layer has that norm, else as it is.
fn pre_norm(x: MatRef<'_, f32>, w: Option<&[f32]>, eps: f32) -> Mat<f32> {
    match w {
        Some(w) => rms_norm(x, w, eps),
        None => x.to_owned(),
    }
}

/// A block's output: RMSNorm-ed by `w` when the layer has that norm (OLMo 2).
fn post_norm(y: Mat<f32>, w: Option<&[f32]>, eps: f32) -> Mat<f32> {
    match w {
        Some(w) => rms_norm(y.as_ref(), w, eps),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Experts stored apart and stacked parse to their layer, expert and projection (Mixtral's
    /// w1/w3/w2 names too), and nothing else does.
    #[test]
    fn expert_weights_parse_by_family_names() {
        let mix = MoeNames {
            experts: "block_sparse_moe.experts",
            gate: "w1",
            up: "w3",
            down: "w2",
            ..QWEN_MOE
        };
        let e = |n: &MoeNames, s: &str| parse_expert(n, s);
        assert_eq!(
            e(&QWEN_MOE, "model.layers.2.mlp.experts.17.down_proj.weight"),
            Some((2, 17, Linear::Down))
        );
        assert_eq!(
            e(&mix, "model.layers.0.block_sparse_moe.experts.3.w3.weight"),
            Some((0, 3, Linear::Up))
        );
        assert_eq!(
            parse_stacked(&QWEN_MOE, "model.layers.1.mlp.experts.gate_proj.weight"),
            Some((1, Linear::Gate))
        );
        for bad in [
            "model.layers.2.mlp.experts.17.down_proj.bias",
            "model.layers.2.mlp.experts.x.down_proj.weight",
            "model.layers.2.mlp.shared_expert.down_proj.weight",
            "model.layers.2.mlp.experts.gate_proj.weight",
        ] {
            assert_eq!(e(&QWEN_MOE, bad), None, "{bad}");
        }
        assert_eq!(
            e(&mix, "model.layers.0.block_sparse_moe.experts.3.w4.weight"),
            None
        );
    }

    /// kv_b_proj splits into per-head k_b (transposed key rows) and v_b, and joins back.
    #[test]
    fn kv_b_splits_per_head_and_joins_back() {
        let (heads, nope, v, kv) = (3, 4, 5, 6);
        let w = Mat::from_fn(heads * (nope + v), kv, |i, j| (i * 100 + j) as f32);
        let (k_b, v_b) = split_kv_b(w.as_ref(), heads, nope, v);
        // head 1's key row 2, column 5 is k_b[1]'s row 5, column 2
        assert_eq!(k_b[1][(5, 2)], w[(nope + v + 2, 5)]);
        assert_eq!(v_b[2][(0, 1)], w[(2 * (nope + v) + nope, 1)]);
        assert_eq!((k_b[0].nrows(), k_b[0].ncols()), (kv, nope));
        assert_eq!(join_kv_b(&k_b, &v_b), w);
    }

    /// DeepSeek-V3's routing: the groups not kept are out of the choice even when every kept
    /// expert's biased score is negative (transformers and llama.cpp mask them with −∞); the
    /// weights are the unbiased sigmoid scores, renormalised and scaled.
    #[test]
    fn grouped_routing_masks_the_groups_not_kept() {
        let m = MoeConfig {
            names: MoeNames {
                shared: Some(("mlp.shared_experts", None)),
                sigmoid: true,
                choice_bias: Some("mlp.gate.e_score_correction_bias"),
                renorm_default: true,
                ..QWEN_MOE
            },
            experts: 4,
            used: 2,
            renormalize: true,
            scale: 2.5,
            groups: Some((2, 1)),
        };
        // sigmoid(0) = 0.5: biased scores [-0.05, -0.02 | -0.3, -0.4]
        let logits = Mat::<f32>::zeros(1, 4);
        let bias = [-0.55f32, -0.52, -0.8, -0.9];
        let r = route(&m, logits.as_ref(), Some(&bias));
        let mut chosen: Vec<usize> = r[0].iter().map(|&(e, _)| e).collect();
        chosen.sort();
        assert_eq!(chosen, vec![0, 1]);
        for &(_, w) in &r[0] {
            assert!((w - 1.25).abs() < 1e-6, "{w}");
        }
        // without groups the best biased scores win, whatever their group
        let flat = MoeConfig { groups: None, ..m };
        let bias = [-0.55f32, -0.9, -0.52, -0.8];
        let mut chosen: Vec<usize> = route(&flat, logits.as_ref(), Some(&bias))[0]
            .iter()
            .map(|&(e, _)| e)
            .collect();
        chosen.sort();
        assert_eq!(chosen, vec![0, 2]);
    }
}
