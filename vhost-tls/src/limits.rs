//! Per-VM admission limits beyond the socket count: handshakes in
//! progress and new handshakes per second (decided by tls-engine, shared
//! with libipprototls), and buffer memory reserved. Going over one fails
//! only the request that would (EAGAIN or ENOBUFS); the warning about it
//! is rate-limited so a guest cannot flood the host's log.

use std::time::{Duration, Instant};

pub use tls_engine::limits::HandshakeBucket;

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
        self.log_at(now, |suppressed| tracing::warn!(suppressed, "limit reached: {what}"))
    }

    /// Logs a request the policy refused (`what` says which), at the
    /// same bounded rate.
    pub fn warn_refusal(&mut self, what: &str) -> bool {
        self.log_at(Instant::now(), |suppressed| tracing::warn!(suppressed, "refused by policy: {what}"))
    }

    fn log_at(&mut self, now: Instant, log: impl FnOnce(u64)) -> bool {
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < WARNING_INTERVAL) {
            self.suppressed += 1;
            return false;
        }
        log(std::mem::take(&mut self.suppressed));
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
    /// Socket options the policy refuses (spec 2.6.10).
    pub refused_sockopts: RateLimitedWarning,
}

#[cfg(test)]
mod tests {
    use super::*;

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
