//! End-to-end tests of what one client, or one stranger on a server's port, must not be able
//! to do to the herd within the protocol's own rules: break the links with one long record,
//! pin a client's position with a time in the future, take over a neighbor's link, or be
//! dropped for reading slowly. (Running the server out of descriptors is in `tests/cli.rs`,
//! which starts it under a low `ulimit -n`; random input is in `tests/fuzz.rs`.)

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::herds::{HerdBuilder, KIWI_POSITION, LineClient};
use common::{MAX_LINE_BYTES, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// The server's clock, in whole seconds.
fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[actix_rt::test]
async fn an_iamat_whose_record_would_not_fit_in_a_line_is_invalid_and_the_links_stay_up() {
    let mut herd = HerdBuilder::new(&["A", "B", "C"], &[("A", "B"), ("B", "C")])
        .start()
        .await;
    let warm = herd.iamat("A", "warm", KIWI_POSITION, "1700000000").await;
    herd.eventually_know(&["C"], "warm", &warm).await;

    // An IAMAT exactly as long as a line may be: its AT line (the server's name and the
    // time difference added) would not be, so no neighbor could take it as a line.
    let head = "IAMAT long +1+1 1700000000.";
    let iamat = format!("{head}{}", "9".repeat(MAX_LINE_BYTES - head.len()));
    assert_eq!(iamat.len(), MAX_LINE_BYTES);
    let mut client = herd.client("B").await;
    client.send(&format!("{iamat}\n")).await.unwrap();
    assert_eq!(client.read_line().await.unwrap(), format!("? {iamat}"));
    // One byte shorter in its time, with a shorter client id, it fits and is stored.
    let time = format!("1700000000.{}", "9".repeat(MAX_LINE_BYTES - 70));
    let fits = client.iamat("B", "l", "+1+1", &time).await;
    assert!(fits.len() <= MAX_LINE_BYTES, "{}", fits.len());
    herd.eventually_know(&["A", "C"], "l", &fits).await;

    // Nothing was stored of the long one, and the links carry records as before.
    for server in ["A", "B", "C"] {
        let answer = herd.whatsat(server, "long").await.unwrap();
        assert_eq!(answer, None, "{server} knows the long record");
    }
    let fresh = herd.iamat("A", "fresh", KIWI_POSITION, "1700000001").await;
    herd.eventually_know(&["C"], "fresh", &fresh).await;
    // Read once "fresh" crossed the herd, long after the long lines were logged, and before
    // stopping drops the links.
    for server in ["A", "B", "C"] {
        let log = herd.log(server);
        assert!(
            !log.contains(" dropped"),
            "a link of {server} was dropped:\n{log}"
        );
    }
    herd.stop_all().await;
}

#[actix_rt::test]
async fn a_link_goes_on_when_its_neighbor_refuses_one_record_and_ends_when_it_refuses_the_hello() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut herd = HerdBuilder::new(&["A", "B"], &[("A", "B")])
        .external("A", a.local_addr().unwrap())
        .start()
        .await;
    let mut to_a = LineClient::accept(&a).await.unwrap();
    assert_eq!(to_a.read_line().await.unwrap(), "PEER B");

    // A (played here) answers as a server that finds one record invalid would.
    to_a.send("? AT B +0.000000000 odd +1+1 1\n").await.unwrap();
    to_a.send("? AT B +0.000000000 odder +1+1 2\n")
        .await
        .unwrap();
    // B keeps the link: the next record comes on the same connection.
    let still = herd.iamat("B", "still", KIWI_POSITION, "1700000000").await;
    assert_eq!(to_a.read_line().await.unwrap(), still);

    // A record from A longer than a line is refused, and the link from A goes on.
    let mut from_a = herd.client("B").await;
    let long = format!(
        "AT A +0.000000000 big +1+1 1.{}",
        "9".repeat(MAX_LINE_BYTES)
    );
    let after = "AT A +0.000000000 after +1+1 1700000000";
    from_a
        .send(&format!("PEER A\n{long}\n{after}\n"))
        .await
        .unwrap();
    let refused = from_a.read_line().await.unwrap();
    assert_eq!(refused, format!("? {}", &long[..MAX_LINE_BYTES]));
    herd.eventually_know(&["B"], "after", after).await;
    assert_eq!(herd.whatsat("B", "big").await.unwrap(), None);

    // A refusal of the hello itself ends the link; B dials again.
    to_a.send("? PEER B\n").await.unwrap();
    assert_eq!(to_a.finish().await.unwrap(), "");
    let mut again = LineClient::accept(&a).await.unwrap();
    assert_eq!(again.read_line().await.unwrap(), "PEER B");
    herd.stop_all().await;
    let log = herd.log("B");
    let said = log.matches("A refused a record").count();
    assert_eq!(
        said, 1,
        "the disagreement is said once per connection:\n{log}"
    );
}

#[actix_rt::test]
async fn a_time_far_ahead_of_the_servers_clock_cannot_pin_a_client() {
    let mut herd = HerdBuilder::new(&["A", "B"], &[("A", "B")]).start().await;
    let mut client = herd.client("A").await;
    for time in [
        format!("{}", now_s() + 3600),
        "99999999999.999999999".to_owned(),
        "18446744073709551615.999999999".to_owned(),
    ] {
        let iamat = format!("IAMAT victim +0+0 {time}");
        client.send(&format!("{iamat}\n")).await.unwrap();
        assert_eq!(client.read_line().await.unwrap(), format!("? {iamat}"));
    }
    assert_eq!(herd.whatsat("B", "victim").await.unwrap(), None);
    // A clock a little ahead (within the bound) is fine, and the client's real reports
    // are stored.
    let soon = format!("{}", now_s() + 60);
    let line = client.iamat("A", "victim", KIWI_POSITION, &soon).await;
    herd.eventually_know(&["A", "B"], "victim", &line).await;
    // Records from neighbors are not bounded: their origin checked the client's time.
    let mut from_b = herd.client("A").await;
    let future = "AT B +0.000000000 later +1+1 99999999999";
    from_b.send(&format!("PEER B\n{future}\n")).await.unwrap();
    herd.eventually_know(&["A"], "later", future).await;
    herd.stop_all().await;
}

#[actix_rt::test]
async fn with_the_clock_bound_off_any_time_is_taken() {
    let mut herd = HerdBuilder::new(&["A"], &[])
        .sections("[limits]\nmax_clock_skew_s = 0")
        .start()
        .await;
    let line = herd
        .iamat("A", "far", KIWI_POSITION, "99999999999.999999999")
        .await;
    herd.eventually_know(&["A"], "far", &line).await;
    herd.stop_all().await;
}

#[actix_rt::test]
async fn one_name_has_one_link_and_records_of_unknown_servers_are_refused() {
    let a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut herd = HerdBuilder::new(&["A", "B", "C"], &[("A", "B"), ("B", "C")])
        .external("A", a.local_addr().unwrap())
        .start()
        .await;
    // A first connection says it is A, and carries a record.
    let mut first = herd.client("B").await;
    let one = "AT A +0.000000000 one +1+1 1700000000";
    first.send(&format!("PEER A\n{one}\n")).await.unwrap();
    herd.eventually_know(&["B", "C"], "one", one).await;
    // A second says it is A too: it replaces the first, which B closes.
    let mut second = herd.client("B").await;
    let two = "AT A +0.000000000 two +1+1 1700000000";
    second.send(&format!("PEER A\n{two}\n")).await.unwrap();
    herd.eventually_know(&["B", "C"], "two", two).await;
    // Closed by B, not merely silent (a read that times out is an error too).
    let closed = first.read_line().await;
    let by_b = |e: &std::io::Error| {
        use std::io::ErrorKind::{ConnectionReset, UnexpectedEof};
        matches!(e.kind(), UnexpectedEof | ConnectionReset)
    };
    assert!(
        closed.as_ref().is_err_and(by_b),
        "the older link was kept: {closed:?}"
    );

    // A record stamped by a server the herd does not have is refused, and the link goes on.
    let nobody = "AT Nobody +0.000000000 ghost +1+1 1700000000";
    let three = "AT A +0.000000000 three +1+1 1700000000";
    second.send(&format!("{nobody}\n{three}\n")).await.unwrap();
    assert_eq!(second.read_line().await.unwrap(), format!("? {nobody}"));
    herd.eventually_know(&["B", "C"], "three", three).await;
    for server in ["B", "C"] {
        let answer = herd.whatsat(server, "ghost").await.unwrap();
        assert_eq!(answer, None, "{server} stored a record of no server");
    }
    herd.stop_all().await;
    let log = herd.log("B");
    assert!(log.contains("link from A replaced by conn"), "{log}");
}

#[actix_rt::test]
async fn a_client_that_pipelines_and_reads_slowly_gets_every_answer_in_order() {
    let mut herd = HerdBuilder::new(&["A"], &[]).start().await;
    // A receive window of a few kilobytes, so that the answers wait at the server.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 << 10).unwrap();
    let stream = within(socket.connect(herd.addr("A")), "connect")
        .await
        .unwrap();
    let (mut read, mut write) = stream.into_split();
    // Several megabytes of answers, more than any bound on what waits for one client.
    let count = 100_000;
    let lines: String = (0..count)
        .map(|i| format!("IAMAT slow-{i} +1+1 1700000000\n"))
        .collect();
    let writer = actix_rt::spawn(async move {
        write.write_all(lines.as_bytes()).await?;
        write.shutdown().await
    });
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = within(read.read(&mut chunk), "read an answer")
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
        // Slower than the server answers.
        if out.len() % 64 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
    writer.await.unwrap().unwrap();
    let out = String::from_utf8(out).unwrap();
    let clients: Vec<&str> = out
        .lines()
        .map(|l| l.split(' ').nth(3).unwrap_or(l))
        .collect();
    assert_eq!(clients.len(), count, "answers lost");
    for (i, client) in clients.iter().enumerate() {
        assert_eq!(*client, format!("slow-{i}"), "answer {i} out of order");
    }
    herd.stop_all().await;
    let log = herd.log("A");
    assert!(!log.contains("dropped"), "{log}");
}
