//! llama.cpp itself as the oracle: it loads what we write, its logits match an independent
//! numpy forward pass of the original HF weights, its tokenizer agrees with Hugging Face's, and
//! its own quantizer produces the same tensor bytes as ours.

use crate::util::*;
use std::path::Path;
use std::process::Command;

const IDS: &[&str] = &[
    "5", "100", "200", "300", "17", "42", "511", "0", "256", "7", "64", "128",
];

fn read_f32(p: &Path) -> Vec<f32> {
    std::fs::read(p)
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn llama_logits(model: &Path, out: &Path) -> Vec<f32> {
    let o = Command::new(llama_bin("llama-logits"))
        .arg(model)
        .arg(out)
        .args(IDS)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "llama.cpp failed on {}: {}",
        model.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    read_f32(out)
}

fn reference_logits(dir: &Path, out: &Path) -> Vec<f32> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/ref_forward.py");
    let o = Command::new(python())
        .arg(script)
        .arg(dir)
        .arg(out)
        .args(IDS)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "reference forward failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    read_f32(out)
}

fn argmaxes(l: &[f32], nv: usize) -> Vec<usize> {
    l.chunks(nv)
        .map(|r| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        ab += *x as f64 * *y as f64;
        aa += *x as f64 * *x as f64;
        bb += *y as f64 * *y as f64;
    }
    ab / (aa * bb).sqrt()
}

#[test]
fn llama_cpp_runs_our_gguf_with_reference_logits() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let reference = reference_logits(&fx, &d.path().join("ref.f32"));
    let nv = 512;
    assert_eq!(reference.len(), IDS.len() * nv);
    // (target, max |Δlogit| allowed, min cosine): the float conversions differ from the f64
    // reference only by llama.cpp's arithmetic (f32, f16 KV cache; bf16 matmuls for bf16).
    // Quantized files are compared with llama-quantize's below: same bytes, same logits.
    for (t, max_abs, min_cos) in [
        ("f32", 0.02, 0.99999),
        ("bf16", 0.1, 0.9999),
        ("f16", 0.1, 0.9999),
    ] {
        let g = d.path().join(format!("{t}.gguf"));
        quantize(&[
            fx.as_os_str(),
            "--to".as_ref(),
            t.as_ref(),
            "-o".as_ref(),
            g.as_os_str(),
            "-q".as_ref(),
        ])
        .ok();
        let ours = llama_logits(&g, &d.path().join(format!("{t}.f32")));
        let worst = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let cos = cosine(&ours, &reference);
        eprintln!("{t}: max |Δlogit| {worst:.4}, cosine {cos:.6}");
        assert!(
            worst < max_abs,
            "{t}: llama.cpp logits differ from the reference by {worst}"
        );
        assert!(cos > min_cos, "{t}: cosine {cos}");
        if t == "f32" {
            assert_eq!(
                argmaxes(&ours, nv),
                argmaxes(&reference, nv),
                "top-1 at every position"
            );
        }
    }
}

/// llama-quantize --pure from our F32 GGUF gives, tensor for tensor, the bytes we write
/// directly from the bf16 safetensors (bf16 → f32 is exact, so the inputs are the same).
#[test]
fn our_tensors_equal_llama_quantize_output() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let f32g = d.path().join("f32.gguf");
    quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "f32".as_ref(),
        "-o".as_ref(),
        f32g.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    for t in [
        "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
    ] {
        let theirs = d.path().join(format!("ref-{t}.gguf"));
        let o = Command::new(llama_bin("llama-quantize"))
            .arg("--pure")
            .arg(&f32g)
            .arg(&theirs)
            .arg(t)
            .arg("1")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "llama-quantize {t}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let ours = d.path().join(format!("ours-{t}.gguf"));
        // --pure quantizes every 2-D weight, embeddings and output included
        quantize(&[
            fx.as_os_str(),
            "--to".as_ref(),
            t.to_lowercase().as_ref(),
            "--include".as_ref(),
            "embed_tokens|lm_head".as_ref(),
            "-o".as_ref(),
            ours.as_os_str(),
            "-q".as_ref(),
        ])
        .ok();
        let (a, b) = (
            qs_formats::gguf::GgufFile::open(&ours).unwrap(),
            qs_formats::gguf::GgufFile::open(&theirs).unwrap(),
        );
        assert_eq!(a.tensors.len(), b.tensors.len());
        for ta in &a.tensors {
            let tb = b
                .tensors
                .iter()
                .find(|x| x.name == ta.name)
                .unwrap_or_else(|| panic!("{t}: {} missing in llama-quantize output", ta.name));
            assert_eq!((ta.ty, &ta.ne), (tb.ty, &tb.ne), "{t}: {}", ta.name);
            assert!(
                a.bytes(ta) == b.bytes(tb),
                "{t}: tensor {} bytes differ from llama-quantize",
                ta.name
            );
        }
        for k in [
            "llama.block_count",
            "llama.attention.head_count_kv",
            "llama.rope.freq_base",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.bos_token_id",
        ] {
            assert_eq!(a.get(k), b.get(k), "{t}: {k}");
        }
    }
}

/// llama.cpp's tokenizer on our GGUF metadata gives the ids Hugging Face's `tokenizers` gives
/// from tokenizer.json.
#[test]
fn llama_cpp_tokenizes_like_hugging_face() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let g = d.path().join("m.gguf");
    quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "q8_0".as_ref(),
        "-o".as_ref(),
        g.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    for text in [
        "Four score and seven years ago, our fathers brought forth",
        "  the people, by the people -- 1863!\nNew nation <|im_end|>",
        "Ünïcödé ✓ tabs\tand  spaces",
    ] {
        let o = Command::new(llama_bin("llama-logits"))
            .arg(&g)
            .arg(d.path().join("x.f32"))
            .arg("--text")
            .arg(text)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ours = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let py = format!(
            "import tokenizers,sys; t=tokenizers.Tokenizer.from_file(sys.argv[1]); print(' '.join(map(str, t.encode(sys.argv[2], add_special_tokens=False).ids)))"
        );
        let h = Command::new(python())
            .arg("-c")
            .arg(py)
            .arg(fx.join("tokenizer.json"))
            .arg(text)
            .output()
            .unwrap();
        assert!(h.status.success(), "{}", String::from_utf8_lossy(&h.stderr));
        assert_eq!(
            ours,
            String::from_utf8_lossy(&h.stdout).trim(),
            "text {text:?}"
        );
    }
}
