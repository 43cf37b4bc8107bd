//! The report's figures, folded from a period export's entries as they stream by.
//! Each figure carries the indexes of the entries it was computed from; the fold keeps
//! a few numbers a need (and those indexes), never the entries themselves.

use std::collections::{BTreeMap, HashMap};

use rofr_engine::deal::{parse_deal, Deal};
use rofr_engine::invariants::Checker;
use rofr_engine::log::Entry as LogEntry;
use rofr_engine::types::{Price, ProviderId, Timestamp};
use rofr_engine::EventKind;
use serde::{Deserialize, Serialize};

const DAY: i64 = 86_400;

/// A number and the entries it was computed from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    pub value: f64,
    pub entries: Vec<u64>,
}

impl Figure {
    fn add(&mut self, value: f64, index: u64) {
        self.value += value;
        self.entries.push(index);
    }

    fn count(&mut self, index: u64) {
        self.add(1.0, index);
    }

    /// `value` rounded to a ten-thousandth, the precision prices are logged at, so the
    /// figure is the same however its sum was ordered.
    fn rounded(mut self) -> Figure {
        self.value = round4(self.value);
        self.entries.sort_unstable();
        self.entries.dedup();
        self
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Where the holder was offered a need first, or why not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeedVerdict {
    pub need: String,
    pub holder: Option<String>,
    /// Whether the holder was offered the need before anything of it was awarded to
    /// another provider.
    pub offered_first: bool,
    /// Why not, where it was not.
    pub reason: Option<String>,
    /// `kept`, `broken` or `not judged`.
    pub i1: String,
    /// What broke it, where it broke.
    pub detail: Option<String>,
    pub entries: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FirstRefusal {
    /// Needs a first-refusal clause's scope covered (a holder named, or the holder
    /// skipped with a reason).
    pub in_scope: Figure,
    pub offered_first: Figure,
    pub not_offered_first: Figure,
    pub i1_kept: Figure,
    pub i1_broken: Figure,
    pub i1_not_judged: Figure,
    /// One row per in-scope need, by submission.
    pub needs: Vec<NeedVerdict>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HolderConduct {
    /// Offers sent to the holder in the period (first offers and re-offers).
    pub offers: Figure,
    /// Of those, answered (accepted or declined) before their deadline.
    pub answered_in_window: Figure,
    /// Median seconds from an offer to its answer, over answered offers.
    pub median_answer_seconds: Figure,
    /// Median seconds an offer's window gave.
    pub median_window_seconds: Figure,
    /// Offers and match offers the holder let lapse.
    pub lapses: Figure,
    /// The holder's refusals by reason: a decline's reason, `lapsed`, `match_declined`,
    /// `match_lapsed`.
    pub refusals_by_reason: BTreeMap<String, Figure>,
    /// GPUs the holder refused, summed over its refusals.
    pub gpus_refused: Figure,
    /// Needs whose holder a concentration cap kept from being offered.
    pub capped: Figure,
    pub matches_offered: Figure,
    pub matches_accepted: Figure,
    pub reoffers: Figure,
    pub revivals: Figure,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefusalCost {
    /// Dollars paid to other providers above the price the holder was offered, over the
    /// awards of in-scope needs decided in the period.
    pub premium_dollars: Figure,
    /// The awards that paid a premium.
    pub premium_awards: Figure,
    /// Hours from the holder's first offer to the first award elsewhere that followed
    /// its refusal or silence, summed over such needs.
    pub delay_hours: Figure,
    pub delayed_needs: Figure,
}

/// How the period's sourcing rounds were placed, one count per need's round closed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rounds {
    /// Closed where cheapest first kept every cap, which is then the least cost.
    pub cheapest_first: Figure,
    /// Placed by the solver at a cost proven least.
    pub proven: Figure,
    /// Placed by the solver where its work limit stopped the proof.
    pub bounded: Figure,
    /// The largest gap between a bounded round's cost and its proven bound, in percent
    /// of the cost (0 where every round was proven).
    pub largest_gap_percent: Figure,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Share {
    pub provider: String,
    pub gpu_hours: Figure,
    /// Percent of all GPU-hours awarded in the period.
    pub share: f64,
    /// The tightest cap on it in the deal in force at the period's end, in percent.
    pub cap: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SharePoint {
    pub day: String,
    pub shares: BTreeMap<String, f64>,
    pub hhi: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Burn {
    pub provider: String,
    pub min_gpu_hours: Option<f64>,
    pub awarded_gpu_hours: Figure,
    /// GPU-hours still to reach the minimum at the end of each day with an award.
    pub remaining_by_day: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Concentration {
    pub providers: Vec<Share>,
    pub hhi: f64,
    pub hhi_alert: Option<f64>,
    /// Cumulative shares at the end of each day with an award.
    pub timeline: Vec<SharePoint>,
    pub commitments: Vec<Burn>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Approvals {
    pub requested: Figure,
    pub approved: Figure,
    pub rejected: Figure,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Deliveries {
    pub failures: Figure,
    pub by_reason: BTreeMap<String, Figure>,
    pub confirmed: Figure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DealVersion {
    pub version: u32,
    pub file: String,
    pub sha256: String,
    pub effective: String,
    pub open_needs: Option<String>,
    /// Whether it governed new needs at some moment of the period.
    pub in_force_in_period: bool,
    pub entry: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NeedFigures {
    /// Needs in the export (active at some moment of the period).
    pub total: Figure,
    /// By status as the fold of their entries leaves them.
    pub by_status: BTreeMap<String, Figure>,
    /// Median hours from submission to first award, over needs with an award.
    pub median_hours_to_award: Option<Figure>,
}

/// Every figure of a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub needs: NeedFigures,
    pub first_refusal: FirstRefusal,
    pub holder: HolderConduct,
    pub cost: RefusalCost,
    /// Absent from reports made before rounds were proven.
    #[serde(default)]
    pub rounds: Rounds,
    pub concentration: Concentration,
    pub approvals: Approvals,
    pub deliveries: Deliveries,
    pub deal_versions: Vec<DealVersion>,
    /// What the export could not establish.
    pub not_verified: Vec<String>,
}

/// A need's few offers or awards by number: a short vector costs a fraction of a map's
/// allocation, and a period holds many needs.
struct Few<T>(Vec<(u32, T)>);

impl<T> Default for Few<T> {
    fn default() -> Self {
        Few(Vec::new())
    }
}

impl<T> Few<T> {
    fn insert(&mut self, key: u32, value: T) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => {
                // Most needs have one offer and one award: room for one, not four.
                self.0.reserve_exact(1);
                self.0.push((key, value));
            }
        }
    }

    fn get(&self, key: &u32) -> Option<&T> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn get_mut(&mut self, key: &u32) -> Option<&mut T> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn contains_key(&self, key: &u32) -> bool {
        self.get(key).is_some()
    }

    fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|(_, v)| v)
    }
}

struct Offer {
    sent_at: i64,
    deadline: i64,
    index: u64,
    to_holder: bool,
}

struct Award {
    provider: ProviderId,
    gpus: u32,
    price: Price,
    decided_at: i64,
    entry: u64,
    live: bool,
}

#[derive(Default)]
struct Need {
    submitted: Option<(u64, i64)>,
    hours: u32,
    holder: Option<ProviderId>,
    exempt: Option<String>,
    holder_price: Option<(Price, u64)>,
    in_scope: bool,
    offered_holder: Option<(i64, u64)>,
    capped: Option<u64>,
    refused: Option<u64>,
    third_party_before_offer: Option<u64>,
    delay: Option<(f64, Vec<u64>)>,
    violation: Option<(String, u64)>,
    offers: Few<Offer>,
    awards: Few<Award>,
    closed: Option<&'static str>,
}

/// The fold.
pub struct Fold {
    from: i64,
    to: i64,
    viewer: Option<ProviderId>,
    checker: Checker<Deal>,
    versions: Vec<KeptVersion>,
    deals: Vec<Deal>,
    needs: Vec<(String, Need)>,
    numbers: HashMap<String, u32>,
    out: Figures,
    /// Seconds from an offer to its answer, and the answer's entry.
    answer_seconds: Vec<(i64, u64)>,
    /// Seconds each offer's window gave, and the offer's entry.
    window_seconds: Vec<(i64, u64)>,
    events_before_deal: bool,
}

/// A deal version as its entry gave it: number, file, SHA-256, effective time,
/// open-needs rule, entry index.
type KeptVersion = (u32, String, String, i64, Option<String>, u64);

fn in_force(deals: &[KeptVersion], at: i64) -> Option<usize> {
    deals.iter().rposition(|v| v.3 <= at)
}

impl Fold {
    pub fn new(from: Timestamp, to: Timestamp, viewer: Option<ProviderId>) -> Fold {
        Fold {
            from: from.unix_seconds(),
            to: to.unix_seconds(),
            viewer,
            checker: Checker::new(Vec::new()),
            versions: Vec::new(),
            deals: Vec::new(),
            needs: Vec::new(),
            numbers: HashMap::new(),
            out: Figures::default(),
            answer_seconds: Vec::new(),
            window_seconds: Vec::new(),
            events_before_deal: false,
        }
    }

    fn in_period(&self, at: i64) -> bool {
        (self.from..self.to).contains(&at)
    }

    /// Folds in one entry. Its error names what is wrong with it.
    pub fn add(&mut self, index: u64, data: &[u8]) -> Result<(), String> {
        let entry = LogEntry::from_json(data).map_err(|e| format!("not a rofr entry: {e}"))?;
        let event = match entry {
            LogEntry::Event(event) => event,
            deal => {
                let v = deal.version().expect("a deal entry");
                if rofr_engine::log::sha256(v.text) != v.sha256 {
                    return Err(format!(
                        "the text of deal version {} does not match its SHA-256",
                        v.version
                    ));
                }
                if v.version as usize != self.versions.len() + 1 {
                    return Err(format!(
                        "deal version {} follows version {}",
                        v.version,
                        self.versions.len()
                    ));
                }
                let parsed = parse_deal(v.file, v.text).map_err(|errors| {
                    format!(
                        "deal version {} does not parse: {}",
                        v.version,
                        errors.first().map(|e| e.to_string()).unwrap_or_default()
                    )
                })?;
                self.checker.add_version(parsed.clone());
                self.deals.push(parsed);
                self.versions.push((
                    v.version,
                    v.file.to_owned(),
                    v.sha256.to_owned(),
                    v.effective.unix_seconds(),
                    v.open_needs.map(|o| o.as_str().to_owned()),
                    index,
                ));
                return Ok(());
            }
        };
        if self.versions.is_empty() {
            self.events_before_deal = true;
        }
        let judged = !self.events_before_deal;
        let checked = self.checker.check(&event);
        let at = event.at.unix_seconds();
        let in_period = self.in_period(at);
        // Needs in the order first seen, found by id.
        let count = self.needs.len();
        let number = *self
            .numbers
            .entry(event.need.to_string())
            .or_insert(count as u32) as usize;
        if number == count {
            self.needs.push((event.need.to_string(), Need::default()));
        }
        let need = &mut self.needs[number].1;
        if let Err(v) = checked {
            if judged && v.invariant == "I1" {
                need.violation.get_or_insert((v.detail, index));
            }
        }
        let is_holder = |p: &ProviderId, need: &Need| need.holder.as_ref() == Some(p);
        let out = &mut self.out;
        match &event.kind {
            EventKind::NeedSubmitted(s) => {
                need.submitted = Some((index, at));
                need.hours = s.hours;
                need.holder = s.holder.clone();
                need.exempt = s.holder_exempt.clone();
                need.holder_price = s.offer_price_per_gpu_hour.map(|p| (p, index));
                need.in_scope = s.holder.is_some() || s.holder_exempt.is_some();
            }
            EventKind::TermsChanged {
                holder,
                holder_exempt,
                offer_price_per_gpu_hour,
                ..
            } => {
                need.holder = holder.clone();
                need.exempt = holder_exempt.clone();
                if let Some(p) = offer_price_per_gpu_hour {
                    need.holder_price = Some((*p, index));
                }
                need.in_scope |= holder.is_some() || holder_exempt.is_some();
            }
            EventKind::OfferSent {
                provider,
                price_per_gpu_hour,
                deadline,
                offer,
                reoffer,
                ..
            } => {
                let to_holder = is_holder(provider, need);
                if to_holder {
                    need.offered_holder.get_or_insert((at, index));
                    need.holder_price = Some((*price_per_gpu_hour, index));
                    if in_period {
                        out.holder.offers.count(index);
                        self.window_seconds
                            .push((deadline.unix_seconds() - at, index));
                        if *reoffer {
                            out.holder.reoffers.count(index);
                        }
                    }
                }
                need.offers.insert(
                    *offer,
                    Offer {
                        sent_at: at,
                        deadline: deadline.unix_seconds(),
                        index,
                        to_holder,
                    },
                );
            }
            EventKind::MatchOffered {
                provider,
                offer,
                deadline,
                ..
            } => {
                let to_holder = is_holder(provider, need);
                if to_holder {
                    need.offered_holder.get_or_insert((at, index));
                    if in_period {
                        out.holder.matches_offered.count(index);
                    }
                }
                need.offers.insert(
                    *offer,
                    Offer {
                        sent_at: at,
                        deadline: deadline.unix_seconds(),
                        index,
                        to_holder,
                    },
                );
            }
            EventKind::OfferAccepted { offer, .. } | EventKind::MatchAccepted { offer, .. } => {
                if let Some(o) = need.offers.get(offer).filter(|o| o.to_holder) {
                    if in_period {
                        if matches!(event.kind, EventKind::MatchAccepted { .. }) {
                            out.holder.matches_accepted.add(1.0, index);
                        } else {
                            self.answer_seconds.push((at - o.sent_at, index));
                            if at <= o.deadline {
                                out.holder.answered_in_window.add(1.0, index);
                                out.holder.answered_in_window.entries.push(o.index);
                            }
                        }
                    }
                }
            }
            EventKind::OfferDeclined {
                provider,
                gpus,
                reason,
                offer,
                ..
            } if is_holder(provider, need) => {
                need.refused.get_or_insert(index);
                if in_period {
                    let sent = offer.and_then(|o| need.offers.get(&o));
                    // The rest of a partial acceptance is not an answer of its own.
                    if let Some(o) = sent.filter(|_| reason.as_str() != "partial") {
                        self.answer_seconds.push((at - o.sent_at, index));
                        if at <= o.deadline {
                            out.holder.answered_in_window.add(1.0, index);
                            out.holder.answered_in_window.entries.push(o.index);
                        }
                    }
                    refusal(out, reason.as_str(), gpus.get(), index);
                }
            }
            EventKind::OfferLapsed { provider, gpus, .. } if is_holder(provider, need) => {
                need.refused.get_or_insert(index);
                if in_period {
                    out.holder.lapses.count(index);
                    refusal(out, "lapsed", gpus.get(), index);
                }
            }
            EventKind::MatchDeclined { provider, gpus, .. } if is_holder(provider, need) => {
                need.refused.get_or_insert(index);
                if in_period {
                    refusal(out, "match_declined", gpus.get(), index);
                }
            }
            EventKind::MatchLapsed { provider, gpus, .. } if is_holder(provider, need) => {
                need.refused.get_or_insert(index);
                if in_period {
                    out.holder.lapses.count(index);
                    refusal(out, "match_lapsed", gpus.get(), index);
                }
            }
            EventKind::HolderCapped { .. } => {
                need.capped.get_or_insert(index);
                if in_period {
                    out.holder.capped.count(index);
                }
            }
            EventKind::RightRevived { .. } if in_period => out.holder.revivals.count(index),
            EventKind::ApprovalRequested {
                provider,
                gpus,
                price_per_gpu_hour,
                award,
                ..
            } => {
                if in_period {
                    out.approvals.requested.count(index);
                }
                new_award(
                    need,
                    *award,
                    provider,
                    gpus.get(),
                    *price_per_gpu_hour,
                    at,
                    index,
                );
            }
            EventKind::ApprovalRejected { award, .. } => {
                if in_period {
                    out.approvals.rejected.count(index);
                }
                if let Some(a) = need.awards.get_mut(award) {
                    a.live = false;
                }
            }
            EventKind::AwardMade {
                provider,
                gpus,
                price_per_gpu_hour,
                award,
                ..
            } => {
                if need.awards.contains_key(award) {
                    if in_period {
                        out.approvals.approved.count(index);
                    }
                } else {
                    new_award(
                        need,
                        *award,
                        provider,
                        gpus.get(),
                        *price_per_gpu_hour,
                        at,
                        index,
                    );
                }
            }
            EventKind::AwardConfirmed { .. } if in_period => out.deliveries.confirmed.count(index),
            EventKind::SourcingClosed { proof, .. } if in_period => match proof {
                None => out.rounds.cheapest_first.count(index),
                Some(p) if p.status == rofr_engine::ProofStatus::Optimal => {
                    out.rounds.proven.count(index)
                }
                Some(p) => {
                    out.rounds.bounded.count(index);
                    let gap = p.gap() * 100.0;
                    let largest = &mut out.rounds.largest_gap_percent;
                    if gap > largest.value || largest.entries.is_empty() {
                        *largest = Figure {
                            value: gap,
                            entries: vec![index],
                        };
                    }
                }
            },
            EventKind::AwardFailed { award, reason, .. } => {
                if in_period {
                    out.deliveries.failures.count(index);
                    out.deliveries
                        .by_reason
                        .entry(reason.clone())
                        .or_default()
                        .count(index);
                }
                if let Some(a) = need.awards.get_mut(award) {
                    a.live = false;
                }
            }
            EventKind::NeedCompleted {} => need.closed = Some("completed"),
            EventKind::NeedExpired { .. } => need.closed = Some("expired"),
            EventKind::NeedCancelled { .. } => need.closed = Some("cancelled"),
            _ => {}
        }
        // The first award elsewhere: before any offer to the holder, the need was not
        // offered first; after its refusal or silence, the time waited is the delay.
        if let EventKind::ApprovalRequested {
            provider, award, ..
        }
        | EventKind::AwardMade {
            provider, award, ..
        } = &event.kind
        {
            let fresh = need.awards.get(award).is_some_and(|a| a.entry == index);
            if fresh && need.in_scope && !is_holder(provider, need) {
                if need.offered_holder.is_none() {
                    need.third_party_before_offer.get_or_insert(index);
                } else if let (Some((offered_at, offered)), Some(refused), None) =
                    (need.offered_holder, need.refused, &need.delay)
                {
                    need.delay = Some((
                        (at - offered_at) as f64 / 3600.0,
                        vec![offered, refused, index],
                    ));
                }
            }
        }
        // A closed need takes no more answers: what its offers were is not needed.
        if need.closed.is_some() && !need.offers.0.is_empty() {
            need.offers = Few::default();
        }
        Ok(())
    }

    /// The figures, once every entry was added.
    pub fn finish(mut self) -> Figures {
        let mut out = std::mem::take(&mut self.out);
        let numbers = std::mem::take(&mut self.numbers);
        let needs = std::mem::take(&mut self.needs);
        let viewer = self.viewer.clone();
        if self.versions.is_empty() {
            out.not_verified.push(match &viewer {
                Some(p) => format!("The deal's entries are not shown to {p}: first refusal is not judged against the contract's text."),
                None => "The export holds no deal entry (a log begun before deals were entries): first refusal is not judged against the contract's text.".into(),
            });
        }
        if let Some(p) = &viewer {
            out.not_verified.push(format!(
                "This is {p}'s view: entries it may not see are left out, so figures count only what it was shown."
            ));
        }
        // Deal versions.
        let from = self.from;
        let to = self.to;
        for (i, v) in self.versions.iter().enumerate() {
            let next = self.versions.get(i + 1).map(|n| n.3);
            out.deal_versions.push(DealVersion {
                version: v.0,
                file: v.1.clone(),
                sha256: v.2.clone(),
                effective: Timestamp::from_unix_seconds(v.3).to_string(),
                open_needs: v.4.clone(),
                in_force_in_period: v.3 < to && next.is_none_or(|n| n > from),
                entry: v.5,
            });
        }
        let deal = in_force(&self.versions, to - 1).map(|i| &self.deals[i]);
        // Needs and statuses.
        // Each need's status as the engine's fold leaves it, by the need's number.
        let mut statuses: Vec<Option<&'static str>> = vec![None; needs.len()];
        for n in self.checker.state().needs() {
            if let Some(&i) = numbers.get(n.spec.id.as_str()) {
                statuses[i as usize] = Some(n.status().as_str());
            }
        }
        drop(numbers);
        let mut to_award: Vec<(i64, u64)> = Vec::new();
        let mut gpu_hours: BTreeMap<String, Figure> = BTreeMap::new();
        if let Some(deal) = deal {
            for p in &deal.providers {
                gpu_hours.entry(p.id.to_string()).or_default();
            }
        }
        let mut by_day: BTreeMap<i64, Vec<(String, f64)>> = BTreeMap::new();
        for (number, (id, need)) in needs.iter().enumerate() {
            let Some((submitted, submitted_at)) = need.submitted else {
                continue;
            };
            out.needs.total.count(submitted);
            if let Some(status) = statuses[number] {
                out.needs
                    .by_status
                    .entry(status.to_owned())
                    .or_default()
                    .count(submitted);
            }
            if let Some(first) = need.awards.values().map(|a| (a.decided_at, a.entry)).min() {
                to_award.push((first.0 - submitted_at, first.1));
            }
            for award in need.awards.values() {
                if !award.live || !self.in_period(award.decided_at) {
                    continue;
                }
                let hours = f64::from(award.gpus) * f64::from(need.hours);
                if hours > 0.0 {
                    gpu_hours
                        .entry(award.provider.to_string())
                        .or_default()
                        .add(hours, award.entry);
                    by_day
                        .entry(award.decided_at.div_euclid(DAY))
                        .or_default()
                        .push((award.provider.to_string(), hours));
                }
                // The premium over the holder's offered price.
                let third_party = need.holder.as_ref().is_some_and(|h| h != &award.provider);
                if need.in_scope && third_party {
                    if let Some((offered, offer_entry)) = need.holder_price {
                        let over = award.price.dollars() - offered.dollars();
                        if over > 0.0 {
                            out.cost.premium_dollars.add(over * hours, award.entry);
                            out.cost.premium_dollars.entries.push(offer_entry);
                            out.cost.premium_awards.count(award.entry);
                        }
                    }
                }
            }
            if let Some((hours, entries)) = &need.delay {
                if need
                    .offered_holder
                    .is_some_and(|(at, _)| self.in_period(at))
                {
                    out.cost.delay_hours.value += hours;
                    out.cost.delay_hours.entries.extend(entries);
                    out.cost.delayed_needs.count(submitted);
                }
            }
            if !need.in_scope {
                continue;
            }
            out.first_refusal.in_scope.count(submitted);
            let mut entries = vec![submitted];
            let (offered_first, reason) = match (need.offered_holder, need.third_party_before_offer)
            {
                (Some((_, offer)), None) => {
                    entries.push(offer);
                    (true, None)
                }
                (_, Some(award)) => {
                    entries.push(award);
                    (
                        false,
                        Some(why_not(
                            need,
                            "awarded elsewhere before any offer to the holder",
                        )),
                    )
                }
                (None, None) => (
                    false,
                    Some(why_not(
                        need,
                        match need.closed {
                            Some(closed) => closed_before(closed),
                            None => "not offered yet",
                        },
                    )),
                ),
            };
            if let Some(capped) = need.capped {
                entries.push(capped);
            }
            // What the verdict rests on: the holder's first refusal and every award to
            // another provider.
            entries.extend(need.refused);
            entries.extend(
                need.awards
                    .values()
                    .filter(|a| need.holder.as_ref() != Some(&a.provider))
                    .map(|a| a.entry),
            );
            if offered_first {
                out.first_refusal.offered_first.count(submitted);
            } else {
                out.first_refusal.not_offered_first.count(submitted);
            }
            let judged = !self.events_before_deal && (viewer.is_none() || viewer == need.holder);
            let (i1, detail) = match (&need.violation, judged) {
                (_, false) => {
                    out.first_refusal.i1_not_judged.count(submitted);
                    ("not judged", None)
                }
                (Some((detail, at)), true) => {
                    entries.push(*at);
                    out.first_refusal.i1_broken.count(submitted);
                    out.first_refusal.i1_broken.entries.push(*at);
                    ("broken", Some(detail.clone()))
                }
                (None, true) => {
                    out.first_refusal.i1_kept.count(submitted);
                    ("kept", None)
                }
            };
            entries.sort_unstable();
            entries.dedup();
            out.first_refusal.needs.push(NeedVerdict {
                need: id.clone(),
                holder: need.holder.as_ref().map(|h| h.to_string()),
                offered_first,
                reason,
                i1: i1.to_owned(),
                detail,
                entries,
            });
        }
        // Median time to first award, as the broker's summary takes it (the upper
        // median).
        to_award.sort_unstable();
        if !to_award.is_empty() {
            let (seconds, _) = to_award[to_award.len() / 2];
            out.needs.median_hours_to_award = Some(Figure {
                value: seconds as f64 / 3600.0,
                entries: to_award.iter().map(|(_, e)| *e).collect(),
            });
        }
        out.holder.median_answer_seconds = median(&mut self.answer_seconds);
        out.holder.median_window_seconds = median(&mut self.window_seconds);
        // Shares, HHI and the timeline.
        let hours: BTreeMap<String, f64> = gpu_hours
            .iter()
            .map(|(p, f)| (p.clone(), f.value))
            .collect();
        let (shares, hhi) = rofr_engine::tally::shares_of(&hours);
        out.concentration.providers = gpu_hours
            .iter()
            .map(|(provider, hours)| Share {
                provider: provider.clone(),
                gpu_hours: hours.clone().rounded(),
                share: shares[provider],
                cap: deal.and_then(|d| rofr_engine::tally::tightest_cap(d, provider)),
            })
            .collect();
        out.concentration.hhi = hhi;
        out.concentration.hhi_alert = deal.and_then(|d| d.caps.iter().find_map(|c| c.hhi_alert));
        let mut running: BTreeMap<String, f64> = BTreeMap::new();
        let mut burn: Vec<Burn> = deal
            .map(|d| {
                d.commitments
                    .iter()
                    .map(|c| Burn {
                        provider: c.provider.to_string(),
                        min_gpu_hours: c.min_gpu_hours,
                        awarded_gpu_hours: gpu_hours
                            .get(c.provider.as_str())
                            .cloned()
                            .unwrap_or_default()
                            .rounded(),
                        remaining_by_day: Vec::new(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (day, awards) in by_day {
            for (provider, hours) in awards {
                *running.entry(provider).or_default() += hours;
            }
            let (shares, hhi) = rofr_engine::tally::shares_of(&running);
            let date = Timestamp::from_unix_seconds(day * DAY).to_string();
            for b in &mut burn {
                if let Some(min) = b.min_gpu_hours {
                    let done = running.get(&b.provider).copied().unwrap_or(0.0);
                    b.remaining_by_day
                        .push((date[..10].to_owned(), (min - done).max(0.0)));
                }
            }
            out.concentration.timeline.push(SharePoint {
                day: date[..10].to_owned(),
                shares,
                hhi,
            });
        }
        out.concentration.commitments = burn;
        // Round and sort every figure's entries.
        let fr = &mut out.first_refusal;
        for f in [
            &mut out.needs.total,
            &mut fr.in_scope,
            &mut fr.offered_first,
            &mut fr.not_offered_first,
            &mut fr.i1_kept,
            &mut fr.i1_broken,
            &mut fr.i1_not_judged,
            &mut out.holder.offers,
            &mut out.holder.answered_in_window,
            &mut out.holder.lapses,
            &mut out.holder.gpus_refused,
            &mut out.holder.capped,
            &mut out.holder.matches_offered,
            &mut out.holder.matches_accepted,
            &mut out.holder.reoffers,
            &mut out.holder.revivals,
            &mut out.cost.premium_dollars,
            &mut out.cost.premium_awards,
            &mut out.cost.delay_hours,
            &mut out.cost.delayed_needs,
            &mut out.rounds.cheapest_first,
            &mut out.rounds.proven,
            &mut out.rounds.bounded,
            &mut out.rounds.largest_gap_percent,
            &mut out.approvals.requested,
            &mut out.approvals.approved,
            &mut out.approvals.rejected,
            &mut out.deliveries.failures,
            &mut out.deliveries.confirmed,
        ] {
            *f = std::mem::take(f).rounded();
        }
        for f in out
            .holder
            .refusals_by_reason
            .values_mut()
            .chain(out.deliveries.by_reason.values_mut())
            .chain(out.needs.by_status.values_mut())
        {
            *f = std::mem::take(f).rounded();
        }
        out
    }
}

fn refusal(out: &mut Figures, reason: &str, gpus: u32, index: u64) {
    out.holder
        .refusals_by_reason
        .entry(reason.to_owned())
        .or_default()
        .count(index);
    out.holder.gpus_refused.add(f64::from(gpus), index);
}

fn new_award(
    need: &mut Need,
    award: u32,
    provider: &ProviderId,
    gpus: u32,
    price: Price,
    at: i64,
    index: u64,
) {
    need.awards.insert(
        award,
        Award {
            provider: provider.clone(),
            gpus,
            price,
            decided_at: at,
            entry: index,
            live: true,
        },
    );
}

fn closed_before(closed: &str) -> &'static str {
    match closed {
        "completed" => "completed before any offer to the holder",
        "expired" => "expired before any offer to the holder",
        _ => "cancelled before any offer to the holder",
    }
}

fn why_not(need: &Need, otherwise: &str) -> String {
    if let Some(exempt) = &need.exempt {
        return format!("the holder is skipped: {exempt}");
    }
    if need.capped.is_some() {
        return "the holder was at a concentration cap".into();
    }
    otherwise.to_owned()
}

/// The upper median of `values` (as the broker's summary takes medians), naming the
/// entries of every value it was taken over.
fn median(values: &mut [(i64, u64)]) -> Figure {
    values.sort_unstable();
    Figure {
        value: values.get(values.len() / 2).map_or(0.0, |&(v, _)| v as f64),
        entries: values.iter().map(|&(_, e)| e).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rounds are counted by how they were placed, and the largest gap names the
    /// bounded round it came from; a round outside the period is not counted.
    #[test]
    fn rounds_are_counted_by_their_proof() {
        let from = Timestamp::parse("2025-02-01T00:00:00Z").unwrap();
        let to = Timestamp::parse("2025-03-01T00:00:00Z").unwrap();
        let mut fold = Fold::new(from, to, None);
        let closed = |at: &str, proof: &str| {
            format!(
                r#"{{"type":"sourcing_closed","round":1,"quotes":2,"planned_gpus":8,{proof}"need":"n1","at":"{at}"}}"#
            )
        };
        let proven = r#""proof":{"status":"optimal","cost":100.0,"bound":100.0,"needs":2},"#;
        let wide = r#""proof":{"status":"bounded","cost":200.0,"bound":190.0,"needs":3},"#;
        let narrow = r#""proof":{"status":"bounded","cost":200.0,"bound":199.0,"needs":3},"#;
        for (index, line) in [
            closed("2025-02-02T00:00:00Z", ""),
            closed("2025-02-03T00:00:00Z", proven),
            closed("2025-02-04T00:00:00Z", narrow),
            closed("2025-02-05T00:00:00Z", wide),
            closed("2025-02-06T00:00:00Z", narrow),
            closed("2025-03-02T00:00:00Z", wide),
        ]
        .iter()
        .enumerate()
        {
            fold.add(index as u64, line.as_bytes()).unwrap();
        }
        let rounds = fold.finish().rounds;
        assert_eq!(rounds.cheapest_first.entries, vec![0]);
        assert_eq!(rounds.proven.entries, vec![1]);
        assert_eq!(rounds.bounded.entries, vec![2, 3, 4]);
        assert_eq!(rounds.largest_gap_percent.value, 5.0);
        assert_eq!(rounds.largest_gap_percent.entries, vec![3]);
    }
}
