//! The Merkle tree of RFC 9162 §2.1 over the event log, with inclusion and consistency
//! proofs (§2.1.3, §2.1.4) and their verification.
//!
//! The tree keeps every perfect, aligned subtree's hash: level 0 holds the leaf hashes,
//! level k the hashes of leaves [i·2^k, (i+1)·2^k). Appending costs one leaf hash and,
//! on average, one node hash. Any subtree the RFC's recursion needs is either stored or
//! split into stored ones, so roots and proofs cost O(log n) hashes.
//!
//! A tree made by [`MerkleTree::forgetful`] keeps its lowest levels only for the leaves
//! after its last whole block: the log it is built from holds the leaves already, and
//! at 64 bytes a leaf the lower levels are most of a full tree's size. A proof that
//! needs a node inside a forgotten block reads that block's leaves back through a
//! [`LeafSource`], and checks that they hash to the block's node, which the tree kept.

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
pub(crate) fn split(n: u64) -> u64 {
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

    /// Empties the level, keeping its first block's allocation for the next leaves.
    fn clear(&mut self) {
        self.blocks.truncate(1);
        if let Some(first) = self.blocks.first_mut() {
            first.clear();
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

/// Why a forgotten part of a tree could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// Reads back the hashes of leaves `[lo, hi)` for a [`MerkleTree::forgetful`] tree.
pub type LeafSource<'a> = dyn FnMut(u64, u64) -> Result<Vec<Hash>, Unreadable> + 'a;

/// The source of a tree that keeps every level: it is never asked.
pub fn no_leaves(lo: u64, hi: u64) -> Result<Vec<Hash>, Unreadable> {
    Err(Unreadable(format!(
        "leaves {lo}..{hi} were asked of a tree that has no source for them"
    )))
}

#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    levels: Vec<Column>,
    /// Levels below this are kept only from leaf `kept_from` on (0: every level whole).
    floor: u32,
    /// The first leaf whose lower levels are kept: a multiple of 2^floor.
    kept_from: u64,
    /// Leaves appended, forgotten ones included.
    leaves: u64,
}

/// Leaves whose lower levels a forgetful tree's proof has read back: one block.
pub(crate) struct ReadBack<'s, 'a> {
    source: &'s mut LeafSource<'a>,
    block: Option<(u64, Vec<Hash>)>,
}

impl MerkleTree {
    /// A tree that keeps every level.
    pub fn new() -> MerkleTree {
        MerkleTree::default()
    }

    /// A tree that keeps its levels below `block_bits` only for the leaves after the
    /// last whole block of 2^`block_bits` leaves; proofs read the rest back through a
    /// [`LeafSource`]. Holds about 2^(1 − `block_bits`) hashes a leaf, where a full
    /// tree holds two.
    /// What a proof reads forgotten leaves back through: one block at a time.
    pub(crate) fn read_back_from<'s, 'a>(
        &self,
        source: &'s mut LeafSource<'a>,
    ) -> ReadBack<'s, 'a> {
        ReadBack {
            source,
            block: None,
        }
    }

    pub fn forgetful(block_bits: u32) -> MerkleTree {
        assert!((1..32).contains(&block_bits), "a block of 2 to 2^31 leaves");
        MerkleTree {
            floor: block_bits,
            ..MerkleTree::default()
        }
    }

    pub fn len(&self) -> u64 {
        self.leaves
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
        self.leaves += 1;
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
        // A block just became whole: its node is kept, its lower levels need not be.
        if self.floor > 0 && self.leaves % (1 << self.floor) == 0 {
            for column in &mut self.levels[..self.floor as usize] {
                column.clear();
            }
            self.kept_from = self.leaves;
        }
    }

    /// The node of `level` over leaves [index·2^level, (index+1)·2^level), if kept.
    fn node(&self, level: u32, index: u64) -> Option<&Hash> {
        let first = if level < self.floor {
            self.kept_from >> level
        } else {
            0
        };
        self.levels
            .get(level as usize)?
            .get(index.checked_sub(first)? as usize)
    }

    /// Leaf `index`'s hash, if the tree keeps it.
    pub fn leaf(&self, index: u64) -> Option<&Hash> {
        self.node(0, index)
    }

    /// MTH of leaves [lo, hi); requires lo < hi ≤ len.
    pub(crate) fn subtree(
        &self,
        lo: u64,
        hi: u64,
        back: &mut ReadBack,
    ) -> Result<Hash, Unreadable> {
        let n = hi - lo;
        if n.is_power_of_two() && lo % n == 0 {
            let level = n.trailing_zeros();
            if let Some(hash) = self.node(level, lo >> level) {
                return Ok(*hash);
            }
            return self.read_back(lo, hi, back);
        }
        let k = split(n);
        Ok(node_hash(
            &self.subtree(lo, lo + k, back)?,
            &self.subtree(lo + k, hi, back)?,
        ))
    }

    /// MTH of the perfect subtree [lo, hi) inside a forgotten block, from the block's
    /// leaves read back (once per proof) and checked against the block's node.
    fn read_back(&self, lo: u64, hi: u64, back: &mut ReadBack) -> Result<Hash, Unreadable> {
        let size = 1u64 << self.floor;
        let block = lo >> self.floor;
        let start = block << self.floor;
        if back.block.as_ref().is_none_or(|(b, _)| *b != block) {
            let leaves = (back.source)(start, start + size)?;
            if leaves.len() as u64 != size {
                return Err(Unreadable(format!(
                    "entries {start}..{}: {} leaves read back, not {size}",
                    start + size,
                    leaves.len()
                )));
            }
            let kept = self
                .node(self.floor, block)
                .expect("a whole block's node is kept");
            if perfect_root(&leaves) != *kept {
                return Err(Unreadable(format!(
                    "entries {start}..{} read back do not hash to the tree's node over them: the log changed after it was read",
                    start + size
                )));
            }
            back.block = Some((block, leaves));
        }
        let (_, leaves) = back.block.as_ref().expect("just read");
        Ok(perfect_root(
            &leaves[(lo - start) as usize..(hi - start) as usize],
        ))
    }

    /// The root of the tree's first `size` leaves, or `None` beyond its length. On a
    /// [`MerkleTree::forgetful`] tree, use [`MerkleTree::root_from`] for sizes short of
    /// the whole.
    pub fn root(&self, size: u64) -> Option<Hash> {
        self.root_from(size, &mut no_leaves)
            .expect("a tree that keeps what this root needs")
    }

    /// [`MerkleTree::root`], reading forgotten leaves back from `source`.
    pub fn root_from(
        &self,
        size: u64,
        source: &mut LeafSource,
    ) -> Result<Option<Hash>, Unreadable> {
        let mut back = ReadBack {
            source,
            block: None,
        };
        Ok(match size {
            0 => Some(empty_root()),
            s if s > self.len() => None,
            s => Some(self.subtree(0, s, &mut back)?),
        })
    }

    /// The hashes of `count` consecutive perfect subtrees of `span` leaves (a power of
    /// two) from leaf `start` (a multiple of `span`), all within the tree.
    pub(crate) fn hashes(
        &self,
        start: u64,
        span: u64,
        count: usize,
        source: &mut LeafSource,
    ) -> Result<Vec<Hash>, Unreadable> {
        let mut back = ReadBack {
            source,
            block: None,
        };
        (0..count as u64)
            .map(|i| {
                let lo = start + i * span;
                self.subtree(lo, lo + span, &mut back)
            })
            .collect()
    }

    /// The audit path of leaf `index` in the tree of the first `size` leaves, on a tree
    /// that keeps every level.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        self.inclusion_proof_from(index, size, &mut no_leaves)
            .expect("a tree that keeps every level")
    }

    /// [`MerkleTree::inclusion_proof`], reading forgotten leaves back from `source`.
    pub fn inclusion_proof_from(
        &self,
        index: u64,
        size: u64,
        source: &mut LeafSource,
    ) -> Result<Option<Vec<Hash>>, Unreadable> {
        if index >= size || size > self.len() {
            return Ok(None);
        }
        let mut back = ReadBack {
            source,
            block: None,
        };
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof, &mut back)?;
        Ok(Some(proof))
    }

    fn path(
        &self,
        m: u64,
        lo: u64,
        hi: u64,
        proof: &mut Vec<Hash>,
        back: &mut ReadBack,
    ) -> Result<(), Unreadable> {
        let n = hi - lo;
        if n == 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            self.path(m, lo, lo + k, proof, back)?;
            proof.push(self.subtree(lo + k, hi, back)?);
        } else {
            self.path(m - k, lo + k, hi, proof, back)?;
            proof.push(self.subtree(lo, lo + k, back)?);
        }
        Ok(())
    }

    /// The consistency proof between the first `old` and the first `new` leaves, on a
    /// tree that keeps every level.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        self.consistency_proof_from(old, new, &mut no_leaves)
            .expect("a tree that keeps every level")
    }

    /// [`MerkleTree::consistency_proof`], reading forgotten leaves back from `source`.
    pub fn consistency_proof_from(
        &self,
        old: u64,
        new: u64,
        source: &mut LeafSource,
    ) -> Result<Option<Vec<Hash>>, Unreadable> {
        if old > new || new > self.len() {
            return Ok(None);
        }
        let mut back = ReadBack {
            source,
            block: None,
        };
        let mut proof = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut proof, &mut back)?;
        }
        Ok(Some(proof))
    }

    fn subproof(
        &self,
        m: u64,
        lo: u64,
        hi: u64,
        whole: bool,
        proof: &mut Vec<Hash>,
        back: &mut ReadBack,
    ) -> Result<(), Unreadable> {
        let n = hi - lo;
        if m == n {
            if !whole {
                proof.push(self.subtree(lo, hi, back)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, whole, proof, back)?;
            proof.push(self.subtree(lo + k, hi, back)?);
        } else {
            self.subproof(m - k, lo + k, hi, false, proof, back)?;
            proof.push(self.subtree(lo, lo + k, back)?);
        }
        Ok(())
    }
}

/// MTH of a perfect tree (a power-of-two count of leaf hashes), level by level.
fn perfect_root(leaves: &[Hash]) -> Hash {
    debug_assert!(leaves.len().is_power_of_two());
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks_exact(2)
            .map(|pair| node_hash(&pair[0], &pair[1]))
            .collect();
    }
    level[0]
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
