//! The period export (docs/export.md): JSON Lines, a header with the signed checkpoint,
//! one line per entry in index order carrying the multi-leaf proof's hashes that come
//! before it, and an end line with the rest. Read here as it streams: each entry is
//! handed on once its bytes match its leaf hash, and the export is accepted only when
//! every entry and hash rebuild the checkpoint's root.

use std::collections::VecDeque;
use std::io::BufRead;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rofr_ledger::multiproof::{multi_root, MultiSource};
use rofr_ledger::note::split_note;
use rofr_ledger::{leaf_hash, Checkpoint, CosignerKey, Hash, NoteError, VerifierKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub const FORMAT: &str = "rofr-export/1";

/// Sees each entry as it is read: (header, index, bytes).
pub type Visit<'a> = dyn FnMut(&Header, u64, &[u8]) -> Result<(), String> + 'a;

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    /// The period, RFC 3339: needs active at some moment of [from, to).
    pub from: String,
    pub to: String,
    /// Set where the export was made for one provider and holds only what it may see.
    pub shown_to: Option<String>,
    /// The log's verifier key as the broker gave it (a verifier uses its own).
    pub verifier_key: String,
    /// The signed checkpoint note, whole, with its cosignatures.
    pub checkpoint: String,
}

/// One entry's line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryLine<'a> {
    pub index: u64,
    /// Base64 of the entry's RFC 9162 leaf hash.
    pub leaf: String,
    /// Base64 hashes of the multi-leaf proof that come before this entry.
    pub proof: Vec<String>,
    /// The entry's bytes exactly as the log holds them (a JSON object).
    #[serde(borrow)]
    pub entry: &'a RawValue,
}

/// The last line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct End {
    /// How many entry lines came before.
    pub entries: u64,
    /// The proof's hashes after the last entry.
    pub proof: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    end: End,
}

/// The header's line.
pub fn header_line(header: &Header) -> String {
    let mut line = serde_json::to_string(header).expect("a header serializes");
    line.push('\n');
    line
}

/// An entry's line, from its bytes (one JSON object, as logged).
pub fn entry_line(index: u64, data: &[u8], proof: &[Hash]) -> Result<String, String> {
    let text = std::str::from_utf8(data).map_err(|e| format!("entry {index}: not UTF-8: {e}"))?;
    let entry: &RawValue =
        serde_json::from_str(text).map_err(|e| format!("entry {index}: not JSON: {e}"))?;
    let line = EntryLine {
        index,
        leaf: B64.encode(leaf_hash(data)),
        proof: proof.iter().map(|h| B64.encode(h)).collect(),
        entry,
    };
    let mut line = serde_json::to_string(&line).expect("a line serializes");
    line.push('\n');
    Ok(line)
}

/// The end's line.
pub fn end_line(entries: u64, proof: &[Hash]) -> String {
    let end = EndLine {
        end: End {
            entries,
            proof: proof.iter().map(|h| B64.encode(h)).collect(),
        },
    };
    let mut line = serde_json::to_string(&end).expect("an end serializes");
    line.push('\n');
    line
}

/// Why an export was refused: where, and which entry where one is to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", where_.as_deref().unwrap_or("the export"), entry.map(|e| format!(" (entry {e})")).unwrap_or_default())]
pub struct ExportError {
    /// `FILE:LINE` where known.
    pub where_: Option<String>,
    pub entry: Option<u64>,
    pub message: String,
}

/// What reading an export established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub header: Header,
    pub checkpoint: Checkpoint,
    /// The key the checkpoint was checked with.
    pub signed_by: String,
    /// Each witness whose cosignature was checked, and its time (POSIX seconds).
    pub cosigned_by: Vec<(String, u64)>,
    /// Names on other signature lines of the note, which no key given could check.
    pub unchecked_signatures: Vec<String>,
    pub entries: u64,
    /// The first and last entries' indexes, where there are entries.
    pub span: Option<(u64, u64)>,
    /// SHA-256 of the export's bytes, lowercase hex.
    pub sha256: String,
}

/// Reads an export from `input` (named `name` in errors), checking the checkpoint with
/// `key`, each `witnesses`' cosignature on it, every entry's bytes against its leaf
/// hash and the whole against the checkpoint's root. `visit(header, index, bytes)` sees
/// each entry as it is read; its error stops the reading, naming the entry. Nothing
/// `visit` did counts until this returns `Ok`: the root is known only at the end.
pub fn read(
    input: impl BufRead,
    name: &str,
    key: &VerifierKey,
    witnesses: &[CosignerKey],
    visit: &mut Visit<'_>,
) -> Result<Verified, ExportError> {
    let mut reader = Reader {
        lines: Hashing::new(input),
        name,
        line: 0,
        header: None,
        next: None,
        pending: VecDeque::new(),
        end: None,
        entries: 0,
        first_index: None,
        last_index: None,
        visit,
    };
    let first = reader
        .read_line()?
        .ok_or_else(|| reader.fail(None, "the export is empty"))?;
    let header: Header =
        serde_json::from_str(&first).map_err(|e| reader.fail(None, format!("the header: {e}")))?;
    if header.format != FORMAT {
        return Err(reader.fail(
            None,
            format!("unknown format `{}`; expected `{FORMAT}`", header.format),
        ));
    }
    let body = key
        .open(&header.checkpoint)
        .map_err(|e| reader.fail(None, format!("the checkpoint: {e}")))?;
    let checkpoint =
        Checkpoint::parse(body).map_err(|e| reader.fail(None, format!("the checkpoint: {e}")))?;
    let mut cosigned_by = Vec::new();
    for witness in witnesses {
        match witness.check(&header.checkpoint) {
            Ok(at) => cosigned_by.push((witness.name().to_owned(), at)),
            Err(NoteError::NoSignature(_)) => {
                return Err(reader.fail(
                    None,
                    format!(
                        "the checkpoint carries no cosignature by witness `{}`: no witness you require vouched for the history the export shows",
                        witness.name()
                    ),
                ))
            }
            Err(e) => {
                return Err(reader.fail(
                    None,
                    format!("the cosignature by witness `{}`: {e}", witness.name()),
                ))
            }
        }
    }
    let (_, lines) = split_note(&header.checkpoint)
        .map_err(|e| reader.fail(None, format!("the checkpoint: {e}")))?;
    let mut unchecked_signatures: Vec<String> = lines
        .iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| n != key.name() && !cosigned_by.iter().any(|(w, _)| w == n))
        .collect();
    unchecked_signatures.dedup();
    reader.header = Some(header);
    reader.advance()?;
    let root = multi_root(checkpoint.size, &mut reader)?;
    if reader.next.is_some() {
        let index = reader.next.as_ref().map(|(i, _)| *i);
        return Err(reader.fail(index, "the entry lies beyond the checkpoint's tree"));
    }
    if !reader.pending.is_empty() {
        return Err(reader.fail(None, "the proof has hashes left over at its end"));
    }
    let end = reader
        .end
        .clone()
        .ok_or_else(|| reader.fail(None, "the export has no end line: it was cut short"))?;
    if reader.read_line()?.is_some() {
        return Err(reader.fail(None, "lines after the end line"));
    }
    if end.entries != reader.entries {
        return Err(reader.fail(
            None,
            format!(
                "the end line counts {} entries, the export holds {}",
                end.entries, reader.entries
            ),
        ));
    }
    if root.is_some_and(|r| r != checkpoint.root) || (root.is_none() && reader.entries > 0) {
        return Err(reader.fail(
            None,
            "the entries and the proof do not rebuild the checkpoint's root: an entry or a proof hash was changed, added or removed",
        ));
    }
    let header = reader.header.take().expect("read");
    let sha256 = reader.lines.finish();
    Ok(Verified {
        header,
        checkpoint,
        signed_by: key.name().to_owned(),
        cosigned_by,
        unchecked_signatures,
        entries: end.entries,
        span: reader.first_index.zip(reader.last_index),
        sha256,
    })
}

/// Lines of the input, hashing every byte read.
struct Hashing<R> {
    input: R,
    sha: sha2::Sha256,
    buffer: String,
}

impl<R: BufRead> Hashing<R> {
    fn new(input: R) -> Self {
        Hashing {
            input,
            sha: sha2::Digest::new(),
            buffer: String::new(),
        }
    }

    fn line(&mut self) -> std::io::Result<Option<&str>> {
        self.buffer.clear();
        if self.input.read_line(&mut self.buffer)? == 0 {
            return Ok(None);
        }
        sha2::Digest::update(&mut self.sha, self.buffer.as_bytes());
        Ok(Some(self.buffer.trim_end_matches('\n')))
    }

    fn finish(self) -> String {
        let digest = sha2::Digest::finalize(self.sha);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

struct Reader<'a, R> {
    lines: Hashing<R>,
    name: &'a str,
    line: usize,
    header: Option<Header>,
    /// The next entry, its index and leaf hash, once its bytes were checked and visited.
    next: Option<(u64, Hash)>,
    /// The proof hashes before `next` (or, after the last entry, the end's).
    pending: VecDeque<Hash>,
    end: Option<End>,
    entries: u64,
    first_index: Option<u64>,
    last_index: Option<u64>,
    visit: &'a mut Visit<'a>,
}

impl<R: BufRead> Reader<'_, R> {
    fn fail(&self, entry: Option<u64>, message: impl Into<String>) -> ExportError {
        ExportError {
            where_: Some(format!("{}:{}", self.name, self.line.max(1))),
            entry,
            message: message.into(),
        }
    }

    fn read_line(&mut self) -> Result<Option<String>, ExportError> {
        self.line += 1;
        match self.lines.line() {
            Ok(line) => Ok(line.map(str::to_owned)),
            Err(e) => Err(self.fail(None, format!("reading: {e}"))),
        }
    }

    fn hashes(&self, entry: Option<u64>, proof: &[String]) -> Result<Vec<Hash>, ExportError> {
        proof
            .iter()
            .map(|p| B64.decode(p).ok().and_then(|h| <Hash>::try_from(h).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| self.fail(entry, "a proof hash is not the base64 of 32 bytes"))
    }

    /// Reads the next line: an entry (checked against its leaf hash and visited) or the
    /// end.
    fn advance(&mut self) -> Result<(), ExportError> {
        if !self.pending.is_empty() {
            return Err(self.fail(
                self.next.map(|(i, _)| i),
                "the proof has hashes left over before the next entry",
            ));
        }
        self.next = None;
        if self.end.is_some() {
            return Ok(());
        }
        let Some(text) = self.read_line()? else {
            return Err(self.fail(None, "the export has no end line: it was cut short"));
        };
        if text.starts_with("{\"end\"") {
            let end: EndLine = serde_json::from_str(&text)
                .map_err(|e| self.fail(None, format!("the end line: {e}")))?;
            self.pending = self.hashes(None, &end.end.proof)?.into();
            self.end = Some(end.end);
            return Ok(());
        }
        let line: EntryLine = serde_json::from_str(&text)
            .map_err(|e| self.fail(None, format!("not an entry line: {e}")))?;
        let index = line.index;
        if self.last_index.is_some_and(|last| index <= last) {
            return Err(self.fail(Some(index), "entries are not in increasing index order"));
        }
        self.last_index = Some(index);
        self.first_index.get_or_insert(index);
        let data = line.entry.get().as_bytes();
        let leaf = leaf_hash(data);
        let listed = B64.decode(&line.leaf).ok();
        if listed.as_deref() != Some(&leaf[..]) {
            return Err(self.fail(
                Some(index),
                "its bytes do not hash to the leaf hash beside them: the entry was changed",
            ));
        }
        let proof = self.hashes(Some(index), &line.proof)?;
        let header = self.header.as_ref().expect("read first");
        (self.visit)(header, index, data).map_err(|e| self.fail(Some(index), e))?;
        self.entries += 1;
        self.pending = proof.into();
        self.next = Some((index, leaf));
        Ok(())
    }
}

impl<R: BufRead> MultiSource for Reader<'_, R> {
    type Error = ExportError;

    fn next_index(&mut self) -> Result<Option<u64>, ExportError> {
        Ok(self.next.map(|(i, _)| i))
    }

    fn take_leaf(&mut self) -> Result<Hash, ExportError> {
        let (_, leaf) = self.next.expect("a leaf named by next_index");
        // `advance` refuses hashes left over before this entry.
        self.advance()?;
        Ok(leaf)
    }

    fn take_hash(&mut self) -> Result<Hash, ExportError> {
        match self.pending.pop_front() {
            Some(h) => Ok(h),
            None => Err(self.fail(
                self.next.map(|(i, _)| i),
                "the proof runs out of hashes: an entry or a hash is missing",
            )),
        }
    }
}
