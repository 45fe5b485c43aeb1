//! Backdoor detection with CEPA.
//!
//! - `cepa.rs`: stage 1, the K per-class problems (perturbations and consensus `mu`).
//! - `stats.rs`: MAD anomaly indices and the Gamma p-value.
//! - `verdict.rs`: statistics -> combined index -> verdict, target, sources.
//! - `invert.rs`: stage 2, one shared trigger for the detected target (additive or mask + pattern).
//! - `scan.rs`: a whole scan (sampling, layer choice, stage 1, decision, report).

pub mod cepa;
pub mod invert;
pub mod nc;
pub mod scan;
pub mod stats;
pub mod verdict;

pub use scan::{
    LayerChoice, ScanConfig, ScanReport, ScreenConfig, ScreenReport, ScreenRole, ScreenValue,
    ScreenedClass, scan, scan_with_progress,
};
