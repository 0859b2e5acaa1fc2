use std::path::PathBuf;

/// Errors from reading or writing model files. Every variant names the file, and the tensor
/// where one is involved, so the CLI can print one clear line.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    // The OS error is part of the message and not a `source` (a field named `source` would
    // be one): the CLI prints the whole chain, which would repeat it ("…(os error 28): No
    // space left on device (os error 28)").
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
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
    #[error("{path} is a folder: a file output never replaces a folder, not even with --force")]
    OutputIsFolder { path: PathBuf },
    #[error("{path} would overwrite or delete the input {input}: choose another output")]
    OutputIsInput { path: PathBuf, input: PathBuf },
}

impl FormatError {
    /// The same error naming `f(path)` instead of `path` (e.g. a file inside a folder output
    /// named where it will be, not inside the temporary folder).
    pub fn map_path(self, f: impl FnOnce(PathBuf) -> PathBuf) -> FormatError {
        match self {
            FormatError::Io { path, err } => FormatError::Io { path: f(path), err },
            FormatError::File { path, msg } => FormatError::File { path: f(path), msg },
            FormatError::Tensor { path, tensor, msg } => FormatError::Tensor {
                path: f(path),
                tensor,
                msg,
            },
            FormatError::OutputExists { path } => FormatError::OutputExists { path: f(path) },
            FormatError::OutputIsFolder { path } => FormatError::OutputIsFolder { path: f(path) },
            FormatError::OutputIsInput { path, input } => FormatError::OutputIsInput {
                path: f(path),
                input,
            },
        }
    }

    /// The same error naming `path`.
    pub fn with_path(self, path: &std::path::Path) -> FormatError {
        self.map_path(|_| path.to_path_buf())
    }
}

pub type Result<T> = std::result::Result<T, FormatError>;

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FormatError {
    let path = path.into();
    move |err| FormatError::Io { path, err }
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
    use super::*;

    #[test]
    fn names_in_messages_are_one_short_line() {
        assert_eq!(super::shown("blk.0.attn_q.weight"), "blk.0.attn_q.weight");
        assert_eq!(super::shown("a\nb\u{0}"), "a\\nb\\u{0}");
        let long = "x".repeat(1000);
        let s = super::shown(&long);
        assert!(s.len() < 120 && s.ends_with("(1000 bytes)"), "{s}");
    }

    /// What the CLI prints (anyhow's `{:#}`: the message, then each source's).
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s += &format!(": {c}");
            cur = c.source();
        }
        s
    }

    #[test]
    fn the_os_error_is_printed_once() {
        let e = io_err("out.gguf")(std::io::Error::from_raw_os_error(28));
        let s = chain(&e);
        assert_eq!(s.matches("os error 28").count(), 1, "{s}");
        assert!(
            s.starts_with("out.gguf: ") && s.contains("(os error 28)"),
            "{s}"
        );
    }

    #[test]
    fn map_path_renames_every_variant() {
        let to = |_| PathBuf::from("t/x");
        for e in [
            io_err("a")(std::io::Error::from_raw_os_error(2)),
            file_err("a", "m"),
            tensor_err("a", "w", "m"),
            FormatError::OutputExists { path: "a".into() },
            FormatError::OutputIsFolder { path: "a".into() },
            FormatError::OutputIsInput {
                path: "a".into(),
                input: "i".into(),
            },
        ] {
            let s = e.map_path(to).to_string();
            assert!(s.starts_with("t/x"), "{s}");
        }
    }
}
