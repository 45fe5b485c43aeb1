//! # cepa: backdoor detection for image classifiers
//!
//! `cepa` reads an image classifier exported to ONNX, runs it through its own differentiable
//! interpreter on burn tensors, and looks for a backdoor with the consensus embedded perturbation
//! method (CEPA, arXiv 2402.02034).
//!
//! Floors, each using only those below it:
//! - [`onnx`]: parse an ONNX file, keep the original tensor names, evaluate it with taps.
//! - [`data`]: read clean images (IDX, CIFAR binary, ImageFolder, `.npy`).
//! - [`model`]: a classifier with its input spec: forward, embed at a layer, gradients.
//! - [`attack`]: poisoning transforms (BadNets, ...) for building backdoored models.
//! - [`train`]: a small CNN trained with burn and exported to ONNX.
//! - [`detect`]: CEPA stage 1, the statistics, the verdict, a whole scan.

pub mod attack;
pub mod data;
pub mod detect;
pub mod error;
pub mod eval;
pub(crate) mod kernels;
pub mod model;
pub mod onnx;
pub mod pipeline;
pub mod runtime;
pub mod settings;
pub mod shard;
pub mod train;
pub mod zoo;

pub use error::{Error, Result};
