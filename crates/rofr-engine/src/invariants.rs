//! The invariants of ARCHITECTURE.md that can be judged from events alone: I1 (first
//! refusal), I2 (no over-award) and I3 (restrictions and caps). Tests run these after
//! every step; the ledger's verifier reuses the I1 rule.

use crate::cap::{Amount, Share};
use crate::deal::{CapBasis, Deal};
use crate::event::{Event, EventKind};
use crate::state::{Refusal, State};
use crate::types::{Gpus, NeedId, Price, ProviderId, Timestamp};

/// Is every third-party award covered by the holder's refusals? An award at price p
/// may lean on a refusal at price r when p ≤ r·(1 + threshold), or on a refusal that
/// holds at any price. Because a dearer award can lean on fewer refusals, it suffices
/// (Hall's condition on nested sets) that for every price level the awards at or above
/// it need no more GPUs than the refusals that can carry them.
pub fn refusals_cover(refusals: &[Refusal], awards: &[(Gpus, Price)], threshold: f64) -> bool {
    let mut levels: Vec<Price> = awards.iter().map(|(_, p)| *p).collect();
    levels.sort_unstable();
    levels.dedup();
    levels.into_iter().all(|level| {
        let demand: u64 = awards
            .iter()
            .filter(|(_, p)| *p >= level)
            .map(|(g, _)| u64::from(g.get()))
            .sum();
        let supply: u64 = refusals
            .iter()
            .filter(|r| r.price.is_none_or(|p| p.raised_by(threshold) >= level))
            .map(|r| u64::from(r.gpus.get()))
            .sum();
        demand <= supply
    })
}

/// A broken invariant: which, where, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{invariant} broken at event {index} (need {need}): {detail}")]
pub struct Violation {
    pub invariant: &'static str,
    pub index: usize,
    pub need: NeedId,
    pub detail: String,
}

/// Replays `events` and checks I1–I3 at every award. `index` in a violation counts
/// events from 0.
pub fn check_events(deal: &Deal, events: &[Event]) -> Result<(), Violation> {
    check_under(&[deal], events)
}

/// [`check_events`] for a deal with versions (`versions[0]` is version 1): each
/// award is judged under the version governing its need, which names the holder
/// whose refusals must cover it, the restrictions and the caps.
pub fn check_under(versions: &[&Deal], events: &[Event]) -> Result<(), Violation> {
    let mut checker = Checker::new(versions.to_vec());
    events.iter().try_for_each(|event| checker.check(event))
}

/// [`check_under`] one event at a time, for a log read as it streams by: the fold of
/// the events checked so far, and the deal's versions known so far.
#[derive(Debug, Default)]
pub struct Checker<D> {
    versions: Vec<D>,
    state: State,
    index: usize,
}

impl<D: std::borrow::Borrow<Deal>> Checker<D> {
    /// `versions[0]` is version 1.
    pub fn new(versions: Vec<D>) -> Checker<D> {
        Checker {
            versions,
            state: State::default(),
            index: 0,
        }
    }

    /// The deal's next version, as an amendment adds it.
    pub fn add_version(&mut self, deal: D) {
        self.versions.push(deal);
    }

    /// The fold of every event checked so far, those that broke an invariant included.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Folds in `event` and checks I1–I3 if it awards; the event is folded in even where
    /// it breaks one, so the check can go on to the next.
    pub fn check(&mut self, event: &Event) -> Result<(), Violation> {
        let index = self.index;
        self.index += 1;
        let versions = &self.versions;
        let state = &mut self.state;
        // An award made after approval was checked when it was requested.
        let approved_now = match &event.kind {
            EventKind::AwardMade { award, .. } => state
                .need(event.need.as_str())
                .is_some_and(|n| n.awards.iter().any(|a| a.seq == *award)),
            _ => false,
        };
        state.apply(event);
        if approved_now {
            return Ok(());
        }
        let fail = |invariant, detail: String| {
            Err(Violation {
                invariant,
                index,
                need: event.need.clone(),
                detail,
            })
        };
        let Some(need) = state.need(event.need.as_str()) else {
            return fail("I4", "event for a need never submitted".into());
        };
        let Some(deal) = usize::from(need.deal_version)
            .checked_sub(1)
            .and_then(|i| versions.get(i))
            .map(|d| d.borrow())
        else {
            return fail(
                "I1",
                format!(
                    "the need names deal version {}, which the log lacks",
                    need.deal_version
                ),
            );
        };
        if let Some(detail) = holder_disagrees(deal, &need, event) {
            return fail("I1", detail);
        }
        let (provider, gpus, price) = match &event.kind {
            EventKind::AwardMade {
                provider,
                gpus,
                price_per_gpu_hour,
                ..
            }
            | EventKind::ApprovalRequested {
                provider,
                gpus,
                price_per_gpu_hour,
                ..
            } => (provider, *gpus, *price_per_gpu_hour),
            _ => return Ok(()),
        };
        if need.awarded() > need.spec.gpus {
            return fail(
                "I2",
                format!(
                    "{} GPUs awarded for a need of {}",
                    need.awarded(),
                    need.spec.gpus
                ),
            );
        }
        if price > need.spec.max_price_per_gpu_hour {
            return fail("I2", format!("award at {price} above the need's maximum"));
        }
        if let Some(r) = deal.restriction_forbidding(provider, &need.spec.tags) {
            return fail("I3", format!("award to `{provider}` breaks {}", r.clause));
        }
        if let Some(holder) = &need.holder {
            if provider != holder {
                let awards: Vec<(Gpus, Price)> = need
                    .third_party_awards()
                    .map(|a| (a.gpus, a.price))
                    .collect();
                if !refusals_cover(&need.refusals, &awards, need.reoffer_threshold) {
                    return fail(
                        "I1",
                        format!(
                            "{gpus} GPUs at {price} awarded to `{provider}` without the holder `{holder}` refusing them on terms at least as good (refusals {:?})",
                            need.refusals
                        ),
                    );
                }
            }
        }
        if let Some(detail) = cap_exceeded(deal, state, provider, event.at) {
            return fail("I3", detail);
        }
        Ok(())
    }
}

/// Where a need's terms were set (its submission, or its move to another version),
/// whether the holder they name differs from the one its version's clause gives.
fn holder_disagrees(deal: &Deal, need: &crate::state::NeedState, event: &Event) -> Option<String> {
    let set = matches!(
        event.kind,
        EventKind::NeedSubmitted(_) | EventKind::TermsChanged { .. }
    );
    let place = need.first_refusal?;
    if !set {
        return None;
    }
    let Some(clause) = deal.first_refusals.get(usize::from(place)) else {
        return Some(format!(
            "the need names first_refusal[{place}], which version {} lacks",
            need.deal_version
        ));
    };
    (need.holder.as_ref() != Some(&clause.holder)).then(|| {
        format!(
            "the need names holder {:?}, but first_refusal[{place}] of version {} gives `{}`",
            need.holder.as_ref().map(|h| h.as_str()),
            need.deal_version,
            clause.holder
        )
    })
}

/// Whether `provider`'s usage breaks a cap at `at`, judged on the usage in `state`.
pub fn cap_exceeded(
    deal: &Deal,
    state: &State,
    provider: &ProviderId,
    at: Timestamp,
) -> Option<String> {
    let exempt = deal
        .first_refusals
        .iter()
        .any(|fr| fr.term.covers(at) && &fr.holder == provider);
    for cap in &deal.caps {
        if !cap.applies_to(provider, exempt.then_some(provider)) || cap.max_share >= 1.0 {
            continue;
        }
        let (total, own) = cap_usage(cap, state, provider, at);
        if !crate::cap::keeps(own, Share::of(cap.max_share), total) {
            return Some(format!(
                "`{provider}` holds {:.2}% of usage under {}, above its {:.2}%",
                own.as_f64() / total.as_f64() * 100.0,
                cap.clause,
                cap.max_share * 100.0
            ));
        }
    }
    None
}

/// Total and `provider`'s own usage under a cap at `at`, bases included.
pub fn cap_usage(
    cap: &crate::deal::ConcentrationCap,
    state: &State,
    provider: &ProviderId,
    at: Timestamp,
) -> (Amount, Amount) {
    let from = cap_window_start(cap, at);
    (
        cap_total(cap, &state.usage, from),
        cap_own(cap, &state.usage, from, provider),
    )
}

/// Where a cap's window starts at `at`: awards before it no longer count.
pub fn cap_window_start(cap: &crate::deal::ConcentrationCap, at: Timestamp) -> Option<Timestamp> {
    cap.window.map(|w| at.plus_seconds(-w.nominal_seconds()))
}

/// Everyone's usage under a cap from `from` on, bases included.
pub fn cap_total(
    cap: &crate::deal::ConcentrationCap,
    usage: &crate::usage::UsageLog,
    from: Option<Timestamp>,
) -> Amount {
    let base: Amount = cap.base.values().copied().map(Amount::from_f64).sum();
    base + cap_amount(cap, usage.since_all(from))
}

/// `provider`'s own usage under a cap from `from` on, its base included.
pub fn cap_own(
    cap: &crate::deal::ConcentrationCap,
    usage: &crate::usage::UsageLog,
    from: Option<Timestamp>,
    provider: &ProviderId,
) -> Amount {
    let base = cap
        .base
        .get(provider)
        .copied()
        .map_or(Amount::default(), Amount::from_f64);
    base + cap_amount(cap, usage.since_own(from, provider))
}

fn cap_amount(cap: &crate::deal::ConcentrationCap, usage: crate::usage::Usage) -> Amount {
    match cap.basis {
        CapBasis::GpuHours => Amount::gpu_hours(usage.gpu_hours),
        CapBasis::Spend => Amount(usage.spend_units),
    }
}
