//! What a server counts about itself, for `/metrics` (the Prometheus text format) and
//! `/status`.
//!
//! The counters are those of `prometheus-client`, the Prometheus project's own Rust
//! client: each is an atomic that the actors bump (a relaxed add, no lock, no lookup: the
//! labelled ones are fetched from their families once, at start), and a scrape formats them
//! all. It was chosen over the `metrics` facade because a server here owns its numbers (a
//! process may run five servers, each with its own), where the facade has one global
//! recorder, and because its registry writes the exposition format itself.
//!
//! Besides counting, [`LinkMetrics`] keeps what `/status` says of each link: up or down,
//! since when, and the last error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::server_log::ServerLog;

/// A metric's label naming a neighbor.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Neighbor {
    neighbor: String,
}

/// A metric's label naming a kind of line.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

/// A metric's label naming an actor.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActorLabel {
    actor: String,
}

/// A metric's label naming a places API status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: String,
}

/// Lines received, by kind.
#[derive(Debug)]
pub struct Lines {
    /// Valid IAMATs.
    pub iamat: Counter,
    /// Valid WHATSATs.
    pub whatsat: Counter,
    /// Lines answered `? ...`.
    pub invalid: Counter,
    /// Records from neighbors' links.
    pub peer_record: Counter,
}

/// One link's numbers, and its state for `/status`.
#[derive(Debug)]
pub struct LinkMetrics {
    /// The neighbor.
    pub neighbor: String,
    /// 1 while the link is up.
    pub up: Gauge,
    /// Connections made.
    pub connects: Counter,
    /// Records handed to the neighbor's socket.
    pub records_sent: Counter,
    /// Bytes handed to the socket.
    pub bytes_sent: Counter,
    /// Bytes the socket has not taken yet.
    pub bytes_queued: Gauge,
    /// Queues dropped for being over their bound (the neighbor stopped reading).
    pub queue_drops: Counter,
    /// Messages waiting in the link's mailbox.
    pub backlog: Gauge,
    /// When the link last went up or down, in seconds since the epoch.
    since: AtomicU64,
    /// Why it last went down.
    last_error: Mutex<Option<String>>,
}

impl LinkMetrics {
    /// The link is up.
    pub fn went_up(&self) {
        self.up.set(1);
        self.connects.inc();
        self.since.store(now_s(), Ordering::Relaxed);
    }

    /// The link is down, for `why`.
    pub fn went_down(&self, why: &str) {
        if self.up.get() == 1 || self.since.load(Ordering::Relaxed) == 0 {
            self.since.store(now_s(), Ordering::Relaxed);
        }
        self.up.set(0);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(why.to_owned());
        }
    }

    /// Up or down, since when (seconds since the epoch), and the last error.
    pub fn state(&self) -> (bool, u64, Option<String>) {
        let last = self.last_error.lock().ok().and_then(|e| e.clone());
        (self.up.get() == 1, self.since.load(Ordering::Relaxed), last)
    }
}

/// The places proxy's numbers.
#[derive(Debug)]
pub struct PlacesMetrics {
    /// Searches asked of the proxy.
    pub searches: Counter,
    /// Calls made to the places API.
    pub calls: Counter,
    /// Searches answered from the cache.
    pub cache_hits: Counter,
    /// Searches that joined a call under way.
    pub joined: Counter,
    errors: Family<Status, Counter>,
    /// How long calls took, in seconds.
    pub latency: Histogram,
}

impl PlacesMetrics {
    /// A call ended in an error answer with `status`. A status the places API does not
    /// document counts as `OTHER`: the label comes from the network, and each new one
    /// would be a series kept forever.
    pub fn error(&self, status: &str) {
        const DOCUMENTED: [&str; 5] = [
            "INVALID_REQUEST",
            "OVER_QUERY_LIMIT",
            "REQUEST_DENIED",
            "UNKNOWN_ERROR",
            "NOT_FOUND",
        ];
        let status = DOCUMENTED.into_iter().find(|s| *s == status);
        self.errors
            .get_or_create(&Status {
                status: status.unwrap_or("OTHER").to_owned(),
            })
            .inc();
    }
}

/// Every number one server keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// When the server started.
    pub started: SystemTime,
    /// Connections open now: clients' and neighbors' links in.
    pub connections_open: Gauge,
    /// Client connections held now (under the cap on clients).
    pub clients: Gauge,
    /// Connections accepted.
    pub connections_accepted: Counter,
    /// Lines received, by kind.
    pub lines: Lines,
    /// Records held now.
    pub records_held: Gauge,
    /// Records stored (newer than what was held).
    pub records_stored: Counter,
    /// Records offered and not stored (not newer).
    pub records_ignored: Counter,
    /// Each link's numbers, in the config's order.
    pub links: Vec<Arc<LinkMetrics>>,
    /// The places proxy's numbers.
    pub places: PlacesMetrics,
    /// Messages waiting in the store's mailbox.
    pub store_backlog: Gauge,
    /// Messages waiting in the places proxy's mailbox.
    pub places_backlog: Gauge,
    log_bytes: Counter,
    log_dropped: Counter,
    /// The log whose bytes and drops are counted at each scrape.
    log: ServerLog,
}

impl Metrics {
    /// The numbers of a server with links to `neighbors`, writing `log`.
    pub fn new<'a>(neighbors: impl IntoIterator<Item = &'a str>, log: ServerLog) -> Metrics {
        let mut registry = Registry::with_prefix("herd");
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections open now",
            connections_open.clone(),
        );
        let clients = Gauge::default();
        registry.register("clients", "Client connections held now", clients.clone());
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "Connections accepted",
            connections_accepted.clone(),
        );
        let lines_family = Family::<Kind, Counter>::default();
        registry.register(
            "lines_received",
            "Lines received, by kind",
            lines_family.clone(),
        );
        let line = |kind| lines_family.get_or_create(&Kind { kind }).clone();
        let lines = Lines {
            iamat: line("iamat"),
            whatsat: line("whatsat"),
            invalid: line("invalid"),
            peer_record: line("peer_record"),
        };
        let records_held = Gauge::default();
        registry.register(
            "records_held",
            "Client records held now",
            records_held.clone(),
        );
        let records_stored = Counter::default();
        registry.register(
            "records_stored",
            "Records stored, newer than the one held",
            records_stored.clone(),
        );
        let records_ignored = Counter::default();
        registry.register(
            "records_ignored",
            "Records offered and not stored, as not newer",
            records_ignored.clone(),
        );

        let link_family = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<Neighbor, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let counter_family = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<Neighbor, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let up = link_family(
            &mut registry,
            "link_up",
            "1 while the link to a neighbor is up",
        );
        let connects = counter_family(&mut registry, "link_connects", "Link connections made");
        let records_sent = counter_family(
            &mut registry,
            "link_records_sent",
            "Records sent on the link",
        );
        let bytes_sent = counter_family(&mut registry, "link_bytes_sent", "Bytes sent on the link");
        let bytes_queued = link_family(
            &mut registry,
            "link_bytes_queued",
            "Bytes the neighbor's socket has not taken",
        );
        let queue_drops = counter_family(
            &mut registry,
            "link_queue_drops",
            "Link queues dropped over their bound",
        );
        let backlog = Family::<ActorLabel, Gauge>::default();
        registry.register(
            "mailbox_backlog",
            "Messages waiting in an actor's mailbox",
            backlog.clone(),
        );
        let actor = |name: String| backlog.get_or_create(&ActorLabel { actor: name }).clone();
        let links = neighbors
            .into_iter()
            .map(|neighbor| {
                let label = Neighbor {
                    neighbor: neighbor.to_owned(),
                };
                Arc::new(LinkMetrics {
                    neighbor: neighbor.to_owned(),
                    up: up.get_or_create(&label).clone(),
                    connects: connects.get_or_create(&label).clone(),
                    records_sent: records_sent.get_or_create(&label).clone(),
                    bytes_sent: bytes_sent.get_or_create(&label).clone(),
                    bytes_queued: bytes_queued.get_or_create(&label).clone(),
                    queue_drops: queue_drops.get_or_create(&label).clone(),
                    backlog: actor(format!("peer_link:{neighbor}")),
                    since: AtomicU64::new(0),
                    last_error: Mutex::new(None),
                })
            })
            .collect();

        let places_counter = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            counter
        };
        let errors = Family::<Status, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let places = PlacesMetrics {
            searches: places_counter(&mut registry, "places_searches", "Searches for places"),
            calls: places_counter(
                &mut registry,
                "places_calls",
                "Calls made to the places API",
            ),
            cache_hits: places_counter(
                &mut registry,
                "places_cache_hits",
                "Searches answered from the cache",
            ),
            joined: places_counter(
                &mut registry,
                "places_joined",
                "Searches that joined a call under way",
            ),
            errors: errors.clone(),
            latency: latency.clone(),
        };
        registry.register(
            "places_errors",
            "Places calls that ended in an error, by status",
            errors,
        );
        registry.register("places_call_seconds", "How long places calls took", latency);
        let log_bytes = Counter::default();
        registry.register(
            "log_bytes_written",
            "Bytes written to the log file",
            log_bytes.clone(),
        );
        let log_dropped = Counter::default();
        registry.register(
            "log_events_dropped",
            "Log events dropped because the disk could not keep up",
            log_dropped.clone(),
        );
        Metrics {
            store_backlog: actor("location_store".to_owned()),
            places_backlog: actor("places_proxy".to_owned()),
            registry,
            started: SystemTime::now(),
            connections_open,
            clients,
            connections_accepted,
            lines,
            records_held,
            records_stored,
            records_ignored,
            links,
            places,
            log_bytes,
            log_dropped,
            log,
        }
    }

    /// The numbers of the link to `neighbor` (looked for by name: taken once, by whoever
    /// counts into them).
    pub fn link(&self, neighbor: &str) -> Option<&Arc<LinkMetrics>> {
        self.links.iter().find(|l| l.neighbor == neighbor)
    }

    /// Every number, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let (bytes, dropped) = self.log.written_and_dropped();
        self.log_bytes
            .inc_by(bytes.saturating_sub(self.log_bytes.get()));
        self.log_dropped
            .inc_by(dropped.saturating_sub(self.log_dropped.get()));
        let mut text = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// How long the server has been up.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed().unwrap_or_default()
    }
}

impl Default for Metrics {
    /// The numbers of a server with no links and no log (an actor tested alone).
    fn default() -> Metrics {
        Metrics::new([], ServerLog::discard())
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_in_the_text_format_with_its_labels() {
        let metrics = Metrics::new(["Bona", "Jaquez"], ServerLog::discard());
        metrics.lines.iamat.inc();
        metrics.lines.iamat.inc();
        metrics.records_held.set(7);
        let bona = metrics.link("Bona").unwrap();
        bona.went_up();
        bona.records_sent.inc_by(3);
        metrics.places.error("UNKNOWN_ERROR");
        metrics.places.latency.observe(0.02);
        let text = metrics.encode();
        for line in [
            "herd_lines_received_total{kind=\"iamat\"} 2",
            "herd_lines_received_total{kind=\"invalid\"} 0",
            "herd_records_held 7",
            "herd_link_up{neighbor=\"Bona\"} 1",
            "herd_link_up{neighbor=\"Jaquez\"} 0",
            "herd_link_connects_total{neighbor=\"Bona\"} 1",
            "herd_link_records_sent_total{neighbor=\"Bona\"} 3",
            "herd_places_errors_total{status=\"UNKNOWN_ERROR\"} 1",
            "herd_places_call_seconds_count 1",
            "herd_mailbox_backlog{actor=\"location_store\"} 0",
            "herd_mailbox_backlog{actor=\"peer_link:Jaquez\"} 0",
            "herd_log_bytes_written_total 0",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        let (up, since, last) = bona.state();
        assert!(up && since > 0 && last.is_none());
        bona.went_down("refused");
        assert_eq!(bona.state().2.as_deref(), Some("refused"));
    }

    #[test]
    fn a_places_status_the_api_does_not_document_counts_as_other() {
        let metrics = Metrics::new(["Bona"], ServerLog::discard());
        metrics.places.error("REQUEST_DENIED");
        metrics.places.error("MADE_UP_1");
        metrics.places.error("MADE_UP_2");
        let text = metrics.encode();
        assert!(text.contains("herd_places_errors_total{status=\"REQUEST_DENIED\"} 1"));
        assert!(text.contains("herd_places_errors_total{status=\"OTHER\"} 2"));
        assert!(!text.contains("MADE_UP"), "{text}");
    }
}
