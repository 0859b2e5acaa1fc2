//! The commands besides `quantize`, thin over the shared pieces: [`verify`] and [`eval`] read
//! checkpoints back with [`crate::checkpoint`], [`export`] turns a GGUF into an HF folder,
//! [`inspect`] lists a file's tensors, [`imatrix`] writes llama.cpp's importance matrix from our
//! forward pass, [`diff`] compares two quantized checkpoints.

pub mod diff;
pub mod eval;
pub mod export;
pub mod imatrix;
pub mod inspect;
pub mod verify;
