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
        let client = awc::Client::builder()
            .timeout(timeout)
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
