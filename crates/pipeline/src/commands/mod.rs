//! The commands besides `quantize`, thin over the shared pieces: [`verify`] and [`eval`] read
//! checkpoints back with [`crate::checkpoint`], [`export`] turns a GGUF into an HF folder,
//! [`inspect`] lists a file's tensors.

pub mod eval;
pub mod export;
pub mod inspect;
pub mod verify;
