//! Poisoning transforms (backdoor attacks), one per file, used to implant backdoors in the
//! project's own models and to measure attack success.
//!
//! An attack is a [`Trigger`] (what is stamped on an image) plus a poisoning plan (which training
//! images carry it and are relabelled to the target): [`poison_with`] does the second part for any
//! trigger, so most attack files only describe their trigger. WaNet (noise mode) and clean-label
//! SIG have plans of their own. [`AttackConfig`] names one attack of any family, as it appears in
//! a TOML or JSON config (`kind = "badnets"`, ...).

pub mod badnets;
pub mod blend;
pub mod chessboard;
pub mod sig;
pub mod wanet;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use badnets::{BadNetsConfig, Colour, Placement};
pub use blend::{BlendConfig, BlendTrigger};
pub use chessboard::ChessboardConfig;
pub use sig::SigConfig;
pub use wanet::{WanetConfig, WanetPoison, WanetTrigger};

use crate::data::ImageSet;
use crate::error::{Error, Result};

/// A trigger: an in-place transform of one CHW image with pixels in `[0, 1]`.
pub trait Trigger {
    /// Stamp the trigger on one image of `c x h x w` values. Errors when the image does not have
    /// that many values or the trigger does not fit it.
    fn apply(&self, chw: &mut [f32], c: usize, h: usize, w: usize) -> Result<()>;

    /// Stamp the trigger on image `n` of a set. A trigger that varies per image (a BadNets patch
    /// at a random place) draws its variation from `n`; the others ignore it.
    fn apply_nth(&self, chw: &mut [f32], c: usize, h: usize, w: usize, n: usize) -> Result<()> {
        let _ = n;
        self.apply(chw, c, h, w)
    }
}

/// Which images of `labels` to poison: `round(rate * eligible)` of the eligible ones, chosen with a
/// ChaCha8 rng seeded by `seed`, returned in increasing order. Eligible: label in `sources` when
/// given, otherwise any label other than `target`.
pub fn poison_indices(
    labels: &[usize],
    target: usize,
    rate: f64,
    sources: Option<&[usize]>,
    seed: u64,
) -> Result<Vec<usize>> {
    check_rate(rate)?;
    if let Some(s) = sources
        && s.contains(&target)
    {
        return Err(Error::Config(format!(
            "source classes {s:?} include the target class {target}"
        )));
    }
    let eligible: Vec<usize> = labels
        .iter()
        .enumerate()
        .filter(|&(_, &l)| match sources {
            Some(s) => s.contains(&l),
            None => l != target,
        })
        .map(|(i, _)| i)
        .collect();
    let count = (rate * eligible.len() as f64).round() as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    Ok(sample_sorted(&eligible, count, &mut rng))
}

/// Errors unless `rate` is a fraction in `[0, 1]`.
pub(crate) fn check_rate(rate: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&rate) {
        return Err(Error::Config(format!(
            "poisoning rate {rate} must be in [0, 1]"
        )));
    }
    Ok(())
}

/// `count` distinct values of `eligible` (`count <= eligible.len()`) drawn with `rng`, in
/// increasing order of their position in `eligible`.
pub(crate) fn sample_sorted(eligible: &[usize], count: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut picks = rand::seq::index::sample(rng, eligible.len(), count).into_vec();
    picks.sort_unstable();
    picks.into_iter().map(|k| eligible[k]).collect()
}

/// A poisoned copy of `set`: the images chosen by [`poison_indices`] carry `trigger` and are
/// relabelled to `target`. Also returns, per image, whether it was poisoned.
pub fn poison_with(
    set: &ImageSet,
    trigger: &impl Trigger,
    target: usize,
    rate: f64,
    sources: Option<&[usize]>,
    seed: u64,
) -> Result<(ImageSet, Vec<bool>)> {
    check_target(set, target)?;
    let chosen = poison_indices(&set.labels, target, rate, sources, seed)?;
    stamp_at(set, trigger, &chosen, Some(target))
}

/// Errors unless `target` is one of the classes of `set`.
pub(crate) fn check_target(set: &ImageSet, target: usize) -> Result<()> {
    if target >= set.num_classes {
        return Err(Error::Config(format!(
            "target class {target} is outside the {} classes of {}",
            set.num_classes,
            set.source.display()
        )));
    }
    Ok(())
}

/// A copy of `set` with `trigger` stamped on the images at `indices` (each `< set.len()`) and,
/// when `relabel` is given, those images relabelled to it. Also returns, per image, whether it
/// was stamped.
pub(crate) fn stamp_at(
    set: &ImageSet,
    trigger: &impl Trigger,
    indices: &[usize],
    relabel: Option<usize>,
) -> Result<(ImageSet, Vec<bool>)> {
    let mut out = set.clone();
    let mut stamped = vec![false; set.len()];
    let (c, h, w) = (set.channels, set.height, set.width);
    let per = set.image_len();
    for &i in indices {
        trigger.apply_nth(&mut out.pixels[i * per..(i + 1) * per], c, h, w, i)?;
        if let Some(target) = relabel {
            out.labels[i] = target;
        }
        stamped[i] = true;
    }
    Ok((out, stamped))
}

/// A copy of `set` with `trigger` stamped on every image, labels unchanged (for measuring the
/// attack success rate on held-out images).
pub fn stamp_all(set: &ImageSet, trigger: &(impl Trigger + ?Sized)) -> Result<ImageSet> {
    let mut out = set.clone();
    let per = set.image_len();
    if per > 0 {
        for (i, chw) in out.pixels.chunks_exact_mut(per).enumerate() {
            trigger.apply_nth(chw, set.channels, set.height, set.width, i)?;
        }
    }
    Ok(out)
}

/// Check that an image buffer holds `c x h x w` values.
pub(crate) fn check_len(chw: &[f32], c: usize, h: usize, w: usize) -> Result<()> {
    if chw.len() != c * h * w {
        return Err(Error::Mismatch(format!(
            "image buffer holds {} values but {c}x{h}x{w} (CxHxW) = {} are expected",
            chw.len(),
            c * h * w
        )));
    }
    Ok(())
}

/// One backdoor attack of any family, as written in a config file: a `kind` tag beside that
/// family's fields, e.g. `kind = "blend"` and `alpha = 0.1` in TOML, or
/// `{"kind": "wanet", "k": 4}` in JSON. Omitted fields take the family's defaults; unknown
/// fields and kinds are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AttackConfig {
    /// `"badnets"`: a solid patch ([`BadNetsConfig`]).
    BadNets(BadNetsConfig),
    /// `"blend"`: a mix with a noise or image pattern ([`BlendConfig`]).
    Blend(BlendConfig),
    /// `"wanet"`: a smooth warp, with noise mode ([`WanetConfig`]).
    WaNet(WanetConfig),
    /// `"sig"`: an additive sinusoid, clean-label by default ([`SigConfig`]).
    Sig(SigConfig),
    /// `"chessboard"`: an additive `+-amplitude` chessboard ([`ChessboardConfig`]).
    Chessboard(ChessboardConfig),
}

impl AttackConfig {
    /// The family's name, as in the `kind` tag.
    pub fn name(&self) -> &'static str {
        match self {
            AttackConfig::BadNets(_) => "badnets",
            AttackConfig::Blend(_) => "blend",
            AttackConfig::WaNet(_) => "wanet",
            AttackConfig::Sig(_) => "sig",
            AttackConfig::Chessboard(_) => "chessboard",
        }
    }

    /// The target class.
    pub fn target(&self) -> usize {
        match self {
            AttackConfig::BadNets(a) => a.target,
            AttackConfig::Blend(a) => a.target,
            AttackConfig::WaNet(a) => a.target,
            AttackConfig::Sig(a) => a.target,
            AttackConfig::Chessboard(a) => a.target,
        }
    }

    /// The source classes of a source-specific attack; `None` for all-to-one (and clean-label).
    pub fn sources(&self) -> Option<&[usize]> {
        match self {
            AttackConfig::BadNets(a) => a.sources.as_deref(),
            AttackConfig::Blend(a) => a.sources.as_deref(),
            AttackConfig::WaNet(a) => a.sources.as_deref(),
            AttackConfig::Sig(a) => a.sources.as_deref(),
            AttackConfig::Chessboard(a) => a.sources.as_deref(),
        }
    }

    /// Check the config against `c x h x w` images of `k` classes without poisoning anything
    /// (reads a Blend pattern image), so a bad value fails before any training: the target and
    /// the sources are classes, the sources do not include the target and are not empty.
    pub fn validate(&self, c: usize, h: usize, w: usize, k: usize) -> Result<()> {
        let t = self.target();
        if t >= k {
            return Err(Error::Config(format!(
                "{} target class {t} is outside the {k} classes",
                self.name()
            )));
        }
        if let Some(s) = self.sources() {
            if let Some(bad) = s.iter().find(|&&x| x >= k) {
                return Err(Error::Config(format!(
                    "{} source class {bad} is outside the {k} classes",
                    self.name()
                )));
            }
            if s.contains(&t) {
                return Err(Error::Config(format!(
                    "{} source classes {s:?} include the target class {t}",
                    self.name()
                )));
            }
            if s.is_empty() {
                return Err(Error::Config(format!(
                    "{} has an empty list of source classes (none left besides the target {t})",
                    self.name()
                )));
            }
        }
        check_rate(match self {
            AttackConfig::BadNets(a) => a.rate,
            AttackConfig::Blend(a) => a.rate,
            AttackConfig::WaNet(a) => a.rate,
            AttackConfig::Sig(a) => a.rate,
            AttackConfig::Chessboard(a) => a.rate,
        })?;
        match self {
            AttackConfig::BadNets(a) => a.position(h, w).map(|_| ()),
            AttackConfig::Blend(a) => a.trigger(c, h, w).map(|_| ()),
            AttackConfig::WaNet(a) => a.trigger(h, w).map(|_| ()),
            AttackConfig::Sig(a) => a.validate(),
            AttackConfig::Chessboard(a) => a.validate(),
        }
    }

    /// A poisoned copy of `train`, chosen deterministically from `seed`, and per image whether it
    /// carries the backdoor (for WaNet, noise-mode images are not flagged; for clean-label SIG,
    /// flagged images keep their labels). See each family's `poison`.
    pub fn poison(&self, train: &ImageSet, seed: u64) -> Result<(ImageSet, Vec<bool>)> {
        match self {
            AttackConfig::BadNets(a) => a.poison(train, seed),
            AttackConfig::Blend(a) => a.poison(train, seed),
            AttackConfig::WaNet(a) => a.poison(train, seed),
            AttackConfig::Sig(a) => a.poison(train, seed),
            AttackConfig::Chessboard(a) => a.poison(train, seed),
        }
    }

    /// A copy of `test` with the trigger on every image and labels unchanged, for the attack
    /// success rate (which counts only images of the source classes, or of non-target classes).
    pub fn stamp_test(&self, test: &ImageSet) -> Result<ImageSet> {
        let trigger = self.trigger(test.channels, test.height, test.width)?;
        stamp_all(test, trigger.as_ref())
    }

    /// The trigger that stamps one `c x h x w` image (without WaNet's noise-mode warps).
    pub fn trigger(&self, c: usize, h: usize, w: usize) -> Result<Box<dyn Trigger + Send + Sync>> {
        Ok(match self {
            AttackConfig::BadNets(a) => Box::new(a.clone()),
            AttackConfig::Blend(a) => Box::new(a.trigger(c, h, w)?),
            AttackConfig::WaNet(a) => Box::new(a.trigger(h, w)?),
            AttackConfig::Sig(a) => Box::new(a.clone()),
            AttackConfig::Chessboard(a) => Box::new(a.clone()),
        })
    }

    /// The config as JSON, `kind` tag included (for reports and manifests).
    pub fn params(&self) -> serde_json::Value {
        // Only a non-UTF-8 Blend pattern path can fail to serialise.
        serde_json::to_value(self)
            .unwrap_or_else(|e| serde_json::json!({ "kind": self.name(), "error": e.to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_count_eligibility_and_determinism() {
        // 10 images of each of 4 classes.
        let labels: Vec<usize> = (0..40).map(|i| i % 4).collect();
        let a = poison_indices(&labels, 2, 0.2, None, 7).unwrap();
        assert_eq!(a.len(), 6, "round(0.2 * 30 non-target images)");
        assert!(a.iter().all(|&i| labels[i] != 2));
        assert!(a.windows(2).all(|p| p[0] < p[1]));
        assert_eq!(a, poison_indices(&labels, 2, 0.2, None, 7).unwrap());
        assert_ne!(a, poison_indices(&labels, 2, 0.2, None, 8).unwrap());

        let s = poison_indices(&labels, 2, 0.5, Some(&[0, 3]), 7).unwrap();
        assert_eq!(s.len(), 10);
        assert!(s.iter().all(|&i| labels[i] == 0 || labels[i] == 3));

        assert!(poison_indices(&labels, 2, 1.5, None, 0).is_err());
        assert!(poison_indices(&labels, 2, 0.1, Some(&[2]), 0).is_err());
    }

    #[test]
    fn attack_config_round_trips_with_its_kind_tag() {
        let all = [
            AttackConfig::BadNets(BadNetsConfig {
                target: 1,
                row: Some(2),
                ..Default::default()
            }),
            AttackConfig::Blend(BlendConfig {
                alpha: 0.1,
                sources: Some(vec![3, 4]),
                ..Default::default()
            }),
            AttackConfig::WaNet(WanetConfig {
                k: 8,
                ..Default::default()
            }),
            AttackConfig::Sig(SigConfig::default()),
            AttackConfig::Chessboard(ChessboardConfig {
                amplitude: 0.05,
                ..Default::default()
            }),
        ];
        for attack in &all {
            let json = serde_json::to_string(attack).unwrap();
            assert!(
                json.contains(&format!("\"kind\":\"{}\"", attack.name())),
                "{json}"
            );
            assert_eq!(
                &serde_json::from_str::<AttackConfig>(&json).unwrap(),
                attack
            );
            let text = toml::to_string(attack).unwrap();
            assert!(
                text.contains(&format!("kind = \"{}\"", attack.name())),
                "{text}"
            );
            assert_eq!(&toml::from_str::<AttackConfig>(&text).unwrap(), attack);
            assert_eq!(attack.params()["kind"], attack.name());
        }
        assert_eq!(all[1].sources(), Some(&[3, 4][..]));
        assert_eq!(all[0].target(), 1);
        assert_eq!(all[2].params()["k"], 8);

        let short: AttackConfig = toml::from_str("kind = \"wanet\"\ntarget = 5").unwrap();
        assert_eq!(
            short,
            AttackConfig::WaNet(WanetConfig {
                target: 5,
                ..Default::default()
            })
        );
        assert!(toml::from_str::<AttackConfig>("kind = \"blend\"\nalpah = 0.1").is_err());
        assert!(serde_json::from_str::<AttackConfig>(r#"{"kind":"sig","amp":1}"#).is_err());
        assert!(serde_json::from_str::<AttackConfig>(r#"{"kind":"clean"}"#).is_err());
        assert!(serde_json::from_str::<AttackConfig>(r#"{"target":1}"#).is_err());
    }

    #[test]
    fn attack_config_dispatches_to_the_family() {
        let labels: Vec<usize> = (0..50).map(|i| i % 5).collect();
        let mut set = crate::data::tests::toy_set(labels, 5);
        set.height = 4;
        set.width = 4;
        set.pixels = (0..50 * 16).map(|v| (v % 17) as f32 / 16.0).collect();
        let blend = BlendConfig {
            target: 2,
            ..Default::default()
        };
        let attack = AttackConfig::Blend(blend.clone());
        let (ours, flags) = attack.poison(&set, 4).unwrap();
        let (theirs, their_flags) = blend.poison(&set, 4).unwrap();
        assert_eq!(flags, their_flags);
        assert_eq!(ours.pixels, theirs.pixels);
        assert_eq!(ours.labels, theirs.labels);

        let wanet = WanetConfig::default();
        let stamped = AttackConfig::WaNet(wanet.clone()).stamp_test(&set).unwrap();
        assert_eq!(stamped.labels, set.labels);
        let direct = stamp_all(&set, &wanet.trigger(4, 4).unwrap()).unwrap();
        assert_eq!(stamped.pixels, direct.pixels);
        assert_ne!(stamped.pixels, set.pixels);

        assert!(attack.validate(1, 4, 4, 10).is_ok());
        let far = AttackConfig::Blend(BlendConfig {
            target: 10,
            ..Default::default()
        });
        assert!(
            far.validate(1, 4, 4, 10)
                .unwrap_err()
                .to_string()
                .contains("target class 10")
        );
        let sourced = |s: Vec<usize>| {
            AttackConfig::Chessboard(ChessboardConfig {
                target: 1,
                sources: Some(s),
                ..Default::default()
            })
        };
        assert!(sourced(vec![0, 2]).validate(1, 4, 4, 10).is_ok());
        for (s, says) in [
            (vec![0, 12], "source class 12"),
            (vec![1, 2], "include the target"),
            (vec![], "empty"),
        ] {
            let e = sourced(s).validate(1, 4, 4, 10).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let too_big = AttackConfig::BadNets(BadNetsConfig {
            patch: 4,
            ..Default::default()
        });
        assert!(too_big.validate(1, 4, 4, 10).is_err());
        let bad_rate = AttackConfig::Sig(SigConfig {
            rate: 2.0,
            ..Default::default()
        });
        assert!(bad_rate.validate(1, 4, 4, 10).is_err());
    }
}
