//! A period's export (docs/export.md): every entry of the needs active in the period
//! and the deal's entries, as a party may see them, under one multi-leaf proof.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use rofr_engine::types::{ProviderId, Timestamp};
use rofr_engine::Event;
use rofr_report::export::{end_line, entry_line, header_line, Header, FORMAT};

use super::{Broker, BrokerError};

/// Entries read from the log at once.
const CHUNK: u32 = 4096;

/// What an export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportStats {
    pub needs: u64,
    pub entries: u64,
    pub proof_hashes: u64,
    pub checkpoint_size: u64,
}

/// A period's export before it is written: its header, entries and proof.
#[derive(Debug, Clone)]
pub struct ExportPlan {
    pub header: Header,
    /// The entries, increasing.
    pub indexes: Vec<u64>,
    /// The multi-leaf proof's runs: one before each entry, one after the last.
    pub runs: Vec<Vec<rofr_ledger::Hash>>,
    pub needs: u64,
    pub checkpoint_size: u64,
}

/// Where a need stands for the period: when it was submitted and closed.
#[derive(Default)]
struct Span {
    submitted: Option<i64>,
    closed: Option<i64>,
}

impl Broker {
    /// Writes the export of the needs active at some moment of [from, to) to `out`,
    /// whole for the buyer and the auditor (`viewer` `None`), or as `viewer` may see it,
    /// and gives `out` back. A need is active in the period when it was submitted before
    /// `to` and not closed (completed, expired, cancelled) before `from`; all its entries
    /// go in, those after the period too, up to the checkpoint. The log is read on a
    /// blocking thread, a chunk at a time.
    pub async fn export<W: Write + Send + 'static>(
        &self,
        from: Timestamp,
        to: Timestamp,
        viewer: Option<&ProviderId>,
        out: W,
    ) -> Result<(W, ExportStats), BrokerError> {
        let plan = self.export_plan(from, to, viewer).await?;
        let broker = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = out;
            let stats = broker.write_export(&plan, &mut out)?;
            Ok((out, stats))
        })
        .await
        .map_err(|e| BrokerError::Setup(format!("the export stopped: {e}")))?
    }

    /// Which entries a period's export holds, and their proof against one checkpoint
    /// (cosigned where the deal asks for witnesses).
    pub async fn export_plan(
        &self,
        from: Timestamp,
        to: Timestamp,
        viewer: Option<&ProviderId>,
    ) -> Result<ExportPlan, BrokerError> {
        if from >= to {
            return Err(BrokerError::Setup(format!(
                "the period must end after it starts ({from} is not before {to})"
            )));
        }
        self.fresh().await?;
        let broker = self.clone();
        let who = viewer.cloned();
        let (indexes, needs) =
            tokio::task::spawn_blocking(move || broker.select(from, to, who.as_ref()))
                .await
                .map_err(|e| BrokerError::Setup(format!("the export stopped: {e}")))??;
        // One checkpoint over them all, cosigned where the deal asks for witnesses.
        self.witnessed_for(indexes.last().map_or(0, |i| i + 1))
            .await?;
        let proved = self.ledger(|l| {
            let store = self.inner.reader.lock().expect("store lock poisoned");
            l.multi_proof(&indexes, store.as_ref())
        })?;
        let Some((checkpoint_size, note, runs, made_now)) = proved else {
            return Err(BrokerError::Setup(
                "the export's entries lie beyond the ledger's tree".into(),
            ));
        };
        if made_now {
            let mut store = self.inner.reader.lock().expect("store lock poisoned");
            store.add_checkpoint(checkpoint_size, &note, &crate::ledger::now_text())?;
        }
        let header = Header {
            format: FORMAT.into(),
            from: from.to_string(),
            to: to.to_string(),
            shown_to: viewer.map(|p| p.to_string()),
            verifier_key: self.ledger(|l| l.verifier_key()),
            checkpoint: note,
        };
        Ok(ExportPlan {
            header,
            indexes,
            runs,
            needs,
            checkpoint_size,
        })
    }

    /// The entries of the needs active in the period that `viewer` may see, and how
    /// many needs: two passes over the log, a chunk at a time.
    fn select(
        &self,
        from: Timestamp,
        to: Timestamp,
        viewer: Option<&ProviderId>,
    ) -> Result<(Vec<u64>, u64), BrokerError> {
        let size = self.log_size();
        let (from_s, to_s) = (from.unix_seconds(), to.unix_seconds());
        // The first pass: which needs were active, from the stored columns alone.
        let mut spans: HashMap<String, Span> = HashMap::new();
        let mut deal_entries: Vec<u64> = Vec::new();
        self.each_row(size, &mut |row| {
            let at = Timestamp::parse(&row.at)
                .map(|t| t.unix_seconds())
                .unwrap_or(i64::MAX);
            if row.need.is_empty() {
                if row.kind.starts_with("deal_") && at < to_s {
                    deal_entries.push(row.index);
                }
                return Ok(());
            }
            let span = spans.entry(row.need.clone()).or_default();
            match row.kind.as_str() {
                "need_submitted" => span.submitted = Some(at),
                "need_completed" | "need_expired" | "need_cancelled" => span.closed = Some(at),
                _ => {}
            }
            Ok(())
        })?;
        let active: HashSet<String> = spans
            .into_iter()
            .filter(|(_, s)| {
                s.submitted.is_some_and(|at| at < to_s) && s.closed.is_none_or(|at| at >= from_s)
            })
            .map(|(need, _)| need)
            .collect();
        // A provider: the deal's entries where it holds a right in some version, and of
        // each need what it may see.
        let holders: HashMap<String, Option<ProviderId>> = match viewer {
            None => HashMap::new(),
            Some(_) => self.read(|e| {
                active
                    .iter()
                    .filter_map(|id| e.state().need(id).map(|n| (id.clone(), n.holder.clone())))
                    .collect()
            }),
        };
        let party_to_deal = viewer.is_none_or(|p| {
            self.read(|e| {
                (1..=e.versions())
                    .filter_map(|v| e.deal_of(v))
                    .any(|d| d.first_refusals.iter().any(|r| &r.holder == p))
            })
        });
        let mut indexes: Vec<u64> = Vec::new();
        let mut deals = deal_entries.iter().peekable();
        self.each_row(size, &mut |row| {
            while let Some(&&d) = deals.peek() {
                if d > row.index {
                    break;
                }
                if party_to_deal {
                    indexes.push(d);
                }
                deals.next();
            }
            if row.need.is_empty() || !active.contains(&row.need) {
                return Ok(());
            }
            let shown = match viewer {
                None => true,
                Some(viewer) => {
                    let event = Event::from_json(&row.data)
                        .map_err(|e| BrokerError::Setup(format!("entry {}: {e}", row.index)))?;
                    let holder = holders.get(&row.need).cloned().flatten();
                    event.kind.shown_to(viewer, holder.as_ref())
                }
            };
            if shown {
                indexes.push(row.index);
            }
            Ok(())
        })?;
        if party_to_deal {
            indexes.extend(deals.copied());
        }
        indexes.sort_unstable();
        indexes.dedup();
        let needs = if viewer.is_none() {
            active.len() as u64
        } else {
            holders.len() as u64
        };
        Ok((indexes, needs))
    }

    /// Writes a planned export's lines to `out`, reading the log a chunk at a time.
    pub fn write_export(
        &self,
        plan: &ExportPlan,
        out: &mut dyn Write,
    ) -> Result<ExportStats, BrokerError> {
        let ExportPlan {
            header,
            indexes,
            runs,
            needs,
            checkpoint_size,
        } = plan;
        let io = |e: std::io::Error| BrokerError::Setup(format!("writing the export: {e}"));
        out.write_all(header_line(header).as_bytes()).map_err(io)?;
        let mut next = 0usize;
        self.each_row(*checkpoint_size, &mut |row| {
            if indexes.get(next) != Some(&row.index) {
                return Ok(());
            }
            let line = entry_line(row.index, &row.data, &runs[next]).map_err(BrokerError::Setup)?;
            out.write_all(line.as_bytes()).map_err(io)?;
            next += 1;
            Ok(())
        })?;
        if next != indexes.len() {
            return Err(BrokerError::Setup(format!(
                "the log gave {next} of the export's {} entries",
                indexes.len()
            )));
        }
        out.write_all(end_line(next as u64, &runs[next]).as_bytes())
            .map_err(io)?;
        out.flush().map_err(io)?;
        Ok(ExportStats {
            needs: *needs,
            entries: next as u64,
            proof_hashes: runs.iter().map(|r| r.len() as u64).sum(),
            checkpoint_size: *checkpoint_size,
        })
    }

    /// Visits each stored entry below `size` in index order, a chunk of the log at a
    /// time (the read connection is held for one chunk, not the whole scan).
    fn each_row(
        &self,
        size: u64,
        visit: &mut dyn FnMut(&rofr_store::StoredEvent) -> Result<(), BrokerError>,
    ) -> Result<(), BrokerError> {
        let mut after: Option<u64> = None;
        loop {
            let rows = self.store(|s| s.events_after(after, CHUNK))?;
            let Some(last) = rows.last().map(|r| r.index) else {
                return Ok(());
            };
            for row in rows.iter().take_while(|r| r.index < size) {
                visit(row)?;
            }
            if last + 1 >= size {
                return Ok(());
            }
            after = Some(last);
        }
    }
}
