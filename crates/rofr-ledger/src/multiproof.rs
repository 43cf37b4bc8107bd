//! A proof that many leaves are in one tree at once: the hashes of the tree's largest
//! subtrees that hold none of them, in the order a left-to-right walk of the RFC 9162
//! recursion meets them.
//!
//! Walking the tree from the root, a subtree holding none of the leaves proved is one
//! hash of the proof; a subtree that is one of them is that leaf; any other splits as
//! RFC 9162 §2.1.1 splits it. A verifier walks the same way, taking the next hash of the
//! proof or the next leaf as it goes, so it needs the leaves in index order and holds
//! no more than the path it is on: a whole period's entries are checked while they
//! stream by. For k leaves of a tree of n the proof has at most k·log2(n/k) + log2(n)
//! hashes, and none where the leaves are every leaf of a stretch: a proof per leaf has
//! about k·log2(n).
//!
//! The hashes are cut into k + 1 runs: run i comes just before leaf i, the last after
//! the last leaf. A file can carry each run beside its leaf.

use crate::tree::{node_hash, split, Hash, LeafSource, MerkleTree, ReadBack, Unreadable};

impl MerkleTree {
    /// The multi-leaf proof of the leaves `indexes` (increasing, each below `size`) in
    /// the tree of the first `size` leaves, in `indexes.len() + 1` runs. `None` where the
    /// indexes are not increasing or not all below `size`, or `size` is beyond the tree.
    pub fn multi_proof_from(
        &self,
        indexes: &[u64],
        size: u64,
        source: &mut LeafSource,
    ) -> Result<Option<Vec<Vec<Hash>>>, Unreadable> {
        let increasing = indexes.windows(2).all(|w| w[0] < w[1]);
        if size > self.len() || !increasing || indexes.last().is_some_and(|&i| i >= size) {
            return Ok(None);
        }
        let mut runs = vec![Vec::new()];
        if size > 0 {
            let mut back = self.read_back_from(source);
            self.walk(0, size, indexes, &mut runs, &mut back)?;
        }
        Ok(Some(runs))
    }

    fn walk(
        &self,
        lo: u64,
        hi: u64,
        indexes: &[u64],
        runs: &mut Vec<Vec<Hash>>,
        back: &mut ReadBack,
    ) -> Result<(), Unreadable> {
        if indexes.is_empty() {
            let h = self.subtree(lo, hi, back)?;
            runs.last_mut().expect("a run").push(h);
        } else if hi - lo == 1 {
            runs.push(Vec::new());
        } else {
            let mid = lo + split(hi - lo);
            let (left, right) = indexes.split_at(indexes.partition_point(|&i| i < mid));
            self.walk(lo, mid, left, runs, back)?;
            self.walk(mid, hi, right, runs, back)?;
        }
        Ok(())
    }
}

/// What a multi-leaf proof is checked from: the leaves in index order and the proof's
/// hashes in order, as a verifier reads them.
pub trait MultiSource {
    type Error;
    /// The index of the next leaf not yet taken, or `None` after the last.
    fn next_index(&mut self) -> Result<Option<u64>, Self::Error>;
    /// Takes the next leaf's hash (the one [`MultiSource::next_index`] named).
    fn take_leaf(&mut self) -> Result<Hash, Self::Error>;
    /// Takes the proof's next hash; fails where the proof has no more.
    fn take_hash(&mut self) -> Result<Hash, Self::Error>;
}

/// The root of the tree of `size` leaves from a multi-leaf proof. The caller then
/// checks that the source is spent (no leaf and no hash left over) and compares the root
/// with the checkpoint's.
pub fn multi_root<S: MultiSource>(size: u64, source: &mut S) -> Result<Option<Hash>, S::Error> {
    if size == 0 {
        return Ok(None);
    }
    fn walk<S: MultiSource>(lo: u64, hi: u64, source: &mut S) -> Result<Hash, S::Error> {
        let inside = source.next_index()?.is_some_and(|i| (lo..hi).contains(&i));
        if !inside {
            return source.take_hash();
        }
        if hi - lo == 1 {
            return source.take_leaf();
        }
        let mid = lo + split(hi - lo);
        let left = walk(lo, mid, source)?;
        let right = walk(mid, hi, source)?;
        Ok(node_hash(&left, &right))
    }
    walk(0, size, source).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{leaf_hash, no_leaves};
    use proptest::prelude::*;

    /// Leaves and runs as a verifier reads them.
    struct Slices<'a> {
        leaves: &'a [(u64, Hash)],
        runs: &'a [Vec<Hash>],
        next: usize,
        in_run: usize,
    }

    impl MultiSource for Slices<'_> {
        type Error = String;
        fn next_index(&mut self) -> Result<Option<u64>, String> {
            Ok(self.leaves.get(self.next).map(|(i, _)| *i))
        }
        fn take_leaf(&mut self) -> Result<Hash, String> {
            if self.in_run != self.runs[self.next].len() {
                return Err(format!("hashes left before leaf {}", self.next));
            }
            let (_, h) = self.leaves[self.next];
            self.next += 1;
            self.in_run = 0;
            Ok(h)
        }
        fn take_hash(&mut self) -> Result<Hash, String> {
            let h = self.runs[self.next]
                .get(self.in_run)
                .ok_or("the proof is short")?;
            self.in_run += 1;
            Ok(*h)
        }
    }

    fn tree(n: u64) -> (MerkleTree, Vec<Hash>) {
        let mut t = MerkleTree::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let data = format!("entry {i}");
            t.append(data.as_bytes());
            leaves.push(leaf_hash(data.as_bytes()));
        }
        (t, leaves)
    }

    fn check(t: &MerkleTree, leaves: &[Hash], size: u64, chosen: &[u64]) -> Result<(), String> {
        let runs = t
            .multi_proof_from(chosen, size, &mut no_leaves)
            .unwrap()
            .expect("a proof");
        assert_eq!(runs.len(), chosen.len() + 1);
        let with: Vec<(u64, Hash)> = chosen.iter().map(|&i| (i, leaves[i as usize])).collect();
        let mut source = Slices {
            leaves: &with,
            runs: &runs,
            next: 0,
            in_run: 0,
        };
        let root = multi_root(size, &mut source)?;
        if source.next != with.len() || source.in_run != runs[with.len()].len() {
            return Err("proof not spent".into());
        }
        if root != t.root(size).filter(|_| size > 0) {
            return Err("another root".into());
        }
        Ok(())
    }

    #[test]
    fn every_leaf_needs_no_hash_and_one_leaf_is_its_audit_path() {
        let (t, leaves) = tree(1000);
        let all: Vec<u64> = (0..1000).collect();
        let runs = t
            .multi_proof_from(&all, 1000, &mut no_leaves)
            .unwrap()
            .unwrap();
        assert!(runs.iter().all(Vec::is_empty));
        check(&t, &leaves, 1000, &all).unwrap();
        let one = t
            .multi_proof_from(&[417], 1000, &mut no_leaves)
            .unwrap()
            .unwrap();
        let path = t.inclusion_proof(417, 1000).unwrap();
        assert_eq!(one.concat().len(), path.len());
        // None for indexes out of order, out of the tree, or a size beyond it.
        assert!(t
            .multi_proof_from(&[3, 2], 10, &mut no_leaves)
            .unwrap()
            .is_none());
        assert!(t
            .multi_proof_from(&[10], 10, &mut no_leaves)
            .unwrap()
            .is_none());
        assert!(t
            .multi_proof_from(&[1], 1001, &mut no_leaves)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_changed_leaf_or_hash_gives_another_root() {
        let (t, mut leaves) = tree(77);
        let chosen = [0, 5, 6, 40, 76];
        check(&t, &leaves, 77, &chosen).unwrap();
        leaves[40][0] ^= 1;
        assert_eq!(check(&t, &leaves, 77, &chosen), Err("another root".into()));
    }

    #[test]
    fn a_forgetful_tree_reads_its_blocks_back_for_the_proof() {
        let (full, leaves) = tree(100);
        let mut forgetful = MerkleTree::forgetful(3);
        for h in &leaves {
            forgetful.push_leaf_hash(*h);
        }
        let mut source = |lo: u64, hi: u64| Ok(leaves[lo as usize..hi as usize].to_vec());
        let chosen = [1, 2, 30, 31, 64, 99];
        assert_eq!(
            forgetful
                .multi_proof_from(&chosen, 100, &mut source)
                .unwrap(),
            full.multi_proof_from(&chosen, 100, &mut no_leaves).unwrap()
        );
    }

    proptest! {
        #[test]
        fn any_choice_of_leaves_proves_against_any_size(
            n in 1u64..300,
            size_seed in any::<u64>(),
            picks in proptest::collection::btree_set(0u64..300, 0..40),
        ) {
            let (t, leaves) = tree(n);
            let size = 1 + size_seed % n;
            let chosen: Vec<u64> = picks.into_iter().filter(|&i| i < size).collect();
            prop_assert_eq!(check(&t, &leaves, size, &chosen), Ok(()));
            let hashes: usize = t.multi_proof_from(&chosen, size, &mut no_leaves).unwrap().unwrap().concat().len();
            let separate: usize = chosen.iter().map(|&i| t.inclusion_proof(i, size).unwrap().len()).sum();
            // With no leaf the proof is the root alone.
            let floor = usize::from(chosen.is_empty());
            prop_assert!(hashes <= separate.max(floor), "{} hashes against {}", hashes, separate);
        }
    }
}
