//! The `herd` command line: `run`, `up`, `check`, `status` and `certs`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::actors::places_proxy::{API_KEY_VAR, ApiKey};
use crate::certs;
use crate::config::{ConfigError, HerdConfig};
use crate::descriptors;
use crate::node::Node;
use crate::status;

/// A proxy server herd: phones report positions to any server, any server answers what is
/// near them.
#[derive(Debug, Parser)]
#[command(name = "herd", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one server of the herd, by name.
    Run {
        /// The server's name in the config (case kept: `Clark`).
        name: String,
        /// The herd's config file.
        #[arg(short, long, default_value = "herd.toml")]
        config: PathBuf,
    },
    /// Run every server of the herd in this one process.
    Up {
        /// The herd's config file.
        #[arg(short, long, default_value = "herd.toml")]
        config: PathBuf,
    },
    /// Check a config file and print the herd it describes.
    Check {
        /// The herd's config file.
        #[arg(short, long, default_value = "herd.toml")]
        config: PathBuf,
    },
    /// Make the files the herd needs for mutual TLS: a CA, and each server's certificate
    /// and key. Files already there are kept, and a CA already there signs the new ones.
    Certs {
        /// The herd's config file.
        #[arg(short, long, default_value = "herd.toml")]
        config: PathBuf,
        /// Where to write them (made if missing): by default the config's [tls] dir, else
        /// `certs`.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Make every file anew, the CA too, replacing those there.
        #[arg(long)]
        force: bool,
        /// How many days the servers' certificates are valid.
        #[arg(long, default_value_t = certs::DEFAULT_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(certs::MAX_DAYS)))]
        days: u32,
    },
    /// One table of the whole herd, asked of each server's admin address; the exit status
    /// is 0 when every server answers, 1 otherwise.
    Status {
        /// The herd's config file.
        #[arg(short, long, default_value = "herd.toml")]
        config: PathBuf,
        /// Print each server's status as JSON instead (one array).
        #[arg(long)]
        json: bool,
    },
}

impl Cli {
    /// Carries out the command.
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Run { name, config } => {
                let herd = load(&config)?;
                herd.node(&name)?;
                serve(herd, vec![name])
            }
            Command::Up { config } => {
                let herd = load(&config)?;
                let names = herd.nodes.iter().map(|n| n.name.clone()).collect();
                serve(herd, names)
            }
            Command::Check { config } => {
                let herd = load(&config)?;
                let key = match ApiKey::from_env() {
                    Some(_) => format!("{API_KEY_VAR} is set"),
                    None => format!(
                        "{API_KEY_VAR} is not set: places calls go without a key, which Google \
                         refuses"
                    ),
                };
                println!("{}: ok\n{herd}\nplaces key: {key}", config.display());
                Ok(())
            }
            Command::Certs {
                config,
                out,
                force,
                days,
            } => {
                let herd = load(&config)?;
                let out = out.unwrap_or_else(|| certs::default_dir(&herd));
                let report = certs::make(&herd, &out, &certs::Options { force, days })?;
                write!(std::io::stdout().lock(), "{report}").context("cannot print the report")
            }
            Command::Status { config, json } => {
                let herd = load(&config)?;
                let all_up = status::show(&herd, json)?;
                if all_up {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("not every server of the herd answered"))
                }
            }
        }
    }
}

/// Reads the config, blaming what is wrong: a file that is not there (and how to name
/// another), a setting from the environment, or the file.
fn load(path: &Path) -> anyhow::Result<HerdConfig> {
    HerdConfig::load(path).map_err(|e| match e {
        ConfigError::NotFound { .. } => anyhow::anyhow!("{e}; name another with -c FILE"),
        ConfigError::Env { .. } => anyhow::anyhow!(e),
        e => anyhow::anyhow!("config {} refused: {e}", path.display()),
    })
}

/// Starts the named servers in one actix system (each bound before any is said to
/// listen) and runs them until Ctrl-C, SIGTERM or SIGHUP; SIGUSR1 reopens their logs. A
/// second stop signal while they deliver what they owe ends the process at once.
fn serve(mut herd: HerdConfig, names: Vec<String>) -> anyhow::Result<()> {
    budget_descriptors(&mut herd, &names)?;
    let key = ApiKey::from_env();
    if key.is_none() {
        let _ = writeln!(
            std::io::stderr(),
            "warning: {API_KEY_VAR} is not set: places calls go without a key, which \
             Google refuses (WHATSAT then answers its REQUEST_DENIED)"
        );
    }
    actix_rt::System::new().block_on(async move {
        let mut nodes = Vec::with_capacity(names.len());
        for name in &names {
            match Node::start(&herd, name, key.clone()).await {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    // Those already up stop in order (their logs say so) before the exit,
                    // and none was said to listen.
                    stop_all(nodes).await;
                    return Err(e.into());
                }
            }
        }
        for node in &nodes {
            let name = node.name();
            say(format_args!(
                "{name} listening on {} (log: {})",
                node.client_addr(),
                herd.log.dir.join(format!("{name}.log")).display()
            ));
        }
        let mut signals = Signals::listen()?;
        signals.serve_until_stopped(&nodes).await;
        say(format_args!(
            "stopping: delivering answers owed, then exiting (again to exit at once)"
        ));
        tokio::select! {
            () = stop_all(nodes) => Ok(()),
            () = signals.stop.recv() => {
                say(format_args!("stopped at once: answers still owed were not delivered"));
                Err(anyhow::anyhow!("stopped by a second signal before every answer owed was delivered"))
            }
        }
    })
}

/// Raises the open-file limit as far as it goes, and caps each server's clients at its
/// share of what the servers' links, places calls, logs and listeners leave (unless the
/// config sets `max_clients`), so that clients can never take the descriptors a link needs.
fn budget_descriptors(herd: &mut HerdConfig, names: &[String]) -> anyhow::Result<()> {
    let limit = descriptors::raise_open_file_limit().unwrap_or_else(|e| {
        let _ = writeln!(
            std::io::stderr(),
            "warning: cannot raise the open-file limit: {e}"
        );
        None
    });
    // Unlimited: nothing to share out.
    let Some(limit) = limit else {
        return Ok(());
    };
    let cap = descriptors::client_cap(limit, herd, names)?;
    match herd.limits.max_clients {
        Some(max) if max > cap => {
            let _ = writeln!(
                std::io::stderr(),
                "warning: max_clients = {max}, but the open-file limit ({limit}) leaves room \
                 for {cap} per server: past that, new connections wait until some close"
            );
        }
        Some(_) => {}
        None => herd.limits.max_clients = Some(cap),
    }
    Ok(())
}

/// Stops `nodes` all at once: each may wait for answers owed (up to the places timeout),
/// and one stopping must not leave the others taking clients meanwhile.
async fn stop_all(nodes: Vec<Node>) {
    futures_util::future::join_all(nodes.into_iter().map(Node::stop)).await;
}

/// Prints a line for the operator. A closed standard output (`herd up | head`) must not
/// stop a running server, so failures to print are ignored, unlike `println!`'s panic.
fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The signals a running herd listens for: Ctrl-C, SIGTERM and SIGHUP (a closed terminal)
/// stop it, SIGUSR1 reopens its logs and reads its TLS files again.
struct Signals {
    stop: StopSignals,
    reopen: Signal,
}

/// The signals that stop a herd. A SIGHUP ignored from the start (`nohup herd up`) stays
/// ignored.
struct StopSignals {
    interrupt: Signal,
    term: Signal,
    hangup: Option<Signal>,
}

impl Signals {
    fn listen() -> anyhow::Result<Signals> {
        let listen = |kind, name| signal(kind).with_context(|| format!("cannot listen for {name}"));
        Ok(Signals {
            stop: StopSignals {
                interrupt: listen(SignalKind::interrupt(), "Ctrl-C")?,
                term: listen(SignalKind::terminate(), "SIGTERM")?,
                hangup: if hangup_ignored() {
                    None
                } else {
                    Some(listen(SignalKind::hangup(), "SIGHUP")?)
                },
            },
            reopen: listen(SignalKind::user_defined1(), "SIGUSR1")?,
        })
    }

    /// Waits for a signal to stop, reopening the servers' logs on each SIGUSR1 meanwhile,
    /// as nginx does (a rotation's `postrotate` sends it once the files are moved), and
    /// reading their TLS files again (a certificate renewed on disk needs no restart).
    async fn serve_until_stopped(&mut self, nodes: &[Node]) {
        loop {
            tokio::select! {
                () = self.stop.recv() => return,
                _ = self.reopen.recv() => {
                    for node in nodes {
                        node.reopen_log();
                        node.reload_tls();
                    }
                }
            }
        }
    }
}

impl StopSignals {
    /// Waits for one of them.
    async fn recv(&mut self) {
        let hung_up = async {
            match self.hangup.as_mut() {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.term.recv() => {}
            _ = hung_up => {}
        }
    }
}

/// Whether this process was started with SIGHUP ignored (by `nohup`), from the kernel's
/// account of it (`SigIgn` in `/proc/self/status`, a mask in which signal 1 is bit 0).
fn hangup_ignored() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ignored = status.lines().find_map(|line| line.strip_prefix("SigIgn:"));
    ignored
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & 1 != 0)
}
