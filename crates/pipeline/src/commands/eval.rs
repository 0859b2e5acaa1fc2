//! `quantize eval MODEL [--against ORIGINAL] --text FILE`: perplexity of a model, and against an
//! original the KL divergence and top-1 agreement of their next-token distributions — the
//! figures llama.cpp's `llama-perplexity` (`--kl-divergence`) prints, computed the same way:
//!
//! - the whole text is tokenized once (BOS first when the tokenizer adds one), then cut into
//!   `n_chunk = tokens / ctx` chunks of `ctx` tokens (the tail is dropped); `--chunks N` keeps
//!   the first N;
//! - each chunk is evaluated on its own, its first token replaced by BOS when the tokenizer
//!   adds one;
//! - only the second half of each chunk is scored: the logits at positions
//!   `ctx/2 .. ctx-2` predict the tokens at `ctx/2+1 .. ctx-1` (`ctx/2 - 1` per chunk).
//!
//! MODEL and ORIGINAL may be a float safetensors model folder, a compressed-tensors folder
//! (dequantized), or a GGUF file of a supported architecture (dequantized, names and q/k
//! permutation mapped back). Everything runs on the CPU in f32 (qs-model), layer by layer.

use crate::checkpoint::{is_gguf, st_logical};
use crate::error::{Error, Result};
use faer::Mat;
use qs_formats::gguf::{GgufFile, Value};
use qs_formats::source::ModelSource;
use qs_model::{Model, ModelError, Weights};
use qs_numeric::layout::rows_cols;
use qs_numeric::Scheme;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub model: PathBuf,
    pub against: Option<PathBuf>,
    pub text: PathBuf,
    /// Tokens per chunk (llama-perplexity's `-c`, default 512).
    pub ctx: usize,
    /// Evaluate only the first N chunks.
    pub chunks: Option<usize>,
    pub threads: Option<usize>,
    /// Write MODEL's logits at the scored positions here (float32 `.npy`, one row per scored
    /// position, chunk by chunk; one column per vocabulary entry): what another implementation
    /// of the forward pass is compared with.
    pub logits: Option<PathBuf>,
    /// Write MODEL's negative log-likelihood of each scored token here (float32 `.npy`, one
    /// value per scored position, chunk by chunk): two models evaluated on the same text and
    /// context pair up position by position, so their difference gets a standard error.
    pub nll: Option<PathBuf>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub model: String,
    pub against: Option<String>,
    pub ctx: usize,
    pub chunks: usize,
    /// Next-token predictions scored.
    pub tokens_scored: usize,
    pub ppl: f64,
    /// One standard error of `ppl` (llama-perplexity's `PPL = … +/- …`: the perplexity times
    /// the standard error of the mean negative log-likelihood).
    pub ppl_se: f64,
    /// Perplexity of ORIGINAL on the same tokens.
    pub ppl_against: Option<f64>,
    /// ln(PPL / PPL of ORIGINAL): the mean over the scored positions of MODEL's negative
    /// log-likelihood minus ORIGINAL's (llama-perplexity's `Mean ln(PPL(Q)/PPL(base))`).
    pub ln_ppl_ratio: Option<f64>,
    /// One standard error of `ln_ppl_ratio`, from the per-position differences (paired, so
    /// far smaller than either perplexity's own).
    pub ln_ppl_ratio_se: Option<f64>,
    /// Mean KL(ORIGINAL ‖ MODEL) over the scored positions (nats).
    pub kld_mean: Option<f64>,
    /// One standard error of `kld_mean`.
    pub kld_se: Option<f64>,
    pub kld_max: Option<f64>,
    /// Fraction of scored positions where both models' most likely token is the same.
    pub top1_agreement: Option<f64>,
}

/// A model's weights (HF names, f32) with its config.json, tokenizer and BOS handling.
pub(crate) struct Loaded {
    pub(crate) weights: Box<dyn Weights>,
    pub(crate) config: Json,
    pub(crate) tokenizer: Option<tokenizers::Tokenizer>,
    /// The BOS id when the tokenizer adds one.
    pub(crate) bos: Option<u32>,
}

pub(crate) fn model_err(path: &Path, err: ModelError) -> Error {
    Error::Model {
        stage: "eval",
        path: path.to_path_buf(),
        err,
    }
}

fn input_err(path: &Path, msg: String) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        msg,
    }
}

/// GGUF tensors by HF name, dequantized with the q/k permutation undone.
struct GgufWeights {
    g: GgufFile,
    /// HF name → (tensor index, permutation heads, stored as 1 + the HF value).
    map: BTreeMap<String, (usize, Option<usize>, bool)>,
}

impl Weights for GgufWeights {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.map
            .get(name)
            .map(|&(i, _, _)| self.g.tensors[i].shape())
    }

    fn read(&self, name: &str) -> qs_model::Result<Vec<f32>> {
        let &(i, permute, shift) = self.map.get(name).ok_or_else(|| ModelError::Tensor {
            name: name.into(),
            msg: "missing".into(),
        })?;
        let t = &self.g.tensors[i];
        let scheme = Scheme::for_ggml(t.ty).ok_or_else(|| ModelError::Tensor {
            name: name.into(),
            msg: format!("dequantizing {} is not supported", t.ty),
        })?;
        let shape = t.shape();
        let (rows, cols) = rows_cols(&shape);
        let all = self.g.bytes(t);
        let rb = all.len() / rows.max(1);
        let mut out = vec![0f32; rows * cols];
        use rayon::prelude::*;
        out.par_chunks_mut(cols.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                let q = permute.map_or(r, |h| crate::export::inverse_row(r, rows, h));
                scheme.decode(&shape, q, q + 1, &[&all[q * rb..(q + 1) * rb]], row);
                if shift {
                    row.iter_mut().for_each(|v| *v -= 1.0);
                }
            });
        Ok(out)
    }
}

/// A safetensors model (plain float and/or compressed-tensors weights), dequantized.
struct StWeights {
    src: ModelSource,
}

impl Weights for StWeights {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let ls = st_logical(&self.src).ok()?;
        ls.into_iter().find(|l| l.name == name).map(|l| l.shape)
    }

    fn read(&self, name: &str) -> qs_model::Result<Vec<f32>> {
        let ls = st_logical(&self.src).map_err(|e| ModelError::Tensor {
            name: name.into(),
            msg: e.to_string(),
        })?;
        let l = ls
            .iter()
            .find(|l| l.name == name)
            .ok_or_else(|| ModelError::Tensor {
                name: name.into(),
                msg: "missing".into(),
            })?;
        let (rows, cols) = rows_cols(&l.shape);
        let parts: Vec<&[u8]> = l
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| &s[l.scheme.slot_range(i, &l.shape, 0, rows)])
            .collect();
        let mut out = vec![0f32; rows * cols];
        l.scheme.decode(&l.shape, 0, rows, &parts, &mut out);
        Ok(out)
    }
}

pub(crate) fn load(path: &Path) -> Result<Loaded> {
    if is_gguf(path) {
        let g = GgufFile::open(path)?;
        let an = match g.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let arch = crate::arch::of_gguf(&g).ok_or_else(|| {
            input_err(
                path,
                format!("architecture '{an}' cannot be evaluated (llama, qwen2, qwen3)"),
            )
        })?;
        let tied = !g.tensors.iter().any(|t| t.name == "output.weight");
        let vocab = g
            .tensors
            .iter()
            .find(|t| t.name == "token_embd.weight")
            .map(|t| t.ne[1] as usize)
            .unwrap_or(0);
        let (config, names) =
            crate::export::gguf_config(&g, arch, vocab, tied, qs_numeric::DType::F32)?;
        let map = g
            .tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| !crate::export::GENERATED.contains(&t.name.as_str()))
            .map(|(i, t)| {
                let h = names[&t.name].clone();
                (h.hf, (i, h.permute, h.shift))
            })
            .collect();
        let tokenizer = match crate::export::tokenizer_files(&g)?.and_then(|t| t.json) {
            Some(j) => Some(
                j.to_string()
                    .parse::<tokenizers::Tokenizer>()
                    .map_err(|e| {
                        input_err(
                            path,
                            format!("cannot build a tokenizer from its metadata: {e}"),
                        )
                    })?,
            ),
            None => None,
        };
        let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
            Some(Value::Bool(b)) => *b,
            _ => matches!(g.get("tokenizer.ggml.model"), Some(Value::String(m)) if m == "llama"),
        };
        let bos = match g.get("tokenizer.ggml.bos_token_id") {
            Some(Value::U32(b)) if add_bos => Some(*b),
            _ => None,
        };
        return Ok(Loaded {
            weights: Box::new(GgufWeights { g, map }),
            config,
            tokenizer,
            bos,
        });
    }
    let mut src = ModelSource::open(path)?;
    // tensors the checkpoint stores rearranged (gpt-oss's experts) are read through the
    // architecture's views, as a conversion reads them (DeepSeek's split of kv_b_proj is the
    // conversion's: the forward pass reads the checkpoint's own)
    let stacked = src
        .config
        .as_ref()
        .and_then(|c| crate::arch::detect(c).ok())
        .is_some_and(|a| a.moe.is_some_and(|m| m.stored_stacked));
    let viewed = stacked && crate::checkpoint::apply_views(&mut src)?;
    // every quantized weight's layout checked once, before the forward pass reads any (a
    // block-scaled FP8 checkpoint was checked as it was opened)
    if !src.block_scaled() && !viewed {
        st_logical(&src)?;
    }
    let config = src
        .config
        .clone()
        .ok_or_else(|| input_err(path, "no config.json next to the weights".into()))?;
    let dir = src.hf_dir.clone();
    let tokenizer = match dir.as_ref().map(|d| d.join("tokenizer.json")) {
        Some(p) if p.is_file() => Some(
            tokenizers::Tokenizer::from_file(&p)
                .map_err(|e| input_err(&p, format!("cannot load tokenizer: {e}")))?,
        ),
        _ => None,
    };
    let tcfg: Json = dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("tokenizer_config.json")).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Json::Null);
    let add_bos = tcfg
        .get("add_bos_token")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let bos = config
        .get("bos_token_id")
        .and_then(|v| v.as_u64())
        .filter(|_| add_bos)
        .map(|b| b as u32);
    // block-scaled FP8 (read as codes times scales) and views read through the source's own
    // reader; plain float and compressed-tensors through their layouts
    let weights: Box<dyn Weights> = if src.block_scaled() || viewed {
        Box::new(src)
    } else {
        Box::new(StWeights { src })
    };
    Ok(Loaded {
        weights,
        config,
        tokenizer,
        bos,
    })
}

/// The text's tokens as llama.cpp's tools cut them: tokenized once (BOS first when the tokenizer
/// adds one), `tokens / ctx` chunks (at most `chunks`); returns the tokens and the chunk count.
/// Each chunk's first token is to be replaced by BOS when there is one.
pub(crate) fn text_chunks(
    tok: &tokenizers::Tokenizer,
    bos: Option<u32>,
    text: &str,
    path: &Path,
    ctx: usize,
    chunks: Option<usize>,
) -> Result<(Vec<u32>, usize)> {
    let enc = tok
        .encode(text, false)
        .map_err(|e| input_err(path, format!("tokenizing: {e}")))?;
    let mut ids: Vec<u32> = Vec::with_capacity(enc.get_ids().len() + 1);
    ids.extend(bos);
    ids.extend_from_slice(enc.get_ids());
    let max_chunks = ids.len() / ctx.max(1);
    let n_chunks = chunks.map_or(max_chunks, |c| c.min(max_chunks));
    if n_chunks == 0 {
        return Err(input_err(
            path,
            format!("{} tokens, fewer than one chunk of {ctx} tokens", ids.len()),
        ));
    }
    Ok((ids, n_chunks))
}

/// Chunks `c0..c1` of [`text_chunks`]' tokens laid end to end, each chunk's first token
/// replaced by `bos` when there is one (as llama.cpp's tools evaluate them).
pub(crate) fn chunk_batch(
    ids: &[u32],
    c0: usize,
    c1: usize,
    ctx: usize,
    bos: Option<u32>,
) -> Vec<u32> {
    let mut batch = ids[c0 * ctx..c1 * ctx].to_vec();
    if let Some(b) = bos {
        for c in 0..c1 - c0 {
            batch[c * ctx] = b;
        }
    }
    batch
}

/// A float32 `.npy` file (format 1.0, C order, `rows × cols`) written row by row, under a
/// temporary name until [`NpyRows::finish`] (an interrupted or failed run leaves nothing).
struct NpyRows {
    path: PathBuf,
    file: qs_formats::output::AtomicFile,
    out: std::io::BufWriter<std::fs::File>,
    cols: usize,
    rows_left: usize,
}

impl NpyRows {
    /// `rows` rows of `cols` values, or with `cols` `None` a vector of `rows` values.
    fn create(path: &Path, rows: usize, cols: Option<usize>) -> Result<NpyRows> {
        let io = |e: std::io::Error| Error::Output {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        let shape = match cols {
            Some(c) => format!("({rows}, {c})"),
            None => format!("({rows},)"),
        };
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        // magic (6) + version (2) + header length (2) + header, a multiple of 64, ending in \n
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let file = qs_formats::output::AtomicFile::create(path, true)?;
        let mut out = std::io::BufWriter::new(file.file().try_clone().map_err(io)?);
        use std::io::Write;
        out.write_all(b"\x93NUMPY\x01\x00").map_err(io)?;
        out.write_all(&(header.len() as u16).to_le_bytes())
            .map_err(io)?;
        out.write_all(header.as_bytes()).map_err(io)?;
        Ok(NpyRows {
            path: path.to_path_buf(),
            file,
            out,
            cols: cols.unwrap_or(1),
            rows_left: rows,
        })
    }

    fn push(&mut self, row: &[f32]) -> Result<()> {
        use std::io::Write;
        debug_assert!(row.len() == self.cols && self.rows_left > 0);
        self.rows_left -= 1;
        let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.out.write_all(&bytes).map_err(|e| Error::Output {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }

    fn finish(mut self) -> Result<()> {
        use std::io::Write;
        debug_assert_eq!(self.rows_left, 0);
        self.out.flush().map_err(|e| Error::Output {
            path: self.path.clone(),
            msg: e.to_string(),
        })?;
        drop(self.out);
        Ok(self.file.commit()?)
    }
}

/// A running mean and its standard error (Welford's update).
#[derive(Debug, Clone, Copy, Default)]
struct Mean {
    n: usize,
    mean: f64,
    /// Sum of squared deviations from the running mean.
    m2: f64,
}

impl Mean {
    fn push(&mut self, x: f64) {
        self.n += 1;
        let d = x - self.mean;
        self.mean += d / self.n as f64;
        self.m2 += d * (x - self.mean);
    }

    /// The standard error of the mean as llama-perplexity states it:
    /// sqrt((mean of squares − square of mean) / (n − 1)); 0 for fewer than two values.
    fn se(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        (self.m2 / n / (n - 1.0)).max(0.0).sqrt()
    }
}

/// log-softmax of one row, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
    let lse = m + s.ln();
    row.iter().map(|&v| v as f64 - lse).collect()
}

fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |a, (i, &x)| if x > a.1 { (i, x) } else { a },
        )
        .0
}

pub fn eval(cfg: &EvalConfig) -> Result<EvalReport> {
    if cfg.ctx < 4 {
        return Err(Error::Config("--ctx must be at least 4".into()));
    }
    let m = load(&cfg.model)?;
    let base = cfg.against.as_ref().map(|p| load(p)).transpose()?;
    let tok = m
        .tokenizer
        .as_ref()
        .or_else(|| base.as_ref().and_then(|b| b.tokenizer.as_ref()))
        .ok_or_else(|| {
            input_err(
                &cfg.model,
                "no tokenizer.json (or byte-level BPE GGUF metadata) to tokenize the text with"
                    .into(),
            )
        })?;
    let text = qs_formats::calib::load_text(Some(&cfg.text))?;
    let (ids, n_chunks) = text_chunks(tok, m.bos, &text, &cfg.text, cfg.ctx, cfg.chunks)?;
    let pool = crate::jobs::pool(cfg.threads)?;
    pool.install(|| {
        let model = Model::with_weights(m.weights.as_ref(), &m.config)
            .map_err(|e| model_err(&cfg.model, e))?;
        let orig = match (&base, &cfg.against) {
            (Some(b), Some(p)) => {
                let o = Model::with_weights(b.weights.as_ref(), &b.config)
                    .map_err(|e| model_err(p, e))?;
                if o.cfg.vocab != model.cfg.vocab {
                    return Err(input_err(
                        p,
                        format!(
                            "a vocabulary of {} tokens, {} has {}",
                            o.cfg.vocab,
                            cfg.model.display(),
                            model.cfg.vocab
                        ),
                    ));
                }
                Some(o)
            }
            _ => None,
        };
        let first = cfg.ctx / 2;
        // per scored position: MODEL's negative log-likelihood, ORIGINAL's, their difference,
        // the KL divergence
        let (mut nll, mut nll_base, mut diff, mut kld) = (
            Mean::default(),
            Mean::default(),
            Mean::default(),
            Mean::default(),
        );
        let (mut kld_max, mut same) = (0f64, 0usize);
        let hw = model.head_weights().map_err(|e| model_err(&cfg.model, e))?;
        let mut logits_out = match &cfg.logits {
            Some(p) => Some(NpyRows::create(
                p,
                n_chunks * (cfg.ctx - 1 - first),
                Some(model.cfg.vocab),
            )?),
            None => None,
        };
        let mut nll_out = match &cfg.nll {
            Some(p) => Some(NpyRows::create(p, n_chunks * (cfg.ctx - 1 - first), None)?),
            None => None,
        };
        let hw_base = match &orig {
            Some(o) => Some(o.head_weights().map_err(|e| model_err(&cfg.model, e))?),
            None => None,
        };
        // groups of chunks through the layers together, bounding activation memory
        let group = (8192 / cfg.ctx).max(1);
        let mut c0 = 0;
        while c0 < n_chunks {
            let c1 = (c0 + group).min(n_chunks);
            let batch = chunk_batch(&ids, c0, c1, cfg.ctx, m.bos);
            let h = model
                .hidden(&batch, cfg.ctx)
                .map_err(|e| model_err(&cfg.model, e))?;
            let hb = match &orig {
                Some(o) => Some(
                    o.hidden(&batch, cfg.ctx)
                        .map_err(|e| model_err(&cfg.model, e))?,
                ),
                None => None,
            };
            for c in 0..c1 - c0 {
                let (r0, r1) = (c * cfg.ctx + first, c * cfg.ctx + cfg.ctx - 1);
                let logits = model.apply_head(&hw, h.as_ref().subrows(r0, r1 - r0));
                let logits_b: Option<Mat<f32>> = match (&orig, &hb, &hw_base) {
                    (Some(o), Some(hb), Some(w)) => {
                        Some(o.apply_head(w, hb.as_ref().subrows(r0, r1 - r0)))
                    }
                    _ => None,
                };
                for k in 0..r1 - r0 {
                    let next = batch[r0 + k + 1] as usize;
                    let row: Vec<f32> = (0..logits.ncols()).map(|j| logits[(k, j)]).collect();
                    if let Some(w) = logits_out.as_mut() {
                        w.push(&row)?;
                    }
                    let lp = log_softmax(&row);
                    nll.push(-lp[next]);
                    if let Some(w) = nll_out.as_mut() {
                        w.push(&[-lp[next] as f32])?;
                    }
                    if let Some(lb) = &logits_b {
                        let rowb: Vec<f32> = (0..lb.ncols()).map(|j| lb[(k, j)]).collect();
                        let lpb = log_softmax(&rowb);
                        nll_base.push(-lpb[next]);
                        diff.push(lpb[next] - lp[next]);
                        let kl: f64 = lpb.iter().zip(&lp).map(|(&b, &q)| b.exp() * (b - q)).sum();
                        kld.push(kl);
                        kld_max = kld_max.max(kl);
                        same += usize::from(argmax(&lp) == argmax(&lpb));
                    }
                }
            }
            c0 = c1;
        }
        if let Some(w) = logits_out {
            w.finish()?;
        }
        if let Some(w) = nll_out {
            w.finish()?;
        }
        let n = nll.n as f64;
        let ppl = nll.mean.exp();
        let against = |v: f64| orig.as_ref().map(|_| v);
        Ok(EvalReport {
            model: cfg.model.display().to_string(),
            against: cfg.against.as_ref().map(|p| p.display().to_string()),
            ctx: cfg.ctx,
            chunks: n_chunks,
            tokens_scored: nll.n,
            ppl,
            ppl_se: ppl * nll.se(),
            ppl_against: against(nll_base.mean.exp()),
            ln_ppl_ratio: against(diff.mean),
            ln_ppl_ratio_se: against(diff.se()),
            kld_mean: against(kld.mean),
            kld_se: against(kld.se()),
            kld_max: against(kld_max),
            top1_agreement: against(same as f64 / n),
        })
    })
}
