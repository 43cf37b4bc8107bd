//! The Merkle tree of RFC 9162 §2.1 over the event log, with inclusion and consistency
//! proofs (§2.1.3, §2.1.4) and their verification.
//!
//! The tree keeps every perfect, aligned subtree's hash: level 0 holds the leaf hashes,
//! level k the hashes of leaves [i·2^k, (i+1)·2^k). Appending costs one leaf hash and,
//! on average, one node hash. Any subtree the RFC's recursion needs is either stored or
//! split into stored ones, so roots and proofs cost O(log n) hashes.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// SHA-256(0x00 ‖ data).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree, SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two smaller than `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Hashes per block of a [`Column`]: 128 KiB.
const BLOCK: usize = 4096;

/// One level's hashes, in blocks of [`BLOCK`]. Only the last block grows (by doubling,
/// so a small tree stays small); full blocks never move. A single vector would hold up
/// to twice what it needs after doubling, and copy the whole level each time it grows:
/// with six million entries the tree's first level alone is 192 MB.
#[derive(Debug, Clone, Default)]
struct Column {
    blocks: Vec<Vec<Hash>>,
}

impl Column {
    fn len(&self) -> usize {
        match self.blocks.last() {
            Some(last) => (self.blocks.len() - 1) * BLOCK + last.len(),
            None => 0,
        }
    }

    fn push(&mut self, hash: Hash) {
        match self.blocks.last_mut() {
            Some(last) if last.len() < BLOCK => last.push(hash),
            _ => {
                let mut block = Vec::with_capacity(if self.blocks.is_empty() { 4 } else { BLOCK });
                block.push(hash);
                self.blocks.push(block);
            }
        }
    }

    fn get(&self, index: usize) -> Option<&Hash> {
        self.blocks.get(index / BLOCK)?.get(index % BLOCK)
    }

    /// The last two hashes (the level's length is at least two).
    fn last_two(&self) -> (&Hash, &Hash) {
        let n = self.len();
        (&self[n - 2], &self[n - 1])
    }
}

impl std::ops::Index<usize> for Column {
    type Output = Hash;

    fn index(&self, index: usize) -> &Hash {
        self.get(index).expect("an index within the level")
    }
}

#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    levels: Vec<Column>,
}

impl MerkleTree {
    pub fn new() -> MerkleTree {
        MerkleTree::default()
    }

    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends one entry's bytes.
    pub fn append(&mut self, data: &[u8]) {
        self.push_leaf_hash(leaf_hash(data));
    }

    /// Appends a leaf already hashed with [`leaf_hash`].
    pub fn push_leaf_hash(&mut self, hash: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Column::default());
        }
        self.levels[0].push(hash);
        let mut level = 0;
        while self.levels[level].len() % 2 == 0 {
            let (left, right) = self.levels[level].last_two();
            let parent = node_hash(left, right);
            if self.levels.len() == level + 1 {
                self.levels.push(Column::default());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    pub fn leaf(&self, index: u64) -> Option<&Hash> {
        self.levels.first()?.get(index as usize)
    }

    /// MTH of leaves [lo, hi); requires lo < hi ≤ len.
    fn subtree(&self, lo: u64, hi: u64) -> Hash {
        let n = hi - lo;
        if n.is_power_of_two() && lo % n == 0 {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(lo >> level) as usize];
        }
        let k = split(n);
        node_hash(&self.subtree(lo, lo + k), &self.subtree(lo + k, hi))
    }

    /// The root of the tree's first `size` leaves, or `None` beyond its length.
    pub fn root(&self, size: u64) -> Option<Hash> {
        match size {
            0 => Some(empty_root()),
            s if s > self.len() => None,
            s => Some(self.subtree(0, s)),
        }
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Some(proof)
    }

    fn path(&self, m: u64, lo: u64, hi: u64, proof: &mut Vec<Hash>) {
        let n = hi - lo;
        if n == 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, lo, lo + k, proof);
            proof.push(self.subtree(lo + k, hi));
        } else {
            self.path(m - k, lo + k, hi, proof);
            proof.push(self.subtree(lo, lo + k));
        }
    }

    /// The consistency proof between the first `old` and the first `new` leaves.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        if old > new || new > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut proof);
        }
        Some(proof)
    }

    fn subproof(&self, m: u64, lo: u64, hi: u64, whole: bool, proof: &mut Vec<Hash>) {
        let n = hi - lo;
        if m == n {
            if !whole {
                proof.push(self.subtree(lo, hi));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, whole, proof);
            proof.push(self.subtree(lo + k, hi));
        } else {
            self.subproof(m - k, lo + k, hi, false, proof);
            proof.push(self.subtree(lo, lo + k));
        }
    }
}

/// RFC 9162 §2.1.3.2: does `proof` show leaf `index` with hash `leaf` in a tree of
/// `size` leaves whose root is `root`?
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && &r == root
}

/// RFC 9162 §2.1.4.2: does `proof` show that the tree of `old` leaves with root
/// `old_root` is a prefix of the tree of `new` leaves with root `new_root`?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    &fr == old_root && &sr == new_root && s == 0
}
