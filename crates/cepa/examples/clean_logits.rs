//! Exploration: the logits of a balanced set of clean test images, one JSON line per model
//! (`{"model", "labels", "logits"}`), for studying per-class statistics offline.
//! `cargo run --release -p cepa --example clean_logits -- DATA PER_CLASS SEED MODEL.onnx...`
//! Each model is read with its sidecar (`NAME.cepa.toml`) when it has one.

use std::path::Path;

use cepa::data::{Split, load};
use cepa::model::{Classifier, ModelSpec, cpu_device};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        return Err("usage: clean_logits DATA PER_CLASS SEED MODEL.onnx...".into());
    }
    let all = load(Path::new(&a[1]), Split::Test)?;
    let per_class: usize = a[2].parse()?;
    let seed: u64 = a[3].parse()?;
    let set = all.subset(&all.balanced_indices(per_class, seed)?);
    let device = cpu_device(false);
    for m in &a[4..] {
        let path = Path::new(m);
        let (spec, _) = ModelSpec::resolve_for(path, &ModelSpec::default())?;
        let model = Classifier::load(path, &spec, &device)?;
        let logits = model.logits_of(&set, 100)?;
        let rows: Vec<&[f32]> = logits.chunks(model.num_classes()).collect();
        let name = path.file_stem().unwrap_or_default().to_string_lossy();
        println!(
            "{}",
            serde_json::json!({"model": name, "labels": set.labels, "logits": rows})
        );
    }
    Ok(())
}
