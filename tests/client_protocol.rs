//! End-to-end tests of the client protocol of one server (docs/PROTOCOL.md, and the log).
//!
//! Each test starts a real server in-process on port 0, speaks raw TCP to it, and plays the
//! places API with a local `PlacesServer`; nothing reaches the internet.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    API_KEY, IO_TIMEOUT, MAX_LINE_BYTES, PLACES_TIMEOUT, SERVER, TestNode, eventually, within,
};
use herd::actors::places_proxy::ApiKey;
use places_fake::{PlacesServer, Reply, Request};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The places API answer of 20 results, in Google's formatting.
const LEGACY_OK: &str = include_str!("fixtures/places/legacy_ok.json");
/// A legacy answer with no results.
const LEGACY_ZERO_RESULTS: &str = include_str!("fixtures/places/legacy_zero_results.json");
/// A legacy `REQUEST_DENIED` answer (served with HTTP 200, as Google does).
const LEGACY_REQUEST_DENIED: &str = include_str!("fixtures/places/legacy_request_denied.json");

/// The path of the legacy Nearby Search on the fake places server.
const NEARBY_PATH: &str = "/maps/api/place/nearbysearch/json";

/// The example position of docs/PROTOCOL.md.
const LOCATION: &str = "+34.068930-118.445127";

/// An address where no places API answers, for tests that must never call it.
const NO_PLACES: &str = "http://127.0.0.1:9/nowhere";

/// Nanoseconds in a second.
const NANOS_PER_SEC: i128 = 1_000_000_000;

/// The slack allowed around the expected time difference: a sanity check, not a timing one.
const DIFF_WINDOW_NANOS: i128 = 60 * NANOS_PER_SEC;

/// The key the test servers get.
fn test_key() -> Option<ApiKey> {
    Some(ApiKey::new(API_KEY))
}

/// This machine's time, in nanoseconds since the epoch.
fn now_nanos() -> i128 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    since.as_nanos() as i128
}

/// A client time field, `seconds.nanoseconds`, for a positive time in nanoseconds.
fn time_text(nanos: i128) -> String {
    format!("{}.{:09}", nanos / NANOS_PER_SEC, nanos % NANOS_PER_SEC)
}

/// Parses a time difference field, checking its form: a sign, digits, a dot and exactly
/// nine fraction digits.
fn diff_nanos(field: &str) -> i128 {
    let (negative, rest) = match field.as_bytes().first() {
        Some(b'+') => (false, &field[1..]),
        Some(b'-') => (true, &field[1..]),
        _ => panic!("time difference {field:?} has no sign"),
    };
    let (secs, frac) = rest
        .split_once('.')
        .unwrap_or_else(|| panic!("time difference {field:?} has no fraction"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    assert!(
        digits(secs) && digits(frac) && frac.len() == 9,
        "time difference {field:?} is not sign, digits, dot and 9 digits"
    );
    let value = secs.parse::<i128>().unwrap() * NANOS_PER_SEC + frac.parse::<i128>().unwrap();
    if negative { -value } else { value }
}

/// Checks that `answer` is the AT line of an IAMAT of `client location time` received between
/// `before` and `after` (nanoseconds), and returns the time difference field.
fn check_at_answer(
    answer: &str,
    (client, location, time): (&str, &str, &str),
    time_nanos: i128,
    (before, after): (i128, i128),
) -> String {
    let fields: Vec<&str> = answer
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("answer {answer:?} has no line ending"))
        .split(' ')
        .collect();
    assert_eq!(fields.len(), 6, "answer {answer:?}");
    assert_eq!(
        answer,
        format!("AT {SERVER} {} {client} {location} {time}\n", fields[2]),
        "the AT line copies the client's fields byte for byte"
    );
    let diff = diff_nanos(fields[2]);
    let (low, high) = (before - time_nanos, after - time_nanos);
    assert!(
        diff >= low - DIFF_WINDOW_NANOS && diff <= high + DIFF_WINDOW_NANOS,
        "time difference {} is far from the expected {low}..{high} ns",
        fields[2]
    );
    fields[2].to_owned()
}

/// Splits a WHATSAT answer into its AT line (without line ending) and its JSON text (with
/// the two newlines that end the answer), checking that it ends with the empty line.
fn whatsat_parts(answer: &str) -> (&str, &str) {
    assert!(answer.ends_with("}\n\n"), "answer ends {answer:?}");
    answer
        .split_once('\n')
        .unwrap_or_else(|| panic!("answer {answer:?} has no AT line"))
}

/// Parses the JSON of a WHATSAT answer, keeping the key order.
fn whatsat_json(answer: &str) -> Value {
    let (_, json) = whatsat_parts(answer);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("JSON of {answer:?}: {e}"))
}

/// The keys of a JSON object, in order.
fn keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("{value} is not an object"))
        .keys()
        .cloned()
        .collect()
}

/// Checks that `json` has the places API's error shape with `status`, and returns its
/// `error_message`.
fn check_error_shape(json: &Value, status: &str) -> String {
    assert_eq!(json["results"], serde_json::json!([]), "{json}");
    assert_eq!(json["status"], status, "{json}");
    let message = json["error_message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error_message in {json}"));
    assert!(!message.trim().is_empty(), "empty error_message in {json}");
    message.to_owned()
}

/// A places server that answers every request with `json` after `delay`.
fn delayed_places(delay: Duration, json: &'static str) -> PlacesServer {
    PlacesServer::start(move |_| Reply::After(delay, Box::new(Reply::Json(200, json.to_owned()))))
        .unwrap()
}

/// Decodes `%XX` escapes of a query value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if let (b'%', Some(Ok(byte))) = (bytes[i], hex.map(|h| u8::from_str_radix(h, 16))) {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// The query value `name` of a request the places server received, decoded.
fn query(request: &Request, name: &str) -> String {
    let value = request
        .query(name)
        .unwrap_or_else(|| panic!("no {name} in {}", request.target));
    percent_decode(value)
}

/// The log lines of connection `conn`: lines with the words `conn <conn>`.
fn log_lines_of(log: &str, conn: u64) -> Vec<&str> {
    let conn = conn.to_string();
    log.lines()
        .filter(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.windows(2).any(|w| w[0] == "conn" && w[1] == conn)
        })
        .collect()
}

/// Whether a log line carries a time of day (`HH:MM:SS`).
fn has_time_of_day(line: &str) -> bool {
    line.as_bytes().windows(8).any(|w| {
        w.iter().enumerate().all(|(i, b)| match i {
            2 | 5 => *b == b':',
            _ => b.is_ascii_digit(),
        })
    })
}

// --- IAMAT -------------------------------------------------------------------------------

#[actix_rt::test]
async fn iamat_is_answered_with_an_at_line_copying_the_client_fields() {
    let node = TestNode::start(NO_PLACES).await;
    let mut c = node.connect().await;
    let now = now_nanos();
    let past = now - 100 * NANOS_PER_SEC - NANOS_PER_SEC / 2;
    // Ahead of the server's clock, but within the bound on how far (300 s by default).
    let future = now + 100 * NANOS_PER_SEC;
    let past_long = format!("{}1234", time_text(past));
    // (client, location, time as sent, its value in nanoseconds, sign of the difference)
    let cases = [
        ("kiwi.cs.ucla.edu", LOCATION, time_text(past), past, '+'),
        ("phone-2", "-90+180", time_text(future), future, '-'),
        // Fraction digits past the ninth are copied, but not counted.
        ("x:y/z@é", "+00034.5-0118.25", past_long, past, '+'),
        // Whole seconds, integer degrees.
        (
            "whole",
            "+34-118",
            (past / NANOS_PER_SEC).to_string(),
            past / NANOS_PER_SEC * NANOS_PER_SEC,
            '+',
        ),
    ];
    for (client, location, time, nanos, sign) in cases {
        let before = now_nanos();
        let answer = c.ask(&format!("IAMAT {client} {location} {time}")).await;
        let after = now_nanos();
        let diff = check_at_answer(&answer, (client, location, &time), nanos, (before, after));
        assert!(diff.starts_with(sign), "{answer:?}: expected sign {sign}");
    }
    // Client times a twentieth of a second apart, sent at once: whatever the receive time,
    // some differences have a fraction under 0.1 s, whose leading zeros must be printed.
    let base = now_nanos() - 10 * NANOS_PER_SEC;
    let times: Vec<i128> = (0..20).map(|i| base + i * NANOS_PER_SEC / 20).collect();
    let batch: String = times
        .iter()
        .map(|t| format!("IAMAT batch {LOCATION} {}\n", time_text(*t)))
        .collect();
    let before = now_nanos();
    c.send(batch).await;
    for t in times {
        let answer = c.read_line().await;
        let after = now_nanos();
        let time = time_text(t);
        let diff = check_at_answer(&answer, ("batch", LOCATION, &time), t, (before, after));
        assert!(diff.starts_with('+'), "{answer:?}");
    }
}

// --- Order, half-close, line endings, white space -----------------------------------------

#[actix_rt::test]
async fn answers_come_in_line_order_even_when_an_earlier_whatsat_is_slower() {
    // The search with radius 10 km is slow; any other is answered at once.
    let places = PlacesServer::start(|request| {
        let reply = Reply::Json(200, LEGACY_OK.to_owned());
        if request.query("radius") == Some("10000") {
            Reply::After(Duration::from_millis(300), Box::new(reply))
        } else {
            reply
        }
    })
    .unwrap();
    let node = TestNode::start(&places.url(NEARBY_PATH)).await;
    let mut c = node.connect().await;
    let at = c
        .ask(&format!(
            "IAMAT slow.client {LOCATION} 1621464827.959498503"
        ))
        .await;
    c.send(
        "WHATSAT slow.client 10 5\n\
         WHATSAT slow.client 1 2\n\
         not a command\n\
         IAMAT quick.client +1+1 1\n",
    )
    .await;
    c.half_close().await;
    let all = c.read_to_end().await;
    let mut answers = all.split_inclusive("\n\n");
    // The slow WHATSAT first, then the quick one, each with its own bound.
    for bound in [5, 2] {
        let answer = answers
            .next()
            .unwrap_or_else(|| panic!("no WHATSAT answer in {all:?}"));
        assert!(answer.starts_with(&format!("{at}{{")), "in order? {all:?}");
        let json = whatsat_json(answer);
        assert_eq!(
            json["results"].as_array().map(Vec::len),
            Some(bound),
            "{all:?}"
        );
    }
    let rest = answers.next().unwrap_or_default();
    assert_eq!(answers.next(), None, "{all:?}");
    let lines: Vec<&str> = rest.split_inclusive('\n').collect();
    assert_eq!(lines.len(), 2, "answers after the WHATSATs: {rest:?}");
    assert_eq!(lines[0], "? not a command\n");
    assert!(
        lines[1].starts_with("AT Clark ") && lines[1].ends_with(" quick.client +1+1 1\n"),
        "{:?}",
        lines[1]
    );
    assert_eq!(places.requests().len(), 2);
}

#[actix_rt::test]
async fn after_a_half_close_every_answer_is_delivered_then_the_connection_ends() {
    let places = PlacesServer::always(LEGACY_ZERO_RESULTS).unwrap();
    let node = TestNode::start(&places.url(NEARBY_PATH)).await;
    let mut c = node.connect().await;
    c.send(format!(
        "IAMAT half.close {LOCATION} 1621464827.5\n\
         bogus\n\
         WHATSAT half.close 1 3\n\
         IAMAT other +1+1 1\n"
    ))
    .await;
    c.half_close().await;
    let all = c.read_to_end().await;
    let (first, rest) = all.split_once('\n').unwrap();
    assert!(
        first.starts_with("AT Clark ")
            && first.ends_with(&format!(" half.close {LOCATION} 1621464827.5")),
        "{all:?}"
    );
    let rest = rest
        .strip_prefix("? bogus\n")
        .unwrap_or_else(|| panic!("second answer: {all:?}"));
    let (whatsat, last) = rest
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no WHATSAT answer in {all:?}"));
    assert_eq!(
        whatsat,
        format!("{first}\n{}", LEGACY_ZERO_RESULTS.trim_end())
    );
    assert!(
        last.starts_with("AT Clark ") && last.ends_with(" other +1+1 1\n"),
        "last answer: {last:?}"
    );
    assert_eq!(last.matches('\n').count(), 1, "one last answer: {last:?}");
}

#[actix_rt::test]
async fn a_last_line_without_line_ending_is_answered_after_half_close() {
    let node = TestNode::start(NO_PLACES).await;
    let mut c = node.connect().await;
    c.send("IAMAT unended +1+1 1").await;
    c.half_close().await;
    let all = c.read_to_end().await;
    assert!(
        all.starts_with("AT Clark ") && all.ends_with(" unended +1+1 1\n"),
        "{all:?}"
    );
    assert_eq!(all.matches('\n').count(), 1, "{all:?}");

    let mut c = node.connect().await;
    c.send("IAMAT a +1+1 1\nno ending").await;
    c.half_close().await;
    let all = c.read_to_end().await;
    let (first, second) = all.split_once('\n').unwrap();
    assert!(
        first.starts_with("AT Clark ") && first.ends_with(" a +1+1 1"),
        "{all:?}"
    );
    assert_eq!(second, "? no ending\n");
}

#[actix_rt::test]
async fn crlf_endings_and_every_kind_of_white_space_are_accepted() {
    let places = PlacesServer::always(LEGACY_ZERO_RESULTS).unwrap();
    let node = TestNode::start(&places.url(NEARBY_PATH)).await;
    let mut c = node.connect().await;
    let lines = [
        ("IAMAT crlf +1+1 1\r\n", "crlf +1+1 1"),
        ("IAMAT\ttabs\t\t+2+2\t3\n", "tabs +2+2 3"),
        ("IAMAT\x0bvt\x0b+3+3\x0b4\n", "vt +3+3 4"),
        ("IAMAT\x0cff\x0c\x0c+4+4\x0c5\n", "ff +4+4 5"),
        ("IAMAT    spaces     +5+5  6\n", "spaces +5+5 6"),
        ("IAMAT cr\r+6+6\r7\r\n", "cr +6+6 7"),
        (
            " \t\x0b\x0cIAMAT mixed \t\x0b\x0c +7+7 \t 8 \x0b\x0c\t \r\n",
            "mixed +7+7 8",
        ),
    ];
    for (line, copied) in lines {
        c.send(line).await;
        let answer = c.read_line().await;
        let tail = format!(" {copied}\n");
        assert!(
            answer.starts_with("AT Clark ") && answer.ends_with(&tail),
            "{line:?} answered {answer:?}"
        );
        assert_eq!(answer.split(' ').count(), 6, "{answer:?}");
    }
    c.send("\t WHATSAT\x0bmixed\x0c\x0c10  1 \t\r\n").await;
    let answer = c.read_whatsat().await;
    let (at, _) = whatsat_parts(&answer);
    assert!(at.ends_with(" mixed +7+7 8"), "{answer:?}");
    assert_eq!(whatsat_json(&answer)["status"], "ZERO_RESULTS");
}

// --- Invalid lines -------------------------------------------------------------------------

#[actix_rt::test]
async fn every_invalid_line_is_answered_with_a_question_mark_and_its_copy() {
    let places = PlacesServer::always(LEGACY_ZERO_RESULTS).unwrap();
    let node = TestNode::start(&places.url(NEARBY_PATH)).await;
    let mut c = node.connect().await;
    c.ask("IAMAT known +1+1 1").await;
    let long_id = "x".repeat(257);
    let invalid = [
        // unknown commands
        "HELLO world".to_owned(),
        "iamat known +1+1 1".to_owned(),
        "AT".to_owned(),
        // wrong field counts
        "IAMAT".to_owned(),
        "IAMAT known +1+1".to_owned(),
        "IAMAT known +1+1 1 extra".to_owned(),
        "WHATSAT known 10".to_owned(),
        "WHATSAT known 10 5 extra".to_owned(),
        // bad coordinates
        "IAMAT known +91+0 1".to_owned(),
        "IAMAT known -90.0001+0 1".to_owned(),
        "IAMAT known +0+181 1".to_owned(),
        "IAMAT known +0-180.5 1".to_owned(),
        "IAMAT known 34.068930-118.445127 1".to_owned(),
        "IAMAT known +34.068930118.445127 1".to_owned(),
        "IAMAT known +34.0a-118 1".to_owned(),
        // bad times
        "IAMAT known +1+1 +1621464827".to_owned(),
        "IAMAT known +1+1 -1621464827".to_owned(),
        "IAMAT known +1+1 1e9".to_owned(),
        "IAMAT known +1+1 1.5E3".to_owned(),
        "IAMAT known +1+1 now".to_owned(),
        // a client id over 256 bytes
        format!("IAMAT {long_id} +1+1 1"),
        // radius out of range
        "WHATSAT known 0 5".to_owned(),
        "WHATSAT known 51 5".to_owned(),
        "WHATSAT known -1 5".to_owned(),
        "WHATSAT known 50.001 5".to_owned(),
        // bound out of range
        "WHATSAT known 10 0".to_owned(),
        "WHATSAT known 10 21".to_owned(),
        "WHATSAT known 10 2.5".to_owned(),
        // a client nobody has heard of
        "WHATSAT nobody.example 10 5".to_owned(),
        // an empty line, and one of white space only
        String::new(),
        " \t ".to_owned(),
        // the copy keeps the line as received, white space included
        "  what is  this? ".to_owned(),
    ];
    for line in &invalid {
        let answer = c.ask(line).await;
        assert_eq!(answer, format!("? {line}\n"), "line {line:?}");
    }
    // The same lines with CRLF endings: the copy is without the line ending.
    for line in &invalid {
        c.send(format!("{line}\r\n")).await;
        let answer = c.read_line().await;
        assert_eq!(answer, format!("? {line}\n"), "line {line:?} with CRLF");
    }
    // The connection is still usable.
    let answer = c.ask("IAMAT after +2+2 2").await;
    assert!(
        answer.starts_with("AT Clark ") && answer.ends_with(" after +2+2 2\n"),
        "{answer:?}"
    );
    assert!(
        places.requests().is_empty(),
        "invalid lines never call the places API"
    );
}

#[actix_rt::test]
async fn a_line_over_the_limit_is_answered_with_its_first_bytes_and_the_rest_skipped() {
    let limit = 64;
    let node = TestNode::start_with(NO_PLACES, PLACES_TIMEOUT, limit, test_key()).await;
    let mut c = node.connect().await;
    let long = format!("IAMAT {} +1+1 1", "y".repeat(300));
    c.send(format!("{long}\n")).await;
    assert_eq!(c.read_line().await, format!("? {}\n", &long[..limit]));
    // The next line is answered normally (it is within the limit, and so is its record).
    let next = "IAMAT next +1+1 1621464827.959498503";
    let answer = c.ask(next).await;
    assert!(
        answer.starts_with("AT Clark ") && answer.ends_with(" next +1+1 1621464827.959498503\n"),
        "{answer:?}"
    );
    assert!(answer.len() <= limit + 1, "{answer:?}");
    // An IAMAT within the limit whose record would not be is invalid.
    let long_record = format!("IAMAT next {LOCATION} 1621464827.959498503");
    assert!(long_record.len() <= limit);
    assert_eq!(c.ask(&long_record).await, format!("? {long_record}\n"));
    // A line far longer than any read: its rest is skipped across many reads.
    let huge = format!("IAMAT {} +1+1 1", "h".repeat(256 * 1024));
    c.send(format!("{huge}\nIAMAT after.huge +1+1 1\n")).await;
    assert_eq!(c.read_line().await, format!("? {}\n", &huge[..limit]));
    let answer = c.read_line().await;
    assert!(answer.ends_with(" after.huge +1+1 1\n"), "{answer:?}");
    // A long line sent in pieces is cut the same way, and answered once.
    let long = "z".repeat(limit * 3);
    c.send(&long[..limit / 2]).await;
    c.send(&long[limit / 2..]).await;
    c.send("\nIAMAT pieces +1+1 1\n").await;
    assert_eq!(c.read_line().await, format!("? {}\n", &long[..limit]));
    let answer = c.read_line().await;
    assert!(answer.ends_with(" pieces +1+1 1\n"), "{answer:?}");
    // And nothing else was owed.
    c.half_close().await;
    assert_eq!(c.read_to_end().await, "");
}

#[actix_rt::test]
async fn bytes_that_are_not_utf8_are_answered_as_replacement_characters() {
    let node = TestNode::start(NO_PLACES).await;
    let mut c = node.connect().await;
    // Lines that are invalid whatever their bytes (a field is missing).
    c.send(b"IAMAT caf\xe9 +1+1\n").await;
    assert_eq!(c.read_line().await, "? IAMAT caf\u{fffd} +1+1\n");
    c.send(b"\xff\xfe bad\n").await;
    assert_eq!(c.read_line().await, "? \u{fffd}\u{fffd} bad\n");
    // A cut multi-byte sequence is one bad sequence, so one U+FFFD.
    c.send(b"WHATSAT \xe2\x82 10\r\n").await;
    assert_eq!(c.read_line().await, "? WHATSAT \u{fffd} 10\n");
    let answer = c.ask("IAMAT fine +1+1 1").await;
    assert!(answer.ends_with(" fine +1+1 1\n"), "{answer:?}");
}

// --- WHATSAT and the places API -------------------------------------------------------------

#[actix_rt::test]
async fn whatsat_answers_the_at_line_and_the_places_json_cut_to_the_bound() {
    let places = PlacesServer::always(LEGACY_OK).unwrap();
    let node = TestNode::start(&places.url(NEARBY_PATH)).await;
    let mut c = node.connect().await;
    let at = c
        .ask(&format!(
            "IAMAT kiwi.cs.ucla.edu {LOCATION} 1621464827.959498503"
        ))
        .await;
    c.send("WHATSAT kiwi.cs.ucla.edu 10 5\n").await;
    let answer = c.read_whatsat().await;
    let (at_line, _) = whatsat_parts(&answer);
    assert_eq!(
        format!("{at_line}\n"),
        at,
        "the answer starts with the client's AT line"
    );
    assert!(
        !answer[..answer.len() - 2].contains("\n\n"),
        "no empty line before the end: {answer:?}"
    );

    let json = whatsat_json(&answer);
    let fixture: Value = serde_json::from_str(LEGACY_OK).unwrap();
    assert_eq!(keys(&json), keys(&fixture), "same keys, same order");
    let results = json["results"].as_array().expect("results is an array");
    let all = fixture["results"].as_array().unwrap();
    assert_eq!(all.len(), 20);
    assert_eq!(results.len(), 5);
    assert_eq!(
        results[..],
        all[..5],
        "the first 5 places of the API's answer"
    );
    for key in keys(&fixture) {
        if key != "results" {
            assert_eq!(json[&key], fixture[&key], "key {key}");
        }
    }
    // Keys inside the places keep their order too.
    assert_eq!(keys(&results[0]), keys(&all[0]));
}

#[actix_rt::test]
async fn whatsat_json_loses_its_empty_lines_and_keeps_its_key_order() {
    const PRETTY: &str = "{\n\n   \"status\" : \"OK\",\n\n\n   \"results\" : [\n      {\n         \"name\" : \"first\"\n      },\n\n      {\n         \"name\" : \"second\"\n      }\n   ],\n\n   \"html_attributions\" : []\n}\n\n\n\n";
    const EXPECTED: &str = "{\n   \"status\" : \"OK\",\n   \"results\" : [\n      {\n         \"name\" : \"first\"\n      },\n      {\n         \"name\" : \"second\"\n      }\n   ],\n   \"html_attributions\" : []\n}";
    let places = PlacesServer::always(PRETTY).unwrap();
    let node = TestNode::start(&places.url(NEARBY_PATH)).await;
    let mut c = node.connect().await;
    let at = c.ask("IAMAT pretty +1+1 1").await;
    c.send("WHATSAT pretty 5 5\n").await;
    let answer = c.read_whatsat().await;
    assert!(answer.ends_with("\n\n"));
    assert!(
        !answer[..answer.len() - 2].contains("\n\n"),
        "no empty line inside: {answer:?}"
    );
    assert_eq!(
        keys(&whatsat_json(&answer)),
        ["status", "results", "html_attributions"]
    );
    assert_eq!(answer, format!("{at}{EXPECTED}\n\n"));
    // Nothing follows the answer.
    c.half_close().await;
    assert_eq!(c.read_to_end().await, "");
}

#[actix_rt::test]
async fn the_places_api_gets_a_get_with_location_radius_in_metres_and_key() {
    let places = PlacesServer::always(LEGACY_ZERO_RESULTS).unwrap();
    let node = TestNode::start(&places.url(NEARBY_PATH)).await;
    let mut c = node.connect().await;
    c.ask(&format!("IAMAT kiwi {LOCATION} 1621464827.959498503"))
        .await;
    for whatsat in ["WHATSAT kiwi 10 5", "WHATSAT kiwi 1.5 20"] {
        c.send(format!("{whatsat}\n")).await;
        c.read_whatsat().await;
    }
    let requests = places.requests();
    assert_eq!(requests.len(), 2);
    for (request, metres) in requests.iter().zip(["10000", "1500"]) {
        assert_eq!(request.method, "GET");
        assert!(
            request.target.starts_with(&format!("{NEARBY_PATH}?")),
            "{}",
            request.target
        );
        let location = query(request, "location");
        let (lat, lng) = location
            .split_once(',')
            .unwrap_or_else(|| panic!("location={location}"));
        assert_eq!(lat.parse::<f64>().unwrap(), 34.06893, "location={location}");
        assert_eq!(
            lng.parse::<f64>().unwrap(),
            -118.445127,
            "location={location}"
        );
        assert_eq!(query(request, "radius"), metres);
        assert_eq!(query(request, "key"), API_KEY);
    }
}

/// Starts a server (places timeout `timeout`, API key `key`) that calls `places`, registers
/// a client, and returns its AT line and the answer to a WHATSAT of it, checked to start
/// with that AT line and to have no empty line before its end.
async fn whatsat_against(
    places: &PlacesServer,
    timeout: Duration,
    key: Option<ApiKey>,
) -> (String, String) {
    let node = TestNode::start_with(&places.url(NEARBY_PATH), timeout, MAX_LINE_BYTES, key).await;
    let mut c = node.connect().await;
    let at = c
        .ask(&format!("IAMAT failing {LOCATION} 1621464827.959498503"))
        .await;
    c.send("WHATSAT failing 10 5\n").await;
    let answer = c.read_whatsat().await;
    let (at_line, _) = whatsat_parts(&answer);
    assert_eq!(
        format!("{at_line}\n"),
        at,
        "the answer starts with the AT line"
    );
    assert!(!answer[..answer.len() - 2].contains("\n\n"), "{answer:?}");
    (at, answer)
}

#[actix_rt::test]
async fn an_http_error_of_the_places_api_gives_unknown_error() {
    let places = PlacesServer::start(|_| Reply::Json(500, "{\"oops\": true}".into())).unwrap();
    let (_, answer) = whatsat_against(&places, PLACES_TIMEOUT, test_key()).await;
    check_error_shape(&whatsat_json(&answer), "UNKNOWN_ERROR");
}

#[actix_rt::test]
async fn a_places_body_that_is_not_json_gives_unknown_error() {
    let places =
        PlacesServer::start(|_| Reply::Html(200, "<html><body>Hello</body></html>".into()))
            .unwrap();
    let (_, answer) = whatsat_against(&places, PLACES_TIMEOUT, test_key()).await;
    check_error_shape(&whatsat_json(&answer), "UNKNOWN_ERROR");
}

#[actix_rt::test]
async fn a_places_api_slower_than_the_timeout_gives_unknown_error() {
    let places = delayed_places(Duration::from_secs(3), LEGACY_OK);
    let (_, answer) = whatsat_against(&places, Duration::from_millis(300), test_key()).await;
    check_error_shape(&whatsat_json(&answer), "UNKNOWN_ERROR");
}

#[actix_rt::test]
async fn a_server_without_key_calls_without_one_and_passes_on_the_answer() {
    // A places service that needs no key answers; Google would answer REQUEST_DENIED,
    // passed through like any of its answers (next test).
    let places = PlacesServer::always(LEGACY_OK).unwrap();
    let (_, answer) = whatsat_against(&places, PLACES_TIMEOUT, None).await;
    assert_eq!(whatsat_json(&answer)["status"], "OK");
    let requests = places.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].query("key"), None);
}

#[actix_rt::test]
async fn a_request_denied_answer_of_the_places_api_is_passed_through() {
    let places = PlacesServer::always(LEGACY_REQUEST_DENIED).unwrap();
    let (at, answer) = whatsat_against(&places, PLACES_TIMEOUT, test_key()).await;
    let json = whatsat_json(&answer);
    let fixture: Value = serde_json::from_str(LEGACY_REQUEST_DENIED).unwrap();
    let message = check_error_shape(&json, "REQUEST_DENIED");
    assert_eq!(message, fixture["error_message"].as_str().unwrap());
    assert_eq!(json, fixture);
    assert_eq!(
        answer,
        format!("{at}{}\n\n", LEGACY_REQUEST_DENIED.trim_end_matches('\n'))
    );
}

#[actix_rt::test]
async fn a_places_api_that_is_down_gives_unknown_error_and_the_key_is_never_shown() {
    // A port where nothing listens any more.
    let url = PlacesServer::always("{}").unwrap().url(NEARBY_PATH);
    let node = TestNode::start(&url).await;
    let mut c = node.connect().await;
    c.ask(&format!("IAMAT down {LOCATION} 1621464827.959498503"))
        .await;
    c.send("WHATSAT down 10 5\n").await;
    let answer = c.read_whatsat().await;
    check_error_shape(&whatsat_json(&answer), "UNKNOWN_ERROR");
    assert!(
        !answer.contains(API_KEY),
        "the key in an answer: {answer:?}"
    );
    let log = node.stop().await;
    assert!(log.contains("WHATSAT down 10 5"), "{log}");
    assert!(!log.contains(API_KEY), "the key in the log:\n{log}");
}

#[actix_rt::test]
async fn whatsat_uses_the_newest_record_and_an_older_iamat_gets_its_own_at_line() {
    let places = PlacesServer::always(LEGACY_ZERO_RESULTS).unwrap();
    let node = TestNode::start(&places.url(NEARBY_PATH)).await;
    let mut c = node.connect().await;
    let newer = c.ask("IAMAT phone +10+20 1700000000.5").await;
    assert!(newer.ends_with(" phone +10+20 1700000000.5\n"), "{newer:?}");
    let older = c.ask("IAMAT phone +30+40 1600000000").await;
    assert!(
        older.starts_with("AT Clark ") && older.ends_with(" phone +30+40 1600000000\n"),
        "an older IAMAT is still answered with its own AT line: {older:?}"
    );
    c.send("WHATSAT phone 10 1\n").await;
    let answer = c.read_whatsat().await;
    let (at_line, _) = whatsat_parts(&answer);
    assert_eq!(format!("{at_line}\n"), newer, "the newer record stays");
    let requests = places.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(query(&requests[0], "location"), "10,20");
}

/// A server with no neighbor answers an IAMAT without waiting for its store (no link has to
/// take the record first); the store still takes it before any later message, so another
/// connection asking right after the answer finds it.
#[actix_rt::test]
async fn a_client_answered_at_one_connection_is_known_at_another_right_after() {
    let places = PlacesServer::always(LEGACY_ZERO_RESULTS).unwrap();
    let node = TestNode::start(&places.url(NEARBY_PATH)).await;
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    for i in 0..200 {
        let answer = a.ask(&format!("IAMAT phone{i} +10+20 1700000000.5")).await;
        assert!(answer.starts_with("AT Clark "), "{answer:?}");
        b.send(&format!("WHATSAT phone{i} 10 1\n")).await;
        let whatsat = b.read_whatsat().await;
        let (at_line, _) = whatsat_parts(&whatsat);
        assert_eq!(format!("{at_line}\n"), answer, "phone{i}");
    }
}

// --- The log ---------------------------------------------------------------------------------

#[actix_rt::test]
async fn the_log_holds_every_line_in_and_out_with_its_connection() {
    let node = TestNode::start(NO_PLACES).await;
    let mut first = node.connect().await;
    let iamat = "IAMAT logged +1+1 1621464827.5";
    let at = first.ask(iamat).await;
    assert_eq!(first.ask("bogus line").await, "? bogus line\n");
    first.half_close().await;
    assert_eq!(first.read_to_end().await, "");
    let mut second = node.connect().await;
    assert_eq!(
        second.ask("second connection").await,
        "? second connection\n"
    );
    second.half_close().await;
    assert_eq!(second.read_to_end().await, "");
    let log = node.stop().await;

    let one = log_lines_of(&log, 1);
    let two = log_lines_of(&log, 2);
    let has = |lines: &[&str], end: &str, not: Option<&str>| {
        lines
            .iter()
            .any(|l| l.ends_with(end) && has_time_of_day(l) && not.is_none_or(|n| !l.contains(n)))
    };
    assert!(has(&one, iamat, None), "IAMAT in on conn 1:\n{log}");
    assert!(has(&one, at.trim_end(), None), "AT out on conn 1:\n{log}");
    assert!(
        has(&one, " bogus line", Some("? bogus")),
        "line in on conn 1:\n{log}"
    );
    assert!(
        has(&one, "? bogus line", None),
        "answer out on conn 1:\n{log}"
    );
    assert!(
        has(&two, "? second connection", None),
        "answer out on conn 2:\n{log}"
    );
    assert!(
        !one.iter().any(|l| l.contains("second connection")),
        "{log}"
    );
    for (conn, lines) in [(1, &one), (2, &two)] {
        assert!(
            lines.iter().any(|l| l.contains("opened")),
            "conn {conn} opened:\n{log}"
        );
        assert!(
            lines.iter().any(|l| l.contains("closed")),
            "conn {conn} closed:\n{log}"
        );
    }
}

// --- Stopping, and clients that do not read ------------------------------------------------

#[actix_rt::test]
async fn a_graceful_stop_delivers_the_answers_in_flight() {
    let places = delayed_places(Duration::from_millis(500), LEGACY_OK);
    let node = TestNode::start(&places.url(NEARBY_PATH)).await;
    let mut c = node.connect().await;
    let at = c
        .ask(&format!("IAMAT inflight {LOCATION} 1621464827.959498503"))
        .await;
    c.send("WHATSAT inflight 10 5\n").await;
    // The WHATSAT is in flight once the places API has it.
    eventually(
        IO_TIMEOUT,
        "the places API has the call",
        async || match places.requests().len() {
            1 => Ok(()),
            n => Err(format!("{n} calls")),
        },
    )
    .await;
    let (_, answer) = tokio::join!(node.stop(), c.read_whatsat());
    let (at_line, _) = whatsat_parts(&answer);
    assert_eq!(format!("{at_line}\n"), at);
    let json = whatsat_json(&answer);
    assert_eq!(json["status"], "OK");
    assert_eq!(json["results"].as_array().map(Vec::len), Some(5));
    // Then the server closes the connection.
    assert_eq!(c.read_to_end().await, "");
}

#[actix_rt::test]
async fn a_client_that_never_reads_is_no_longer_read_while_others_are_served() {
    let node = TestNode::start(NO_PLACES).await;
    // Small socket buffers, so that the kernel holds few of the lines and answers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let flood = within(socket.connect(node.addr), "connect").await.unwrap();
    let (mut flood_read, mut flood_write) = flood.into_split();
    // Short lines with long answers, written as fast as the server takes them, with a cap
    // so that a server that takes everything cannot make this run forever.
    let written = Arc::new(AtomicUsize::new(0));
    let cap = 64 << 20;
    let writer = {
        let written = Arc::clone(&written);
        actix_rt::spawn(async move {
            let chunk = "IAMAT flood +1+1 1\n".repeat(1024);
            while written.load(Ordering::Relaxed) < cap {
                flood_write.write_all(chunk.as_bytes()).await?;
                written.fetch_add(chunk.len(), Ordering::Relaxed);
            }
            flood_write.shutdown().await
        })
    };

    // Another client is served meanwhile.
    let mut other = node.connect().await;
    let answer = other.ask("IAMAT other +2+2 2").await;
    assert!(answer.ends_with(" other +2+2 2\n"), "{answer:?}");

    // The server stops taking the lines of a client that does not read its answers: what
    // the client could send levels off, far below what it tried to.
    let mut level = 0;
    eventually(
        Duration::from_secs(10),
        "the client's writes level off",
        async || {
            let now = written.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
            level = written.load(Ordering::Relaxed);
            if level == now && level > 0 {
                Ok(())
            } else {
                Err(format!("{now} then {level} bytes written"))
            }
        },
    )
    .await;
    assert!(level < cap / 4, "the server took {level} bytes of lines");
    assert!(!writer.is_finished(), "the client could send everything");
    // Not a pause of the machine: the server serves the other client all the while, and
    // still takes none of these lines.
    for i in 0..200 {
        let answer = other.ask(&format!("IAMAT other +2+2 {}", 10 + i)).await;
        assert!(answer.starts_with("AT "), "{answer:?}");
    }
    let after = written.load(Ordering::Relaxed);
    assert_eq!(
        after, level,
        "the server took more lines while serving another client"
    );

    // Reading the answers lets the client go on.
    let mut sink = vec![0u8; 64 * 1024];
    let mut read = 0;
    while written.load(Ordering::Relaxed) <= level {
        let n = within(flood_read.read(&mut sink), "read answers")
            .await
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        read += n;
    }
    assert!(read > 0);
    writer.abort();

    // The other client is still served.
    let answer = other.ask("IAMAT other +3+3 3").await;
    assert!(answer.ends_with(" other +3+3 3\n"), "{answer:?}");
}
