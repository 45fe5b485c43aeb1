//! `cepa inspect`: what the model is, how it will be read, its layers, and its accuracy.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Context;
use cepa::model::{Classifier, cpu_device};
use serde_json::json;

use crate::args::{Format, InspectArgs};
use crate::{ExitStatus, out};

pub fn run(a: InspectArgs) -> anyhow::Result<ExitStatus> {
    let spec = a.model.spec()?;
    let path = &a.model.model;
    let model = Classifier::load(path, &spec, &cpu_device(false)).context("cannot load model")?;
    let mut accuracy = None;
    let mut data_info = serde_json::Value::Null;
    if let Some(dir) = &a.data.data {
        let mut set = cepa::data::load(dir, a.data.split).context("cannot read images")?;
        if let Some(limit) = a.limit
            && limit < set.len()
        {
            set = set.subset(&(0..limit).collect::<Vec<_>>());
        }
        model
            .check_images(&set)
            .context("images do not fit the model")?;
        let t = Instant::now();
        let acc = model.accuracy(&set, 256)?;
        let secs = t.elapsed().as_secs_f64();
        tracing::info!(
            "accuracy {acc:.4} on {} images in {secs:.2} s ({:.0} images/s)",
            set.len(),
            set.len() as f64 / secs
        );
        accuracy = Some(acc);
        data_info = json!({
            "path": dir, "format": set.format, "split": a.data.split.to_string(), "images": set.len(),
            "seconds": secs,
        });
    }
    let g = model.graph();
    let s = model.spec();
    match a.format {
        Format::Json => {
            let report = json!({
                "model": path,
                "producer": g.producer_name,
                "opset": g.opset,
                "ops": g.op_types(),
                "input": g.input,
                "output": g.output,
                "spec": s,
                "num_classes": s.num_classes,
                "accuracy": accuracy,
                "data": data_info,
                "layers": model.layers(),
                "version": env!("CARGO_PKG_VERSION"),
            });
            out(&(serde_json::to_string_pretty(&report)? + "\n"));
        }
        Format::Text => {
            let mut t = String::new();
            let dims = |d: &[Option<usize>]| {
                d.iter()
                    .map(|x| x.map_or("?".to_string(), |v| v.to_string()))
                    .collect::<Vec<_>>()
                    .join("x")
            };
            writeln!(t, "model     {}", path.display())?;
            writeln!(t, "producer  {} (opset {})", g.producer_name, g.opset)?;
            writeln!(
                t,
                "input     {} {} {}",
                g.input.name,
                g.input.elem_type,
                dims(&g.input.dims)
            )?;
            writeln!(
                t,
                "output    {} {} {}",
                g.output.name,
                g.output.elem_type,
                dims(&g.output.dims)
            )?;
            writeln!(t, "spec      {}", s.summary())?;
            if let Some(p) = &s.sidecar {
                writeln!(t, "sidecar   {}", p.display())?;
            }
            for n in &s.notes {
                writeln!(t, "note      {n}")?;
            }
            writeln!(t, "ops       {}", g.op_types().join(" "))?;
            if let Some(acc) = accuracy {
                writeln!(
                    t,
                    "accuracy  {acc:.4} on {} images of {}",
                    data_info["images"],
                    data_info["path"].as_str().unwrap_or("")
                )?;
            }
            writeln!(
                t,
                "\nlayers (* = candidate embedding layer for the detector, cut = the rest depends on the image only through it)"
            )?;
            let w = model
                .layers()
                .iter()
                .map(|l| l.name.len())
                .max()
                .unwrap_or(4)
                .max(4);
            writeln!(
                t,
                "  {:w$}  {:18} {:20} {:>5} {:>4}",
                "name", "shape", "op", "depth", "cut"
            )?;
            for l in model.layers() {
                let shape = l
                    .shape
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("x");
                writeln!(
                    t,
                    "{} {:w$}  {:18} {:20} {:>5} {:>4}",
                    if l.candidate { "*" } else { " " },
                    l.name,
                    shape,
                    l.op,
                    l.depth,
                    if l.cut { "cut" } else { "" }
                )?;
            }
            out(&t);
        }
    }
    Ok(ExitStatus::Success)
}
