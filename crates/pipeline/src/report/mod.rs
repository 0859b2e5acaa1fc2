//! Per-layer error report: rows (worst first), totals, a terminal table and JSON.
//! The JSON schema is documented in docs/REPORT.md.

use qs_numeric::{ErrorStats, ErrorSummary, NarrowingAudit};
use serde::Serialize;

mod html;

pub const SCHEMA_VERSION: u32 = 1;

/// Changed tensors listed in a Markdown report (the rest are counted).
pub const MARKDOWN_ROWS: usize = 30;

/// The format of a `--report` file, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Json,
    Csv,
    Markdown,
    /// One self-contained page (docs/REPORT.md).
    Html,
}

impl ReportFormat {
    /// `.json`, `.csv`, `.md` (case-insensitive); anything else is refused with the list.
    pub fn from_path(path: &std::path::Path) -> Result<ReportFormat, String> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("json") => Ok(ReportFormat::Json),
            Some("csv") => Ok(ReportFormat::Csv),
            Some("md") => Ok(ReportFormat::Markdown),
            Some("html" | "htm") => Ok(ReportFormat::Html),
            _ => Err(format!(
                "{}: a report file ends in .json, .csv, .md or .html",
                path.display()
            )),
        }
    }
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Text safe inside a Markdown table cell or code span: no pipes, backticks or line breaks.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
        .replace('`', "'")
        .replace(['\n', '\r'], " ")
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub tensor: String,
    pub shape: Vec<usize>,
    pub dtype_in: String,
    /// How the tensor is stored, e.g. `Q4_0`, `int4-sym-g128`, `F16`, `BF16 (copy)`.
    pub storage: String,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bits_per_weight: f64,
    /// `null` for exact copies.
    pub error: Option<ErrorSummary>,
    /// Float narrowing audit (f16/bf16 conversion), when one applies.
    pub audit: Option<NarrowingAudit>,
    pub note: Option<String>,
    /// GPTQ runs: ‖XWᵀ − XŴᵀ‖² / ‖XWᵀ‖² on held-out calibration tokens, RTN and GPTQ.
    pub layer_output_error: Option<crate::calib::LayerOutputError>,
    #[serde(skip)]
    pub stats: ErrorStats,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub tensors: usize,
    /// Tensors whose values changed (quantized or converted).
    pub changed: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub compression: f64,
    /// Bits per weight over the changed tensors.
    pub bits_per_weight_changed: f64,
    /// Changed tensors whose values are not reproduced exactly.
    pub lossy: usize,
    /// Error pooled over the lossy tensors.
    pub error: Option<ErrorSummary>,
}

/// The importance matrix a GGUF run encoded with.
#[derive(Debug, Clone, Serialize)]
pub struct ImatrixInfo {
    /// `--imatrix`'s file, or `--imatrix-from`'s text.
    pub path: String,
    /// `"file"` (read) or `"computed"` (from the text, by our forward pass).
    pub source: &'static str,
    /// Chunks of text the statistics ran over (as the file records them).
    pub chunks: u32,
    /// Weight tensors with an entry.
    pub entries: usize,
    /// Computed by an earlier job of the same batch and reused.
    pub shared: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub command: String,
    pub input: String,
    pub output: String,
    pub target: Option<String>,
    pub rows: Vec<ReportRow>,
    pub totals: Totals,
    /// GPTQ runs: the calibration data actually used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<crate::calib::CalibSummary>,
    /// GGUF runs with an importance matrix: where it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub imatrix: Option<ImatrixInfo>,
    /// `--eval-text`: the output evaluated against the input after the conversion.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<crate::eval::EvalReport>,
    /// The quality gates of the run and their violations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gates: Option<crate::gates::GateOutcome>,
    /// `--target-bpw` / `--target-size`: the budget and the type chosen for each tensor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<crate::allocate::Allocation>,
    /// How the report was made: tool version, command line, inputs (set by the front end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<RunInfo>,
}

/// The tool, the command line and a fingerprint of every input, so a report says what made it.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub tool_version: String,
    pub command_line: Vec<String>,
    pub inputs: Vec<InputFingerprint>,
}

/// An input's size and the SHA-256 of its first MiB (a checkpoint's header is there; the whole
/// file is not read again).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct InputFingerprint {
    pub path: String,
    pub size: u64,
    pub head_sha256: String,
}

/// Bytes of each input digested for its fingerprint.
pub const FINGERPRINT_PREFIX: u64 = 1 << 20;

impl InputFingerprint {
    pub fn of(p: &std::path::Path) -> std::io::Result<InputFingerprint> {
        use sha2::Digest;
        use std::io::Read;
        let f = std::fs::File::open(p)?;
        let size = f.metadata()?.len();
        let mut head = Vec::new();
        f.take(FINGERPRINT_PREFIX).read_to_end(&mut head)?;
        let d = sha2::Sha256::digest(&head);
        Ok(InputFingerprint {
            path: p.display().to_string(),
            size,
            head_sha256: d.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }
}

impl RunInfo {
    /// The fingerprints of `inputs` that are files (a folder is listed by its files).
    pub fn new(command_line: Vec<String>, inputs: &[std::path::PathBuf]) -> RunInfo {
        RunInfo {
            tool_version: env!("CARGO_PKG_VERSION").into(),
            command_line,
            inputs: inputs
                .iter()
                .filter(|p| p.is_file())
                .filter_map(|p| InputFingerprint::of(p).ok())
                .collect(),
        }
    }
}

impl Report {
    /// Sorts rows worst first and computes totals.
    pub fn new(
        command: &str,
        input: String,
        output: String,
        target: Option<String>,
        mut rows: Vec<ReportRow>,
    ) -> Report {
        rows.sort_by(|a, b| {
            let key = |r: &ReportRow| match &r.error {
                None => (2, 0.0),
                Some(e) if e.exact() => (1, 0.0),
                Some(e) => (0, e.sqnr_db.unwrap_or(f64::NEG_INFINITY)),
            };
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0)
                .then(ka.1.total_cmp(&kb.1))
                .then_with(|| a.tensor.cmp(&b.tensor))
        });
        let mut pooled = ErrorStats::default();
        let (mut cout, mut cn, mut changed) = (0u64, 0u64, 0usize);
        let mut lossy = 0usize;
        for r in &rows {
            if let Some(e) = &r.error {
                changed += 1;
                cout += r.bytes_out;
                cn += r.shape.iter().product::<usize>() as u64;
                if !e.exact() {
                    pooled.merge(&r.stats);
                    lossy += 1;
                }
            }
        }
        let bytes_in: u64 = rows.iter().map(|r| r.bytes_in).sum();
        let bytes_out: u64 = rows.iter().map(|r| r.bytes_out).sum();
        let totals = Totals {
            tensors: rows.len(),
            changed,
            bytes_in,
            bytes_out,
            compression: if bytes_out == 0 {
                0.0
            } else {
                bytes_in as f64 / bytes_out as f64
            },
            bits_per_weight_changed: if cn == 0 {
                0.0
            } else {
                cout as f64 * 8.0 / cn as f64
            },
            lossy,
            error: (lossy > 0).then(|| pooled.summary()),
        };
        Report {
            schema_version: SCHEMA_VERSION,
            command: command.into(),
            input,
            output,
            target,
            rows,
            totals,
            calibration: None,
            imatrix: None,
            eval: None,
            gates: None,
            allocation: None,
            run: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// The report in `format` (the bytes a `--report` file holds).
    pub fn render(&self, format: ReportFormat) -> String {
        match format {
            ReportFormat::Json => self.to_json(),
            ReportFormat::Csv => self.to_csv(),
            ReportFormat::Markdown => self.to_markdown(),
            ReportFormat::Html => html::render(self),
        }
    }

    /// One line per tensor (worst first, as the rows), RFC 4180 quoting; empty fields where a
    /// figure does not apply (exact copies have no error, SQNR of an exact tensor is `inf`).
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "tensor,shape,dtype_in,storage,bytes_in,bytes_out,bits_per_weight,sqnr_db,rmse,\
             max_abs_err,cosine,layer_output_error_rtn,layer_output_error_method,note\n",
        );
        let f = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v}"));
        for r in &self.rows {
            let e = r.error.as_ref();
            let l = r.layer_output_error.as_ref();
            let fields = [
                csv_field(&r.tensor),
                csv_field(
                    &r.shape
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("x"),
                ),
                csv_field(&r.dtype_in),
                csv_field(&r.storage),
                r.bytes_in.to_string(),
                r.bytes_out.to_string(),
                format!("{}", r.bits_per_weight),
                e.map_or(String::new(), |e| {
                    e.sqnr_db.map_or("inf".into(), |v| format!("{v}"))
                }),
                f(e.map(|e| e.rmse)),
                f(e.map(|e| e.max_abs_err)),
                f(e.map(|e| e.cosine)),
                f(l.map(|l| l.rtn)),
                f(l.map(|l| l.calibrated)),
                csv_field(r.note.as_deref().unwrap_or("")),
            ];
            s.push_str(&fields.join(","));
            s.push('\n');
        }
        s
    }

    /// A Markdown summary for CI job summaries and pull-request comments: what ran, totals,
    /// calibration, and the worst changed tensors ([`MARKDOWN_ROWS`] at most).
    pub fn to_markdown(&self) -> String {
        let t = &self.totals;
        let mut s = format!("### quantsmith: `{}`\n\n", md_cell(&self.output));
        s.push_str(&format!(
            "- input: `{}`{}\n",
            md_cell(&self.input),
            self.target
                .as_ref()
                .map_or(String::new(), |t| format!(" · target: `{}`", md_cell(t)))
        ));
        s.push_str(&format!(
            "- {} tensors ({} changed, {} lossy) · {} → {} ({:.2}×) · {:.2} bits per weight over the changed tensors\n",
            t.tensors,
            t.changed,
            t.lossy,
            human_bytes(t.bytes_in),
            human_bytes(t.bytes_out),
            t.compression,
            t.bits_per_weight_changed
        ));
        if let Some(e) = &t.error {
            s.push_str(&format!(
                "- pooled error of the lossy tensors: SQNR {} dB · RMSE {:.3e} · max |error| {:.3e}\n",
                e.sqnr_db.map_or("inf".into(), |v| format!("{v:.2}")),
                e.rmse,
                e.max_abs_err
            ));
        }
        if let Some(c) = &self.calibration {
            s.push_str(&format!(
                "- calibration: `{}`, {} ({} sequences of {} tokens fitted, {} held out){}\n",
                c.method,
                c.source,
                c.fit_sequences,
                c.seq_len,
                c.held_sequences,
                pass_note(c)
            ));
        }
        if let Some(e) = &self.eval {
            s.push_str(&format!("- eval: {}\n", eval_line(e)));
        }
        if let Some(g) = &self.gates {
            if g.passed {
                s.push_str(&format!(
                    "- gates: **passed** ({})\n",
                    md_cell(&g.checked.join(", "))
                ));
            } else {
                s.push_str(&format!(
                    "- gates: **FAILED**, {} violation{}:\n",
                    g.violations.len(),
                    if g.violations.len() == 1 { "" } else { "s" }
                ));
                for v in g.violations.iter().take(MARKDOWN_ROWS) {
                    s.push_str(&format!("  - `{}`\n", md_cell(&v.to_string())));
                }
                if g.violations.len() > MARKDOWN_ROWS {
                    s.push_str(&format!(
                        "  - … and {} more (see the JSON report)\n",
                        g.violations.len() - MARKDOWN_ROWS
                    ));
                }
            }
        }
        let lossy: Vec<&ReportRow> = self
            .rows
            .iter()
            .filter(|r| r.error.as_ref().is_some_and(|e| !e.exact()))
            .collect();
        if !lossy.is_empty() {
            let calibrated = lossy.iter().any(|r| r.layer_output_error.is_some());
            s.push_str(&format!(
                "\n{} lossy tensors, worst SQNR first{}:\n\n",
                lossy.len(),
                if lossy.len() > MARKDOWN_ROWS {
                    format!(" (the first {MARKDOWN_ROWS})")
                } else {
                    String::new()
                }
            ));
            s.push_str("| tensor | storage | bits/weight | SQNR dB | RMSE |");
            s.push_str(if calibrated {
                " layer-output error RTN | layer-output error method |\n|---|---|---:|---:|---:|---:|---:|\n"
            } else {
                "\n|---|---|---:|---:|---:|\n"
            });
            for r in lossy.iter().take(MARKDOWN_ROWS) {
                let e = r.error.as_ref().expect("lossy rows have an error");
                s.push_str(&format!(
                    "| `{}` | {} | {:.2} | {} | {:.3e} |",
                    md_cell(&r.tensor),
                    md_cell(&r.storage),
                    r.bits_per_weight,
                    e.sqnr_db.map_or("inf".into(), |v| format!("{v:.2}")),
                    e.rmse
                ));
                if calibrated {
                    match &r.layer_output_error {
                        Some(l) => s.push_str(&format!(" {:.3e} | {:.3e} |", l.rtn, l.calibrated)),
                        None => s.push_str(" | |"),
                    }
                }
                s.push('\n');
            }
        }
        s
    }

    /// The terminal table: changed tensors worst first, then a count of exact copies, then totals.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let w = self
            .rows
            .iter()
            .filter(|r| r.error.is_some())
            .map(|r| r.tensor.len())
            .max()
            .unwrap_or(6)
            .clamp(6, 60);
        s.push_str(&format!(
            "{:<w$}  {:<18} {:>10} {:>10} {:>9} {:>8} {:>9} {:>5}\n",
            "tensor", "storage", "rmse", "max|err|", "sqnr dB", "cosine", "size", "bpw"
        ));
        let mut copies = 0;
        for r in &self.rows {
            let Some(e) = r.error.as_ref().filter(|e| !e.exact()) else {
                copies += 1;
                continue;
            };
            let mut name = r.tensor.clone();
            let chars = name.chars().count();
            if chars > w {
                // the tail, cut on a character boundary (names come from files)
                let tail: String = name.chars().skip(chars - (w - 1)).collect();
                name = format!("…{tail}");
            }
            s.push_str(&format!(
                "{:<w$}  {:<18} {:>10.3e} {:>10.3e} {:>9} {:>8.6} {:>9} {:>5.2}\n",
                name,
                r.storage,
                e.rmse,
                e.max_abs_err,
                e.sqnr_db.map_or("-".into(), |v| format!("{v:.2}")),
                e.cosine,
                human_bytes(r.bytes_out),
                r.bits_per_weight
            ));
            if let Some(a) = &r.audit {
                if a.overflow + a.underflow + a.subnormal > 0 {
                    s.push_str(&format!(
                        "{:<w$}    overflow {} · flushed to zero {} · subnormal {} · max rel err {:.2e}\n",
                        "", a.overflow, a.underflow, a.subnormal, a.max_rel_err
                    ));
                }
            }
            if let Some(n) = &r.note {
                s.push_str(&format!("{:<w$}    note: {n}\n", ""));
            }
            if let Some(l) = &r.layer_output_error {
                s.push_str(&format!(
                    "{:<w$}    layer-output error (held-out): RTN {:.3e} · {} {:.3e}\n",
                    "",
                    l.rtn,
                    self.calibration
                        .as_ref()
                        .map_or("calibrated".to_string(), |c| c.method.to_ascii_uppercase()),
                    l.calibrated
                ));
            }
        }
        if copies > 0 {
            s.push_str(&format!(
                "({copies} tensors stored exactly (copied or widened): not listed)\n"
            ));
        }
        let t = &self.totals;
        s.push_str(&format!(
            "total: {} tensors ({} changed) · {} -> {} ({:.2}x)",
            t.tensors,
            t.changed,
            human_bytes(t.bytes_in),
            human_bytes(t.bytes_out),
            t.compression
        ));
        if let Some(e) = &t.error {
            s.push_str(&format!(
                " · changed tensors: {:.2} bpw · lossy ({}): sqnr {} dB, rmse {:.3e}",
                t.bits_per_weight_changed,
                t.lossy,
                e.sqnr_db.map_or("inf".into(), |v| format!("{v:.2}")),
                e.rmse
            ));
        }
        s.push('\n');
        if let Some(c) = &self.calibration {
            s.push_str(&format!(
                "calibration: {} sequences of {} tokens fitted, {} held out ({}: {} tokens{}){}\n",
                c.fit_sequences,
                c.seq_len,
                c.held_sequences,
                match (c.source, c.generation_secs, c.shared) {
                    (_, Some(t), _) => format!("written by the model itself in {t:.1} s"),
                    ("self-generated", None, true) =>
                        "written by the model itself for an earlier job, reused".to_string(),
                    ("self-generated", None, false) => "written by the model itself".to_string(),
                    (_, _, true) => "text, cut for an earlier job, reused".to_string(),
                    _ => "text".to_string(),
                },
                c.text_tokens,
                if c.fit_sequences < c.requested {
                    format!(
                        "; {} requested: pass a longer --calib text for more",
                        c.requested
                    )
                } else {
                    String::new()
                },
                pass_note(c)
            ));
            if !c.starved_experts.is_empty() {
                let list: Vec<String> = c
                    .starved_experts
                    .iter()
                    .map(|e| {
                        format!(
                            "layer {} expert {} ({} tokens)",
                            e.layer, e.expert, e.tokens
                        )
                    })
                    .collect();
                s.push_str(&format!(
                    "experts rounded to nearest (the router sent them fewer than {} calibration tokens; --calib-all-experts feeds them all): {}\n",
                    crate::calib::experts::MIN_EXPERT_TOKENS,
                    list.join(", ")
                ));
            }
            if c.fits_all_tokens && c.fit_sequences * c.seq_len < 32768 {
                s.push_str(
                    "warning: fewer than 32k calibration tokens; a method that fits them all (GPTQ, learned rounding) can overfit them and do worse than round-to-nearest on other text (docs/QUALITY.md)\n",
                );
            }
        }
        if let Some(e) = &self.eval {
            s.push_str(&format!("eval: {}\n", eval_line(e)));
        }
        if let Some(g) = &self.gates {
            if g.passed {
                s.push_str(&format!("gates passed: {}\n", g.checked.join(", ")));
            } else {
                s.push_str(&format!(
                    "gates FAILED ({} violation{}):\n",
                    g.violations.len(),
                    if g.violations.len() == 1 { "" } else { "s" }
                ));
                for v in &g.violations {
                    s.push_str(&format!("  {v}\n"));
                }
            }
        }
        s
    }
}

/// Perplexity, and against the original its perplexity, KL divergence and top-1 agreement.
fn eval_line(e: &crate::eval::EvalReport) -> String {
    let mut s = format!(
        "{} chunks of {} tokens · PPL {:.4} ± {:.4}",
        e.chunks, e.ctx, e.ppl, e.ppl_se
    );
    if let (Some(pa), Some(kl), Some(t1)) = (e.ppl_against, e.kld_mean, e.top1_agreement) {
        s.push_str(&format!(
            " (original {pa:.4}, {:+.2} %) · mean KLD {kl:.6} ± {:.6} · same top-1 {:.2} %",
            100.0 * (e.ppl / pa - 1.0),
            e.kld_se.unwrap_or(0.0),
            100.0 * t1
        ));
    }
    s
}

pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.2} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b} B")
    }
}

/// How a calibration pass fed its layers, when not the default (one job, quantized inputs).
pub(crate) fn pass_note(c: &crate::calib::CalibSummary) -> String {
    match (c.inputs, c.pass_jobs) {
        (crate::config::CalibInputs::Quantized, _) => String::new(),
        (_, 1) => "; layer inputs from the float model".into(),
        (_, n) => format!("; layer inputs from the float model, one pass shared by {n} jobs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calib::CalibSummary;

    /// The short-calibration warning is for methods that fit every token (GPTQ), not for AWQ's
    /// deliberate `--awq-tokens` sample, and not for long texts.
    #[test]
    fn short_calibration_warns_only_methods_fitting_every_token() {
        let table = |fits_all_tokens: bool, fit_sequences: usize| {
            Report {
                schema_version: SCHEMA_VERSION,
                command: String::new(),
                input: String::new(),
                output: String::new(),
                target: None,
                rows: vec![],
                totals: Totals {
                    tensors: 0,
                    changed: 0,
                    bytes_in: 0,
                    bytes_out: 0,
                    compression: 1.0,
                    bits_per_weight_changed: 0.0,
                    lossy: 0,
                    error: None,
                },
                calibration: Some(CalibSummary {
                    method: "m",
                    source: "text",
                    generation_secs: None,
                    shared: false,
                    inputs: crate::config::CalibInputs::Quantized,
                    pass_jobs: 1,
                    text_tokens: 100_000,
                    seq_len: 512,
                    requested: fit_sequences,
                    fit_sequences,
                    held_sequences: 4,
                    fits_all_tokens,
                    starved_experts: vec![],
                }),
                imatrix: None,
                eval: None,
                gates: None,
                allocation: None,
                run: None,
            }
            .to_table()
        };
        assert!(table(true, 16).contains("fewer than 32k"));
        // the Markdown summary of a calibrated run: the method's columns, one per row
        let mut r = Report::new(
            "quantize",
            "in".into(),
            "out|x".into(),
            None,
            ["a.weight", "b.weight"]
                .iter()
                .enumerate()
                .map(|(i, name)| ReportRow {
                    tensor: name.to_string(),
                    shape: vec![2, 2],
                    dtype_in: "F32".into(),
                    storage: "Q4_0".into(),
                    bytes_in: 16,
                    bytes_out: 4,
                    bits_per_weight: 8.0,
                    error: Some(ErrorSummary {
                        mse: 1.0,
                        rmse: 1.0,
                        max_abs_err: 1.0,
                        sqnr_db: Some(10.0 + i as f64),
                        cosine: 0.9,
                    }),
                    audit: None,
                    note: None,
                    layer_output_error: (i == 0).then_some(crate::calib::LayerOutputError {
                        rtn: 0.5,
                        calibrated: 0.25,
                    }),
                    stats: ErrorStats::default(),
                })
                .collect(),
        );
        r.calibration = None;
        let md = r.to_markdown();
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(rows.len(), 4, "{md}");
        let cells = |l: &str| l.matches('|').count() - l.matches("\\|").count();
        assert!(rows.iter().all(|l| cells(l) == 8), "{md}");
        assert!(
            rows[2].contains("`a.weight`") && rows[2].contains("5.000e-1"),
            "{md}"
        );
        assert!(md.starts_with("### quantsmith: `out\\|x`"), "{md}");
        assert!(!table(false, 16).contains("fewer than 32k"));
        assert!(!table(true, 64).contains("fewer than 32k"));
    }
}
