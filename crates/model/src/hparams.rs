//! Hyper-parameters of a llama-style model from its config.json, validated once: every integer
//! a whole number within `qs_numeric::limits`, consistent with the others, and (with
//! [`HParams::check_tensors`]) with the shapes of the weights actually present. Everything that
//! sizes a loop, an allocation or a written key from a config value reads it from here.

use crate::Linear;
use qs_numeric::limits::{MAX_CONTEXT, MAX_EXPERTS, MAX_HEADS, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH};
use serde_json::Value as Json;

/// The keys llama.cpp's converter accepts for each hyper-parameter, in its order.
pub const LAYER_KEYS: &[&str] = &["num_hidden_layers", "n_layer", "num_layers"];
pub const EMBD_KEYS: &[&str] = &["hidden_size", "n_embd", "dim"];
pub const FF_KEYS: &[&str] = &["intermediate_size", "n_inner", "hidden_dim"];
pub const HEAD_KEYS: &[&str] = &["num_attention_heads", "n_head", "n_heads"];
pub const KV_KEYS: &[&str] = &["num_key_value_heads", "n_kv_heads"];
pub const CTX_KEYS: &[&str] = &[
    "max_position_embeddings",
    "n_ctx",
    "n_positions",
    "max_length",
    "max_sequence_length",
    "model_max_length",
];

/// Validated hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HParams {
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_ff: Option<u64>,
    pub n_head: u64,
    pub n_head_kv: u64,
    /// `head_dim`, else `n_embd / n_head`.
    pub head_dim: u64,
    pub vocab: Option<u64>,
    pub context: Option<u64>,
    /// A mixture of experts in the feed-forward blocks.
    pub moe: Option<MoeParams>,
    /// Multi-head latent attention (DeepSeek) instead of q/k/v projections.
    pub mla: Option<MlaParams>,
    /// Leading layers with a dense MLP before the mixture-of-experts ones
    /// (`first_k_dense_replace`; 0 when every layer has experts).
    pub dense_layers: u64,
    /// Multi-token-prediction layers stored after the decoder's (`num_nextn_predict_layers`):
    /// not part of the model's forward pass; llama.cpp's converter leaves them out.
    pub extra_layers: u64,
}

/// Multi-head latent attention's sizes (DeepSeek-V2/V3): queries through a low-rank
/// bottleneck (`q_a_proj`, `q_b_proj`) or one `q_proj`; keys and values decompressed by
/// `kv_b_proj` from one `kv_lora_rank` vector per token, plus a rope part of `qk_rope_head_dim`
/// shared by all heads (`kv_a_proj_with_mqa` makes both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlaParams {
    pub q_lora: Option<u64>,
    pub kv_lora: u64,
    /// A head's query/key dimensions without and with rope.
    pub qk_nope: u64,
    pub qk_rope: u64,
    pub v_head: u64,
}

impl MlaParams {
    /// A head's query (and key) size.
    pub fn qk_head(&self) -> u64 {
        self.qk_nope + self.qk_rope
    }
}

/// A mixture-of-experts model's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeParams {
    /// Experts per layer (`num_local_experts`, `num_experts`, `n_routed_experts`).
    pub experts: u64,
    /// Experts each token is routed to (`num_experts_per_tok`).
    pub used: u64,
    /// An expert's feed-forward width (`moe_intermediate_size`, else `intermediate_size`).
    pub ff: u64,
    /// The shared expert's width (`shared_expert_intermediate_size`), if there is one.
    pub shared_ff: Option<u64>,
    /// DeepSeek's shared experts (`n_shared_experts`, each `ff` wide; stored as one MLP
    /// `mlp.shared_experts` of `shared · ff`): 0 for other models.
    pub shared: u64,
}

/// The keys giving a layer's number of experts, as llama.cpp's converter looks for them.
pub const EXPERT_KEYS: &[&str] = &["num_local_experts", "num_experts", "n_routed_experts"];

/// The integer under the first of `keys` that is present (and not null): `None` when none is;
/// an error naming the key when it is not a whole number from 0 to `max`.
pub fn int(c: &Json, keys: &[&str], max: u64) -> Result<Option<u64>, String> {
    for k in keys {
        match c.get(*k) {
            None | Some(Json::Null) => continue,
            Some(v) => {
                return match v.as_u64() {
                    Some(n) if n <= max => Ok(Some(n)),
                    _ => Err(format!(
                        "{k} = {}: expected a whole number from 0 to {max}",
                        short(v)
                    )),
                }
            }
        }
    }
    Ok(None)
}

/// The number under the first of `keys` present: an error when it is not a finite number.
pub fn num(c: &Json, keys: &[&str]) -> Result<Option<f64>, String> {
    for k in keys {
        match c.get(*k) {
            None | Some(Json::Null) => continue,
            Some(v) => {
                return match v.as_f64() {
                    Some(x) if x.is_finite() => Ok(Some(x)),
                    _ => Err(format!("{k} = {} is not a finite number", short(v))),
                }
            }
        }
    }
    Ok(None)
}

/// A JSON value for a one-line message.
fn short(v: &Json) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

impl HParams {
    /// Reads and cross-checks the hyper-parameters of a config.json (completed with its
    /// transformers defaults by the caller where those matter).
    pub fn from_config(c: &Json) -> Result<HParams, String> {
        if !c.is_object() {
            return Err(format!("not a JSON object (found {})", short(c)));
        }
        let need = |keys: &[&str], max: u64| -> Result<u64, String> {
            match int(c, keys, max)? {
                Some(0) => Err(format!("{} is 0", keys[0])),
                Some(n) => Ok(n),
                None => Err(format!("lacks {}", keys[0])),
            }
        };
        let positive = |keys: &[&str], max: u64| -> Result<Option<u64>, String> {
            match int(c, keys, max)? {
                Some(0) => Err(format!("{} is 0", keys[0])),
                v => Ok(v),
            }
        };
        let n_layer = need(LAYER_KEYS, MAX_LAYERS)?;
        let n_embd = need(EMBD_KEYS, MAX_WIDTH)?;
        let n_head = need(HEAD_KEYS, MAX_HEADS)?;
        let n_head_kv = positive(KV_KEYS, MAX_HEADS)?.unwrap_or(n_head);
        if n_head % n_head_kv != 0 {
            return Err(format!(
                "num_key_value_heads = {n_head_kv} does not divide num_attention_heads = {n_head}"
            ));
        }
        let head_dim = match positive(&["head_dim"], MAX_WIDTH)? {
            Some(d) => d,
            None if n_embd >= n_head => n_embd / n_head,
            None => {
                return Err(format!(
                    "hidden_size = {n_embd} is smaller than num_attention_heads = {n_head} (and no head_dim)"
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(format!(
                "head size {head_dim} is odd: rotary embeddings need an even head size"
            ));
        }
        if n_head * head_dim > MAX_WIDTH {
            return Err(format!(
                "num_attention_heads × head_dim = {} is larger than {MAX_WIDTH}",
                n_head * head_dim
            ));
        }
        let n_ff = positive(FF_KEYS, MAX_WIDTH)?;
        let moe = match positive(EXPERT_KEYS, MAX_EXPERTS)? {
            None => None,
            Some(experts) => {
                let used = need(&["num_experts_per_tok"], MAX_EXPERTS)?;
                if used > experts {
                    return Err(format!(
                        "num_experts_per_tok = {used} is more than the {experts} experts"
                    ));
                }
                let ff = match positive(&["moe_intermediate_size"], MAX_WIDTH)? {
                    Some(f) => f,
                    None => n_ff.ok_or("lacks moe_intermediate_size (or intermediate_size)")?,
                };
                let shared_ff = positive(&["shared_expert_intermediate_size"], MAX_WIDTH)?;
                let shared = int(c, &["n_shared_experts"], MAX_EXPERTS)?.unwrap_or(0);
                if shared * ff > MAX_WIDTH {
                    return Err(format!(
                        "n_shared_experts × moe_intermediate_size = {} is larger than {MAX_WIDTH}",
                        shared * ff
                    ));
                }
                Some(MoeParams {
                    experts,
                    used,
                    ff,
                    shared_ff,
                    shared,
                })
            }
        };
        let mla = match int(c, &["kv_lora_rank"], MAX_WIDTH)? {
            None => None,
            Some(0) => return Err("kv_lora_rank is 0".into()),
            Some(kv_lora) => {
                let m = MlaParams {
                    q_lora: positive(&["q_lora_rank"], MAX_WIDTH)?,
                    kv_lora,
                    qk_nope: need(&["qk_nope_head_dim"], MAX_WIDTH)?,
                    qk_rope: need(&["qk_rope_head_dim"], MAX_WIDTH)?,
                    v_head: need(&["v_head_dim"], MAX_WIDTH)?,
                };
                if !m.qk_rope.is_multiple_of(2) {
                    return Err(format!(
                        "qk_rope_head_dim = {} is odd: rotary embeddings need an even size",
                        m.qk_rope
                    ));
                }
                let widest = m.qk_head().max(m.v_head).max(m.kv_lora + m.qk_rope);
                if n_head * widest > MAX_WIDTH {
                    return Err(format!(
                        "num_attention_heads × head size {widest} is larger than {MAX_WIDTH}"
                    ));
                }
                Some(m)
            }
        };
        let dense_layers = match (moe, int(c, &["first_k_dense_replace"], MAX_LAYERS)?) {
            (Some(_), Some(k)) => k.min(n_layer),
            _ => 0,
        };
        let extra_layers = int(c, &["num_nextn_predict_layers"], MAX_LAYERS)?.unwrap_or(0);
        Ok(HParams {
            n_layer,
            n_embd,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            vocab: positive(&["vocab_size"], MAX_VOCAB)?,
            context: int(c, CTX_KEYS, MAX_CONTEXT)?,
            moe,
            mla,
            dense_layers,
            extra_layers,
        })
    }

    /// The shape a mixture-of-experts module under `model.layers.N.` has (`None`: not one):
    /// an expert's projection (`…experts.E.gate_proj`, Mixtral's `w1`/`w3`: `[ff, hidden]`;
    /// `down_proj`/`w2`: `[hidden, ff]`), the experts stacked (`…experts.gate_proj`:
    /// `[experts, ff, hidden]`), the router (`mlp.gate`, `block_sparse_moe.gate`:
    /// `[experts, hidden]`), the shared expert and its gate (`[1, hidden]`, or `[hidden]`).
    fn moe_shape(&self, module: &str, dims: usize) -> Option<Result<Vec<Option<usize>>, String>> {
        let m = self.moe?;
        let (e, ff, n) = (
            Some(self.n_embd as usize),
            Some(m.ff as usize),
            Some(m.experts as usize),
        );
        let proj = |p: &str, ff: Option<usize>| match p {
            "gate_proj" | "up_proj" | "w1" | "w3" => Some(vec![ff, e]),
            "down_proj" | "w2" => Some(vec![e, ff]),
            _ => None,
        };
        if let Some(p) = module.strip_prefix("mlp.shared_experts.") {
            return proj(p, Some((m.shared * m.ff) as usize)).map(Ok);
        }
        if let Some((_, rest)) = module.split_once("experts.") {
            return match rest.split_once('.') {
                Some((x, p)) => {
                    let x: u64 = x.parse().ok()?;
                    if x >= m.experts {
                        return Some(Err(format!(
                            "expert {x}, but the config has {} experts",
                            m.experts
                        )));
                    }
                    proj(p, ff).map(Ok)
                }
                None => proj(rest, ff).map(|mut s| {
                    s.insert(0, n);
                    Ok(s)
                }),
            };
        }
        match module {
            "mlp.gate" | "block_sparse_moe.gate" | "mlp.router" => Some(Ok(vec![n, e])),
            // (a GGUF written by llama-quantize drops the leading 1)
            "mlp.shared_expert_gate" if dims == 1 => Some(Ok(vec![e])),
            "mlp.shared_expert_gate" => Some(Ok(vec![Some(1), e])),
            _ => module
                .strip_prefix("mlp.shared_expert.")
                .and_then(|p| proj(p, m.shared_ff.map(|f| f as usize)))
                .map(Ok),
        }
    }

    /// The shape an attention module under `model.layers.N.` has in multi-head latent
    /// attention (`None`: not one of its modules, or not such a model), by its suffix.
    fn mla_shape(&self, module: &str, sfx: &str) -> Option<Vec<Option<usize>>> {
        let m = self.mla?;
        let (e, h) = (self.n_embd as usize, self.n_head as usize);
        let (kv, nope, v) = (m.kv_lora as usize, m.qk_nope as usize, m.v_head as usize);
        let qk = m.qk_head() as usize;
        let q_lora = m.q_lora.map(|q| q as usize);
        let lin = |out: usize, inp: Option<usize>| match (sfx, inp) {
            ("weight", Some(i)) => Some(vec![Some(out), Some(i)]),
            ("bias", _) | (_, None) => Some(vec![Some(out)]),
            _ => None,
        };
        match module {
            "self_attn.q_proj" => lin(h * qk, Some(e)),
            "self_attn.q_a_proj" => lin(q_lora?, Some(e)),
            "self_attn.q_a_layernorm" => lin(q_lora?, None),
            "self_attn.q_b_proj" => lin(h * qk, q_lora),
            "self_attn.kv_a_proj_with_mqa" => lin(kv + m.qk_rope as usize, Some(e)),
            "self_attn.kv_a_layernorm" => lin(kv, None),
            "self_attn.kv_b_proj" => lin(h * (nope + v), Some(kv)),
            // the converter's halves of kv_b_proj (key half transposed)
            "self_attn.k_b_proj" => Some(vec![Some(h), Some(kv), Some(nope)]),
            "self_attn.v_b_proj" => Some(vec![Some(h), Some(v), Some(kv)]),
            "self_attn.o_proj" => lin(e, Some(h * v)),
            _ => None,
        }
    }

    /// Checks the hyper-parameters against the weights present (Hugging Face names and
    /// shapes): every layer from 0 to `n_layer − 1` and no other, each known tensor with the
    /// shape the hyper-parameters give it. Returns the tensor and what is wrong.
    pub fn check_tensors<'a>(
        &self,
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<(), (String, String)> {
        let (e, hd) = (self.n_embd as usize, self.head_dim as usize);
        let (q, kv) = (self.n_head as usize * hd, self.n_head_kv as usize * hd);
        let mut layers = std::collections::BTreeSet::new();
        let mut ff = self.n_ff.map(|f| f as usize);
        for (name, shape) in tensors {
            let bad = |msg: String| Err((name.to_string(), msg));
            let want: Vec<Option<usize>> = if let Some(rest) = name.strip_prefix("model.layers.") {
                let Some((l, part)) = rest.split_once('.') else {
                    continue;
                };
                let Ok(l) = l.parse::<u64>() else { continue };
                if l >= self.n_layer && l < self.n_layer + self.extra_layers {
                    continue;
                }
                if l >= self.n_layer {
                    return bad(format!(
                        "layer {l}, but num_hidden_layers is {}",
                        self.n_layer
                    ));
                }
                layers.insert(l);
                let (module, sfx) = part.rsplit_once('.').unwrap_or((part, ""));
                if let Some(want) = self.mla_shape(module, sfx) {
                    want
                } else if let Some(want) = self.moe_shape(module, shape.len()) {
                    match want {
                        // a bias has one value per output row (DeepSeek's router: a bias
                        // correcting the expert choice)
                        Ok(mut w) if sfx == "bias" || sfx == "e_score_correction_bias" => {
                            w.pop();
                            w
                        }
                        Ok(w) => w,
                        Err(msg) => return bad(msg),
                    }
                } else {
                    let lin = Linear::ALL.into_iter().find(|x| x.hf_name() == module);
                    let (out, inp) = match (lin, module) {
                        (Some(Linear::Q), _) => (Some(q), Some(e)),
                        (Some(Linear::K | Linear::V), _) => (Some(kv), Some(e)),
                        (Some(Linear::O), _) => (Some(e), Some(q)),
                        (Some(Linear::Gate | Linear::Up), _) => (ff, Some(e)),
                        (Some(Linear::Down), _) => (Some(e), ff),
                        (
                            None,
                            "input_layernorm"
                            | "post_attention_layernorm"
                            | "pre_feedforward_layernorm"
                            | "post_feedforward_layernorm",
                        ) => (Some(e), None),
                        // per head (Qwen3), or over all heads (OLMo 2)
                        (None, "self_attn.q_norm") if shape == [q] => (Some(q), None),
                        (None, "self_attn.k_norm") if shape == [kv] => (Some(kv), None),
                        (None, "self_attn.q_norm" | "self_attn.k_norm") => (Some(hd), None),
                        _ => continue,
                    };
                    match (lin.is_some(), sfx) {
                        (true, "weight") => vec![out, inp],
                        _ => vec![out],
                    }
                }
            } else {
                match name {
                    "model.embed_tokens.weight" | "lm_head.weight" => {
                        vec![self.vocab.map(|v| v as usize), Some(e)]
                    }
                    "model.norm.weight" => vec![Some(e)],
                    _ => continue,
                }
            };
            let fits = want.len() == shape.len()
                && want
                    .iter()
                    .zip(shape)
                    .all(|(w, &s)| w.is_none_or(|w| w == s));
            if !fits {
                let w: Vec<String> = want
                    .iter()
                    .map(|w| w.map_or("*".into(), |w| w.to_string()))
                    .collect();
                return bad(format!(
                    "shape {shape:?} does not fit the config's hyper-parameters ([{}])",
                    w.join(", ")
                ));
            }
            // the feed-forward width the first MLP weight shows is what the others must have
            if ff.is_none()
                && name.contains(".mlp.")
                && !name.contains("expert")
                && !name.contains(".mlp.gate.")
                && shape.len() == 2
            {
                ff = Some(if name.contains("down_proj") {
                    shape[1]
                } else {
                    shape[0]
                });
            }
        }
        if layers.len() as u64 != self.n_layer {
            let missing = (0..self.n_layer).find(|l| !layers.contains(l)).unwrap_or(0);
            return Err((
                "config.json".to_string(),
                format!(
                    "num_hidden_layers is {}, but the weights have no layer {missing} ({} layers found)",
                    self.n_layer,
                    layers.len()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Json {
        json!({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
               "num_key_value_heads": 2, "intermediate_size": 96, "vocab_size": 100})
    }

    fn with(k: &str, v: Json) -> Result<HParams, String> {
        let mut c = base();
        c[k] = v;
        HParams::from_config(&c)
    }

    #[test]
    fn reads_and_refuses() {
        let h = HParams::from_config(&base()).unwrap();
        assert_eq!((h.head_dim, h.n_head_kv, h.n_ff), (16, 2, Some(96)));
        for (k, v, msg) in [
            ("num_attention_heads", json!(0), "num_attention_heads is 0"),
            (
                "num_attention_heads",
                json!(1000),
                "smaller than num_attention_heads",
            ),
            ("num_attention_heads", json!(1001), "does not divide"),
            (
                "num_attention_heads",
                json!(4294967300u64),
                "expected a whole number",
            ),
            ("num_key_value_heads", json!(0), "num_key_value_heads is 0"),
            ("num_key_value_heads", json!(3), "does not divide"),
            (
                "num_key_value_heads",
                json!(18446744073709551615u64),
                "expected a whole number",
            ),
            (
                "hidden_size",
                json!(4294967552u64),
                "expected a whole number",
            ),
            (
                "num_hidden_layers",
                json!(4294967298u64),
                "expected a whole number",
            ),
            ("num_hidden_layers", json!(-1), "expected a whole number"),
            ("num_hidden_layers", json!(1e30), "expected a whole number"),
            ("vocab_size", json!(1_000_000_000u64), "vocab_size"),
            ("head_dim", json!(1_000_000_000u64), "head_dim"),
            ("head_dim", json!(15), "odd"),
            ("num_hidden_layers", json!("2"), "expected a whole number"),
        ] {
            let e = with(k, v.clone()).unwrap_err();
            assert!(e.contains(msg), "{k} = {v}: {e}");
        }
        for c in [json!(null), json!([]), json!(1)] {
            assert!(HParams::from_config(&c)
                .unwrap_err()
                .contains("not a JSON object"));
        }
        assert!(HParams::from_config(&json!({}))
            .unwrap_err()
            .contains("lacks num_hidden_layers"));
    }

    #[test]
    fn checks_shapes_and_layers() {
        let h = HParams::from_config(&base()).unwrap();
        let mut t: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![100, 64]),
            ("model.norm.weight".into(), vec![64]),
        ];
        for l in 0..2 {
            let p = format!("model.layers.{l}.");
            t.push((format!("{p}self_attn.q_proj.weight"), vec![64, 64]));
            t.push((format!("{p}self_attn.k_proj.weight"), vec![32, 64]));
            t.push((format!("{p}self_attn.v_proj.bias"), vec![32]));
            t.push((format!("{p}mlp.down_proj.weight"), vec![64, 96]));
            t.push((format!("{p}input_layernorm.weight"), vec![64]));
        }
        let run = |t: &[(String, Vec<usize>)], h: &HParams| {
            h.check_tensors(t.iter().map(|(n, s)| (n.as_str(), s.as_slice())))
        };
        run(&t, &h).unwrap();
        let mut bad = t.clone();
        bad[3].1 = vec![96, 64];
        assert!(run(&bad, &h).unwrap_err().1.contains("does not fit"));
        let more = HParams { n_layer: 3, ..h };
        assert!(run(&t, &more).unwrap_err().1.contains("no layer 2"));
        let fewer = HParams { n_layer: 1, ..h };
        assert!(run(&t, &fewer).unwrap_err().1.contains("layer 1, but"));
        let vocab = HParams {
            vocab: Some(1_000_000),
            ..h
        };
        assert_eq!(run(&t, &vocab).unwrap_err().0, "model.embed_tokens.weight");
    }
}
