//! A log a test controls whole: its entries, its signing key, and the C2SP
//! `add-checkpoint` requests it makes to a witness. Shared by the witness tests of
//! `rofr-server` and `rofr`.

use rofr_ledger::witness::AddCheckpoint;
use rofr_ledger::{Checkpoint, MerkleTree, SigningKey};

pub const ORIGIN: &str = "example.test/log";

pub struct Log {
    pub key: SigningKey,
    pub tree: MerkleTree,
}

impl Log {
    /// `entries` entries `entry <i>`; entry `changed`, if given, rewritten. The same key
    /// signs every such log: a rewritten one is signed with the real key.
    pub fn new(entries: u32, changed: Option<u32>) -> Log {
        let mut tree = MerkleTree::new();
        for i in 0..entries {
            let value = if Some(i) == changed { 1_000_000 } else { i };
            tree.append(format!("entry {value}").as_bytes());
        }
        Log {
            key: SigningKey::from_seed("example.test/log", &[7; 32]).unwrap(),
            tree,
        }
    }

    /// The signed checkpoint of the first `size` entries.
    pub fn note(&self, size: u64) -> String {
        let body = Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: self.tree.root(size).unwrap(),
        }
        .body();
        self.key.sign(&body).unwrap()
    }

    /// `add-checkpoint` from `old` to `size`, with the proof between them.
    pub fn request(&self, old: u64, size: u64) -> String {
        AddCheckpoint {
            old,
            proof: if old == 0 || old >= size {
                Vec::new()
            } else {
                self.tree.consistency_proof(old, size).unwrap()
            },
            checkpoint: self.note(size),
        }
        .body()
    }
}
