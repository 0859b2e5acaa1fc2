use qs_formats::FormatError;
use std::path::PathBuf;

/// Pipeline errors; each names the file and, where one is involved, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{0}")]
    Config(String),
    #[error("{file}: tensor '{tensor}': {msg}")]
    Tensor {
        file: PathBuf,
        tensor: String,
        msg: String,
    },
    #[error("{path}: {msg}")]
    Output { path: PathBuf, msg: String },
    #[error("verify: {0}")]
    Verify(String),
}

pub type Result<T> = std::result::Result<T, Error>;
