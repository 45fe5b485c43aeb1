//! `cepa._native`: the Python package's extension module. The Python side (`python/cepa`) checks
//! shapes and dtypes and turns numpy arrays into float32 CHW bytes; this side loads the model,
//! runs the same library calls as the `cepa` command (`cepa::pipeline`) with the GIL released,
//! and hands back the report as JSON (and a trigger as floats).
//!
//! Every error is a `cepa.CepaError` carrying the CLI's one-line message. Ctrl-C: the computation
//! runs on a worker thread while the calling thread watches for Python signals; on one it asks
//! the library to stop ([`cepa::runtime::interrupt`]), waits for the worker, and raises
//! `KeyboardInterrupt`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use cepa::data::{ImageSet, Split};
use cepa::detect::invert::{KindChoice, Truth};
use cepa::detect::reference::read_references;
use cepa::eval::Combination;
use cepa::model::{Classifier, DeviceChoice, ModelSpec};
use cepa::pipeline::{
    InvertOptions, SampleOptions, ScanOptions, ScanRequest, Verdict, inspect_model, invert_model,
    label_by_model, scan_model,
};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde::Deserialize;

create_exception!(
    _native,
    CepaError,
    PyException,
    "An error cepa reports: the message is the `cepa` command's one line (the file and what is wrong with it)."
);

/// The keyword arguments of `cepa.scan`, `cepa.inspect` and `cepa.invert`, as the Python side
/// sends them (JSON). Unknown keys are refused, so a name that drifts between the two sides fails.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Options {
    // How the model is read.
    layout: Option<String>,
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
    output: Option<String>,
    num_classes: Option<usize>,
    // Where the images come from: a path the CLI's readers accept, or an array (pixels as bytes).
    data: Option<PathBuf>,
    split: Option<String>,
    /// (N, C, H, W) of the float32 pixels.
    shape: Option<[usize; 4]>,
    labels: Option<Vec<usize>>,
    // Sampling and settings.
    /// `cpu`, `cuda` or `cuda:N`.
    device: Option<String>,
    config: Option<PathBuf>,
    per_class: Option<usize>,
    holdout_per_class: Option<usize>,
    seed: Option<u64>,
    // Scan.
    layer: Option<String>,
    steps: Option<usize>,
    lr: Option<f64>,
    threshold: Option<f64>,
    screen: Option<bool>,
    baseline: Option<String>,
    verdict: Option<String>,
    invert: bool,
    out: Option<PathBuf>,
    truth: Option<PathBuf>,
    /// Reports of scans of clean reference models (`cepa scan --reference`).
    reference: Vec<PathBuf>,
    // Invert.
    target: Option<usize>,
    kind: Option<String>,
    pi: Option<f64>,
    confidence: Option<f64>,
    // Inspect.
    limit: Option<usize>,
}

impl Options {
    fn parse(json: &str) -> anyhow::Result<Options> {
        serde_json::from_str(json).context("invalid options")
    }

    fn spec(&self) -> anyhow::Result<ModelSpec> {
        Ok(ModelSpec {
            layout: self.layout.as_deref().map(str::parse).transpose()?,
            mean: self.mean.clone(),
            std: self.std.clone(),
            output: self.output.as_deref().map(str::parse).transpose()?,
            num_classes: self.num_classes,
        })
    }

    fn split(&self) -> anyhow::Result<Split> {
        Ok(self.split.as_deref().unwrap_or("test").parse()?)
    }

    fn sample(&self) -> SampleOptions {
        SampleOptions {
            config: self.config.clone(),
            per_class: self.per_class,
            holdout_per_class: self.holdout_per_class,
            seed: self.seed,
        }
    }

    fn truth(&self) -> anyhow::Result<Option<Truth>> {
        Ok(self.truth.as_deref().map(Truth::from_file).transpose()?)
    }

    /// The images of `data` read before the model is (a model whose input size is dynamic
    /// takes theirs), and the size of the images given, from `data` or the array's shape.
    fn preload(
        &self,
        pixels: &Option<Vec<f32>>,
    ) -> anyhow::Result<(Option<ImageSet>, Option<[usize; 3]>)> {
        match (&self.data, pixels) {
            (Some(path), None) => {
                let set = cepa::data::load(path, self.split()?).context("cannot read images")?;
                let size = set.size();
                Ok((Some(set), Some(size)))
            }
            _ => Ok((None, self.shape.map(|[_, c, h, w]| [c, h, w]))),
        }
    }

    /// The images: those [`Options::preload`] read from `data`, or the array's pixels
    /// (labelled by the model when no labels came with them).
    fn images(
        &self,
        preloaded: Option<ImageSet>,
        pixels: Option<Vec<f32>>,
        model: &Classifier,
    ) -> anyhow::Result<ImageSet> {
        match (preloaded, pixels, self.shape) {
            (Some(set), _, _) => Ok(set),
            (None, Some(pixels), Some([n, c, h, w])) if self.data.is_none() => {
                let given = self.labels.is_some();
                let labels = self.labels.clone().unwrap_or_else(|| vec![0; n]);
                anyhow::ensure!(
                    labels.len() == n,
                    "images: {n} images but {} labels",
                    labels.len()
                );
                let classes = labels.iter().max().map_or(0, |m| m + 1);
                let mut set = ImageSet::synthetic(
                    pixels,
                    labels,
                    [c, h, w],
                    classes.max(1),
                    "images (array)",
                );
                set.format = "array".into();
                if given {
                    model.check_images(&set)?;
                } else {
                    label_by_model(model, &mut set)?;
                }
                Ok(set)
            }
            _ => anyhow::bail!("give images as an array or a path"),
        }
    }
}

/// Pixels from float32 little-endian bytes, `n` x `c` x `h` x `w` of them.
fn pixels_of(
    bytes: Option<&Bound<'_, PyBytes>>,
    shape: Option<[usize; 4]>,
) -> PyResult<Option<Vec<f32>>> {
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let raw = bytes.as_bytes();
    let expected = shape.map_or(0, |s| s.iter().product::<usize>()) * 4;
    if raw.len() != expected {
        return Err(CepaError::new_err(format!(
            "images: {} bytes of pixels for shape {:?} (float32 needs {expected})",
            raw.len(),
            shape
        )));
    }
    Ok(Some(
        raw.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    ))
}

fn load_model(
    path: &Path,
    opts: &Options,
    autodiff: bool,
    image: Option<[usize; 3]>,
) -> anyhow::Result<Classifier> {
    let device = match &opts.device {
        Some(d) => d.parse::<DeviceChoice>()?,
        None => DeviceChoice::Cpu,
    };
    Classifier::load_for_images(path, &opts.spec()?, &device.device(autodiff)?, image)
        .context("cannot load model")
}

/// Run `f` on a worker thread with the GIL released, checking for Python signals (Ctrl-C) every
/// 50 ms; errors become `CepaError` with the CLI's one-line message.
fn compute<T: Send>(py: Python<'_>, f: impl FnOnce() -> anyhow::Result<T> + Send) -> PyResult<T> {
    cepa::runtime::clear_interrupt();
    let done = AtomicBool::new(false);
    let outcome = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            done.store(true, Ordering::SeqCst);
            r
        });
        let mut signal = None;
        while !done.load(Ordering::SeqCst) {
            py.detach(|| {
                for _ in 0..10 {
                    if done.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
            if signal.is_none()
                && let Err(e) = py.check_signals()
            {
                // Stop the optimisation at its next step, then let the worker end.
                cepa::runtime::interrupt();
                signal = Some(e);
            }
        }
        let joined = py.detach(|| worker.join());
        (joined, signal)
    });
    cepa::runtime::clear_interrupt();
    match outcome {
        (_, Some(signal)) => Err(signal),
        (Ok(Ok(Ok(v))), None) => Ok(v),
        (Ok(Ok(Err(e))), None) => Err(CepaError::new_err(cepa_cli::error_line(&e))),
        _ => Err(CepaError::new_err(
            "internal error: the computation panicked (please report it)",
        )),
    }
}

/// Run the `cepa` command line (`argv[0]` is the program name) and return its exit code.
#[pyfunction]
fn run_cli(py: Python<'_>, argv: Vec<OsString>) -> u8 {
    py.detach(|| cepa_cli::main_with(argv))
}

/// A trigger estimate as (floats, mask floats or None, [C, H, W]).
type Trigger = (Vec<f32>, Option<Vec<f32>>, [usize; 3]);

/// `cepa.scan`: the report as JSON, and the trigger when stage 2 ran.
#[pyfunction]
#[pyo3(signature = (model, options, pixels=None))]
fn scan(
    py: Python<'_>,
    model: PathBuf,
    options: &str,
    pixels: Option<&Bound<'_, PyBytes>>,
) -> PyResult<(String, Option<Trigger>)> {
    let opts = Options::parse(options).map_err(|e| CepaError::new_err(cepa_cli::error_line(&e)))?;
    let pixels = pixels_of(pixels, opts.shape)?;
    compute(py, move || {
        let verdict = match opts.verdict.as_deref().unwrap_or("agree") {
            "cepa" => Verdict::Cepa,
            "either" => Verdict::Combined(Combination::Either),
            "agree" => Verdict::Combined(Combination::Agree),
            v => anyhow::bail!("verdict must be 'agree', 'either' or 'cepa', not '{v}'"),
        };
        let baseline = match opts.baseline.as_deref() {
            None => false,
            Some("nc") => true,
            Some(b) => anyhow::bail!("baseline must be 'nc' or None, not '{b}'"),
        };
        let (preloaded, size) = opts.preload(&pixels)?;
        let net = load_model(&model, &opts, true, size)?;
        let data = opts.images(preloaded, pixels, &net)?;
        let truth = opts.truth()?;
        let references = read_references(&opts.reference, net.num_classes())?;
        let settings = ScanOptions {
            sample: opts.sample(),
            layers: opts.layer.as_deref().and_then(ScanOptions::parse_layers),
            steps: opts.steps,
            lr: opts.lr,
            threshold: opts.threshold,
            screen: opts.screen,
        }
        .settings()?;
        let request = ScanRequest {
            settings: &settings,
            verdict,
            baseline,
            invert: opts.invert || opts.out.is_some(),
            truth: truth.as_ref(),
        };
        let run = scan_model(&net, &data, &request, &|_| {}).context("scan failed")?;
        let against = cepa_cli::scan_against_references(&run, &references, &opts.reference)?;
        if let Some(dir) = &opts.out {
            cepa_cli::write_scan_report(dir, &run, against.as_ref(), &net, &model)?;
        }
        let trigger = run
            .inversion
            .as_ref()
            .map(|(inv, _)| (inv.best.trigger.clone(), inv.best.mask.clone(), inv.shape));
        let json = cepa_cli::scan_report_json(&run, against.as_ref())?;
        Ok((serde_json::to_string(&json)?, trigger))
    })
}

/// `cepa.invert`: the report as JSON and the trigger.
#[pyfunction]
#[pyo3(signature = (model, options, pixels=None))]
fn invert(
    py: Python<'_>,
    model: PathBuf,
    options: &str,
    pixels: Option<&Bound<'_, PyBytes>>,
) -> PyResult<(String, Trigger)> {
    let opts = Options::parse(options).map_err(|e| CepaError::new_err(cepa_cli::error_line(&e)))?;
    let pixels = pixels_of(pixels, opts.shape)?;
    compute(py, move || {
        let target = opts.target.context("invert needs a target class")?;
        let kind = match opts.kind.as_deref() {
            None => None,
            Some("auto") => Some(KindChoice::Auto),
            Some("additive") => Some(KindChoice::Additive),
            Some("mask-pattern" | "mask_pattern") => Some(KindChoice::MaskPattern),
            Some(k) => {
                anyhow::bail!("kind must be 'auto', 'additive' or 'mask-pattern', not '{k}'")
            }
        };
        let (preloaded, size) = opts.preload(&pixels)?;
        let net = load_model(&model, &opts, true, size)?;
        let data = opts.images(preloaded, pixels, &net)?;
        let truth = opts.truth()?;
        let invert_opts = InvertOptions {
            sample: opts.sample(),
            kind,
            steps: opts.steps,
            pi: opts.pi,
            confidence: opts.confidence,
        };
        let run = invert_model(&net, &data, target, &invert_opts, truth.as_ref())
            .with_context(|| format!("inversion of class {target} failed"))?;
        if let Some(dir) = &opts.out {
            cepa_cli::write_invert_report(dir, &run, &net, &model)?;
        }
        let inv = &run.inversion;
        let trigger = (inv.best.trigger.clone(), inv.best.mask.clone(), inv.shape);
        Ok((serde_json::to_string(&run.to_json(&net, &model))?, trigger))
    })
}

/// `cepa.inspect`: the report as JSON.
#[pyfunction]
#[pyo3(signature = (model, options, pixels=None))]
fn inspect(
    py: Python<'_>,
    model: PathBuf,
    options: &str,
    pixels: Option<&Bound<'_, PyBytes>>,
) -> PyResult<String> {
    let opts = Options::parse(options).map_err(|e| CepaError::new_err(cepa_cli::error_line(&e)))?;
    let pixels = pixels_of(pixels, opts.shape)?;
    compute(py, move || {
        let (preloaded, size) = opts.preload(&pixels)?;
        let net = load_model(&model, &opts, false, size)?;
        // Accuracy needs true labels: an array without them is not measured.
        let data = match (&preloaded, &pixels) {
            (None, None) => None,
            (None, Some(_)) if opts.labels.is_none() => None,
            _ => Some(opts.images(preloaded, pixels.clone(), &net)?),
        };
        let split = opts.data.as_ref().map(|_| opts.split()).transpose()?;
        let inspection = inspect_model(&net, data.as_ref(), split, opts.limit)
            .context("images do not fit the model")?;
        Ok(serde_json::to_string(&inspection.to_json(&net, &model))?)
    })
}

/// Pixels (float32 little-endian bytes), labels, [N, C, H, W], the number of classes.
type Loaded<'py> = (Bound<'py, PyBytes>, Vec<usize>, [usize; 4], usize);

/// `cepa.load_images`: a dataset the CLI reads, as (float32 little-endian CHW pixels as bytes,
/// labels, [N, C, H, W], class count).
#[pyfunction]
#[pyo3(signature = (path, split="test"))]
fn load_images<'py>(py: Python<'py>, path: PathBuf, split: &str) -> PyResult<Loaded<'py>> {
    let split = split.to_string();
    let set = compute(py, move || {
        cepa::data::load(&path, split.parse()?).context("cannot read images")
    })?;
    let shape = [set.len(), set.channels, set.height, set.width];
    let bytes: Vec<u8> = set.pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok((PyBytes::new(py, &bytes), set.labels, shape, set.num_classes))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The scan's speed depends on malloc keeping freed tensor memory (one arena, no unmapping;
    // 1.5x; BENCHMARKS.md, "The allocator and the scan's threads"). That tunes the whole
    // process's malloc, so a user can keep glibc's defaults with CEPA_KEEP_MALLOC=1.
    if std::env::var_os("CEPA_KEEP_MALLOC").is_none_or(|v| v.is_empty() || v == "0") {
        cepa::runtime::tune_allocator();
    }
    m.add("CepaError", m.py().get_type::<CepaError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(run_cli, m)?)?;
    m.add_function(wrap_pyfunction!(scan, m)?)?;
    m.add_function(wrap_pyfunction!(invert, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(load_images, m)?)?;
    Ok(())
}
