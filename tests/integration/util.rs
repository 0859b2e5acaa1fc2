use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-llama")
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "quantize failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

pub fn quantize<S: AsRef<OsStr>>(args: &[S]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_quantize"))
        .args(args)
        .output()
        .expect("run quantize");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An oracle installed by `.ci/run`: `$ENV` if set, else `rel` under the cache
/// ($QS_CACHE, else ~/.cache/quantsmith).
fn oracle_path(env: &str, rel: &str) -> PathBuf {
    let p = match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            std::env::var_os("QS_CACHE")
                .map(PathBuf::from)
                .unwrap_or(home.join(".cache/quantsmith"))
                .join(rel)
        }
    };
    assert!(
        p.exists(),
        "oracle not found at {} — run `bash .ci/run` once (it installs the oracles) or set {env}",
        p.display()
    );
    p
}

/// The Python with the oracles (`gguf`, `numpy`, `ml_dtypes`, `tokenizers`).
pub fn python() -> PathBuf {
    oracle_path("QS_PYTHON", "venv/bin/python")
}

/// Runs `tests/oracle/NAME` with the oracle Python; panics with its standard error unless it
/// succeeds. Returns the JSON it prints last.
pub fn oracle_json(name: &str, args: &[&OsStr]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/oracle")
        .join(name);
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("run python oracle");
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|_| panic!("{name} printed no JSON:\n{stdout}"))
}

/// Runs the oracle script; panics with its message unless it prints `"ok": true`.
pub fn oracle(args: &[&OsStr]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle/gguf_oracle.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("run python oracle");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "oracle printed no JSON:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["ok"], true, "oracle: {}", v["error"]);
    v
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| qs_numeric::dtype::f32_to_bf16_bits(*x).to_le_bytes())
        .collect()
}

/// Writes a safetensors file with the reference `safetensors` crate (independent of our writer).
pub fn write_st(path: &Path, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("write safetensors");
}

/// Files in a directory (names), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A binary built from llama.cpp's sources by `.ci/run` (llama-quantize, llama-logits).
pub fn llama_bin(name: &str) -> PathBuf {
    oracle_path("QS_LLAMA_BIN", "llama.cpp/bin").join(name)
}

/// ggml's own quantizer (tests/oracle/ggml_quant.c linked against ggml built from llama.cpp's
/// sources by `.ci/run`).
pub fn ggml_quant() -> PathBuf {
    oracle_path("QS_GGML_QUANT", "llama.cpp/ggml-quant")
}

/// llama.cpp's sources as `.ci/run` unpacked them (its `convert_hf_to_gguf.py` and gguf-py).
pub fn llama_src() -> PathBuf {
    oracle_path("QS_LLAMA_SRC", "llama.cpp/src")
}

/// The Python with torch, transformers and sentencepiece that llama.cpp's converter needs.
pub fn convert_python() -> PathBuf {
    oracle_path("QS_CONVERT_PYTHON", "venv-convert/bin/python")
}

/// A copy of the fixture folder in `dir` without the tensor `drop` (side files copied).
pub fn fixture_without(dir: &Path, drop: &str) {
    let fx = fixture();
    std::fs::create_dir_all(dir).unwrap();
    for f in listing(&fx) {
        if f != "model.safetensors" {
            std::fs::copy(fx.join(&f), dir.join(&f)).unwrap();
        }
    }
    let buf = std::fs::read(fx.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != drop)
        .collect();
    assert_eq!(kept.len() + 1, st.len(), "{drop} is in the fixture");
    let md = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(kept, Some(md), &dir.join("model.safetensors")).unwrap();
}

/// The fixture with tied embeddings: no `lm_head.weight`, `tie_word_embeddings: true` (the
/// output head is the embedding table, as in Qwen2.5-0.5B or Llama 3.2 1B).
pub fn tied_fixture(dir: &Path) {
    fixture_without(dir, "lm_head.weight");
    let mut cfg = read_json(&dir.join("config.json"));
    cfg["tie_word_embeddings"] = serde_json::json!(true);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
}

/// Runs `quantize ARGS` and checks the failure contract (issue 9): a non-zero exit that is not
/// a panic, within 30 s, one short `error:` line holding every `must`; `out` must not exist afterwards and
/// its folder must hold no temporary. Returns the message.
#[track_caller]
pub fn fails<S: AsRef<OsStr> + std::fmt::Debug>(
    args: &[S],
    out: Option<&Path>,
    must: &[&str],
) -> String {
    let t = Instant::now();
    let r = quantize(args);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "took {:?}: {args:?}",
        t.elapsed()
    );
    assert!(
        r.code != 0 && r.code != 101,
        "expected a clean failure, got exit {}: {args:?}\nstdout: {}\nstderr: {}",
        r.code,
        r.stdout,
        r.stderr
    );
    let msg = r.stderr.trim();
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    assert!(msg.starts_with("error: "), "{msg}");
    assert!(msg.len() < 600, "short: {msg}");
    for m in must {
        assert!(msg.contains(m), "'{m}' missing from: {msg}");
    }
    if let Some(out) = out {
        assert!(!out.exists(), "nothing at {}", out.display());
        if let Some(dir) = out.parent() {
            let left: Vec<String> = listing(dir)
                .into_iter()
                .filter(|f| f.contains("qs-partial"))
                .collect();
            assert!(left.is_empty(), "temporaries left: {left:?}");
        }
    }
    msg.to_string()
}

/// A copy of the fixture folder in `dir`.
pub fn fixture_copy(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for f in listing(&fixture()) {
        std::fs::copy(fixture().join(&f), dir.join(&f)).unwrap();
    }
}

/// A short English text none of the fixtures' calibration sees.
pub const HELD_OUT_TEXT: &str = "The quick brown fox jumps over the lazy dog while seven brave \
    men, living and dead, remember the proposition that a new nation was conceived in liberty. \
    We cannot hallow this ground, but the world will note what they did here, and the people \
    shall not perish from the earth. Government of the people endures.";

/// `quantize eval MODEL --against ORIGINAL` on `text` in 16-token windows: the mean KL
/// divergence of MODEL's next-token distributions from ORIGINAL's.
/// `quantize verify ORIGINAL QUANTIZED -q` succeeds: every tensor dequantizes.
pub fn verifies(original: &Path, quantized: &Path) {
    quantize(&[
        "verify".as_ref(),
        original.as_os_str(),
        quantized.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
}

pub fn kld_against(model: &Path, original: &Path, text: &Path) -> f64 {
    let j = model.with_extension("eval.json");
    quantize(&[
        "eval".as_ref(),
        model.as_os_str(),
        "--against".as_ref(),
        original.as_os_str(),
        "--text".as_ref(),
        text.as_os_str(),
        "--ctx".as_ref(),
        "16".as_ref(),
        "--json".as_ref(),
        j.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    read_json(&j)["kld_mean"].as_f64().unwrap()
}

/// A float32 .npy (C order): shape and values.
pub fn read_npy(p: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(p).unwrap();
    assert_eq!(&b[..8], b"\x93NUMPY\x01\x00", "{}", p.display());
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap()
        .split(',')
        .filter_map(|d| d.trim().parse().ok())
        .collect();
    let v = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, v)
}
