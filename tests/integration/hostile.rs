//! Hostile input (issue 9): each numbered defect found by mutating safetensors files, GGUF
//! files and HF folders has a case here. Every case ends in one `error:` line naming the file
//! (and the tensor or key), a non-zero exit, nothing at the output and no temporary; none may
//! panic, run away in memory or time, or write a wrong file with exit 0.

use crate::util::*;
use qs_formats::gguf::{GgufFile, Value};
use safetensors::Dtype;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A safetensors file from a raw JSON header and `data_len` zero bytes.
fn raw_st(path: &Path, header: &str, data_len: usize) {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend(std::iter::repeat_n(0u8, data_len));
    std::fs::write(path, v).unwrap();
}

/// A copy of the fixture folder with config.json changed by `f`.
fn fixture_with_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    fixture_copy(dir);
    let mut c = read_json(&dir.join("config.json"));
    f(&mut c);
    std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
    dir.to_path_buf()
}

/// Writes a GGUF holding `src`'s tensors with its metadata changed by `f`, through our own
/// writer's planner (the layout rules are tested against gguf-py elsewhere).
fn rewrite_gguf(src: &Path, dst: &Path, f: impl FnOnce(&mut Vec<(String, Value)>)) {
    let g = GgufFile::open(src).unwrap();
    let mut kvs = g.kvs.clone();
    f(&mut kvs);
    let plans: Vec<qs_formats::gguf::TensorPlan> = g
        .tensors
        .iter()
        .map(|t| qs_formats::gguf::TensorPlan {
            name: t.name.clone(),
            ne: t.ne.clone(),
            ty: t.ty,
        })
        .collect();
    let l = qs_formats::gguf::plan(&kvs, &plans).unwrap();
    let mut buf = vec![0u8; l.total_len as usize];
    buf[..l.header.len()].copy_from_slice(&l.header);
    for (t, &o) in g.tensors.iter().zip(&l.offsets) {
        let b = g.bytes(t);
        buf[o as usize..o as usize + b.len()].copy_from_slice(b);
    }
    std::fs::write(dst, buf).unwrap();
}

fn set_kv(kvs: &mut [(String, Value)], key: &str, v: Value) {
    let e = kvs.iter_mut().find(|(k, _)| k == key).expect(key);
    e.1 = v;
}

/// A GGUF by hand: no metadata, the given tensor infos (name, ne, type id, offset) and
/// `data_len` zero bytes of data.
fn hand_gguf(
    path: &Path,
    kvs: &[u8],
    n_kv: u64,
    tensors: &[(&str, &[u64], u32, u64)],
    data_len: usize,
) {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(kvs);
    for (name, ne, ty, off) in tensors {
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        b.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        for d in *ne {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&ty.to_le_bytes());
        b.extend_from_slice(&off.to_le_bytes());
    }
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, data_len));
    std::fs::write(path, b).unwrap();
}

fn q8_gguf(dir: &Path) -> PathBuf {
    let g = dir.join("a.gguf");
    quantize(&[&s(&fixture()), "--to", "q8_0", "-o", &s(&g), "-q"]).ok();
    g
}

#[test]
fn d01_verify_of_a_quantized_gguf_against_itself() {
    let d = tempfile::tempdir().unwrap();
    let g = q8_gguf(d.path());
    let rep = d.path().join("r.json");
    let r = quantize(&["verify", &s(&g), &s(&g), "--report", &s(&rep), "-q"]);
    r.ok();
    // the original decoded as Q8_0 equals the quantized decoded as Q8_0
    let j = read_json(&rep);
    let rows = j["rows"].as_array().expect("rows");
    assert!(rows.len() > 10, "{j}");
    for row in rows {
        let e = &row["error"];
        assert!(
            e.is_null() || e["max_abs_err"].as_f64() == Some(0.0),
            "{row}"
        );
    }
}

#[test]
fn d02_gguf_tensor_size_overflowing() {
    let d = tempfile::tempdir().unwrap();
    let g = d.path().join("big.gguf");
    hand_gguf(&g, &[], 0, &[("output_norm.weight", &[1 << 62], 0, 0)], 64);
    let out = d.path().join("o.gguf");
    for args in [
        vec!["inspect", &s(&g)],
        vec![&s(&g), "--to", "q4_0", "-o", &s(&out)],
        vec!["export", &s(&g), "-o", &s(&d.path().join("hf"))],
    ] {
        let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        fails(
            &args,
            Some(&out),
            &["big.gguf", "'output_norm.weight'", "limit"],
        );
    }
}

#[test]
fn d03_d07_d08_empty_and_huge_shapes() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("e.safetensors");
    // an empty tensor is kept as it is in safetensors...
    raw_st(
        &p,
        r#"{"a.weight":{"dtype":"F32","shape":[1,0],"data_offsets":[0,0]},"b.weight":{"dtype":"F32","shape":[2,32],"data_offsets":[0,256]}}"#,
        256,
    );
    let out = d.path().join("o.safetensors");
    quantize(&[
        &s(&p),
        "--to",
        "int4",
        "--group",
        "32",
        "-o",
        &s(&out),
        "-q",
    ])
    .ok();
    let buf = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    assert_eq!(st.tensor("a.weight").unwrap().shape(), &[1, 0]);
    // ...and refused in GGUF, which cannot hold it
    let og = d.path().join("o.gguf");
    fails(
        &[&s(&p), "--to", "q4_0", "-o", &s(&og), "--keep-names"],
        Some(&og),
        &["e.safetensors", "'a.weight'", "no elements"],
    );
    // dimensions no real tensor has, with no data: refused when the header is read
    for shape in [
        "[0,9223372036854775808]",
        "[4611686018427387904,0]",
        "[0,1099511627776]",
    ] {
        raw_st(
            &p,
            &format!(r#"{{"a.weight":{{"dtype":"F32","shape":{shape},"data_offsets":[0,0]}}}}"#),
            0,
        );
        for to in ["int4", "q4_0"] {
            let o = if to == "q4_0" { &og } else { &out };
            let _ = std::fs::remove_file(o);
            fails(
                &[&s(&p), "--to", to, "--group", "32", "-o", &s(o)],
                Some(o),
                &["e.safetensors", "'a.weight'", "limit"],
            );
        }
    }
}

#[test]
fn d04_d13_config_values_that_do_not_fit() {
    let d = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("num_attention_heads", 0.into(), "num_attention_heads is 0"),
        ("num_attention_heads", 1000.into(), "does not fit"),
        (
            "num_attention_heads",
            (4294967300u64).into(),
            "num_attention_heads",
        ),
        ("num_key_value_heads", 0.into(), "num_key_value_heads is 0"),
        ("num_key_value_heads", 3.into(), "does not divide"),
        ("num_key_value_heads", 7.into(), "does not divide"),
        ("hidden_size", (4294967552u64).into(), "hidden_size"),
        (
            "num_hidden_layers",
            (4294967298u64).into(),
            "num_hidden_layers",
        ),
        (
            "num_hidden_layers",
            serde_json::json!(-1),
            "num_hidden_layers",
        ),
        (
            "num_hidden_layers",
            serde_json::json!(1e30),
            "num_hidden_layers",
        ),
        (
            "num_key_value_heads",
            serde_json::from_str("18446744073709551616").unwrap(),
            "num_key_value_heads",
        ),
        ("num_hidden_layers", 3.into(), "no layer 2"),
        (
            "num_hidden_layers",
            1.into(),
            "layer 1, but num_hidden_layers is 1",
        ),
        ("hidden_size", 128.into(), "does not fit"),
        ("head_dim", 32.into(), "does not fit"),
    ];
    for (i, (k, v, msg)) in cases.into_iter().enumerate() {
        let m = fixture_with_config(&d.path().join(format!("m{i}")), |c| c[k] = v.clone());
        let out = d.path().join(format!("o{i}.gguf"));
        let dir_out = d.path().join(format!("o{i}"));
        let gguf = vec![s(&m), "--to".into(), "q4_0".into(), "-o".into(), s(&out)];
        let gptq: Vec<String> = [
            &s(&m),
            "--to",
            "int4",
            "--method",
            "gptq",
            "--calib-samples",
            "2",
            "--calib-seq-len",
            "32",
            "-o",
            &s(&dir_out),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        for (args, o) in [(gguf, &out), (gptq, &dir_out)] {
            let args: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
            let e = fails(&args, Some(o), &[msg]);
            assert!(e.contains("config.json"), "{k} = {v}: {e}");
        }
    }
}

#[test]
fn d05_d09_gguf_hyper_parameters_that_do_not_fit() {
    let d = tempfile::tempdir().unwrap();
    let f16 = d.path().join("f.gguf");
    quantize(&[&s(&fixture()), "--to", "f16", "-o", &s(&f16), "-q"]).ok();
    let text = d.path().join("t.txt");
    std::fs::write(&text, "hello world ".repeat(200)).unwrap();
    for (key, v, msg) in [
        (
            "llama.attention.head_count",
            Value::U32(0),
            "num_attention_heads is 0",
        ),
        (
            "llama.attention.head_count_kv",
            Value::U32(0),
            "num_key_value_heads is 0",
        ),
        (
            "llama.block_count",
            Value::U32(1 << 31),
            "num_hidden_layers",
        ),
        ("llama.block_count", Value::U32(7), "no layer 2"),
    ] {
        let g = d.path().join("bad.gguf");
        rewrite_gguf(&f16, &g, |kvs| set_kv(kvs, key, v.clone()));
        let out = d.path().join("hf");
        fails(
            &["export", &s(&g), "-o", &s(&out)],
            Some(&out),
            &["bad.gguf", msg],
        );
        fails(
            &[
                "eval",
                &s(&g),
                "--text",
                &s(&text),
                "--ctx",
                "32",
                "--chunks",
                "1",
            ],
            None,
            &["bad.gguf", msg],
        );
    }
}

#[test]
fn d10_d11_vocabulary_and_head_sizes_from_config() {
    let d = tempfile::tempdir().unwrap();
    let big: Vec<(&str, serde_json::Value)> = vec![
        ("vocab_size", 1_000_000_000u64.into()),
        ("vocab_size", 4_294_967_300u64.into()),
        ("vocab_size", 9_223_372_036_854_775_808u64.into()),
    ];
    for (i, (k, v)) in big.into_iter().enumerate() {
        let m = fixture_with_config(&d.path().join(format!("v{i}")), |c| c[k] = v);
        let out = d.path().join("o.gguf");
        fails(
            &[&s(&m), "--to", "q8_0", "-o", &s(&out)],
            Some(&out),
            &["config.json", "vocab_size"],
        );
    }
    let m = fixture_with_config(&d.path().join("rope"), |c| {
        c["head_dim"] = 1_000_000_000u64.into();
        c["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    });
    let out = d.path().join("o.gguf");
    fails(
        &[&s(&m), "--to", "q8_0", "-o", &s(&out)],
        Some(&out),
        &["config.json", "head_dim"],
    );
}

#[test]
fn d12_a_weight_beyond_the_block_scale_range() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("w.safetensors");
    let mut v = vec![0.5f32; 32];
    v[7] = 1e6;
    write_st(&p, &[("a.weight", Dtype::F32, vec![1, 32], f32_bytes(&v))]);
    for to in ["q4_0", "q4_1", "q5_0", "q8_0", "q4_k", "q6_k", "iq4_nl"] {
        let mut w = vec![0.5f32; 256];
        w[7] = 1e9;
        write_st(&p, &[("a.weight", Dtype::F32, vec![1, 256], f32_bytes(&w))]);
        let out = d.path().join("o.gguf");
        let e = fails(
            &[&s(&p), "--to", to, "-o", &s(&out), "--keep-names"],
            Some(&out),
            &["w.safetensors", "'a.weight'"],
        );
        assert!(e.contains("value 7 of row 0 is 1000000000"), "{to}: {e}");
    }
    // within range, the value decodes finite and the report has a row for it
    let out = d.path().join("o.gguf");
    let rep = d.path().join("r.json");
    write_st(&p, &[("a.weight", Dtype::F32, vec![1, 32], f32_bytes(&v))]);
    let r = quantize(&[
        &s(&p),
        "--to",
        "q8_0",
        "-o",
        &s(&out),
        "--keep-names",
        "--report",
        &s(&rep),
        "-q",
    ]);
    r.ok();
    let j = read_json(&rep);
    assert_eq!(j["rows"].as_array().map(|r| r.len()), Some(1), "{j}");
    assert!(j["rows"][0]["error"]["max_abs_err"].is_number(), "{j}");
}

#[test]
fn d14_index_with_an_empty_weight_map() {
    let d = tempfile::tempdir().unwrap();
    write_st(
        &d.path().join("model-00001-of-00001.safetensors"),
        &[("a.weight", Dtype::F32, vec![2, 32], f32_bytes(&[0.1; 64]))],
    );
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        r#"{"metadata":{},"weight_map":{}}"#,
    )
    .unwrap();
    let out = d.path().join("o.safetensors");
    fails(
        &[&s(d.path()), "--to", "int8", "-o", &s(&out)],
        Some(&out),
        &["model.safetensors.index.json", "no tensors"],
    );
}

#[test]
fn d17_config_json_that_is_not_an_object_or_names_no_architecture() {
    let d = tempfile::tempdir().unwrap();
    for (i, text) in ["null", "[]", "1", "{}"].into_iter().enumerate() {
        let m = d.path().join(format!("m{i}"));
        fixture_copy(&m);
        std::fs::write(m.join("config.json"), text).unwrap();
        let out = d.path().join("o.gguf");
        let e = fails(&[&s(&m), "--to", "q8_0", "-o", &s(&out)], Some(&out), &[]);
        assert!(
            e.contains(&s(&m.join("config.json"))),
            "{text}: names the file: {e}"
        );
    }
}

#[test]
fn d18_corrupted_key_length_gives_a_short_message() {
    let d = tempfile::tempdir().unwrap();
    let f16 = d.path().join("f.gguf");
    quantize(&[&s(&fixture()), "--to", "f16", "-o", &s(&f16), "-q"]).ok();
    let mut b = std::fs::read(&f16).unwrap();
    // the first key's length: 24 bytes in (magic, version, two counts)
    let n = u64::from_le_bytes(b[24..32].try_into().unwrap());
    for bad in [n + 1000, 70_000, 1 << 40] {
        b[24..32].copy_from_slice(&bad.to_le_bytes());
        let g = d.path().join("k.gguf");
        std::fs::write(&g, &b).unwrap();
        let e = fails(&["inspect", &s(&g)], None, &["k.gguf"]);
        assert!(e.is_ascii() || e.len() < 300, "{e}");
    }
}

#[test]
fn special_files_missing_side_files_and_nested_arrays() {
    let d = tempfile::tempdir().unwrap();
    // a FIFO as the model: refused, not waited on
    let fifo = d.path().join("m.safetensors");
    let ok = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let out = d.path().join("o.safetensors");
        fails(
            &[&s(&fifo), "--to", "int8", "-o", &s(&out)],
            Some(&out),
            &["m.safetensors", "not a regular file"],
        );
    }
    // a folder without config.json, or without a tokenizer: no GGUF llama.cpp cannot load
    let m = fixture_with_config(&d.path().join("nocfg"), |_| {});
    std::fs::remove_file(m.join("config.json")).unwrap();
    let out = d.path().join("o.gguf");
    fails(
        &[&s(&m), "--to", "q8_0", "-o", &s(&out)],
        Some(&out),
        &["no config.json", "--keep-names"],
    );
    quantize(&[&s(&m), "--to", "q8_0", "-o", &s(&out), "--keep-names", "-q"]).ok();
    std::fs::remove_file(&out).unwrap();
    let m = fixture_with_config(&d.path().join("notok"), |_| {});
    std::fs::remove_file(m.join("tokenizer.json")).unwrap();
    fails(
        &[&s(&m), "--to", "q8_0", "-o", &s(&out)],
        Some(&out),
        &["notok", "no tokenizer.json or tokenizer.model"],
    );
    // nested metadata arrays (allowed by the format) are read and carried through
    let f16 = d.path().join("f.gguf");
    quantize(&[&s(&fixture()), "--to", "f16", "-o", &s(&f16), "-q"]).ok();
    let g = d.path().join("nested.gguf");
    rewrite_gguf(&f16, &g, |kvs| {
        kvs.push((
            "test.nested".into(),
            Value::Array(
                9,
                vec![
                    Value::Array(4, vec![Value::U32(1), Value::U32(2)]),
                    Value::Array(4, vec![Value::U32(3)]),
                ],
            ),
        ))
    });
    let r = quantize(&["inspect", &s(&g)]);
    r.ok();
    assert!(r.stdout.contains("test.nested"), "{}", r.stdout);
    let o2 = d.path().join("n.gguf");
    quantize(&[&s(&g), "--to", "q8_0", "-o", &s(&o2), "-q"]).ok();
    let back = GgufFile::open(&o2).unwrap();
    assert_eq!(
        back.get("test.nested"),
        GgufFile::open(&g).unwrap().get("test.nested")
    );
}

#[test]
fn options_that_do_not_apply_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o.gguf");
    for extra in [["--group", "1000000000000"], ["--granularity", "channel"]] {
        let mut args = vec![
            s(&fixture()),
            "--to".into(),
            "q4_0".into(),
            "-o".into(),
            s(&out),
        ];
        args.extend(extra.iter().map(|x| x.to_string()));
        let args: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
        fails(&args, Some(&out), &["apply to int and fp8 targets"]);
    }
}
