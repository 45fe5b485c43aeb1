//! A scan read against scans of clean reference models of the same task (`cepa scan
//! --reference`): each class's CEPA anomaly index beside its mean over the references, and the
//! difference. A decision aid that changes no verdict.
//!
//! Why: the classes that stand out on a clean model are mostly the same few per task and network
//! (CIFAR-10's automobile and truck), so a backdoor's target has to stand out beyond what its
//! class does naturally. Measured on 263 development models (EVALUATION.md, "Session 30"):
//! with the references' means subtracted, CEPA ranks 103 of 159 targets above every clean model
//! of their network against 72 raw; as a threshold, 4-9 references were too few to beat the
//! default rule, so no verdict is taken from them.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Adjusted indices closer than this are equal (a scan read back from its own JSON differs in
/// the last bits).
const TIE: f64 = 1e-9;

/// One class against the references.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReferenceClass {
    pub class: usize,
    /// CEPA's combined anomaly index of this scan.
    pub index: f64,
    /// Its mean over the reference scans.
    pub reference_mean: f64,
    /// `index - reference_mean`.
    pub adjusted: f64,
}

/// This scan against its references.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReferenceComparison {
    /// The reference reports, as given.
    pub files: Vec<String>,
    pub classes: Vec<ReferenceClass>,
    /// The class with the largest adjusted index (the first of equals).
    pub most_anomalous: usize,
    /// What the comparison says about `class`, the class this scan singled out, in words.
    pub notes: Vec<String>,
}

/// CEPA's per-class combined anomaly indices of a scan report (`cepa scan --format json`, or the
/// `report.json` of `--out`), in class order, read from `decision.classes`. An error names
/// `path` and what is missing.
pub fn class_indices(json: &Value, path: &Path) -> Result<Vec<f64>> {
    let bad = |what: &str| {
        Error::Config(format!(
            "reference {}: {what} (expected a cepa scan report: `cepa scan --format json` or \
             report.json)",
            path.display()
        ))
    };
    let classes = json
        .pointer("/decision/classes")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no decision.classes"))?;
    let mut out = vec![f64::NAN; classes.len()];
    for c in classes {
        let k = c
            .get("class")
            .and_then(Value::as_u64)
            .ok_or_else(|| bad("a class without its number"))? as usize;
        let v = c
            .get("anomaly_index")
            .and_then(Value::as_f64)
            .ok_or_else(|| bad(&format!("class {k} without an anomaly_index")))?;
        let slot = out
            .get_mut(k)
            .ok_or_else(|| bad(&format!("class {k} out of 0..{}", classes.len())))?;
        if !slot.is_nan() {
            return Err(bad(&format!("class {k} listed twice")));
        }
        if !v.is_finite() {
            return Err(bad(&format!("class {k}'s anomaly_index is not a number")));
        }
        *slot = v;
    }
    Ok(out)
}

/// Read the reference reports in `paths` and check that each has `classes` classes. Done before
/// any optimisation, so a wrong file costs nothing.
pub fn read_references(paths: &[impl AsRef<Path>], classes: usize) -> Result<Vec<Vec<f64>>> {
    paths
        .iter()
        .map(|p| {
            let p = p.as_ref();
            let text = std::fs::read_to_string(p)
                .map_err(|e| Error::Config(format!("reference {}: {e}", p.display())))?;
            let json: Value = serde_json::from_str(&text)
                .map_err(|e| Error::Config(format!("reference {}: not JSON ({e})", p.display())))?;
            let v = class_indices(&json, p)?;
            if v.len() != classes {
                return Err(Error::Mismatch(format!(
                    "reference {}: a scan of {} classes, but this model has {classes}",
                    p.display(),
                    v.len()
                )));
            }
            Ok(v)
        })
        .collect()
}

/// This scan's per-class indices `index` against the references' (`refs`, each as long), and
/// notes on `class`, the class the scan singled out (its target, or its most anomalous class).
pub fn compare(
    index: &[f64],
    refs: &[Vec<f64>],
    files: Vec<String>,
    class: usize,
) -> Result<ReferenceComparison> {
    if refs.is_empty() || refs.iter().any(|r| r.len() != index.len()) {
        return Err(Error::Mismatch(format!(
            "{} reference scan(s) for {} classes",
            refs.len(),
            index.len()
        )));
    }
    let n = refs.len() as f64;
    let classes: Vec<ReferenceClass> = index
        .iter()
        .enumerate()
        .map(|(k, &v)| {
            let mean = refs.iter().map(|r| r[k]).sum::<f64>() / n;
            ReferenceClass {
                class: k,
                index: v,
                reference_mean: mean,
                adjusted: v - mean,
            }
        })
        .collect();
    let most = classes
        .iter()
        .fold(&classes[0], |b, c| {
            if c.adjusted > b.adjusted + TIE { c } else { b }
        })
        .class;
    let at = classes.get(class).ok_or_else(|| {
        Error::Mismatch(format!(
            "class {class} is not one of the {} classes",
            index.len()
        ))
    })?;
    let scans = if refs.len() == 1 {
        "the reference clean scan".to_string()
    } else {
        format!("the {} reference clean scans", refs.len())
    };
    // Where this class stands among the references' own classes: first, or its rank.
    let rank = 1 + classes
        .iter()
        .filter(|c| c.reference_mean > at.reference_mean)
        .count();
    let mut notes = vec![format!(
        "class {class}: index {:.2} here, {:.2} on average in {scans} (rank {rank} of {} there); \
         {:.2} above them",
        at.index,
        at.reference_mean,
        classes.len(),
        at.adjusted
    )];
    // Only a difference that shows at the two decimals printed.
    if classes[most].adjusted - at.adjusted >= 0.005 {
        let m = &classes[most];
        notes.push(format!(
            "against the references, class {most} stands out most ({:.2} here, {:.2} in them, \
             {:.2} above), not class {class}",
            m.index, m.reference_mean, m.adjusted
        ));
    }
    Ok(ReferenceComparison {
        files,
        classes,
        most_anomalous: most,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(indices: &[f64]) -> Value {
        let classes: Vec<Value> = indices
            .iter()
            .enumerate()
            .map(|(k, v)| json!({ "class": k, "anomaly_index": v }))
            .collect();
        json!({ "decision": { "classes": classes } })
    }

    #[test]
    fn a_class_that_stands_out_in_the_references_too_is_discounted() {
        // Class 1 stands out here and in both references; class 3 only here.
        let here = [0.1, 1.6, 0.2, 1.2];
        let refs = vec![vec![0.0, 1.5, 0.3, 0.1], vec![0.2, 1.7, 0.1, 0.1]];
        let c = compare(&here, &refs, vec!["a".into(), "b".into()], 1).unwrap();
        assert_eq!(c.most_anomalous, 3);
        assert!((c.classes[1].reference_mean - 1.6).abs() < 1e-12);
        assert!(c.classes[1].adjusted.abs() < 1e-12);
        assert!((c.classes[3].adjusted - 1.1).abs() < 1e-12);
        assert!(c.notes[0].contains("rank 1 of 4"), "{:?}", c.notes);
        assert!(
            c.notes[1].contains("class 3 stands out most"),
            "{:?}",
            c.notes
        );
        // Singled out at the class that also stands out against the references: one note.
        let c = compare(&here, &refs, vec![], 3).unwrap();
        assert_eq!(c.notes.len(), 1);
        assert!(c.notes[0].contains("rank 3 of 4"), "{:?}", c.notes);
        // A scan against itself, up to the last bits: nothing stands out, no second note.
        let own = vec![here.iter().map(|v| v * (1.0 + 1e-15)).collect::<Vec<f64>>()];
        let c = compare(&here, &own, vec![], 1).unwrap();
        assert_eq!((c.most_anomalous, c.notes.len()), (0, 1), "{:?}", c.notes);
    }

    #[test]
    fn a_report_is_read_by_class_and_a_bad_one_is_refused_naming_it() {
        let p = Path::new("ref.json");
        // Listed out of order: read by class number.
        let j = json!({ "decision": { "classes": [
            { "class": 1, "anomaly_index": 2.0 }, { "class": 0, "anomaly_index": -0.5 }
        ] } });
        assert_eq!(class_indices(&j, p).unwrap(), vec![-0.5, 2.0]);
        for (bad, says) in [
            (json!({ "verdict": "clean" }), "no decision.classes"),
            (
                json!({ "decision": { "classes": [{ "class": 0 }] } }),
                "without an anomaly_index",
            ),
            (
                json!({ "decision": { "classes": [{ "class": 2, "anomaly_index": 0.0 }] } }),
                "out of 0..1",
            ),
            (
                json!({ "decision": { "classes": [
                    { "class": 0, "anomaly_index": 0.0 }, { "class": 0, "anomaly_index": 1.0 }
                ] } }),
                "listed twice",
            ),
        ] {
            let e = class_indices(&bad, p).unwrap_err().to_string();
            assert!(e.contains("ref.json") && e.contains(says), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("three.json");
        std::fs::write(&f, report(&[0.0, 1.0, 2.0]).to_string()).unwrap();
        assert_eq!(
            read_references(&[&f], 3).unwrap(),
            vec![vec![0.0, 1.0, 2.0]]
        );
        let e = read_references(&[&f], 10).unwrap_err().to_string();
        assert!(
            e.contains("three.json") && e.contains("3 classes") && e.contains("10"),
            "{e}"
        );
        let g = dir.path().join("garbage.json");
        std::fs::write(&g, "{ not json").unwrap();
        let e = read_references(&[&g], 3).unwrap_err().to_string();
        assert!(e.contains("garbage.json") && e.contains("not JSON"), "{e}");
    }
}
