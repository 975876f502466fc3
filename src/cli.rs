//! The `herd` command line: `run`, `up` and `check`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::actors::places_proxy::{API_KEY_VAR, ApiKey};
use crate::config::HerdConfig;
use crate::descriptors;
use crate::node::Node;

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
                println!("{}: ok\n{herd}", config.display());
                Ok(())
            }
        }
    }
}

fn load(path: &Path) -> anyhow::Result<HerdConfig> {
    HerdConfig::load(path).with_context(|| format!("config {} refused", path.display()))
}

/// Starts the named servers in one actix system and runs them until Ctrl-C, SIGTERM or
/// SIGHUP; SIGUSR1 reopens their logs.
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
            let node = match Node::start(&herd, name, key.clone()).await {
                Ok(node) => node,
                Err(e) => {
                    // Those already up stop in order (their logs say so) before the exit.
                    stop_all(nodes).await;
                    return Err(e.into());
                }
            };
            say(format_args!(
                "{name} listening on {} (log: {})",
                node.client_addr(),
                herd.log.dir.join(format!("{name}.log")).display()
            ));
            nodes.push(node);
        }
        let signal = serve_until_stopped(&nodes).await;
        say(format_args!(
            "stopping: delivering answers owed, then exiting"
        ));
        stop_all(nodes).await;
        signal
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

/// Waits for Ctrl-C, SIGTERM or SIGHUP (a closed terminal: the servers still stop in
/// order, logs flushed), reopening the servers' logs on each SIGUSR1 meanwhile, as nginx
/// does (a rotation's `postrotate` sends it once the files are moved). A SIGHUP ignored
/// from the start (`nohup herd up`) stays ignored.
async fn serve_until_stopped(nodes: &[Node]) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen = |kind, name| signal(kind).with_context(|| format!("cannot listen for {name}"));
    let mut interrupt = listen(SignalKind::interrupt(), "Ctrl-C")?;
    let mut term = listen(SignalKind::terminate(), "SIGTERM")?;
    let mut hangup = if hangup_ignored() {
        None
    } else {
        Some(listen(SignalKind::hangup(), "SIGHUP")?)
    };
    let hung_up = async {
        match hangup.as_mut() {
            Some(hangup) => hangup.recv().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(hung_up);
    let mut reopen = listen(SignalKind::user_defined1(), "SIGUSR1")?;
    loop {
        tokio::select! {
            _ = interrupt.recv() => return Ok(()),
            _ = term.recv() => return Ok(()),
            _ = &mut hung_up => return Ok(()),
            _ = reopen.recv() => nodes.iter().for_each(Node::reopen_log),
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
