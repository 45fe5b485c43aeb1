//! Exploration: run CEPA stage 1 on a model and print per-class statistics.
//! `cargo run -p cepa --example stage1 -- MODEL DATA LAYER [mean std per_class]`

use std::path::Path;
use std::time::Instant;

use cepa::data::{Split, load};
use cepa::detect::cepa::{CepaConfig, stage1};
use cepa::detect::stats::{Tail, anomaly_indices};
use cepa::model::{Classifier, ModelSpec, cpu_device};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let mean: f32 = a.get(4).map_or(Ok(0.0), |s| s.parse())?;
    let std: f32 = a.get(5).map_or(Ok(1.0), |s| s.parse())?;
    let per_class: usize = a.get(6).map_or(Ok(10), |s| s.parse())?;
    let spec = ModelSpec {
        mean: Some(vec![mean]),
        std: Some(vec![std]),
        ..Default::default()
    };
    let model = Classifier::load(Path::new(&a[1]), &spec, &cpu_device(true))?;
    let set = load(Path::new(&a[2]), Split::Test)?.balanced_sample(per_class, 0)?;
    let layer = if a[3] == "auto" {
        model
            .layers()
            .iter()
            .rev()
            .find(|l| l.candidate)
            .map(|l| l.name.clone())
            .unwrap_or_default()
    } else {
        a[3].clone()
    };
    let t = Instant::now();
    let res = stage1(&model, &set, &layer, &CepaConfig::default())?;
    println!("layer {layer}: {:.1} s", t.elapsed().as_secs_f64());
    let col = |f: &dyn Fn(&cepa::detect::cepa::TargetResult) -> f64| {
        res.iter().map(f).collect::<Vec<_>>()
    };
    let mu = anomaly_indices(&col(&|r| r.mu_norm), Tail::Large);
    let de = anomaly_indices(&col(&|r| r.delta_norm), Tail::Small);
    let di = anomaly_indices(&col(&|r| r.dispersion), Tail::Small);
    for (i, r) in res.iter().enumerate() {
        println!(
            "t={} feas={} steps={} rho={:.2} lam={:.3} |mu|={:.3} ({:+.2}) |delta|={:.3} ({:+.2}) disp={:.3} ({:+.2})",
            r.target,
            r.feasible,
            r.steps,
            r.rho,
            r.lambda,
            r.mu_norm,
            mu[i],
            r.delta_norm,
            de[i],
            r.dispersion,
            di[i]
        );
    }
    Ok(())
}
