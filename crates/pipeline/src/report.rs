//! Per-layer error report: rows (worst first), totals, a terminal table and JSON.
//! The JSON schema is documented in docs/REPORT.md.

use qs_numeric::{ErrorStats, ErrorSummary, NarrowingAudit};
use serde::Serialize;

pub const SCHEMA_VERSION: u32 = 1;

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
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
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
                "calibration: {} sequences of {} tokens fitted, {} held out ({}: {} tokens{})\n",
                c.fit_sequences,
                c.seq_len,
                c.held_sequences,
                match c.generation_secs {
                    Some(t) => format!("written by the model itself in {t:.1} s"),
                    None => "text".to_string(),
                },
                c.text_tokens,
                if c.fit_sequences < c.requested {
                    format!(
                        "; {} requested: pass a longer --calib text for more",
                        c.requested
                    )
                } else {
                    String::new()
                }
            ));
            if c.fits_all_tokens && c.fit_sequences * c.seq_len < 32768 {
                s.push_str(
                    "warning: fewer than 32k calibration tokens; GPTQ can overfit them and do worse than round-to-nearest on other text (docs/QUALITY.md)\n",
                );
            }
        }
        s
    }
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
                    text_tokens: 100_000,
                    seq_len: 512,
                    requested: fit_sequences,
                    fit_sequences,
                    held_sequences: 4,
                    fits_all_tokens,
                }),
            }
            .to_table()
        };
        assert!(table(true, 16).contains("fewer than 32k"));
        assert!(!table(false, 16).contains("fewer than 32k"));
        assert!(!table(true, 64).contains("fewer than 32k"));
    }
}
