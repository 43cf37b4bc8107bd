//! The tiles of a forgetful tree, read by the `tlog_tiles` crate (independent code):
//! the root it recomputes from them, and the record proofs it makes, at sizes on both
//! sides of every tile boundary up to level 2.

use proptest::prelude::*;
use rofr_ledger::tiles::{TileKind, TilePath};
use rofr_ledger::{leaf_hash, Hash, MerkleTree};
use tlog_tiles::{check_record, prove_record, tree_hash, Error, Tile, TileHashReader, TileReader};

struct Served<'a> {
    tree: &'a MerkleTree,
    leaves: &'a [Hash],
    size: u64,
}

impl TileReader for Served<'_> {
    fn height(&self) -> u8 {
        8
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, Error> {
        tiles
            .iter()
            .map(|t| {
                let tile = TilePath {
                    kind: TileKind::Hashes(t.level()),
                    index: t.level_index(),
                    width: t.width() as u16,
                };
                // The C2SP path, written and read back.
                assert_eq!(TilePath::parse(&tile.path()).unwrap(), tile);
                let mut source =
                    |lo: u64, hi: u64| Ok(self.leaves[lo as usize..hi as usize].to_vec());
                self.tree
                    .tile(&tile, self.size, &mut source)
                    .unwrap()
                    .ok_or_else(|| Error::InvalidInput(format!("no tile {}", tile.path())))
            })
            .collect()
    }

    fn save_tiles(&self, _tiles: &[Tile], _data: &[Vec<u8>]) {}
}

fn tree_of(n: u64) -> (MerkleTree, Vec<Hash>) {
    let mut tree = MerkleTree::forgetful(10);
    let mut leaves = Vec::with_capacity(n as usize);
    for i in 0..n {
        let data = i.to_be_bytes();
        tree.append(&data);
        leaves.push(leaf_hash(&data));
    }
    (tree, leaves)
}

fn check(tree: &MerkleTree, leaves: &[Hash], size: u64, probe: u64) {
    let root = tree
        .root_from(size, &mut |lo, hi| {
            Ok(leaves[lo as usize..hi as usize].to_vec())
        })
        .unwrap()
        .unwrap();
    let served = Served { tree, leaves, size };
    let reader = TileHashReader::new(size, tlog_tiles::Hash(root), &served);
    assert_eq!(tree_hash(size, &reader).unwrap().0, root, "size {size}");
    let n = probe % size;
    let proof = prove_record(size, n, &reader).unwrap();
    check_record(
        &proof,
        size,
        tlog_tiles::Hash(root),
        n,
        tlog_tiles::Hash(leaves[n as usize]),
    )
    .unwrap();
}

#[test]
fn tiles_at_every_boundary_up_to_level_two_recompute_the_root() {
    let (tree, leaves) = tree_of(65_536 + 257);
    for size in [
        1,
        255,
        256,
        257,
        511,
        512,
        1023,
        1024,
        1025,
        65_535,
        65_536,
        65_537,
        65_536 + 257,
    ] {
        check(&tree, &leaves, size, size / 2 + 3);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn tiles_of_any_size_recompute_the_root(size in 1u64..5_000, probe in any::<u64>()) {
        let (tree, leaves) = tree_of(size + 100);
        check(&tree, &leaves, size, probe);
    }
}
