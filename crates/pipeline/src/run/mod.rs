//! Running a plan (the `quantize` run; [`jobs`] is the shared job pool): per-chunk jobs in parallel, each writing its bytes at offsets fixed by the
//! plan, so output bytes never depend on scheduling or thread count.
//!
//! Memory: a job holds one chunk (≈ `CHUNK_ELEMS` values) decoded to f32 plus its encoded
//! bytes; input pages are dropped from the resident set as soon as a chunk is done.

pub mod jobs;

use crate::config::{OutputKind, QuantizeConfig};
use crate::error::{Error, Result};
use crate::meta;
use crate::plan::{make_plan, Action, Plan, TensorPlan};
use crate::report::{Report, ReportRow};
use crate::Progress;
use jobs::{chunk_rows, pool, run_jobs, CHUNK_ELEMS};
use qs_formats::gguf;
use qs_formats::output::{
    check_file_target, check_not_input, check_target, check_writable, AtomicDir, AtomicFile,
};
use qs_formats::safetensors::{plan_layout, StEntry};
use qs_formats::source::{ModelSource, SourceTensor};
use qs_numeric::dtype::round_to;
use qs_numeric::layout::FloatLayout;
use qs_numeric::layout::{float_max, float_min_normal, rows_cols};
use qs_numeric::metrics::audit_narrowing;
use qs_numeric::{DType, ErrorStats, NarrowingAudit, Scheme, SlotType, TensorStats};
use std::collections::{BTreeMap, HashMap};

/// Encoded pieces waiting for the writer thread, at most.
const WRITE_QUEUE: usize = 32;

/// Bytes for the writer: encoded output, or a range of a memory-mapped input tensor (copies),
/// whose pages the writer releases once written.
enum Bytes<'a> {
    Owned(Vec<u8>),
    Mapped {
        tensor: &'a SourceTensor,
        start: usize,
        end: usize,
    },
}

type WriteTx<'a> = std::sync::mpsc::SyncSender<((usize, u64), Bytes<'a>)>;

fn send<'a>(
    tx: &WriteTx<'a>,
    at: (usize, u64),
    bytes: Bytes<'a>,
    out: &std::path::Path,
) -> Result<()> {
    tx.send((at, bytes)).map_err(|_| Error::Output {
        path: out.to_path_buf(),
        msg: "writer stopped".into(),
    })
}

/// What a quantize run produced.
#[derive(Debug)]
pub struct Outcome {
    pub plan: Plan,
    /// `None` for a dry run.
    pub report: Option<Report>,
    /// What was written: the output file, every file of a split set (a shard's slice of
    /// them), or the output folder.
    pub files: Vec<std::path::PathBuf>,
    /// `--target-bpw` / `--target-size`: the types chosen and their predicted errors.
    pub allocation: Option<crate::allocate::Allocation>,
}

#[derive(Debug, Clone, Copy, Default)]
struct ChunkResult {
    stats: ErrorStats,
    audit: NarrowingAudit,
}

/// Where the data goes while the run is in progress: the output files (several for a split
/// GGUF), inside a folder for a safetensors folder output.
struct Sink {
    dir: Option<AtomicDir>,
    /// `None`: another shard's file.
    files: Vec<Option<AtomicFile>>,
}

/// One output file: its path (final, or inside the folder), header and length.
struct FileLayout {
    path: std::path::PathBuf,
    header: Vec<u8>,
    total_len: u64,
}

/// Plans, then (unless a dry run) writes the output and returns the report.
pub fn quantize(cfg: &QuantizeConfig, progress: &dyn Progress) -> Result<Outcome> {
    let p = prepare(cfg)?;
    if cfg.dry_run {
        return Ok(Outcome {
            plan: p.plan,
            report: None,
            files: vec![],
            allocation: p.allocation,
        });
    }
    p.check_target(cfg)?;
    // a calibrated method's layers are written as the calibration finishes each of them
    let calibrate = match p.targets.is_some() {
        true => Calibrate::Streamed,
        false => Calibrate::Held(None),
    };
    write_run(p, calibrate, cfg, progress)
}

/// Where a run's calibrated tensors come from.
enum Calibrate {
    /// Chosen already (a batch's shared pass: written a layer at a time as its codes are read
    /// back from disk), or `None` without a method.
    Held(Option<Box<crate::calib::Calibration>>),
    /// The run's own pass, each layer written as it is done: the codes of one layer are held,
    /// not the model's.
    Streamed,
}

/// A run planned and checked, nothing written yet ([`prepare`]).
pub struct Prepared {
    pub src: ModelSource,
    pub plan: Plan,
    allocation: Option<crate::allocate::Allocation>,
    imatrix_info: Option<crate::report::ImatrixInfo>,
    /// A calibrated run: its method and the linears it quantizes.
    pub targets: Option<(&'static dyn crate::calib::Method, crate::calib::Targets)>,
    inputs: Vec<std::path::PathBuf>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prepared({})", self.plan.output.display())
    }
}

impl Prepared {
    /// The output may be written (it is not there, or `--force`).
    pub fn check_target(&self, cfg: &QuantizeConfig) -> Result<()> {
        if cfg.shard.is_none() {
            check_target(&self.plan.output, cfg.force)?;
        }
        Ok(())
    }
}

/// Opens the source and plans the run (importance matrix, size target, calibrated linears);
/// every option check that can fail before any work fails here.
pub fn prepare(cfg: &QuantizeConfig) -> Result<Prepared> {
    let mut src = ModelSource::open(&cfg.input)?;
    // a GPTQ, AWQ or compressed-tensors checkpoint is read as its dequantized weights
    crate::checkpoint::unpack_quantized(&mut src)?;
    crate::plan::prepare_conversion(&mut src, cfg)?;
    // an importance matrix to compute takes minutes: an output that is there (without
    // --force) is refused first
    if cfg.imatrix_from.is_some() && !cfg.dry_run && cfg.shard.is_none() {
        let (kind, output) = crate::plan::output_for(cfg)?;
        if kind == OutputKind::Gguf {
            check_target(&output, cfg.force)?;
        }
    }
    let (imatrix, imatrix_shared) = crate::plan::load_imatrix(cfg)?;
    let imatrix_info = imatrix.as_ref().map(|im| crate::report::ImatrixInfo {
        path: cfg
            .imatrix
            .as_ref()
            .or(cfg.imatrix_from.as_ref())
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        source: if cfg.imatrix.is_some() {
            "file"
        } else {
            "computed"
        },
        chunks: im.chunk_count,
        entries: im.entries.len(),
        shared: imatrix_shared,
    });
    let mut plan = make_plan(&src, cfg, imatrix.clone())?;
    // a size target: a type per tensor, then the plan again with those types
    let mut allocation = None;
    if let Some(st) = cfg.size_target {
        let (files, _) = layout(&plan, &src, cfg)?;
        let overhead = files.iter().map(|f| f.total_len).sum::<u64>()
            - plan
                .tensors
                .iter()
                .map(|t| t.bytes_out() as u64)
                .sum::<u64>();
        let (types, a) = crate::allocate::allocate(&src, &plan, cfg, st, overhead)?;
        let mut c = cfg.clone();
        c.size_target = None;
        c.tensor_types = cfg.tensor_types.iter().cloned().chain(types).collect();
        plan = make_plan(&src, &c, imatrix)?;
        for tp in &mut plan.tensors {
            if let Some(t) = a.tensors.iter().find(|t| t.tensor == tp.name) {
                tp.note = Some(format!(
                    "size-targeted: predicted error {:.4e}",
                    t.predicted_error
                ));
            }
        }
        allocation = Some(a);
    }
    // every option check before any work: the calibrated linears and their grids
    if cfg.mse_clip && cfg.method.0.is_none() {
        return Err(Error::Config("--mse-clip applies to --method gptq".into()));
    }
    let targets = match crate::calib::method_of(cfg.method) {
        Some(m) => {
            let t = crate::calib::targets(m, &src, &plan, cfg)?;
            let layers =
                crate::arch::hparams_of(src.config.as_ref().unwrap_or(&serde_json::Value::Null))?
                    .n_layer as usize;
            crate::calib::prepare_plan(m, &src, &mut plan, layers);
            Some((m, t))
        }
        None => None,
    };
    let inputs = check_outputs(&src, &plan, cfg)?;
    if cfg.shard.is_some() && (plan.kind != OutputKind::Gguf || cfg.split_max_bytes.is_none()) {
        return Err(Error::Config(
            "--shard i/N on one model writes a slice of a split GGUF: it needs a .gguf output and --split-max-size".into(),
        ));
    }
    Ok(Prepared {
        src,
        plan,
        allocation,
        imatrix_info,
        targets,
        inputs,
    })
}

/// Writes a prepared run: `calibration` is what its method chose (from a batch's shared
/// [`crate::calib::calibrate_together`] pass), `None` without a method.
pub fn write(
    p: Prepared,
    calibration: Option<crate::calib::Calibration>,
    cfg: &QuantizeConfig,
    progress: &dyn Progress,
) -> Result<Outcome> {
    if p.targets.is_some() != calibration.is_some() {
        return Err(Error::Config(
            "a calibrated run is written with its calibration, and only then".into(),
        ));
    }
    write_run(p, Calibrate::Held(calibration.map(Box::new)), cfg, progress)
}

/// Writes the output: every calibrated tensor as its calibration arrives (all at once, or
/// layer by layer from the run's own pass), then every other tensor.
fn write_run(
    p: Prepared,
    calibrate: Calibrate,
    cfg: &QuantizeConfig,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let Prepared {
        src,
        plan,
        allocation,
        imatrix_info,
        targets,
        inputs,
    } = p;

    // Fix every offset before touching data.
    let (layouts, offsets) = layout(&plan, &src, cfg)?;
    // a shard writes a contiguous slice of the split files (and computes only their tensors)
    let selected = |f: usize| match cfg.shard {
        None => true,
        Some(sh) => {
            let n = layouts.len();
            (sh.index * n / sh.count..(sh.index + 1) * n / sh.count).contains(&f)
        }
    };
    let dir = match plan.kind {
        OutputKind::SafetensorsDir => Some(AtomicDir::create(&plan.output, cfg.force)?),
        _ => None,
    };
    let mut files = Vec::with_capacity(layouts.len());
    for (i, l) in layouts.iter().enumerate() {
        if !selected(i) {
            files.push(None);
            continue;
        }
        let f = match &dir {
            Some(d) => d.file(&l.path)?,
            None => {
                // a split set's other files (and, in a shard, its first)
                check_not_input(&l.path, false, &inputs)?;
                AtomicFile::create(&l.path, cfg.force)?
            }
        };
        f.write_at(0, &l.header)?;
        f.set_len(l.total_len)?;
        files.push(Some(f));
    }
    let written: Vec<std::path::PathBuf> = match &dir {
        Some(_) => vec![plan.output.clone()],
        None => layouts
            .iter()
            .enumerate()
            .filter(|(i, _)| selected(*i))
            .map(|(_, l)| l.path.clone())
            .collect(),
    };
    // the plan's tensors this run writes
    let wanted: Vec<bool> = offsets
        .iter()
        .map(|slots| slots.iter().any(|&(f, _)| selected(f)))
        .collect();
    let sink = Sink { dir, files };
    let outs = &sink.files;

    let pool = pool(cfg.threads)?;
    // Per-tensor statistics some schemes need first (per-tensor scales).
    let mut tstats = vec![TensorStats::default(); plan.tensors.len()];
    for (ti, tp) in plan
        .tensors
        .iter()
        .enumerate()
        .filter(|(ti, _)| wanted[*ti])
    {
        if let Action::Encode(s) = &tp.action {
            if s.needs_tensor_stats() {
                tstats[ti] = tensor_min_max(&pool, &src, tp, cfg.allow_nonfinite)?;
            }
        }
    }

    // the plan's tensors this run writes, by the source tensor a calibration names
    let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
    for (ti, tp) in plan
        .tensors
        .iter()
        .enumerate()
        .filter(|(ti, _)| wanted[*ti])
    {
        by_name
            .entry(src.tensors[tp.source].info.name.as_str())
            .or_default()
            .push(ti);
    }
    let tensor_bytes =
        |tp: &TensorPlan| (rows_cols(&tp.shape).0 * src.row_bytes(&src.tensors[tp.source])) as u64;
    let total = if cfg.shard.is_some() {
        plan.tensors
            .iter()
            .zip(&wanted)
            .filter(|(_, w)| **w)
            .map(|(tp, _)| tensor_bytes(tp))
            .sum()
    } else {
        src.total_bytes()
    };

    struct Job {
        tensor: usize,
        r0: usize,
        r1: usize,
    }
    // Per tensor, its chunks' results merged in chunk order (deterministic sums), and the
    // calibration's layer-output error.
    let mut per: Vec<ChunkResult> = vec![ChunkResult::default(); plan.tensors.len()];
    let mut written_yet = vec![false; plan.tensors.len()];
    let mut layer_errors: Vec<Option<crate::calib::LayerOutputError>> =
        vec![None; plan.tensors.len()];
    let no_calibration = HashMap::new();
    // Workers compute; one writer thread does all file writes (no lock contention on the
    // file, and the kernel's copy overlaps with computing). The bounded channel caps the
    // bytes in flight.
    let calib_summary = std::thread::scope(|scope| -> Result<_> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<((usize, u64), Bytes<'_>)>(WRITE_QUEUE);
        let src = &src;
        let writer = scope.spawn(move || -> Result<()> {
            for ((file, offset), bytes) in rx {
                // (a tensor with slots in another shard's file: those bytes are that shard's)
                let out = outs[file].as_ref();
                match bytes {
                    Bytes::Owned(v) => {
                        if let Some(o) = out {
                            o.write_at(offset, &v)?
                        }
                    }
                    Bytes::Mapped { tensor, start, end } => {
                        if let Some(o) = out {
                            o.write_at(offset, &src.bytes(tensor)[start..end])?;
                        }
                        src.release(tensor, start, end);
                    }
                }
            }
            Ok(())
        });
        // writes `tensors` (plan order; `None`: every one not written yet) with `calibrated`'s
        // codes and transforms, by source name; returns the bytes of input they cover
        let mut write_tensors = |tensors: Option<Vec<usize>>,
                                 calibrated: &HashMap<String, crate::calib::Calibrated>,
                                 show: bool|
         -> Result<u64> {
            let tensors = tensors.unwrap_or_else(|| {
                (0..plan.tensors.len())
                    .filter(|&ti| wanted[ti] && !written_yet[ti])
                    .collect()
            });
            let mut jobs = Vec::new();
            for &ti in &tensors {
                let tp = &plan.tensors[ti];
                if std::mem::replace(&mut written_yet[ti], true) {
                    return Err(tensor_err(
                        src,
                        tp,
                        "calibrated twice in one pass (a method's bug)".into(),
                    ));
                }
                layer_errors[ti] = calibrated
                    .get(&src.tensors[tp.source].info.name)
                    .and_then(|c| c.error);
                let (rows, cols) = rows_cols(&tp.shape);
                let align = match &tp.action {
                    Action::Encode(s) => s.row_align(),
                    Action::Copy => 1,
                };
                for (r0, r1) in chunk_rows(rows, cols, align, CHUNK_ELEMS) {
                    jobs.push(Job { tensor: ti, r0, r1 });
                }
            }
            let results = run_jobs(&pool, &jobs, |j| {
                let tp = &plan.tensors[j.tensor];
                let r = run_chunk(
                    src,
                    tp,
                    &offsets[j.tensor],
                    j.r0,
                    j.r1,
                    tstats[j.tensor],
                    cfg,
                    calibrated.get(&src.tensors[tp.source].info.name),
                    &tx,
                );
                if show {
                    progress.inc(((j.r1 - j.r0) * src.row_bytes(&src.tensors[tp.source])) as u64);
                }
                r
            })?;
            for (j, r) in jobs.iter().zip(&results) {
                per[j.tensor].stats.merge(&r.stats);
                per[j.tensor].audit.merge(&r.audit);
            }
            Ok(tensors
                .iter()
                .map(|&ti| tensor_bytes(&plan.tensors[ti]))
                .sum())
        };
        // the tensors of the plan a calibration names
        let named = |calibrated: &HashMap<String, crate::calib::Calibrated>| {
            let mut t: Vec<usize> = calibrated
                .keys()
                .filter_map(|n| by_name.get(n.as_str()))
                .flatten()
                .copied()
                .collect();
            t.sort_unstable();
            t
        };
        let run = (|| -> Result<_> {
            let (summary, before) = match calibrate {
                Calibrate::Held(None) => (None, 0),
                Calibrate::Held(Some(calibration)) => {
                    let (held, summary) = *calibration;
                    // a layer's codes at a time, read back from where the pass left them
                    let mut before = 0;
                    for layer in held.into_layers() {
                        let layer = layer?;
                        before += write_tensors(Some(named(&layer)), &layer, false)?;
                    }
                    (Some(summary), before)
                }
                Calibrate::Streamed => {
                    let (method, t) = targets.as_ref().ok_or_else(|| {
                        Error::Config("a streamed calibration needs a method".into())
                    })?;
                    let mut before = 0;
                    // inside our pool, so faer's parallel products use -j threads
                    let mut summaries = pool.install(|| {
                        crate::calib::calibrate_together(
                            src,
                            &[crate::calib::Member {
                                method: *method,
                                targets: t,
                                cfg,
                            }],
                            progress,
                            &mut |_, _, layer| {
                                before += write_tensors(Some(named(&layer)), &layer, false)?;
                                Ok(())
                            },
                        )
                    })?;
                    (summaries.pop(), before)
                }
            };
            // the rest, with the bytes written so far on the bar
            progress.start(total);
            progress.inc(before);
            write_tensors(None, &no_calibration, true)?;
            Ok(summary)
        })();
        drop(tx);
        let written = writer.join().expect("writer thread does not panic");
        // a write error makes workers fail with "writer stopped": report the write error
        written?;
        run
    })?;
    progress.finish();

    let rows = plan
        .tensors
        .iter()
        .enumerate()
        .filter(|(ti, _)| wanted[*ti])
        .map(|(ti, tp)| row(tp, &per[ti], layer_errors[ti]))
        .collect();

    // Finish the container: all files are complete before any is renamed into place.
    for f in sink.files.into_iter().flatten() {
        f.commit()?;
    }
    if let Some(dir) = sink.dir {
        meta::write_side_files(&src, &plan, cfg, dir.path())
            .map_err(|e| e.map_paths(|p| dir.shown(&p)))?;
        dir.commit()?;
    }
    let mut report = Report::new(
        "quantize",
        cfg.input.display().to_string(),
        plan.output.display().to_string(),
        // as asked for: the mixture (`q4_k_m`) rather than its main type
        Some(match cfg.mixture {
            Some(f) => f.name().to_ascii_lowercase(),
            None => cfg.target.name(),
        }),
        rows,
    );
    report.calibration = calib_summary;
    report.imatrix = imatrix_info;
    report.allocation = allocation.clone();
    Ok(Outcome {
        plan,
        report: Some(report),
        files: written,
        allocation,
    })
}

/// Checks made before any work, dry runs included: the output is no input (nor, for a folder,
/// holds one), a file output does not replace a folder (even with `--force`), and the report
/// can be written. Returns every path the run reads.
fn check_outputs(
    src: &ModelSource,
    plan: &Plan,
    cfg: &QuantizeConfig,
) -> Result<Vec<std::path::PathBuf>> {
    let mut inputs = src.input_paths();
    inputs.extend(cfg.imatrix.iter().cloned());
    inputs.extend(cfg.imatrix_from.iter().cloned());
    inputs.extend(cfg.calib.iter().cloned());
    let folder = plan.kind == OutputKind::SafetensorsDir;
    check_not_input(&plan.output, folder, &inputs)?;
    if !folder {
        check_file_target(&plan.output, true)?;
    }
    if let Some(r) = &cfg.report {
        check_writable(r, &inputs, std::slice::from_ref(&plan.output))?;
    }
    Ok(inputs)
}

/// The output files and, per plan tensor and slot, (file index, absolute offset).
type Layout = (Vec<FileLayout>, Vec<Vec<(usize, u64)>>);

/// The output files and, per output tensor in order, (file index, absolute offset).
type FlatLayout = (Vec<FileLayout>, Vec<(usize, u64)>);

fn layout(plan: &Plan, src: &ModelSource, cfg: &QuantizeConfig) -> Result<Layout> {
    let flat: Vec<&crate::plan::OutTensor> = plan.tensors.iter().flat_map(|t| &t.outputs).collect();
    let (files, offs): FlatLayout = match plan.kind {
        OutputKind::Gguf => {
            let kvs = meta::gguf_metadata(src, plan, cfg)?;
            let tps: Vec<gguf::TensorPlan> = flat
                .iter()
                .map(|o| gguf::TensorPlan {
                    name: o.name.clone(),
                    ne: if o.shape.is_empty() {
                        vec![1]
                    } else {
                        o.shape.iter().rev().map(|&d| d as u64).collect()
                    },
                    ty: match o.ty {
                        SlotType::Ggml(t) => t,
                        SlotType::Dtype(_) => unreachable!("GGUF outputs carry ggml types"),
                    },
                })
                .collect();
            gguf_files(&plan.output, kvs, tps, cfg.split_max_bytes)?
        }
        OutputKind::SafetensorsFile | OutputKind::SafetensorsDir => {
            let entries: Vec<StEntry> = flat
                .iter()
                .map(|o| StEntry {
                    name: o.name.clone(),
                    dtype: match o.ty {
                        SlotType::Dtype(d) => d,
                        SlotType::Ggml(_) => unreachable!("safetensors outputs carry dtypes"),
                    },
                    shape: o.shape.clone(),
                })
                .collect();
            let mut md = BTreeMap::new();
            md.insert("format".to_string(), "pt".to_string());
            if let Some(qc) = meta::quantization_config(plan) {
                md.insert("quantization_config".to_string(), qc.to_string());
            }
            let l = plan_layout(&entries, &md);
            let path = match plan.kind {
                OutputKind::SafetensorsDir => "model.safetensors".into(),
                _ => plan.output.clone(),
            };
            (
                vec![FileLayout {
                    path,
                    header: l.header,
                    total_len: l.total_len,
                }],
                l.offsets.into_iter().map(|o| (0, o)).collect(),
            )
        }
    };
    let mut it = offs.into_iter();
    let per = plan
        .tensors
        .iter()
        .map(|t| {
            t.outputs
                .iter()
                .map(|_| it.next().expect("offset per output"))
                .collect()
        })
        .collect();
    Ok((files, per))
}

/// One GGUF, or (with a size limit) llama.cpp's split set ([`gguf::plan_split`]).
fn gguf_files(
    output: &std::path::Path,
    kvs: Vec<(String, gguf::Value)>,
    tps: Vec<gguf::TensorPlan>,
    max: Option<u64>,
) -> Result<FlatLayout> {
    let (files, offs) = gguf::plan_split(output, kvs, &tps, max).map_err(|e| Error::Output {
        path: output.to_path_buf(),
        msg: e.to_string(),
    })?;
    let files = files
        .into_iter()
        .map(|(path, l)| FileLayout {
            path,
            header: l.header,
            total_len: l.total_len,
        })
        .collect();
    Ok((files, offs))
}

fn tensor_err(src: &ModelSource, tp: &TensorPlan, msg: String) -> Error {
    Error::Tensor {
        file: src.path_of(&src.tensors[tp.source]).to_path_buf(),
        tensor: tp.name.clone(),
        msg,
    }
}

/// Rows `r0..r1` of a source tensor as f32, whatever it is stored as (float, or a ggml block
/// type of a GGUF input); with `permute`, output row r is source row
/// `arch::permuted_source_row(r, rows, heads)`; with `shift`, 1 is added to every value as
/// llama.cpp's converter adds it (in f16 for an f16 tensor, else in f32).
pub(crate) fn source_rows(
    src: &ModelSource,
    st: &SourceTensor,
    permute: Option<usize>,
    shift: bool,
    r0: usize,
    r1: usize,
) -> scratch::Scratch {
    source_rows_finite(src, st, permute, shift, r0, r1).0
}

/// [`source_rows`], and whether every value is finite.
fn source_rows_finite(
    src: &ModelSource,
    st: &SourceTensor,
    permute: Option<usize>,
    shift: bool,
    r0: usize,
    r1: usize,
) -> (scratch::Scratch, bool) {
    let (mut x, finite) = source_rows_unshifted(src, st, permute, r0, r1);
    if shift {
        let f16 = st.info.dtype == DType::F16 && st.ggml.is_none();
        for v in x.iter_mut() {
            *v += 1.0;
            if f16 {
                *v = round_to(DType::F16, *v);
            }
        }
        // (a norm's few values: scanned again after the shift)
        let finite = !qs_numeric::dtype::any_nonfinite(&x);
        return (x, finite);
    }
    (x, finite)
}

fn source_rows_unshifted(
    src: &ModelSource,
    st: &SourceTensor,
    permute: Option<usize>,
    r0: usize,
    r1: usize,
) -> (scratch::Scratch, bool) {
    let (rows, cols) = rows_cols(&st.info.shape);
    // every value is written below
    let mut x = scratch::take((r1 - r0) * cols);
    let finite = match permute {
        None => src.read_rows_finite(st, r0, r1, &mut x),
        Some(heads) => {
            let mut finite = true;
            for (k, out) in x.chunks_mut(cols.max(1)).enumerate() {
                let r = crate::arch::permuted_source_row(r0 + k, rows, heads);
                finite &= src.read_rows_finite(st, r, r + 1, out);
            }
            finite
        }
    };
    (x, finite)
}

/// Per-thread value buffers reused from chunk to chunk: a fresh multi-megabyte allocation per
/// chunk costs a page fault per 4 KiB and a memset (a fifth of a Q8_0 conversion's time).
/// A buffer keeps its full length while lent (a [`scratch::Scratch`] shows its first `n`
/// values), so taking a shorter chunk after a longer one fills nothing.
pub(crate) mod scratch {
    use std::cell::RefCell;
    use std::ops::{Deref, DerefMut};

    thread_local! {
        static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    }

    /// `n` values of a reused buffer (left from an earlier use, or zeros: the caller
    /// overwrites all of them); back to this thread's pool when dropped.
    pub(crate) struct Scratch {
        v: Vec<f32>,
        n: usize,
    }

    impl Deref for Scratch {
        type Target = [f32];
        fn deref(&self) -> &[f32] {
            &self.v[..self.n]
        }
    }

    impl DerefMut for Scratch {
        fn deref_mut(&mut self) -> &mut [f32] {
            &mut self.v[..self.n]
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let v = std::mem::take(&mut self.v);
            // (at thread exit the pool may be gone: the buffer is then simply freed)
            let _ = FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < 2 {
                    f.push(v);
                } else if let Some(small) = f.iter_mut().min_by_key(|b| b.len()) {
                    // keep the two longest
                    if small.len() < v.len() {
                        *small = v;
                    }
                }
            });
        }
    }

    /// A buffer of `n` values: one of this thread's that holds `n` already if there is one
    /// (nothing filled), else the longest, grown with zeros.
    pub(crate) fn take(n: usize) -> Scratch {
        let v = FREE
            .try_with(|f| {
                let mut f = f.borrow_mut();
                let at = f
                    .iter()
                    .position(|b| b.len() >= n)
                    .or_else(|| (0..f.len()).max_by_key(|&i| f[i].len()));
                at.map(|i| f.swap_remove(i))
            })
            .ok()
            .flatten();
        let mut v = v.unwrap_or_default();
        if v.len() < n {
            v.resize(n, 0.0);
        }
        Scratch { v, n }
    }
}

/// Decodes rows `r0..r1` of a source tensor to f32 (gathering permuted rows) and checks them
/// for NaN/Inf.
fn decode_rows(
    src: &ModelSource,
    tp: &TensorPlan,
    r0: usize,
    r1: usize,
    allow_nonfinite: bool,
) -> Result<scratch::Scratch> {
    let (x, finite) =
        source_rows_finite(src, &src.tensors[tp.source], tp.permute, tp.shift, r0, r1);
    let cols = rows_cols(&tp.shape).1;
    // Found while decoding; the position is looked up only on failure.
    if !allow_nonfinite && !finite {
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            let n = x.iter().filter(|v| !v.is_finite()).count();
            return Err(tensor_err(
                src,
                tp,
                format!(
                    "{n} non-finite value(s) in rows {r0}..{r1}, first {} at row {}, column {} (pass --allow-nonfinite to carry them through a copy or float conversion)",
                    x[i],
                    r0 + i / cols.max(1),
                    i % cols.max(1)
                ),
            ));
        }
    }
    Ok(x)
}

fn tensor_min_max(
    pool: &rayon::ThreadPool,
    src: &ModelSource,
    tp: &TensorPlan,
    allow_nonfinite: bool,
) -> Result<TensorStats> {
    let (rows, cols) = rows_cols(&tp.shape);
    let chunks = chunk_rows(rows, cols, 1, CHUNK_ELEMS);
    let parts = run_jobs(pool, &chunks, |&(r0, r1)| {
        let x = decode_rows(src, tp, r0, r1, allow_nonfinite)?;
        Ok(qs_numeric::rtn::min_max(&x))
    })?;
    let (mn, mx) = parts
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &(c, d)| {
            (a.min(c), b.max(d))
        });
    Ok(TensorStats { min: mn, max: mx })
}

#[allow(clippy::too_many_arguments)]
fn run_chunk<'a>(
    src: &'a ModelSource,
    tp: &TensorPlan,
    offsets: &[(usize, u64)],
    r0: usize,
    r1: usize,
    tstats: TensorStats,
    cfg: &QuantizeConfig,
    calibrated: Option<&crate::calib::Calibrated>,
    tx: &WriteTx<'a>,
) -> Result<ChunkResult> {
    let transform = calibrated.and_then(|c| c.transform.as_deref());
    let codes = calibrated.and_then(|c| c.out.as_deref());
    let st = &src.tensors[tp.source];
    let (_, cols) = rows_cols(&tp.shape);
    let rb = src.row_bytes(st);
    let (b0, b1) = (r0 * rb, r1 * rb);
    let mut res = ChunkResult::default();
    match &tp.action {
        Action::Copy => {
            if transform.is_some() {
                return Err(tensor_err(
                    src,
                    tp,
                    "a calibration transform reached a copied tensor".into(),
                ));
            }
            if tp.dtype.is_float() && st.ggml.is_none() {
                // scanned for NaN/Inf like everything else
                decode_rows(src, tp, r0, r1, cfg.allow_nonfinite)?;
            }
            res.stats.n = ((r1 - r0) * cols) as u64;
            if src.native_blocks(st).is_some() {
                // blocks rearranged from a checkpoint's layout (MXFP4 experts)
                let mut b = vec![0u8; b1 - b0];
                src.ggml_rows(st, r0, r1, &mut b);
                src.release_rows(st, r0, r1);
                send(
                    tx,
                    (offsets[0].0, offsets[0].1 + b0 as u64),
                    Bytes::Owned(b),
                    &cfg.input,
                )?;
                return Ok(res);
            }
            // the writer releases these pages once they are written
            send(
                tx,
                (offsets[0].0, offsets[0].1 + b0 as u64),
                Bytes::Mapped {
                    tensor: st,
                    start: b0,
                    end: b1,
                },
                &cfg.input,
            )?;
            return Ok(res);
        }
        Action::Encode(scheme) => {
            let quantizing = !matches!(scheme, Scheme::Float(FloatLayout { .. }));
            let mut x = decode_rows(src, tp, r0, r1, cfg.allow_nonfinite && !quantizing)?;
            if quantizing && src.dequantized(st) && st.ggml.is_none() {
                // dequantized weights (block-scaled FP8, GPTQ, compressed-tensors) go through
                // bf16 first, as llama.cpp's converter writes them by default (its "auto"
                // type) before llama-quantize reads them
                x.iter_mut().for_each(|v| *v = round_to(DType::BF16, *v));
            }
            let (rows, _) = rows_cols(&tp.shape);
            let src_rows: Vec<usize> = (r0..r1)
                .map(|r| {
                    tp.permute
                        .map_or(r, |h| crate::arch::permuted_source_row(r, rows, h))
                })
                .collect();
            if let Some(t) = transform {
                // AWQ's scales and clipping, as the calibration applied them
                // (a norm read as its applied gain, `1 + w`, is scaled as such)
                match tp.shift {
                    true => t.on_applied().apply(&src_rows, cols, &mut x),
                    false => t.apply(&src_rows, cols, &mut x),
                }
            }
            if let Scheme::Float(FloatLayout { dtype, clamp }) = *scheme {
                if narrows(tp.dtype, dtype) {
                    let rounded: Vec<f32> = x.iter().map(|&v| round_to(dtype, v)).collect();
                    res.audit =
                        audit_narrowing(&x, &rounded, float_max(dtype), float_min_normal(dtype));
                    if res.audit.overflow > 0 && !clamp {
                        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                        return Err(tensor_err(
                            src,
                            tp,
                            format!(
                                "{} value(s) in rows {r0}..{r1} exceed the {} range (max |x| = {amax:e} > {}); pass --clamp to saturate them",
                                res.audit.overflow,
                                dtype,
                                float_max(dtype)
                            ),
                        ));
                    }
                }
            }
            // what the decoded bytes must equal, where the encoder's intent is known exactly
            let mut intended: Option<Vec<f32>> = None;
            let enc = match codes {
                Some(c) => {
                    // the codes and parameters the method chose for these rows, in output
                    // row order (llama's q/k rows are permuted in a GGUF)
                    let groups = c.params.len() / rows.max(1);
                    let (codes, params, offsets) = (
                        gather_rows(&c.codes, &src_rows, cols),
                        gather_rows(&c.params, &src_rows, groups),
                        gather_rows(&c.offsets, &src_rows, groups),
                    );
                    let chunk = qs_numeric::layout::Codes {
                        codes: &codes,
                        params: &params,
                        offsets: &offsets,
                        g_idx: &c.g_idx,
                    };
                    intended = Some(chunk.values(cols));
                    scheme
                        .encode_codes(&tp.shape, r0, chunk)
                        .map_err(|e| tensor_err(src, tp, e.to_string()))?
                }
                None => {
                    // importance of the transformed weights' inputs
                    let imp = match (tp.imatrix.as_ref(), transform) {
                        (Some(m), Some(t)) => Some(std::borrow::Cow::Owned(t.importance(m))),
                        (Some(m), None) => Some(std::borrow::Cow::Borrowed(m.as_slice())),
                        (None, _) => None,
                    };
                    scheme.encode_weighted(&tp.shape, r0, &x, tstats, imp.as_deref())
                }
            };
            // Validate what is written: decode the very bytes and compare with what was meant.
            let parts: Vec<&[u8]> = enc.pieces.iter().map(|p| p.bytes.as_slice()).collect();
            let decode_all = || {
                // every layout's decode writes every value
                let mut y = scratch::take(x.len());
                scheme.decode(&tp.shape, r0, r1, &parts, &mut y);
                y
            };
            if let Scheme::Float(FloatLayout { dtype, clamp }) = *scheme {
                let max = float_max(dtype);
                intended = Some(
                    x.iter()
                        .map(|&v| round_to(dtype, if clamp { v.clamp(-max, max) } else { v }))
                        .collect(),
                );
            }
            // The error statistics and the bound the per-row check enforces, in one pass (a few
            // rows decoded at a time where the layout allows); the exact check runs where the
            // bound fails (to name the value) and wherever it cannot stand in for it.
            let fused = intended.is_none() && !cfg.allow_nonfinite;
            let mut within = false;
            let mut y = None;
            if fused {
                let by_rows = scheme.error_stats_by_rows(
                    &tp.shape,
                    (r0, r1),
                    &enc.pieces,
                    &x,
                    &mut res.stats,
                );
                within = match by_rows {
                    Some(w) => w,
                    None => {
                        let all = decode_all();
                        let (st, w) = ErrorStats::of_bounded(&x, &all, cols);
                        res.stats = st;
                        y = Some(all);
                        w
                    }
                };
            }
            if !within {
                let y = y.get_or_insert_with(decode_all);
                qs_numeric::layout::check_written(intended.as_deref(), &x, y, cols).map_err(
                    |m| {
                        tensor_err(
                            src,
                            tp,
                            format!(
                                "rows {r0}..{r1}: the written bytes do not decode as intended: {m}"
                            ),
                        )
                    },
                )?;
            }
            if fused {
                // statistics computed above
            } else if cfg.allow_nonfinite {
                // NaN/Inf carried through a float conversion: compare the finite values only
                let y = y.get_or_insert_with(decode_all);
                let (xf, yf): (Vec<f32>, Vec<f32>) = x
                    .iter()
                    .zip(y.iter())
                    .filter(|(a, _)| a.is_finite())
                    .map(|(a, b)| (*a, *b))
                    .unzip();
                res.stats = ErrorStats::of(&xf, &yf);
            } else {
                res.stats = ErrorStats::of(&x, y.get_or_insert_with(decode_all));
            }
            for p in enc.pieces {
                send(
                    tx,
                    (offsets[p.slot].0, offsets[p.slot].1 + p.offset as u64),
                    Bytes::Owned(p.bytes),
                    &cfg.input,
                )?;
            }
        }
    }
    if tp.permute.is_none() {
        // permuted tensors read rows out of order: their pages go when the map does
        src.release_rows(st, r0, r1);
    }
    Ok(res)
}

/// Rows `rows` (each `per` values) of a row-major matrix, in that order.
fn gather_rows<T: Copy>(v: &[T], rows: &[usize], per: usize) -> Vec<T> {
    rows.iter()
        .flat_map(|&s| v[s * per..(s + 1) * per].iter().copied())
        .collect()
}

fn narrows(from: DType, to: DType) -> bool {
    match to {
        DType::F16 => from != DType::F16,
        DType::BF16 => matches!(from, DType::F32 | DType::F64),
        _ => false,
    }
}

fn row(
    tp: &TensorPlan,
    r: &ChunkResult,
    layer_output_error: Option<crate::calib::LayerOutputError>,
) -> ReportRow {
    let n: usize = tp.shape.iter().product();
    let out = tp.bytes_out() as u64;
    let changed = matches!(tp.action, Action::Encode(_));
    let audit = match tp.action {
        Action::Encode(Scheme::Float(FloatLayout { dtype, .. })) if narrows(tp.dtype, dtype) => {
            Some(r.audit)
        }
        _ => None,
    };
    ReportRow {
        tensor: tp.name.clone(),
        shape: tp.shape.clone(),
        dtype_in: tp.dtype.to_string(),
        storage: tp.label(),
        bytes_in: tp.bytes_in() as u64,
        bytes_out: out,
        bits_per_weight: if n == 0 {
            0.0
        } else {
            out as f64 * 8.0 / n as f64
        },
        error: changed.then(|| r.stats.summary()),
        audit,
        note: tp.note.clone(),
        layer_output_error,
        stats: r.stats,
    }
}
