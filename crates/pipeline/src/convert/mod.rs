//! Conversion to llama.cpp's GGUF: per-architecture tensor names and hyper-parameters
//! ([`arch`], one module per family), the vocabulary ([`tokenizer`]) and llama-quantize's file
//! types and per-tensor choices ([`mixture`]), and size-targeted mixtures ([`allocate`]). The GGUF metadata itself is assembled in
//! [`crate::meta`].

pub mod allocate;
pub mod arch;
pub mod mixture;
pub mod tokenizer;
