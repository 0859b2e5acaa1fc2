//! The one integration-test binary: the `quantize` command end to end, bad input, and the
//! independent oracles (gguf-py, ml_dtypes, the safetensors and gguf-rs-lib crates, llama.cpp,
//! the compressed-tensors package, transformers).

mod bad_input;
mod ci;
mod cli;
mod convert;
mod hf_clients;
mod hostile;
mod llama;
mod oracle;
mod outputs;
mod util;
