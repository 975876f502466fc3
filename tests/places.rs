//! End-to-end tests of the places side of WHATSAT (docs/PROTOCOL.md, places): Places API
//! (New) through a real node, the answer cache and the sharing of calls, each against a real
//! local HTTP server that plays the API and counts the calls it gets.

mod common;

use std::time::Duration;

use common::{Client, IO_TIMEOUT, MAX_LINE_BYTES, TestNode, one_node_config_with};
use herd::actors::places_proxy::ApiKey;
use places_fake::{PlacesServer, Reply};

const NEW_OK: &str = include_str!("fixtures/places/new_ok.json");
const LEGACY_OK: &str = include_str!("fixtures/places/legacy_ok.json");

async fn node(places: &str) -> TestNode {
    let (config, dir) = one_node_config_with(places, IO_TIMEOUT, MAX_LINE_BYTES);
    TestNode::start_config(config, dir, Some(ApiKey::new("test-key"))).await
}

/// A server whose places API (legacy) is `places`, with these more `[places]` settings,
/// and a client connected to it that has reported client `phone`'s position.
async fn phone_on(places: &PlacesServer, settings: &str) -> (TestNode, Client) {
    let server = node(&format!("url = '{}'\n{settings}", places.url("/nearby"))).await;
    let mut client = server.connect().await;
    report(&mut client, "phone").await;
    (server, client)
}

fn json_of(answer: &str) -> serde_json::Value {
    let json = answer.split_once('\n').map_or("", |(_, rest)| rest);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

async fn report(client: &mut Client, who: &str) {
    let answer = client
        .ask(&format!("IAMAT {who} +51.5116325-0.1229428 1700000000.5"))
        .await;
    assert!(answer.starts_with("AT Clark "), "{answer}");
}

#[actix_rt::test]
async fn whatsat_on_the_new_api_answers_in_the_legacy_shape() {
    let places = PlacesServer::always(NEW_OK).unwrap();
    let server = node(&format!(
        "api = \"new\"\nurl = '{}'",
        places.url("/v1/places:searchNearby")
    ))
    .await;
    let mut client = server.connect().await;
    report(&mut client, "phone").await;
    client.send("WHATSAT phone 2.5 3\n").await;
    let answer = client.read_whatsat().await;
    assert!(answer.starts_with("AT Clark "), "{answer}");
    assert!(answer.ends_with("}\n\n"), "{answer}");
    let v = json_of(&answer);
    assert_eq!(v["status"], "OK");
    assert_eq!(v["results"].as_array().map(Vec::len), Some(3));
    let new: serde_json::Value = serde_json::from_str(NEW_OK).unwrap();
    assert_eq!(
        v["results"][0]["name"],
        new["places"][0]["displayName"]["text"]
    );
    let request = &places.requests()[0];
    assert_eq!(request.method, "POST");
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["locationRestriction"]["circle"]["radius"], 2500);
    assert_eq!(
        body["locationRestriction"]["circle"]["center"]["latitude"],
        51.5116325
    );
}

#[actix_rt::test]
async fn a_hundred_whatsats_for_one_spot_make_one_call_while_the_answer_lives() {
    let places = PlacesServer::always(LEGACY_OK).unwrap();
    let (_server, mut client) = phone_on(&places, "cache_ttl_s = 600").await;
    for i in 0..100 {
        let bound = 1 + i % 20;
        client.send(format!("WHATSAT phone 10 {bound}\n")).await;
        let v = json_of(&client.read_whatsat().await);
        assert_eq!(v["results"].as_array().map(Vec::len), Some(bound));
    }
    assert_eq!(
        places.requests().len(),
        1,
        "one call while the answer lives"
    );
    // Another radius is another search.
    client.send("WHATSAT phone 11 5\n").await;
    client.read_whatsat().await;
    assert_eq!(places.requests().len(), 2);
}

#[actix_rt::test]
async fn an_answer_past_its_time_to_live_is_asked_for_again() {
    let places = PlacesServer::always(LEGACY_OK).unwrap();
    let (_server, mut client) = phone_on(&places, "cache_ttl_s = 1").await;
    client.send("WHATSAT phone 10 5\n").await;
    client.read_whatsat().await;
    assert_eq!(places.requests().len(), 1);
    // At least the time to live later (however slow the machine), the answer has expired.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.send("WHATSAT phone 10 5\n").await;
    client.read_whatsat().await;
    assert_eq!(
        places.requests().len(),
        2,
        "a new call once the answer expired"
    );
}

#[actix_rt::test]
async fn whatsats_at_once_from_many_clients_make_one_call() {
    // The call is held open until every WHATSAT has reached the server.
    let (release, released) = tokio::sync::watch::channel(false);
    let held = Reply::Held(released, Box::new(Reply::Json(200, LEGACY_OK.into())));
    let places = PlacesServer::start(move |_| held.clone()).unwrap();
    let (server, _reporter) = phone_on(&places, "cache_ttl_s = 0").await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut client = server.connect().await;
        client.send("WHATSAT phone 10 4\n").await;
        clients.push(client);
    }
    // Each was read (the log says so) and has gone on to the places proxy, which the
    // session asks at once, in the same thread, long before the log is written out.
    let log = &server.log_path;
    common::eventually(IO_TIMEOUT, "all ten WHATSATs read", async || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        match text.matches("< WHATSAT phone 10 4").count() {
            10 => Ok(()),
            n => Err(format!("{n} in the log")),
        }
    })
    .await;
    release.send_replace(true);
    for client in &mut clients {
        let v = json_of(&client.read_whatsat().await);
        assert_eq!(v["results"].as_array().map(Vec::len), Some(4));
    }
    assert_eq!(places.requests().len(), 1);
}

#[actix_rt::test]
async fn an_error_answer_is_not_kept() {
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let places = PlacesServer::start(move |_| {
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            Reply::Json(500, "{}".into())
        } else {
            Reply::Json(200, LEGACY_OK.into())
        }
    })
    .unwrap();
    let (_server, mut client) = phone_on(&places, "cache_ttl_s = 60").await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        client.send("WHATSAT phone 10 5\n").await;
        statuses.push(json_of(&client.read_whatsat().await)["status"].clone());
    }
    assert_eq!(statuses, ["UNKNOWN_ERROR", "OK", "OK"]);
    assert_eq!(places.requests().len(), 2);
}
