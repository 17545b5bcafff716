//! Options at SOL_SOCKET, IPPROTO_IP, IPPROTO_TCP and IPPROTO_IPV6 on an
//! IPPROTO_TLS socket: the table of spec 2.6.10, shared with the device
//! (`tls_engine::sockopt`). The program's TCP socket is the host socket, so
//! what the table lets through goes to it and Linux answers; refusals are
//! EPERM with a warning on stderr at most every ten seconds.

use std::ffi::c_int;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tls_engine::errno::Errno;
use tls_engine::sockopt::{disposition, level_name, Access, Disposition, Family};

/// What to do with a call at a level other than IPPROTO_TLS.
pub enum Answer {
    /// Pass the call to the TCP socket.
    Kernel,
    /// Answer IPPROTO_TLS (GET of IP_PROTOCOL, SO_PROTOCOL).
    Protocol,
    Fail(Errno),
}

fn family_of(family: c_int) -> Family {
    if family == libc::AF_INET6 {
        Family::Inet6
    } else {
        Family::Inet
    }
}

/// `value_start`: the first bytes of the program's value (at most 4; the
/// table looks at no more).
pub fn answer(family: c_int, access: Access, level: c_int, optname: c_int, value_start: &[u8]) -> Answer {
    let (level, optname) = (level as u32, optname as u32);
    match disposition(family_of(family), access, level, optname, value_start) {
        Disposition::Host | Disposition::Own => Answer::Kernel,
        Disposition::Protocol => Answer::Protocol,
        Disposition::Fail(errno) => Answer::Fail(errno),
        Disposition::Refused => {
            warn_refused(level, optname);
            Answer::Fail(Errno::EPERM)
        }
    }
}

/// Seconds since the epoch of the last refusal warning.
static LAST_WARNING: AtomicU64 = AtomicU64::new(0);
const WARNING_INTERVAL_SECS: u64 = 10;

fn warn_refused(level: u32, optname: u32) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now.saturating_sub(last) < WARNING_INTERVAL_SECS && last != 0 {
        return;
    }
    if LAST_WARNING.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        eprintln!("libipprototls: the policy refuses socket option {optname} at {} on IPPROTO_TLS sockets: EPERM", level_name(level));
    }
}
