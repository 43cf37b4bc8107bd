//! C2SP signed notes with Ed25519 keys, and C2SP `tlog-checkpoint` bodies.
//!
//! A note is its text (ending in a newline), an empty line, then signature lines
//! `— <key name> <base64(key ID ‖ signature)>`. The key ID is the first four bytes of
//! SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ public key), read big-endian. A verifier key is
//! written `<name>+<key ID, 8 hex digits>+<base64(0x01 ‖ public key)>`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest, Sha256};

use crate::tree::Hash;

const ED25519: u8 = 0x01;
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
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0x0A, ED25519]);
    h.update(public_key);
    let digest = h.finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// A named Ed25519 signing key.
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl SigningKey {
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<SigningKey, NoteError> {
        check_name(name)?;
        Ok(SigningKey {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(seed),
        })
    }

    /// Reads `PRIVATE+KEY+<name>+<key ID>+<base64(0x01 ‖ seed)>`.
    pub fn from_private_text(text: &str) -> Result<SigningKey, NoteError> {
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| NoteError::BadKey("a private key starts with PRIVATE+KEY+".into()))?;
        let (name, id, key) = split_key(rest)?;
        let bytes = B64
            .decode(key)
            .map_err(|e| NoteError::BadKey(e.to_string()))?;
        let seed: [u8; 32] = match bytes.as_slice() {
            [ED25519, seed @ ..] => seed
                .try_into()
                .map_err(|_| NoteError::BadKey("an Ed25519 seed is 32 bytes".into()))?,
            _ => {
                return Err(NoteError::BadKey(
                    "only Ed25519 (type 0x01) keys are supported".into(),
                ))
            }
        };
        let key = SigningKey::from_seed(name, &seed)?;
        if key.key_id() != id {
            return Err(NoteError::BadKey(
                "the key ID does not match the key".into(),
            ));
        }
        Ok(key)
    }

    pub fn private_text(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!(
            "PRIVATE+KEY+{}+{:08x}+{}",
            self.name,
            self.key_id(),
            B64.encode(bytes)
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn key_id(&self) -> u32 {
        key_id(&self.name, self.key.verifying_key().as_bytes())
    }

    pub fn verifier_key(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.verifying_key().as_bytes());
        format!("{}+{:08x}+{}", self.name, self.key_id(), B64.encode(bytes))
    }

    /// Signs `text` (which must end in a newline) into a signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if text.is_empty() || !text.ends_with('\n') {
            return Err(NoteError::Malformed(
                "note text must end with a newline".into(),
            ));
        }
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.key_id().to_be_bytes().to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!(
            "{text}\n{DASH}{} {}\n",
            self.name,
            B64.encode(blob)
        ))
    }
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

/// A verifier key: whose signatures to accept.
#[derive(Debug, Clone)]
pub struct VerifierKey {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl VerifierKey {
    pub fn parse(text: &str) -> Result<VerifierKey, NoteError> {
        let (name, id, key) = split_key(text.trim())?;
        let bytes = B64
            .decode(key)
            .map_err(|e| NoteError::BadKey(e.to_string()))?;
        let public: [u8; 32] = match bytes.as_slice() {
            [ED25519, public @ ..] => public
                .try_into()
                .map_err(|_| NoteError::BadKey("an Ed25519 public key is 32 bytes".into()))?,
            _ => {
                return Err(NoteError::BadKey(
                    "only Ed25519 (type 0x01) keys are supported".into(),
                ))
            }
        };
        if key_id(name, &public) != id {
            return Err(NoteError::BadKey(
                "the key ID does not match the key".into(),
            ));
        }
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public)
            .map_err(|e| NoteError::BadKey(e.to_string()))?;
        Ok(VerifierKey {
            name: name.to_owned(),
            id,
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks the note's signature by this key and returns the note's text.
    pub fn open<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let split = note
            .rfind("\n\n")
            .ok_or_else(|| NoteError::Malformed("no empty line before the signatures".into()))?;
        let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
        if !signatures.ends_with('\n') {
            return Err(NoteError::Malformed(
                "the signature block must end with a newline".into(),
            ));
        }
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix(DASH) else {
                return Err(NoteError::Malformed(format!(
                    "`{line}` is not a signature line"
                )));
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed(format!(
                    "`{line}` is not a signature line"
                )));
            };
            if name != self.name {
                continue;
            }
            let blob = B64
                .decode(blob)
                .map_err(|e| NoteError::Malformed(e.to_string()))?;
            if blob.len() != 68
                || u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]) != self.id
            {
                continue;
            }
            let signature = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|e| NoteError::Malformed(e.to_string()))?;
            return self
                .key
                .verify(text.as_bytes(), &signature)
                .map(|()| text)
                .map_err(|_| NoteError::BadSignature(self.name.clone()));
        }
        Err(NoteError::NoSignature(self.name.clone()))
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
