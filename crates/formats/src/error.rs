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
        tensor: shown(&tensor.into()),
        msg: msg.into(),
    }
}

/// A name read from a file, fit for a one-line message: control characters escaped, at most
/// 80 characters (a corrupted length can make a "name" of kilobytes of raw bytes).
pub fn shown(name: &str) -> String {
    const MAX: usize = 80;
    let mut out = String::new();
    for c in name.chars() {
        if out.len() >= MAX {
            out.push_str(&format!("… ({} bytes)", name.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_in_messages_are_one_short_line() {
        assert_eq!(super::shown("blk.0.attn_q.weight"), "blk.0.attn_q.weight");
        assert_eq!(super::shown("a\nb\u{0}"), "a\\nb\\u{0}");
        let long = "x".repeat(1000);
        let s = super::shown(&long);
        assert!(s.len() < 120 && s.ends_with("(1000 bytes)"), "{s}");
    }
}
