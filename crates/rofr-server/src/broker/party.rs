//! Parties and their bearer tokens: who is asking, and how a token is made, found,
//! trusted for a while and revoked.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rofr_engine::types::ProviderId;
use rofr_store::{Location, StoredToken, TokenRow};

use crate::clock::Clock;

use super::{Broker, BrokerError};

/// Who is asking. Each bearer token speaks for exactly one party.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Party {
    Buyer,
    Auditor,
    Provider(ProviderId),
}

impl Party {
    /// A stable name, used to scope idempotency keys.
    pub fn key(&self) -> String {
        match self {
            Party::Buyer => "buyer".into(),
            Party::Auditor => "auditor".into(),
            Party::Provider(id) => format!("provider:{id}"),
        }
    }
}

/// Tokens found in the store, by hash, with when they were found there. Unknown tokens
/// are not kept: anyone may send any number of them.
pub(super) struct TokenCache {
    pub(super) found: HashMap<String, (Party, Instant)>,
    /// How long a token found in the store is trusted before it is looked up again:
    /// how soon a revoked token is refused.
    pub(super) recheck: Duration,
}

impl Broker {
    /// The party a bearer token speaks for, if it is known. Tokens are stored only as
    /// SHA-256 hashes.
    pub fn authenticate(&self, token: &str) -> Result<Option<Party>, BrokerError> {
        let hash = token_hash(token);
        {
            let cache = self.inner.tokens.lock().expect("token lock");
            if let Some((party, found)) = cache.found.get(&hash) {
                if found.elapsed() < cache.recheck {
                    return Ok(Some(party.clone()));
                }
            }
        }
        let row = self.store(|s| s.token(&hash))?;
        let party = row.and_then(|row| party_of(&row));
        let mut cache = self.inner.tokens.lock().expect("token lock");
        match &party {
            Some(party) => cache.found.insert(hash, (party.clone(), Instant::now())),
            None => cache.found.remove(&hash),
        };
        Ok(party)
    }

    /// Sets how long a token found in the store is trusted before it is looked up
    /// again ([`TOKEN_RECHECK`] by default): how soon a revoked token is refused.
    pub fn set_token_recheck(&self, recheck: Duration) {
        self.inner.tokens.lock().expect("token lock").recheck = recheck;
    }

    /// Every stored token, oldest first.
    pub fn tokens(location: &Location) -> Result<Vec<StoredToken>, BrokerError> {
        Ok(location.open()?.tokens()?)
    }

    /// Deletes the one token whose hash starts with `id` (as [`token_id`] shows it, or
    /// longer), and returns it. A running broker refuses it once its trust in the
    /// token lapses ([`Broker::set_token_recheck`]).
    pub fn revoke_token(location: &Location, id: &str) -> Result<StoredToken, BrokerError> {
        if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BrokerError::Setup(format!(
                "`{id}` is not a token id: give at least 8 of the hex digits `rofr token list` shows"
            )));
        }
        let id = id.to_ascii_lowercase();
        let mut store = location.open()?;
        let mut matching: Vec<StoredToken> = store
            .tokens()?
            .into_iter()
            .filter(|t| t.hash.starts_with(&id))
            .collect();
        let token = match matching.len() {
            1 => matching.remove(0),
            0 => {
                return Err(BrokerError::Setup(format!(
                    "no token has the id `{id}` (see `rofr token list`)"
                )))
            }
            n => {
                return Err(BrokerError::Setup(format!(
                    "{n} tokens have ids starting `{id}`: give more of the id"
                )))
            }
        };
        store.delete_token(&token.hash)?;
        Ok(token)
    }

    /// Makes a new token for a party and stores its hash; returns the token itself,
    /// which is shown once and never stored.
    pub fn create_token(
        location: &Location,
        party: &Party,
        label: &str,
    ) -> Result<String, BrokerError> {
        let mut store = location.open()?;
        let token = new_token();
        let row = TokenRow {
            party: match party {
                Party::Buyer => "buyer".into(),
                Party::Auditor => "auditor".into(),
                Party::Provider(_) => "provider".into(),
            },
            provider: match party {
                Party::Provider(id) => Some(id.to_string()),
                _ => None,
            },
            label: label.to_owned(),
        };
        let now = Clock::System.now().to_string();
        store.create_token(&token_hash(&token), &row, &now)?;
        Ok(token)
    }
}

pub(super) fn party_of(row: &TokenRow) -> Option<Party> {
    match (row.party.as_str(), &row.provider) {
        ("buyer", _) => Some(Party::Buyer),
        ("auditor", _) => Some(Party::Auditor),
        ("provider", Some(id)) => ProviderId::parse(id).ok().map(Party::Provider),
        _ => None,
    }
}

/// How long a broker trusts a token it found in the store before looking it up again.
pub const TOKEN_RECHECK: Duration = Duration::from_secs(5);

/// A token's id as lists show it: the first 12 hex digits of its hash.
pub fn token_id(token: &StoredToken) -> &str {
    &token.hash[..12.min(token.hash.len())]
}

pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

pub(super) fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("rofr_{}", hex::encode(bytes))
}
