//! What each party sees, built from the engine's state. A provider's views hold only
//! what is addressed to it (I6).

use rofr_engine::state::{AwardStatus, Closed, NeedState, OfferKind, OfferStatus, RfqStatus};
use rofr_engine::types::{Gpus, Price, ProviderId, Timestamp};
use rofr_engine::Engine;
use serde::Serialize;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NeedView {
    pub id: String,
    pub status: &'static str,
    pub sku: String,
    pub gpus: Gpus,
    pub awarded: Gpus,
    pub hours: u32,
    pub regions: Vec<String>,
    pub workload: String,
    pub tags: Vec<String>,
    pub max_price_per_gpu_hour: Price,
    pub holder: Option<String>,
    pub variant: Option<&'static str>,
    pub submitted_at: Timestamp,
    /// The window the GPUs may start in: an award runs `hours` from `earliest_start`.
    pub earliest_start: Timestamp,
    pub latest_start: Timestamp,
    pub decide_by: Timestamp,
    pub next_deadline: Option<Timestamp>,
    pub launch: Option<String>,
    pub offers: Vec<OfferView>,
    pub rfqs: Vec<RfqView>,
    pub awards: Vec<AwardView>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OfferView {
    pub need: String,
    pub offer: u32,
    pub kind: &'static str,
    pub provider: String,
    pub gpus: Gpus,
    pub price_per_gpu_hour: Price,
    pub deadline: Timestamp,
    pub status: &'static str,
    pub sku: String,
    pub hours: u32,
    pub earliest_start: Timestamp,
    pub latest_start: Timestamp,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RfqView {
    pub need: String,
    pub round: u32,
    pub provider: String,
    pub gpus: Gpus,
    pub deadline: Timestamp,
    pub status: &'static str,
    pub sku: String,
    pub hours: u32,
    pub regions: Vec<String>,
    pub earliest_start: Timestamp,
    pub latest_start: Timestamp,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AwardView {
    pub need: String,
    pub award: u32,
    pub provider: String,
    pub gpus: Gpus,
    pub price_per_gpu_hour: Price,
    pub status: &'static str,
    pub confirm_by: Option<Timestamp>,
    pub reservation: Option<String>,
    pub sku: String,
    pub hours: u32,
    /// The need's start window, which the awarded provider delivers within.
    pub earliest_start: Timestamp,
    pub latest_start: Timestamp,
}

fn offer_view(need: &NeedState, o: &rofr_engine::state::HolderOffer) -> OfferView {
    OfferView {
        need: need.spec.id.to_string(),
        offer: o.seq,
        kind: match o.kind {
            OfferKind::First => "first",
            OfferKind::Reoffer => "reoffer",
            OfferKind::Match => "match",
        },
        provider: o.provider.to_string(),
        gpus: o.gpus,
        price_per_gpu_hour: o.price,
        deadline: o.deadline,
        status: match o.status {
            OfferStatus::Open => "open",
            OfferStatus::Accepted(_) => "accepted",
            OfferStatus::Declined => "declined",
            OfferStatus::Lapsed => "lapsed",
            OfferStatus::Withdrawn => "withdrawn",
        },
        sku: need.spec.sku.to_string(),
        hours: need.spec.hours,
        earliest_start: need.spec.earliest_start,
        latest_start: need.spec.latest_start,
    }
}

fn rfq_views(need: &NeedState) -> impl Iterator<Item = RfqView> + '_ {
    need.rfqs.iter().map(move |r| RfqView {
        need: need.spec.id.to_string(),
        round: need.round,
        provider: r.provider.to_string(),
        gpus: r.gpus,
        deadline: r.deadline,
        status: match (&r.status, need.sourcing_open) {
            (RfqStatus::Open, true) => "open",
            (RfqStatus::Open, false) => "closed",
            (RfqStatus::Quoted { .. }, _) => "quoted",
            (RfqStatus::Declined, _) => "declined",
        },
        sku: need.spec.sku.to_string(),
        hours: need.spec.hours,
        regions: need.spec.regions.iter().map(|r| r.to_string()).collect(),
        earliest_start: need.spec.earliest_start,
        latest_start: need.spec.latest_start,
    })
}

fn award_views(need: &NeedState) -> impl Iterator<Item = AwardView> + '_ {
    need.awards.iter().map(move |a| AwardView {
        need: need.spec.id.to_string(),
        award: a.seq,
        provider: a.provider.to_string(),
        gpus: a.gpus,
        price_per_gpu_hour: a.price,
        status: AwardState::of(need, a.status).as_str(),
        confirm_by: a.confirm_by,
        reservation: a.reservation.as_deref().map(str::to_owned),
        sku: need.spec.sku.to_string(),
        hours: need.spec.hours,
        earliest_start: need.spec.earliest_start,
        latest_start: need.spec.latest_start,
    })
}

pub fn need_view(need: &NeedState) -> NeedView {
    let spec = &need.spec;
    NeedView {
        id: spec.id.to_string(),
        status: need.status().as_str(),
        sku: spec.sku.to_string(),
        gpus: spec.gpus,
        awarded: need.awarded(),
        hours: spec.hours,
        regions: spec.regions.iter().map(|r| r.to_string()).collect(),
        workload: spec.workload.to_string(),
        tags: spec.tags.iter().map(|t| t.to_string()).collect(),
        max_price_per_gpu_hour: spec.max_price_per_gpu_hour,
        holder: need.holder.as_ref().map(|h| h.to_string()),
        variant: need.variant.map(|v| v.as_str()),
        submitted_at: need.submitted_at,
        earliest_start: spec.earliest_start,
        latest_start: spec.latest_start,
        decide_by: spec.decide_by,
        next_deadline: need.next_deadline(),
        launch: spec.launch.clone(),
        offers: need.offers.iter().map(|o| offer_view(need, o)).collect(),
        rfqs: rfq_views(need).collect(),
        awards: award_views(need).collect(),
    }
}

/// Open requests for quotes addressed to `provider`.
pub fn rfqs_for(engine: &Engine, provider: &ProviderId) -> Vec<RfqView> {
    engine
        .state()
        .unpacked_needs()
        .filter(|n| n.sourcing_open && n.closed.is_none())
        .flat_map(|n| {
            rfq_views(n).filter(|r| r.provider == provider.as_str() && r.status == "open")
        })
        .collect()
}

/// An award's status as [`AwardView::status`] gives it: the engine's, with a confirmed
/// award of a completed need called `completed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwardState {
    PendingApproval,
    Made,
    Confirmed,
    Completed,
    Rejected,
    Failed,
}

impl AwardState {
    pub const ALL: [AwardState; 6] = [
        AwardState::PendingApproval,
        AwardState::Made,
        AwardState::Confirmed,
        AwardState::Completed,
        AwardState::Rejected,
        AwardState::Failed,
    ];

    fn of(need: &NeedState, status: AwardStatus) -> AwardState {
        match status {
            AwardStatus::PendingApproval => AwardState::PendingApproval,
            AwardStatus::Made => AwardState::Made,
            AwardStatus::Confirmed if need.closed == Some(Closed::Completed) => {
                AwardState::Completed
            }
            AwardStatus::Confirmed => AwardState::Confirmed,
            AwardStatus::Rejected => AwardState::Rejected,
            AwardStatus::Failed => AwardState::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AwardState::PendingApproval => "pending_approval",
            AwardState::Made => "made",
            AwardState::Confirmed => "confirmed",
            AwardState::Completed => "completed",
            AwardState::Rejected => "rejected",
            AwardState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<AwardState> {
        AwardState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// States separated by commas, each with spaces around it if the caller likes; an
    /// unknown one is the error.
    pub fn parse_list(text: &str) -> Result<Vec<AwardState>, &str> {
        text.split(',')
            .map(|one| one.trim_matches(' '))
            .map(|one| AwardState::parse(one).ok_or(one))
            .collect()
    }

    /// Awaiting an answer: only needs not at rest hold such awards, so a page of these
    /// alone passes packed needs by.
    fn open(self) -> bool {
        matches!(self, AwardState::PendingApproval | AwardState::Made)
    }
}

/// The most needs one page of awards reads: a page for a provider with few awards
/// among many needs ends there, short, with where to continue. The engine is locked
/// for reading while a page is made; 20,000 needs take a few milliseconds.
pub const AWARDS_SCAN: usize = 20_000;

/// A page of `provider`'s awards with one of `statuses` (any, where `None`), in the
/// order their needs were submitted,
/// continuing after the need numbered `after` (a previous page's cursor). The second
/// value is the next page's cursor, where more may follow: a page ends once it holds
/// `limit` awards (with every award of its last need) or has read `scan` needs. The
/// cursor is a number, not a need's id, so that it names no need of another party.
pub fn awards_page(
    engine: &Engine,
    provider: &ProviderId,
    statuses: Option<&[AwardState]>,
    after: Option<u32>,
    limit: usize,
    scan: usize,
) -> (Vec<AwardView>, Option<String>) {
    let packed = statuses.is_none_or(|s| s.iter().any(|s| !s.open()));
    let mut awards = Vec::new();
    let first = after.map_or(0, |n| n as usize + 1);
    for (read, need) in engine.state().needs_from(first, packed).enumerate() {
        if need.awards.iter().any(|a| &a.provider == provider) {
            awards.extend(award_views(&need).filter(|a| {
                a.provider == provider.as_str()
                    && statuses.is_none_or(|s| s.iter().any(|s| s.as_str() == a.status))
            }));
        }
        if awards.len() >= limit || read + 1 >= scan {
            return (awards, Some(need.number.to_string()));
        }
    }
    (awards, None)
}

/// A page of open offers, in need order after `after`: every provider's for the buyer
/// and auditors (`provider` is `None`), one provider's own otherwise. The second value
/// is the need to continue after, when the page is full.
pub fn offers_page(
    engine: &Engine,
    provider: Option<&ProviderId>,
    after: Option<&str>,
    limit: usize,
) -> (Vec<OfferView>, Option<String>) {
    // A packed need has no open offer: the needs to look at are the unpacked ones,
    // few beside all, put in order here.
    let mut open: Vec<&NeedState> = engine
        .state()
        .unpacked_needs()
        .filter(|n| n.closed.is_none() && after.is_none_or(|a| n.spec.id.as_str() > a))
        .filter(|n| {
            n.open_offers()
                .any(|o| provider.is_none_or(|p| &o.provider == p))
        })
        .collect();
    let by_id = |a: &&NeedState, b: &&NeedState| a.spec.id.cmp(&b.spec.id);
    // Each has an offer for the page: the first `limit` fill it.
    if open.len() > limit {
        open.select_nth_unstable_by(limit, by_id);
        open.truncate(limit);
    }
    open.sort_unstable_by(by_id);
    let mut offers = Vec::new();
    for need in open {
        offers.extend(
            need.open_offers()
                .filter(|o| provider.is_none_or(|p| &o.provider == p))
                .map(|o| offer_view(need, o)),
        );
        if offers.len() >= limit {
            return (offers, Some(need.spec.id.to_string()));
        }
    }
    (offers, None)
}

/// One provider's share of awarded GPU-hours.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProviderShare {
    pub provider: String,
    pub gpu_hours: f64,
    /// Percent of all awarded GPU-hours.
    pub share: f64,
    /// The tightest cap that applies to it, as a percentage, if any.
    pub cap: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommitmentView {
    /// The clause's `name`, where it has one.
    pub name: Option<String>,
    pub provider: String,
    pub min_gpu_hours: Option<f64>,
    /// Dollars, for a commitment counted in spend.
    pub min_spend: Option<f64>,
    /// The commitment's period: from, and until where it ends.
    pub from: Timestamp,
    pub until: Option<Timestamp>,
    pub awarded_gpu_hours: f64,
}

/// Figures aggregated on the server, so pages stay fast however many needs there are.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub now: Timestamp,
    pub needs: usize,
    pub by_status: std::collections::BTreeMap<String, usize>,
    pub providers: Vec<ProviderShare>,
    pub hhi: f64,
    pub hhi_alert: Option<f64>,
    pub lapses: usize,
    pub reoffers: usize,
    /// Median model hours from submission to first award.
    pub median_hours_to_award: Option<f64>,
    pub commitments: Vec<CommitmentView>,
    /// Cumulative shares by day of award, oldest first, for the shares-over-time chart.
    pub timeline: Vec<SharePoint>,
}

/// Each provider's share of GPU-hours awarded up to the end of one day, and the HHI.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SharePoint {
    pub day: String,
    pub shares: std::collections::BTreeMap<String, f64>,
    pub hhi: f64,
}

pub fn summary(engine: &Engine) -> Summary {
    use std::collections::BTreeMap;
    let state = engine.state();
    let deal = engine.deal();
    // Running figures: reading them unpacks no need.
    let figures = state.figures();
    let by_status: BTreeMap<String, usize> = figures
        .by_status
        .iter()
        .map(|(status, n)| (status.as_str().to_owned(), *n as usize))
        .collect();
    let mut gpu_hours: BTreeMap<String, f64> = deal
        .providers
        .iter()
        .map(|p| (p.id.to_string(), 0.0))
        .collect();
    for awarded in figures.awarded.values() {
        for (provider, hours) in awarded {
            *gpu_hours.entry(provider.to_string()).or_default() += *hours as f64;
        }
    }
    let (shares, hhi) = rofr_engine::tally::shares_of(&gpu_hours);
    let providers: Vec<ProviderShare> = gpu_hours
        .iter()
        .map(|(provider, hours)| ProviderShare {
            provider: provider.clone(),
            gpu_hours: *hours,
            share: shares[provider],
            cap: rofr_engine::tally::tightest_cap(deal, provider),
        })
        .collect();
    let mut running: BTreeMap<String, f64> = BTreeMap::new();
    let timeline = figures
        .awarded
        .iter()
        .map(|(&day, awarded)| {
            for (provider, hours) in awarded {
                *running.entry(provider.to_string()).or_default() += *hours as f64;
            }
            let (shares, hhi) = rofr_engine::tally::shares_of(&running);
            let date = Timestamp::from_unix_seconds(day * 86_400).to_string();
            SharePoint {
                day: date[..10].to_owned(),
                shares,
                hhi,
            }
        })
        .collect();
    let commitments = deal
        .commitments
        .iter()
        .map(|c| CommitmentView {
            name: c.clause.name.clone(),
            provider: c.provider.to_string(),
            min_gpu_hours: c.min_gpu_hours,
            min_spend: c.min_spend,
            from: c.period.from,
            until: c.period.until,
            awarded_gpu_hours: gpu_hours.get(c.provider.as_str()).copied().unwrap_or(0.0),
        })
        .collect();
    Summary {
        now: engine.clock(),
        needs: state.need_count(),
        by_status,
        providers,
        hhi,
        hhi_alert: deal.caps.iter().find_map(|c| c.hhi_alert),
        lapses: figures.lapses as usize,
        reoffers: figures.reoffers as usize,
        median_hours_to_award: figures
            .median_seconds_to_award
            .map(|seconds| seconds as f64 / 3600.0),
        commitments,
        timeline,
    }
}
