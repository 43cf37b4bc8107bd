//! The broker's side of the ledger: the Merkle tree kept beside the log, the signing
//! key, checkpoints made every N entries or T seconds and on demand, evidence bundles,
//! and the offline audit of a database.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rofr_ledger::evidence::{self, Bundle};
use rofr_ledger::{leaf_hash, Checkpoint, Hash, MerkleTree, SigningKey, Unreadable, VerifierKey};
use rofr_store::{Location, Store};

use crate::broker::BrokerError;
use crate::clock::Clock;

/// When checkpoints are made without being asked for.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    pub every_entries: u64,
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_entries: 1000,
            every: Duration::from_secs(10),
        }
    }
}

/// Where the signing key's file is by default: beside a SQLite file, or
/// `rofr-NAME.ledger-key` in the working directory for a PostgreSQL database `NAME`
/// (replicas on other machines are given the same file with `--ledger-key`). It is
/// readable only by its owner.
pub fn key_path(database: &Location) -> PathBuf {
    match database {
        Location::Sqlite(path) => {
            let mut name = path.as_os_str().to_owned();
            name.push(".ledger-key");
            PathBuf::from(name)
        }
        Location::Postgres(_) => PathBuf::from(format!("rofr-{}.ledger-key", database.name())),
    }
}

/// Reads the signing key at `path`, creating it (mode 0600) on first start.
pub fn load_or_create_key(path: &Path, deal_name: &str) -> Result<SigningKey, BrokerError> {
    if path.exists() {
        return read_key(path);
    }
    let name: String = format!("rofr-{deal_name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let seed: [u8; 32] = rand::random();
    let key = SigningKey::from_seed(&name, &seed).map_err(|e| BrokerError::Setup(e.to_string()))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        // Another replica made it a moment ago.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::thread::sleep(Duration::from_millis(100));
            return read_key(path);
        }
        Err(e) => {
            return Err(BrokerError::Setup(format!(
                "cannot create the ledger key {}: {e}",
                path.display()
            )))
        }
    };
    writeln!(file, "{}", key.private_text())
        .and_then(|()| file.sync_all())
        .map_err(|e| {
            BrokerError::Setup(format!(
                "cannot write the ledger key {}: {e}",
                path.display()
            ))
        })?;
    Ok(key)
}

fn read_key(path: &Path) -> Result<SigningKey, BrokerError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        BrokerError::Setup(format!(
            "cannot read the ledger key {}: {e}",
            path.display()
        ))
    })?;
    SigningKey::from_private_text(&text).map_err(|e| {
        BrokerError::Setup(format!(
            "the ledger key {} is not valid: {e}",
            path.display()
        ))
    })
}

/// The broker's tree keeps its lower levels only for the last 2^8 entries' block; a
/// proof reaching into an older block reads its 256 entries back from the log. Blocks
/// are C2SP tiles: every hash of a tile above level 0 is a node the tree keeps.
const TREE_BLOCK_BITS: u32 = 8;

/// Reads entries [lo, hi) back from the log, all of them, in order.
pub fn read_entries(
    store: &dyn Store,
    lo: u64,
    hi: u64,
) -> Result<Vec<rofr_store::StoredEvent>, Unreadable> {
    let count = u32::try_from(hi - lo)
        .map_err(|_| Unreadable(format!("entries {lo}..{hi}: too many to read at once")))?;
    let rows = store
        .events_after(lo.checked_sub(1), count)
        .map_err(|e| Unreadable(format!("reading entries {lo}..{hi} back: {e}")))?;
    for (expected, row) in (lo..hi).zip(&rows) {
        if row.index != expected {
            return Err(Unreadable(format!(
                "entry {expected} is missing from the log (the next is {})",
                row.index
            )));
        }
    }
    if rows.len() as u64 != hi - lo {
        return Err(Unreadable(format!(
            "entries {lo}..{hi}: the log holds only {} of them",
            rows.len()
        )));
    }
    Ok(rows)
}

/// Reads the leaf hashes of entries [lo, hi) back from the log, hashing each entry's
/// bytes afresh (the tree then checks them against the node it kept over them).
fn read_leaves(store: &dyn Store, lo: u64, hi: u64) -> Result<Vec<Hash>, Unreadable> {
    Ok(read_entries(store, lo, hi)?
        .iter()
        .map(|row| leaf_hash(&row.data))
        .collect())
}

fn unreadable(error: Unreadable) -> BrokerError {
    BrokerError::Setup(format!("the ledger could not read its log back: {error}"))
}

pub struct Ledger {
    tree: MerkleTree,
    key: SigningKey,
    origin: String,
    /// The latest checkpoint: its size and note, with the cosignatures gathered so far.
    latest: Option<(u64, String)>,
    /// The latest checkpoint every required witness has cosigned.
    witnessed: Option<(u64, String)>,
    last_made: Instant,
    pub policy: CheckpointPolicy,
}

impl Ledger {
    /// Builds the tree from the stored log (hashing each entry's bytes afresh).
    pub fn open(key: &Path, deal_name: &str, store: &mut dyn Store) -> Result<Ledger, BrokerError> {
        let key = load_or_create_key(key, deal_name)?;
        let origin = match store.meta("ledger_origin")? {
            Some(origin) => origin,
            None => {
                let suffix: [u8; 4] = rand::random();
                let origin = format!("rofr.local/{}/{}", key.name(), hex::encode(suffix));
                store.init_meta("ledger_origin", &origin)?
            }
        };
        let tree = MerkleTree::forgetful(TREE_BLOCK_BITS);
        let latest = store.checkpoints()?.pop();
        Ok(Ledger {
            tree,
            key,
            origin,
            latest,
            witnessed: None,
            last_made: Instant::now(),
            policy: CheckpointPolicy::default(),
        })
    }

    /// Appends one entry's bytes as a leaf (while the log is read at start).
    pub fn append_entry(&mut self, data: &[u8]) {
        self.tree.append(data);
    }

    /// The audit path of entry `index` in the tree of the first `size` entries; `None`
    /// unless index < size ≤ the log's length.
    pub fn inclusion_proof(
        &self,
        index: u64,
        size: u64,
        store: &dyn Store,
    ) -> Result<Option<Vec<Hash>>, BrokerError> {
        self.tree
            .inclusion_proof_from(index, size, &mut |lo, hi| read_leaves(store, lo, hi))
            .map_err(unreadable)
    }

    /// The consistency proof between the first `old` and the first `new` entries; `None`
    /// unless old ≤ new ≤ the log's length.
    pub fn consistency_proof(
        &self,
        old: u64,
        new: u64,
        store: &dyn Store,
    ) -> Result<Option<Vec<Hash>>, BrokerError> {
        self.tree
            .consistency_proof_from(old, new, &mut |lo, hi| read_leaves(store, lo, hi))
            .map_err(unreadable)
    }

    pub fn verifier_key(&self) -> String {
        self.key.verifier_key()
    }

    pub fn latest(&self) -> Option<&(u64, String)> {
        self.latest.as_ref()
    }

    /// The checkpoints' origin line.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The entries the log holds, as the tree has them.
    pub fn size(&self) -> u64 {
        self.tree.len()
    }

    /// The latest checkpoint every required witness has cosigned.
    pub fn witnessed(&self) -> Option<&(u64, String)> {
        self.witnessed.as_ref()
    }

    /// Takes the cosigned note of the checkpoint of `size`: as the latest, if it is the
    /// latest; as the witnessed one, if `witnessed`.
    pub fn cosigned(&mut self, size: u64, note: &str, witnessed: bool) {
        if let Some(latest) = self.latest.as_mut().filter(|(s, _)| *s == size) {
            latest.1 = note.to_owned();
        }
        if witnessed && self.witnessed.as_ref().is_none_or(|(s, _)| *s <= size) {
            self.witnessed = Some((size, note.to_owned()));
        }
    }

    /// A hash tile above level 0 of the tree of the latest checkpoint's size, or `None`
    /// where that tree has no such tile. Its hashes are nodes of 256 leaves or more,
    /// which the tree keeps: nothing is read from the log. (Level 0 is the entries'
    /// own hashes, which the API reads from the log.)
    pub fn tile(
        &self,
        tile: &rofr_ledger::tiles::TilePath,
    ) -> Result<Option<Vec<u8>>, BrokerError> {
        let size = self.latest.as_ref().map_or(0, |(s, _)| *s);
        self.tree
            .tile(tile, size, &mut rofr_ledger::no_leaves)
            .map_err(unreadable)
    }

    pub fn append(&mut self, hashes: impl IntoIterator<Item = [u8; 32]>) {
        for hash in hashes {
            self.tree.push_leaf_hash(hash);
        }
    }

    /// Whether the policy asks for a checkpoint now.
    pub fn due(&self) -> bool {
        let signed = self.latest.as_ref().map_or(0, |(size, _)| *size);
        let grown = self.tree.len() - signed;
        grown >= self.policy.every_entries
            || (grown > 0 && self.last_made.elapsed() >= self.policy.every)
    }

    /// Reads the witnessed checkpoint back from the stored notes: the latest carrying a
    /// valid cosignature by every key in `required`.
    pub fn find_witnessed(
        &mut self,
        checkpoints: &[(u64, String)],
        required: &[rofr_ledger::CosignerKey],
    ) {
        if required.is_empty() {
            self.witnessed = None;
            return;
        }
        self.witnessed = checkpoints
            .iter()
            .rev()
            .find(|(_, note)| required.iter().all(|k| k.check(note).is_ok()))
            .cloned();
    }

    /// Signs a checkpoint of the whole tree (or returns the latest, if nothing grew).
    pub fn checkpoint(&mut self) -> (u64, String) {
        let size = self.tree.len();
        if let Some(latest) = self.latest.as_ref().filter(|(s, _)| *s == size) {
            return latest.clone();
        }
        let body = Checkpoint {
            origin: self.origin.clone(),
            size,
            root: self.tree.root(size).expect("the size is the tree's"),
        }
        .body();
        let note = self
            .key
            .sign(&body)
            .expect("checkpoint bodies end with a newline");
        self.latest = Some((size, note.clone()));
        self.last_made = Instant::now();
        (size, note)
    }

    /// The checkpoint to prove `needed` entries against: the witnessed one where it
    /// covers them (its cosignatures make the proof evidence against the operator too),
    /// else the latest, signed now if it falls short. Says whether one was signed.
    fn covering(&mut self, needed: u64) -> (Option<(u64, String)>, bool) {
        let mut made = false;
        let witnessed = self.witnessed.clone().filter(|(size, _)| *size >= needed);
        if witnessed.is_none() && self.latest.as_ref().is_none_or(|(size, _)| *size < needed) {
            self.checkpoint();
            made = true;
        }
        (witnessed.or_else(|| self.latest.clone()), made)
    }

    /// A multi-leaf proof of the entries `indexes` (increasing) against the checkpoint
    /// [`Ledger::covering`] picks: its size and note, the proof's runs, and whether the
    /// checkpoint was signed now. `None` where an index lies beyond the log.
    #[allow(clippy::type_complexity)]
    pub fn multi_proof(
        &mut self,
        indexes: &[u64],
        store: &dyn Store,
    ) -> Result<Option<(u64, String, Vec<Vec<Hash>>, bool)>, BrokerError> {
        let needed = indexes.last().map_or(0, |i| i + 1);
        if needed > self.tree.len() {
            return Ok(None);
        }
        let (covering, made) = self.covering(needed);
        let Some((size, note)) = covering else {
            return Ok(None);
        };
        let source = &mut |lo: u64, hi: u64| read_leaves(store, lo, hi);
        let runs = self
            .tree
            .multi_proof_from(indexes, size, source)
            .map_err(unreadable)?;
        Ok(runs.map(|runs| (size, note, runs, made)))
    }

    /// An evidence bundle for the entries (index, bytes) of one need, against the latest
    /// checkpoint, made now if it does not cover them all; `store` gives back the
    /// leaves the tree let go of.
    pub fn evidence(
        &mut self,
        holder: Option<String>,
        view: Option<evidence::View>,
        entries: &[(u64, Vec<u8>)],
        store: &dyn Store,
    ) -> Result<Option<(Bundle, bool)>, BrokerError> {
        let needed = entries.last().map_or(0, |(i, _)| i + 1);
        let (covering, made) = self.covering(needed);
        let Some((size, note)) = covering else {
            return Ok(None);
        };
        // One proof per entry, and a need's entries mostly share blocks: the last block
        // read is kept for the next proof rather than read from the log again.
        let mut last: Option<(u64, Vec<Hash>)> = None;
        let source = &mut |lo: u64, hi: u64| {
            if let Some((at, leaves)) = &last {
                if *at == lo && leaves.len() as u64 == hi - lo {
                    return Ok(leaves.clone());
                }
            }
            let leaves = read_leaves(store, lo, hi)?;
            last = Some((lo, leaves.clone()));
            Ok(leaves)
        };
        let Some(root) = self.tree.root_from(size, source).map_err(unreadable)? else {
            return Ok(None);
        };
        let checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size,
            root,
        };
        let bundle = evidence::build(
            &self.tree,
            source,
            &checkpoint,
            note,
            self.verifier_key(),
            entries,
        )
        .map_err(unreadable)?;
        Ok(bundle.map(|b| {
            let bundle = Bundle {
                holder,
                shown_to: view,
                ..b
            };
            (bundle, made)
        }))
    }
}

/// What `rofr ledger audit` found.
#[derive(Debug)]
pub struct Audit {
    pub entries: u64,
    pub checkpoints: usize,
    /// The first problem found, naming the entry where one can be named.
    pub problem: Option<String>,
}

/// Recomputes the tree from the database, checks each entry against its recorded
/// leaf hash, and each stored checkpoint's signature, root and consistency with the
/// one before it.
pub fn audit(database: &Location, key: &VerifierKey) -> Result<Audit, BrokerError> {
    let checkpoints = database.open()?.checkpoints()?;
    let mut audit = Audit {
        entries: 0,
        checkpoints: checkpoints.len(),
        problem: None,
    };
    // One thread reads the log while this one hashes it, so that on two cores reading
    // and hashing overlap. Entries travel in chunks: one buffer of bytes and one of
    // (index, end offset, recorded hash) per few thousand entries.
    struct Chunk {
        bytes: Vec<u8>,
        entries: Vec<(u64, usize, Option<[u8; 32]>)>,
    }
    let new_chunk = || Chunk {
        bytes: Vec::with_capacity(1 << 20),
        entries: Vec::with_capacity(4096),
    };
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Chunk>(4);
    let mut tree = MerkleTree::new();
    let scanned = std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> Result<(), BrokerError> {
            let store = database.open()?;
            let mut chunk = new_chunk();
            store.scan_log(&mut |index, data, recorded| {
                chunk.bytes.extend_from_slice(data);
                let recorded = recorded.map(|r| <[u8; 32]>::try_from(r).unwrap_or([0; 32]));
                chunk.entries.push((index, chunk.bytes.len(), recorded));
                if chunk.entries.len() == 4096 {
                    return sender
                        .send(std::mem::replace(&mut chunk, new_chunk()))
                        .is_ok();
                }
                true
            })?;
            let _ = sender.send(chunk);
            Ok(())
        });
        'chunks: for chunk in receiver {
            let mut start = 0;
            for (index, end, recorded) in chunk.entries {
                let data = &chunk.bytes[start..end];
                start = end;
                let position = tree.len();
                if index != position {
                    audit.problem = Some(format!(
                        "entry {position} is missing: the log jumps from entry {} to entry {index} (removed or reordered)",
                        position.saturating_sub(1),
                    ));
                    break 'chunks;
                }
                let computed = leaf_hash(data);
                if recorded.is_some_and(|r| r != computed) {
                    audit.problem = Some(format!(
                        "entry {position} was altered: its bytes no longer hash to the leaf recorded when it was appended"
                    ));
                    break 'chunks;
                }
                tree.push_leaf_hash(computed);
            }
        }
        reader.join()
    });
    scanned.map_err(|_| BrokerError::Setup("the log reader stopped unexpectedly".into()))??;
    audit.entries = tree.len();
    if audit.problem.is_some() {
        return Ok(audit);
    }
    let mut previous: Option<Checkpoint> = None;
    for (size, note) in &checkpoints {
        let body = match key.open(note) {
            Ok(body) => body,
            Err(e) => {
                audit.problem = Some(format!(
                    "the checkpoint of {size} entries does not verify: {e}"
                ));
                return Ok(audit);
            }
        };
        let checkpoint = match Checkpoint::parse(body) {
            Ok(c) if c.size == *size => c,
            Ok(c) => {
                audit.problem = Some(format!(
                    "the checkpoint stored as size {size} says size {}",
                    c.size
                ));
                return Ok(audit);
            }
            Err(e) => {
                audit.problem = Some(format!("the checkpoint of {size} entries: {e}"));
                return Ok(audit);
            }
        };
        let from = previous.as_ref().map_or(0, |p| p.size);
        if checkpoint.size > tree.len() {
            audit.problem = Some(format!(
                "entry {} is missing: a signed checkpoint covers {} entries but the log holds {}",
                tree.len(),
                checkpoint.size,
                tree.len()
            ));
            return Ok(audit);
        }
        if tree.root(checkpoint.size) != Some(checkpoint.root) {
            audit.problem = Some(format!(
                "an entry between {from} and {} was altered, removed or reordered together with its recorded hash: the log no longer matches the checkpoint of {} entries",
                checkpoint.size - 1,
                checkpoint.size
            ));
            return Ok(audit);
        }
        if let Some(p) = &previous {
            let proof = tree
                .consistency_proof(p.size, checkpoint.size)
                .expect("sizes within the tree");
            if !rofr_ledger::verify_consistency(
                p.size,
                checkpoint.size,
                &p.root,
                &checkpoint.root,
                &proof,
            ) {
                audit.problem = Some(format!(
                    "the checkpoints of {} and {} entries are not consistent: history was rewritten",
                    p.size, checkpoint.size
                ));
                return Ok(audit);
            }
        }
        previous = Some(checkpoint);
    }
    Ok(audit)
}

/// The time checkpoints record: wall-clock, for operators.
pub fn now_text() -> String {
    Clock::System.now().to_string()
}
