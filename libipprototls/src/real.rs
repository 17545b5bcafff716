//! The C library's own functions, found with `dlsym(RTLD_NEXT, ...)`.
//!
//! This library defines `read`, `close`, `poll`... with the C library's
//! names, so the program's calls (and, through the same symbol lookup, the
//! calls of Rust's standard library inside this library) reach it first.
//! Everything that must touch the kernel directly calls the next definition
//! instead, through these wrappers; calling the exported names from inside
//! the library on a TLS descriptor would recurse.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicPtr, Ordering};

use libc::{epoll_event, fd_set, iovec, msghdr, nfds_t, pollfd, size_t, sockaddr, socklen_t, ssize_t, timeval, FILE};

/// Looks up `name` in the libraries loaded after this one, once.
fn next_symbol(cache: &AtomicPtr<c_void>, name: &CStr) -> *mut c_void {
    let cached = cache.load(Ordering::Acquire);
    if !cached.is_null() {
        return cached;
    }
    // SAFETY: RTLD_NEXT with a NUL-terminated name is dlsym's documented
    // use; it returns a function address or null.
    let found = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if found.is_null() {
        // Without the real function nothing can work, and guessing would
        // risk sending plaintext: stop loudly.
        let message = format!("libipprototls: the C library has no {}\n", name.to_string_lossy());
        // SAFETY: writing a valid buffer to stderr with the raw syscall,
        // which needs no symbol lookup.
        unsafe { libc::syscall(libc::SYS_write, 2, message.as_ptr(), message.len()) };
        std::process::abort();
    }
    cache.store(found, Ordering::Release);
    found
}

/// Declares `pub unsafe fn NAME(args) -> ret` calling the next `NAME`.
macro_rules! next_fns {
    ($( fn $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty; )*) => {
        $(
            #[allow(clippy::missing_safety_doc)] // the C function's contract
            pub unsafe fn $name($($arg: $ty),*) -> $ret {
                static CACHE: AtomicPtr<c_void> = AtomicPtr::new(std::ptr::null_mut());
                let symbol = next_symbol(&CACHE, {
                    const NAME: &CStr = match CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
                        Ok(name) => name,
                        Err(_) => panic!("symbol names have no NUL"),
                    };
                    NAME
                });
                // SAFETY: the symbol is the C library's function of this
                // name, whose C prototype these parameter types spell.
                let function: unsafe extern "C" fn($($ty),*) -> $ret = unsafe { std::mem::transmute(symbol) };
                // SAFETY: the caller upholds the C function's contract.
                unsafe { function($($arg),*) }
            }
        )*
    };
}

next_fns! {
    fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    fn listen(fd: c_int, backlog: c_int) -> c_int;
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t;
    fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t;
    fn readv(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t;
    fn writev(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t;
    fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t;
    fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t;
    fn recvfrom(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int, addr: *mut sockaddr, addr_len: *mut socklen_t) -> ssize_t;
    fn sendto(fd: c_int, buf: *const c_void, len: size_t, flags: c_int, addr: *const sockaddr, addr_len: socklen_t) -> ssize_t;
    fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    fn close(fd: c_int) -> c_int;
    fn close_range(first: u32, last: u32, flags: c_int) -> c_int;
    fn shutdown(fd: c_int, how: c_int) -> c_int;
    fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: socklen_t) -> c_int;
    fn getsockopt(fd: c_int, level: c_int, name: c_int, value: *mut c_void, len: *mut socklen_t) -> c_int;
    fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int;
    fn ppoll(fds: *mut pollfd, nfds: nfds_t, timeout: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    fn __poll_chk(fds: *mut pollfd, nfds: nfds_t, timeout: c_int, fds_len: size_t) -> c_int;
    fn sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, count: u32, flags: c_int) -> c_int;
    fn recvmmsg(fd: c_int, msgs: *mut libc::mmsghdr, count: u32, flags: c_int, timeout: *mut libc::timespec) -> c_int;
    fn pselect(nfds: c_int, read: *mut fd_set, write: *mut fd_set, except: *mut fd_set, timeout: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    fn epoll_pwait2(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    fn select(nfds: c_int, read: *mut fd_set, write: *mut fd_set, except: *mut fd_set, timeout: *mut timeval) -> c_int;
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> c_int;
    fn epoll_wait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int) -> c_int;
    fn epoll_pwait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int;
    fn ioctl(fd: c_int, request: libc::c_ulong, arg: *mut c_void) -> c_int;
    fn dup(fd: c_int) -> c_int;
    fn dup2(old: c_int, new: c_int) -> c_int;
    fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int;
    fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_long) -> c_int;
    fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_long) -> c_int;
    fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE;
    fn vdprintf(fd: c_int, format: *const c_char, ap: crate::stdio::VaList) -> c_int;
    fn __vdprintf_chk(fd: c_int, flag: c_int, format: *const c_char, ap: crate::stdio::VaList) -> c_int;
    fn pwritev2(fd: c_int, iov: *const iovec, count: c_int, offset: libc::off_t, flags: c_int) -> ssize_t;
    fn pwritev64v2(fd: c_int, iov: *const iovec, count: c_int, offset: libc::off64_t, flags: c_int) -> ssize_t;
    fn preadv2(fd: c_int, iov: *const iovec, count: c_int, offset: libc::off_t, flags: c_int) -> ssize_t;
    fn preadv64v2(fd: c_int, iov: *const iovec, count: c_int, offset: libc::off64_t, flags: c_int) -> ssize_t;
    fn posix_spawn_file_actions_adddup2(actions: *mut libc::posix_spawn_file_actions_t, fd: c_int, new_fd: c_int) -> c_int;
    fn aio_read(cb: *mut libc::aiocb) -> c_int;
    fn aio_write(cb: *mut libc::aiocb) -> c_int;
    fn aio_read64(cb: *mut libc::aiocb) -> c_int;
    fn aio_write64(cb: *mut libc::aiocb) -> c_int;
    fn lio_listio(mode: c_int, list: *const *mut libc::aiocb, count: c_int, signal: *mut libc::sigevent) -> c_int;
    fn lio_listio64(mode: c_int, list: *const *mut libc::aiocb, count: c_int, signal: *mut libc::sigevent) -> c_int;
    fn sendfile(out_fd: c_int, in_fd: c_int, offset: *mut libc::off_t, count: size_t) -> ssize_t;
    fn sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut libc::off64_t, count: size_t) -> ssize_t;
    fn splice(fd_in: c_int, off_in: *mut libc::loff_t, fd_out: c_int, off_out: *mut libc::loff_t, len: size_t, flags: u32) -> ssize_t;
    fn __read_chk(fd: c_int, buf: *mut c_void, count: size_t, buf_len: size_t) -> ssize_t;
    fn __recv_chk(fd: c_int, buf: *mut c_void, len: size_t, buf_len: size_t, flags: c_int) -> ssize_t;
    fn __recvfrom_chk(fd: c_int, buf: *mut c_void, len: size_t, buf_len: size_t, flags: c_int, addr: *mut sockaddr, addr_len: *mut socklen_t) -> ssize_t;
}

/// The calling thread's errno.
pub fn errno() -> c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn set_errno(value: c_int) {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = value };
}
