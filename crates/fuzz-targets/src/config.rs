//! config.json → hyper-parameters: what a GGUF conversion reads (`arch::detect`, `hparams`,
//! `generated_tensors`, `map_tensor` for a llama layer's names) and what calibration and `eval`
//! read (`qs_model::Config::from_hf`).

use quantsmith::arch;

const NAMES: &[&str] = &[
    "model.embed_tokens.weight",
    "model.norm.weight",
    "lm_head.weight",
    "rope_freqs.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.bias",
    "model.layers.1.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.self_attn.rotary_emb.inv_freq",
];

/// One fuzz input (any bytes): returns normally or panics on a finding.
pub fn run(data: &[u8]) {
    let Ok(c) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    // the converter's readers first, calibration's last: a finding in one does not hide the
    // other's
    let _ = arch::with_defaults(&c);
    let _ = arch::heads(&c);
    if let Ok(a) = arch::detect(&c) {
        let _ = arch::hparams(a, &c);
        let _ = arch::generated_tensors(a, &c);
        for n in NAMES {
            let _ = arch::map_tensor(a, &c, n);
        }
    }
    let _ = qs_model::Config::from_hf(&c);
}
