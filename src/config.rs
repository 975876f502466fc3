//! `herd.toml`: reading, environment overrides and validation.
//!
//! The file is read with the `config` crate into plain serde structs, then checked as a
//! whole; every refusal is a [`ConfigError`] whose message names the problem, so that a
//! wrong file stops a server at start instead of misbehaving later.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::server_log::LogLines;

/// The places API's default address (Google's legacy Nearby Search).
pub const DEFAULT_PLACES_URL: &str = "https://maps.googleapis.com/maps/api/place/nearbysearch/json";

/// The default address of Places API (New) Nearby Search, for `api = "new"`.
pub const DEFAULT_NEW_PLACES_URL: &str = "https://places.googleapis.com/v1/places:searchNearby";

/// How long a places answer is reused by default, in seconds.
const DEFAULT_CACHE_TTL_S: u64 = 300;

/// How many places answers the cache holds by default.
const DEFAULT_CACHE_ENTRIES: usize = 10_000;

/// How many places calls may be under way at once by default.
const DEFAULT_MAX_CONCURRENT: usize = 16;

/// How long a places call may take by default, headers and body together.
const DEFAULT_PLACES_TIMEOUT_MS: u64 = 5000;

/// The default longest client line, in bytes.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8192;

/// How far ahead of the server's clock a client's time may be by default, in seconds.
pub const DEFAULT_MAX_CLOCK_SKEW_S: u64 = 300;

/// Where each server keeps its store file by default, relative to the working directory.
const DEFAULT_STORE_DIR: &str = "data";

/// The smallest store file that is rewritten by default: 64 MiB, as Redis's default.
pub const DEFAULT_REWRITE_MIN_BYTES: u64 = 64 << 20;

/// The prefix of environment overrides: `HERD_PLACES__URL` sets `places.url`.
const ENV_PREFIX: &str = "HERD";

/// A `herd.toml` that was refused, with what is wrong in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// There is no file at the path given.
    #[error("there is no config file {path} (looked in {dir})")]
    NotFound {
        /// The path given.
        path: PathBuf,
        /// The working directory it is relative to.
        dir: PathBuf,
    },
    /// The file could not be read or is not TOML of the expected form (whoever loaded it
    /// names the file).
    #[error("{error}")]
    Read {
        /// What the `config` crate reported: in the message, not a separate source, so that
        /// it is said once.
        error: Box<config::ConfigError>,
    },
    /// A required section is absent.
    #[error("missing section [{0}]")]
    MissingSection(&'static str),
    /// `[[nodes]]` is empty.
    #[error("no servers: add at least one [[nodes]] table")]
    NoNodes,
    /// A node's name is empty or has a character it cannot have: white space (it is a word
    /// of the protocol's lines), a control character, or `/` (it names the log file).
    #[error(
        "server name {0:?} is not usable: it must be non-empty, without white space, control \
         characters or '/' (it is a word of the protocol and the name of the server's log file)"
    )]
    BadName(String),
    /// Two nodes share a name.
    #[error("server {0:?} is listed twice")]
    DuplicateName(String),
    /// An address does not parse as `IP:PORT`.
    #[error("server {node:?}: {field} = {value:?} is not an address of the form IP:PORT")]
    BadAddress {
        /// The node whose address is wrong.
        node: String,
        /// `addr`, `peer_addr` or `listen`.
        field: &'static str,
        /// The text as written.
        value: String,
    },
    /// Two addresses of the herd are the same socket.
    #[error("address {addr} is used twice: by {first} and by {second}")]
    DuplicateAddress {
        /// The address.
        addr: SocketAddr,
        /// The first user, as `Name.field`.
        first: String,
        /// The second user, as `Name.field`.
        second: String,
    },
    /// A link names a server that is not among the nodes.
    #[error("link [{0:?}, {1:?}] names unknown server {2:?}")]
    UnknownServerInLink(String, String, String),
    /// A link from a server to itself.
    #[error("link [{0:?}, {0:?}] links a server to itself")]
    SelfLink(String),
    /// The same link twice (in either direction).
    #[error("link [{0:?}, {1:?}] is listed twice")]
    DuplicateLink(String, String),
    /// `places.api` is not one this build speaks.
    #[error("places.api = {0:?} is not supported: use \"legacy\" or \"new\"")]
    UnsupportedApi(String),
    /// `places.url` is not an http(s) URL.
    #[error("places.url = {0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    /// A setting from the environment is wrong (the file alone is fine).
    #[error("environment variable {var}: {error}")]
    Env {
        /// The variable, or the variables when only together they are wrong.
        var: String,
        /// What is wrong with the config they make.
        error: Box<ConfigError>,
    },
    /// An environment variable that looks like a setting but is not spelled as one.
    #[error(
        "environment variable {0} is not a setting: settings are HERD_<SECTION>__<KEY>, with \
         two underscores before the key (HERD_PLACES__URL)"
    )]
    MisspelledOverride(String),
    /// `[tls]` without a `peer_addr` for a server.
    #[error(
        "server {0:?} has no peer_addr: with [tls], herd links go over TLS on a port of their \
         own, so every server needs one"
    )]
    TlsWithoutPeerAddr(String),
    /// `tls_addr` without `[tls]`.
    #[error("server {0:?} has a tls_addr but the config has no [tls] dir for its certificate")]
    TlsAddrWithoutTls(String),
    /// With `[tls]`, a name that a certificate cannot carry.
    #[error(
        "server name {0:?} is not a DNS name (letters, digits, '-', '_' and '.'), which a \
         certificate must carry with [tls]"
    )]
    NotADnsName(String),
    /// `[log] lines` names no level.
    #[error("log.lines = {0:?} is not a level: use \"all\", \"errors\" or \"none\"")]
    UnsupportedLogLines(String),
    /// `[store] fsync` names no policy.
    #[error("store.fsync = {0:?} is not a policy: use \"always\", \"everysec\" or \"no\"")]
    UnsupportedFsync(String),
    /// A limit or timeout of zero.
    #[error("{0} must be greater than 0")]
    Zero(&'static str),
    /// `herd run NAME` with a name that is not in the file.
    #[error("no server named {name:?} in the config; its servers are: {known}")]
    UnknownServer {
        /// The name asked for.
        name: String,
        /// The names the file has, comma-separated.
        known: String,
    },
}

/// A setting whose values are words in the config (`fsync = "always"`): each value's
/// spelling is written once, here, and reading the config and printing it both use it.
pub trait ConfigWord: Sized + Copy + PartialEq + 'static {
    /// Every value, with its spelling.
    const WORDS: &'static [(Self, &'static str)];

    /// The value spelled `word`, if any.
    fn from_word(word: &str) -> Option<Self> {
        Self::WORDS
            .iter()
            .find(|(_, w)| *w == word)
            .map(|(v, _)| *v)
    }

    /// How the config spells this value.
    fn word(self) -> &'static str {
        Self::WORDS
            .iter()
            .find(|(v, _)| *v == self)
            .map_or("", |(_, w)| w)
    }
}

impl ConfigWord for PlacesApi {
    const WORDS: &'static [(Self, &'static str)] =
        &[(PlacesApi::Legacy, "legacy"), (PlacesApi::New, "new")];
}

impl fmt::Display for PlacesApi {
    /// As the config spells it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// Which places API the herd calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlacesApi {
    /// Google's legacy Nearby Search (`GET ...?location=&radius=&key=`).
    Legacy,
    /// Places API (New) `places:searchNearby` (`POST`, key and field mask in headers), the
    /// only one a newly created Google project can enable.
    New,
}

/// `[places]`: where WHATSAT gets its places from.
#[derive(Debug, Clone)]
pub struct PlacesConfig {
    /// Which API `url` speaks.
    pub api: PlacesApi,
    /// The Nearby Search endpoint.
    pub url: String,
    /// The longest a client waits for the places part of a WHATSAT answer, including its
    /// wait for a free call slot.
    pub timeout: Duration,
    /// How long an answer is reused for the same position, radius and API; zero turns the
    /// cache off.
    pub cache_ttl: Duration,
    /// The most answers the cache holds; the least recently used goes first.
    pub cache_entries: usize,
    /// The most calls to the places API under way at once; others wait their turn.
    pub max_concurrent: usize,
}

/// `[log]`: where each server writes its log file, and how much of what it does.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The directory of `<Name>.log` files, relative to the working directory.
    pub dir: PathBuf,
    /// What the log keeps: every line, only what needs attention, or only the server's
    /// own events.
    pub lines: LogLines,
}

/// `[store]`: where each server keeps the records it stores, so that they survive a crash
/// and a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The directory of `<Name>.aof` files, relative to the working directory; `None` (an
    /// empty `dir` in the file) keeps records in memory only.
    pub dir: Option<PathBuf>,
    /// When the file is synced to the disk.
    pub fsync: Fsync,
    /// The smallest file that is rewritten (when more than twice the size of the records
    /// held), as Redis's `auto-aof-rewrite-min-size`: rewriting a small file gains little.
    pub rewrite_min_bytes: u64,
}

/// When a server's store file is synced to the disk, as Redis's `appendfsync`. Every
/// policy writes a record to the file (the kernel holds it) before the answer that
/// acknowledges it, so a server killed loses nothing; the policy decides what a power cut
/// or a crash of the machine may lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// Each answer waits until its record is on the disk (one sync for all the records
    /// waiting at that moment): nothing acknowledged is lost.
    Always,
    /// A thread syncs once a second; clients never wait for the disk, and at most about a
    /// second of records is lost.
    EverySec,
    /// The kernel writes the file out when it will.
    No,
}

impl ConfigWord for Fsync {
    const WORDS: &'static [(Self, &'static str)] = &[
        (Fsync::Always, "always"),
        (Fsync::EverySec, "everysec"),
        (Fsync::No, "no"),
    ];
}

impl fmt::Display for Fsync {
    /// As the config spells it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// `[limits]`: bounds on what one client can make a server hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The longest client line, not counting its line ending. An IAMAT whose AT line would
    /// be longer is invalid too: every server must be able to take the record as a line.
    pub max_line_bytes: usize,
    /// How far ahead of the server's clock an IAMAT's time may be; `None` (`0` in the
    /// file) turns the bound off. Without it, one IAMAT stamped far in the future would
    /// freeze that client's position everywhere: nothing newer could replace it.
    pub max_clock_skew: Option<Duration>,
    /// The most client connections a server holds at once; past it, new ones are closed
    /// at once, so that links and places calls always have descriptors. `None` in the file
    /// means "from the descriptor budget", which `herd run` and `herd up` work out at start
    /// ([`crate::descriptors`]); a server started otherwise with `None` has no cap.
    pub max_clients: Option<usize>,
}

/// `[tls]`: the herd's links speak mutual TLS, each server proving its name with a
/// certificate of the herd's own CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Where `ca.pem` and each server's `<Name>.pem` and `<Name>.key` are (`herd certs`
    /// makes them), relative to the working directory.
    pub dir: PathBuf,
}

/// One `[[nodes]]` table: a server of the herd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// The server's name, case kept (`Clark`).
    pub name: String,
    /// Where clients (and neighbors, unless `peer_addr` is set) reach the server.
    pub addr: SocketAddr,
    /// Where neighbors reach the server for herd links, if apart from `addr`.
    pub peer_addr: Option<SocketAddr>,
    /// Where the server binds its client port, when others reach it at `addr` through
    /// another address (`0.0.0.0:10003` beside `addr = "10.0.0.3:10003"`).
    pub listen: Option<SocketAddr>,
    /// Where clients reach the server over TLS, if anywhere (with `[tls]`).
    pub tls_addr: Option<SocketAddr>,
    /// Where the server answers HTTP for those who watch it (metrics, status), if anywhere.
    pub admin_addr: Option<SocketAddr>,
}

impl NodeConfig {
    /// The address the client listener binds.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.unwrap_or(self.addr)
    }
}

/// A whole, validated `herd.toml`.
#[derive(Debug, Clone)]
pub struct HerdConfig {
    /// `[places]`.
    pub places: PlacesConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[store]`.
    pub store: StoreConfig,
    /// `[limits]`.
    pub limits: Limits,
    /// `[tls]`, when the herd's links are encrypted and authenticated.
    pub tls: Option<TlsConfig>,
    /// Every server, in file order.
    pub nodes: Vec<NodeConfig>,
    /// Every link, as written (each one goes both ways).
    pub links: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    places: Option<RawPlaces>,
    log: Option<RawLog>,
    store: Option<RawStore>,
    limits: Option<RawLimits>,
    tls: Option<RawTls>,
    nodes: Option<Vec<RawNode>>,
    #[serde(default)]
    links: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlaces {
    api: Option<String>,
    url: Option<String>,
    timeout_ms: Option<u64>,
    cache_ttl_s: Option<u64>,
    cache_entries: Option<usize>,
    max_concurrent: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    dir: Option<String>,
    lines: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStore {
    dir: Option<String>,
    fsync: Option<String>,
    rewrite_min_bytes: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_line_bytes: Option<usize>,
    max_clock_skew_s: Option<u64>,
    max_clients: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    addr: String,
    peer_addr: Option<String>,
    listen: Option<String>,
    tls_addr: Option<String>,
    admin_addr: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    dir: String,
}

/// The sections a setting from the environment can be in (`HERD_<SECTION>__<KEY>`).
const ENV_SECTIONS: [&str; 5] = ["PLACES", "LOG", "STORE", "LIMITS", "TLS"];

/// The variables of `env` that are settings, `HERD_<SECTION>__<KEY>`. Other variables that
/// happen to start with `HERD_` (a test's `HERD_TEST_SEED`, say) are not the config's and
/// are left alone, except one that names a section with a single underscore after it
/// (`HERD_PLACES_URL`): that is a setting misspelled, and would otherwise be ignored
/// without a word.
fn overrides(env: HashMap<String, String>) -> Result<HashMap<String, String>, ConfigError> {
    let mut settings = HashMap::new();
    for (name, value) in env {
        // The prefix in any case, as the `config` crate matches it.
        let Some(rest) = strip_prefix_any_case(&name, ENV_PREFIX).and_then(|r| r.strip_prefix('_'))
        else {
            continue;
        };
        if rest.contains("__") {
            settings.insert(name, value);
        } else if ENV_SECTIONS.iter().any(|section| {
            strip_prefix_any_case(rest, section).is_some_and(|key| key.starts_with('_'))
        }) {
            return Err(ConfigError::MisspelledOverride(name));
        }
    }
    Ok(settings)
}

/// `text` after `prefix`, if it starts with `prefix` in any case (ASCII).
fn strip_prefix_any_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

impl HerdConfig {
    /// Reads `path`, applies `HERD_<SECTION>__<KEY>` overrides from the environment, and
    /// validates the result.
    pub fn load(path: &Path) -> Result<HerdConfig, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// As [`HerdConfig::load`], with the environment given as a map instead of read from the
    /// process (so tests do not race on process-wide variables).
    pub fn load_with_env(
        path: &Path,
        env: Option<HashMap<String, String>>,
    ) -> Result<HerdConfig, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::NotFound {
                path: path.to_owned(),
                dir: std::env::current_dir().unwrap_or_default(),
            });
        }
        let env = env.unwrap_or_else(|| std::env::vars().collect());
        let overrides = overrides(env)?;
        let error = match Self::load_from(path, &overrides) {
            Ok(config) => return Ok(config),
            Err(error) => error,
        };
        // When the file alone is fine, the error is the environment's: name the variable.
        if overrides.is_empty() || Self::load_from(path, &HashMap::new()).is_err() {
            return Err(error);
        }
        let mut names: Vec<&String> = overrides.keys().collect();
        names.sort();
        let culprit = names.iter().find_map(|name| {
            let one = HashMap::from([((*name).clone(), overrides[*name].clone())]);
            Self::load_from(path, &one)
                .err()
                .map(|e| (name.to_string(), e))
        });
        let (var, error) = culprit.unwrap_or_else(|| {
            let all: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
            (all.join(", "), error)
        });
        Err(ConfigError::Env {
            var,
            error: Box::new(error),
        })
    }

    /// Reads `path` with the settings `overrides` (variable name to value) on top.
    fn load_from(
        path: &Path,
        overrides: &HashMap<String, String>,
    ) -> Result<HerdConfig, ConfigError> {
        let raw: RawConfig = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides.clone())),
            )
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|error| ConfigError::Read {
                error: Box::new(error),
            })?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<HerdConfig, ConfigError> {
        let raw_places = raw.places.ok_or(ConfigError::MissingSection("places"))?;
        let api = match raw_places.api {
            None => PlacesApi::Legacy,
            Some(word) => PlacesApi::from_word(&word).ok_or(ConfigError::UnsupportedApi(word))?,
        };
        let default_url = match api {
            PlacesApi::Legacy => DEFAULT_PLACES_URL,
            PlacesApi::New => DEFAULT_NEW_PLACES_URL,
        };
        let url = raw_places.url.unwrap_or_else(|| default_url.to_owned());
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::BadUrl(url));
        }
        let timeout_ms = raw_places.timeout_ms.unwrap_or(DEFAULT_PLACES_TIMEOUT_MS);
        if timeout_ms == 0 {
            return Err(ConfigError::Zero("places.timeout_ms"));
        }
        let cache_entries = raw_places.cache_entries.unwrap_or(DEFAULT_CACHE_ENTRIES);
        if cache_entries == 0 {
            return Err(ConfigError::Zero("places.cache_entries"));
        }
        let max_concurrent = raw_places.max_concurrent.unwrap_or(DEFAULT_MAX_CONCURRENT);
        if max_concurrent == 0 {
            return Err(ConfigError::Zero("places.max_concurrent"));
        }
        let raw_limits = raw.limits.unwrap_or_default();
        let max_line_bytes = raw_limits.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE_BYTES);
        if max_line_bytes == 0 {
            return Err(ConfigError::Zero("limits.max_line_bytes"));
        }
        if raw_limits.max_clients == Some(0) {
            return Err(ConfigError::Zero("limits.max_clients"));
        }
        let skew_s = raw_limits
            .max_clock_skew_s
            .unwrap_or(DEFAULT_MAX_CLOCK_SKEW_S);
        let nodes = validate_nodes(raw.nodes.ok_or(ConfigError::MissingSection("nodes"))?)?;
        validate_links(&nodes, &raw.links)?;
        let tls = raw.tls.map(|t| TlsConfig { dir: t.dir.into() });
        let raw_store = raw.store.unwrap_or_default();
        let fsync = match raw_store.fsync {
            None => Fsync::EverySec,
            Some(word) => Fsync::from_word(&word).ok_or(ConfigError::UnsupportedFsync(word))?,
        };
        let store_dir = raw_store
            .dir
            .unwrap_or_else(|| DEFAULT_STORE_DIR.to_owned());
        validate_tls(tls.as_ref(), &nodes)?;
        let raw_log = raw.log.unwrap_or_default();
        let lines = match raw_log.lines {
            None => LogLines::All,
            Some(word) => {
                LogLines::from_word(&word).ok_or(ConfigError::UnsupportedLogLines(word))?
            }
        };
        Ok(HerdConfig {
            places: PlacesConfig {
                api,
                url,
                timeout: Duration::from_millis(timeout_ms),
                cache_ttl: Duration::from_secs(
                    raw_places.cache_ttl_s.unwrap_or(DEFAULT_CACHE_TTL_S),
                ),
                cache_entries,
                max_concurrent,
            },
            log: LogConfig {
                dir: raw_log.dir.unwrap_or_else(|| "logs".to_owned()).into(),
                lines,
            },
            store: StoreConfig {
                dir: (!store_dir.is_empty()).then(|| store_dir.into()),
                fsync,
                rewrite_min_bytes: raw_store
                    .rewrite_min_bytes
                    .unwrap_or(DEFAULT_REWRITE_MIN_BYTES),
            },
            limits: Limits {
                max_line_bytes,
                max_clock_skew: (skew_s > 0).then(|| Duration::from_secs(skew_s)),
                max_clients: raw_limits.max_clients,
            },
            tls,
            nodes,
            links: raw.links,
        })
    }

    /// The server named `name`, or an error that lists the names there are.
    pub fn node(&self, name: &str) -> Result<&NodeConfig, ConfigError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| ConfigError::UnknownServer {
                name: name.to_owned(),
                known: self
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The servers linked to `name`, in the order of the links.
    pub fn neighbors<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a NodeConfig> + 'a {
        self.links.iter().filter_map(move |(a, b)| {
            let other = if a == name {
                b
            } else if b == name {
                a
            } else {
                return None;
            };
            self.nodes.iter().find(|n| &n.name == other)
        })
    }
}

fn validate_nodes(raw: Vec<RawNode>) -> Result<Vec<NodeConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(ConfigError::NoNodes);
    }
    let mut names = HashSet::new();
    let mut used: HashMap<SocketAddr, String> = HashMap::new();
    let mut nodes = Vec::with_capacity(raw.len());
    for n in raw {
        if n.name.is_empty()
            || n.name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(ConfigError::BadName(n.name));
        }
        if !names.insert(n.name.clone()) {
            return Err(ConfigError::DuplicateName(n.name));
        }
        let parse = |field: &'static str, value: &str| {
            value
                .parse::<SocketAddr>()
                .map_err(|_| ConfigError::BadAddress {
                    node: n.name.clone(),
                    field,
                    value: value.to_owned(),
                })
        };
        let node = NodeConfig {
            addr: parse("addr", &n.addr)?,
            peer_addr: n
                .peer_addr
                .as_deref()
                .map(|a| parse("peer_addr", a))
                .transpose()?,
            listen: n
                .listen
                .as_deref()
                .map(|a| parse("listen", a))
                .transpose()?,
            tls_addr: n
                .tls_addr
                .as_deref()
                .map(|a| parse("tls_addr", a))
                .transpose()?,
            admin_addr: n
                .admin_addr
                .as_deref()
                .map(|a| parse("admin_addr", a))
                .transpose()?,
            name: n.name,
        };
        let addresses = [
            Some(("addr", node.addr)),
            node.peer_addr.map(|a| ("peer_addr", a)),
            node.tls_addr.map(|a| ("tls_addr", a)),
            node.admin_addr.map(|a| ("admin_addr", a)),
        ];
        for (field, addr) in addresses.into_iter().flatten() {
            let user = format!("{}.{field}", node.name);
            if let Some(first) = used.insert(addr, user.clone()) {
                return Err(ConfigError::DuplicateAddress {
                    addr,
                    first,
                    second: user,
                });
            }
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// With `[tls]`, every server needs a `peer_addr` (its port for TLS links) and a name that a
/// certificate can carry (a DNS name); `tls_addr` needs `[tls]`, for its certificate.
fn validate_tls(tls: Option<&TlsConfig>, nodes: &[NodeConfig]) -> Result<(), ConfigError> {
    for node in nodes {
        match tls {
            None if node.tls_addr.is_some() => {
                return Err(ConfigError::TlsAddrWithoutTls(node.name.clone()));
            }
            None => {}
            Some(_) if node.peer_addr.is_none() => {
                return Err(ConfigError::TlsWithoutPeerAddr(node.name.clone()));
            }
            Some(_) if rustls::pki_types::DnsName::try_from(node.name.as_str()).is_err() => {
                return Err(ConfigError::NotADnsName(node.name.clone()));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn validate_links(nodes: &[NodeConfig], links: &[(String, String)]) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (a, b) in links {
        for end in [a, b] {
            if !nodes.iter().any(|n| &n.name == end) {
                return Err(ConfigError::UnknownServerInLink(
                    a.clone(),
                    b.clone(),
                    end.clone(),
                ));
            }
        }
        if a == b {
            return Err(ConfigError::SelfLink(a.clone()));
        }
        let key = if a < b { (a, b) } else { (b, a) };
        if !seen.insert(key) {
            return Err(ConfigError::DuplicateLink(a.clone(), b.clone()));
        }
    }
    Ok(())
}

impl fmt::Display for HerdConfig {
    /// The herd as `herd check` prints it: servers, addresses, links, places.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "servers:")?;
        for n in &self.nodes {
            write!(f, "  {:<10} {}", n.name, n.addr)?;
            if let Some(p) = n.peer_addr {
                write!(f, "  peer_addr {p}")?;
            }
            if let Some(l) = n.listen {
                write!(f, "  listen {l}")?;
            }
            if let Some(t) = n.tls_addr {
                write!(f, "  tls_addr {t}")?;
            }
            if let Some(a) = n.admin_addr {
                write!(f, "  admin_addr {a}")?;
            }
            let neighbors: Vec<_> = self.neighbors(&n.name).map(|m| m.name.as_str()).collect();
            writeln!(f, "  neighbors: {}", neighbors.join(", "))?;
        }
        writeln!(f, "links:")?;
        for (a, b) in &self.links {
            writeln!(f, "  {a} - {b}")?;
        }
        writeln!(
            f,
            "places: {} {} (timeout {} ms, cache {} s x {} answers, {} calls at once)",
            self.places.api,
            self.places.url,
            self.places.timeout.as_millis(),
            self.places.cache_ttl.as_secs(),
            self.places.cache_entries,
            self.places.max_concurrent
        )?;
        writeln!(
            f,
            "log dir: {} (lines: {})",
            self.log.dir.display(),
            self.log.lines
        )?;
        match &self.store.dir {
            Some(dir) => writeln!(f, "store: {} (fsync {})", dir.display(), self.store.fsync)?,
            None => writeln!(f, "store: off (records in memory only)")?,
        }
        match &self.tls {
            Some(tls) => writeln!(
                f,
                "tls: links over mutual TLS, certificates in {}",
                tls.dir.display()
            )?,
            None => writeln!(f, "tls: off (links in plain TCP)")?,
        }
        writeln!(f, "max line: {} bytes", self.limits.max_line_bytes)?;
        match self.limits.max_clock_skew {
            Some(skew) => writeln!(f, "client clocks: at most {} s ahead", skew.as_secs())?,
            None => writeln!(f, "client clocks: not bounded")?,
        }
        match self.limits.max_clients {
            Some(max) => write!(f, "max clients: {max} per server"),
            None => write!(f, "max clients: from the descriptor budget at start"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const GOOD: &str = r#"
links = [["Clark", "Jaquez"], ["Clark", "Bona"]]

[places]
api = "legacy"
url = "http://127.0.0.1:9/nearby"
timeout_ms = 250

[log]
dir = "somewhere"

[limits]
max_line_bytes = 100

[[nodes]]
name = "Clark"
addr = "127.0.0.1:10003"

[[nodes]]
name = "Jaquez"
addr = "127.0.0.1:10004"
peer_addr = "127.0.0.1:20004"

[[nodes]]
name = "Bona"
addr = "10.0.0.3:10001"
listen = "0.0.0.0:10001"
"#;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<HerdConfig, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HerdConfig::load_with_env(file.path(), Some(env))
    }

    fn refused(text: &str) -> String {
        match load(text, &[]) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_file_loads_with_names_in_their_case() {
        let c = load(GOOD, &[]).unwrap();
        assert_eq!(c.places.timeout, Duration::from_millis(250));
        assert_eq!(c.limits.max_line_bytes, 100);
        assert_eq!(c.log.dir, PathBuf::from("somewhere"));
        let names: Vec<_> = c.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["Clark", "Jaquez", "Bona"]);
        let jaquez = c.node("Jaquez").unwrap();
        assert_eq!(jaquez.peer_addr, Some("127.0.0.1:20004".parse().unwrap()));
        let bona = c.node("Bona").unwrap();
        assert_eq!(bona.listen_addr(), "0.0.0.0:10001".parse().unwrap());
        let clark: Vec<_> = c.neighbors("Clark").map(|n| n.name.as_str()).collect();
        assert_eq!(clark, ["Jaquez", "Bona"]);
        let bona: Vec<_> = c.neighbors("Bona").map(|n| n.name.as_str()).collect();
        assert_eq!(bona, ["Clark"]);
    }

    #[test]
    fn the_new_api_has_its_own_default_url_and_the_cache_its_settings() {
        let text = GOOD
            .replace(
                "api = \"legacy\"",
                "api = \"new\"\ncache_ttl_s = 0\nmax_concurrent = 3",
            )
            .replace("url = \"http://127.0.0.1:9/nearby\"\n", "");
        let c = load(&text, &[]).unwrap();
        assert_eq!(c.places.api, PlacesApi::New);
        assert_eq!(c.places.url, DEFAULT_NEW_PLACES_URL);
        assert_eq!(c.places.cache_ttl, Duration::ZERO);
        assert_eq!(c.places.max_concurrent, 3);
        assert_eq!(c.places.cache_entries, DEFAULT_CACHE_ENTRIES);
    }

    #[test]
    fn environment_overrides_any_setting() {
        let c = load(
            GOOD,
            &[
                (
                    "HERD_PLACES__URL",
                    "http://127.0.0.1:8080/nearbysearch/json",
                ),
                ("HERD_PLACES__TIMEOUT_MS", "1500"),
                ("HERD_LIMITS__MAX_LINE_BYTES", "64"),
                ("HERD_LOG__DIR", "/tmp/herd-logs"),
            ],
        )
        .unwrap();
        assert_eq!(c.places.url, "http://127.0.0.1:8080/nearbysearch/json");
        assert_eq!(c.places.timeout, Duration::from_millis(1500));
        assert_eq!(c.limits.max_line_bytes, 64);
        assert_eq!(c.log.dir, PathBuf::from("/tmp/herd-logs"));
    }

    #[test]
    fn log_lines_are_read_overridden_refused_and_shown() {
        let c = load(GOOD, &[]).unwrap();
        assert_eq!(c.log.lines, LogLines::All, "the default");
        assert!(
            c.to_string().contains("log dir: somewhere (lines: all)"),
            "{c}"
        );
        let errors = GOOD.replace(
            "dir = \"somewhere\"",
            "dir = \"somewhere\"\nlines = \"errors\"",
        );
        let c = load(&errors, &[]).unwrap();
        assert_eq!(c.log.lines, LogLines::Errors);
        assert!(c.to_string().contains("(lines: errors)"), "{c}");
        let c = load(&errors, &[("HERD_LOG__LINES", "none")]).unwrap();
        assert_eq!(c.log.lines, LogLines::None);
        for wrong in ["verbose", "All", "", "0"] {
            let file = GOOD.replace("dir = \"somewhere\"", &format!("lines = {wrong:?}"));
            assert_eq!(
                refused(&file),
                format!(
                    "log.lines = {wrong:?} is not a level: use \"all\", \"errors\" or \"none\""
                ),
            );
        }
        let from_env = load(GOOD, &[("HERD_LOG__LINES", "quiet")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            from_env,
            "environment variable HERD_LOG__LINES: log.lines = \"quiet\" is not a level: use \
             \"all\", \"errors\" or \"none\""
        );
    }

    #[test]
    fn every_word_of_the_api_and_fsync_reads_back_as_it_prints_and_others_are_refused() {
        for api in [PlacesApi::Legacy, PlacesApi::New] {
            let c = load(GOOD, &[("HERD_PLACES__API", api.word())]).unwrap();
            assert_eq!(c.places.api, api);
        }
        for fsync in [Fsync::Always, Fsync::EverySec, Fsync::No] {
            let c = load(GOOD, &[("HERD_STORE__FSYNC", fsync.word())]).unwrap();
            assert_eq!(c.store.fsync, fsync);
        }
        assert_eq!(load(GOOD, &[]).unwrap().store.fsync, Fsync::EverySec);
        let api = load(GOOD, &[("HERD_PLACES__API", "v2")]).unwrap_err();
        assert!(
            api.to_string()
                .ends_with("places.api = \"v2\" is not supported: use \"legacy\" or \"new\""),
            "{api}"
        );
        let fsync = load(GOOD, &[("HERD_STORE__FSYNC", "often")]).unwrap_err();
        assert!(
            fsync.to_string().ends_with(
                "store.fsync = \"often\" is not a policy: use \"always\", \"everysec\" or \"no\""
            ),
            "{fsync}"
        );
    }

    #[test]
    fn other_herd_variables_are_left_alone_and_misspelled_settings_named() {
        let c = load(GOOD, &[("HERD_TEST_SEED", "7"), ("HERD_HOME", "/x")]).unwrap();
        assert_eq!(c.places.timeout, Duration::from_millis(250));
        let c = load(GOOD, &[("herd_places__timeout_ms", "7")]).unwrap();
        assert_eq!(
            c.places.timeout,
            Duration::from_millis(7),
            "any case, as before"
        );
        for misspelled in [
            "HERD_PLACES_URL",
            "HERD_log_dir",
            "HERD_LIMITS_MAX_LINE_BYTES",
        ] {
            let message = load(GOOD, &[(misspelled, "1")]).unwrap_err().to_string();
            assert!(
                message.contains(misspelled) && message.contains("HERD_<SECTION>__<KEY>"),
                "{misspelled}: got {message}"
            );
        }
        let unknown = load(GOOD, &[("HERD_PLACES__URLL", "x")])
            .unwrap_err()
            .to_string();
        assert!(
            unknown.starts_with("environment variable HERD_PLACES__URLL: ")
                && unknown.contains("urll"),
            "got {unknown}"
        );
        // A bad value too is the variable's, not the file's.
        let zero = load(
            GOOD,
            &[("HERD_PLACES__TIMEOUT_MS", "0"), ("HERD_LOG__DIR", "x")],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            zero,
            "environment variable HERD_PLACES__TIMEOUT_MS: places.timeout_ms must be greater than 0"
        );
    }

    #[test]
    fn a_name_that_could_not_name_a_log_file_or_a_word_is_refused() {
        // As TOML strings.
        for name in [
            r#""""#,
            r#""Cl ark""#,
            r#""Cl\u0001ark""#,
            r#""../x""#,
            r#""a/b""#,
        ] {
            let file = GOOD.replacen("name = \"Clark\"", &format!("name = {name}"), 1);
            let message = refused(&file);
            assert!(message.contains("is not usable"), "{name}: got {message}");
        }
    }

    #[test]
    fn the_checked_in_herd_toml_is_the_five_server_herd() {
        let c = HerdConfig::load_with_env(Path::new("herd.toml"), Some(HashMap::new())).unwrap();
        let nodes: Vec<_> = c
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.addr.to_string()))
            .collect();
        assert_eq!(
            nodes,
            [
                ("Bailey", "127.0.0.1:10000".to_owned()),
                ("Bona", "127.0.0.1:10001".to_owned()),
                ("Campbell", "127.0.0.1:10002".to_owned()),
                ("Clark", "127.0.0.1:10003".to_owned()),
                ("Jaquez", "127.0.0.1:10004".to_owned()),
            ]
        );
        let mut links: Vec<_> = c
            .links
            .iter()
            .map(|(a, b)| {
                if a < b {
                    (a.as_str(), b.as_str())
                } else {
                    (b.as_str(), a.as_str())
                }
            })
            .collect();
        links.sort();
        assert_eq!(
            links,
            [
                ("Bailey", "Bona"),
                ("Bailey", "Campbell"),
                ("Bona", "Campbell"),
                ("Bona", "Clark"),
                ("Campbell", "Jaquez"),
                ("Clark", "Jaquez"),
            ]
        );
        assert_eq!(c.places.url, DEFAULT_PLACES_URL);
    }

    #[test]
    fn refusals_name_the_problem() {
        let table: [(&str, &str, &str); 11] = [
            ("\"Bona\"]]", "\"Nobody\"]]", "unknown server \"Nobody\""),
            (
                "[\"Clark\", \"Jaquez\"]",
                "[\"Clark\", \"Clark\"]",
                "to itself",
            ),
            (
                "[\"Clark\", \"Bona\"]",
                "[\"Jaquez\", \"Clark\"]",
                "listed twice",
            ),
            (
                "127.0.0.1:10004\"",
                "127.0.0.1:10003\"",
                "127.0.0.1:10003 is used twice: by Clark.addr and by Jaquez.addr",
            ),
            (
                "127.0.0.1:10004\"",
                "localhost:99999\"",
                "addr = \"localhost:99999\"",
            ),
            (
                "\"127.0.0.1:20004\"",
                "\"127.0.0.1:10003\"",
                "Jaquez.peer_addr",
            ),
            (
                "name = \"Bona\"",
                "name = \"Clark\"",
                "\"Clark\" is listed twice",
            ),
            (
                "api = \"legacy\"",
                "api = \"soap\"",
                "places.api = \"soap\"",
            ),
            ("url = \"http", "url = \"ftp", "not an http"),
            (
                "timeout_ms = 250",
                "timeout_ms = 0",
                "places.timeout_ms must be greater than 0",
            ),
            (
                "timeout_ms = 250",
                "max_concurrent = 0",
                "places.max_concurrent must be greater than 0",
            ),
        ];
        for (from, to, expected) in table {
            let message = refused(&GOOD.replacen(from, to, 1));
            assert!(message.contains(expected), "{to}: got {message}");
        }
    }

    #[test]
    fn missing_sections_and_unknown_keys_are_named() {
        let no_places = GOOD.replace("[places]", "[elsewhere]");
        assert!(refused(&no_places).contains("elsewhere"), "unknown section");
        let only_nodes = GOOD.split("[places]").next().unwrap().to_owned();
        assert!(refused(&only_nodes).contains("missing section [places]"));
        let typo = GOOD.replace("timeout_ms", "timeout_msec");
        assert!(refused(&typo).contains("timeout_msec"));
        let no_nodes = GOOD.split("[[nodes]]").next().unwrap().replace(
            "links = [[\"Clark\", \"Jaquez\"], [\"Clark\", \"Bona\"]]",
            "",
        );
        assert!(refused(&no_nodes).contains("missing section [nodes]"));
    }

    #[test]
    fn an_unknown_server_name_lists_the_known_ones() {
        let c = load(GOOD, &[]).unwrap();
        let e = c.node("clark").unwrap_err().to_string();
        assert!(
            e.contains("\"clark\"") && e.contains("Clark, Jaquez, Bona"),
            "{e}"
        );
    }
}
