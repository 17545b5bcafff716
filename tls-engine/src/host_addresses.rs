//! The addresses configured on the host's interfaces (a bridge such as
//! 192.168.122.1, the LAN address, container bridges): connecting to one
//! reaches the host's own services as surely as loopback does, so the
//! destination policy counts them as host-local. Read at start and at
//! every policy load, and again when a connect is checked if the last
//! reading is older than [`REFRESH`] (a netlink dump: cheap, but not per
//! connect).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How old a reading may be when a connect is checked.
pub const REFRESH: Duration = Duration::from_secs(1);

struct Reading {
    at: Instant,
    addresses: Arc<[IpAddr]>,
}

static LAST: Mutex<Option<Reading>> = Mutex::new(None);

/// The host's interface addresses, read again when the last reading is
/// older than [`REFRESH`].
pub fn current() -> Arc<[IpAddr]> {
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    match last.as_ref() {
        Some(reading) if reading.at.elapsed() < REFRESH => reading.addresses.clone(),
        _ => refresh_locked(&mut last),
    }
}

/// Reads the host's interface addresses now (a policy is being loaded).
pub fn refresh() -> Arc<[IpAddr]> {
    refresh_locked(&mut LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

fn refresh_locked(last: &mut Option<Reading>) -> Arc<[IpAddr]> {
    let addresses = match read() {
        Ok(addresses) => addresses.into(),
        Err(error) => {
            // Keep what was known: addresses that went away are harmless
            // to deny, and a host without them loses nothing.
            tracing::warn!(%error, "cannot read the host's interface addresses (getifaddrs)");
            last.as_ref().map(|reading| reading.addresses.clone()).unwrap_or_else(|| Arc::from(Vec::new()))
        }
    };
    *last = Some(Reading { at: Instant::now(), addresses: addresses.clone() });
    addresses
}

/// Every IPv4 and IPv6 address on the host's interfaces, sorted.
pub fn read() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores the head of a list it allocated in `head`,
    // freed below with freeifaddrs, once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut addresses = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, which
        // stays valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a socket address whose
            // family field tells its type.
            match i32::from(unsafe { (*entry.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    // SAFETY: an AF_INET address is a sockaddr_in.
                    let sin = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                    addresses.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))));
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let sin6 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                    addresses.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                }
                _ => {}
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once; no reference
    // into the list outlives this.
    unsafe { libc::freeifaddrs(head) };
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}
