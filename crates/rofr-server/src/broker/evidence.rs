//! The ledger beside the log, as the broker offers it: the tree and key, checkpoints,
//! a need's entries and its evidence bundle as each party may see it.

use rofr_engine::types::ProviderId;
use rofr_engine::Event;
use rofr_store::{Store, StoredEvent};

use super::{Broker, BrokerError};

/// The versions of the deal a log belongs to (`GET /v1/deal`).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DealVersions {
    /// The deal's `[deal] name`.
    pub name: String,
    /// Oldest first.
    pub versions: Vec<DealVersion>,
}

/// One version of the deal.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DealVersion {
    pub version: u32,
    /// The file's name as it was given.
    pub file: String,
    /// SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
    /// When it was adopted or amended to: its entry's time; null for a deal kept
    /// beside a log begun before deals were entries.
    pub adopted_at: Option<String>,
    /// From when it governs new needs: the adoption's time for version 1.
    pub effective: Option<String>,
    /// For an amendment, what it does to the needs open at its effective time:
    /// `keep` (they stay under the terms they started with) or `move`.
    #[schema(value_type = Option<String>)]
    pub open_needs: Option<rofr_engine::log::OpenNeeds>,
    /// Whether it is the version new needs follow now.
    pub in_force: bool,
    /// The ledger entry that holds it; null as above.
    pub index: Option<u64>,
}

impl Broker {
    /// The deal's versions, from the log's deal entries (or, for a log begun before
    /// deals were entries, the deal kept beside it).
    pub fn deal_versions(&self) -> Result<DealVersions, BrokerError> {
        let in_force = self.read(|e| e.deal_version());
        let entries = self.inner.deal_entries.read().expect("deal entries lock");
        let mut versions: Vec<DealVersion> = entries
            .iter()
            .map(|kept| {
                let v = kept.version();
                DealVersion {
                    version: v.version,
                    file: v.file.to_owned(),
                    sha256: v.sha256.to_owned(),
                    adopted_at: Some(kept.entry.at().to_string()),
                    effective: Some(v.effective.to_string()),
                    open_needs: v.open_needs,
                    in_force: v.version == in_force,
                    index: Some(kept.index),
                }
            })
            .collect();
        if entries.first().is_none_or(|e| e.index != 0) {
            versions.insert(
                0,
                DealVersion {
                    version: 1,
                    file: self.deal().file.clone(),
                    sha256: rofr_engine::log::sha256(self.deal_text()),
                    adopted_at: None,
                    effective: None,
                    open_needs: None,
                    in_force: in_force == 1,
                    index: None,
                },
            );
        }
        Ok(DealVersions {
            name: self.deal().name.clone(),
            versions,
        })
    }

    /// Runs `f` with the ledger: tree, key and latest checkpoint.
    pub fn ledger<T>(&self, f: impl FnOnce(&mut crate::ledger::Ledger) -> T) -> T {
        let mut ledger = self.inner.ledger.lock().expect("ledger lock");
        f(&mut ledger)
    }

    /// Runs `f` with the ledger and the read connection, which gives back the leaves
    /// its tree let go of. (The ledger is always locked before the connection.)
    pub fn ledger_with_log<T>(&self, f: impl FnOnce(&crate::ledger::Ledger, &dyn Store) -> T) -> T {
        let ledger = self.inner.ledger.lock().expect("ledger lock");
        let store = self.inner.reader.lock().expect("store lock poisoned");
        f(&ledger, store.as_ref())
    }

    /// Changes when checkpoints are made without being asked for.
    pub fn set_checkpoint_policy(&self, policy: crate::ledger::CheckpointPolicy) {
        self.ledger(|l| l.policy = policy);
    }

    /// Signs a checkpoint of everything committed so far, stores it, and returns its
    /// size and signed note.
    pub fn checkpoint_now(&self) -> Result<(u64, String), BrokerError> {
        let (size, note) = self.ledger(|l| l.checkpoint());
        let mut store = self.inner.reader.lock().expect("store lock poisoned");
        store.add_checkpoint(size, &note, &crate::ledger::now_text())?;
        Ok((size, note))
    }

    /// The entries of one need, in log order, as of the moment of the call: the needs
    /// projection is brought up to date first, so only the runs of entries its row
    /// holds are read.
    pub async fn events_of(&self, need: &str) -> Result<Vec<StoredEvent>, BrokerError> {
        self.projected().await?;
        // With replicas the projection may trail what others appended; their store
        // reads by an index instead.
        let projected = !self.inner.shared;
        Ok(self.store(|s| s.events_of(need, projected))?)
    }

    /// The evidence bundle of a need, as `viewer` may see it: whole for the buyer and
    /// the auditor (`None`); for a provider, the entries
    /// [`rofr_engine::EventKind::shown_to`] lets it see, and `None` where the need does
    /// not concern it or has no entries.
    pub async fn evidence(
        &self,
        need: &str,
        viewer: Option<&ProviderId>,
    ) -> Result<Option<rofr_ledger::evidence::Bundle>, BrokerError> {
        let Some((holder, concerns, version)) = self
            .read_committed(|e| {
                e.state().need(need).map(|n| {
                    let concerns = viewer.is_none_or(|v| n.concerns(v));
                    (n.holder.clone(), concerns, u32::from(n.deal_version))
                })
            })
            .await?
        else {
            return Ok(None);
        };
        if !concerns {
            return Ok(None);
        }
        let rows = self.events_of(need).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let total = rows.len();
        let mut entries: Vec<(u64, Vec<u8>)> = Vec::with_capacity(total);
        for row in rows {
            let shown = match viewer {
                None => true,
                Some(viewer) => Event::from_json(&row.data)
                    .map_err(|e| BrokerError::Setup(format!("entry {}: {e}", row.index)))?
                    .kind
                    .shown_to(viewer, holder.as_ref()),
            };
            if shown {
                entries.push((row.index, row.data));
            }
        }
        let view = viewer.map(|viewer| rofr_ledger::evidence::View {
            provider: viewer.to_string(),
            withheld: (total - entries.len()) as u64,
        });
        // The deal's entries go first, to the parties of the contract: the buyer, the
        // auditor and the holder. Other providers are not shown its terms. They are
        // the adoption and each amendment up to the version governing the need.
        let party_to_deal = viewer.is_none_or(|v| holder.as_ref() == Some(v));
        if party_to_deal {
            let deals = self.inner.deal_entries.read().expect("deal entries lock");
            let governing = deals
                .iter()
                .filter(|d| d.version().version <= version)
                .map(|d| (d.index, d.data.clone()));
            entries.splice(0..0, governing);
            // An amendment may lie between the need's own entries.
            entries.sort_unstable_by_key(|(index, _)| *index);
        }
        // Where the deal requires witnesses, the bundle waits for them.
        self.witnessed_for(entries.last().map_or(0, |(i, _)| i + 1))
            .await?;
        // A provider other than the holder is not told who holds the right.
        let holder = holder
            .filter(|h| viewer.is_none_or(|v| v == h))
            .map(|h| h.to_string());
        let made = self.ledger(|l| {
            let store = self.inner.reader.lock().expect("store lock poisoned");
            l.evidence(holder, view, &entries, store.as_ref())
        })?;
        let Some((bundle, made_now)) = made else {
            return Ok(None);
        };
        if made_now {
            let (size, note) = self.ledger(|l| l.latest().cloned()).expect("just made");
            let mut store = self.inner.reader.lock().expect("store lock poisoned");
            store.add_checkpoint(size, &note, &crate::ledger::now_text())?;
        }
        Ok(Some(bundle))
    }
}
