//! The `LocationStore` actor: the one owner of the client records.
//!
//! Records only ever change here, one message at a time, so "newer wins" (SPEC section 3)
//! needs no lock. What it stores it publishes to its subscribers (the `PeerLink`s, which
//! flood it to the neighbors), and it answers a [`Store`] only once every subscriber has
//! taken the record: that is how a client's AT answer comes after the record went out on
//! every link that is up.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use actix::prelude::*;
use log::debug;

use crate::protocol::Record;

/// The log target of this actor's mailbox: `RUST_LOG=herd::location_store=debug`.
pub const LOG_TARGET: &str = "herd::location_store";

/// Holds the latest record of every client this server has heard of.
#[derive(Default)]
pub struct LocationStore {
    /// The latest record per client, found by the client id inside the record itself, so
    /// the id is not stored twice (a server may hold millions of records).
    records: HashTable<Record>,
    /// Hashes client ids for `records`.
    hasher: hashbrown::DefaultHashBuilder,
    /// Who hears of every record that is stored: the server's links to its neighbors.
    subscribers: Vec<Recipient<Stored>>,
}

impl Actor for LocationStore {
    type Context = Context<Self>;
}

/// Offer a record; it is stored if it supersedes the one held for its client.
#[derive(Message, Debug)]
#[rtype(result = "StoreOutcome")]
pub struct Store {
    /// The record.
    pub record: Record,
    /// The neighbor it came from, which is not sent it back; `None` for a client's IAMAT.
    pub from: Option<Arc<str>>,
}

/// What became of a [`Store`].
#[derive(MessageResponse, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// The record is now the client's latest.
    Stored,
    /// The store already held this record or a newer one; nothing changed.
    Kept,
}

/// The latest record of a client, if any.
#[derive(Message, Debug)]
#[rtype(result = "Option<Record>")]
pub struct Lookup(pub Box<str>);

/// Published to every subscriber when a record is stored. Handling it means the record
/// has been handed to the neighbor (or queued for it).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Stored {
    /// The record now held.
    pub record: Record,
    /// The neighbor it came from, if any.
    pub from: Option<Arc<str>>,
}

/// Every record held, as AT lines: what a link sends a neighbor when it (re)connects.
#[derive(Message, Debug)]
#[rtype(result = "Vec<Arc<str>>")]
pub struct Snapshot;

/// Adds a subscriber to the records this store stores from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub Recipient<Stored>);

impl Handler<Store> for LocationStore {
    type Result = ResponseFuture<StoreOutcome>;

    fn handle(&mut self, Store { record, from }: Store, _: &mut Context<Self>) -> Self::Result {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(record.client());
        let entry = self.records.entry(
            hash,
            |held| held.client() == record.client(),
            |held| hasher.hash_one(held.client()),
        );
        let outcome = match entry {
            Entry::Occupied(held) if !record.supersedes(held.get()) => StoreOutcome::Kept,
            Entry::Occupied(mut held) => {
                *held.get_mut() = record.clone();
                StoreOutcome::Stored
            }
            Entry::Vacant(empty) => {
                empty.insert(record.clone());
                StoreOutcome::Stored
            }
        };
        debug!(target: LOG_TARGET, "Store {:?} from {from:?}: {outcome:?}", record.line());
        if outcome == StoreOutcome::Kept || self.subscribers.is_empty() {
            return Box::pin(async move { outcome });
        }
        let taken = futures_util::future::join_all(self.subscribers.iter().map(|s| {
            s.send(Stored {
                record: record.clone(),
                from: from.clone(),
            })
        }));
        Box::pin(async move {
            taken.await;
            outcome
        })
    }
}

impl Handler<Lookup> for LocationStore {
    type Result = Option<Record>;

    fn handle(&mut self, Lookup(client): Lookup, _: &mut Context<Self>) -> Option<Record> {
        let hash = self.hasher.hash_one(&*client);
        let found = self
            .records
            .find(hash, |held| held.client() == &*client)
            .cloned();
        debug!(target: LOG_TARGET, "Lookup {client:?}: {}", found.as_ref().map_or("none", |r| r.line()));
        found
    }
}

impl Handler<Snapshot> for LocationStore {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
        debug!(target: LOG_TARGET, "Snapshot: {} records", self.records.len());
        MessageResult(self.records.iter().map(Record::shared_line).collect())
    }
}

impl Handler<Subscribe> for LocationStore {
    type Result = ();

    fn handle(&mut self, Subscribe(subscriber): Subscribe, _: &mut Context<Self>) {
        debug!(target: LOG_TARGET, "Subscribe");
        self.subscribers.push(subscriber);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;
    use std::time::Duration;

    fn client(record: Record) -> Store {
        Store { record, from: None }
    }

    fn record(line: &str) -> Record {
        match Command::parse(line.as_bytes()) {
            Command::At(r) => r,
            _ => panic!("not an AT line: {line}"),
        }
    }

    /// Collects what the store publishes.
    #[derive(Default)]
    struct Collector(Vec<String>);
    impl Actor for Collector {
        type Context = Context<Self>;
    }
    impl Handler<Stored> for Collector {
        type Result = ();
        fn handle(&mut self, Stored { record, from }: Stored, _: &mut Context<Self>) {
            let from = from.as_deref().unwrap_or("client").to_owned();
            self.0.push(format!("{from}: {}", record.line()));
        }
    }
    /// Asks the collector what it has seen; queued behind every `Stored` sent before it.
    #[derive(Message)]
    #[rtype(result = "Vec<String>")]
    struct Seen;
    impl Handler<Seen> for Collector {
        type Result = MessageResult<Seen>;
        fn handle(&mut self, _: Seen, _: &mut Context<Self>) -> MessageResult<Seen> {
            MessageResult(self.0.clone())
        }
    }

    #[actix_rt::test]
    async fn newer_record_wins_and_older_is_kept_out() {
        let store = LocationStore::default().start();
        let old = record("AT A +0.000000000 kiwi +1+1 100");
        let new = record("AT B +0.000000000 kiwi +2+2 200");
        assert_eq!(
            store.send(client(old.clone())).await.unwrap(),
            StoreOutcome::Stored
        );
        assert_eq!(
            store.send(client(new.clone())).await.unwrap(),
            StoreOutcome::Stored
        );
        assert_eq!(store.send(client(old)).await.unwrap(), StoreOutcome::Kept);
        assert_eq!(
            store.send(client(new.clone())).await.unwrap(),
            StoreOutcome::Kept
        );
        assert_eq!(store.send(Lookup("kiwi".into())).await.unwrap(), Some(new));
        assert_eq!(store.send(Lookup("nobody".into())).await.unwrap(), None);
    }

    #[actix_rt::test]
    async fn equal_time_is_broken_by_the_bytewise_greater_line() {
        let store = LocationStore::default().start();
        let a = record("AT Abe +0.000000000 kiwi +1+1 100");
        let b = record("AT Bob +0.000000000 kiwi +1+1 100");
        store.send(client(b.clone())).await.unwrap();
        assert_eq!(store.send(client(a)).await.unwrap(), StoreOutcome::Kept);
        assert_eq!(store.send(Lookup("kiwi".into())).await.unwrap(), Some(b));
    }

    #[actix_rt::test]
    async fn only_stored_records_are_published() {
        let store = LocationStore::default().start();
        let collector = Collector::default().start();
        store
            .send(Subscribe(collector.clone().recipient()))
            .await
            .unwrap();
        for line in [
            "AT A +0.000000000 kiwi +1+1 100",
            "AT A +0.000000000 kiwi +1+1 50",
            "AT A +0.000000000 kiwi +1+1 100",
        ] {
            store.send(client(record(line))).await.unwrap();
        }
        let from_bona = Store {
            record: record("AT A +0.000000000 pear +1+1 1"),
            from: Some("Bona".into()),
        };
        store.send(from_bona).await.unwrap();
        // Every `Stored` was queued at the collector before this is.
        let seen = collector.send(Seen).await.unwrap();
        assert_eq!(
            seen,
            [
                "client: AT A +0.000000000 kiwi +1+1 100",
                "Bona: AT A +0.000000000 pear +1+1 1"
            ]
        );
    }

    /// A subscriber that takes a record only once its gate opens.
    struct Gated(tokio::sync::watch::Receiver<bool>);
    impl Actor for Gated {
        type Context = Context<Self>;
    }
    impl Handler<Stored> for Gated {
        type Result = ResponseFuture<()>;
        fn handle(&mut self, _: Stored, _: &mut Context<Self>) -> Self::Result {
            let mut gate = self.0.clone();
            Box::pin(async move {
                let _ = gate.wait_for(|open| *open).await;
            })
        }
    }

    #[actix_rt::test]
    async fn a_store_is_answered_only_once_every_subscriber_took_the_record() {
        let store = LocationStore::default().start();
        let (gate, gated) = tokio::sync::watch::channel(false);
        let subscriber = Gated(gated).start();
        store.send(Subscribe(subscriber.recipient())).await.unwrap();
        let mut answer = Box::pin(store.send(client(record("AT A +0.000000000 kiwi +1+1 1"))));
        let early = tokio::time::timeout(Duration::from_millis(100), &mut answer).await;
        assert!(
            early.is_err(),
            "answered before the subscriber took the record"
        );
        gate.send(true).unwrap();
        assert_eq!(answer.await.unwrap(), StoreOutcome::Stored);
    }

    #[actix_rt::test]
    async fn a_snapshot_holds_every_latest_record() {
        let store = LocationStore::default().start();
        for line in [
            "AT A +0.000000000 kiwi +1+1 100",
            "AT A +0.000000000 kiwi +1+1 200",
            "AT A +0.000000000 pear +1+1 1",
        ] {
            store.send(client(record(line))).await.unwrap();
        }
        let mut lines: Vec<String> = store
            .send(Snapshot)
            .await
            .unwrap()
            .iter()
            .map(|l| l.to_string())
            .collect();
        lines.sort();
        assert_eq!(
            lines,
            [
                "AT A +0.000000000 kiwi +1+1 200",
                "AT A +0.000000000 pear +1+1 1"
            ]
        );
    }
}
