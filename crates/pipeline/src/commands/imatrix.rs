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
    /// Per weight tensor (GGUF name): Σ over tokens of each input channel squared (a stacked
    /// experts' tensor: per expert, over the tokens routed to it, one after the other).
    pub sums: BTreeMap<String, Vec<f64>>,
    /// Tokens each matrix's sums run over, where not every token (stacked experts: per expert).
    pub counts: BTreeMap<String, Vec<u64>>,
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
        qs_formats::imatrix::Imatrix {
            entries: self
                .sums
                .iter()
                .map(|(k, s)| {
                    let counts = self.counts_of(k);
                    let per = s.len() / counts.len().max(1);
                    let v = s
                        .iter()
                        .enumerate()
                        .map(|(i, &v)| match counts.get(i / per.max(1)) {
                            Some(&c) if c > 0 => v as f32 / c as f32,
                            _ => 1.0,
                        })
                        .collect();
                    (k.clone(), v)
                })
                .collect(),
            datasets: vec![self.dataset.clone()],
            chunk_count: self.chunks as u32,
        }
    }
}

impl Computed {
    /// The token count of each matrix of entry `name`.
    fn counts_of(&self, name: &str) -> Vec<u64> {
        self.counts
            .get(name)
            .cloned()
            .unwrap_or_else(|| vec![self.tokens as u64])
    }
}

/// Adds the squares of every row of `x` to `acc` (one sum per column).
fn add_squares(acc: &mut [f64], x: faer::MatRef<'_, f32>) {
    for r in 0..x.nrows() {
        for (c, a) in acc.iter_mut().enumerate() {
            let v = x[(r, c)] as f64;
            *a += v * v;
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
    // a mixture of experts: per stacked tensor, each expert's sums (one after the other) and
    // token counts; the router and the shared expert over every token
    let mut moe: BTreeMap<String, (Vec<f64>, Vec<u64>)> = BTreeMap::new();
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
                    if xin.ncols() == 0 {
                        // (an MoE layer has no dense MLP)
                        continue;
                    }
                    let acc = sums
                        .entry((l, input))
                        .or_insert_with(|| vec![0f64; xin.ncols()]);
                    add_squares(acc, xin);
                }
                if let (Some(mc), Some(ml)) = (&model_w.cfg.moe, &layer.moe) {
                    moe_sums(&mut moe, l, &model_w.cfg, mc, ml, cap.mlp_in.as_ref());
                }
                if let (Some(p), Some(ml)) = (model_w.cfg.mla, &layer.mla) {
                    mla_sums(
                        &mut moe,
                        l,
                        &model_w.cfg,
                        p,
                        (ml, &layer),
                        cap.qkv_in.as_ref(),
                        ctx,
                    );
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
    let experts = qs_model::family_of(&m.config).is_ok_and(|f| f.moe.is_some());
    // (a mixture's leading dense layers have an MLP; latent attention has no q/k/v)
    let cfg = pool
        .install(|| Model::with_weights(m.weights.as_ref(), &m.config))
        .map_err(|e| super::eval::model_err(model, e))?
        .cfg;
    let mut counts = BTreeMap::new();
    for (name, (s, n)) in moe {
        entries.insert(name.clone(), s);
        if n.len() > 1 {
            counts.insert(name, n);
        }
    }
    for ((l, input), s) in &sums {
        for lin in Linear::ALL.into_iter().filter(|lin| lin.input() == *input) {
            if experts
                && *l >= cfg.dense_layers
                && matches!(lin, Linear::Gate | Linear::Up | Linear::Down)
            {
                continue;
            }
            if let (Some(mla), Linear::Q | Linear::K | Linear::V) = (cfg.mla, lin) {
                // latent attention: what reads the attention input instead
                if lin == Linear::Q {
                    let reads: &[&str] = match mla.q_lora {
                        Some(_) => &["attn_q_a", "attn_kv_a_mqa"],
                        None => &["attn_q", "attn_kv_a_mqa"],
                    };
                    for gg in reads {
                        entries.insert(format!("blk.{l}.{gg}.weight"), s.clone());
                    }
                }
                continue;
            }
            entries.insert(format!("blk.{l}.{}.weight", gguf_linear(lin)), s.clone());
        }
        for (gg, _) in fused.iter().filter(|(_, i)| i == input) {
            entries.insert(format!("blk.{l}.{gg}.weight"), s.clone());
        }
    }
    Ok(Computed {
        sums: entries,
        counts,
        chunks: n_chunks,
        ctx,
        tokens: n_chunks * ctx,
        dataset: text_path.display().to_string(),
    })
}

/// Adds layer `l`'s latent attention sums for normed attention inputs `h` (sequences of
/// `seq_len`): `attn_q_b` over its normed bottleneck input; `attn_k_b` and `attn_v_b` per
/// head, as llama-imatrix records a 3-D matrix product (each head's sums one after the other,
/// one token count): the heads' queries without rope, and their attention outputs in the
/// compressed space.
fn mla_sums(
    acc: &mut BTreeMap<String, (Vec<f64>, Vec<u64>)>,
    l: usize,
    c: &qs_model::Config,
    p: qs_model::hparams::MlaParams,
    (ml, layer): (&qs_model::MlaLayer, &qs_model::Layer),
    h: faer::MatRef<'_, f32>,
    seq_len: usize,
) {
    let (_, inputs) = qs_model::mla_heads(c, p, ml, layer, h, seq_len);
    let tokens = h.nrows() as u64;
    if let Some(x) = &inputs.q_b {
        let e = acc
            .entry(format!("blk.{l}.attn_q_b.weight"))
            .or_insert_with(|| (vec![0f64; x.ncols()], vec![0]));
        add_squares(&mut e.0, x.as_ref());
        e.1[0] += tokens;
    }
    for (name, x) in [("attn_k_b", &inputs.q_nope), ("attn_v_b", &inputs.latent)] {
        let e = acc
            .entry(format!("blk.{l}.{name}.weight"))
            .or_insert_with(|| (vec![0f64; x.ncols()], vec![0]));
        // heads' columns side by side: the per-head sums one after the other, and (every
        // head seeing every token) one count, as llama-imatrix stores it
        add_squares(&mut e.0, x.as_ref());
        e.1[0] += tokens;
    }
}

/// Adds layer `l`'s mixture-of-experts sums for normed MLP inputs `h2`: the router
/// (`ffn_gate_inp`) and the shared expert's gate and up over every token, each expert's gate and
/// up over the tokens routed to it, each expert's (and the shared expert's) down over its own
/// activations, as llama-imatrix accumulates them per expert with per-expert counts.
fn moe_sums(
    acc: &mut BTreeMap<String, (Vec<f64>, Vec<u64>)>,
    l: usize,
    c: &qs_model::Config,
    mc: &qs_model::MoeConfig,
    ml: &qs_model::MoeLayer,
    h2: faer::MatRef<'_, f32>,
) {
    let n = ml.experts.len();
    let (cols, tokens) = (h2.ncols(), h2.nrows() as u64);
    let mut all = |name: &str, x: faer::MatRef<'_, f32>| {
        let e = acc
            .entry(format!("blk.{l}.{name}.weight"))
            .or_insert_with(|| (vec![0f64; x.ncols()], vec![0]));
        add_squares(&mut e.0, x);
        e.1[0] += tokens;
    };
    all("ffn_gate_inp", h2);
    if let Some((shared, gate)) = &ml.shared {
        if gate.is_some() {
            all("ffn_gate_inp_shexp", h2);
        }
        all("ffn_gate_shexp", h2);
        all("ffn_up_shexp", h2);
        all(
            "ffn_down_shexp",
            qs_model::expert_inner(c, shared, h2).as_ref(),
        );
    }
    let routes = qs_model::route(mc, ml.router_logits(h2).as_ref(), ml.choice_bias.as_deref());
    let ff = ml.experts.first().map_or(0, |e| e.down.ncols());
    for name in ["ffn_gate_exps", "ffn_up_exps"] {
        acc.entry(format!("blk.{l}.{name}.weight"))
            .or_insert_with(|| (vec![0f64; n * cols], vec![0; n]));
    }
    acc.entry(format!("blk.{l}.ffn_down_exps.weight"))
        .or_insert_with(|| (vec![0f64; n * ff], vec![0; n]));
    for (e, expert) in ml.experts.iter().enumerate() {
        let rows: Vec<usize> = (0..routes.len())
            .filter(|&t| routes[t].iter().any(|&(x, _)| x == e))
            .collect();
        let x = faer::Mat::from_fn(rows.len(), cols, |i, j| h2[(rows[i], j)]);
        for name in ["ffn_gate_exps", "ffn_up_exps"] {
            let v = acc
                .get_mut(&format!("blk.{l}.{name}.weight"))
                .expect("made above");
            add_squares(&mut v.0[e * cols..(e + 1) * cols], x.as_ref());
            v.1[e] += rows.len() as u64;
        }
        let act = qs_model::expert_inner(c, expert, x.as_ref());
        let v = acc
            .get_mut(&format!("blk.{l}.ffn_down_exps.weight"))
            .expect("made above");
        add_squares(&mut v.0[e * ff..(e + 1) * ff], act.as_ref());
        v.1[e] += rows.len() as u64;
    }
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
        let counts = c.counts_of(name);
        let n = counts.len() as u64;
        let (ne_sums, ne_counts) = if n > 1 {
            (vec![s.len() as u64 / n, n], vec![1, n])
        } else {
            (vec![s.len() as u64], vec![1])
        };
        tensors.push(gguf::TensorPlan {
            name: format!("{name}.in_sum2"),
            ne: ne_sums,
            ty: qs_numeric::GgmlType::F32,
        });
        data.push(s.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect());
        tensors.push(gguf::TensorPlan {
            name: format!("{name}.counts"),
            ne: ne_counts,
            ty: qs_numeric::GgmlType::F32,
        });
        data.push(
            counts
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
        );
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
