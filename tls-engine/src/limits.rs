//! Admission of new TLS handshakes under the policy's `[limits]`, the
//! same for the vhost-tls device (per VM) and for libipprototls (per
//! process): at most `max_pending_handshakes` under way, and new ones at
//! `handshakes_per_second`. A refusal fails only the handshake that would
//! go over (EAGAIN for a connect; an incoming connection waits).
//!
//! And the memory budget (`vm_buffer_mib`) that socket buffers and cached
//! TLS configurations draw from ([`MemoryBudget`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
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

/// The memory a VM (or a process using the library) may reserve:
/// `vm_buffer_mib`, shared by the device's socket buffers and the TLS
/// configurations cached for its sockets ([`crate::tls`]), which the guest
/// multiplies by choosing ever new options. Either kind is refused (ENOBUFS)
/// when it would take the total over the limit.
#[derive(Debug)]
pub struct MemoryBudget {
    limit_bytes: AtomicU64,
    /// Socket buffers reserved, as the device last counted them (at CREATE
    /// and when it accepts a connection: sockets that went since are still
    /// counted until the next count, which errs on the safe side).
    sockets_bytes: AtomicU64,
    /// Charged by the configuration caches.
    configs_bytes: AtomicU64,
    /// The caches charging it, to ask for room.
    caches: Mutex<Vec<Weak<dyn EvictIdle>>>,
}

/// A cache charging a [`MemoryBudget`] that can give up something no one
/// uses.
pub trait EvictIdle: Send + Sync {
    /// Drops one unused entry, without waiting for a lock held elsewhere;
    /// whether it did.
    fn try_evict_idle(&self) -> bool;
}

impl fmt::Debug for dyn EvictIdle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EvictIdle")
    }
}

impl MemoryBudget {
    pub fn new(limits: &Limits) -> MemoryBudget {
        MemoryBudget {
            limit_bytes: AtomicU64::new(Self::limit_of(limits)),
            sockets_bytes: AtomicU64::new(0),
            configs_bytes: AtomicU64::new(0),
            caches: Mutex::default(),
        }
    }

    /// Adds a cache that [`MemoryBudget::evict_idle_elsewhere`] may ask.
    pub(crate) fn register(&self, cache: Weak<dyn EvictIdle>) {
        let mut caches = self.caches.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        caches.retain(|cache| cache.strong_count() > 0);
        caches.push(cache);
    }

    /// Asks the caches charging this budget to drop one unused entry each
    /// until one does; whether one did. A cache whose lock is held (the
    /// asking one) is skipped.
    pub(crate) fn evict_idle_elsewhere(&self) -> bool {
        let caches: Vec<_> = self.caches.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        caches.iter().filter_map(Weak::upgrade).any(|cache| cache.try_evict_idle())
    }

    fn limit_of(limits: &Limits) -> u64 {
        u64::from(limits.vm_buffer_mib) << 20
    }

    /// A reloaded policy's `vm_buffer_mib`; what is reserved stays.
    pub fn set_limits(&self, limits: &Limits) {
        self.limit_bytes.store(Self::limit_of(limits), Ordering::Relaxed);
    }

    /// Whether one more socket's buffers fit next to `open` sockets' and
    /// the cached configurations; records the sockets' reservation (with
    /// the new one when it fits).
    pub fn socket_fits(&self, open: usize, socket_buffer_bytes: u32) -> bool {
        let per_socket = u64::from(socket_buffer_bytes);
        let with_new = (open as u64 + 1) * per_socket;
        let fits = with_new + self.configs_bytes() <= self.limit_bytes.load(Ordering::Relaxed);
        self.sockets_bytes.store(if fits { with_new } else { open as u64 * per_socket }, Ordering::Relaxed);
        fits
    }

    /// Bytes the configuration caches hold charged.
    pub fn configs_bytes(&self) -> u64 {
        self.configs_bytes.load(Ordering::Relaxed)
    }

    /// Charges `bytes` for a configuration if they fit.
    pub(crate) fn try_charge(&self, bytes: u64) -> bool {
        let limit = self.limit_bytes.load(Ordering::Relaxed);
        let sockets = self.sockets_bytes.load(Ordering::Relaxed);
        self.configs_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |charged| (sockets + charged + bytes <= limit).then_some(charged + bytes))
            .is_ok()
    }

    pub(crate) fn release(&self, bytes: u64) {
        self.configs_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
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

    #[test]
    fn sockets_and_configurations_share_the_budget() {
        let limits = Limits { vm_buffer_mib: 1, ..Limits::default() };
        let budget = MemoryBudget::new(&limits);
        assert!(budget.socket_fits(2, 256 * 1024), "three sockets of 256 KiB take 768 KiB");
        assert!(budget.try_charge(256 * 1024));
        assert!(!budget.try_charge(1), "the budget is full");
        assert!(!budget.socket_fits(3, 256 * 1024), "no room for a fourth socket");
        budget.release(256 * 1024);
        assert_eq!(budget.configs_bytes(), 0);
        assert!(budget.socket_fits(3, 256 * 1024));
        budget.set_limits(&Limits { vm_buffer_mib: 2, ..Limits::default() });
        assert!(budget.try_charge(1 << 20));
    }
}
