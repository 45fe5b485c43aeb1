//! Channel stimulation [ours, after ABS, Liu et al., CCS 2019]: which class can one internal
//! channel, set to a value the clean images themselves reach, force on every other class's images?
//!
//! A backdoor is carried by a few internal features that, when the trigger fires them, send any
//! image to the target. ABS finds such features by stimulation: set one neuron to a range of
//! values and watch the output. Here the stimulated unit is a whole channel of the deepest
//! spatial feature map that cuts the graph (every position of the channel set to the same value,
//! as a trigger spread over the image would), at `levels` values up to that channel's largest
//! activation on the clean images, and the rest of the network runs unchanged. For each class
//! `t` the statistic is the best such stimulation's margin toward `t` on the images of the other
//! classes: `max over (channel, level) of the q-quantile over those images of
//! logit_t - max_{j != t} logit_j`. A one-sided MAD index over the classes then says how far the
//! most stimulable class stands out.
//!
//! Forward passes only (no optimisation): `channels x levels` runs of the network's tail on the
//! sampled images, batched.

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::detect::stats::{Tail, anomaly_indices};
use crate::error::{Error, Result};
use crate::model::Classifier;

/// Settings of the stimulation statistic (`[scan.stimulation]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StimulationConfig {
    /// Compute it in every scan. Default true (forward passes only: the channels under a
    /// second on the project's networks, the single values up to about 3 s where read,
    /// BENCHMARKS.md).
    pub enabled: bool,
    /// Values per channel, evenly spaced in `(0, reach x max]` of the channel's clean
    /// activations. Default 8.
    pub levels: usize,
    /// How far past the channel's largest clean activation the levels go, as a multiple of it.
    /// Default 1: only values the clean images themselves reach.
    pub reach: f64,
    /// The quantile over the other classes' images of the margin toward the class. Default 0.1:
    /// the stimulation must carry nine in ten images, not the average one.
    pub quantile: f64,
    /// At most this many images (evenly over the classes, from the optimisation's and the
    /// held-out clean images). Default 400.
    pub max_images: usize,
    /// The feature map to stimulate, by its ONNX tensor name, or `auto` (the default): the
    /// deepest one a weighted layer still reads ([`stimulation_layer`]).
    pub layer: String,
    /// Also set together, per class, the `group` channels that each move it most (1, the
    /// default: one channel at a time only).
    pub group: usize,
    /// Also stimulate each value of the map alone (one channel at one position), at levels up
    /// to this multiple of that value's clean maximum, where the network reads the map position
    /// by position (a Flatten into a fully connected layer; under global pooling one position
    /// is a fraction of its channel, which the channel's own levels already cover). A second
    /// reading beside the channels' (stimulation's voice is the larger of the two, each over its
    /// own threshold, [`crate::eval::VerdictConfig::stimulation_positions_threshold`]; where it
    /// is not read, the report's `positions_skipped` says why). Default 4 [ours,
    /// session 39: on the CIFAR-10 small CNN's BadNets models 1, 2 and 4 put the target first on
    /// 1, 2 and 2 of the two the channels miss]; 0: whole channels only.
    pub positions_reach: f64,
    /// The position reading is skipped for a map of more values than this (its cost grows with
    /// the square of the map's size). Default 4096.
    pub positions_max_values: usize,
    /// Score the single values through the fully connected layer's linearity where the map
    /// reaches it through affine ops only (Flatten, Gemm): that layer's output for one value
    /// set is the clean output plus the value's change times the layer's column for it, so only
    /// the rest of the network runs per setting. Checked on the clean images (the columns must
    /// reproduce the layer's output) before it is used. Default true; false runs every setting
    /// through the whole tail (the same readings, slower).
    pub positions_affine: bool,
}

impl Default for StimulationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            levels: 8,
            reach: 1.0,
            quantile: 0.1,
            max_images: 400,
            layer: "auto".into(),
            group: 1,
            positions_reach: 4.0,
            positions_max_values: 4096,
            positions_affine: true,
        }
    }
}

impl StimulationConfig {
    pub fn validate(&self) -> Result<()> {
        if self.enabled
            && (self.levels == 0
                || self.group == 0
                || self.max_images == 0
                || !(self.reach > 0.0 && self.reach.is_finite())
                || !(self.positions_reach >= 0.0 && self.positions_reach.is_finite())
                || !(0.0..=1.0).contains(&self.quantile))
        {
            return Err(Error::Config(
                "[scan.stimulation]: levels, group and max_images must be at least 1, reach positive, \
                 positions_reach 0 or positive and quantile in [0, 1]"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// What channel stimulation found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StimulationReport {
    /// The stimulated tensor (ONNX name) and its shape for one image.
    pub layer: String,
    pub shape: Vec<usize>,
    /// Which axis of `shape` was taken as the channels.
    pub channel_axis: usize,
    /// Units stimulated (those with a positive clean maximum): channels, and with
    /// `positions_reach` single values of the map.
    pub channels: usize,
    pub levels: usize,
    pub quantile: f64,
    pub images: usize,
    /// Per class: the best stimulated margin toward it (see the module's doc).
    pub margins: Vec<f64>,
    /// Per class: the one-sided MAD anomaly index of `margins`.
    pub indices: Vec<f64>,
    /// The class of the largest index, and that index.
    pub class: usize,
    pub index: f64,
    /// The channel and the level (a fraction of its clean maximum) of that class's margin; with
    /// `group` > 1, the first of the channels set together.
    pub channel: usize,
    /// How many channels were set together for that margin (1 unless `[scan.stimulation]
    /// group` allows more).
    #[serde(default = "one")]
    pub group: usize,
    pub level: f64,
    /// Share of the other classes' images that stimulation sends to that class.
    pub carried: f64,
    /// The second reading, single values of the map (`[scan.stimulation] positions_reach`), where
    /// the network reads the map position by position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<PositionStimulation>,
    /// Why single values were not read where `positions_reach` asked for them: the network
    /// pools the map before reading it, or the map has more values than `positions_max_values`
    /// (stimulation's voice is then the channels' reading alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions_skipped: Option<String>,
    pub seconds: f64,
}

/// Stimulation's second reading: each value of the map (one channel at one position) set alone,
/// at `levels` values up to `reach` times its clean maximum; per class the best margin, its MAD
/// index, and where the largest index's margin came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PositionStimulation {
    pub reach: f64,
    /// Values stimulated (those with a positive clean maximum).
    pub values: usize,
    pub margins: Vec<f64>,
    pub indices: Vec<f64>,
    pub class: usize,
    pub index: f64,
    /// The value that decided: its channel, and its index among one image's values.
    pub channel: usize,
    pub position: usize,
    pub level: f64,
    pub carried: f64,
    /// The fully connected layer whose columns scored the settings (`positions_affine`); absent
    /// where every setting ran the whole tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<String>,
}

impl StimulationReport {
    /// The map's plane: (height, width), the shape without its channel axis.
    pub fn plane(&self) -> (usize, usize) {
        if self.channel_axis == 0 {
            (self.shape[1], self.shape[2])
        } else {
            (self.shape[0], self.shape[1])
        }
    }

    /// Where the position reading's deciding value sits: its (row, column) in the map's plane.
    pub fn position_yx(&self) -> Option<(usize, usize)> {
        let j = self.positions.as_ref()?.position;
        let (h, w) = self.plane();
        let pixel = if self.channel_axis == 0 {
            j % (h * w)
        } else {
            j / self.shape[2]
        };
        Some((pixel / w, pixel % w))
    }
}

fn one() -> usize {
    1
}

/// Which axis of a per-image shape of rank 3 holds the channels: ONNX convolutions write
/// `[C, H, W]`, so the first, unless the first two are equal and the last is not (`[H, W, C]`,
/// a graph kept channels-last between its own transposes).
pub fn channel_axis(shape: &[usize]) -> usize {
    if shape.len() == 3 && shape[0] == shape[1] && shape[1] != shape[2] {
        2
    } else {
        0
    }
}

/// The tensor stimulation works at: the deepest image-dependent tensor of rank 3 per image with
/// more than one spatial position that cuts the graph and that a weighted layer (Conv, Gemm,
/// MatMul) still reads on the way to the output (not a map per class that is only pooled, as
/// an all-convolutional network's last convolution writes), and its channel axis; `None` for a
/// model without one (a fully connected network).
pub fn stimulation_layer(model: &Classifier) -> Option<(String, Vec<usize>, usize)> {
    model
        .layers()
        .iter()
        .rev()
        .find(|l| {
            l.cut
                && l.depth >= 1
                && l.shape.len() == 3
                && l.shape.iter().product::<usize>() > l.shape[channel_axis(&l.shape)]
        })
        .map(|l| (l.name.clone(), l.shape.clone(), channel_axis(&l.shape)))
}

/// Whether the network reads `layer` (of `d` values an image) position by position: the next
/// tensor after it that cuts the graph and has another shape holds as many values (a Flatten
/// into a fully connected layer), not fewer (global pooling).
fn read_by_position(model: &Classifier, layer: &str, d: usize) -> bool {
    let layers = model.layers();
    let Some(at) = layers.iter().position(|l| l.name == layer) else {
        return false;
    };
    let shape = &layers[at].shape;
    layers[at + 1..]
        .iter()
        .find(|l| l.cut && &l.shape != shape)
        .is_some_and(|l| l.shape.iter().product::<usize>() == d)
}

/// The `q`-quantile of `v` (linear between order statistics, as numpy's default); NaN if empty.
fn quantile(v: &mut [f32], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f32::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    v[lo] as f64 * (1.0 - frac) + v[hi] as f64 * frac
}

/// Up to `max` images of `sets`, evenly over the classes (the first of each class in order).
fn take_evenly(sets: &[&ImageSet], k: usize, max: usize) -> (Vec<f32>, Vec<usize>) {
    let per = (max / k.max(1)).max(1);
    let mut count = vec![0usize; k];
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for s in sets {
        for i in 0..s.len() {
            let c = s.labels[i];
            if c < k && count[c] < per {
                count[c] += 1;
                pixels.extend_from_slice(s.image(i));
                labels.push(c);
            }
        }
    }
    (pixels, labels)
}

/// The feature map `cfg.layer` names (`auto`: [`stimulation_layer`]), its per-image shape and
/// channel axis; `Ok(None)` when `auto` finds none; an error naming the tensor when the one
/// named is not a feature map that cuts the graph.
fn chosen_layer(
    model: &Classifier,
    cfg: &StimulationConfig,
) -> Result<Option<(String, Vec<usize>, usize)>> {
    if cfg.layer == "auto" {
        return Ok(stimulation_layer(model));
    }
    let Some(l) = model.layers().iter().find(|l| l.name == cfg.layer) else {
        return Err(Error::Config(format!(
            "[scan.stimulation] layer = {:?}: the model has no tensor of that name (`cepa \
             inspect MODEL` lists them)",
            cfg.layer
        )));
    };
    let spatial =
        l.shape.len() == 3 && l.shape.iter().product::<usize>() > l.shape[channel_axis(&l.shape)];
    if !(l.cut && spatial) {
        return Err(Error::Config(format!(
            "[scan.stimulation] layer = {:?}: stimulation needs a feature map of rank 3 per image \
             with more than one position that cuts the graph; this tensor has shape {:?}{}",
            cfg.layer,
            l.shape,
            if l.cut {
                ""
            } else {
                " and does not cut the graph"
            }
        )));
    }
    Ok(Some((
        l.name.clone(),
        l.shape.clone(),
        channel_axis(&l.shape),
    )))
}

/// Channel stimulation of `model` on clean images from `sets` (the optimisation's and the
/// held-out images). `Ok(Err(why))` when there is nothing to stimulate: no spatial layer (a
/// fully connected network), or no channel with a positive clean activation.
pub fn stimulate(
    model: &Classifier,
    sets: &[&ImageSet],
    cfg: &StimulationConfig,
) -> Result<std::result::Result<StimulationReport, String>> {
    cfg.validate()?;
    let start = Instant::now();
    let Some((layer, shape, axis)) = chosen_layer(model, cfg)? else {
        return Ok(Err(
            "no spatial feature map that cuts the graph (a fully connected network)".into(),
        ));
    };
    let k = model.num_classes();
    let (pixels, labels) = take_evenly(sets, k, cfg.max_images);
    let n = labels.len();
    if n == 0 {
        return Err(Error::Mismatch(
            "channel stimulation: no clean images to stimulate".into(),
        ));
    }
    let x = model.images_tensor(&pixels, n);
    let base = model
        .embed(x, &layer)?
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Mismatch(format!("cannot read {layer} back: {e:?}")))?;
    let d: usize = shape.iter().product();
    let channels = shape[axis];
    // Position of value j of one image in channel terms: NCHW has the channel outermost, NHWC
    // innermost.
    let inner: usize = shape[axis + 1..].iter().product();
    let channel_of = |j: usize| (j / inner) % channels;
    // The stimulated units, as the values of one image they cover, each with its reach: whole
    // channels (every position of one), then with `positions_reach` each value alone where the
    // network reads the map position by position.
    let positions_skipped = if cfg.positions_reach <= 0.0 {
        None
    } else if !read_by_position(model, &layer, d) {
        Some(format!(
            "single values not read: the network pools {layer} before a weighted layer reads it"
        ))
    } else if d > cfg.positions_max_values {
        Some(format!(
            "single values not read: {layer} has {d} values, over [scan.stimulation] \
             positions_max_values = {}",
            cfg.positions_max_values
        ))
    } else {
        None
    };
    let by_position = cfg.positions_reach > 0.0 && positions_skipped.is_none();
    let mut units: Vec<(Vec<usize>, f64)> =
        vec![(Vec::with_capacity(d / channels.max(1)), cfg.reach); channels];
    for j in 0..d {
        units[channel_of(j)].0.push(j);
    }
    if by_position {
        units.extend((0..d).map(|j| (vec![j], cfg.positions_reach)));
    }
    let mut umax = vec![f32::NEG_INFINITY; units.len()];
    for img in base.chunks(d) {
        for (u, (members, _)) in units.iter().enumerate() {
            for &j in members {
                umax[u] = umax[u].max(img[j]);
            }
        }
    }
    if umax.iter().any(|v| !v.is_finite()) {
        return Err(Error::Mismatch(format!(
            "channel stimulation: tensor {layer} holds a non-finite value on clean images"
        )));
    }
    // Every (unit, level) with a positive maximum.
    let live: Vec<usize> = (0..units.len()).filter(|&u| umax[u] > 0.0).collect();
    if live.is_empty() {
        return Ok(Err(format!(
            "no channel of {layer} is positive on the clean images (nothing to stimulate)"
        )));
    }
    let level_of = |u: usize, l: usize| (units[u].1 * l as f64 / cfg.levels as f64) as f32;
    // One setting: values written over units. Per setting and class: the quantile margin toward
    // the class over the other classes' images, and the share carried. Run in chunks of whole
    // settings.
    let device = model.device().clone();
    let per_chunk = ((1usize << 24) / (n * d).max(1)).clamp(1, 64);
    let read_back = |t: Tensor<2>| -> Result<Vec<f32>> {
        t.try_into_vec_as::<f32>()
            .map_err(|e| Error::Mismatch(format!("cannot read logits back: {e:?}")))
    };
    let run = |settings: &[Vec<(usize, f32)>]| -> Result<Vec<Vec<(f64, f64)>>> {
        let mut out = Vec::with_capacity(settings.len());
        for chunk in settings.chunks(per_chunk) {
            let mut rows = Vec::with_capacity(chunk.len() * n * d);
            for set in chunk {
                for img in base.chunks(d) {
                    let start = rows.len();
                    rows.extend_from_slice(img);
                    for &(u, v) in set {
                        for &j in &units[u].0 {
                            rows[start + j] = v;
                        }
                    }
                }
            }
            let value =
                Tensor::<2>::from_data(TensorData::new(rows, [chunk.len() * n, d]), &device);
            let logits = read_back(model.logits_from_layer(&layer, value, None)?)?;
            out.extend(score_settings(&logits, &labels, k, cfg.quantile));
        }
        Ok(out)
    };
    // Single values through the affine layer after the map, where there is one: its output
    // moves by the value's change times the layer's column for the value.
    let affine = if by_position && cfg.positions_affine {
        affine_layer(model, &layer, d, &base, n)?
    } else {
        None
    };
    let run_single = |settings: &[Vec<(usize, f32)>], a: &Affine| -> Result<Vec<Vec<(f64, f64)>>> {
        let h = a.size;
        let per_chunk = ((1usize << 24) / (n * h).max(1)).clamp(1, 4096);
        let mut out = Vec::with_capacity(settings.len());
        for chunk in settings.chunks(per_chunk) {
            let mut rows = Vec::with_capacity(chunk.len() * n * h);
            for set in chunk {
                let &[(u, v)] = set.as_slice() else {
                    unreachable!("one value a setting")
                };
                let j = units[u].0[0];
                let col = &a.columns[j * h..(j + 1) * h];
                for (img, at) in base.chunks(d).zip(a.clean.chunks(h)) {
                    let change = v - img[j];
                    rows.extend(at.iter().zip(col).map(|(&y, &w)| y + change * w));
                }
            }
            let value =
                Tensor::<2>::from_data(TensorData::new(rows, [chunk.len() * n, h]), &device);
            let logits = read_back(model.logits_from_layer(&a.layer, value, None)?)?;
            out.extend(score_settings(&logits, &labels, k, cfg.quantile));
        }
        Ok(out)
    };
    let settings: Vec<(usize, f32)> = live
        .iter()
        .flat_map(|&u| (1..=cfg.levels).map(move |l| (u, level_of(u, l))))
        .collect();
    let singles: Vec<Vec<(usize, f32)>> = settings
        .iter()
        .map(|&(u, level)| vec![(u, level * umax[u])])
        .collect();
    // Whole channels first, then single values (`live` is in unit order).
    let split = settings
        .iter()
        .position(|&(u, _)| u >= channels)
        .unwrap_or(settings.len());
    let mut single = run(&singles[..split])?;
    single.extend(match &affine {
        Some(a) => run_single(&singles[split..], a)?,
        None => run(&singles[split..])?,
    });
    // Two readings: whole channels (units below `channels`) and single values (the rest).
    let mut best = vec![f64::NEG_INFINITY; k];
    let mut best_at = vec![(0usize, 0.0f32, 0.0f64, 1usize); k];
    let mut best_pos = vec![f64::NEG_INFINITY; k];
    let mut best_pos_at = vec![(0usize, 0.0f32, 0.0f64); k];
    // Per class, each channel's best single margin toward it (over the levels).
    let mut by_unit = vec![vec![f64::NEG_INFINITY; channels]; k];
    for (s, &(u, level)) in settings.iter().enumerate() {
        for t in 0..k {
            let (m, carried) = single[s][t];
            if u >= channels {
                if m > best_pos[t] {
                    best_pos[t] = m;
                    best_pos_at[t] = (u - channels, level, carried);
                }
                continue;
            }
            if m > best[t] {
                best[t] = m;
                best_at[t] = (u, level, carried, 1);
            }
            by_unit[t][u] = by_unit[t][u].max(m);
        }
    }
    // Groups: the `group` channels that each move class t most, set together, at the same
    // levels; scored toward t only.
    let live_channels: Vec<usize> = live.iter().copied().filter(|&u| u < channels).collect();
    if cfg.group > 1 {
        let g = cfg.group.min(live_channels.len());
        let mut groups = Vec::with_capacity(k * cfg.levels);
        for (t, moves) in by_unit.iter().enumerate() {
            let mut order = live_channels.clone();
            order.sort_by(|&a, &b| moves[b].total_cmp(&moves[a]).then(a.cmp(&b)));
            order.truncate(g);
            for l in 1..=cfg.levels {
                let set: Vec<(usize, f32)> = order
                    .iter()
                    .map(|&u| (u, level_of(u, l) * umax[u]))
                    .collect();
                groups.push((t, order[0], level_of(order[0], l), set));
            }
        }
        let sets: Vec<Vec<(usize, f32)>> = groups.iter().map(|g| g.3.clone()).collect();
        let res = run(&sets)?;
        for (i, &(t, u, level, _)) in groups.iter().enumerate() {
            let (m, carried) = res[i][t];
            if m > best[t] {
                best[t] = m;
                best_at[t] = (u, level, carried, g);
            }
        }
    }
    let indices = anomaly_indices(&best, Tail::Large);
    let class = most(&indices);
    let (channel, level, carried, group) = best_at[class];
    let positions = by_position.then(|| {
        let indices = anomaly_indices(&best_pos, Tail::Large);
        let class = most(&indices);
        let (j, level, carried) = best_pos_at[class];
        PositionStimulation {
            reach: cfg.positions_reach,
            values: live.len() - live_channels.len(),
            index: indices[class],
            margins: best_pos,
            indices,
            class,
            channel: channel_of(j),
            position: j,
            level: level as f64,
            carried,
            through: affine.as_ref().map(|a| a.layer.clone()),
        }
    });
    Ok(Ok(StimulationReport {
        layer,
        shape,
        channel_axis: axis,
        channels: live_channels.len(),
        levels: cfg.levels,
        quantile: cfg.quantile,
        images: n,
        margins: best,
        index: indices[class],
        indices,
        class,
        channel,
        group,
        level: level as f64,
        carried,
        positions,
        positions_skipped,
        seconds: start.elapsed().as_secs_f64(),
    }))
}

/// Per setting (a block of `labels.len()` rows of `k` logits each), per class: the
/// `quantile` of the margin toward the class over the other classes' images, and the share of
/// them it carries.
fn score_settings(logits: &[f32], labels: &[usize], k: usize, q: f64) -> Vec<Vec<(f64, f64)>> {
    let n = labels.len();
    let mut margins: Vec<f32> = Vec::with_capacity(n);
    logits
        .chunks(n * k)
        .map(|block| {
            (0..k)
                .map(|t| {
                    margins.clear();
                    for (i, row) in block.chunks(k).enumerate() {
                        if labels[i] == t {
                            continue;
                        }
                        let other = row
                            .iter()
                            .enumerate()
                            .filter(|&(j, _)| j != t)
                            .map(|(_, &v)| v)
                            .fold(f32::NEG_INFINITY, f32::max);
                        margins.push(row[t] - other);
                    }
                    let carried = margins.iter().filter(|&&m| m > 0.0).count() as f64
                        / margins.len().max(1) as f64;
                    (quantile(&mut margins, q), carried)
                })
                .collect()
        })
        .collect()
}

/// Ops that carry a tensor affinely (with constant weights: past a map that cuts the graph,
/// the map is the only input that depends on the image).
const AFFINE_OPS: [&str; 11] = [
    "Flatten",
    "Reshape",
    "Identity",
    "Dropout",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
];

/// The first layer after the map that the map reaches through affine ops only and that has
/// another size (a Flatten into a Gemm: the Gemm's output), with its columns (the change of its
/// output per unit of each value of the map) and its value on the clean images.
struct Affine {
    layer: String,
    size: usize,
    /// `d x size`: row `j` is the layer's change per unit of value `j`.
    columns: Vec<f32>,
    /// `n x size`: the layer's output on the clean images.
    clean: Vec<f32>,
}

/// The layer through which single values of the map `layer` are scored without running it
/// once per setting: the first layer after the map that has another size and cuts the graph,
/// where every op on the way is affine (a Flatten into a Gemm: the Gemm's output); `None` where
/// there is none (the next such layer is the model's output, or an op on the way is not
/// affine). The scan still checks on the clean images that the layer's columns reproduce it.
pub fn single_value_layer(model: &Classifier, layer: &str) -> Option<String> {
    let d = model.layer(layer).ok()?.shape.iter().product();
    affine_next(model, layer, d).map(|(name, _)| name)
}

fn affine_next(model: &Classifier, layer: &str, d: usize) -> Option<(String, usize)> {
    let layers = model.layers();
    let at = layers.iter().position(|l| l.name == layer)?;
    for l in &layers[at + 1..] {
        if !AFFINE_OPS.contains(&l.op.as_str()) {
            return None;
        }
        let size: usize = l.shape.iter().product();
        if l.cut && size != d {
            return Some((l.name.clone(), size));
        }
    }
    None
}

/// [`Affine`] for `layer` (of `d` values an image, `base` on `n` clean images), or `None`
/// where an op on the way is not affine, the next layer is the model's output, or the columns
/// do not reproduce the layer's output on the clean images (then every setting runs the whole
/// tail).
fn affine_layer(
    model: &Classifier,
    layer: &str,
    d: usize,
    base: &[f32],
    n: usize,
) -> Result<Option<Affine>> {
    let Some((to, h)) = affine_next(model, layer, d) else {
        return Ok(None);
    };
    let device = model.device().clone();
    let carry = |rows: Vec<f32>, m: usize| -> Result<Vec<f32>> {
        let v = Tensor::<2>::from_data(TensorData::new(rows, [m, d]), &device);
        model
            .layer_from_layer(layer, v, &to)?
            .try_into_vec_as::<f32>()
            .map_err(|e| Error::Mismatch(format!("cannot read {to} back: {e:?}")))
    };
    let bias = carry(vec![0.0; d], 1)?;
    let mut columns = Vec::with_capacity(d * h);
    let per_chunk = ((1usize << 22) / d.max(1)).max(1);
    for start in (0..d).step_by(per_chunk) {
        let m = per_chunk.min(d - start);
        let mut rows = vec![0.0f32; m * d];
        for r in 0..m {
            rows[r * d + start + r] = 1.0;
        }
        let out = carry(rows, m)?;
        for row in out.chunks(h) {
            columns.extend(row.iter().zip(&bias).map(|(&y, &b)| y - b));
        }
    }
    let clean = carry(base.to_vec(), n)?;
    // The columns must give the layer's output back on (up to 32 of) the clean images.
    for (img, out) in base.chunks(d).zip(clean.chunks(h)).take(32) {
        let mut predicted = bias.clone();
        for (j, &x) in img.iter().enumerate().filter(|&(_, &x)| x != 0.0) {
            for (p, &w) in predicted.iter_mut().zip(&columns[j * h..(j + 1) * h]) {
                *p += x * w;
            }
        }
        let scale = 1.0 + out.iter().fold(0.0f32, |m, &y| m.max(y.abs()));
        if predicted
            .iter()
            .zip(out)
            .any(|(&p, &y)| (p - y).abs() > 1e-3 * scale)
        {
            return Ok(None);
        }
    }
    Ok(Some(Affine {
        layer: to,
        size: h,
        columns,
        clean,
    }))
}

/// The class of the largest index (the first of equal ones).
fn most(indices: &[f64]) -> usize {
    (0..indices.len())
        .max_by(|&a, &b| indices[a].total_cmp(&indices[b]).then(b.cmp(&a)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_like_numpy() {
        let mut v = vec![4.0f32, 1.0, 3.0, 2.0, 5.0];
        assert!((quantile(&mut v, 0.1) - 1.4).abs() < 1e-6);
        assert!((quantile(&mut v, 0.5) - 3.0).abs() < 1e-6);
        assert!((quantile(&mut v, 1.0) - 5.0).abs() < 1e-6);
        assert!(quantile(&mut [], 0.1).is_nan());
    }

    #[test]
    fn images_are_taken_evenly_over_the_classes() {
        let labels = vec![0, 0, 0, 1, 1, 2, 0, 2, 2, 2];
        let pixels: Vec<f32> = (0..labels.len()).map(|i| i as f32).collect();
        let set = ImageSet::synthetic(pixels, labels, [1, 1, 1], 3, "toy");
        let (p, l) = take_evenly(&[&set, &set], 3, 6);
        assert_eq!(l, vec![0, 0, 1, 1, 2, 2]);
        assert_eq!(p, vec![0.0, 1.0, 3.0, 4.0, 5.0, 7.0]);
    }

    #[test]
    fn the_channel_axis_is_the_first_unless_the_map_is_channels_last() {
        assert_eq!(channel_axis(&[32, 5, 5]), 0);
        assert_eq!(channel_axis(&[8, 8, 64]), 2);
        assert_eq!(channel_axis(&[16, 16, 16]), 0);
        assert_eq!(channel_axis(&[3, 28, 20]), 0);
    }

    #[test]
    fn a_bad_setting_is_refused() {
        let bad = StimulationConfig {
            levels: 0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let no_group = StimulationConfig {
            group: 0,
            ..Default::default()
        };
        assert!(
            no_group
                .validate()
                .unwrap_err()
                .to_string()
                .contains("group")
        );
        let off = StimulationConfig {
            levels: 0,
            enabled: false,
            ..Default::default()
        };
        assert!(off.validate().is_ok());
    }
}
