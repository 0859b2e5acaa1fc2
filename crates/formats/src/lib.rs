//! quantsmith's file formats. The only crate (with the CLI) that touches files.
//!
//! - [`source`]: models to read (safetensors file, sharded checkpoint, HF folder) over mmap.
//! - [`safetensors`]: validating header parser and planned-layout writer.
//! - [`gguf`]: GGUF v3 planned-layout writer and validating reader.
//! - [`output`]: outputs that appear only when complete.

pub mod calib;
pub mod error;
pub mod gguf;
pub mod imatrix;
pub mod output;
pub mod safetensors;
pub mod source;
pub mod spm;

pub use error::{FormatError, Result};
