//! Which descriptors are IPPROTO_TLS sockets.
//!
//! Every intercepted call asks this first, for every descriptor, so the
//! answer for ordinary descriptors must cost next to nothing: one atomic
//! load while the process has no TLS socket, one bit test after that.
//! Descriptors made with dup() share one [`TlsSocket`], as they share one
//! kernel socket.

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};

use crate::conn::TlsSocket;

pub type Handle = Arc<Mutex<TlsSocket>>;

/// Descriptors below this have a bit in [`BITS`]; above, the map decides.
const BITMAP_FDS: usize = 1 << 16;
static BITS: [AtomicU64; BITMAP_FDS / 64] = [const { AtomicU64::new(0) }; BITMAP_FDS / 64];
/// TLS descriptors in the table; zero means nothing to look up.
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn map() -> &'static RwLock<HashMap<c_int, Handle>> {
    static MAP: OnceLock<RwLock<HashMap<c_int, Handle>>> = OnceLock::new();
    MAP.get_or_init(Default::default)
}

/// Whether `fd` may be a TLS socket: false is certain, true needs the map.
#[inline(always)]
fn maybe_tls(fd: c_int) -> bool {
    if COUNT.load(Ordering::Acquire) == 0 || fd < 0 {
        return false;
    }
    let fd = fd as usize;
    if fd >= BITMAP_FDS {
        return true;
    }
    BITS[fd / 64].load(Ordering::Acquire) & (1 << (fd % 64)) != 0
}

fn set_bit(fd: c_int, on: bool) {
    let fd = fd as usize;
    if fd < BITMAP_FDS {
        let mask = 1u64 << (fd % 64);
        if on {
            BITS[fd / 64].fetch_or(mask, Ordering::AcqRel);
        } else {
            BITS[fd / 64].fetch_and(!mask, Ordering::AcqRel);
        }
    }
}

/// The TLS socket behind `fd`, if it is one.
#[inline]
pub fn lookup(fd: c_int) -> Option<Handle> {
    if !maybe_tls(fd) {
        return None;
    }
    map().read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(&fd).cloned()
}

/// Whether the process has any TLS socket (the other fast path).
#[inline(always)]
pub fn any() -> bool {
    COUNT.load(Ordering::Acquire) != 0
}

/// Makes `fd` a TLS socket (a new one, or another descriptor of one).
pub fn insert(fd: c_int, socket: Handle) {
    let mut map = map().write().unwrap_or_else(|poisoned| poisoned.into_inner());
    if map.insert(fd, socket).is_none() {
        COUNT.fetch_add(1, Ordering::AcqRel);
    }
    set_bit(fd, true);
}

/// Forgets `fd` (it is being closed or replaced); returns its socket.
pub fn remove(fd: c_int) -> Option<Handle> {
    if !maybe_tls(fd) {
        return None;
    }
    let mut map = map().write().unwrap_or_else(|poisoned| poisoned.into_inner());
    let removed = map.remove(&fd);
    if removed.is_some() {
        set_bit(fd, false);
        COUNT.fetch_sub(1, Ordering::AcqRel);
    }
    removed
}

/// The TLS descriptors in `first..=last`.
pub fn in_range(first: c_int, last: c_int) -> Vec<c_int> {
    if !any() {
        return Vec::new();
    }
    let map = map().read().unwrap_or_else(|poisoned| poisoned.into_inner());
    map.keys().copied().filter(|fd| (first..=last).contains(fd)).collect()
}

/// Locks a socket; a panic in another thread while it held the lock does
/// not make the socket unusable (its state is consistent between calls).
pub fn lock(handle: &Handle) -> MutexGuard<'_, TlsSocket> {
    handle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// fork
// ---------------------------------------------------------------------------

/// Bumped in the parent and in the child at every fork, so a socket can
/// tell it may now be open in another process too.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);

pub fn fork_generation() -> u64 {
    FORK_GENERATION.load(Ordering::Acquire)
}

extern "C" fn after_fork() {
    FORK_GENERATION.fetch_add(1, Ordering::AcqRel);
}

/// Every TLS socket of the process with one of its descriptors.
pub fn all() -> Vec<(c_int, Handle)> {
    let map = map().read().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut seen: Vec<(c_int, Handle)> = Vec::new();
    for (&fd, handle) in map.iter() {
        if !seen.iter().any(|(_, h)| Arc::ptr_eq(h, handle)) {
            seen.push((fd, handle.clone()));
        }
    }
    seen
}

/// At exit the kernel closes the descriptors, so close() never runs: end
/// the TLS streams here, as the guest's kernel closing them makes the
/// device do.
extern "C" fn at_exit() {
    for (fd, handle) in all() {
        // Another thread may be inside a call on this socket: skip it
        // rather than wait at exit.
        if let Ok(mut socket) = handle.try_lock() {
            socket.last_close(fd);
        }
    }
}

/// Registers the fork and exit handlers, once, before the first TLS socket
/// exists.
pub fn watch_forks_and_exit() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: the fork handlers are plain functions that only touch an
        // atomic, which is async-signal-safe as the child handler must be;
        // at_exit takes no arguments and returns, as atexit requires.
        unsafe {
            libc::pthread_atfork(None, Some(after_fork), Some(after_fork));
            libc::atexit(at_exit);
        }
    });
}
