// SPDX-License-Identifier: GPL-2.0

//! The socket layer's side: IPPROTO_TLS registered for AF_INET and
//! AF_INET6 (a `struct proto`, `proto_ops` and `inet_protosw` per family,
//! as net/smc/smc_inet.c does), and every `extern "C"` operation the core
//! calls, in one table per family. Each trampoline turns the core's raw
//! pointers into safe handles once (`Socket`, `Sock`, `MsgIter`,
//! `OptValue`) and calls the safe socket code in `socket.rs`; errors
//! become errnos here, through the kernel crate's `Error`.
//!
//! # Safety contract of the trampolines
//!
//! The core calls them with live objects: `sock` a `struct socket` whose
//! `sk` is one of ours (allocated with our `proto`, so a `TlsSock` or
//! `TlsSock6`), held by the syscall for the call's duration.

use crate::bindings;
use crate::device::SocketKey;
use crate::socket;
use crate::wire;
use core::ffi::{c_int, c_uint};
use core::marker::PhantomData;
use core::ptr;
use kernel::prelude::*;

/// Errnos of the socket layer the kernel crate's `error::code` does not
/// declare (it has the generic ones only, in 6.12 and 7.3), defined once.
pub(crate) mod code {
    use crate::bindings;
    use kernel::error::Error;

    /// An errno number, as a constant; `.into()` makes it an `Error`.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub(crate) struct Errno(u32);

    impl Errno {
        /// The number, as the device's statuses and SO_ERROR carry it.
        pub(crate) const fn status(self) -> u32 {
            self.0
        }
    }

    impl From<Errno> for Error {
        fn from(errno: Errno) -> Error {
            Error::from_errno(-(errno.0 as i32))
        }
    }

    /// A device status (spec 2.6.1: Linux errno values) as an `Error`.
    pub(crate) fn from_device(status: u32) -> Error {
        Error::from_errno(-(status.min(4095) as i32))
    }

    macro_rules! errnos {
        ($($name:ident),* $(,)?) => {
            $(pub(crate) const $name: Errno = Errno(bindings::$name);)*
        };
    }
    errnos!(
        EAFNOSUPPORT, EALREADY, ECONNRESET, EINPROGRESS, EISCONN, ENOMEM, ENOPROTOOPT, ENOTCONN, EOPNOTSUPP,
        ETIMEDOUT,
    );
}

/// The address families IPPROTO_TLS is registered for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Inet,
    Inet6,
}

impl Family {
    /// The AF_* number, as sockaddrs carry it.
    pub(crate) fn number(self) -> u16 {
        match self {
            Family::Inet => bindings::AF_INET as u16,
            Family::Inet6 => bindings::AF_INET6 as u16,
        }
    }
}

/// AF_INET, AF_INET6 and SSA's AF_HOSTNAME, as a sockaddr's first field.
pub(crate) const AF_INET: u16 = bindings::AF_INET as u16;
pub(crate) const AF_INET6: u16 = bindings::AF_INET6 as u16;
/// The socket levels socket.rs tells apart.
pub(crate) const SOL_SOCKET: i32 = bindings::SOL_SOCKET as i32;

/// A socket's connection state (`socket->state`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum State {
    Unconnected,
    Connecting,
    Connected,
    /// SS_FREE or SS_DISCONNECTING, which this protocol does not use.
    Other,
}

/// A guest TLS socket: the inet socket the core allocates (obj_size) with
/// the device's socket id after it.
#[repr(C)]
struct TlsSock {
    inet: bindings::inet_sock,
    socket_id: u32,
    /// The device generation that assigned `socket_id` (SocketKey).
    generation: u32,
    /// The guest port bound (BIND), for getsockname().
    local_port: u16,
    /// For getpeername(): the address connected to, or the client an
    /// accepted socket came from. Family 0 when unknown.
    peer: wire::SockAddr,
}

/// An AF_INET6 TLS socket: inet6_create finds the IPv6 part through
/// proto.ipv6_pinfo_offset.
#[repr(C)]
struct TlsSock6 {
    tls: TlsSock,
    ipv6: bindings::ipv6_pinfo,
}

/// One of our `struct sock`s, for the duration of a call on it.
pub(crate) struct Sock<'a> {
    sk: *mut bindings::sock,
    _call: PhantomData<&'a bindings::sock>,
}

impl<'a> Sock<'a> {
    /// # Safety
    ///
    /// `sk` is a live sock of our protocol (so a `TlsSock`), valid for 'a.
    unsafe fn from_raw(sk: *mut bindings::sock) -> Sock<'a> {
        Sock { sk, _call: PhantomData }
    }

    fn tls(&self) -> &TlsSock {
        // SAFETY: our socks are allocated with obj_size >= TlsSock's
        // (from_raw's contract), and the core does not touch our fields.
        unsafe { &*self.sk.cast::<TlsSock>() }
    }

    fn tls_mut(&mut self) -> &mut TlsSock {
        // SAFETY: as in tls(); &mut self: the call owns its handle.
        unsafe { &mut *self.sk.cast::<TlsSock>() }
    }

    /// The device socket this sock stands for.
    pub(crate) fn key(&self) -> SocketKey {
        SocketKey { id: self.tls().socket_id, generation: self.tls().generation }
    }

    pub(crate) fn set_key(&mut self, key: SocketKey) {
        let tls = self.tls_mut();
        tls.socket_id = key.id;
        tls.generation = key.generation;
    }

    pub(crate) fn family(&self) -> Family {
        // SAFETY: a live sock (from_raw's contract).
        match u32::from(unsafe { (*self.sk).__sk_common.skc_family }) {
            bindings::AF_INET6 => Family::Inet6,
            _ => Family::Inet,
        }
    }

    pub(crate) fn local_port(&self) -> u16 {
        self.tls().local_port
    }

    pub(crate) fn set_local_port(&mut self, port: u16) {
        self.tls_mut().local_port = port;
    }

    pub(crate) fn peer(&self) -> wire::SockAddr {
        self.tls().peer
    }

    pub(crate) fn set_peer(&mut self, peer: wire::SockAddr) {
        self.tls_mut().peer = peer;
    }

    /// Whether listen() succeeded on it (sk_state, as for inet sockets).
    pub(crate) fn is_listening(&self) -> bool {
        // SAFETY: a live sock.
        u32::from(unsafe { (*self.sk).__sk_common.skc_state }) == bindings::TCP_LISTEN
    }

    pub(crate) fn set_listening(&mut self) {
        // SAFETY: a live sock; the state is ours to keep (no TCP here).
        unsafe { (*self.sk).__sk_common.skc_state = bindings::TCP_LISTEN as u8 };
    }

    /// SO_ERROR's value; 0 clears it.
    pub(crate) fn set_error(&mut self, errno: u32) {
        // SAFETY: a live sock; sk_err is what TCP sets from its paths too.
        unsafe { (*self.sk).sk_err = errno as c_int };
    }

    pub(crate) fn error(&self) -> u32 {
        // SAFETY: a live sock.
        unsafe { (*self.sk).sk_err as u32 }
    }

    /// SO_RCVTIMEO and SO_SNDTIMEO, in jiffies.
    pub(crate) fn receive_timeout(&self) -> i64 {
        // SAFETY: a live sock.
        unsafe { (*self.sk).sk_rcvtimeo as i64 }
    }

    pub(crate) fn send_timeout(&self) -> i64 {
        // SAFETY: a live sock.
        unsafe { (*self.sk).sk_sndtimeo as i64 }
    }

    /// The socket lock (`lock_sock`) for one call, as TCP takes it.
    pub(crate) fn lock(&self) -> SockLock<'a> {
        // SAFETY: a live sock; process context (every caller is a syscall).
        unsafe { bindings::lock_sock_nested(self.sk, 0) };
        SockLock { sk: self.sk, _call: PhantomData }
    }
}

/// The socket lock, held: calls on one socket take turns (one sender, one
/// reader at a time), and a caller whose buffer faults slowly holds up
/// only its own socket.
pub(crate) struct SockLock<'a> {
    sk: *mut bindings::sock,
    _call: PhantomData<&'a bindings::sock>,
}

impl SockLock<'_> {
    /// Runs `wait` with the lock released (as sk_wait_event does), so the
    /// socket's other calls go on meanwhile.
    pub(crate) fn released<R>(&mut self, wait: impl FnOnce() -> R) -> R {
        // SAFETY: held by this guard, and taken again before returning.
        unsafe { bindings::release_sock(self.sk) };
        let result = wait();
        // SAFETY: as in Sock::lock.
        unsafe { bindings::lock_sock_nested(self.sk, 0) };
        result
    }
}

impl Drop for SockLock<'_> {
    fn drop(&mut self) {
        // SAFETY: held by this guard.
        unsafe { bindings::release_sock(self.sk) };
    }
}

/// One of our `struct socket`s, for the duration of a call on it.
pub(crate) struct Socket<'a> {
    sock: *mut bindings::socket,
    _call: PhantomData<&'a bindings::socket>,
}

impl<'a> Socket<'a> {
    /// # Safety
    ///
    /// `sock` is a live socket whose `sk`, if set, is one of ours; valid
    /// for 'a.
    unsafe fn from_raw(sock: *mut bindings::socket) -> Socket<'a> {
        Socket { sock, _call: PhantomData }
    }

    pub(crate) fn sk(&self) -> Sock<'a> {
        // SAFETY: from_raw's contract: sk is ours and lives as long.
        unsafe { Sock::from_raw((*self.sock).sk) }
    }

    pub(crate) fn state(&self) -> State {
        // SAFETY: a live socket.
        match unsafe { (*self.sock).state } {
            bindings::socket_state_SS_UNCONNECTED => State::Unconnected,
            bindings::socket_state_SS_CONNECTING => State::Connecting,
            bindings::socket_state_SS_CONNECTED => State::Connected,
            _ => State::Other,
        }
    }

    pub(crate) fn set_state(&mut self, state: State) {
        let raw = match state {
            State::Unconnected => bindings::socket_state_SS_UNCONNECTED,
            State::Connecting => bindings::socket_state_SS_CONNECTING,
            State::Connected => bindings::socket_state_SS_CONNECTED,
            State::Other => return,
        };
        // SAFETY: a live socket; its state is the protocol's to set.
        unsafe { (*self.sock).state = raw };
    }

    /// Whether the call must not block: MSG_DONTWAIT in `flags`, or
    /// O_NONBLOCK on the file.
    pub(crate) fn nonblocking(&self, flags: i32) -> bool {
        // SAFETY: a live socket; its file, when set, lives as long.
        let file_flags = unsafe { if (*self.sock).file.is_null() { 0 } else { (*(*self.sock).file).f_flags } };
        flags as u32 & bindings::MSG_DONTWAIT != 0 || file_flags & bindings::O_NONBLOCK != 0
    }

    /// Lets SOL_SOCKET setsockopt reach our proto's setsockopt (as MPTCP
    /// does), so that options the host connection needs go to the device.
    fn take_sol_socket_options(&mut self) {
        // SAFETY: a socket being set up (socket(), accept()), not yet
        // visible to another task, so a plain write of its flags races
        // with nothing.
        unsafe { (*self.sock).flags |= 1 << bindings::VIRTIO_TLS_SOCK_CUSTOM_SOCKOPT };
    }

    /// The generic SOL_SOCKET setsockopt, as the core runs it for sockets
    /// without SOCK_CUSTOM_SOCKOPT.
    pub(crate) fn generic_setsockopt(&self, optname: i32, value: OptValue<'_>) -> Result {
        // SAFETY: a live socket; the value is the caller's (user memory)
        // or a kernel slice that outlives the call.
        kernel::error::to_result(unsafe { bindings::sock_setsockopt(self.sock, SOL_SOCKET, optname, value.raw, value.len) })
    }
}

pub(crate) use crate::compat::user_slice;

/// MSG_PEEK, for recvmsg's flags.
pub(crate) const MSG_PEEK: i32 = bindings::MSG_PEEK as i32;
/// O_NONBLOCK, for accept's flags.
pub(crate) const O_NONBLOCK: i32 = bindings::O_NONBLOCK as i32;

/// The caller's data of a sendmsg or recvmsg (its `msg_iter`).
pub(crate) struct MsgIter<'a> {
    msg: *mut bindings::msghdr,
    _call: PhantomData<&'a mut bindings::msghdr>,
}

impl MsgIter<'_> {
    /// Copies up to `into.len()` bytes from the caller; how many came (0
    /// on a fault). May fault and sleep: no driver lock may be held.
    pub(crate) fn copy_from(&mut self, into: &mut [u8]) -> usize {
        // SAFETY: a live msghdr (the trampoline's contract); `into` is ours.
        unsafe { bindings::_copy_from_iter(into.as_mut_ptr().cast(), into.len(), &mut (*self.msg).msg_iter) }
    }

    /// Copies `from` to the caller; how many bytes went (0 on a fault).
    pub(crate) fn copy_to(&mut self, from: &[u8]) -> usize {
        // SAFETY: as in copy_from.
        unsafe { bindings::_copy_to_iter(from.as_ptr().cast(), from.len(), &mut (*self.msg).msg_iter) }
    }
}

/// A setsockopt value (`sockptr_t`): user memory, or kernel memory when
/// the core calls for a kernel caller.
#[derive(Clone, Copy)]
pub(crate) struct OptValue<'a> {
    raw: bindings::sockptr_t,
    len: c_uint,
    _value: PhantomData<&'a [u8]>,
}

impl<'a> OptValue<'a> {
    /// A kernel buffer, passed on as KERNEL_SOCKPTR() does.
    pub(crate) fn kernel(bytes: &'a [u8]) -> OptValue<'a> {
        // SAFETY: a plain C struct; all-zero is a null user pointer.
        let mut raw: bindings::sockptr_t = unsafe { core::mem::zeroed() };
        raw.__bindgen_anon_1.kernel = bytes.as_ptr() as *mut core::ffi::c_void;
        raw.set_is_kernel(true);
        OptValue { raw, len: bytes.len() as c_uint, _value: PhantomData }
    }

    pub(crate) fn len(&self) -> usize {
        self.len as usize
    }

    /// The first `len` bytes of the value (at most its length).
    pub(crate) fn read(&self, len: usize) -> Result<KVec<u8>> {
        let len = len.min(self.len as usize);
        let mut value = KVec::new();
        // SAFETY: reading the union member is_kernel selects; a kernel
        // pointer comes with its length readable (the core's contract, or
        // `kernel()`'s slice).
        unsafe {
            if self.raw.is_kernel() {
                let from = core::slice::from_raw_parts(self.raw.__bindgen_anon_1.kernel.cast::<u8>(), len);
                value.extend_from_slice(from, GFP_KERNEL)?;
            } else {
                user_slice(self.raw.__bindgen_anon_1.user as usize, len).read_all(&mut value, GFP_KERNEL)?;
            }
        }
        Ok(value)
    }
}

/// Makes the sock of an accepted connection, as inet_create would, minus
/// the CREATE our proto.init would send (the device made it already), and
/// links it to `newsock`. Without CONFIG_NET_NS every socket lives in
/// init_net.
pub(crate) fn new_accepted<'a>(listener: &Sock<'_>, newsock: &mut Socket<'a>, kern: bool) -> Result<Sock<'a>> {
    let family = listener.family();
    // SAFETY: the listener is a live sock of ours; sk_alloc zeroes the new
    // object (TlsSock, TlsSock6) of our proto.
    let newsk = unsafe {
        let prot = (*listener.sk).__sk_common.skc_prot;
        bindings::sk_alloc(ptr::addr_of_mut!(bindings::init_net), family.number() as c_int, bindings::VIRTIO_TLS_GFP_KERNEL, prot, kern as c_int)
    };
    if newsk.is_null() {
        return Err(code::ENOMEM.into());
    }
    // SAFETY: newsk is a fresh sock of our protocol; newsock is the core's
    // new socket, which sock_init_data links to it.
    unsafe {
        bindings::sock_init_data(newsock.sock, newsk);
        (*newsk).sk_protocol = wire::IPPROTO_TLS as u16;
        (*newsk).__sk_common.skc_state = bindings::TCP_ESTABLISHED as u8;
        // What an accepted TCP socket inherits from its listener and
        // sock_init_data does not set as inet_create does (SO_TXREHASH).
        crate::compat::copy_txrehash(listener.sk, newsk);
        if family == Family::Inet6 {
            // inet6_sk() finds the IPv6 part through pinet6.
            let tls6 = newsk.cast::<TlsSock6>();
            (*tls6).tls.inet.pinet6 = ptr::addr_of_mut!((*tls6).ipv6);
        }
    }
    newsock.take_sol_socket_options();
    // SAFETY: newsk is ours (allocated above with our proto) and is
    // released by the core with newsock.
    Ok(unsafe { Sock::from_raw(newsk) })
}

// The trampolines: each turns its pointers into handles and calls
// socket.rs (see the module's safety contract).

unsafe extern "C" fn tls_init(sk: *mut bindings::sock) -> c_int {
    // SAFETY: the core passes the sock it is creating with our proto;
    // inet_create linked it to its socket (sock_init_data) first.
    let (mut sock, mut socket) = unsafe { (Sock::from_raw(sk), Socket::from_raw((*sk).sk_socket)) };
    match socket::create(&mut sock) {
        Ok(()) => {
            if !socket.sock.is_null() {
                socket.take_sol_socket_options();
            }
            0
        }
        Err(error) => error.to_errno(),
    }
}

unsafe extern "C" fn tls_close(sk: *mut bindings::sock, _timeout: kernel::ffi::c_long) {
    // SAFETY: the core passes a live sock of ours it wants released.
    socket::close(&mut unsafe { Sock::from_raw(sk) });
    // SAFETY: as above; inet_sock_destruct refuses (and leaks) a stream
    // socket whose state is not TCP_CLOSE, as a listening one's is.
    unsafe {
        (*sk).__sk_common.skc_state = bindings::TCP_CLOSE as u8;
        bindings::sk_common_release(sk)
    };
}

unsafe extern "C" fn tls_connect(sock: *mut bindings::socket, uaddr: *mut crate::compat::SockaddrArg, addr_len: c_int, flags: c_int) -> c_int {
    // SAFETY: move_addr_to_kernel copied addr_len bytes (at most a
    // sockaddr_storage, 128) to this kernel buffer.
    let address = unsafe { core::slice::from_raw_parts(uaddr.cast::<u8>(), (addr_len.max(0) as usize).min(128)) };
    // SAFETY: the module's contract.
    let result = socket::connect(&mut unsafe { Socket::from_raw(sock) }, address, flags);
    kernel::error::from_result(|| result.map(|()| 0))
}

unsafe extern "C" fn tls_bind(sock: *mut bindings::socket, uaddr: *mut crate::compat::SockaddrArg, addr_len: c_int) -> c_int {
    // SAFETY: as in tls_connect.
    let address = unsafe { core::slice::from_raw_parts(uaddr.cast::<u8>(), (addr_len.max(0) as usize).min(128)) };
    // SAFETY: the module's contract.
    let result = socket::bind(&mut unsafe { Socket::from_raw(sock) }, address);
    kernel::error::from_result(|| result.map(|()| 0))
}

unsafe extern "C" fn tls_listen(sock: *mut bindings::socket, backlog: c_int) -> c_int {
    // SAFETY: the module's contract.
    let result = socket::listen(&mut unsafe { Socket::from_raw(sock) }, backlog);
    kernel::error::from_result(|| result.map(|()| 0))
}

unsafe extern "C" fn tls_accept(sock: *mut bindings::socket, newsock: *mut bindings::socket, arg: *mut bindings::proto_accept_arg) -> c_int {
    // SAFETY: the core passes a live listening socket, a new socket
    // without a sock yet, and its accept arguments.
    let (mut listener, mut accepted, flags, kern) =
        unsafe { (Socket::from_raw(sock), Socket::from_raw(newsock), (*arg).flags, (*arg).kern) };
    let result = socket::accept(&mut listener, &mut accepted, flags, kern);
    kernel::error::from_result(|| result.map(|()| 0))
}

unsafe extern "C" fn tls_getname(sock: *mut bindings::socket, uaddr: *mut bindings::sockaddr, peer: c_int) -> c_int {
    // SAFETY: the core passes a sockaddr_storage-sized (128 bytes) kernel
    // buffer to fill.
    let out = unsafe { &mut *uaddr.cast::<[u8; 128]>() };
    // SAFETY: the module's contract.
    let result = socket::getname(&unsafe { Socket::from_raw(sock) }, out, peer != 0);
    kernel::error::from_result(|| result.map(|len| len as c_int))
}

unsafe extern "C" fn tls_poll(file: *mut bindings::file, sock: *mut bindings::socket, wait: *mut bindings::poll_table_struct) -> bindings::__poll_t {
    // SAFETY: the core passes the file and poll table of a running poll.
    unsafe { crate::device::WAITERS.register_poll(file, wait) };
    // SAFETY: the module's contract.
    socket::poll(&mut unsafe { Socket::from_raw(sock) })
}

unsafe extern "C" fn tls_shutdown(sock: *mut bindings::socket, how: c_int) -> c_int {
    // SAFETY: the module's contract.
    let result = socket::shutdown(&unsafe { Socket::from_raw(sock) }, how);
    kernel::error::from_result(|| result.map(|()| 0))
}

unsafe extern "C" fn tls_sendmsg(sock: *mut bindings::socket, msg: *mut bindings::msghdr, total: usize) -> c_int {
    let mut data = MsgIter { msg, _call: PhantomData };
    // SAFETY: the module's contract; msg is the call's.
    let result = socket::send(&mut unsafe { Socket::from_raw(sock) }, &mut data, total);
    kernel::error::from_result(|| result.map(|sent| sent as c_int))
}

unsafe extern "C" fn tls_recvmsg(sock: *mut bindings::socket, msg: *mut bindings::msghdr, total: usize, flags: c_int) -> c_int {
    let mut data = MsgIter { msg, _call: PhantomData };
    // SAFETY: the module's contract; msg is the call's.
    let result = socket::receive(&mut unsafe { Socket::from_raw(sock) }, &mut data, total, flags);
    kernel::error::from_result(|| result.map(|received| received as c_int))
}

unsafe extern "C" fn tls_setsockopt(sk: *mut bindings::sock, level: c_int, optname: c_int, optval: bindings::sockptr_t, optlen: c_uint) -> c_int {
    let value = OptValue { raw: optval, len: optlen, _value: PhantomData };
    // SAFETY: the core passes a live sock of ours, linked to its socket.
    let (sock, socket) = unsafe { (Sock::from_raw(sk), Socket::from_raw((*sk).sk_socket)) };
    let result = socket::setsockopt(&sock, &socket, level, optname, value);
    kernel::error::from_result(|| result.map(|()| 0))
}

unsafe extern "C" fn tls_getsockopt(sk: *mut bindings::sock, level: c_int, optname: c_int, optval: *mut kernel::ffi::c_char, optlen: *mut c_int) -> c_int {
    // SAFETY: the core passes a live sock of ours; optval and optlen are
    // user pointers, reached only through UserSlice.
    let sock = unsafe { Sock::from_raw(sk) };
    let result = socket::getsockopt(&sock, level, optname, optval as usize, optlen as usize);
    kernel::error::from_result(|| result.map(|()| 0))
}

/// TLS sockets live on the device, not in the kernel's hash tables.
unsafe extern "C" fn tls_hash(_sk: *mut bindings::sock) -> c_int {
    0
}

/// Must exist: sk_common_release calls it unconditionally.
unsafe extern "C" fn tls_unhash(_sk: *mut bindings::sock) {}

/// Statics the socket core reads through raw pointers.
struct Shared<T>(core::cell::UnsafeCell<T>);
// SAFETY: written once in `register` before being published, then only
// read by the core.
unsafe impl<T> Sync for Shared<T> {}

macro_rules! zeroed_static {
    ($($name:ident: $type:ty),* $(,)?) => {
        // SAFETY: all-zero is a valid value of each of these C structs
        // (null pointers, no callbacks); `register` fills them in.
        $(static $name: Shared<$type> = Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));)*
    };
}
zeroed_static!(
    PROTO: bindings::proto, OPS: bindings::proto_ops, PROTOSW: bindings::inet_protosw,
    PROTO6: bindings::proto, OPS6: bindings::proto_ops, PROTOSW6: bindings::inet_protosw,
);

/// Fills in one family's protocol, operations and switch entry.
///
/// # Safety
///
/// Only from `register`, before the entries are registered.
unsafe fn fill_protocol(
    module: &'static ThisModule,
    proto: *mut bindings::proto,
    ops: *mut bindings::proto_ops,
    protosw: *mut bindings::inet_protosw,
    family: Family,
) {
    let owner = module.as_ptr().cast::<bindings::module>();
    let name: &[u8] = if family == Family::Inet6 { b"TLSv6\0" } else { b"TLS\0" };
    // SAFETY: the caller guarantees nothing else uses these yet.
    unsafe {
        for (to, from) in (*proto).name.iter_mut().zip(name) {
            *to = *from as _;
        }
        (*proto).owner = owner;
        if family == Family::Inet6 {
            (*proto).obj_size = core::mem::size_of::<TlsSock6>() as _;
            (*proto).ipv6_pinfo_offset = core::mem::offset_of!(TlsSock6, ipv6) as _;
        } else {
            (*proto).obj_size = core::mem::size_of::<TlsSock>() as _;
        }
        (*proto).init = Some(tls_init);
        (*proto).close = Some(tls_close);
        (*proto).hash = Some(tls_hash);
        (*proto).unhash = Some(tls_unhash);
        (*proto).setsockopt = Some(tls_setsockopt);
        (*proto).getsockopt = Some(tls_getsockopt);

        (*ops).family = family.number() as _;
        (*ops).owner = owner;
        (*ops).release = Some(if family == Family::Inet6 { bindings::inet6_release } else { bindings::inet_release });
        (*ops).bind = Some(tls_bind);
        (*ops).connect = Some(tls_connect);
        (*ops).setsockopt = Some(bindings::sock_common_setsockopt);
        (*ops).getsockopt = Some(bindings::sock_common_getsockopt);
        (*ops).socketpair = Some(bindings::sock_no_socketpair);
        (*ops).accept = Some(tls_accept);
        (*ops).getname = Some(tls_getname);
        (*ops).listen = Some(tls_listen);
        (*ops).shutdown = Some(tls_shutdown);
        (*ops).sendmsg = Some(tls_sendmsg);
        (*ops).recvmsg = Some(tls_recvmsg);
        (*ops).mmap = Some(bindings::sock_no_mmap);
        (*ops).poll = Some(tls_poll);

        (*protosw).type_ = bindings::sock_type_SOCK_STREAM as _;
        (*protosw).protocol = wire::IPPROTO_TLS as _;
        (*protosw).prot = proto;
        (*protosw).ops = ops;
    }
}

/// Registers IPPROTO_TLS for AF_INET and AF_INET6; each step is undone if
/// a later one fails.
pub(crate) fn register(module: &'static ThisModule) -> Result {
    // SAFETY: runs once at module load before registration publishes the
    // statics.
    unsafe {
        fill_protocol(module, PROTO.0.get(), OPS.0.get(), PROTOSW.0.get(), Family::Inet);
        fill_protocol(module, PROTO6.0.get(), OPS6.0.get(), PROTOSW6.0.get(), Family::Inet6);
        kernel::error::to_result(bindings::proto_register(PROTO.0.get(), 1))?;
        if let Err(error) = kernel::error::to_result(bindings::proto_register(PROTO6.0.get(), 1)) {
            bindings::proto_unregister(PROTO.0.get());
            return Err(error);
        }
        bindings::inet_register_protosw(PROTOSW.0.get());
        if let Err(error) = kernel::error::to_result(bindings::inet6_register_protosw(PROTOSW6.0.get())) {
            bindings::inet_unregister_protosw(PROTOSW.0.get());
            bindings::proto_unregister(PROTO6.0.get());
            bindings::proto_unregister(PROTO.0.get());
            return Err(error);
        }
    }
    Ok(())
}

/// Undoes `register`. Sockets hold a module reference, so none is open.
pub(crate) fn unregister() {
    // SAFETY: registered at module load.
    unsafe {
        bindings::inet6_unregister_protosw(PROTOSW6.0.get());
        bindings::inet_unregister_protosw(PROTOSW.0.get());
        bindings::proto_unregister(PROTO6.0.get());
        bindings::proto_unregister(PROTO.0.get());
    }
}
