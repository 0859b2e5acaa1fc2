use qs_formats::FormatError;
use std::path::PathBuf;

/// Pipeline errors; each names the file and, where one is involved, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Options that do not go together, or do not apply to this input (a usage error).
    #[error("{0}")]
    Config(String),
    #[error("{file}: tensor '{tensor}': {msg}")]
    Tensor {
        file: PathBuf,
        tensor: String,
        msg: String,
    },
    /// A file that cannot be used as asked: metadata missing or unsupported (a GGUF to export
    /// or evaluate, a model folder without config.json or tokenizer), a text too short.
    #[error("{path}: {msg}")]
    Input { path: PathBuf, msg: String },
    /// The forward pass (GPTQ calibration, `eval`) could not run on a model: a missing or
    /// misshapen weight (named by the model error), config.json lacking a hyper-parameter.
    // (the inner errors are part of the message, not `source`s: the CLI prints the chain)
    #[error("{stage}: {path}: {err}")]
    Model {
        stage: &'static str,
        path: PathBuf,
        err: qs_model::ModelError,
    },
    /// GPTQ could not quantize a weight (its Hessian stays indefinite).
    #[error("{file}: tensor '{tensor}': GPTQ: {err}")]
    Gptq {
        file: PathBuf,
        tensor: String,
        err: qs_numeric::gptq::GptqError,
    },
    #[error("cannot start worker threads: {0}")]
    Threads(rayon::ThreadPoolBuildError),
    #[error("{path}: {msg}")]
    Output { path: PathBuf, msg: String },
    #[error("verify: {0}")]
    Verify(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The same error with every file path it names passed through `f` (a file inside a
    /// folder output: named where it will be, not inside the temporary folder).
    pub fn map_paths(self, f: impl Fn(PathBuf) -> PathBuf) -> Error {
        match self {
            Error::Format(e) => Error::Format(e.map_path(f)),
            Error::Tensor { file, tensor, msg } => Error::Tensor {
                file: f(file),
                tensor,
                msg,
            },
            Error::Input { path, msg } => Error::Input { path: f(path), msg },
            Error::Model { stage, path, err } => Error::Model {
                stage,
                path: f(path),
                err,
            },
            Error::Gptq { file, tensor, err } => Error::Gptq {
                file: f(file),
                tensor,
                err,
            },
            Error::Output { path, msg } => Error::Output { path: f(path), msg },
            e @ (Error::Config(_) | Error::Threads(_) | Error::Verify(_)) => e,
        }
    }
}
