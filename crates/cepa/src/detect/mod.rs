//! Backdoor detection. `stats.rs`: the per-class statistics turned into anomaly indices and a
//! p-value. (Stage 1 of CEPA, `cepa.rs`, and the Neural Cleanse baseline arrive with their issues.)

pub mod cepa;
pub mod stats;
