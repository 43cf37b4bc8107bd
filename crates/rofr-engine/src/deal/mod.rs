//! The deal: providers and the clauses between buyer and providers (docs/deal.md),
//! as typed values. `parse` is the only way to make one from text.

mod changes;
mod parse;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::diagnostic::{ClauseRef, Location};
use crate::duration::{Calendar, DealDuration};
use crate::types::{Gpus, Price, ProviderId, Region, Sku, Tag, Timestamp, Workload};

pub use changes::{changes, renamed, Change, Source};
pub use parse::{parse_deal, MAX_FIRST_REFUSALS};

#[derive(Debug, Clone, PartialEq)]
pub struct Deal {
    pub name: String,
    pub file: String,
    pub location: Location,
    pub providers: Vec<Provider>,
    pub calendar: Calendar,
    pub sourcing: Sourcing,
    pub first_refusals: Vec<FirstRefusal>,
    pub caps: Vec<ConcentrationCap>,
    pub commitments: Vec<Commitment>,
    pub restrictions: Vec<PlacementRestriction>,
    pub approvals: Vec<Approval>,
    /// Who cosigns the ledger's checkpoints.
    pub witnesses: Vec<Witness>,
}

/// A party that cosigns the ledger's checkpoints (C2SP `tlog-witness`).
#[derive(Debug, Clone, PartialEq)]
pub struct Witness {
    /// Who runs it, for people: e.g. the holder's id.
    pub name: String,
    /// Its C2SP `tlog-cosignature/v1` verifier key, checked when parsed.
    pub key: String,
    /// Its submission prefix, without a trailing slash: requests go to
    /// `<url>/add-checkpoint`.
    pub url: String,
    /// A checkpoint counts as witnessed once every required witness cosigned it.
    pub required: bool,
    pub location: Location,
}

/// Detached ids, one per distinct text. A deal names few, so lists searched in order.
#[derive(Default)]
struct Fresh {
    providers: Vec<ProviderId>,
    skus: Vec<Sku>,
    regions: Vec<Region>,
    workloads: Vec<Workload>,
    tags: Vec<Tag>,
}

macro_rules! fresh {
    ($method:ident, $list:ident, $type:ty) => {
        fn $method(&mut self, id: &$type) -> $type {
            if let Some(known) = self.$list.iter().find(|known| *known == id) {
                return known.clone();
            }
            let fresh = id.detached();
            self.$list.push(fresh.clone());
            fresh
        }
    };
}

impl Fresh {
    fresh!(provider, providers, ProviderId);
    fresh!(sku, skus, Sku);
    fresh!(region, regions, Region);
    fresh!(workload, workloads, Workload);
    fresh!(tag, tags, Tag);
}

#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub id: ProviderId,
    pub name: Option<String>,
    /// The skus it sells; empty means any.
    pub skus: BTreeSet<Sku>,
    /// The regions it serves; empty means any.
    pub regions: BTreeSet<Region>,
    /// The most GPUs it could ever hold for the buyer at once, where the deal knows it.
    pub max_gpus: Option<Gpus>,
    pub location: Location,
}

/// Timing of the sourcing round that follows a refusal.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourcing {
    /// How long providers have to answer a request for quotes.
    pub quote_window: DealDuration,
    /// How long an awarded provider has to confirm with a reservation id.
    pub confirm_window: DealDuration,
    /// How long a need that found no supply waits before it is sourced again.
    pub retry_after: DealDuration,
    pub allocation: Allocation,
}

/// How the quotes of a sourcing round are allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Allocation {
    /// At least cost under the caps, proven by the solver.
    #[default]
    LeastCost,
    /// Providers in the deal's order, each giving what it quoted, as multi-cloud
    /// launchers fail over today: the baseline that least cost is measured against.
    Ordered,
}

impl Allocation {
    pub fn parse(text: &str) -> Result<Allocation, crate::types::ValueError> {
        match text {
            "least_cost" => Ok(Allocation::LeastCost),
            "ordered" => Ok(Allocation::Ordered),
            other => Err(crate::types::ValueError(format!(
                "allocation is `least_cost` or `ordered`, not `{other}`"
            ))),
        }
    }
}

impl Default for Sourcing {
    fn default() -> Self {
        Sourcing {
            quote_window: DealDuration::Exact { seconds: 24 * 3600 },
            confirm_window: DealDuration::Exact { seconds: 48 * 3600 },
            retry_after: DealDuration::Exact { seconds: 24 * 3600 },
            allocation: Allocation::LeastCost,
        }
    }
}

/// The three kinds of first-refusal right.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    FirstOffer,
    LastLook,
    Negotiate,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::FirstOffer => "first_offer",
            Variant::LastLook => "last_look",
            Variant::Negotiate => "negotiate",
        }
    }
}

/// What happens to quantity a third party was awarded but failed to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// It is offered to the holder again before anyone else.
    HolderFirst,
    /// It goes straight back to sourcing.
    Sourcing,
}

/// The period a clause is in force: from the start of `from` until the start of
/// `until`, in the deal's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub from: Timestamp,
    pub until: Option<Timestamp>,
}

impl Term {
    pub fn covers(&self, at: Timestamp) -> bool {
        self.from <= at && self.until.is_none_or(|until| at < until)
    }

    pub fn overlaps(&self, other: &Term) -> bool {
        let ends_after = |term: &Term, start: Timestamp| term.until.is_none_or(|u| u > start);
        ends_after(self, other.from) && ends_after(other, self.from)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuRange {
    pub min: Gpus,
    pub max: Option<Gpus>,
}

/// Which needs a clause covers. Each empty set means "any".
#[derive(Debug, Clone, PartialEq)]
pub struct Scope {
    pub skus: BTreeSet<Sku>,
    pub regions: BTreeSet<Region>,
    pub workloads: BTreeSet<Workload>,
    /// A need must carry at least one of these tags, where any are given.
    pub tags: BTreeSet<Tag>,
    /// Needs carrying any of these tags are carved out of the scope.
    pub exclude_tags: BTreeSet<Tag>,
    pub gpus: GpuRange,
    pub location: Location,
}

/// The attributes of a need that scopes and restrictions look at.
pub struct NeedProfile<'a> {
    pub sku: &'a Sku,
    pub regions: &'a BTreeSet<Region>,
    pub workload: &'a Workload,
    pub tags: &'a BTreeSet<Tag>,
    pub gpus: Gpus,
}

impl Scope {
    pub fn matches(&self, need: &NeedProfile<'_>) -> bool {
        (self.skus.is_empty() || self.skus.contains(need.sku))
            && (self.regions.is_empty() || need.regions.iter().any(|r| self.regions.contains(r)))
            && (self.workloads.is_empty() || self.workloads.contains(need.workload))
            && (self.tags.is_empty() || need.tags.iter().any(|t| self.tags.contains(t)))
            && !need.tags.iter().any(|t| self.exclude_tags.contains(t))
            && need.gpus >= self.gpus.min
            && self.gpus.max.is_none_or(|max| need.gpus <= max)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FirstRefusal {
    pub clause: ClauseRef,
    pub holder: ProviderId,
    pub holder_location: Location,
    pub scope: Scope,
    pub variant: Variant,
    pub window: DealDuration,
    /// May the holder take part of a need, leaving the rest to others?
    pub partial: bool,
    pub reoffer_threshold: f64,
    pub third_party_window: Option<DealDuration>,
    pub term: Term,
    /// The price per GPU-hour offered to the holder, by sku, where the deal sets one;
    /// otherwise a need's own offer price, or its maximum price, is offered.
    pub offer_prices: BTreeMap<Sku, Price>,
    pub on_delivery_failure: Redelivery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapBasis {
    GpuHours,
    Spend,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConcentrationCap {
    pub clause: ClauseRef,
    /// The largest share any one provider may hold, in (0, 1].
    pub max_share: f64,
    /// Awards older than this no longer count; `None` counts every award.
    pub window: Option<DealDuration>,
    pub binds_holder: bool,
    /// HHI (0–10,000) above which the mix is reported as concentrated.
    pub hhi_alert: Option<f64>,
    pub basis: CapBasis,
    /// The providers it applies to; empty means every provider.
    pub providers: BTreeSet<ProviderId>,
    /// Usage from before rofr, counted as if awarded at the start of time.
    pub base: BTreeMap<ProviderId, f64>,
}

impl ConcentrationCap {
    pub fn applies_to(&self, provider: &ProviderId, holder: Option<&ProviderId>) -> bool {
        let listed = self.providers.is_empty() || self.providers.contains(provider);
        let exempt = !self.binds_holder && holder == Some(provider);
        listed && !exempt
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Commitment {
    pub clause: ClauseRef,
    pub provider: ProviderId,
    pub provider_location: Location,
    pub min_gpu_hours: Option<f64>,
    pub min_spend: Option<f64>,
    pub period: Term,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlacementRestriction {
    pub clause: ClauseRef,
    pub tags: BTreeSet<Tag>,
    pub providers: BTreeSet<ProviderId>,
    pub reason: Option<String>,
}

impl PlacementRestriction {
    pub fn forbids(&self, provider: &ProviderId, tags: &BTreeSet<Tag>) -> bool {
        self.providers.contains(provider) && tags.iter().any(|t| self.tags.contains(t))
    }
}

/// Awards that wait for an approver. Every condition given must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    pub clause: ClauseRef,
    /// Total value (GPUs × hours × price) at or above which approval is needed.
    pub min_value: Option<f64>,
    /// Only awards to a provider other than the first-refusal holder.
    pub non_holder: bool,
    /// Only awards to these providers; empty means any.
    pub providers: BTreeSet<ProviderId>,
}

impl Deal {
    /// A copy sharing no id with this deal, and holding one id per distinct text (so
    /// that ids compare equal at a glance wherever they name the same thing). Threads
    /// that each run their own copy, as the simulator's runs do, never contend for the
    /// counts of shared ids.
    pub fn detached(&self) -> Deal {
        let mut ids = Fresh::default();
        let mut deal = self.clone();
        for provider in &mut deal.providers {
            let Provider {
                id,
                name: _,
                skus,
                regions,
                max_gpus: _,
                location: _,
            } = provider;
            *id = ids.provider(id);
            *skus = skus.iter().map(|s| ids.sku(s)).collect();
            *regions = regions.iter().map(|r| ids.region(r)).collect();
        }
        for clause in &mut deal.first_refusals {
            clause.holder = ids.provider(&clause.holder);
            let Scope {
                skus,
                regions,
                workloads,
                tags,
                exclude_tags,
                gpus: _,
                location: _,
            } = &mut clause.scope;
            *skus = skus.iter().map(|s| ids.sku(s)).collect();
            *regions = regions.iter().map(|r| ids.region(r)).collect();
            *workloads = workloads.iter().map(|w| ids.workload(w)).collect();
            *tags = tags.iter().map(|t| ids.tag(t)).collect();
            *exclude_tags = exclude_tags.iter().map(|t| ids.tag(t)).collect();
            clause.offer_prices = std::mem::take(&mut clause.offer_prices)
                .into_iter()
                .map(|(sku, price)| (ids.sku(&sku), price))
                .collect();
        }
        for cap in &mut deal.caps {
            cap.providers = cap.providers.iter().map(|p| ids.provider(p)).collect();
            cap.base = std::mem::take(&mut cap.base)
                .into_iter()
                .map(|(provider, amount)| (ids.provider(&provider), amount))
                .collect();
        }
        for commitment in &mut deal.commitments {
            commitment.provider = ids.provider(&commitment.provider);
        }
        for restriction in &mut deal.restrictions {
            restriction.tags = restriction.tags.iter().map(|t| ids.tag(t)).collect();
            restriction.providers = restriction
                .providers
                .iter()
                .map(|p| ids.provider(p))
                .collect();
        }
        for approval in &mut deal.approvals {
            approval.providers = approval.providers.iter().map(|p| ids.provider(p)).collect();
        }
        deal
    }

    pub fn provider(&self, id: &ProviderId) -> Option<&Provider> {
        self.providers.iter().find(|p| &p.id == id)
    }

    /// The first-refusal clause that covers a need submitted at `at`, if any.
    pub fn first_refusal_for(
        &self,
        need: &NeedProfile<'_>,
        at: Timestamp,
    ) -> Option<&FirstRefusal> {
        self.first_refusals
            .iter()
            .find(|clause| clause.term.covers(at) && clause.scope.matches(need))
    }

    /// The holder of the first-refusal clause in force at `at` for any scope, used to
    /// exempt it from caps that do not bind it.
    pub fn holder_at(&self, at: Timestamp) -> Option<&ProviderId> {
        self.first_refusals
            .iter()
            .find(|clause| clause.term.covers(at))
            .map(|clause| &clause.holder)
    }

    pub fn restriction_forbidding(
        &self,
        provider: &ProviderId,
        tags: &BTreeSet<Tag>,
    ) -> Option<&PlacementRestriction> {
        self.restrictions.iter().find(|r| r.forbids(provider, tags))
    }
}
