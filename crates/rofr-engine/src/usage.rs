//! Live awards by the time they were decided, with sums by hour kept in Fenwick trees
//! (one for everyone, one per provider) so that a cap over a rolling window costs
//! O(log hours) plus the awards of the window's first hour, not a scan of the window.
//! Sums are integers — GPU-hours, and spend in ten-thousandths of a dollar — so they
//! are exact whatever order awards come and go in.

use crate::types::{ProviderId, Timestamp};

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

/// An award's place in the log: when it was decided, and the number of the event that
/// recorded it (the state's count of events once that event was applied). Events are
/// applied in the log's order, so keys are unique and, as time goes on, each new key
/// is the largest yet and goes at the end of its hour.
pub type UsageKey = (Timestamp, u64);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageLog {
    /// The bucket index 0 stands for.
    origin: i64,
    everyone: Fenwick,
    /// One tree per provider; there are few, so a list searched in order.
    providers: Vec<(ProviderId, Fenwick)>,
    /// Every live award, by bucket (by index, as in the trees) and in order of key
    /// within it: a window rarely starts on the hour, and the part of its first hour
    /// that the trees cannot split is summed award by award. The awards are kept here
    /// once, and nowhere else. A sorted list rather than an ordered map: awards come in
    /// order of key, so each goes at the end, and a list holds one in 48 bytes where a
    /// map's half-full nodes took about 150. (Keyed by need and award number instead,
    /// the awards of one second came in no particular order, and placing each in the
    /// middle of its hour took 13% of the broker's writer at 200,000 needs.)
    hours: Vec<Vec<HourEntry>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HourEntry {
    at: Timestamp,
    event: u64,
    /// The provider's place in `providers`.
    place: u32,
    gpu_hours: i64,
    /// The spend's 128 bits as two halves: an `i128` field would align the entry to 16
    /// bytes and make it 64 bytes long.
    spend_units: [u64; 2],
}

impl HourEntry {
    fn key(&self) -> UsageKey {
        (self.at, self.event)
    }

    fn usage(&self) -> Usage {
        let [low, high] = self.spend_units;
        Usage {
            gpu_hours: self.gpu_hours,
            spend_units: ((u128::from(high) << 64) | u128::from(low)) as i128,
        }
    }
}

/// Where `key` is, or would go, in an hour's sorted list.
fn find(hour: &[HourEntry], key: UsageKey) -> Result<usize, usize> {
    hour.binary_search_by(|e| e.key().cmp(&key))
}

fn bucket(at: Timestamp) -> i64 {
    at.unix_seconds().div_euclid(BUCKET)
}

impl UsageLog {
    /// Every live award, in order of its key.
    pub fn entries(&self) -> impl Iterator<Item = (UsageKey, &ProviderId, Usage)> {
        self.hours.iter().flatten().map(|e| {
            let provider = &self.providers[e.place as usize].0;
            (e.key(), provider, e.usage())
        })
    }

    fn is_empty(&self) -> bool {
        self.hours.iter().all(Vec::is_empty)
    }

    /// Whether `key` would go after every award of its hour (and so is not here).
    fn goes_last(&self, key: UsageKey) -> bool {
        let Ok(index) = usize::try_from(bucket(key.0) - self.origin) else {
            return false;
        };
        self.hours
            .get(index)
            .and_then(|hour| hour.last())
            .is_none_or(|last| last.key() < key)
    }

    pub fn insert(&mut self, key: UsageKey, provider: ProviderId, usage: Usage) {
        // A key already here is replaced. New awards go last, and need no search.
        if !self.goes_last(key) {
            self.remove(key);
        }
        if self.everyone.buckets.is_empty() && self.is_empty() {
            self.origin = bucket(key.0);
        }
        if bucket(key.0) < self.origin {
            self.reindex(bucket(key.0));
        }
        let index = (bucket(key.0) - self.origin) as usize;
        let place = match self.providers.iter().position(|(p, _)| *p == provider) {
            Some(i) => i,
            None => {
                self.providers.push((provider, Fenwick::default()));
                self.providers.len() - 1
            }
        };
        self.count(index, place, usage, false);
        if index >= self.hours.len() {
            self.hours.resize_with(index + 1, Vec::new);
        }
        let hour = &mut self.hours[index];
        let (at, event) = key;
        let entry = HourEntry {
            at,
            event,
            place: place as u32,
            gpu_hours: usage.gpu_hours,
            spend_units: [usage.spend_units as u64, (usage.spend_units >> 64) as u64],
        };
        match hour.last() {
            Some(last) if last.key() >= entry.key() => {
                // Removed above if it was there: the key is new.
                let at = find(hour, entry.key()).unwrap_or_else(|at| at);
                hour.insert(at, entry);
            }
            _ => hour.push(entry),
        }
    }

    pub fn remove(&mut self, key: UsageKey) {
        let Ok(index) = usize::try_from(bucket(key.0) - self.origin) else {
            return;
        };
        let Some(hour) = self.hours.get_mut(index) else {
            return;
        };
        if let Ok(at) = find(hour, key) {
            let entry = hour.remove(at);
            self.count(index, entry.place as usize, entry.usage(), true);
        }
    }

    fn count(&mut self, index: usize, place: usize, usage: Usage, negative: bool) {
        self.everyone.add(index, usage, negative);
        self.providers[place].1.add(index, usage, negative);
    }

    /// Starts the bucket index earlier, for an award decided before every other.
    fn reindex(&mut self, origin: i64) {
        let shift = (self.origin - origin) as usize;
        self.everyone = Fenwick::default();
        for (_, tree) in &mut self.providers {
            *tree = Fenwick::default();
        }
        self.origin = origin;
        let hours = std::mem::take(&mut self.hours);
        self.hours.resize_with(shift, Vec::new);
        for (index, hour) in hours.into_iter().enumerate() {
            for entry in &hour {
                self.count(index + shift, entry.place as usize, entry.usage(), false);
            }
            self.hours.push(hour);
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
    /// the first bucket award by award (only `place`'s, where given).
    fn window(&self, tree: &Fenwick, place: Option<usize>, from: Option<Timestamp>) -> Usage {
        let Some(from) = from else {
            return tree.total;
        };
        let first = bucket(from) - self.origin;
        let Ok(first) = usize::try_from(first) else {
            return tree.total;
        };
        let mut sum = tree.total.minus(tree.prefix(first));
        if let Some(hour) = self.hours.get(first) {
            // In order within the hour: the awards from `from` on are the last ones.
            let start = hour.partition_point(|e| e.at < from);
            for entry in &hour[start..] {
                if place.is_none_or(|p| p == entry.place as usize) {
                    sum = sum.plus(entry.usage());
                }
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
        for ((at, _), who, usage) in log.entries() {
            if from.is_none_or(|f| at >= f) {
                all = all.plus(usage);
                if who == provider {
                    own = own.plus(usage);
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

    #[test]
    fn an_hour_entry_takes_48_bytes_and_keeps_its_spend_whole() {
        assert_eq!(std::mem::size_of::<HourEntry>(), 48);
        let provider = ProviderId::parse("a").unwrap();
        for (event, spend_units) in [0i128, 69_800, -5, i128::MAX, i128::MIN, 1 << 64, -(1 << 70)]
            .into_iter()
            .enumerate()
        {
            let mut log = UsageLog::default();
            let key = (Timestamp::from_unix_seconds(1_700_000_000), event as u64);
            let usage = Usage {
                gpu_hours: 7,
                spend_units,
            };
            log.insert(key, provider.clone(), usage);
            let kept: Vec<_> = log.entries().map(|(k, _, u)| (k, u)).collect();
            assert_eq!(kept, vec![(key, usage)]);
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
            ops in prop::collection::vec((0i64..400 * 86_400, 0u8..3, 1i64..5000, 0u8..3), 1..120),
            probes in prop::collection::vec(-10i64..420 * 86_400, 1..20),
        ) {
            let mut log = UsageLog::default();
            let providers: Vec<ProviderId> =
                ["a", "b", "c"].iter().map(|p| ProviderId::parse(p).unwrap()).collect();
            let mut keys = Vec::new();
            for (i, (at, who, hours, op)) in ops.into_iter().enumerate() {
                let usage = Usage { gpu_hours: hours, spend_units: i128::from(hours) * 61_600 };
                if op == 1 && !keys.is_empty() {
                    let key = keys.remove(i % keys.len());
                    log.remove(key);
                } else if op == 2 && !keys.is_empty() {
                    // The same award again, counted anew: it replaces the one there.
                    let key = keys[i % keys.len()];
                    log.insert(key, providers[who as usize].clone(), usage);
                } else {
                    let key = (Timestamp::from_unix_seconds(1_700_000_000 + at % span), i as u64);
                    log.insert(key, providers[who as usize].clone(), usage);
                    keys.push(key);
                }
            }
            prop_assert_eq!(log.entries().count(), keys.len());
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
