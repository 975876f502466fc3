//! Unit tests of the session, with fakes in place of the store and the places proxy, over
//! real sockets.

use super::*;
use crate::actors::places_proxy::PlacesAnswer;
use crate::protocol::Record;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A store that answers lookups from a fixed record and remembers what it was offered,
/// one list of lines per message; it answers a `Store` only if `answers`.
struct FakeStore {
    offered: Arc<Mutex<Vec<Vec<String>>>>,
    known: Option<Record>,
    answers: bool,
}
impl Actor for FakeStore {
    type Context = Context<Self>;
}
impl Handler<Store> for FakeStore {
    type Result = ResponseFuture<usize>;
    fn handle(&mut self, msg: Store, _: &mut Context<Self>) -> Self::Result {
        let lines = msg.records.iter().map(|r| r.line().to_owned()).collect();
        self.offered.lock().unwrap().push(lines);
        let (count, answers) = (msg.records.len(), self.answers);
        Box::pin(async move {
            if !answers {
                std::future::pending::<()>().await;
            }
            count
        })
    }
}
impl Handler<Lookup> for FakeStore {
    type Result = Option<Record>;
    fn handle(&mut self, Lookup(c): Lookup, _: &mut Context<Self>) -> Option<Record> {
        self.known.clone().filter(|r| r.client() == &*c)
    }
}

/// A places proxy that answers `{"n": <search number>, "m": <radius in metres>}` once
/// its gate opens.
struct FakePlaces {
    searches: Arc<Mutex<Vec<NearbySearch>>>,
    gate: watch::Receiver<bool>,
}
impl Actor for FakePlaces {
    type Context = Context<Self>;
}
impl Handler<NearbySearch> for FakePlaces {
    type Result = ResponseFuture<PlacesAnswer>;
    fn handle(&mut self, s: NearbySearch, _: &mut Context<Self>) -> Self::Result {
        let mut searches = self.searches.lock().unwrap();
        searches.push(s);
        let n = searches.len();
        let m = searches[n - 1].radius.metres().to_owned();
        let mut gate = self.gate.clone();
        Box::pin(async move {
            let _ = gate.wait_for(|open| *open).await;
            PlacesAnswer(format!("{{\n\n\"n\": {n},\n\"m\": {m}\n}}\n"))
        })
    }
}

struct Harness {
    client: TcpStream,
    offered: Arc<Mutex<Vec<Vec<String>>>>,
    searches: Arc<Mutex<Vec<NearbySearch>>>,
    gate: watch::Sender<bool>,
}

/// The socket buffers of a test session, each way.
const SOCKET_BUFFER_BYTES: u32 = 16 << 10;

const KIWI: &str = "AT Other +0.100000000 kiwi +34.068930-118.445127 1621464827.959498503";

/// A session of server Clark, whose one neighbor is Bona.
async fn session(places_open: bool) -> Harness {
    session_with(places_open, &["Bona"], true).await
}

/// A session of server Clark with neighbors `links`, whose store answers `Store`s if
/// `store_answers`.
async fn session_with(places_open: bool, links: &[&str], store_answers: bool) -> Harness {
    // Small socket buffers (the accepted socket inherits the listener's), so that what
    // the session holds back shows, rather than vanishing into the kernel's buffers.
    let small_socket = || {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(SOCKET_BUFFER_BYTES).unwrap();
        socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES).unwrap();
        socket
    };
    let socket = small_socket();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    let client = small_socket().connect(addr).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let offered = Arc::new(Mutex::new(Vec::new()));
    let searches = Arc::new(Mutex::new(Vec::new()));
    let (gate, gate_rx) = watch::channel(places_open);
    let known = match Command::parse(KIWI.as_bytes()) {
        Command::At(r) => Some(r),
        _ => None,
    };
    let store = FakeStore {
        offered: Arc::clone(&offered),
        known,
        answers: store_answers,
    }
    .start();
    let places = FakePlaces {
        searches: Arc::clone(&searches),
        gate: gate_rx,
    }
    .start();
    let services = Services {
        store: store.clone().recipient(),
        lookup: store.recipient(),
        places: places.recipient(),
    };
    let settings = SessionSettings {
        server: Arc::from("Clark"),
        max_line_bytes: 64,
        log: ServerLog::discard(),
        neighbors: Arc::from([Arc::from("Bona")]),
        links: links.iter().map(|&link| Arc::from(link)).collect(),
        servers: ["Bona", "Campbell", "Clark", "Jaquez"]
            .map(Arc::from)
            .into(),
        max_clock_skew: Some(Duration::from_secs(300)),
        links_in: InboundLinks::default(),
        clients: ClientCount::default(),
        durable: false,
        metrics: Arc::default(),
        certified_hellos: false,
    };
    let slot = settings.clients.take_slot();
    ClientSession::start(Stream::Tcp(server), 1, settings, services, Some(slot));
    Harness {
        client,
        offered,
        searches,
        gate,
    }
}

/// Sends `input`, half-closes, and reads every answer up to the server's close.
async fn exchange(client: &mut TcpStream, input: &[u8]) -> String {
    client.write_all(input).await.unwrap();
    client.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut out))
        .await
        .expect("the session did not close")
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[actix_rt::test]
async fn iamat_is_offered_to_the_store_and_answered_with_its_at_line() {
    let mut h = session(true).await;
    let out = exchange(&mut h.client, b"IAMAT pear +1.5-2 1700000000.5\n").await;
    let offered = h.offered.lock().unwrap().concat();
    assert_eq!(offered.len(), 1);
    assert_eq!(out, format!("{}\n", offered[0]));
    assert!(out.starts_with("AT Clark +"), "{out}");
    assert!(out.ends_with(" pear +1.5-2 1700000000.5\n"), "{out}");
}

#[actix_rt::test]
async fn whatsat_searches_around_the_stored_position() {
    let mut h = session(true).await;
    let out = exchange(&mut h.client, b"WHATSAT kiwi 1.5 7\n").await;
    assert_eq!(out, format!("{KIWI}\n{{\n\"n\": 1,\n\"m\": 1500\n}}\n\n"));
    let searches = h.searches.lock().unwrap();
    assert_eq!(searches.len(), 1);
    assert_eq!(searches[0].position.latitude, 34.068930);
    assert_eq!(searches[0].position.longitude, -118.445127);
    assert_eq!(searches[0].radius.metres(), "1500");
    assert_eq!(searches[0].bound, 7);
}

#[actix_rt::test]
async fn whatsat_of_an_unknown_client_is_invalid_and_searches_nothing() {
    let mut h = session(true).await;
    let out = exchange(&mut h.client, b"WHATSAT nobody 10 5\n").await;
    assert_eq!(out, "? WHATSAT nobody 10 5\n");
    assert!(h.searches.lock().unwrap().is_empty());
}

#[actix_rt::test]
async fn answers_keep_line_order_when_a_later_one_is_ready_first() {
    let mut h = session(false).await;
    let gate = h.gate.clone();
    let searches = Arc::clone(&h.searches);
    // Open the places gate only once the quick lines behind the WHATSAT are answered
    // (they are held back by the session, so the client cannot see them yet).
    actix_rt::spawn(async move {
        while searches.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = gate.send(true);
    });
    let out = exchange(
        &mut h.client,
        b"WHATSAT kiwi 10 5\nnonsense\r\nPEER Zed\nAT x",
    )
    .await;
    assert_eq!(
        out,
        format!("{KIWI}\n{{\n\"n\": 1,\n\"m\": 10000\n}}\n\n? nonsense\n? PEER Zed\n? AT x\n")
    );
}

/// The first line `client` reads within `wait`, if any.
async fn first_line(client: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut line = Vec::new();
    let read = async {
        let mut byte = [0; 1];
        while client.read(&mut byte).await.ok()? == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        Some(String::from_utf8_lossy(&line).into_owned())
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

#[actix_rt::test]
async fn an_answer_waits_for_the_store_while_a_link_may_have_to_take_the_record() {
    let mut h = session_with(true, &["Bona"], false).await;
    h.client.write_all(b"IAMAT kiwi +1+1 1\n").await.unwrap();
    let answer = first_line(&mut h.client, Duration::from_millis(100)).await;
    assert_eq!(answer, None, "answered before the store took the record");
}

#[actix_rt::test]
async fn without_other_neighbors_answers_do_not_wait_for_the_store() {
    // A server with no neighbor: the store never answers, the client is answered.
    let mut h = session_with(true, &[], false).await;
    h.client.write_all(b"IAMAT kiwi +1+1 1\n").await.unwrap();
    let answer = first_line(&mut h.client, Duration::from_secs(10)).await;
    assert!(answer.is_some_and(|a| a.starts_with("AT Clark ")));
    // A link from the only neighbor: its records hold up no answer behind them.
    let mut h = session_with(true, &["Bona"], false).await;
    let input = b"PEER Bona\nAT Bona +0.000000000 a +1+1 1\nbad\n";
    h.client.write_all(input).await.unwrap();
    let answer = first_line(&mut h.client, Duration::from_secs(10)).await;
    assert_eq!(answer.as_deref(), Some("? bad"));
    // Either way the store is offered the records.
    let offered = || h.offered.lock().unwrap().concat();
    for _ in 0..1000 {
        if !offered().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(offered(), ["AT Bona +0.000000000 a +1+1 1"]);
}

#[actix_rt::test]
async fn a_neighbor_hello_turns_the_connection_into_a_silent_record_stream() {
    let mut h = session(true).await;
    let records = "AT Bona +0.000000000 a +1+1 1\nAT Bona +0.000000000 b +1+1 2\n";
    let input = format!(
        "PEER Bona\n{records}PEER Bona\nIAMAT kiwi +1+1 1\nWHATSAT kiwi 1 1\n\
         AT Bona +0.000000000 c +1+1"
    );
    let out = exchange(&mut h.client, input.as_bytes()).await;
    // After the hello records get no answer; a second hello and client commands are
    // invalid; a last record cut short by the end of the stream is dropped.
    assert_eq!(
        out,
        "? PEER Bona\n? IAMAT kiwi +1+1 1\n? WHATSAT kiwi 1 1\n"
    );
    let offered = h.offered.lock().unwrap().concat();
    assert_eq!(
        offered,
        [
            "AT Bona +0.000000000 a +1+1 1",
            "AT Bona +0.000000000 b +1+1 2"
        ]
    );
}

#[actix_rt::test]
async fn a_hello_after_other_lines_opens_no_link() {
    let mut h = session(true).await;
    let input = "AT Bona +0.000000000 z +1+1 1\nPEER Bona\nAT Bona +0.000000000 a +1+1 1\n";
    let out = exchange(&mut h.client, input.as_bytes()).await;
    assert_eq!(
        out,
        "? AT Bona +0.000000000 z +1+1 1\n? PEER Bona\n? AT Bona +0.000000000 a +1+1 1\n"
    );
    assert!(h.offered.lock().unwrap().concat().is_empty());
}

#[actix_rt::test]
async fn a_neighbors_records_wait_for_nothing_and_never_pause_its_link() {
    // Clark has another neighbor, Jaquez, and a store that never answers: records from
    // a client would hold their answers, but a neighbor's have none to hold.
    let mut h = session_with(true, &["Bona", "Jaquez"], false).await;
    let records: String = (0..2 * MAX_PENDING_ANSWERS)
        .map(|i| format!("AT Bona +0.000000000 c{i} +1+1 {i}\n"))
        .collect();
    h.client
        .write_all(format!("PEER Bona\n{records}bad\n").as_bytes())
        .await
        .unwrap();
    // Read past more records than a session may owe answers for, and the invalid line
    // after them answered at once.
    let answer = first_line(&mut h.client, Duration::from_secs(10)).await;
    assert_eq!(answer.as_deref(), Some("? bad"));
    // Every record was offered (the store may take the last message after the answer).
    let offered = || h.offered.lock().unwrap().concat().len();
    for _ in 0..1000 {
        if offered() == 2 * MAX_PENDING_ANSWERS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(offered(), 2 * MAX_PENDING_ANSWERS);
}

#[actix_rt::test]
async fn the_records_of_one_read_go_to_the_store_in_one_message() {
    let mut h = session(true).await;
    let records: String = (0..100)
        .map(|i| format!("AT Bona +0.000000000 c{i} +1+1 {i}\n"))
        .collect();
    // One write of about 4 KiB: the session takes it in one read (or very few).
    let out = exchange(&mut h.client, format!("PEER Bona\n{records}").as_bytes()).await;
    assert_eq!(out, "");
    let offered = h.offered.lock().unwrap().clone();
    assert_eq!(offered.concat().len(), 100);
    assert!(
        offered.len() <= 3,
        "{} messages for 100 records",
        offered.len()
    );
}

#[actix_rt::test]
async fn a_lookup_sees_the_iamats_before_it_in_the_same_read() {
    let mut h = session(true).await;
    // The fake store knows only kiwi; what matters is the order of the messages.
    let out = exchange(
        &mut h.client,
        b"IAMAT a +1+1 1\nIAMAT b +1+1 1\nWHATSAT kiwi 1 1\nIAMAT c +1+1 1\n",
    )
    .await;
    assert!(out.contains(&format!(" b +1+1 1\n{KIWI}\n")), "{out}");
    assert!(out.ends_with(" c +1+1 1\n"), "{out}");
    let offered = h.offered.lock().unwrap().clone();
    let clients: Vec<Vec<&str>> = offered
        .iter()
        .map(|batch| batch.iter().map(|l| l.split(' ').nth(3).unwrap()).collect())
        .collect();
    assert_eq!(clients, [vec!["a", "b"], vec!["c"]]);
}

#[actix_rt::test]
async fn a_hello_from_a_server_that_is_not_a_neighbor_is_refused() {
    let mut h = session(true).await;
    let out = exchange(
        &mut h.client,
        b"PEER Campbell\nAT Campbell +0.000000000 a +1+1 1\n",
    )
    .await;
    assert_eq!(
        out,
        "? PEER Campbell\n? AT Campbell +0.000000000 a +1+1 1\n"
    );
    assert!(h.offered.lock().unwrap().is_empty());
}

#[actix_rt::test]
async fn a_too_long_line_is_answered_with_its_first_bytes_and_the_session_goes_on() {
    let mut h = session(true).await;
    let long = format!("IAMAT {}\nWHATSAT nobody 1 1\n", "x".repeat(200));
    let out = exchange(&mut h.client, long.as_bytes()).await;
    assert_eq!(out, format!("? {}\n? WHATSAT nobody 1 1\n", &long[..64]));
}

/// Waits until `check` holds, for at most ten seconds.
async fn until(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[actix_rt::test]
async fn reading_pauses_while_too_many_whatsats_are_in_flight() {
    let h = session(false).await;
    // Line i asks for a radius of i metres, which the fake echoes in its answer.
    let count_lines = 4 * MAX_PENDING_ANSWERS;
    let lines: String = (1..=count_lines)
        .map(|i| format!("WHATSAT kiwi {}.{:03} 5\n", i / 1000, i % 1000))
        .collect();
    let (mut read, mut write) = h.client.into_split();
    let writer = actix_rt::spawn(async move {
        write.write_all(lines.as_bytes()).await.unwrap();
        write.shutdown().await.unwrap();
    });
    // The session takes lines until it has the most searches under way, then stops
    // reading, part-way through what it read.
    let searches = Arc::clone(&h.searches);
    let count = || searches.lock().unwrap().len();
    until("the searches start", || count() >= MAX_WHATSATS_IN_FLIGHT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(count(), MAX_WHATSATS_IN_FLIGHT, "reading did not pause");
    // Once the answers come, reading resumes and every line is answered, in order.
    h.gate.send(true).unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    let out = String::from_utf8(out).unwrap();
    let radii: Vec<usize> = out
        .lines()
        .filter_map(|l| l.strip_prefix("\"m\": "))
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(radii.len(), count_lines);
    let misplaced = radii.iter().enumerate().find(|(i, m)| i + 1 != **m);
    assert!(
        misplaced.is_none(),
        "answer out of line order: {misplaced:?}"
    );
}

#[actix_rt::test]
async fn a_client_that_reads_slowly_is_slowed_not_dropped_and_gets_every_answer() {
    let h = session(true).await;
    // Far more answers than a session lets wait, sent without reading any.
    let count_lines = 100_000;
    let lines: String = (0..count_lines)
        .map(|i| format!("IAMAT c{i} +1+1 1\n"))
        .collect();
    let (mut read, mut write) = h.client.into_split();
    let writer = actix_rt::spawn(async move {
        write.write_all(lines.as_bytes()).await.unwrap();
        write.shutdown().await.unwrap();
    });
    // The session stops taking lines once its answers wait unread (beyond what the
    // sockets' buffers hold), instead of reading everything.
    let offered = Arc::clone(&h.offered);
    let count = || offered.lock().unwrap().iter().map(Vec::len).sum::<usize>();
    until("the first records are offered", || count() > 0).await;
    let mut last = 0;
    while count() != last {
        last = count();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last < count_lines / 2,
        "{last} lines taken: reading did not pause"
    );
    assert!(!writer.is_finished(), "the client could send everything");
    // Read slowly: every answer comes, in order.
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), read.read(&mut chunk))
            .await
            .expect("the answers stalled")
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
        if out.len() % 16 == 0 {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }
    writer.await.unwrap();
    let out = String::from_utf8(out).unwrap();
    let clients: Vec<&str> = out.lines().map(|l| l.split(' ').nth(3).unwrap()).collect();
    assert_eq!(clients.len(), count_lines);
    for (i, client) in clients.iter().enumerate() {
        assert_eq!(*client, format!("c{i}"), "answer {i} out of order");
    }
}
