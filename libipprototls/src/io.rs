//! The blocking behaviour of connect, read and write on TLS descriptors.
//!
//! [`TlsSocket`](crate::conn::TlsSocket) never waits; these loops wait the
//! way the kernel would for a TCP socket — not at all for a non-blocking
//! descriptor or MSG_DONTWAIT, up to SO_RCVTIMEO/SO_SNDTIMEO otherwise, and
//! until a signal (EINTR) — always with the socket's lock released.

use std::ffi::c_int;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use tls_engine::destination::{self, Destination};
use tls_engine::errno::{Errno, Failure};

use crate::conn::{Progress, State};
use crate::table::{self, Handle};
use crate::{readiness, real};

/// Whether the descriptor is in non-blocking mode (O_NONBLOCK).
pub fn nonblocking(fd: c_int) -> bool {
    // SAFETY: F_GETFL on a descriptor the caller passed us.
    let flags = unsafe { real::fcntl(fd, libc::F_GETFL, 0) };
    flags >= 0 && flags & libc::O_NONBLOCK != 0
}

/// SO_RCVTIMEO or SO_SNDTIMEO; `None` when unset (wait forever).
fn socket_timeout(fd: c_int, option: c_int) -> Option<Duration> {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: tv and len are valid for getsockopt to write.
    let result = unsafe { real::getsockopt(fd, libc::SOL_SOCKET, option, (&mut tv as *mut libc::timeval).cast(), &mut len) };
    let timeout = Duration::new(tv.tv_sec.max(0) as u64, (tv.tv_usec.max(0) as u32) * 1000);
    (result == 0 && !timeout.is_zero()).then_some(timeout)
}

/// Waits for `events` on the kernel socket: Ok when they (or an error)
/// came, EAGAIN when `until` passed, EINTR on a signal.
fn wait_for(fd: c_int, events: i16, until: Option<Instant>) -> Result<(), Errno> {
    let mut wanted = libc::pollfd { fd, events, revents: 0 };
    let timeout = match until {
        None => -1,
        Some(until) => until.saturating_duration_since(Instant::now()).as_millis().min(c_int::MAX as u128) as c_int,
    };
    // SAFETY: one valid pollfd.
    match unsafe { real::poll(&mut wanted, 1, timeout) } {
        n if n > 0 => Ok(()),
        0 => Err(Errno::EAGAIN),
        _ => Err(Errno(real::errno() as u32)),
    }
}

/// connect(): starts connecting and, for a blocking descriptor, waits for
/// the handshake. A non-blocking one gets EINPROGRESS; poll reports
/// POLLOUT once the handshake is done, or POLLERR with SO_ERROR set.
pub fn connect(handle: &Handle, fd: c_int, destination: &Destination) -> Result<(), Errno> {
    {
        let mut socket = table::lock(handle);
        match socket.state {
            // A listening TCP socket answers EISCONN too.
            State::Established | State::Listening => return Err(Errno::EISCONN),
            State::Resolving | State::Connecting | State::Handshaking => return Err(Errno::EALREADY),
            // A failure a non-blocking connect has not reported yet is the
            // answer to this connect, as for TCP.
            State::Failed if socket.pending_error_set() => return Err(socket.take_pending_error().expect("set")),
            State::Created | State::Failed => {}
        }
        socket.admit()?;
        if destination.needs_resolution() && nonblocking(fd) {
            // The system resolver blocks: a non-blocking connect must not.
            socket.start_resolving();
            drop(socket);
            resolve_in_background(handle.clone(), fd, destination.clone());
            readiness::resync(fd, handle);
            return Err(Errno(libc::EINPROGRESS as u32));
        }
        socket.start_connect(fd, destination).map_err(|failure| failure.errno)?;
        // Gets the ClientHello out early. Whatever happens next, even a
        // failure already, a non-blocking connect reports through poll
        // (POLLOUT, or POLLERR and SO_ERROR), as TCP's does.
        socket.progress(fd);
    }
    readiness::resync(fd, handle);
    if nonblocking(fd) {
        return Err(Errno(libc::EINPROGRESS as u32));
    }
    finish_connect(handle, fd)
}

/// Resolves `destination` on a thread of its own, then connects `fd` if it
/// is still this socket's descriptor (it may have been closed, even reused,
/// meanwhile; holding the socket's lock keeps close() from finishing while
/// this looks and connects).
fn resolve_in_background(handle: Handle, fd: c_int, destination: Destination) {
    let (context, server_name) = table::lock(&handle).resolver_inputs();
    let work = {
        let handle = handle.clone();
        move || {
            let result = destination::resolve(context.policy(), &destination, server_name.as_deref());
            {
                let mut socket = table::lock(&handle);
                let still_ours = table::lookup(fd).is_some_and(|current| std::sync::Arc::ptr_eq(&current, &handle));
                if !still_ours {
                    return;
                }
                socket.resolved(fd, &destination, result);
                socket.progress(fd);
            }
            readiness::resync(fd, &handle);
        }
    };
    if std::thread::Builder::new().name("ipprototls-resolve".into()).spawn(work).is_err() {
        // Reported like any failure of a non-blocking connect (POLLERR,
        // SO_ERROR); with an error result, the destination goes unused.
        let failure = Failure::new(Errno::EAGAIN, "cannot start a thread to resolve the name");
        table::lock(&handle).resolved(fd, &Destination::Address(([0, 0, 0, 0], 0).into()), Err(failure));
    }
}

/// Waits for a connect in progress to end.
fn finish_connect(handle: &Handle, fd: c_int) -> Result<(), Errno> {
    loop {
        let (wants, deadline) = {
            let mut socket = table::lock(handle);
            socket.progress(fd);
            match socket.state {
                State::Established => return Ok(()),
                State::Failed => return Err(socket.take_pending_error().unwrap_or(Errno::ECONNREFUSED)),
                State::Created | State::Listening => return Err(Errno::ENOTCONN),
                // Blocking connects resolve in connect() itself; a socket
                // still resolving was started non-blocking by another call.
                State::Resolving => (0, None),
                State::Connecting | State::Handshaking => (socket.connect_wants(), socket.deadline()),
            }
        };
        if wants == 0 {
            std::thread::sleep(crate::conn::RESOLVING_RECHECK);
            continue;
        }
        match wait_for(fd, wants, deadline) {
            // The deadline passed: progress() turns that into ETIMEDOUT.
            Ok(()) | Err(Errno::EAGAIN) => {}
            // Interrupted: the connect goes on; the next one says EALREADY.
            Err(errno) => return Err(errno),
        }
    }
}

/// read()/recv(): plaintext into `bufs`.
pub fn read(handle: &Handle, fd: c_int, bufs: &mut [&mut [u8]], flags: c_int) -> Result<usize, Errno> {
    if flags & libc::MSG_OOB != 0 {
        return Err(Errno::EINVAL);
    }
    let peek = flags & libc::MSG_PEEK != 0;
    let dont_wait = flags & libc::MSG_DONTWAIT != 0;
    let wanted: usize = bufs.iter().map(|b| b.len()).sum();
    let mut filled = 0;
    loop {
        let (progress, pending_output, connecting, resolving, changed) = {
            let mut socket = table::lock(handle);
            let before = socket.state;
            let rest = &mut advance_mut(bufs, filled);
            let progress = socket.read(fd, rest, peek);
            (progress, socket.pending_output(), socket.connect_wants(), socket.state == State::Resolving, socket.state != before)
        };
        if changed {
            readiness::resync(fd, handle);
        }
        match progress {
            Progress::Done(0) => return Ok(filled),
            Progress::Done(n) => {
                filled += n;
                // MSG_WAITALL: on until the buffer is full (or the stream ends).
                if flags & libc::MSG_WAITALL == 0 || peek || filled == wanted {
                    return Ok(filled);
                }
                continue;
            }
            Progress::Failed(errno) => return if filled > 0 { Ok(filled) } else { Err(errno) },
            Progress::WouldBlock => {}
        }
        if dont_wait || nonblocking(fd) {
            return if filled > 0 { Ok(filled) } else { Err(Errno::EAGAIN) };
        }
        let waited = if resolving {
            std::thread::sleep(crate::conn::RESOLVING_RECHECK);
            Ok(())
        } else if connecting != 0 {
            wait_for(fd, connecting, None)
        } else if pending_output {
            let until = socket_timeout(fd, libc::SO_RCVTIMEO).map(|t| Instant::now() + t);
            wait_for(fd, libc::POLLIN | libc::POLLOUT, until)
        } else {
            wait_readable(fd)
        };
        if let Err(errno) = waited {
            return if filled > 0 { Ok(filled) } else { Err(errno) };
        }
    }
}

/// Waits for bytes from the peer with a blocking MSG_PEEK, so that the
/// kernel itself applies SO_RCVTIMEO and SA_RESTART as for a TCP read.
fn wait_readable(fd: c_int) -> Result<(), Errno> {
    let mut byte = 0u8;
    // SAFETY: one byte of valid buffer.
    let n = unsafe { real::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK) };
    match n {
        n if n >= 0 => Ok(()),
        _ => match real::errno() {
            libc::EAGAIN | libc::EINTR => Err(Errno(real::errno() as u32)),
            // Resets and the like: the next read from rustls reports them.
            _ => Ok(()),
        },
    }
}

/// write()/send(): all of `bufs` for a blocking descriptor (records on
/// their way to the kernel), as much as fits without waiting otherwise.
pub fn write(handle: &Handle, fd: c_int, bufs: &[IoSlice<'_>], flags: c_int) -> Result<usize, Errno> {
    if flags & libc::MSG_OOB != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let dont_wait = flags & libc::MSG_DONTWAIT != 0 || nonblocking(fd);
    let until = || socket_timeout(fd, libc::SO_SNDTIMEO).map(|t| Instant::now() + t);
    let mut sent = 0;
    loop {
        let (progress, connecting, resolving, changed) = {
            let mut socket = table::lock(handle);
            let before = socket.state;
            let progress = socket.write(fd, &advance(bufs, sent));
            (progress, socket.connect_wants(), socket.state == State::Resolving, socket.state != before)
        };
        if changed {
            readiness::resync(fd, handle);
        }
        match progress {
            Progress::Done(n) => {
                sent += n;
                if sent < total && n > 0 {
                    continue;
                }
                if !dont_wait {
                    // A blocking write returns with its records in the kernel.
                    let _ = drain(handle, fd, until());
                }
                return Ok(sent);
            }
            Progress::Failed(errno) => return if sent > 0 { Ok(sent) } else { Err(errno) },
            Progress::WouldBlock if dont_wait => return if sent > 0 { Ok(sent) } else { Err(Errno::EAGAIN) },
            Progress::WouldBlock => {}
        }
        if resolving {
            std::thread::sleep(crate::conn::RESOLVING_RECHECK);
            continue;
        }
        let events = if connecting != 0 { connecting } else { libc::POLLOUT };
        if let Err(errno) = wait_for(fd, events, if connecting != 0 { None } else { until() }) {
            return if sent > 0 { Ok(sent) } else { Err(errno) };
        }
    }
}

/// Waits until rustls has handed every record to the kernel.
fn drain(handle: &Handle, fd: c_int, until: Option<Instant>) -> Result<(), Errno> {
    loop {
        if table::lock(handle).drain(fd) {
            return Ok(());
        }
        wait_for(fd, libc::POLLOUT, until)?;
    }
}

/// `bufs` without their first `skip` bytes.
fn advance<'a>(bufs: &'a [IoSlice<'a>], mut skip: usize) -> Vec<IoSlice<'a>> {
    let mut rest = Vec::with_capacity(bufs.len());
    for buf in bufs {
        if skip >= buf.len() {
            skip -= buf.len();
        } else {
            rest.push(IoSlice::new(&buf[skip..]));
            skip = 0;
        }
    }
    rest
}

fn advance_mut<'a>(bufs: &'a mut [&mut [u8]], mut skip: usize) -> Vec<&'a mut [u8]> {
    let mut rest = Vec::with_capacity(bufs.len());
    for buf in bufs.iter_mut() {
        if skip >= buf.len() {
            skip -= buf.len();
        } else {
            rest.push(&mut buf[skip..]);
            skip = 0;
        }
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_over_buffers() {
        let (a, b) = (b"abc".to_vec(), b"defg".to_vec());
        let bufs = [IoSlice::new(&a), IoSlice::new(&b)];
        let rest: Vec<Vec<u8>> = advance(&bufs, 4).iter().map(|s| s.to_vec()).collect();
        assert_eq!(rest, vec![b"efg".to_vec()]);
        assert_eq!(advance(&bufs, 0).len(), 2);
        assert!(advance(&bufs, 7).is_empty());
        let (mut c, mut d) = ([0u8; 2], [0u8; 3]);
        let mut out = [&mut c[..], &mut d[..]];
        let rest = advance_mut(&mut out, 2);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].len(), 3);
    }
}
