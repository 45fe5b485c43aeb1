//! ONNX: parse a model file, keep its original tensor names, and evaluate it on burn tensors with
//! taps (read, perturb or replace any intermediate tensor; gradients through all of it).
//!
//! - [`Graph`]: the parsed, checked graph (`proto.rs` reads the file, `ops/` parses each op).
//! - [`Interpreter`]: a graph bound to a device; [`Run`] says what to feed and capture.
//! - [`FTensor`]: a float tensor whose rank is known at run time.

mod attrs;
mod graph;
pub mod host;
mod interp;
mod ops;
mod proto;
mod value;
pub mod write;

pub use graph::{Graph, TensorDecl};
pub use host::{HostData, HostTensor};
pub use interp::{Interpreter, Run, RunResult};
pub use value::{FTensor, MAX_RANK, Value, expand_to, reshape_dyn};
