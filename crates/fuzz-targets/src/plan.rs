//! The whole plan of a fuzzed Hugging Face folder: what `quantize --dry-run` runs
//! (`quantsmith::quantize` with `dry_run`: open, generated tensors, every option check, the
//! plan), then the metadata a real run derives from the plan (GGUF keys with hyper-parameters
//! and tokenizer, or the compressed-tensors / GPTQ configs); with one option bit, the real run
//! itself into the scratch folder.
//!
//! Input: one option byte, then files joined by `crate::SEP`: config.json,
//! tokenizer.json, model.safetensors, tokenizer_config.json, tokenizer.model (an empty part:
//! that file is absent). Option byte: bits 0–3 the target (`TARGETS`), bit 4 `--keep-names`,
//! bit 5 a real run, bit 6 `--pure` (GGUF) / `--group 32` (integers), bit 7 a float target
//! written as GGUF instead of safetensors.

use crate::{split_files, Scratch};
use qs_formats::source::ModelSource;
use quantsmith::config::{OutputKind, Target};
use quantsmith::{meta, plan, NoProgress, QuantizeConfig};

const TARGETS: [&str; 16] = [
    "f16", "bf16", "f32", "q4_0", "q4_k_m", "q8_0", "q6_k", "iq4_xs", "q2_k", "q5_1", "q3_k_s",
    "iq4_nl", "int4", "int8", "fp8", "fp8-e5m2",
];

const FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "model.safetensors",
    "tokenizer_config.json",
    "tokenizer.model",
];

/// One fuzz input (any bytes): returns normally or panics on a finding.
pub fn run(data: &[u8]) {
    let Some((&opt, rest)) = data.split_first() else {
        return;
    };
    let scratch = Scratch::new();
    let model = scratch.path().join("model");
    std::fs::create_dir(&model).expect("scratch model folder");
    for (name, bytes) in FILES.iter().zip(split_files(rest, FILES.len())) {
        if !bytes.is_empty() {
            std::fs::write(model.join(name), bytes).expect("scratch file");
        }
    }
    let (target, mixture) =
        Target::parse_main(TARGETS[(opt & 15) as usize]).expect("the table's targets parse");
    let gguf =
        matches!(target, Target::Ggml(_)) || (matches!(target, Target::Float(_)) && opt & 128 != 0);
    let mut cfg = QuantizeConfig::new(&model, target);
    cfg.mixture = mixture;
    cfg.output = Some(scratch.path().join(if gguf { "out.gguf" } else { "out" }));
    cfg.threads = Some(1);
    cfg.keep_names = opt & 16 != 0;
    cfg.dry_run = opt & 32 == 0;
    if opt & 64 != 0 {
        match target {
            Target::Int(_) => cfg.group = Some(32),
            _ => cfg.pure = true,
        }
    }
    let _ = quantsmith::quantize(&cfg, &NoProgress);
    if !cfg.dry_run {
        return;
    }
    // what a real run derives from the plan before writing
    let Ok(mut src) = ModelSource::open(&model) else {
        return;
    };
    if plan::prepare_conversion(&mut src, &cfg).is_err() {
        return;
    }
    let Ok(p) = plan::make_plan(&src, &cfg, None) else {
        return;
    };
    let _ = p.rows();
    match p.kind {
        OutputKind::Gguf => {
            let _ = meta::gguf_metadata(&src, &p, &cfg);
        }
        _ => {
            let _ = meta::quantization_config(&p);
            let _ = meta::gptq_config(&p);
        }
    }
}
