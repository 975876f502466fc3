//! `RecordTable`: the latest record of each client, kept so that storing one costs little
//! and the table grows without stopping the server.
//!
//! Records live in chunks, appended in the order their clients were first seen; an index
//! (`slots`) maps each client to its record by position. A new client's record is written
//! at the end of the last chunk, next to the one before it, and its slot in the index takes
//! 8 bytes: at millions of clients a table of the 40-byte records themselves cost two trips
//! to memory per new client, where the index costs one, which the store can have made
//! ahead of time ([`RecordTable::prefetch`]).
//!
//! A hash table that doubles moves every entry at once, and at millions of clients that is
//! tens of milliseconds in which no client is answered (measured with one table of records:
//! the slowest IAMAT of a 5 s load took 20, 37 and 70 ms as a store grew past 1, 2 and 4
//! million slots). So the index is cut in `SHARDS` shards by client hash, and a shard
//! that doubles only allocates its bigger table; the entries of the old one move a few
//! buckets at a time, with every record offered to that shard, as Redis's dict rehashes.
//! Until the old table is empty a client is looked for in both, and each client is in
//! exactly one of them. The shards keep even the allocation small (a table whose memory is
//! all written when it is made, 32 MB for an index of 15 million clients in one piece,
//! stalled a pipelined load for 35-97 ms; a shard's table is besides a zeroed allocation,
//! which fresh memory gives without writing it).
//! The chunks never move.

mod slots;

use crate::protocol::{self, Record};
use slots::{Slot, SlotTable};

/// Shards of the index, picked by the top bits of the client hash.
const SHARDS: usize = 64;

/// Buckets of a shard's old table moved with each offer to the shard while it grows.
///
/// The new table has twice the buckets, B of the old become 2B, and room for 3/4 of them,
/// 1.5B entries; the old holds at most 3/4 B. So its B buckets must be emptied within the
/// 3/4 B offers that could fill the new one: at least 2 buckets per offer. More is cheaper
/// in all: while the old table is there every new client is looked for in it too.
const BUCKETS_MOVED_PER_OFFER: usize = 64;

/// The smallest table a shard grows into.
const MIN_CAPACITY: usize = 16;

/// Records per chunk: 2.5 MB of them, so a chunk is its own allocation (its pages are
/// touched as it fills) and there are few enough to find a record in two steps.
const CHUNK_RECORDS: usize = 1 << 16;

/// The latest record per client. Each client's id is inside its record, not stored again
/// (a server may hold millions of records), and the index holds the id's hash, so growing
/// reads no records.
pub struct RecordTable {
    /// The records, [`CHUNK_RECORDS`] to a chunk (every chunk but the last is full).
    chunks: Vec<Vec<Record>>,
    /// Where each client's record is, in [`SHARDS`] shards.
    shards: Box<[Shard]>,
    /// How many shards are growing (asked after every `Store`: cheaper than looking).
    growing: usize,
    /// The bytes of the records' AT lines, each with its line ending: what a file of the
    /// records held would take.
    line_bytes: u64,
}

impl Default for RecordTable {
    fn default() -> Self {
        RecordTable {
            chunks: Vec::new(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            growing: 0,
            line_bytes: 0,
        }
    }
}

/// One shard of the index: its table, and the one it is growing out of.
#[derive(Default)]
struct Shard {
    /// Where new slots go, and once a growth is over, the only table.
    current: SlotTable,
    /// The table being emptied into `current`, if a growth is under way.
    growth: Option<Growth>,
}

/// The old table of a growth, and how far it has been emptied.
struct Growth {
    old: SlotTable,
    /// The next of `old`'s buckets to move; those before it are empty.
    next_bucket: usize,
}

/// The shard of a client hash: its top bits (the tables use all of it).
fn shard_of(client_hash: u32) -> usize {
    (client_hash >> (32 - SHARDS.trailing_zeros())) as usize
}

impl RecordTable {
    /// Stores `record` if it supersedes the one held for its client (newer wins);
    /// says whether it did.
    pub fn offer(&mut self, record: Record) -> bool {
        let client_hash = record.client_hash();
        let shard = shard_of(client_hash);
        if let Some(shard) = self.shards.get_mut(shard) {
            let was_growing = shard.growth.is_some();
            shard.make_room();
            match (was_growing, shard.growth.is_some()) {
                (false, true) => self.growing += 1,
                (true, false) => self.growing -= 1,
                _ => {}
            }
        }
        match self.find(client_hash, record.client()) {
            Some(slot) => {
                let (old, new) = match self.record_mut(slot) {
                    Some(held) if record.supersedes(held) => {
                        let old = held.line().len() as u64;
                        let new = record.line().len() as u64;
                        *held = record;
                        (old, new)
                    }
                    _ => return false,
                };
                self.line_bytes = self.line_bytes - old + new;
                true
            }
            None => {
                // Four billion records would take hundreds of gigabytes; past that, none.
                let Some(position) = u32::try_from(self.len()).ok().filter(|&p| p < u32::MAX)
                else {
                    return false;
                };
                let Some(shard) = self.shards.get_mut(shard) else {
                    return false;
                };
                let slot = Slot {
                    record: position,
                    client_hash,
                };
                self.line_bytes += record.line().len() as u64 + 1;
                shard.current.insert(slot);
                match self.chunks.last_mut() {
                    Some(chunk) if chunk.len() < CHUNK_RECORDS => chunk.push(record),
                    _ => {
                        let mut chunk = Vec::with_capacity(CHUNK_RECORDS);
                        chunk.push(record);
                        self.chunks.push(chunk);
                    }
                }
                true
            }
        }
    }

    /// The latest record of `client`, if any.
    pub fn get(&self, client: &str) -> Option<&Record> {
        let slot = self.find(protocol::client_hash(client), client)?;
        self.record(slot)
    }

    /// Every record held, in the order their clients were first seen.
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        self.chunks.iter().flatten()
    }

    /// How many clients have a record.
    pub fn len(&self) -> usize {
        let full = self.chunks.len().saturating_sub(1) * CHUNK_RECORDS;
        full + self.chunks.last().map_or(0, Vec::len)
    }

    /// The bytes the records' AT lines take, one line each: what a file of them takes.
    pub fn line_bytes(&self) -> u64 {
        self.line_bytes
    }

    /// Whether no client has a record.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Whether an old table is still being emptied (and holds memory until it is).
    pub fn is_growing(&self) -> bool {
        self.growing > 0
    }

    /// Moves the entries of up to `buckets` buckets of old tables into the current ones,
    /// and drops each old table once it is empty.
    pub fn move_buckets(&mut self, buckets: usize) {
        let mut left = buckets;
        for shard in self.shards.iter_mut() {
            if left == 0 {
                break;
            }
            let was_growing = shard.growth.is_some();
            left -= shard.move_buckets(left);
            if was_growing && shard.growth.is_none() {
                self.growing -= 1;
            }
        }
    }

    /// Where the record of `client` (whose hash is `client_hash`) is, if there is one.
    fn find(&self, client_hash: u32, client: &str) -> Option<Slot> {
        let shard = self.shards.get(shard_of(client_hash))?;
        let same_client = |slot: Slot| {
            self.record(slot)
                .is_some_and(|held| held.client() == client)
        };
        (shard.current.find(client_hash, 0, same_client)).or_else(|| {
            let growth = shard.growth.as_ref()?;
            growth
                .old
                .find(client_hash, growth.next_bucket, same_client)
        })
    }

    /// Has the processor fetch where the index would look for a client of `client_hash`,
    /// without waiting: a store that does this for a batch of records before offering
    /// them waits for memory once for the batch rather than once per new client.
    pub fn prefetch(&self, client_hash: u32) {
        if let Some(shard) = self.shards.get(shard_of(client_hash)) {
            shard.current.prefetch(client_hash);
            if let Some(growth) = &shard.growth {
                growth.old.prefetch(client_hash);
            }
        }
    }

    /// The record a slot points to.
    fn record(&self, slot: Slot) -> Option<&Record> {
        let position = slot.record as usize;
        self.chunks
            .get(position / CHUNK_RECORDS)?
            .get(position % CHUNK_RECORDS)
    }

    /// The record a slot points to, to replace.
    fn record_mut(&mut self, slot: Slot) -> Option<&mut Record> {
        let position = slot.record as usize;
        self.chunks
            .get_mut(position / CHUNK_RECORDS)?
            .get_mut(position % CHUNK_RECORDS)
    }
}

impl Shard {
    /// Before an offer: starts a growth if the current table is full, and moves some of
    /// the old one.
    fn make_room(&mut self) {
        if self.current.len() == self.current.capacity() {
            self.grow();
        }
        self.move_buckets(BUCKETS_MOVED_PER_OFFER);
    }

    /// Moves the entries of up to `buckets` buckets of the old table into the current one,
    /// and drops the old table once it is empty; says how many buckets it went through.
    fn move_buckets(&mut self, buckets: usize) -> usize {
        let Some(growth) = &mut self.growth else {
            return 0;
        };
        let start = growth.next_bucket;
        let end = start.saturating_add(buckets).min(growth.old.buckets());
        for bucket in start..end {
            if let Some(slot) = growth.old.take(bucket) {
                // There is room: the current table was made big enough for all of the old.
                self.current.insert(slot);
            }
        }
        growth.next_bucket = end;
        if growth.old.is_empty() {
            self.growth = None;
        }
        end - start
    }

    /// Starts emptying the full current table into one twice its size.
    fn grow(&mut self) {
        // The current table cannot fill while the last growth is under way (see
        // `BUCKETS_MOVED_PER_OFFER`); if it ever did, that growth is finished first.
        self.move_buckets(usize::MAX);
        let capacity = (2 * self.current.capacity()).max(MIN_CAPACITY);
        let old = std::mem::replace(&mut self.current, SlotTable::with_capacity(capacity));
        self.growth = Some(Growth {
            old,
            next_bucket: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;
    use std::collections::HashMap;

    fn record(client: &str, secs: u64) -> Record {
        let line = format!("AT A +0.000000000 {client} +1+1 {secs}");
        match Command::parse(line.as_bytes()) {
            Command::At(record) => record,
            _ => panic!("not an AT line: {line}"),
        }
    }

    #[test]
    fn newer_wins_and_older_is_kept_out() {
        let mut table = RecordTable::default();
        assert!(table.offer(record("kiwi", 100)));
        assert!(!table.offer(record("kiwi", 50)));
        assert!(table.offer(record("kiwi", 200)));
        assert_eq!(table.get("kiwi"), Some(&record("kiwi", 200)));
        assert_eq!(table.get("pear"), None);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn the_bytes_of_the_lines_held_follow_every_replacement() {
        let mut table = RecordTable::default();
        let lines =
            |table: &RecordTable| -> u64 { table.iter().map(|r| r.line().len() as u64 + 1).sum() };
        for (client, secs) in [("kiwi", 100), ("pear", 7), ("kiwi", 1_000_000), ("kiwi", 5)] {
            table.offer(record(client, secs));
            assert_eq!(table.line_bytes(), lines(&table));
        }
    }

    /// Offers and lookups across many growths, some caught half way, checked against a
    /// `HashMap` doing the same.
    #[test]
    fn holds_the_latest_record_of_every_client_while_it_grows() {
        let mut table = RecordTable::default();
        let mut expected: HashMap<String, u64> = HashMap::new();
        let mut seen_growing = 0;
        // A fixed pseudo-random walk: new clients, and updates newer and older; ~90,000
        // clients, so their records fill more than one chunk.
        let mut state: u64 = 1;
        for _ in 0..250_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let client = format!("c{}", (state >> 33) % 100_000);
            let secs = (state >> 20) % 1_000;
            let newer = expected.get(&client).is_none_or(|&held| secs > held);
            let stored = table.offer(record(&client, secs));
            assert_eq!(stored, newer, "{client} at {secs}");
            if newer {
                expected.insert(client.clone(), secs);
            }
            assert_eq!(
                table.get(&client).map(Record::time),
                expected.get(&client).map(|&s| record(&client, s).time())
            );
            let growing = table.shards.iter().filter(|s| s.growth.is_some()).count();
            assert_eq!(table.growing, growing);
            seen_growing += usize::from(table.is_growing());
        }
        assert!(seen_growing > 100, "never caught growing");
        assert!(expected.len() > CHUNK_RECORDS, "one chunk only");
        assert_eq!(table.len(), expected.len());
        let mut held: Vec<String> = table.iter().map(|r| r.line().to_string()).collect();
        held.sort();
        let mut want: Vec<String> = expected
            .iter()
            .map(|(c, &s)| record(c, s).line().to_string())
            .collect();
        want.sort();
        assert_eq!(held, want);
    }

    #[test]
    fn a_growth_is_finished_by_moving_buckets_and_frees_the_old_table() {
        let mut table = RecordTable::default();
        let mut i = 0;
        while !table.is_growing() || table.len() < 1_000 {
            table.offer(record(&format!("c{i}"), 1));
            i += 1;
        }
        table.move_buckets(usize::MAX);
        assert!(!table.is_growing());
        assert!(table.shards.iter().all(|s| s.growth.is_none()));
        assert_eq!(table.len(), i);
        assert!((0..i).all(|c| table.get(&format!("c{c}")).is_some()));
    }
}
