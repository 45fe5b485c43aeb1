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
        model.check_images(&set)?;
        let per = set.image_len();
        let mut rows: Vec<Vec<f32>> = Vec::with_capacity(set.len());
        for start in (0..set.len()).step_by(100) {
            let n = 100.min(set.len() - start);
            let x = model.images_tensor(&set.pixels[start * per..(start + n) * per], n);
            let l = model.logits(x)?;
            let k = l.dims()[1];
            let v = l.try_into_vec_as::<f32>().map_err(|e| format!("{e:?}"))?;
            rows.extend(v.chunks(k).map(|c| c.to_vec()));
        }
        let name = path.file_stem().unwrap_or_default().to_string_lossy();
        println!(
            "{}",
            serde_json::json!({"model": name, "labels": set.labels, "logits": rows})
        );
    }
    Ok(())
}
