//! Mixtral, which llama.cpp runs as its "llama" architecture with experts: Llama's attention
//! (q/k rows permuted), and in every layer a softmax router over experts (`w1` gate, `w2` down,
//! `w3` up) whose chosen weights are renormalised.

use super::{Arch, HeadDim, ModelType, Moe};

pub const ARCH: Arch = Arch {
    model_types: &[ModelType {
        name: "mixtral",
        max_position_embeddings: 131072,
        head_dim: HeadDim::Absent,
    }],
    hf_class: "MixtralForCausalLM",
    moe: Some(Moe {
        experts: "block_sparse_moe.experts",
        projs: &[
            ("w1", "ffn_gate_exps"),
            ("w2", "ffn_down_exps"),
            ("w3", "ffn_up_exps"),
        ],
        modules: &[("block_sparse_moe.gate", "ffn_gate_inp")],
        renormalize: Some(true),
        count_key: "num_local_experts",
        stored_stacked: false,
    }),
    // llama.cpp sizes a llama model with experts by its expert count, never as the 70B
    layers_70b: None,
    ..super::llama::ARCH
};
