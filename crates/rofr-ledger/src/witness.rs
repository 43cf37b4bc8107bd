//! C2SP `tlog-witness`: the `add-checkpoint` request's body, and the rules a witness
//! applies before it cosigns. Pure: the witness service keeps the state and the key.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::note::Checkpoint;
use crate::tree::{verify_consistency, Hash};

/// The most consistency proof lines a request may carry.
pub const MAX_PROOF_LINES: usize = 63;

/// The media type of a 409 answer's body: the size the witness holds.
pub const SIZE_MEDIA_TYPE: &str = "text/x.tlog.size";

/// `POST <prefix>/add-checkpoint`: the old size, a consistency proof from it, and the
/// signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old: u64,
    pub proof: Vec<Hash>,
    /// The whole signed note.
    pub checkpoint: String,
}

impl AddCheckpoint {
    /// `old <size>`, one base64 hash a line, an empty line, the checkpoint.
    pub fn body(&self) -> String {
        let mut body = format!("old {}\n", self.old);
        for hash in &self.proof {
            body.push_str(&B64.encode(hash));
            body.push('\n');
        }
        body.push('\n');
        body.push_str(&self.checkpoint);
        body
    }

    pub fn parse(body: &str) -> Result<AddCheckpoint, String> {
        let (first, mut rest) = body
            .split_once('\n')
            .ok_or("the body begins with an `old <size>` line")?;
        let old = first
            .strip_prefix("old ")
            .filter(|n| {
                !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_digit())
                    && (*n == "0" || !n.starts_with('0'))
            })
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or("the first line is `old` and a size in decimal with no leading zeroes")?;
        let mut proof = Vec::new();
        loop {
            let (line, after) = rest
                .split_once('\n')
                .ok_or("an empty line ends the consistency proof")?;
            rest = after;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(format!(
                    "a consistency proof has at most {MAX_PROOF_LINES} lines"
                ));
            }
            let hash = B64
                .decode(line)
                .ok()
                .and_then(|h| <Hash>::try_from(h).ok())
                .ok_or_else(|| format!("`{line}` is not the base64 of a 32-byte hash"))?;
            proof.push(hash);
        }
        if rest.is_empty() {
            return Err("no checkpoint follows the empty line".into());
        }
        Ok(AddCheckpoint {
            old,
            proof,
            checkpoint: rest.to_owned(),
        })
    }
}

/// What a witness does with a request whose checkpoint's signature verified, given
/// the checkpoint it last cosigned for that origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Cosign, and hold the new checkpoint (unless it is the one held).
    Cosign,
    /// 400: the old size is above the checkpoint's.
    OldAboveNew,
    /// 409 with the size held: the client's old size is not the witness's.
    Stale { held: u64 },
    /// 409: the same size as the one held, with another root. Proof of a fork.
    Fork,
    /// 422: the proof does not show the checkpoint extends the one held (or a proof
    /// was sent from size zero). Kept: it may be proof of a rewritten history.
    Inconsistent,
}

pub fn judge(held: Option<&Checkpoint>, old: u64, proof: &[Hash], new: &Checkpoint) -> Judgement {
    if old > new.size {
        return Judgement::OldAboveNew;
    }
    let held_size = held.map_or(0, |h| h.size);
    if old != held_size {
        return Judgement::Stale { held: held_size };
    }
    let Some(held) = held.filter(|h| h.size > 0) else {
        return if proof.is_empty() {
            Judgement::Cosign
        } else {
            Judgement::Inconsistent
        };
    };
    if new.size == held.size {
        return if new.root == held.root && proof.is_empty() {
            Judgement::Cosign
        } else if new.root == held.root {
            Judgement::Inconsistent
        } else {
            Judgement::Fork
        };
    }
    if verify_consistency(held.size, new.size, &held.root, &new.root, proof) {
        Judgement::Cosign
    } else {
        Judgement::Inconsistent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::MerkleTree;

    fn checkpoint(tree: &MerkleTree, size: u64) -> Checkpoint {
        Checkpoint {
            origin: "example.test/log".into(),
            size,
            root: tree.root(size).unwrap(),
        }
    }

    #[test]
    fn the_body_reads_back_as_written() {
        let request = AddCheckpoint {
            old: 20,
            proof: vec![[1; 32], [2; 32]],
            checkpoint: "example.test/log\n25\nAAAA\n\n— x y\n".into(),
        };
        assert_eq!(AddCheckpoint::parse(&request.body()).unwrap(), request);
        for bad in [
            "old 01\n\nn\n",
            "old -1\n\nn\n",
            "old 1\nnot base64\n\nn\n",
            "old 1\n",
            "old 1\n\n",
            "new 1\n\nn\n",
        ] {
            assert!(AddCheckpoint::parse(bad).is_err(), "{bad:?} parsed");
        }
        let long = format!(
            "old 1\n{}\nn\n",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n".repeat(64)
        );
        assert!(AddCheckpoint::parse(&long).unwrap_err().contains("63"));
    }

    #[test]
    fn a_witness_cosigns_growth_and_refuses_forks_and_rollbacks() {
        let mut tree = MerkleTree::new();
        for i in 0..40u32 {
            tree.append(&i.to_be_bytes());
        }
        let mut other = MerkleTree::new();
        for i in 0..40u32 {
            other.append(&(if i == 3 { 99 } else { i }).to_be_bytes());
        }
        let held = checkpoint(&tree, 20);
        let grown = checkpoint(&tree, 40);
        let proof = tree.consistency_proof(20, 40).unwrap();
        assert_eq!(judge(Some(&held), 20, &proof, &grown), Judgement::Cosign);
        assert_eq!(judge(None, 0, &[], &grown), Judgement::Cosign);
        assert_eq!(judge(None, 0, &proof, &grown), Judgement::Inconsistent);
        assert_eq!(
            judge(Some(&held), 10, &proof, &grown),
            Judgement::Stale { held: 20 }
        );
        assert_eq!(
            judge(Some(&held), 0, &[], &grown),
            Judgement::Stale { held: 20 }
        );
        assert_eq!(
            judge(Some(&grown), 40, &[], &checkpoint(&tree, 20)),
            Judgement::OldAboveNew
        );
        assert_eq!(judge(Some(&held), 20, &[], &held), Judgement::Cosign);
        // The rewritten log: its own proof, the same size, or the honest proof.
        let rewritten = checkpoint(&other, 40);
        let their_proof = other.consistency_proof(20, 40).unwrap();
        assert_eq!(
            judge(Some(&held), 20, &their_proof, &rewritten),
            Judgement::Inconsistent
        );
        assert_eq!(
            judge(Some(&held), 20, &proof, &rewritten),
            Judgement::Inconsistent
        );
        assert_eq!(
            judge(Some(&held), 20, &[], &checkpoint(&other, 20)),
            Judgement::Fork
        );
    }
}
