//! llama.cpp's "qwen2moe" architecture: Qwen1.5-MoE and Qwen2-MoE (Qwen2's attention with q/k/v
//! biases; in every layer a softmax router over experts whose chosen weights are not
//! renormalised, plus a shared expert scaled by its own sigmoid gate).

use super::{Arch, HeadDim, ModelType, Moe, OwnKey, QWEN_EXPERTS, TEXT};

pub const ARCH: Arch = Arch {
    name: "qwen2moe",
    model_types: &[ModelType {
        name: "qwen2_moe",
        max_position_embeddings: 32768,
        head_dim: HeadDim::Absent,
    }],
    hf_class: "Qwen2MoeForCausalLM",
    own_keys: &[OwnKey::ExpertFf, OwnKey::ExpertSharedFf],
    moe: Some(Moe {
        experts: "mlp.experts",
        projs: QWEN_EXPERTS,
        modules: &[
            ("mlp.gate", "ffn_gate_inp"),
            ("mlp.shared_expert.gate_proj", "ffn_gate_shexp"),
            ("mlp.shared_expert.up_proj", "ffn_up_shexp"),
            ("mlp.shared_expert.down_proj", "ffn_down_shexp"),
            ("mlp.shared_expert_gate", "ffn_gate_inp_shexp"),
        ],
        renormalize: Some(false),
        count_key: "num_experts",
        stored_stacked: false,
    }),
    ..TEXT
};
