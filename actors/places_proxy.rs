//! The `PlacesProxy` actor: Nearby Search calls to the places API, over awc.
//!
//! It always answers, and always with JSON in the legacy Nearby Search shape: the API's own
//! answer with `results` cut to the bound, or, when the call fails (no key, timeout, HTTP
//! error, a body that is not JSON), an object in the API's error shape saying what went
//! wrong. The key never reaches a log: it is held in an [`ApiKey`] that does not print, and
//! error texts are scrubbed of it before they go anywhere.

use std::fmt;
use std::time::Duration;

use actix::prelude::*;
use log::{debug, warn};

use crate::places_json::{self, REQUEST_DENIED, UNKNOWN_ERROR};
use crate::protocol::{Degrees, Radius};

/// The log target of this actor's mailbox: `RUST_LOG=herd::places_proxy=debug`.
pub const LOG_TARGET: &str = "herd::places_proxy";

/// The environment variable the key comes from.
pub const API_KEY_VAR: &str = "GOOGLE_PLACES_API_KEY";

/// The largest answer body accepted from the places API. A full legacy page of 20 results
/// is about 20 KB; this leaves room without letting a broken server fill memory.
const MAX_BODY_BYTES: usize = 4 << 20;

/// A places API key. It prints as `***`, so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key from `GOOGLE_PLACES_API_KEY`, if set and not empty.
    pub fn from_env() -> Option<ApiKey> {
        std::env::var(API_KEY_VAR)
            .ok()
            .filter(|k| !k.is_empty())
            .map(ApiKey)
    }

    /// A key given directly (tests, embedding).
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// Replaces every occurrence of the key in `text`, for error texts that may quote a URL.
    fn scrub(&self, text: &str) -> String {
        text.replace(&self.0, "***")
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Calls the places API for WHATSAT.
pub struct PlacesProxy {
    /// The HTTP client; it keeps connections alive and reuses them.
    client: awc::Client,
    /// The Nearby Search endpoint.
    url: String,
    /// The longest a call may take, headers and body together.
    timeout: Duration,
    /// The key, if the server has one; without it every search answers `REQUEST_DENIED`.
    key: Option<ApiKey>,
}

impl PlacesProxy {
    /// A proxy for the legacy Nearby Search at `url`.
    pub fn new(url: String, timeout: Duration, key: Option<ApiKey>) -> PlacesProxy {
        // The call's own timeout covers headers and body together; awc's would cover only
        // the headers, so it is turned off.
        let client = awc::Client::builder()
            .disable_timeout()
            .disable_redirects()
            .finish();
        PlacesProxy {
            client,
            url,
            timeout,
            key,
        }
    }
}

impl Actor for PlacesProxy {
    type Context = Context<Self>;
}

/// Search for places within `radius` of `position`, at most `bound` of them.
#[derive(Message, Debug, Clone)]
#[rtype(result = "PlacesAnswer")]
pub struct NearbySearch {
    /// The centre of the search.
    pub position: Degrees,
    /// The radius of the search.
    pub radius: Radius,
    /// The most places to return.
    pub bound: u8,
}

/// JSON in the legacy Nearby Search shape, as text, ready for the WHATSAT answer.
#[derive(MessageResponse, Debug, Clone, PartialEq, Eq)]
pub struct PlacesAnswer(pub String);

impl Handler<NearbySearch> for PlacesProxy {
    type Result = ResponseFuture<PlacesAnswer>;

    fn handle(&mut self, search: NearbySearch, _: &mut Context<Self>) -> Self::Result {
        let Degrees {
            latitude,
            longitude,
        } = search.position;
        debug!(
            target: LOG_TARGET,
            "NearbySearch location {latitude},{longitude} radius {} m bound {}",
            search.radius.metres(),
            search.bound
        );
        let Some(key) = self.key.clone() else {
            let message = format!("no API key: set {API_KEY_VAR} where the server starts");
            return Box::pin(async move {
                PlacesAnswer(places_json::error_answer(REQUEST_DENIED, &message))
            });
        };
        let separator = if self.url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{separator}location={latitude},{longitude}&radius={}&key={}",
            self.url,
            search.radius.metres(),
            percent_encode(&key.0)
        );
        let request = self.client.get(url);
        let timeout = self.timeout;
        let bound = usize::from(search.bound);
        Box::pin(async move {
            let call = async {
                let mut response = request.send().await.map_err(|e| e.to_string())?;
                let status = response.status();
                if !status.is_success() {
                    return Err(format!("the places API answered HTTP {status}"));
                }
                let body = response
                    .body()
                    .limit(MAX_BODY_BYTES)
                    .await
                    .map_err(|e| e.to_string())?;
                String::from_utf8(body.to_vec())
                    .map_err(|_| places_json::BadAnswer::NotJson.to_string())
            };
            let body = match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "the places API did not answer within {} ms",
                    timeout.as_millis()
                )),
            };
            let answer = body.and_then(|body| {
                places_json::cut_results(&body, bound)
                    .map(|json| json.into_owned())
                    .map_err(|e| e.to_string())
            });
            PlacesAnswer(answer.unwrap_or_else(|error| {
                let error = key.scrub(&error);
                warn!(target: LOG_TARGET, "NearbySearch failed: {error}");
                places_json::error_answer(UNKNOWN_ERROR, &error)
            }))
        })
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters, for a query value.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::places_server::{PlacesServer, Reply};

    const LEGACY_OK: &str = include_str!("../tests/fixtures/places/legacy_ok.json");

    fn search(bound: u8) -> NearbySearch {
        NearbySearch {
            position: Degrees {
                latitude: 34.06893,
                longitude: -118.445127,
            },
            radius: Radius::parse("1.5").unwrap(),
            bound,
        }
    }

    fn proxy(server: &PlacesServer, timeout_ms: u64, key: Option<&str>) -> Addr<PlacesProxy> {
        PlacesProxy::new(
            server.url("/maps/api/place/nearbysearch/json"),
            Duration::from_millis(timeout_ms),
            key.map(ApiKey::new),
        )
        .start()
    }

    fn json(answer: &PlacesAnswer) -> serde_json::Value {
        serde_json::from_str(&answer.0).unwrap()
    }

    #[actix_rt::test]
    async fn legacy_search_sends_location_radius_in_metres_and_key() {
        let server = PlacesServer::always(LEGACY_OK).unwrap();
        let places = proxy(&server, 5000, Some("k+y/1"));
        places.send(search(5)).await.unwrap();
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        let r = &requests[0];
        assert_eq!(r.method, "GET");
        assert!(
            r.target.starts_with("/maps/api/place/nearbysearch/json?"),
            "{}",
            r.target
        );
        assert_eq!(r.query("location"), Some("34.06893,-118.445127"));
        assert_eq!(r.query("radius"), Some("1500"));
        assert_eq!(r.query("key"), Some("k%2By%2F1"));
    }

    #[actix_rt::test]
    async fn results_are_cut_to_the_bound_and_the_rest_passes_through() {
        let server = PlacesServer::always(LEGACY_OK).unwrap();
        let places = proxy(&server, 5000, Some("k"));
        let answer = places.send(search(3)).await.unwrap();
        let full: serde_json::Value = serde_json::from_str(LEGACY_OK).unwrap();
        let cut = json(&answer);
        assert_eq!(
            cut["results"].as_array().unwrap()[..],
            full["results"].as_array().unwrap()[..3]
        );
        assert_eq!(cut["status"], "OK");
        assert!(
            answer.0.starts_with("{\n   \"html_attributions\" : [],"),
            "Google's layout kept"
        );
    }

    #[actix_rt::test]
    async fn connections_are_kept_alive_between_searches() {
        let server = PlacesServer::always(LEGACY_OK).unwrap();
        let places = proxy(&server, 5000, Some("k"));
        for _ in 0..5 {
            places.send(search(1)).await.unwrap();
        }
        assert_eq!(server.requests().len(), 5);
        assert_eq!(server.connections(), 1);
    }

    #[actix_rt::test]
    async fn failures_answer_in_the_api_error_shape_without_the_key() {
        let cases = [
            (Reply::Json(503, "{}".into()), 5000, "HTTP 503"),
            (Reply::Html(200, "<html>".into()), 5000, "not JSON"),
            (Reply::Json(200, "[1]".into()), 5000, "not an object"),
            (
                Reply::After(
                    Duration::from_secs(5),
                    Box::new(Reply::Json(200, LEGACY_OK.into())),
                ),
                200,
                "within 200 ms",
            ),
        ];
        for (reply, timeout_ms, message) in cases {
            let server = PlacesServer::start(move |_| reply.clone()).unwrap();
            let places = proxy(&server, timeout_ms, Some("secret-key"));
            let answer = places.send(search(5)).await.unwrap();
            let v = json(&answer);
            assert_eq!(v["status"], UNKNOWN_ERROR, "{message}");
            assert_eq!(v["results"], serde_json::json!([]));
            let error = v["error_message"].as_str().unwrap();
            assert!(error.contains(message), "{error} should say {message}");
            assert!(!answer.0.contains("secret-key"));
        }
    }

    #[actix_rt::test]
    async fn an_unreachable_api_is_an_error_answer() {
        let server = PlacesServer::always("{}").unwrap();
        let url = server.url("/x");
        drop(server);
        let places = PlacesProxy::new(url, Duration::from_secs(2), Some(ApiKey::new("k"))).start();
        let v = json(&places.send(search(5)).await.unwrap());
        assert_eq!(v["status"], UNKNOWN_ERROR);
    }

    #[actix_rt::test]
    async fn without_a_key_no_call_is_made_and_the_answer_is_request_denied() {
        let server = PlacesServer::always(LEGACY_OK).unwrap();
        let places = proxy(&server, 5000, None);
        let v = json(&places.send(search(5)).await.unwrap());
        assert_eq!(v["status"], REQUEST_DENIED);
        assert!(v["error_message"].as_str().unwrap().contains(API_KEY_VAR));
        assert!(server.requests().is_empty());
    }

    #[test]
    fn the_key_never_prints() {
        let key = ApiKey::new("AIza-secret");
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
        assert_eq!(
            key.scrub("GET /x?key=AIza-secret failed"),
            "GET /x?key=*** failed"
        );
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("AIza_b-c.d~e"), "AIza_b-c.d~e");
        assert_eq!(percent_encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
