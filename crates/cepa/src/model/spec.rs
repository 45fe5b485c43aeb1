//! How a model expects its input and what its output means: declared by flags or a sidecar
//! `MODEL.cepa.toml`, detected where possible, and always reported.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Memory layout of the model's image input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
    Nhwc,
}

impl std::str::FromStr for Layout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "nchw" => Ok(Layout::Nchw),
            "nhwc" => Ok(Layout::Nhwc),
            _ => Err(Error::Config(format!(
                "layout '{s}': expected nchw or nhwc"
            ))),
        }
    }
}

/// What the model's output holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Logits,
    Probs,
    /// Probabilities if the graph ends in Softmax (or its outputs are distributions), else logits.
    Auto,
}

impl std::str::FromStr for OutputKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "logits" => Ok(OutputKind::Logits),
            "probs" | "probabilities" => Ok(OutputKind::Probs),
            "auto" => Ok(OutputKind::Auto),
            _ => Err(Error::Config(format!(
                "output '{s}': expected logits, probs or auto"
            ))),
        }
    }
}

/// The model spec as declared: every field optional, flags over sidecar over defaults.
///
/// The model's input is `(pixel / 255 - mean) / std` per channel, laid out as `layout`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Input layout. Default: `nchw`.
    pub layout: Option<Layout>,
    /// Per-channel mean (one value, or one per channel), in [0,1] pixel units. Default: 0.
    pub mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, same units. Default: 1.
    pub std: Option<Vec<f32>>,
    /// Output kind. Default: `auto`.
    pub output: Option<OutputKind>,
    /// Number of classes; checked against the output when given.
    pub num_classes: Option<usize>,
}

impl ModelSpec {
    /// Fields of `over` win over those of `self`.
    pub fn overridden_by(&self, over: &ModelSpec) -> ModelSpec {
        ModelSpec {
            layout: over.layout.or(self.layout),
            mean: over.mean.clone().or_else(|| self.mean.clone()),
            std: over.std.clone().or_else(|| self.std.clone()),
            output: over.output.or(self.output),
            num_classes: over.num_classes.or(self.num_classes),
        }
    }

    /// Where the sidecar of a model lives: `NAME.cepa.toml` beside `NAME.onnx` (also accepted:
    /// `NAME.onnx.cepa.toml`). Returns the first that exists.
    pub fn sidecar_path(model: &Path) -> Option<PathBuf> {
        let stem = model.with_extension("cepa.toml");
        let full = PathBuf::from(format!("{}.cepa.toml", model.display()));
        [stem, full].into_iter().find(|p| p.is_file())
    }

    /// Read a sidecar file.
    pub fn from_file(path: &Path) -> Result<ModelSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let spec: ModelSpec = toml::from_str(&text)
            .map_err(|e| Error::format(path, format!("bad model spec: {e}")))?;
        Ok(spec)
    }

    /// Write a sidecar file.
    pub fn to_file(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| Error::Config(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| Error::io(path, e))
    }

    /// The sidecar beside `model` (if any), overridden by `flags`.
    pub fn resolve_for(model: &Path, flags: &ModelSpec) -> Result<(ModelSpec, Option<PathBuf>)> {
        match Self::sidecar_path(model) {
            Some(p) => Ok((Self::from_file(&p)?.overridden_by(flags), Some(p))),
            None => Ok((flags.clone(), None)),
        }
    }
}

/// Parse `"0.5"` or `"0.485,0.456,0.406"`.
pub fn parse_floats(s: &str) -> Result<Vec<f32>> {
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .map_err(|_| Error::Config(format!("'{v}' in '{s}' is not a number")))
        })
        .collect()
}

/// The spec after checking it against the model: concrete values and what was assumed.
#[derive(Clone, Debug, Serialize)]
pub struct ResolvedSpec {
    pub layout: Layout,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// One value per channel.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// `logits` or `probs` (never `auto`).
    pub output: OutputKind,
    pub num_classes: usize,
    /// The tensor whose values the detector treats as logits.
    pub logits_tensor: String,
    /// Where the sidecar came from, if any.
    pub sidecar: Option<PathBuf>,
    /// What was detected or assumed, in words.
    pub notes: Vec<String>,
}

impl ResolvedSpec {
    /// One line for logs: `nchw 1x28x28, (x/255 - 0.5) / 0.5, probs (trailing Softmax), 10 classes`.
    pub fn summary(&self) -> String {
        let fmt = |v: &[f32]| {
            let mut d: Vec<String> = v.iter().map(|x| format!("{x}")).collect();
            d.dedup();
            d.join(",")
        };
        format!(
            "{} {}x{}x{}, input (x/255 - {}) / {}, output {}, {} classes",
            match self.layout {
                Layout::Nchw => "nchw",
                Layout::Nhwc => "nhwc",
            },
            self.channels,
            self.height,
            self.width,
            fmt(&self.mean),
            fmt(&self.std),
            match self.output {
                OutputKind::Probs => "probs",
                _ => "logits",
            },
            self.num_classes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_sidecar() {
        let side = ModelSpec {
            layout: Some(Layout::Nhwc),
            mean: Some(vec![0.5]),
            std: Some(vec![0.5]),
            output: None,
            num_classes: Some(10),
        };
        let flags = ModelSpec {
            mean: Some(vec![0.1, 0.2, 0.3]),
            ..Default::default()
        };
        let r = side.overridden_by(&flags);
        assert_eq!(r.layout, Some(Layout::Nhwc));
        assert_eq!(r.mean, Some(vec![0.1, 0.2, 0.3]));
        assert_eq!(r.std, Some(vec![0.5]));
        assert_eq!(r.num_classes, Some(10));
    }

    #[test]
    fn sidecar_round_trips_and_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("cepa-spec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let model = dir.join("m.onnx");
        let spec = ModelSpec {
            mean: Some(vec![0.5]),
            output: Some(OutputKind::Probs),
            ..Default::default()
        };
        spec.to_file(&dir.join("m.cepa.toml")).unwrap();
        let (got, from) = ModelSpec::resolve_for(&model, &ModelSpec::default()).unwrap();
        assert_eq!(got, spec);
        assert_eq!(from, Some(dir.join("m.cepa.toml")));
        std::fs::write(dir.join("m.cepa.toml"), "meen = [0.5]\n").unwrap();
        let err = ModelSpec::resolve_for(&model, &ModelSpec::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.cepa.toml") && err.contains("meen"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn parses_float_lists() {
        assert_eq!(parse_floats("0.5").unwrap(), vec![0.5]);
        assert_eq!(parse_floats("0.1, 0.2,0.3").unwrap(), vec![0.1, 0.2, 0.3]);
        assert!(parse_floats("0.1,x").is_err());
    }
}
