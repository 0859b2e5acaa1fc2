//! quantsmith's pipeline facade: what the `quantize` CLI calls.
//!
//! [`quantize`]: open the source → [`plan::make_plan`] (every tensor's storage and output names,
//! hence every file offset) → header written first → per-chunk jobs in parallel, each writing at
//! its planned offsets and validating its bytes with the dequantization kernels → [`Report`].
//! [`verify`] and [`inspect`] read what was written.

pub mod batch;
pub mod calib;
pub mod checkpoint;
pub mod commands;
pub mod config;
pub mod convert;
pub mod error;
pub mod gates;
pub mod meta;
pub mod plan;
pub mod report;
pub mod run;

pub use commands::{diff, eval, export, imatrix, inspect, verify};
pub use convert::{allocate, arch, mixture, tokenizer};
pub use run::{self as exec, jobs};

pub use config::{OutputKind, QuantizeConfig, Target};
pub use error::{Error, Result};
pub use exec::{quantize, Outcome};
pub use inspect::inspect;
pub use report::Report;
pub use verify::verify;

/// Outputs written under a temporary name, their checks, and the registry of live
/// temporaries a front end's signal handler removes.
pub use qs_formats::output;
/// Every path a model input reads (what no output may replace).
pub use qs_formats::source::input_paths;

/// Element and block types, re-exported for front ends.
pub mod qs_numeric_types {
    pub use qs_numeric::{awq, DType, GgmlType};
}

/// Progress callbacks. Implemented by the CLI with indicatif.
///
/// Writing counts bytes of input (`start`, `inc`, `finish`); the stages before it (the model
/// writing its calibration text, calibration layer by layer) are counted in their own units
/// (`stage`, then `step`, then `finish`).
pub trait Progress: Sync {
    fn start(&self, _total_bytes: u64) {}
    fn inc(&self, _bytes: u64) {}
    fn finish(&self) {}
    /// A counted stage begins: `what` names it and its unit ("calibration text, tokens").
    fn stage(&self, _what: &str, _total: u64) {}
    /// `n` more units of the current stage are done.
    fn step(&self, _n: u64) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}
