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

/// The random stream of class `class`'s problem under `seed`: the seed's ChaCha8 generator on
/// the class's own stream. A class's initial perturbation (or mask and pattern) is then the same
/// whichever other classes run beside it and in whatever order, so a screened scan optimises each
/// class of its pool exactly as the full scan does and the two differ by their null sample only.
pub(crate) fn class_rng(seed: u64, class: usize) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(class as u64);
    rng
}

pub use scan::{
    LayerChoice, ScanConfig, ScanReport, ScreenConfig, ScreenReport, ScreenRole, ScreenValue,
    ScreenedClass, scan, scan_with_progress,
};
