//! `herd status`: one table of the whole herd, asked of each server's admin address, for a
//! person at a terminal, or as JSON for a script; its exit status says whether every
//! server answered, so scripts and systemd can act on it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;

use crate::admin::{self, ServerStatus};
use crate::config::HerdConfig;

/// How long a server may take to answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks every server of `herd` for its status and prints one table (or JSON); returns
/// whether every server answered.
pub fn show(herd: &HerdConfig, json: bool) -> anyhow::Result<bool> {
    let asked = actix_rt::System::new().block_on(ask_all(herd));
    let all_up = asked.iter().all(|(_, answer)| answer.is_ok());
    let text = if json {
        as_json(&asked)?
    } else {
        as_table(&asked)
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot print the status")?;
    Ok(all_up)
}

/// Each server's name and status, or why it has none.
async fn ask_all(herd: &HerdConfig) -> Vec<(String, Result<ServerStatus, String>)> {
    let client = awc::Client::builder().timeout(STATUS_TIMEOUT).finish();
    let asks = herd.nodes.iter().map(|node| {
        let client = &client;
        async move {
            let answer = match node.admin_addr {
                Some(addr) => admin::fetch_status(client, addr).await,
                None => Err("no admin_addr in the config".to_owned()),
            };
            (node.name.clone(), answer)
        }
    });
    futures_util::future::join_all(asks).await
}

fn as_json(asked: &[(String, Result<ServerStatus, String>)]) -> anyhow::Result<String> {
    let all: Vec<serde_json::Value> = asked
        .iter()
        .map(|(name, answer)| match answer {
            Ok(status) => serde_json::json!({ "name": name, "up": true, "status": status }),
            Err(error) => serde_json::json!({ "name": name, "up": false, "error": error }),
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&all).context("cannot write JSON")?;
    text.push('\n');
    Ok(text)
}

fn as_table(asked: &[(String, Result<ServerStatus, String>)]) -> String {
    let mut text = format!(
        "{:<12} {:<5} {:>8} {:>10} {:>6} {:>10} {:>10}\n",
        "server", "state", "clients", "records", "links", "cache hit", "uptime"
    );
    for (name, answer) in asked {
        let _ = match answer {
            Ok(s) => writeln!(
                text,
                "{:<12} {:<5} {:>8} {:>10} {:>6} {:>10} {:>10}",
                name,
                "up",
                s.clients,
                s.records,
                format!("{}/{}", s.links_up(), s.links.len()),
                hit_ratio(s),
                uptime(s.uptime_s)
            ),
            Err(error) => writeln!(text, "{name:<12} {:<5} ({error})", "down"),
        };
    }
    text
}

/// The share of searches answered from the cache, or `-` before the first.
fn hit_ratio(status: &ServerStatus) -> String {
    match status.places.searches {
        0 => "-".to_owned(),
        searches => format!(
            "{:.0}%",
            100.0 * status.places.cache_hits as f64 / searches as f64
        ),
    }
}

/// `3d 04h`, `2h 05m`, `4m 12s` or `12s`.
fn uptime(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_at_a_glance() {
        assert_eq!(uptime(12.7), "12s");
        assert_eq!(uptime(252.0), "4m 12s");
        assert_eq!(uptime(7500.0), "2h 05m");
        assert_eq!(uptime(273_600.0), "3d 04h");
    }
}
