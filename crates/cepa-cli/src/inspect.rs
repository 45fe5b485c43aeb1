//! `cepa inspect`: what the model is, how it will be read, its layers, and its accuracy.

use std::fmt::Write as _;

use anyhow::Context;
use cepa::model::{Classifier, DeviceChoice};
use cepa::pipeline::inspect_model;

use crate::args::{Format, InspectArgs};
use crate::{ExitStatus, out};

pub fn run(a: InspectArgs, device: DeviceChoice) -> anyhow::Result<ExitStatus> {
    let spec = a.model.spec()?;
    let path = &a.model.model;
    let model =
        Classifier::load(path, &spec, &device.device(false)?).context("cannot load model")?;
    let data = match &a.data.data {
        Some(dir) => Some(cepa::data::load(dir, a.data.split).context("cannot read images")?),
        None => None,
    };
    let inspection = inspect_model(&model, data.as_ref(), Some(a.data.split), a.limit)
        .context("images do not fit the model")?;
    let g = model.graph();
    let s = model.spec();
    match a.format {
        Format::Json => {
            out(&(serde_json::to_string_pretty(&inspection.to_json(&model, path))? + "\n"));
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
            if let Some(a) = &inspection.accuracy {
                writeln!(
                    t,
                    "accuracy  {:.4} on {} images of {}",
                    a.accuracy, a.images, a.source
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
