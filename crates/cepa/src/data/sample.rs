//! Class-balanced, seeded sampling of an [`ImageSet`].

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::ImageSet;
use crate::{Error, Result};

impl ImageSet {
    /// indices of `per_class` images of every class 0..num_classes, chosen with a ChaCha8 rng seeded by `seed`,
    /// returned grouped by class (class 0's first), deterministic for a given seed. Error (Mismatch) naming
    /// the class and how many it has when a class has fewer than `per_class`.
    ///
    /// Within a class the chosen indices are in increasing order. `per_class` must be at least 1.
    pub fn balanced_indices(&self, per_class: usize, seed: u64) -> Result<Vec<usize>> {
        let all: Vec<usize> = (0..self.len()).collect();
        self.balanced_indices_among(&all, per_class, seed)
    }

    /// [`balanced_indices`](Self::balanced_indices) over the images at `among` only (indices
    /// into `self`, in increasing order), without copying them out: the same choice as
    /// `self.subset(among).balanced_indices(per_class, seed)`, given as indices into `self`.
    pub fn balanced_indices_among(
        &self,
        among: &[usize],
        per_class: usize,
        seed: u64,
    ) -> Result<Vec<usize>> {
        if per_class == 0 {
            return Err(Error::Config("per_class must be at least 1".into()));
        }
        let mut by_class = vec![Vec::new(); self.num_classes];
        for &i in among {
            if let Some(members) = self.labels.get(i).and_then(|&l| by_class.get_mut(l)) {
                members.push(i);
            }
        }
        let short: Vec<String> = by_class
            .iter()
            .enumerate()
            .filter(|(_, members)| members.len() < per_class)
            .map(|(c, members)| {
                let n = members.len();
                let plural = if n == 1 { "" } else { "s" };
                format!("class {} has only {n} image{plural}", self.class_label(c))
            })
            .collect();
        if !short.is_empty() {
            return Err(Error::Mismatch(format!(
                "{per_class} images per class requested from {} but {}",
                self.source.display(),
                short.join(", ")
            )));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut chosen = Vec::with_capacity(per_class * self.num_classes);
        for members in &by_class {
            let mut picks = rand::seq::index::sample(&mut rng, members.len(), per_class).into_vec();
            picks.sort_unstable();
            chosen.extend(picks.into_iter().map(|k| members[k]));
        }
        Ok(chosen)
    }

    /// The images at [`balanced_indices`](Self::balanced_indices)`(per_class, seed)`.
    pub fn balanced_sample(&self, per_class: usize, seed: u64) -> Result<ImageSet> {
        Ok(self.subset(&self.balanced_indices(per_class, seed)?))
    }
}

#[cfg(test)]
mod tests {
    use crate::data::tests::{shared_data, toy_set};
    use crate::data::{Split, load};

    /// 3 classes with 10, 6 and 8 images, interleaved.
    fn labels() -> Vec<usize> {
        let mut labels = Vec::new();
        for i in 0..10 {
            labels.push(0);
            if i < 6 {
                labels.push(1);
            }
            if i < 8 {
                labels.push(2);
            }
        }
        labels
    }

    #[test]
    fn exact_counts_grouped_by_class() {
        let set = toy_set(labels(), 3);
        let idx = set.balanced_indices(5, 7).unwrap();
        assert_eq!(idx.len(), 15);
        for (c, group) in idx.chunks(5).enumerate() {
            assert!(
                group.iter().all(|&i| set.labels[i] == c),
                "class {c}: {group:?}"
            );
            let mut distinct = group.to_vec();
            distinct.dedup();
            assert_eq!(distinct.len(), 5, "no repeats in {group:?}");
        }
        let sample = set.balanced_sample(5, 7).unwrap();
        assert_eq!(sample.labels, [[0; 5], [1; 5], [2; 5]].concat());
        assert_eq!(sample.image(6), set.image(idx[6]));
    }

    #[test]
    fn among_chooses_what_the_subset_would_without_copying_it() {
        let set = toy_set(labels(), 3);
        // Every third image is taken out; classes keep 6-7, 4 and 5-6 images.
        let among: Vec<usize> = (0..set.len()).filter(|i| i % 3 != 0).collect();
        for seed in 0..4 {
            let direct = set.balanced_indices_among(&among, 3, seed).unwrap();
            let via_subset = set.subset(&among).balanced_indices(3, seed).unwrap();
            let mapped: Vec<usize> = via_subset.iter().map(|&k| among[k]).collect();
            assert_eq!(direct, mapped, "seed {seed}");
            assert!(direct.iter().all(|i| among.contains(i)));
        }
        assert!(
            set.balanced_indices_among(&among, 5, 0).is_err(),
            "class 1 has 4 left"
        );
    }

    #[test]
    fn deterministic_per_seed() {
        let set = toy_set(labels(), 3);
        let a = set.balanced_indices(4, 1).unwrap();
        assert_eq!(a, set.balanced_indices(4, 1).unwrap());
        let others: Vec<_> = (2..6)
            .map(|s| set.balanced_indices(4, s).unwrap())
            .collect();
        assert!(
            others.iter().any(|o| *o != a),
            "another seed picks other images"
        );
    }

    #[test]
    fn short_class_is_named() {
        let mut set = toy_set(labels(), 4);
        set.class_names = Some(["a", "b", "c", "d"].map(String::from).to_vec());
        let err = set.balanced_indices(7, 0).unwrap_err().to_string();
        assert!(
            err.contains("class 1 ('b') has only 6 images")
                && err.contains("class 3 ('d') has only 0"),
            "{err}"
        );
        assert!(
            err.contains("7 images per class") && err.contains("toy"),
            "{err}"
        );
        assert!(!err.contains("class 2"), "{err}");
        assert!(set.balanced_indices(0, 0).is_err());
    }

    #[test]
    fn shared_mnist_train_sorted_by_label_still_balances() {
        let set = load(&shared_data("mnist"), Split::Train).unwrap();
        assert!(
            set.labels.windows(2).all(|w| w[0] <= w[1]),
            "the shared copy is sorted"
        );
        let sample = set.balanced_sample(3, 11).unwrap();
        let want: Vec<usize> = (0..10).flat_map(|c| [c; 3]).collect();
        assert_eq!(sample.labels, want);
        assert_eq!((sample.channels, sample.height, sample.width), (1, 28, 28));
    }
}
