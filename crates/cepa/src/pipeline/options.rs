//! What a front end may override in the settings file: the CLI's flags and the Python API's
//! keywords both land here, so that they mean the same thing.

use std::path::PathBuf;

use crate::detect::LayerChoice;
use crate::detect::invert::{InvertConfig, KindChoice};
use crate::error::Result;
use crate::settings::Settings;

/// The settings file and the clean images a detector samples (scan and invert).
#[derive(Clone, Debug, Default)]
pub struct SampleOptions {
    /// A settings file (TOML); `None` gives the defaults.
    pub config: Option<PathBuf>,
    /// Clean images per class that are optimised.
    pub per_class: Option<usize>,
    /// Held-out clean images per class.
    pub holdout_per_class: Option<usize>,
    /// Seed of the image sampling and the initial perturbations (every detector's).
    pub seed: Option<u64>,
}

/// Overrides of a scan's settings.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    pub sample: SampleOptions,
    /// Layers by ONNX tensor name; `None` (or `auto`) lets the scan choose.
    pub layers: Option<Vec<String>>,
    /// Optimisation steps per class.
    pub steps: Option<usize>,
    /// Adam learning rate in pixel units.
    pub lr: Option<f64>,
    /// CEPA's threshold, applied as given (no scaling with the number of classes).
    pub threshold: Option<f64>,
    /// Screening of a model with many classes (`[scan.screen]`): `Some(false)` turns it off.
    pub screen: Option<bool>,
}

impl ScanOptions {
    /// The layers of a comma-separated list, `auto` meaning none named.
    pub fn parse_layers(spec: &str) -> Option<Vec<String>> {
        if spec.trim() == "auto" {
            return None;
        }
        Some(spec.split(',').map(|s| s.trim().to_string()).collect())
    }

    /// The settings file with these overrides applied.
    pub fn settings(&self) -> Result<Settings> {
        let mut settings = Settings::load(self.sample.config.as_deref())?;
        let s = &self.sample;
        if let Some(n) = s.per_class {
            settings.scan.per_class = n;
        }
        if let Some(seed) = s.seed {
            settings.scan.seed = seed;
            settings.nc.seed = seed;
        }
        if let Some(h) = s.holdout_per_class {
            settings.scan.holdout_per_class = h;
        }
        let cfg = &mut settings.scan;
        if let Some(layers) = &self.layers {
            cfg.layer = LayerChoice::Named(layers.clone());
        }
        if let Some(steps) = self.steps {
            cfg.cepa.steps = steps;
        }
        if let Some(lr) = self.lr {
            cfg.cepa.lr = lr;
        }
        if let Some(t) = self.threshold {
            // A threshold the user sets is applied as given, whatever the number of classes.
            cfg.decision.threshold = t;
            cfg.decision.reference_classes = 0;
        }
        let default_min = crate::detect::ScreenConfig::default().min_classes;
        for screen in [&mut settings.scan.screen, &mut settings.nc.screen] {
            match self.screen {
                Some(false) => screen.min_classes = 0,
                Some(true) if screen.min_classes == 0 => screen.min_classes = default_min,
                _ => {}
            }
        }
        Ok(settings)
    }
}

/// Overrides of stage 2's settings (`invert`).
#[derive(Clone, Debug, Default)]
pub struct InvertOptions {
    pub sample: SampleOptions,
    /// Trigger form.
    pub kind: Option<KindChoice>,
    /// Optimisation steps per form.
    pub steps: Option<usize>,
    /// Fraction of the optimisation images the smallest trigger must send to the target.
    pub pi: Option<f64>,
    /// The probability the strengthened trigger must reach.
    pub confidence: Option<f64>,
}

/// How `invert` samples its images and what it optimises.
#[derive(Clone, Debug)]
pub struct InvertPlan {
    pub per_class: usize,
    pub holdout_per_class: usize,
    pub config: InvertConfig,
}

impl InvertOptions {
    /// Images drawn as a scan draws them (`[scan]` per_class, holdout_per_class, seed); the
    /// trigger's settings from `[invert]`, its seed the scan's.
    pub fn plan(&self) -> Result<InvertPlan> {
        let settings = Settings::load(self.sample.config.as_deref())?;
        let s = &self.sample;
        let seed = s.seed.unwrap_or(settings.scan.seed);
        let mut config = InvertConfig {
            seed,
            ..settings.invert
        };
        if let Some(k) = self.kind {
            config.kind = k;
        }
        if let Some(steps) = self.steps {
            config.steps = steps;
        }
        if let Some(p) = self.pi {
            config.pi = p;
        }
        if let Some(c) = self.confidence {
            config.confidence = c;
        }
        Ok(InvertPlan {
            per_class: s.per_class.unwrap_or(settings.scan.per_class),
            holdout_per_class: s
                .holdout_per_class
                .unwrap_or(settings.scan.holdout_per_class),
            config,
        })
    }
}
