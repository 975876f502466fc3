//! End-to-end tests of the admin listener: `/metrics`, `/health`, `/status` and `/herd` of
//! a running five-server herd, `herd status` against it, and its page at `/` loaded in a
//! real browser (headless Chromium: `.ci/run` installs Debian's `chromium`), with a server
//! stopped and shown down. The screenshots are kept in the target directory's test folder.

mod common;

use std::process::Command;
use std::time::Duration;

use common::eventually;
use common::herds::{FIVE, Herd, HerdBuilder, KIWI_POSITION};

/// `GET http://ADDR/PATH`: the status and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let mut response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let body = response.body().limit(1 << 20).await.unwrap();
    (
        response.status().as_u16(),
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

async fn five() -> Herd {
    HerdBuilder::five().admin().start().await
}

#[actix_rt::test]
async fn metrics_health_status_and_the_herd_are_served() {
    let mut herd = five().await;
    let line = herd
        .iamat("Clark", "kiwi", KIWI_POSITION, "1700000000")
        .await;
    herd.eventually_know(&FIVE, "kiwi", &line).await;
    let clark = herd.admin_addr("Clark");

    let (code, health) = get(clark, "/health").await;
    assert_eq!(
        (code, health.as_str()),
        (200, r#"{"status":"ok","name":"Clark"}"#)
    );

    let (code, metrics) = get(clark, "/metrics").await;
    assert_eq!(code, 200);
    for family in [
        "herd_connections_open ",
        "herd_connections_accepted_total ",
        "herd_clients ",
        "herd_lines_received_total{kind=\"iamat\"} 1",
        "herd_records_held 1",
        "herd_records_stored_total 1",
        "herd_records_ignored_total ",
        "herd_link_up{neighbor=\"Jaquez\"} 1",
        "herd_link_up{neighbor=\"Bona\"} 1",
        "herd_link_connects_total{neighbor=\"Bona\"} 1",
        "herd_link_records_sent_total{neighbor=\"Bona\"} ",
        "herd_link_bytes_sent_total{neighbor=\"Bona\"} ",
        "herd_link_bytes_queued{neighbor=\"Bona\"} 0",
        "herd_link_queue_drops_total{neighbor=\"Bona\"} 0",
        "herd_places_calls_total ",
        "herd_places_cache_hits_total ",
        "herd_places_joined_total ",
        "herd_places_call_seconds_bucket",
        "herd_log_bytes_written_total ",
        "herd_log_events_dropped_total 0",
        "herd_mailbox_backlog{actor=\"location_store\"} ",
        "herd_mailbox_backlog{actor=\"peer_link:Bona\"} ",
    ] {
        assert!(metrics.contains(family), "no {family:?} in:\n{metrics}");
    }
    // The counters this test drove have moved: a connection accepted, the record sent to Bona.
    for family in [
        "herd_connections_accepted_total ",
        "herd_link_records_sent_total{neighbor=\"Bona\"} ",
        "herd_link_bytes_sent_total{neighbor=\"Bona\"} ",
    ] {
        let value = metrics
            .lines()
            .find_map(|line| line.strip_prefix(family))
            .and_then(|value| value.trim().parse::<f64>().ok());
        assert!(value >= Some(1.0), "{family}{value:?} in:\n{metrics}");
    }

    let (code, status) = get(clark, "/status").await;
    assert_eq!(code, 200);
    let status: herd::admin::ServerStatus = serde_json::from_str(&status).unwrap();
    assert_eq!(
        (status.name.as_str(), status.records, status.iamats),
        ("Clark", 1, 1)
    );
    assert_eq!(status.links_up(), 2);

    // Bailey's view of the herd: all five, each with its own status.
    let (code, whole) = get(herd.admin_addr("Bailey"), "/herd").await;
    assert_eq!(code, 200);
    let whole: herd::admin::HerdStatus = serde_json::from_str(&whole).unwrap();
    let names: Vec<&str> = whole.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, FIVE);
    assert!(whole.servers.iter().all(|s| s.reachable), "{whole:?}");
    assert_eq!(whole.links.len(), 6);
    herd.stop_all().await;
}

#[actix_rt::test]
async fn a_stopped_server_shows_down_in_the_herd_the_metrics_and_herd_status() {
    let mut herd = five().await;
    herd.stop("Jaquez").await;
    // Clark's link to Jaquez goes down in its metrics.
    let clark = herd.admin_addr("Clark");
    eventually(
        Duration::from_secs(10),
        "Clark's link to Jaquez is down",
        async || {
            let (_, metrics) = get(clark, "/metrics").await;
            match metrics.contains("herd_link_up{neighbor=\"Jaquez\"} 0") {
                true => Ok(()),
                false => Err(metrics),
            }
        },
    )
    .await;
    let (_, whole) = get(clark, "/herd").await;
    let whole: herd::admin::HerdStatus = serde_json::from_str(&whole).unwrap();
    let jaquez = whole.servers.iter().find(|s| s.name == "Jaquez").unwrap();
    assert!(!jaquez.reachable && jaquez.error.is_some(), "{jaquez:?}");
    let (_, status) = get(clark, "/status").await;
    let status: herd::admin::ServerStatus = serde_json::from_str(&status).unwrap();
    let link = status
        .links
        .iter()
        .find(|l| l.neighbor == "Jaquez")
        .unwrap();
    assert_eq!(link.state, "down");
    assert!(
        link.last_error.is_some() && link.since.is_some(),
        "{link:?}"
    );

    // `herd status` is a separate program: it says who is down and exits 1.
    let config = herd.dir.path().join("herd.toml");
    let out = actix_rt::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_herd"))
            .args(["status", "-c"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{table}");
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .to_owned()
    };
    assert!(row("Jaquez").contains("down"), "{table}");
    assert!(
        row("Clark").contains(" up ") && row("Clark").contains("1/2"),
        "{table}"
    );
    assert!(row("Bona").contains("3/3"), "{table}");
    herd.stop_all().await;
}

/// What headless Chromium rendered of `url` once its scripts ran for a few (virtual)
/// seconds, with a screenshot kept as `shot` in the tests' folder of the target directory.
async fn render(url: String, shot: &str) -> String {
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(shot);
    actix_rt::task::spawn_blocking(move || {
        let chromium = |extra: &[&str]| {
            let profile = tempfile::tempdir().unwrap();
            let out = Command::new("chromium")
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--virtual-time-budget=3000",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .args(extra)
                .arg(&url)
                .output()
                .expect("chromium is not installed: apt-get install chromium (.ci/run does)");
            assert!(
                out.status.success(),
                "chromium: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let shot = format!("--screenshot={}", shot.display());
        chromium(&["--hide-scrollbars", "--window-size=1280,800", &shot]);
        chromium(&["--dump-dom"])
    })
    .await
    .unwrap()
}

/// The `data-state` of the element whose opening tag holds `mark`, in `dom`.
fn state_of(dom: &str, mark: &str) -> Option<String> {
    let tag = dom.split('<').find(|tag| tag.contains(mark))?;
    let state = tag.split("data-state=\"").nth(1)?;
    Some(state.split('"').next()?.to_owned())
}

#[actix_rt::test]
async fn the_live_page_draws_the_herd_and_shows_a_stopped_server_and_its_links_down() {
    let mut herd = five().await;
    let page = format!("http://{}/", herd.admin_addr("Clark"));
    let dom = render(page.clone(), "herd-page-all-up.png").await;
    assert!(
        !dom.contains("data-polls=\"0\""),
        "the page's scripts never polled"
    );
    for server in FIVE {
        let state = state_of(&dom, &format!("class=\"server\" data-name=\"{server}\""));
        assert_eq!(state.as_deref(), Some("up"), "{server}");
    }
    let links: Vec<&str> = dom
        .split('<')
        .filter(|tag| tag.contains("class=\"link\""))
        .collect();
    let up = links
        .iter()
        .filter(|tag| tag.contains("data-state=\"up\""))
        .count();
    assert_eq!((links.len(), up), (6, 6), "{dom}");

    herd.stop("Jaquez").await;
    let dom = render(page, "herd-page-jaquez-down.png").await;
    let state = state_of(&dom, "class=\"server\" data-name=\"Jaquez\"");
    assert_eq!(state.as_deref(), Some("down"));
    for (a, b) in [("Clark", "Jaquez"), ("Campbell", "Jaquez")] {
        let mark = format!("data-a=\"{a}\" data-b=\"{b}\"");
        assert_eq!(state_of(&dom, &mark).as_deref(), Some("down"), "{a} - {b}");
    }
    for (a, b) in [
        ("Clark", "Bona"),
        ("Bona", "Bailey"),
        ("Campbell", "Bailey"),
        ("Campbell", "Bona"),
    ] {
        let mark = format!("data-a=\"{a}\" data-b=\"{b}\"");
        assert_eq!(state_of(&dom, &mark).as_deref(), Some("up"), "{a} - {b}");
    }
    herd.stop_all().await;
}
