//! Per-VM admission limits beyond the socket count: handshakes in
//! progress, new handshakes per second, and buffer memory reserved. Going
//! over one fails only the request that would (EAGAIN or ENOBUFS); the
//! warning about it is rate-limited so a guest cannot flood the host's log.

use std::time::{Duration, Instant};

/// A token bucket holding at most one second of handshakes.
#[derive(Debug)]
pub struct HandshakeBucket {
    tokens: f64,
    refilled: Instant,
}

impl HandshakeBucket {
    pub fn new(per_second: u32) -> HandshakeBucket {
        HandshakeBucket { tokens: f64::from(per_second), refilled: Instant::now() }
    }

    /// Takes a token if one is left at `per_second` (the policy's rate,
    /// which a reload may have changed).
    pub fn try_take(&mut self, per_second: u32, now: Instant) -> bool {
        let rate = f64::from(per_second);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl HandshakeBucket {
    /// Returns a token taken for a handshake that did not start.
    pub fn refund(&mut self) {
        self.tokens += 1.0;
    }
}

/// A warning logged at most once per interval, with a count of the ones
/// held back in between.
#[derive(Debug, Default)]
pub struct RateLimitedWarning {
    last: Option<Instant>,
    suppressed: u64,
}

/// How often each kind of limit warning may appear in the log.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

impl RateLimitedWarning {
    /// Logs `what` unless a warning of this kind was logged recently;
    /// returns whether it did.
    pub fn warn(&mut self, what: &str) -> bool {
        self.warn_at(what, Instant::now())
    }

    fn warn_at(&mut self, what: &str, now: Instant) -> bool {
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < WARNING_INTERVAL) {
            self.suppressed += 1;
            return false;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        tracing::warn!(suppressed, "limit reached: {what}");
        self.last = Some(now);
        true
    }
}

/// One warning per limit.
#[derive(Debug, Default)]
pub struct LimitWarnings {
    pub pending_handshakes: RateLimitedWarning,
    pub handshake_rate: RateLimitedWarning,
    pub buffer_memory: RateLimitedWarning,
    pub sockets: RateLimitedWarning,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_of_one_second_then_the_rate() {
        let start = Instant::now();
        let mut bucket = HandshakeBucket::new(10);
        let taken = (0..20).filter(|_| bucket.try_take(10, start)).count();
        assert_eq!(taken, 10, "one second's worth at once");
        assert!(!bucket.try_take(10, start + Duration::from_millis(50)), "half a token is not a token");
        assert!(bucket.try_take(10, start + Duration::from_millis(110)));
        assert!(!bucket.try_take(10, start + Duration::from_millis(120)));
        // Long idle: refills to the burst, not beyond.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..30).filter(|_| bucket.try_take(10, later)).count(), 10);
    }

    #[test]
    fn warnings_are_rate_limited() {
        let start = Instant::now();
        let mut warning = RateLimitedWarning::default();
        assert!(warning.warn_at("x", start));
        let logged = (1..1000).filter(|i| warning.warn_at("x", start + Duration::from_millis(*i))).count();
        assert_eq!(logged, 0, "a flood within the interval logs nothing more");
        assert_eq!(warning.suppressed, 999);
        assert!(warning.warn_at("x", start + WARNING_INTERVAL + Duration::from_secs(1)));
        assert_eq!(warning.suppressed, 0, "the count went out with the next warning");
    }
}
