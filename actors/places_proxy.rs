//! The `PlacesProxy` actor: Nearby Search calls to the places API, over awc.
//!
//! It always answers, and always with JSON in the legacy Nearby Search shape: the API's own
//! answer (the legacy one as it came, the New one mapped) with `results` cut to the bound,
//! or, when the call fails (timeout, HTTP error, a body that is not JSON), an object
//! in the API's error shape saying what went wrong.
//!
//! Each call costs the user money, so it asks once for the most places any WHATSAT can want
//! and keeps the answer for a while ([`AnswerCache`]), identical searches at once share one
//! call, and at most `max_concurrent` calls are under way, the others waiting their turn
//! within the timeout. Errors are never kept. An answer is read once as it comes (checked,
//! its status and cutting points found: [`Page`]), so that serving it to each WHATSAT is a
//! copy. The key never reaches a log: it is held in an [`ApiKey`] that does not print,
//! and error texts are scrubbed of it before they go anywhere.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use awc::error::PayloadError;
use log::{debug, warn};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::sync::{Semaphore, oneshot};

use crate::answer_cache::{AnswerCache, SearchKey};
use crate::config::{PlacesApi, PlacesConfig};
use crate::metrics::Metrics;
use crate::places_json::{self, BadAnswer, Page, UNKNOWN_ERROR};
use crate::places_new;
use crate::protocol::{Degrees, Radius};

/// The log target of this actor's mailbox: `RUST_LOG=herd::places_proxy=debug`.
pub const LOG_TARGET: &str = "herd::places_proxy";

/// The environment variable the key comes from.
pub const API_KEY_VAR: &str = "GOOGLE_PLACES_API_KEY";

/// The largest answer body accepted from the places API. A full legacy page of 20 results
/// is about 20 KB; this leaves room without letting a broken server fill memory (a session
/// holds at most a few dozen answers at once).
const MAX_BODY_BYTES: usize = 512 << 10;

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

    /// Replaces every occurrence of the key in `text`, as given or as it is written into a
    /// URL, for error texts that may quote the URL.
    fn scrub(&self, text: &str) -> String {
        let in_url = utf8_percent_encode(&self.0, QUERY_VALUE).to_string();
        text.replace(&self.0, "***").replace(&in_url, "***")
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Calls the places API for WHATSAT, reusing answers and sharing calls in flight.
pub struct PlacesProxy {
    /// The HTTP client; it keeps connections alive and reuses them.
    client: awc::Client,
    /// Which API, where, and the limits on calling it.
    settings: PlacesConfig,
    /// The key, if the server has one. Without it calls go without one: Google refuses
    /// them (`REQUEST_DENIED`), a places service that needs none (a local fake, a proxy that
    /// adds the key) answers.
    key: Option<ApiKey>,
    /// Answers worth reusing, by position, radius and API.
    cache: AnswerCache<Page>,
    /// Searches under way, each with the requests waiting for its answer, so identical
    /// searches at once make one call.
    in_flight: HashMap<SearchKey, Vec<oneshot::Sender<Fetched>>>,
    /// One permit per call allowed under way at once ([`PlacesConfig::max_concurrent`]).
    call_slots: Rc<Semaphore>,
    /// What the server counts.
    metrics: Arc<Metrics>,
}

/// The whole answer of one call, in the legacy shape, before it is cut to a bound.
#[derive(Clone)]
struct Fetched(Arc<Page>);

impl PlacesProxy {
    /// A proxy for the API `settings` describe.
    pub fn new(settings: PlacesConfig, key: Option<ApiKey>) -> PlacesProxy {
        // The call's own timeout covers the wait for a slot, the headers and the body
        // together; awc's would cover only the headers, so it is turned off.
        // No more connections than calls at once: each is a descriptor the server's
        // budget sets aside (`crate::descriptors`).
        let connector = awc::Connector::new().limit(settings.max_concurrent);
        let client = awc::Client::builder()
            .connector(connector)
            .disable_timeout()
            .disable_redirects()
            .finish();
        let capacity = NonZeroUsize::new(settings.cache_entries).unwrap_or(NonZeroUsize::MIN);
        PlacesProxy {
            client,
            cache: AnswerCache::new(settings.cache_ttl, capacity),
            call_slots: Rc::new(Semaphore::new(settings.max_concurrent)),
            in_flight: HashMap::new(),
            settings,
            key,
            metrics: Arc::default(),
        }
    }

    /// Counts into `metrics` (the server's), instead of numbers of its own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> PlacesProxy {
        self.metrics = metrics;
        self
    }

    /// Starts the call for `search` and hands its answer to everyone waiting for it.
    fn call(&mut self, search: NearbySearch, search_key: SearchKey, ctx: &mut Context<Self>) {
        let key = self.key.clone();
        let client = self.client.clone();
        let (api, url, timeout) = (
            self.settings.api,
            self.settings.url.clone(),
            self.settings.timeout,
        );
        let call_slots = Rc::clone(&self.call_slots);
        let scrub_key = key.clone();
        let started = Instant::now();
        let call = async move {
            let work = async {
                let _slot = call_slots.acquire().await.map_err(|e| e.to_string())?;
                fetch(&client, api, &url, &search, key.as_ref()).await
            };
            tokio::time::timeout(timeout, work)
                .await
                .unwrap_or_else(|_| {
                    Err(format!(
                        "the places API did not answer within {} ms",
                        timeout.as_millis()
                    ))
                })
        };
        ctx.spawn(call.into_actor(self).map(move |result, act, _| {
            act.metrics.places.calls.inc();
            let places = &act.metrics.places;
            places.latency.observe(started.elapsed().as_secs_f64());
            let page = match result {
                Ok(page) => {
                    let status = page.status();
                    if places_json::is_reusable(status.as_deref()) {
                        act.cache
                            .put(search_key.clone(), Arc::clone(&page), Instant::now());
                    } else {
                        places.error(status.as_deref().unwrap_or(UNKNOWN_ERROR));
                    }
                    page
                }
                Err(error) => {
                    places.error(UNKNOWN_ERROR);
                    let error = match &scrub_key {
                        Some(key) => key.scrub(&error),
                        None => error,
                    };
                    warn!(target: LOG_TARGET, "NearbySearch failed: {error}");
                    Arc::new(places_json::error_page(UNKNOWN_ERROR, &error))
                }
            };
            for waiter in act.in_flight.remove(&search_key).unwrap_or_default() {
                let _ = waiter.send(Fetched(Arc::clone(&page)));
            }
        }));
    }
}

/// Makes one call to the places API and returns its whole answer in the legacy shape, or
/// what went wrong.
async fn fetch(
    client: &awc::Client,
    api: PlacesApi,
    url: &str,
    search: &NearbySearch,
    key: Option<&ApiKey>,
) -> Result<Arc<Page>, String> {
    let Degrees {
        latitude,
        longitude,
    } = search.position;
    let sent = match api {
        PlacesApi::Legacy => {
            let separator = if url.contains('?') { '&' } else { '?' };
            let mut url = format!(
                "{url}{separator}location={latitude},{longitude}&radius={}",
                search.radius.metres(),
            );
            if let Some(key) = key {
                let key = utf8_percent_encode(&key.0, QUERY_VALUE);
                url.push_str(&format!("&key={key}"));
            }
            client.get(url).send()
        }
        PlacesApi::New => {
            let mut request = client.post(url);
            if let Some(key) = key {
                request = request.insert_header(("X-Goog-Api-Key", key.0.as_str()));
            }
            request
                .insert_header(("X-Goog-FieldMask", places_new::FIELD_MASK))
                .content_type("application/json")
                .send_body(places_new::request_body(&search.position, &search.radius))
        }
    };
    let mut response = sent.await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .body()
        .limit(MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            PayloadError::Overflow => {
                format!("the places API's answer is over the {MAX_BODY_BYTES}-byte limit")
            }
            e => e.to_string(),
        })?;
    let body = String::from_utf8(body.to_vec()).map_err(|_| BadAnswer::NotJson.to_string())?;
    let json = match api {
        PlacesApi::Legacy if !status.is_success() => {
            return Err(format!("the places API answered HTTP {status}"));
        }
        // The whole page is kept (and checked to be a JSON object); each WHATSAT cuts it.
        PlacesApi::Legacy => Page::read(body).map_err(|e| e.to_string()),
        PlacesApi::New => places_new::to_legacy(status.as_u16(), &body)
            .and_then(Page::read)
            .map_err(|e| e.to_string()),
    };
    json.map(Arc::new)
}

impl Actor for PlacesProxy {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Unbounded, like the store's: the sessions bound what is in flight.
        ctx.set_mailbox_capacity(0);
    }
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

    fn handle(&mut self, search: NearbySearch, ctx: &mut Context<Self>) -> Self::Result {
        let Degrees {
            latitude,
            longitude,
        } = search.position;
        let bound = usize::from(search.bound);
        let search_key = SearchKey::new(search.position, &search.radius, self.settings.api);
        let cached = self.cache.get(&search_key, Instant::now());
        let places = &self.metrics.places;
        self.metrics.places_backlog.dec();
        places.searches.inc();
        let how = match (&cached, self.in_flight.contains_key(&search_key)) {
            (Some(_), _) => {
                places.cache_hits.inc();
                "cached"
            }
            (None, true) => {
                places.joined.inc();
                "joins the call under way"
            }
            (None, false) => "calls the API",
        };
        debug!(
            target: LOG_TARGET,
            "NearbySearch location {latitude},{longitude} radius {} m bound {bound}: {how}",
            search.radius.metres()
        );
        if let Some(page) = cached {
            return Box::pin(async move { PlacesAnswer(page.cut(bound).into_owned()) });
        }
        let (waiter, answer) = oneshot::channel();
        match self.in_flight.entry(search_key.clone()) {
            Entry::Occupied(mut waiting) => waiting.get_mut().push(waiter),
            Entry::Vacant(none) => {
                none.insert(vec![waiter]);
                self.call(search, search_key, ctx);
            }
        }
        Box::pin(async move {
            match answer.await {
                Ok(Fetched(page)) => PlacesAnswer(page.cut(bound).into_owned()),
                Err(_) => PlacesAnswer(places_json::error_answer(
                    UNKNOWN_ERROR,
                    "the places proxy stopped before the call ended",
                )),
            }
        })
    }
}

/// What a query value percent-encodes: everything but RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;
    use crate::places_json::REQUEST_DENIED;
    use places_fake::{PlacesServer, Reply};
    use std::time::Duration;

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

    fn settings(url: String, timeout_ms: u64) -> PlacesConfig {
        PlacesConfig {
            api: PlacesApi::Legacy,
            url,
            timeout: Duration::from_millis(timeout_ms),
            cache_ttl: Duration::ZERO,
            cache_entries: 100,
            max_concurrent: 4,
        }
    }

    fn proxy(server: &PlacesServer, timeout_ms: u64, key: Option<&str>) -> Addr<PlacesProxy> {
        let url = server.url("/maps/api/place/nearbysearch/json");
        PlacesProxy::new(settings(url, timeout_ms), key.map(ApiKey::new)).start()
    }

    /// A proxy with a cache and a cap on calls.
    fn caching_proxy(
        server: &PlacesServer,
        ttl: Duration,
        max_concurrent: usize,
    ) -> Addr<PlacesProxy> {
        let url = server.url("/nearby");
        let settings = PlacesConfig {
            cache_ttl: ttl,
            max_concurrent,
            ..settings(url, 2000)
        };
        PlacesProxy::new(settings, Some(ApiKey::new("k"))).start()
    }

    fn search_at(latitude: f64, bound: u8) -> NearbySearch {
        NearbySearch {
            position: Degrees {
                latitude,
                longitude: 1.0,
            },
            ..search(bound)
        }
    }

    fn result_count(answer: &PlacesAnswer) -> usize {
        json(answer)["results"].as_array().map_or(0, Vec::len)
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
                Reply::Json(
                    200,
                    format!(
                        "{{\"results\":[],\"x\":\"{}\"}}",
                        "x".repeat(MAX_BODY_BYTES)
                    ),
                ),
                5000,
                "over the 524288-byte limit",
            ),
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

    #[test]
    fn the_key_is_scrubbed_as_given_and_as_written_in_a_url() {
        let key = ApiKey::new("se/cr+et");
        let text = "GET /x?key=se%2Fcr%2Bet failed; key se/cr+et";
        assert_eq!(key.scrub(text), "GET /x?key=*** failed; key ***");
    }

    #[actix_rt::test]
    async fn an_unreachable_api_is_an_error_answer() {
        let server = PlacesServer::always("{}").unwrap();
        let url = server.url("/x");
        drop(server);
        let places = PlacesProxy::new(settings(url, 2000), Some(ApiKey::new("k"))).start();
        let v = json(&places.send(search(5)).await.unwrap());
        assert_eq!(v["status"], UNKNOWN_ERROR);
    }

    #[actix_rt::test]
    async fn searches_for_the_same_spot_make_one_call_while_the_answer_lives() {
        let server = PlacesServer::always(LEGACY_OK).unwrap();
        let places = caching_proxy(&server, Duration::from_millis(300), 4);
        for i in 0..100 {
            let bound = 1 + (i % 20) as u8;
            let answer = places.send(search_at(1.0, bound)).await.unwrap();
            assert_eq!(
                result_count(&answer),
                usize::from(bound),
                "bounds share the entry"
            );
        }
        assert_eq!(server.requests().len(), 1);
        places.send(search_at(2.0, 5)).await.unwrap();
        assert_eq!(server.requests().len(), 2, "another spot is another call");
        tokio::time::sleep(Duration::from_millis(400)).await;
        places.send(search_at(1.0, 5)).await.unwrap();
        assert_eq!(
            server.requests().len(),
            3,
            "an expired answer is fetched again"
        );
    }

    #[actix_rt::test]
    async fn identical_searches_at_once_make_one_call() {
        let slow = Reply::After(
            Duration::from_millis(200),
            Box::new(Reply::Json(200, LEGACY_OK.into())),
        );
        let server = PlacesServer::start(move |_| slow.clone()).unwrap();
        // With the cache off, only the sharing of the call in flight can save calls.
        let places = caching_proxy(&server, Duration::ZERO, 4);
        let answers =
            futures_util::future::join_all((1..=10).map(|b| places.send(search_at(1.0, b)))).await;
        for (b, answer) in (1..=10).zip(answers) {
            assert_eq!(result_count(&answer.unwrap()), b);
        }
        assert_eq!(server.requests().len(), 1);
    }

    #[actix_rt::test]
    async fn no_more_calls_than_the_cap_are_under_way_at_once() {
        let slow = Reply::After(
            Duration::from_millis(200),
            Box::new(Reply::Json(200, LEGACY_OK.into())),
        );
        let server = PlacesServer::start(move |_| slow.clone()).unwrap();
        let places = caching_proxy(&server, Duration::ZERO, 2);
        let answers =
            futures_util::future::join_all((0..6).map(|i| places.send(search_at(f64::from(i), 3))))
                .await;
        for answer in answers {
            assert_eq!(
                result_count(&answer.unwrap()),
                3,
                "those waiting their turn are served"
            );
        }
        assert_eq!(server.requests().len(), 6);
        assert_eq!(server.most_at_once(), 2);
    }

    #[actix_rt::test]
    async fn a_search_waiting_for_a_slot_held_by_a_stuck_call_is_answered_with_an_error() {
        let slow = Reply::After(
            Duration::from_secs(5),
            Box::new(Reply::Json(200, LEGACY_OK.into())),
        );
        let server = PlacesServer::start(move |_| slow.clone()).unwrap();
        let settings = PlacesConfig {
            max_concurrent: 1,
            ..settings(server.url("/nearby"), 300)
        };
        let places = PlacesProxy::new(settings, Some(ApiKey::new("k"))).start();
        let (first, second) = futures_util::future::join(
            places.send(search_at(1.0, 1)),
            places.send(search_at(2.0, 1)),
        )
        .await;
        // The cap itself is checked by `no_more_calls_than_the_cap_are_under_way_at_once`;
        // the server's own count cannot tell here, as it keeps holding the first call after
        // the proxy gave up on it.
        for answer in [first.unwrap(), second.unwrap()] {
            assert_eq!(json(&answer)["status"], UNKNOWN_ERROR);
        }
    }

    #[actix_rt::test]
    async fn errors_are_not_kept() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let server = PlacesServer::start(move |_| {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Reply::Json(503, "{}".into()),
                1 => Reply::Json(
                    200,
                    include_str!("../tests/fixtures/places/legacy_request_denied.json").into(),
                ),
                _ => Reply::Json(200, LEGACY_OK.into()),
            }
        })
        .unwrap();
        let places = caching_proxy(&server, Duration::from_secs(60), 4);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let answer = places.send(search_at(7.0, 2)).await.unwrap();
            seen.push(
                json(&answer)["status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        // The HTTP error and the API's own error are each fetched anew; the first real
        // answer is kept and served again.
        assert_eq!(seen, [UNKNOWN_ERROR, REQUEST_DENIED, "OK", "OK"]);
        assert_eq!(server.requests().len(), 3);
    }

    fn new_api(server: &PlacesServer) -> Addr<PlacesProxy> {
        let settings = PlacesConfig {
            api: PlacesApi::New,
            ..settings(server.url("/v1/places:searchNearby"), 2000)
        };
        PlacesProxy::new(settings, Some(ApiKey::new("new-key"))).start()
    }

    #[actix_rt::test]
    async fn the_new_api_is_posted_with_key_and_field_mask_and_mapped_to_the_legacy_shape() {
        let new_ok = include_str!("../tests/fixtures/places/new_ok.json");
        let server = PlacesServer::always(new_ok).unwrap();
        let answer = new_api(&server).send(search(3)).await.unwrap();
        let requests = server.requests();
        let r = &requests[0];
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("POST", "/v1/places:searchNearby")
        );
        let header = |name: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("x-goog-api-key"), Some("new-key"));
        assert_eq!(header("x-goog-fieldmask"), Some(places_new::FIELD_MASK));
        assert_eq!(header("content-type"), Some("application/json"));
        assert!(!r.target.contains("new-key"), "the key is not in the URL");
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["maxResultCount"], 20);
        let circle = &body["locationRestriction"]["circle"];
        assert_eq!(circle["center"]["latitude"], 34.06893);
        assert_eq!(circle["center"]["longitude"], -118.445127);
        assert_eq!(circle["radius"], 1500);
        let v = json(&answer);
        let places: serde_json::Value = serde_json::from_str(new_ok).unwrap();
        assert_eq!(v["status"], "OK");
        assert_eq!(result_count(&answer), 3);
        assert_eq!(
            v["results"][0]["name"],
            places["places"][0]["displayName"]["text"]
        );
        assert_eq!(v["results"][2]["place_id"], places["places"][2]["id"]);
    }

    #[actix_rt::test]
    async fn the_new_apis_empty_and_error_answers_map_to_legacy_statuses() {
        let new_error = include_str!("../tests/fixtures/places/new_error.json");
        let cases = [
            (Reply::Json(200, "{}".into()), "ZERO_RESULTS"),
            (Reply::Json(400, new_error.into()), REQUEST_DENIED),
        ];
        for (reply, status) in cases {
            let server = PlacesServer::start(move |_| reply.clone()).unwrap();
            let v = json(&new_api(&server).send(search(3)).await.unwrap());
            assert_eq!(v["status"], status);
            assert_eq!(v["results"], serde_json::json!([]));
        }
    }

    #[actix_rt::test]
    async fn without_a_key_the_call_goes_without_one_and_the_api_decides() {
        // A places service that needs no key answers.
        let server = PlacesServer::always(LEGACY_OK).unwrap();
        let places = proxy(&server, 5000, None);
        let v = json(&places.send(search(5)).await.unwrap());
        assert_eq!(v["status"], "OK");
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].query("key"), None);
        assert!(requests[0].query("location").is_some());
        // Google refuses it, and its refusal is passed on.
        let denied = include_str!("../tests/fixtures/places/legacy_request_denied.json");
        let server = PlacesServer::always(denied).unwrap();
        let places = proxy(&server, 5000, None);
        let v = json(&places.send(search(5)).await.unwrap());
        assert_eq!(v["status"], REQUEST_DENIED);
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
        let encode = |value| utf8_percent_encode(value, QUERY_VALUE).to_string();
        assert_eq!(encode("AIza_b-c.d~e"), "AIza_b-c.d~e");
        assert_eq!(encode("a b&c=d"), "a%20b%26c%3Dd");
    }
}
