//! Live awards by the time they were decided, with sums by hour kept in Fenwick trees
//! (one for everyone, one per provider) so that a cap over a rolling window costs
//! O(log hours) plus the awards of the window's first hour, not a scan of the window.
//! Sums are integers — GPU-hours, and spend in ten-thousandths of a dollar — so they
//! are exact whatever order awards come and go in.

use std::collections::BTreeMap;

use crate::types::{NeedId, ProviderId, Timestamp};

/// The width of a bucket, in seconds.
const BUCKET: i64 = 3_600;

/// What one live award counts for caps and shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub gpu_hours: i64,
    /// Spend in ten-thousandths of a dollar.
    pub spend_units: i128,
}

impl Usage {
    pub fn spend(self) -> f64 {
        // Through i64 where it fits: the same value, converted by the processor rather
        // than by a library routine for 128-bit integers.
        let units = match i64::try_from(self.spend_units) {
            Ok(units) => units as f64,
            Err(_) => self.spend_units as f64,
        };
        units / 10_000.0
    }

    fn plus(self, other: Usage) -> Usage {
        Usage {
            gpu_hours: self.gpu_hours + other.gpu_hours,
            spend_units: self.spend_units + other.spend_units,
        }
    }

    fn minus(self, other: Usage) -> Usage {
        Usage {
            gpu_hours: self.gpu_hours - other.gpu_hours,
            spend_units: self.spend_units - other.spend_units,
        }
    }
}

/// Sums by bucket index, with prefix sums in O(log n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fenwick {
    buckets: Vec<Usage>,
    tree: Vec<Usage>,
    total: Usage,
}

impl Fenwick {
    fn add(&mut self, index: usize, amount: Usage, negative: bool) {
        if index >= self.buckets.len() {
            self.buckets
                .resize((index + 1).next_power_of_two().max(64), Usage::default());
            self.rebuild();
        }
        let apply = |u: Usage| {
            if negative {
                u.minus(amount)
            } else {
                u.plus(amount)
            }
        };
        self.buckets[index] = apply(self.buckets[index]);
        self.total = apply(self.total);
        let mut i = index + 1;
        while i <= self.tree.len() {
            self.tree[i - 1] = apply(self.tree[i - 1]);
            i += i & i.wrapping_neg();
        }
    }

    fn rebuild(&mut self) {
        self.tree = self.buckets.clone();
        for i in 1..=self.tree.len() {
            let parent = i + (i & i.wrapping_neg());
            if parent <= self.tree.len() {
                self.tree[parent - 1] = self.tree[parent - 1].plus(self.tree[i - 1]);
            }
        }
    }

    /// The sum of buckets `0..=index`.
    fn prefix(&self, index: usize) -> Usage {
        let mut sum = Usage::default();
        let mut i = (index + 1).min(self.tree.len());
        while i > 0 {
            sum = sum.plus(self.tree[i - 1]);
            i -= i & i.wrapping_neg();
        }
        sum
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageLog {
    entries: BTreeMap<(Timestamp, NeedId, u32), (ProviderId, Usage)>,
    /// The bucket index 0 stands for.
    origin: i64,
    everyone: Fenwick,
    /// One tree per provider; there are few, so a list searched in order.
    providers: Vec<(ProviderId, Fenwick)>,
    /// The entries of each bucket (by index, as in the trees), for the part of a
    /// window's first hour that the trees cannot split: a window rarely starts on the
    /// hour. Each names its provider by its place in `providers`.
    hours: Vec<Vec<HourEntry>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HourEntry {
    key: (Timestamp, NeedId, u32),
    provider: usize,
    usage: Usage,
}

fn bucket(at: Timestamp) -> i64 {
    at.unix_seconds().div_euclid(BUCKET)
}

impl UsageLog {
    pub fn entries(&self) -> &BTreeMap<(Timestamp, NeedId, u32), (ProviderId, Usage)> {
        &self.entries
    }

    pub fn insert(&mut self, key: (Timestamp, NeedId, u32), provider: ProviderId, usage: Usage) {
        self.remove(&key);
        if self.entries.is_empty() && self.everyone.buckets.is_empty() {
            self.origin = bucket(key.0);
        }
        if bucket(key.0) < self.origin {
            self.reindex(bucket(key.0));
        }
        self.count(&key, &provider, usage, false);
        self.entries.insert(key, (provider, usage));
    }

    pub fn remove(&mut self, key: &(Timestamp, NeedId, u32)) {
        if let Some((provider, usage)) = self.entries.remove(key) {
            self.count(key, &provider, usage, true);
        }
    }

    fn count(
        &mut self,
        key: &(Timestamp, NeedId, u32),
        provider: &ProviderId,
        usage: Usage,
        negative: bool,
    ) {
        let index = (bucket(key.0) - self.origin) as usize;
        self.everyone.add(index, usage, negative);
        let place = match self.providers.iter().position(|(p, _)| p == provider) {
            Some(i) => i,
            None => {
                self.providers.push((provider.clone(), Fenwick::default()));
                self.providers.len() - 1
            }
        };
        self.providers[place].1.add(index, usage, negative);
        if index >= self.hours.len() {
            self.hours.resize_with(index + 1, Vec::new);
        }
        let hour = &mut self.hours[index];
        if negative {
            if let Some(i) = hour.iter().position(|e| &e.key == key) {
                hour.swap_remove(i);
            }
        } else {
            hour.push(HourEntry {
                key: key.clone(),
                provider: place,
                usage,
            });
        }
    }

    /// Starts the bucket index earlier, for an award decided before every other.
    fn reindex(&mut self, origin: i64) {
        let entries = std::mem::take(&mut self.entries);
        self.everyone = Fenwick::default();
        self.providers.clear();
        self.hours.clear();
        self.origin = origin;
        for (key, (provider, usage)) in entries {
            self.count(&key, &provider, usage, false);
            self.entries.insert(key, (provider, usage));
        }
    }

    /// Everyone's usage by awards decided at or after `from` (every award where `from`
    /// is `None`).
    pub fn since_all(&self, from: Option<Timestamp>) -> Usage {
        self.window(&self.everyone, None, from)
    }

    /// `provider`'s usage by awards decided at or after `from`.
    pub fn since_own(&self, from: Option<Timestamp>, provider: &ProviderId) -> Usage {
        match self.providers.iter().position(|(p, _)| p == provider) {
            Some(place) => self.window(&self.providers[place].1, Some(place), from),
            None => Usage::default(),
        }
    }

    /// The sum of `tree` from `from` on: whole buckets after the first from the tree,
    /// the first bucket entry by entry (only `place`'s entries, where given).
    fn window(&self, tree: &Fenwick, place: Option<usize>, from: Option<Timestamp>) -> Usage {
        let Some(from) = from else {
            return tree.total;
        };
        let first = bucket(from) - self.origin;
        let Ok(first) = usize::try_from(first) else {
            return tree.total;
        };
        let mut sum = tree.total.minus(tree.prefix(first));
        for entry in self.hours.get(first).map_or(&[][..], Vec::as_slice) {
            if entry.key.0 >= from && place.is_none_or(|p| p == entry.provider) {
                sum = sum.plus(entry.usage);
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(log: &UsageLog, from: Option<Timestamp>, provider: &ProviderId) -> (Usage, Usage) {
        let mut all = Usage::default();
        let mut own = Usage::default();
        for ((at, _, _), (who, usage)) in log.entries() {
            if from.is_none_or(|f| *at >= f) {
                all = all.plus(*usage);
                if who == provider {
                    own = own.plus(*usage);
                }
            }
        }
        (all, own)
    }

    #[test]
    fn spend_converts_exactly_within_and_beyond_64_bits() {
        for units in [
            0i128,
            69_800,
            -5,
            i128::from(i64::MAX),
            i128::from(i64::MAX) * 4 + 3,
        ] {
            let usage = Usage {
                gpu_hours: 0,
                spend_units: units,
            };
            assert_eq!(usage.spend(), units as f64 / 10_000.0, "{units}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// Window sums from the trees equal a scan of every entry, through inserts at
        /// any time (earlier than all others too) and removals.
        #[test]
        fn window_sums_equal_a_scan(
            // Awards over a year, or crowded into a few hours so that windows often
            // start inside an occupied hour.
            span in prop_oneof![Just(400 * 86_400i64), Just(4 * 3_600i64)],
            ops in prop::collection::vec((0i64..400 * 86_400, 0u8..3, 1i64..5000, any::<bool>()), 1..120),
            probes in prop::collection::vec(-10i64..420 * 86_400, 1..20),
        ) {
            let mut log = UsageLog::default();
            let providers: Vec<ProviderId> =
                ["a", "b", "c"].iter().map(|p| ProviderId::parse(p).unwrap()).collect();
            let mut keys = Vec::new();
            for (i, (at, who, hours, remove)) in ops.into_iter().enumerate() {
                if remove && !keys.is_empty() {
                    let key = keys.remove(i % keys.len());
                    log.remove(&key);
                } else {
                    let key = (
                        Timestamp::from_unix_seconds(1_700_000_000 + at % span),
                        NeedId::parse(&format!("n{i}")).unwrap(),
                        1,
                    );
                    let usage = Usage { gpu_hours: hours, spend_units: i128::from(hours) * 61_600 };
                    log.insert(key.clone(), providers[who as usize].clone(), usage);
                    keys.push(key);
                }
            }
            // Windows starting at random seconds, and exactly at awards' times.
            let starts = probes
                .iter()
                .map(|p| Timestamp::from_unix_seconds(1_700_000_000 + p % (span + 7_200)))
                .chain(keys.iter().map(|k| k.0));
            for start in starts {
                let from = Some(start);
                for provider in &providers {
                    prop_assert_eq!((log.since_all(from), log.since_own(from, provider)), naive(&log, from, provider));
                    prop_assert_eq!((log.since_all(None), log.since_own(None, provider)), naive(&log, None, provider));
                }
            }
        }
    }
}
