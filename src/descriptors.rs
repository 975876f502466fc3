//! The descriptor budget: what a server needs of the process's open-file limit, and the
//! cap on client connections that the rest allows, as Redis works out `maxclients`.
//!
//! Every client connection takes a file descriptor, and so does every link, places call,
//! log file and listener. Without a cap, clients can take them all: a restarted neighbor
//! then cannot link, and the herd is cut in two until the clients leave. So at start the
//! soft limit is raised to the hard one, descriptors are set aside for everything that is
//! not a client, and the clients get the rest ([`client_cap`]), unless the config sets
//! `[limits] max_clients` itself.

use std::io;

use rustix::process::{Resource, getrlimit, setrlimit};

use crate::config::HerdConfig;

/// Descriptors the process needs whatever it serves: standard streams, the event loop's
/// epoll and wake-ups, signal handling, and files read in passing.
pub const PROCESS_RESERVE: u64 = 16;

/// Why no cap on clients could be worked out.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The open-file limit leaves nothing for clients.
    #[error(
        "the open-file limit ({limit}) leaves no descriptors for clients: these servers need \
         {reserved} for their links, places calls, logs and listeners (raise it with \
         `ulimit -n`, or run fewer servers in this process)"
    )]
    TooLow {
        /// The soft limit in force.
        limit: u64,
        /// What the servers need besides clients.
        reserved: u64,
    },
}

/// Raises the soft limit on open files to the hard limit, and returns the soft limit now in
/// force (`None` when unlimited).
pub fn raise_open_file_limit() -> io::Result<Option<u64>> {
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit)?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

/// The descriptors server `name` needs besides its clients: its listeners and log, three
/// per neighbor (its link out, the neighbor's link in, and a newer one replacing it), two
/// per places call allowed at once (the call's connection and its name lookup), its store
/// file's, and its admin listener's.
pub fn reserved(config: &HerdConfig, name: &str) -> u64 {
    let Ok(node) = config.node(name) else {
        return 0;
    };
    let listeners = 1 + u64::from(node.peer_addr.is_some()) + u64::from(node.tls_addr.is_some());
    let log = 2;
    let links = 3 * config.neighbors(name).count() as u64;
    let places = 2 * config.places.max_concurrent as u64;
    // The store file, a rewrite's new one, and its directory when the rename is synced.
    let store = if config.store.dir.is_some() { 3 } else { 0 };
    // The listener, a few scrapes or pages at once, and a `/herd`'s call to each server.
    let admin = if node.admin_addr.is_some() {
        1 + ADMIN_CONNECTIONS + config.nodes.len() as u64
    } else {
        0
    };
    listeners + log + links + places + store + admin
}

/// Connections to the admin listener a server keeps descriptors for.
const ADMIN_CONNECTIONS: u64 = 8;

/// The cap on each server's clients when servers `names` of `config` share a process whose
/// open-file limit is `limit`: what is left once every server's reserve is set aside,
/// shared equally.
pub fn client_cap(limit: u64, config: &HerdConfig, names: &[String]) -> Result<usize, BudgetError> {
    let reserved = PROCESS_RESERVE + names.iter().map(|n| reserved(config, n)).sum::<u64>();
    let per_server = limit.saturating_sub(reserved) / names.len().max(1) as u64;
    if per_server == 0 {
        return Err(BudgetError::TooLow { limit, reserved });
    }
    Ok(usize::try_from(per_server).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    fn five() -> HerdConfig {
        HerdConfig::load_with_env(Path::new("herd.toml"), Some(HashMap::new())).unwrap()
    }

    #[test]
    fn each_server_reserves_for_its_links_places_log_and_listeners() {
        let herd = five();
        // Bona has three neighbors; 16 places calls at once by default; an admin listener
        // (itself, its connections, and a `/herd` call to each of the five servers).
        let admin = 1 + ADMIN_CONNECTIONS + 5;
        assert_eq!(reserved(&herd, "Bona"), 1 + 2 + 3 * 3 + 2 * 16 + 3 + admin);
        assert_eq!(
            reserved(&herd, "Bailey"),
            1 + 2 + 3 * 2 + 2 * 16 + 3 + admin
        );
        let mut herd = herd;
        let bona = herd.nodes.iter_mut().find(|n| n.name == "Bona").unwrap();
        bona.admin_addr = None;
        assert_eq!(reserved(&herd, "Bona"), 1 + 2 + 3 * 3 + 2 * 16 + 3);
    }

    #[test]
    fn clients_share_what_the_reserves_leave() {
        let herd = five();
        let clark = vec!["Clark".to_owned()];
        let need = PROCESS_RESERVE + reserved(&herd, "Clark");
        assert_eq!(client_cap(need + 100, &herd, &clark).unwrap(), 100);
        let all: Vec<String> = herd.nodes.iter().map(|n| n.name.clone()).collect();
        let need: u64 = PROCESS_RESERVE + all.iter().map(|n| reserved(&herd, n)).sum::<u64>();
        assert_eq!(client_cap(need + 500, &herd, &all).unwrap(), 100);
        let refused = client_cap(need, &herd, &all).unwrap_err().to_string();
        assert!(refused.contains("ulimit -n"), "{refused}");
    }
}
