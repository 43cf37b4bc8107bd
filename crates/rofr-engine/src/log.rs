//! The log's entries: the events, and before them the entry that adopts the deal the
//! log belongs to (docs/events.md). A deal entry belongs to no need.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::event::Event;
use crate::types::Timestamp;

/// The first entry of a log: the deal it belongs to, as the exact bytes of its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "deal_adopted")]
pub struct DealAdopted {
    /// The deal's `[deal] name`.
    pub deal: String,
    /// The version's number: 1 for the deal a log is started with.
    pub version: u32,
    /// The file's name as it was given.
    pub file: String,
    /// SHA-256 of the file's bytes, in lowercase hex.
    pub sha256: String,
    /// The file's bytes, as text.
    pub text: String,
    pub at: Timestamp,
}

impl DealAdopted {
    /// The entry adopting version `version` of the deal named `deal`, read from
    /// `file` whose text is `text`.
    pub fn new(deal: &str, version: u32, file: &str, text: &str, at: Timestamp) -> DealAdopted {
        DealAdopted {
            deal: deal.to_owned(),
            version,
            file: file.to_owned(),
            sha256: sha256(text),
            text: text.to_owned(),
            at,
        }
    }

    /// Whether `sha256` is the hash of `text`: the entry is the file it names.
    pub fn is_intact(&self) -> bool {
        self.sha256 == sha256(&self.text)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("deal entries serialize")
    }
}

/// SHA-256 of a deal file's text, in lowercase hex: what a deal entry records.
pub fn sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Event(Event),
    Deal(DealAdopted),
}

impl Entry {
    /// Reads an entry's bytes: an event, or else a deal entry. The error is the
    /// event's, the far likelier kind.
    pub fn from_json(bytes: &[u8]) -> Result<Entry, serde_json::Error> {
        match Event::from_json(bytes) {
            Ok(event) => Ok(Entry::Event(event)),
            Err(error) => match serde_json::from_slice::<DealAdopted>(bytes) {
                Ok(deal) => Ok(Entry::Deal(deal)),
                Err(_) => Err(error),
            },
        }
    }

    pub fn at(&self) -> Timestamp {
        match self {
            Entry::Event(event) => event.at,
            Entry::Deal(deal) => deal.at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deal_entry_reads_back_as_itself_and_names_its_bytes() {
        let at = Timestamp::parse("2025-02-03T00:00:00Z").unwrap();
        let entry = DealAdopted::new("d", 1, "d.toml", "[deal]\nname = \"d\"\n", at);
        let bytes = entry.to_json();
        assert!(bytes.starts_with(b"{\"type\":\"deal_adopted\",\"deal\":\"d\",\"version\":1,"));
        assert_eq!(
            Entry::from_json(&bytes).unwrap(),
            Entry::Deal(entry.clone())
        );
        assert!(entry.is_intact());
        let changed = DealAdopted {
            text: entry.text.replace('d', "e"),
            ..entry
        };
        assert!(
            !changed.is_intact(),
            "a changed byte no longer matches the hash"
        );
        let error = Entry::from_json(b"{\"type\":\"deal_adopted\"}").unwrap_err();
        assert!(
            error.to_string().contains("need"),
            "the event's error: {error}"
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any file's text, hostile bytes included (quotes, backslashes, control and
        /// astral characters), reads back from the entry as itself, and no change to
        /// one of its characters keeps the hash.
        #[test]
        fn any_deal_text_reads_back_and_any_change_breaks_its_hash(
            text in "\\PC{0,40}|[\\x00-\\x1f\"\\\\\u{7f}\u{2028}\u{1F600}a]{0,40}",
            version in 1u32..=u32::MAX,
            seconds in 0i64..=253_402_300_799,
            at in any::<prop::sample::Index>(),
        ) {
            let when = Timestamp::from_unix_seconds_const(seconds);
            let entry = DealAdopted::new("d", version, "d.toml", &text, when);
            let bytes = entry.to_json();
            prop_assert_eq!(Entry::from_json(&bytes).unwrap(), Entry::Deal(entry.clone()));
            prop_assert!(entry.is_intact());
            let chars: Vec<char> = text.chars().collect();
            if !chars.is_empty() {
                let i = at.index(chars.len());
                let mut changed: Vec<char> = chars.clone();
                changed[i] = if chars[i] == 'x' { 'y' } else { 'x' };
                let forged = DealAdopted { text: changed.into_iter().collect(), ..entry };
                prop_assert!(!forged.is_intact());
            }
        }
    }
}
