//! From stage-1 results to a verdict: per-class statistics become one-sided MAD anomaly indices,
//! the chosen ones are averaged into one index per class, and the most anomalous class decides.

use serde::{Deserialize, Serialize};

use crate::detect::cepa::TargetResult;
use crate::detect::stats::{
    Tail, anomaly_indices, anomaly_indices_weighted, max_p_value, median, weighted_mad,
    weighted_median,
};
use crate::error::{Error, Result};

/// A per-class statistic of stage 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// `||mu_t||_2`, large is suspicious [paper].
    MuNorm,
    /// Mean `||delta_n||_2`, small is suspicious: the backdoor makes misclassification cheap.
    DeltaNorm,
    /// Mean `||Delta_n - mu||^2 / ||mu||^2`, small is suspicious: the perturbations agree.
    Dispersion,
    /// Share of held-out images that `mu_t` alone sends to `t`, large is suspicious.
    Transfer,
    /// `sqrt(mean_n ||Delta_n||^2)`, how far the embedding moves; anomalous either way: a
    /// backdoor target reached with an unusually small move (a shortcut) or an unusually large
    /// one (the paper's overfitting, large activations).
    EmbedNorm,
    /// A consensus over (source, target) pairs [ours]: for each source class, how much more
    /// cheaply its images reach this target than the other targets (a small-tail MAD index of
    /// the per-source median `||delta_n||_2` over the targets), the median over the sources.
    /// Large is suspicious: an all-to-one backdoor makes its target the cheapest for every
    /// source, where a class that is merely easy to reach is cheap from the classes that
    /// resemble it. Measured on the input perturbations, so not per layer.
    PairDelta,
    /// `||mean_n delta_n|| / mean_n ||delta_n||`, large is suspicious [ours]: the per-sample
    /// perturbations share a pattern in input space (a trigger) rather than each finding its
    /// own adversarial route.
    Coherence,
    /// Share of held-out images that the mean input perturbation alone sends to `t`, large is
    /// suspicious [ours]: the input-space counterpart of `transfer`.
    InputTransfer,
    /// The median embedded shift along `mu_t` that sends a held-out image to `t`, small is
    /// suspicious [ours]: how little of the consensus carries the images over.
    Reach,
    /// The input-space counterpart of `reach`, along the mean input perturbation, small is
    /// suspicious [ours].
    InputReach,
    /// `input_reach` from the hardest source class: the largest of its per-source medians,
    /// small is suspicious [ours]. A trigger carries every class's images to its target cheaply;
    /// a naturally cheap ("sink") class is cheap from the classes that resemble it only.
    InputReachMax,
    /// `||v_t||_2` of the one additive pattern that carries a share `pi` of the clean images of
    /// the other classes to `t`, small is suspicious [ours]: a trigger added to the whole image
    /// is such a pattern, a natural class has none that is small.
    UniversalNorm,
    /// The largest logit margin of `t` over any input, large is suspicious [ours, after MM-BD].
    MaxMargin,
    /// `max_margin` less the largest margin of `t` that a clean image of the scan has, large is
    /// suspicious [ours]: how far beyond its most confident natural example an input drives
    /// the class. A class that natural images already reach with a large margin is not
    /// anomalous for reaching a large one.
    MarginExcess,
    /// The median margin of `t` that clean images of the other classes reach within a small
    /// input change, large is suspicious [ours]: a trigger is such a change and drives its
    /// target far past the others; a class that is merely easy to reach is reached with an
    /// ordinary margin.
    LocalMargin,
    /// The median smallest blend weight of `t`'s largest-margin input that carries a clean image
    /// of another class to `t`, small is suspicious [ours]: a trigger in that input works at a
    /// fraction of its strength on any image.
    MarginBlend,
    /// The median smallest share of the locations of `t`'s largest-margin input (the most
    /// salient first) that, pasted into a clean image of another class, carries it to `t`,
    /// small is suspicious [ours]: a patch trigger sits in a few of them.
    MarginPatch,
    /// How far the consensuses of the (source class, target) pairs agree,
    /// `||mean_s mu_st||^2 / mean_s ||mu_st||^2`, large is suspicious [ours]: a trigger moves
    /// every source class's embeddings the same way, where a natural class is reached by each
    /// source along its own route.
    PairAgreement,
    /// The cosine between `mu_t` and the direction from the other classes' held-out clean
    /// embeddings to class `t`'s, small is suspicious [ours, after CSO's orthogonalisation]:
    /// a naturally easy class is reached by becoming more like it, a trigger by a feature the
    /// class's clean images lack. Reported only.
    ClassAlignment,
}

impl Statistic {
    pub fn tail(self) -> Tail {
        match self {
            Statistic::MuNorm
            | Statistic::Transfer
            | Statistic::PairDelta
            | Statistic::Coherence
            | Statistic::InputTransfer
            | Statistic::MaxMargin
            | Statistic::MarginExcess
            | Statistic::LocalMargin
            | Statistic::PairAgreement => Tail::Large,
            Statistic::DeltaNorm
            | Statistic::Dispersion
            | Statistic::Reach
            | Statistic::InputReach
            | Statistic::InputReachMax
            | Statistic::UniversalNorm
            | Statistic::MarginBlend
            | Statistic::MarginPatch
            | Statistic::ClassAlignment => Tail::Small,
            Statistic::EmbedNorm => Tail::Both,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Statistic::MuNorm => "mu_norm",
            Statistic::DeltaNorm => "delta_norm",
            Statistic::Dispersion => "dispersion",
            Statistic::Transfer => "transfer",
            Statistic::EmbedNorm => "embed_norm",
            Statistic::PairDelta => "pair_delta",
            Statistic::Coherence => "coherence",
            Statistic::InputTransfer => "input_transfer",
            Statistic::Reach => "reach",
            Statistic::InputReach => "input_reach",
            Statistic::InputReachMax => "input_reach_max",
            Statistic::UniversalNorm => "universal_norm",
            Statistic::MaxMargin => "max_margin",
            Statistic::MarginExcess => "margin_excess",
            Statistic::LocalMargin => "local_margin",
            Statistic::MarginBlend => "margin_blend",
            Statistic::MarginPatch => "margin_patch",
            Statistic::PairAgreement => "pair_agreement",
            Statistic::ClassAlignment => "class_alignment",
        }
    }

    /// Differences smaller than this fraction of the median are no anomaly: 5 % for
    /// `embed_norm`, a two-sided size (without it the clean twin of the symmetric 4-class model
    /// in `tests/detect.rs` was flagged on nearly equal values; on the zoo and the real models
    /// the floor changes no score); none for the others.
    fn relative_floor(self) -> f64 {
        match self {
            Statistic::EmbedNorm => 0.05,
            _ => 0.0,
        }
    }

    /// The scale its anomaly index is computed on: `max_margin` on a log scale (a margin is a
    /// positive, right-skewed size, and a natural class's margin twice the median is as
    /// ordinary as one half of it; a margin that is not positive, a class no input reaches,
    /// is the least suspicious); `margin_patch` on a log scale too (a share of the image, as
    /// ordinary at half the median as at twice it; a patch trigger's share is a few locations,
    /// orders of magnitude under a texture's), floored at 1/512, half the bisection's step (0
    /// is a median image already in the class); the others as measured.
    pub fn index_scale(self, v: f64) -> f64 {
        match self {
            Statistic::MaxMargin if v > 0.0 => v.ln(),
            Statistic::MaxMargin => f64::NAN,
            Statistic::MarginPatch if v.is_finite() => v.max(1.0 / 512.0).ln(),
            _ => v,
        }
    }

    /// Whether the statistic is measured per layer (all but the input-space delta size).
    fn per_layer(self) -> bool {
        !matches!(
            self,
            Statistic::DeltaNorm
                | Statistic::PairDelta
                | Statistic::Coherence
                | Statistic::InputTransfer
                | Statistic::InputReach
                | Statistic::InputReachMax
                | Statistic::UniversalNorm
                | Statistic::MaxMargin
                | Statistic::MarginExcess
                | Statistic::LocalMargin
                | Statistic::MarginBlend
                | Statistic::MarginPatch
        )
    }

    /// Its value for result `r` at `layer`; NaN for [`Statistic::PairDelta`], which is
    /// measured across the results ([`pair_values`]).
    fn value(self, r: &TargetResult, layer: usize) -> f64 {
        match self {
            Statistic::PairDelta => f64::NAN,
            Statistic::Coherence => r.coherence,
            Statistic::InputTransfer => r.input_transfer.unwrap_or(f64::NAN),
            Statistic::InputReach => r.input_reach.unwrap_or(f64::NAN),
            Statistic::UniversalNorm => r.universal_norm.unwrap_or(f64::NAN),
            Statistic::MaxMargin => r.max_margin.unwrap_or(f64::NAN),
            Statistic::MarginExcess => r.margin_excess.unwrap_or(f64::NAN),
            Statistic::LocalMargin => r.local_margin.unwrap_or(f64::NAN),
            Statistic::MarginBlend => r.margin_blend.unwrap_or(f64::NAN),
            Statistic::MarginPatch => r.margin_patch.unwrap_or(f64::NAN),
            Statistic::InputReachMax => r
                .input_reach_sources
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .fold(f64::NAN, f64::max),
            Statistic::Reach => r.layers[layer].reach.unwrap_or(f64::NAN),
            Statistic::MuNorm => r.layers[layer].mu_norm,
            Statistic::DeltaNorm => r.delta_norm,
            Statistic::Dispersion => r.layers[layer].dispersion,
            Statistic::Transfer => r.layers[layer].transfer.unwrap_or(f64::NAN),
            Statistic::EmbedNorm => r.layers[layer].embed_norm,
            Statistic::PairAgreement => r.layers[layer].pair_agreement.unwrap_or(f64::NAN),
            Statistic::ClassAlignment => r.layers[layer].class_alignment.unwrap_or(f64::NAN),
        }
    }
}

/// Scores (largest mean index, default rule and layers) of the clean reference scans: the
/// 10 clean MNIST models of `zoo/standard.toml` and the two real clean models (5 seeds each),
/// from EVALUATION.md (re-decided from their saved reports by `cepa eval --rescore` when the
/// rule changed). The p-value of a score is the share of them at least as high.
pub const CLEAN_REFERENCE: [f64; 20] = [
    0.58, 0.59, 0.66, 0.68, 0.68, 0.76, 0.78, 0.80, 0.81, 0.83, 0.85, 0.87, 0.87, 0.89, 0.97, 1.15,
    1.21, 1.26, 1.37, 1.50,
];

/// `(1 + #{reference >= score}) / (1 + #reference)`: an empirical p-value against the clean
/// reference scans ([`CLEAN_REFERENCE`]); never below 1/21.
pub fn reference_p_value(score: f64) -> f64 {
    let above = CLEAN_REFERENCE.iter().filter(|&&r| r >= score).count();
    (1 + above) as f64 / (1 + CLEAN_REFERENCE.len()) as f64
}

/// How the per-statistic anomaly indices of a class become its combined index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// The mean of the chosen indices.
    Mean,
    /// That mean standardised again over the classes (median, MAD, scale floored at
    /// 1/sqrt(terms)): session 1's rule, kept for comparison.
    Restandardised,
    /// Layer by layer [ours]: for each scanned layer, the mean of the chosen indices with the
    /// per-layer statistics taken at that layer alone (the input-space ones count at every
    /// layer); the class's combined index is the largest of these means. A backdoor that
    /// stands out at one layer and not at the other is not averaged away. With one layer it
    /// equals `mean`. Measured on development scans in session 32 (EVALUATION.md), not chosen.
    LayerMax,
}

/// How the verdict is reached. Defaults chosen from measured results (EVALUATION.md).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecisionConfig {
    /// Statistics whose anomaly indices are averaged into the combined index. Default:
    /// delta_norm, embed_norm, transfer (EVALUATION.md, session 4: over 79 zoo and real scans
    /// it replaced dispersion, whose direction flips between MNIST and CIFAR-10 backdoors;
    /// `mu_norm` pointed at the wrong class on the real MNIST backdoor), and margin_excess
    /// (session 22, frozen 2026-12-05: on the 53 development scans, each dataset left out in
    /// turn, `agree` found more backdoors on all three datasets at the same false alarms;
    /// scans without it are decided by the other three).
    pub statistics: Vec<Statistic>,
    /// Each chosen index is capped at this before averaging, so that one statistic at one layer
    /// cannot carry the verdict alone; 0 turns the cap off. Default 3.0 (EVALUATION.md: without
    /// it a clean MLP with three unreachable classes scored 2.16 on one embed_norm outlier).
    pub index_cap: f64,
    /// Each chosen index is raised to at least this before averaging [ours], so that a
    /// statistic that finds a class ordinary (or less than ordinary: a blended trigger is no
    /// small input change, so its target's `delta_norm` index is negative) does not cancel
    /// the ones that find it anomalous. Absent (the default) leaves the indices as they are.
    /// Measured on development scans in session 26 (EVALUATION.md), not chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index_floor: Option<f64>,
    /// How they are combined. Default `mean` (EVALUATION.md: over 20 clean and 20 backdoored
    /// scans its ROC AUC was 1.00 against 0.955 for `restandardised`, which flagged 4 clean
    /// models).
    pub combine: Combine,
    /// Backdoored when the largest combined index exceeds this. Default 1.5, calibrated on
    /// the clean models of the zoo and the real clean models (EVALUATION.md): none of 30 clean
    /// scans above it (the highest 1.4995), every real backdoored one above it. For
    /// `restandardised`, 2.0 was used.
    pub threshold: f64,
    /// The number of classes `threshold` was calibrated at. A model with more classes has more
    /// chances for one of them to stand out by chance, so its threshold is raised by
    /// `sqrt(ln K / ln reference_classes)`, the growth of the expected largest of K standard
    /// scores (1.28 for 43 classes, 1.41 for 100; resampling the class indices of the clean
    /// zoo scans gave 1.30 for 43: EVALUATION.md, GTSRB). Never lowered for fewer classes. 0 turns
    /// the scaling off [ours]. Default 10.
    pub reference_classes: usize,
    /// A source class is suspected when its samples' mean `||delta||` has a (small-tail) MAD
    /// index above this among the sources. Default 2.0.
    pub source_threshold: f64,
    /// The lone-shortcut test [ours]: when one class's `input_reach` (how little of its mean
    /// input perturbation carries held-out images of other classes to it) is this many times
    /// smaller than every other class's, that class's combined index is raised to at least
    /// `threshold * gap / reach_gap` (at most twice the threshold), so a gap of exactly
    /// `reach_gap` sits at the threshold. A universal trigger makes one class reachable by one
    /// shared input pattern; a clean model's classes are reached by their own adversarial
    /// routes, at sizes within a few per cent of each other, or with several "sink" classes
    /// alike. Only in full scans (a screened scan has no `input_reach` for the screened-out
    /// classes) and only for scans that measured `input_reach`. 0 turns it off. Default 2.16:
    /// the largest gap of the 26 clean development models (Fashion-MNIST's fashion-clean-s1,
    /// 2.151), rounded up, as the leave-one-dataset-out procedure chooses it (EVALUATION.md,
    /// "The lone-shortcut test"; frozen 2026-12-04, session 18).
    pub reach_gap: f64,
    /// The statistic the lone-shortcut test measures the gap on: `input_reach` (the default,
    /// frozen with `reach_gap`) or `input_reach_max` (from the hardest source class; measured
    /// since session 18, not chosen).
    pub reach_gap_statistic: Statistic,
    /// The hardest-source check of the lone-shortcut test [ours]: the test raises a class only
    /// when that class is also the cheapest to reach from the *hardest* source class
    /// (`input_reach_max`) and by more than this factor over the next class. A trigger carries
    /// images of every source class to its target; a "sink" class (a Fashion-MNIST bag or
    /// pullover) is cheap only from the classes that resemble it, so from the hardest source it
    /// is no cheaper than the rest. Scans that did not measure `input_reach_max` (made before
    /// session 18) keep the test without the check, and their report says so. 0 turns the check
    /// off. Default 1.17: the largest hardest-source gap of the 29 clean development scans
    /// (the real cs612-clean-mnist-mlp, 1.1698), rounded up, as leave one dataset out chooses it
    /// (EVALUATION.md, "The hardest-source check"; frozen 2026-12-04, session 19).
    pub reach_confirm: f64,
    /// The sink check [ours]: only a class among the `suspect_rank` cheapest to reach from the
    /// hardest source class (smallest `input_reach_max`) can be the suspect; every other
    /// class's combined index is capped at 0 (no more anomalous than the typical class). A
    /// trigger carries images of every source class to its target, so its target is cheap from
    /// the hardest source too; a class that is only naturally easy to reach (a Fashion-MNIST
    /// bag, the false alarm of the mean rule and of Neural Cleanse there) is cheap from the
    /// classes resembling it and ranks anywhere from the hardest. Only in full scans that
    /// measured `input_reach_max` (session 18 on); 0 turns it off. Default 2: among the
    /// development scans, every backdoor CEPA flags at its target ranks 0 or 1, every Fashion-MNIST
    /// sink it flags 2 to 9, as leave one dataset out chooses it (EVALUATION.md, "The sink
    /// check"; frozen 2026-12-04, session 19).
    pub suspect_rank: usize,
    /// The margin gate [ours]: a class whose `margin_excess` anomaly index is below this cannot
    /// be the suspect; its combined index is capped at 0, like the sink check's. A trigger's
    /// pathway drives its target's logit beyond the class's natural examples; a class that is
    /// only cheap to reach in input space (CIFAR-10's "truck" on the project's networks, which
    /// CEPA's consensus and Neural Cleanse both single out) has an ordinary margin. Only in
    /// scans that measured `margin_excess` (session 22 on). 0 (the default) turns it off;
    /// measured on the development scans in session 22 (EVALUATION.md), not chosen.
    pub margin_gate: f64,
    /// Statistics that count on their own [ours], each with a weight `w`: a class's combined
    /// index is raised to at least `w x` its anomaly index of that statistic (at most twice the
    /// threshold), after the sink check, and compared with the same threshold. For the measures
    /// made apart from CEPA's consensus (`max_margin`, `universal_norm`), which a mean over the
    /// consensus statistics would dilute. Empty turns it off. Default `max_margin = 0.5338`
    /// (1.5 / 2.81): at the default threshold a class is flagged on its margin alone above an
    /// index of 2.81, the largest of the 22 clean development models of session 21
    /// (Fashion-MNIST's fashion-allconv-clean-s900, 2.804) rounded up, as leave one dataset out
    /// chooses it (EVALUATION.md, "Session 21"; frozen 2026-12-05). A higher `threshold` asks
    /// more of it too, and so does the class-count scaling.
    pub standalone: std::collections::BTreeMap<Statistic, f64>,
    /// Statistics that count on their own only together [ours], each with a weight `w`: a
    /// class's combined index is raised to at least the smallest of `w x` its anomaly index over
    /// all of them (at most twice the threshold), after the sink check, like `standalone`. Two
    /// readings of one input that fail apart on clean models (a natural class whose
    /// largest-margin input is far beyond its images, `margin_excess`, yet needs most of the
    /// image to carry others to it, `margin_patch`) then count only where both stand out. A class
    /// missing any of them is not raised. Empty (the default) turns it off; at least two
    /// statistics when on. Measured in session 29 (EVALUATION.md), not chosen.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub joint: std::collections::BTreeMap<Statistic, f64>,
    /// Whether `standalone` and `joint` may raise a class the sink check has capped [ours]. True
    /// (the default, the rule frozen in 8711592): they are applied after the sink check and may
    /// raise any class. False: a sink stays capped, since a trigger's target is cheap to reach
    /// from the hardest source class too, whatever margin an input reaches there. Measured on
    /// development scans in session 33 (EVALUATION.md), not chosen.
    #[serde(skip_serializing_if = "is_true")]
    pub raise_sinks: bool,
}

/// Whether `b` is true: `raise_sinks` is written only where it differs from the default.
fn is_true(b: &bool) -> bool {
    *b
}

impl DecisionConfig {
    /// The lone-shortcut settings are usable: `reach_gap` 0 (off) or at least 1, measured on
    /// `input_reach` or `input_reach_max`. Checked when settings are read and before a scan
    /// computes anything.
    pub fn validate(&self) -> Result<()> {
        if !(self.reach_gap == 0.0 || (self.reach_gap.is_finite() && self.reach_gap >= 1.0)) {
            return Err(Error::Config(format!(
                "[scan.decision] reach_gap = {}: must be 0 (off) or at least 1",
                self.reach_gap
            )));
        }
        if !matches!(
            self.reach_gap_statistic,
            Statistic::InputReach | Statistic::InputReachMax
        ) {
            return Err(Error::Config(format!(
                "[scan.decision] reach_gap_statistic = \"{}\": must be \"input_reach\" or \"input_reach_max\"",
                self.reach_gap_statistic.name()
            )));
        }
        if !(self.reach_confirm == 0.0
            || (self.reach_confirm.is_finite() && self.reach_confirm >= 1.0))
        {
            return Err(Error::Config(format!(
                "[scan.decision] reach_confirm = {}: must be 0 (off) or at least 1",
                self.reach_confirm
            )));
        }
        check_class_weights("standalone", &self.standalone, "stand alone")?;
        if self.joint.len() == 1 {
            return Err(Error::Config(
                "[scan.decision.joint]: one statistic alone is `standalone`; joint needs at least two"
                    .into(),
            ));
        }
        check_class_weights("joint", &self.joint, "count jointly")?;
        if !(self.margin_gate.is_finite() && self.margin_gate >= 0.0) {
            return Err(Error::Config(format!(
                "[scan.decision] margin_gate = {}: must be 0 (off) or a positive anomaly index",
                self.margin_gate
            )));
        }
        if let Some(f) = self.index_floor
            && !(f.is_finite() && (self.index_cap <= 0.0 || f < self.index_cap))
        {
            return Err(Error::Config(format!(
                "[scan.decision] index_floor = {f}: must be a finite anomaly index below \
                 index_cap ({})",
                self.index_cap
            )));
        }
        Ok(())
    }

    /// The threshold that applies to a model with `classes` classes (see `reference_classes`).
    pub fn threshold_for(&self, classes: usize) -> f64 {
        self.threshold * class_factor(classes, self.reference_classes)
    }
}

/// Every weight of the `[scan.decision.TABLE]` map `weights` is positive and finite, and every
/// statistic is measured once per class (not per layer), which is what can `what`.
fn check_class_weights(
    table: &str,
    weights: &std::collections::BTreeMap<Statistic, f64>,
    what: &str,
) -> Result<()> {
    for (stat, weight) in weights {
        if !(weight.is_finite() && *weight > 0.0) {
            return Err(Error::Config(format!(
                "[scan.decision.{table}] {} = {weight}: must be positive",
                stat.name()
            )));
        }
        if stat.per_layer() {
            return Err(Error::Config(format!(
                "[scan.decision.{table}] {}: only a statistic measured once per class \
                 (not per layer) can {what}",
                stat.name()
            )));
        }
    }
    Ok(())
}

/// `sqrt(ln k / ln reference)` for `k > reference >= 2`, else 1.
pub fn class_factor(k: usize, reference: usize) -> f64 {
    if reference < 2 || k <= reference {
        1.0
    } else {
        ((k as f64).ln() / (reference as f64).ln()).sqrt()
    }
}

impl Default for DecisionConfig {
    fn default() -> Self {
        Self {
            statistics: vec![
                Statistic::DeltaNorm,
                Statistic::EmbedNorm,
                Statistic::Transfer,
                Statistic::MarginExcess,
            ],
            index_cap: 3.0,
            index_floor: None,
            combine: Combine::Mean,
            threshold: 1.5,
            reference_classes: 10,
            source_threshold: 2.0,
            reach_gap: 2.16,
            reach_gap_statistic: Statistic::InputReach,
            reach_confirm: 1.17,
            suspect_rank: 2,
            margin_gate: 0.0,
            standalone: [(Statistic::MaxMargin, 1.5 / 2.81)].into_iter().collect(),
            joint: Default::default(),
            raise_sinks: true,
        }
    }
}

/// One statistic's value and anomaly index for a class, at one layer (or the input).
#[derive(Clone, Debug, Serialize)]
pub struct Indexed {
    pub statistic: Statistic,
    /// The layer's ONNX name; `None` for the input-space statistic.
    pub layer: Option<String>,
    pub value: f64,
    pub anomaly_index: f64,
}

/// Everything reported about one putative target class.
#[derive(Clone, Debug, Serialize)]
pub struct ClassReport {
    pub class: usize,
    pub feasible: bool,
    pub steps: usize,
    pub rho: f64,
    pub lambda: f64,
    pub statistics: Vec<Indexed>,
    /// The mean of the chosen statistics' indices.
    pub mean_index: f64,
    /// That mean, standardised again over the classes (median, MAD with a floor of
    /// `1/sqrt(number of terms)`): the combined index.
    pub anomaly_index: f64,
    /// Per source class (by class number), the median `||delta_n||_2` of its images in this
    /// class's problem; `null` for a class without images in it (the class itself). Kept so that
    /// a saved scan can be decided again with [`Statistic::PairDelta`] and its sources.
    pub source_delta: Vec<f64>,
    /// Per source class, `input_reach` from its held-out images alone (`null` for none, and for
    /// the class itself; empty without held-out images): kept so that a saved scan can be
    /// decided again with [`Statistic::InputReachMax`].
    pub source_input_reach: Vec<f64>,
    /// The sink check ([`DecisionConfig::suspect_rank`]) found the class is not among the
    /// cheapest to reach from its hardest source class: one the classes resembling it fall
    /// into. Its combined index was capped at 0 there; a statistic that counts on its own may
    /// have raised it again ([`DecisionConfig::raise_sinks`]). Written only where true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sink: bool,
}

/// Mean `||delta||` of the detected target's samples from one source class.
#[derive(Clone, Debug, Serialize)]
pub struct SourceReport {
    pub class: usize,
    pub mean_delta_norm: f64,
    pub anomaly_index: f64,
}

/// The verdict and its evidence.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    pub backdoored: bool,
    /// The most anomalous class (reported also when clean, as `most_anomalous`).
    pub target: Option<usize>,
    pub most_anomalous: usize,
    /// Its combined anomaly index.
    pub score: f64,
    /// The threshold `score` was compared with: the configured one, raised for a model with
    /// more classes than it was calibrated at ([`DecisionConfig::threshold_for`]).
    pub threshold: f64,
    /// p-value of the score: with `combine = mean`, the share of the clean reference scans
    /// scoring at least as high ([`reference_p_value`]); otherwise an MM-BD-style Gamma fit to
    /// the other classes' combined indices.
    pub p_value: f64,
    pub sources: Vec<usize>,
    pub source_stats: Vec<SourceReport>,
    pub classes: Vec<ClassReport>,
    pub notes: Vec<String>,
    /// A screened scan's classes and weights (absent: every class was optimised fully).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,
    /// The lone-shortcut test ([`DecisionConfig::reach_gap`]), when it was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reach_gap: Option<ReachGap>,
}

/// The lone-shortcut test's measurement: the class with the smallest `input_reach`, and how many
/// times smaller it is than the next smallest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReachGap {
    /// What it measured the gap on ([`DecisionConfig::reach_gap_statistic`]).
    pub statistic: Statistic,
    pub class: usize,
    pub input_reach: f64,
    /// The next smallest `input_reach`, of another class.
    pub next: f64,
    /// `next / input_reach`.
    pub gap: f64,
    /// The gap at which the class's combined index reaches the threshold.
    pub at: f64,
    /// The combined index the gap alone gives the class (`threshold * gap / at`, at most twice
    /// the threshold).
    pub index: f64,
    /// Whether it raised the class's combined index.
    pub raised: bool,
    /// The hardest-source check ([`DecisionConfig::reach_confirm`]): the class with the
    /// smallest `input_reach_max` and its gap; absent when the check is off or the scan did not
    /// measure `input_reach_max`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardest: Option<HardestGap>,
    /// Whether the check let the test raise the class: the same class, with a gap over
    /// `reach_confirm` (true when the check is off or was not measured).
    pub confirmed: bool,
}

/// The hardest-source check's measurement (see [`ReachGap::hardest`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HardestGap {
    /// The class with the smallest `input_reach_max`.
    pub class: usize,
    /// The next smallest `input_reach_max` over its.
    pub gap: f64,
    /// The gap it must exceed ([`DecisionConfig::reach_confirm`]).
    pub at: f64,
}

/// The feasible results (index, value) with a finite `stat` (an input-space statistic), smallest
/// first; `None` when fewer than 3 measured it (a scan made before the statistic existed).
fn ranked(results: &[TargetResult], stat: Statistic) -> Option<Vec<(usize, f64)>> {
    let mut vals: Vec<(usize, f64)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.feasible)
        .map(|(i, r)| (i, stat.value(r, 0)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    vals.sort_by(|a, b| a.1.total_cmp(&b.1));
    (vals.len() >= 3).then_some(vals)
}

/// [`ReachGap`] of `results` on `stat` (full scans only), or `None` when off, when fewer than 3
/// feasible classes measured it, or when the smallest is not positive.
fn reach_gap(
    results: &[TargetResult],
    stat: Statistic,
    at: f64,
    threshold: f64,
) -> Option<ReachGap> {
    if at <= 0.0 {
        return None;
    }
    let vals = ranked(results, stat)?;
    let ((i, low), (_, next)) = (vals[0], vals[1]);
    if low <= 0.0 {
        return None;
    }
    let gap = next / low;
    Some(ReachGap {
        statistic: stat,
        class: i,
        input_reach: low,
        next,
        gap,
        at,
        index: threshold * (gap / at).min(2.0),
        raised: false,
        hardest: None,
        confirmed: true,
    })
}

/// The hardest-source check of the lone-shortcut test ([`DecisionConfig::reach_confirm`]):
/// sets `g.confirmed` and `g.hardest`, and says in `notes` why a gap over `reach_gap` is not
/// raised, or that the scan could not be checked.
fn hardest_source_check(
    results: &[TargetResult],
    cfg: &DecisionConfig,
    g: &mut ReachGap,
    notes: &mut Vec<String>,
) {
    if cfg.reach_confirm <= 0.0 {
        return;
    }
    let measured = ranked(results, Statistic::InputReachMax).filter(|v| v[0].1 > 0.0);
    let Some(vals) = measured else {
        if g.gap > g.at {
            notes.push(
                "the scan did not measure input_reach_max (made before session 18): the \
                 lone-shortcut test without its hardest-source check"
                    .into(),
            );
        }
        return;
    };
    let (class, gap) = (vals[0].0, vals[1].1 / vals[0].1);
    g.confirmed = class == g.class && gap > cfg.reach_confirm;
    if !g.confirmed && g.gap > g.at {
        let hardest = if class == g.class {
            format!(
                "from the hardest source class only {gap:.2}x less (more than {:.2} needed)",
                cfg.reach_confirm
            )
        } else {
            format!(
                "from the hardest source class class {} is the cheapest ({gap:.2}x): a sink the \
                 classes resembling it fall into",
                results[class].target
            )
        };
        notes.push(format!(
            "class {}: cheap to reach on the median ({:.2}x less than any other class), but \
             {hardest}; not a lone shortcut, not raised",
            results[g.class].target, g.gap,
        ));
    }
    g.hardest = Some(HardestGap {
        class: results[class].target,
        gap,
        at: cfg.reach_confirm,
    });
}

/// The sink check ([`DecisionConfig::suspect_rank`]): the results (indices) that are not among
/// the `rank` smallest `input_reach_max`; empty when off, or when fewer than 3 feasible classes
/// measured it (a scan made before session 18). A class without the value is not a suspect.
fn sink_classes(results: &[TargetResult], rank: usize) -> Vec<usize> {
    let Some(vals) = ranked(results, Statistic::InputReachMax).filter(|_| rank > 0) else {
        return Vec::new();
    };
    let suspects: Vec<usize> = vals.iter().take(rank).map(|&(i, _)| i).collect();
    (0..results.len())
        .filter(|i| !suspects.contains(i))
        .collect()
}

/// The classes a screened scan optimised fully, out of how many: each result stands for
/// `weights[i]` of the model's `classes` classes in the medians and MADs (a candidate for
/// itself, a class of the null sample for the screened-out classes it was drawn among).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// The model's number of classes (the threshold's class-count scaling uses it).
    pub classes: usize,
    /// One weight per result, in the results' order; they sum to `classes`.
    pub weights: Vec<f64>,
}

/// Turn stage-1 results (one per class, in class order) at `layers` into a decision.
pub fn decide(
    results: &[TargetResult],
    layers: &[String],
    cfg: &DecisionConfig,
) -> Result<Decision> {
    decide_pool(results, layers, cfg, None)
}

/// Per class, the mean of `terms` (summed in order from 0, as the verdict always has).
fn term_mean<'a>(terms: impl Iterator<Item = &'a Vec<f64>> + Clone, k: usize) -> Vec<f64> {
    let n = terms.clone().count() as f64;
    (0..k)
        .map(|t| terms.clone().fold(0.0, |acc, v| acc + v[t]) / n)
        .collect()
}

/// For each layer, the mean of the terms measured at it or once for all layers; per class, the
/// largest of these means (`Combine::LayerMax`). A layer without a term of its own is skipped
/// unless no layer has one (then every term is shared and this is their mean).
fn layer_max(terms: &[(Option<usize>, Vec<f64>)], layers: usize, k: usize) -> Vec<f64> {
    let at = |layer: Option<usize>| {
        term_mean(
            terms
                .iter()
                .filter(move |(s, _)| s.is_none() || *s == layer)
                .map(|(_, v)| v),
            k,
        )
    };
    let own: Vec<usize> = (0..layers)
        .filter(|&l| terms.iter().any(|(s, _)| *s == Some(l)))
        .collect();
    if own.is_empty() {
        return at(None);
    }
    let mut best = vec![f64::NEG_INFINITY; k];
    for l in own {
        for (b, v) in best.iter_mut().zip(at(Some(l))) {
            *b = b.max(v);
        }
    }
    best
}

/// [`decide`] for the results of some of the classes (`pool`; `None`: one per class, all of
/// them): anomaly indices against weighted medians and MADs, the threshold scaled for the
/// model's number of classes.
pub fn decide_pool(
    results: &[TargetResult],
    layers: &[String],
    cfg: &DecisionConfig,
    pool: Option<&Pool>,
) -> Result<Decision> {
    if results.len() < 3 {
        return Err(Error::Mismatch(format!(
            "{} classes: the MAD statistics need at least 3",
            results.len()
        )));
    }
    if let Some(p) = pool
        && p.weights.len() != results.len()
    {
        return Err(Error::Mismatch(format!(
            "{} pool weights for {} results",
            p.weights.len(),
            results.len()
        )));
    }
    cfg.validate()?;
    let k = results.len();
    let model_classes = pool.map_or(k, |p| p.classes);
    let unit = vec![1.0; k];
    let weights: &[f64] = pool.map_or(&unit, |p| &p.weights);
    let mut notes = Vec::new();
    let infeasible: Vec<usize> = results
        .iter()
        .filter(|r| !r.feasible)
        .map(|r| r.target)
        .collect();
    if !infeasible.is_empty() {
        let mut note = format!(
            "classes {infeasible:?} never reached the target rate; they get the least suspicious index"
        );
        // Where half the classes or more are out of reach, the indices rest on the few left: on
        // small fully connected networks trained with plain SGD the optimisation stalls where a
        // whole layer is dead, for the backdoor's target as for any class
        // (scripts/probes/course_mlp_probe.md).
        if 2 * infeasible.len() >= k {
            note.push_str(&format!(
                "; CEPA's indices rest on the {} of {k} classes it reached, weak evidence either way: a clean verdict does not rule a backdoor out",
                k - infeasible.len()
            ));
        }
        notes.push(note);
    }
    let mut per_class: Vec<Vec<Indexed>> = vec![Vec::new(); k];
    // The chosen (floored, capped) indices, each with its layer (`None`: measured once, counts
    // at every layer).
    let mut chosen_terms: Vec<(Option<usize>, Vec<f64>)> = Vec::new();
    let all = [
        Statistic::DeltaNorm,
        Statistic::MuNorm,
        Statistic::Dispersion,
        Statistic::EmbedNorm,
        Statistic::Transfer,
        Statistic::PairDelta,
        Statistic::Coherence,
        Statistic::InputTransfer,
        Statistic::Reach,
        Statistic::InputReach,
        Statistic::InputReachMax,
        Statistic::UniversalNorm,
        Statistic::MaxMargin,
        Statistic::MarginExcess,
        Statistic::LocalMargin,
        Statistic::MarginBlend,
        Statistic::MarginPatch,
        Statistic::PairAgreement,
        Statistic::ClassAlignment,
    ];
    let pair = pair_values(results);
    for stat in all {
        let slots: Vec<Option<usize>> = if stat.per_layer() {
            (0..layers.len()).map(Some).collect()
        } else {
            vec![None]
        };
        for slot in slots {
            let raw: Vec<f64> = if stat == Statistic::PairDelta {
                pair.clone()
            } else {
                results
                    .iter()
                    .map(|r| stat.value(r, slot.unwrap_or(0)))
                    .collect()
            };
            if raw.iter().all(|v| v.is_nan()) {
                continue;
            }
            let scaled: Vec<f64> = raw.iter().map(|&v| stat.index_scale(v)).collect();
            // The indices are computed over the feasible targets only (infeasible ones would
            // share one value and collapse the MAD); infeasible targets get the smallest index.
            let ok: Vec<bool> = results
                .iter()
                .zip(&scaled)
                .map(|(r, v)| r.feasible && v.is_finite())
                .collect();
            let vals: Vec<f64> = scaled
                .iter()
                .zip(&ok)
                .filter(|(_, o)| **o)
                .map(|(&v, _)| v)
                .collect();
            let vals_w: Vec<f64> = weights
                .iter()
                .zip(&ok)
                .filter(|(_, o)| **o)
                .map(|(&w, _)| w)
                .collect();
            let idx: Vec<f64> = if vals.len() >= 3 {
                let sub = anomaly_indices_weighted(
                    &vals,
                    Some(&vals_w),
                    stat.tail(),
                    stat.relative_floor(),
                );
                let least = sub.iter().copied().fold(f64::INFINITY, f64::min);
                let mut it = sub.into_iter();
                ok.iter()
                    .map(|&o| if o { it.next().unwrap_or(least) } else { least })
                    .collect()
            } else {
                vec![0.0; k]
            };
            let chosen = cfg.statistics.contains(&stat);
            let mut term = vec![0.0; k];
            for t in 0..k {
                per_class[t].push(Indexed {
                    statistic: stat,
                    layer: slot.map(|l| layers[l].clone()),
                    value: raw[t],
                    anomaly_index: idx[t],
                });
                if chosen {
                    let floored = cfg.index_floor.map_or(idx[t], |f| idx[t].max(f));
                    term[t] = if cfg.index_cap > 0.0 {
                        floored.min(cfg.index_cap)
                    } else {
                        floored
                    };
                }
            }
            if chosen {
                chosen_terms.push((slot, term));
            }
        }
    }
    if chosen_terms.is_empty() {
        return Err(Error::Config("no chosen statistic was measured".into()));
    }
    let terms = chosen_terms.len();
    let mean_index = term_mean(chosen_terms.iter().map(|(_, v)| v), k);
    let combined: Vec<f64> = match cfg.combine {
        Combine::Mean => mean_index.clone(),
        // Session 1's rule: standardise the mean again, by its own median and MAD over the
        // classes, the scale floored at 1/sqrt(terms) (the spread of a mean of independent
        // unit-scale indices) so few classes or ties cannot blow it up.
        Combine::Restandardised => {
            let centre = weighted_median(&mean_index, weights);
            let spread = 1.4826 * weighted_mad(&mean_index, weights);
            let scale = spread.max(1.0 / (terms as f64).sqrt());
            mean_index.iter().map(|m| (m - centre) / scale).collect()
        }
        Combine::LayerMax => layer_max(&chosen_terms, layers.len(), k),
    };
    let threshold = cfg.threshold_for(model_classes);
    let mut combined = combined;
    let gap = if pool.is_none() {
        reach_gap(results, cfg.reach_gap_statistic, cfg.reach_gap, threshold).map(|mut g| {
            hardest_source_check(results, cfg, &mut g, &mut notes);
            if g.confirmed && g.index > combined[g.class] {
                combined[g.class] = g.index;
                g.raised = true;
            }
            if g.raised && g.gap > g.at {
                notes.push(format!(
                    "class {}: a shift of size {:.2} along its mean input perturbation carries held-out \
                     images to it, {:.2}x less than any other class needs ({:.2}): a lone shortcut; \
                     combined index raised to {:.2}",
                    results[g.class].target, g.input_reach, g.gap, g.next, g.index
                ));
            }
            g
        })
    } else {
        None
    };
    let sinks = if pool.is_none() {
        sink_classes(results, cfg.suspect_rank)
    } else {
        Vec::new()
    };
    if let Some(&top) = sinks
        .iter()
        .max_by(|&&a, &&b| combined[a].total_cmp(&combined[b]))
        && combined[top] > threshold
    {
        notes.push(format!(
            "class {}: combined index {:.2} over the threshold, but from the hardest source class \
             it is not among the {} cheapest classes to reach: a class the classes resembling it \
             fall into (a sink), not a trigger's target; not a suspect",
            results[top].target, combined[top], cfg.suspect_rank
        ));
    }
    for &i in &sinks {
        combined[i] = combined[i].min(0.0);
    }
    if cfg.margin_gate > 0.0 {
        let excess: Vec<Option<f64>> = per_class
            .iter()
            .map(|class| {
                class
                    .iter()
                    .find(|x| x.statistic == Statistic::MarginExcess && x.value.is_finite())
                    .map(|x| x.anomaly_index)
            })
            .collect();
        if excess.iter().flatten().count() >= 3 {
            for (t, e) in excess.iter().enumerate() {
                let Some(e) = *e else { continue };
                if e < cfg.margin_gate {
                    if combined[t] > threshold {
                        notes.push(format!(
                            "class {}: combined index {:.2} over the threshold, but its margin \
                             beyond the clean images is ordinary (margin_excess index {e:.2} < \
                             {}): a class cheap to reach in input space, not a trigger's target; \
                             not a suspect",
                            results[t].target, combined[t], cfg.margin_gate
                        ));
                    }
                    combined[t] = combined[t].min(0.0);
                }
            }
        }
    }
    // A class raised by a statistic that counts on its own (or by statistics that count
    // together) to `value`, at most twice the threshold; the note says why when that is over it.
    let mut raise = |t: usize, value: f64, why: &dyn Fn() -> String| {
        if !cfg.raise_sinks && sinks.contains(&t) {
            return;
        }
        let raised = value.min(2.0 * threshold);
        if raised > combined[t] {
            if raised > threshold {
                notes.push(format!(
                    "class {}: {}; combined index raised from {:.2} to {raised:.2}",
                    results[t].target,
                    why(),
                    combined[t]
                ));
            }
            combined[t] = raised;
        }
    };
    for (&stat, &weight) in &cfg.standalone {
        for (t, class) in per_class.iter().enumerate() {
            let Some(ix) = class.iter().find(|x| x.statistic == stat) else {
                continue;
            };
            if !ix.value.is_finite() {
                continue;
            }
            raise(t, weight * ix.anomaly_index, &|| {
                format!(
                    "{} {:.3} has anomaly index {:.2}, which counts on its own (x{weight:.3})",
                    stat.name(),
                    ix.value,
                    ix.anomaly_index
                )
            });
        }
    }
    for (t, class) in per_class.iter().enumerate() {
        // Every joint statistic's index at this class, or None when one was not measured.
        let Some(found) = cfg
            .joint
            .iter()
            .map(|(&stat, &weight)| {
                class
                    .iter()
                    .find(|x| x.statistic == stat && x.value.is_finite())
                    .map(|x| (stat, weight, x.anomaly_index))
            })
            .collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        let Some(least) = found.iter().map(|&(_, w, ix)| w * ix).reduce(f64::min) else {
            continue;
        };
        raise(t, least, &|| {
            let parts: Vec<String> = found
                .iter()
                .map(|(stat, _, ix)| format!("{} index {ix:.2}", stat.name()))
                .collect();
            format!("{} count together", parts.join(", "))
        });
    }
    let (best, score) =
        combined
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f64::NEG_INFINITY),
                |a, (i, v)| if v > a.1 { (i, v) } else { a },
            );
    if threshold != cfg.threshold {
        notes.push(format!(
            "{model_classes} classes: threshold {:.2} raised to {threshold:.2} (x{:.3}), for the largest of more \
             classes standing out more by chance",
            cfg.threshold,
            threshold / cfg.threshold
        ));
    }
    let backdoored = score > threshold;
    let (sources, source_stats) = suspected_sources(&results[best], cfg.source_threshold);
    let classes = results
        .iter()
        .enumerate()
        .zip(per_class)
        .zip(combined.iter().zip(&mean_index))
        .zip(source_medians(results))
        .map(
            |((((i, r), statistics), (&c, &m)), source_delta)| ClassReport {
                class: r.target,
                sink: sinks.contains(&i),
                feasible: r.feasible,
                steps: r.steps,
                rho: r.rho,
                lambda: r.lambda,
                statistics,
                mean_index: m,
                anomaly_index: c,
                source_delta,
                source_input_reach: r.input_reach_sources.clone(),
            },
        )
        .collect();
    let best_class = results[best].target;
    Ok(Decision {
        backdoored,
        target: backdoored.then_some(best_class),
        most_anomalous: best_class,
        score,
        threshold,
        p_value: if cfg.combine == Combine::Mean {
            // Against the reference scans (10 classes) on the same footing.
            reference_p_value(score / class_factor(model_classes, cfg.reference_classes))
        } else {
            max_p_value(&mean_index)
        },
        sources: if backdoored { sources } else { Vec::new() },
        source_stats,
        classes,
        notes,
        pool: pool.cloned(),
        reach_gap: gap,
    })
}

/// A caution on a verdict (CEPA's or a combined one) that flags class `target` where CEPA's
/// sink check marked it ([`ClassReport::sink`]): one the classes resembling it fall into, which
/// a network can make cheap to reach without a backdoor. On the thirteen held-out populations 5
/// of the 16 `agree` flags at a class so marked were clean models, against 6 of 74 at other
/// classes (EVALUATION.md, "Session 42", "Session 43";
/// `eval/stats-dev-s42/flags_at_marked_sinks.py`, which counts by this marking; session 41's 2
/// of 8 counted only the marked classes over the threshold before the cap). The verdict is
/// unchanged; the caution says how to check it.
pub fn sink_caution(decision: &Decision, target: Option<usize>) -> Option<String> {
    let t = target?;
    let class = decision.classes.iter().find(|c| c.class == t)?;
    class.sink.then(|| {
        format!(
            "CEPA's sink check finds class {t} is not among the cheapest classes to reach from \
             its hardest source class (the classes resembling it fall into it), as a class a \
             network makes cheap to reach without a backdoor can be; on the held-out populations \
             5 of the 16 flags at such a class were clean models (6 of 74 elsewhere). Scan a \
             clean model of the same task and compare (--reference), or scan again with other \
             seeds"
        )
    })
}

/// What a saved scan report (`report.json`, or an eval's `reports/cepa/ID.json`) keeps of stage 1:
/// every class's measured values, enough to decide again under another [`DecisionConfig`]
/// without re-optimising ([`redecide`]).
#[derive(Clone, Debug, Deserialize)]
pub struct SavedScan {
    pub layers: Vec<String>,
    pub decision: SavedDecision,
}

impl SavedScan {
    /// The model's number of classes: a screened scan's pool says it, a full scan has one
    /// class each.
    pub fn classes(&self) -> usize {
        self.decision
            .pool
            .as_ref()
            .map_or(self.decision.classes.len(), |p| p.classes)
    }
}

/// The `decision` of a saved report: its classes (the verdict itself is decided again).
#[derive(Clone, Debug, Deserialize)]
pub struct SavedDecision {
    pub classes: Vec<SavedClass>,
    /// A screened scan's pool (absent in a full scan's report).
    #[serde(default)]
    pub pool: Option<Pool>,
}

/// One class of a saved report.
#[derive(Clone, Debug, Deserialize)]
pub struct SavedClass {
    pub class: usize,
    pub feasible: bool,
    pub steps: usize,
    pub rho: f64,
    pub lambda: f64,
    pub statistics: Vec<SavedValue>,
    /// Per source class, the median `||delta_n||_2` (absent in reports made before session 15).
    #[serde(default)]
    pub source_delta: Vec<Option<f64>>,
    /// Per source class, `input_reach` from its images (absent before session 18).
    #[serde(default)]
    pub source_input_reach: Vec<Option<f64>>,
}

/// One statistic's value at one layer (`null`: not measured, or not finite).
#[derive(Clone, Debug, Deserialize)]
pub struct SavedValue {
    pub statistic: Statistic,
    pub layer: Option<String>,
    pub value: Option<f64>,
}

impl SavedClass {
    /// The saved value: `None` when the report has no entry for it (an older report); an entry
    /// of `null` is a value that was not finite, NaN again, as the scan had it.
    fn value(&self, stat: Statistic, layer: Option<&str>) -> Option<f64> {
        self.statistics
            .iter()
            .find(|s| s.statistic == stat && s.layer.as_deref() == layer)
            .map(|s| s.value.unwrap_or(f64::NAN))
    }

    /// The stage-1 result this class's values describe (without per-sample data).
    fn result(&self, layers: &[String]) -> Result<TargetResult> {
        let missing = |stat: Statistic, layer: Option<&str>| {
            Error::Mismatch(format!(
                "class {}: no {} value{}",
                self.class,
                stat.name(),
                layer.map_or_else(String::new, |l| format!(" at layer {l}"))
            ))
        };
        let layers = layers
            .iter()
            .map(|l| {
                let at = Some(l.as_str());
                let get = |stat| self.value(stat, at).ok_or_else(|| missing(stat, at));
                let (mu_norm, dispersion) = (get(Statistic::MuNorm)?, get(Statistic::Dispersion)?);
                Ok(crate::detect::cepa::LayerStats {
                    mu_norm,
                    dispersion,
                    // Reports made before embed_norm was kept: sqrt(||mu||^2 (1 + dispersion)),
                    // its definition.
                    embed_norm: self
                        .value(Statistic::EmbedNorm, at)
                        .unwrap_or_else(|| (mu_norm * mu_norm * (1.0 + dispersion)).sqrt()),
                    transfer: self.value(Statistic::Transfer, at),
                    reach: self.value(Statistic::Reach, at),
                    pair_agreement: self.value(Statistic::PairAgreement, at),
                    class_alignment: self.value(Statistic::ClassAlignment, at),
                    mu: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TargetResult {
            target: self.class,
            feasible: self.feasible,
            steps: self.steps,
            rho: self.rho,
            lambda: self.lambda,
            delta_norm: self
                .value(Statistic::DeltaNorm, None)
                .ok_or_else(|| missing(Statistic::DeltaNorm, None))?,
            layers,
            // Reports made before session 15 did not keep them: NaN, not measured.
            coherence: self.value(Statistic::Coherence, None).unwrap_or(f64::NAN),
            input_transfer: self.value(Statistic::InputTransfer, None),
            input_reach: self.value(Statistic::InputReach, None),
            universal_norm: self.value(Statistic::UniversalNorm, None),
            max_margin: self.value(Statistic::MaxMargin, None),
            margin_excess: self.value(Statistic::MarginExcess, None),
            local_margin: self.value(Statistic::LocalMargin, None),
            margin_blend: self.value(Statistic::MarginBlend, None),
            margin_patch: self.value(Statistic::MarginPatch, None),
            input_reach_sources: self
                .source_input_reach
                .iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect(),
            // One stand-in sample per source class, its size the median the report kept: the
            // per-source medians, all that pair_delta and the suspected sources read, are the
            // scan's own.
            sources: (0..self.source_delta.len())
                .filter(|&s| self.source_delta[s].is_some())
                .collect(),
            sample_delta_norms: self.source_delta.iter().flatten().copied().collect(),
            deltas: Vec::new(),
        })
    }
}

/// Decide a saved scan again under `cfg`: the same [`decide`] as a fresh scan, on the values the
/// report kept. A report made before the per-source sizes were kept (session 15) has no
/// suspected sources and no [`Statistic::PairDelta`].
pub fn redecide(saved: &SavedScan, cfg: &DecisionConfig) -> Result<Decision> {
    let results = saved
        .decision
        .classes
        .iter()
        .map(|c| c.result(&saved.layers))
        .collect::<Result<Vec<_>>>()?;
    let pool = saved.decision.pool.as_ref();
    if pool.is_none() && results.iter().enumerate().any(|(i, r)| r.target != i) {
        return Err(Error::Mismatch(
            "the saved classes are not 0, 1, 2, ... in order".into(),
        ));
    }
    decide_pool(&results, &saved.layers, cfg, pool)
}

/// Per result, the median `||delta_n||_2` of its samples of each source class (indexed by class,
/// up to the largest class any result has samples of); NaN where it has none.
fn source_medians(results: &[TargetResult]) -> Vec<Vec<f64>> {
    let classes = results
        .iter()
        .flat_map(|r| r.sources.iter().map(|&s| s + 1))
        .max()
        .unwrap_or(0);
    results
        .iter()
        .map(|r| {
            let mut by_source = vec![Vec::new(); classes];
            for (&s, &n) in r.sources.iter().zip(&r.sample_delta_norms) {
                if n.is_finite() {
                    by_source[s].push(n);
                }
            }
            by_source
                .iter()
                .map(|v| if v.is_empty() { f64::NAN } else { median(v) })
                .collect()
        })
        .collect()
}

/// [`Statistic::PairDelta`] of every result: for each source class, the small-tail MAD indices
/// of its median sizes over the feasible results that have samples of it (at least 3), and per
/// result the median of its indices over the sources; NaN for a result no source indexes.
fn pair_values(results: &[TargetResult]) -> Vec<f64> {
    let medians = source_medians(results);
    let classes = medians.first().map_or(0, Vec::len);
    let mut per_result: Vec<Vec<f64>> = vec![Vec::new(); results.len()];
    for s in 0..classes {
        let column: Vec<f64> = medians.iter().map(|m| m[s]).collect();
        let have: Vec<usize> = (0..results.len())
            .filter(|&i| results[i].feasible && column[i].is_finite())
            .collect();
        if have.len() < 3 {
            continue;
        }
        let values: Vec<f64> = have.iter().map(|&i| column[i]).collect();
        for (&i, a) in have.iter().zip(anomaly_indices(&values, Tail::Small)) {
            per_result[i].push(a);
        }
    }
    per_result
        .iter()
        .map(|v| if v.is_empty() { f64::NAN } else { median(v) })
        .collect()
}

/// Source classes whose samples reach the target far more cheaply than the others; all of them
/// when none stands out (an all-to-one backdoor).
fn suspected_sources(r: &TargetResult, threshold: f64) -> (Vec<usize>, Vec<SourceReport>) {
    let mut classes: Vec<usize> = r.sources.clone();
    classes.sort_unstable();
    classes.dedup();
    let means: Vec<f64> = classes
        .iter()
        .map(|&c| {
            let v: Vec<f64> = r
                .sources
                .iter()
                .zip(&r.sample_delta_norms)
                .filter(|(s, _)| **s == c)
                .map(|(_, &n)| n)
                .collect();
            median(&v)
        })
        .collect();
    let idx = anomaly_indices(&means, Tail::Small);
    let stats: Vec<SourceReport> = classes
        .iter()
        .zip(&means)
        .zip(&idx)
        .map(|((&class, &m), &a)| SourceReport {
            class,
            mean_delta_norm: m,
            anomaly_index: a,
        })
        .collect();
    let flagged: Vec<usize> = stats
        .iter()
        .filter(|s| s.anomaly_index > threshold)
        .map(|s| s.class)
        .collect();
    (if flagged.is_empty() { classes } else { flagged }, stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::cepa::LayerStats;

    #[test]
    fn a_margin_far_above_the_others_counts_on_its_own() {
        let layers = vec!["l".to_string()];
        let mut rs: Vec<TargetResult> = (0..5)
            .map(|t| result(t, 1.0 + 0.01 * t as f64, 0.5, 0.5, true))
            .collect();
        for (r, m) in rs.iter_mut().zip([10.0, 11.0, 9.0, 10.5, 60.0]) {
            r.max_margin = Some(m);
        }
        let on = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert!(on.backdoored, "score {}", on.score);
        assert_eq!(on.most_anomalous, 4);
        // ln 60 stands 24 MADs above the others: capped at twice the threshold.
        assert!((on.score - 3.0).abs() < 1e-9, "{}", on.score);
        assert!(
            on.notes.iter().any(|n| n.contains("max_margin")),
            "{:?}",
            on.notes
        );
        let off = DecisionConfig {
            standalone: Default::default(),
            ..Default::default()
        };
        let without = decide(&rs, &layers, &off).unwrap();
        assert!(!without.backdoored, "score {}", without.score);
        assert_eq!(without.most_anomalous, 0, "the smallest delta");
        // A higher threshold asks more of the margin too: ln 14 stands 4 MADs out, about 2.1 after
        // the weight, over 1.5 and under 4.
        rs[4].max_margin = Some(14.0);
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert!(
            d.backdoored && d.score > 2.0 && d.score < 2.3,
            "{}",
            d.score
        );
        let strict = DecisionConfig {
            threshold: 4.0,
            ..Default::default()
        };
        assert!(!decide(&rs, &layers, &strict).unwrap().backdoored);
        // Without margins (a report made before session 21) the verdict is the old one.
        for r in &mut rs {
            r.max_margin = None;
        }
        let old = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert_eq!(old.score, without.score);
        assert_eq!(old.most_anomalous, 0);
    }

    /// Judge-s41's clean ResNet-8 s4202 (committed scan): CEPA flags the digit 8, which its
    /// sink check marks and the largest margin raises again; the decision made again from the
    /// saved scan marks it, and a verdict at 8 carries the caution, one at a backdoored model's
    /// target of the same judge (Blend s4200, class 1) does not.
    #[test]
    fn a_flag_at_a_marked_sink_carries_the_caution_on_a_committed_scan() {
        let decide_again = |model: &str| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../eval/judge-s41/reports/cepa")
                .join(format!("{model}.json"));
            let saved: SavedScan =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            redecide(&saved, &DecisionConfig::default()).unwrap()
        };
        let clean = decide_again("mnist-resnet-clean-s4202");
        assert_eq!(clean.target, Some(8));
        assert!(clean.classes[8].sink);
        assert!(sink_caution(&clean, clean.target).is_some_and(|c| c.contains("class 8")));
        let blend = decide_again("mnist-resnet-blend-s4200");
        assert_eq!(blend.target, Some(1));
        assert!(!blend.classes[1].sink);
        assert_eq!(sink_caution(&blend, blend.target), None);
    }

    /// `raise_sinks = false`: a class the sink check caps (here class 4, the most expensive to
    /// reach from its hardest source) is not raised by its margin; the default raises it.
    #[test]
    fn a_sink_s_margin_raises_it_only_where_sinks_may_be_raised() {
        let layers = vec!["l".to_string()];
        let rs: Vec<TargetResult> = (0..5)
            .map(|t| {
                let mut r = result(t, 1.0 + 0.01 * t as f64, 0.5, 0.5, true);
                r.max_margin = Some([10.0, 11.0, 9.0, 10.5, 60.0][t]);
                r.input_reach_sources = vec![f64::NAN, [3.0, 2.0, 4.0, 5.0, 9.0][t]];
                r
            })
            .collect();
        assert_eq!(sink_classes(&rs, 2), [2, 3, 4]);
        let raised = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert!(raised.backdoored && raised.most_anomalous == 4);
        // The report marks the sinks, the one raised among them.
        let marked: Vec<usize> = raised
            .classes
            .iter()
            .filter(|c| c.sink)
            .map(|c| c.class)
            .collect();
        assert_eq!(marked, [2, 3, 4]);
        // A verdict at the raised sink carries the caution; one at another class does not.
        let caution = sink_caution(&raised, raised.target).expect("a caution at class 4");
        assert!(
            caution.contains("class 4") && caution.contains("--reference"),
            "{caution}"
        );
        assert_eq!(sink_caution(&raised, Some(0)), None);
        assert_eq!(sink_caution(&raised, None), None);
        let kept = DecisionConfig {
            raise_sinks: false,
            ..Default::default()
        };
        let d = decide(&rs, &layers, &kept).unwrap();
        assert!(!d.backdoored, "score {} at {}", d.score, d.most_anomalous);
        assert!(d.classes[4].anomaly_index <= 0.0);
        assert!(
            !d.notes.iter().any(|n| n.contains("max_margin")),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn layer_max_takes_each_layer_on_its_own_and_keeps_the_largest() {
        // Class 4's transfer stands out at the second layer only.
        let two = vec!["a".to_string(), "b".to_string()];
        let rs: Vec<TargetResult> = (0..6)
            .map(|t| {
                let mut r = result(t, 1.0 + 0.01 * t as f64, 0.5, 0.5 + 0.01 * t as f64, true);
                let mut b = r.layers[0].clone();
                b.transfer = Some(if t == 4 { 0.95 } else { 0.5 - 0.01 * t as f64 });
                r.layers.push(b);
                r
            })
            .collect();
        // Only the combination: no sink check, lone-shortcut test or standalone statistic.
        let base = DecisionConfig {
            statistics: vec![Statistic::DeltaNorm, Statistic::Transfer],
            suspect_rank: 0,
            reach_gap: 0.0,
            standalone: Default::default(),
            ..Default::default()
        };
        let by_layer = DecisionConfig {
            combine: Combine::LayerMax,
            ..base.clone()
        };
        let mean = decide(&rs, &two, &base).unwrap();
        let max = decide(&rs, &two, &by_layer).unwrap();
        let idx = |d: &Decision, t: usize, layer: Option<&str>| {
            d.classes[t]
                .statistics
                .iter()
                .find(|s| {
                    (s.statistic == Statistic::Transfer && s.layer.as_deref() == layer)
                        || (s.statistic == Statistic::DeltaNorm && layer.is_none())
                })
                .unwrap()
                .anomaly_index
                .min(3.0)
        };
        for t in 0..6 {
            let (d, a, b) = (
                idx(&mean, t, None),
                idx(&mean, t, Some("a")),
                idx(&mean, t, Some("b")),
            );
            // The mean over the three terms; the larger of the two layers' two-term means.
            assert!((mean.classes[t].anomaly_index - (d + a + b) / 3.0).abs() < 1e-9);
            let want = ((d + a) / 2.0).max((d + b) / 2.0);
            assert!(
                (max.classes[t].anomaly_index - want).abs() < 1e-9,
                "class {t}: {} against {want}",
                max.classes[t].anomaly_index
            );
            // The mean index a report shows stays the mean.
            assert_eq!(max.classes[t].mean_index, mean.classes[t].mean_index);
        }
        assert_eq!(max.most_anomalous, 4);
        assert!(max.score > mean.score, "{} {}", max.score, mean.score);
        // With one layer it is the mean.
        let one: Vec<TargetResult> = rs
            .iter()
            .cloned()
            .map(|mut r| {
                r.layers.truncate(1);
                r
            })
            .collect();
        let l = vec!["a".to_string()];
        assert_eq!(
            decide(&one, &l, &by_layer).unwrap().score,
            decide(&one, &l, &base).unwrap().score
        );
    }

    #[test]
    fn the_margin_beyond_the_clean_images_is_averaged_with_the_others_not_alone() {
        let layers = vec!["l".to_string()];
        let mut rs: Vec<TargetResult> = (0..5)
            .map(|t| result(t, 1.0 + 0.01 * t as f64, 0.5, 0.5, true))
            .collect();
        let three = DecisionConfig {
            statistics: vec![
                Statistic::DeltaNorm,
                Statistic::EmbedNorm,
                Statistic::Transfer,
            ],
            ..Default::default()
        };
        // Without the measure (a report made before session 22) the default is the old rule.
        let old = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert_eq!(old.score, decide(&rs, &layers, &three).unwrap().score);
        for (r, m) in rs.iter_mut().zip([1.0, 1.2, 0.9, 1.1, 50.0]) {
            r.margin_excess = Some(m);
        }
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        let four = &d.classes[4];
        let excess = four
            .statistics
            .iter()
            .find(|s| s.statistic == Statistic::MarginExcess)
            .unwrap();
        assert!(excess.anomaly_index > 100.0, "{}", excess.anomaly_index);
        // One term of four, capped at 3: class 4's mean is that of its capped chosen indices.
        let chosen: Vec<f64> = four
            .statistics
            .iter()
            .filter(|s| DecisionConfig::default().statistics.contains(&s.statistic))
            .map(|s| s.anomaly_index.min(3.0))
            .collect();
        assert_eq!(chosen.len(), 4);
        let mean = chosen.iter().sum::<f64>() / 4.0;
        assert!(
            (four.mean_index - mean).abs() < 1e-9,
            "{} {mean}",
            four.mean_index
        );
        assert!(four.mean_index > old.classes[4].mean_index);
        // It raises the class, but no statistic carries a verdict alone in the mean.
        assert!(!d.backdoored, "score {}", d.score);
        assert!(d.score < 1.5);
    }

    #[test]
    fn the_margin_gate_takes_a_class_with_an_ordinary_margin_off_the_suspects() {
        let layers = vec!["l".to_string()];
        // Class 4 is far the cheapest to reach and its consensus transfers; class 1 has the largest
        // margin beyond its clean images, class 4 an ordinary one.
        let mut rs: Vec<TargetResult> = (0..5)
            .map(|t| {
                result(
                    t,
                    if t == 4 { 0.1 } else { 1.0 + 0.01 * t as f64 },
                    0.5,
                    if t == 4 { 0.9 } else { 0.5 },
                    true,
                )
            })
            .collect();
        for (r, m) in rs.iter_mut().zip([1.0, 1.3, 0.9, 1.1, 1.05]) {
            r.margin_excess = Some(m);
        }
        let off = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert_eq!(off.most_anomalous, 4);
        let gate = DecisionConfig {
            margin_gate: 1.0,
            ..Default::default()
        };
        let on = decide(&rs, &layers, &gate).unwrap();
        assert_eq!(on.most_anomalous, 1, "{:?}", on.notes);
        assert!(on.classes[4].anomaly_index <= 0.0);
        // Scans without the measure keep every class.
        for r in &mut rs {
            r.margin_excess = None;
        }
        assert_eq!(decide(&rs, &layers, &gate).unwrap().most_anomalous, 4);
        let bad = DecisionConfig {
            margin_gate: -1.0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_standalone_weight_must_be_positive_and_the_statistic_per_class() {
        let bad = |stat: Statistic, w: f64| DecisionConfig {
            standalone: [(stat, w)].into_iter().collect(),
            ..Default::default()
        };
        assert!(bad(Statistic::MaxMargin, 0.0).validate().is_err());
        assert!(bad(Statistic::MaxMargin, f64::NAN).validate().is_err());
        assert!(bad(Statistic::Transfer, 1.0).validate().is_err());
        assert!(bad(Statistic::UniversalNorm, 0.4).validate().is_ok());
    }

    fn result(target: usize, delta: f64, disp: f64, transfer: f64, feasible: bool) -> TargetResult {
        TargetResult {
            target,
            feasible,
            steps: 10,
            rho: 1.0,
            lambda: 1.0,
            delta_norm: delta,
            layers: vec![LayerStats {
                mu_norm: 1.0,
                dispersion: disp,
                embed_norm: (1.0 + disp).sqrt(),
                transfer: Some(transfer),
                reach: Some(1.0),
                ..Default::default()
            }],
            coherence: 0.2 + 0.01 * target as f64,
            input_transfer: Some(0.1),
            input_reach: Some(1.0),
            sources: vec![(target + 1) % 5, (target + 2) % 5],
            sample_delta_norms: vec![delta, delta],
            ..Default::default()
        }
    }

    /// `k` (at most 7) ordinary classes, each statistic within 10 % of the others'.
    fn ordinary(k: usize) -> Vec<TargetResult> {
        let noise = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98];
        (0..k)
            .map(|t| result(t, 5.0 * noise[t], noise[t], 0.1 * noise[t], true))
            .collect()
    }

    #[test]
    fn the_planted_outlier_is_the_target_and_clean_stays_clean() {
        let layers = vec!["emb".to_string()];
        let mut rs = ordinary(5);
        let clean = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert!(!clean.backdoored, "score {}", clean.score);
        rs[3] = result(3, 1.0, 0.2, 0.9, true);
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert!(d.backdoored);
        assert_eq!(d.target, Some(3));
        assert!(d.p_value < clean.p_value);
        // Each chosen index is one-sided: the small delta of class 3 has a positive index.
        let delta = d.classes[3]
            .statistics
            .iter()
            .find(|s| s.statistic == Statistic::DeltaNorm)
            .unwrap();
        assert!(delta.anomaly_index > 2.0);
    }

    #[test]
    fn margin_patch_is_indexed_on_a_log_scale_and_read_by_no_default_rule() {
        let layers = vec!["emb".to_string()];
        let shares = [0.4, 0.2, 0.3, 0.25, 0.0];
        let mut rs = ordinary(5);
        let before = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        for (r, v) in rs.iter_mut().zip(shares) {
            r.margin_patch = Some(v);
        }
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        // The MAD index (small tail) of ln(max(share, 1/512)): ln 0.4, ln 0.2, ln 0.3, ln 0.25
        // and ln(1/512) for the image already in the class.
        let logs: Vec<f64> = shares.iter().map(|&v| v.max(1.0 / 512.0).ln()).collect();
        let want = anomaly_indices(&logs, Tail::Small);
        for (c, w) in d.classes.iter().zip(&want) {
            let got = c
                .statistics
                .iter()
                .find(|s| s.statistic == Statistic::MarginPatch)
                .unwrap();
            assert!(
                (got.anomaly_index - w).abs() < 1e-9,
                "{} vs {w}",
                got.anomaly_index
            );
        }
        // On the linear scale the zero share would be an outlier of about 3; on the log scale
        // it is far more.
        assert!(want[4] > 10.0, "{want:?}");
        // Measured, not chosen: the verdict is the one without it.
        assert_eq!(d.score, before.score);
        assert_eq!(d.target, before.target);
    }

    #[test]
    fn joint_statistics_raise_a_class_only_where_all_of_them_stand_out() {
        let layers = vec!["emb".to_string()];
        let mut rs = ordinary(6);
        // Class 1: a margin far beyond its images but an ordinary patch share (a natural class
        // with a confident texture); class 2: a small patch share and an ordinary margin; class
        // 4: both.
        let excess = [1.0, 30.0, 1.2, 0.9, 30.0, 1.1];
        let shares = [0.5, 0.4, 0.002, 0.45, 0.002, 0.35];
        for ((r, e), p) in rs.iter_mut().zip(excess).zip(shares) {
            r.margin_excess = Some(e);
            r.margin_patch = Some(p);
        }
        let joint = DecisionConfig {
            joint: [
                (Statistic::MarginExcess, 0.5),
                (Statistic::MarginPatch, 0.5),
            ]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        joint.validate().unwrap();
        let off = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert!(!off.backdoored, "score {}", off.score);
        let on = decide(&rs, &layers, &joint).unwrap();
        assert!(on.backdoored, "score {}", on.score);
        assert_eq!(on.target, Some(4));
        // Capped at twice the threshold.
        assert!((on.score - 3.0).abs() < 1e-9, "{}", on.score);
        assert!(
            on.notes.iter().any(|n| n.contains("count together")),
            "{:?}",
            on.notes
        );
        // Each alone raises nothing: the smaller of the two is what counts.
        for (c, want) in on
            .classes
            .iter()
            .zip([false, false, false, false, true, false])
        {
            assert_eq!(
                c.anomaly_index > 1.5,
                want,
                "class {}: {}",
                c.class,
                c.anomaly_index
            );
        }
        // Class 4's patch share made ordinary: no class stands out in both.
        rs[4].margin_patch = Some(0.42);
        let none = decide(&rs, &layers, &joint).unwrap();
        assert!(!none.backdoored, "score {}", none.score);
        // A class missing one of them is not raised.
        rs[4].margin_patch = None;
        rs[1].margin_patch = None;
        let missing = decide(&rs, &layers, &joint).unwrap();
        assert!(!missing.backdoored, "score {}", missing.score);
    }

    #[test]
    fn joint_needs_two_positive_per_class_statistics() {
        use Statistic::{MarginExcess, MarginPatch, Transfer};
        let cases: [(&[(Statistic, f64)], bool); 5] = [
            (&[(MarginPatch, 0.5)], false),
            (&[(MarginPatch, 0.5), (MarginExcess, 0.0)], false),
            (&[(MarginPatch, 0.5), (Transfer, 0.5)], false),
            (&[(MarginPatch, 0.5), (MarginExcess, 0.5)], true),
            (&[], true),
        ];
        for (pairs, ok) in cases {
            let cfg = DecisionConfig {
                joint: pairs.iter().copied().collect(),
                ..Default::default()
            };
            assert_eq!(cfg.validate().is_ok(), ok, "{pairs:?}");
        }
    }

    #[test]
    fn a_lone_cheap_input_reach_raises_its_class_and_sinks_alike_do_not() {
        let layers = vec!["emb".to_string()];
        let base = ordinary(6);
        let with_reach = |reach: [f64; 6]| {
            let mut rs = base.clone();
            for (r, v) in rs.iter_mut().zip(reach) {
                r.input_reach = Some(v);
            }
            rs
        };
        let on = DecisionConfig {
            reach_gap: 1.5,
            ..Default::default()
        };
        // Class 4 reached with a quarter of what any other class needs: a gap of 4, over 1.5.
        let lone = with_reach([8.0, 9.0, 8.5, 9.5, 2.0, 8.8]);
        let off_cfg = DecisionConfig {
            reach_gap: 0.0,
            ..Default::default()
        };
        let off = decide(&lone, &layers, &off_cfg).unwrap();
        assert!(!off.backdoored, "off: score {}", off.score);
        assert!(off.reach_gap.is_none());
        let d = decide(&lone, &layers, &on).unwrap();
        assert!(d.backdoored);
        assert_eq!(d.target, Some(4));
        let g = d.reach_gap.clone().unwrap();
        assert_eq!(g.class, 4);
        assert!((g.gap - 4.0).abs() < 1e-12);
        assert!(g.raised);
        // At most twice the threshold, however large the gap.
        assert!((d.score - 2.0 * on.threshold).abs() < 1e-12, "{}", d.score);
        assert!(
            d.notes.iter().any(|n| n.contains("class 4")),
            "{:?}",
            d.notes
        );
        // Two "sink" classes alike (2.0 and 2.1): no lone shortcut, no flag.
        let sinks = decide(&with_reach([8.0, 9.0, 2.1, 9.5, 2.0, 8.8]), &layers, &on).unwrap();
        assert!(!sinks.backdoored, "sinks: score {}", sinks.score);
        assert!((sinks.reach_gap.unwrap().gap - 1.05).abs() < 1e-9);
        // A gap of 1.2, under 1.5: the index it gives stays under the threshold.
        let small = decide(&with_reach([8.0, 9.0, 8.5, 9.5, 6.5, 7.8]), &layers, &on).unwrap();
        assert!(!small.backdoored, "small gap: score {}", small.score);
        // Scans without input_reach (made before it existed) are decided as before.
        let mut old = base.clone();
        for r in &mut old {
            r.input_reach = None;
        }
        let d_old = decide(&old, &layers, &on).unwrap();
        assert!(d_old.reach_gap.is_none());
        assert_eq!(d_old.score, decide(&old, &layers, &off_cfg).unwrap().score);
        // An invalid setting is an error, not a silent default.
        let bad = DecisionConfig {
            reach_gap: 0.5,
            ..Default::default()
        };
        let err = decide(&lone, &layers, &bad).unwrap_err().to_string();
        assert!(err.contains("reach_gap"), "{err}");
        // ... and caught when the settings are read, before any scan computes.
        let err = crate::settings::Settings::parse("[scan.decision]\nreach_gap = 0.5\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("reach_gap = 0.5"), "{err}");
        assert!(crate::settings::Settings::parse("[scan.decision]\nreach_gap = 3\n").is_ok());
    }

    #[test]
    fn the_gap_from_the_hardest_source_tells_a_trigger_from_a_sink() {
        let layers = vec!["emb".to_string()];
        let noise = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02];
        // Per source class (6 classes), the reach of each class's mean perturbation: about 9
        // from everywhere, except class 4 (a trigger: 2 from every source) and class 1 (a sink:
        // 1.5 from sources 0 and 2, which resemble it, 9 from the rest).
        let rs: Vec<TargetResult> = (0..6)
            .map(|t| {
                let mut r = result(t, 5.0 * noise[t], noise[t], 0.1 * noise[t], true);
                r.input_reach_sources = (0..6)
                    .map(|src| match (t, src) {
                        _ if src == t => f64::NAN,
                        (4, _) => 2.0,
                        (1, 0 | 2) => 1.5,
                        _ => 9.0 * noise[t],
                    })
                    .collect();
                r.input_reach = Some(if t == 1 {
                    1.6
                } else if t == 4 {
                    2.0
                } else {
                    9.0
                });
                r
            })
            .collect();
        let cfg = |stat| DecisionConfig {
            reach_gap: 2.16,
            reach_gap_statistic: stat,
            ..Default::default()
        };
        // On the median over all images, the sink (1.6) is the lone cheapest class: no
        // trigger found, class 1 singled out.
        let median = decide(&rs, &layers, &cfg(Statistic::InputReach)).unwrap();
        assert_eq!(median.reach_gap.as_ref().unwrap().class, 1);
        // From the hardest source, the sink costs 9 and the trigger 2: class 4, gap 4.
        let hardest = decide(&rs, &layers, &cfg(Statistic::InputReachMax)).unwrap();
        let g = hardest.reach_gap.clone().unwrap();
        assert_eq!((g.class, g.statistic), (4, Statistic::InputReachMax));
        assert!((g.gap - 9.0 * 0.9 / 2.0).abs() < 1e-9, "{}", g.gap);
        assert_eq!(hardest.target, Some(4));
        let max = hardest.classes[4]
            .statistics
            .iter()
            .find(|s| s.statistic == Statistic::InputReachMax)
            .unwrap();
        assert_eq!(max.value, 2.0);
        // A saved report keeps the per-source values (null for the class itself) and decides
        // again the same way.
        let json = serde_json::json!({ "layers": layers, "decision": hardest });
        assert!(json["decision"]["classes"][4]["source_input_reach"][4].is_null());
        assert_eq!(
            json["decision"]["reach_gap"]["statistic"],
            "input_reach_max"
        );
        let saved: SavedScan = serde_json::from_value(json).unwrap();
        let again = redecide(&saved, &cfg(Statistic::InputReachMax)).unwrap();
        assert_eq!(again.reach_gap.unwrap().class, 4);
        assert_eq!(again.score, hardest.score);
        // The default check: on the median the sink is the cheapest class, but from the
        // hardest source the trigger is: not confirmed, not raised.
        let g = median.reach_gap.as_ref().unwrap();
        assert!(!g.confirmed && !g.raised, "{g:?}");
        let h = g.hardest.as_ref().unwrap();
        assert_eq!(h.class, 4);
        assert!((h.gap - 4.05).abs() < 1e-9, "{}", h.gap);
        // With the trigger's median reach as high as the rest's, the sink's median gap (5.6) is
        // over reach_gap: still not raised, and the note says why.
        let mut wide = rs.clone();
        wide[4].input_reach = Some(9.0);
        let d = decide(&wide, &layers, &cfg(Statistic::InputReach)).unwrap();
        assert!(!d.reach_gap.as_ref().unwrap().raised);
        assert_ne!(d.target, Some(1));
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("class 1") && n.contains("a sink")),
            "{:?}",
            d.notes
        );
        // Without the check (session 18's rule) the sink is raised over the threshold.
        let unchecked = DecisionConfig {
            reach_confirm: 0.0,
            suspect_rank: 0,
            ..cfg(Statistic::InputReach)
        };
        let d = decide(&wide, &layers, &unchecked).unwrap();
        assert_eq!(d.target, Some(1));
        assert!(d.reach_gap.unwrap().hardest.is_none());
        // A check stricter than the trigger's gap (4.05) does not confirm it either.
        let strict = DecisionConfig {
            reach_confirm: 5.0,
            ..cfg(Statistic::InputReachMax)
        };
        assert!(
            !decide(&rs, &layers, &strict)
                .unwrap()
                .reach_gap
                .unwrap()
                .raised
        );
        let err = crate::settings::Settings::parse("[scan.decision]\nreach_confirm = 0.9\n")
            .err()
            .unwrap_or_default();
        assert!(err.contains("reach_confirm = 0.9"), "{err}");
        // A statistic the test cannot use is an error naming the setting.
        let err = decide(&rs, &layers, &cfg(Statistic::DeltaNorm))
            .unwrap_err()
            .to_string();
        assert!(err.contains("reach_gap_statistic"), "{err}");
    }

    #[test]
    fn a_class_far_from_the_hardest_source_is_a_sink_and_not_a_suspect() {
        let layers = vec!["emb".to_string()];
        let mut rs = ordinary(6);
        // Class 3 stands out on the statistics (a small delta, a high transfer).
        rs[3] = result(3, 1.0, 0.2, 0.9, true);
        // From the hardest source, class 3 is the most expensive of all to reach (rank 5).
        let hardest = [4.0, 3.0, 5.0, 9.0, 6.0, 7.0];
        for (r, v) in rs.iter_mut().zip(hardest) {
            r.input_reach_sources = (0..6)
                .map(|s| if s == r.target { f64::NAN } else { v })
                .collect();
        }
        let off = DecisionConfig {
            suspect_rank: 0,
            ..Default::default()
        };
        let flagged = decide(&rs, &layers, &off).unwrap();
        assert_eq!(flagged.target, Some(3));
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert!(!d.backdoored, "score {}", d.score);
        assert_ne!(d.most_anomalous, 3);
        assert_eq!(d.classes[3].anomaly_index, 0.0);
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("class 3") && n.contains("sink")),
            "{:?}",
            d.notes
        );
        // Cheapest from the hardest source, the same class is the target.
        rs[3].input_reach_sources = (0..6)
            .map(|s| if s == 3 { f64::NAN } else { 2.0 })
            .collect();
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert_eq!(d.target, Some(3));
        assert!(d.notes.iter().all(|n| !n.contains("sink")), "{:?}", d.notes);
        // A scan without the per-source values (before session 18) is decided without it.
        for r in &mut rs {
            r.input_reach_sources.clear();
        }
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert_eq!(d.target, Some(3));
    }

    #[test]
    fn the_threshold_rises_with_the_number_of_classes_beyond_the_reference() {
        assert_eq!(class_factor(3, 10), 1.0);
        assert_eq!(class_factor(10, 10), 1.0);
        assert!((class_factor(43, 10) - (43f64.ln() / 10f64.ln()).sqrt()).abs() < 1e-12);
        assert!((class_factor(100, 10) - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(class_factor(100, 0), 1.0, "0 turns it off");
        // 43 classes with one moderate outlier: a threshold just under its score flags it
        // with the scaling off and not with it, and the decision says which threshold held.
        let layers = vec!["emb".to_string()];
        let noise = |t: usize| 1.0 + 0.1 * ((t as f64) * 1.7).sin();
        let mut rs: Vec<TargetResult> = (0..43)
            .map(|t| result(t, 5.0 * noise(t), noise(t), 0.1 * noise(t), true))
            .collect();
        rs[7] = result(7, 4.0, 0.9, 0.2, true);
        let off = DecisionConfig {
            reference_classes: 0,
            ..Default::default()
        };
        let base = decide(&rs, &layers, &off).unwrap();
        assert_eq!(base.most_anomalous, 7);
        assert_eq!(base.threshold, off.threshold);
        let just_under = base.score / 1.1;
        let off = DecisionConfig {
            threshold: just_under,
            ..off
        };
        let on = DecisionConfig {
            reference_classes: 10,
            ..off.clone()
        };
        assert!(decide(&rs, &layers, &off).unwrap().backdoored);
        let d = decide(&rs, &layers, &on).unwrap();
        assert!(!d.backdoored, "score {} threshold {}", d.score, d.threshold);
        assert!((d.threshold - just_under * class_factor(43, 10)).abs() < 1e-12);
        assert!(
            d.notes.iter().any(|n| n.contains("43 classes")),
            "{:?}",
            d.notes
        );
    }

    #[test]
    fn infeasible_classes_count_as_least_suspicious() {
        let layers = vec!["emb".to_string()];
        let mut rs = ordinary(5);
        // An infeasible class with a tiny (meaningless) delta must not be flagged.
        rs[2] = result(2, 0.01, 0.01, 0.0, false);
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert!(!d.backdoored);
        assert!(d.classes[2].anomaly_index <= 0.0 + 1e-9);
        assert_eq!(d.notes.len(), 1);
        assert!(!d.notes[0].contains("weak evidence"), "{}", d.notes[0]);
    }

    #[test]
    fn a_scan_that_reached_under_half_the_classes_says_its_evidence_is_weak() {
        let layers = vec!["emb".to_string()];
        let ten = || -> Vec<TargetResult> {
            (0..10)
                .map(|t| {
                    let w = 1.0 + 0.02 * t as f64;
                    result(t, 5.0 * w, w, 0.1 * w, true)
                })
                .collect()
        };
        let mut rs = ten();
        for t in [0, 1, 3, 4, 5, 6] {
            rs[t].feasible = false;
        }
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        let note = d
            .notes
            .iter()
            .find(|n| n.contains("never reached"))
            .expect("the unreached classes are named");
        assert!(note.contains("[0, 1, 3, 4, 5, 6]"), "{note}");
        assert!(
            note.contains("the 4 of 10 classes it reached, weak evidence"),
            "{note}"
        );
        // Exactly half unreached: the warning already applies.
        let mut rs = ten();
        for t in [0, 1, 3, 4, 5] {
            rs[t].feasible = false;
        }
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert!(
            d.notes
                .iter()
                .any(|n| n.contains("the 5 of 10 classes it reached, weak evidence")),
            "{:?}",
            d.notes
        );
        // Four of ten unreached: the indices still rest on most classes, no warning.
        let mut rs = ten();
        for t in [0, 1, 3, 4] {
            rs[t].feasible = false;
        }
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert!(d.notes.iter().all(|n| !n.contains("weak evidence")));
    }

    #[test]
    fn embed_norm_is_suspicious_either_way_and_indices_are_capped() {
        let layers = vec!["emb".to_string()];
        let index = |d: &Decision, t: usize, s: Statistic| {
            d.classes[t]
                .statistics
                .iter()
                .find(|x| x.statistic == s)
                .unwrap()
                .anomaly_index
        };
        // A class whose embedding moves far more than the others' and one that moves far less:
        // both get a large positive embed_norm index.
        let mut rs = ordinary(7);
        rs[2].layers[0].embed_norm = 50.0;
        rs[5].layers[0].embed_norm = 0.01;
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        assert!(index(&d, 2, Statistic::EmbedNorm) > 3.0);
        assert!(index(&d, 5, Statistic::EmbedNorm) > 3.0);
        // Capped at 3 in the mean of the three chosen statistics: no verdict from it alone.
        assert!(d.classes[2].mean_index <= (3.0 + 2.0 * 3.0) / 3.0);
        let mean = |d: &Decision, t: usize| {
            d.classes[t]
                .statistics
                .iter()
                .filter(|x| DecisionConfig::default().statistics.contains(&x.statistic))
                .map(|x| x.anomaly_index.min(3.0))
                .sum::<f64>()
                / 3.0
        };
        assert!((d.classes[2].mean_index - mean(&d, 2)).abs() < 1e-12);
        assert!(
            !d.backdoored,
            "one loud statistic is not a backdoor: {}",
            d.score
        );
        let uncapped = DecisionConfig {
            index_cap: 0.0,
            ..DecisionConfig::default()
        };
        let u = decide(&rs, &layers, &uncapped).unwrap();
        assert!(u.classes[2].mean_index > d.classes[2].mean_index);
    }

    #[test]
    fn an_index_floor_keeps_an_ordinary_statistic_from_cancelling_an_anomalous_one() {
        let layers = vec!["emb".to_string()];
        // Class 2 moves its embedding far more than the others, at a large input change (a
        // blend-like trigger): embed_norm anomalous, delta_norm far below anomalous.
        let mut rs = ordinary(7);
        rs[2].layers[0].embed_norm = 50.0;
        rs[2].delta_norm = 9.0;
        let plain = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        let floored_cfg = DecisionConfig {
            index_floor: Some(0.0),
            ..DecisionConfig::default()
        };
        let floored = decide(&rs, &layers, &floored_cfg).unwrap();
        let chosen = |d: &Decision, t: usize| -> Vec<f64> {
            d.classes[t]
                .statistics
                .iter()
                .filter(|x| DecisionConfig::default().statistics.contains(&x.statistic))
                .map(|x| x.anomaly_index)
                .collect()
        };
        let idx = chosen(&plain, 2);
        assert!(idx.iter().any(|&i| i < 0.0), "{idx:?}");
        for t in 0..7 {
            let expect = chosen(&plain, t)
                .iter()
                .map(|i| i.clamp(0.0, 3.0))
                .sum::<f64>()
                / 3.0;
            assert!((floored.classes[t].mean_index - expect).abs() < 1e-12);
            assert!(floored.classes[t].mean_index >= plain.classes[t].mean_index - 1e-12);
        }
        assert!(floored.classes[2].mean_index > plain.classes[2].mean_index + 0.3);
        // A floor at or above the cap, or not finite, is refused.
        for bad in [3.0, f64::NAN] {
            let cfg = DecisionConfig {
                index_floor: Some(bad),
                ..DecisionConfig::default()
            };
            assert!(cfg.validate().is_err(), "{bad}");
        }
        assert!(floored_cfg.validate().is_ok());
    }

    /// Results over 6 classes, 3 images of every other class each, with `cost(source, target)`
    /// as every image's `||delta||`.
    fn pair_results(cost: impl Fn(usize, usize) -> f64) -> Vec<TargetResult> {
        (0..6)
            .map(|t| {
                let sources: Vec<usize> = (0..6).filter(|&s| s != t).flat_map(|s| [s; 3]).collect();
                let norms: Vec<f64> = sources.iter().map(|&s| cost(s, t)).collect();
                let mut r = result(t, 5.0, 1.0, 0.1, true);
                r.delta_norm = norms.iter().sum::<f64>() / norms.len() as f64;
                r.sources = sources;
                r.sample_delta_norms = norms;
                r
            })
            .collect()
    }

    /// A little irregularity per pair, so that no MAD collapses.
    fn wobble(s: usize, t: usize) -> f64 {
        1.0 + 0.04 * ((s * 7 + t * 3) % 5) as f64
    }

    fn pair_index(d: &Decision, class: usize) -> (f64, f64) {
        let v = d.classes[class]
            .statistics
            .iter()
            .find(|s| s.statistic == Statistic::PairDelta)
            .unwrap();
        (v.value, v.anomaly_index)
    }

    #[test]
    fn pair_delta_rewards_a_target_cheap_from_every_source() {
        let layers = vec!["emb".to_string()];
        // Class 2 is cheaper from every source (all to one); class 4 is cheaper on average,
        // but only from its look-alike class 5 and from class 3.
        let cost = |s: usize, t: usize| {
            let base = match (s, t) {
                (_, 2) => 0.7,
                (5, 4) => 0.01,
                (3, 4) => 0.2,
                _ => 1.0,
            };
            base * wobble(s, t)
        };
        let rs = pair_results(cost);
        let d = decide(&rs, &layers, &DecisionConfig::default()).unwrap();
        let (two, four) = (pair_index(&d, 2), pair_index(&d, 4));
        assert!(two.0 > 2.0, "class 2's sources agree: {two:?}");
        assert!(two.1 > 2.0 && four.1 < two.1, "{two:?} {four:?}");
        // The plain mean size does not tell them apart: class 4's mean is the smaller.
        assert!(rs[4].delta_norm < rs[2].delta_norm);
        // Chosen alone, it names class 2.
        let pair_only = DecisionConfig {
            statistics: vec![Statistic::PairDelta],
            ..DecisionConfig::default()
        };
        assert_eq!(decide(&rs, &layers, &pair_only).unwrap().most_anomalous, 2);
        // Infeasible targets are left out of every source's index and get the least index.
        let mut some_infeasible = rs.clone();
        some_infeasible[2].feasible = false;
        let d = decide(&some_infeasible, &layers, &pair_only).unwrap();
        assert_ne!(d.most_anomalous, 2);
        assert!(pair_index(&d, 2).0.is_nan());
        // Without per-sample sizes there is nothing to measure: an error when it is all the
        // rule asks for, never a silent zero.
        let mut bare = rs.clone();
        for r in &mut bare {
            r.sources.clear();
            r.sample_delta_norms.clear();
        }
        assert!(decide(&bare, &layers, &pair_only).is_err());
    }

    #[test]
    fn a_saved_report_keeps_the_per_source_sizes() {
        let layers = vec!["emb".to_string()];
        let rs = pair_results(|s, t| if t == 3 { 0.4 } else { 1.0 } * wobble(s, t));
        let cfg = DecisionConfig {
            statistics: vec![Statistic::DeltaNorm, Statistic::PairDelta],
            ..DecisionConfig::default()
        };
        let fresh = decide(&rs, &layers, &cfg).unwrap();
        assert_eq!(fresh.target, Some(3));
        assert_eq!(fresh.classes[3].source_delta.len(), 6);
        assert!(fresh.classes[3].source_delta[3].is_nan());
        let json = serde_json::json!({ "layers": layers, "decision": fresh });
        assert!(json["decision"]["classes"][3]["source_delta"][3].is_null());
        let saved: SavedScan = serde_json::from_value(json).unwrap();
        let again = redecide(&saved, &cfg).unwrap();
        assert_eq!(again.target, Some(3));
        assert!((again.score - fresh.score).abs() < 1e-12);
        assert_eq!(pair_index(&again, 3).0, pair_index(&fresh, 3).0);
        // The suspected sources are decided again from the same per-source medians.
        assert_eq!(again.sources, fresh.sources);
        let sizes = |d: &Decision| -> Vec<f64> {
            d.source_stats.iter().map(|s| s.mean_delta_norm).collect()
        };
        assert_eq!(sizes(&again), sizes(&fresh));
        assert!(!again.source_stats.is_empty());
    }

    #[test]
    fn a_saved_report_decides_again_as_the_scan_did() {
        let layers = vec!["emb".to_string()];
        let mut rs = ordinary(7);
        rs[4] = result(4, 2.0, 0.3, 0.8, true);
        rs[6] = result(6, 0.5, 0.1, 0.0, false);
        let cfg = DecisionConfig::default();
        let fresh = decide(&rs, &layers, &cfg).unwrap();
        // Through the report's JSON, as an eval folder keeps it.
        let json = serde_json::json!({ "layers": layers, "decision": fresh });
        let saved: SavedScan = serde_json::from_value(json.clone()).unwrap();
        let again = redecide(&saved, &cfg).unwrap();
        assert_eq!(
            (again.backdoored, again.most_anomalous),
            (fresh.backdoored, fresh.most_anomalous)
        );
        assert_eq!(again.most_anomalous, 4);
        assert!((again.score - fresh.score).abs() < 1e-12);
        for (a, b) in again.classes.iter().zip(&fresh.classes) {
            assert!((a.anomaly_index - b.anomaly_index).abs() < 1e-12);
        }
        // Another config decides otherwise: a threshold above the score clears the model, and a
        // rule of transfer alone gives other indices.
        let high = DecisionConfig {
            threshold: fresh.score + 0.01,
            ..cfg.clone()
        };
        assert!(!redecide(&saved, &high).unwrap().backdoored);
        let transfer_only = DecisionConfig {
            statistics: vec![Statistic::Transfer],
            ..cfg.clone()
        };
        let t = redecide(&saved, &transfer_only).unwrap();
        assert!(
            t.classes
                .iter()
                .zip(&fresh.classes)
                .any(|(a, b)| (a.mean_index - b.mean_index).abs() > 1e-6)
        );
        // A report before embed_norm was kept: derived from mu_norm and dispersion.
        let mut old = json.clone();
        for c in old["decision"]["classes"].as_array_mut().unwrap() {
            c["statistics"]
                .as_array_mut()
                .unwrap()
                .retain(|s| s["statistic"] != "embed_norm");
        }
        let old: SavedScan = serde_json::from_value(old).unwrap();
        assert!((redecide(&old, &cfg).unwrap().score - fresh.score).abs() < 1e-12);
        // A value missing altogether is an error naming it, not a silent zero.
        // A null value (not finite when scanned) is NaN again, as in the scan, not an error.
        let mut nan = json.clone();
        nan["decision"]["classes"][1]["statistics"][0]["value"] = serde_json::Value::Null;
        let nan: SavedScan = serde_json::from_value(nan).unwrap();
        let mut rs_nan = rs.clone();
        rs_nan[1].delta_norm = f64::NAN;
        let expect = decide(&rs_nan, &layers, &cfg).unwrap();
        let got = redecide(&nan, &cfg).unwrap();
        assert!((got.score - expect.score).abs() < 1e-12);
        assert_eq!(got.most_anomalous, expect.most_anomalous);
        let mut cut = json;
        cut["decision"]["classes"][2]["statistics"]
            .as_array_mut()
            .unwrap()
            .retain(|s| s["statistic"] != "delta_norm");
        let cut: SavedScan = serde_json::from_value(cut).unwrap();
        let err = redecide(&cut, &cfg).unwrap_err().to_string();
        assert!(
            err.contains("class 2") && err.contains("delta_norm"),
            "{err}"
        );
    }

    #[test]
    fn reference_p_value_counts_clean_scans_at_least_as_high() {
        assert!(
            (reference_p_value(10.0) - 1.0 / 21.0).abs() < 1e-12,
            "above every clean scan"
        );
        assert!(
            (reference_p_value(0.0) - 1.0).abs() < 1e-12,
            "below every clean scan"
        );
        // 1.50 and 1.37 are >= 1.3: (1 + 2) / 21.
        assert!((reference_p_value(1.3) - 3.0 / 21.0).abs() < 1e-12);
        assert!(CLEAN_REFERENCE.windows(2).all(|w| w[0] <= w[1]));
    }
}
