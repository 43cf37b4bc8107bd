//! Needs at rest, packed. A need that waits only on a far deadline (its awards
//! confirmed, nothing open for anyone to answer) is most of a broker's needs, and as a
//! [`NeedState`] it takes about 540 bytes with its lists. Packed it takes about 70:
//! numbers as variable-length integers, times as differences from the submission time,
//! names as their places in the state's tables ([`Names`]). The first event that
//! touches it again unpacks it.
//!
//! The format lives only in memory, written and read by this module alone, so it has
//! no version: a packed need never outlives the process that packed it.

use std::collections::BTreeSet;

use thin_vec::ThinVec;

use crate::deal::Variant;
use crate::need::NeedSpec;
use crate::state::{
    Award, AwardStatus, Closed, HolderOffer, Names, NeedState, OfferKind, OfferStatus, Refusal,
    Rfq, RfqStatus,
};
use crate::types::{Gpus, NeedId, Price, Timestamp};

/// A packed need. Equal bytes mean equal needs under the same [`Names`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frozen(Box<[u8]>);

impl Frozen {
    /// The need's id, which the packing starts with.
    pub fn id(&self) -> &str {
        let mut r = Reader {
            bytes: &self.0,
            base: Timestamp::from_unix_seconds(0),
            price_base: Price::default(),
        };
        let len = r.uint() as usize;
        std::str::from_utf8(&r.bytes[..len]).expect("packed from a str")
    }

    /// Bytes held, for tests and figures.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Packs `need`, adding the names it uses to `names` where they are new. Its
/// `scheduled` must be its next deadline, as the state keeps every need's.
pub fn freeze(need: &NeedState, names: &mut Names) -> Frozen {
    debug_assert_eq!(
        need.scheduled,
        need.next_deadline(),
        "scheduled as the state keeps it"
    );
    let spec = &need.spec;
    let mut w = Writer {
        bytes: Vec::with_capacity(128),
        base: need.submitted_at,
        price_base: spec.max_price_per_gpu_hour,
    };
    w.text(spec.id.as_str());
    w.int(need.submitted_at.unix_seconds());
    // Which of the optional fields are there, which lists hold something and which
    // numbers are not zero (and two flags), in one number: each is written below only
    // where it is. Bits by place in this list; `thaw` reads them by the same places.
    let present = [
        spec.offer_price_per_gpu_hour.is_some(),
        spec.launch.is_some(),
        need.holder.is_some(),
        need.first_refusal.is_some(),
        need.holder_offer_price.is_some(),
        need.revive_at.is_some(),
        need.waiting_until.is_some(),
        need.fulfilled_until.is_some(),
        need.sourcing_open,
        need.holder_owed,
        !spec.regions.is_empty(),
        !spec.tags.is_empty(),
        spec.priority != 0,
        need.variant.is_some(),
        need.reoffer_threshold.to_bits() != 0,
        need.round != 0,
        !need.rfqs.is_empty(),
        !need.refusals.is_empty(),
        need.closed.is_some(),
        need.unmet != Gpus::ZERO,
    ];
    w.uint(
        present
            .iter()
            .enumerate()
            .map(|(bit, &set)| u64::from(set) << bit)
            .sum(),
    );
    w.uint(u64::from(names.skus.place(&spec.sku)));
    w.uint(u64::from(spec.gpus.get()));
    if !spec.regions.is_empty() {
        w.uint(spec.regions.len() as u64);
        for region in &spec.regions {
            w.uint(u64::from(names.regions.place(region)));
        }
    }
    w.time(spec.earliest_start);
    w.time(spec.latest_start);
    w.uint(u64::from(spec.hours));
    w.uint(u64::from(names.workloads.place(&spec.workload)));
    if !spec.tags.is_empty() {
        w.uint(spec.tags.len() as u64);
        for tag in &spec.tags {
            w.uint(u64::from(names.tags.place(tag)));
        }
    }
    w.uint(spec.max_price_per_gpu_hour.units());
    if let Some(price) = spec.offer_price_per_gpu_hour {
        w.price(price);
    }
    if spec.priority != 0 {
        w.uint(u64::from(spec.priority));
    }
    if let Some(launch) = &spec.launch {
        w.text(launch);
    }
    w.time(spec.decide_by);

    if let Some(holder) = &need.holder {
        w.uint(u64::from(names.providers.place(holder)));
    }
    if let Some(variant) = need.variant {
        w.uint(match variant {
            Variant::FirstOffer => 0,
            Variant::LastLook => 1,
            Variant::Negotiate => 2,
        });
    }
    if let Some(place) = need.first_refusal {
        w.uint(u64::from(place));
    }
    if let Some(price) = need.holder_offer_price {
        w.price(price);
    }
    if need.reoffer_threshold.to_bits() != 0 {
        w.uint(need.reoffer_threshold.to_bits().swap_bytes());
    }
    w.uint(need.offers.len() as u64);
    for o in &need.offers {
        w.uint(u64::from(o.seq));
        let kind = match o.kind {
            OfferKind::First => 0,
            OfferKind::Reoffer => 1,
            OfferKind::Match => 2,
        };
        let status = match o.status {
            OfferStatus::Open => 0,
            OfferStatus::Accepted(_) => 1,
            OfferStatus::Declined => 2,
            OfferStatus::Lapsed => 3,
        };
        w.uint(kind + 3 * status);
        w.uint(u64::from(names.providers.place(&o.provider)));
        w.uint(u64::from(o.gpus.get()));
        w.price(o.price);
        w.time(o.deadline);
        w.option(o.against.as_ref(), |w, p| {
            w.uint(u64::from(names.providers.place(p)));
        });
        if let OfferStatus::Accepted(gpus) = o.status {
            w.uint(u64::from(gpus.get()));
        }
    }
    if need.round != 0 {
        w.uint(u64::from(need.round));
    }
    if !need.rfqs.is_empty() {
        w.uint(need.rfqs.len() as u64);
    }
    for r in &need.rfqs {
        w.uint(u64::from(names.providers.place(&r.provider)));
        w.uint(u64::from(r.gpus.get()));
        w.time(r.deadline);
        match r.status {
            RfqStatus::Open => w.uint(0),
            RfqStatus::Quoted { gpus, price } => {
                w.uint(1);
                w.uint(u64::from(gpus.get()));
                w.price(price);
            }
            RfqStatus::Declined => w.uint(2),
        }
    }
    w.uint(need.awards.len() as u64);
    for a in &need.awards {
        w.uint(u64::from(a.seq));
        w.uint(u64::from(names.providers.place(&a.provider)));
        w.uint(u64::from(a.gpus.get()));
        w.price(a.price);
        w.time(a.decided_at);
        let status = match a.status {
            AwardStatus::PendingApproval => 0,
            AwardStatus::Made => 1,
            AwardStatus::Confirmed => 2,
            AwardStatus::Rejected => 3,
            AwardStatus::Failed => 4,
        };
        let confirm_by = u64::from(a.confirm_by.is_some());
        let reservation = u64::from(a.reservation.is_some());
        w.uint(status + 5 * confirm_by + 10 * reservation);
        if let Some(by) = a.confirm_by {
            w.time(by);
        }
        if let Some(reservation) = &a.reservation {
            w.text(reservation);
        }
        w.uint(a.counted_at);
    }
    if !need.refusals.is_empty() {
        w.uint(need.refusals.len() as u64);
    }
    for r in &need.refusals {
        w.uint(u64::from(r.gpus.get()));
        w.option(r.price, Writer::price);
    }
    for at in [need.revive_at, need.waiting_until, need.fulfilled_until]
        .into_iter()
        .flatten()
    {
        w.time(at);
    }
    if let Some(closed) = need.closed {
        w.uint(match closed {
            Closed::Completed => 0,
            Closed::Expired => 1,
            Closed::Cancelled => 2,
        });
    }
    if need.unmet != Gpus::ZERO {
        w.uint(u64::from(need.unmet.get()));
    }
    // `scheduled` is not written: it is the need's next deadline, worked out again.
    Frozen(w.bytes.into_boxed_slice())
}

/// The need `frozen` packs, numbered `number`, with the names it uses shared from
/// `names`.
pub fn thaw(frozen: &Frozen, number: u32, names: &Names) -> NeedState {
    let mut r = Reader {
        bytes: &frozen.0,
        base: Timestamp::from_unix_seconds(0),
        price_base: Price::default(),
    };
    let id = NeedId::parse(&r.text()).expect("an id it was given");
    let submitted_at = Timestamp::from_unix_seconds(r.int());
    r.base = submitted_at;
    let present = r.uint();
    let has = |bit: u32| present & (1 << bit) != 0;
    let sku = names.skus.get(r.place()).clone();
    let gpus = r.gpus();
    let regions: BTreeSet<_> = (0..r.count_if(has(10)))
        .map(|_| names.regions.get(r.place()).clone())
        .collect();
    let earliest_start = r.time();
    let latest_start = r.time();
    let hours = r.u32();
    let workload = names.workloads.get(r.place()).clone();
    let tags: BTreeSet<_> = (0..r.count_if(has(11)))
        .map(|_| names.tags.get(r.place()).clone())
        .collect();
    let max_price_per_gpu_hour = Price::from_ten_thousandths(r.uint());
    r.price_base = max_price_per_gpu_hour;
    let offer_price_per_gpu_hour = has(0).then(|| r.price());
    let priority = u8::try_from(r.count_if(has(12))).expect("a priority packed from a u8");
    let launch = has(1).then(|| r.text());
    let decide_by = r.time();
    let spec = NeedSpec {
        id,
        sku,
        gpus,
        regions,
        earliest_start,
        latest_start,
        hours,
        workload,
        tags,
        max_price_per_gpu_hour,
        offer_price_per_gpu_hour,
        priority,
        launch,
        decide_by,
    };
    let holder = has(2).then(|| names.providers.get(r.place()).clone());
    let variant = has(13).then(|| match r.uint() {
        0 => Variant::FirstOffer,
        1 => Variant::LastLook,
        _ => Variant::Negotiate,
    });
    let first_refusal = has(3).then(|| r.u32());
    let holder_offer_price = has(4).then(|| r.price());
    let reoffer_threshold = f64::from_bits(r.count_if(has(14)).swap_bytes());
    let offers = list(&mut r, |r| {
        let seq = r.u32();
        let kind_and_status = r.uint();
        HolderOffer {
            seq,
            kind: match kind_and_status % 3 {
                0 => OfferKind::First,
                1 => OfferKind::Reoffer,
                _ => OfferKind::Match,
            },
            provider: names.providers.get(r.place()).clone(),
            gpus: r.gpus(),
            price: r.price(),
            deadline: r.time(),
            against: r.option(|r| names.providers.get(r.place()).clone()),
            status: match kind_and_status / 3 {
                0 => OfferStatus::Open,
                1 => OfferStatus::Accepted(r.gpus()),
                2 => OfferStatus::Declined,
                _ => OfferStatus::Lapsed,
            },
        }
    });
    let round = u32::try_from(r.count_if(has(15))).expect("packed from a u32");
    let rfqs: ThinVec<Rfq> = (0..r.count_if(has(16)))
        .map(|_| Rfq {
            provider: names.providers.get(r.place()).clone(),
            gpus: r.gpus(),
            deadline: r.time(),
            status: match r.uint() {
                0 => RfqStatus::Open,
                1 => RfqStatus::Quoted {
                    gpus: r.gpus(),
                    price: r.price(),
                },
                _ => RfqStatus::Declined,
            },
        })
        .collect();
    let awards = list(&mut r, |r| {
        let seq = r.u32();
        let provider = names.providers.get(r.place()).clone();
        let gpus = r.gpus();
        let price = r.price();
        let decided_at = r.time();
        let packed = r.uint();
        Award {
            seq,
            provider,
            gpus,
            price,
            decided_at,
            status: match packed % 5 {
                0 => AwardStatus::PendingApproval,
                1 => AwardStatus::Made,
                2 => AwardStatus::Confirmed,
                3 => AwardStatus::Rejected,
                _ => AwardStatus::Failed,
            },
            confirm_by: (packed / 5 % 2 == 1).then(|| r.time()),
            reservation: (packed / 10 == 1).then(|| r.text().into_boxed_str()),
            counted_at: r.uint(),
        }
    });
    let refusals: ThinVec<Refusal> = (0..r.count_if(has(17)))
        .map(|_| Refusal {
            gpus: r.gpus(),
            price: r.option(Reader::price),
        })
        .collect();
    let revive_at = has(5).then(|| r.time());
    let waiting_until = has(6).then(|| r.time());
    let fulfilled_until = has(7).then(|| r.time());
    let closed = has(18).then(|| match r.uint() {
        0 => Closed::Completed,
        1 => Closed::Expired,
        _ => Closed::Cancelled,
    });
    let unmet = Gpus(u32::try_from(r.count_if(has(19))).expect("packed from a u32"));
    debug_assert_eq!(r.bytes.len(), 0, "a packed need is read to its end");
    let mut need = NeedState {
        spec,
        submitted_at,
        holder,
        variant,
        first_refusal,
        holder_offer_price,
        reoffer_threshold,
        offers,
        round,
        rfqs,
        sourcing_open: has(8),
        awards,
        refusals,
        holder_owed: has(9),
        revive_at,
        waiting_until,
        fulfilled_until,
        closed,
        unmet,
        scheduled: None,
        number,
    };
    need.scheduled = need.next_deadline();
    need
}

/// A list read into room for exactly its items (most hold one).
fn list<T>(r: &mut Reader<'_>, mut item: impl FnMut(&mut Reader<'_>) -> T) -> Vec<T> {
    let len = r.uint() as usize;
    let mut items = Vec::with_capacity(len);
    for _ in 0..len {
        items.push(item(r));
    }
    items
}

struct Writer {
    bytes: Vec<u8>,
    /// Times are written as seconds from this one.
    base: Timestamp,
    /// Prices are written as differences from this one (the need's most), which most
    /// equal.
    price_base: Price,
}

impl Writer {
    /// LEB128: seven bits a byte, low bits first.
    fn uint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.bytes.push(value as u8 | 0x80);
            value >>= 7;
        }
        self.bytes.push(value as u8);
    }

    /// Zigzag, so that small negative numbers stay short.
    fn int(&mut self, value: i64) {
        self.uint(((value << 1) ^ (value >> 63)) as u64);
    }

    fn time(&mut self, at: Timestamp) {
        self.int(at.unix_seconds().wrapping_sub(self.base.unix_seconds()));
    }

    fn price(&mut self, price: Price) {
        self.int(price.units().wrapping_sub(self.price_base.units()) as i64);
    }

    fn text(&mut self, text: &str) {
        self.uint(text.len() as u64);
        self.bytes.extend_from_slice(text.as_bytes());
    }

    fn option<T>(&mut self, value: Option<T>, write: impl FnOnce(&mut Writer, T)) {
        match value {
            None => self.uint(0),
            Some(value) => {
                self.uint(1);
                write(self, value);
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    base: Timestamp,
    price_base: Price,
}

impl Reader<'_> {
    fn byte(&mut self) -> u8 {
        let (&first, rest) = self
            .bytes
            .split_first()
            .expect("a packed need is read as it was written");
        self.bytes = rest;
        first
    }

    fn uint(&mut self) -> u64 {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = self.byte();
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return value;
            }
            shift += 7;
        }
    }

    fn int(&mut self) -> i64 {
        let zigzag = self.uint();
        (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64)
    }

    /// A number written only where `written` (its bit of the need's first number)
    /// says so; zero where not.
    fn count_if(&mut self, written: bool) -> u64 {
        if written {
            self.uint()
        } else {
            0
        }
    }

    fn u32(&mut self) -> u32 {
        u32::try_from(self.uint()).expect("packed from a u32")
    }

    fn place(&mut self) -> u32 {
        self.u32()
    }

    fn gpus(&mut self) -> Gpus {
        Gpus(self.u32())
    }

    fn price(&mut self) -> Price {
        let difference = self.int() as u64;
        Price::from_ten_thousandths(self.price_base.units().wrapping_add(difference))
    }

    fn time(&mut self) -> Timestamp {
        Timestamp::from_unix_seconds(self.base.unix_seconds().wrapping_add(self.int()))
    }

    fn text(&mut self) -> String {
        let len = self.uint() as usize;
        let (text, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        std::str::from_utf8(text)
            .expect("packed from a str")
            .to_owned()
    }

    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> T) -> Option<T> {
        (self.uint() != 0).then(|| read(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ProviderId, Region, Sku, Tag, Workload};

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_seconds(seconds)
    }

    fn provider(name: &str) -> ProviderId {
        ProviderId::parse(name).unwrap()
    }

    /// A need with every field away from its default and every status of every list
    /// item somewhere, times before and after its submission and at the far ends of
    /// the calendar.
    fn busy_need() -> NeedState {
        let submitted = at(1_767_225_600);
        let offer = |seq, kind, status, against: Option<&str>| HolderOffer {
            seq,
            kind,
            provider: provider("holder"),
            gpus: Gpus(seq * 8),
            price: Price::from_ten_thousandths(25_000 + u64::from(seq)),
            deadline: submitted.plus_seconds(i64::from(seq) * 3_600),
            against: against.map(provider),
            status,
        };
        let award = |seq, status, confirm_by, reservation: Option<&str>| Award {
            seq,
            provider: provider(if seq % 2 == 0 { "alt" } else { "holder" }),
            gpus: Gpus(seq),
            price: Price::from_ten_thousandths(u64::MAX - u64::from(seq)),
            decided_at: submitted.plus_seconds(i64::from(seq)),
            confirm_by,
            reservation: reservation.map(Into::into),
            status,
            counted_at: u64::from(seq) << 40,
        };
        let mut need = NeedState {
            spec: NeedSpec {
                id: NeedId::parse("n-busy").unwrap(),
                sku: Sku::parse("H100").unwrap(),
                gpus: Gpus(u32::MAX),
                regions: ["us-east", "eu-west"]
                    .map(|r| Region::parse(r).unwrap())
                    .into(),
                earliest_start: at(-62_135_596_800),
                latest_start: at(253_402_300_799),
                hours: 720,
                workload: Workload::parse("training").unwrap(),
                tags: ["frontier", "eval"].map(|t| Tag::parse(t).unwrap()).into(),
                max_price_per_gpu_hour: Price::from_ten_thousandths(80_000),
                offer_price_per_gpu_hour: Some(Price::from_ten_thousandths(0)),
                priority: 255,
                launch: Some("launch-α".into()),
                decide_by: submitted.plus_seconds(-5),
            },
            submitted_at: submitted,
            holder: Some(provider("holder")),
            variant: Some(Variant::Negotiate),
            first_refusal: Some(3),
            holder_offer_price: Some(Price::from_ten_thousandths(70_000)),
            reoffer_threshold: 0.1,
            offers: vec![
                offer(1, OfferKind::First, OfferStatus::Accepted(Gpus(3)), None),
                offer(2, OfferKind::Reoffer, OfferStatus::Declined, Some("alt")),
                offer(3, OfferKind::Match, OfferStatus::Lapsed, Some("alt")),
                offer(4, OfferKind::First, OfferStatus::Open, None),
            ],
            round: 2,
            rfqs: [
                RfqStatus::Open,
                RfqStatus::Quoted {
                    gpus: Gpus(5),
                    price: Price::from_ten_thousandths(31_000),
                },
                RfqStatus::Declined,
            ]
            .into_iter()
            .map(|status| Rfq {
                provider: provider("alt"),
                gpus: Gpus(6),
                deadline: submitted.plus_seconds(7_200),
                status,
            })
            .collect(),
            sourcing_open: true,
            awards: vec![
                award(1, AwardStatus::PendingApproval, None, None),
                award(
                    2,
                    AwardStatus::Made,
                    Some(submitted.plus_seconds(600)),
                    None,
                ),
                award(3, AwardStatus::Confirmed, Some(submitted), Some("res-1")),
                award(4, AwardStatus::Rejected, None, None),
                award(5, AwardStatus::Failed, Some(at(0)), Some("")),
            ],
            refusals: [
                Refusal {
                    gpus: Gpus(2),
                    price: None,
                },
                Refusal {
                    gpus: Gpus(4),
                    price: Some(Price::from_ten_thousandths(1)),
                },
            ]
            .into_iter()
            .collect(),
            holder_owed: true,
            revive_at: Some(submitted.plus_seconds(86_400)),
            waiting_until: Some(submitted.plus_seconds(-86_400)),
            fulfilled_until: Some(at(i64::MAX)),
            closed: Some(Closed::Expired),
            unmet: Gpus(7),
            scheduled: None,
            number: u32::MAX,
        };
        need.scheduled = need.next_deadline();
        need
    }

    #[test]
    fn every_field_unpacks_as_it_was_packed() {
        let need = busy_need();
        let mut names = Names::default();
        let packed = freeze(&need, &mut names);
        assert_eq!(thaw(&packed, need.number, &names), need);
    }

    /// Each optional field, list and number at its default alone, so that no two
    /// share a presence bit unnoticed.
    #[test]
    fn each_field_at_its_default_alone_unpacks_as_it_was_packed() {
        let clearers: [fn(&mut NeedState); 22] = [
            |n| n.spec.regions.clear(),
            |n| n.spec.tags.clear(),
            |n| n.spec.offer_price_per_gpu_hour = None,
            |n| n.spec.launch = None,
            |n| n.spec.priority = 0,
            |n| n.holder = None,
            |n| n.variant = None,
            |n| n.first_refusal = None,
            |n| n.holder_offer_price = None,
            |n| n.reoffer_threshold = 0.0,
            |n| n.offers.clear(),
            |n| n.round = 0,
            |n| n.rfqs.clear(),
            |n| n.awards.clear(),
            |n| n.refusals.clear(),
            |n| n.sourcing_open = false,
            |n| n.holder_owed = false,
            |n| n.revive_at = None,
            |n| n.waiting_until = None,
            |n| n.fulfilled_until = None,
            |n| n.closed = None,
            |n| n.unmet = Gpus::ZERO,
        ];
        for (place, clear) in clearers.iter().enumerate() {
            let mut need = busy_need();
            clear(&mut need);
            need.scheduled = need.next_deadline();
            let mut names = Names::default();
            let packed = freeze(&need, &mut names);
            assert_eq!(thaw(&packed, need.number, &names), need, "clearer {place}");
        }
    }

    #[test]
    fn a_need_at_its_defaults_unpacks_too_and_packs_small() {
        let mut need = busy_need();
        need.spec.regions.clear();
        need.spec.tags.clear();
        need.spec.offer_price_per_gpu_hour = None;
        need.spec.launch = None;
        need.holder = None;
        need.variant = None;
        need.first_refusal = None;
        need.holder_offer_price = None;
        need.reoffer_threshold = 0.0;
        need.offers.clear();
        need.rfqs.clear();
        need.awards.clear();
        need.refusals.clear();
        need.sourcing_open = false;
        need.holder_owed = false;
        need.revive_at = None;
        need.waiting_until = None;
        need.fulfilled_until = None;
        need.closed = None;
        need.scheduled = need.next_deadline();
        let mut names = Names::default();
        let packed = freeze(&need, &mut names);
        assert_eq!(thaw(&packed, need.number, &names), need);
        // The far-off start times and the largest numbers take most of it.
        assert!(packed.len() < 64, "{} bytes", packed.len());
    }

    #[test]
    fn names_are_shared_from_the_tables() {
        let need = busy_need();
        let mut names = Names::default();
        let kept = names.skus.shared(&Sku::parse("H100").unwrap());
        let packed = freeze(&need, &mut names);
        let back = thaw(&packed, need.number, &names);
        assert!(back.spec.sku.shares_text_with(&kept));
        assert_eq!(packed.id(), "n-busy");
    }
}
