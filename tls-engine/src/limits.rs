//! Admission of new TLS handshakes under the policy's `[limits]`, the
//! same for the vhost-tls device (per VM) and for libipprototls (per
//! process): at most `max_pending_handshakes` under way, and new ones at
//! `handshakes_per_second`. A refusal fails only the handshake that would
//! go over (EAGAIN for a connect; an incoming connection waits).

use std::fmt;
use std::time::Instant;

use crate::policy::Limits;

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

/// Which limit keeps a handshake from starting now. Its text is what
/// TLS_ERROR says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeRefusal {
    /// `max_pending_handshakes` are under way already.
    Pending(u32),
    /// `handshakes_per_second` started within the last second.
    Rate(u32),
}

impl fmt::Display for HandshakeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeRefusal::Pending(max) => write!(f, "too many handshakes in progress (max_pending_handshakes = {max})"),
            HandshakeRefusal::Rate(rate) => write!(f, "too many new handshakes (handshakes_per_second = {rate})"),
        }
    }
}

/// Whether one more handshake may start while `in_progress` others are
/// under way; takes its token from `bucket` when it may.
pub fn admit_handshake(in_progress: usize, bucket: &mut HandshakeBucket, limits: &Limits, now: Instant) -> Result<(), HandshakeRefusal> {
    if in_progress >= limits.max_pending_handshakes as usize {
        return Err(HandshakeRefusal::Pending(limits.max_pending_handshakes));
    }
    if !bucket.try_take(limits.handshakes_per_second, now) {
        return Err(HandshakeRefusal::Rate(limits.handshakes_per_second));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    fn admission_checks_the_count_first_and_spends_no_token_then() {
        let limits = Limits { max_pending_handshakes: 2, handshakes_per_second: 3, ..Limits::default() };
        let now = Instant::now();
        let mut bucket = HandshakeBucket::new(3);
        assert_eq!(admit_handshake(2, &mut bucket, &limits, now), Err(HandshakeRefusal::Pending(2)));
        for _ in 0..3 {
            assert_eq!(admit_handshake(1, &mut bucket, &limits, now), Ok(()));
        }
        let refusal = admit_handshake(0, &mut bucket, &limits, now).unwrap_err();
        assert_eq!(refusal, HandshakeRefusal::Rate(3));
        assert_eq!(refusal.to_string(), "too many new handshakes (handshakes_per_second = 3)");
        assert_eq!(admit_handshake(0, &mut bucket, &limits, now + Duration::from_millis(400)), Ok(()));
    }
}
