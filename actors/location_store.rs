//! The `LocationStore` actor: the one owner of the client records.
//!
//! Records only ever change here, one message at a time, so "newer wins" (docs/PROTOCOL.md)
//! needs no lock. What it stores it publishes to its subscribers (the `PeerLink`s, which
//! flood it to the neighbors), and it answers a [`Store`] only once every subscriber has
//! answered for the record (a link answers once the record is in its socket): that is how
//! a client's AT answer comes after the record went out on every link that is up. The
//! records of all the `Store`s handled in one round of the
//! event loop are published together, and their answers go out together once the links
//! took them: one message per link per round for each run of records from one source
//! (clients, or one neighbor), not one per `Store`.
//!
//! A `Store` whose records go to a subscriber or the file is answered at the end of its
//! round, so its records are only offered then too, their places in the index fetched from
//! memory meanwhile (`LocationStore::settle`).
//!
//! With a store file ([`StoreFile`]), the records stored in a round are also written to it,
//! in one write, before any of that round's `Store`s is answered (and, with `fsync =
//! "always"`, once a sync covers them): an acknowledged record survives the server.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::dev::{MessageResponse, OneshotSender};
use actix::prelude::*;
use log::debug;

use crate::metrics::Metrics;
use crate::protocol::Record;
use crate::record_table::RecordTable;
use crate::store_file::StoreFile;

/// The log target of this actor's mailbox: `RUST_LOG=herd::location_store=debug`.
pub const LOG_TARGET: &str = "herd::location_store";

/// Holds the latest record of every client this server has heard of.
#[derive(Default)]
pub struct LocationStore {
    /// The latest record per client.
    records: RecordTable,
    /// Who hears of every record that is stored: the server's links to its neighbors.
    subscribers: Vec<Subscribe>,
    /// The `Store`s of this round not offered yet, in order (see [`LocationStore::settle`]).
    arriving: Vec<Store>,
    /// How many records each `Store` of this round stored, in order, for those offered so
    /// far: the answers owed.
    stored: Vec<usize>,
    /// Records stored this turn and not yet published, in runs of one source each.
    unpublished: Vec<(Option<Arc<str>>, Vec<Record>)>,
    /// The answers owed for this round's `Store`s, given once the subscribers took their
    /// records (and the file has them: written, and with `always` synced).
    owed: OwedAnswers,
    /// Whether a [`GROWTH_TICK`] is scheduled.
    growth_tick_scheduled: bool,
    /// Whether records were offered since the last growth tick.
    offered_since_tick: bool,
    /// Where the records stored are written, if the server keeps them on disk.
    file: Option<StoreFile>,
    /// Whether the end of this round (the file's write, publication, the answers) is
    /// scheduled.
    round_scheduled: bool,
    /// What the server counts.
    metrics: Arc<Metrics>,
}

/// How often a store whose table is growing moves more of it when no records came: offers
/// move it along too (`RecordTable::offer`), but an idle server should not hold two tables.
const GROWTH_TICK: Duration = Duration::from_millis(1);

/// Buckets moved per idle growth tick: a few microseconds' work; an idle server empties
/// 4 million buckets' worth of old tables in 4 s.
const BUCKETS_PER_GROWTH_TICK: usize = 1024;

impl Actor for LocationStore {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Unbounded: every session sends here, and with actix's default of 16 a sender is
        // parked and its next request re-sent through a fresh sender, which costs each
        // IAMAT under load. What clients have in flight is bounded by the sessions instead
        // (`MAX_PENDING_ANSWERS` each); a neighbor's records, which wait for no answer, by
        // the few reads a session makes per turn of the one thread this store shares.
        ctx.set_mailbox_capacity(0);
    }
}

/// Offer records, in order; each is stored if it supersedes the one held for its client.
/// The answer is how many were stored.
///
/// A session offers all the records of one read in one message: a neighbor's link
/// carries hundreds per read, and one message each would cost more than storing them.
#[derive(Message, Debug)]
#[rtype(result = "usize")]
pub struct Store {
    /// The records.
    pub records: Vec<Record>,
    /// The neighbor they came from, which is not sent them back; `None` for clients' IAMATs.
    pub from: Option<Arc<str>>,
}

/// The latest record of a client, if any.
#[derive(Message, Debug)]
#[rtype(result = "Option<Record>")]
pub struct Lookup(pub Box<str>);

/// Published to every subscriber when records are stored. Handling it means the records
/// have been handed to the neighbor's socket or queued for it (or, with the link down,
/// left to the snapshot of its next connection).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Stored {
    /// The records now held, in the order they were stored.
    pub records: Arc<[Record]>,
    /// The neighbor they came from, if any.
    pub from: Option<Arc<str>>,
}

/// Every record held, as AT lines: what a link sends a neighbor when it (re)connects.
#[derive(Message, Debug)]
#[rtype(result = "Vec<Arc<str>>")]
pub struct Snapshot;

/// Adds a subscriber to the records this store stores from now on, except those that came
/// from its own neighbor: a server at the end of a chain then stores what its one link
/// brings without publishing it to anyone (and, keeping no file, answers at once).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    /// Who takes the records.
    pub subscriber: Recipient<Stored>,
    /// The neighbor it sends them to.
    pub neighbor: Arc<str>,
}

impl Subscribe {
    /// Whether records that came `from` go to this subscriber.
    fn wants(&self, from: Option<&Arc<str>>) -> bool {
        from != Some(&self.neighbor)
    }
}

impl LocationStore {
    /// While the table grows, moves more of it in each [`GROWTH_TICK`] without offers.
    fn schedule_growth_tick(&mut self, ctx: &mut Context<Self>) {
        if self.growth_tick_scheduled || !self.records.is_growing() {
            return;
        }
        self.growth_tick_scheduled = true;
        ctx.run_later(GROWTH_TICK, |act, ctx| {
            act.growth_tick_scheduled = false;
            if !std::mem::take(&mut act.offered_since_tick) {
                act.records.move_buckets(BUCKETS_PER_GROWTH_TICK);
            }
            act.schedule_growth_tick(ctx);
        });
    }

    /// A store holding `records` (read from `file` at start), writing what it stores to
    /// `file`.
    pub fn new(records: RecordTable, file: Option<StoreFile>) -> LocationStore {
        LocationStore {
            records,
            file,
            ..LocationStore::default()
        }
    }

    /// Counts into `metrics` (the server's), instead of numbers of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> LocationStore {
        metrics.records_held.set(self.records.len() as i64);
        self.metrics = metrics;
        self
    }

    /// Adds a record stored this turn, from `from`, to those to publish.
    fn add_unpublished(&mut self, from: &Option<Arc<str>>, record: Record) {
        match self.unpublished.last_mut() {
            Some((source, run)) if source == from => run.push(record),
            _ => self.unpublished.push((from.clone(), vec![record])),
        }
    }

    /// Ends the round: writes what was stored to the file, hands the subscribers what they
    /// take, and once all of them took it (and, with `always`, a sync covers it), answers
    /// the round's `Store`s.
    fn finish_round(&mut self, ctx: &mut Context<Self>) {
        self.round_scheduled = false;
        self.settle();
        self.schedule_growth_tick(ctx);
        let stored = std::mem::take(&mut self.stored);
        let owed = self.owed.take();
        let synced = self.file.as_mut().and_then(StoreFile::write_round);
        self.maybe_rewrite(ctx);
        let mut taken = Vec::new();
        for (from, records) in std::mem::take(&mut self.unpublished) {
            let records: Arc<[Record]> = records.into();
            for subscribe in self.subscribers.iter().filter(|s| s.wants(from.as_ref())) {
                if let Some(link) = self.metrics.link(&subscribe.neighbor) {
                    link.backlog.inc();
                }
                taken.push(subscribe.subscriber.send(Stored {
                    records: Arc::clone(&records),
                    from: from.clone(),
                }));
            }
        }
        let taken = futures_util::future::join_all(taken);
        let synced = async move {
            if let Some(synced) = synced {
                // A failed sync is said by the file; the answers go on.
                let _ = synced.await;
            }
        };
        let done = futures_util::future::join(taken, synced);
        ctx.spawn(done.into_actor(self).map(move |_, _, _| {
            for Owed { answer, store } in owed {
                let _ = answer.send(stored.get(store).copied().unwrap_or(0));
            }
        }));
    }

    /// Starts a rewrite of the store file when it has grown well past what is held.
    fn maybe_rewrite(&mut self, ctx: &mut Context<Self>) {
        let held = self.records.line_bytes();
        let Some(file) = self.file.as_mut().filter(|f| f.wants_rewrite(held)) else {
            return;
        };
        let lines = self.records.iter().map(Record::shared_line).collect();
        let rewritten = file.start_rewrite(lines);
        ctx.spawn(rewritten.into_actor(self).map(|result, act, _| {
            let result = result.unwrap_or_else(|_| Err(std::io::Error::other("the rewrite ended")));
            if let Some(file) = act.file.as_mut() {
                file.finish_rewrite(result);
            }
        }));
    }
}

impl Handler<Store> for LocationStore {
    type Result = StoreAnswer;

    /// Offers the records now if nothing waits on them; otherwise at the end of the round,
    /// with the round's other records, their places in the index fetched from memory
    /// meanwhile (see `LocationStore::settle`).
    fn handle(&mut self, store: Store, ctx: &mut Context<Self>) -> StoreAnswer {
        self.offered_since_tick = true;
        let publish = self
            .subscribers
            .iter()
            .any(|s| s.wants(store.from.as_ref()));
        // Even offered now, a neighbor's hundreds of records wait for memory once, not
        // once each.
        for record in &store.records {
            self.records.prefetch(record.client_hash());
        }
        if !publish && self.file.is_none() && self.arriving.is_empty() {
            let count = self.offer(store);
            self.schedule_growth_tick(ctx);
            return StoreAnswer::Now(count);
        }
        self.arriving.push(store);
        if !std::mem::replace(&mut self.round_scheduled, true) {
            // Ended after one yield to the other tasks: the sessions that are ready run
            // first, and the records of their `Store`s go in the same messages (one write
            // per link for all of them), at the price of one round of the event loop in
            // the answers' latency. Measured: chain middle ~+10-15%.
            let turn = tokio::task::yield_now().into_actor(self);
            ctx.spawn(turn.map(|(), act: &mut LocationStore, ctx| act.finish_round(ctx)));
        }
        StoreAnswer::Later {
            store: self.stored.len() + self.arriving.len() - 1,
            owed: self.owed.clone(),
        }
    }
}

impl LocationStore {
    /// Offers the records of one `Store`, publishing and writing those it stored; says
    /// how many it stored.
    fn offer(&mut self, Store { records, from }: Store) -> usize {
        let publish = self.subscribers.iter().any(|s| s.wants(from.as_ref()));
        let offered = records.len();
        let mut count = 0;
        for record in records {
            let source = from.as_deref().unwrap_or("a client");
            debug!(target: LOG_TARGET, "Store {} from {source}", record.line());
            let copy = (publish || self.file.is_some()).then(|| record.clone());
            if self.records.offer(record) {
                count += 1;
                if let Some(copy) = copy {
                    if let Some(file) = self.file.as_mut() {
                        file.append(&copy);
                    }
                    if publish {
                        self.add_unpublished(&from, copy);
                    }
                }
            }
        }
        debug!(target: LOG_TARGET, "Store: {count} of {offered} stored");
        self.metrics.store_backlog.dec();
        self.metrics.records_stored.inc_by(count as u64);
        self.metrics
            .records_ignored
            .inc_by((offered - count) as u64);
        self.metrics.records_held.set(self.records.len() as i64);
        count
    }

    /// Offers the `Store`s that arrived this round and were held back, in order.
    ///
    /// A `Store` whose records must reach a link or the file is answered at the end of the
    /// round anyway, so its records are offered then too: the store asks for each one's
    /// place in the index when the `Store` comes ([`RecordTable::prefetch`]), and by the
    /// end of the round those places are in the cache. A new client's place is otherwise
    /// a wait for memory once the index outgrows the cache, the largest cost of a store
    /// growing under load. Every other message to the store settles first, so that it
    /// sees the store as if each `Store` had been offered when it came.
    fn settle(&mut self) {
        // Drained from a vector taken out and put back, which keeps its room for the next
        // round.
        let mut arriving = std::mem::take(&mut self.arriving);
        for store in arriving.drain(..) {
            let count = self.offer(store);
            self.stored.push(count);
        }
        self.arriving = arriving;
    }
}

/// The answer to a [`Store`]: how many records were stored, given at once when no link or
/// file has to take them, or once the links took this turn's records and the file has them
/// (written, and with `always` synced).
pub enum StoreAnswer {
    /// Now.
    Now(usize),
    /// When the turn's records are taken by the links and the file.
    Later {
        /// Which of the round's `Store`s this answers.
        store: usize,
        /// Where the store keeps what it owes.
        owed: OwedAnswers,
    },
}

/// The answers a store owes for records its subscribers have not taken yet: each `Store`'s
/// reply channel, with which of the round's `Store`s it answers. Shared between the store
/// and the [`StoreAnswer`]s it returns, which put their channels here.
#[derive(Clone, Default)]
pub struct OwedAnswers(Rc<RefCell<Vec<Owed>>>);

/// One `Store`'s reply channel, and which of the round's `Store`s it is.
struct Owed {
    answer: OneshotSender<usize>,
    store: usize,
}

impl OwedAnswers {
    fn push(&self, answer: OneshotSender<usize>, store: usize) {
        self.0.borrow_mut().push(Owed { answer, store });
    }

    fn take(&self) -> Vec<Owed> {
        std::mem::take(&mut *self.0.borrow_mut())
    }
}

impl MessageResponse<LocationStore, Store> for StoreAnswer {
    fn handle(self, _: &mut Context<LocationStore>, answer: Option<OneshotSender<usize>>) {
        let Some(answer) = answer else {
            return;
        };
        match self {
            StoreAnswer::Now(count) => {
                let _ = answer.send(count);
            }
            StoreAnswer::Later { store, owed } => owed.push(answer, store),
        }
    }
}

impl Handler<Lookup> for LocationStore {
    type Result = Option<Record>;

    fn handle(&mut self, Lookup(client): Lookup, _: &mut Context<Self>) -> Option<Record> {
        self.settle();
        self.metrics.store_backlog.dec();
        let found = self.records.get(&client).cloned();
        debug!(target: LOG_TARGET, "Lookup {client:?}: {}", found.as_ref().map_or("none", |r| r.line()));
        found
    }
}

impl Handler<Snapshot> for LocationStore {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
        self.settle();
        debug!(target: LOG_TARGET, "Snapshot: {} records", self.records.len());
        MessageResult(self.records.iter().map(Record::shared_line).collect())
    }
}

/// The server is stopping: write what is pending to the store file, sync it, and stop its
/// thread.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct CloseFile;

impl Handler<CloseFile> for LocationStore {
    type Result = ();

    fn handle(&mut self, _: CloseFile, _: &mut Context<Self>) {
        self.settle();
        debug!(target: LOG_TARGET, "CloseFile");
        if let Some(file) = self.file.as_mut() {
            file.close();
        }
    }
}

impl Handler<Subscribe> for LocationStore {
    type Result = ();

    fn handle(&mut self, subscribe: Subscribe, _: &mut Context<Self>) {
        self.settle();
        debug!(target: LOG_TARGET, "Subscribe (to {})", subscribe.neighbor);
        self.subscribers.push(subscribe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;

    fn client(record: Record) -> Store {
        Store {
            records: vec![record],
            from: None,
        }
    }

    fn record(line: &str) -> Record {
        match Command::parse(line.as_bytes()) {
            Command::At(r) => r,
            _ => panic!("not an AT line: {line}"),
        }
    }

    /// Collects what the store publishes, and counts the messages it came in.
    #[derive(Default)]
    struct Collector(Vec<String>, usize);
    impl Actor for Collector {
        type Context = Context<Self>;
    }
    impl Handler<Stored> for Collector {
        type Result = ();
        fn handle(&mut self, Stored { records, from }: Stored, _: &mut Context<Self>) {
            self.1 += 1;
            let from = from.as_deref().unwrap_or("client");
            for record in records.iter() {
                self.0.push(format!("{from}: {}", record.line()));
            }
        }
    }
    /// Subscribes `subscriber`, the link to `neighbor`, to `store`.
    async fn subscribe(store: &Addr<LocationStore>, subscriber: Recipient<Stored>, neighbor: &str) {
        let neighbor = neighbor.into();
        store
            .send(Subscribe {
                subscriber,
                neighbor,
            })
            .await
            .unwrap();
    }

    /// A store whose one subscriber is a collector.
    async fn store_with_collector() -> (Addr<LocationStore>, Addr<Collector>) {
        let store = LocationStore::default().start();
        let collector = Collector::default().start();
        subscribe(&store, collector.clone().recipient(), "Watcher").await;
        (store, collector)
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
        assert_eq!(store.send(client(old.clone())).await.unwrap(), 1);
        assert_eq!(store.send(client(new.clone())).await.unwrap(), 1);
        assert_eq!(store.send(client(old)).await.unwrap(), 0);
        assert_eq!(store.send(client(new.clone())).await.unwrap(), 0);
        assert_eq!(store.send(Lookup("kiwi".into())).await.unwrap(), Some(new));
        assert_eq!(store.send(Lookup("nobody".into())).await.unwrap(), None);
    }

    #[actix_rt::test]
    async fn equal_time_is_broken_by_the_bytewise_greater_line() {
        let store = LocationStore::default().start();
        let a = record("AT Abe +0.000000000 kiwi +1+1 100");
        let b = record("AT Bob +0.000000000 kiwi +1+1 100");
        store.send(client(b.clone())).await.unwrap();
        assert_eq!(store.send(client(a)).await.unwrap(), 0);
        assert_eq!(store.send(Lookup("kiwi".into())).await.unwrap(), Some(b));
    }

    #[actix_rt::test]
    async fn only_stored_records_are_published() {
        let (store, collector) = store_with_collector().await;
        for line in [
            "AT A +0.000000000 kiwi +1+1 100",
            "AT A +0.000000000 kiwi +1+1 50",
            "AT A +0.000000000 kiwi +1+1 100",
        ] {
            store.send(client(record(line))).await.unwrap();
        }
        // A batch is offered record by record, in order.
        let from_bona = Store {
            records: [
                "AT A +0.000000000 pear +1+1 1",
                "AT A +0.000000000 kiwi +1+1 50",
                "AT A +0.000000000 pear +1+1 2",
                "AT A +0.000000000 pear +1+1 1",
            ]
            .map(record)
            .into(),
            from: Some("Bona".into()),
        };
        assert_eq!(store.send(from_bona).await.unwrap(), 2);
        // Every `Stored` was queued at the collector before this is.
        let seen = collector.send(Seen).await.unwrap();
        assert_eq!(
            seen,
            [
                "client: AT A +0.000000000 kiwi +1+1 100",
                "Bona: AT A +0.000000000 pear +1+1 1",
                "Bona: AT A +0.000000000 pear +1+1 2"
            ]
        );
    }

    /// Asks the collector how many `Stored` messages it handled.
    #[derive(Message)]
    #[rtype(result = "usize")]
    struct Messages;
    impl Handler<Messages> for Collector {
        type Result = usize;
        fn handle(&mut self, _: Messages, _: &mut Context<Self>) -> usize {
            self.1
        }
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
        subscribe(&store, Gated(gated).start().recipient(), "Bona").await;
        let mut answer = Box::pin(store.send(client(record("AT A +0.000000000 kiwi +1+1 1"))));
        let early = tokio::time::timeout(Duration::from_millis(100), &mut answer).await;
        assert!(
            early.is_err(),
            "answered before the subscriber took the record"
        );
        gate.send(true).unwrap();
        assert_eq!(answer.await.unwrap(), 1);
    }

    #[actix_rt::test]
    async fn with_fsync_always_a_store_is_answered_only_once_its_records_are_synced() {
        use crate::config::{Fsync, StoreConfig};
        use crate::store_file::tests::Gate;
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let settings = StoreConfig {
            dir: None,
            fsync: Fsync::Always,
            rewrite_min_bytes: 0,
        };
        let mut records = RecordTable::default();
        let (file, _) = StoreFile::open_syncing_with(
            &dir.path().join("T.aof"),
            &settings,
            Gate::sync_fn(&gate),
            &mut records,
            crate::server_log::ServerLog::discard(),
            "T",
        )
        .unwrap();
        // No links: only the file makes the answer wait.
        let store = LocationStore::new(records, Some(file)).start();
        let mut answer = Box::pin(store.send(client(record("AT A +0.000000000 kiwi +1+1 1"))));
        let early = tokio::time::timeout(Duration::from_millis(200), &mut answer).await;
        assert!(early.is_err(), "answered before the sync");
        // The record is in the file already (written before the sync is asked for).
        let text = std::fs::read_to_string(dir.path().join("T.aof")).unwrap();
        assert_eq!(text, "AT A +0.000000000 kiwi +1+1 1\n");
        gate.open();
        assert_eq!(answer.await.unwrap(), 1);
    }

    #[actix_rt::test]
    async fn records_from_a_subscribers_own_neighbor_are_not_published_to_it() {
        let store = LocationStore::default().start();
        // A subscriber that never takes anything: a Store published to it is never answered.
        let (_gate, gated) = tokio::sync::watch::channel(false);
        subscribe(&store, Gated(gated).start().recipient(), "Bona").await;
        let from_bona = Store {
            records: vec![record("AT Bona +0.000000000 kiwi +1+1 1")],
            from: Some("Bona".into()),
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), store.send(from_bona))
            .await
            .expect("a record from Bona was published back to Bona's link");
        assert_eq!(answer.unwrap(), 1);
        assert!(store.send(Lookup("kiwi".into())).await.unwrap().is_some());
    }

    #[actix_rt::test]
    async fn the_stores_of_one_turn_reach_each_subscriber_in_one_message() {
        let (store, collector) = store_with_collector().await;
        // Queued before the store runs, so handled in one turn.
        let answers: Vec<_> = (1..=10)
            .map(|i| store.send(client(record(&format!("AT A +0.000000000 c{i} +1+1 1")))))
            .collect();
        for answer in futures_util::future::join_all(answers).await {
            assert_eq!(answer.unwrap(), 1);
        }
        assert_eq!(collector.send(Seen).await.unwrap().len(), 10);
        assert_eq!(collector.send(Messages).await.unwrap(), 1);
    }

    /// A `Store` held for the end of its round (its records go to a subscriber) is offered
    /// before any message that came after it: a `Lookup` sees its record, and each of the
    /// round's `Store`s, also those after the `Lookup`, is answered with its own count.
    #[actix_rt::test]
    async fn a_store_held_for_its_round_is_seen_by_every_message_after_it() {
        let (store, collector) = store_with_collector().await;
        // Queued before the store runs, so handled in one turn.
        let first = store.send(client(record("AT A +0.000000000 kiwi +1+1 5")));
        let lookup = store.send(Lookup("kiwi".into()));
        let older = store.send(client(record("AT A +0.000000000 kiwi +1+1 4")));
        let two = store.send(Store {
            records: vec![
                record("AT A +0.000000000 pear +1+1 1"),
                record("AT A +0.000000000 plum +1+1 1"),
            ],
            from: None,
        });
        let found = lookup.await.unwrap().map(|r| r.line().to_string());
        assert_eq!(found.as_deref(), Some("AT A +0.000000000 kiwi +1+1 5"));
        assert_eq!(first.await.unwrap(), 1);
        assert_eq!(older.await.unwrap(), 0);
        assert_eq!(two.await.unwrap(), 2);
        assert_eq!(collector.send(Seen).await.unwrap().len(), 3);
    }

    /// Asks the store whether its table is still growing.
    #[derive(Message)]
    #[rtype(result = "bool")]
    struct Growing;
    impl Handler<Growing> for LocationStore {
        type Result = bool;
        fn handle(&mut self, _: Growing, _: &mut Context<Self>) -> bool {
            self.records.is_growing()
        }
    }

    #[actix_rt::test]
    async fn an_idle_store_finishes_growing_its_table() {
        let store = LocationStore::default().start();
        // Batches of 1,000 new clients until one leaves a table growing.
        let mut clients = 0;
        while !store.send(Growing).await.unwrap() {
            assert!(clients < 1_000_000, "never caught growing");
            let records = (clients..clients + 1_000)
                .map(|i| record(&format!("AT A +0.000000000 c{i} +1+1 1")))
                .collect();
            let stored = store
                .send(Store {
                    records,
                    from: None,
                })
                .await
                .unwrap();
            assert_eq!(stored, 1_000);
            clients += 1_000;
        }
        let finished = async {
            while store.send(Growing).await.unwrap() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), finished)
            .await
            .expect("the growth never finished");
        for i in [0, clients / 2, clients - 1] {
            let client = format!("c{i}").into_boxed_str();
            assert!(store.send(Lookup(client)).await.unwrap().is_some());
        }
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
