//! Bad input: each case fails with one clear line naming the file (and tensor), a non-zero
//! exit code, and nothing at the output path.

use crate::util::*;
use safetensors::Dtype;
use std::path::Path;

fn raw_file(header: &str, data_len: usize) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data_len));
    v
}

/// Runs `quantize INPUT --to q4_0 -o DIR/out.gguf` and checks the failure contract.
#[track_caller]
fn expect_failure(dir: &Path, input: &Path, extra: &[&str], must_contain: &[&str]) -> String {
    let out = dir.join("out.gguf");
    let mut args: Vec<String> = vec![
        input.display().to_string(),
        "--to".into(),
        "q4_0".into(),
        "-o".into(),
        out.display().to_string(),
        // bare tensors: a llama.cpp conversion would refuse them for want of config.json
        "--keep-names".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    fails(&args, Some(&out), must_contain)
}

#[test]
fn malformed_safetensors_headers() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.safetensors");
    let cases: Vec<(Vec<u8>, Vec<&str>)> = vec![
        (vec![1, 2, 3], vec!["bad.safetensors", "truncated"]),
        (
            {
                let mut v = 5000u64.to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            },
            vec!["bad.safetensors", "header length 5000 runs past the end"],
        ),
        (
            raw_file(
                r#"{"a.weight":{"dtype":"F32","shape":[4,32],"data_offsets":[0,512]},"b.weight":{"dtype":"F32","shape":[2,32],"data_offsets":[256,512]}}"#,
                512,
            ),
            vec!["'b.weight'", "overlaps"],
        ),
        (
            raw_file(
                r#"{"a.weight":{"dtype":"F32","shape":[4,32],"data_offsets":[0,512]}}"#,
                100,
            ),
            vec!["'a.weight'", "run past the data section"],
        ),
        (
            raw_file(
                r#"{"a.weight":{"dtype":"BF16","shape":[4,32],"data_offsets":[0,512]}}"#,
                512,
            ),
            vec!["'a.weight'", "needs 256 bytes"],
        ),
        (
            raw_file(
                r#"{"a.weight":{"dtype":"F32","shape":[1,32],"data_offsets":[0,128]},"a.weight":{"dtype":"F32","shape":[1,32],"data_offsets":[128,256]}}"#,
                256,
            ),
            vec!["'a.weight'", "twice"],
        ),
        (
            raw_file(
                r#"{"a.weight":{"dtype":"F4","shape":[2,32],"data_offsets":[0,32]}}"#,
                32,
            ),
            vec!["'a.weight'", "unknown or unsupported dtype 'F4'"],
        ),
        (
            raw_file(
                r#"{"a.weight":{"dtype":"F32","shape":[1,32],"data_offsets":[0,128]}"#,
                128,
            ),
            vec!["not valid JSON"],
        ),
    ];
    for (bytes, must) in cases {
        std::fs::write(&p, &bytes).unwrap();
        let mut m = must.clone();
        m.push("bad.safetensors");
        expect_failure(d.path(), &p, &[], &m);
    }
}

#[test]
fn truncated_data_section() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.safetensors");
    write_st(
        &p,
        &[(
            "x.weight",
            Dtype::BF16,
            vec![8, 64],
            bf16_bytes(&vec![0.5; 512]),
        )],
    );
    let full = std::fs::read(&p).unwrap();
    std::fs::write(&p, &full[..full.len() - 100]).unwrap();
    expect_failure(
        d.path(),
        &p,
        &[],
        &["m.safetensors", "'x.weight'", "truncated"],
    );
}

#[test]
fn index_pointing_at_a_missing_shard_or_lying_about_tensors() {
    let d = tempfile::tempdir().unwrap();
    let s1 = d.path().join("model-00001-of-00002.safetensors");
    write_st(
        &s1,
        &[(
            "a.weight",
            Dtype::F32,
            vec![2, 32],
            f32_bytes(&vec![0.1; 64]),
        )],
    );
    let idx = d.path().join("model.safetensors.index.json");
    std::fs::write(&idx, r#"{"metadata":{},"weight_map":{"a.weight":"model-00001-of-00002.safetensors","b.weight":"model-00002-of-00002.safetensors"}}"#).unwrap();
    let out = d.path().join("o");
    std::fs::create_dir(&out).unwrap();
    expect_failure(
        &out,
        d.path(),
        &[],
        &[
            "model.safetensors.index.json",
            "'b.weight'",
            "model-00002-of-00002.safetensors",
            "does not exist",
        ],
    );
    // shard has a tensor the index does not map
    write_st(
        &s1,
        &[
            (
                "a.weight",
                Dtype::F32,
                vec![2, 32],
                f32_bytes(&vec![0.1; 64]),
            ),
            (
                "c.weight",
                Dtype::F32,
                vec![2, 32],
                f32_bytes(&vec![0.1; 64]),
            ),
        ],
    );
    std::fs::write(
        &idx,
        r#"{"metadata":{},"weight_map":{"a.weight":"model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    expect_failure(
        &out,
        d.path(),
        &[],
        &[
            "model-00001-of-00002.safetensors",
            "'c.weight'",
            "missing from",
        ],
    );
    // index maps a tensor to a shard whose header lacks it
    std::fs::write(&idx, r#"{"metadata":{},"weight_map":{"a.weight":"model-00001-of-00002.safetensors","c.weight":"model-00001-of-00002.safetensors","z.weight":"model-00001-of-00002.safetensors"}}"#).unwrap();
    expect_failure(&out, d.path(), &[], &["'z.weight'", "does not have it"]);
    // the same tensor in two shards
    let s2 = d.path().join("model-00002-of-00002.safetensors");
    write_st(
        &s2,
        &[
            (
                "a.weight",
                Dtype::F32,
                vec![2, 32],
                f32_bytes(&vec![0.1; 64]),
            ),
            (
                "d.weight",
                Dtype::F32,
                vec![2, 32],
                f32_bytes(&vec![0.1; 64]),
            ),
        ],
    );
    std::fs::write(&idx, r#"{"metadata":{},"weight_map":{"a.weight":"model-00001-of-00002.safetensors","c.weight":"model-00001-of-00002.safetensors","d.weight":"model-00002-of-00002.safetensors"}}"#).unwrap();
    expect_failure(
        &out,
        d.path(),
        &[],
        &["'a.weight'", "model-00002-of-00002.safetensors"],
    );
}

#[test]
fn nan_and_inf_weights_are_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("m.safetensors");
    let mut v = vec![0.25f32; 4 * 64];
    v[64 + 5] = f32::NAN;
    write_st(
        &p,
        &[
            (
                "ok.weight",
                Dtype::F32,
                vec![4, 64],
                f32_bytes(&vec![0.1; 256]),
            ),
            ("bad.weight", Dtype::F32, vec![4, 64], f32_bytes(&v)),
        ],
    );
    expect_failure(
        d.path(),
        &p,
        &[],
        &[
            "m.safetensors",
            "'bad.weight'",
            "non-finite",
            "row 1, column 5",
        ],
    );
    v[64 + 5] = f32::INFINITY;
    write_st(&p, &[("norm", Dtype::F32, vec![256], f32_bytes(&v))]);
    expect_failure(d.path(), &p, &[], &["'norm'", "non-finite"]);
    // carried through a float copy when asked
    let out = d.path().join("c.safetensors");
    quantize(&[
        p.as_os_str(),
        "--to".as_ref(),
        "f32".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--allow-nonfinite".as_ref(),
        "-q".as_ref(),
    ])
    .ok();
    let buf = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    assert_eq!(
        &st.tensor("norm").unwrap().data()[(69) * 4..70 * 4],
        &f32::INFINITY.to_le_bytes()
    );
}

#[test]
fn existing_output_is_refused_unless_forced() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.gguf");
    std::fs::write(&out, b"precious").unwrap();
    let fx = fixture();
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "q4_0".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("already exists") && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "q4_0".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "--force".as_ref(),
        "-q".as_ref(),
    ])
    .ok();
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"GGUF");
    // folders too
    let od = d.path().join("folder");
    std::fs::create_dir(&od).unwrap();
    std::fs::write(od.join("keep.txt"), b"x").unwrap();
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "int8".as_ref(),
        "-o".as_ref(),
        od.as_os_str(),
    ]);
    assert_ne!(r.code, 0);
    assert!(od.join("keep.txt").exists());
}

#[test]
fn unwritable_output() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    // parent directory missing
    let out = d.path().join("no/such/dir/out.gguf");
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "q4_0".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("out.gguf"), "{}", r.stderr);
    assert!(!out.exists());
    // parent is a file
    let f = d.path().join("file");
    std::fs::write(&f, b"x").unwrap();
    let out = f.join("out.gguf");
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "q4_0".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("out.gguf"), "{}", r.stderr);
}

/// A full disk, simulated with a file-size limit (writes past it fail with EFBIG, as they
/// would with ENOSPC): clear error, partial file removed.
#[test]
fn full_disk_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out.gguf");
    let cmd = format!(
        "trap '' XFSZ; ulimit -f 200; exec '{}' '{}' --to q8_0 -o '{}'",
        env!("CARGO_BIN_EXE_quantize"),
        fixture().display(),
        out.display()
    );
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("out.gguf") && err.to_lowercase().contains("too large"),
        "{err}"
    );
    assert_eq!(listing(d.path()), Vec::<String>::new(), "no partial file");
}

#[test]
fn wrong_target_for_container_and_non_float_tensors() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "-o".as_ref(),
        d.path().join("x.gguf").as_os_str(),
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("compressed-tensors"), "{}", r.stderr);
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "q4_0".as_ref(),
        "-o".as_ref(),
        d.path().join("x").as_os_str(),
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains(".gguf"), "{}", r.stderr);
    let r = quantize(&[fx.as_os_str(), "--to".as_ref(), "q9_9".as_ref()]);
    assert_eq!(r.code, 2, "usage error");
    let p = d.path().join("m.safetensors");
    write_st(
        &p,
        &[
            ("ids", Dtype::I64, vec![4], vec![0; 32]),
            ("flag", Dtype::BOOL, vec![32], vec![1; 32]),
        ],
    );
    expect_failure(d.path(), &p, &[], &["'flag'", "BOOL", "GGUF"]);
}

/// Runs `quantize ARGS` (verify, eval) and checks the failure contract: non-zero exit, one
/// line starting with "error: " holding every `must_contain`, no panic.
#[track_caller]
fn expect_error(args: &[&std::ffi::OsStr], must_contain: &[&str]) {
    fails(args, None, must_contain);
}

/// fp8 (float-quantized) checkpoints whose scale is not what the weight needs — an integer
/// dtype, a shape that fits no layout, a shape that contradicts the declared strategy — are
/// refused by `verify` and `eval` with the file and tensor named (they used to panic or decode
/// garbage); a 0-d per-tensor scale, also on a one-row weight, is read.
#[test]
fn fp8_scales_that_do_not_fit_are_named_by_verify_and_eval() {
    use qs_numeric::fp8::E4M3;
    let d = tempfile::tempdir().unwrap();
    let dp = d.path();
    // weights that fp8 × 0.5 represents exactly
    let codes = |rows: usize| -> Vec<u8> { (0..rows * 32).map(|i| (i * 7 % 120) as u8).collect() };
    let values = |c: &[u8]| -> Vec<f32> { c.iter().map(|&c| E4M3.decode(c) * 0.5).collect() };
    let (c4, c1) = (codes(4), codes(1));
    let (orig4, orig1) = (dp.join("orig4.safetensors"), dp.join("orig1.safetensors"));
    write_st(
        &orig4,
        &[("w.weight", Dtype::F32, vec![4, 32], f32_bytes(&values(&c4)))],
    );
    write_st(
        &orig1,
        &[("w.weight", Dtype::F32, vec![1, 32], f32_bytes(&values(&c1)))],
    );
    let q = dp.join("q.safetensors");
    // (scale dtype, scale shape, scale bytes, what the error says)
    type Case<'a> = (Dtype, Vec<usize>, Vec<u8>, &'a [&'a str]);
    let cases: &[Case] = &[
        (
            Dtype::I32,
            vec![4, 1],
            1i32.to_le_bytes().repeat(4),
            &["'w.weight'", "w.weight_scale has dtype I32"],
        ),
        (
            Dtype::F32,
            vec![3, 1],
            f32_bytes(&[0.5; 3]),
            &["'w.weight'", "w.weight_scale has shape [3, 1]"],
        ),
        (
            Dtype::F32,
            vec![4, 1, 1],
            f32_bytes(&[0.5; 4]),
            &["'w.weight'", "shape [4, 1, 1]"],
        ),
    ];
    for (dt, shape, bytes, must) in cases {
        write_st(
            &q,
            &[
                ("w.weight", Dtype::F8_E4M3, vec![4, 32], c4.clone()),
                ("w.weight_scale", *dt, shape.clone(), bytes.clone()),
            ],
        );
        let mut m = must.to_vec();
        m.push("q.safetensors");
        expect_error(
            &[
                "verify".as_ref(),
                orig4.as_os_str(),
                q.as_os_str(),
                "-q".as_ref(),
            ],
            &m,
        );
    }
    // a 0-d per-tensor scale on a one-row weight decodes exactly
    write_st(
        &q,
        &[
            ("w.weight", Dtype::F8_E4M3, vec![1, 32], c1.clone()),
            ("w.weight_scale", Dtype::F32, vec![], f32_bytes(&[0.5])),
        ],
    );
    let rep = dp.join("v.json");
    quantize(&[
        "verify".as_ref(),
        orig1.as_os_str(),
        q.as_os_str(),
        "-q".as_ref(),
        "--report".as_ref(),
        rep.as_os_str(),
    ])
    .ok();
    let r = read_json(&rep);
    assert_eq!(r["rows"][0]["tensor"], "w.weight");
    assert_eq!(r["rows"][0]["error"]["max_abs_err"], 0.0);

    // the fixture as fp8 (per-channel), one scale of its folder broken; eval and verify refuse it
    let fx = fixture();
    let good = dp.join("fp8");
    quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "fp8".as_ref(),
        "-o".as_ref(),
        good.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    let text = dp.join("text.txt");
    std::fs::write(&text, "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in Liberty.").unwrap();
    let buf = std::fs::read(good.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    let target = "model.layers.0.mlp.down_proj.weight_scale";
    let broken: &[(Dtype, Vec<usize>, &str)] = &[
        (Dtype::I16, vec![256, 1], "dtype I16"),
        (Dtype::BF16, vec![255, 1], "shape [255, 1]"),
        // as many values as per-channel, shaped as blocks: contradicts strategy "channel"
        (Dtype::BF16, vec![128, 2], "declares strategy \"channel\""),
    ];
    for (i, (dt, shape, why)) in broken.iter().enumerate() {
        let bad = dp.join(format!("bad{i}"));
        std::fs::create_dir(&bad).unwrap();
        for f in listing(&good) {
            if f != "model.safetensors" {
                std::fs::copy(good.join(&f), bad.join(&f)).unwrap();
            }
        }
        let n: usize = shape.iter().product();
        let tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
            .tensors()
            .into_iter()
            .map(|(name, v)| match name == target {
                true => (name, *dt, shape.clone(), vec![0x3f; n * 2]),
                false => (name, v.dtype(), v.shape().to_vec(), v.data().to_vec()),
            })
            .collect();
        let views: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
            .collect();
        write_st(&bad.join("model.safetensors"), &views);
        let must = [
            "model.safetensors",
            "'model.layers.0.mlp.down_proj.weight'",
            why,
        ];
        expect_error(
            &[
                "verify".as_ref(),
                fx.as_os_str(),
                bad.as_os_str(),
                "-q".as_ref(),
            ],
            &must,
        );
        expect_error(
            &[
                "eval".as_ref(),
                bad.as_os_str(),
                "--text".as_ref(),
                text.as_os_str(),
                "--ctx".as_ref(),
                "8".as_ref(),
                "-q".as_ref(),
            ],
            &must,
        );
    }
}

/// Failures while running (calibration, GPTQ, eval) name the model or file and the tensor, not
/// just a message: a weight missing from the forward pass, per-tensor scales GPTQ cannot fit, a
/// text shorter than one chunk.
#[test]
fn runtime_failures_name_the_file_and_tensor() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let miss = d.path().join("miss");
    fixture_without(&miss, "model.layers.1.mlp.up_proj.weight");
    let text = d.path().join("text.txt");
    std::fs::write(&text, "Four score and seven years ago our fathers brought forth on this continent, a new nation, conceived in Liberty.").unwrap();
    let calib = ["--calib-samples", "2", "--calib-seq-len", "32"].map(std::ffi::OsStr::new);
    let out = d.path().join("out");
    let mut a: Vec<&std::ffi::OsStr> = vec![
        miss.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "--method".as_ref(),
        "gptq".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    a.extend(calib);
    // nothing at the target, nor a temporary beside it
    let must = [
        "calibration: ",
        "miss",
        "tensor 'model.layers.1.mlp.up_proj.weight'",
        "missing",
    ];
    fails(&a, Some(&out), &must);
    // a NaN in layer 1 stops the pass after layer 0's tensors are written: nothing is left at
    // the target (GGUF, learned rounding) nor a temporary beside it
    let nan = d.path().join("nan");
    fixture_copy(&nan);
    let st = nan.join("model.safetensors");
    let mut buf = std::fs::read(&st).unwrap();
    let (n, meta) = safetensors::SafeTensors::read_metadata(&buf).unwrap();
    let info = meta.info("model.layers.1.mlp.up_proj.weight").unwrap();
    assert_eq!(info.dtype, Dtype::BF16);
    let at = 8 + n + info.data_offsets.0 + 2 * 5;
    buf[at..at + 2].copy_from_slice(&0x7fc0u16.to_le_bytes());
    std::fs::write(&st, buf).unwrap();
    let gguf = d.path().join("out.gguf");
    let mut b: Vec<&std::ffi::OsStr> = vec![
        nan.as_os_str(),
        "--to".as_ref(),
        "q4_k_m".as_ref(),
        "--method".as_ref(),
        "signround".as_ref(),
        "--iters".as_ref(),
        "2".as_ref(),
        "-o".as_ref(),
        gguf.as_os_str(),
    ];
    b.extend(calib);
    fails(
        &b,
        Some(&gguf),
        &[
            "calibration: ",
            "nan",
            "tensor 'model.layers.1.mlp.up_proj.weight'",
            "non-finite weight NaN at row 0, column 5",
        ],
    );
    expect_error(
        &[
            "eval".as_ref(),
            miss.as_os_str(),
            "--text".as_ref(),
            text.as_os_str(),
            "--ctx".as_ref(),
            "8".as_ref(),
        ],
        &[
            "eval: ",
            "miss",
            "tensor 'model.layers.1.mlp.up_proj.weight'",
            "missing",
        ],
    );
    let mut a: Vec<&std::ffi::OsStr> = vec![
        fx.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "--granularity".as_ref(),
        "tensor".as_ref(),
        "--method".as_ref(),
        "gptq".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
    ];
    a.extend(calib);
    expect_error(
        &a,
        &[
            "model.safetensors: tensor 'model.layers.0.self_attn.q_proj.weight'",
            "per-tensor",
        ],
    );
    assert!(!out.exists());
    let short = d.path().join("short.txt");
    std::fs::write(&short, "Four score").unwrap();
    expect_error(
        &[
            "eval".as_ref(),
            fx.as_os_str(),
            "--text".as_ref(),
            short.as_os_str(),
            "--ctx".as_ref(),
            "8".as_ref(),
        ],
        &["short.txt: ", "fewer than one chunk of 8 tokens"],
    );
    // --imatrix-from's chunks are 512 tokens: no --ctx to name
    let out = d.path().join("short-imatrix.gguf");
    expect_error(
        &[
            fx.as_os_str(),
            "--to".as_ref(),
            "q4_k_m".as_ref(),
            "--imatrix-from".as_ref(),
            short.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ],
        &["short.txt: ", "fewer than one chunk of 512 tokens"],
    );
    assert!(!out.exists());
}
