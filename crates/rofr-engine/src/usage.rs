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
        self.spend_units as f64 / 10_000.0
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
}

fn bucket(at: Timestamp) -> i64 {
    at.unix_seconds().div_euclid(BUCKET)
}

/// "0" sorts before every need id but "0" itself, and no award has sequence 0.
fn first_key(at: Timestamp) -> (Timestamp, NeedId, u32) {
    static ZERO: std::sync::LazyLock<NeedId> =
        std::sync::LazyLock::new(|| NeedId::parse("0").expect("valid"));
    (at, ZERO.clone(), 0)
}

impl UsageLog {
    pub fn entries(&self) -> &BTreeMap<(Timestamp, NeedId, u32), (ProviderId, Usage)> {
        &self.entries
    }

    pub fn insert(&mut self, key: (Timestamp, NeedId, u32), provider: ProviderId, usage: Usage) {
        if let Some((old_provider, old)) = self.entries.remove(&key) {
            self.count(key.0, &old_provider, old, true);
        }
        if self.entries.is_empty() && self.everyone.buckets.is_empty() {
            self.origin = bucket(key.0);
        }
        if bucket(key.0) < self.origin {
            self.reindex(bucket(key.0));
        }
        self.count(key.0, &provider, usage, false);
        self.entries.insert(key, (provider, usage));
    }

    pub fn remove(&mut self, key: &(Timestamp, NeedId, u32)) {
        if let Some((provider, usage)) = self.entries.remove(key) {
            self.count(key.0, &provider, usage, true);
        }
    }

    fn count(&mut self, at: Timestamp, provider: &ProviderId, usage: Usage, negative: bool) {
        let index = (bucket(at) - self.origin) as usize;
        self.everyone.add(index, usage, negative);
        let tree = match self.providers.iter().position(|(p, _)| p == provider) {
            Some(i) => &mut self.providers[i].1,
            None => {
                self.providers.push((provider.clone(), Fenwick::default()));
                &mut self.providers.last_mut().expect("just pushed").1
            }
        };
        tree.add(index, usage, negative);
    }

    /// Starts the bucket index earlier, for an award decided before every other.
    fn reindex(&mut self, origin: i64) {
        let entries = std::mem::take(&mut self.entries);
        self.everyone = Fenwick::default();
        self.providers.clear();
        self.origin = origin;
        for ((at, need, seq), (provider, usage)) in entries {
            self.count(at, &provider, usage, false);
            self.entries.insert((at, need, seq), (provider, usage));
        }
    }

    /// Usage of everyone and of `provider` by awards decided at or after `from`
    /// (every award where `from` is `None`).
    pub fn since(&self, from: Option<Timestamp>, provider: &ProviderId) -> (Usage, Usage) {
        let own_tree = self
            .providers
            .iter()
            .find(|(p, _)| p == provider)
            .map(|(_, tree)| tree);
        let Some(from) = from else {
            return (
                self.everyone.total,
                own_tree.map_or(Usage::default(), |t| t.total),
            );
        };
        let first = bucket(from) - self.origin;
        // Whole buckets after the first, from the trees.
        let after = |tree: &Fenwick| {
            if first < 0 {
                tree.total
            } else {
                tree.total.minus(tree.prefix(first as usize))
            }
        };
        let mut all = after(&self.everyone);
        let mut own = own_tree.map_or(Usage::default(), after);
        // The first bucket from `from` on, entry by entry (none where it is empty).
        let occupied = usize::try_from(first)
            .ok()
            .and_then(|i| self.everyone.buckets.get(i))
            .is_some_and(|b| *b != Usage::default());
        if occupied {
            let next_bucket = Timestamp::from_unix_seconds((bucket(from) + 1) * BUCKET);
            for (who, usage) in self
                .entries
                .range(first_key(from)..first_key(next_bucket))
                .map(|(_, v)| v)
            {
                all = all.plus(*usage);
                if who == provider {
                    own = own.plus(*usage);
                }
            }
        }
        (all, own)
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

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        /// Window sums from the trees equal a scan of every entry, through inserts at
        /// any time (earlier than all others too) and removals.
        #[test]
        fn window_sums_equal_a_scan(
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
                        Timestamp::from_unix_seconds(1_700_000_000 + at),
                        NeedId::parse(&format!("n{i}")).unwrap(),
                        1,
                    );
                    let usage = Usage { gpu_hours: hours, spend_units: i128::from(hours) * 61_600 };
                    log.insert(key.clone(), providers[who as usize].clone(), usage);
                    keys.push(key);
                }
            }
            for probe in probes {
                let from = Some(Timestamp::from_unix_seconds(1_700_000_000 + probe));
                for provider in &providers {
                    prop_assert_eq!(log.since(from, provider), naive(&log, from, provider));
                    prop_assert_eq!(log.since(None, provider), naive(&log, None, provider));
                }
            }
        }
    }
}
