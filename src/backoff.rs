//! Capped exponential backoff with jitter, for reconnecting to a neighbor that is down.
//!
//! Each failed attempt doubles the base delay up to a cap; the delay used is drawn between
//! half the base and the base, so that servers that lost the same neighbor do not all
//! knock at once when it returns. A successful connection resets it.

use std::time::Duration;

/// The delay policy and where a link is in it.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The first delay.
    min: Duration,
    /// The largest delay.
    max: Duration,
    /// The base delay of the next attempt (before jitter).
    next: Duration,
}

impl Backoff {
    /// A backoff that starts at `min` and never waits more than `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt; each call doubles the following one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        base.mul_f64(0.5 + fastrand::f64() / 2.0)
    }

    /// Starts over from the first delay (after a successful connection).
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Makes the next delay the longest: after a refusal, which dialling again soon would
    /// only repeat.
    pub fn to_longest(&mut self) {
        self.next = self.max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        let mut b = Backoff::new(min, max);
        let bases = [100, 200, 400, 800, 1000, 1000];
        for base in bases {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} not within jitter of {base:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= min);
        b.to_longest();
        assert!(b.next_delay() >= max / 2);
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let mut delays: Vec<_> = (0..20)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay())
            .collect();
        delays.dedup();
        assert!(delays.len() > 1);
    }
}
