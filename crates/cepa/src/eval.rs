//! Judging detectors on a population of models with known ground truth: detection accuracy, TPR,
//! FPR, ROC AUC, target accuracy and time, per detector, dataset and attack family; a threshold
//! calibrated on the clean models; ROC curves as SVG; the tables as Markdown.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What one detector said about one model (one line of `results.jsonl`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub model: String,
    pub detector: String,
    pub dataset: String,
    /// `"clean"` or the attack family.
    pub attack: String,
    /// The true target class (backdoored models).
    pub truth_target: Option<usize>,
    pub flagged: bool,
    /// The class the detector names (when flagged).
    pub target: Option<usize>,
    /// The most anomalous class whether flagged or not.
    pub most_anomalous: Option<usize>,
    /// Model-level score (higher: more suspicious).
    pub score: f64,
    /// The detector's own threshold on `score`.
    pub threshold: f64,
    pub seconds: f64,
}

impl Outcome {
    pub fn backdoored(&self) -> bool {
        self.attack != "clean"
    }
}

/// The metrics of one set of outcomes (one detector; backdoored models of one family or all,
/// with the clean models of the same dataset).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub n: usize,
    pub n_backdoored: usize,
    pub n_clean: usize,
    /// Right verdicts / n.
    pub detection_accuracy: f64,
    /// Flagged backdoored / backdoored (null without backdoored models).
    pub tpr: Option<f64>,
    /// Flagged clean / clean (null without clean models).
    pub fpr: Option<f64>,
    /// ROC AUC of the score, backdoored against clean (null without both).
    pub auc: Option<f64>,
    /// Right target / flagged backdoored (null when none is flagged).
    pub target_accuracy: Option<f64>,
    /// Right most-anomalous class / backdoored, flagged or not.
    pub ranking_accuracy: Option<f64>,
    pub median_seconds: f64,
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// Metrics of `outcomes` (any mix of clean and backdoored models).
pub fn metrics(outcomes: &[&Outcome]) -> Metrics {
    let bad: Vec<&&Outcome> = outcomes.iter().filter(|o| o.backdoored()).collect();
    let clean: Vec<&&Outcome> = outcomes.iter().filter(|o| !o.backdoored()).collect();
    let tp = bad.iter().filter(|o| o.flagged).count();
    let fp = clean.iter().filter(|o| o.flagged).count();
    let right_target = bad
        .iter()
        .filter(|o| o.flagged && o.target.is_some() && o.target == o.truth_target)
        .count();
    let ranked = bad
        .iter()
        .filter(|o| o.most_anomalous.is_some() && o.most_anomalous == o.truth_target)
        .count();
    let pos: Vec<f64> = bad.iter().map(|o| o.score).collect();
    let neg: Vec<f64> = clean.iter().map(|o| o.score).collect();
    let secs: Vec<f64> = outcomes.iter().map(|o| o.seconds).collect();
    Metrics {
        n: outcomes.len(),
        n_backdoored: bad.len(),
        n_clean: clean.len(),
        detection_accuracy: ratio(tp + clean.len() - fp, outcomes.len()).unwrap_or(0.0),
        tpr: ratio(tp, bad.len()),
        fpr: ratio(fp, clean.len()),
        auc: auc(&pos, &neg),
        target_accuracy: ratio(right_target, tp),
        ranking_accuracy: ratio(ranked, bad.len()),
        median_seconds: crate::detect::stats::median(&secs),
    }
}

/// ROC AUC: the probability that a random positive scores above a random negative, ties
/// counting one half (the Mann-Whitney statistic). `None` when either side is empty.
pub fn auc(pos: &[f64], neg: &[f64]) -> Option<f64> {
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for &p in pos {
        for &n in neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (pos.len() * neg.len()) as f64)
}

/// The ROC curve: `(fpr, tpr)` points for every threshold, from (0, 0) to (1, 1).
pub fn roc(pos: &[f64], neg: &[f64]) -> Vec<(f64, f64)> {
    let mut cuts: Vec<f64> = pos.iter().chain(neg).copied().collect();
    cuts.sort_by(|a, b| b.total_cmp(a));
    cuts.dedup();
    let rate = |v: &[f64], t: f64| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().filter(|&&s| s >= t).count() as f64 / v.len() as f64
        }
    };
    let mut pts = vec![(0.0, 0.0)];
    pts.extend(cuts.iter().map(|&t| (rate(neg, t), rate(pos, t))));
    pts.push((1.0, 1.0));
    pts
}

/// A threshold calibrated on clean scores: the smallest value above which at most `fpr_goal`
/// of them lie (flag when `score > threshold`).
pub fn calibrate(clean: &[f64], fpr_goal: f64) -> Option<f64> {
    if clean.is_empty() {
        return None;
    }
    let mut s = clean.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    // Allowed false positives: floor(goal * n); the threshold is the next score down.
    let allowed = (fpr_goal * s.len() as f64 + 1e-9).floor() as usize;
    Some(s[allowed.min(s.len() - 1)])
}

/// Metrics at a threshold calibrated on the clean models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibrated {
    pub fpr_goal: f64,
    pub threshold: f64,
    pub fpr: f64,
    pub tpr: Option<f64>,
}

/// Everything `evaluation.json` holds for one detector and dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetEval {
    /// Per attack family (backdoored models of that family plus the dataset's clean models),
    /// and `"all"`.
    pub families: BTreeMap<String, Metrics>,
    pub calibrated: Option<Calibrated>,
}

/// `evaluation.json`: detector -> dataset -> results.
pub type Evaluation = BTreeMap<String, BTreeMap<String, DatasetEval>>;

/// The name of the combined detector [`either`] adds.
pub const EITHER: &str = "cepa-or-nc";

/// The name of the combined detector [`agree`] adds.
pub const AGREE: &str = "cepa-nc-agree";

/// How the two detectors' verdicts on one model become one (`scan --verdict either|agree`, the
/// evaluation's `cepa-or-nc` and `cepa-nc-agree` rows): the `[verdict]` section of a settings
/// file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerdictConfig {
    /// Backdoored when the combined score (each detector's score over its own threshold, put
    /// together as [`Combination`] says) exceeds this. Default 0.978: what the
    /// leave-one-dataset-out procedure ([`leave_one_dataset_out`]: at most 5 % of the clean
    /// models above it) chooses for `agree` with [`AgreeScore::Mean`], on the 104 clean models
    /// of the 254 development scans (MNIST, CIFAR-10, Fashion-MNIST, GTSRB-32; every earlier
    /// held-out population among them) with Neural Cleanse's threshold scaled with the class
    /// count (EVALUATION.md, "Session 35"; frozen 2026-12-07). It was 0.912 on the 63 clean
    /// models of session 20 (frozen 2026-12-05), 0.973 with [`AgreeScore::Larger`] (frozen
    /// 2026-12-02).
    pub threshold: f64,
    /// How much surer than its own threshold a detector must be to flag a model alone under
    /// [`Combination::Agree`], when the other detector's most anomalous class is another one.
    /// Default 1.5 (EVALUATION.md, session 6): on the 85 models both detectors judged it kept
    /// every zoo and real detection of the `either` rule but two (MNIST 23/25, CIFAR-10 16/25,
    /// real 2/2) and took the Fashion-MNIST clean models flagged from 7 of 8 to 1; 1.3 left 4 of
    /// 8, 1.75 lost two more CIFAR-10 detections.
    pub lone_factor: f64,
    /// What `agree` scores when the two detectors single out the same class. Default
    /// [`AgreeScore::Mean`] (session 20).
    pub agree_score: AgreeScore,
    /// Channel stimulation ([`crate::detect::stimulate`]) as a third voice of `agree`: its
    /// anomaly index over this threshold (raised with the class count as the other two,
    /// [`crate::detect::verdict::class_factor`] over 10 classes) is its relative score, paired
    /// with CEPA's or Neural Cleanse's where they single out the same class, or alone over
    /// `lone_factor`. 0 leaves it out (`agree` of CEPA and Neural Cleanse only). Not a voice of
    /// `either`. Default 8 (EVALUATION.md, "Session 38": on 29 development models every
    /// threshold from 5 to 10 found 12 of 16 backdoors at their targets against 8 without it,
    /// with the same one clean model flagged; the largest clean index seen was 6.24; frozen
    /// 2026-12-07 in b55636e, before its judge was built).
    pub stimulation_threshold: f64,
    /// Stimulation's second reading, single values of the map where the network reads it
    /// position by position ([`crate::detect::stimulate::PositionStimulation`]): its anomaly
    /// index over this threshold (raised with the class count as the others) is its relative
    /// score, and the stimulation voice is the larger of its two readings. 0 leaves it out (the
    /// voice is the channels' reading). Default 5 (EVALUATION.md, "Session 40"; frozen
    /// 2026-12-07, before its judge was built): chosen by leave one dataset out on the 59
    /// small-CNN development models of MNIST, Fashion-MNIST and CIFAR-10 (no threshold that
    /// flags a clean model the rule without it does not; among those the most backdoors at
    /// their targets; among those the largest): on all three it found 31 of 31 backdoors at
    /// their targets against 29 (CIFAR-10 BadNets 6 of 6 against 4) with the same 2 of 28
    /// clean models flagged; 4.5 to 5 do so, 4 and under flag a clean MNIST model (its reading
    /// 6.26, alone), 5.5 and over lose CIFAR-10 backdoors.
    pub stimulation_positions_threshold: f64,
}

/// How [`Combination::Agree`] scores a model whose two detectors single out the same class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgreeScore {
    /// The mean of the two relative scores, or the larger one over `lone_factor` where that is
    /// more: each detector carries half the evidence, and a detector whose class the other
    /// shares without finding it anomalous is judged as one alone. On the development scans
    /// (leave one dataset out, 157 models) it flagged 2 of 63 clean models where `larger`
    /// flagged 4, and found 77 of 94 backdoors at their targets where `larger` found 78
    /// (EVALUATION.md, "Session 20").
    Mean,
    /// The larger of the two relative scores (sessions 6 to 19): one detector sure enough
    /// flags the model when the other merely points at the same class.
    Larger,
    /// The relative scores of every voice that singles out the class, summed, over 2: the same
    /// as `mean` where two voices agree, more where all three (CEPA, Neural Cleanse,
    /// stimulation) do. Measured in session 41 (EVALUATION.md), not the default.
    Sum,
}

impl VerdictConfig {
    /// A threshold that is a positive number and a lone factor of at least 1.
    pub fn validate(&self) -> crate::error::Result<()> {
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            return Err(crate::error::Error::Config(format!(
                "[verdict] threshold = {}: must be a positive number",
                self.threshold
            )));
        }
        if !(self.lone_factor.is_finite() && self.lone_factor >= 1.0) {
            return Err(crate::error::Error::Config(format!(
                "[verdict] lone_factor = {}: must be at least 1",
                self.lone_factor
            )));
        }
        if !(self.stimulation_positions_threshold.is_finite()
            && self.stimulation_positions_threshold >= 0.0)
        {
            return Err(crate::error::Error::Config(format!(
                "[verdict] stimulation_positions_threshold = {}: must be 0 (off) or a positive \
                 anomaly index",
                self.stimulation_positions_threshold
            )));
        }
        if !(self.stimulation_threshold.is_finite() && self.stimulation_threshold >= 0.0) {
            return Err(crate::error::Error::Config(format!(
                "[verdict] stimulation_threshold = {}: must be 0 (off) or a positive anomaly index",
                self.stimulation_threshold
            )));
        }
        Ok(())
    }

    /// Stimulation's threshold for a model of `classes` classes; `None` when it is no voice.
    pub fn stimulation_threshold_for(&self, classes: usize) -> Option<f64> {
        (self.stimulation_threshold > 0.0).then(|| {
            self.stimulation_threshold
                * crate::detect::verdict::class_factor(classes, STIMULATION_REFERENCE_CLASSES)
        })
    }

    /// The threshold of stimulation's reading of single values for a model of `classes`
    /// classes; `None` when that reading is no part of the voice.
    pub fn stimulation_positions_threshold_for(&self, classes: usize) -> Option<f64> {
        (self.stimulation_positions_threshold > 0.0).then(|| {
            self.stimulation_positions_threshold
                * crate::detect::verdict::class_factor(classes, STIMULATION_REFERENCE_CLASSES)
        })
    }
}

/// The class count at which [`VerdictConfig::stimulation_threshold`] holds, as Neural
/// Cleanse's `reference_classes`.
pub const STIMULATION_REFERENCE_CLASSES: usize = 10;

/// The detector name of channel stimulation's rows.
pub const STIM: &str = "stim";

/// Channel stimulation's outcome on the model CEPA's outcome `cepa` is about (its rows are
/// derived from CEPA's scan, which computes it): its score is the index, its threshold
/// [`VerdictConfig::stimulation_threshold_for`] the model's class count; `None` when it is no
/// voice.
pub fn stimulation_outcome(
    cepa: &Outcome,
    s: &crate::detect::stimulate::StimulationReport,
    cfg: &VerdictConfig,
) -> Option<Outcome> {
    let threshold = cfg.stimulation_threshold_for(s.margins.len())?;
    // The larger of the two readings, each over its own threshold.
    let positions = s
        .positions
        .as_ref()
        .zip(cfg.stimulation_positions_threshold_for(s.margins.len()));
    let (index, class, threshold) = match positions {
        Some((p, t)) if p.index / t > s.index / threshold => (p.index, p.class, t),
        _ => (s.index, s.class, threshold),
    };
    let flagged = index > threshold;
    Some(Outcome {
        detector: STIM.into(),
        flagged,
        target: flagged.then_some(class),
        most_anomalous: Some(class),
        score: index,
        threshold,
        seconds: s.seconds,
        ..cepa.clone()
    })
}

impl Default for VerdictConfig {
    fn default() -> Self {
        Self {
            threshold: 0.978,
            lone_factor: 1.5,
            agree_score: AgreeScore::Mean,
            stimulation_threshold: 8.0,
            stimulation_positions_threshold: 5.0,
        }
    }
}

/// How two detectors' verdicts on one model become one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combination {
    /// Backdoored when either detector flags the model.
    Either,
    /// Backdoored when the two detectors together find the class they both single out anomalous
    /// enough ([`VerdictConfig::agree_score`]); a detector whose class the other does not share
    /// must clear [`VerdictConfig::lone_factor`] times its threshold. Two detectors that work
    /// differently (an input mask against embedded perturbations) rarely single out the same
    /// class by chance, while a class that is only naturally easy to reach tends to stand out
    /// for one of them.
    Agree,
}

impl Combination {
    /// The detector name of its rows.
    pub fn name(self) -> &'static str {
        match self {
            Combination::Either => EITHER,
            Combination::Agree => AGREE,
        }
    }

    /// One sentence on how it decides, for reports.
    pub fn rule(self, cfg: &VerdictConfig) -> String {
        let mut r = self.two_detector_rule(cfg);
        if self == Combination::Agree && cfg.stimulation_threshold > 0.0 {
            r += &format!(
                "; channel stimulation is a third voice, its index over {} (at 10 classes, raised \
                 with the class count): any two voices at the same class are put together so, \
                 and one alone is divided by {}",
                cfg.stimulation_threshold, cfg.lone_factor
            );
            if cfg.agree_score == AgreeScore::Sum {
                r += "; where all three voices single out the same class, their sum over 2";
            }
            if cfg.stimulation_positions_threshold > 0.0 {
                r += &format!(
                    "; where the network reads its map position by position, stimulation's \
                     reading of single values counts over {} (raised alike), and the larger of \
                     its two readings is its voice",
                    cfg.stimulation_positions_threshold
                );
            }
        }
        r
    }

    fn two_detector_rule(self, cfg: &VerdictConfig) -> String {
        let t = cfg.threshold;
        match self {
            Combination::Either => format!(
                "score = the larger of CEPA's and Neural Cleanse's scores, each over its own \
                 threshold; backdoored when it exceeds {t}"
            ),
            Combination::Agree => {
                let lone = cfg.lone_factor;
                match cfg.agree_score {
                    AgreeScore::Mean | AgreeScore::Sum => format!(
                        "score = the larger of CEPA's and Neural Cleanse's scores, each over its \
                         own threshold, divided by {lone} (one detector alone), or the mean of \
                         the two where that is more and the two detectors' most anomalous \
                         classes are the same; backdoored when it exceeds {t}"
                    ),
                    AgreeScore::Larger => format!(
                        "score = the larger of CEPA's and Neural Cleanse's scores, each over its \
                         own threshold, divided by {lone} when the two detectors' most \
                         anomalous classes differ; backdoored when it exceeds {t}"
                    ),
                }
            }
        }
    }
}

/// Which term of [`combine`]'s score decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Term {
    /// The larger of the relative scores.
    Larger,
    /// The larger over `lone_factor`: one voice alone.
    Alone,
    /// The mean of two voices that single out the same class.
    Mean,
    /// Three voices at one class, their sum over 2 ([`AgreeScore::Sum`]).
    Sum,
}

/// Whether two voices single out the same class (a voice with none shares nothing).
fn same_class(c: &Outcome, n: &Outcome) -> bool {
    c.most_anomalous.is_some() && c.most_anomalous == n.most_anomalous
}

/// How [`combine`] scored one model: the score, the term that set it, the class it names and
/// the voices behind it (indices into CEPA, Neural Cleanse, stimulation).
#[derive(Clone, Copy, Debug)]
struct Scored {
    score: f64,
    term: Term,
    class: Option<usize>,
    voices: (usize, Option<usize>),
}

/// [`combine`]'s score of CEPA's outcome `c`, Neural Cleanse's `n` and, under
/// [`Combination::Agree`], channel stimulation's `s` on one model. Ties go to the earlier voice
/// (CEPA, then Neural Cleanse) and, between a pair and one voice alone, to the pair.
fn score_of(
    c: &Outcome,
    n: &Outcome,
    s: Option<&Outcome>,
    how: Combination,
    cfg: &VerdictConfig,
) -> Scored {
    let mut voices = vec![c, n];
    if how == Combination::Agree {
        voices.extend(s);
    }
    let rel: Vec<f64> = voices.iter().map(|o| relative(o)).collect();
    let mut lead = 0;
    for (i, r) in rel.iter().enumerate() {
        if *r > rel[lead] {
            lead = i;
        }
    }
    let one = |score, term| Scored {
        score,
        term,
        class: voices[lead].most_anomalous.or(voices[lead].target),
        voices: (lead, None),
    };
    if how == Combination::Either {
        return one(rel[lead], Term::Larger);
    }
    let mut best = one(rel[lead] / cfg.lone_factor, Term::Alone);
    for i in 0..voices.len() {
        for j in i + 1..voices.len() {
            if !same_class(voices[i], voices[j]) {
                continue;
            }
            let (score, term) = match cfg.agree_score {
                AgreeScore::Mean | AgreeScore::Sum => ((rel[i] + rel[j]) / 2.0, Term::Mean),
                AgreeScore::Larger => (rel[i].max(rel[j]), Term::Larger),
            };
            let better = score > best.score || (score == best.score && best.term == Term::Alone);
            if better {
                best = Scored {
                    score,
                    term,
                    class: voices[i].most_anomalous,
                    voices: (i, Some(j)),
                };
            }
        }
    }
    if cfg.agree_score == AgreeScore::Sum
        && voices.len() == 3
        && same_class(voices[0], voices[1])
        && same_class(voices[1], voices[2])
    {
        let score = rel.iter().sum::<f64>() / 2.0;
        if score > best.score {
            best = Scored {
                score,
                term: Term::Sum,
                class: voices[0].most_anomalous,
                voices: (0, None),
            };
        }
    }
    best
}

/// Where [`combine`]'s score of one model comes from, in words: each voice's score over its
/// own threshold, its class, and which term decided, e.g. "CEPA 1.93 x its threshold at class
/// 7, Neural Cleanse 1.68 x at class 7: the same class, their mean 1.81". With channel
/// stimulation (`s`, under [`Combination::Agree`]) the pair that decided is named.
pub fn explain(
    c: &Outcome,
    n: &Outcome,
    s: Option<&Outcome>,
    how: Combination,
    cfg: &VerdictConfig,
) -> String {
    let class = |o: &Outcome| {
        o.most_anomalous
            .map_or_else(|| "no class".to_string(), |k| format!("class {k}"))
    };
    let s = s.filter(|_| how == Combination::Agree && cfg.stimulation_threshold > 0.0);
    let d = score_of(c, n, s, how, cfg);
    let score = d.score;
    let names = ["CEPA", "Neural Cleanse", "stimulation"];
    let head = format!(
        "CEPA {:.2} x its threshold at {}, Neural Cleanse {:.2} x at {}",
        relative(c),
        class(c),
        relative(n),
        class(n),
    );
    let Some(s) = s else {
        let same = same_class(c, n);
        let why = match d.term {
            Term::Larger if same => "the same class, the larger".to_string(),
            Term::Larger => "the larger".to_string(),
            Term::Mean | Term::Sum => "the same class, their mean".to_string(),
            Term::Alone if same => format!(
                "the same class, but the larger divided by {} (one detector alone) is more than \
                 their mean",
                cfg.lone_factor
            ),
            Term::Alone => format!(
                "different classes, the larger divided by {} (one detector alone)",
                cfg.lone_factor
            ),
        };
        return format!("{head}: {why} {score:.2}");
    };
    let why = match (d.term, d.voices) {
        (Term::Sum, _) => "all three at the same class, their sum over 2".to_string(),
        (Term::Alone, (i, _)) => format!(
            "{} alone, the largest divided by {} (no two at one class say more)",
            names[i], cfg.lone_factor
        ),
        (Term::Mean, (i, Some(j))) => format!(
            "{} and {} at the same class, their mean",
            names[i], names[j]
        ),
        (_, (i, Some(j))) => format!(
            "{} and {} at the same class, the larger",
            names[i], names[j]
        ),
        (_, (i, None)) => format!("{}, the larger", names[i]),
    };
    format!(
        "{head}, stimulation {:.2} x at {}: {why} {score:.2}",
        relative(s),
        class(s)
    )
}

/// A combined detector, `cepa-or-nc`, for every model that both CEPA and Neural Cleanse judged: it
/// flags a model when either does ([`combine`] with [`Combination::Either`]).
pub fn either(outcomes: &[Outcome], cfg: &VerdictConfig) -> Vec<Outcome> {
    combine(outcomes, Combination::Either, cfg)
}

/// A combined detector, `cepa-nc-agree` ([`combine`] with [`Combination::Agree`]).
pub fn agree(outcomes: &[Outcome], cfg: &VerdictConfig) -> Vec<Outcome> {
    combine(outcomes, Combination::Agree, cfg)
}

/// One combined outcome (detector `how.name()`) for every model that both CEPA and Neural
/// Cleanse judged. Its score is the larger of the two scores each divided by its own threshold;
/// for [`Combination::Agree`] that divided again by `cfg.lone_factor`, or, when two voices
/// single out the same class, as [`VerdictConfig::agree_score`] says, where that is more;
/// channel stimulation's row ([`STIM`]), when the model has one, is a third voice of `agree`
/// (unless `cfg.stimulation_threshold` is 0).
/// Its threshold is `cfg.threshold` and `flagged == score > threshold`. Its target and most
/// anomalous class are those of the term that decided. Its time is the sum of CEPA's and
/// Neural Cleanse's (stimulation runs inside CEPA's scan).
pub fn combine(outcomes: &[Outcome], how: Combination, cfg: &VerdictConfig) -> Vec<Outcome> {
    let of = |detector: &str| -> BTreeMap<&str, &Outcome> {
        outcomes
            .iter()
            .filter(|o| o.detector == detector)
            .map(|o| (o.model.as_str(), o))
            .collect()
    };
    let (nc, stim) = (of("nc"), of(STIM));
    outcomes
        .iter()
        .filter(|o| o.detector == "cepa")
        .filter_map(|c| nc.get(c.model.as_str()).map(|n| (c, *n)))
        .map(|(c, n)| {
            let s = stim
                .get(c.model.as_str())
                .copied()
                .filter(|_| cfg.stimulation_threshold > 0.0);
            let d = score_of(c, n, s, how, cfg);
            let flagged = d.score > cfg.threshold;
            Outcome {
                detector: how.name().into(),
                flagged,
                target: if flagged { d.class } else { None },
                most_anomalous: d.class,
                score: d.score,
                threshold: cfg.threshold,
                seconds: c.seconds + n.seconds,
                ..c.clone()
            }
        })
        .collect()
}

/// Group `outcomes` and compute every table.
pub fn evaluate(outcomes: &[Outcome], fpr_goal: f64) -> Evaluation {
    let mut out = Evaluation::new();
    let mut keys: Vec<(String, String)> = outcomes
        .iter()
        .map(|o| (o.detector.clone(), o.dataset.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    for (det, ds) in keys {
        let here: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.detector == det && o.dataset == ds)
            .collect();
        let clean: Vec<&Outcome> = here.iter().copied().filter(|o| !o.backdoored()).collect();
        let mut families: Vec<String> = here
            .iter()
            .filter(|o| o.backdoored())
            .map(|o| o.attack.clone())
            .collect();
        families.sort();
        families.dedup();
        let mut table = BTreeMap::new();
        for f in &families {
            let set: Vec<&Outcome> = here
                .iter()
                .copied()
                .filter(|o| &o.attack == f || !o.backdoored())
                .collect();
            table.insert(f.clone(), metrics(&set));
        }
        table.insert("all".into(), metrics(&here));
        let clean_scores: Vec<f64> = clean.iter().map(|o| o.score).collect();
        let calibrated = calibrate(&clean_scores, fpr_goal).map(|t| {
            let flagged = |o: &&&Outcome| o.score > t;
            let bad: Vec<&Outcome> = here.iter().copied().filter(|o| o.backdoored()).collect();
            Calibrated {
                fpr_goal,
                threshold: t,
                fpr: clean.iter().filter(flagged).count() as f64 / clean.len() as f64,
                tpr: ratio(bad.iter().filter(flagged).count(), bad.len()),
            }
        });
        out.entry(det).or_default().insert(
            ds,
            DatasetEval {
                families: table,
                calibrated,
            },
        );
    }
    out
}

/// One fold of [`leave_one_dataset_out`]: a detector's threshold chosen on the clean models of
/// every other dataset, judged on the dataset left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldOutFold {
    pub detector: String,
    /// The dataset left out (judged).
    pub dataset: String,
    /// The datasets the threshold was chosen on.
    pub chosen_on: Vec<String>,
    /// Clean models it was chosen on.
    pub chosen_on_clean: usize,
    /// In units of the detector's own threshold (`score / threshold > this` flags a model).
    pub threshold: f64,
    pub n_backdoored: usize,
    pub n_clean: usize,
    /// Flagged backdoored / backdoored.
    pub tpr: Option<f64>,
    /// Flagged at the true target / backdoored.
    pub tpr_right_target: Option<f64>,
    pub fpr: Option<f64>,
    /// Per attack family: (flagged at the true target, models).
    pub families: BTreeMap<String, (usize, usize)>,
}

/// The leave-one-dataset-out table: for every detector and dataset, the threshold chosen on all
/// the other datasets ([`calibrate`] at `fpr_goal` on their clean models' scores, each score in
/// units of its own threshold so that the class-count scaling and the two detectors' scales are
/// taken out) and its rates on the dataset left out; and `pooled`, what the same procedure
/// chooses on every dataset, which is what a default taken from it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaveOneOut {
    pub fpr_goal: f64,
    pub folds: Vec<HeldOutFold>,
    /// Detector -> threshold chosen on the clean models of every dataset (own-threshold units).
    pub pooled: BTreeMap<String, f64>,
    /// Detector -> the smallest threshold it ran with (a 10-class model's, for CEPA): `pooled`
    /// times this is the procedure's threshold in the detector's own score units.
    pub ran_with: BTreeMap<String, f64>,
}

/// `score / threshold`: a score in units of its own threshold.
fn relative(o: &Outcome) -> f64 {
    o.score / o.threshold
}

/// See [`LeaveOneOut`]. Datasets without clean models cannot be chosen on, and a detector seen
/// on fewer than two datasets has no fold.
pub fn leave_one_dataset_out(outcomes: &[Outcome], fpr_goal: f64) -> LeaveOneOut {
    let mut detectors: Vec<&str> = outcomes.iter().map(|o| o.detector.as_str()).collect();
    detectors.sort_unstable();
    detectors.dedup();
    let mut folds = Vec::new();
    let mut pooled = BTreeMap::new();
    let mut ran_with = BTreeMap::new();
    for det in detectors {
        let here: Vec<&Outcome> = outcomes.iter().filter(|o| o.detector == det).collect();
        let clean_of = |keep: &dyn Fn(&str) -> bool| -> Vec<f64> {
            here.iter()
                .filter(|o| !o.backdoored() && keep(&o.dataset))
                .map(|o| relative(o))
                .collect()
        };
        if let Some(t) = calibrate(&clean_of(&|_| true), fpr_goal) {
            pooled.insert(det.to_string(), t);
        }
        ran_with.insert(
            det.to_string(),
            here.iter()
                .map(|o| o.threshold)
                .fold(f64::INFINITY, f64::min),
        );
        let mut datasets: Vec<&str> = here.iter().map(|o| o.dataset.as_str()).collect();
        datasets.sort_unstable();
        datasets.dedup();
        if datasets.len() < 2 {
            continue;
        }
        for &ds in &datasets {
            let train = clean_of(&|d| d != ds);
            let Some(t) = calibrate(&train, fpr_goal) else {
                continue;
            };
            let test: Vec<&&Outcome> = here.iter().filter(|o| o.dataset == ds).collect();
            let bad: Vec<&&&Outcome> = test.iter().filter(|o| o.backdoored()).collect();
            let clean = test.len() - bad.len();
            let flagged = |o: &Outcome| relative(o) > t;
            let right = |o: &Outcome| {
                flagged(o) && o.most_anomalous.is_some() && o.most_anomalous == o.truth_target
            };
            let mut families: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for o in &bad {
                let e = families.entry(o.attack.clone()).or_default();
                e.0 += usize::from(right(o));
                e.1 += 1;
            }
            let mut chosen_on: Vec<String> = here
                .iter()
                .filter(|o| o.dataset != ds && !o.backdoored())
                .map(|o| o.dataset.clone())
                .collect();
            chosen_on.sort();
            chosen_on.dedup();
            folds.push(HeldOutFold {
                detector: det.to_string(),
                dataset: ds.to_string(),
                chosen_on,
                chosen_on_clean: train.len(),
                threshold: t,
                n_backdoored: bad.len(),
                n_clean: clean,
                tpr: ratio(bad.iter().filter(|o| flagged(o)).count(), bad.len()),
                tpr_right_target: ratio(bad.iter().filter(|o| right(o)).count(), bad.len()),
                fpr: ratio(
                    test.iter()
                        .filter(|o| !o.backdoored() && flagged(o))
                        .count(),
                    clean,
                ),
                families,
            });
        }
    }
    LeaveOneOut {
        fpr_goal,
        folds,
        pooled,
        ran_with,
    }
}

/// The leave-one-dataset-out table as Markdown.
pub fn leave_one_out_markdown(l: &LeaveOneOut) -> String {
    let mut s = format!(
        "### Leave one dataset out\n\n\
         Each detector's threshold chosen on the clean models of the other datasets (the \
         smallest with at most {:.0} % of them above it; in units of the detector's own \
         threshold, so 1.00 is the threshold it ran with), judged on the dataset left out. \
         Right target: flagged at the true target.\n\n\
         | detector | left out | chosen on (clean models) | threshold | TPR | right target | FPR | right target per family |\n\
         |---|---|---|---|---|---|---|---|\n",
        100.0 * l.fpr_goal
    );
    for f in &l.folds {
        let fams: Vec<String> = f
            .families
            .iter()
            .map(|(k, (r, n))| format!("{k} {r}/{n}"))
            .collect();
        s.push_str(&format!(
            "| {} | {} | {} ({}) | {:.3} | {} | {} | {} | {} |\n",
            f.detector,
            f.dataset,
            f.chosen_on.join(", "),
            f.chosen_on_clean,
            f.threshold,
            cell(f.tpr),
            cell(f.tpr_right_target),
            cell(f.fpr),
            fams.join(", ")
        ));
    }
    s.push('\n');
    for (det, t) in &l.pooled {
        let unit = l.ran_with.get(det).copied().unwrap_or(1.0);
        s.push_str(&format!(
            "- {det}: the same procedure on the clean models of every dataset chooses {t:.3} x \
             its threshold {unit}, a score threshold of {:.3}\n",
            t * unit
        ));
    }
    s.push('\n');
    s
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |x| format!("{x:.2}"))
}

/// The tables as Markdown: one per dataset, detectors side by side per family.
pub fn markdown(ev: &Evaluation) -> String {
    let mut datasets: Vec<&String> = ev.values().flat_map(|d| d.keys()).collect();
    datasets.sort();
    datasets.dedup();
    let mut s = String::new();
    for ds in datasets {
        s.push_str(&format!("### {ds}\n\n"));
        s.push_str(
            "| family | detector | n (bd/clean) | det. acc | TPR | FPR | AUC | target acc | ranking acc | median s |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        let mut fams: Vec<&String> = ev
            .values()
            .filter_map(|d| d.get(ds))
            .flat_map(|d| d.families.keys())
            .collect();
        fams.sort_by_key(|f| (f.as_str() == "all", f.to_string()));
        fams.dedup();
        for f in fams {
            for (det, per) in ev {
                if let Some(m) = per.get(ds).and_then(|d| d.families.get(f)) {
                    s.push_str(&format!(
                        "| {f} | {det} | {} ({}/{}) | {:.2} | {} | {} | {} | {} | {} | {:.1} |\n",
                        m.n,
                        m.n_backdoored,
                        m.n_clean,
                        m.detection_accuracy,
                        cell(m.tpr),
                        cell(m.fpr),
                        cell(m.auc),
                        cell(m.target_accuracy),
                        cell(m.ranking_accuracy),
                        m.median_seconds
                    ));
                }
            }
        }
        s.push('\n');
        for (det, per) in ev {
            if let Some(c) = per.get(ds).and_then(|d| d.calibrated.as_ref()) {
                s.push_str(&format!(
                    "- {det}: threshold calibrated on the clean models for FPR <= {:.2}: {:.3} \
                     (FPR {:.2}, TPR {})\n",
                    c.fpr_goal,
                    c.threshold,
                    c.fpr,
                    cell(c.tpr)
                ));
            }
        }
        s.push('\n');
    }
    s
}

/// Every model's outcome under each detector, one row a model (by dataset, then id), so that a
/// run over a zoo can be read model by model, the combined verdicts included. A cell is the
/// score and the most anomalous class, e.g. `1.11 @1`, followed for a flagged model by
/// `flagged`, and for a flagged backdoored model by whether the class it names is the true
/// target.
pub fn per_model_markdown(outcomes: &[Outcome]) -> String {
    const ORDER: [&str; 4] = ["cepa", "nc", "cepa-nc-agree", "cepa-or-nc"];
    let mut dets: Vec<&str> = outcomes.iter().map(|o| o.detector.as_str()).collect();
    dets.sort_by_key(|d| (ORDER.iter().position(|x| x == d).unwrap_or(ORDER.len()), *d));
    dets.dedup();
    let mut models: Vec<(&str, &str)> = outcomes
        .iter()
        .map(|o| (o.dataset.as_str(), o.model.as_str()))
        .collect();
    models.sort_unstable();
    models.dedup();
    if models.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "### Per model\n\nEach cell: the score and the most anomalous class; `flagged` where it \
         exceeds the detector's threshold, with (right) or (wrong target) for a backdoored \
         model.\n\n| dataset | model | attack | true target | {} |\n|---|---|---|---|{}\n",
        dets.join(" | "),
        "---|".repeat(dets.len())
    );
    for (ds, id) in models {
        let here: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.dataset == ds && o.model == id)
            .collect();
        let first = here[0];
        let cells: Vec<String> = dets
            .iter()
            .map(|d| {
                here.iter().find(|o| o.detector == *d).map_or_else(
                    || "-".to_string(),
                    |o| {
                        let mut c = format!("{:.2}", o.score);
                        if let Some(k) = o.most_anomalous {
                            c.push_str(&format!(" @{k}"));
                        }
                        if o.flagged {
                            c.push_str(" flagged");
                            if let Some(t) = o.truth_target {
                                c.push_str(if o.target == Some(t) {
                                    " (right)"
                                } else {
                                    " (wrong target)"
                                });
                            }
                        }
                        c
                    },
                )
            })
            .collect();
        s.push_str(&format!(
            "| {ds} | {id} | {} | {} | {} |\n",
            first.attack,
            first
                .truth_target
                .map_or_else(|| "-".to_string(), |t| t.to_string()),
            cells.join(" | ")
        ));
    }
    s.push('\n');
    s
}

/// An SVG picture of the ROC curve of every detector on `dataset` (all families pooled).
pub fn roc_svg(outcomes: &[Outcome], dataset: &str) -> String {
    const SIZE: f64 = 320.0;
    const PAD: f64 = 40.0;
    const COLOURS: [&str; 4] = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd"];
    let mut dets: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.dataset == dataset)
        .map(|o| o.detector.as_str())
        .collect();
    dets.sort_unstable();
    dets.dedup();
    let (w, h) = (SIZE + 2.0 * PAD, SIZE + 2.0 * PAD);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{PAD}\" y=\"20\">ROC, {dataset}</text>\n\
         <rect x=\"{PAD}\" y=\"{PAD}\" width=\"{SIZE}\" height=\"{SIZE}\" fill=\"none\" stroke=\"black\"/>\n\
         <line x1=\"{PAD}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{PAD}\" stroke=\"#bbb\" stroke-dasharray=\"4\"/>\n\
         <text x=\"{cx}\" y=\"{yb}\" text-anchor=\"middle\">false positive rate</text>\n\
         <text x=\"12\" y=\"{cy}\" transform=\"rotate(-90 12 {cy})\" text-anchor=\"middle\">true positive rate</text>\n",
        y0 = PAD + SIZE,
        x1 = PAD + SIZE,
        cx = PAD + SIZE / 2.0,
        yb = h - 8.0,
        cy = PAD + SIZE / 2.0,
    );
    for (i, det) in dets.iter().enumerate() {
        let here: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.dataset == dataset && o.detector == *det)
            .collect();
        let pos: Vec<f64> = here
            .iter()
            .filter(|o| o.backdoored())
            .map(|o| o.score)
            .collect();
        let neg: Vec<f64> = here
            .iter()
            .filter(|o| !o.backdoored())
            .map(|o| o.score)
            .collect();
        let pts: Vec<String> = roc(&pos, &neg)
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", PAD + x * SIZE, PAD + (1.0 - y) * SIZE))
            .collect();
        let colour = COLOURS[i % COLOURS.len()];
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{tx}\" y=\"{ty}\" fill=\"{colour}\">{det} (AUC {})</text>\n",
            pts.join(" "),
            cell(auc(&pos, &neg)),
            tx = PAD + SIZE * 0.45,
            ty = PAD + SIZE - 12.0 - 16.0 * i as f64,
        ));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(
        model: &str,
        det: &str,
        attack: &str,
        truth: Option<usize>,
        flagged: bool,
        target: Option<usize>,
        score: f64,
    ) -> Outcome {
        Outcome {
            model: model.into(),
            detector: det.into(),
            dataset: "mnist".into(),
            attack: attack.into(),
            truth_target: truth,
            flagged,
            target,
            most_anomalous: target.or(Some(0)),
            score,
            threshold: 2.0,
            seconds: 1.0,
        }
    }

    #[test]
    fn the_per_model_table_has_one_row_a_model_and_says_whether_a_flag_names_the_target() {
        let v = vec![
            o("bd-s0", "nc", "badnets", Some(3), true, Some(3), 2.5),
            o("bd-s0", "cepa", "badnets", Some(3), true, Some(5), 1.7),
            o("clean-s0", "cepa", "clean", None, false, None, 0.4),
            o(
                "clean-s0",
                "cepa-nc-agree",
                "clean",
                None,
                true,
                Some(2),
                1.2,
            ),
        ];
        let md = per_model_markdown(&v);
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| mnist |")).collect();
        assert_eq!(rows.len(), 2, "{md}");
        assert!(
            md.contains("| dataset | model | attack | true target | cepa | nc | cepa-nc-agree |"),
            "detectors in their fixed order: {md}"
        );
        assert_eq!(
            rows[0],
            "| mnist | bd-s0 | badnets | 3 | 1.70 @5 flagged (wrong target) | 2.50 @3 flagged (right) | - |"
        );
        assert_eq!(
            rows[1],
            "| mnist | clean-s0 | clean | - | 0.40 @0 | - | 1.20 @2 flagged |"
        );
        assert_eq!(per_model_markdown(&[]), "");
    }

    #[test]
    fn either_flags_what_one_detector_flags_with_that_detectors_target() {
        let mut v = vec![
            // CEPA alone flags m1 (class 4); NC alone flags m2 (class 6); neither flags m3;
            // both flag m4, NC by the larger margin; m5 has no NC line.
            o("m1", "cepa", "blend", Some(4), true, Some(4), 3.0),
            o("m1", "nc", "blend", Some(4), false, None, 1.0),
            o("m2", "cepa", "badnets", Some(6), false, None, 1.0),
            o("m2", "nc", "badnets", Some(6), true, Some(6), 3.0),
            o("m3", "cepa", "clean", None, false, None, 1.2),
            o("m3", "nc", "clean", None, false, None, 1.8),
            o("m4", "cepa", "sig", Some(1), true, Some(2), 3.0),
            o("m4", "nc", "sig", Some(1), true, Some(1), 5.0),
            o("m5", "cepa", "clean", None, false, None, 0.5),
        ];
        for x in v.iter_mut().filter(|x| x.detector == "cepa") {
            x.threshold = 1.5;
        }
        let e = either(&v, &VerdictConfig::default());
        assert_eq!(e.len(), 4, "only models both detectors judged");
        let t = VerdictConfig::default().threshold;
        assert!(e.iter().all(|x| x.detector == EITHER && x.threshold == t));
        assert!(e.iter().all(|x| x.flagged == (x.score > t)));
        let get = |m: &str| e.iter().find(|x| x.model == m).unwrap();
        assert_eq!((get("m1").flagged, get("m1").target), (true, Some(4)));
        assert!((get("m1").score - 2.0).abs() < 1e-12, "3.0 / 1.5");
        assert_eq!((get("m2").flagged, get("m2").target), (true, Some(6)));
        assert!((get("m2").score - 1.5).abs() < 1e-12, "3.0 / 2.0");
        assert_eq!((get("m3").flagged, get("m3").target), (false, None));
        assert!((get("m3").score - 0.9).abs() < 1e-12, "max(1.2/1.5, 1.8/2)");
        assert_eq!(get("m4").target, Some(1), "NC's 5/2 beats CEPA's 3/1.5");
        assert_eq!(get("m4").seconds, 2.0);
        let ev = evaluate(&[v.clone(), e].concat(), 0.05);
        let m = &ev[EITHER]["mnist"].families["all"];
        assert_eq!((m.tpr, m.fpr), (Some(1.0), Some(0.0)));
        assert_eq!(m.target_accuracy, Some(1.0));
    }

    #[test]
    fn agree_larger_needs_the_same_class_or_a_lone_detector_one_and_a_half_times_as_sure() {
        let mut v = vec![
            // m1: both single out class 4, only CEPA over its threshold -> flagged, class 4.
            o("m1", "cepa", "blend", Some(4), true, Some(4), 2.0),
            o("m1", "nc", "blend", Some(4), false, None, 1.0),
            // m2: CEPA over its threshold at class 8, NC's most anomalous is 6 -> 2.0/1.5
            // = 1.33 < 1.5: not flagged (it would be under `either`).
            o("m2", "cepa", "clean", None, true, Some(8), 2.0),
            o("m2", "nc", "clean", None, false, None, 1.0),
            // m3: NC alone at 3.2 (> 1.5 x 2) at class 6, CEPA's class 1 -> flagged, class 6.
            o("m3", "cepa", "badnets", Some(6), false, None, 1.0),
            o("m3", "nc", "badnets", Some(6), true, Some(6), 3.2),
        ];
        for x in v.iter_mut() {
            if x.detector == "cepa" {
                x.threshold = 1.5;
            }
        }
        v[1].most_anomalous = Some(4);
        v[3].most_anomalous = Some(6);
        v[4].most_anomalous = Some(1);
        let larger = VerdictConfig {
            agree_score: AgreeScore::Larger,
            ..VerdictConfig::default()
        };
        let a = agree(&v, &larger);
        let e = either(&v, &larger);
        let t = larger.threshold;
        assert!(a.iter().all(|x| x.detector == AGREE && x.threshold == t));
        assert!(a.iter().all(|x| x.flagged == (x.score > t)));
        let get = |set: &[Outcome], m: &str| set.iter().find(|x| x.model == m).unwrap().clone();
        assert_eq!(
            (get(&a, "m1").flagged, get(&a, "m1").target),
            (true, Some(4))
        );
        assert!(
            (get(&a, "m1").score - 2.0 / 1.5).abs() < 1e-12,
            "agreeing: no discount"
        );
        assert!(get(&e, "m2").flagged, "either flags m2");
        let m2 = get(&a, "m2");
        assert_eq!(
            (m2.flagged, m2.target, m2.most_anomalous),
            (false, None, Some(8))
        );
        assert!((m2.score - 2.0 / 1.5 / 1.5).abs() < 1e-12);
        assert_eq!(
            (get(&a, "m3").flagged, get(&a, "m3").target),
            (true, Some(6))
        );
        assert!((get(&a, "m3").score - 1.6 / 1.5).abs() < 1e-12);
        // With no NC class to compare, the lone-detector rule applies.
        let mut w = v.clone();
        w[1].most_anomalous = None;
        assert!((get(&agree(&w, &larger), "m1").score - 2.0 / 1.5 / 1.5).abs() < 1e-12);
    }

    #[test]
    fn agree_mean_needs_both_detectors_behind_a_shared_class() {
        let cepa = |m: &str, score: f64, class: usize| Outcome {
            threshold: 1.5,
            most_anomalous: Some(class),
            ..o(m, "cepa", "clean", None, false, None, score)
        };
        let nc = |m: &str, score: f64, class: usize| Outcome {
            most_anomalous: Some(class),
            ..o(m, "nc", "clean", None, false, None, score)
        };
        let v = vec![
            // m1: CEPA 1.2 x its threshold at class 8, NC 0.55 x at class 8 too: the mean 0.875
            // (over 1.2 / 1.5 = 0.8) is under 0.978; `larger` would say 1.2.
            cepa("m1", 1.8, 8),
            nc("m1", 1.1, 8),
            // m2: both over their thresholds at class 3: the mean (1.3 + 1.1) / 2 = 1.2.
            cepa("m2", 1.95, 3),
            nc("m2", 2.2, 3),
            // m3: CEPA sure (2.0 x) at class 5, NC at 0.4 x on the same class: the mean 1.2 is
            // under CEPA's lone 2.0 / 1.5 = 1.33, which is the score: sharing a class never
            // scores under disagreeing.
            cepa("m3", 3.0, 5),
            nc("m3", 0.8, 5),
            // m4: the same CEPA score as m1, NC elsewhere: 1.2 / 1.5 = 0.8.
            cepa("m4", 1.8, 8),
            nc("m4", 1.1, 2),
        ];
        let cfg = VerdictConfig::default();
        assert_eq!(cfg.agree_score, AgreeScore::Mean);
        let a = agree(&v, &cfg);
        let get = |m: &str| a.iter().find(|x| x.model == m).unwrap().clone();
        let close = |x: f64, y: f64| (x - y).abs() < 1e-12;
        let m1 = get("m1");
        assert!(close(m1.score, (1.2 + 0.55) / 2.0), "{}", m1.score);
        assert_eq!(
            (m1.flagged, m1.target, m1.most_anomalous),
            (false, None, Some(8))
        );
        let m2 = get("m2");
        assert!(close(m2.score, 1.2), "{}", m2.score);
        assert_eq!((m2.flagged, m2.target), (true, Some(3)));
        let m3 = get("m3");
        assert!(
            close(m3.score, 2.0 / 1.5),
            "the lone score where it is more"
        );
        assert_eq!((m3.flagged, m3.target), (true, Some(5)));
        assert!(close(get("m4").score, 1.2 / 1.5));
        assert!(!get("m4").flagged);
        // The same scans under `larger`: m1 is flagged on CEPA's word alone.
        let larger = VerdictConfig {
            agree_score: AgreeScore::Larger,
            ..VerdictConfig::default()
        };
        let b = agree(&v, &larger);
        let m1 = b.iter().find(|x| x.model == "m1").unwrap();
        assert!(close(m1.score, 1.2) && m1.flagged);
        // Each model's score, in words: the two ratios, their classes and the deciding term.
        let words = |m: &str, how, cfg: &VerdictConfig| {
            let of = |det: &str| {
                v.iter()
                    .find(|x| x.model == m && x.detector == det)
                    .unwrap()
            };
            explain(of("cepa"), of("nc"), None, how, cfg)
        };
        assert_eq!(
            words("m1", Combination::Agree, &cfg),
            "CEPA 1.20 x its threshold at class 8, Neural Cleanse 0.55 x at class 8: the same \
             class, their mean 0.88"
        );
        assert!(
            words("m3", Combination::Agree, &cfg).ends_with(
                "the same class, but the larger divided by 1.5 (one detector alone) is more \
                 than their mean 1.33"
            ),
            "{}",
            words("m3", Combination::Agree, &cfg)
        );
        assert!(words("m4", Combination::Agree, &cfg).ends_with(
            "at class 2: different classes, the larger divided by 1.5 (one detector alone) 0.80"
        ));
        assert!(
            words("m1", Combination::Agree, &larger).ends_with("the same class, the larger 1.20")
        );
        assert!(words("m4", Combination::Either, &cfg).ends_with(": the larger 1.20"));
        assert!(cfg.validate().is_ok());
        let rule = Combination::Agree.rule(&cfg);
        assert!(rule.contains("mean") && rule.contains("0.978"), "{rule}");
    }

    /// A stimulation report of `classes` classes whose channels' reading singles out `class`.
    fn stim_report(
        index: f64,
        class: usize,
        classes: usize,
    ) -> crate::detect::stimulate::StimulationReport {
        let mut margins = vec![0.0; classes];
        margins[class] = 1.0;
        crate::detect::stimulate::StimulationReport {
            layer: "pool2".into(),
            shape: vec![32, 5, 5],
            channel_axis: 0,
            channels: 32,
            levels: 8,
            quantile: 0.1,
            images: 200,
            margins,
            indices: vec![0.0; classes],
            class,
            index,
            channel: 3,
            group: 1,
            positions: None,
            positions_skipped: None,
            level: 1.0,
            carried: 1.0,
            seconds: 0.2,
        }
    }

    /// A clean model's outcome of detector `det`: `rel` times its threshold, at `class`.
    fn voice(m: &str, det: &str, rel: f64, class: usize) -> Outcome {
        Outcome {
            most_anomalous: Some(class),
            ..o(m, det, "clean", None, false, None, 2.0 * rel)
        }
    }

    /// Stimulation's outcome under the default rule for a reading of `index` at `class`.
    fn stim_voice(m: &str, index: f64, class: usize, classes: usize) -> Outcome {
        let report = stim_report(index, class, classes);
        stimulation_outcome(
            &voice(m, "cepa", 0.0, 0),
            &report,
            &VerdictConfig::default(),
        )
        .unwrap()
    }

    #[test]
    fn agree_sum_adds_a_third_voice_at_the_same_class_and_is_the_mean_of_two() {
        let stim = |m: &str, index: f64, class: usize| stim_voice(m, index, class, 10);
        let v = vec![
            // m1: all three at class 6, each under its threshold (judge-s40's BadNets s4000).
            voice("m1", "cepa", 0.65, 6),
            voice("m1", "nc", 0.65, 6),
            stim("m1", 8.0 * 0.73, 6),
            // m2: two at class 3, stimulation elsewhere: `sum` is the pair's mean.
            voice("m2", "cepa", 1.2, 3),
            voice("m2", "nc", 0.6, 3),
            stim("m2", 8.0 * 0.9, 5),
        ];
        let mean = VerdictConfig::default();
        let sum = VerdictConfig {
            agree_score: AgreeScore::Sum,
            ..VerdictConfig::default()
        };
        let get = |cfg: &VerdictConfig, m: &str| {
            agree(&v, cfg).into_iter().find(|x| x.model == m).unwrap()
        };
        let close = |x: f64, y: f64| (x - y).abs() < 1e-9;
        let (a, b) = (get(&mean, "m1"), get(&sum, "m1"));
        assert!(
            close(a.score, (0.73 + 0.65) / 2.0) && !a.flagged,
            "{}",
            a.score
        );
        assert!(close(b.score, (0.65 + 0.65 + 0.73) / 2.0), "{}", b.score);
        assert_eq!((b.flagged, b.target), (true, Some(6)));
        let (a, b) = (get(&mean, "m2"), get(&sum, "m2"));
        assert!(close(a.score, 0.9) && close(b.score, 0.9));
        let of = |det: &str| {
            v.iter()
                .find(|x| x.model == "m1" && x.detector == det)
                .unwrap()
        };
        let words = explain(
            of("cepa"),
            of("nc"),
            Some(of(STIM)),
            Combination::Agree,
            &sum,
        );
        assert!(
            words.ends_with("all three at the same class, their sum over 2 1.02"),
            "{words}"
        );
        assert!(Combination::Agree.rule(&sum).contains("their sum over 2"));
        assert!(!Combination::Agree.rule(&mean).contains("sum"));
    }

    #[test]
    fn stimulation_is_a_third_voice_of_agree_only() {
        let stim = stim_voice;
        let v = vec![
            // m1: CEPA 1.03 x at class 9, NC 0.62 x at 9, stimulation 14.32 / 8 = 1.79 x at 9:
            // the best pair is CEPA and stimulation, (1.03 + 1.79) / 2 = 1.41.
            voice("m1", "cepa", 1.03, 9),
            voice("m1", "nc", 0.62, 9),
            stim("m1", 14.32, 9, 10),
            // m2: three classes, each low: the largest alone, stimulation's 0.78 / 1.5.
            voice("m2", "cepa", 0.6, 1),
            voice("m2", "nc", 0.5, 9),
            stim("m2", 6.24, 7, 10),
            // m3: stimulation alone, sure: 12.8 / 8 / 1.5 = 1.07 at its class 4.
            voice("m3", "cepa", 0.5, 1),
            voice("m3", "nc", 0.9, 2),
            stim("m3", 12.8, 4, 10),
            // m4: no stimulation (a fully connected network): the two detectors' rule.
            voice("m4", "cepa", 1.2, 3),
            voice("m4", "nc", 1.0, 3),
        ];
        let cfg = VerdictConfig::default();
        let a = agree(&v, &cfg);
        let get = |m: &str| a.iter().find(|x| x.model == m).unwrap().clone();
        let close = |x: f64, y: f64| (x - y).abs() < 1e-9;
        let m1 = get("m1");
        assert!(close(m1.score, (1.03 + 14.32 / 8.0) / 2.0), "{}", m1.score);
        assert_eq!((m1.flagged, m1.target), (true, Some(9)));
        let m2 = get("m2");
        assert!(close(m2.score, 6.24 / 8.0 / 1.5), "{}", m2.score);
        assert_eq!((m2.flagged, m2.most_anomalous), (false, Some(7)));
        let m3 = get("m3");
        assert!(close(m3.score, 12.8 / 8.0 / 1.5), "{}", m3.score);
        assert_eq!((m3.flagged, m3.target), (true, Some(4)));
        assert!(close(get("m4").score, 1.1) && get("m4").target == Some(3));
        // Off, stimulation changes nothing: m1 is the two detectors' mean.
        let off = VerdictConfig {
            stimulation_threshold: 0.0,
            ..VerdictConfig::default()
        };
        let a0 = agree(&v, &off);
        let m1 = a0.iter().find(|x| x.model == "m1").unwrap();
        assert!(close(m1.score, (1.03 + 0.62) / 2.0) && !m1.flagged);
        // Not a voice of `either`: the larger of CEPA's and NC's.
        let e = either(&v, &cfg);
        assert!(close(
            e.iter().find(|x| x.model == "m3").unwrap().score,
            0.9
        ));
        // Its threshold grows with the class count as the others' do.
        assert!(close(
            stim("m5", 1.0, 0, 43).threshold,
            8.0 * (43f64.ln() / 10f64.ln()).sqrt()
        ));
        assert_eq!(cfg.stimulation_threshold_for(10), Some(8.0));
        assert_eq!(off.stimulation_threshold_for(10), None);
        // In words, the pair that decided.
        let of = |m: &str, det: &str| {
            v.iter()
                .find(|x| x.model == m && x.detector == det)
                .unwrap()
        };
        let words = explain(
            of("m1", "cepa"),
            of("m1", "nc"),
            Some(of("m1", STIM)),
            Combination::Agree,
            &cfg,
        );
        assert_eq!(
            words,
            "CEPA 1.03 x its threshold at class 9, Neural Cleanse 0.62 x at class 9, stimulation \
             1.79 x at class 9: CEPA and stimulation at the same class, their mean 1.41"
        );
        let words = explain(
            of("m3", "cepa"),
            of("m3", "nc"),
            Some(of("m3", STIM)),
            Combination::Agree,
            &cfg,
        );
        assert!(
            words.ends_with(
                "stimulation alone, the largest divided by 1.5 (no two at one class say more) 1.07"
            ),
            "{words}"
        );
        let bad = VerdictConfig {
            stimulation_threshold: -1.0,
            ..VerdictConfig::default()
        };
        assert!(bad.validate().is_err());
        assert!(Combination::Agree.rule(&cfg).contains("third voice"));
        assert!(!Combination::Either.rule(&cfg).contains("third voice"));
    }

    #[test]
    fn the_stimulation_voice_is_the_larger_of_its_two_readings() {
        use crate::detect::stimulate::{PositionStimulation, StimulationReport};
        let cepa = o("m", "cepa", "badnets", Some(1), false, None, 1.0);
        let report = |positions: Option<(usize, f64)>| StimulationReport {
            index: 3.31,
            positions: positions.map(|(class, index)| PositionStimulation {
                reach: 4.0,
                values: 800,
                margins: vec![0.0; 10],
                indices: vec![0.0; 10],
                class,
                index,
                channel: 23,
                position: 24,
                level: 4.0,
                carried: 1.0,
                through: None,
            }),
            ..stim_report(3.31, 7, 10)
        };
        let cfg = VerdictConfig {
            stimulation_positions_threshold: 4.0,
            ..VerdictConfig::default()
        };
        let close = |x: f64, y: f64| (x - y).abs() < 1e-9;
        // Single values at class 1, 4.49 / 4 = 1.12 x, over the channels' 3.31 / 8 = 0.41 x.
        let s = stimulation_outcome(&cepa, &report(Some((1, 4.49))), &cfg).unwrap();
        assert_eq!(
            (s.most_anomalous, s.flagged, s.target),
            (Some(1), true, Some(1))
        );
        assert!(close(s.score / s.threshold, 4.49 / 4.0));
        // Weaker than the channels' reading: the channels speak.
        let s = stimulation_outcome(&cepa, &report(Some((1, 1.2))), &cfg).unwrap();
        assert_eq!((s.most_anomalous, s.flagged), (Some(7), false));
        assert!(close(s.score / s.threshold, 3.31 / 8.0));
        // Off, or no reading of single values (global pooling): the channels' reading.
        let off = VerdictConfig {
            stimulation_positions_threshold: 0.0,
            ..VerdictConfig::default()
        };
        let s = stimulation_outcome(&cepa, &report(Some((1, 4.49))), &off).unwrap();
        assert_eq!(s.most_anomalous, Some(7));
        // The default (5, frozen in session 40): 4.49 / 5 = 0.90 x, still over the channels'.
        let s = stimulation_outcome(&cepa, &report(Some((1, 4.49))), &VerdictConfig::default())
            .unwrap();
        assert_eq!((s.most_anomalous, s.flagged), (Some(1), false));
        assert!(close(s.score / s.threshold, 4.49 / 5.0));
        let s = stimulation_outcome(&cepa, &report(None), &cfg).unwrap();
        assert_eq!(s.most_anomalous, Some(7));
        // Paired in `agree` with Neural Cleanse at class 1: (1.25 + 1.12) / 2.
        let nc = Outcome {
            most_anomalous: Some(1),
            ..o("m", "nc", "badnets", Some(1), true, Some(1), 2.5)
        };
        let voices = vec![
            Outcome {
                most_anomalous: Some(9),
                ..cepa.clone()
            },
            nc,
            stimulation_outcome(&cepa, &report(Some((1, 4.49))), &cfg).unwrap(),
        ];
        let a = agree(&voices, &cfg);
        assert!(
            close(a[0].score, (1.25 + 4.49 / 4.0) / 2.0),
            "{}",
            a[0].score
        );
        assert_eq!(a[0].target, Some(1));
        assert!(
            Combination::Agree
                .rule(&cfg)
                .contains("single values counts over 4")
        );
        assert!(!Combination::Agree.rule(&off).contains("single values"));
        let bad = VerdictConfig {
            stimulation_positions_threshold: f64::NAN,
            ..VerdictConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn leave_one_dataset_out_chooses_on_the_others_and_judges_the_one_left_out() {
        let mut all = Vec::new();
        // Clean scores (own threshold 2): mnist 1.0..1.9, cifar 0.5..1.4, fashion 3.0, 3.2.
        for i in 0..10 {
            let mut m = o(
                &format!("mc{i}"),
                "cepa",
                "clean",
                None,
                false,
                None,
                1.0 + 0.1 * i as f64,
            );
            all.push(m.clone());
            m.model = format!("cc{i}");
            m.dataset = "cifar10".into();
            m.score -= 0.5;
            all.push(m);
        }
        for (i, score) in [3.0, 3.2].into_iter().enumerate() {
            let mut m = o(
                &format!("fc{i}"),
                "cepa",
                "clean",
                None,
                true,
                Some(0),
                score,
            );
            m.dataset = "fashion".into();
            all.push(m);
        }
        // Backdoored: fashion one at 3.1 (right target), cifar two at 2.5 (one wrong class).
        let mut f = o("fb", "cepa", "badnets", Some(3), true, Some(3), 3.1);
        f.dataset = "fashion".into();
        all.push(f);
        for (i, most) in [1, 5].into_iter().enumerate() {
            let mut c = o(
                &format!("cb{i}"),
                "cepa",
                "blend",
                Some(1),
                true,
                Some(most),
                2.5,
            );
            c.dataset = "cifar10".into();
            c.most_anomalous = Some(most);
            all.push(c);
        }
        let l = leave_one_dataset_out(&all, 0.05);
        let fold = |ds: &str| l.folds.iter().find(|f| f.dataset == ds).unwrap();
        // Leaving fashion out: 20 clean models (mnist, cifar), one may lie above: the second
        // highest, 1.8 / 2 = 0.9. Both fashion clean models (1.5, 1.6) are flagged, and the
        // backdoor (1.55).
        let fa = fold("fashion");
        assert_eq!(
            fa.chosen_on,
            vec!["cifar10".to_string(), "mnist".to_string()]
        );
        assert_eq!(fa.chosen_on_clean, 20);
        assert!((fa.threshold - 0.9).abs() < 1e-12, "{}", fa.threshold);
        assert_eq!((fa.tpr, fa.fpr), (Some(1.0), Some(1.0)));
        assert_eq!(fa.families["badnets"], (1, 1));
        // Leaving cifar out: mnist and fashion (12 clean), none may lie above: 3.2 / 2 = 1.6,
        // over the cifar backdoors' 1.25.
        let ci = fold("cifar10");
        assert!((ci.threshold - 1.6).abs() < 1e-12);
        assert_eq!((ci.tpr, ci.fpr), (Some(0.0), Some(0.0)));
        // Leaving mnist out: 12 clean, threshold 1.6 again; no backdoored mnist model.
        assert_eq!(fold("mnist").tpr, None);
        // Pooled over all 22 clean: one may lie above: 3.0 / 2.
        assert!((l.pooled["cepa"] - 1.5).abs() < 1e-12);
        assert_eq!(l.ran_with["cepa"], 2.0);
        // A cifar fold at a threshold under 1.25 counts the wrong class as flagged, not right.
        let low = leave_one_dataset_out(
            &all.iter()
                .filter(|o| o.dataset != "fashion")
                .cloned()
                .collect::<Vec<_>>(),
            0.05,
        );
        let c = low.folds.iter().find(|f| f.dataset == "cifar10").unwrap();
        assert!(
            (c.threshold - 0.95).abs() < 1e-12,
            "10 mnist clean: none above"
        );
        assert_eq!((c.tpr, c.tpr_right_target), (Some(1.0), Some(0.5)));
        assert_eq!(c.families["blend"], (1, 2));
        let md = leave_one_out_markdown(&l);
        assert!(md.contains("| cepa | fashion | cifar10, mnist (20) | 0.900 | 1.00 | 1.00 | 1.00 | badnets 1/1 |"), "{md}");
    }

    #[test]
    fn auc_matches_a_hand_count() {
        // pos {3, 1}, neg {2, 1, 0}: pairs won 3>2,3>1,3>0,1>0 = 4, tie 1=1 = 0.5 -> 4.5 / 6.
        assert!((auc(&[3.0, 1.0], &[2.0, 1.0, 0.0]).unwrap() - 0.75).abs() < 1e-12);
        assert_eq!(auc(&[1.0], &[]), None);
        let r = roc(&[3.0, 1.0], &[2.0, 1.0, 0.0]);
        assert_eq!(r.first(), Some(&(0.0, 0.0)));
        assert_eq!(r.last(), Some(&(1.0, 1.0)));
        assert!(r.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn metrics_count_verdicts_and_targets() {
        let all = [
            o("b1", "cepa", "badnets", Some(1), true, Some(1), 5.0),
            o("b2", "cepa", "badnets", Some(2), true, Some(3), 4.0),
            o("b3", "cepa", "badnets", Some(4), false, None, 1.0),
            o("c1", "cepa", "clean", None, false, None, 0.5),
            o("c2", "cepa", "clean", None, true, Some(0), 3.0),
        ];
        let refs: Vec<&Outcome> = all.iter().collect();
        let m = metrics(&refs);
        assert_eq!((m.n, m.n_backdoored, m.n_clean), (5, 3, 2));
        assert!(
            (m.detection_accuracy - 3.0 / 5.0).abs() < 1e-12,
            "b1, b2, c1 right"
        );
        assert_eq!(m.tpr, Some(2.0 / 3.0));
        assert_eq!(m.fpr, Some(0.5));
        assert_eq!(m.target_accuracy, Some(0.5), "b1 right, b2 wrong");
        // pos {5,4,1} vs neg {0.5,3}: 5>both, 4>both, 1>0.5 -> 5/6.
        assert!((m.auc.unwrap() - 5.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn calibration_keeps_the_clean_fpr_under_the_goal() {
        let clean: Vec<f64> = (0..20).map(f64::from).collect(); // 0..19
        let t = calibrate(&clean, 0.05).unwrap();
        let fp = clean.iter().filter(|&&s| s > t).count();
        assert_eq!(fp, 1, "5 % of 20 clean models may sit above it");
        assert_eq!(t, 18.0);
        let t0 = calibrate(&clean, 0.0).unwrap();
        assert_eq!(clean.iter().filter(|&&s| s > t0).count(), 0);
    }

    #[test]
    fn evaluation_groups_families_with_the_clean_models() {
        let all = vec![
            o("b1", "cepa", "badnets", Some(1), true, Some(1), 5.0),
            o("w1", "cepa", "wanet", Some(2), false, None, 1.0),
            o("c1", "cepa", "clean", None, false, None, 0.5),
            o("b1", "nc", "badnets", Some(1), true, Some(1), 3.0),
        ];
        let ev = evaluate(&all, 0.05);
        let cepa = &ev["cepa"]["mnist"];
        assert_eq!(cepa.families["badnets"].n, 2, "b1 + c1");
        assert_eq!(cepa.families["wanet"].tpr, Some(0.0));
        assert_eq!(cepa.families["all"].n, 3);
        assert_eq!(ev["nc"]["mnist"].families["all"].fpr, None);
        let md = markdown(&ev);
        assert!(md.contains("| badnets | cepa | 2 (1/1) | 1.00 |"), "{md}");
        let svg = roc_svg(&all, "mnist");
        assert!(
            svg.starts_with("<svg") && svg.contains("cepa (AUC 1.00)"),
            "{svg}"
        );
    }
}
