//! Events: the only record of what happened (docs/events.md). State is a fold of them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::deal::Variant;
use crate::types::{Gpus, NeedId, Price, ProviderId, Region, Sku, Tag, Timestamp, Workload};

/// One entry of the log: what happened, to which need, when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(flatten)]
    pub kind: EventKind,
    pub need: NeedId,
    pub at: Timestamp,
}

/// Why a provider said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    NoCapacity,
    Price,
    Timing,
    Other,
    /// The rest of an offer the holder accepted only in part.
    Partial,
    /// The holder accepted, then could not deliver.
    DeliveryFailed,
}

impl DeclineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeclineReason::NoCapacity => "no_capacity",
            DeclineReason::Price => "price",
            DeclineReason::Timing => "timing",
            DeclineReason::Other => "other",
            DeclineReason::Partial => "partial",
            DeclineReason::DeliveryFailed => "delivery_failed",
        }
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// What a `need_submitted` event records: the need as submitted, and what the deal
/// made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeedSubmitted {
    pub sku: Sku,
    pub gpus: Gpus,
    pub hours: u32,
    #[serde(default)]
    pub regions: BTreeSet<Region>,
    pub workload: Workload,
    #[serde(default)]
    pub tags: BTreeSet<Tag>,
    pub max_price_per_gpu_hour: Price,
    pub earliest_start: Timestamp,
    pub latest_start: Timestamp,
    pub decide_by: Timestamp,
    pub priority: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<String>,
    /// The first-refusal holder whose right covers this need, if any.
    pub holder: Option<ProviderId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<Variant>,
    /// Index of the first-refusal clause that covers the need.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_refusal: Option<usize>,
    /// The price the holder is offered, per GPU-hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_price_per_gpu_hour: Option<Price>,
    /// The clause's re-offer threshold, so that the event log alone tells whether a
    /// third-party award was covered by the holder's refusals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reoffer_threshold: Option<f64>,
    /// Why a need that matches a first-refusal scope skips the holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder_exempt: Option<String>,
    /// The version of the deal that governs the need (its `deal_adopted` entry).
    /// Absent in logs written before deals were entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deal_version: Option<u32>,
}

/// The solver's verdict on a sourcing round: the cost of the placement chosen and the
/// lower bound proven on every placement of the same quotes under the same caps, in
/// dollars (placed GPU-hours at their prices, plus each GPU left unplaced at a
/// penalty dearer than every quote). `optimal` when they meet; `bounded` when the
/// search's work limit stopped the proof first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundProof {
    pub status: ProofStatus,
    pub cost: f64,
    pub bound: f64,
    /// Needs whose quotes were placed together in one instance.
    pub needs: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProofStatus {
    Optimal,
    Bounded,
}

impl RoundProof {
    /// How far the cost may be above the optimum, as a fraction of the cost.
    pub fn gap(&self) -> f64 {
        ((self.cost - self.bound) / self.cost.abs().max(1.0)).max(0.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// Boxed: the largest event by far, and the rarest, so that the others stay small
    /// to move.
    NeedSubmitted(Box<NeedSubmitted>),
    OfferSent {
        provider: ProviderId,
        gpus: Gpus,
        price_per_gpu_hour: Price,
        deadline: Timestamp,
        variant: Variant,
        offer: u32,
        #[serde(default, skip_serializing_if = "is_false")]
        reoffer: bool,
        /// For a re-offer: the third party whose quote prompted it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        against: Option<ProviderId>,
    },
    OfferAccepted {
        provider: ProviderId,
        gpus: Gpus,
        price_per_gpu_hour: Price,
        offer: u32,
    },
    OfferDeclined {
        provider: ProviderId,
        gpus: Gpus,
        reason: DeclineReason,
        price_per_gpu_hour: Price,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offer: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revives_at: Option<Timestamp>,
    },
    OfferLapsed {
        provider: ProviderId,
        gpus: Gpus,
        price_per_gpu_hour: Price,
        offer: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revives_at: Option<Timestamp>,
    },
    /// An amendment ended the right an open offer was made under: the offer no
    /// longer stands, and what it held is free again.
    OfferWithdrawn {
        provider: ProviderId,
        gpus: Gpus,
        price_per_gpu_hour: Price,
        offer: u32,
        /// The version whose terms withdrew it.
        version: u32,
    },
    /// The need moved to another version of the deal at its effective time: these are
    /// its terms under it, as `need_submitted` records them.
    TermsChanged {
        version: u32,
        holder: Option<ProviderId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variant: Option<Variant>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        first_refusal: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offer_price_per_gpu_hour: Option<Price>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reoffer_threshold: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holder_exempt: Option<String>,
    },
    /// Quantity a cap that binds the holder keeps from it; it is not offered.
    HolderCapped {
        provider: ProviderId,
        gpus: Gpus,
        cap: usize,
    },
    RfqSent {
        provider: ProviderId,
        gpus: Gpus,
        deadline: Timestamp,
        round: u32,
    },
    RfqDeclined {
        provider: ProviderId,
        reason: DeclineReason,
        round: u32,
    },
    QuoteReceived {
        provider: ProviderId,
        gpus: Gpus,
        price_per_gpu_hour: Price,
        round: u32,
    },
    SourcingClosed {
        round: u32,
        quotes: u32,
        planned_gpus: Gpus,
        /// What the allocation solver proved of the round's placement, where it ran
        /// (absent where cheapest first kept every cap, which is then the optimum, and
        /// in logs written before rounds were proven).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proof: Option<RoundProof>,
    },
    MatchOffered {
        provider: ProviderId,
        gpus: Gpus,
        price_per_gpu_hour: Price,
        deadline: Timestamp,
        offer: u32,
        against: ProviderId,
    },
    MatchAccepted {
        provider: ProviderId,
        gpus: Gpus,
        price_per_gpu_hour: Price,
        offer: u32,
    },
    MatchDeclined {
        provider: ProviderId,
        gpus: Gpus,
        price_per_gpu_hour: Price,
        offer: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revives_at: Option<Timestamp>,
    },
    MatchLapsed {
        provider: ProviderId,
        gpus: Gpus,
        price_per_gpu_hour: Price,
        offer: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        revives_at: Option<Timestamp>,
    },
    ApprovalRequested {
        provider: ProviderId,
        gpus: Gpus,
        price_per_gpu_hour: Price,
        award: u32,
        approval: usize,
    },
    ApprovalRejected {
        provider: ProviderId,
        award: u32,
        reason: String,
    },
    AwardMade {
        provider: ProviderId,
        gpus: Gpus,
        price_per_gpu_hour: Price,
        award: u32,
        confirm_by: Timestamp,
    },
    AwardConfirmed {
        provider: ProviderId,
        reservation: String,
        award: u32,
    },
    AwardFailed {
        provider: ProviderId,
        reason: String,
        award: u32,
        gpus: Gpus,
    },
    /// The third-party window passed, or a third party failed to deliver: the holder's
    /// right applies again to what is left.
    RightRevived {
        provider: ProviderId,
        gpus: Gpus,
    },
    /// Nothing is in flight for the rest of the need until `until`.
    NeedWaiting {
        gpus: Gpus,
        until: Timestamp,
        reason: String,
    },
    NeedFulfilled {
        ends: Timestamp,
    },
    NeedCompleted {},
    NeedExpired {
        gpus: Gpus,
    },
    NeedCancelled {
        reason: String,
    },
}

impl EventKind {
    /// The provider the event is about, where it is about one.
    pub fn provider(&self) -> Option<&ProviderId> {
        match self {
            EventKind::OfferSent { provider, .. }
            | EventKind::OfferAccepted { provider, .. }
            | EventKind::OfferDeclined { provider, .. }
            | EventKind::OfferLapsed { provider, .. }
            | EventKind::OfferWithdrawn { provider, .. }
            | EventKind::HolderCapped { provider, .. }
            | EventKind::RfqSent { provider, .. }
            | EventKind::RfqDeclined { provider, .. }
            | EventKind::QuoteReceived { provider, .. }
            | EventKind::MatchOffered { provider, .. }
            | EventKind::MatchAccepted { provider, .. }
            | EventKind::MatchDeclined { provider, .. }
            | EventKind::MatchLapsed { provider, .. }
            | EventKind::ApprovalRequested { provider, .. }
            | EventKind::ApprovalRejected { provider, .. }
            | EventKind::AwardMade { provider, .. }
            | EventKind::AwardConfirmed { provider, .. }
            | EventKind::AwardFailed { provider, .. }
            | EventKind::RightRevived { provider, .. } => Some(provider),
            EventKind::NeedSubmitted(_)
            | EventKind::TermsChanged { .. }
            | EventKind::SourcingClosed { .. }
            | EventKind::NeedWaiting { .. }
            | EventKind::NeedFulfilled { .. }
            | EventKind::NeedCompleted {}
            | EventKind::NeedExpired { .. }
            | EventKind::NeedCancelled { .. } => None,
        }
    }

    /// Whether `viewer`, a provider, may see this event of a need whose first-refusal
    /// holder is `holder` (I6). Every provider sees the events about itself. The
    /// holder also sees the need as submitted, what becomes of it, and the terms of
    /// awards to other providers (GPUs, price, time), which its right lets it check;
    /// never another provider's requests for quotes, quotes or reservation ids, nor
    /// how many quotes a round drew.
    pub fn shown_to(&self, viewer: &ProviderId, holder: Option<&ProviderId>) -> bool {
        if let Some(provider) = self.provider() {
            if provider == viewer {
                return true;
            }
        }
        if holder != Some(viewer) {
            return false;
        }
        matches!(
            self,
            EventKind::NeedSubmitted(_)
                | EventKind::TermsChanged { .. }
                | EventKind::NeedWaiting { .. }
                | EventKind::NeedFulfilled { .. }
                | EventKind::NeedCompleted {}
                | EventKind::NeedExpired { .. }
                | EventKind::NeedCancelled { .. }
                | EventKind::ApprovalRequested { .. }
                | EventKind::ApprovalRejected { .. }
                | EventKind::AwardMade { .. }
                | EventKind::AwardFailed { .. }
        )
    }

    /// The snake_case type name, as written in the JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::NeedSubmitted(_) => "need_submitted",
            EventKind::OfferSent { .. } => "offer_sent",
            EventKind::OfferAccepted { .. } => "offer_accepted",
            EventKind::OfferDeclined { .. } => "offer_declined",
            EventKind::OfferLapsed { .. } => "offer_lapsed",
            EventKind::OfferWithdrawn { .. } => "offer_withdrawn",
            EventKind::TermsChanged { .. } => "terms_changed",
            EventKind::HolderCapped { .. } => "holder_capped",
            EventKind::RfqSent { .. } => "rfq_sent",
            EventKind::RfqDeclined { .. } => "rfq_declined",
            EventKind::QuoteReceived { .. } => "quote_received",
            EventKind::SourcingClosed { .. } => "sourcing_closed",
            EventKind::MatchOffered { .. } => "match_offered",
            EventKind::MatchAccepted { .. } => "match_accepted",
            EventKind::MatchDeclined { .. } => "match_declined",
            EventKind::MatchLapsed { .. } => "match_lapsed",
            EventKind::ApprovalRequested { .. } => "approval_requested",
            EventKind::ApprovalRejected { .. } => "approval_rejected",
            EventKind::AwardMade { .. } => "award_made",
            EventKind::AwardConfirmed { .. } => "award_confirmed",
            EventKind::AwardFailed { .. } => "award_failed",
            EventKind::RightRevived { .. } => "right_revived",
            EventKind::NeedWaiting { .. } => "need_waiting",
            EventKind::NeedFulfilled { .. } => "need_fulfilled",
            EventKind::NeedCompleted {} => "need_completed",
            EventKind::NeedExpired { .. } => "need_expired",
            EventKind::NeedCancelled { .. } => "need_cancelled",
        }
    }
}

impl Event {
    /// The event's JSON bytes: what the log stores and the ledger hashes.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        self.write_json(&mut bytes);
        bytes
    }

    /// [`Event::to_json`], appended to `out`: a writer that serializes many events
    /// keeps its buffers.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("events always serialize");
    }

    pub fn from_json(bytes: &[u8]) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
