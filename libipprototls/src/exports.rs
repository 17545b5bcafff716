//! The C library functions this library stands in for.
//!
//! Each looks the descriptor up first ([`table::lookup`], free for
//! ordinary descriptors) and hands anything that is not an IPPROTO_TLS
//! socket straight to the C library. The `unsafe` here is the C calling
//! convention: raw pointers from the program, valid as the C function's
//! contract says.

use std::ffi::{c_char, c_int, c_void};
use std::io::IoSlice;
use std::sync::{Arc, Mutex};

use libc::{epoll_event, fd_set, iovec, msghdr, nfds_t, pollfd, size_t, sockaddr, socklen_t, ssize_t, timeval, FILE};
use tls_engine::errno::Errno;
use tls_engine::sockopt::Access;
use virtio_tls_spec as wire;

use crate::conn::{State, TlsSocket};
use crate::table::{self, Handle};
use crate::{config, io, readiness, real, server, sockaddr as address, sockopt};

const IPPROTO_TLS: c_int = wire::IPPROTO_TLS as c_int;

/// -1 with errno set, the C convention.
fn fail<T: From<i8>>(errno: Errno) -> T {
    real::set_errno(errno.0 as c_int);
    T::from(-1)
}

fn ssize(result: Result<usize, Errno>) -> ssize_t {
    match result {
        Ok(n) => n as ssize_t,
        Err(errno) => fail(errno),
    }
}

/// A write that hits a closed connection raises SIGPIPE, as on TCP, unless
/// the program asked for MSG_NOSIGNAL.
fn write_result(result: Result<usize, Errno>, flags: c_int) -> ssize_t {
    if result == Err(Errno::EPIPE) && flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: raising a signal in the calling thread.
        unsafe { libc::raise(libc::SIGPIPE) };
    }
    ssize(result)
}

/// The program's iovec array as slices.
///
/// # Safety
/// `iov` points at `count` valid iovecs (or count is 0).
unsafe fn iovecs<'a>(iov: *const iovec, count: usize) -> &'a [iovec] {
    if iov.is_null() || count == 0 {
        return &[];
    }
    // SAFETY: the caller's contract.
    unsafe { std::slice::from_raw_parts(iov, count) }
}

/// # Safety
/// Each iovec is valid for writing its length.
unsafe fn as_mut_slices<'a>(iov: &[iovec]) -> Vec<&'a mut [u8]> {
    iov.iter()
        .filter(|v| v.iov_len > 0)
        // SAFETY: the caller's contract.
        .map(|v| unsafe { std::slice::from_raw_parts_mut(v.iov_base.cast::<u8>(), v.iov_len) })
        .collect()
}

/// # Safety
/// Each iovec is valid for reading its length.
unsafe fn as_io_slices<'a>(iov: &[iovec]) -> Vec<IoSlice<'a>> {
    iov.iter()
        .filter(|v| v.iov_len > 0)
        // SAFETY: the caller's contract.
        .map(|v| IoSlice::new(unsafe { std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len) }))
        .collect()
}

/// # Safety
/// `buf` is valid for writing `len` bytes.
unsafe fn read_into(handle: &Handle, fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    if len == 0 {
        return 0;
    }
    // SAFETY: the caller's contract.
    let slice = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    ssize(io::read(handle, fd, &mut [slice], flags))
}

/// # Safety
/// `buf` is valid for reading `len` bytes.
unsafe fn write_from(handle: &Handle, fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    if len == 0 {
        return 0;
    }
    // SAFETY: the caller's contract.
    let slice = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
    write_result(io::write(handle, fd, &[IoSlice::new(slice)], flags), flags)
}

// ---------------------------------------------------------------------------
// Creating, connecting, closing
// ---------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    if protocol != IPPROTO_TLS {
        // SAFETY: passing the program's call on.
        return unsafe { real::socket(domain, ty, protocol) };
    }
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return fail(Errno::EAFNOSUPPORT);
    }
    if ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != libc::SOCK_STREAM {
        return fail(Errno(libc::EPROTONOSUPPORT as u32));
    }
    let Ok(context) = config::context() else {
        // config has said why on stderr; no socket, so nothing can go out
        // without TLS.
        return fail(Errno::EACCES);
    };
    table::watch_forks_and_exit();
    let tls = match TlsSocket::new(domain, context) {
        Ok(tls) => tls,
        Err(errno) => return fail(errno),
    };
    // Close-on-exec always: after exec the TLS state is gone, and a
    // program that inherited the descriptor would talk TCP on it.
    // SAFETY: socket() with the program's flags.
    let fd = unsafe { real::socket(domain, ty | libc::SOCK_CLOEXEC, libc::IPPROTO_TCP) };
    if fd >= 0 {
        table::insert(fd, Arc::new(Mutex::new(tls)));
    }
    fd
}

#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(handle) = table::lookup(fd) else {
        // SAFETY: passing the program's call on.
        return unsafe { real::connect(fd, addr, len) };
    };
    if addr.is_null() {
        return fail(Errno::EFAULT);
    }
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: the program passes len valid bytes of address.
    let raw = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len) };
    let result = address::destination(raw).and_then(|destination| io::connect(&handle, fd, &destination));
    match result {
        Ok(()) => 0,
        Err(errno) => fail(errno),
    }
}

// ---------------------------------------------------------------------------
// Listening and accepting (crate::server)
// ---------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(handle) = table::lookup(fd) else {
        // SAFETY: passing the program's call on.
        return unsafe { real::bind(fd, addr, len) };
    };
    if addr.is_null() {
        return fail(Errno::EFAULT);
    }
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: the program passes len valid bytes of address.
    let raw = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), len) };
    match server::bind(&handle, fd, raw) {
        Ok(()) => 0,
        Err(errno) => fail(errno),
    }
}

#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let Some(handle) = table::lookup(fd) else {
        // SAFETY: passing the program's call on.
        return unsafe { real::listen(fd, backlog) };
    };
    match server::listen(&handle, fd, backlog) {
        Ok(()) => 0,
        Err(errno) => fail(errno),
    }
}

#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if table::lookup(fd).is_none() {
        // SAFETY: passing the program's call on.
        return unsafe { real::accept(fd, addr, len) };
    }
    // SAFETY: the program's arguments.
    unsafe { accept4(fd, addr, len, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let Some(handle) = table::lookup(fd) else {
        // SAFETY: passing the program's call on (accept4 with flags 0 is
        // accept).
        return unsafe { real::accept4(fd, addr, len, flags) };
    };
    match server::accept(&handle, fd, flags) {
        Ok((new_fd, peer)) => {
            // SAFETY: the program's address buffer and its length.
            unsafe { address::copy_out(peer, addr, len) };
            new_fd
        }
        Err(errno) => fail(errno),
    }
}

#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let target = match table::lookup(fd) {
        Some(handle) => {
            let socket = table::lock(&handle);
            if let Some(bound_as) = socket.bound_as {
                // The port the program bound, not the mapping's host port.
                if addr.is_null() || len.is_null() {
                    return fail(Errno::EFAULT);
                }
                // SAFETY: checked non-null; the program's buffer of *len bytes.
                unsafe { address::copy_out(bound_as, addr, len) };
                return 0;
            }
            socket.listening.as_ref().map_or(fd, |listening| listening.kernel_fd)
        }
        None => fd,
    };
    // SAFETY: passing the program's call on (to the listening TCP socket
    // for a listening descriptor, which is an eventfd).
    unsafe { real::getsockname(target, addr, len) }
}

#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if let Some(handle) = table::lookup(fd) {
        if table::lock(&handle).state == State::Listening {
            return fail(Errno::ENOTCONN);
        }
    }
    // SAFETY: passing the program's call on.
    unsafe { real::getpeername(fd, addr, len) }
}

/// The kernel socket under `fd`: for a listening socket the library's
/// descriptor of it, the program's being the readiness eventfd.
fn kernel_socket(handle: &Handle, fd: c_int) -> c_int {
    table::lock(handle).listening.as_ref().map_or(fd, |listening| listening.kernel_fd)
}

/// Everything closing `fd` means for its TLS socket, before the kernel
/// descriptor goes: close_notify if it was the last descriptor.
fn release(fd: c_int) {
    let Some(handle) = table::lookup(fd) else {
        readiness::forget_descriptor(fd, false);
        return;
    };
    let last = {
        let mut socket = table::lock(&handle);
        socket.descriptors = socket.descriptors.saturating_sub(1);
        let last = socket.descriptors == 0;
        if last {
            socket.last_close(fd);
        }
        last
    };
    readiness::forget_descriptor(fd, last);
    table::remove(fd);
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if table::any() {
        release(fd);
    }
    // SAFETY: passing the program's call on.
    unsafe { real::close(fd) }
}

#[no_mangle]
pub unsafe extern "C" fn close_range(first: u32, last: u32, flags: c_int) -> c_int {
    // With CLOSE_RANGE_CLOEXEC nothing closes now (TLS descriptors are
    // close-on-exec already).
    if table::any() && flags & libc::CLOSE_RANGE_CLOEXEC as c_int == 0 {
        let last_fd = c_int::try_from(last).unwrap_or(c_int::MAX);
        for fd in table::in_range(first.min(c_int::MAX as u32) as c_int, last_fd) {
            release(fd);
        }
    }
    // SAFETY: passing the program's call on.
    unsafe { real::close_range(first, last, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    let Some(handle) = table::lookup(fd) else {
        // SAFETY: passing the program's call on.
        return unsafe { real::shutdown(fd, how) };
    };
    let result = table::lock(&handle).shutdown(fd, how);
    match result {
        Ok(()) => 0,
        Err(errno) => fail(errno),
    }
}

// ---------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------

/// `new_fd` now refers to `handle`'s socket too; it stays close-on-exec.
fn adopt(handle: Handle, new_fd: c_int) {
    table::lock(&handle).descriptors += 1;
    table::insert(new_fd, handle);
    // SAFETY: F_SETFD on the descriptor just made.
    unsafe { real::fcntl(new_fd, libc::F_SETFD, libc::FD_CLOEXEC as libc::c_long) };
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: passing the program's call on.
    let new_fd = unsafe { real::dup(fd) };
    if new_fd >= 0 {
        if let Some(handle) = table::lookup(fd) {
            adopt(handle, new_fd);
        }
    }
    new_fd
}

/// dup2/dup3: `new_fd` is closed first if open, which may be a TLS socket.
fn duplicate_onto(old_fd: c_int, new_fd: c_int, call: impl FnOnce() -> c_int) -> c_int {
    let source = table::lookup(old_fd);
    if source.is_none() && !table::any() {
        return call();
    }
    if old_fd == new_fd {
        return call();
    }
    release(new_fd);
    let result = call();
    if result >= 0 {
        if let Some(handle) = source {
            adopt(handle, new_fd);
        }
    }
    result
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old_fd: c_int, new_fd: c_int) -> c_int {
    // SAFETY: passing the program's call on.
    duplicate_onto(old_fd, new_fd, || unsafe { real::dup2(old_fd, new_fd) })
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old_fd: c_int, new_fd: c_int, flags: c_int) -> c_int {
    // SAFETY: passing the program's call on.
    duplicate_onto(old_fd, new_fd, || unsafe { real::dup3(old_fd, new_fd, flags) })
}

/// fcntl for TLS descriptors: duplicates share the socket, and
/// close-on-exec cannot be cleared (EPERM): after exec the TLS state is
/// gone and the new program would see a bare TCP stream.
fn tls_fcntl(fd: c_int, cmd: c_int, arg: libc::c_long, call: impl FnOnce() -> c_int) -> c_int {
    let Some(handle) = table::lookup(fd) else { return call() };
    match cmd {
        libc::F_SETFD if arg & libc::FD_CLOEXEC as libc::c_long == 0 => fail(Errno::EPERM),
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let new_fd = call();
            if new_fd >= 0 {
                adopt(handle, new_fd);
            }
            new_fd
        }
        _ => call(),
    }
}

// fcntl and ioctl are variadic in C. Their third argument, when there is
// one, is an int or a pointer, which the x86-64 and AArch64 Linux calling
// conventions pass exactly like a fixed `long` argument, so these
// definitions receive it correctly (and ignore it when absent).
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_long) -> c_int {
    // SAFETY: passing the program's call on.
    tls_fcntl(fd, cmd, arg, || unsafe { real::fcntl(fd, cmd, arg) })
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_long) -> c_int {
    // SAFETY: passing the program's call on.
    tls_fcntl(fd, cmd, arg, || unsafe { real::fcntl64(fd, cmd, arg) })
}

#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: libc::c_ulong, arg: *mut c_void) -> c_int {
    if request == libc::FIONCLEX && table::lookup(fd).is_some() {
        return fail(Errno::EPERM);
    }
    // SAFETY: passing the program's call on.
    unsafe { real::ioctl(fd, request, arg) }
}

/// stdio on a TLS descriptor would read and write the TCP stream directly
/// (glibc's stdio calls its internal read/write, which cannot be
/// interposed): refused.
#[no_mangle]
pub unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    if table::lookup(fd).is_some() {
        real::set_errno(libc::EOPNOTSUPP);
        return std::ptr::null_mut();
    }
    // SAFETY: passing the program's call on.
    unsafe { real::fdopen(fd, mode) }
}

/// The kernel would copy file data onto the TCP stream unencrypted: refused
/// with EINVAL, on which programs fall back to read and write.
#[no_mangle]
pub unsafe extern "C" fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t {
    if table::lookup(out_fd).is_some() || table::lookup(in_fd).is_some() {
        return fail(Errno::EINVAL);
    }
    // SAFETY: passing the program's call on.
    unsafe { real::sendfile(out_fd, in_fd, offset, count) }
}

#[no_mangle]
pub unsafe extern "C" fn sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut libc::off64_t, count: size_t) -> ssize_t {
    if table::lookup(out_fd).is_some() || table::lookup(in_fd).is_some() {
        return fail(Errno::EINVAL);
    }
    // SAFETY: passing the program's call on.
    unsafe { real::sendfile64(out_fd, in_fd, offset, count) }
}

#[no_mangle]
pub unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut libc::loff_t,
    fd_out: c_int,
    off_out: *mut libc::loff_t,
    len: size_t,
    flags: u32,
) -> ssize_t {
    if table::lookup(fd_in).is_some() || table::lookup(fd_out).is_some() {
        return fail(Errno::EINVAL);
    }
    // SAFETY: passing the program's call on.
    unsafe { real::splice(fd_in, off_in, fd_out, off_out, len, flags) }
}

// POSIX AIO: glibc's helper threads call its internal read/write, which
// bypass the library: refused on TLS descriptors.

/// Whether an AIO request is for a TLS descriptor.
///
/// # Safety
/// `cb` is null or the program's valid aiocb.
unsafe fn aio_on_tls(cb: *const libc::aiocb) -> bool {
    // SAFETY: the caller's contract.
    !cb.is_null() && table::lookup(unsafe { (*cb).aio_fildes }).is_some()
}

macro_rules! refuse_aio {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(cb: *mut libc::aiocb) -> c_int {
            // SAFETY: the program's aiocb.
            if unsafe { aio_on_tls(cb) } {
                return fail(Errno::EINVAL);
            }
            // SAFETY: passing the program's call on.
            unsafe { real::$name(cb) }
        }
    )*};
}
refuse_aio!(aio_read, aio_write, aio_read64, aio_write64);

macro_rules! refuse_lio {
    ($($name:ident),*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(mode: c_int, list: *const *mut libc::aiocb, count: c_int, signal: *mut libc::sigevent) -> c_int {
            if table::any() && !list.is_null() {
                for i in 0..count.max(0) as usize {
                    // SAFETY: the program's list of count entries (null ones are skipped, as lio_listio does).
                    if unsafe { aio_on_tls(*list.add(i)) } {
                        return fail(Errno::EINVAL);
                    }
                }
            }
            // SAFETY: passing the program's call on.
            unsafe { real::$name(mode, list, count, signal) }
        }
    )*};
}
refuse_lio!(lio_listio, lio_listio64);

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int {
    let handle = match table::lookup(fd) {
        Some(handle) if level == IPPROTO_TLS => handle,
        Some(handle) => {
            // The table (spec 2.6.10) looks at an integer value at most.
            let start = if value.is_null() {
                &[][..]
            } else {
                // SAFETY: the program passes len readable bytes; this reads at most 4 of them.
                unsafe { std::slice::from_raw_parts(value.cast::<u8>(), (len as usize).min(4)) }
            };
            let family = table::lock(&handle).family();
            return match sockopt::answer(family, Access::Set, level, name, start) {
                // SAFETY: passing the program's call on.
                sockopt::Answer::Kernel => unsafe { real::setsockopt(kernel_socket(&handle, fd), level, name, value, len) },
                sockopt::Answer::Protocol => fail(Errno::ENOPROTOOPT),
                sockopt::Answer::Fail(errno) => fail(errno),
            };
        }
        // SAFETY: passing the program's call on.
        None => return unsafe { real::setsockopt(fd, level, name, value, len) },
    };
    let bytes = if len == 0 {
        &[][..]
    } else if value.is_null() {
        return fail(Errno::EFAULT);
    } else {
        // SAFETY: the program passes len readable bytes.
        unsafe { std::slice::from_raw_parts(value.cast::<u8>(), len as usize) }
    };
    let result = table::lock(&handle).set_option(name as u32, bytes);
    match result {
        Ok(()) => 0,
        Err(errno) => fail(errno),
    }
}

#[no_mangle]
pub unsafe extern "C" fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int {
    let Some(handle) = table::lookup(fd) else {
        // SAFETY: passing the program's call on.
        return unsafe { real::getsockopt(fd, level, name, value, len) };
    };
    let answer = match (level, name) {
        (IPPROTO_TLS, _) => {
            if len.is_null() || value.is_null() {
                return fail(Errno::EFAULT);
            }
            // SAFETY: checked non-null; the program's socklen_t.
            let room = unsafe { *len } as c_int;
            if room < 0 {
                return fail(Errno::EINVAL);
            }
            table::lock(&handle).get_option(name as u32, room as usize)
        }
        (libc::SOL_SOCKET, libc::SO_ERROR) => {
            // The lock is released before kernel_socket() takes it again.
            let pending = table::lock(&handle).take_pending_error();
            match pending {
                Some(errno) => Ok((errno.0 as c_int).to_ne_bytes().to_vec()),
                // SAFETY: passing the program's call on.
                None => return unsafe { real::getsockopt(kernel_socket(&handle, fd), level, name, value, len) },
            }
        }
        _ => {
            let family = table::lock(&handle).family();
            match sockopt::answer(family, Access::Get, level, name, &[]) {
                // SAFETY: passing the program's call on.
                sockopt::Answer::Kernel => return unsafe { real::getsockopt(kernel_socket(&handle, fd), level, name, value, len) },
                sockopt::Answer::Fail(errno) => Err(errno),
                sockopt::Answer::Protocol => {
                    if len.is_null() {
                        return fail(Errno::EFAULT);
                    }
                    // SAFETY: checked non-null; the program's socklen_t.
                    let room = unsafe { *len } as c_int;
                    if room < 0 {
                        return fail(Errno::EINVAL);
                    }
                    Ok(tls_engine::sockopt::protocol_value(level as u32, room as usize))
                }
            }
        }
    };
    match answer {
        Ok(bytes) => {
            if len.is_null() || value.is_null() {
                return fail(Errno::EFAULT);
            }
            // SAFETY: checked non-null; the program's buffer of *len bytes.
            unsafe {
                let n = bytes.len().min(*len as usize);
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), value.cast::<u8>(), n);
                *len = n as socklen_t;
            }
            0
        }
        Err(errno) => fail(errno),
    }
}

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    match table::lookup(fd) {
        // SAFETY: the program's buffer.
        Some(handle) => unsafe { read_into(&handle, fd, buf, count, 0) },
        // SAFETY: passing the program's call on.
        None => unsafe { real::read(fd, buf, count) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, count: size_t, buf_len: size_t) -> ssize_t {
    match table::lookup(fd) {
        Some(_) if count > buf_len => std::process::abort(), // what _FORTIFY_SOURCE does
        // SAFETY: the program's buffer.
        Some(handle) => unsafe { read_into(&handle, fd, buf, count, 0) },
        // SAFETY: passing the program's call on.
        None => unsafe { real::__read_chk(fd, buf, count, buf_len) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    match table::lookup(fd) {
        // SAFETY: the program's buffer.
        Some(handle) => unsafe { read_into(&handle, fd, buf, len, flags) },
        // SAFETY: passing the program's call on.
        None => unsafe { real::recv(fd, buf, len, flags) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buf_len: size_t, flags: c_int) -> ssize_t {
    match table::lookup(fd) {
        Some(_) if len > buf_len => std::process::abort(),
        // SAFETY: the program's buffer.
        Some(handle) => unsafe { read_into(&handle, fd, buf, len, flags) },
        // SAFETY: passing the program's call on.
        None => unsafe { real::__recv_chk(fd, buf, len, buf_len, flags) },
    }
}

/// A connected stream has no source address to report.
///
/// # Safety
/// `addr_len` is null or valid.
unsafe fn no_address(addr_len: *mut socklen_t) {
    if !addr_len.is_null() {
        // SAFETY: the caller's contract.
        unsafe { *addr_len = 0 };
    }
}

#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addr_len: *mut socklen_t,
) -> ssize_t {
    match table::lookup(fd) {
        Some(handle) => {
            // SAFETY: the program's buffer and address length.
            let n = unsafe { read_into(&handle, fd, buf, len, flags) };
            if n >= 0 {
                // SAFETY: as above.
                unsafe { no_address(addr_len) };
            }
            n
        }
        // SAFETY: passing the program's call on.
        None => unsafe { real::recvfrom(fd, buf, len, flags, addr, addr_len) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buf_len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addr_len: *mut socklen_t,
) -> ssize_t {
    match table::lookup(fd) {
        Some(_) if len > buf_len => std::process::abort(),
        // SAFETY: the program's arguments.
        Some(_) => unsafe { recvfrom(fd, buf, len, flags, addr, addr_len) },
        // SAFETY: passing the program's call on.
        None => unsafe { real::__recvfrom_chk(fd, buf, len, buf_len, flags, addr, addr_len) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    let Some(handle) = table::lookup(fd) else {
        // SAFETY: passing the program's call on.
        return unsafe { real::readv(fd, iov, count) };
    };
    if !(0..=libc::UIO_MAXIOV).contains(&count) {
        return fail(Errno::EINVAL);
    }
    // SAFETY: the program's iovecs.
    let mut slices = unsafe { as_mut_slices(iovecs(iov, count as usize)) };
    if slices.is_empty() {
        return 0;
    }
    ssize(io::read(&handle, fd, &mut slices, 0))
}

#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let Some(handle) = table::lookup(fd) else {
        // SAFETY: passing the program's call on.
        return unsafe { real::recvmsg(fd, msg, flags) };
    };
    if msg.is_null() {
        return fail(Errno::EFAULT);
    }
    // SAFETY: the program's msghdr and its iovecs.
    let message = unsafe { &mut *msg };
    // SAFETY: as above.
    let mut slices = unsafe { as_mut_slices(iovecs(message.msg_iov, message.msg_iovlen)) };
    let result = if slices.is_empty() { Ok(0) } else { io::read(&handle, fd, &mut slices, flags) };
    if result.is_ok() {
        // A stream: no address, no ancillary data, nothing truncated.
        message.msg_namelen = 0;
        message.msg_controllen = 0;
        message.msg_flags = 0;
    }
    ssize(result)
}

#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    match table::lookup(fd) {
        // SAFETY: the program's buffer.
        Some(handle) => unsafe { write_from(&handle, fd, buf, count, 0) },
        // SAFETY: passing the program's call on.
        None => unsafe { real::write(fd, buf, count) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    match table::lookup(fd) {
        // SAFETY: the program's buffer.
        Some(handle) => unsafe { write_from(&handle, fd, buf, len, flags) },
        // SAFETY: passing the program's call on.
        None => unsafe { real::send(fd, buf, len, flags) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    addr_len: socklen_t,
) -> ssize_t {
    match table::lookup(fd) {
        // The address is ignored, as TCP does on a connected socket.
        // SAFETY: the program's buffer.
        Some(handle) => unsafe { write_from(&handle, fd, buf, len, flags) },
        // SAFETY: passing the program's call on.
        None => unsafe { real::sendto(fd, buf, len, flags, addr, addr_len) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    let Some(handle) = table::lookup(fd) else {
        // SAFETY: passing the program's call on.
        return unsafe { real::writev(fd, iov, count) };
    };
    if !(0..=libc::UIO_MAXIOV).contains(&count) {
        return fail(Errno::EINVAL);
    }
    // SAFETY: the program's iovecs.
    let slices = unsafe { as_io_slices(iovecs(iov, count as usize)) };
    if slices.is_empty() {
        return 0;
    }
    write_result(io::write(&handle, fd, &slices, 0), 0)
}

#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    let Some(handle) = table::lookup(fd) else {
        // SAFETY: passing the program's call on.
        return unsafe { real::sendmsg(fd, msg, flags) };
    };
    if msg.is_null() {
        return fail(Errno::EFAULT);
    }
    // SAFETY: the program's msghdr.
    let message = unsafe { &*msg };
    if message.msg_controllen != 0 {
        // Ancillary data (descriptors, credentials) has no meaning on TLS.
        return fail(Errno::EOPNOTSUPP);
    }
    // SAFETY: the program's iovecs.
    let slices = unsafe { as_io_slices(iovecs(message.msg_iov, message.msg_iovlen)) };
    if slices.is_empty() {
        return 0;
    }
    write_result(io::write(&handle, fd, &slices, flags), flags)
}

/// sendmmsg: one sendmsg per message, so that none bypasses TLS.
#[no_mangle]
pub unsafe extern "C" fn sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, count: u32, flags: c_int) -> c_int {
    if table::lookup(fd).is_none() {
        // SAFETY: passing the program's call on.
        return unsafe { real::sendmmsg(fd, msgs, count, flags) };
    }
    let mut done = 0;
    while done < count.min(libc::UIO_MAXIOV as u32) {
        // SAFETY: the program's array of count messages.
        let entry = unsafe { &mut *msgs.add(done as usize) };
        // SAFETY: the program's message.
        let n = unsafe { sendmsg(fd, &entry.msg_hdr, flags) };
        if n < 0 {
            return if done > 0 { done as c_int } else { -1 };
        }
        entry.msg_len = n as u32;
        done += 1;
    }
    done as c_int
}

/// recvmmsg: one recvmsg per message (a stream fills the first first).
#[no_mangle]
pub unsafe extern "C" fn recvmmsg(fd: c_int, msgs: *mut libc::mmsghdr, count: u32, flags: c_int, timeout: *mut libc::timespec) -> c_int {
    if table::lookup(fd).is_none() {
        // SAFETY: passing the program's call on.
        return unsafe { real::recvmmsg(fd, msgs, count, flags, timeout) };
    }
    let mut done = 0;
    let mut flags = flags;
    while done < count.min(libc::UIO_MAXIOV as u32) {
        // SAFETY: the program's array of count messages.
        let entry = unsafe { &mut *msgs.add(done as usize) };
        // SAFETY: the program's message.
        let n = unsafe { recvmsg(fd, &mut entry.msg_hdr, flags) };
        if n <= 0 {
            return if done > 0 { done as c_int } else if n == 0 { 0 } else { -1 };
        }
        entry.msg_len = n as u32;
        done += 1;
        // As the kernel's MSG_WAITFORONE: only the first may wait.
        if flags & libc::MSG_WAITFORONE != 0 {
            flags |= libc::MSG_DONTWAIT;
        }
    }
    done as c_int
}

// ---------------------------------------------------------------------------
// Readiness
// ---------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int {
    if table::any() && !fds.is_null() && nfds > 0 {
        // SAFETY: the program's array of nfds pollfds.
        let set = unsafe { std::slice::from_raw_parts_mut(fds, nfds as usize) };
        if let Some(result) = readiness::poll(set, timeout, &mut readiness::plain_poll) {
            return result;
        }
    }
    // SAFETY: passing the program's call on.
    unsafe { real::poll(fds, nfds, timeout) }
}

#[no_mangle]
pub unsafe extern "C" fn __poll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: c_int, fds_len: size_t) -> c_int {
    if (fds_len / std::mem::size_of::<pollfd>()) < nfds as usize {
        std::process::abort(); // what _FORTIFY_SOURCE does
    }
    // SAFETY: the program's arguments, checked as __poll_chk does.
    unsafe { poll(fds, nfds, timeout) }
}

#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    if table::any() && !fds.is_null() && nfds > 0 {
        // SAFETY: the program's array of nfds pollfds.
        let set = unsafe { std::slice::from_raw_parts_mut(fds, nfds as usize) };
        // SAFETY: the program's timespec.
        let timeout_ms = unsafe { readiness::timespec_ms(timeout) };
        if let Some(result) = readiness::poll(set, timeout_ms, &mut readiness::masked_poll(mask)) {
            return result;
        }
    }
    // SAFETY: passing the program's call on.
    unsafe { real::ppoll(fds, nfds, timeout, mask) }
}

#[no_mangle]
pub unsafe extern "C" fn select(nfds: c_int, read: *mut fd_set, write: *mut fd_set, except: *mut fd_set, timeout: *mut timeval) -> c_int {
    if table::any() {
        let timeout_ms = if timeout.is_null() {
            -1
        } else {
            // SAFETY: a non-null timeout is the program's valid timeval.
            let tv = unsafe { *timeout };
            #[allow(clippy::useless_conversion)] // time_t and suseconds_t are i64 only on 64-bit targets
            let ms = i64::from(tv.tv_sec).saturating_mul(1000).saturating_add((i64::from(tv.tv_usec) + 999) / 1000);
            ms.clamp(0, c_int::MAX as i64) as c_int
        };
        // SAFETY: the program's sets.
        if let Some(result) = unsafe { readiness::select(nfds, read, write, except, timeout_ms, &mut readiness::plain_poll) } {
            return result;
        }
    }
    // SAFETY: passing the program's call on.
    unsafe { real::select(nfds, read, write, except, timeout) }
}

/// pselect: select's TLS corrections, waiting in the kernel with the
/// program's signal mask (ppoll's, which applies it as pselect does).
#[no_mangle]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    read: *mut fd_set,
    write: *mut fd_set,
    except: *mut fd_set,
    timeout: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    if table::any() {
        // SAFETY: the program's timespec.
        let timeout_ms = unsafe { readiness::timespec_ms(timeout) };
        // SAFETY: the program's sets; the mask is the program's.
        if let Some(result) = unsafe { readiness::select(nfds, read, write, except, timeout_ms, &mut readiness::masked_poll(mask)) } {
            return result;
        }
    }
    // SAFETY: passing the program's call on.
    unsafe { real::pselect(nfds, read, write, except, timeout, mask) }
}

#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> c_int {
    // SAFETY: the program's event.
    match unsafe { readiness::ctl(epfd, op, fd, event) } {
        Some(result) => result,
        // SAFETY: passing the program's call on.
        None => unsafe { real::epoll_ctl(epfd, op, fd, event) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn epoll_wait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int) -> c_int {
    // SAFETY: the program's buffer.
    match unsafe { readiness::wait(epfd, events, max, timeout, std::ptr::null()) } {
        Some(result) => result,
        // SAFETY: passing the program's call on.
        None => unsafe { real::epoll_wait(epfd, events, max, timeout) },
    }
}

/// epoll_pwait2: epoll_pwait's TLS corrections; the timeout is rounded up
/// to whole milliseconds on an instance with TLS descriptors.
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: the program's timespec.
    let timeout_ms = unsafe { readiness::timespec_ms(timeout) };
    // SAFETY: the program's buffer and mask.
    match unsafe { readiness::wait(epfd, events, max, timeout_ms, sigmask) } {
        Some(result) => result,
        // SAFETY: passing the program's call on.
        None => unsafe { real::epoll_pwait2(epfd, events, max, timeout, sigmask) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    sigmask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: the program's buffer and mask.
    match unsafe { readiness::wait(epfd, events, max, timeout, sigmask) } {
        Some(result) => result,
        // SAFETY: passing the program's call on.
        None => unsafe { real::epoll_pwait(epfd, events, max, timeout, sigmask) },
    }
}
