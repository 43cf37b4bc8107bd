//! The verifiable ledger: the RFC 9162 Merkle tree over the event log, C2SP signed
//! checkpoints, inclusion and consistency proofs, evidence bundles and their offline
//! verification, C2SP tiles, and the C2SP witness protocol's messages and rules.
//!
//! Pure: no IO, no clock. The broker feeds it the log's bytes; `rofr verify` feeds it a
//! bundle and a key. An auditor can check everything here with their own tools, because
//! the formats are the RFC's and C2SP's to the byte (docs/ledger.md).

pub mod evidence;
pub mod multiproof;
pub mod note;
pub mod tiles;
pub mod tree;
pub mod witness;

pub use note::{Checkpoint, CosignerKey, CosigningKey, NoteError, SigningKey, VerifierKey};
pub use tree::{
    leaf_hash, no_leaves, node_hash, verify_consistency, verify_inclusion, Hash, LeafSource,
    MerkleTree, Unreadable,
};
