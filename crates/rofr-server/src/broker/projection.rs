//! The needs projection: one row per need, derived from the log, that lists read.
//! Rows may trail the log for about a second; at start and after a failed commit they
//! are checked against the log and rebuilt if they disagree.

use std::time::Duration;

use rofr_engine::state::NeedState;
use rofr_engine::Engine;
use rofr_store::{NeedRow, Store};

use super::BrokerError;

/// Where a need's events lie in the log, and when the latest one happened.
#[derive(Debug, Clone)]
pub(super) struct Touch {
    pub(super) at: String,
    pub(super) first: u64,
    pub(super) last: u64,
}

/// Where needs' events lie, by need. Hashed: every event touches one, and an ordered
/// map compared its id with a dozen others to find it (about 5% of the writer at
/// 300,000 needs); whatever needs them in order sorts them ([`in_id_order`]).
pub(super) type Touches = std::collections::HashMap<String, Touch, rustc_hash::FxBuildHasher>;

pub(super) fn in_id_order(touches: &Touches) -> Vec<(&String, &Touch)> {
    let mut sorted: Vec<_> = touches.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    sorted
}

/// Notes that entry `index`, at `at`, belongs to `need`. An entry of no need (the
/// deal's, whose need is empty) touches nothing.
pub(super) fn touch(touches: &mut Touches, need: &str, at: &str, index: u64) {
    if need.is_empty() {
        return;
    }
    // Looked up by `&str` first: most events touch a need already in the map, and
    // `entry` would copy its id every time.
    if let Some(t) = touches.get_mut(need) {
        t.at.clear();
        t.at.push_str(at);
        t.last = index;
        return;
    }
    touches.insert(
        need.to_owned(),
        Touch {
            at: at.to_owned(),
            first: index,
            last: index,
        },
    );
}

pub(super) fn need_row(need: &NeedState, touch: &Touch) -> NeedRow {
    NeedRow {
        id: need.spec.id.to_string(),
        status: need.status().as_str().into(),
        sku: need.spec.sku.to_string(),
        gpus: need.spec.gpus.get(),
        awarded: need.awarded().get(),
        holder: need.holder.as_ref().map(|h| h.to_string()),
        submitted_at: need.submitted_at.to_string(),
        updated_at: touch.at.clone(),
        // The deadline the need holds in the agenda: its next one as of its last event.
        next_deadline: need.scheduled.map(|d| d.to_string()),
        first_event: touch.first,
        last_event: touch.last,
    }
}

/// Projection rows for the needs in `touches`, as the engine's state has them, in
/// order of id.
pub(super) fn projection(engine: &Engine, touches: &Touches) -> Vec<NeedRow> {
    let state = engine.state();
    in_id_order(touches)
        .into_iter()
        .filter_map(|(id, t)| state.need(id.as_str()).map(|n| need_row(&n, t)))
        .collect()
}

/// Whether the stored needs projection holds exactly the rows the engine gives for
/// `touches`. Both are ordered by id and compared a page at a time, so that the stored
/// rows are never all in memory.
pub(super) fn projection_agrees(
    store: &dyn Store,
    engine: &Engine,
    touches: &Touches,
) -> Result<bool, BrokerError> {
    const PAGE: u32 = 10_000;
    let state = engine.state();
    let mut expected = in_id_order(touches)
        .into_iter()
        .filter_map(|(id, t)| state.need(id.as_str()).map(|n| need_row(&n, t)));
    let mut after: Option<String> = None;
    loop {
        let page = store.list_needs(None, after.as_deref(), PAGE)?;
        for row in &page {
            if expected.next().as_ref() != Some(row) {
                return Ok(false);
            }
        }
        if (page.len() as u32) < PAGE {
            return Ok(expected.next().is_none());
        }
        after = page.last().map(|row| row.id.clone());
    }
}

/// How long the needs projection may trail the log (and then some, while a sweep
/// writes it). A list query asks for the rows first ([`Broker::projected`]), so it never
/// sees them trail. Rows written together share pages of the projection's trees: at
/// 100 ms, each row cost a page of its own and `bench broker` made 15-20% fewer needs a
/// second.
pub(super) const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The most projection rows a sweep adds to one batch. A second's rows in one commit
/// (15,000 at a million needs) held up that batch's answers: p99 doubled.
pub(super) const SWEEP_ROWS: usize = 2_048;

/// Which of the needs projection's rows held back a batch writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rows {
    /// None: they may trail the log a while longer.
    Held,
    /// The next few in order of id, continuing the sweep under way or starting one.
    Sweep,
    /// Every one: a list query waits for them, replicas never hold rows back, and a
    /// stopping broker leaves none behind.
    All,
}
