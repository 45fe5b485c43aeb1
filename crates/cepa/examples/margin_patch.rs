//! Exploration (session 28): per class, the largest-margin search of a scan and how much of its
//! input carries clean images of the other classes to the class, blended (`margin_blend`, in
//! the scan) or pasted by location (`margin_patch`, [`cepa::detect::universal::margin_patch`],
//! not in the scan), with their anomaly indices. One JSON line per model.
//! `cargo run --release -p cepa --example margin_patch -- DATA PER_CLASS SEED MODEL.onnx...`
//! The images are a balanced sample of the test split (`PER_CLASS` a class, drawn by `SEED`);
//! the search is the scan's default (`CepaConfig::default()` with that seed). Each model is
//! read with its sidecar (`NAME.cepa.toml`) when it has one, or with the spec file named after
//! it as `MODEL.onnx=SPEC.toml`.

use std::path::Path;

use cepa::data::{Split, load};
use cepa::detect::cepa::CepaConfig;
use cepa::detect::stats::anomaly_indices;
use cepa::detect::universal::{clean_margins, margin_blend, margin_patch, max_margin_inputs};
use cepa::detect::verdict::Statistic;
use cepa::model::{Classifier, ModelSpec, cpu_device};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        return Err("usage: margin_patch DATA PER_CLASS SEED MODEL.onnx...".into());
    }
    let all = load(Path::new(&a[1]), Split::Test)?;
    let per_class: usize = a[2].parse()?;
    let seed: u64 = a[3].parse()?;
    let set = all.subset(&all.balanced_indices(per_class, seed)?);
    let device = cpu_device(true);
    let cfg = CepaConfig {
        seed,
        ..CepaConfig::default()
    };
    for m in &a[4..] {
        let (path, spec) = match m.split_once('=') {
            Some((model, spec)) => (Path::new(model), ModelSpec::from_file(Path::new(spec))?),
            None => (
                Path::new(m.as_str()),
                ModelSpec::resolve_for(Path::new(m), &ModelSpec::default())?.0,
            ),
        };
        let model = Classifier::load(path, &spec, &device)?;
        let dims = [set.channels, set.height, set.width];
        let targets: Vec<usize> = (0..model.num_classes()).collect();
        let found = max_margin_inputs(&model, dims, &targets, &cfg)?;
        let natural = clean_margins(&model, &set, None)?;
        let excess: Vec<f64> = found
            .iter()
            .zip(&natural)
            .map(|((m, _), n)| m - n)
            .collect();
        let inputs: Vec<(usize, _)> = targets
            .iter()
            .zip(&found)
            .map(|(&t, (_, x))| (t, x.clone()))
            .collect();
        let blend = margin_blend(&model, &set, &inputs, cfg.margin_blend_samples)?;
        let patch = margin_patch(&model, &set, &inputs, cfg.margin_patch_samples)?;
        let index = |stat: Statistic, v: &[f64]| {
            let scaled: Vec<f64> = v.iter().map(|&x| stat.index_scale(x)).collect();
            anomaly_indices(&scaled, stat.tail())
        };
        let name = path.file_stem().unwrap_or_default().to_string_lossy();
        println!(
            "{}",
            serde_json::json!({
                "model": name,
                "margin_excess": excess,
                "margin_excess_index": index(Statistic::MarginExcess, &excess),
                "margin_blend": blend,
                "margin_blend_index": index(Statistic::MarginBlend, &blend),
                "margin_patch": patch,
                "margin_patch_index": index(Statistic::MarginPatch, &patch),
            })
        );
    }
    Ok(())
}
