//! `verify ORIGINAL QUANTIZED`: dequantize every tensor of QUANTIZED with the same kernels the
//! writer validates with, and compare against ORIGINAL.
//!
//! QUANTIZED may be a GGUF file, or safetensors (file, sharded, or folder) holding plain float
//! tensors and/or compressed-tensors pack-quantized / float-quantized weights.

use crate::error::{Error, Result};
use crate::jobs::{chunk_rows, pool, run_jobs, CHUNK_ELEMS};
use crate::report::{Report, ReportRow};
use crate::Progress;
use qs_formats::gguf::GgufFile;
use qs_formats::source::ModelSource;
use qs_numeric::layout::rows_cols;
use qs_numeric::ErrorStats;
use std::collections::HashMap;
use std::path::Path;

enum Quantized {
    Gguf(GgufFile),
    St(Box<ModelSource>),
}

pub fn verify(
    original: &Path,
    quantized: &Path,
    threads: Option<usize>,
    progress: &dyn Progress,
) -> Result<Report> {
    let mut orig = ModelSource::open(original)?;
    let q = if is_gguf(quantized) {
        let g = GgufFile::open(quantized)?;
        // a converted GGUF (llama.cpp's architecture name, not --keep-names' model type)
        // holds a mixture's experts stacked (gpt-oss's rearranged)
        if let Some(qs_formats::gguf::Value::String(a)) = g.get("general.architecture") {
            crate::checkpoint::as_converted(&mut orig, a)?;
        }
        Quantized::Gguf(g)
    } else {
        Quantized::St(Box::new(ModelSource::open(quantized)?))
    };
    let logical = match &q {
        Quantized::Gguf(g) => gguf_logical(g, Some(&orig))?,
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
        // the original may be a GGUF of any block type we read: decoded as the run reads it
        let x = crate::run::source_rows(&orig, ot, l.permute, l.shift, j.r0, j.r1);
        debug_assert_eq!(x.len(), (j.r1 - j.r0) * cols);
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

use crate::checkpoint::{gguf_logical, is_gguf, st_logical};
