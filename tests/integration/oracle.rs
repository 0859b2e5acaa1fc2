//! Independent oracles: llama.cpp's Python package `gguf` (reader and reference quantizers),
//! `ml_dtypes` (FP8), and the `gguf-rs-lib` crate reading our GGUF files.

use crate::util::*;
use qs_numeric::fp8::{E4M3, E5M2};
use qs_numeric::ggml::{dequantize_row, quantize_row, GgmlType};
use qs_numeric::synth::{weight_matrix, Rng};
use safetensors::Dtype;
use std::path::Path;

/// Weight-like rows plus the edge cases that break codecs: zeros, constants, denormals,
/// a block whose extreme is negative, ties at exactly half a step.
fn codec_rows() -> Vec<f32> {
    let mut v = weight_matrix(48, 256, 0.02, 99);
    v.extend(vec![0.0; 256]);
    v.extend(vec![0.37; 256]);
    v.extend(vec![-1e-40; 256]);
    v.extend((0..256).map(|i| {
        if i % 32 == 0 {
            -2.0
        } else {
            (i % 7) as f32 * 0.25
        }
    }));
    v.extend((0..256).map(|i| (i as f32 - 128.0) * 0.5));
    v.extend(weight_matrix(10, 256, 3.0, 7));
    v
}

fn write_f32(p: &Path, v: &[f32]) {
    std::fs::write(p, f32_bytes(v)).unwrap();
}

#[test]
fn ggml_codecs_match_gguf_py_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let x = codec_rows();
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::MXFP4,
    ] {
        let mut q = vec![0u8; x.len() / 256 * ty.row_bytes(256)];
        let mut y = vec![0f32; x.len()];
        for (r, (xr, qr)) in x
            .chunks(256)
            .zip(q.chunks_mut(ty.row_bytes(256)))
            .enumerate()
        {
            quantize_row(ty, xr, qr);
            dequantize_row(ty, qr, &mut y[r * 256..(r + 1) * 256]);
        }
        write_f32(&d.path().join(format!("{ty}.in.f32")), &x);
        std::fs::write(d.path().join(format!("{ty}.q")), &q).unwrap();
        write_f32(&d.path().join(format!("{ty}.deq.f32")), &y);
    }
    // FP8: magnitudes spread over the whole range (and beyond, to test saturation), plus
    // exact midpoints between neighbouring codes (ties to even).
    let mut rng = Rng::new(5);
    for (name, f) in [("E4M3", E4M3), ("E5M2", E5M2)] {
        let mut v: Vec<f32> = (0..20000)
            .map(|_| {
                let m = (rng.uniform() * 40.0 - 24.0).exp2() as f32;
                if rng.next_u64() & 1 == 0 {
                    m
                } else {
                    -m
                }
            })
            .collect();
        for c in 0..f.max_code {
            v.push((f.decode(c) + f.decode(c + 1)) / 2.0);
        }
        let q: Vec<u8> = v.iter().map(|&x| f.encode(x)).collect();
        let back: Vec<f32> = q.iter().map(|&b| f.decode(b)).collect();
        write_f32(&d.path().join(format!("{name}.in.f32")), &v);
        std::fs::write(d.path().join(format!("{name}.q")), &q).unwrap();
        write_f32(&d.path().join(format!("{name}.deq.f32")), &back);
    }
    let r = oracle(&["codecs".as_ref(), d.path().as_os_str()]);
    assert_eq!(r["checked"].as_array().unwrap().len(), 9);
}

/// gguf.GGUFReader reads every GGUF we write, and each tensor equals gguf-py's own
/// quantization of the input — for the bf16 fixture model and for an f32 checkpoint.
#[test]
fn gguf_files_read_and_requantize_identically_in_gguf_py() {
    let d = tempfile::tempdir().unwrap();
    let f32in = d.path().join("f32.safetensors");
    let a = weight_matrix(64, 512, 0.02, 3);
    let b = weight_matrix(96, 128, 0.5, 4);
    write_st(
        &f32in,
        &[
            ("blk.a.weight", Dtype::F32, vec![64, 512], f32_bytes(&a)),
            ("blk.b.weight", Dtype::F32, vec![96, 128], f32_bytes(&b)),
            (
                "blk.norm.weight",
                Dtype::F32,
                vec![512],
                f32_bytes(&a[..512]),
            ),
        ],
    );
    let fx = fixture().join("model.safetensors");
    for input in [&fx, &f32in] {
        for t in [
            "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "f16", "bf16", "f32", "q2_k", "q3_k", "q4_k",
            "q5_k", "q6_k", "iq4_nl",
        ] {
            let o = d.path().join(format!(
                "{}-{t}.gguf",
                input.file_stem().unwrap().to_string_lossy()
            ));
            // input names kept: this test is about the bytes (conversion is tested with llama.cpp)
            quantize(&[
                input.as_os_str(),
                "--to".as_ref(),
                t.as_ref(),
                "-o".as_ref(),
                o.as_os_str(),
                "-q".as_ref(),
                "--keep-names".as_ref(),
            ])
            .ok();
            let r = oracle(&["gguf".as_ref(), o.as_os_str(), input.as_os_str()]);
            assert!(r["tensors"].as_u64().unwrap() >= 3, "{t}");
            assert_eq!(r["alignment"], 32);
            gguf_rs_lib_agrees(&o);
        }
    }
}

/// The gguf-rs-lib crate parses the file and finds the same tensors, types, shapes and bytes
/// as our reader.
fn gguf_rs_lib_agrees(path: &Path) {
    let ours = qs_formats::gguf::GgufFile::open(path).unwrap();
    let mut theirs = gguf_rs_lib::reader::GGUFFileReader::new(std::fs::File::open(path).unwrap())
        .unwrap_or_else(|e| panic!("gguf-rs-lib cannot read {}: {e}", path.display()));
    assert_eq!(theirs.tensor_count(), ours.tensors.len());
    assert_eq!(theirs.header().version, 3);
    for t in &ours.tensors {
        let info = theirs
            .get_tensor_info(&t.name)
            .unwrap_or_else(|| panic!("{} missing", t.name))
            .clone();
        assert_eq!(info.shape().dimensions, t.ne, "{}", t.name);
        assert_eq!(info.tensor_type().name(), t.ty.name(), "{}", t.name);
        let data = theirs.load_tensor_data(&t.name).unwrap().unwrap();
        assert_eq!(data.as_slice(), ours.bytes(t), "{}", t.name);
    }
}

/// Every ggml type we write, quantized by ggml itself (`ggml_quantize_chunk`, no importance
/// matrix) and dequantized by ggml's `to_float`: our bytes and our values must be identical.
#[test]
fn ggml_codecs_match_ggml_quantize_chunk() {
    let d = tempfile::tempdir().unwrap();
    let x = codec_rows();
    let input = d.path().join("in.f32");
    write_f32(&input, &x);
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::MXFP4,
    ] {
        let (q_path, deq_path) = (
            d.path().join(format!("{ty}.q")),
            d.path().join(format!("{ty}.deq")),
        );
        let out = std::process::Command::new(ggml_quant())
            .args([
                ty.name().as_ref(),
                "256".as_ref(),
                input.as_os_str(),
                q_path.as_os_str(),
                deq_path.as_os_str(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ggml-quant {ty}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = std::fs::read(&q_path).unwrap();
        let rb = ty.row_bytes(256);
        let mut ours = vec![0u8; x.len() / 256 * rb];
        for (xr, qr) in x.chunks(256).zip(ours.chunks_mut(rb)) {
            quantize_row(ty, xr, qr);
        }
        if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            panic!(
                "{ty}: byte {i} (row {}, offset {}) ours {:#04x} ggml {:#04x}",
                i / rb,
                i % rb,
                ours[i],
                theirs[i]
            );
        }
        assert_eq!(ours.len(), theirs.len(), "{ty}");
        let their_deq: Vec<f32> = std::fs::read(&deq_path)
            .unwrap()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mut our_deq = vec![0f32; x.len()];
        for (qr, yr) in ours.chunks(rb).zip(our_deq.chunks_mut(256)) {
            dequantize_row(ty, qr, yr);
        }
        for (i, (a, b)) in our_deq.iter().zip(&their_deq).enumerate() {
            assert!(
                a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0),
                "{ty}: value {i}: ours {a:e} ggml {b:e}"
            );
        }
    }
}

/// The same with an importance matrix (per-column weights, as llama-imatrix produces):
/// ggml's `quantize_row_*_impl` paths, byte for byte.
#[test]
fn ggml_codecs_with_importance_matrix_match_ggml() {
    let d = tempfile::tempdir().unwrap();
    let n_per_row = 512;
    let mut x = weight_matrix(40, n_per_row, 0.02, 21);
    x.extend(vec![0.0; n_per_row]);
    x.extend((0..n_per_row).map(|i| ((i * 7919) % 13) as f32 * 0.01 - 0.06));
    let mut rng = Rng::new(3);
    // activation energy per input column: log-normal, a few hot columns
    let imatrix: Vec<f32> = (0..n_per_row)
        .map(|i| ((rng.normal() * 1.5).exp() * if i % 97 == 5 { 50.0 } else { 1.0 }) as f32)
        .collect();
    let (input, im) = (d.path().join("in.f32"), d.path().join("imatrix.f32"));
    write_f32(&input, &x);
    write_f32(&im, &imatrix);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
    ] {
        let (q_path, deq_path) = (
            d.path().join(format!("{ty}.q")),
            d.path().join(format!("{ty}.deq")),
        );
        let out = std::process::Command::new(ggml_quant())
            .args([
                ty.name().as_ref(),
                n_per_row.to_string().as_ref(),
                input.as_os_str(),
                q_path.as_os_str(),
                deq_path.as_os_str(),
                im.as_os_str(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ggml-quant {ty}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = std::fs::read(&q_path).unwrap();
        let rb = ty.row_bytes(n_per_row);
        let mut ours = vec![0u8; x.len() / n_per_row * rb];
        for (xr, qr) in x.chunks(n_per_row).zip(ours.chunks_mut(rb)) {
            qs_numeric::ggml::quantize_row_weighted(ty, xr, &imatrix, qr);
        }
        if let Some(i) = ours.iter().zip(&theirs).position(|(a, b)| a != b) {
            panic!(
                "{ty} with imatrix: byte {i} (row {}, offset {}) ours {:#04x} ggml {:#04x}",
                i / rb,
                i % rb,
                ours[i],
                theirs[i]
            );
        }
        assert_eq!(ours.len(), theirs.len());
    }
}
