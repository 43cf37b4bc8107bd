//! Needs at rest, packed. A need that waits only on a far deadline (its awards
//! confirmed, nothing open for anyone to answer) is most of a broker's needs, and as a
//! [`NeedState`] it takes about 540 bytes with its lists. Packed it takes about 70:
//! numbers as variable-length integers, times as differences from the submission time,
//! names as their places in the state's tables ([`Names`]). The first event that
//! touches it again unpacks it.
//!
//! The format lives only in memory, written and read by this module alone, so it has
//! no version: a packed need never outlives the process that packed it. `freeze`
//! takes every struct apart by name, with no `..`, so a field added to a need's state
//! does not compile until it is packed here; `thaw` builds every struct whole, so it
//! does not compile until the field is read back. Every code (a variant, a status, a
//! flag) is written and read through one table, and a byte that no table holds, a
//! number too long or a list longer than the bytes left is a [`Corrupt`] error, never
//! a guess. See `docs/packing.md`.

use std::collections::BTreeSet;

use thin_vec::ThinVec;

use crate::deal::Variant;
use crate::need::NeedSpec;
use crate::state::{
    Award, AwardStatus, Closed, HolderOffer, Names, NeedState, OfferKind, OfferStatus, Refusal,
    Rfq, RfqStatus, Table,
};
use crate::types::{Gpus, NeedId, Price, Timestamp};

/// A packed need. Equal bytes mean equal needs under the same [`Names`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frozen(Box<[u8]>);

impl Frozen {
    /// The need's id, which the packing starts with.
    pub fn id(&self) -> &str {
        let mut r = Reader::new(&self.0);
        r.text_slice()
            .expect("a packed need starts with its id, as `freeze` wrote it")
    }

    /// Bytes held, for tests and figures.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Bytes that `freeze` did not write: what was read where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    pub what: &'static str,
    /// Bytes from the start of the packing.
    pub at: usize,
}

impl std::fmt::Display for Corrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a packed need is corrupt at byte {}: {}",
            self.at, self.what
        )
    }
}

impl std::error::Error for Corrupt {}

type Read<T> = Result<T, Corrupt>;

/// The bits of a packed need's flags: which optional fields are there, which lists
/// hold something, which numbers are not zero, and the need's two booleans. Each
/// marked field is written only where its bit is set.
#[derive(Debug, Clone, Copy)]
enum Bit {
    OfferPrice,
    Launch,
    Holder,
    FirstRefusal,
    HolderOfferPrice,
    ReviveAt,
    WaitingUntil,
    FulfilledUntil,
    SourcingOpen,
    HolderOwed,
    Regions,
    Tags,
    Priority,
    Variant,
    ReofferThreshold,
    Round,
    Rfqs,
    Refusals,
    Closed,
    Unmet,
    DealVersion,
}

impl Bit {
    /// One past the last bit.
    const COUNT: u32 = Bit::DealVersion as u32 + 1;
}

#[derive(Debug, Clone, Copy, Default)]
struct Flags(u64);

impl Flags {
    fn set(&mut self, bit: Bit, on: bool) {
        self.0 |= u64::from(on) << bit as u32;
    }

    fn has(self, bit: Bit) -> bool {
        self.0 & (1 << bit as u32) != 0
    }
}

/// Each enum's codes, in one table that writes (a `match` the compiler checks for
/// every variant) and reads (an unknown code is an error).
macro_rules! codes {
    ($write:ident, $read:ident, $what:literal, $ty:ty { $($value:path => $code:literal),+ $(,)? }) => {
        fn $write(value: $ty) -> u64 {
            match value {
                $($value => $code,)+
            }
        }

        fn $read(r: &Reader<'_>, code: u64) -> Read<$ty> {
            match code {
                $($code => Ok($value),)+
                _ => Err(r.corrupt(concat!("an unknown ", $what, " code"))),
            }
        }
    };
}

codes!(variant_code, variant_of, "variant", Variant {
    Variant::FirstOffer => 0,
    Variant::LastLook => 1,
    Variant::Negotiate => 2,
});
codes!(kind_code, kind_of, "offer kind", OfferKind {
    OfferKind::First => 0,
    OfferKind::Reoffer => 1,
    OfferKind::Match => 2,
});
codes!(award_status_code, award_status_of, "award status", AwardStatus {
    AwardStatus::PendingApproval => 0,
    AwardStatus::Made => 1,
    AwardStatus::Confirmed => 2,
    AwardStatus::Rejected => 3,
    AwardStatus::Failed => 4,
});
codes!(closed_code, closed_of, "closing", Closed {
    Closed::Completed => 0,
    Closed::Expired => 1,
    Closed::Cancelled => 2,
});

/// An offer's status without its accepted GPUs, which follow it where it has them.
fn offer_status_code(status: OfferStatus) -> u64 {
    match status {
        OfferStatus::Open => 0,
        OfferStatus::Accepted(_) => 1,
        OfferStatus::Declined => 2,
        OfferStatus::Lapsed => 3,
        OfferStatus::Withdrawn => 4,
    }
}

fn offer_status_of(r: &mut Reader<'_>, code: u64) -> Read<OfferStatus> {
    match code {
        0 => Ok(OfferStatus::Open),
        1 => Ok(OfferStatus::Accepted(r.gpus()?)),
        2 => Ok(OfferStatus::Declined),
        3 => Ok(OfferStatus::Lapsed),
        4 => Ok(OfferStatus::Withdrawn),
        _ => Err(r.corrupt("an unknown offer status code")),
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
    let NeedState {
        spec,
        submitted_at,
        holder,
        variant,
        first_refusal,
        holder_offer_price,
        reoffer_threshold,
        offers,
        round,
        deal_version,
        rfqs,
        sourcing_open,
        awards,
        refusals,
        holder_owed,
        revive_at,
        waiting_until,
        fulfilled_until,
        closed,
        unmet,
        // Not written: the need's next deadline, worked out again, and its place,
        // which the state knows.
        scheduled: _,
        number: _,
    } = need;
    let NeedSpec {
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
    } = spec;
    let mut w = Writer {
        bytes: Vec::with_capacity(128),
        base: *submitted_at,
        price_base: *max_price_per_gpu_hour,
    };
    w.text(id.as_str());
    w.int(submitted_at.unix_seconds());
    let mut flags = Flags::default();
    for (bit, on) in [
        (Bit::OfferPrice, offer_price_per_gpu_hour.is_some()),
        (Bit::Launch, launch.is_some()),
        (Bit::Holder, holder.is_some()),
        (Bit::FirstRefusal, first_refusal.is_some()),
        (Bit::HolderOfferPrice, holder_offer_price.is_some()),
        (Bit::ReviveAt, revive_at.is_some()),
        (Bit::WaitingUntil, waiting_until.is_some()),
        (Bit::FulfilledUntil, fulfilled_until.is_some()),
        (Bit::SourcingOpen, *sourcing_open),
        (Bit::HolderOwed, *holder_owed),
        (Bit::Regions, !regions.is_empty()),
        (Bit::Tags, !tags.is_empty()),
        (Bit::Priority, *priority != 0),
        (Bit::Variant, variant.is_some()),
        (Bit::ReofferThreshold, reoffer_threshold.to_bits() != 0),
        (Bit::Round, *round != 0),
        (Bit::DealVersion, *deal_version != 1),
        (Bit::Rfqs, !rfqs.is_empty()),
        (Bit::Refusals, !refusals.is_empty()),
        (Bit::Closed, closed.is_some()),
        (Bit::Unmet, *unmet != Gpus::ZERO),
    ] {
        flags.set(bit, on);
    }
    w.uint(flags.0);

    w.name(&mut names.skus, sku);
    w.uint(u64::from(gpus.get()));
    if !regions.is_empty() {
        w.names(&mut names.regions, regions);
    }
    w.time(*earliest_start);
    w.time(*latest_start);
    w.uint(u64::from(*hours));
    w.name(&mut names.workloads, workload);
    if !tags.is_empty() {
        w.names(&mut names.tags, tags);
    }
    w.uint(max_price_per_gpu_hour.units());
    if let Some(price) = offer_price_per_gpu_hour {
        w.price(*price);
    }
    if *priority != 0 {
        w.uint(u64::from(*priority));
    }
    if let Some(launch) = launch {
        w.text(launch);
    }
    w.time(*decide_by);

    if let Some(holder) = holder {
        w.name(&mut names.providers, holder);
    }
    if let Some(variant) = variant {
        w.uint(variant_code(*variant));
    }
    if let Some(place) = first_refusal {
        w.uint(u64::from(*place));
    }
    if let Some(price) = holder_offer_price {
        w.price(*price);
    }
    if reoffer_threshold.to_bits() != 0 {
        w.uint(reoffer_threshold.to_bits().swap_bytes());
    }
    w.uint(offers.len() as u64);
    for offer in offers {
        let HolderOffer {
            seq,
            kind,
            provider,
            gpus,
            price,
            deadline,
            against,
            status,
        } = offer;
        w.uint(u64::from(*seq));
        w.uint(kind_code(*kind) + 3 * offer_status_code(*status));
        w.name(&mut names.providers, provider);
        w.uint(u64::from(gpus.get()));
        w.price(*price);
        w.time(*deadline);
        w.option(against.as_ref(), |w, p| w.name(&mut names.providers, p));
        if let OfferStatus::Accepted(gpus) = status {
            w.uint(u64::from(gpus.get()));
        }
    }
    if *round != 0 {
        w.uint(u64::from(*round));
    }
    if *deal_version != 1 {
        w.uint(u64::from(*deal_version));
    }
    if !rfqs.is_empty() {
        w.uint(rfqs.len() as u64);
    }
    for rfq in rfqs {
        let Rfq {
            provider,
            gpus,
            deadline,
            status,
        } = rfq;
        w.name(&mut names.providers, provider);
        w.uint(u64::from(gpus.get()));
        w.time(*deadline);
        match status {
            RfqStatus::Open => w.uint(0),
            RfqStatus::Quoted { gpus, price } => {
                w.uint(1);
                w.uint(u64::from(gpus.get()));
                w.price(*price);
            }
            RfqStatus::Declined => w.uint(2),
        }
    }
    w.uint(awards.len() as u64);
    for award in awards {
        let Award {
            seq,
            provider,
            gpus,
            price,
            decided_at,
            status,
            confirm_by,
            reservation,
            counted_at,
        } = award;
        w.uint(u64::from(*seq));
        w.name(&mut names.providers, provider);
        w.uint(u64::from(gpus.get()));
        w.price(*price);
        w.time(*decided_at);
        // The status, and which of the two optional fields follow, in one number.
        let confirm = u64::from(confirm_by.is_some());
        let reserved = u64::from(reservation.is_some());
        w.uint(award_status_code(*status) + 5 * confirm + 10 * reserved);
        if let Some(by) = confirm_by {
            w.time(*by);
        }
        if let Some(reservation) = reservation {
            w.text(reservation);
        }
        w.uint(*counted_at);
    }
    if !refusals.is_empty() {
        w.uint(refusals.len() as u64);
    }
    for refusal in refusals {
        let Refusal { gpus, price } = refusal;
        w.uint(u64::from(gpus.get()));
        w.option(*price, Writer::price);
    }
    for at in [revive_at, waiting_until, fulfilled_until]
        .into_iter()
        .flatten()
    {
        w.time(*at);
    }
    if let Some(closed) = closed {
        w.uint(closed_code(*closed));
    }
    if *unmet != Gpus::ZERO {
        w.uint(u64::from(unmet.get()));
    }
    Frozen(w.bytes.into_boxed_slice())
}

/// The need `frozen` packs, numbered `number`, with the names it uses shared from
/// `names`.
pub fn thaw(frozen: &Frozen, number: u32, names: &Names) -> Result<NeedState, Corrupt> {
    let mut r = Reader::new(&frozen.0);
    let id = NeedId::parse(r.text_slice()?).map_err(|_| r.corrupt("an id that does not parse"))?;
    let submitted_at = Timestamp::from_unix_seconds(r.int()?);
    r.base = submitted_at;
    let flags = Flags(r.uint()?);
    if flags.0 >> Bit::COUNT != 0 {
        return Err(r.corrupt("a flag no field has"));
    }
    let has = |bit| flags.has(bit);

    let sku = r.name(&names.skus)?;
    let gpus = r.gpus()?;
    let regions = r.names(&names.regions, has(Bit::Regions))?;
    let earliest_start = r.time()?;
    let latest_start = r.time()?;
    let hours = r.u32()?;
    let workload = r.name(&names.workloads)?;
    let tags = r.names(&names.tags, has(Bit::Tags))?;
    let max_price_per_gpu_hour = Price::from_ten_thousandths(r.uint()?);
    r.price_base = max_price_per_gpu_hour;
    let offer_price_per_gpu_hour = r.when(has(Bit::OfferPrice), Reader::price)?;
    let priority = u8::try_from(r.count_if(has(Bit::Priority))?)
        .map_err(|_| r.corrupt("a priority above 255"))?;
    let launch = r.when(has(Bit::Launch), Reader::text)?;
    let decide_by = r.time()?;
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

    let holder = r.when(has(Bit::Holder), |r| r.name(&names.providers))?;
    let variant = r.when(has(Bit::Variant), |r| {
        let code = r.uint()?;
        variant_of(r, code)
    })?;
    let first_refusal = match r.when(has(Bit::FirstRefusal), Reader::u32)? {
        Some(place) => Some(u16::try_from(place).map_err(|_| r.corrupt("a clause above 2^16"))?),
        None => None,
    };
    let holder_offer_price = r.when(has(Bit::HolderOfferPrice), Reader::price)?;
    let reoffer_threshold = f64::from_bits(r.count_if(has(Bit::ReofferThreshold))?.swap_bytes());
    let count = r.count()?;
    let offers = r.items(count, |r| {
        let seq = r.u32()?;
        let code = r.uint()?;
        let kind = kind_of(r, code % 3)?;
        let provider = r.name(&names.providers)?;
        let gpus = r.gpus()?;
        let price = r.price()?;
        let deadline = r.time()?;
        let against = r.option(|r| r.name(&names.providers))?;
        let status = offer_status_of(r, code / 3)?;
        Ok(HolderOffer {
            seq,
            kind,
            provider,
            gpus,
            price,
            deadline,
            against,
            status,
        })
    })?;
    let round =
        u32::try_from(r.count_if(has(Bit::Round))?).map_err(|_| r.corrupt("a round above 2^32"))?;
    let deal_version = match r.when(has(Bit::DealVersion), Reader::u32)? {
        Some(v) => u16::try_from(v).map_err(|_| r.corrupt("a deal version above 2^16"))?,
        None => 1,
    };
    let count = if has(Bit::Rfqs) { r.count()? } else { 0 };
    let rfqs: ThinVec<Rfq> = r
        .items(count, |r| {
            let provider = r.name(&names.providers)?;
            let gpus = r.gpus()?;
            let deadline = r.time()?;
            let status = match r.uint()? {
                0 => RfqStatus::Open,
                1 => RfqStatus::Quoted {
                    gpus: r.gpus()?,
                    price: r.price()?,
                },
                2 => RfqStatus::Declined,
                _ => return Err(r.corrupt("an unknown request status code")),
            };
            Ok(Rfq {
                provider,
                gpus,
                deadline,
                status,
            })
        })?
        .into();
    let count = r.count()?;
    let awards = r.items(count, |r| {
        let seq = r.u32()?;
        let provider = r.name(&names.providers)?;
        let gpus = r.gpus()?;
        let price = r.price()?;
        let decided_at = r.time()?;
        let code = r.uint()?;
        let status = award_status_of(r, code % 5)?;
        if code / 5 > 3 {
            return Err(r.corrupt("an unknown award code"));
        }
        let confirm_by = r.when(code / 5 % 2 == 1, Reader::time)?;
        let reservation = r.when(code / 10 == 1, |r| r.text().map(String::into_boxed_str))?;
        Ok(Award {
            seq,
            provider,
            gpus,
            price,
            decided_at,
            status,
            confirm_by,
            reservation,
            counted_at: r.uint()?,
        })
    })?;
    let count = if has(Bit::Refusals) { r.count()? } else { 0 };
    let refusals: ThinVec<Refusal> = r
        .items(count, |r| {
            Ok(Refusal {
                gpus: r.gpus()?,
                price: r.option(Reader::price)?,
            })
        })?
        .into();
    let revive_at = r.when(has(Bit::ReviveAt), Reader::time)?;
    let waiting_until = r.when(has(Bit::WaitingUntil), Reader::time)?;
    let fulfilled_until = r.when(has(Bit::FulfilledUntil), Reader::time)?;
    let closed = r.when(has(Bit::Closed), |r| {
        let code = r.uint()?;
        closed_of(r, code)
    })?;
    let unmet = Gpus(
        u32::try_from(r.count_if(has(Bit::Unmet))?)
            .map_err(|_| r.corrupt("unmet GPUs above 2^32"))?,
    );
    if !r.bytes.is_empty() {
        return Err(r.corrupt("bytes after the need's last field"));
    }
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
        deal_version,
        rfqs,
        sourcing_open: has(Bit::SourcingOpen),
        awards,
        refusals,
        holder_owed: has(Bit::HolderOwed),
        revive_at,
        waiting_until,
        fulfilled_until,
        closed,
        unmet,
        scheduled: None,
        number,
    };
    need.scheduled = need.next_deadline();
    Ok(need)
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

    /// A name as its place in `table`.
    fn name<T: Clone + Eq + std::hash::Hash>(&mut self, table: &mut Table<T>, name: &T) {
        let place = table.place(name);
        self.uint(u64::from(place));
    }

    /// A set of names: how many, then each one's place.
    fn names<T: Clone + Eq + std::hash::Hash>(&mut self, table: &mut Table<T>, set: &BTreeSet<T>) {
        self.uint(set.len() as u64);
        for name in set {
            self.name(table, name);
        }
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
    /// How many bytes there were: where an error is, is told from the start.
    len: usize,
    base: Timestamp,
    price_base: Price,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            bytes,
            len: bytes.len(),
            base: Timestamp::from_unix_seconds(0),
            price_base: Price::default(),
        }
    }

    fn corrupt(&self, what: &'static str) -> Corrupt {
        Corrupt {
            what,
            at: self.len - self.bytes.len(),
        }
    }

    fn byte(&mut self) -> Read<u8> {
        let (&first, rest) = self
            .bytes
            .split_first()
            .ok_or_else(|| self.corrupt("the bytes end inside a field"))?;
        self.bytes = rest;
        Ok(first)
    }

    fn uint(&mut self) -> Read<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.byte()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.corrupt("a number above 2^64"));
            }
            value |= bits << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err(self.corrupt("a number longer than ten bytes"))
    }

    fn int(&mut self) -> Read<i64> {
        let zigzag = self.uint()?;
        Ok((zigzag >> 1) as i64 ^ -((zigzag & 1) as i64))
    }

    /// A number written only where `written` (its bit of the need's flags) says so;
    /// zero where not.
    fn count_if(&mut self, written: bool) -> Read<u64> {
        if written {
            self.uint()
        } else {
            Ok(0)
        }
    }

    /// How many items a list holds: no more than bytes are left, since each takes one
    /// at least.
    fn count(&mut self) -> Read<usize> {
        let count = self.uint()?;
        usize::try_from(count)
            .ok()
            .filter(|&count| count <= self.bytes.len())
            .ok_or_else(|| self.corrupt("a list longer than the bytes left"))
    }

    fn items<T>(
        &mut self,
        count: usize,
        mut item: impl FnMut(&mut Self) -> Read<T>,
    ) -> Read<Vec<T>> {
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(item(self)?);
        }
        Ok(items)
    }

    fn u32(&mut self) -> Read<u32> {
        let value = self.uint()?;
        u32::try_from(value).map_err(|_| self.corrupt("a number above 2^32"))
    }

    fn gpus(&mut self) -> Read<Gpus> {
        self.u32().map(Gpus)
    }

    fn price(&mut self) -> Read<Price> {
        let difference = self.int()? as u64;
        Ok(Price::from_ten_thousandths(
            self.price_base.units().wrapping_add(difference),
        ))
    }

    fn time(&mut self) -> Read<Timestamp> {
        let seconds = self.int()?;
        Ok(Timestamp::from_unix_seconds(
            self.base.unix_seconds().wrapping_add(seconds),
        ))
    }

    fn text_slice(&mut self) -> Read<&'a str> {
        let len = self.count()?;
        let (text, rest) = self.bytes.split_at(len);
        let text = std::str::from_utf8(text).map_err(|_| self.corrupt("text that is not UTF-8"))?;
        self.bytes = rest;
        Ok(text)
    }

    fn text(&mut self) -> Read<String> {
        self.text_slice().map(str::to_owned)
    }

    /// The name at the place read, from `table`.
    fn name<T: Clone + Eq + std::hash::Hash>(&mut self, table: &Table<T>) -> Read<T> {
        let place = self.u32()?;
        table
            .lookup(place)
            .cloned()
            .ok_or_else(|| self.corrupt("a name the tables do not hold"))
    }

    /// A set of names, where `written`.
    fn names<T: Clone + Ord + std::hash::Hash>(
        &mut self,
        table: &Table<T>,
        written: bool,
    ) -> Read<BTreeSet<T>> {
        let count = if written { self.count()? } else { 0 };
        (0..count).map(|_| self.name(table)).collect()
    }

    /// A value written only where `written` says so.
    fn when<T>(
        &mut self,
        written: bool,
        read: impl FnOnce(&mut Self) -> Read<T>,
    ) -> Read<Option<T>> {
        if written {
            read(self).map(Some)
        } else {
            Ok(None)
        }
    }

    fn option<T>(&mut self, read: impl FnOnce(&mut Self) -> Read<T>) -> Read<Option<T>> {
        match self.uint()? {
            0 => Ok(None),
            1 => read(self).map(Some),
            _ => Err(self.corrupt("an option marked neither 0 nor 1")),
        }
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
                offer(5, OfferKind::Reoffer, OfferStatus::Withdrawn, Some("alt")),
            ],
            round: 2,
            deal_version: 3,
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
        assert_eq!(thaw(&packed, need.number, &names).unwrap(), need);
    }

    /// Each optional field, list and number at its default alone, so that no two
    /// share a presence bit unnoticed.
    #[test]
    fn each_field_at_its_default_alone_unpacks_as_it_was_packed() {
        let clearers: [fn(&mut NeedState); 23] = [
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
            |n| n.deal_version = 1,
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
            assert_eq!(
                thaw(&packed, need.number, &names).unwrap(),
                need,
                "clearer {place}"
            );
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
        assert_eq!(thaw(&packed, need.number, &names).unwrap(), need);
        // The far-off start times and the largest numbers take most of it.
        assert!(packed.len() < 64, "{} bytes", packed.len());
    }

    #[test]
    fn names_are_shared_from_the_tables() {
        let need = busy_need();
        let mut names = Names::default();
        let kept = names.skus.shared(&Sku::parse("H100").unwrap());
        let packed = freeze(&need, &mut names);
        let back = thaw(&packed, need.number, &names).unwrap();
        assert!(back.spec.sku.shares_text_with(&kept));
        assert_eq!(packed.id(), "n-busy");
    }

    /// A packing cut short anywhere, or with any one byte changed, reads as an error
    /// or as some other need: never a panic, never an endless read.
    #[test]
    fn a_damaged_packing_is_an_error_not_a_panic() {
        let need = busy_need();
        let mut names = Names::default();
        let packed = freeze(&need, &mut names);
        for len in 0..packed.len() {
            let cut = Frozen(packed.0[..len].into());
            assert!(thaw(&cut, 0, &names).is_err(), "cut to {len} bytes");
        }
        let mut errors = 0;
        for place in 0..packed.len() {
            for byte in [0x00, 0x03, 0x7f, 0x80, 0xff] {
                let mut bytes = packed.0.to_vec();
                bytes[place] = byte;
                errors += usize::from(thaw(&Frozen(bytes.into()), 0, &names).is_err());
            }
        }
        assert!(errors > 0);
    }

    #[test]
    fn an_unknown_code_is_an_error() {
        let r = Reader::new(&[]);
        assert!(variant_of(&r, 3).is_err());
        assert!(kind_of(&r, 3).is_err());
        assert!(award_status_of(&r, 5).is_err());
        assert!(closed_of(&r, 3).is_err());
        for variant in [Variant::FirstOffer, Variant::LastLook, Variant::Negotiate] {
            assert_eq!(variant_of(&r, variant_code(variant)), Ok(variant));
        }
        // A flag no field has.
        let mut need = busy_need();
        need.variant = None;
        need.scheduled = need.next_deadline();
        let mut names = Names::default();
        let packed = freeze(&need, &mut names);
        let mut r = Reader::new(&packed.0);
        r.text_slice().unwrap();
        r.int().unwrap();
        let at = packed.len() - r.bytes.len();
        let flags = r.uint().unwrap();
        let mut bytes = packed.0[..at].to_vec();
        let mut w = Writer {
            bytes: Vec::new(),
            base: need.submitted_at,
            price_base: Price::default(),
        };
        w.uint(flags | 1 << Bit::COUNT);
        bytes.extend(w.bytes);
        bytes.extend_from_slice(r.bytes);
        let refused = thaw(&Frozen(bytes.into()), 0, &names).unwrap_err();
        assert_eq!(refused.what, "a flag no field has");
    }
}
