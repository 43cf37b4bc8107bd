//! Live awards by the time they were decided, with sums by hour kept in Fenwick trees
//! (one for everyone, one per provider) so that a cap over a rolling window costs
//! O(log hours) plus the awards of the window's first hour, not a scan of the window.
//! Sums are integers — GPU-hours, and spend in ten-thousandths of a dollar — so they
//! are exact whatever order awards come and go in.

use crate::types::{Price, ProviderId, Timestamp};

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
    /// map's half-full nodes took about 150 (and 32 since each keeps its price rather
    /// than its spend, and its second within the hour). (Keyed by need and award number instead,
    /// the awards of one second came in no particular order, and placing each in the
    /// middle of its hour took 13% of the broker's writer at 200,000 needs.)
    hours: Vec<Vec<HourEntry>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HourEntry {
    event: u64,
    gpu_hours: i64,
    /// The price per GPU-hour: the spend is the GPU-hours times it, worked out when
    /// summed (a 128-bit spend took 16 bytes).
    price: Price,
    /// The provider's place in `providers`.
    place: u32,
    /// When it was decided, as the second within its hour (the hour is the list's).
    second: u32,
}

impl HourEntry {
    /// Its key, given the bucket it is in.
    fn key(&self, bucket: i64) -> UsageKey {
        let at = Timestamp::from_unix_seconds(bucket * BUCKET + i64::from(self.second));
        (at, self.event)
    }

    /// Its order within its hour: as its key orders it.
    fn order(&self) -> (u32, u64) {
        (self.second, self.event)
    }

    fn usage(&self) -> Usage {
        Usage {
            gpu_hours: self.gpu_hours,
            spend_units: i128::from(self.gpu_hours) * i128::from(self.price.units()),
        }
    }
}

/// The order within its hour of an award with key `key`.
fn order_of(key: UsageKey) -> (u32, u64) {
    (second_of(key.0), key.1)
}

fn second_of(at: Timestamp) -> u32 {
    at.unix_seconds().rem_euclid(BUCKET) as u32
}

/// Where `key` is, or would go, in its hour's sorted list.
fn find(hour: &[HourEntry], key: UsageKey) -> Result<usize, usize> {
    let order = order_of(key);
    hour.binary_search_by(|e| e.order().cmp(&order))
}

fn bucket(at: Timestamp) -> i64 {
    at.unix_seconds().div_euclid(BUCKET)
}

impl UsageLog {
    /// Every live award, in order of its key.
    pub fn entries(&self) -> impl Iterator<Item = (UsageKey, &ProviderId, Usage)> {
        self.hours
            .iter()
            .enumerate()
            .flat_map(move |(index, hour)| {
                let bucket = self.origin + index as i64;
                hour.iter().map(move |e| {
                    let provider = &self.providers[e.place as usize].0;
                    (e.key(bucket), provider, e.usage())
                })
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
            .is_none_or(|last| last.order() < order_of(key))
    }

    /// Counts an award of `gpu_hours` at `price` per GPU-hour to `provider`.
    pub fn insert(&mut self, key: UsageKey, provider: ProviderId, gpu_hours: i64, price: Price) {
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
        let entry = HourEntry {
            event: key.1,
            gpu_hours,
            price,
            place: 0,
            second: second_of(key.0),
        };
        let usage = entry.usage();
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
        let entry = HourEntry {
            place: place as u32,
            ..entry
        };
        match hour.last() {
            Some(last) if last.order() >= entry.order() => {
                // Removed above if it was there: the key is new.
                let at = find(hour, key).unwrap_or_else(|at| at);
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
            let second = second_of(from);
            let start = hour.partition_point(|e| e.second < second);
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
    fn an_hour_entry_takes_32_bytes_and_keeps_its_key_and_spend_whole() {
        assert_eq!(std::mem::size_of::<HourEntry>(), 32);
        let provider = ProviderId::parse("a").unwrap();
        let cases = [
            (0, 0),
            (7, 69_800),
            (-5, 3),
            (i64::MAX, Price::MAX.units()),
            (i64::MIN, Price::MAX.units()),
            (1 << 40, 1 << 30),
        ];
        // Times on the hour, just before it, and before 1970 (negative seconds).
        let times = [1_700_000_000i64, 1_699_999_200, 1_700_003_599, -1, -3_601];
        for (event, ((gpu_hours, price), at)) in cases
            .into_iter()
            .flat_map(|case| times.map(move |at| (case, at)))
            .enumerate()
        {
            let mut log = UsageLog::default();
            let key = (Timestamp::from_unix_seconds(at), event as u64);
            log.insert(
                key,
                provider.clone(),
                gpu_hours,
                Price::from_ten_thousandths(price),
            );
            let usage = Usage {
                gpu_hours,
                spend_units: i128::from(gpu_hours) * i128::from(price),
            };
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
                let price = Price::from_ten_thousandths(61_600 + 7 * u64::from(who) + at as u64 % 5);
                if op == 1 && !keys.is_empty() {
                    let key = keys.remove(i % keys.len());
                    log.remove(key);
                } else if op == 2 && !keys.is_empty() {
                    // The same award again, counted anew: it replaces the one there.
                    let key = keys[i % keys.len()];
                    log.insert(key, providers[who as usize].clone(), hours, price);
                } else {
                    let key = (Timestamp::from_unix_seconds(1_700_000_000 + at % span), i as u64);
                    log.insert(key, providers[who as usize].clone(), hours, price);
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
