//! `verify ORIGINAL QUANTIZED`: dequantize every tensor of QUANTIZED with the same kernels the
//! writer validates with, and compare against ORIGINAL.
//!
//! QUANTIZED may be a GGUF file, or safetensors (file, sharded, or folder) holding plain float
//! tensors and/or compressed-tensors pack-quantized / float-quantized weights.

use crate::arch::Mapped;
use crate::error::{Error, Result};
use crate::jobs::{chunk_rows, pool, run_jobs, CHUNK_ELEMS};
use crate::report::{Report, ReportRow};
use crate::Progress;
use qs_formats::gguf::{GgufFile, Value};
use qs_formats::source::{ModelSource, SourceTensor};
use qs_numeric::dtype::decode_f32;
use qs_numeric::layout::rows_cols;
use qs_numeric::layout::{AutoGptq, FloatLayout, FloatQuantized, PackQuantized};
use qs_numeric::rtn::IntSpec;
use qs_numeric::{DType, ErrorStats, Granularity, Scheme};
use std::collections::HashMap;
use std::path::Path;

/// A logical tensor of the quantized model: how to decode it and where its slot bytes are.
pub(crate) struct Logical<'a> {
    /// The original tensor's name.
    pub name: String,
    /// Output row r holds original row `permuted_source_row(r, rows, heads)` (llama q/k).
    pub permute: Option<usize>,
    pub shape: Vec<usize>,
    pub scheme: Scheme,
    pub slots: Vec<&'a [u8]>,
    pub bytes: u64,
}

enum Quantized {
    Gguf(GgufFile),
    St(ModelSource),
}

pub fn verify(
    original: &Path,
    quantized: &Path,
    threads: Option<usize>,
    progress: &dyn Progress,
) -> Result<Report> {
    let orig = ModelSource::open(original)?;
    let q = if is_gguf(quantized) {
        Quantized::Gguf(GgufFile::open(quantized)?)
    } else {
        Quantized::St(ModelSource::open(quantized)?)
    };
    let logical = match &q {
        Quantized::Gguf(g) => gguf_logical(g, &orig)?,
        Quantized::St(s) => st_logical(s)?,
    };
    let by_name: HashMap<&str, usize> = orig
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.info.name.as_str(), i))
        .collect();
    for l in &logical {
        let Some(&oi) = by_name.get(l.name.as_str()) else {
            return Err(Error::Verify(format!(
                "{}: tensor '{}' is not in {}",
                quantized.display(),
                l.name,
                original.display()
            )));
        };
        let ot = &orig.tensors[oi].info;
        let (or, oc) = rows_cols(&ot.shape);
        let (lr, lc) = rows_cols(&l.shape);
        if (or, oc) != (lr, lc) {
            return Err(Error::Verify(format!(
                "tensor '{}': shape {:?} in {} but {:?} in {}",
                l.name,
                l.shape,
                quantized.display(),
                ot.shape,
                original.display()
            )));
        }
        if !ot.dtype.is_float() {
            return Err(Error::Verify(format!(
                "tensor '{}': original is {}, not a float tensor",
                l.name, ot.dtype
            )));
        }
    }
    let missing: Vec<&str> = {
        let have: std::collections::HashSet<&str> =
            logical.iter().map(|l| l.name.as_str()).collect();
        orig.tensors
            .iter()
            .map(|t| t.info.name.as_str())
            .filter(|n| !have.contains(n))
            .collect()
    };
    if !missing.is_empty() {
        return Err(Error::Verify(format!(
            "{} lacks {} tensor(s) of the original, e.g. '{}'",
            quantized.display(),
            missing.len(),
            missing[0]
        )));
    }

    struct Job {
        l: usize,
        r0: usize,
        r1: usize,
    }
    let mut jobs = Vec::new();
    for (li, l) in logical.iter().enumerate() {
        let (rows, cols) = rows_cols(&l.shape);
        for (r0, r1) in chunk_rows(rows, cols, l.scheme.row_align(), CHUNK_ELEMS) {
            jobs.push(Job { l: li, r0, r1 });
        }
    }
    let pool = pool(threads)?;
    progress.start(logical.iter().map(|l| l.bytes).sum());
    let stats = run_jobs(&pool, &jobs, |j| {
        let l = &logical[j.l];
        let (_, cols) = rows_cols(&l.shape);
        let ot = &orig.tensors[by_name[l.name.as_str()]];
        let sz = ot.info.dtype.size();
        let mut x = vec![0f32; (j.r1 - j.r0) * cols];
        let all = orig.bytes(ot);
        match l.permute {
            None => decode_f32(
                ot.info.dtype,
                &all[j.r0 * cols * sz..j.r1 * cols * sz],
                &mut x,
            ),
            Some(h) => {
                let rows = rows_cols(&l.shape).0;
                for (k, out) in x.chunks_mut(cols.max(1)).enumerate() {
                    let s = crate::arch::permuted_source_row(j.r0 + k, rows, h);
                    decode_f32(ot.info.dtype, &all[s * cols * sz..(s + 1) * cols * sz], out);
                }
            }
        }
        let parts: Vec<&[u8]> = l
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| &s[l.scheme.slot_range(i, &l.shape, j.r0, j.r1)])
            .collect();
        let mut y = vec![0f32; x.len()];
        l.scheme.decode(&l.shape, j.r0, j.r1, &parts, &mut y);
        progress.inc(parts.iter().map(|p| p.len() as u64).sum());
        Ok(ErrorStats::of(&x, &y))
    })?;
    progress.finish();
    let mut per = vec![ErrorStats::default(); logical.len()];
    for (j, s) in jobs.iter().zip(&stats) {
        per[j.l].merge(s);
    }
    let rows = logical
        .iter()
        .zip(per)
        .map(|(l, s)| {
            let ot = &orig.tensors[by_name[l.name.as_str()]].info;
            let n: usize = l.shape.iter().product();
            ReportRow {
                tensor: l.name.clone(),
                shape: l.shape.clone(),
                dtype_in: ot.dtype.to_string(),
                storage: l.scheme.label(),
                bytes_in: (ot.end - ot.start) as u64,
                bytes_out: l.bytes,
                bits_per_weight: if n == 0 {
                    0.0
                } else {
                    l.bytes as f64 * 8.0 / n as f64
                },
                error: Some(s.summary()),
                audit: None,
                note: None,
                layer_output_error: None,
                stats: s,
            }
        })
        .collect();
    Ok(Report::new(
        "verify",
        original.display().to_string(),
        quantized.display().to_string(),
        None,
        rows,
    ))
}

pub(crate) use qs_formats::source::is_gguf;

fn gguf_logical<'a>(g: &'a GgufFile, orig: &ModelSource) -> Result<Vec<Logical<'a>>> {
    // A converted model: map the original's HF names forward to find each GGUF tensor's source.
    let mut back: HashMap<String, (String, Option<usize>)> = HashMap::new();
    if let (Some(Value::String(a)), Some(c)) = (g.get("general.architecture"), &orig.config) {
        if let Ok(arch) = crate::arch::detect(c).copied() {
            if arch.name == a {
                for t in &orig.tensors {
                    if let Ok(Mapped::Tensor {
                        name,
                        permute_heads,
                    }) = crate::arch::map_tensor(&arch, c, &t.info.name)
                    {
                        back.insert(name, (t.info.name.clone(), permute_heads));
                    }
                }
            }
        }
    }
    let mut v = Vec::new();
    for t in &g.tensors {
        let scheme = Scheme::for_ggml(t.ty).ok_or_else(|| {
            let ty = t.ty;
            Error::Verify(format!(
                "{}: tensor '{}': dequantizing {ty} is not supported yet",
                g.path.display(),
                t.name
            ))
        })?;
        let b = g.bytes(t);
        let (name, permute) = back.get(&t.name).cloned().unwrap_or((t.name.clone(), None));
        v.push(Logical {
            name,
            permute,
            shape: t.shape(),
            scheme,
            slots: vec![b],
            bytes: b.len() as u64,
        });
    }
    Ok(v)
}

/// compressed-tensors weight arguments for a module, from `quantization_config`.
fn weight_args<'c>(
    qc: Option<&'c serde_json::Value>,
    module: &str,
) -> Option<&'c serde_json::Value> {
    let groups = qc?.get("config_groups")?.as_object()?;
    let mut fallback = None;
    for g in groups.values() {
        let targets = g.get("targets")?.as_array()?;
        for t in targets.iter().filter_map(|t| t.as_str()) {
            if t == module {
                return g.get("weights");
            }
            if let Some(re) = t.strip_prefix("re:") {
                if regex::Regex::new(re).is_ok_and(|r| r.is_match(module)) {
                    return g.get("weights");
                }
            }
            if t == "Linear" {
                fallback = g.get("weights");
            }
        }
    }
    fallback
}

pub(crate) fn st_logical(s: &ModelSource) -> Result<Vec<Logical<'_>>> {
    let qc_meta: Option<serde_json::Value> = s
        .files
        .first()
        .and_then(|f| f.metadata.get("quantization_config"))
        .and_then(|t| serde_json::from_str(t).ok());
    let qc = s
        .config
        .as_ref()
        .and_then(|c| c.get("quantization_config"))
        .or(qc_meta.as_ref());
    let by_name: HashMap<&str, usize> = s
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.info.name.as_str(), i))
        .collect();
    let get = |n: &str| by_name.get(n).map(|&i| &s.tensors[i]);
    // a tensor that cannot be read as what it claims to be: named with the file it is in
    let bad = |t: &SourceTensor, m: String| Error::Tensor {
        file: s.path_of(t).to_path_buf(),
        tensor: t.info.name.clone(),
        msg: m,
    };
    let mut companions = std::collections::HashSet::new();
    let mut v = Vec::new();
    for t in &s.tensors {
        let name = &t.info.name;
        if let Some(base) = name.strip_suffix("_packed") {
            let scale = get(&format!("{base}_scale"))
                .ok_or_else(|| bad(t, "has no _scale companion".into()))?;
            let shape_t = get(&format!("{base}_shape"))
                .ok_or_else(|| bad(t, "has no _shape companion".into()))?;
            let zp = get(&format!("{base}_zero_point"));
            let sb = s.bytes(shape_t);
            let dims: Vec<usize> = match shape_t.info.dtype {
                DType::I64 => sb
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8")) as usize)
                    .collect(),
                DType::I32 => sb
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4")) as usize)
                    .collect(),
                d => return Err(bad(t, format!("_shape has dtype {d}"))),
            };
            if dims.len() != 2 {
                return Err(bad(t, format!("_shape {dims:?} is not 2-D")));
            }
            let (rows, cols) = (dims[0], dims[1]);
            let w = weight_args(qc, base.strip_suffix(".weight").unwrap_or(base));
            let pw = t.info.shape.get(1).copied().unwrap_or(0);
            let bits = w
                .and_then(|w| w.get("num_bits"))
                .and_then(|b| b.as_u64())
                .map(|b| b as u32)
                .or_else(|| {
                    (1..=8)
                        .rev()
                        .find(|b| qs_numeric::pack::packed_words(cols, *b) == pw)
                })
                .ok_or_else(|| {
                    bad(
                        t,
                        "cannot tell the bit width (no quantization_config)".into(),
                    )
                })?;
            check_scale_dtype(scale.info.dtype, &format!("{base}_scale")).map_err(|m| bad(t, m))?;
            let sshape = &scale.info.shape;
            let ng = sshape.get(1).copied().unwrap_or(1);
            let granularity = if sshape.iter().product::<usize>() == 1 && rows != 1 {
                Granularity::Tensor
            } else if ng <= 1 {
                Granularity::Channel
            } else {
                Granularity::Group(cols / ng)
            };
            let gi = get(&format!("{base}_g_idx"));
            let scheme = Scheme::Int(PackQuantized {
                spec: IntSpec {
                    bits,
                    symmetric: zp.is_none(),
                },
                granularity,
                scale_dtype: scale.info.dtype,
                g_idx: gi.is_some(),
            });
            scheme
                .check(&[rows, cols])
                .map_err(|e| bad(t, e.to_string()))?;
            let mut slots = vec![s.bytes(t), s.bytes(scale)];
            companions.extend([format!("{base}_scale"), format!("{base}_shape")]);
            if let Some(z) = zp {
                slots.push(s.bytes(z));
                companions.insert(format!("{base}_zero_point"));
            }
            slots.push(sb);
            if let Some(g) = gi {
                let gb = s.bytes(g);
                if let Some(&x) = bytes_to_u32(gb).iter().find(|&&x| x as usize >= ng.max(1)) {
                    return Err(bad(t, format!("g_idx holds group {x} of {ng}")));
                }
                slots.push(gb);
                companions.insert(format!("{base}_g_idx"));
            }
            let got = check_sizes(&scheme, rows, cols, &slots).map_err(|m| bad(t, m))?;
            let bytes = got as u64;
            v.push(Logical {
                permute: None,
                name: base.to_string(),
                shape: vec![rows, cols],
                scheme,
                slots,
                bytes,
            });
        } else if let Some(prefix) = name.strip_suffix(".qweight") {
            // AutoGPTQ v1: qweight [cols·bits/32, rows], qzeros, scales [groups, rows], g_idx
            let comp = |suffix: &str| {
                get(&format!("{prefix}.{suffix}"))
                    .ok_or_else(|| bad(t, format!("has no {suffix} companion")))
            };
            let (qz, sc, gi) = (comp("qzeros")?, comp("scales")?, comp("g_idx")?);
            let rows = sc.info.shape.get(1).copied().unwrap_or(0);
            let groups = sc.info.shape.first().copied().unwrap_or(0);
            let cols = gi.info.shape.first().copied().unwrap_or(0);
            let packed_rows = t.info.shape.first().copied().unwrap_or(0);
            if cols == 0 || groups == 0 || (32 * packed_rows) % cols != 0 {
                return Err(bad(
                    t,
                    format!(
                        "shapes qweight {:?}, scales {:?}, g_idx {:?} do not fit together",
                        t.info.shape, sc.info.shape, gi.info.shape
                    ),
                ));
            }
            let bits = (32 * packed_rows / cols) as u32;
            let scheme = Scheme::Gptq(AutoGptq {
                bits,
                group: cols / groups,
            });
            scheme
                .check(&[rows, cols])
                .map_err(|e| bad(t, e.to_string()))?;
            if sc.info.dtype != DType::F16 {
                return Err(bad(
                    t,
                    format!("scales are {}, expected F16", sc.info.dtype),
                ));
            }
            let slots = vec![s.bytes(t), s.bytes(qz), s.bytes(sc), s.bytes(gi)];
            let got = check_sizes(&scheme, rows, cols, &slots).map_err(|m| bad(t, m))?;
            if let Some(&g) = bytes_to_u32(slots[3])
                .iter()
                .find(|&&g| g as usize >= groups)
            {
                return Err(bad(t, format!("g_idx holds group {g} of {groups}")));
            }
            companions.extend(["qzeros", "scales", "g_idx"].map(|x| format!("{prefix}.{x}")));
            v.push(Logical {
                permute: None,
                name: format!("{prefix}.weight"),
                shape: vec![rows, cols],
                scheme,
                slots,
                bytes: got as u64,
            });
        } else if matches!(t.info.dtype, DType::F8E4M3 | DType::F8E5M2) {
            let sname = format!("{name}_scale");
            let scale = get(&sname)
                .ok_or_else(|| bad(t, "fp8 tensor without a _scale companion".into()))?;
            companions.insert(sname.clone());
            check_scale_dtype(scale.info.dtype, &sname).map_err(|m| bad(t, m))?;
            let shape = t.info.shape.clone();
            if shape.len() != 2 {
                return Err(bad(t, format!("fp8 weight of shape {shape:?} is not 2-D")));
            }
            let (rows, cols) = (shape[0], shape[1]);
            let sshape = &scale.info.shape;
            let numel: usize = sshape.iter().product();
            let misfit = || {
                let layouts = format!("tensor: one value, channel: [{rows}, 1], or blocks");
                bad(
                    t,
                    format!("{sname} has shape {sshape:?}, no fp8 scale layout ({layouts}) of a [{rows}, {cols}] weight"),
                )
            };
            let args = weight_args(qc, name.strip_suffix(".weight").unwrap_or(name));
            let granularity = if sshape.len() <= 1 && numel == 1 {
                Granularity::Tensor
            } else if sshape.len() != 2 {
                return Err(misfit());
            } else if sshape[0] == rows && sshape[1] == 1 {
                Granularity::Channel
            } else if numel == 1 {
                Granularity::Tensor
            } else {
                let block = args
                    .and_then(|w| w.get("block_structure"))
                    .and_then(|b| serde_json::from_value::<[usize; 2]>(b.clone()).ok())
                    .unwrap_or([
                        rows.div_ceil(sshape[0].max(1)),
                        cols.div_ceil(sshape[1].max(1)),
                    ]);
                if block[0] == 0
                    || block[1] == 0
                    || [rows.div_ceil(block[0]), cols.div_ceil(block[1])] != sshape[..]
                {
                    return Err(misfit());
                }
                Granularity::Block(block[0], block[1])
            };
            // the scale's shape must be the layout quantization_config declares (one value on
            // one row is a tensor and a channel scale alike)
            let declared = args
                .and_then(|w| w.get("strategy"))
                .and_then(|d| d.as_str());
            if let Some(d) = declared {
                let either = rows == 1 && numel == 1 && matches!(d, "tensor" | "channel");
                if d != granularity.strategy() && !either {
                    return Err(bad(
                        t,
                        format!(
                            "{sname} has shape {sshape:?}, a {} scale, but quantization_config declares strategy \"{d}\"",
                            granularity.strategy()
                        ),
                    ));
                }
            }
            let scheme = Scheme::Fp8(FloatQuantized {
                format: t.info.dtype,
                granularity,
                scale_dtype: scale.info.dtype,
            });
            scheme.check(&shape).map_err(|e| bad(t, e.to_string()))?;
            let slots = vec![s.bytes(t), s.bytes(scale)];
            let bytes = check_sizes(&scheme, rows, cols, &slots).map_err(|m| bad(t, m))? as u64;
            v.push(Logical {
                permute: None,
                name: name.clone(),
                shape,
                scheme,
                slots,
                bytes,
            });
        }
    }
    for t in &s.tensors {
        let name = &t.info.name;
        if companions.contains(name)
            || name.ends_with("_packed")
            || name.ends_with(".qweight")
            || v.iter().any(|l| &l.name == name)
        {
            continue;
        }
        match t.info.dtype {
            DType::F32 | DType::F16 | DType::BF16 => {
                let b = s.bytes(t);
                v.push(Logical {
                    permute: None,
                    name: name.clone(),
                    shape: t.info.shape.clone(),
                    scheme: Scheme::Float(FloatLayout {
                        dtype: t.info.dtype,
                        clamp: false,
                    }),
                    slots: vec![b],
                    bytes: b.len() as u64,
                });
            }
            d => {
                return Err(bad(
                    t,
                    format!("{d} tensor that is not part of a quantized weight"),
                ))
            }
        }
    }
    Ok(v)
}

/// Scales are stored as floats: anything else would be decoded as garbage (or not at all).
fn check_scale_dtype(d: DType, scale: &str) -> std::result::Result<(), String> {
    match d {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        d => Err(format!("{scale} has dtype {d}, expected F32, F16 or BF16")),
    }
}

/// The stored slots have the sizes `scheme` gives a `rows × cols` tensor; their total.
fn check_sizes(
    scheme: &Scheme,
    rows: usize,
    cols: usize,
    slots: &[&[u8]],
) -> std::result::Result<usize, String> {
    let expect: Vec<usize> = scheme
        .slots(&[rows, cols])
        .iter()
        .map(|x| x.nbytes)
        .collect();
    let got: Vec<usize> = slots.iter().map(|x| x.len()).collect();
    if expect != got {
        return Err(format!(
            "stored sizes {got:?} do not match {} for shape [{rows}, {cols}] (expected {expect:?})",
            scheme.label()
        ));
    }
    Ok(got.iter().sum())
}

fn bytes_to_u32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
        .collect()
}
