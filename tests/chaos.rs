//! Chaos: the five-server herd of herd.toml under continuous IAMAT load while servers
//! are stopped and restarted at random. Afterwards every server must hold, for every client,
//! exactly the latest record a client was told about (the AT answer it read).
//!
//! The run is driven by a seeded RNG; the seed is printed, and `HERD_TEST_SEED=<seed>`
//! replays the same choices (timings still vary).
//!
//! The stops respect what the protocol promises and no more. A record is only guaranteed to have
//! been handed to the links that were up when it was acknowledged, and to its origin's
//! file. So at most [`MAX_DOWN`] servers are down at once (every server has at least two
//! neighbors, so an acknowledged record always has a live holder besides a stopped origin),
//! and after a restart no server is stopped until the herd is seen to have settled: the
//! links between the restarted server and its neighbors that are up are up both ways (their
//! logs say so), and every server that is up holds every record acknowledged so far (or a
//! newer one). That is observed, not waited for by the clock, so a slow machine only makes
//! the test slower. At the end the whole herd is stopped at once, and each server, started
//! again alone, must hold every client's latest record from its own file.

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use common::eventually;
use common::herds::{FIVE_LINKS, Herd, LineClient, assert_at_answer, newer, seed};
use tokio::time::Instant;

/// How long servers come and go under load.
const LOAD: Duration = Duration::from_secs(30);
/// Client tasks sending IAMATs.
const TASKS: usize = 3;
/// Client ids per task (each id belongs to one task, so its times increase strictly).
const IDS_PER_TASK: usize = 50;
/// The most servers down at once.
const MAX_DOWN: usize = 2;
/// The longest the herd may take to settle after a restart (links up both ways, every
/// acknowledged record everywhere).
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Client ids of each task that get most of its IAMATs; the others are updated seldom, so
/// that a restarted server can only learn them from its neighbors' snapshots.
const HOT_IDS: usize = 5;
/// How long the herd may take to converge once everything is up again.
const CONVERGE: Duration = Duration::from_secs(30);

/// What the load tasks and the controller share (all on the test's one thread).
struct Shared {
    /// The servers clients may send to.
    up: RefCell<BTreeSet<String>>,
    /// Set once every server is up again and the load is to stop.
    stop: Cell<bool>,
    /// Per client id, the AT line of its latest acknowledged IAMAT (each id belongs to one
    /// task, which alone updates it).
    latest: RefCell<BTreeMap<String, String>>,
}

/// What a load task counted.
struct Outcome {
    acknowledged: usize,
    failed: usize,
}

fn position(rng: &mut fastrand::Rng) -> String {
    let lat = rng.f64() * 180.0 - 90.0;
    let lng = rng.f64() * 360.0 - 180.0;
    format!("{lat:+.6}{lng:+.6}")
}

/// Sends one IAMAT to `server`, over a connection kept per server: the AT line if it was
/// answered (it must be well formed), else whether the IAMAT may have reached the server.
async fn attempt(
    conns: &mut HashMap<String, LineClient>,
    server: &str,
    addr: SocketAddr,
    id: &str,
    position: &str,
    time: &str,
) -> Result<String, bool> {
    if !conns.contains_key(server) {
        // Nothing was sent if the connection cannot be made.
        let conn = LineClient::connect(addr).await.map_err(|_| false)?;
        conns.insert(server.to_owned(), conn);
    }
    let conn = conns.get_mut(server).unwrap();
    match conn.try_iamat(id, position, time).await {
        Ok(answer) => {
            assert_at_answer(&answer, server, id, position, time);
            Ok(answer)
        }
        Err(_) => {
            conns.remove(server);
            // The IAMAT may have been taken: the id is dirty until a later one is answered.
            Err(true)
        }
    }
}

/// One load task's state.
struct Load {
    task: usize,
    rng: fastrand::Rng,
    addrs: BTreeMap<String, SocketAddr>,
    shared: Rc<Shared>,
    ids: Vec<String>,
    /// Per id, the last client time used (times strictly increase per id).
    times: Vec<u64>,
    /// Per id, whether an IAMAT went unanswered after the last answered one.
    dirty: Vec<bool>,
    conns: HashMap<String, LineClient>,
    acknowledged: usize,
    failed: usize,
}

impl Load {
    /// Sends an IAMAT for id `i` to a random server that is up; whether it was answered.
    async fn send(&mut self, i: usize) -> bool {
        let up: Vec<String> = self.shared.up.borrow().iter().cloned().collect();
        if up.is_empty() {
            return false;
        }
        let server = &up[self.rng.usize(..up.len())];
        self.times[i] += 1;
        let time = format!("1700000000.{:09}", self.times[i]);
        let position = position(&mut self.rng);
        let addr = self.addrs[server];
        match attempt(
            &mut self.conns,
            server,
            addr,
            &self.ids[i],
            &position,
            &time,
        )
        .await
        {
            Ok(line) => {
                self.shared
                    .latest
                    .borrow_mut()
                    .insert(self.ids[i].clone(), line);
                self.dirty[i] = false;
                self.acknowledged += 1;
                true
            }
            Err(sent) => {
                self.dirty[i] |= sent;
                self.failed += 1;
                false
            }
        }
    }

    async fn run(mut self) -> Outcome {
        while !self.shared.stop.get() {
            let i = if self.rng.u8(..10) < 8 {
                self.rng.usize(..HOT_IDS)
            } else {
                self.rng.usize(..IDS_PER_TASK)
            };
            self.send(i).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // An id whose last IAMAT went unanswered gets a newer one (no server stops any more),
        // so that its latest acknowledged record is also the newest the herd may have seen.
        for i in 0..IDS_PER_TASK {
            let mut tries = 0;
            while self.dirty[i] {
                tries += 1;
                assert!(
                    tries <= 50,
                    "c{}-{i}: no IAMAT answered with every server up",
                    self.task
                );
                if !self.send(i).await {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Outcome {
            acknowledged: self.acknowledged,
            failed: self.failed,
        }
    }
}

fn load(
    task: usize,
    seed: u64,
    addrs: BTreeMap<String, SocketAddr>,
    shared: Rc<Shared>,
) -> impl Future<Output = Outcome> {
    Load {
        task,
        rng: fastrand::Rng::with_seed(seed),
        addrs,
        shared,
        ids: (0..IDS_PER_TASK).map(|i| format!("c{task}-{i}")).collect(),
        times: vec![0; IDS_PER_TASK],
        dirty: vec![false; IDS_PER_TASK],
        conns: HashMap::new(),
        acknowledged: 0,
        failed: 0,
    }
    .run()
}

/// The answer of each of `servers`, per client id, to WHATSAT (its AT line, or `None` for
/// `?`).
async fn holdings(
    herd: &Herd,
    servers: &[String],
    ids: &[String],
) -> Result<BTreeMap<String, Vec<Option<String>>>, String> {
    let mut all = BTreeMap::new();
    for server in servers {
        let mut c = LineClient::connect(herd.addr(server))
            .await
            .map_err(|e| format!("connect to {server}: {e}"))?;
        let lines: Vec<String> = ids.iter().map(|id| format!("WHATSAT {id} 10 5")).collect();
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        c.send(&text).await.map_err(|e| format!("{server}: {e}"))?;
        let mut held = Vec::new();
        for line in &lines {
            let answer = c
                .read_whatsat_answer(line)
                .await
                .map_err(|e| format!("{server}: {e}"))?;
            held.push(answer);
        }
        all.insert(server.clone(), held);
    }
    Ok(all)
}

/// The neighbors of `name` in the five-server herd.
fn neighbors(name: &str) -> Vec<&'static str> {
    FIVE_LINKS
        .iter()
        .filter_map(|&(a, b)| (a == name).then_some(b).or((b == name).then_some(a)))
        .collect()
}

/// Whether `log` says, after its first `from` bytes, that this server's link to `neighbor`
/// came up.
fn link_came_up(log: &str, from: usize, neighbor: &str) -> bool {
    let link = format!(" - link to {neighbor} at ");
    let since = String::from_utf8_lossy(log.as_bytes().get(from..).unwrap_or_default());
    since.lines().any(|line| {
        line.contains(&link) && (line.ends_with(" opened") || line.ends_with(" re-established"))
    })
}

/// Waits until the herd has settled after `restarted` came back, its log and those of the
/// servers up then having been `from` bytes long: the links between it and each neighbor
/// that is up are up both ways, and then every server that is up holds every record
/// acknowledged so far, or a newer one (so it is held by more than the next stop could
/// take away).
async fn settle(herd: &Herd, shared: &Shared, restarted: &str, from: &BTreeMap<String, usize>) {
    let up = herd.up();
    let linked: Vec<&str> = neighbors(restarted)
        .into_iter()
        .filter(|n| up.iter().any(|u| u == n))
        .collect();
    let what = format!("{restarted} and its neighbors link both ways");
    eventually(SETTLE_LIMIT, &what, async || {
        let own = herd.log(restarted);
        for neighbor in &linked {
            if !link_came_up(&own, from[restarted], neighbor) {
                return Err(format!("{restarted}'s link to {neighbor} is not up"));
            }
            if !link_came_up(&herd.log(neighbor), from[*neighbor], restarted) {
                return Err(format!("{neighbor}'s link to {restarted} is not up"));
            }
        }
        Ok(())
    })
    .await;
    let latest = shared.latest.borrow().clone();
    let ids: Vec<String> = latest.keys().cloned().collect();
    let what = format!("every server up holds every record acknowledged (after {restarted})");
    eventually(SETTLE_LIMIT, &what, async || {
        for (server, answers) in holdings(herd, &up, &ids).await? {
            for (id, answer) in ids.iter().zip(answers) {
                let held = answer.ok_or_else(|| format!("{server} holds nothing for {id}"))?;
                if newer(&held, &latest[id]) != held {
                    return Err(format!(
                        "{server} holds {held:?} for {id}, older than {:?}",
                        latest[id]
                    ));
                }
            }
        }
        Ok(())
    })
    .await;
}

#[actix_rt::test]
async fn every_server_ends_with_every_acknowledged_record_after_servers_come_and_go() {
    let seed = seed();
    println!("seed {seed} (HERD_TEST_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut herd = Herd::five().await;
    let shared = Rc::new(Shared {
        up: RefCell::new(herd.names().into_iter().collect()),
        stop: Cell::new(false),
        latest: RefCell::new(BTreeMap::new()),
    });
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| actix_rt::spawn(load(task, rng.u64(..), herd.addrs(), Rc::clone(&shared))))
        .collect();

    let start = Instant::now();
    let mut down: Vec<(Instant, String)> = Vec::new();
    let mut stops = 0;
    while start.elapsed() < LOAD {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = down.into_iter().partition(|(at, _)| *at <= now);
        down = waiting;
        for (_, name) in due {
            let from: BTreeMap<String, usize> = (herd.names().into_iter())
                .map(|server| {
                    let length = std::fs::metadata(herd.log_path(&server)).map_or(0, |m| m.len());
                    (server, length as usize)
                })
                .collect();
            herd.restart(&name).await;
            shared.up.borrow_mut().insert(name.clone());
            println!("{:>6.2?} {name} restarted", start.elapsed());
            // No stop until the herd has settled around it.
            settle(&herd, &shared, &name, &from).await;
            println!("{:>6.2?} settled", start.elapsed());
        }
        if down.len() < MAX_DOWN && rng.bool() {
            let up = herd.up();
            let victim = up[rng.usize(..up.len())].clone();
            // Clients stop choosing it first; those already talking to it may fail.
            shared.up.borrow_mut().remove(&victim);
            herd.stop(&victim).await;
            stops += 1;
            let back = Instant::now() + Duration::from_millis(rng.u64(200..1500));
            println!("{:>6.2?} {victim} stopped", start.elapsed());
            down.push((back, victim));
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(50..300))).await;
    }
    // The load stops first, and then the servers still down come back: they can only learn
    // what they missed from their neighbors' snapshots.
    shared.stop.set(true);
    let (mut acknowledged, mut failed) = (0, 0);
    for task in tasks {
        let outcome = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a load task did not finish")
            .expect("a load task failed");
        acknowledged += outcome.acknowledged;
        failed += outcome.failed;
    }
    let latest = shared.latest.borrow().clone();
    if down.is_empty() {
        let up = herd.up();
        let victim = up[rng.usize(..up.len())].clone();
        herd.stop(&victim).await;
        stops += 1;
        println!("{:>6.2?} {victim} stopped", start.elapsed());
        down.push((Instant::now(), victim));
    }
    for (at, name) in down {
        let delay = Duration::from_millis(rng.u64(200..1500));
        tokio::time::sleep_until(at.max(Instant::now() + delay)).await;
        herd.restart(&name).await;
        println!("{:>6.2?} {name} restarted", start.elapsed());
    }
    println!(
        "{stops} stops; {acknowledged} IAMATs acknowledged, {failed} failed; {} client ids",
        latest.len()
    );
    assert!(stops >= 3, "too few stops for a chaos test: {stops}");
    assert!(
        acknowledged > 1000,
        "too little load for a chaos test: {acknowledged}"
    );

    let ids: Vec<String> = latest.keys().cloned().collect();
    let what = "every server holds every client's latest acknowledged record";
    eventually(CONVERGE, what, async || {
        let held = holdings(&herd, &herd.names(), &ids).await?;
        for (server, answers) in &held {
            for (id, answer) in ids.iter().zip(answers) {
                if answer.as_deref() != Some(latest[id].as_str()) {
                    return Err(format!(
                        "{server} holds {answer:?} for {id}, not {:?}",
                        latest[id]
                    ));
                }
            }
        }
        Ok(())
    })
    .await;

    // The whole herd stops at once: each server's file is all that is left of it. Each is
    // started again alone (no link can give it anything) and must hold every record.
    herd.stop_all().await;
    for server in herd.names() {
        herd.restart(&server).await;
        let held = holdings(&herd, std::slice::from_ref(&server), &ids)
            .await
            .unwrap_or_else(|e| panic!("{server}: {e}"));
        for (id, answer) in ids.iter().zip(&held[&server]) {
            assert_eq!(
                answer.as_deref(),
                Some(latest[id].as_str()),
                "{server} alone after the whole herd stopped: {id}"
            );
        }
        herd.stop(&server).await;
        println!("{:>6.2?} {server} alone: every record", start.elapsed());
    }
}
