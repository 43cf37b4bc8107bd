//! Known answers from the RFC 6962 reference test suites and the C2SP/Go signed-note
//! example, re-typed as data, and exhaustive checks for every tree size up to 300.

use proptest::prelude::*;
use rofr_ledger::tree::{
    empty_root, leaf_hash, node_hash, verify_consistency, verify_inclusion, Hash, MerkleTree,
};
use rofr_ledger::{Checkpoint, SigningKey, Unreadable, VerifierKey};

fn h(hex_text: &str) -> Hash {
    hex::decode(hex_text).unwrap().try_into().unwrap()
}

/// The eight leaves of the reference suite.
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// MTH of the first n leaves, n = 1..8.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn reference_tree() -> MerkleTree {
    let mut tree = MerkleTree::new();
    for leaf in LEAVES {
        tree.append(&hex::decode(leaf).unwrap());
    }
    tree
}

#[test]
fn roots_match_the_reference_suite() {
    let tree = reference_tree();
    assert_eq!(
        tree.root(0).unwrap(),
        h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    for (n, root) in ROOTS.iter().enumerate() {
        assert_eq!(tree.root(n as u64 + 1).unwrap(), h(root), "size {}", n + 1);
    }
}

#[test]
fn inclusion_proofs_match_the_reference_suite() {
    // (leaf index from 0, tree size, audit path)
    let cases: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    let tree = reference_tree();
    for (index, size, path) in cases {
        let expected: Vec<Hash> = path.iter().map(|p| h(p)).collect();
        assert_eq!(
            tree.inclusion_proof(index, size).unwrap(),
            expected,
            "leaf {index} of {size}"
        );
        let leaf = leaf_hash(&hex::decode(LEAVES[index as usize]).unwrap());
        let root = h(ROOTS[size as usize - 1]);
        assert!(verify_inclusion(index, size, &leaf, &expected, &root));
        assert!(!verify_inclusion(index ^ 1, size, &leaf, &expected, &root) || size == 1);
    }
}

#[test]
fn consistency_proofs_match_the_reference_suite() {
    let cases: [(u64, u64, &[&str]); 4] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    let tree = reference_tree();
    for (old, new, path) in cases {
        let expected: Vec<Hash> = path.iter().map(|p| h(p)).collect();
        assert_eq!(
            tree.consistency_proof(old, new).unwrap(),
            expected,
            "{old} -> {new}"
        );
        let (r1, r2) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
        assert!(verify_consistency(old, new, &r1, &r2, &expected));
        if !expected.is_empty() {
            assert!(
                !verify_consistency(old, new, &r2, &r1, &expected),
                "swapped roots"
            );
        }
    }
}

#[test]
fn the_go_signed_note_example_is_reproduced_and_verified() {
    let signer = SigningKey::from_private_text(
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
    )
    .unwrap();
    assert_eq!(
        signer.verifier_key(),
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    );
    let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
    let note = signer.sign(text).unwrap();
    assert_eq!(
        note,
        format!("{text}\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")
    );
    let verifier = VerifierKey::parse(&signer.verifier_key()).unwrap();
    assert_eq!(verifier.open(&note).unwrap(), text);
    assert!(verifier
        .open(&note.replace("cryptography", "cryptographY"))
        .is_err());
    assert!(VerifierKey::parse(
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    )
    .is_err());
}

#[test]
fn a_checkpoint_body_round_trips() {
    let checkpoint = Checkpoint {
        origin: "rofr.example/log".into(),
        size: 8,
        root: h(ROOTS[7]),
    };
    assert_eq!(
        checkpoint.body(),
        "rofr.example/log\n8\nXcnaeacGWamtVZy3Ad7Zoqudgjqt L0lgz+Nw7/RgQyg=\n".replace(' ', "")
    );
    assert_eq!(Checkpoint::parse(&checkpoint.body()).unwrap(), checkpoint);
    assert!(Checkpoint::parse("origin\n08\nXcna\n").is_err());
}

/// MTH by the RFC's definition, directly on a slice of leaf hashes.
fn reference_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
        }
    }
}

/// A tree of `n` leaves (the entries are 0, 1, … as four bytes), and its leaf hashes.
fn tree_of(n: u32) -> (MerkleTree, Vec<Hash>) {
    let mut tree = MerkleTree::new();
    let mut leaves = Vec::new();
    for i in 0..n {
        let data = i.to_be_bytes();
        tree.append(&data);
        leaves.push(leaf_hash(&data));
    }
    (tree, leaves)
}

#[test]
fn every_proof_verifies_for_every_tree_size_up_to_300() {
    let (tree, leaves) = tree_of(300);
    for size in 1..=300u64 {
        let root = tree.root(size).unwrap();
        assert_eq!(
            root,
            reference_root(&leaves[..size as usize]),
            "root of {size}"
        );
        for index in 0..size {
            let proof = tree.inclusion_proof(index, size).unwrap();
            assert!(
                verify_inclusion(index, size, &leaves[index as usize], &proof, &root),
                "leaf {index} of {size}"
            );
        }
        for old in 0..=size {
            let proof = tree.consistency_proof(old, size).unwrap();
            let old_root = tree.root(old).unwrap();
            assert!(
                verify_consistency(old, size, &old_root, &root, &proof),
                "{old} -> {size}"
            );
        }
    }
}

/// The tree keeps each level in blocks of 4,096 hashes: roots and proofs around the
/// blocks' edges, in a tree of more than three blocks of leaves (and so two of nodes on
/// the level above).
#[test]
fn roots_and_proofs_hold_across_the_levels_blocks() {
    const BLOCK: u64 = 4096;
    let total = 3 * BLOCK + 5;
    let (tree, leaves) = tree_of(total as u32);
    assert_eq!(tree.len(), total);
    let edges = [
        BLOCK - 1,
        BLOCK,
        BLOCK + 1,
        2 * BLOCK,
        2 * BLOCK + 3,
        3 * BLOCK,
        total,
    ];
    for &size in &edges {
        let root = tree.root(size).unwrap();
        assert_eq!(
            root,
            reference_root(&leaves[..size as usize]),
            "root of {size}"
        );
        for index in [
            0,
            BLOCK - 2,
            BLOCK - 1,
            BLOCK,
            2 * BLOCK - 1,
            2 * BLOCK,
            size - 1,
        ] {
            if index >= size {
                continue;
            }
            assert_eq!(tree.leaf(index), Some(&leaves[index as usize]));
            let proof = tree.inclusion_proof(index, size).unwrap();
            assert!(
                verify_inclusion(index, size, &leaves[index as usize], &proof, &root),
                "leaf {index} of {size}"
            );
        }
        for &old in edges.iter().filter(|&&old| old <= size) {
            let proof = tree.consistency_proof(old, size).unwrap();
            let old_root = tree.root(old).unwrap();
            assert!(
                verify_consistency(old, size, &old_root, &root, &proof),
                "{old} -> {size}"
            );
        }
    }
    assert_eq!(tree.leaf(total), None);
}

/// A forgetful tree of blocks of 8 leaves over `leaves`.
fn forgetful_of(leaves: &[Hash]) -> MerkleTree {
    let mut tree = MerkleTree::forgetful(3);
    for leaf in leaves {
        tree.push_leaf_hash(*leaf);
    }
    tree
}

/// A forgetful tree (blocks of 8 leaves) answers every root and proof exactly as a full
/// tree does, for every size up to 70, reading forgotten leaves back only where a
/// proof needs them, and a whole block at a time.
#[test]
fn a_forgetful_tree_proves_what_a_full_tree_proves() {
    let (full, leaves) = tree_of(70);
    let forgetful = forgetful_of(&leaves);
    assert_eq!(forgetful.len(), 70);
    // The lower levels are kept only after the last whole block (64..70).
    assert_eq!(forgetful.leaf(63), None);
    assert_eq!(forgetful.leaf(64), Some(&leaves[64]));
    assert_eq!(
        forgetful.root(70),
        full.root(70),
        "the whole tree's root needs no reads"
    );
    let mut reads: Vec<(u64, u64)> = Vec::new();
    let mut source = |lo: u64, hi: u64| -> Result<Vec<Hash>, Unreadable> {
        reads.push((lo, hi));
        Ok(leaves[lo as usize..hi as usize].to_vec())
    };
    for size in 0..=70 {
        assert_eq!(
            forgetful.root_from(size, &mut source).unwrap(),
            full.root(size),
            "root of {size}"
        );
        for index in 0..size {
            assert_eq!(
                forgetful
                    .inclusion_proof_from(index, size, &mut source)
                    .unwrap(),
                full.inclusion_proof(index, size),
                "leaf {index} of {size}"
            );
        }
        for old in 0..=size {
            assert_eq!(
                forgetful
                    .consistency_proof_from(old, size, &mut source)
                    .unwrap(),
                full.consistency_proof(old, size),
                "{old} -> {size}"
            );
        }
    }
    assert_eq!(
        forgetful.inclusion_proof_from(3, 71, &mut source).unwrap(),
        None
    );
    assert!(!reads.is_empty());
    assert!(reads
        .iter()
        .all(|&(lo, hi)| lo % 8 == 0 && hi == lo + 8 && hi <= 64));
}

/// Leaves read back that do not hash to the kept block node, or too few of them, are
/// refused rather than turned into a proof.
#[test]
fn a_forgetful_tree_refuses_leaves_that_changed() {
    let (_, leaves) = tree_of(40);
    let tree = forgetful_of(&leaves);
    let mut changed = |lo: u64, hi: u64| -> Result<Vec<Hash>, Unreadable> {
        let mut read = leaves[lo as usize..hi as usize].to_vec();
        read[2][0] ^= 1;
        Ok(read)
    };
    let error = tree.inclusion_proof_from(5, 40, &mut changed).unwrap_err();
    assert!(error.0.contains("entries 0..8"), "{error}");
    assert!(error.0.contains("do not hash"), "{error}");
    let mut short = |lo: u64, hi: u64| Ok(leaves[lo as usize..hi as usize - 1].to_vec());
    let error = tree.consistency_proof_from(9, 40, &mut short).unwrap_err();
    assert!(error.0.contains("7 leaves read back, not 8"), "{error}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_changed_proof_or_leaf_never_verifies(size in 1u64..300, index_seed in any::<u64>(), flip in any::<(usize, u8)>()) {
        let mut tree = MerkleTree::new();
        for i in 0..size { tree.append(&i.to_be_bytes()); }
        let index = index_seed % size;
        let root = tree.root(size).unwrap();
        let leaf = leaf_hash(&index.to_be_bytes());
        let mut proof = tree.inclusion_proof(index, size).unwrap();
        let bit = 1u8 << (flip.1 % 8);
        if proof.is_empty() {
            let mut wrong = leaf;
            wrong[flip.0 % 32] ^= bit;
            prop_assert!(!verify_inclusion(index, size, &wrong, &proof, &root));
        } else {
            let at = flip.0 % proof.len();
            proof[at][flip.0 % 32] ^= bit;
            prop_assert!(!verify_inclusion(index, size, &leaf, &proof, &root));
        }
    }

    #[test]
    fn a_changed_consistency_proof_never_verifies(new in 2u64..300, old_seed in any::<u64>(), flip in any::<(usize, u8)>()) {
        let mut tree = MerkleTree::new();
        for i in 0..new { tree.append(&i.to_be_bytes()); }
        let old = 1 + old_seed % (new - 1);
        let mut proof = tree.consistency_proof(old, new).unwrap();
        let at = flip.0 % proof.len();
        proof[at][flip.0 % 32] ^= 1u8 << (flip.1 % 8);
        prop_assert!(!verify_consistency(old, new, &tree.root(old).unwrap(), &tree.root(new).unwrap(), &proof));
    }
}
