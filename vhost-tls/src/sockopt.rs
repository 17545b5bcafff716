//! SETSOCKOPT and GETSOCKOPT on the host (spec 2.6.10): options the
//! guest set at SOL_SOCKET, IPPROTO_IP, IPPROTO_TCP and IPPROTO_IPV6 go
//! to the host's TCP socket. What is allowed is tls-engine's table
//! (`tls_engine::sockopt`); the values are Linux's to validate, on the host
//! socket or, before it exists, on a fresh TCP socket standing in for it.

use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::{Domain, Protocol, Socket as RawSocket, Type};
use tls_engine::errno::Errno;
use tls_engine::sockopt::{level_name, Family, HostOptions};

/// Most bytes a GETSOCKOPT value may have (TCP_INFO is ~250).
pub const MAX_GET_LEN: usize = 4096;

/// `setsockopt(2)` with the guest's level, option and value bytes.
pub fn set_raw(fd: BorrowedFd<'_>, level: u32, optname: u32, value: &[u8]) -> Result<(), Errno> {
    let len = libc::socklen_t::try_from(value.len()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `fd` is an open socket for the borrow; the kernel reads at
    // most `len` bytes from `value`, which is that long.
    let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), level as i32, optname as i32, value.as_ptr().cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(Errno::from_io(&std::io::Error::last_os_error()))
    }
}

/// `getsockopt(2)` with room for `max_len` bytes; the value Linux wrote.
pub fn get_raw(fd: BorrowedFd<'_>, level: u32, optname: u32, max_len: usize) -> Result<Vec<u8>, Errno> {
    let mut value = vec![0u8; max_len.min(MAX_GET_LEN)];
    let mut len = value.len() as libc::socklen_t;
    // SAFETY: `fd` is an open socket for the borrow; the kernel writes at
    // most `len` bytes into `value`, which is that long, and stores the
    // length it wrote in `len`.
    let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), level as i32, optname as i32, value.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(Errno::from_io(&std::io::Error::last_os_error()));
    }
    value.truncate(len as usize);
    Ok(value)
}

/// A fresh TCP socket of the guest socket's family: validates values and
/// answers GETSOCKOPT until the host socket exists.
pub fn stand_in(family: Family) -> Result<RawSocket, Errno> {
    let domain = match family {
        Family::Inet => Domain::IPV4,
        Family::Inet6 => Domain::IPV6,
    };
    RawSocket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(|e| Errno::from_io(&e))
}

/// Applies what the guest set to a host socket just created (before it
/// connects or binds). An option this socket refuses (one of the other
/// family's, say) is logged and skipped: the guest was told it succeeded
/// when it was set.
pub fn apply_kept(fd: BorrowedFd<'_>, kept: &HostOptions, socket_id: u32) {
    for option in kept.iter() {
        if let Err(errno) = set_raw(fd, option.level, option.optname, &option.value) {
            tracing::info!(
                socket = socket_id,
                level = level_name(option.level),
                optname = option.optname,
                "the host socket does not take an option the guest set: {errno}"
            );
        }
    }
}


/// Makes closing a host socket never block the device. Linux's close()
/// waits up to SO_LINGER's time for unacknowledged data to go, even on a
/// non-blocking socket, and the device closes sockets on its one worker
/// thread: a guest's SO_LINGER with a positive time becomes an ordinary
/// close that finishes in the background. Linger 0 (an abortive close,
/// RST) does not wait and stays.
pub fn never_block_close(fd: BorrowedFd<'_>) {
    let socket = socket2::SockRef::from(&fd);
    if let Ok(Some(time)) = socket.linger() {
        if !time.is_zero() {
            let _ = socket.set_linger(None);
        }
    }
}
