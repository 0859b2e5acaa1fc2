//! `quantize imatrix MODEL [--calib FILE] -o imatrix.gguf`: llama.cpp's importance matrix from
//! our forward pass — per decoder linear, the sum over the calibration tokens of the square of
//! each input channel, and the number of tokens — in llama-imatrix's GGUF form (`general.type`
//! "imatrix", `<tensor>.in_sum2` and `<tensor>.counts`, tensors sorted by name), so llama.cpp
//! users (`llama-quantize --imatrix`) and `quantize --imatrix` can use our calibration.
//!
//! The text is cut as llama-imatrix cuts it (the chunking of [`super::eval`]: tokenized once,
//! BOS first when the tokenizer adds one, `tokens / ctx` chunks, each chunk's first token BOS),
//! and every token of every chunk counts. Differences from llama-imatrix: the forward pass is
//! f32 on the model's own weights and sums are accumulated in f64, so values are close to
//! llama-imatrix's, not bit-equal. The output head is not included (llama-imatrix's default).

use crate::arch::gguf_linear;
use crate::error::{Error, Result};
use qs_formats::gguf::{self, Value};
use qs_model::{layer_forward, Input, Linear, Model};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct ImatrixConfig {
    pub model: PathBuf,
    pub output: PathBuf,
    /// The calibration text (plain, or JSONL with "text"); the shipped default when `None`.
    pub calib: Option<PathBuf>,
    /// Tokens per chunk (llama-imatrix's -c).
    pub ctx: usize,
    /// At most this many chunks.
    pub chunks: Option<usize>,
    pub threads: Option<usize>,
    pub force: bool,
}

/// What `imatrix` computed.
#[derive(Debug, Clone, Serialize)]
pub struct ImatrixSummary {
    pub chunks: usize,
    pub ctx: usize,
    pub tokens: usize,
    /// Weight tensors with an entry.
    pub entries: usize,
}

/// Sums of squared inputs per decoder linear, as [`compute`] accumulates them.
#[derive(Debug, Clone)]
pub struct Computed {
    /// Per weight tensor (GGUF name): Σ over tokens of each input channel squared.
    pub sums: BTreeMap<String, Vec<f64>>,
    pub chunks: usize,
    pub ctx: usize,
    /// Tokens every sum runs over (`chunks × ctx`).
    pub tokens: usize,
    /// The text's path, as llama-imatrix records its dataset.
    pub dataset: String,
}

impl Computed {
    /// The matrix as [`qs_formats::imatrix::load`] reads it back from the file [`imatrix`]
    /// writes (sums and count rounded to f32, then divided), so a run given it encodes exactly
    /// as a run given that file.
    pub fn to_imatrix(&self) -> qs_formats::imatrix::Imatrix {
        let n = self.tokens as f32;
        qs_formats::imatrix::Imatrix {
            entries: self
                .sums
                .iter()
                .map(|(k, s)| (k.clone(), s.iter().map(|&v| v as f32 / n).collect()))
                .collect(),
            datasets: vec![self.dataset.clone()],
            chunk_count: self.chunks as u32,
        }
    }
}

/// The importance matrix of `model` on `calib` (the shipped default text when `None`), cut in
/// chunks of `ctx` tokens (at most `chunks`): the forward pass, nothing written.
pub fn compute(
    model: &Path,
    calib: Option<&Path>,
    ctx: usize,
    chunks: Option<usize>,
    threads: Option<usize>,
) -> Result<Computed> {
    if ctx < 2 {
        return Err(Error::Config("--ctx must be at least 2".into()));
    }
    let m = super::eval::load(model)?;
    let tok = m.tokenizer.as_ref().ok_or_else(|| Error::Input {
        path: model.to_path_buf(),
        msg: "no tokenizer.json (or byte-level BPE GGUF metadata) to tokenize the text with".into(),
    })?;
    let text = qs_formats::calib::load_text(calib)?;
    let text_path = calib
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("(shipped default text)"));
    let (ids, n_chunks) = super::eval::text_chunks(tok, m.bos, &text, &text_path, ctx, chunks)?;
    let pool = crate::jobs::pool(threads)?;
    let sums = pool.install(|| -> Result<BTreeMap<(usize, Input), Vec<f64>>> {
        let model_w = Model::with_weights(m.weights.as_ref(), &m.config)
            .map_err(|e| super::eval::model_err(model, e))?;
        let merr = |e| super::eval::model_err(model, e);
        let mut sums: BTreeMap<(usize, Input), Vec<f64>> = BTreeMap::new();
        // groups of chunks through every layer, bounding activation memory
        let group = (8192 / ctx).max(1);
        let mut c0 = 0;
        while c0 < n_chunks {
            let c1 = (c0 + group).min(n_chunks);
            let batch = super::eval::chunk_batch(&ids, c0, c1, ctx, m.bos);
            let mut x = model_w.embed(&batch).map_err(merr)?;
            for l in 0..model_w.cfg.layers {
                let layer = model_w.layer(l).map_err(merr)?;
                let (y, cap) = layer_forward(&model_w.cfg, &layer, x.as_ref(), ctx, true);
                let cap = cap.expect("captured");
                for input in Input::ALL {
                    let xin = input.of(&cap);
                    let acc = sums
                        .entry((l, input))
                        .or_insert_with(|| vec![0f64; xin.ncols()]);
                    for r in 0..xin.nrows() {
                        for (c, a) in acc.iter_mut().enumerate() {
                            let v = xin[(r, c)] as f64;
                            *a += v * v;
                        }
                    }
                }
                x = y;
            }
            c0 = c1;
        }
        Ok(sums)
    })?;
    // one entry per linear (linears sharing an input share its sums), sorted by name
    let mut entries: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // a fused tensor (Phi-3's attn_qkv; its ffn_up holds gate and up) reads its linears' input
    let fused: Vec<(&str, Input)> = crate::arch::detect(&m.config)
        .map(|a| {
            a.fused
                .iter()
                .filter_map(|(hf, gg)| {
                    let (_, parts) = Linear::FUSED.into_iter().find(|(m, _)| m == hf)?;
                    Some((*gg, parts.first()?.input()))
                })
                .collect()
        })
        .unwrap_or_default();
    for ((l, input), s) in &sums {
        for lin in Linear::ALL.into_iter().filter(|lin| lin.input() == *input) {
            entries.insert(format!("blk.{l}.{}.weight", gguf_linear(lin)), s.clone());
        }
        for (gg, _) in fused.iter().filter(|(_, i)| i == input) {
            entries.insert(format!("blk.{l}.{gg}.weight"), s.clone());
        }
    }
    Ok(Computed {
        sums: entries,
        chunks: n_chunks,
        ctx,
        tokens: n_chunks * ctx,
        dataset: text_path.display().to_string(),
    })
}

/// Computes the importance matrix of `cfg.model` on the text and writes it to `cfg.output`.
pub fn imatrix(cfg: &ImatrixConfig) -> Result<ImatrixSummary> {
    qs_formats::output::check_not_input(
        &cfg.output,
        false,
        &crate::input_paths(&cfg.model)
            .into_iter()
            .chain(cfg.calib.clone())
            .collect::<Vec<_>>(),
    )?;
    qs_formats::output::check_file_target(&cfg.output, true)?;
    qs_formats::output::check_target(&cfg.output, cfg.force)?;
    let c = compute(
        &cfg.model,
        cfg.calib.as_deref(),
        cfg.ctx,
        cfg.chunks,
        cfg.threads,
    )?;
    let kvs = vec![
        ("general.type".to_string(), Value::String("imatrix".into())),
        (
            "imatrix.datasets".to_string(),
            Value::Array(8, vec![Value::String(c.dataset.clone())]),
        ),
        (
            "imatrix.chunk_count".to_string(),
            Value::U32(c.chunks as u32),
        ),
        ("imatrix.chunk_size".to_string(), Value::U32(c.ctx as u32)),
    ];
    // shapes as llama-imatrix's writer stores them (trailing 1s dropped: [n] and [1])
    let mut tensors = Vec::new();
    let mut data: Vec<Vec<u8>> = Vec::new();
    for (name, s) in &c.sums {
        tensors.push(gguf::TensorPlan {
            name: format!("{name}.in_sum2"),
            ne: vec![s.len() as u64],
            ty: qs_numeric::GgmlType::F32,
        });
        data.push(s.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect());
        tensors.push(gguf::TensorPlan {
            name: format!("{name}.counts"),
            ne: vec![1],
            ty: qs_numeric::GgmlType::F32,
        });
        data.push((c.tokens as f32).to_le_bytes().to_vec());
    }
    let out_err = |msg: String| Error::Output {
        path: cfg.output.clone(),
        msg,
    };
    let layout = gguf::plan(&kvs, &tensors).map_err(|e| out_err(e.to_string()))?;
    write(&cfg.output, cfg.force, &layout, &data)?;
    Ok(ImatrixSummary {
        chunks: c.chunks,
        ctx: c.ctx,
        tokens: c.tokens,
        entries: c.sums.len(),
    })
}

fn write(path: &Path, force: bool, layout: &gguf::GgufLayout, data: &[Vec<u8>]) -> Result<()> {
    let f = qs_formats::output::AtomicFile::create(path, force)?;
    f.write_at(0, &layout.header)?;
    f.set_len(layout.total_len)?;
    for (off, bytes) in layout.offsets.iter().zip(data) {
        f.write_at(*off, bytes)?;
    }
    f.commit()?;
    Ok(())
}
