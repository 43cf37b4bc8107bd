//! The agenda: each need's next deadline, ordered by time, then by the need's number.
//! An ordered set, kept as one sorted list cut into blocks of at most [`BLOCK`]
//! entries, each block's entries all before the next block's.
//!
//! The standard ordered set held an entry in 34 bytes: its nodes are split in half when
//! full, and most deadlines come after most others, so nearly every node was left half
//! full. Here a full block first hands an entry to a neighbour with room, and splits
//! only when neither has any, so blocks fill up: an entry takes its 16 bytes and a
//! little of its block's spare room. An insertion or removal moves at most a block's
//! entries (1 KB): blocks of 256 made the simulator's runs a tenth slower, moving 4 KB.

use crate::types::Timestamp;

/// A deadline, and the number of the need it belongs to.
pub type Entry = (Timestamp, u32);

/// The most entries a block holds.
const BLOCK: usize = 64;

#[derive(Debug, Clone, Default)]
pub struct Agenda {
    /// Each block is non-empty and has room for exactly `BLOCK` entries.
    blocks: Vec<Vec<Entry>>,
    len: usize,
}

/// Two agendas are equal when they hold the same entries, however cut into blocks.
impl PartialEq for Agenda {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

fn block_with(entries: impl IntoIterator<Item = Entry>) -> Vec<Entry> {
    let mut block = Vec::with_capacity(BLOCK);
    block.extend(entries);
    block
}

impl Agenda {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The earliest entry.
    pub fn first(&self) -> Option<&Entry> {
        self.blocks.first().and_then(|block| block.first())
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.blocks.iter().flatten()
    }

    /// The entries from `from` on, in order.
    pub fn range_from(&self, from: Entry) -> impl Iterator<Item = &Entry> + '_ {
        let b = self.block_of(&from);
        let start = self
            .blocks
            .get(b)
            .map_or(0, |block| block.partition_point(|e| *e < from));
        self.blocks
            .get(b)
            .map_or(&[][..], |block| &block[start..])
            .iter()
            .chain(self.blocks.iter().skip(b + 1).flatten())
    }

    /// The block `entry` is in, or would go in: the last whose first entry is not
    /// after it (the first block, for an entry before every other).
    fn block_of(&self, entry: &Entry) -> usize {
        self.blocks
            .partition_point(|block| block[0] <= *entry)
            .saturating_sub(1)
    }

    /// Adds `entry`; false if it was there already.
    pub fn insert(&mut self, entry: Entry) -> bool {
        if self.blocks.is_empty() {
            self.blocks.push(block_with([entry]));
            self.len = 1;
            return true;
        }
        let b = self.block_of(&entry);
        let Err(at) = self.blocks[b].binary_search(&entry) else {
            return false;
        };
        self.len += 1;
        if self.blocks[b].len() < BLOCK {
            self.blocks[b].insert(at, entry);
            return true;
        }
        let last = self.blocks.len() - 1;
        if at > 0 && b > 0 && self.blocks[b - 1].len() < BLOCK {
            // The block's first entry comes after all of the block before.
            let first = self.blocks[b].remove(0);
            self.blocks[b - 1].push(first);
            self.blocks[b].insert(at - 1, entry);
        } else if b < last && self.blocks[b + 1].len() < BLOCK {
            // The block's last entry (or `entry`, after all of it) comes before all of
            // the block after.
            if at == BLOCK {
                self.blocks[b + 1].insert(0, entry);
            } else {
                let moved = self.blocks[b].pop().expect("a full block");
                self.blocks[b + 1].insert(0, moved);
                self.blocks[b].insert(at, entry);
            }
        } else if at == BLOCK && b == last {
            self.blocks.push(block_with([entry]));
        } else {
            let tail = block_with(self.blocks[b].drain(BLOCK / 2..));
            self.blocks.insert(b + 1, tail);
            if at <= BLOCK / 2 {
                self.blocks[b].insert(at, entry);
            } else {
                self.blocks[b + 1].insert(at - BLOCK / 2, entry);
            }
        }
        true
    }

    /// Takes `entry` out; false if it was not there.
    pub fn remove(&mut self, entry: &Entry) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        let b = self.block_of(entry);
        let Ok(at) = self.blocks[b].binary_search(entry) else {
            return false;
        };
        self.blocks[b].remove(at);
        self.len -= 1;
        let len = self.blocks[b].len();
        if len == 0 {
            self.blocks.remove(b);
        } else if len < BLOCK / 4 {
            // A block mostly emptied joins a neighbour with room for it, so that spare
            // room does not pile up where deadlines were taken out.
            if b > 0 && self.blocks[b - 1].len() + len <= BLOCK {
                let block = self.blocks.remove(b);
                self.blocks[b - 1].extend(block);
            } else if b + 1 < self.blocks.len() && self.blocks[b + 1].len() + len <= BLOCK {
                let next = self.blocks.remove(b + 1);
                self.blocks[b].extend(next);
            }
        }
        true
    }

    /// Room held for entries, in entries.
    #[cfg(test)]
    fn room(&self) -> usize {
        self.blocks.iter().map(Vec::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn entry(at: i64, number: u32) -> Entry {
        (Timestamp::from_unix_seconds(at), number)
    }

    /// Every block has room for exactly `BLOCK` and holds at least one entry.
    fn well_formed(agenda: &Agenda) -> bool {
        agenda
            .blocks
            .iter()
            .all(|b| !b.is_empty() && b.capacity() == BLOCK && b.len() <= BLOCK)
            && agenda.iter().count() == agenda.len()
            && agenda.iter().zip(agenda.iter().skip(1)).all(|(a, b)| a < b)
    }

    #[test]
    fn deadlines_after_all_others_fill_their_blocks() {
        let mut agenda = Agenda::default();
        for n in 0..100_000 {
            agenda.insert(entry(1_000, n));
        }
        assert!(well_formed(&agenda));
        assert!(
            agenda.room() <= 100_000 + BLOCK,
            "room for {}",
            agenda.room()
        );
    }

    /// The broker's pattern: each need's final deadline goes in before the offer
    /// deadlines of the needs still open, which come later.
    #[test]
    fn deadlines_just_before_a_few_later_ones_fill_their_blocks_too() {
        let mut agenda = Agenda::default();
        let open = 600;
        for n in 0..open {
            agenda.insert(entry(9_000, n));
        }
        for n in open..100_000 + open {
            agenda.insert(entry(9_000, n));
            agenda.remove(&entry(9_000, n - open));
            agenda.insert(entry(5_000, n - open));
        }
        assert!(well_formed(&agenda));
        assert_eq!(agenda.len(), 100_000 + open as usize);
        let room = agenda.room() as f64;
        assert!(room < 1.05 * agenda.len() as f64, "room for {room}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

        /// Inserts, removals and ranges as the standard ordered set gives them, over
        /// few distinct times (so that blocks fill and split) and many.
        #[test]
        fn it_orders_as_an_ordered_set(
            ops in prop::collection::vec((0u8..3, 0i64..40, 0u32..2_000), 1..3_000),
            spread in prop_oneof![Just(1i64), Just(1_000)],
        ) {
            let mut agenda = Agenda::default();
            let mut set = BTreeSet::new();
            for (op, at, number) in ops {
                let e = entry(at * spread, number);
                match op {
                    0 | 1 => prop_assert_eq!(agenda.insert(e), set.insert(e)),
                    _ => prop_assert_eq!(agenda.remove(&e), set.remove(&e)),
                }
                prop_assert_eq!(agenda.first(), set.first());
            }
            prop_assert!(well_formed(&agenda));
            prop_assert!(agenda.iter().eq(set.iter()));
            for at in [0, 7, 20, 39, 41] {
                for number in [0, 1_000, 2_001] {
                    let from = entry(at * spread, number);
                    prop_assert!(agenda.range_from(from).eq(set.range(from..)));
                }
            }
            // Emptied entry by entry, it holds no blocks.
            for e in set {
                prop_assert!(agenda.remove(&e));
            }
            prop_assert!(agenda.is_empty() && agenda.blocks.is_empty());
        }
    }
}
