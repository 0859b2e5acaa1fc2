use crate::util::*;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn sqnr_by_tensor(report: &serde_json::Value) -> HashMap<String, Option<f64>> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tensor"].as_str().unwrap().to_string(),
                r["error"]["sqnr_db"].as_f64(),
            )
        })
        .collect()
}

/// Every target: the written file, decoded by an independent reader — gguf-py's dequantizers
/// (names and llama.cpp's q/k permutation mapped back to the folder's), the PyPI
/// compressed-tensors package (pack-quantized and float-quantized), numpy for float
/// safetensors — holds exactly the weights our decoder reads from it (`quantize verify
/// DECODED OUTPUT`: every tensor equal), so the error figures of quantize's report are those
/// of what other readers get. Quality floors on those figures are the measured minimum SQNR on
/// the fixture (deterministic data) less ~1 dB: a regression guard per scheme.
#[test]
fn every_target_decodes_like_independent_readers() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let cases: &[(&str, &[&str], f64)] = &[
        ("q8_0.gguf", &["--to", "q8_0"], 37.0),
        ("q5_0.gguf", &["--to", "q5_0"], 20.5),
        ("q5_1.gguf", &["--to", "q5_1"], 24.0),
        ("q4_0.gguf", &["--to", "q4_0"], 17.0),
        ("q4_1.gguf", &["--to", "q4_1"], 17.0),
        ("q2_k.gguf", &["--to", "q2_k"], 11.0),
        ("q3_k.gguf", &["--to", "q3_k"], 17.0),
        ("q4_k.gguf", &["--to", "q4_k"], 19.5),
        ("q5_k.gguf", &["--to", "q5_k"], 24.5),
        ("q6_k.gguf", &["--to", "q6_k"], 28.5),
        ("iq4_nl.gguf", &["--to", "iq4_nl"], 18.5),
        ("f16.gguf", &["--to", "f16"], 100.0),
        ("int8", &["--to", "int8"], 26.5),
        (
            "int8-tensor",
            &["--to", "int8", "--granularity", "tensor"],
            14.5,
        ),
        ("int4-g128", &["--to", "int4", "--group", "128"], 12.0),
        (
            "int4-asym-g64",
            &["--to", "int4", "--group", "64", "--asym"],
            16.5,
        ),
        (
            "int4-asym-channel",
            &["--to", "int4", "--granularity", "channel", "--asym"],
            10.5,
        ),
        ("int3-g32", &["--to", "int3", "--group", "32"], 12.0),
        (
            "int2-g32-asym",
            &["--to", "int2", "--group", "32", "--asym"],
            12.0,
        ),
        ("fp8", &["--to", "fp8"], 32.5),
        (
            "fp8-tensor",
            &["--to", "fp8", "--granularity", "tensor"],
            30.0,
        ),
        (
            "fp8-block",
            &["--to", "fp8", "--granularity", "block"],
            30.0,
        ),
        ("fp8-e5m2", &["--to", "fp8-e5m2"], 26.5),
        ("f16.safetensors", &["--to", "f16"], 100.0),
    ];
    for (out, args, min_sqnr) in cases {
        let o = d.path().join(out);
        let qr = d.path().join(format!("{out}.q.json"));
        let mut a: Vec<&std::ffi::OsStr> = vec![fx.as_os_str()];
        a.extend(args.iter().map(std::ffi::OsStr::new));
        a.extend([
            "-o".as_ref(),
            o.as_os_str(),
            "--report".as_ref(),
            qr.as_os_str(),
            "--quiet".as_ref(),
        ]);
        let r = quantize(&a);
        r.ok();
        assert!(r.stdout.is_empty(), "--quiet prints nothing: {}", r.stdout);
        let q = read_json(&qr);
        assert_eq!(q["schema_version"], 1);
        let mut quantized = 0;
        for (name, s) in &sqnr_by_tensor(&q) {
            let Some(s) = s else { continue };
            if std::env::var_os("QS_PRINT_SQNR").is_some() {
                eprintln!("{out} {name} {s:.2}");
            }
            assert!(*s > *min_sqnr, "{out}: {name}: {s} dB below {min_sqnr}");
            quantized += 1;
        }
        assert!(quantized >= 14, "{out}: only {quantized} lossy tensors");
    }
    // the independent readers' decoding of every output, in the folder's names and row order
    // (one process per reader: importing torch is the slow part)
    let dec = |out: &str| d.path().join(format!("{out}.decoded"));
    let oracle = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oracle");
    let (files, folders): (Vec<&str>, Vec<&str>) = cases
        .iter()
        .map(|c| c.0)
        .partition(|out| out.ends_with(".gguf") || out.ends_with(".safetensors"));
    let mut gguf_py = Command::new(python());
    gguf_py
        .arg(oracle.join("gguf_oracle.py"))
        .arg("decode")
        .arg(&fx);
    let mut ct = Command::new(convert_python());
    ct.arg(oracle.join("ct_decompress.py"));
    for (cmd, outs) in [(&mut gguf_py, &files), (&mut ct, &folders)] {
        for out in outs.iter() {
            cmd.arg(d.path().join(out)).arg(dec(out));
        }
        let o = cmd.output().unwrap();
        assert!(
            o.status.success(),
            "independent decoding failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for (out, _, _) in cases {
        let vr = d.path().join(format!("{out}.v.json"));
        quantize(&[
            "verify".as_ref(),
            dec(out).as_os_str(),
            d.path().join(out).as_os_str(),
            "--report".as_ref(),
            vr.as_os_str(),
            "-q".as_ref(),
        ])
        .ok();
        let v = read_json(&vr);
        let rows = v["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 21, "{out}: every tensor decoded");
        for r in rows {
            assert_eq!(
                r["error"]["max_abs_err"].as_f64(),
                Some(0.0),
                "{out}: {} decodes differently in the independent reader",
                r["tensor"]
            );
        }
    }
}

#[test]
fn output_bytes_do_not_depend_on_thread_count() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    for (name, args) in [
        ("a.gguf", vec!["--to", "q4_1"]),
        ("a", vec!["--to", "int4", "--asym", "--group", "32"]),
        ("b", vec!["--to", "fp8", "--granularity", "block"]),
    ] {
        let mut outs = vec![];
        for j in ["1", "2", "3"] {
            let o = d.path().join(format!("j{j}-{name}"));
            let mut a: Vec<String> = vec![fx.display().to_string()];
            a.extend(args.iter().map(|s| s.to_string()));
            a.extend([
                "-o".into(),
                o.display().to_string(),
                "-j".into(),
                j.into(),
                "-q".into(),
            ]);
            quantize(&a).ok();
            let f = if o.is_dir() {
                o.join("model.safetensors")
            } else {
                o.clone()
            };
            outs.push(std::fs::read(f).unwrap());
        }
        assert!(
            outs[0] == outs[1] && outs[1] == outs[2],
            "{name}: bytes differ between thread counts"
        );
    }
}

#[test]
fn hf_folder_to_compressed_tensors_int4() {
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("m-int4");
    let fx = fixture();
    quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "--group".as_ref(),
        "128".as_ref(),
        "-o".as_ref(),
        o.as_os_str(),
    ])
    .ok();
    assert_eq!(
        listing(&o),
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert_eq!(
            std::fs::read(o.join(f)).unwrap(),
            std::fs::read(fx.join(f)).unwrap(),
            "{f} copied byte for byte"
        );
    }
    let cfg = read_json(&o.join("config.json"));
    assert_eq!(cfg["model_type"], "llama");
    let qc = &cfg["quantization_config"];
    assert_eq!(qc["quant_method"], "compressed-tensors");
    assert_eq!(qc["format"], "pack-quantized");
    assert_eq!(qc["quantization_status"], "compressed");
    let w = &qc["config_groups"]["group_0"]["weights"];
    assert_eq!(w["num_bits"], 4);
    assert_eq!(w["type"], "int");
    assert_eq!(w["symmetric"], true);
    assert_eq!(w["strategy"], "group");
    assert_eq!(w["group_size"], 128);
    assert_eq!(
        qc["config_groups"]["group_0"]["targets"],
        serde_json::json!(["Linear"])
    );
    assert_eq!(qc["ignore"], serde_json::json!(["lm_head"]));

    // Read back with the reference safetensors crate.
    let buf = std::fs::read(o.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    let p = st
        .tensor("model.layers.0.mlp.down_proj.weight_packed")
        .unwrap();
    assert_eq!(p.dtype(), Dtype::I32);
    assert_eq!(p.shape(), &[256, 768 / 8]);
    let s = st
        .tensor("model.layers.0.mlp.down_proj.weight_scale")
        .unwrap();
    assert_eq!(s.dtype(), Dtype::BF16);
    assert_eq!(s.shape(), &[256, 6]);
    let sh = st
        .tensor("model.layers.0.mlp.down_proj.weight_shape")
        .unwrap();
    assert_eq!(sh.dtype(), Dtype::I64);
    let dims: Vec<i64> = sh
        .data()
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(dims, vec![256, 768]);
    assert!(
        st.tensor("model.layers.0.mlp.down_proj.weight").is_err(),
        "original replaced"
    );
    assert!(
        st.tensor("model.layers.0.mlp.down_proj.weight_zero_point")
            .is_err(),
        "symmetric: no zero point"
    );
    // kept in their own dtype
    assert_eq!(
        st.tensor("model.embed_tokens.weight").unwrap().dtype(),
        Dtype::BF16
    );
    assert_eq!(st.tensor("lm_head.weight").unwrap().dtype(), Dtype::BF16);
    assert_eq!(st.tensor("model.norm.weight").unwrap().data(), {
        let src = std::fs::read(fx.join("model.safetensors")).unwrap();
        let s0 = safetensors::SafeTensors::deserialize(&src).unwrap();
        s0.tensor("model.norm.weight").unwrap().data().to_vec()
    });
}

/// The int4 packing and scale convention, checked against values worked out by hand from
/// compressed-tensors' definition (scale = amax/7.5, round half to even, clamp to [-8, 7],
/// codes + 8 packed eight per int32 from the low nibble up).
#[test]
fn int4_pack_layout_matches_compressed_tensors_definition() {
    let d = tempfile::tempdir().unwrap();
    let inp = d.path().join("m.safetensors");
    // amax 7.5 -> scale exactly 1.0; 7.5 rounds to 8 and is clamped to 7; 2.5 rounds to even 2.
    let row = [7.5f32, -7.0, 0.0, 1.0, 2.5, -1.0, 3.0, -3.0];
    write_st(
        &inp,
        &[("l.weight", Dtype::F32, vec![1, 8], f32_bytes(&row))],
    );
    let o = d.path().join("o.safetensors");
    quantize(&[
        inp.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "--granularity".as_ref(),
        "channel".as_ref(),
        "-o".as_ref(),
        o.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    let buf = std::fs::read(&o).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    let w = u32::from_le_bytes(
        st.tensor("l.weight_packed")
            .unwrap()
            .data()
            .try_into()
            .unwrap(),
    );
    // codes 7,-7,0,1,2,-1,3,-3 -> +8 -> 15,1,8,9,10,7,11,5
    assert_eq!(w, 0x5b7a_981f);
    let s = f32::from_le_bytes(
        st.tensor("l.weight_scale")
            .unwrap()
            .data()
            .try_into()
            .unwrap(),
    );
    assert_eq!(s, 1.0);
    let (_, md) = safetensors::SafeTensors::read_metadata(&buf).unwrap();
    let meta: serde_json::Value =
        serde_json::from_str(&md.metadata().as_ref().unwrap()["quantization_config"]).unwrap();
    assert_eq!(
        meta["config_groups"]["group_0"]["weights"]["strategy"],
        "channel"
    );
}

#[test]
fn dry_run_prints_the_plan_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("x.gguf");
    let fx = fixture();
    let plan = d.path().join("plan.json");
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "q4_0".as_ref(),
        "-o".as_ref(),
        o.as_os_str(),
        "--dry-run".as_ref(),
        "--report".as_ref(),
        plan.as_os_str(),
    ]);
    r.ok();
    assert!(!o.exists());
    assert!(
        r.stdout.contains("model.layers.0.mlp.down_proj.weight") && r.stdout.contains("Q4_0"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("dry run"));
    let rows = read_json(&plan);
    let down = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tensor"] == "model.layers.0.mlp.down_proj.weight")
        .unwrap();
    assert_eq!(down["bytes_in"], 256 * 768 * 2);
    assert_eq!(down["bytes_out"], 256 * 768 / 32 * 18);
    let emb = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tensor"] == "model.embed_tokens.weight")
        .unwrap();
    // a converted GGUF follows llama-quantize's Q4_0 mixture: embeddings Q4_0, output Q6_K
    assert_eq!(emb["storage"], "Q4_0");
    let head = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tensor"] == "lm_head.weight")
        .unwrap();
    assert_eq!(head["storage"], "Q6_K");
    // safetensors outputs keep embeddings and the head in their own precision by default
    let st_plan = d.path().join("st.json");
    quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "-o".as_ref(),
        d.path().join("st").as_os_str(),
        "--dry-run".as_ref(),
        "-q".as_ref(),
        "--report".as_ref(),
        st_plan.as_os_str(),
    ])
    .ok();
    let rows = read_json(&st_plan);
    for n in ["model.embed_tokens.weight", "lm_head.weight"] {
        let r = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["tensor"] == n)
            .unwrap();
        assert_eq!(
            r["storage"], "BF16 (copy)",
            "{n} stays in higher precision by default"
        );
    }
}

#[test]
fn include_exclude_and_tensor_type_overrides() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let plan = |args: &[&str]| -> HashMap<String, String> {
        let p = d.path().join("p.json");
        let mut a: Vec<String> = vec![fx.display().to_string()];
        a.extend(args.iter().map(|s| s.to_string()));
        a.extend([
            "--dry-run".into(),
            "-q".into(),
            "--report".into(),
            p.display().to_string(),
        ]);
        quantize(&a).ok();
        read_json(&p)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["tensor"].as_str().unwrap().to_string(),
                    r["storage"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let p = plan(&[
        "--to",
        "int4",
        "-o",
        "x",
        "--include",
        "embed_tokens",
        "--exclude",
        "mlp\\.down",
    ]);
    assert_eq!(p["model.embed_tokens.weight"], "int4-sym-g128");
    assert_eq!(p["model.layers.1.mlp.down_proj.weight"], "BF16 (copy)");
    assert_eq!(p["model.layers.1.mlp.up_proj.weight"], "int4-sym-g128");
    assert_eq!(p["lm_head.weight"], "BF16 (copy)");
    let p = plan(&[
        "--to",
        "q4_0",
        "-o",
        "x.gguf",
        "--tensor-type",
        "down_proj=q8_0",
        "--tensor-type",
        "lm_head=q5_1",
        "--tensor-type",
        ".*=keep",
    ]);
    assert_eq!(p["model.layers.0.mlp.down_proj.weight"], "Q8_0");
    assert_eq!(p["lm_head.weight"], "Q5_1");
    assert_eq!(
        p["model.layers.0.mlp.up_proj.weight"], "BF16 (copy)",
        "first match wins: .*=keep"
    );

    // Mixed int8/int4: two config groups targeting module names.
    let o = d.path().join("mixed");
    quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "--tensor-type".as_ref(),
        "down_proj=int8".as_ref(),
        "-o".as_ref(),
        o.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    let qc = &read_json(&o.join("config.json"))["quantization_config"];
    let groups = qc["config_groups"].as_object().unwrap();
    assert_eq!(groups.len(), 2);
    let g8 = groups
        .values()
        .find(|g| g["weights"]["num_bits"] == 8)
        .unwrap();
    assert_eq!(
        g8["targets"],
        serde_json::json!([
            "model.layers.0.mlp.down_proj",
            "model.layers.1.mlp.down_proj"
        ])
    );
    // the unquantized linear (the untied output head) is ignored by name with several groups too
    assert_eq!(qc["ignore"], serde_json::json!(["lm_head"]));
    verifies(&fx, &o);
}

#[test]
fn quantized_inputs_are_dequantized_or_refused() {
    let d = tempfile::tempdir().unwrap();
    let o = d.path().join("q");
    quantize(&[
        fixture().as_os_str(),
        "--to".as_ref(),
        "int8".as_ref(),
        "-o".as_ref(),
        o.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    // a compressed-tensors checkpoint is read as its dequantized weights and quantized again
    let qq = d.path().join("qq");
    quantize(&[
        o.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "-o".as_ref(),
        qq.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    let c = crate::util::read_json(&qq.join("config.json"));
    assert_eq!(
        c["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"],
        4
    );
    // a quantization method no reader knows (nothing in the checkpoint it can decode): refused
    let bnb = d.path().join("bnb");
    std::fs::create_dir_all(&bnb).unwrap();
    for e in std::fs::read_dir(fixture()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), bnb.join(e.file_name())).unwrap();
    }
    let mut cfg = crate::util::read_json(&bnb.join("config.json"));
    cfg["quantization_config"] =
        serde_json::json!({"quant_method": "bitsandbytes", "load_in_4bit": true});
    std::fs::write(bnb.join("config.json"), cfg.to_string()).unwrap();
    let r = quantize(&[
        bnb.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "-o".as_ref(),
        d.path().join("out").as_os_str(),
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("already quantized") && r.stderr.contains("bitsandbytes"),
        "{}",
        r.stderr
    );
}

#[test]
fn default_output_name_and_single_file_input() {
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("model.safetensors");
    std::fs::copy(fixture().join("model.safetensors"), &m).unwrap();
    quantize(&[
        m.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "--group".as_ref(),
        "128".as_ref(),
        "-q".as_ref(),
    ])
    .ok();
    assert!(d.path().join("model-int4-g128/model.safetensors").is_file());
    assert!(
        d.path().join("model-int4-g128/config.json").is_file(),
        "config.json written even without an input config"
    );
    quantize(&[
        m.as_os_str(),
        "--to".as_ref(),
        "q8_0".as_ref(),
        "--keep-names".as_ref(),
        "-q".as_ref(),
    ])
    .ok();
    assert!(d.path().join("model-q8_0.gguf").is_file());
}

#[test]
fn sharded_checkpoint_gives_the_same_output_as_one_file() {
    let d = tempfile::tempdir().unwrap();
    let src = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&src).unwrap();
    let names: Vec<String> = {
        let mut v: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let sharded = d.path().join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    let mut map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let fname = format!("model-{:05}-of-00002.safetensors", i + 1);
        let ts: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = part
            .iter()
            .map(|n| {
                let t = st.tensor(n).unwrap();
                (n.as_str(), t.dtype(), t.shape().to_vec(), t.data().to_vec())
            })
            .collect();
        write_st(&sharded.join(&fname), &ts);
        for n in part {
            map.insert(n.clone(), serde_json::json!(fname));
        }
    }
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map}).to_string(),
    )
    .unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture().join(f), sharded.join(f)).unwrap();
    }
    let a = d.path().join("a.gguf");
    let b = d.path().join("b.gguf");
    quantize(&[
        fixture().join("model.safetensors").as_os_str(),
        "--to".as_ref(),
        "q5_0".as_ref(),
        "-o".as_ref(),
        a.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    quantize(&[
        sharded.as_os_str(),
        "--to".as_ref(),
        "q5_0".as_ref(),
        "-o".as_ref(),
        b.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    let (ga, gb) = (
        qs_formats::gguf::GgufFile::open(&a).unwrap(),
        qs_formats::gguf::GgufFile::open(&b).unwrap(),
    );
    let by = |g: &qs_formats::gguf::GgufFile| -> HashMap<String, Vec<u8>> {
        g.tensors
            .iter()
            .map(|t| (t.name.clone(), g.bytes(t).to_vec()))
            .collect()
    };
    assert_eq!(by(&ga), by(&gb));
    // the index also works as the input path
    let c = d.path().join("c.gguf");
    quantize(&[
        sharded.join("model.safetensors.index.json").as_os_str(),
        "--to".as_ref(),
        "q5_0".as_ref(),
        "-o".as_ref(),
        c.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
}

#[test]
fn f16_conversion_audits_overflow_underflow_and_subnormals() {
    let d = tempfile::tempdir().unwrap();
    let inp = d.path().join("m.safetensors");
    let mut v = vec![0.5f32; 64];
    v[0] = 70000.0; // overflow
    v[1] = 1e-9; // flushes to zero
    v[2] = 1e-6; // subnormal in f16
    v[3] = -2.0e-8; // below half of f16's smallest subnormal (5.96e-8): flushes to zero
    write_st(
        &inp,
        &[("w.weight", Dtype::F32, vec![2, 32], f32_bytes(&v))],
    );
    let o = d.path().join("o.safetensors");
    let r = quantize(&[
        inp.as_os_str(),
        "--to".as_ref(),
        "f16".as_ref(),
        "-o".as_ref(),
        o.as_os_str(),
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("'w.weight'")
            && r.stderr.contains("--clamp")
            && r.stderr.contains("m.safetensors"),
        "{}",
        r.stderr
    );
    assert!(!o.exists());
    let rep = d.path().join("r.json");
    quantize(&[
        inp.as_os_str(),
        "--to".as_ref(),
        "f16".as_ref(),
        "-o".as_ref(),
        o.as_os_str(),
        "--clamp".as_ref(),
        "--report".as_ref(),
        rep.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    let row = &read_json(&rep)["rows"][0];
    assert_eq!(row["audit"]["overflow"], 1);
    assert_eq!(row["audit"]["underflow"], 2);
    assert_eq!(row["audit"]["subnormal"], 1);
    let buf = std::fs::read(&o).unwrap();
    let st = safetensors::SafeTensors::deserialize(&buf).unwrap();
    let t = st.tensor("w.weight").unwrap();
    assert_eq!(t.dtype(), Dtype::F16);
    assert_eq!(&t.data()[..2], &0x7bffu16.to_le_bytes(), "clamped to 65504");
}

#[test]
fn inspect_safetensors_and_gguf() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let r = quantize(&["inspect".as_ref(), fx.as_os_str()]);
    r.ok();
    assert!(
        r.stdout.contains("model.layers.1.mlp.up_proj.weight")
            && r.stdout.contains("BF16")
            && r.stdout.contains("[768, 256]"),
        "{}",
        r.stdout
    );
    let o = d.path().join("x.gguf");
    quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "q4_1".as_ref(),
        "-o".as_ref(),
        o.as_os_str(),
        "-q".as_ref(),
    ])
    .ok();
    let r = quantize(&["inspect".as_ref(), o.as_os_str(), "--json".as_ref()]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["format"], "gguf");
    let t = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.0.ffn_gate.weight")
        .unwrap();
    assert_eq!(t["dtype"], "Q4_1");
    assert_eq!(t["shape"], serde_json::json!([768, 256]));
    assert_eq!(t["bytes"], 768 * 256 / 32 * 20);
}

#[test]
fn group_that_does_not_divide_the_row_names_the_tensor() {
    let d = tempfile::tempdir().unwrap();
    let inp = d.path().join("m.safetensors");
    write_st(
        &inp,
        &[(
            "blk.proj.weight",
            Dtype::F32,
            vec![4, 576],
            f32_bytes(&vec![0.1; 4 * 576]),
        )],
    );
    let r = quantize(&[
        inp.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "--group".as_ref(),
        "128".as_ref(),
        "-o".as_ref(),
        d.path().join("o").as_os_str(),
    ]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("'blk.proj.weight'")
            && r.stderr.contains("576")
            && r.stderr.contains("--group 64"),
        "{}",
        r.stderr
    );
    assert!(!d.path().join("o").exists());
}

/// --method signround: learned rounding tunes each decoder layer's offsets and clipping on the
/// calibration text and writes compressed-tensors that verify, with the same bytes whatever the
/// thread count; on held-out text its logits are closer to the float model's (mean KL
/// divergence) than round to nearest's, symmetric and asymmetric, and so are the zero-step
/// search's (`--iters 0`) and GPTQ's codes on its grid (`--init search+gptq`, also with one
/// grid per output channel). Bad options are refused with the flag named and nothing written.
#[test]
fn signround_writes_compressed_tensors_closer_than_rtn_on_held_out_text() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let text = d.path().join("calib.txt");
    std::fs::write(&text, qs_formats::calib::DEFAULT_TEXT).unwrap();
    let held = d.path().join("held-out.txt");
    std::fs::write(&held, HELD_OUT_TEXT).unwrap();
    let kld = |o: &Path| kld_against(o, &fx, &held);
    // 16 calibration windows of 48 tokens from the shipped page
    let calib: [&std::ffi::OsStr; 6] = [
        "--calib".as_ref(),
        text.as_os_str(),
        "--calib-samples".as_ref(),
        "16".as_ref(),
        "--calib-seq-len".as_ref(),
        "48".as_ref(),
    ];
    for asym in [false, true] {
        let extra: &[&str] = if asym { &["--asym"] } else { &[] };
        let rtn = d.path().join(format!("rtn-{asym}"));
        let mut a: Vec<&std::ffi::OsStr> = vec![
            fx.as_os_str(),
            "--to".as_ref(),
            "int4".as_ref(),
            "--group".as_ref(),
            "32".as_ref(),
        ];
        a.extend(extra.iter().map(std::ffi::OsStr::new));
        let mut r = a.clone();
        r.extend(["-o".as_ref(), rtn.as_os_str(), "-q".as_ref()]);
        quantize(&r).ok();
        let mut outs = vec![];
        for j in ["1", "2"] {
            let o = d.path().join(format!("sr-{asym}-{j}"));
            let mut s = a.clone();
            s.extend(calib);
            s.extend([
                "--method".as_ref(),
                "signround".as_ref(),
                "--iters".as_ref(),
                "40".as_ref(),
                "--batch".as_ref(),
                "4".as_ref(),
                "-j".as_ref(),
                j.as_ref(),
                "-o".as_ref(),
                o.as_os_str(),
                "-q".as_ref(),
            ]);
            quantize(&s).ok();
            verifies(&fx, &o);
            outs.push(std::fs::read(o.join("model.safetensors")).unwrap());
        }
        assert!(outs[0] == outs[1], "same bytes with 1 and 2 threads");
        let rtn_bytes = std::fs::read(rtn.join("model.safetensors")).unwrap();
        assert!(outs[0] != rtn_bytes, "the tuning changed nothing");
        let (ks, kr) = (kld(&d.path().join(format!("sr-{asym}-1"))), kld(&rtn));
        eprintln!("int4 g32 asym {asym}: mean KLD vs original: signround {ks:.5}, RTN {kr:.5}");
        assert!(ks < kr, "asym {asym}: signround KLD {ks} vs RTN {kr}");
        // the zero-step search alone (--iters 0), and GPTQ's codes on its grid
        for init in ["search", "search+gptq"] {
            let z = d.path().join(format!("sr0-{asym}-{init}"));
            let mut s = a.clone();
            s.extend(calib);
            s.extend([
                "--method".as_ref(),
                "signround".as_ref(),
                "--iters".as_ref(),
                "0".as_ref(),
                "--init".as_ref(),
                init.as_ref(),
                "-o".as_ref(),
                z.as_os_str(),
                "-q".as_ref(),
            ]);
            quantize(&s).ok();
            verifies(&fx, &z);
            let k0 = kld(&z);
            eprintln!("int4 g32 asym {asym}: --iters 0 --init {init} {k0:.5}");
            assert!(
                k0 < kr,
                "asym {asym}: --iters 0 --init {init} KLD {k0} vs RTN {kr}"
            );
        }
    }
    // one grid per output channel (no groups): GPTQ on the search's per-row grids
    let mut k = vec![];
    for m in [
        &["rtn"][..],
        &["signround", "--iters", "0", "--init", "search+gptq"],
    ] {
        let o = d.path().join(format!("channel-{}", m[0]));
        let mut s: Vec<&std::ffi::OsStr> = vec![
            fx.as_os_str(),
            "--to".as_ref(),
            "int4".as_ref(),
            "--granularity".as_ref(),
            "channel".as_ref(),
            "--method".as_ref(),
        ];
        s.extend(m.iter().map(std::ffi::OsStr::new));
        s.extend(calib);
        s.extend(["-o".as_ref(), o.as_os_str(), "-q".as_ref()]);
        quantize(&s).ok();
        verifies(&fx, &o);
        k.push(kld(&o));
    }
    eprintln!("int4 per channel: RTN {:.5}, search+gptq {:.5}", k[0], k[1]);
    assert!(
        k[1] < k[0],
        "per channel: search+gptq {} vs RTN {}",
        k[1],
        k[0]
    );
    // a calibration text shorter than one window
    let short = d.path().join("short.txt");
    std::fs::write(&short, "a few words only").unwrap();
    let short = short.to_str().unwrap();
    for (flags, says) in [
        (
            &["--calib", short, "--calib-seq-len", "512"][..],
            "calibration needs at least two sequences of 512",
        ),
        (&["--init", "bogus"][..], "--init"),
        (&["--tune-target", "bogus"][..], "--tune-target"),
        (&["--iters", "1000000"][..], "--iters 1000000"),
        (&["--iters=-3"][..], "--iters"),
        (&["--lr", "5"][..], "--lr 5"),
        (&["--lr", "nan"][..], "--lr NaN"),
        (&["--batch", "0"][..], "--batch 0"),
    ] {
        let o = d.path().join("bad");
        let mut a: Vec<&std::ffi::OsStr> = vec![
            fx.as_os_str(),
            "--to".as_ref(),
            "int4".as_ref(),
            "--method".as_ref(),
            "signround".as_ref(),
        ];
        a.extend(flags.iter().map(std::ffi::OsStr::new));
        a.extend(["-o".as_ref(), o.as_os_str()]);
        let r = quantize(&a);
        assert!(
            r.code != 0 && r.stderr.contains(says),
            "{flags:?}: {}",
            r.stderr
        );
        assert!(!o.exists(), "{flags:?}");
    }
    // targets without a code grid (here F16) are refused, naming the GGUF types it writes
    let o = d.path().join("x.gguf");
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "f16".as_ref(),
        "--method".as_ref(),
        "signround".as_ref(),
        "-o".as_ref(),
        o.as_os_str(),
    ]);
    assert!(
        r.code != 0
            && r.stderr.contains(
                "q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs"
            ),
        "{}",
        r.stderr
    );
    assert!(!o.exists());
}

/// `--tune-target model` (the default, AutoRound's target: the float model's own output at each
/// layer) tunes towards other outputs than `--tune-target layer` (the float layer on the
/// quantized layers' outputs), both beat round to nearest on held-out text; with
/// `--calib-inputs float` the layer's inputs are the float model's, so both targets are one and
/// give the same bytes.
#[test]
fn signround_tune_target_model_is_the_float_models_output() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let text = d.path().join("calib.txt");
    std::fs::write(&text, qs_formats::calib::DEFAULT_TEXT).unwrap();
    let held = d.path().join("held-out.txt");
    std::fs::write(&held, HELD_OUT_TEXT).unwrap();
    let run = |name: &str, extra: &[&str]| -> Vec<u8> {
        let o = d.path().join(name);
        let mut a: Vec<&std::ffi::OsStr> = vec![
            fx.as_os_str(),
            "--to".as_ref(),
            "int4".as_ref(),
            "--group".as_ref(),
            "32".as_ref(),
            "--calib".as_ref(),
            text.as_os_str(),
            "--calib-samples".as_ref(),
            "16".as_ref(),
            "--calib-seq-len".as_ref(),
            "48".as_ref(),
            "-o".as_ref(),
            o.as_os_str(),
            "-q".as_ref(),
        ];
        a.extend(extra.iter().map(std::ffi::OsStr::new));
        quantize(&a).ok();
        std::fs::read(o.join("model.safetensors")).unwrap()
    };
    let sr = ["--method", "signround", "--iters", "30", "--batch", "4"];
    let with =
        |more: &[&'static str]| -> Vec<&'static str> { sr.iter().chain(more).copied().collect() };
    let model = run("model", &with(&[]));
    assert!(model == run("model2", &with(&["--tune-target", "model"])));
    let layer = run("layer", &with(&["--tune-target", "layer"]));
    assert!(model != layer, "the float model's outputs changed nothing");
    run("rtn", &[]);
    let kld = |n: &str| kld_against(&d.path().join(n), &fx, &held);
    let (km, kl, kr) = (kld("model"), kld("layer"), kld("rtn"));
    eprintln!("int4 g32: mean KLD --tune-target model {km:.5}, layer {kl:.5}, RTN {kr:.5}");
    assert!(km < kr, "--tune-target model: KLD {km} vs RTN {kr}");
    assert!(kl < kr, "--tune-target layer: KLD {kl} vs RTN {kr}");
    let fm = run("f-model", &with(&["--calib-inputs", "float"]));
    let fl = run(
        "f-layer",
        &with(&["--tune-target", "layer", "--calib-inputs", "float"]),
    );
    assert!(fm == fl, "float inputs: the two targets are one");
}

/// --method gptq: calibrates on a text (the shipped page), writes compressed-tensors that verify, and
/// beats RTN on held-out tokens for every linear; same bytes whatever the thread count.
#[test]
fn gptq_writes_compressed_tensors_and_beats_rtn_on_held_out_tokens() {
    let d = tempfile::tempdir().unwrap();
    let fx = fixture();
    let text = d.path().join("calib.txt");
    std::fs::write(&text, qs_formats::calib::DEFAULT_TEXT).unwrap();
    let mut outs = vec![];
    for j in ["1", "2"] {
        let o = d.path().join(format!("g{j}"));
        let r = d.path().join(format!("r{j}.json"));
        quantize(&[
            fx.as_os_str(),
            "--to".as_ref(),
            "int4".as_ref(),
            "--group".as_ref(),
            "64".as_ref(),
            "--method".as_ref(),
            "gptq".as_ref(),
            "--calib".as_ref(),
            text.as_os_str(),
            "--calib-samples".as_ref(),
            "8".as_ref(),
            "--calib-seq-len".as_ref(),
            "48".as_ref(),
            "-j".as_ref(),
            j.as_ref(),
            "-o".as_ref(),
            o.as_os_str(),
            "--report".as_ref(),
            r.as_os_str(),
            "-q".as_ref(),
        ])
        .ok();
        let rep = read_json(&r);
        let mut n = 0;
        for row in rep["rows"].as_array().unwrap() {
            if let Some(l) = row["layer_output_error"].as_object() {
                let (rtn, gptq) = (l["rtn"].as_f64().unwrap(), l["gptq"].as_f64().unwrap());
                assert!(gptq < rtn, "{}: GPTQ {gptq} vs RTN {rtn}", row["tensor"]);
                n += 1;
            }
        }
        assert_eq!(n, 14, "every decoder linear went through GPTQ");
        verifies(&fx, &o);
        outs.push(std::fs::read(o.join("model.safetensors")).unwrap());
    }
    assert!(outs[0] == outs[1], "same bytes with 1 and 2 threads");
    let qc = &read_json(&d.path().join("g1/config.json"))["quantization_config"];
    assert_eq!(qc["format"], "pack-quantized");
    assert_eq!(qc["config_groups"]["group_0"]["weights"]["group_size"], 64);
    // GPTQ's targets are the integer grids and the GGUF types with a code grid (all the
    // quantized ones); others (here F16) are refused, as is --mse-clip without GPTQ
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "f16".as_ref(),
        "--method".as_ref(),
        "gptq".as_ref(),
        "-o".as_ref(),
        d.path().join("x.gguf").as_os_str(),
    ]);
    assert!(
        r.code != 0
            && r.stderr.contains(
                "q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs"
            ),
        "{}",
        r.stderr
    );
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "int4".as_ref(),
        "--mse-clip".as_ref(),
        "-o".as_ref(),
        d.path().join("m").as_os_str(),
    ]);
    assert!(
        r.code != 0 && r.stderr.contains("--mse-clip"),
        "{}",
        r.stderr
    );
    let r = quantize(&[
        fx.as_os_str(),
        "--to".as_ref(),
        "fp8".as_ref(),
        "--method".as_ref(),
        "gptq".as_ref(),
        "-o".as_ref(),
        d.path().join("f").as_os_str(),
    ]);
    assert!(
        r.code != 0 && r.stderr.contains("integer targets"),
        "{}",
        r.stderr
    );
}
