//! Quality gates: limits a run must meet for a pipeline to accept it.
//!
//! The weight-error gates read the report (every figure in it comes from decoding the bytes
//! written); the model gates (`--max-kld`, `--max-ppl-increase`) read an evaluation of the
//! output against the input on a text ([`crate::eval`]), run after the conversion. Checking is
//! pure: [`check`] turns a report and an evaluation into the list of violations. A front end
//! exits with its own code for a violated gate (the CLI: 3; docs/REPORT.md).

use crate::eval::EvalReport;
use crate::report::Report;
use serde::Serialize;
use std::path::PathBuf;

/// What a weight-error limit applies to: every lossy tensor, or the figure pooled over them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Tensor,
    Total,
}

/// A limit and its scope: `20` or `tensor:20` (each lossy tensor), `total:25` (pooled).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limit {
    pub scope: Scope,
    pub value: f64,
}

impl Limit {
    pub fn parse(s: &str) -> Result<Limit, String> {
        let (scope, v) = match s.split_once(':') {
            Some(("tensor", v)) => (Scope::Tensor, v),
            Some(("total", v)) => (Scope::Total, v),
            Some((other, _)) => {
                return Err(format!(
                    "'{other}': a limit's scope is 'tensor' or 'total' (e.g. total:25)"
                ))
            }
            None => (Scope::Tensor, s),
        };
        let value: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("'{v}' is not a number"))?;
        if !value.is_finite() {
            return Err(format!("'{v}': a limit is a finite number"));
        }
        Ok(Limit { scope, value })
    }
}

/// `--max-ppl-increase`: `5%` or `0.05` (relative to the original's perplexity).
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let (num, scale) = match s.trim().strip_suffix('%') {
        Some(p) => (p, 0.01),
        None => (s.trim(), 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number or percentage (e.g. 5% or 0.05)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}': a non-negative number"));
    }
    Ok(v * scale)
}

/// The text an evaluation runs on, and how much of it.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSpec {
    pub text: PathBuf,
    /// Tokens per chunk (llama-perplexity's `-c`).
    pub ctx: usize,
    /// Evaluate only the first N chunks.
    pub chunks: Option<usize>,
}

/// Every gate of a run (all optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gates {
    /// ‖x − x̂‖ / ‖x‖ (relative RMS error), at most this.
    pub max_rel_error: Vec<Limit>,
    /// SQNR in dB, at least this.
    pub min_sqnr: Vec<Limit>,
    /// Mean KL(original ‖ output) over the evaluation text, in nats.
    pub max_kld: Option<f64>,
    /// ppl(output) / ppl(original) − 1.
    pub max_ppl_increase: Option<f64>,
    /// The evaluation after the conversion (needed by the two gates above; without them its
    /// figures are recorded in the report).
    pub eval: Option<EvalSpec>,
}

impl Gates {
    pub fn is_empty(&self) -> bool {
        self.max_rel_error.is_empty()
            && self.min_sqnr.is_empty()
            && self.max_kld.is_none()
            && self.max_ppl_increase.is_none()
    }

    /// Options that cannot work together, found before any work.
    pub fn check_options(&self) -> Result<(), String> {
        if (self.max_kld.is_some() || self.max_ppl_increase.is_some()) && self.eval.is_none() {
            return Err("--max-kld and --max-ppl-increase need --eval-text FILE".into());
        }
        if let Some(e) = &self.eval {
            if e.ctx < 2 {
                return Err("--eval-ctx must be at least 2".into());
            }
            if e.chunks == Some(0) {
                return Err("--eval-chunks must be at least 1".into());
            }
        }
        Ok(())
    }

    /// The gates, as the report records them.
    pub fn describe(&self) -> Vec<String> {
        let lim = |name: &str, l: &Limit| match l.scope {
            Scope::Tensor => format!("{name} {} (each tensor)", l.value),
            Scope::Total => format!("{name} {} (total)", l.value),
        };
        let mut v: Vec<String> = self
            .max_rel_error
            .iter()
            .map(|l| lim("max-rel-error", l))
            .chain(self.min_sqnr.iter().map(|l| lim("min-sqnr", l)))
            .collect();
        if let Some(k) = self.max_kld {
            v.push(format!("max-kld {k}"));
        }
        if let Some(p) = self.max_ppl_increase {
            v.push(format!("max-ppl-increase {p}"));
        }
        v
    }
}

/// One violated gate: which, on what (a tensor's name, `total`, or `eval`), the figure and the
/// limit it broke.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Violation {
    pub gate: &'static str,
    pub subject: String,
    /// `null` in JSON when the figure is not a number (an infinite relative error, NaN).
    pub value: f64,
    pub limit: f64,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rel = if self.gate == "min-sqnr" { "<" } else { ">" };
        write!(
            f,
            "{} {}: {} {rel} {}",
            self.gate,
            self.subject,
            fmt_num(self.value),
            self.limit
        )
    }
}

fn fmt_num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        format!("{v:.4e}")
    } else {
        format!("{v:.4}")
    }
}

/// The gates and how the run met them, as recorded in the report.
#[derive(Debug, Clone, Serialize)]
pub struct GateOutcome {
    pub checked: Vec<String>,
    pub passed: bool,
    pub violations: Vec<Violation>,
}

/// SQNR (dB) → relative RMS error: 10^(−SQNR/20). `None` (no finite SQNR) for a lossy tensor
/// is an unbounded error.
fn rel_error(sqnr_db: Option<f64>) -> f64 {
    sqnr_db.map_or(f64::INFINITY, |s| 10f64.powf(-s / 20.0))
}

/// `v ≤ limit`; NaN never is.
fn at_most(v: f64, limit: f64) -> bool {
    v.partial_cmp(&limit)
        .is_some_and(|o| o != std::cmp::Ordering::Greater)
}

/// `v ≥ limit`; NaN never is.
fn at_least(v: f64, limit: f64) -> bool {
    v.partial_cmp(&limit)
        .is_some_and(|o| o != std::cmp::Ordering::Less)
}

/// Every violation of `gates` by `report` and (for the model gates) `eval`. A model gate without
/// an evaluation figure (no original's perplexity) is a violation with value NaN.
pub fn check(gates: &Gates, report: &Report, eval: Option<&EvalReport>) -> Vec<Violation> {
    let mut out = Vec::new();
    let lossy = || {
        report
            .rows
            .iter()
            .filter_map(|r| r.error.as_ref().filter(|e| !e.exact()).map(|e| (r, e)))
    };
    let total_sqnr = report.totals.error.as_ref().map(|e| e.sqnr_db);
    for l in &gates.max_rel_error {
        match l.scope {
            Scope::Tensor => {
                for (r, e) in lossy() {
                    let v = rel_error(e.sqnr_db);
                    if !at_most(v, l.value) {
                        out.push(Violation {
                            gate: "max-rel-error",
                            subject: r.tensor.clone(),
                            value: v,
                            limit: l.value,
                        });
                    }
                }
            }
            Scope::Total => {
                // no lossy tensor: no error at all
                let v = total_sqnr.map_or(0.0, rel_error);
                if !at_most(v, l.value) {
                    out.push(Violation {
                        gate: "max-rel-error",
                        subject: "total".into(),
                        value: v,
                        limit: l.value,
                    });
                }
            }
        }
    }
    for l in &gates.min_sqnr {
        match l.scope {
            Scope::Tensor => {
                for (r, e) in lossy() {
                    let v = e.sqnr_db.unwrap_or(f64::NEG_INFINITY);
                    if !at_least(v, l.value) {
                        out.push(Violation {
                            gate: "min-sqnr",
                            subject: r.tensor.clone(),
                            value: v,
                            limit: l.value,
                        });
                    }
                }
            }
            Scope::Total => {
                let v = match total_sqnr {
                    None => f64::INFINITY,
                    Some(s) => s.unwrap_or(f64::NEG_INFINITY),
                };
                if !at_least(v, l.value) {
                    out.push(Violation {
                        gate: "min-sqnr",
                        subject: "total".into(),
                        value: v,
                        limit: l.value,
                    });
                }
            }
        }
    }
    if let Some(k) = gates.max_kld {
        let v = eval.and_then(|e| e.kld_mean).unwrap_or(f64::NAN);
        if !at_most(v, k) {
            out.push(Violation {
                gate: "max-kld",
                subject: "eval".into(),
                value: v,
                limit: k,
            });
        }
    }
    if let Some(p) = gates.max_ppl_increase {
        let v = eval
            .and_then(|e| e.ppl_against.map(|pa| e.ppl / pa - 1.0))
            .unwrap_or(f64::NAN);
        if !at_most(v, p) {
            out.push(Violation {
                gate: "max-ppl-increase",
                subject: "eval".into(),
                value: v,
                limit: p,
            });
        }
    }
    out
}

/// Runs the evaluation `gates` asks for (the output against the input), then checks every gate
/// and records both in `report`. Returns whether every gate passed.
pub fn apply(
    gates: &Gates,
    input: &std::path::Path,
    threads: Option<usize>,
    report: &mut Report,
) -> crate::Result<bool> {
    if let Some(spec) = &gates.eval {
        let cfg = crate::eval::EvalConfig {
            model: PathBuf::from(&report.output),
            against: Some(input.to_path_buf()),
            text: spec.text.clone(),
            ctx: spec.ctx,
            chunks: spec.chunks,
            threads,
            logits: None,
            nll: None,
        };
        report.eval = Some(crate::eval::eval(&cfg)?);
    }
    if gates.is_empty() {
        return Ok(true);
    }
    let violations = check(gates, report, report.eval.as_ref());
    let passed = violations.is_empty();
    report.gates = Some(GateOutcome {
        checked: gates.describe(),
        passed,
        violations,
    });
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ReportRow;
    use qs_numeric::{ErrorStats, ErrorSummary};

    fn row(name: &str, sqnr: Option<f64>, exact: bool) -> ReportRow {
        let mse = if exact { 0.0 } else { 1.0 };
        ReportRow {
            tensor: name.into(),
            shape: vec![4, 4],
            dtype_in: "F32".into(),
            storage: "Q4_0".into(),
            bytes_in: 64,
            bytes_out: 18,
            bits_per_weight: 4.5,
            error: Some(ErrorSummary {
                mse,
                rmse: mse,
                max_abs_err: mse,
                sqnr_db: sqnr,
                cosine: 1.0,
            }),
            audit: None,
            note: None,
            layer_output_error: None,
            stats: ErrorStats::default(),
        }
    }

    fn report(rows: Vec<ReportRow>) -> Report {
        Report::new("quantize", "in".into(), "out".into(), None, rows)
    }

    #[test]
    fn limits_parse_with_scope() {
        assert_eq!(
            Limit::parse("20").unwrap(),
            Limit {
                scope: Scope::Tensor,
                value: 20.0
            }
        );
        assert_eq!(Limit::parse("total:0.1").unwrap().scope, Scope::Total);
        assert_eq!(Limit::parse("tensor:3").unwrap().scope, Scope::Tensor);
        assert!(Limit::parse("layer:3").is_err());
        assert!(Limit::parse("x").is_err());
        assert!(Limit::parse("inf").is_err());
        assert_eq!(parse_fraction("5%").unwrap(), 0.05);
        assert_eq!(parse_fraction("0.05").unwrap(), 0.05);
        assert!(parse_fraction("-1").is_err());
        assert!(parse_fraction("five").is_err());
    }

    /// Per-tensor gates name exactly the tensors beyond the limit, exact tensors never fail,
    /// a lossy tensor without a finite SQNR always fails, and the total uses the pooled figure.
    #[test]
    fn tensor_and_total_limits() {
        let r = report(vec![
            row("a", Some(10.0), false),
            row("b", Some(30.0), false),
            row("c", None, true),
            row("d", None, false),
        ]);
        let g = Gates {
            min_sqnr: vec![Limit::parse("20").unwrap()],
            ..Default::default()
        };
        let v = check(&g, &r, None);
        let names: Vec<&str> = v.iter().map(|v| v.subject.as_str()).collect();
        assert_eq!(names, ["d", "a"], "{v:?}");
        // 10 dB is a relative error of 10^-0.5 ≈ 0.316
        let g = Gates {
            max_rel_error: vec![Limit::parse("0.3").unwrap()],
            ..Default::default()
        };
        let v = check(&g, &r, None);
        let a = v.iter().find(|v| v.subject == "a").unwrap();
        assert!((a.value - 10f64.powf(-0.5)).abs() < 1e-12);
        assert_eq!(v.len(), 2, "{v:?}");
        // no lossy tensor: the total passes any limit
        let exact = report(vec![row("c", None, true)]);
        let g = Gates {
            min_sqnr: vec![Limit::parse("total:100").unwrap()],
            max_rel_error: vec![Limit::parse("total:0").unwrap()],
            ..Default::default()
        };
        assert!(check(&g, &exact, None).is_empty());
    }

    #[test]
    fn model_gates_read_the_evaluation() {
        let r = report(vec![]);
        let ev = |kld: f64, ppl: f64| EvalReport {
            model: "o".into(),
            against: Some("i".into()),
            ctx: 512,
            chunks: 1,
            tokens_scored: 255,
            ppl,
            ppl_se: 0.0,
            ppl_against: Some(10.0),
            ln_ppl_ratio: Some((ppl / 10.0).ln()),
            ln_ppl_ratio_se: Some(0.0),
            kld_mean: Some(kld),
            kld_se: Some(0.0),
            kld_max: Some(kld),
            top1_agreement: Some(1.0),
        };
        let g = Gates {
            max_kld: Some(0.1),
            max_ppl_increase: Some(0.05),
            eval: Some(EvalSpec {
                text: "t".into(),
                ctx: 512,
                chunks: None,
            }),
            ..Default::default()
        };
        assert!(check(&g, &r, Some(&ev(0.05, 10.4))).is_empty());
        let v = check(&g, &r, Some(&ev(0.2, 10.6)));
        assert_eq!(v.len(), 2);
        assert!((v[1].value - 0.06).abs() < 1e-9, "{v:?}");
        // no evaluation: the model gates fail rather than pass silently
        assert_eq!(check(&g, &r, None).len(), 2);
        assert!(Gates {
            eval: None,
            ..g.clone()
        }
        .check_options()
        .is_err());
    }
}
