//! Figures over every need (counts by status, GPU-hours awarded by day and provider,
//! lapses, re-offers, time to first award) without unpacking every need to read them.
//!
//! The state keeps a [`Tally`] of its packed needs: a need's share is added when it is
//! packed and taken away when it is unpacked, and nothing changes a need while it is
//! packed. [`crate::state::State::figures`] adds the few unpacked needs to it. Counts
//! and GPU-hours are whole numbers, so taking a share away leaves exactly what was
//! there before it was added.

use std::collections::BTreeMap;

use crate::state::{NeedState, NeedStatus, OfferKind, OfferStatus};
use crate::types::ProviderId;

/// Seconds in a day: awards are grouped by the day they were decided on.
const DAY: i64 = 86_400;

/// The running figures of a set of needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    by_status: BTreeMap<NeedStatus, u64>,
    /// GPU-hours of live awards, by the day they were decided on and provider.
    awarded: BTreeMap<(i64, ProviderId), u64>,
    lapses: u64,
    reoffers: u64,
    /// How many needs took each number of seconds from submission to first award.
    to_award: BTreeMap<i64, u64>,
}

impl Tally {
    /// Counts `need` in.
    pub fn add(&mut self, need: &NeedState) {
        self.change(need, true);
    }

    /// Takes `need`, as counted in by [`Tally::add`], out again.
    pub fn remove(&mut self, need: &NeedState) {
        self.change(need, false);
    }

    /// Adds or takes out `need`'s share. A need is taken out only as it was counted in
    /// (packing unpacks exactly, which debug builds check): taking out what is not
    /// there is a fault in the figures alone, so debug builds stop on it and others
    /// leave the figures short rather than stop the broker.
    fn change(&mut self, need: &NeedState, add: bool) {
        const NOT_COUNTED: &str = "a need is taken out of the tally only as it was counted in";
        fn step<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, by: u64, add: bool) {
            if add {
                *map.entry(key).or_default() += by;
            } else if let std::collections::btree_map::Entry::Occupied(mut entry) = map.entry(key) {
                debug_assert!(*entry.get() >= by, "{NOT_COUNTED}");
                *entry.get_mut() = entry.get().saturating_sub(by);
                if *entry.get() == 0 {
                    entry.remove();
                }
            } else {
                debug_assert!(false, "{NOT_COUNTED}");
            }
        }
        let count = |n: usize, total: &mut u64| {
            if add {
                *total += n as u64;
            } else {
                debug_assert!(*total >= n as u64, "{NOT_COUNTED}");
                *total = total.saturating_sub(n as u64);
            }
        };
        step(&mut self.by_status, need.status(), 1, add);
        for award in need.awards.iter().filter(|a| a.status.is_live()) {
            let day = award.decided_at.unix_seconds().div_euclid(DAY);
            let gpu_hours = u64::from(award.gpus.get()) * u64::from(need.spec.hours);
            // An award of no GPU-hours adds nothing, and leaves no entry to take out.
            if gpu_hours > 0 {
                step(
                    &mut self.awarded,
                    (day, award.provider.clone()),
                    gpu_hours,
                    add,
                );
            }
        }
        let (mut lapses, mut reoffers) = (0, 0);
        for offer in &need.offers {
            lapses += usize::from(offer.status == OfferStatus::Lapsed);
            reoffers += usize::from(offer.kind == OfferKind::Reoffer);
        }
        count(lapses, &mut self.lapses);
        count(reoffers, &mut self.reoffers);
        if let Some(first) = need.awards.iter().map(|a| a.decided_at).min() {
            let seconds = first.unix_seconds() - need.submitted_at.unix_seconds();
            step(&mut self.to_award, seconds, 1, add);
        }
    }
}

/// Every need's figures: what [`crate::state::State::figures`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    /// Needs by [`NeedState::status`].
    pub by_status: BTreeMap<NeedStatus, u64>,
    /// GPU-hours of live awards by the day (days since 1970-01-01) they were decided
    /// on, then provider.
    pub awarded: BTreeMap<i64, BTreeMap<ProviderId, u64>>,
    /// Offers to the holder that lapsed.
    pub lapses: u64,
    pub reoffers: u64,
    /// The median of the seconds from submission to first award, over needs with an
    /// award: of `k` such needs in order, the one at `k / 2` (from zero).
    pub median_seconds_to_award: Option<i64>,
}

impl Figures {
    /// The figures of `packed` and `unpacked` together. Reads each map once: the
    /// packed needs' map of times to award may be long.
    pub fn of(packed: &Tally, unpacked: &Tally) -> Figures {
        let mut by_status = packed.by_status.clone();
        for (status, n) in &unpacked.by_status {
            *by_status.entry(*status).or_default() += n;
        }
        let mut awarded: BTreeMap<i64, BTreeMap<ProviderId, u64>> = BTreeMap::new();
        for ((day, provider), hours) in packed.awarded.iter().chain(&unpacked.awarded) {
            *awarded
                .entry(*day)
                .or_default()
                .entry(provider.clone())
                .or_default() += hours;
        }
        Figures {
            by_status,
            awarded,
            lapses: packed.lapses + unpacked.lapses,
            reoffers: packed.reoffers + unpacked.reoffers,
            median_seconds_to_award: nth_of_two(&packed.to_award, &unpacked.to_award, |total| {
                total / 2
            }),
        }
    }
}

/// The value at place `place(k)` (from zero) of the `k` values that the two maps count,
/// in order; `None` where they count none.
fn nth_of_two(
    a: &BTreeMap<i64, u64>,
    b: &BTreeMap<i64, u64>,
    place: impl Fn(u64) -> u64,
) -> Option<i64> {
    let total: u64 = a.values().chain(b.values()).sum();
    if total == 0 {
        return None;
    }
    let wanted = place(total);
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    let mut passed = 0;
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 <= y.0 => a.next(),
            (Some(_), Some(_)) | (None, Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, None) => return None,
        };
        let (&value, &n) = next.expect("peeked");
        passed += n;
        if passed > wanted {
            return Some(value);
        }
    }
}

/// Each provider's percent of the GPU-hours in `hours`, and the HHI of those shares
/// (the sum of their squares, 0–10,000).
pub fn shares_of(hours: &BTreeMap<String, f64>) -> (BTreeMap<String, f64>, f64) {
    let total: f64 = hours.values().sum();
    let shares: BTreeMap<String, f64> = hours
        .iter()
        .map(|(p, h)| (p.clone(), if total > 0.0 { h / total * 100.0 } else { 0.0 }))
        .collect();
    let hhi = shares.values().map(|s| s * s).sum();
    (shares, hhi)
}

/// The tightest concentration cap `deal` puts on `provider`, in percent.
pub fn tightest_cap(deal: &crate::deal::Deal, provider: &str) -> Option<f64> {
    let id = ProviderId::parse(provider).ok()?;
    let holder = deal
        .first_refusals
        .iter()
        .any(|f| f.holder == id)
        .then_some(&id);
    deal.caps
        .iter()
        .filter(|c| c.applies_to(&id, holder))
        .map(|c| c.max_share * 100.0)
        .reduce(f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(values: &[i64]) -> BTreeMap<i64, u64> {
        let mut map = BTreeMap::new();
        for v in values {
            *map.entry(*v).or_default() += 1;
        }
        map
    }

    #[test]
    fn the_middle_of_two_counted_lists_is_the_middle_of_their_union() {
        let cases: [(&[i64], &[i64]); 6] = [
            (&[], &[]),
            (&[5], &[]),
            (&[], &[7, 1]),
            (&[1, 1, 9], &[2, 3]),
            (&[4, 4, 4, 4], &[1, 10]),
            (&[0, 100, 200], &[50, 150, 250, 300]),
        ];
        for (a, b) in cases {
            let mut all: Vec<i64> = a.iter().chain(b).copied().collect();
            all.sort();
            for place in [|k: u64| k / 2, |_| 0, |k: u64| k - 1] {
                let expected = (!all.is_empty()).then(|| all[place(all.len() as u64) as usize]);
                assert_eq!(
                    nth_of_two(&counts(a), &counts(b), place),
                    expected,
                    "{a:?} {b:?}"
                );
            }
        }
    }
}
