//! Splitting a population over the tasks of a job array: which models one task owns.
//!
//! A model belongs to shard `fnv1a64(id) mod N`: the same on every machine and every rerun, and
//! independent of which other shards have run or finished, so a task that is resubmitted picks
//! up exactly the models it had. Shards are numbered from 0.

use std::fmt;

use crate::error::{Error, Result};

/// Task `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `"I/N"` with `0 <= I < N`.
    pub fn parse(text: &str) -> Result<Shard> {
        let bad = || {
            Error::Config(format!(
                "--shard '{text}': expected I/N with 0 <= I < N (for example 0/3)"
            ))
        };
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The shard a scheduler gives this process, from its environment: Slurm's
    /// `SLURM_ARRAY_TASK_ID` (counted from `SLURM_ARRAY_TASK_MIN`, 0 when unset) of
    /// `SLURM_ARRAY_TASK_COUNT`, or of `CEPA_SHARDS` when that is set (then counted from 0, so
    /// that a task resubmitted alone keeps its shard), or Kubernetes' `JOB_COMPLETION_INDEX` of `CEPA_SHARDS` (an
    /// indexed Job does not tell its tasks how many there are: set it to the Job's
    /// `completions`). `None` outside a job array; an error when the variables do not make a
    /// shard.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<(Shard, String)>> {
        let num = |name: &str| -> Result<Option<usize>> {
            get(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        Error::Config(format!("{name}={v}: not a non-negative integer"))
                    })
                })
                .transpose()
        };
        let checked = |index: usize, count: usize, from: String| {
            if count == 0 || index >= count {
                Err(Error::Config(format!(
                    "{from}: task {index} of {count} is not a shard"
                )))
            } else {
                Ok(Some((Shard { index, count }, from)))
            }
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            // CEPA_SHARDS names the array's size: needed when a task is resubmitted alone
            // (`sbatch --array=3`), whose own array has one task; submit.sh sets it.
            if let Some(count) = num("CEPA_SHARDS")? {
                return checked(
                    id,
                    count,
                    format!("Slurm array task {id} of CEPA_SHARDS={count}"),
                );
            }
            let count = num("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                Error::Config(
                    "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not: set \
                     CEPA_SHARDS to the array's task count, or pass --shard I/N"
                        .into(),
                )
            })?;
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            if num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1) != 1 {
                return Err(Error::Config(
                    "a Slurm array with a step (e.g. 0-14:2): set CEPA_SHARDS, or pass --shard"
                        .into(),
                ));
            }
            if count == 1 && min > 0 {
                return Err(Error::Config(format!(
                    "Slurm array task {id} is an array of one (a task resubmitted alone?): set \
                     CEPA_SHARDS to the first array's task count, or pass --shard {id}/N"
                )));
            }
            let index = id.checked_sub(min).ok_or_else(|| {
                Error::Config(format!(
                    "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
                ))
            })?;
            return checked(
                index,
                count,
                format!("Slurm array task {id} (min {min}) of {count}"),
            );
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = num("CEPA_SHARDS")?.ok_or_else(|| {
                Error::Config(
                    "JOB_COMPLETION_INDEX is set but CEPA_SHARDS is not: set it to the Job's \
                     completions, or pass --shard I/N"
                        .into(),
                )
            })?;
            return checked(
                index,
                count,
                format!("Kubernetes completion index {index} of {count}"),
            );
        }
        Ok(None)
    }

    /// The shard of a run: `flag` (`--shard I/N`) when given, else the scheduler's environment
    /// ([`Shard::from_env`]), logged with where it came from; `None` outside a job array.
    pub fn resolve(flag: Option<&str>) -> Result<Option<Shard>> {
        if let Some(text) = flag {
            return Ok(Some(Shard::parse(text)?));
        }
        let found = Shard::from_env(|k| std::env::var(k).ok())?;
        if let Some((s, from)) = &found {
            tracing::info!("shard {s}, from the environment: {from}");
        }
        Ok(found.map(|(s, _)| s))
    }

    /// Whether the model `id` is this shard's.
    pub fn owns(&self, id: &str) -> bool {
        (fnv1a64(id.as_bytes()) % self.count as u64) as usize == self.index
    }

    /// The suffix of this shard's own files: `shard-I-of-N`.
    pub fn tag(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// 64-bit FNV-1a: a hash that is the same on every platform and version (unlike std's).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_has_exactly_one_shard_and_the_assignment_is_fixed() {
        let ids: Vec<String> = (0..200).map(|i| format!("mnist-clean-s{i}")).collect();
        for n in 1..6 {
            let shards: Vec<Shard> = (0..n).map(|i| Shard { index: i, count: n }).collect();
            for id in &ids {
                assert_eq!(
                    shards.iter().filter(|s| s.owns(id)).count(),
                    1,
                    "{id} of {n}"
                );
            }
            // Reasonably even: no shard of 200 models is empty or owns more than twice its share.
            for s in &shards {
                let owned = ids.iter().filter(|id| s.owns(id)).count();
                assert!(owned > 0 && owned <= 2 * 200 / n, "{s}: {owned}");
            }
        }
        // Fixed values, so that a change of hash (which would move models between the shards
        // of a running array) fails here.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn shards_parse_from_flags_and_schedulers() {
        assert_eq!(Shard::parse("1/3").unwrap(), Shard { index: 1, count: 3 });
        for bad in ["3/3", "1", "a/3", "0/0", "-1/3"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(Shard::from_env(env(&[])).unwrap(), None);
        let (s, from) = Shard::from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s, Shard { index: 2, count: 3 });
        assert!(from.contains("Slurm"), "{from}");
        // An array numbered 1-3 (`--array=1-3`).
        let (s, _) = Shard::from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s.index, 0);
        // Task 1 resubmitted alone (`sbatch --array=1`): an array of one, refused unless
        // CEPA_SHARDS says how many there were.
        let err = Shard::from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("CEPA_SHARDS"), "{err}");
        let (s, _) = Shard::from_env(env(&[
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "1"),
            ("CEPA_SHARDS", "3"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(s, Shard { index: 1, count: 3 });
        assert!(Shard::from_env(env(&[("SLURM_ARRAY_TASK_ID", "1")])).is_err());
        assert!(
            Shard::from_env(env(&[
                ("SLURM_ARRAY_TASK_ID", "2"),
                ("SLURM_ARRAY_TASK_COUNT", "8"),
                ("SLURM_ARRAY_TASK_STEP", "2"),
            ]))
            .is_err()
        );
        let (s, _) = Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "4"), ("CEPA_SHARDS", "5")]))
            .unwrap()
            .unwrap();
        assert_eq!(s, Shard { index: 4, count: 5 });
        let err = Shard::from_env(env(&[("JOB_COMPLETION_INDEX", "4")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CEPA_SHARDS"), "{err}");
        assert!(
            Shard::from_env(env(&[
                ("SLURM_ARRAY_TASK_ID", "5"),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
            ]))
            .is_err()
        );
    }
}
