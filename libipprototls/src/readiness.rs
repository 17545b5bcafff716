//! poll, select and epoll over TLS descriptors.
//!
//! The kernel knows the TCP socket, not the TLS stream on it, so its
//! readiness is wrong for a TLS socket in three ways this module corrects:
//! - while connecting, TCP is writable long before the handshake is done:
//!   the program must see POLLOUT only then (or POLLERR when it fails), and
//!   someone must drive the handshake — the wait itself does;
//! - decrypted data may be waiting in rustls while the kernel has nothing:
//!   that is POLLIN without asking the kernel;
//! - bytes in the kernel may be no data at all (a session ticket, half a
//!   record): that is not POLLIN, so they are decrypted here to know.
//!
//! So for a TLS descriptor the kernel is asked for what the TLS state
//! needs ([`crate::conn::TlsSocket::poll_interest`]), and what it reports is turned into
//! what the program sees ([`crate::conn::TlsSocket::poll_complete`]). Waits that end with
//! nothing to report go on until the program's timeout.

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use libc::{epoll_event, pollfd};

use crate::conn::{State, RESOLVING_RECHECK};
use crate::table::{self, Handle};
use crate::real;

/// Milliseconds until `until` for poll(), -1 for no limit, rounded up so
/// a wait never ends just before its time.
fn millis_until(until: Option<Instant>) -> c_int {
    match until {
        None => -1,
        Some(until) => {
            let left = until.saturating_duration_since(Instant::now());
            left.as_micros().div_ceil(1000).min(c_int::MAX as u128) as c_int
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn deadline_after(timeout_ms: c_int) -> Option<Instant> {
    (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64))
}

// ---------------------------------------------------------------------------
// poll and select
// ---------------------------------------------------------------------------

struct Watched {
    index: usize,
    fd: c_int,
    handle: Handle,
    app: i16,
}

/// How to wait in the kernel: poll, or ppoll with the program's signal mask.
pub type KernelPoll<'a> = &'a mut dyn FnMut(&mut [pollfd], c_int) -> c_int;

pub fn plain_poll(fds: &mut [pollfd], timeout_ms: c_int) -> c_int {
    // SAFETY: fds is a valid array of fds.len() pollfds.
    unsafe { real::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }
}

/// poll() for a set with TLS descriptors, waiting with `kernel_poll`;
/// `None` when it has none (the caller then calls the C library as is).
pub fn poll(fds: &mut [pollfd], timeout_ms: c_int, kernel_poll: KernelPoll<'_>) -> Option<c_int> {
    if !table::any() {
        return None;
    }
    let watched: Vec<Watched> = fds
        .iter()
        .enumerate()
        .filter_map(|(index, p)| table::lookup(p.fd).map(|handle| Watched { index, fd: p.fd, handle, app: p.events }))
        .collect();
    if watched.is_empty() {
        return None;
    }
    let until = deadline_after(timeout_ms);
    let mut kernel: Vec<pollfd> = fds.to_vec();
    loop {
        let mut ready_now = false;
        let mut wake_by = until;
        for w in &watched {
            let mut socket = table::lock(&w.handle);
            let (events, ready) = socket.poll_interest(w.app);
            kernel[w.index].events = events;
            // An unconnected TCP socket polls POLLHUP whatever is asked:
            // while its name is resolved, leave it out (poll skips fd -1).
            kernel[w.index].fd = if socket.state == State::Resolving { -1 } else { w.fd };
            ready_now |= ready != 0;
            wake_by = earliest(wake_by, socket.deadline());
            if socket.state == State::Resolving {
                wake_by = earliest(wake_by, Some(Instant::now() + RESOLVING_RECHECK));
            }
        }
        let wait = if ready_now { 0 } else { millis_until(wake_by) };
        let n = kernel_poll(&mut kernel, wait);
        if n < 0 {
            return Some(n);
        }
        for (program, asked) in fds.iter_mut().zip(&kernel) {
            program.revents = asked.revents;
        }
        for w in &watched {
            let revents = kernel[w.index].revents;
            let changed = {
                let mut socket = table::lock(&w.handle);
                let before = socket.state;
                fds[w.index].revents = socket.poll_complete(w.fd, w.app, revents);
                socket.state != before
            };
            if changed {
                // For a thread waiting in epoll_wait on the same socket.
                resync(w.fd, &w.handle);
            }
        }
        let count = fds.iter().filter(|p| p.revents != 0).count() as c_int;
        if count > 0 || until.is_some_and(|u| Instant::now() >= u) {
            return Some(count);
        }
    }
}

/// Milliseconds for a wait of `timeout` (null: no limit, -1), rounded up.
///
/// # Safety
/// `timeout` is null or the caller's valid timespec.
pub unsafe fn timespec_ms(timeout: *const libc::timespec) -> c_int {
    if timeout.is_null() {
        return -1;
    }
    // SAFETY: the caller's contract.
    let ts = unsafe { *timeout };
    #[allow(clippy::useless_conversion)] // time_t is i64 only on 64-bit targets
    let ms = i64::from(ts.tv_sec).saturating_mul(1000).saturating_add((i64::from(ts.tv_nsec) + 999_999) / 1_000_000);
    ms.clamp(0, c_int::MAX as i64) as c_int
}

/// A kernel wait that applies the program's signal mask (ppoll's), for
/// ppoll and pselect.
pub fn masked_poll(mask: *const libc::sigset_t) -> impl FnMut(&mut [pollfd], c_int) -> c_int {
    move |kernel: &mut [pollfd], ms: c_int| {
        let ts = libc::timespec { tv_sec: (ms / 1000) as libc::time_t, tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long };
        let wait = if ms < 0 { std::ptr::null() } else { &ts as *const libc::timespec };
        // SAFETY: a valid array and timespec; the mask is the program's
        // (null or valid), as ppoll and pselect take it.
        unsafe { real::ppoll(kernel.as_mut_ptr(), kernel.len() as libc::nfds_t, wait, mask) }
    }
}

/// select() (and pselect(), with `kernel_poll` applying its signal mask)
/// for sets with TLS descriptors, done with [`poll`]; `None` when the sets
/// have none.
///
/// # Safety
/// The set pointers are null or valid `fd_set`s covering `nfds`.
pub unsafe fn select(
    nfds: c_int,
    read: *mut libc::fd_set,
    write: *mut libc::fd_set,
    except: *mut libc::fd_set,
    timeout_ms: c_int,
    kernel_poll: KernelPoll<'_>,
) -> Option<c_int> {
    if !table::any() {
        return None;
    }
    // SAFETY: the caller's sets are valid or null.
    let is_set = |set: *mut libc::fd_set, fd: c_int| !set.is_null() && unsafe { libc::FD_ISSET(fd, set) };
    let mut fds = Vec::new();
    let mut any_tls = false;
    for fd in 0..nfds.clamp(0, libc::FD_SETSIZE as c_int) {
        let mut events = 0;
        if is_set(read, fd) {
            events |= libc::POLLIN;
        }
        if is_set(write, fd) {
            events |= libc::POLLOUT;
        }
        if is_set(except, fd) {
            events |= libc::POLLPRI;
        }
        if events != 0 {
            any_tls |= table::lookup(fd).is_some();
            fds.push(pollfd { fd, events, revents: 0 });
        }
    }
    if !any_tls {
        return None;
    }
    let result = poll(&mut fds, timeout_ms, kernel_poll)?;
    if result < 0 {
        return Some(result);
    }
    let mut count = 0;
    for set in [read, write, except] {
        if !set.is_null() {
            // SAFETY: a valid set.
            unsafe { libc::FD_ZERO(set) };
        }
    }
    for p in &fds {
        let marks = [
            (read, libc::POLLIN | libc::POLLHUP | libc::POLLERR, libc::POLLIN),
            (write, libc::POLLOUT | libc::POLLERR, libc::POLLOUT),
            (except, libc::POLLPRI, libc::POLLPRI),
        ];
        for (set, reported, asked) in marks {
            if !set.is_null() && p.events & asked != 0 && p.revents & reported != 0 {
                // SAFETY: a valid set; fd < FD_SETSIZE.
                unsafe { libc::FD_SET(p.fd, set) };
                count += 1;
            }
        }
    }
    Some(count)
}

// ---------------------------------------------------------------------------
// epoll
// ---------------------------------------------------------------------------

/// TLS descriptors are registered with the kernel under this tag and their
/// number instead of the program's data, so their events can be told
/// apart and translated. The high half cannot be a user-space pointer
/// (canonical x86-64 and AArch64 addresses stop below 2^48).
const TAG: u64 = 0x7115_0cd5_0000_0000;
const TAG_MASK: u64 = 0xffff_ffff_0000_0000;
const _: () = assert!(TAG >= 1 << 48 && TAG & !TAG_MASK == 0);

/// epoll flags (as opposed to event bits) in `epoll_event.events`.
const FLAG_BITS: u32 = (libc::EPOLLET | libc::EPOLLONESHOT | libc::EPOLLWAKEUP | libc::EPOLLEXCLUSIVE) as u32;

#[derive(Clone, Copy, Debug)]
struct Registration {
    /// What the program asked for, flags included.
    app: u32,
    /// The program's data, given back with its events.
    data: u64,
    /// What the kernel currently watches for.
    kernel: u32,
    /// EPOLLONESHOT fired: nothing more until the program re-arms it.
    disarmed: bool,
}

/// epoll instance -> TLS descriptor -> registration.
type Registry = HashMap<c_int, HashMap<c_int, Registration>>;

static REGISTERED: AtomicUsize = AtomicUsize::new(0);

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the kernel should watch for a registration, given the socket's
/// state: the program's flags apply once the connection is established;
/// before, progress needs level-triggered wakeups.
fn kernel_interest(handle: &Handle, app: u32, disarmed: bool) -> (u32, i16) {
    if disarmed {
        return (libc::EPOLLONESHOT as u32, 0);
    }
    let mut socket = table::lock(handle);
    let (events, ready) = socket.poll_interest(app as u16 as i16);
    let flags = match socket.state {
        // A listening socket's descriptor is its eventfd, whose kernel
        // readiness is the program's (edge-triggered, one-shot...) as is.
        State::Established | State::Listening => app & FLAG_BITS,
        // An unconnected TCP socket reports EPOLLHUP whatever is asked:
        // one-shot, it says so once and then stays quiet until connecting.
        State::Resolving => libc::EPOLLONESHOT as u32,
        _ => 0,
    };
    (u32::from(events as u16) | flags, ready)
}

fn kernel_ctl(epfd: c_int, op: c_int, fd: c_int, events: u32) -> c_int {
    let mut event = epoll_event { events, u64: TAG | fd as u32 as u64 };
    // SAFETY: a valid event for the C library's epoll_ctl.
    unsafe { real::epoll_ctl(epfd, op, fd, &mut event) }
}

/// epoll_ctl() for a TLS descriptor; `None` for any other descriptor.
///
/// # Safety
/// `event` is null or the caller's valid epoll_event.
pub unsafe fn ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> Option<c_int> {
    let handle = table::lookup(fd)?;
    if op == libc::EPOLL_CTL_DEL {
        // SAFETY: DEL ignores the event.
        let result = unsafe { real::epoll_ctl(epfd, op, fd, event) };
        if result == 0 {
            forget_registration(epfd, fd);
        }
        return Some(result);
    }
    if event.is_null() || (op != libc::EPOLL_CTL_ADD && op != libc::EPOLL_CTL_MOD) {
        // SAFETY: the C library reports the error.
        return Some(unsafe { real::epoll_ctl(epfd, op, fd, event) });
    }
    // SAFETY: non-null, the caller's event.
    let asked = unsafe { event.read_unaligned() };
    let (kernel, _) = kernel_interest(&handle, asked.events, false);
    let result = kernel_ctl(epfd, op, fd, kernel);
    if result == 0 {
        let registration = Registration { app: asked.events, data: asked.u64, kernel, disarmed: false };
        if registry().entry(epfd).or_default().insert(fd, registration).is_none() {
            REGISTERED.fetch_add(1, Ordering::AcqRel);
        }
    }
    Some(result)
}

fn forget_registration(epfd: c_int, fd: c_int) {
    let mut registry = registry();
    if let Some(set) = registry.get_mut(&epfd) {
        if set.remove(&fd).is_some() {
            REGISTERED.fetch_sub(1, Ordering::AcqRel);
        }
        if set.is_empty() {
            registry.remove(&epfd);
        }
    }
}

/// `fd` is being closed: as the kernel drops a closed descriptor from every
/// epoll set, and a closed epoll instance, so do we.
pub fn forget_descriptor(fd: c_int, last_of_socket: bool) {
    if REGISTERED.load(Ordering::Acquire) == 0 {
        return;
    }
    let mut registry = registry();
    if let Some(set) = registry.remove(&fd) {
        REGISTERED.fetch_sub(set.len(), Ordering::AcqRel);
    }
    if last_of_socket {
        let mut removed = 0;
        registry.retain(|_, set| {
            removed += usize::from(set.remove(&fd).is_some());
            !set.is_empty()
        });
        REGISTERED.fetch_sub(removed, Ordering::AcqRel);
    }
}

/// `fd`'s socket changed state outside this module's epoll_wait (a connect
/// started, a handshake finished in a read): brings the kernel's interest
/// in line now, for a thread already waiting in epoll_wait with the old one.
pub fn resync(fd: c_int, handle: &Handle) {
    if REGISTERED.load(Ordering::Acquire) == 0 {
        return;
    }
    let registrations: Vec<(c_int, Registration)> =
        registry().iter().filter_map(|(&epfd, set)| set.get(&fd).map(|r| (epfd, *r))).collect();
    for (epfd, registration) in registrations {
        let (kernel, _) = kernel_interest(handle, registration.app, registration.disarmed);
        if kernel != registration.kernel && kernel_ctl(epfd, libc::EPOLL_CTL_MOD, fd, kernel) == 0 {
            if let Some(r) = registry().get_mut(&epfd).and_then(|set| set.get_mut(&fd)) {
                r.kernel = kernel;
            }
        }
    }
}

/// `fd` is about to name another file (listen() puts an eventfd under
/// it): takes the old file out of the epoll sets the program put `fd` in,
/// as it stays open elsewhere and would go on reporting there;
/// [`reregister`] adds the new one.
pub fn unregister(fd: c_int) {
    if REGISTERED.load(Ordering::Acquire) == 0 {
        return;
    }
    for (&epfd, set) in registry().iter() {
        if set.contains_key(&fd) {
            // SAFETY: DEL takes no event.
            unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        }
    }
}

/// A new kernel socket now sits under `fd`: registers it again wherever
/// the program had registered `fd`.
pub fn reregister(fd: c_int) {
    if REGISTERED.load(Ordering::Acquire) == 0 {
        return;
    }
    let registry = registry();
    for (&epfd, set) in registry.iter() {
        if let Some(registration) = set.get(&fd) {
            kernel_ctl(epfd, libc::EPOLL_CTL_ADD, fd, registration.kernel);
        }
    }
}

/// epoll_wait()/epoll_pwait() on an instance with TLS descriptors; `None`
/// when it has none.
///
/// # Safety
/// `events` is valid for `max` entries; `sigmask` is null or valid.
pub unsafe fn wait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout_ms: c_int, sigmask: *const libc::sigset_t) -> Option<c_int> {
    if REGISTERED.load(Ordering::Acquire) == 0 || max <= 0 {
        return None;
    }
    let until = deadline_after(timeout_ms);
    loop {
        let snapshot: Vec<(c_int, Registration)> = match registry().get(&epfd) {
            Some(set) => set.iter().map(|(&fd, &r)| (fd, r)).collect(),
            None => return None,
        };
        // Bring the kernel's interest in line with each socket's state, and
        // collect what is ready without the kernel.
        let mut ready_now = Vec::new();
        let mut wake_by = until;
        let mut updates = Vec::new();
        for (fd, registration) in &snapshot {
            let Some(handle) = table::lookup(*fd) else { continue };
            let (kernel, ready) = kernel_interest(&handle, registration.app, registration.disarmed);
            if kernel != registration.kernel {
                kernel_ctl(epfd, libc::EPOLL_CTL_MOD, *fd, kernel);
                updates.push((*fd, kernel));
            }
            if ready != 0 {
                ready_now.push((*fd, ready));
            }
            let socket = table::lock(&handle);
            wake_by = earliest(wake_by, socket.deadline());
            if socket.state == State::Resolving {
                wake_by = earliest(wake_by, Some(Instant::now() + RESOLVING_RECHECK));
            }
        }
        let wait = if ready_now.is_empty() { millis_until(wake_by) } else { 0 };
        // SAFETY: the caller's buffer and mask.
        let n = unsafe { real::epoll_pwait(epfd, events, max, wait, sigmask) };
        if n < 0 {
            return Some(n);
        }
        let mut out = 0usize;
        let mut reported = Vec::new();
        let mut disarm = Vec::new();
        for i in 0..n as usize {
            // SAFETY: the kernel filled n entries (packed on x86-64: read unaligned).
            let event = unsafe { events.add(i).read_unaligned() };
            let translated = if event.u64 & TAG_MASK == TAG {
                let fd = event.u64 as u32 as c_int;
                // Registered by another thread since the snapshot: the
                // registry has it.
                let found = snapshot
                    .iter()
                    .find(|(f, _)| *f == fd)
                    .map(|(_, r)| *r)
                    .or_else(|| registry().get(&epfd).and_then(|set| set.get(&fd)).copied());
                match (found, table::lookup(fd)) {
                    (Some(registration), Some(handle)) => {
                        let (ready, established) = {
                            let mut socket = table::lock(&handle);
                            let ready = socket.poll_complete(fd, registration.app as u16 as i16, event.events as u16 as i16);
                            (ready, socket.state == State::Established)
                        };
                        reported.push(fd);
                        if ready == 0 {
                            // Nothing for the program (a session ticket): the
                            // program's one-shot registration, which the
                            // kernel just disarmed, must wait on.
                            let app_one_shot = registration.app & libc::EPOLLONESHOT as u32 != 0;
                            if established && app_one_shot && !registration.disarmed {
                                kernel_ctl(epfd, libc::EPOLL_CTL_MOD, fd, registration.kernel);
                            }
                            None
                        } else {
                            if registration.app & libc::EPOLLONESHOT as u32 != 0 {
                                disarm.push(fd);
                            }
                            Some(epoll_event { events: u32::from(ready as u16), u64: registration.data })
                        }
                    }
                    _ => None,
                }
            } else {
                Some(event)
            };
            if let Some(translated) = translated {
                // SAFETY: out <= i < n <= max: within the caller's buffer.
                unsafe { events.add(out).write_unaligned(translated) };
                out += 1;
            }
        }
        for (fd, ready) in ready_now {
            if out >= max as usize || reported.contains(&fd) {
                continue;
            }
            let Some((_, registration)) = snapshot.iter().find(|(f, _)| *f == fd) else { continue };
            if registration.app & libc::EPOLLONESHOT as u32 != 0 {
                disarm.push(fd);
            }
            let event = epoll_event { events: u32::from(ready as u16), u64: registration.data };
            // SAFETY: out < max.
            unsafe { events.add(out).write_unaligned(event) };
            out += 1;
        }
        {
            let mut registry = registry();
            if let Some(set) = registry.get_mut(&epfd) {
                for (fd, kernel) in updates {
                    if let Some(r) = set.get_mut(&fd) {
                        r.kernel = kernel;
                    }
                }
                for fd in disarm {
                    if let Some(r) = set.get_mut(&fd) {
                        r.disarmed = true;
                    }
                }
            }
        }
        if out > 0 || until.is_some_and(|u| Instant::now() >= u) {
            return Some(out as c_int);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_and_combine() {
        assert_eq!(millis_until(None), -1);
        let soon = Instant::now() + Duration::from_micros(1500);
        assert!((1..=2).contains(&millis_until(Some(soon))));
        assert_eq!(millis_until(Some(Instant::now())), 0);
        let a = Instant::now();
        let b = a + Duration::from_secs(1);
        assert_eq!(earliest(Some(b), Some(a)), Some(a));
        assert_eq!(earliest(None, Some(b)), Some(b));
        assert_eq!(deadline_after(-1), None);
    }
}
