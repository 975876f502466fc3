//! `SlotTable`: one shard's index under [`super::RecordTable`], client hash to record
//! position, in open addressing with linear probing.
//!
//! Each slot is one 8-byte word holding both the client hash and the record's position, and
//! a client is looked for from its home slot onwards until an empty slot: looking a new
//! client up and writing its slot touch one cache line (a table with a separate array of
//! control bytes touches two), and where that line is can be computed before it is needed,
//! so that the store can have it fetched ([`SlotTable::prefetch`]) while it does other work.
//! At millions of clients the index no longer fits in the processor's caches, and under
//! IAMAT load from new clients these fetches from memory were the store's largest cost.
//!
//! An empty slot is the word 0 (positions are kept plus one), so a new table is a zeroed
//! allocation: taken from fresh memory, as a large one usually is, it is not written up
//! front, and the kernel fills its pages in as they are touched.

/// Slots in use at most, as a fraction of the table: past 3/4, linear probing's runs
/// grow long (an unsuccessful search reads 8.5 slots on average at 3/4, 32 at 7/8).
const MAX_LOAD_NUM: usize = 3;
const MAX_LOAD_DEN: usize = 4;

/// A client's place in the index: its hash and where its record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    /// The record's position in the table's chunks (below `u32::MAX`).
    pub(super) record: u32,
    /// The client hash.
    pub(super) client_hash: u32,
}

impl Slot {
    fn word(self) -> u64 {
        (u64::from(self.client_hash) << 32) | u64::from(self.record + 1)
    }

    /// The slot a word holds; `None` for an empty one.
    fn of_word(word: u64) -> Option<Slot> {
        let record = (word as u32).checked_sub(1)?;
        Some(Slot {
            record,
            client_hash: (word >> 32) as u32,
        })
    }
}

/// An open-addressing table of slots, a power of two in size.
#[derive(Default)]
pub(super) struct SlotTable {
    words: Box<[u64]>,
    len: usize,
}

impl SlotTable {
    /// A table with room for at least `capacity` slots.
    pub(super) fn with_capacity(capacity: usize) -> SlotTable {
        let buckets = (capacity * MAX_LOAD_DEN)
            .div_ceil(MAX_LOAD_NUM)
            .next_power_of_two();
        SlotTable {
            // Zeroed: every slot empty.
            words: vec![0; buckets].into_boxed_slice(),
            len: 0,
        }
    }

    /// How many slots are in use.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Whether no slot is in use.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many slots the table takes before it is full.
    pub(super) fn capacity(&self) -> usize {
        self.words.len() / MAX_LOAD_DEN * MAX_LOAD_NUM
    }

    /// How many slots the table has, used or not.
    pub(super) fn buckets(&self) -> usize {
        self.words.len()
    }

    /// Where the search for `client_hash` starts: the top bits of a multiplicative hash,
    /// which depend on all of the client hash (the shard was picked by its own top bits).
    fn home(&self, client_hash: u32) -> usize {
        let spread = u64::from(client_hash).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let bits = self.words.len().trailing_zeros();
        if bits == 0 {
            return 0;
        }
        (spread >> (64 - bits)) as usize
    }

    /// Has the processor fetch the cache line where the search for `client_hash` starts,
    /// without waiting for it: a later [`SlotTable::find`] or insert then finds it cached.
    pub(super) fn prefetch(&self, client_hash: u32) {
        if let Some(word) = self.words.get(self.home(client_hash)) {
            prefetch(word);
        }
    }

    /// The slot of `client_hash` for which `same_client` says yes, looking only at slots
    /// from `moved` on: those before it were emptied by a growth (see
    /// [`SlotTable::take`]), and a run of slots that went through them goes on after them.
    pub(super) fn find(
        &self,
        client_hash: u32,
        moved: usize,
        same_client: impl Fn(Slot) -> bool,
    ) -> Option<Slot> {
        let mask = self.words.len().checked_sub(1)?;
        let mut at = self.home(client_hash);
        // Every slot at most once: a table emptied in part may have no empty slot left
        // past `moved`.
        for _ in 0..self.words.len() {
            if at < moved {
                at = moved;
            }
            let slot = Slot::of_word(*self.words.get(at)?)?;
            if slot.client_hash == client_hash && same_client(slot) {
                return Some(slot);
            }
            at = (at + 1) & mask;
        }
        None
    }

    /// Puts a slot for a client that has none, in the first empty slot from its home.
    /// The caller makes sure there is room (`len() < capacity()`), and that nothing was
    /// taken out of this table.
    pub(super) fn insert(&mut self, slot: Slot) {
        let Some(mask) = self.words.len().checked_sub(1) else {
            return;
        };
        let mut at = self.home(slot.client_hash);
        for _ in 0..self.words.len() {
            let Some(word) = self.words.get_mut(at) else {
                return;
            };
            if *word == 0 {
                *word = slot.word();
                self.len += 1;
                return;
            }
            at = (at + 1) & mask;
        }
    }

    /// Empties slot `bucket`, giving what it held. Only for a table being emptied from its
    /// first slot onwards, whose searches skip the slots before the next one to take.
    pub(super) fn take(&mut self, bucket: usize) -> Option<Slot> {
        let word = self.words.get_mut(bucket)?;
        let slot = Slot::of_word(std::mem::take(word))?;
        self.len -= 1;
        Some(slot)
    }
}

/// Asks for the cache line of `word` to be fetched, where the processor has a way to.
#[inline(always)]
fn prefetch(word: &u64) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: the intrinsic is unsafe only for needing SSE, which every x86_64 processor
        // has; a prefetch never faults, and `word` is a live reference anyway.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(word).cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = word;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(record: u32, client_hash: u32) -> Slot {
        Slot {
            record,
            client_hash,
        }
    }

    #[test]
    fn a_slot_is_found_by_its_hash_and_the_callers_test() {
        let mut table = SlotTable::with_capacity(16);
        // Two clients with one hash: the caller's test tells them apart.
        table.insert(slot(0, 7));
        table.insert(slot(1, 7));
        table.insert(slot(2, 9));
        assert_eq!(table.find(7, 0, |s| s.record == 1), Some(slot(1, 7)));
        assert_eq!(table.find(7, 0, |s| s.record == 0), Some(slot(0, 7)));
        assert_eq!(table.find(9, 0, |_| true), Some(slot(2, 9)));
        assert_eq!(table.find(8, 0, |_| true), None);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn the_largest_position_and_hash_survive_the_word() {
        let mut table = SlotTable::with_capacity(4);
        table.insert(slot(u32::MAX - 1, u32::MAX));
        table.insert(slot(0, 0));
        assert_eq!(
            table.find(u32::MAX, 0, |_| true),
            Some(slot(u32::MAX - 1, u32::MAX))
        );
        assert_eq!(table.find(0, 0, |_| true), Some(slot(0, 0)));
    }

    #[test]
    fn a_table_holds_its_capacity_and_has_room_at_three_quarters() {
        let table = SlotTable::with_capacity(100);
        assert!(table.capacity() >= 100);
        assert_eq!(table.capacity(), table.buckets() / 4 * 3);
        assert!(table.is_empty());
        assert_eq!(SlotTable::default().find(1, 0, |_| true), None);
    }

    /// Taking slots from the first onwards, as a growth does, leaves every slot not taken
    /// findable, also those whose run started in the part taken or wrapped around the end.
    #[test]
    fn slots_stay_findable_while_the_table_is_emptied_from_its_start() {
        let mut table = SlotTable::with_capacity(48);
        let end = table.buckets() - 1;
        // A dozen clients whose search starts at the last slot, so that their run wraps
        // around to the first slots, then others anywhere.
        let mut hashes: Vec<u32> = (0..u32::MAX)
            .filter(|&h| table.home(h) == end)
            .take(12)
            .collect();
        hashes.extend(
            (0..)
                .map(|i: u32| i.wrapping_mul(2_654_435_761))
                .take(table.capacity() - 12),
        );
        for (record, &hash) in hashes.iter().enumerate() {
            table.insert(slot(record as u32, hash));
        }
        let first = Slot::of_word(table.words[0]).map(|s| table.home(s.client_hash));
        assert_eq!(first, Some(end), "no run wraps around the end");
        let mut taken = Vec::new();
        for moved in 0..=table.buckets() {
            for (record, &hash) in hashes.iter().enumerate() {
                let found = table.find(hash, moved, |s| s.record == record as u32);
                assert_eq!(
                    found.is_some(),
                    !taken.contains(&(record as u32)),
                    "record {record} with {moved} slots taken"
                );
            }
            if let Some(s) = table.take(moved) {
                taken.push(s.record);
            }
        }
        assert!(table.is_empty());
        assert_eq!(taken.len(), hashes.len());
    }
}
