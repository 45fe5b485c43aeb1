//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `cepa`, each variant naming the file, node or value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is not what it claims to be (truncated, wrong magic, ...).
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// The ONNX graph uses an op, attribute or data type the interpreter does not implement.
    #[error("unsupported ONNX op '{op}' at node '{node}' (opset {opset}){detail}")]
    UnsupportedOp {
        op: String,
        node: String,
        opset: i64,
        /// Empty, or ": " followed by what exactly is unsupported.
        detail: String,
    },
    /// The ONNX graph is well formed but cannot be evaluated as given.
    #[error("ONNX node '{node}' ({op}): {msg}")]
    Graph {
        node: String,
        op: String,
        msg: String,
    },
    /// A tensor name that is not in the graph.
    #[error("no tensor named '{name}' in the model{hint}")]
    UnknownTensor { name: String, hint: String },
    /// Images, labels or classes that do not fit the model or each other.
    #[error("{0}")]
    Mismatch(String),
    /// A configuration value out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The compute device asked for cannot be used (a build without its feature, no driver, no
    /// such GPU).
    #[error("device {device}: {msg}")]
    Device { device: String, msg: String },
    /// The computation was stopped by [`crate::runtime::interrupt`] (Ctrl-C in Python).
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
