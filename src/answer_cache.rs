//! The cache of places answers: each Nearby Search costs the user money, and a phone that
//! asks again from the same spot should not pay twice.
//!
//! An entry is the whole answer (the API is always asked for 20 places) for one position,
//! radius and API; each WHATSAT cuts it to its own bound, so different bounds share an entry.
//! Entries live for a configured time and the cache holds a bounded number of them, the least
//! recently used going first. Only answers worth reusing are put in (see the proxy): errors
//! never are. Time is passed in, so the rules are tested without waiting.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::config::PlacesApi;
use crate::protocol::{Degrees, Radius};

/// What an answer is for: the exact position, the radius in metres, and the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SearchKey {
    latitude_bits: u64,
    longitude_bits: u64,
    radius_metres: Box<str>,
    api: PlacesApi,
}

impl SearchKey {
    /// The key of a search around `position` within `radius`, on `api`.
    pub fn new(position: Degrees, radius: &Radius, api: PlacesApi) -> SearchKey {
        SearchKey {
            latitude_bits: position.latitude.to_bits(),
            longitude_bits: position.longitude.to_bits(),
            radius_metres: radius.metres().into(),
            api,
        }
    }
}

/// Places answers (`A`) by [`SearchKey`], with a time to live and a bounded size.
pub struct AnswerCache<A: ?Sized> {
    /// How long an entry is served; zero means nothing is ever kept.
    ttl: Duration,
    /// The most answers held. Enforced here rather than by `LruCache::new`, which would
    /// allocate room for all of them at start: a large `cache_entries` took gigabytes (or
    /// aborted the server) before a single answer was cached.
    capacity: NonZeroUsize,
    entries: LruCache<SearchKey, (Instant, Arc<A>)>,
}

impl<A: ?Sized> AnswerCache<A> {
    /// A cache of at most `capacity` answers, each served for `ttl`.
    pub fn new(ttl: Duration, capacity: NonZeroUsize) -> AnswerCache<A> {
        AnswerCache {
            ttl,
            capacity,
            entries: LruCache::unbounded(),
        }
    }

    /// The answer for `key` if one was put in less than the time to live before `now`.
    pub fn get(&mut self, key: &SearchKey, now: Instant) -> Option<Arc<A>> {
        match self.entries.get(key) {
            Some((stored, answer)) if now.duration_since(*stored) < self.ttl => {
                Some(Arc::clone(answer))
            }
            Some(_) => {
                self.entries.pop(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `answer` for `key` from `now` on (unless the cache is turned off).
    pub fn put(&mut self, key: SearchKey, answer: Arc<A>, now: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.capacity.get() && !self.entries.contains(&key) {
            self.entries.pop_lru();
        }
        self.entries.put(key, (now, answer));
    }

    /// How many answers are held (expired ones included until they are asked for).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no answer is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(latitude: f64, radius: &str, api: PlacesApi) -> SearchKey {
        let position = Degrees {
            latitude,
            longitude: 1.0,
        };
        SearchKey::new(position, &Radius::parse(radius).unwrap(), api)
    }

    fn cache(ttl_s: u64, capacity: usize) -> AnswerCache<str> {
        AnswerCache::new(
            Duration::from_secs(ttl_s),
            NonZeroUsize::new(capacity).unwrap(),
        )
    }

    #[test]
    fn an_answer_is_served_until_its_time_to_live_runs_out() {
        let mut c = cache(60, 10);
        let t0 = Instant::now();
        c.put(key(1.0, "10", PlacesApi::Legacy), Arc::from("a"), t0);
        let k = key(1.0, "10", PlacesApi::Legacy);
        assert_eq!(
            c.get(&k, t0 + Duration::from_secs(59)).as_deref(),
            Some("a")
        );
        assert_eq!(c.get(&k, t0 + Duration::from_secs(60)), None);
        assert!(c.is_empty(), "an expired entry is dropped when found");
    }

    #[test]
    fn position_radius_and_api_all_make_the_key() {
        let mut c = cache(60, 10);
        let now = Instant::now();
        c.put(key(1.0, "10", PlacesApi::Legacy), Arc::from("a"), now);
        assert!(c.get(&key(1.0, "10.0", PlacesApi::Legacy), now).is_some());
        assert!(c.get(&key(1.5, "10", PlacesApi::Legacy), now).is_none());
        assert!(c.get(&key(1.0, "11", PlacesApi::Legacy), now).is_none());
        assert!(c.get(&key(1.0, "10", PlacesApi::New), now).is_none());
    }

    #[test]
    fn the_least_recently_used_answer_goes_first() {
        let mut c = cache(60, 2);
        let now = Instant::now();
        c.put(key(1.0, "1", PlacesApi::Legacy), Arc::from("1"), now);
        c.put(key(2.0, "1", PlacesApi::Legacy), Arc::from("2"), now);
        assert!(c.get(&key(1.0, "1", PlacesApi::Legacy), now).is_some());
        c.put(key(3.0, "1", PlacesApi::Legacy), Arc::from("3"), now);
        assert!(c.get(&key(2.0, "1", PlacesApi::Legacy), now).is_none());
        assert!(c.get(&key(1.0, "1", PlacesApi::Legacy), now).is_some());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_huge_capacity_takes_memory_only_as_answers_come() {
        let mut c = cache(60, usize::MAX);
        let now = Instant::now();
        c.put(key(1.0, "1", PlacesApi::Legacy), Arc::from("1"), now);
        assert!(c.get(&key(1.0, "1", PlacesApi::Legacy), now).is_some());
    }

    #[test]
    fn a_zero_time_to_live_keeps_nothing() {
        let mut c = cache(0, 10);
        let now = Instant::now();
        c.put(key(1.0, "1", PlacesApi::Legacy), Arc::from("1"), now);
        assert!(c.is_empty());
    }
}
