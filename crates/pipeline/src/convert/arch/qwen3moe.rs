//! llama.cpp's "qwen3moe" architecture: Qwen3-MoE (Qwen3's attention with q/k norms; in every
//! layer a softmax router whose chosen experts' weights are renormalised; no shared expert).

use super::{Arch, HeadDim, ModelType, Moe, OwnKey, QWEN_EXPERTS, TEXT};

pub const ARCH: Arch = Arch {
    name: "qwen3moe",
    model_types: &[ModelType {
        name: "qwen3_moe",
        max_position_embeddings: 32768,
        head_dim: HeadDim::Absent,
    }],
    hf_class: "Qwen3MoeForCausalLM",
    own_keys: &[OwnKey::ExpertFf, OwnKey::ExpertSharedFf],
    moe: Some(Moe {
        experts: "mlp.experts",
        projs: QWEN_EXPERTS,
        modules: &[("mlp.gate", "ffn_gate_inp")],
        renormalize: Some(true),
        count_key: "num_experts",
        stored_stacked: false,
    }),
    ..TEXT
};
