//! End-to-end tests of the `herd` binary itself: `check`, `run`, refusals of bad configs,
//! a clean stop on SIGTERM with answers in flight delivered, and the places key kept out of
//! every log.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::herds::free_port;
use common::process::{HERD, Running, connect, spawn_listening};
use places_fake::{PlacesServer, Reply};

const KEY: &str = "secret-test-key-4f9a";

/// Runs `herd ARGS` to its end, with backtraces asked for, as a developer's shell may: a
/// refusal must still be one line.
fn herd(args: &[&str], dir: &Path) -> Output {
    Command::new(HERD)
        .args(args)
        .current_dir(dir)
        .env_remove("GOOGLE_PLACES_API_KEY")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn one_node_config(dir: &Path, places_url: &str) -> String {
    let config = format!(
        "[places]\nurl = \"{places_url}\"\ntimeout_ms = 3000\n\n[log]\ndir = \"{}\"\n\n\
         [[nodes]]\nname = \"Clark\"\naddr = \"127.0.0.1:0\"\n",
        dir.join("logs").display()
    );
    let path = dir.join("herd.toml");
    std::fs::write(&path, config).unwrap();
    path.display().to_string()
}

#[test]
fn check_prints_the_checked_in_herd() {
    let out = herd(&["check"], Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for server in ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"] {
        assert!(text.contains(server), "{server} missing from:\n{text}");
    }
    assert!(text.contains("Clark - Jaquez"), "{text}");
    assert!(text.contains("127.0.0.1:10003"), "{text}");
    // Written for a person: no Rust debug text, and whether the key is set.
    assert!(text.contains("places: legacy https://"), "{text}");
    assert!(
        text.contains("places key: GOOGLE_PLACES_API_KEY is not set"),
        "{text}"
    );
    let with_key = Command::new(HERD)
        .arg("check")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("GOOGLE_PLACES_API_KEY", KEY)
        .output()
        .unwrap();
    let text = String::from_utf8(with_key.stdout).unwrap();
    assert!(
        text.contains("places key: GOOGLE_PLACES_API_KEY is set") && !text.contains(KEY),
        "{text}"
    );
}

#[test]
fn a_missing_config_or_a_bad_variable_is_blamed_on_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let out = herd(&["check", "-c", "nowhere.toml"], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    let cwd = dir.path().display().to_string();
    assert!(
        stderr.contains("no config file nowhere.toml")
            && stderr.contains(&cwd)
            && stderr.contains("-c FILE")
            && stderr.matches("nowhere.toml").count() == 1,
        "{stderr}"
    );
    let config = one_node_config(dir.path(), "http://127.0.0.1:9/x");
    let out = Command::new(HERD)
        .args(["check", "-c", &config])
        .env("HERD_PLACES__TIMOUT_MS", "100")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with("error: environment variable HERD_PLACES__TIMOUT_MS: ")
            && stderr.contains("timout_ms")
            && !stderr.contains("refused"),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_is_refused_with_a_message_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "links = [[\"Clark\", \"Nobody\"]]\n",
            "unknown server \"Nobody\"",
        ),
        ("links = [[\"Clark\", \"Clark\"]]\n", "to itself"),
        (
            "[log]\nlines = \"verbose\"\n",
            "log.lines = \"verbose\" is not a level: use \"all\", \"errors\" or \"none\"",
        ),
    ];
    for (links, message) in cases {
        let config = format!(
            "{links}[places]\nurl = \"http://127.0.0.1:9/x\"\n[[nodes]]\nname = \"Clark\"\naddr = \"127.0.0.1:1\"\n"
        );
        std::fs::write(dir.path().join("bad.toml"), config).unwrap();
        for command in [
            &["check", "-c", "bad.toml"][..],
            &["run", "Clark", "-c", "bad.toml"],
        ] {
            let out = herd(command, dir.path());
            assert!(!out.status.success());
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert!(stderr.contains(message), "{command:?}: {stderr}");
            assert!(
                stderr.starts_with("error: config bad.toml refused: ")
                    && stderr.lines().count() == 1,
                "{command:?}: one line: {stderr}"
            );
        }
    }
}

#[test]
fn run_of_an_unknown_name_lists_the_servers() {
    let out = herd(&["run", "clark"], Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("\"clark\"") && stderr.contains("Clark"),
        "{stderr}"
    );
}

#[test]
fn up_that_cannot_start_a_server_stops_those_it_started_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    // Jaquez's port is taken, so `up` fails after Clark is up.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        "[places]\nurl = \"http://127.0.0.1:9/x\"\n\n[log]\ndir = \"{}\"\n\n\
         [[nodes]]\nname = \"Clark\"\naddr = \"127.0.0.1:0\"\n\n\
         [[nodes]]\nname = \"Jaquez\"\naddr = \"{}\"\n",
        dir.path().join("logs").display(),
        taken.local_addr().unwrap()
    );
    std::fs::write(dir.path().join("herd.toml"), config).unwrap();
    let out = herd(&["up", "-c", "herd.toml"], dir.path());
    assert!(!out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("listening"), "said to listen: {stdout}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let refusal = stderr.lines().last().unwrap_or_default();
    assert!(
        refusal.starts_with("error: Jaquez: cannot listen on ")
            && refusal.ends_with("(os error 98)")
            && stderr.matches("(os error 98)").count() == 1
            && !stderr.contains("acktrace"),
        "one line, saying why once: {stderr}"
    );
    // Clark was stopped in order: its log is written out to the end.
    let log = std::fs::read_to_string(dir.path().join("logs/Clark.log")).unwrap();
    assert!(log.trim_end().ends_with("stopped"), "{log}");
}

/// `herd run Clark -c CONFIG` in `dir`, with no places key, the default log level and
/// standard error piped; through `sh -c "SETUP && exec herd ..."` when there is a SETUP (a
/// `ulimit`, a `trap`: what the shell sets up the server inherits).
fn clark_command(config: &str, dir: &Path, setup: Option<&str>) -> Command {
    let mut command = match setup {
        Some(setup) => {
            let mut shell = Command::new("sh");
            shell.args(["-c", &format!("{setup} && exec \"$0\" \"$@\""), HERD]);
            shell
        }
        None => Command::new(HERD),
    };
    command
        .args(["run", "Clark", "-c", config])
        .current_dir(dir)
        .env_remove("GOOGLE_PLACES_API_KEY")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped());
    command
}

fn start(config: &str, dir: &Path, key: Option<&str>) -> (Running, String) {
    let mut command = clark_command(config, dir, None);
    command.env("RUST_LOG", "trace");
    if let Some(key) = key {
        command.env("GOOGLE_PLACES_API_KEY", key);
    }
    spawn_listening(&mut command)
}

/// Sends `child` the signal `name` (`TERM`, `USR1`).
fn signal(child: &Running, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.pid()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Stops `child` with the signal `name` (`TERM`, `HUP`): whether it exited cleanly, and its
/// standard error if the test did not take it.
fn stop(child: &mut Running, name: &str) -> (bool, String) {
    signal(child, name);
    wait_for_exit(child)
}

/// Waits for `child` to exit: whether it exited cleanly, and its standard error if the test
/// did not take it.
fn wait_for_exit(child: &mut Running) -> (bool, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "herd did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.0.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    (status.success(), stderr)
}

#[test]
fn sigterm_delivers_answers_in_flight_then_stops_cleanly_and_the_key_is_never_logged() {
    // The places API holds the call until the server has begun to stop.
    let (release, hold) = tokio::sync::watch::channel(false);
    let places = PlacesServer::start(move |_| {
        let answer = "{\"results\": [], \"status\": \"ZERO_RESULTS\"}";
        Reply::Held(hold.clone(), Box::new(Reply::Json(200, answer.into())))
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = one_node_config(dir.path(), &places.url("/nearby"));
    let (mut child, addr) = start(&config, dir.path(), Some(KEY));

    let mut client = connect(&addr);
    client
        .write_all(b"IAMAT kiwi +34.068930-118.445127 1621464827.959498503\nWHATSAT kiwi 10 5\n")
        .unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    // The WHATSAT is in flight when SIGTERM comes, and answered while the server stops.
    wait_for_call(&places);
    signal(&child, "TERM");
    wait_until_stopping(&addr);
    release.send(true).unwrap();
    let (clean, stderr) = wait_for_exit(&mut child);
    let mut answers = String::new();
    client.read_to_string(&mut answers).unwrap();
    assert!(clean, "exit status not success: {stderr}");
    let lines: Vec<&str> = answers.lines().collect();
    assert!(lines[0].starts_with("AT Clark +"), "{answers}");
    assert_eq!(lines[1], lines[0], "{answers}");
    assert!(
        answers.ends_with("\"status\": \"ZERO_RESULTS\"}\n\n"),
        "{answers}"
    );

    // The key went to the places API, and nowhere else.
    assert_eq!(places.requests()[0].query("key"), Some(KEY));
    let log = std::fs::read_to_string(dir.path().join("logs/Clark.log")).unwrap();
    assert!(log.contains("< WHATSAT kiwi 10 5"), "{log}");
    assert!(
        log.contains("> {\"results\": [], \"status\": \"ZERO_RESULTS\"}"),
        "{log}"
    );
    assert!(
        log.trim_end().ends_with("stopped"),
        "log not flushed to its end:\n{log}"
    );
    assert!(
        stderr.contains("herd::places_proxy"),
        "trace logging was on: {stderr}"
    );
    assert!(!stderr.contains(KEY), "the key reached standard error");
    assert!(!log.contains(KEY), "the key reached the log file");
}

#[test]
fn without_a_key_the_server_runs_says_so_once_and_calls_go_without_one() {
    // Google refuses a call without a key; its refusal is what WHATSAT answers.
    let denied = include_str!("fixtures/places/legacy_request_denied.json");
    let places = PlacesServer::always(denied).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = one_node_config(dir.path(), &places.url("/nearby"));
    let (mut child, addr) = start(&config, dir.path(), None);
    let mut client = connect(&addr);
    client
        .write_all(b"IAMAT kiwi +1+1 1\nWHATSAT kiwi 1 1\n")
        .unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut answers = String::new();
    client.read_to_string(&mut answers).unwrap();
    let (clean, stderr) = stop(&mut child, "TERM");
    assert!(clean);
    assert!(answers.contains("REQUEST_DENIED"), "{answers}");
    let requests = places.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].query("key"), None);
    assert_eq!(
        stderr.matches("GOOGLE_PLACES_API_KEY is not set").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn a_second_signal_while_answers_are_delivered_stops_at_once() {
    // The places API holds every call, and the herd would wait a minute for it.
    let (_release, hold) = tokio::sync::watch::channel(false);
    let places = PlacesServer::start(move |_| {
        Reply::Held(hold.clone(), Box::new(Reply::Json(200, "{}".into())))
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = one_node_config(dir.path(), &places.url("/nearby"));
    let config = std::fs::read_to_string(&config)
        .unwrap()
        .replace("timeout_ms = 3000", "timeout_ms = 60000");
    std::fs::write(dir.path().join("herd.toml"), config).unwrap();
    let (mut child, addr) = start("herd.toml", dir.path(), Some(KEY));
    let mut client = connect(&addr);
    client
        .write_all(b"IAMAT kiwi +1+1 1\nWHATSAT kiwi 10 5\n")
        .unwrap();
    wait_for_call(&places);
    // The first Ctrl-C waits for the answer owed; the second does not.
    signal(&child, "INT");
    wait_until_stopping(&addr);
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "stopped before the answer owed"
    );
    let (clean, stderr) = stop(&mut child, "INT");
    assert!(
        !clean,
        "a stop that left an answer undelivered must not look clean"
    );
    assert!(stderr.contains("second signal"), "{stderr}");
}

/// Waits until the places server has been called.
fn wait_for_call(places: &PlacesServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while places.requests().is_empty() {
        assert!(Instant::now() < deadline, "the places API was never called");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the server at `addr` takes no more connections: it has begun to stop.
fn wait_until_stopping(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "{addr} still takes connections");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the file at `path` holds `text`, and returns it.
fn wait_for_log(path: &Path, text: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.contains(text) {
            return log;
        }
        assert!(Instant::now() < deadline, "{text:?} not in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn out_of_file_descriptors_new_connections_wait_and_each_is_answered_once_others_close() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_node_config(dir.path(), "http://127.0.0.1:9/nearby");
    // 64 descriptors: the server starts with ~10 open, so 100 clients run it out, as they
    // may when `max_clients` is set past what the descriptors allow.
    let mut command = clark_command(&config, dir.path(), Some("ulimit -n 64"));
    command.env("HERD_LIMITS__MAX_CLIENTS", "1000");
    let (mut child, addr) = spawn_listening(&mut command);
    let clients: Vec<TcpStream> = (0..100)
        .map(|i| {
            let mut client = connect(&addr);
            client
                .write_all(format!("IAMAT c{i} +1+1 1\n").as_bytes())
                .unwrap();
            client
        })
        .collect();
    let log_path = dir.path().join("logs/Clark.log");
    wait_for_log(&log_path, "accept failed: Too many open files");

    // The server accepts in order: each client is answered once those before it closed.
    for (i, client) in clients.into_iter().enumerate() {
        let mut answer = String::new();
        BufReader::new(&client).read_line(&mut answer).unwrap();
        assert!(
            answer.starts_with("AT Clark +") && answer.contains(&format!(" c{i} +1+1 1")),
            "client {i}: {answer:?}"
        );
    }
    let log = wait_for_log(&log_path, "accepting again, after ");
    assert_eq!(log.matches("accept failed").count(), 1, "{log}");
    let (clean, stderr) = stop(&mut child, "TERM");
    assert!(clean, "{stderr}");
}

/// Waits until the log at `path` holds `text` `times` times, and returns it.
fn wait_for_log_times(path: &Path, text: &str, times: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.matches(text).count() >= times {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "{text:?} not {times} times in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes the config of a herd of two, Clark and Bona, linked, on free ports of loopback,
/// and returns its path.
fn two_node_config(dir: &Path) -> String {
    let (clark, bona) = (free_port(), free_port());
    let config = format!(
        "links = [[\"Clark\", \"Bona\"]]\n\
         [places]\nurl = \"http://127.0.0.1:9/nearby\"\n\
         [log]\ndir = \"{}\"\n\
         [[nodes]]\nname = \"Clark\"\naddr = \"127.0.0.1:{clark}\"\n\
         [[nodes]]\nname = \"Bona\"\naddr = \"127.0.0.1:{bona}\"\n",
        dir.join("logs").display()
    );
    let path = dir.join("herd.toml");
    std::fs::write(&path, config).unwrap();
    path.display().to_string()
}

/// `herd run Bona` of `config`, quiet.
fn bona_command(config: &str, dir: &Path) -> Command {
    let mut command = Command::new(HERD);
    command
        .args(["run", "Bona", "-c", config])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stderr(Stdio::null());
    command
}

#[test]
fn a_neighbor_that_is_down_is_said_once_and_its_return_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_node_config(dir.path());
    let (mut clark, _, mut stderr) = start_reading_stderr(&config, dir.path());
    let down = stderr.wait_for("link to Bona at");
    assert!(down.contains("WARN") && down.contains("is down"), "{down}");
    // Many dials fail meanwhile; none is said again.
    std::thread::sleep(Duration::from_millis(1500));
    let (_bona, _) = spawn_listening(&mut bona_command(&config, dir.path()));
    let back = stderr.wait_for("link to Bona at");
    assert!(back.contains("INFO") && back.contains("is back"), "{back}");
    let (clean, _) = stop(&mut clark, "TERM");
    assert!(clean);
    let said = stderr.all();
    let count = |text: &str| said.iter().filter(|line| line.contains(text)).count();
    assert_eq!(
        (count("is down ("), count("is back, after")),
        (1, 1),
        "{said:#?}"
    );
}

#[test]
fn past_max_clients_connections_are_closed_and_a_restarted_neighbor_still_links() {
    let dir = tempfile::tempdir().unwrap();
    let config = two_node_config(dir.path());
    let bona_command = || bona_command(&config, dir.path());
    // Clark has 64 descriptors: its links, places calls, log and listener take their
    // share, and clients get the rest.
    let mut command = clark_command(&config, dir.path(), Some("ulimit -n 64"));
    let (mut clark_process, clark_addr) = spawn_listening(&mut command);
    let (mut bona_process, bona_addr) = spawn_listening(&mut bona_command());
    let clark_log = dir.path().join("logs/Clark.log");
    let log = wait_for_log(&clark_log, "link from Bona accepted");
    let cap: usize = log
        .split_once("for at most ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cap on clients in the log:\n{log}"));
    assert!((1..64).contains(&cap), "{cap}");

    // More clients than 64 descriptors could hold: those past the cap are closed at once.
    let mut held = Vec::new();
    let mut closed = 0;
    for i in 0..80 {
        let mut client = connect(&clark_addr);
        let _ = client.write_all(format!("IAMAT held-{i} +1+1 1700000000\n").as_bytes());
        let mut answer = String::new();
        match BufReader::new(&client).read_line(&mut answer) {
            Ok(_) if answer.starts_with("AT Clark ") => held.push(client),
            Ok(0) | Err(_) => closed += 1,
            Ok(_) => panic!("client {i}: {answer:?}"),
        }
    }
    assert_eq!((held.len(), closed), (cap, 80 - cap));
    wait_for_log(&clark_log, &format!("holding max_clients ({cap})"));

    // Bona restarts: its link into Clark is let in past the cap, and Clark's link out
    // reaches it; records go both ways.
    let (clean, _) = stop(&mut bona_process, "TERM");
    assert!(clean);
    let (_bona_process, bona_addr_again) = spawn_listening(&mut bona_command());
    assert_eq!(bona_addr, bona_addr_again);
    wait_for_log_times(&clark_log, "link from Bona accepted", 2);
    let mut at_bona = connect(&bona_addr);
    at_bona.write_all(b"IAMAT from-bona +1+1 1\n").unwrap();
    let mut from_bona = String::new();
    BufReader::new(&at_bona).read_line(&mut from_bona).unwrap();
    assert!(from_bona.starts_with("AT Bona "), "{from_bona:?}");
    // The first line of the answer to WHATSAT for `client` at `addr`, once it is `want`'s.
    let eventually_known = |addr: &str, client: &str, want: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut stream = connect(addr);
            stream
                .write_all(format!("WHATSAT {client} 1 1\n").as_bytes())
                .unwrap();
            let mut first = String::new();
            let _ = BufReader::new(&stream).read_line(&mut first);
            if first.starts_with(want) {
                return first;
            }
            assert!(Instant::now() < deadline, "{client} at {addr}: {first:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    eventually_known(&bona_addr, "held-0", "AT Clark ");
    // A client leaves Clark: a new one is taken, and Clark knows Bona's record.
    drop(held.pop());
    let known = eventually_known(&clark_addr, "from-bona", "AT Bona ");
    assert_eq!(known, from_bona);
    let log = wait_for_log(&clark_log, "taking clients again");
    assert_eq!(log.matches("holding max_clients").count(), 1, "{log}");
    let (clean, stderr) = stop(&mut clark_process, "TERM");
    assert!(clean, "{stderr}");
}

/// Starts Clark of `config` at the default log level, its standard error read as it comes.
fn start_reading_stderr(config: &str, dir: &Path) -> (Running, String, StderrLines) {
    let (mut child, addr) = spawn_listening(&mut clark_command(config, dir, None));
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let stderr = StderrLines {
        received,
        seen: Vec::new(),
    };
    (child, addr, stderr)
}

/// A server's standard error, read as it comes; every line read is kept, so that what was
/// said once can be counted over the whole run.
struct StderrLines {
    received: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl StderrLines {
    /// Waits for a line that holds `text`, and returns it.
    fn wait_for(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.received.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(e) => panic!("no {text:?} on standard error: {e}"),
            }
        }
    }

    /// Every line the server wrote, once it has exited (its standard error is then closed).
    fn all(mut self) -> Vec<String> {
        self.seen.extend(self.received.iter());
        self.seen
    }
}

/// Sends an IAMAT for `client` and reads its answer.
fn iamat(stream: &mut TcpStream, client: &str) -> String {
    stream
        .write_all(format!("IAMAT {client} +1+1 1\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    BufReader::new(&*stream).read_line(&mut answer).unwrap();
    assert!(answer.starts_with("AT Clark +"), "{answer:?}");
    answer
}

#[test]
fn sigusr1_reopens_the_log_so_a_rotated_log_goes_on_in_a_new_file_and_sighup_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_node_config(dir.path(), "http://127.0.0.1:9/nearby");
    let (mut child, addr, _stderr) = start_reading_stderr(&config, dir.path());
    let log = dir.path().join("logs/Clark.log");
    let rotated = dir.path().join("logs/Clark.log.1");
    let mut client = connect(&addr);
    iamat(&mut client, "before");
    wait_for_log(&log, "IAMAT before");

    std::fs::rename(&log, &rotated).unwrap();
    signal(&child, "USR1");
    wait_for_log(&log, " - log reopened");
    iamat(&mut client, "after");
    let new = wait_for_log(&log, "IAMAT after");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(!new.contains("IAMAT before"), "{new}");
    assert!(!old.contains("IAMAT after"), "{old}");
    // A closed terminal stops the server in order too.
    let (clean, stderr) = stop(&mut child, "HUP");
    assert!(clean, "{stderr}");
    let new = std::fs::read_to_string(&log).unwrap();
    assert!(new.trim_end().ends_with(" - stopped"), "{new}");
}

#[test]
fn a_log_that_cannot_be_written_loses_lines_not_the_server_and_then_says_how_much() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_node_config(dir.path(), "http://127.0.0.1:9/nearby");
    // A disk that is full: every write to the log fails (ENOSPC).
    let log = dir.path().join("logs/Clark.log");
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    std::os::unix::fs::symlink("/dev/full", &log).unwrap();
    let (mut child, addr, mut stderr) = start_reading_stderr(&config, dir.path());
    let mut client = connect(&addr);
    let said = stderr.wait_for("cannot write the log");
    assert!(said.contains("No space left on device"), "{said}");
    iamat(&mut client, "served");

    // Space again (here: a new file at the log's path), and the log reopened.
    std::fs::remove_file(&log).unwrap();
    signal(&child, "USR1");
    // The signal is taken in its own time: a line logged before the reopen still goes to
    // the full disk, so the next one waits for it.
    wait_for_log(&log, " - log reopened");
    iamat(&mut client, "kept");
    let text = wait_for_log(&log, "IAMAT kept");
    // At least the start's notes were lost.
    let mut lines = text.lines();
    let missing = lines.next().unwrap();
    assert!(
        missing.contains(" - log writes failed (No space left on device")
            && missing.ends_with(" bytes lost before this"),
        "{text}"
    );
    assert!(lines.next().unwrap().ends_with(" - log reopened"), "{text}");
    stderr.wait_for("written again");
    let (clean, _) = stop(&mut child, "TERM");
    assert!(clean);
    let said = stderr.all();
    let failures = said.iter().filter(|line| line.contains("cannot write"));
    assert_eq!(failures.count(), 1, "said more than once: {said:#?}");
}

#[test]
fn a_server_started_under_nohup_keeps_serving_through_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let config = one_node_config(dir.path(), "http://127.0.0.1:9/nearby");
    // `trap '' HUP` is what `nohup` does: SIGHUP ignored, and so inherited through `exec`.
    let (mut child, addr) =
        spawn_listening(&mut clark_command(&config, dir.path(), Some("trap '' HUP")));
    signal(&child, "HUP");
    iamat(&mut connect(&addr), "after-hangup");
    assert!(child.0.try_wait().unwrap().is_none(), "stopped on SIGHUP");
    let (clean, stderr) = stop(&mut child, "TERM");
    assert!(clean, "{stderr}");
}

#[test]
fn certs_makes_each_servers_files_with_private_keys_0600_and_a_second_run_keeps_them() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let config = two_node_config(dir.path());
    let out = dir.path().join("made").join("certs");
    let out_arg = out.display().to_string();
    let run = || {
        let output = herd(&["certs", "-c", &config, "--out", &out_arg], dir.path());
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(output.status.success(), "{stdout}{stderr}");
        stdout
    };
    let files = || -> Vec<(String, Vec<u8>, u32)> {
        let mut files: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap(), mode)
            })
            .collect();
        files.sort();
        files
    };

    let stdout = run();
    let o = &out_arg;
    for name in ["Clark", "Bona"] {
        let line = format!(
            "{name} (127.0.0.1): copy {o}/ca.pem, {o}/{name}.pem, {o}/{name}.key (made, valid 365 days)"
        );
        assert!(
            stdout.lines().any(|l| l == line),
            "{line} missing:\n{stdout}"
        );
    }
    assert_eq!(stdout.matches("): copy ").count(), 2, "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .contains("ca.key stays with whoever makes certificates, on no server"),
        "{stdout}"
    );
    let made = files();
    let names: Vec<_> = made.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Bona.key",
            "Bona.pem",
            "Clark.key",
            "Clark.pem",
            "ca.key",
            "ca.pem"
        ]
    );
    for (name, _, mode) in &made {
        if name.ends_with(".key") {
            assert_eq!(*mode, 0o600, "{name}");
        }
    }

    let stdout = run();
    for name in ["Clark", "Bona"] {
        let line =
            format!("{name} (127.0.0.1): copy {o}/ca.pem, {o}/{name}.pem, {o}/{name}.key (kept)");
        assert!(
            stdout.lines().any(|l| l == line),
            "{line} missing:\n{stdout}"
        );
    }
    assert_eq!(files(), made, "a second run changed the files");

    // Half a CA is refused in one line, and nothing is made.
    std::fs::remove_file(out.join("ca.key")).unwrap();
    std::fs::remove_file(out.join("Bona.pem")).unwrap();
    std::fs::remove_file(out.join("Bona.key")).unwrap();
    let output = herd(&["certs", "-c", &config, "--out", &out_arg], dir.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("error: ")
            && stderr.contains("ca.key is not")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(!out.join("Bona.pem").exists());
}
