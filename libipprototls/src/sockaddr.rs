//! Socket addresses as programs pass them, and the kernel-socket chores of
//! connecting: AF_INET, AF_INET6 and SSA's AF_HOSTNAME (`struct
//! sockaddr_host` of in_tls.h: family, port in network order, a 120-byte
//! NUL-padded name).

use std::ffi::c_int;
use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use tls_engine::destination::Destination;
use tls_engine::errno::Errno;
use tls_engine::options::parse_hostname;
use virtio_tls_spec as wire;

use crate::{readiness, real};

/// `struct sockaddr_host`: 2 + 2 + 120 bytes.
pub const SOCKADDR_HOST_LEN: usize = 124;
const HOSTNAME_OFFSET: usize = 4;

/// The destination named by the `len` bytes of `raw` (a copy of the
/// program's sockaddr), with the errno connect() gives for a bad one.
pub fn destination(raw: &[u8]) -> Result<Destination, Errno> {
    if raw.len() < 4 {
        return Err(Errno::EINVAL);
    }
    let family = c_int::from(u16::from_ne_bytes([raw[0], raw[1]]));
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let destination = match family {
        libc::AF_INET if raw.len() >= size_of::<libc::sockaddr_in>() => {
            let ip = Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]);
            Destination::Address(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        libc::AF_INET6 if raw.len() >= size_of::<libc::sockaddr_in6>() => {
            let octets: [u8; 16] = raw[8..24].try_into().expect("16 bytes");
            let scope_id = u32::from_ne_bytes(raw[24..28].try_into().expect("4 bytes"));
            Destination::Address(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, 0, scope_id)))
        }
        f if f == wire::AF_HOSTNAME as c_int && raw.len() > HOSTNAME_OFFSET => {
            let name = &raw[HOSTNAME_OFFSET..raw.len().min(SOCKADDR_HOST_LEN)];
            Destination::Name { host: parse_hostname(name)?, port }
        }
        libc::AF_INET | libc::AF_INET6 => return Err(Errno::EINVAL),
        f if f == wire::AF_HOSTNAME as c_int => return Err(Errno::EINVAL),
        _ => return Err(Errno::EAFNOSUPPORT),
    };
    let port_zero = match &destination {
        Destination::Address(addr) => addr.port() == 0,
        Destination::Name { port, .. } => *port == 0,
    };
    if port_zero {
        return Err(Errno::EINVAL);
    }
    Ok(destination)
}

/// The AF_INET or AF_INET6 address in `raw` (a copy of the program's
/// sockaddr) for a socket of `family`, with bind()'s errno values for a bad
/// one; port 0 is allowed.
pub fn inet_address(raw: &[u8], family: c_int) -> Result<SocketAddr, Errno> {
    if raw.len() < 2 {
        return Err(Errno::EINVAL);
    }
    let given = c_int::from(u16::from_ne_bytes([raw[0], raw[1]]));
    if given != family {
        return Err(Errno::EAFNOSUPPORT);
    }
    let port = |raw: &[u8]| u16::from_be_bytes([raw[2], raw[3]]);
    match family {
        libc::AF_INET if raw.len() >= size_of::<libc::sockaddr_in>() => {
            Ok(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(raw[4], raw[5], raw[6], raw[7]), port(raw))))
        }
        libc::AF_INET6 if raw.len() >= size_of::<libc::sockaddr_in6>() => {
            let octets: [u8; 16] = raw[8..24].try_into().expect("16 bytes");
            let scope_id = u32::from_ne_bytes(raw[24..28].try_into().expect("4 bytes"));
            Ok(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port(raw), 0, scope_id)))
        }
        _ => Err(Errno::EINVAL),
    }
}

/// Copies `addr` into the program's `out` of `*len` bytes, as accept() and
/// getsockname() do: truncated to fit, `*len` set to the full length.
///
/// # Safety
/// `out` is null or valid for `*len` bytes; `len` is null or valid.
pub unsafe fn copy_out(addr: SocketAddr, out: *mut libc::sockaddr, len: *mut libc::socklen_t) {
    if out.is_null() || len.is_null() {
        return;
    }
    let (storage, full) = to_raw(addr);
    // SAFETY: the caller's contract.
    unsafe {
        let n = (*len).min(full) as usize;
        std::ptr::copy_nonoverlapping((&storage as *const libc::sockaddr_storage).cast::<u8>(), out.cast::<u8>(), n);
        *len = full;
    }
}

/// `addr` as a socket of `family` can reach it: IPv4 addresses are mapped
/// for AF_INET6 sockets; an AF_INET socket cannot reach IPv6.
pub fn for_family(addr: SocketAddr, family: c_int) -> Option<SocketAddr> {
    match (addr, family) {
        (SocketAddr::V4(_), libc::AF_INET) | (SocketAddr::V6(_), libc::AF_INET6) => Some(addr),
        (SocketAddr::V4(v4), libc::AF_INET6) => {
            Some(SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0)))
        }
        _ => None,
    }
}

/// A C sockaddr for `addr`.
pub fn to_raw(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn cvt(result: c_int) -> io::Result<c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Starts a TCP connect without waiting, whatever the descriptor's
/// blocking mode (restored afterwards).
pub fn connect_nonblocking(fd: c_int, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = to_raw(addr);
    // SAFETY: fcntl on our own descriptor.
    let flags = cvt(unsafe { real::fcntl(fd, libc::F_GETFL, 0) })?;
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        cvt(unsafe { real::fcntl(fd, libc::F_SETFL, libc::c_long::from(flags | libc::O_NONBLOCK)) })?;
    }
    // SAFETY: storage holds a sockaddr of len bytes.
    let result = unsafe { real::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    let error = io::Error::last_os_error();
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        unsafe { real::fcntl(fd, libc::F_SETFL, libc::c_long::from(flags)) };
    }
    match result {
        0 => Ok(()),
        _ if error.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        _ => Err(error),
    }
}

/// Whether a TCP connect started with [`connect_nonblocking`] is done
/// (`Ok(true)`), still going (`Ok(false)`) or failed.
pub fn connect_result(fd: c_int) -> io::Result<bool> {
    let mut error: c_int = 0;
    let mut len = size_of::<c_int>() as libc::socklen_t;
    // SAFETY: error and len are valid for getsockopt to write.
    cvt(unsafe { real::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&mut error as *mut c_int).cast(), &mut len) })?;
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    // SAFETY: sockaddr_storage is plain data.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut peer_len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: peer and peer_len are valid for getpeername to write.
    match cvt(unsafe { real::getpeername(fd, (&mut peer as *mut libc::sockaddr_storage).cast(), &mut peer_len) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Puts a fresh TCP socket under `fd`, so it can connect again after a
/// connection was made (a TCP socket connects once). The program's
/// settings that matter to a client carry over: blocking mode, timeouts,
/// TCP_NODELAY, SO_KEEPALIVE; so do its epoll registrations.
pub fn replace_kernel_socket(fd: c_int, family: c_int) -> io::Result<()> {
    // SAFETY: socket() with constant arguments.
    let fresh = cvt(unsafe { real::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, libc::IPPROTO_TCP) })?;
    let copied = (|| -> io::Result<()> {
        // SAFETY: fcntl on descriptors we own.
        let flags = cvt(unsafe { real::fcntl(fd, libc::F_GETFL, 0) })?;
        // SAFETY: as above.
        cvt(unsafe { real::fcntl(fresh, libc::F_SETFL, libc::c_long::from(flags)) })?;
        for (level, name, size) in [
            (libc::SOL_SOCKET, libc::SO_RCVTIMEO, size_of::<libc::timeval>()),
            (libc::SOL_SOCKET, libc::SO_SNDTIMEO, size_of::<libc::timeval>()),
            (libc::SOL_SOCKET, libc::SO_KEEPALIVE, size_of::<c_int>()),
            (libc::IPPROTO_TCP, libc::TCP_NODELAY, size_of::<c_int>()),
        ] {
            let mut value = [0u8; 16];
            let mut len = size as libc::socklen_t;
            // SAFETY: value has room for len bytes.
            cvt(unsafe { real::getsockopt(fd, level, name, value.as_mut_ptr().cast(), &mut len) })?;
            // SAFETY: value holds len bytes.
            cvt(unsafe { real::setsockopt(fresh, level, name, value.as_ptr().cast(), len) })?;
        }
        // SAFETY: dup3 onto our own descriptor; it stays close-on-exec.
        cvt(unsafe { real::dup3(fresh, fd, libc::O_CLOEXEC) })?;
        Ok(())
    })();
    // SAFETY: fresh is ours, and now duplicated (or unused).
    unsafe { real::close(fresh) };
    copied?;
    readiness::reregister(fd);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_in(port: u16) -> Vec<u8> {
        let mut raw = vec![0u8; size_of::<libc::sockaddr_in>()];
        raw[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        raw[2..4].copy_from_slice(&port.to_be_bytes());
        raw[4..8].copy_from_slice(&[127, 0, 0, 1]);
        raw
    }

    #[test]
    fn addresses_names_and_bad_ones() {
        assert_eq!(destination(&raw_in(443)), Ok(Destination::Address("127.0.0.1:443".parse().unwrap())));
        assert_eq!(destination(&raw_in(0)), Err(Errno::EINVAL));
        assert_eq!(destination(&raw_in(443)[..6]), Err(Errno::EINVAL));
        let mut host = vec![0u8; SOCKADDR_HOST_LEN];
        host[..2].copy_from_slice(&(wire::AF_HOSTNAME as u16).to_ne_bytes());
        host[2..4].copy_from_slice(&8443u16.to_be_bytes());
        host[4..13].copy_from_slice(b"LocalHost");
        assert_eq!(destination(&host), Ok(Destination::Name { host: "localhost".into(), port: 8443 }));
        host[4] = b' ';
        assert_eq!(destination(&host), Err(Errno::EINVAL));
        let mut unix = raw_in(1);
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(destination(&unix), Err(Errno::EAFNOSUPPORT));
    }

    #[test]
    fn families() {
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        assert_eq!(for_family(v4, libc::AF_INET), Some(v4));
        assert_eq!(for_family(v6, libc::AF_INET), None);
        assert_eq!(for_family(v4, libc::AF_INET6), Some("[::ffff:127.0.0.1]:1".parse().unwrap()));
    }
}
