//! Exploration: run CEPA stage 1 on a model and print per-class statistics and anomaly indices.
//! `cargo run -p cepa --example stage1 -- MODEL DATA [mean std per_class steps lr seed nlayers]`

use std::path::Path;
use std::time::Instant;

use cepa::data::{Split, load};
use cepa::detect::cepa::{CepaConfig, TargetResult, stage1};
use cepa::detect::stats::{Tail, anomaly_indices};
use cepa::model::{Classifier, ModelSpec, cpu_device};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let mean: f32 = arg(3, "0").parse()?;
    let std: f32 = arg(4, "1").parse()?;
    let per_class: usize = arg(5, "10").parse()?;
    let cfg = CepaConfig {
        steps: arg(6, "300").parse()?,
        lr: arg(7, "0.01").parse()?,
        seed: arg(8, "0").parse()?,
        ..Default::default()
    };
    let nlayers: usize = arg(9, "2").parse()?;
    let spec = ModelSpec {
        mean: Some(vec![mean]),
        std: Some(vec![std]),
        ..Default::default()
    };
    let model = Classifier::load(Path::new(&a[1]), &spec, &cpu_device(true))?;
    let all = load(Path::new(&a[2]), Split::Test)?;
    let idx = all.balanced_indices(2 * per_class, cfg.seed)?;
    let (mut fit, mut hold) = (Vec::new(), Vec::new());
    for (i, &j) in idx.iter().enumerate() {
        if i % (2 * per_class) < per_class {
            fit.push(j)
        } else {
            hold.push(j)
        }
    }
    let (set, holdout) = (all.subset(&fit), all.subset(&hold));
    let layers: Vec<String> = model
        .layers()
        .iter()
        .rev()
        .filter(|l| l.candidate)
        .take(nlayers)
        .map(|l| l.name.clone())
        .collect();
    let t = Instant::now();
    let res = stage1(&model, &set, Some(&holdout), &layers, &cfg)?;
    println!("{:.1} s, layers {layers:?}", t.elapsed().as_secs_f64());
    let col = |f: &dyn Fn(&TargetResult) -> f64| res.iter().map(f).collect::<Vec<_>>();
    let de = anomaly_indices(&col(&|r| r.delta_norm), Tail::Small);
    let show = |v: &[f64]| {
        let (i, m) = v
            .iter()
            .enumerate()
            .fold((0, f64::MIN), |a, (i, &x)| if x > a.1 { (i, x) } else { a });
        format!("{i} ({m:.2})")
    };
    println!(
        "delta: {}  steps {:?} feasible {:?}",
        show(&de),
        col(&|r| r.steps as f64),
        res.iter().map(|r| r.feasible as u8).collect::<Vec<_>>()
    );
    for (l, name) in layers.iter().enumerate() {
        let mu = anomaly_indices(&col(&|r| r.layers[l].mu_norm), Tail::Large);
        let di = anomaly_indices(&col(&|r| r.layers[l].dispersion), Tail::Small);
        let tr = anomaly_indices(&col(&|r| r.layers[l].transfer.unwrap_or(0.0)), Tail::Large);
        println!(
            "{name}: mu {}  disp {}  transfer {}",
            show(&mu),
            show(&di),
            show(&tr)
        );
    }
    Ok(())
}
