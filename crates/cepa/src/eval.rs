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

/// How much surer than its own threshold a detector must be to flag a model alone under
/// [`Combination::Agree`], when the other detector's most anomalous class is another one. 1.5
/// (EVALUATION.md, session 6): on the 85 models both detectors judged it kept every zoo and
/// real detection of the `either` rule but two (MNIST 23/25, CIFAR-10 16/25, real 2/2) and
/// took the Fashion-MNIST clean models flagged from 7 of 8 to 1; 1.3 left 4 of 8, 1.75 lost
/// two more CIFAR-10 detections.
pub const LONE_FACTOR: f64 = 1.5;

/// How two detectors' verdicts on one model become one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combination {
    /// Backdoored when either detector flags the model.
    Either,
    /// Backdoored when either detector flags the model at the class the other one also finds
    /// most anomalous; a detector whose class the other does not share must clear
    /// [`LONE_FACTOR`] times its threshold. Two detectors that work differently (an input mask
    /// against embedded perturbations) rarely single out the same class by chance, while a
    /// class that is only naturally easy to reach tends to stand out for one of them.
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
    pub fn rule(self) -> String {
        match self {
            Combination::Either => "backdoored when CEPA or Neural Cleanse flags the model; \
                score = the larger of the two scores over their own thresholds"
                .into(),
            Combination::Agree => format!(
                "backdoored when CEPA or Neural Cleanse flags the model and both find the same \
                 class most anomalous, or when one alone clears {LONE_FACTOR} times its \
                 threshold; score = the larger of the two scores over their own thresholds, \
                 divided by {LONE_FACTOR} when the classes differ"
            ),
        }
    }
}

/// A combined detector, `cepa-or-nc`, for every model that both CEPA and Neural Cleanse judged: it
/// flags a model when either does ([`combine`] with [`Combination::Either`]).
pub fn either(outcomes: &[Outcome]) -> Vec<Outcome> {
    combine(outcomes, Combination::Either)
}

/// A combined detector, `cepa-nc-agree` ([`combine`] with [`Combination::Agree`]).
pub fn agree(outcomes: &[Outcome]) -> Vec<Outcome> {
    combine(outcomes, Combination::Agree)
}

/// One combined outcome (detector `how.name()`) for every model that both CEPA and Neural
/// Cleanse judged. Its score is the larger of the two scores each divided by its own threshold,
/// for [`Combination::Agree`] divided again by [`LONE_FACTOR`] when the two most anomalous
/// classes differ; its threshold is 1 and `flagged == score > 1`. Its target and most anomalous
/// class are those of the detector with the larger ratio. Its time is the sum of the two.
pub fn combine(outcomes: &[Outcome], how: Combination) -> Vec<Outcome> {
    let nc: BTreeMap<&str, &Outcome> = outcomes
        .iter()
        .filter(|o| o.detector == "nc")
        .map(|o| (o.model.as_str(), o))
        .collect();
    let ratio = |o: &Outcome| o.score / o.threshold;
    outcomes
        .iter()
        .filter(|o| o.detector == "cepa")
        .filter_map(|c| nc.get(c.model.as_str()).map(|n| (c, *n)))
        .map(|(c, n)| {
            let lead = if ratio(n) > ratio(c) { n } else { c };
            let same = c.most_anomalous.is_some() && c.most_anomalous == n.most_anomalous;
            let discount = match how {
                Combination::Agree if !same => LONE_FACTOR,
                _ => 1.0,
            };
            let score = ratio(lead) / discount;
            let flagged = score > 1.0;
            Outcome {
                detector: how.name().into(),
                flagged,
                target: if flagged {
                    lead.most_anomalous.or(lead.target)
                } else {
                    None
                },
                most_anomalous: lead.most_anomalous,
                score,
                threshold: 1.0,
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
        let e = either(&v);
        assert_eq!(e.len(), 4, "only models both detectors judged");
        assert!(e.iter().all(|x| x.detector == EITHER && x.threshold == 1.0));
        assert!(e.iter().all(|x| x.flagged == (x.score > 1.0)));
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
    fn agree_needs_the_same_class_or_a_lone_detector_one_and_a_half_times_as_sure() {
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
        let a = agree(&v);
        let e = either(&v);
        assert!(a.iter().all(|x| x.detector == AGREE && x.threshold == 1.0));
        assert!(a.iter().all(|x| x.flagged == (x.score > 1.0)));
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
        assert!((m2.score - 2.0 / 1.5 / LONE_FACTOR).abs() < 1e-12);
        assert_eq!(
            (get(&a, "m3").flagged, get(&a, "m3").target),
            (true, Some(6))
        );
        assert!((get(&a, "m3").score - 1.6 / LONE_FACTOR).abs() < 1e-12);
        // With no NC class to compare, the lone-detector rule applies.
        let mut w = v.clone();
        w[1].most_anomalous = None;
        assert!((get(&agree(&w), "m1").score - 2.0 / 1.5 / LONE_FACTOR).abs() < 1e-12);
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
