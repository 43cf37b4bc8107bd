//! C2SP signed notes with Ed25519 keys, C2SP `tlog-checkpoint` bodies, and C2SP
//! `tlog-cosignature/v1` cosignatures by witnesses.
//!
//! A note is its text (ending in a newline), an empty line, then signature lines
//! `— <key name> <base64(key ID ‖ signature)>`. The key ID is the first four bytes of
//! SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key), read big-endian. A verifier key is
//! written `<name>+<key ID, 8 hex digits>+<base64(0x01 ‖ public key)>`.
//!
//! A witness's cosignature is a signature line too, with key type 0x04 in its key ID
//! and verifier key, over `cosignature/v1\ntime <T>\n` and the note's text; its blob is
//! key ID ‖ T as a big-endian u64 ‖ the Ed25519 signature.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest, Sha256};

use crate::tree::Hash;

const ED25519: u8 = 0x01;
/// The key type of C2SP `tlog-cosignature/v1` Ed25519 cosigners.
const COSIGNATURE_V1: u8 = 0x04;
const DASH: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("a key name is non-empty and has no `+` or whitespace: `{0}`")]
    BadName(String),
    #[error("the key text is not `<name>+<8 hex digits>+<base64 key>`: {0}")]
    BadKey(String),
    #[error("the note is malformed: {0}")]
    Malformed(String),
    #[error("no signature by `{0}` is on the note")]
    NoSignature(String),
    #[error("the signature by `{0}` does not verify: the note was changed or forged")]
    BadSignature(String),
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.contains('+') || name.chars().any(char::is_whitespace) {
        return Err(NoteError::BadName(name.to_owned()));
    }
    Ok(())
}

/// The key ID of an Ed25519 key under `name`.
pub fn key_id(name: &str, public_key: &[u8; 32]) -> u32 {
    typed_key_id(name, ED25519, public_key)
}

/// SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4], big-endian.
fn typed_key_id(name: &str, kind: u8, public_key: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0A, kind]);
    h.update(public_key);
    let digest = h.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn split_key(text: &str) -> Result<(&str, u32, &str), NoteError> {
    let mut parts = text.splitn(3, '+');
    let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(NoteError::BadKey(text.to_owned()));
    };
    check_name(name)?;
    if id.len() != 8 {
        return Err(NoteError::BadKey("the key ID is 8 hex digits".into()));
    }
    let id = u32::from_str_radix(id, 16)
        .map_err(|_| NoteError::BadKey("the key ID is 8 hex digits".into()))?;
    Ok((name, id, key))
}

/// Reads `<name>+<key ID>+<base64(kind ‖ 32 bytes)>`, checking the type byte.
fn read_key_text(text: &str, kind: u8, what: &str) -> Result<(String, u32, [u8; 32]), NoteError> {
    let (name, id, key) = split_key(text)?;
    let bytes = B64
        .decode(key)
        .map_err(|e| NoteError::BadKey(format!("the key is not base64: {e}")))?;
    let Some((&found, rest)) = bytes.split_first() else {
        return Err(NoteError::BadKey("the key is empty".into()));
    };
    if found != kind {
        return Err(NoteError::BadKey(format!(
            "{what} has key type 0x{kind:02x}, not 0x{found:02x}"
        )));
    }
    let key: [u8; 32] = rest.try_into().map_err(|_| {
        NoteError::BadKey(format!("an Ed25519 key is 32 bytes, not {}", rest.len()))
    })?;
    Ok((name.to_owned(), id, key))
}

fn key_text(name: &str, id: u32, kind: u8, key: &[u8; 32]) -> String {
    let mut bytes = vec![kind];
    bytes.extend_from_slice(key);
    format!("{name}+{id:08x}+{}", B64.encode(bytes))
}

/// A named Ed25519 private key of one key type: a log's (0x01) or a witness's (0x04).
struct PrivateKey {
    name: String,
    kind: u8,
    key: ed25519_dalek::SigningKey,
}

impl PrivateKey {
    fn from_seed(name: &str, kind: u8, seed: &[u8; 32]) -> Result<PrivateKey, NoteError> {
        check_name(name)?;
        Ok(PrivateKey {
            name: name.to_owned(),
            kind,
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        })
    }

    /// Reads `PRIVATE+KEY+<name>+<key ID>+<base64(kind ‖ seed)>`.
    fn from_private_text(text: &str, kind: u8, what: &str) -> Result<PrivateKey, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| NoteError::BadKey("a private key starts with PRIVATE+KEY+".into()))?;
        let (name, id, seed) = read_key_text(rest, kind, what)?;
        let key = PrivateKey::from_seed(&name, kind, &seed)?;
        if key.key_id() != id {
            return Err(NoteError::BadKey(
                "the key ID does not match the key".into(),
            ));
        }
        Ok(key)
    }

    fn private_text(&self) -> String {
        format!(
            "PRIVATE+KEY+{}",
            key_text(&self.name, self.key_id(), self.kind, self.key.as_bytes())
        )
    }

    fn key_id(&self) -> u32 {
        typed_key_id(&self.name, self.kind, self.key.verifying_key().as_bytes())
    }

    fn verifier_key(&self) -> String {
        key_text(
            &self.name,
            self.key_id(),
            self.kind,
            self.key.verifying_key().as_bytes(),
        )
    }

    /// A signature line, `— <name> base64(key ID ‖ prefix ‖ signature of message)`.
    fn line(&self, prefix: &[u8], message: &str) -> String {
        let signature = self.key.sign(message.as_bytes());
        let mut blob = self.key_id().to_be_bytes().to_vec();
        blob.extend_from_slice(prefix);
        blob.extend_from_slice(&signature.to_bytes());
        format!("{DASH}{} {}\n", self.name, B64.encode(blob))
    }
}

/// A named Ed25519 public key of one key type.
#[derive(Debug, Clone)]
struct PublicKey {
    name: String,
    kind: u8,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    fn parse(text: &str, kind: u8, what: &str) -> Result<PublicKey, NoteError> {
        let (name, id, public) = read_key_text(text.trim(), kind, what)?;
        if typed_key_id(&name, kind, &public) != id {
            return Err(NoteError::BadKey(
                "the key ID does not match the key".into(),
            ));
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|e| NoteError::BadKey(e.to_string()))?;
        Ok(PublicKey {
            name,
            kind,
            id,
            key,
        })
    }

    fn verifier_key(&self) -> String {
        key_text(&self.name, self.id, self.kind, self.key.as_bytes())
    }

    /// The note's text and the part of this key's signature blob after its key ID, of
    /// `length` bytes in all, where the note has one.
    fn find<'a>(&self, note: &'a str, length: usize) -> Result<(&'a str, Vec<u8>), NoteError> {
        let (text, signatures) = split_note(note)?;
        signatures
            .into_iter()
            .find(|(name, blob)| {
                *name == self.name
                    && blob.len() == length
                    && u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]) == self.id
            })
            .map(|(_, blob)| (text, blob[4..].to_vec()))
            .ok_or_else(|| NoteError::NoSignature(self.name.clone()))
    }

    fn verify(&self, message: &str, signature: &[u8]) -> Result<(), NoteError> {
        let signature = ed25519_dalek::Signature::from_slice(signature)
            .map_err(|e| NoteError::Malformed(e.to_string()))?;
        self.key
            .verify(message.as_bytes(), &signature)
            .map_err(|_| NoteError::BadSignature(self.name.clone()))
    }
}

/// A log's named Ed25519 signing key.
pub struct SigningKey(PrivateKey);

impl SigningKey {
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<SigningKey, NoteError> {
        PrivateKey::from_seed(name, ED25519, seed).map(SigningKey)
    }

    /// Reads `PRIVATE+KEY+<name>+<key ID>+<base64(0x01 ‖ seed)>`.
    pub fn from_private_text(text: &str) -> Result<SigningKey, NoteError> {
        PrivateKey::from_private_text(text, ED25519, "a log's signing key").map(SigningKey)
    }

    pub fn private_text(&self) -> String {
        self.0.private_text()
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn key_id(&self) -> u32 {
        self.0.key_id()
    }

    pub fn verifier_key(&self) -> String {
        self.0.verifier_key()
    }

    /// Signs `text` (which must end in a newline) into a signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if text.is_empty() || !text.ends_with('\n') {
            return Err(NoteError::Malformed(
                "note text must end with a newline".into(),
            ));
        }
        Ok(format!("{text}\n{}", self.0.line(&[], text)))
    }
}

/// A log's verifier key: whose signatures to accept.
#[derive(Debug, Clone)]
pub struct VerifierKey(PublicKey);

impl VerifierKey {
    pub fn parse(text: &str) -> Result<VerifierKey, NoteError> {
        PublicKey::parse(text, ED25519, "a log's verifier key").map(VerifierKey)
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// Checks the note's signature by this key and returns the note's text.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let (text, signature) = self.0.find(note, 4 + 64)?;
        self.0.verify(text, &signature).map(|()| text)
    }
}

/// A signature line: the key's name and the decoded blob (key ID ‖ signature).
pub type SignatureLine<'a> = (&'a str, Vec<u8>);

/// A note's text (through its last newline) and its signature lines.
pub fn split_note(note: &str) -> Result<(&str, Vec<SignatureLine<'_>>), NoteError> {
    let split = note
        .rfind("\n\n")
        .ok_or_else(|| NoteError::Malformed("no empty line before the signatures".into()))?;
    let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
    if !signatures.ends_with('\n') {
        return Err(NoteError::Malformed(
            "the signature block must end with a newline".into(),
        ));
    }
    let mut lines = Vec::new();
    for line in signatures.lines() {
        let parsed = line
            .strip_prefix(DASH)
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(name, blob)| Some((name, B64.decode(blob).ok()?)))
            .filter(|(_, blob)| blob.len() >= 4);
        let Some(parsed) = parsed else {
            return Err(NoteError::Malformed(format!(
                "`{line}` is not a signature line"
            )));
        };
        lines.push(parsed);
    }
    Ok((text, lines))
}

/// `note` with the signature `lines` appended (each `— name blob` and a newline), less
/// any it carries already.
pub fn with_signatures(note: &str, lines: &str) -> String {
    let mut out = note.to_owned();
    for line in lines.lines() {
        let present = note.lines().any(|held| held == line);
        if !present && line.starts_with(DASH) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The cosigned message of C2SP `tlog-cosignature/v1` for a checkpoint's text.
fn cosigned_message(text: &str, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{text}")
}

/// The latest time a cosignature may carry: 2^63 − 1.
const MAX_TIMESTAMP: u64 = i64::MAX as u64;

/// A witness's Ed25519 cosigning key (C2SP `tlog-cosignature/v1`, key type 0x04).
pub struct CosigningKey(PrivateKey);

impl CosigningKey {
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<CosigningKey, NoteError> {
        PrivateKey::from_seed(name, COSIGNATURE_V1, seed).map(CosigningKey)
    }

    /// Reads `PRIVATE+KEY+<name>+<key ID>+<base64(0x04 ‖ seed)>`.
    pub fn from_private_text(text: &str) -> Result<CosigningKey, NoteError> {
        PrivateKey::from_private_text(text, COSIGNATURE_V1, "a witness's key").map(CosigningKey)
    }

    pub fn private_text(&self) -> String {
        self.0.private_text()
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// `<name>+<key ID>+<base64(0x04 ‖ public key)>`.
    pub fn verifier_key(&self) -> String {
        self.0.verifier_key()
    }

    /// The cosignature line (ending in a newline) on a checkpoint's note text at
    /// `timestamp` (POSIX seconds).
    pub fn cosign(&self, text: &str, timestamp: u64) -> Result<String, NoteError> {
        if text.is_empty() || !text.ends_with('\n') {
            return Err(NoteError::Malformed(
                "note text must end with a newline".into(),
            ));
        }
        if timestamp > MAX_TIMESTAMP {
            return Err(NoteError::Malformed(format!(
                "a cosignature's time is at most 2^63 - 1, not {timestamp}"
            )));
        }
        Ok(self
            .0
            .line(&timestamp.to_be_bytes(), &cosigned_message(text, timestamp)))
    }
}

/// A witness's verifier key: whose cosignatures to require.
#[derive(Debug, Clone)]
pub struct CosignerKey(PublicKey);

impl CosignerKey {
    pub fn parse(text: &str) -> Result<CosignerKey, NoteError> {
        PublicKey::parse(text, COSIGNATURE_V1, "a witness's verifier key").map(CosignerKey)
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn verifier_key(&self) -> String {
        self.0.verifier_key()
    }

    /// Checks this witness's cosignature on `note` and returns its time (POSIX
    /// seconds).
    pub fn check(&self, note: &str) -> Result<u64, NoteError> {
        let (text, blob) = self.0.find(note, 4 + 8 + 64)?;
        let timestamp = u64::from_be_bytes(blob[..8].try_into().expect("8 bytes"));
        if timestamp > MAX_TIMESTAMP {
            return Err(NoteError::BadSignature(self.0.name.clone()));
        }
        self.0
            .verify(&cosigned_message(text, timestamp), &blob[8..])
            .map(|()| timestamp)
    }
}

/// A C2SP `tlog-checkpoint` body: origin, tree size, root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses a checkpoint body (extension lines after the third are allowed and
    /// ignored).
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let mut lines = text.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| NoteError::Malformed("no origin line".into()))?;
        let size = lines
            .next()
            .and_then(|s| {
                (!(s.starts_with('+') || s.len() > 1 && s.starts_with('0')))
                    .then(|| s.parse::<u64>().ok())
                    .flatten()
            })
            .ok_or_else(|| {
                NoteError::Malformed("the second line is not a tree size in decimal".into())
            })?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| <[u8; 32]>::try_from(r).ok())
            .ok_or_else(|| {
                NoteError::Malformed(
                    "the third line is not the base64 of a 32-byte root hash".into(),
                )
            })?;
        Ok(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cosignature_verifies_with_its_time_and_fails_when_anything_changes() {
        let log = SigningKey::from_seed("example.test/log", &[1; 32]).unwrap();
        let witness = CosigningKey::from_seed("witness.test/w1", &[2; 32]).unwrap();
        let text = "example.test/log\n7\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n";
        let note = log.sign(text).unwrap();
        let line = witness.cosign(text, 1_679_315_147).unwrap();
        let cosigned = with_signatures(&note, &line);
        assert_eq!(with_signatures(&cosigned, &line), cosigned, "no duplicates");
        let key = CosignerKey::parse(&witness.verifier_key()).unwrap();
        assert_eq!(key.verifier_key(), witness.verifier_key());
        assert_eq!(key.check(&cosigned), Ok(1_679_315_147));
        // The log's own verifier still opens the cosigned note.
        let log_key = VerifierKey::parse(&log.verifier_key()).unwrap();
        assert_eq!(log_key.open(&cosigned), Ok(text));
        assert_eq!(
            key.check(&note),
            Err(NoteError::NoSignature("witness.test/w1".into()))
        );
        // Another size under the same signatures.
        let changed = cosigned.replacen("\n7\n", "\n8\n", 1);
        assert!(matches!(
            key.check(&changed),
            Err(NoteError::BadSignature(_))
        ));
        // The log's key read as a cosigner's, and the other way: the type byte differs.
        assert!(CosignerKey::parse(&log.verifier_key()).is_err());
        assert!(VerifierKey::parse(&witness.verifier_key()).is_err());
        let again = CosigningKey::from_private_text(&witness.private_text()).unwrap();
        assert_eq!(again.verifier_key(), witness.verifier_key());
        assert!(witness.cosign(text, u64::MAX).is_err());
    }
}
