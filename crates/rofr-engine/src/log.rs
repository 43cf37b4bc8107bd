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

/// The most versions a deal may have, the adopted one included.
pub const MAX_VERSIONS: u32 = u16::MAX as u32;

/// What an amendment does to the needs open when it takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OpenNeeds {
    /// Each keeps the version it was submitted under to its end: its offers, windows
    /// and deadlines run on as they were set.
    #[default]
    Keep,
    /// Each moves to the new version at the effective time: its terms are worked out
    /// again, and offers to a holder whose right the new version does not give are
    /// withdrawn.
    Move,
}

impl OpenNeeds {
    pub fn as_str(self) -> &'static str {
        match self {
            OpenNeeds::Keep => "keep",
            OpenNeeds::Move => "move",
        }
    }
}

impl std::str::FromStr for OpenNeeds {
    type Err = String;

    fn from_str(text: &str) -> Result<OpenNeeds, String> {
        match text {
            "keep" => Ok(OpenNeeds::Keep),
            "move" => Ok(OpenNeeds::Move),
            other => Err(format!("`{other}` is neither `keep` nor `move`")),
        }
    }
}

/// An entry amending the deal: a new version, as the exact bytes of its file, that
/// governs the needs submitted from `effective` on (and open ones, if they move).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "deal_amended")]
pub struct DealAmended {
    /// The deal's `[deal] name`, the same as the adopted version's.
    pub deal: String,
    /// The new version's number: one more than the last.
    pub version: u32,
    pub file: String,
    pub sha256: String,
    pub text: String,
    /// When the new version comes into force: at or after `at`.
    pub effective: Timestamp,
    /// What becomes of the needs open at `effective`.
    pub open_needs: OpenNeeds,
    /// When the amendment was written.
    pub at: Timestamp,
}

impl DealAmended {
    /// The entry amending the deal named `deal` to version `version`, read from
    /// `file` whose text is `text`.
    pub fn new(
        deal: &str,
        version: u32,
        file: &str,
        text: &str,
        effective: Timestamp,
        open_needs: OpenNeeds,
        at: Timestamp,
    ) -> DealAmended {
        DealAmended {
            deal: deal.to_owned(),
            version,
            file: file.to_owned(),
            sha256: sha256(text),
            text: text.to_owned(),
            effective,
            open_needs,
            at,
        }
    }

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

/// An entry's type, read alone.
#[derive(Deserialize)]
struct Kind {
    #[serde(rename = "type")]
    kind: String,
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Event(Event),
    Deal(DealAdopted),
    Amended(DealAmended),
}

/// A version of the deal as an entry records it, adopted or amended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version<'a> {
    pub deal: &'a str,
    pub version: u32,
    pub file: &'a str,
    pub sha256: &'a str,
    pub text: &'a str,
    /// From when it governs new needs: the adoption's time for the first version.
    pub effective: Timestamp,
    /// For an amendment, what it does to the needs open at `effective`.
    pub open_needs: Option<OpenNeeds>,
}

impl Entry {
    /// Reads an entry's bytes: an event, or else a deal entry. The error is the
    /// event's, the far likelier kind.
    pub fn from_json(bytes: &[u8]) -> Result<Entry, serde_json::Error> {
        match Event::from_json(bytes) {
            Ok(event) => Ok(Entry::Event(event)),
            // A struct's tag is not checked when it is read, so the type is read first.
            Err(error) => match serde_json::from_slice::<Kind>(bytes).map(|k| k.kind) {
                Ok(kind) if kind == "deal_adopted" => {
                    serde_json::from_slice(bytes).map(Entry::Deal)
                }
                Ok(kind) if kind == "deal_amended" => {
                    serde_json::from_slice(bytes).map(Entry::Amended)
                }
                _ => Err(error),
            },
        }
    }

    pub fn at(&self) -> Timestamp {
        match self {
            Entry::Event(event) => event.at,
            Entry::Deal(deal) => deal.at,
            Entry::Amended(amended) => amended.at,
        }
    }

    /// The version of the deal the entry records, if it is a deal entry.
    pub fn version(&self) -> Option<Version<'_>> {
        match self {
            Entry::Event(_) => None,
            Entry::Deal(d) => Some(Version {
                deal: &d.deal,
                version: d.version,
                file: &d.file,
                sha256: &d.sha256,
                text: &d.text,
                effective: d.at,
                open_needs: None,
            }),
            Entry::Amended(a) => Some(Version {
                deal: &a.deal,
                version: a.version,
                file: &a.file,
                sha256: &a.sha256,
                text: &a.text,
                effective: a.effective,
                open_needs: Some(a.open_needs),
            }),
        }
    }

    /// Whether a deal entry's text is the file its hash names (an event always is).
    pub fn is_intact(&self) -> bool {
        self.version().is_none_or(|v| v.sha256 == sha256(v.text))
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
            error.to_string().contains("missing field `deal`"),
            "the deal entry's error: {error}"
        );
        let error = Entry::from_json(b"{\"type\":\"offer_sent\"}").unwrap_err();
        assert!(
            error.to_string().contains("missing field"),
            "the event's error: {error}"
        );
    }

    #[test]
    fn an_amendment_reads_back_as_an_amendment_and_not_as_an_adoption() {
        let at = Timestamp::parse("2025-02-03T00:00:00Z").unwrap();
        let effective = Timestamp::parse("2025-10-28T00:00:00Z").unwrap();
        let entry = DealAmended::new(
            "d",
            2,
            "d2.toml",
            "[deal]\n",
            effective,
            OpenNeeds::Move,
            at,
        );
        let bytes = entry.to_json();
        assert!(bytes.starts_with(b"{\"type\":\"deal_amended\",\"deal\":\"d\",\"version\":2,"));
        let read = Entry::from_json(&bytes).unwrap();
        assert_eq!(read, Entry::Amended(entry.clone()));
        let version = read.version().unwrap();
        assert_eq!((version.version, version.effective), (2, effective));
        assert_eq!(version.open_needs, Some(OpenNeeds::Move));
        assert!(read.is_intact());
        let forged = Entry::Amended(DealAmended {
            text: "[deal]\r\n".into(),
            ..entry
        });
        assert!(!forged.is_intact());
        assert_eq!("keep".parse(), Ok(OpenNeeds::Keep));
        assert!("stay".parse::<OpenNeeds>().unwrap_err().contains("`stay`"));
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
