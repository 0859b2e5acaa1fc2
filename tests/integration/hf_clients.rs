//! The real client: transformers (`AutoModelForCausalLM.from_pretrained` on CPU, with the
//! compressed-tensors package for our compressed-tensors layouts, optimum + GPTQModel for the
//! AutoGPTQ layout and GPTQModel for the AutoAWQ layout) loads every safetensors layout we
//! write, for a model with its own output head and one with tied embeddings, and its forward
//! pass gives the logits of ours (qs-model, what `quantize eval` runs on the dequantized
//! weights) on the same tokens and chunks.

use crate::util::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// What transformers must do with a layout.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Load it and agree with our logits within `logit` (largest |difference|) and `logprob`
    /// (largest difference of a next-token log-probability); perplexities within `ppl`
    /// (relative).
    Same { logit: f64, logprob: f64, ppl: f64 },
    /// compressed-tensors 0.20 (under transformers 5.23) builds the empty model's asymmetric
    /// pack-quantized zero points unpacked, `[rows, groups]`, while its own compressor writes
    /// (and its decompressor reads) them packed along the rows, `[rows·bits/32, groups]`, as we
    /// do: loading stops on the size mismatch.
    ZeroPointsRefused { bits: usize },
    /// compressed-tensors' float-quantized 8-bit type is E4M3 only (there is no field for
    /// E5M2): transformers loads an E5M2 checkpoint without complaint and computes something
    /// else.
    ReadAsE4m3,
}

/// Our weights, dequantized exactly in f32, against transformers' in f32: only summation order
/// differs (measured: |Δlogit| ≤ 7e-5 on logits of spread ~1.2).
const CT: Expect = Expect::Same {
    logit: 1e-3,
    logprob: 1e-3,
    ppl: 1e-4,
};
/// GPTQModel's CPU kernel (TorchAtenLinear) dequantizes in the scales' f16: its weights are ours
/// rounded to f16 (checked: identical after that rounding), which moves logits by up to ~1.5e-2.
const GPTQ: Expect = Expect::Same {
    logit: 5e-2,
    logprob: 2e-2,
    ppl: 2e-3,
};

/// GPTQModel's CPU kernel for the AWQ layout (TorchAtenAwqLinear, which transformers 5.23 loads
/// AWQ checkpoints with) also dequantizes in f16 (measured: |Δlogit| ≤ 1.1e-2).
const AWQ: Expect = GPTQ;

/// Runs tests/oracle/hf_logits.py (`cmd`, its arguments given) offline: its one JSON line.
fn hf_logits(cmd: &mut Command) -> Vec<Value> {
    let o = cmd
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "hf_logits.py printed no JSON:\n{stdout}\n{}",
                String::from_utf8_lossy(&o.stderr)
            )
        })
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max)
}

#[test]
fn transformers_loads_every_safetensors_layout_with_our_logits() {
    let d = tempfile::tempdir().unwrap();
    let text = d.path().join("text.txt");
    std::fs::write(
        &text,
        "It is for us the living, rather, to be dedicated here to the unfinished work which they \
         who fought here have thus far so nobly advanced. The world will little note, nor long \
         remember what we say here, but it can never forget what they did here. Four score and \
         seven years ago our fathers brought forth on this continent a new nation, conceived in \
         liberty, and dedicated to the proposition that all men are created equal. Now we are \
         engaged in a great civil war, testing whether that nation, or any nation so conceived \
         and so dedicated, can long endure.",
    )
    .unwrap();
    let (ctx, chunks) = ("32", "3");
    let untied = fixture();
    let tied = d.path().join("tied");
    tied_fixture(&tied);
    let cases: &[(&str, &[&str], Expect, bool)] = &[
        ("ct-int4-g64", &["--to", "int4", "--group", "64"], CT, true),
        ("ct-int8-channel", &["--to", "int8"], CT, true),
        (
            "ct-int8-tensor-asym",
            &["--to", "int8", "--granularity", "tensor", "--asym"],
            CT,
            true,
        ),
        // two config groups, one linear kept in bf16
        (
            "ct-mixed",
            &[
                "--to",
                "int4",
                "--tensor-type",
                "down_proj=int8",
                "--tensor-type",
                "o_proj=keep",
            ],
            CT,
            true,
        ),
        ("ct-fp8-channel", &["--to", "fp8"], CT, true),
        (
            "ct-fp8-block",
            &["--to", "fp8", "--granularity", "block"],
            CT,
            true,
        ),
        (
            "gptq-int4-g64",
            &["--to", "int4", "--group", "64", "--format", "gptq"],
            GPTQ,
            true,
        ),
        // a block linear left unquantized: modules_in_block_to_quantize
        (
            "gptq-o-kept",
            &[
                "--to",
                "int4",
                "--group",
                "64",
                "--format",
                "gptq",
                "--tensor-type",
                "o_proj=keep",
            ],
            GPTQ,
            true,
        ),
        (
            "awq-int4-g32",
            &["--to", "int4", "--group", "32", "--format", "awq"],
            AWQ,
            true,
        ),
        // a block linear left unquantized: modules_to_not_convert
        (
            "awq-o-kept",
            &[
                "--to",
                "int4",
                "--format",
                "awq",
                "--tensor-type",
                "o_proj=keep",
            ],
            AWQ,
            true,
        ),
        // AWQ's scales with a linear of a scaled group kept in float: v_proj is re-encoded
        // with its rows divided by o_proj's column scales (it was refused once: 'transform
        // reached a copied tensor'); the model calibrates on its own text
        (
            "awq-method-v-kept",
            &[
                "--to",
                "int4",
                "--group",
                "32",
                "--format",
                "awq",
                "--method",
                "awq",
                "--awq-tokens",
                "256",
                "--calib-samples",
                "4",
                "--calib-seq-len",
                "64",
                "--tensor-type",
                "v_proj=keep",
            ],
            AWQ,
            true,
        ),
        // learned rounding's codes, in compressed-tensors and in the AutoGPTQ layout
        (
            "ct-signround-int4-g64",
            &[
                "--to",
                "int4",
                "--group",
                "64",
                "--method",
                "signround",
                "--iters",
                "10",
                "--calib-samples",
                "4",
                "--calib-seq-len",
                "64",
            ],
            CT,
            true,
        ),
        (
            "gptq-signround-int4-g64",
            &[
                "--to",
                "int4",
                "--group",
                "64",
                "--format",
                "gptq",
                "--method",
                "signround",
                "--iters",
                "10",
                "--calib-samples",
                "4",
                "--calib-seq-len",
                "64",
            ],
            GPTQ,
            true,
        ),
        (
            "ct-int4-g128-asym",
            &["--to", "int4", "--group", "128", "--asym"],
            Expect::ZeroPointsRefused { bits: 4 },
            false,
        ),
        (
            "ct-int8-channel-asym",
            &["--to", "int8", "--asym"],
            Expect::ZeroPointsRefused { bits: 8 },
            false,
        ),
        (
            "ct-fp8-e5m2",
            &["--to", "fp8-e5m2"],
            Expect::ReadAsE4m3,
            false,
        ),
    ];
    // our logits of the float models, to show each layout's comparison can tell it from them
    let eval = |model: &Path, stem: &str| {
        let (npy, json) = (
            d.path().join(format!("{stem}.npy")),
            d.path().join(format!("{stem}.json")),
        );
        quantize(&[
            "eval".as_ref(),
            model.as_os_str(),
            "--text".as_ref(),
            text.as_os_str(),
            "--ctx".as_ref(),
            ctx.as_ref(),
            "--chunks".as_ref(),
            chunks.as_ref(),
            "--logits".as_ref(),
            npy.as_os_str(),
            "--json".as_ref(),
            json.as_os_str(),
            "-q".as_ref(),
        ])
        .ok();
        (npy, read_json(&json))
    };
    let float_logits = [
        read_npy(&eval(&untied, "float-untied").0).1,
        read_npy(&eval(&tied, "float-tied").0).1,
    ];
    struct Run {
        name: String,
        expect: Expect,
        tied: bool,
        npy: std::path::PathBuf,
        ours: Value,
    }
    let mut runs = Vec::new();
    for (name, args, expect, both) in cases {
        for (tied_model, model) in [(false, &untied), (true, &tied)] {
            if tied_model && !both {
                continue;
            }
            let name = format!("{name}{}", if tied_model { "-tied" } else { "" });
            let out = d.path().join(&name);
            let mut a: Vec<&OsStr> = vec![model.as_os_str()];
            a.extend(args.iter().map(OsStr::new));
            a.extend(["-o".as_ref(), out.as_os_str(), "-q".as_ref()]);
            quantize(&a).ok();
            let (npy, ours) = eval(&out, &name);
            runs.push(Run {
                name,
                expect: *expect,
                tied: tied_model,
                npy,
                ours,
            });
        }
    }
    // one transformers process for all of them (importing torch is the slow part)
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/hf_logits.py");
    let mut cmd = Command::new(convert_python());
    cmd.arg(&script).arg(&text).args([ctx, chunks]);
    for r in &runs {
        cmd.arg(d.path().join(&r.name)).arg(&r.npy);
    }
    let results = hf_logits(&mut cmd);
    assert_eq!(results.len(), runs.len());
    // every disagreement, for every layout, then one failure listing them
    let mut bad: Vec<String> = Vec::new();
    macro_rules! check {
        ($cond:expr, $($msg:tt)*) => {
            let ok: bool = $cond;
            if !ok {
                bad.push(format!($($msg)*));
            }
        };
    }
    for (r, h) in runs.iter().zip(&results) {
        let n = &r.name;
        eprintln!("{n}: {h}");
        match r.expect {
            Expect::Same {
                logit,
                logprob,
                ppl,
            } => {
                if let Some(e) = h.get("error") {
                    bad.push(format!("{n}: transformers: {e}"));
                    continue;
                }
                for k in ["missing_keys", "unexpected_keys", "mismatched_keys"] {
                    check!(h[k] == serde_json::json!([]), "{n}: {k} {}", h[k]);
                }
                let classes = &h["classes"];
                check!(
                    classes["lm_head"] == "Linear",
                    "{n}: lm_head {}",
                    classes["lm_head"]
                );
                if n.starts_with("gptq") || n.starts_with("awq") {
                    // GPTQ / AWQ layers where we quantized, plain Linear where we did not
                    for (m, c) in classes.as_object().unwrap() {
                        let kept = m == "lm_head"
                            || (n.contains("o-kept") && m.ends_with("o_proj"))
                            || (n.contains("v-kept") && m.ends_with("v_proj"));
                        check!((c == "Linear") == kept, "{n}: {m} is a {c}");
                    }
                }
                let got = |k: &str| h[k].as_f64().unwrap();
                check!(
                    got("max_abs_logit_diff") <= logit,
                    "{n}: logits differ by {} (tolerance {logit})",
                    got("max_abs_logit_diff")
                );
                check!(
                    got("max_logprob_diff") <= logprob,
                    "{n}: next-token log-probabilities differ by {} (tolerance {logprob})",
                    got("max_logprob_diff")
                );
                let (pt, po) = (got("ppl_transformers"), got("ppl_ours"));
                check!(
                    (pt / po - 1.0).abs() <= ppl,
                    "{n}: perplexity {pt} vs ours {po}"
                );
                // the logits written are the ones eval scored
                let pe = r.ours["ppl"].as_f64().unwrap();
                check!(
                    (po / pe - 1.0).abs() < 1e-9,
                    "{n}: {po} from .npy, {pe} in eval"
                );
                // and the tolerance is far below what quantizing did to the float model's
                let (shape, q) = read_npy(&r.npy);
                assert_eq!(shape, vec![3 * 15, 512], "{n}");
                let moved = max_abs_diff(&q, &float_logits[usize::from(r.tied)]);
                check!(
                    moved > 10.0 * logit,
                    "{n}: quantizing moved logits by {moved} only"
                );
            }
            Expect::ZeroPointsRefused { bits } => {
                let Some(e) = h["error"].as_str() else {
                    bad.push(format!("{n}: transformers now loads asymmetric pack-quantized checkpoints (compare them like the others): {h}"));
                    continue;
                };
                check!(
                    e.starts_with("RuntimeError: You set `ignore_mismatched_sizes` to `False`"),
                    "{n}: {e}"
                );
                let mism = h["mismatched"].as_array().cloned().unwrap_or_default();
                check!(
                    mism.len() == 14,
                    "{n}: not every linear's zero point: {mism:?}"
                );
                for m in &mism {
                    let k = m[0].as_str().unwrap_or("");
                    let (ckpt, model) = (&m[1], &m[2]);
                    let rows = model[0].as_u64().unwrap_or(0) as usize;
                    check!(
                        k.ends_with(".weight_zero_point")
                            && ckpt[0].as_u64() == Some((rows * bits).div_ceil(32) as u64)
                            && ckpt[1] == model[1],
                        "{n}: {k}: checkpoint {ckpt}, model {model}"
                    );
                }
            }
            Expect::ReadAsE4m3 => {
                if let Some(e) = h.get("error") {
                    bad.push(format!("{n}: transformers: {e}"));
                    continue;
                }
                let lp = h["max_logprob_diff"].as_f64().unwrap();
                let top1 = h["top1_agreement"].as_f64().unwrap();
                check!(
                    lp > 1.0 && top1 < 0.5,
                    "{n}: transformers now reads E5M2 weights (Δlogprob {lp}, top-1 {top1}): compare it like fp8"
                );
            }
        }
    }
    assert!(
        bad.is_empty(),
        "transformers and our forward pass disagree:\n{}",
        bad.join("\n")
    );
}

/// Mixtures of experts (Mixtral; Qwen2-MoE with its shared expert and its gate; Qwen3-MoE;
/// DeepSeek-V3 with latent attention, a dense first layer and grouped routing) in
/// compressed-tensors int4: transformers loads every expert's packed weights (nothing missing or
/// unexpected but DeepSeek's multi-token-prediction layer; routers and the shared-expert gate
/// kept in float by the ignore list). transformers
/// 5.23 decompresses the experts into its fused `gate_up_proj` / `down_proj` in the scales'
/// dtype (bf16): they are exactly our dequantized weights rounded to bf16
/// (tests/oracle/hf_experts.py), and its logits follow ours within what that rounding moves
/// (measured ≤ 0.13 on logits of spread ~1.1), far closer than the float model's.
#[test]
fn transformers_loads_mixtures_of_experts_with_our_logits() {
    let d = tempfile::tempdir().unwrap();
    let text = d.path().join("text.txt");
    std::fs::write(&text, "Four score and seven years ago our fathers brought forth on this continent a new nation, conceived in liberty, and dedicated to the proposition that all men are created equal.".repeat(3)).unwrap();
    let (ctx, chunks) = ("32", "2");
    let mut cmd = Command::new(convert_python());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/hf_logits.py");
    cmd.arg(&script).arg(&text).args([ctx, chunks]);
    let logits = |model: &Path, npy: &Path| {
        quantize(&[
            "eval".as_ref(),
            model.as_os_str(),
            "--text".as_ref(),
            text.as_os_str(),
            "--ctx".as_ref(),
            ctx.as_ref(),
            "--chunks".as_ref(),
            chunks.as_ref(),
            "--logits".as_ref(),
            npy.as_os_str(),
            "-q".as_ref(),
        ])
        .ok();
        read_npy(npy).1
    };
    let types = ["mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3"];
    let mut apart = Vec::new();
    for mt in types {
        let m = d.path().join(mt);
        crate::llama::synthetic_model(&m, mt, crate::llama::family_layers(mt), 256, 512, 4, 2);
        let out = d.path().join(format!("{mt}-int4"));
        quantize(&[
            m.as_os_str(),
            "--to".as_ref(),
            "int4".as_ref(),
            "--group".as_ref(),
            "64".as_ref(),
            "-o".as_ref(),
            out.as_os_str(),
            "-q".as_ref(),
        ])
        .ok();
        let npy = d.path().join(format!("{mt}.npy"));
        let ours = logits(&out, &npy);
        let fnpy = d.path().join(format!("{mt}-float.npy"));
        let float = logits(&m, &fnpy);
        apart.push(max_abs_diff(&ours, &float));
        cmd.arg(&out).arg(&npy).arg(&m).arg(&fnpy);
        // the experts transformers computes with, against ours
        let deq = d.path().join(format!("{mt}-deq.safetensors"));
        quantize(&[
            out.as_os_str(),
            "--to".as_ref(),
            "f32".as_ref(),
            "-o".as_ref(),
            deq.as_os_str(),
            "-q".as_ref(),
        ])
        .ok();
        let (_, names, _) = crate::llama::moe_layout(mt).unwrap();
        let o = Command::new(convert_python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/hf_experts.py"))
            .arg(&out)
            .arg(&deq)
            .args(names)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&o.stdout);
        let e: Value =
            serde_json::from_str(line.lines().last().unwrap_or("")).unwrap_or_else(|_| {
                panic!(
                    "{mt}: hf_experts.py: {line}\n{}",
                    String::from_utf8_lossy(&o.stderr)
                )
            });
        eprintln!("{mt} experts: {e}");
        assert_eq!(e["max_diff_rounded"], 0.0, "{mt}: {e}");
        let experts = crate::llama::moe_layout(mt).unwrap().0;
        assert_eq!(e["matrices"], (2 * 2 * experts) as u64, "{mt}: {e}");
    }
    let results = hf_logits(&mut cmd);
    for ((mt, h), apart) in types.iter().zip(results.chunks(2)).zip(&apart) {
        let (h, hf) = (&h[0], &h[1]);
        eprintln!("{mt}: {h} (float vs int4: {apart:.3}); float model: {hf}");
        assert!(h.get("error").is_none(), "{mt}: {h}");
        // (DeepSeek-V3's multi-token-prediction layer, after the decoder's, is one transformers
        // does not build: its keys are the only unexpected ones)
        let mtp = |k: &Value| {
            let after = format!("model.layers.{}.", crate::llama::family_layers(mt));
            *mt == "deepseek_v3" && k.as_str().is_some_and(|k| k.starts_with(&after))
        };
        for k in ["missing_keys", "unexpected_keys", "mismatched_keys"] {
            for (x, what) in [(h, "int4"), (hf, "float")] {
                let left: Vec<&Value> = x[k]
                    .as_array()
                    .map(|a| a.iter().filter(|v| !mtp(v)).collect())
                    .unwrap_or_default();
                assert!(
                    left.is_empty() && x[k].is_array(),
                    "{mt} ({what}): {k}: {}",
                    x[k]
                );
            }
        }
        let diff = h["max_abs_logit_diff"].as_f64().unwrap();
        assert!(
            diff < 0.25 && *apart > 20.0 * diff,
            "{mt}: {diff} (apart {apart})"
        );
        assert!(h["top1_agreement"].as_f64().unwrap() >= 0.9, "{mt}: {h}");
        // and the float model, through the same comparison, agrees as closely as f32 allows
        assert!(
            hf["max_abs_logit_diff"].as_f64().unwrap() < 1e-3,
            "{mt}: {hf}"
        );
    }
}
