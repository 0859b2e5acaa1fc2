use std::path::PathBuf;

/// Errors from reading or writing model files. Every variant names the file, and the tensor
/// where one is involved, so the CLI can print one clear line.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{path}: tensor '{tensor}': {msg}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        msg: String,
    },
    #[error("{path} already exists (pass --force to overwrite it)")]
    OutputExists { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, FormatError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FormatError {
    let path = path.into();
    move |source| FormatError::Io { path, source }
}

pub(crate) fn file_err(path: impl Into<PathBuf>, msg: impl Into<String>) -> FormatError {
    FormatError::File {
        path: path.into(),
        msg: msg.into(),
    }
}

pub(crate) fn tensor_err(
    path: impl Into<PathBuf>,
    tensor: impl Into<String>,
    msg: impl Into<String>,
) -> FormatError {
    FormatError::Tensor {
        path: path.into(),
        tensor: tensor.into(),
        msg: msg.into(),
    }
}
