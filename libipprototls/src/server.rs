//! The server side: bind, listen and accept on IPPROTO_TLS sockets.
//!
//! accept() returns only connections whose TLS handshake has completed, as
//! the device does; a client that fails the handshake (bad certificate,
//! garbage, silence past the policy's handshake timeout) is dropped and
//! never reaches the program. The handshakes of accepted TCP connections
//! run on an acceptor thread, one per listening socket, and the program's
//! descriptor becomes an eventfd counting the handshaken connections
//! waiting:
//!
//! - handshakes progress whatever the program does meanwhile: blocked in
//!   accept(), in a wait this library does not interpose (pselect before
//!   it was, io_uring), busy with another client, or not calling anything.
//!   Driving them from accept() and from the readiness calls instead would
//!   stall them whenever the program waits on something else, and would
//!   have to add every pending connection to the program's own epoll sets;
//! - readiness is the kernel's own for that eventfd, so poll, select,
//!   epoll (level- or edge-triggered, one-shot, exclusive) and a thread
//!   already blocked in one of them all see "readable" exactly while a
//!   handshaken connection waits, with no correction to apply;
//! - a blocking accept() is a blocking read() of the eventfd, which the
//!   kernel interrupts and restarts on signals as it does accept().
//!
//! Where a program may listen: when the policy lists ports under
//! `[[server.listen]]`, only those, and the kernel socket is bound to the
//! mapping's host address (the device's rule, so one policy serves both);
//! otherwise the program binds the address it asks for. Either way listen()
//! needs a certificate to present — the policy's `[[server.identities]]`
//! or the socket's own (TLS_CERTIFICATE_CHAIN and TLS_PRIVATE_KEY, where
//! the policy allows them) — or it fails with EACCES and a TLS_ERROR
//! saying so: an IPPROTO_TLS socket never listens in plaintext.

use std::collections::VecDeque;
use std::ffi::c_int;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustls::{ServerConfig, ServerConnection};
use tls_engine::errno::Errno;
use tls_engine::options::SocketOptions;
use tls_engine::policy::backlog as backlog_for;
use tls_engine::tls::ClientContext;

use crate::conn::{HandshakeSlot, State, TlsSocket};
use crate::table::{self, Handle};
use crate::{config, readiness, real, sockaddr, stdio};

/// A listening socket's side of its acceptor thread.
pub struct Listening {
    shared: Arc<Shared>,
    /// The listening TCP socket, a descriptor of the library's own (the
    /// program's number now names the eventfd).
    pub kernel_fd: c_int,
    /// accept() is served in the process that called listen() only: the
    /// acceptor thread does not exist in a child after fork().
    owner_pid: libc::pid_t,
}

/// What the program's calls and the acceptor thread share.
struct Shared {
    /// Handshaken connections, oldest first: the descriptor the acceptor
    /// accepted them on, their TLS state, the client's address.
    ready: Mutex<VecDeque<(c_int, TlsSocket, SocketAddr)>>,
    /// Wakes the acceptor: to stop, or because accept() freed room.
    control: c_int,
    stopped: AtomicBool,
    backlog: AtomicUsize,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the control eventfd is ours; everyone who could write to
        // it held an Arc of this.
        unsafe { real::close(self.control) };
    }
}

impl Shared {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: 8 bytes to our own eventfd.
        unsafe { real::write(self.control, (&one as *const u64).cast(), 8) };
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, VecDeque<(c_int, TlsSocket, SocketAddr)>> {
        self.ready.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Listening {
    /// The listening socket's last descriptor closed: the acceptor closes
    /// the kernel socket and every connection not accepted yet.
    pub fn stop(self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.wake();
    }
}

fn fail_with(socket: &mut TlsSocket, errno: Errno, reason: String) -> Result<(), Errno> {
    socket.set_error(reason);
    Err(errno)
}

/// bind(): where the policy maps ports, only those, at the mapping's host
/// address; otherwise the program's own address.
pub fn bind(handle: &Handle, fd: c_int, raw: &[u8]) -> Result<(), Errno> {
    let mut socket = table::lock(handle);
    if socket.state != State::Created || socket.bound_as.is_some() {
        return Err(Errno::EINVAL);
    }
    let asked = sockaddr::inet_address(raw, socket.family())?;
    let policy = socket.context().policy().clone();
    if policy.server.listen.is_empty() {
        // SAFETY: the program's own address, len bytes of it.
        return match unsafe { real::bind(fd, raw.as_ptr().cast(), raw.len() as libc::socklen_t) } {
            0 => Ok(()),
            _ => Err(Errno(real::errno() as u32)),
        };
    }
    let mapping = match policy.server.mapping_for_bind(asked.port()) {
        Ok(mapping) => mapping,
        Err(failure) => return fail_with(&mut socket, failure.errno, failure.reason),
    };
    let Some(host) = sockaddr::for_family(mapping.host, socket.family()) else {
        let reason = format!("the policy maps port {} to {}, which an AF_INET socket cannot bind: use AF_INET6", asked.port(), mapping.host);
        return fail_with(&mut socket, Errno::EAFNOSUPPORT, reason);
    };
    let (storage, len) = sockaddr::to_raw(host);
    // SAFETY: storage holds a sockaddr of len bytes.
    if unsafe { real::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } != 0 {
        let error = std::io::Error::last_os_error();
        let reason = format!("cannot bind {host} (the policy's address for port {}): {error}", asked.port());
        return fail_with(&mut socket, Errno::from_io(&error), reason);
    }
    socket.bound_as = Some(asked);
    Ok(())
}

/// listen(): checks there is a certificate to present, starts listening and
/// the acceptor thread, and puts the readiness eventfd under `fd`.
pub fn listen(handle: &Handle, fd: c_int, backlog: c_int) -> Result<(), Errno> {
    let mut socket = table::lock(handle);
    match socket.state {
        State::Resolving | State::Connecting | State::Handshaking => return Err(Errno::EINVAL),
        // A connected socket: EOPNOTSUPP, as SSA's tests (and the guest
        // driver) say.
        State::Established | State::Failed => return Err(Errno::EOPNOTSUPP),
        State::Listening => {
            // Listening already: only the backlog changes, as for TCP.
            let listening = socket.listening.as_ref().expect("a listening socket has its acceptor");
            listening.shared.backlog.store(backlog_for(i64::from(backlog)), Ordering::Release);
            listening.shared.wake();
            return Ok(());
        }
        State::Created => {}
    }
    let context = socket.context();
    if !context.policy().server.listen.is_empty() && socket.bound_as.is_none() {
        let reason = "listen() before bind(): the policy maps fixed ports only: bind a port it lists under [[server.listen]]";
        return fail_with(&mut socket, Errno::EINVAL, reason.to_owned());
    }
    let server = config::server_context().expect("a socket exists, so the policy loaded");
    let tls_config = match server.config(socket.options()) {
        Ok(config) => config,
        Err(failure) => {
            let reason = format!(
                "listen() refused: {} and the socket has no TLS_CERTIFICATE_CHAIN/TLS_PRIVATE_KEY of its own: \
                 an IPPROTO_TLS socket never listens without a certificate",
                failure.reason
            );
            return fail_with(&mut socket, failure.errno, reason);
        }
    };
    let listening = start(fd, backlog, tls_config, &socket).map_err(|e| {
        let errno = Errno::from_io(&e);
        socket.set_error(format!("cannot listen: {e}"));
        errno
    })?;
    socket.listening = Some(listening);
    socket.state = State::Listening;
    drop(socket);
    readiness::reregister(fd);
    Ok(())
}

fn os_error(errno: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno.0 as i32)
}

fn cvt(result: c_int) -> std::io::Result<c_int> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Descriptors closed when dropped, unless taken out of the list.
struct Owned(Vec<c_int>);

impl Drop for Owned {
    fn drop(&mut self) {
        for &fd in &self.0 {
            // SAFETY: descriptors this module opened and still owns.
            unsafe { real::close(fd) };
        }
    }
}

fn start(fd: c_int, backlog: c_int, tls_config: Arc<ServerConfig>, socket: &TlsSocket) -> std::io::Result<Listening> {
    // Every descriptor made here is kept off the numbers stdio writes to
    // (crate::stdio), where a stray printf would reach it.
    let kernel_fd = stdio::duplicate_above(fd, 3).map_err(os_error)?;
    let mut owned = Owned(vec![kernel_fd]);
    // SAFETY: F_GETFL on the program's socket.
    let program_flags = cvt(unsafe { real::fcntl(fd, libc::F_GETFL, 0) })?;
    let nonblock = if program_flags & libc::O_NONBLOCK != 0 { libc::EFD_NONBLOCK } else { 0 };
    // The program's descriptor from now on: readable while connections
    // wait, one count each (EFD_SEMAPHORE: each read takes one). This
    // number stays the acceptor's, for the program may close (and reuse)
    // its own at any time.
    // SAFETY: eventfd with constant flags; the descriptor is ours.
    let ready_fd = cvt(unsafe { libc::eventfd(0, libc::EFD_SEMAPHORE | libc::EFD_CLOEXEC | nonblock) })?;
    owned.0.push(ready_fd);
    let ready_fd = stdio::move_off_reserved(ready_fd).map_err(os_error)?;
    owned.0[1] = ready_fd;
    // SAFETY: as above; Shared closes it.
    let control = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    let control = stdio::move_off_reserved(control).map_err(|errno| {
        // SAFETY: the eventfd just made, not yet anyone's.
        unsafe { real::close(control) };
        os_error(errno)
    })?;
    // Closed when the last Arc goes (the listening socket's, the acceptor's).
    let shared = Arc::new(Shared {
        ready: Mutex::new(VecDeque::new()),
        control,
        stopped: AtomicBool::new(false),
        backlog: AtomicUsize::new(backlog_for(i64::from(backlog))),
    });
    // SAFETY: listen() on our copy of the program's socket.
    cvt(unsafe { real::listen(kernel_fd, backlog) })?;
    // The acceptor never waits in accept4: the TCP socket is non-blocking
    // (the program's descriptor will not share its file any more).
    // SAFETY: F_SETFL on our copy.
    // From here on a failure must also stop the listening (a TCP shutdown
    // of a listening socket does): nobody would accept from it.
    let stop_listening = |_: &std::io::Error| {
        // SAFETY: shutdown of our copy.
        unsafe { real::shutdown(kernel_fd, libc::SHUT_RDWR) };
    };
    // SAFETY: F_SETFL on our copy.
    cvt(unsafe { real::fcntl(kernel_fd, libc::F_SETFL, libc::c_long::from(program_flags | libc::O_NONBLOCK)) })
        .inspect_err(stop_listening)?;
    readiness::unregister(fd);
    // Replaces the program's descriptor (the listening socket, still open
    // as kernel_fd) with the eventfd, atomically.
    // SAFETY: dup3 of our eventfd onto the program's descriptor.
    cvt(unsafe { real::dup3(ready_fd, fd, libc::O_CLOEXEC) }).inspect_err(stop_listening)?;
    let acceptor = Acceptor {
        shared: shared.clone(),
        kernel_fd,
        ready_fd,
        config: tls_config,
        family: socket.family(),
        context: socket.context(),
        options: socket.options().clone(),
        pending: Vec::new(),
    };
    if let Err(e) = std::thread::Builder::new().name("ipprototls-accept".into()).spawn(move || acceptor.run()) {
        // Nobody would accept from this socket: it must not go on
        // listening (a TCP shutdown of a listening socket stops it), and
        // the program's descriptor is a socket again.
        // SAFETY: shutdown and dup3 of our copy back onto the program's
        // descriptor.
        unsafe {
            real::shutdown(kernel_fd, libc::SHUT_RDWR);
            real::dup3(kernel_fd, fd, libc::O_CLOEXEC);
        }
        return Err(e);
    }
    // Both descriptors are the acceptor's now.
    owned.0.clear();
    // SAFETY: getpid has no preconditions.
    Ok(Listening { shared, kernel_fd, owner_pid: unsafe { libc::getpid() } })
}

/// accept()/accept4(): the oldest handshaken connection, with the client's
/// address in `addr` (as much as `addr_len` allows); blocks unless the
/// listening descriptor is non-blocking (EAGAIN then).
pub fn accept(handle: &Handle, fd: c_int, flags: c_int) -> Result<(c_int, SocketAddr), Errno> {
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return Err(Errno::EINVAL);
    }
    let shared = {
        let mut socket = table::lock(handle);
        let Some(listening) = socket.listening.as_ref() else { return Err(Errno::EINVAL) };
        // SAFETY: getpid has no preconditions.
        if listening.owner_pid != unsafe { libc::getpid() } {
            let reason = "this listening socket is served by the process that called listen(), not by a forked child".to_owned();
            socket.set_error(reason);
            return Err(Errno::EOPNOTSUPP);
        }
        listening.shared.clone()
    };
    // One count per connection in the queue, pushed before it is counted:
    // a count taken means a connection is there for this caller. Blocking
    // or not as the program's descriptor is (the eventfd has its flags).
    let mut count: u64 = 0;
    // SAFETY: 8 bytes into count.
    if unsafe { real::read(fd, (&mut count as *mut u64).cast(), 8) } != 8 {
        return Err(Errno(real::errno() as u32));
    }
    let Some((new_fd, socket, peer)) = shared.ready().pop_front() else {
        // The socket was closed meanwhile and its queue emptied.
        return Err(Errno::EINVAL);
    };
    shared.wake(); // room in the backlog
    if flags & libc::SOCK_NONBLOCK == 0 {
        // Blocking, as accept() makes it (the acceptor's was not).
        // SAFETY: F_SETFL on the descriptor being handed over.
        unsafe { real::fcntl(new_fd, libc::F_SETFL, 0) };
    }
    // Close-on-exec whatever the flags say: see README, fork and exec.
    table::insert(new_fd, Arc::new(Mutex::new(socket)));
    Ok((new_fd, peer))
}

/// The listening socket's acceptor: takes TCP connections off the kernel's
/// queue while the backlog has room, runs their handshakes, and queues the
/// handshaken ones for accept(), counting them on the eventfd.
struct Acceptor {
    shared: Arc<Shared>,
    kernel_fd: c_int,
    ready_fd: c_int,
    config: Arc<ServerConfig>,
    family: c_int,
    context: &'static ClientContext,
    options: SocketOptions,
    pending: Vec<(c_int, TlsSocket)>,
}

/// How long the acceptor waits before trying again when the process is out
/// of descriptors or TLS sockets, or over its handshake limits (nothing
/// else would wake it).
const RETRY_MS: c_int = 100;

impl Acceptor {
    fn run(mut self) {
        let mut starved = false;
        while !self.shared.stopped.load(Ordering::Acquire) {
            let waiting = self.shared.ready().len();
            let room = self.pending.len() + waiting < self.shared.backlog.load(Ordering::Acquire);
            let mut fds = vec![
                libc::pollfd { fd: self.shared.control, events: libc::POLLIN, revents: 0 },
                // Left out (fd -1) while the backlog is full: clients wait
                // in the kernel's queue.
                libc::pollfd { fd: if room && !starved { self.kernel_fd } else { -1 }, events: libc::POLLIN, revents: 0 },
            ];
            let mut wake_by: Option<Instant> = None;
            for (fd, socket) in &self.pending {
                fds.push(libc::pollfd { fd: *fd, events: socket.connect_wants(), revents: 0 });
                wake_by = match (wake_by, socket.deadline()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let mut timeout = match wake_by {
                None => -1,
                Some(at) => at.saturating_duration_since(Instant::now()).as_millis().min(c_int::MAX as u128) as c_int + 1,
            };
            if starved {
                timeout = if timeout < 0 { RETRY_MS } else { timeout.min(RETRY_MS) };
            }
            // SAFETY: a valid array of pollfds.
            if unsafe { real::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) } < 0 {
                continue; // EINTR
            }
            if fds[0].revents != 0 {
                let mut count = 0u64;
                // SAFETY: 8 bytes from our own eventfd.
                unsafe { real::read(self.shared.control, (&mut count as *mut u64).cast(), 8) };
            }
            let now = Instant::now();
            let revents: Vec<i16> = fds[2..].iter().map(|p| p.revents).collect();
            for ((fd, mut socket), revents) in std::mem::take(&mut self.pending).into_iter().zip(revents) {
                if revents != 0 || socket.deadline().is_some_and(|d| now >= d) {
                    socket.progress(fd);
                }
                self.settle(fd, socket);
            }
            starved = false;
            if fds[1].revents != 0 {
                starved = !self.take_connections();
            }
        }
        self.close_all();
    }

    /// After a handshake step: a finished connection goes to accept(), one
    /// still handshaking waits, and a failed one (or one past its timeout)
    /// is dropped, never returned by accept; progress() shut it down.
    fn settle(&mut self, fd: c_int, socket: TlsSocket) {
        match socket.state {
            State::Established => self.hand_over(fd, socket),
            State::Handshaking => self.pending.push((fd, socket)),
            _ => {
                // SAFETY: the acceptor's own descriptor, not used again.
                unsafe { real::close(fd) };
            }
        }
    }

    /// Accepts what the kernel has while there is room; false when the
    /// process is out of descriptors or TLS sockets (try again later).
    fn take_connections(&mut self) -> bool {
        loop {
            let waiting = self.shared.ready().len();
            if self.pending.len() + waiting >= self.shared.backlog.load(Ordering::Acquire) {
                return true;
            }
            if !TlsSocket::room_for_another(self.context) {
                return false;
            }
            // The process's handshake limits hold for the handshakes it
            // serves too; over them, clients wait in the kernel's queue
            // and the acceptor looks again after RETRY_MS.
            let Ok(slot) = HandshakeSlot::take(self.context) else {
                return false;
            };
            // SAFETY: sockaddr_storage is plain data.
            let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: peer and len are valid for accept4 to write.
            let fd = unsafe {
                real::accept4(
                    self.kernel_fd,
                    (&mut peer as *mut libc::sockaddr_storage).cast(),
                    &mut len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                return match real::errno() {
                    libc::EAGAIN | libc::EINTR | libc::ECONNABORTED => true,
                    _ => false, // EMFILE and the like
                };
            }
            // Off the numbers stdio writes to (the program closed its
            // stdout, say) before a byte of the handshake is sent.
            let fd = match stdio::move_off_reserved(fd) {
                Ok(fd) => fd,
                Err(_) => {
                    // SAFETY: the descriptor just accepted.
                    unsafe { real::close(fd) };
                    return false; // out of descriptors: as EMFILE above
                }
            };
            // SAFETY: the kernel wrote len bytes of address.
            let raw = unsafe { std::slice::from_raw_parts((&peer as *const libc::sockaddr_storage).cast::<u8>(), len as usize) };
            let accepted = sockaddr::inet_address(raw, self.family).ok().and_then(|peer| {
                let tls = ServerConnection::new(self.config.clone()).ok()?;
                TlsSocket::accepted(self.family, self.context, &self.options, tls, peer, slot).ok()
            });
            let Some(mut socket) = accepted else {
                // SAFETY: the descriptor just accepted.
                unsafe { real::close(fd) };
                continue;
            };
            socket.progress(fd);
            self.settle(fd, socket);
        }
    }

    /// A handshaken connection: queued, then counted (so a count always
    /// has its connection).
    fn hand_over(&mut self, fd: c_int, socket: TlsSocket) {
        let peer = socket.peer().expect("an accepted connection knows its client");
        self.shared.ready().push_back((fd, socket, peer));
        let one: u64 = 1;
        // SAFETY: 8 bytes to the acceptor's descriptor of the eventfd.
        unsafe { real::write(self.ready_fd, (&one as *const u64).cast(), 8) };
    }

    fn close_all(&mut self) {
        let mut fds: Vec<c_int> = self.pending.drain(..).map(|(fd, _)| fd).collect();
        fds.extend(self.shared.ready().drain(..).map(|(fd, _, _)| fd));
        fds.push(self.kernel_fd);
        fds.push(self.ready_fd);
        drop(Owned(fds));
    }
}
