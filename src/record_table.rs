//! `RecordTable`: the latest record of each client, in a hash table that grows without
//! stopping the server.
//!
//! A hash table that doubles moves every entry at once, and at millions of clients that is
//! tens of milliseconds in which no client is answered (measured before this table: the
//! slowest IAMAT of a 5 s load took 20, 37 and 70 ms as a store grew past 1, 2 and 4
//! million slots). Here a doubling only allocates the bigger table; the entries of the old
//! one move a few buckets at a time, with every record offered, as Redis's dict rehashes.
//! Until the old table is empty a client is looked for in both, and each client is in
//! exactly one of them.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use crate::protocol::{self, Record};

/// Buckets of the old table moved with each offer while the table grows.
///
/// The new table has twice the buckets, B of the old become 2B, and room for 7/8 of them,
/// 1.75B entries; the old holds at most 7/8 B. So its B buckets must be emptied within the
/// 7/8 B offers that could fill the new one: at least 2 buckets per offer. More is cheaper
/// in all: while the old table is there every new client is looked for in it too (a cache
/// miss), and 64 buckets take ~1 us to move (a full rehash moves ~50 a microsecond).
const BUCKETS_MOVED_PER_OFFER: usize = 64;

/// The smallest table to grow into.
const MIN_CAPACITY: usize = 16;

/// The latest record per client, found by the client id inside the record itself, so the
/// id is not stored twice (a server may hold millions of records), and placed by the hash
/// the record carries, so growing reads no lines.
#[derive(Default)]
pub struct RecordTable {
    /// Where records are stored, and once a growth is over, the only table.
    current: HashTable<Record>,
    /// The table being emptied into `current`, if a growth is under way.
    growth: Option<Growth>,
}

/// The old table of a growth, and how far it has been emptied.
struct Growth {
    old: HashTable<Record>,
    /// The next of `old`'s buckets to move; those before it are empty.
    next_bucket: usize,
}

/// A record's 32-bit client hash spread over the 64 bits the table uses: the low bits pick
/// the slot, the top seven tell slots apart, and the multiplication gives both all of it.
fn table_hash(client_hash: u32) -> u64 {
    u64::from(client_hash).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Where a held record goes when a table is rebuilt.
fn rehash(record: &Record) -> u64 {
    table_hash(record.client_hash())
}

impl RecordTable {
    /// Stores `record` if it supersedes the one held for its client (SPEC section 3);
    /// says whether it did.
    ///
    /// The record is not handed back: reading it from its slot would wait for the slot's
    /// cache line, which a write alone does not (a caller that needs the record clones it
    /// before, from memory it has just used).
    pub fn offer(&mut self, record: Record) -> bool {
        if self.current.len() == self.current.capacity() {
            self.grow();
        }
        self.move_buckets(BUCKETS_MOVED_PER_OFFER);
        let hash = table_hash(record.client_hash());
        let same_client = |held: &Record| {
            held.client_hash() == record.client_hash() && held.client() == record.client()
        };
        let in_old =
            (self.growth.as_ref()).and_then(|g| g.old.find_bucket_index(hash, same_client));
        let held = match (in_old, &mut self.growth) {
            (Some(bucket), Some(growth)) => match growth.old.get_bucket_mut(bucket) {
                Some(held) => held,
                None => return false,
            },
            _ => match self.current.entry(hash, same_client, rehash) {
                Entry::Vacant(empty) => {
                    empty.insert(record);
                    return true;
                }
                Entry::Occupied(held) => held.into_mut(),
            },
        };
        if !record.supersedes(held) {
            return false;
        }
        *held = record;
        true
    }

    /// The latest record of `client`, if any.
    pub fn get(&self, client: &str) -> Option<&Record> {
        let hash = table_hash(protocol::client_hash(client));
        let same_client = |held: &Record| held.client() == client;
        self.current.find(hash, same_client).or_else(|| {
            let growth = self.growth.as_ref()?;
            growth.old.find(hash, same_client)
        })
    }

    /// Every record held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Record> {
        let old = self.growth.iter().flat_map(|growth| growth.old.iter());
        self.current.iter().chain(old)
    }

    /// How many clients have a record.
    pub fn len(&self) -> usize {
        self.current.len() + self.growth.as_ref().map_or(0, |growth| growth.old.len())
    }

    /// Whether no client has a record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether an old table is still being emptied (and holds memory until it is).
    pub fn is_growing(&self) -> bool {
        self.growth.is_some()
    }

    /// Moves the entries of up to `buckets` buckets of the old table into the current one,
    /// and drops the old table once it is empty.
    pub fn move_buckets(&mut self, buckets: usize) {
        let Some(growth) = &mut self.growth else {
            return;
        };
        let end = growth
            .next_bucket
            .saturating_add(buckets)
            .min(growth.old.num_buckets());
        for bucket in growth.next_bucket..end {
            if let Ok(entry) = growth.old.get_bucket_entry(bucket) {
                let (record, _) = entry.remove();
                // Never grows the current table: it was made big enough for all of the old.
                self.current.insert_unique(rehash(&record), record, rehash);
            }
        }
        growth.next_bucket = end;
        if growth.old.is_empty() {
            self.growth = None;
        }
    }

    /// Starts emptying the full current table into one twice its size.
    fn grow(&mut self) {
        // The current table cannot fill while the last growth is under way (see
        // `BUCKETS_MOVED_PER_OFFER`); if it ever did, that growth is finished first.
        self.move_buckets(usize::MAX);
        let capacity = (2 * self.current.capacity()).max(MIN_CAPACITY);
        let old = std::mem::replace(&mut self.current, HashTable::with_capacity(capacity));
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

    /// Offers and lookups across many growths, some caught half way, checked against a
    /// `HashMap` doing the same.
    #[test]
    fn holds_the_latest_record_of_every_client_while_it_grows() {
        let mut table = RecordTable::default();
        let mut expected: HashMap<String, u64> = HashMap::new();
        let mut seen_growing = 0;
        // A fixed pseudo-random walk: new clients, and updates newer and older.
        let mut state: u64 = 1;
        for _ in 0..200_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let client = format!("c{}", (state >> 33) % 60_000);
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
            seen_growing += usize::from(table.is_growing());
        }
        assert!(seen_growing > 100, "never caught growing");
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
        assert_eq!(table.len(), i);
        assert!((0..i).all(|c| table.get(&format!("c{c}")).is_some()));
    }
}
