//! Smoke tests of `herd-bench`: each subcommand runs, briefly and lightly, against the echo
//! reference or a real `herd run` node, and its `--json` result must make sense (answers
//! counted, no errors, percentiles in order). No timing is asserted: these only fail when
//! the tool is broken.
//!
//! The binaries: `herd-bench` is this package's own (`CARGO_BIN_EXE_herd-bench`); `herd` is
//! another package's, so cargo names no path for it here, and it is taken from beside
//! `herd-bench`, in the same target directory and profile (`target/debug/herd`).
//! `cargo test --workspace`, as CI runs it, builds it there first (the herd's own tests
//! need it); `cargo test -p herd-bench` alone does not, so run `cargo build -p herd` before
//! it, or the tests use whatever `herd` was built last (and fail, saying so, if none was).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// The binary under test.
const HERD_BENCH: &str = env!("CARGO_BIN_EXE_herd-bench");

/// The `herd` binary of the same build, beside [`HERD_BENCH`].
fn herd() -> PathBuf {
    let herd =
        Path::new(HERD_BENCH).with_file_name(format!("herd{}", std::env::consts::EXE_SUFFIX));
    assert!(
        herd.is_file(),
        "no herd binary at {}: run `cargo test --workspace`, or `cargo build -p herd` first",
        herd.display()
    );
    herd
}

/// A child process, killed when dropped (a failed test leaves no server behind).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// Its process id, as text for `--pid`.
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

/// Starts `command` with its standard output piped, and returns it with the address of its
/// first line, `NAME listening on ADDR ...` (a herd server's, or `echo-server`'s).
fn spawn_listening(command: &mut Command) -> (Running, String) {
    let mut child = Running(command.stdout(Stdio::piped()).spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    let addr = first
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    (child, addr)
}

/// Starts `PROGRAM ARGS` (`herd` or `herd-bench`) and returns it with the address of its
/// first `... listening on ADDR` line.
fn start(program: &Path, args: &[&str], dir: &Path) -> (Running, String) {
    spawn_listening(
        Command::new(program)
            .args(args)
            .current_dir(dir)
            .env_remove("GOOGLE_PLACES_API_KEY")
            .stderr(Stdio::null()),
    )
}

/// Starts a one-server herd (Clark on a free port) whose places URL is `places_url`.
fn start_clark(dir: &Path, places_url: &str, key: Option<&str>) -> (Running, String) {
    let config = format!(
        "[places]\nurl = \"{places_url}\"\ntimeout_ms = 3000\ncache_ttl_s = 0\n\n\
         [log]\ndir = \"{}\"\n\n[store]\ndir = \"{}\"\n\n\
         [[nodes]]\nname = \"Clark\"\naddr = \"127.0.0.1:0\"\n",
        dir.join("logs").display(),
        dir.join("data").display()
    );
    std::fs::write(dir.join("herd.toml"), config).unwrap();
    let mut command = Command::new(herd());
    command
        .args(["run", "Clark", "-c", "herd.toml"])
        .current_dir(dir)
        .stderr(Stdio::null());
    match key {
        Some(key) => command.env("GOOGLE_PLACES_API_KEY", key),
        None => command.env_remove("GOOGLE_PLACES_API_KEY"),
    };
    spawn_listening(&mut command)
}

/// Runs `herd-bench ARGS --json`, which must succeed, and parses its one JSON line.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(HERD_BENCH)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "herd-bench {args:?} failed: {stderr}{stdout}"
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON line expected: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn number(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key} in {value}"))
}

/// Counted answers, no errors, and ordered percentiles.
fn assert_sound_load(load: &Value) {
    assert!(number(load, "count") > 0, "{load}");
    assert_eq!(number(load, "errors"), 0, "{load}");
    assert!(load["throughput_rps"].as_f64().unwrap() > 0.0, "{load}");
    assert_sound_latency(&load["latency_us"]);
}

fn assert_sound_latency(latency: &Value) {
    let p: Vec<u64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|key| number(latency, key))
        .collect();
    assert!(p[0] > 0, "{latency}");
    assert!(p.windows(2).all(|w| w[0] <= w[1]), "{latency}");
}

#[test]
fn iamat_load_against_the_echo_reference() {
    let dir = tempfile::tempdir().unwrap();
    let (_echo, addr) = start(
        Path::new(HERD_BENCH),
        &["echo-server", "--addr", "127.0.0.1:0"],
        dir.path(),
    );
    let result = bench(&["iamat", "--addr", &addr, "--conns", "2", "--duration", "1"]);
    assert_eq!(result["bench"], "iamat");
    assert_eq!(result["conns"], 2);
    assert_sound_load(&result);
    assert_eq!(number(&result, "failed_conns"), 0);

    let pipelined = bench(&[
        "iamat",
        "--addr",
        &addr,
        "--conns",
        "1",
        "--duration",
        "0.3",
        "--pipeline",
        "16",
    ]);
    assert_sound_load(&pipelined);
}

#[test]
fn iamat_load_flood_idle_and_records_against_a_herd_node() {
    let dir = tempfile::tempdir().unwrap();
    let (server, addr) = start_clark(dir.path(), "http://127.0.0.1:9/nearby", None);
    let pid = server.pid();

    let load = bench(&["iamat", "--addr", &addr, "--conns", "2", "--duration", "1"]);
    assert_sound_load(&load);

    // One server is its own watcher: every record is known there once acknowledged.
    let burst = bench(&[
        "flood", "--send", &addr, "--watch", &addr, "--count", "300", "--batch", "50",
    ]);
    assert_eq!(burst["mode"], "burst");
    assert_eq!(number(&burst, "acked"), 300, "{burst}");
    assert_eq!(number(&burst, "known"), 300, "{burst}");
    assert_eq!(number(&burst, "missing"), 0, "{burst}");
    // Polling sees a record only a round late: no first or half arrival is claimed.
    assert!(burst["t_first_known_ms"].is_null(), "{burst}");
    assert!(burst["t_half_known_ms"].is_null(), "{burst}");

    let rate = bench(&[
        "flood", "--send", &addr, "--watch", &addr, "--count", "20", "--rate", "200",
    ]);
    assert_eq!(rate["mode"], "rate");
    assert_eq!(number(&rate, "known"), 20, "{rate}");
    assert_eq!(number(&rate, "lost"), 0, "{rate}");
    assert_sound_latency(&rate["propagation_us"]);

    let idle = bench(&[
        "idle", "--addr", &addr, "--conns", "50", "--pid", &pid, "--settle", "0.1",
    ]);
    assert_eq!(number(&idle, "sampled"), number(&idle, "live"), "{idle}");
    assert!(idle["bytes_per_conn"].is_number(), "{idle}");

    let records = bench(&[
        "records", "--addr", &addr, "--count", "2000", "--pid", &pid, "--settle", "0.1",
    ]);
    assert_eq!(number(&records, "acked"), 2000, "{records}");
    assert_eq!(number(&records, "errors"), 0, "{records}");
    assert!(records["bytes_per_record"].is_number(), "{records}");
}

#[test]
fn flood_watches_as_a_neighbor_taking_records_off_the_servers_link() {
    let dir = tempfile::tempdir().unwrap();
    // Where the tool will play Clark's neighbor Watcher.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let watcher = free.local_addr().unwrap().to_string();
    drop(free);
    let config = format!(
        "links = [[\"Clark\", \"Watcher\"]]\n\n[places]\nurl = \"http://127.0.0.1:9/nearby\"\n\n\
         [log]\ndir = \"{}\"\n\n[store]\ndir = \"{}\"\n\n\
         [[nodes]]\nname = \"Clark\"\naddr = \"127.0.0.1:0\"\n\n\
         [[nodes]]\nname = \"Watcher\"\naddr = \"{watcher}\"\n",
        dir.path().join("logs").display(),
        dir.path().join("data").display()
    );
    std::fs::write(dir.path().join("herd.toml"), config).unwrap();
    let (_server, addr) = start(&herd(), &["run", "Clark", "-c", "herd.toml"], dir.path());

    // `herd-bench flood` watching Clark as its neighbor Watcher, with `more` options.
    let as_neighbor = |more: &[&str]| {
        let args = [
            "flood", "--send", &addr, "--watch", &addr, "--listen", &watcher,
        ];
        bench(&[&args[..], more, &["--timeout", "20"]].concat())
    };
    let burst = as_neighbor(&["--count", "300", "--batch", "50"]);
    assert_eq!(burst["watched_by"], "neighbor", "{burst}");
    assert_eq!(number(&burst, "known"), 300, "{burst}");
    assert_eq!(number(&burst, "missing"), 0, "{burst}");
    assert_eq!(number(&burst, "poll_rounds"), 0, "{burst}");
    // Watched as a neighbor, the first and the middle arrival are timed, in order.
    let ms = |key: &str| {
        burst[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no {key} in {burst}"))
    };
    assert!(0.0 < ms("t_first_known_ms"), "{burst}");
    assert!(ms("t_first_known_ms") <= ms("t_half_known_ms"), "{burst}");
    assert!(ms("t_half_known_ms") <= ms("t_known_ms"), "{burst}");

    let rate = as_neighbor(&["--count", "20", "--rate", "200"]);
    assert_eq!(rate["watched_by"], "neighbor", "{rate}");
    assert_eq!(number(&rate, "known"), 20, "{rate}");
    assert_eq!(number(&rate, "lost"), 0, "{rate}");
    assert_eq!(number(&rate, "polls"), 0, "{rate}");
    assert_sound_latency(&rate["propagation_us"]);
}

#[test]
fn whatsat_load_measures_the_herd_against_its_own_places_server() {
    let dir = tempfile::tempdir().unwrap();
    // A port for the tool's places server, known before the herd server starts.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let places_addr = free.local_addr().unwrap().to_string();
    drop(free);
    let url = format!("http://{places_addr}/nearbysearch/json");
    let (_server, addr) = start_clark(dir.path(), &url, Some("bench-key"));

    let result = bench(&[
        "whatsat",
        "--addr",
        &addr,
        "--places-addr",
        &places_addr,
        "--conns",
        "2",
        "--duration",
        "0.5",
    ]);
    assert_eq!(result["places_url"], url.as_str());
    assert_sound_load(&result["direct"]);
    assert_sound_load(&result["herd"]);
    assert_eq!(number(&result, "places_errors"), 0, "{result}");
    assert_eq!(result["calls_per_whatsat"].as_f64(), Some(1.0), "{result}");
}

#[test]
fn whatsat_says_how_to_start_a_server_that_does_not_call_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = start_clark(dir.path(), "http://127.0.0.1:9/nearby", None);
    let out = Command::new(HERD_BENCH)
        .args([
            "whatsat",
            "--addr",
            &addr,
            "--places-addr",
            "127.0.0.1:0",
            "--duration",
            "0.2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("HERD_PLACES__URL=http://127.0.0.1:"),
        "{stderr}"
    );
}
