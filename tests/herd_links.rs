//! End-to-end tests of the herd protocol (docs/PROTOCOL.md): whole herds run in one process,
//! talked to over TCP as clients would, with servers stopped and restarted, and a neighbor
//! that stops reading played by a proxy.

mod common;

use std::time::Duration;

use common::eventually;
use common::herds::{
    EVENTUALLY, FIVE, Herd, HerdBuilder, KIWI_POSITION, LineClient, Links, StallProxy,
    assert_at_answer, free_port, newer, seed, tcp_state,
};

/// Another position, far from [`KIWI_POSITION`].
const SYDNEY: &str = "-33.868800+151.209300";

/// The tests of the links run twice, over plain TCP and over mutual TLS: the same tests, so
/// that what the links promise holds whichever they run over.
macro_rules! over_both_links {
    ($($name:ident),* $(,)?) => {
        mod plain {
            $(#[actix_rt::test]
            async fn $name() {
                super::$name(super::Links::Plain).await;
            })*
        }
        mod tls {
            $(#[actix_rt::test]
            async fn $name() {
                super::$name(super::Links::Tls).await;
            })*
        }
    };
}

over_both_links!(
    an_iamat_at_clark_reaches_every_server_of_the_five_server_herd_byte_for_byte,
    an_iamat_travels_three_hops_down_a_chain,
    records_are_routed_around_a_stopped_server,
    a_restarted_server_catches_up_on_what_it_missed,
    concurrent_conflicting_iamats_converge_on_the_newer_record_everywhere,
    a_record_reaches_a_neighbor_before_the_client_gets_its_answer,
    an_older_record_does_not_replace_a_newer_one_anywhere,
);

async fn an_iamat_at_clark_reaches_every_server_of_the_five_server_herd_byte_for_byte(
    links: Links,
) {
    let mut herd = HerdBuilder::five().links_over(links).start().await;
    let line = herd
        .iamat(
            "Clark",
            "kiwi.cs.ucla.edu",
            KIWI_POSITION,
            "1621464827.959498503",
        )
        .await;
    // Bailey is two hops from Clark (through Bona, or Jaquez and Campbell).
    herd.eventually_know(&FIVE, "kiwi.cs.ucla.edu", &line).await;
    herd.stop_all().await;
}

async fn an_iamat_travels_three_hops_down_a_chain(links: Links) {
    let mut herd = HerdBuilder::new(&["A", "B", "C", "D"], &[("A", "B"), ("B", "C"), ("C", "D")])
        .links_over(links)
        .start()
        .await;
    let line = herd
        .iamat("A", "chain.client", KIWI_POSITION, "1700000000.25")
        .await;
    herd.eventually_know(&["D", "C", "B", "A"], "chain.client", &line)
        .await;
    herd.stop_all().await;
}

async fn records_are_routed_around_a_stopped_server(links: Links) {
    let mut herd = HerdBuilder::five().links_over(links).start().await;
    herd.stop("Bona").await;
    // Without Bona, Clark reaches Bailey only through Jaquez and Campbell.
    let line = herd
        .iamat("Clark", "detour", KIWI_POSITION, "1700000000")
        .await;
    herd.eventually_know(&["Bailey", "Campbell", "Jaquez", "Clark"], "detour", &line)
        .await;
    herd.stop_all().await;
}

async fn a_restarted_server_catches_up_on_what_it_missed(links: Links) {
    let mut herd = HerdBuilder::five().links_over(links).start().await;
    herd.stop("Bailey").await;
    let mut missed = Vec::new();
    for i in 0..5 {
        let client = format!("missed-{i}");
        let time = format!("1700000000.{i}");
        let line = herd.iamat("Clark", &client, KIWI_POSITION, &time).await;
        missed.push((client, line));
    }
    // Bailey's neighbors hold every record before it returns, so Bailey can only learn
    // them from the links' snapshots on reconnection.
    for (client, line) in &missed {
        herd.eventually_know(&["Bona", "Campbell"], client, line)
            .await;
    }
    herd.restart("Bailey").await;
    for (client, line) in &missed {
        herd.eventually_know(&["Bailey"], client, line).await;
    }
    herd.stop_all().await;
}

async fn concurrent_conflicting_iamats_converge_on_the_newer_record_everywhere(links: Links) {
    let seed = seed();
    println!("seed {seed} (HERD_TEST_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut herd = HerdBuilder::five().links_over(links).start().await;
    let mut clark = herd.client("Clark").await;
    let mut bailey = herd.client("Bailey").await;
    let client = "contested";
    let mut best: Option<String> = None;
    for round in 0..40u64 {
        // Each round's times are above every earlier round's, except in "older" rounds.
        let secs = 1_700_000_000 + 10 * round;
        let fraction = |rng: &mut fastrand::Rng| {
            let digits = rng.usize(1..=9);
            let fraction = rng.u32(0..10u32.pow(digits as u32));
            format!("{fraction:0digits$}")
        };
        let (mut c_time, mut b_time) = match round % 4 {
            // The same time, written the same way: the bytewise greater line wins.
            0 => (format!("{secs}"), format!("{secs}")),
            // The same time written two ways: still a tie, not a textual comparison.
            1 => (format!("{secs}.5"), format!("{secs}.500000000")),
            // Different times (almost always) in the same second.
            2 => (
                format!("{secs}.{}", fraction(&mut rng)),
                format!("{secs}.{}", fraction(&mut rng)),
            ),
            // Both older than what the herd holds: nothing changes.
            _ => (
                format!("{}.{}", secs - 15, fraction(&mut rng)),
                format!("{}", secs - 11),
            ),
        };
        if rng.bool() {
            std::mem::swap(&mut c_time, &mut b_time);
        }
        let (c_line, b_line) = futures_util::future::join(
            clark.iamat("Clark", client, KIWI_POSITION, &c_time),
            bailey.iamat("Bailey", client, SYDNEY, &b_time),
        )
        .await;
        let winner = newer(&c_line, &b_line);
        let expected = match &best {
            Some(b) => newer(b, winner).to_owned(),
            None => winner.to_owned(),
        };
        // Both records cross the herd in opposite directions; every server must end with
        // the same one, the newer by the protocol's rule, whichever it heard first.
        herd.eventually_know(&FIVE, client, &expected).await;
        best = Some(expected);
    }
    herd.stop_all().await;
}

async fn a_record_reaches_a_neighbor_before_the_client_gets_its_answer(links: Links) {
    let mut herd = HerdBuilder::five().links_over(links).start().await;
    // First make sure the link from Clark to Jaquez is up.
    let warm = herd
        .iamat("Clark", "warm-up", KIWI_POSITION, "1700000000")
        .await;
    herd.eventually_know(&["Jaquez"], "warm-up", &warm).await;
    let mut clark = herd.client("Clark").await;
    let mut jaquez = herd.client("Jaquez").await;
    for round in 0..100 {
        let time = format!("{}", 1_700_000_000 + round);
        let line = clark.iamat("Clark", "hasty", KIWI_POSITION, &time).await;
        // No waiting: the record went out on the link before the answer did.
        let seen = jaquez.whatsat("hasty").await.expect("WHATSAT at Jaquez");
        assert_eq!(
            seen.as_deref(),
            Some(line.as_str()),
            "round {round}: Jaquez does not hold the record Clark just acknowledged"
        );
    }
    herd.stop_all().await;
}

async fn an_older_record_does_not_replace_a_newer_one_anywhere(links: Links) {
    let mut herd = HerdBuilder::five().links_over(links).start().await;
    let newest = herd.iamat("Clark", "steady", KIWI_POSITION, "200").await;
    herd.eventually_know(&FIVE, "steady", &newest).await;
    // The older IAMAT is answered with its own AT line (asserted by `iamat`)...
    let older = herd.iamat("Bailey", "steady", SYDNEY, "100").await;
    assert_ne!(older, newest);
    // ...and had it been stored and flooded, it would travel ahead of this marker.
    let marker = herd.iamat("Bailey", "steady-marker", SYDNEY, "300").await;
    herd.eventually_know(&FIVE, "steady-marker", &marker).await;
    for server in FIVE {
        let held = herd.whatsat(server, "steady").await.expect("WHATSAT");
        assert_eq!(
            held.as_deref(),
            Some(newest.as_str()),
            "{server} replaced the newer record"
        );
    }
    herd.stop_all().await;
}

/// At a server with links, the store offers a client's record only at the end of the round
/// in which its links take it; a WHATSAT sent right behind the IAMAT, in the same write,
/// must still find that record and not the one before it.
#[actix_rt::test]
async fn a_whatsat_right_behind_an_iamat_at_a_linked_server_sees_that_iamat() {
    let mut herd = HerdBuilder::five().start().await;
    let mut clark = herd.client("Clark").await;
    for round in 0..50 {
        let time = format!("{}", 1_700_000_000 + round);
        let whatsat = "WHATSAT right-behind 10 5";
        let both = format!("IAMAT right-behind {KIWI_POSITION} {time}\n{whatsat}\n");
        clark.send(&both).await.expect("IAMAT and WHATSAT to Clark");
        let answer = clark.read_line().await.expect("IAMAT's answer");
        assert_at_answer(&answer, "Clark", "right-behind", KIWI_POSITION, &time);
        let seen = clark
            .read_whatsat_answer(whatsat)
            .await
            .expect("WHATSAT's answer");
        assert_eq!(
            seen.as_deref(),
            Some(answer.as_str()),
            "round {round}: the WHATSAT did not see the IAMAT just before it"
        );
    }
    herd.stop_all().await;
}

/// Clark and Bona, where Clark reaches Bona only through a proxy the test controls.
async fn clark_with_bona_behind_a_proxy() -> (Herd, StallProxy) {
    let proxy = StallProxy::start();
    let herd = HerdBuilder::new(&["Clark", "Bona"], &[("Clark", "Bona")])
        .advertise("Bona", proxy.addr())
        .start()
        .await;
    proxy.forward_to(herd.addr("Bona"));
    let warm = herd
        .iamat("Clark", "warm-up", KIWI_POSITION, "1700000000")
        .await;
    herd.eventually_know(&["Bona"], "warm-up", &warm).await;
    (herd, proxy)
}

/// Whether a log holds the note of the link to Bona dropped for being over its limit.
fn over_limit_note(log: &str) -> Option<&str> {
    log.lines().find(|l| {
        l.contains("link to Bona")
            && l.contains("dropped")
            && l.contains("over the")
            && l.contains("limit")
    })
}

/// The fewest IAMATs sent at the stalled link (a few MB of records).
const FLOOD_MIN: usize = 20_000;
/// The most: far more than the link's queue and the kernel's buffers hold together.
const FLOOD_MAX: usize = 120_000;
/// IAMATs sent per batch.
const FLOOD_BATCH: usize = 2_000;

/// Sends IAMATs with long client ids at Clark, checking every answer, until Clark's log
/// (read as it goes) says its link to Bona went over its queue limit (and at least
/// [`FLOOD_MIN`]); returns the AT line of the last one.
async fn flood_clark(herd: &Herd) -> String {
    let mut clark = herd.client("Clark").await;
    let long = "x".repeat(240);
    let mut sent = 0;
    let mut last = String::new();
    while sent < FLOOD_MAX {
        let ids: Vec<String> = (sent..sent + FLOOD_BATCH)
            .map(|i| format!("{long}-{i:06}"))
            .collect();
        let text: String = ids
            .iter()
            .map(|id| format!("IAMAT {id} {KIWI_POSITION} 1700000000.5\n"))
            .collect();
        // Generous: this is a liveness check, not a timing.
        let answers =
            tokio::time::timeout(Duration::from_secs(60), clark.pipeline(&text, FLOOD_BATCH))
                .await
                .unwrap_or_else(|_| panic!("IAMATs {sent}..: not all answered within 60 s"))
                .unwrap_or_else(|e| panic!("IAMATs {sent}..: {e}"));
        for (id, answer) in ids.iter().zip(&answers) {
            assert_at_answer(answer, "Clark", id, KIWI_POSITION, "1700000000.5");
        }
        last = answers.last().unwrap().clone();
        sent += FLOOD_BATCH;
        if sent >= FLOOD_MIN && over_limit_note(&herd.log("Clark")).is_some() {
            break;
        }
    }
    println!("{sent} IAMATs sent at Clark while Bona did not read");
    last
}

#[actix_rt::test]
async fn a_neighbor_that_stops_reading_never_blocks_clients_and_its_queue_is_dropped() {
    let (mut herd, proxy) = clark_with_bona_behind_a_proxy().await;
    proxy.stall();
    let last = flood_clark(&herd).await;
    // Once Bona reads again, the next connection's snapshot brings it up to date.
    proxy.resume();
    let after = herd
        .iamat("Clark", "after-the-stall", KIWI_POSITION, "1700000001")
        .await;
    let last_client = last.split(' ').nth(3).unwrap().to_owned();
    let what = "Bona caught up with Clark's records";
    eventually(Duration::from_secs(30), what, async || {
        for (client, line) in [(last_client.as_str(), &last), ("after-the-stall", &after)] {
            let got = herd.whatsat("Bona", client).await;
            if got.as_ref().ok().and_then(Option::as_deref) != Some(line.as_str()) {
                return Err(format!("Bona answers {got:?} for {client}"));
            }
        }
        Ok(())
    })
    .await;
    herd.stop_all().await;
    let log = herd.log("Clark");
    assert!(
        over_limit_note(&log).is_some(),
        "Clark's log does not say the link to Bona was dropped over its queue limit"
    );
}

#[actix_rt::test]
async fn a_link_dropped_over_its_queue_limit_closes_its_connection() {
    let (mut herd, proxy) = clark_with_bona_behind_a_proxy().await;
    let stalled = *proxy.accepted().last().expect("Clark dialled the proxy");
    assert_eq!(
        tcp_state(stalled, proxy.addr()),
        Some(1),
        "Clark's link to the proxy is not an established socket in /proc/net/tcp"
    );
    proxy.stall();
    flood_clark(&herd).await;
    eventually(
        EVENTUALLY,
        "Clark dials again after dropping the link",
        async || match proxy.accepted().len() {
            1 => Err("one connection so far".to_owned()),
            _ => Ok(()),
        },
    )
    .await;
    // The dropped connection must be closed (FIN-WAIT-1 while Bona reads nothing, or
    // gone), not left open with a full send buffer, one more for each overflow.
    let what = "Clark closed the link connection it dropped";
    eventually(EVENTUALLY, what, async || {
        match tcp_state(stalled, proxy.addr()) {
            Some(1) => Err("Clark's side is still ESTABLISHED".to_owned()),
            _ => Ok(()),
        }
    })
    .await;
    herd.stop_all().await;
}

#[actix_rt::test]
async fn hellos_are_accepted_only_from_neighbors_and_records_only_after_a_hello() {
    let mut herd = HerdBuilder::new(
        &["Clark", "Bona", "Jaquez"],
        &[("Clark", "Bona"), ("Bona", "Jaquez")],
    )
    .start()
    .await;
    let addr = herd.addr("Clark");

    // A server nobody configured, then one that is configured but not Clark's neighbor.
    let mut stranger = LineClient::connect(addr).await.unwrap();
    stranger.send("PEER Stranger\n").await.unwrap();
    assert_eq!(stranger.read_line().await.unwrap(), "? PEER Stranger");
    let sneaky = "AT Stranger +0.000000000 sneaky +1+1 1700000000";
    stranger.send(&format!("{sneaky}\n")).await.unwrap();
    assert_eq!(stranger.read_line().await.unwrap(), format!("? {sneaky}"));
    let mut jaquez = LineClient::connect(addr).await.unwrap();
    jaquez.send("PEER Jaquez\n").await.unwrap();
    assert_eq!(jaquez.read_line().await.unwrap(), "? PEER Jaquez");

    // A record on a connection that never said hello.
    let mut anonymous = LineClient::connect(addr).await.unwrap();
    let unsolicited = "AT Bona +0.000000000 unsolicited +1+1 1700000000";
    anonymous.send(&format!("{unsolicited}\n")).await.unwrap();
    assert_eq!(
        anonymous.read_line().await.unwrap(),
        format!("? {unsolicited}")
    );
    assert_eq!(anonymous.whatsat("unsolicited").await.unwrap(), None);

    // A neighbor's hello, then a record: no answer, and the record is stored. A client's
    // command on the link is invalid (a link carries records one way).
    let mut bona = LineClient::connect(addr).await.unwrap();
    let record = "AT Bona +0.250000000 welcome +12.5-7.25 1700000000.75";
    let iamat = "IAMAT onlink +1+1 1700000000";
    bona.send(&format!("PEER Bona\n{record}\n{iamat}\n"))
        .await
        .unwrap();
    herd.eventually_know(&["Clark"], "welcome", record).await;
    assert_eq!(bona.finish().await.unwrap(), format!("? {iamat}\n"));
    // The refused records and command changed nothing, anywhere.
    for server in ["Clark", "Bona", "Jaquez"] {
        for client in ["sneaky", "unsolicited", "onlink"] {
            let held = herd.whatsat(server, client).await.unwrap();
            assert_eq!(held, None, "{server} stored a refused record of {client}");
        }
    }
    herd.stop_all().await;
}

#[actix_rt::test]
async fn with_a_peer_addr_links_use_it_and_the_client_address_refuses_hellos() {
    let port = free_port();
    let peer_addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut herd = HerdBuilder::new(&["Clark", "Bona"], &[("Clark", "Bona")])
        .peer_addr("Bona", peer_addr)
        .start()
        .await;
    assert_eq!(herd.node("Bona").peer_addr(), Some(peer_addr));

    // Records flood both ways: Clark dials Bona's peer_addr (a hello on Bona's client
    // address would be refused, and nothing would reach Bona).
    let from_clark = herd
        .iamat("Clark", "via-peer-addr", KIWI_POSITION, "1700000000")
        .await;
    herd.eventually_know(&["Bona"], "via-peer-addr", &from_clark)
        .await;
    let from_bona = herd.iamat("Bona", "to-clark", SYDNEY, "1700000000").await;
    herd.eventually_know(&["Clark"], "to-clark", &from_bona)
        .await;

    let mut on_client_addr = herd.client("Bona").await;
    on_client_addr.send("PEER Clark\n").await.unwrap();
    assert_eq!(on_client_addr.read_line().await.unwrap(), "? PEER Clark");
    let record = "AT Clark +0.000000000 wrong-door +1+1 1700000000";
    on_client_addr.send(&format!("{record}\n")).await.unwrap();
    assert_eq!(
        on_client_addr.read_line().await.unwrap(),
        format!("? {record}")
    );

    // The same hello on the peer address is accepted.
    let mut on_peer_addr = LineClient::connect(peer_addr).await.unwrap();
    let record = "AT Clark +0.000000000 right-door +1+1 1700000000";
    on_peer_addr
        .send(&format!("PEER Clark\n{record}\n"))
        .await
        .unwrap();
    herd.eventually_know(&["Bona"], "right-door", record).await;
    assert_eq!(on_peer_addr.finish().await.unwrap(), "");
    assert_eq!(herd.whatsat("Bona", "wrong-door").await.unwrap(), None);
    herd.stop_all().await;
}

#[actix_rt::test]
async fn links_say_hello_send_only_stored_records_not_back_and_a_snapshot_on_reconnection() {
    // Clark is real; its neighbors Bona and Jaquez are played by the test.
    let bona = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jaquez = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut herd = HerdBuilder::new(
        &["Clark", "Bona", "Jaquez"],
        &[("Clark", "Bona"), ("Clark", "Jaquez")],
    )
    .external("Bona", bona.local_addr().unwrap())
    .external("Jaquez", jaquez.local_addr().unwrap())
    .start()
    .await;
    let mut to_bona = LineClient::accept(&bona).await.unwrap();
    let mut to_jaquez = LineClient::accept(&jaquez).await.unwrap();
    assert_eq!(to_bona.read_line().await.unwrap(), "PEER Clark");
    assert_eq!(to_jaquez.read_line().await.unwrap(), "PEER Clark");

    // A record from Bona goes on to Jaquez, not back to Bona.
    let one_hop = "AT Bona +0.100000000 one-hop +1+1 1700000000.5";
    let mut from_bona = herd.client("Clark").await;
    from_bona
        .send(&format!("PEER Bona\n{one_hop}\n"))
        .await
        .unwrap();
    herd.eventually_know(&["Clark"], "one-hop", one_hop).await;
    // From Jaquez: the same record again and an older one (neither stored, so neither
    // forwarded), then a new one (forwarded to Bona only). Lines of one connection are
    // taken in order, so once the new one is held the others were dealt with.
    let equal = one_hop;
    let older = "AT Jaquez +0.100000000 one-hop +2+2 1700000000.4";
    let newer_one = "AT Jaquez +0.100000000 from-jaquez +3+3 1700000000";
    let mut from_jaquez = herd.client("Clark").await;
    from_jaquez
        .send(&format!("PEER Jaquez\n{equal}\n{older}\n{newer_one}\n"))
        .await
        .unwrap();
    herd.eventually_know(&["Clark"], "from-jaquez", newer_one)
        .await;
    herd.eventually_know(&["Clark"], "one-hop", one_hop).await;
    // A client's record goes to both; it travels behind everything sent before it.
    let marker = herd
        .iamat("Clark", "marker", KIWI_POSITION, "1700000001")
        .await;
    assert_eq!(to_jaquez.read_line().await.unwrap(), one_hop);
    assert_eq!(to_jaquez.read_line().await.unwrap(), marker);
    assert_eq!(to_bona.read_line().await.unwrap(), newer_one);
    assert_eq!(to_bona.read_line().await.unwrap(), marker);

    // Bona drops the link: Clark dials again by itself, says hello, then sends everything
    // it holds.
    drop(to_bona);
    let mut again = LineClient::accept(&bona).await.unwrap();
    assert_eq!(again.read_line().await.unwrap(), "PEER Clark");
    let mut snapshot = Vec::new();
    for _ in 0..3 {
        snapshot.push(again.read_line().await.unwrap());
    }
    snapshot.sort();
    let mut held = vec![one_hop.to_owned(), newer_one.to_owned(), marker.clone()];
    held.sort();
    assert_eq!(snapshot, held);
    drop((from_bona, from_jaquez, to_jaquez));
    herd.stop_all().await;
}

/// The connection number of the log line that ends with `end` and has `mark` (`-`, `<`,
/// `>`) after its number: `<stamp> conn <n> <mark> <text>`.
fn log_conn_of(log: &str, mark: &str, end: &str) -> Option<u64> {
    log.lines().find_map(|line| {
        let words: Vec<&str> = line.splitn(5, ' ').collect();
        match words[..] {
            [_, "conn", n, m, text] if m == mark && text.ends_with(end) => n.parse().ok(),
            _ => None,
        }
    })
}

#[actix_rt::test]
async fn a_links_lines_out_and_in_are_logged_under_its_own_connection_number() {
    // Clark is real; its neighbor Bona is played by the test.
    let bona = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut herd = HerdBuilder::new(&["Clark", "Bona"], &[("Clark", "Bona")])
        .external("Bona", bona.local_addr().unwrap())
        .start()
        .await;
    let mut first = LineClient::accept(&bona).await.unwrap();
    assert_eq!(first.read_line().await.unwrap(), "PEER Clark");
    let live = herd
        .iamat("Clark", "logged-live", KIWI_POSITION, "1700000000")
        .await;
    assert_eq!(first.read_line().await.unwrap(), live);
    // Bona answers (as a server refusing the hello does): Clark ends the link rather than
    // stream records to a server that refuses each one, then dials again and sends the
    // hello and its snapshot on a new connection.
    first.send("? PEER Clark\n").await.unwrap();
    assert_eq!(first.finish().await.unwrap(), "");
    let mut second = LineClient::accept(&bona).await.unwrap();
    assert_eq!(second.read_line().await.unwrap(), "PEER Clark");
    assert_eq!(second.read_line().await.unwrap(), live);
    herd.stop_all().await;
    let log = herd.log("Clark");

    let one = log_conn_of(&log, "-", " opened").expect("no link opened note");
    let two = log_conn_of(&log, "-", "re-established").expect("no re-established note");
    assert_ne!(one, two, "{log}");
    // The client's session has a number of its own, not the link's.
    let client = log_conn_of(&log, "<", "logged-live +34.068930-118.445127 1700000000");
    assert!(client.is_some_and(|c| c != one && c != two), "{log}");
    let lines_of = |conn: u64| -> Vec<&str> {
        log.lines()
            .filter_map(|l| {
                l.split_once(&format!(" conn {conn} "))
                    .map(|(_, rest)| rest)
            })
            .collect()
    };
    let first_lines = lines_of(one);
    for want in [
        "> PEER Clark".to_owned(),
        format!("> {live}"),
        "< ? PEER Clark".to_owned(),
    ] {
        assert!(
            first_lines.contains(&want.as_str()),
            "{want:?} on conn {one}:\n{log}"
        );
    }
    // The note says why: the two configs disagree.
    let refused =
        "dropped: Bona refused it, answering \"? PEER Clark\" (do the two configs agree?)";
    assert!(
        first_lines
            .iter()
            .any(|l| l.starts_with("- link to Bona") && l.ends_with(refused)),
        "no refusal note on conn {one}:\n{log}"
    );
    // The snapshot on the second connection is logged like the live records.
    let second_lines = lines_of(two);
    for want in ["> PEER Clark".to_owned(), format!("> {live}")] {
        assert!(
            second_lines.contains(&want.as_str()),
            "{want:?} on conn {two}:\n{log}"
        );
    }
}

#[actix_rt::test]
async fn a_server_listening_on_every_interface_is_reached_at_its_advertised_address() {
    let (clark_port, bona_port) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "links = [[\"Clark\", \"Bona\"]]\n\n[places]\nurl = 'http://127.0.0.1:9/x'\n\n\
         [log]\ndir = '{}'\n\n[store]\ndir = '{}'\n\n\
         [[nodes]]\nname = \"Clark\"\naddr = \"127.0.0.1:{clark_port}\"\n\n\
         [[nodes]]\nname = \"Bona\"\naddr = \"127.0.0.1:{bona_port}\"\nlisten = \"0.0.0.0:{bona_port}\"\n",
        dir.path().join("logs").display(),
        dir.path().join("data").display()
    );
    let path = dir.path().join("herd.toml");
    std::fs::write(&path, toml).unwrap();
    let config = herd::config::HerdConfig::load_with_env(&path, Some(Default::default())).unwrap();
    let key = Some(herd::actors::places_proxy::ApiKey::new("k"));
    let clark = herd::node::Node::start(&config, "Clark", key.clone())
        .await
        .unwrap();
    let bona = herd::node::Node::start(&config, "Bona", key).await.unwrap();
    assert_eq!(
        bona.client_addr(),
        format!("0.0.0.0:{bona_port}").parse().unwrap()
    );

    // Clark dials Bona at its advertised 127.0.0.1 address, which the 0.0.0.0 bind serves.
    let mut at_clark = LineClient::connect(clark.client_addr()).await.unwrap();
    let line = at_clark
        .iamat("Clark", "everywhere", KIWI_POSITION, "1700000000")
        .await;
    let bona_addr = format!("127.0.0.1:{bona_port}").parse().unwrap();
    eventually(EVENTUALLY, "Bona knows the record", async || {
        let mut c = LineClient::connect(bona_addr)
            .await
            .map_err(|e| e.to_string())?;
        match c.whatsat("everywhere").await {
            Ok(Some(got)) if got == line => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    clark.stop().await;
    bona.stop().await;
}
