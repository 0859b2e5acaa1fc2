//! `diff A B [--against ORIGINAL]`: two quantized checkpoints tensor by tensor, for reviewing a
//! change in a pipeline: each tensor's storage and size on both sides, how many of its bytes
//! changed, the error of B against A (both decoded with the dequantization kernels `verify`
//! uses) and, with the original, the error of each against it.
//!
//! A and B are both GGUF or both safetensors (a file, shards or a folder); tensors pair by
//! name. With ORIGINAL, GGUF tensors are named and ordered as the original's (llama.cpp's
//! q/k row permutation undone) so that each side compares with it row by row.

use crate::checkpoint::{gguf_logical, is_gguf, st_logical, Logical};
use crate::error::{Error, Result};
use crate::jobs::{chunk_rows, pool, run_jobs, CHUNK_ELEMS};
use crate::report::{human_bytes, ReportFormat};
use crate::Progress;
use qs_formats::gguf::GgufFile;
use qs_formats::source::ModelSource;
use qs_numeric::layout::rows_cols;
use qs_numeric::{ErrorStats, ErrorSummary};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

pub const SCHEMA_VERSION: u32 = 1;

/// One tensor present on both sides.
#[derive(Debug, Clone, Serialize)]
pub struct DiffRow {
    pub tensor: String,
    pub shape: Vec<usize>,
    pub storage_a: String,
    pub storage_b: String,
    pub bytes_a: u64,
    pub bytes_b: u64,
    /// Bytes that differ, when both sides store the same number of bytes.
    pub bytes_changed: Option<u64>,
    pub identical: bool,
    /// B's values against A's (A as the reference).
    pub b_vs_a: ErrorSummary,
    pub a_vs_original: Option<ErrorSummary>,
    pub b_vs_original: Option<ErrorSummary>,
    #[serde(skip)]
    stats: [ErrorStats; 3],
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffTotals {
    /// Tensors on both sides.
    pub tensors: usize,
    pub identical: usize,
    pub bytes_a: u64,
    pub bytes_b: u64,
    /// Pooled over the tensors on both sides.
    pub b_vs_a: Option<ErrorSummary>,
    pub a_vs_original: Option<ErrorSummary>,
    pub b_vs_original: Option<ErrorSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub schema_version: u32,
    pub command: String,
    pub a: String,
    pub b: String,
    pub against: Option<String>,
    /// Most different first (lowest SQNR of B against A), identical tensors last.
    pub rows: Vec<DiffRow>,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    pub totals: DiffTotals,
}

enum Side {
    Gguf(GgufFile),
    St(Box<ModelSource>),
}

fn open(p: &Path) -> Result<Side> {
    Ok(if is_gguf(p) {
        Side::Gguf(GgufFile::open(p)?)
    } else {
        Side::St(Box::new(ModelSource::open(p)?))
    })
}

fn logical<'a>(s: &'a Side, orig: Option<&ModelSource>) -> Result<Vec<Logical<'a>>> {
    match s {
        Side::Gguf(g) => gguf_logical(g, orig),
        Side::St(m) => st_logical(m),
    }
}

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    (a / gcd(a, b).max(1)) * b
}

/// Compares `b` with `a` (and each with `against`).
pub fn diff(
    a: &Path,
    b: &Path,
    against: Option<&Path>,
    threads: Option<usize>,
    progress: &dyn Progress,
) -> Result<DiffReport> {
    let orig = against.map(ModelSource::open).transpose()?;
    let (sa, sb) = (open(a)?, open(b)?);
    if matches!(sa, Side::Gguf(_)) != matches!(sb, Side::Gguf(_)) {
        return Err(Error::Config(format!(
            "diff compares two GGUF files or two safetensors checkpoints: {} and {} differ in kind",
            a.display(),
            b.display()
        )));
    }
    let la = logical(&sa, orig.as_ref())?;
    let lb = logical(&sb, orig.as_ref())?;
    let ib: HashMap<&str, usize> = lb
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    let ia: HashMap<&str, usize> = la
        .iter()
        .enumerate()
        .map(|(i, l)| (l.name.as_str(), i))
        .collect();
    let by_orig: HashMap<&str, usize> = orig
        .iter()
        .flat_map(|o| o.tensors.iter().enumerate())
        .map(|(i, t)| (t.info.name.as_str(), i))
        .collect();
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    for (i, l) in la.iter().enumerate() {
        let Some(&j) = ib.get(l.name.as_str()) else {
            continue;
        };
        let m = &lb[j];
        if rows_cols(&l.shape) != rows_cols(&m.shape) || l.permute != m.permute {
            return Err(Error::Verify(format!(
                "tensor '{}': shape {:?} in {} but {:?} in {}",
                l.name,
                l.shape,
                a.display(),
                m.shape,
                b.display()
            )));
        }
        if let Some(o) = &orig {
            let Some(&oi) = by_orig.get(l.name.as_str()) else {
                return Err(Error::Verify(format!(
                    "tensor '{}' is not in {}",
                    l.name,
                    o.input.display()
                )));
            };
            let ot = &o.tensors[oi].info;
            if rows_cols(&ot.shape) != rows_cols(&l.shape) || !ot.dtype.is_float() {
                return Err(Error::Verify(format!(
                    "tensor '{}': {} {:?} in {}, {:?} in {}",
                    l.name,
                    ot.dtype,
                    ot.shape,
                    o.input.display(),
                    l.shape,
                    a.display()
                )));
            }
        }
        pairs.push((i, j));
    }
    let only = |l: &[Logical<'_>], other: &HashMap<&str, usize>| -> Vec<String> {
        l.iter()
            .filter(|t| !other.contains_key(t.name.as_str()))
            .map(|t| t.name.clone())
            .collect()
    };
    let only_in_a = only(&la, &ib);
    let only_in_b = only(&lb, &ia);

    struct Job {
        p: usize,
        r0: usize,
        r1: usize,
    }
    let mut jobs = Vec::new();
    for (p, &(i, j)) in pairs.iter().enumerate() {
        let (rows, cols) = rows_cols(&la[i].shape);
        let align = lcm(la[i].scheme.row_align(), lb[j].scheme.row_align());
        for (r0, r1) in chunk_rows(rows, cols, align, CHUNK_ELEMS) {
            jobs.push(Job { p, r0, r1 });
        }
    }
    let decode = |l: &Logical<'_>, r0: usize, r1: usize| {
        let (_, cols) = rows_cols(&l.shape);
        let parts: Vec<&[u8]> = l
            .slots
            .iter()
            .enumerate()
            .map(|(i, s)| &s[l.scheme.slot_range(i, &l.shape, r0, r1)])
            .collect();
        let mut y = vec![0f32; (r1 - r0) * cols];
        l.scheme.decode(&l.shape, r0, r1, &parts, &mut y);
        y
    };
    let pool = pool(threads)?;
    progress.start(pairs.iter().map(|&(i, j)| la[i].bytes + lb[j].bytes).sum());
    let stats = run_jobs(&pool, &jobs, |job| {
        let (i, j) = pairs[job.p];
        let (x, y) = (
            decode(&la[i], job.r0, job.r1),
            decode(&lb[j], job.r0, job.r1),
        );
        let mut s = [
            ErrorStats::of(&x, &y),
            Default::default(),
            Default::default(),
        ];
        if let Some(o) = &orig {
            let ot = &o.tensors[by_orig[la[i].name.as_str()]];
            let w = crate::run::source_rows(o, ot, la[i].permute, la[i].shift, job.r0, job.r1);
            s[1] = ErrorStats::of(&w, &x);
            s[2] = ErrorStats::of(&w, &y);
        }
        progress.inc(
            ((job.r1 - job.r0) as u64 * (la[i].bytes + lb[j].bytes)) / {
                let (rows, _) = rows_cols(&la[i].shape);
                rows.max(1) as u64
            },
        );
        Ok(s)
    })?;
    progress.finish();
    let mut per = vec![<[ErrorStats; 3]>::default(); pairs.len()];
    for (job, s) in jobs.iter().zip(&stats) {
        for k in 0..3 {
            per[job.p][k].merge(&s[k]);
        }
    }
    let mut rows: Vec<DiffRow> = pairs
        .iter()
        .zip(per)
        .map(|(&(i, j), st)| {
            let (x, y) = (&la[i], &lb[j]);
            let same_len = x.slots.len() == y.slots.len()
                && x.slots
                    .iter()
                    .zip(&y.slots)
                    .all(|(p, q)| p.len() == q.len());
            let changed = same_len.then(|| {
                x.slots
                    .iter()
                    .zip(&y.slots)
                    .map(|(p, q)| p.iter().zip(q.iter()).filter(|(u, v)| u != v).count() as u64)
                    .sum::<u64>()
            });
            DiffRow {
                tensor: x.name.clone(),
                shape: x.shape.clone(),
                storage_a: x.scheme.label(),
                storage_b: y.scheme.label(),
                bytes_a: x.bytes,
                bytes_b: y.bytes,
                bytes_changed: changed,
                identical: changed == Some(0) && x.scheme.label() == y.scheme.label(),
                b_vs_a: st[0].summary(),
                a_vs_original: orig.as_ref().map(|_| st[1].summary()),
                b_vs_original: orig.as_ref().map(|_| st[2].summary()),
                stats: st,
            }
        })
        .collect();
    rows.sort_by(|p, q| {
        let key = |r: &DiffRow| {
            (
                r.identical,
                r.b_vs_a.sqnr_db.unwrap_or(if r.b_vs_a.exact() {
                    f64::INFINITY
                } else {
                    f64::NEG_INFINITY
                }),
            )
        };
        let (kp, kq) = (key(p), key(q));
        kp.0.cmp(&kq.0)
            .then(kp.1.total_cmp(&kq.1))
            .then_with(|| p.tensor.cmp(&q.tensor))
    });
    let pooled = |k: usize| {
        let mut s = ErrorStats::default();
        for r in &rows {
            s.merge(&r.stats[k]);
        }
        (!rows.is_empty()).then(|| s.summary())
    };
    let totals = DiffTotals {
        tensors: rows.len(),
        identical: rows.iter().filter(|r| r.identical).count(),
        bytes_a: la.iter().map(|l| l.bytes).sum(),
        bytes_b: lb.iter().map(|l| l.bytes).sum(),
        b_vs_a: pooled(0),
        a_vs_original: orig.as_ref().and_then(|_| pooled(1)),
        b_vs_original: orig.as_ref().and_then(|_| pooled(2)),
    };
    Ok(DiffReport {
        schema_version: SCHEMA_VERSION,
        command: "diff".into(),
        a: a.display().to_string(),
        b: b.display().to_string(),
        against: against.map(|p| p.display().to_string()),
        rows,
        only_in_a,
        only_in_b,
        totals,
    })
}

fn sqnr(e: Option<&ErrorSummary>) -> String {
    match e {
        None => "-".into(),
        Some(e) if e.exact() => "exact".into(),
        Some(e) => e.sqnr_db.map_or("-".into(), |v| format!("{v:.2}")),
    }
}

impl DiffReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("diff serializes")
    }

    /// The changed tensors, most different first, then the counts.
    pub fn to_table(&self) -> String {
        let changed: Vec<&DiffRow> = self.rows.iter().filter(|r| !r.identical).collect();
        let w = changed
            .iter()
            .map(|r| r.tensor.chars().count())
            .max()
            .unwrap_or(6)
            .clamp(6, 56);
        let orig = self.against.is_some();
        let mut s = format!(
            "{:<w$}  {:<16} {:<16} {:>10} {:>10} {:>9}",
            "tensor", "A", "B", "size B", "changed", "B~A dB"
        );
        if orig {
            s.push_str(&format!(" {:>9} {:>9}", "A~orig", "B~orig"));
        }
        s.push('\n');
        for r in &changed {
            let name: String = if r.tensor.chars().count() > w {
                let n = r.tensor.chars().count();
                format!(
                    "…{}",
                    r.tensor.chars().skip(n - (w - 1)).collect::<String>()
                )
            } else {
                r.tensor.clone()
            };
            s.push_str(&format!(
                "{:<w$}  {:<16} {:<16} {:>10} {:>10} {:>9}",
                name,
                r.storage_a,
                r.storage_b,
                human_bytes(r.bytes_b),
                r.bytes_changed.map_or("size".into(), |c| format!(
                    "{:.1} %",
                    100.0 * c as f64 / r.bytes_a.max(1) as f64
                )),
                sqnr(Some(&r.b_vs_a)),
            ));
            if orig {
                s.push_str(&format!(
                    " {:>9} {:>9}",
                    sqnr(r.a_vs_original.as_ref()),
                    sqnr(r.b_vs_original.as_ref())
                ));
            }
            s.push('\n');
        }
        let t = &self.totals;
        s.push_str(&format!(
            "{} tensors in both: {} identical, {} changed · {} -> {}",
            t.tensors,
            t.identical,
            t.tensors - t.identical,
            human_bytes(t.bytes_a),
            human_bytes(t.bytes_b)
        ));
        if orig {
            s.push_str(&format!(
                " · SQNR against the original: A {} dB, B {} dB",
                sqnr(t.a_vs_original.as_ref()),
                sqnr(t.b_vs_original.as_ref())
            ));
        }
        s.push('\n');
        for (side, v) in [("A", &self.only_in_a), ("B", &self.only_in_b)] {
            if !v.is_empty() {
                s.push_str(&format!(
                    "only in {side}: {} tensor{} ({})\n",
                    v.len(),
                    if v.len() == 1 { "" } else { "s" },
                    v.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                        + if v.len() > 5 { ", …" } else { "" }
                ));
            }
        }
        s
    }

    /// For a pull-request comment: the counts and the most changed tensors.
    pub fn to_markdown(&self) -> String {
        let t = &self.totals;
        let mut s = format!(
            "### quantsmith diff\n\n- A: `{}`\n- B: `{}`\n",
            self.a.replace('`', "'"),
            self.b.replace('`', "'")
        );
        s.push_str(&format!(
            "- {} tensors in both: {} identical, {} changed · size {} → {}\n",
            t.tensors,
            t.identical,
            t.tensors - t.identical,
            human_bytes(t.bytes_a),
            human_bytes(t.bytes_b)
        ));
        if self.against.is_some() {
            s.push_str(&format!(
                "- SQNR against the original: A {} dB · B {} dB\n",
                sqnr(t.a_vs_original.as_ref()),
                sqnr(t.b_vs_original.as_ref())
            ));
        }
        for (side, v) in [("A", &self.only_in_a), ("B", &self.only_in_b)] {
            if !v.is_empty() {
                s.push_str(&format!("- only in {side}: {} tensors\n", v.len()));
            }
        }
        let changed: Vec<&DiffRow> = self.rows.iter().filter(|r| !r.identical).collect();
        if !changed.is_empty() {
            s.push_str("\n| tensor | A | B | B vs A (dB) |");
            if self.against.is_some() {
                s.push_str(" A vs original (dB) | B vs original (dB) |");
            }
            s.push_str(if self.against.is_some() {
                "\n|---|---|---|---:|---:|---:|\n"
            } else {
                "\n|---|---|---|---:|\n"
            });
            for r in changed.iter().take(crate::report::MARKDOWN_ROWS) {
                s.push_str(&format!(
                    "| `{}` | {} | {} | {} |",
                    r.tensor.replace(['|', '`'], "'"),
                    r.storage_a,
                    r.storage_b,
                    sqnr(Some(&r.b_vs_a))
                ));
                if self.against.is_some() {
                    s.push_str(&format!(
                        " {} | {} |",
                        sqnr(r.a_vs_original.as_ref()),
                        sqnr(r.b_vs_original.as_ref())
                    ));
                }
                s.push('\n');
            }
        }
        s
    }

    /// `--report` by extension: JSON or Markdown.
    pub fn render(&self, f: ReportFormat) -> std::result::Result<String, String> {
        match f {
            ReportFormat::Json => Ok(self.to_json()),
            ReportFormat::Markdown => Ok(self.to_markdown()),
            _ => Err("a diff report is .json or .md".into()),
        }
    }
}
