//! `cepa inspect`: what the model is, how it will be read, its layers, and its accuracy.

use std::fmt::Write as _;

use anyhow::Context;
use cepa::model::{Classifier, DeviceChoice, cpu_device};
use cepa::pipeline::{DeviceCheck, compare_devices, inspect_model};

use crate::args::{Format, InspectArgs};
use crate::{ExitStatus, out};

pub fn run(a: InspectArgs, device: DeviceChoice) -> anyhow::Result<ExitStatus> {
    let spec = a.model.spec()?;
    let path = &a.model.model;
    let data = match &a.data.data {
        Some(dir) => Some(cepa::data::load(dir, a.data.split).context("cannot read images")?),
        None => None,
    };
    let size = data.as_ref().map(cepa::data::ImageSet::size);
    let model = Classifier::load_for_images(path, &spec, &device.device(false)?, size)
        .context("cannot load model")?;
    let inspection = inspect_model(&model, data.as_ref(), Some(a.data.split), a.limit)
        .context("images do not fit the model")?;
    let check = match (a.compare_cpu, &data) {
        (false, _) => None,
        (true, None) => anyhow::bail!("--compare-cpu needs --data: the images to compare on"),
        (true, Some(set)) => {
            let here = Classifier::load_for_images(path, &spec, &device.device(true)?, size)
                .context("cannot load model")?;
            let cpu = Classifier::load_for_images(path, &spec, &cpu_device(true), size)
                .context("cannot load model on the CPU")?;
            Some(compare_devices(&here, &cpu, set, 16).context("cannot compare devices")?)
        }
    };
    let g = model.graph();
    let s = model.spec();
    match a.format {
        Format::Json => {
            let mut report = inspection.to_json(&model, path);
            if let Some(c) = &check {
                report["device_check"] = serde_json::to_value(c)?;
            }
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
            if let Some(a) = &inspection.accuracy {
                writeln!(
                    t,
                    "accuracy  {:.4} on {} images of {}",
                    a.accuracy, a.images, a.source
                )?;
            }
            if let Some(c) = &check {
                writeln!(t, "{}", check_line(c))?;
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
    match check {
        Some(c) if !c.pass => anyhow::bail!("{}", check_line(&c)),
        _ => Ok(ExitStatus::Success),
    }
}

/// One line on a device check: the devices, the two relative gaps, and the outcome.
fn check_line(c: &DeviceCheck) -> String {
    format!(
        "device    {} against {}: logits {:.1e}, input gradient {:.1e} of the largest CPU value \
         ({} images, tolerance {:.0e}): {}",
        c.device,
        c.reference,
        c.logits_rel,
        c.grad_rel,
        c.images,
        c.tolerance,
        if c.pass { "same numbers" } else { "DIFFERENT" }
    )
}
