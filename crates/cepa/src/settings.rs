//! One settings file for every detector command: `cepa scan|invert|eval --config FILE`.
//!
//! A TOML file with up to three sections, each optional and each field optional (the defaults
//! fill the rest); an unknown key is an error naming it, so a typo never passes silently:
//!
//! ```toml
//! [scan]            # stage 1 and the verdict: per_class, holdout_per_class, layer, seed, ...
//! per_class = 20
//! [scan.cepa]       # the optimisation (steps, lr, lambda schedule, ...)
//! steps = 200
//! [scan.decision]   # statistics, combine rule, threshold
//! threshold = 1.5
//! [invert]          # stage 2 (pi, steps, kind, ...)
//! pi = 0.99
//! [nc]              # the Neural Cleanse baseline
//! steps = 300
//! [verdict]         # CEPA and Neural Cleanse combined (scan --verdict agree|either)
//! threshold = 0.978
//! agree_score = "mean"  # or "larger", "sum"
//! ```
//!
//! Command-line flags override the file. The resolved settings are written into every report.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::detect::ScanConfig;
use crate::detect::invert::InvertConfig;
use crate::detect::nc::NcConfig;
use crate::error::{Error, Result};
use crate::eval::VerdictConfig;

/// The resolved settings of the detectors.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub scan: ScanConfig,
    pub invert: InvertConfig,
    pub nc: NcConfig,
    pub verdict: VerdictConfig,
}

impl Settings {
    /// Read a settings file; `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read settings file {}: {e}", path.display()))
        })?;
        Self::parse(&text)
            .map_err(|e| Error::Config(format!("settings file {}: {e}", path.display())))
    }

    /// Parse settings from TOML text (the message says which key is wrong).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let s: Self = toml::from_str(text).map_err(|e| e.to_string())?;
        s.scan.cepa.validate().map_err(|e| e.to_string())?;
        s.scan.decision.validate().map_err(|e| e.to_string())?;
        s.invert.validate().map_err(|e| e.to_string())?;
        s.nc.validate().map_err(|e| e.to_string())?;
        s.verdict.validate().map_err(|e| e.to_string())?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_section_out_of_range_is_refused_naming_the_key() {
        let err = Settings::parse("[verdict]\nlone_factor = 0.5\n").unwrap_err();
        assert!(err.contains("lone_factor"), "{err}");
        let err = Settings::parse("[verdict]\nthreshold = -1.0\n").unwrap_err();
        assert!(err.contains("threshold"), "{err}");
        let s = Settings::parse("[verdict]\nthreshold = 1.2\n").unwrap();
        assert_eq!((s.verdict.threshold, s.verdict.lone_factor), (1.2, 1.5));
        let err = Settings::parse("[verdict]\nagree_score = \"max\"\n").unwrap_err();
        assert!(err.contains("agree_score") || err.contains("max"), "{err}");
        let s = Settings::parse("[verdict]\nagree_score = \"larger\"\n").unwrap();
        assert_eq!(s.verdict.agree_score, crate::eval::AgreeScore::Larger);
    }

    #[test]
    fn a_joint_table_is_read_and_a_bad_one_refused_naming_it() {
        let s =
            Settings::parse("[scan.decision.joint]\nmargin_excess = 0.5\nmargin_patch = 0.25\n")
                .unwrap();
        let j = &s.scan.decision.joint;
        assert_eq!(j.len(), 2);
        assert_eq!(j[&crate::detect::verdict::Statistic::MarginPatch], 0.25);
        // The rest of the rule keeps its defaults; the default has no joint table.
        assert!(Settings::default().scan.decision.joint.is_empty());
        assert_eq!(
            s.scan.decision.standalone,
            Settings::default().scan.decision.standalone
        );
        let err = Settings::parse("[scan.decision.joint]\nmargin_patch = 0.5\n").unwrap_err();
        assert!(err.contains("joint"), "{err}");
        let err = Settings::parse("[scan.decision.joint]\nmargin_patch = 0.5\nembed_norm = 0.5\n")
            .unwrap_err();
        assert!(err.contains("joint") && err.contains("embed_norm"), "{err}");
    }

    #[test]
    fn sections_override_only_the_fields_they_name() {
        let s = Settings::parse(
            "[scan]\nper_class = 20\n[scan.cepa]\nsteps = 7\n[invert]\npi = 0.99\n[nc]\nsteps = 9\n",
        )
        .unwrap();
        let d = Settings::default();
        assert_eq!(s.scan.per_class, 20);
        assert_eq!(s.scan.cepa.steps, 7);
        assert_eq!(s.invert.pi, 0.99);
        assert_eq!(s.nc.steps, 9);
        // Untouched fields keep their defaults.
        assert_eq!(s.scan.holdout_per_class, d.scan.holdout_per_class);
        assert_eq!(s.scan.decision.threshold, d.scan.decision.threshold);
        assert_eq!(s.invert.steps, d.invert.steps);
        assert_eq!(s.nc.threshold, d.nc.threshold);
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_is_named() {
        let e = Settings::parse("[invert]\npie = 0.9\n").unwrap_err();
        assert!(e.contains("pie"), "{e}");
        let e = Settings::parse("[scan.cepa]\nsteps = \"many\"\n").unwrap_err();
        assert!(e.contains("steps"), "{e}");
        let e = Settings::parse("[invert]\npi = 1.5\n").unwrap_err();
        assert!(e.contains("pi"), "{e}");
        let e = Settings::parse("[detector]\nx = 1\n").unwrap_err();
        assert!(e.contains("detector"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = Settings::load(Some(Path::new("/no/such/cepa-settings.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/cepa-settings.toml"), "{e}");
        assert_eq!(Settings::load(None).unwrap().scan.per_class, 10);
    }

    #[test]
    fn the_readme_example_parses() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("### Settings file")
            .nth(1)
            .expect("README has a settings section");
        let block = section
            .split("```toml\n")
            .nth(1)
            .and_then(|b| b.split("```").next())
            .expect("with a TOML example");
        let s = Settings::parse(block).unwrap();
        assert_eq!(s.scan.per_class, 20);
        assert_eq!(s.invert.confidence, 0.99);
    }
}
