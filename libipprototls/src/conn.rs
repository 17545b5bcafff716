//! One IPPROTO_TLS socket: the program's descriptor is a real kernel TCP
//! socket, and this is the TLS state that goes with it.
//!
//! Nothing here waits (but for close_notify's bounded linger at close):
//! every call does what the kernel socket allows right now (`MSG_DONTWAIT`)
//! and says whether it would have to wait. Waiting is the caller's
//! ([`crate::io`], [`crate::readiness`]), with this socket's lock released,
//! so that one thread blocked reading never stops another from writing.

use std::collections::VecDeque;
use std::ffi::c_int;
use std::io::{self, BufRead, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libc::{POLLERR, POLLHUP, POLLIN, POLLOUT};
use rustls::{Connection, ServerConnection};
use tls_engine::destination::{self, Destination};
use tls_engine::errno::{Errno, Failure};
use tls_engine::getopt::{is_string_option, option_value, SocketState};
use tls_engine::limits::{admit_handshake, HandshakeBucket, HandshakeRefusal};
use tls_engine::options::{Phase as OptionPhase, SocketOptions};
use tls_engine::tls::{describe_error, ClientContext, ConnectionInfo};

use crate::{real, sockaddr, table};

/// Where a socket is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Created,
    /// A non-blocking connect by name: the name is being resolved on a
    /// thread of its own ([`crate::io`]).
    Resolving,
    /// TCP connect in progress.
    Connecting,
    Handshaking,
    Established,
    /// The last connect failed; another may be tried.
    Failed,
    /// listen() succeeded: the descriptor is the listening socket's
    /// readiness eventfd, served by [`crate::server`]'s acceptor thread.
    Listening,
}

/// Largest option value accepted, as the guest driver's limit.
pub const MAX_OPTION_LEN: usize = 4000;

/// TLS_ID values: process-wide, never 0.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// TLS sockets alive in this process, against the policy's max_sockets.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Handshakes under way in this process, client and server, against the
/// policy's max_pending_handshakes; and their starts, against its
/// handshakes_per_second. The device applies both per VM, this library
/// per process.
static HANDSHAKING: AtomicUsize = AtomicUsize::new(0);
static HANDSHAKE_RATE: Mutex<Option<HandshakeBucket>> = Mutex::new(None);

/// One place among the process's handshakes in progress, held from the
/// moment a handshake may start until it is done or has failed.
pub struct HandshakeSlot {
    /// Nothing happened with it yet: dropping it gives the rate's token
    /// back too (an incoming connection that was not there after all).
    unused: bool,
}

impl HandshakeSlot {
    /// A place for one more handshake, or which limit refuses it.
    pub fn take(context: &ClientContext) -> Result<HandshakeSlot, HandshakeRefusal> {
        let limits = &context.policy().limits;
        let in_progress = HANDSHAKING.fetch_add(1, Ordering::AcqRel);
        let mut rate = HANDSHAKE_RATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bucket = rate.get_or_insert_with(|| HandshakeBucket::new(limits.handshakes_per_second));
        match admit_handshake(in_progress, bucket, limits, Instant::now()) {
            Ok(()) => Ok(HandshakeSlot { unused: true }),
            Err(refusal) => {
                HANDSHAKING.fetch_sub(1, Ordering::AcqRel);
                Err(refusal)
            }
        }
    }

    /// A handshake is under way in it: dropping it only frees the place.
    pub fn used(mut self) -> HandshakeSlot {
        self.unused = false;
        self
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        HANDSHAKING.fetch_sub(1, Ordering::AcqRel);
        if self.unused {
            if let Some(bucket) = HANDSHAKE_RATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_mut() {
                bucket.refund();
            }
        }
    }
}

pub struct TlsSocket {
    id: u64,
    /// AF_INET or AF_INET6, as the program created it.
    family: c_int,
    context: &'static ClientContext,
    options: SocketOptions,
    pub state: State,
    tls: Option<Connection>,
    /// The peer's name for verification and messages: the server's name
    /// (client sockets), "client ADDRESS" (accepted connections).
    server_name: String,
    candidates: VecDeque<SocketAddr>,
    current: Option<SocketAddr>,
    /// The kernel socket has been connected (or tried): another connect
    /// needs a fresh one.
    tcp_used: bool,
    /// When connect + handshake must be done, from the policy's limits.
    deadline: Option<Instant>,
    info: ConnectionInfo,
    /// TLS_ERROR.
    error: Option<String>,
    /// SO_ERROR: a failure the program has not been told of yet.
    pending_error: Option<Errno>,
    /// The established connection broke: reads return this after the
    /// plaintext that arrived before, then end of stream.
    broken: Option<Errno>,
    /// The broken error has been returned by a read.
    broken_reported: bool,
    /// The TCP stream from the peer ended.
    tcp_eof: bool,
    read_shut: bool,
    write_shut: bool,
    /// Descriptors (dup) referring to this socket in this process.
    pub descriptors: usize,
    /// [`table::fork_generation`] when created: a different value means the
    /// socket may also be open in another process.
    fork_generation: u64,
    /// bind() to a port the policy maps (`[[server.listen]]`): the address
    /// as the program asked for it, which getsockname() reports (the kernel
    /// socket is bound to the mapping's host address).
    pub bound_as: Option<SocketAddr>,
    /// The listening side, once listen() succeeded.
    pub listening: Option<crate::server::Listening>,
    /// An accepted connection: the name the client asked for (SNI; empty
    /// when none), which TLS_HOSTNAME reports.
    accepted_for_name: Option<String>,
    /// Held while connecting or handshaking (max_pending_handshakes).
    handshake_slot: Option<HandshakeSlot>,
}

/// What a read or write could do without waiting.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Done(usize),
    WouldBlock,
    Failed(Errno),
}

impl Drop for TlsSocket {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TlsSocket {
    /// A new socket, or EMFILE when the process has the policy's
    /// `limits.max_sockets` already (the device's limit is per VM; here it
    /// is per process).
    pub fn new(family: c_int, context: &'static ClientContext) -> Result<TlsSocket, Errno> {
        let limit = context.policy().limits.max_sockets as usize;
        if LIVE.fetch_add(1, Ordering::AcqRel) >= limit {
            LIVE.fetch_sub(1, Ordering::AcqRel);
            return Err(Errno::EMFILE);
        }
        Ok(TlsSocket {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            family,
            context,
            options: SocketOptions::default(),
            state: State::Created,
            tls: None,
            server_name: String::new(),
            candidates: VecDeque::new(),
            current: None,
            tcp_used: false,
            deadline: None,
            info: ConnectionInfo::default(),
            error: None,
            pending_error: None,
            broken: None,
            broken_reported: false,
            tcp_eof: false,
            read_shut: false,
            write_shut: false,
            descriptors: 1,
            fork_generation: table::fork_generation(),
            bound_as: None,
            listening: None,
            accepted_for_name: None,
            handshake_slot: None,
        })
    }

    /// A connection a listening socket's acceptor took from the kernel on
    /// `fd`, with the listening socket's options: its server handshake goes
    /// on in [`Self::progress`], bounded by the policy's handshake timeout.
    pub fn accepted(
        family: c_int,
        context: &'static ClientContext,
        options: &SocketOptions,
        tls: ServerConnection,
        peer: SocketAddr,
        slot: HandshakeSlot,
    ) -> Result<TlsSocket, Errno> {
        let mut socket = TlsSocket::new(family, context)?;
        socket.handshake_slot = Some(slot.used());
        let timeout = Duration::from_secs(u64::from(context.policy().limits.handshake_timeout_secs));
        socket.options = options.clone();
        socket.tls = Some(tls.into());
        socket.state = State::Handshaking;
        socket.server_name = format!("client {peer}");
        socket.current = Some(peer);
        socket.tcp_used = true;
        socket.deadline = Some(Instant::now() + timeout);
        Ok(socket)
    }

    /// Whether the process may open another TLS socket (max_sockets).
    pub fn room_for_another(context: &ClientContext) -> bool {
        LIVE.load(Ordering::Acquire) < context.policy().limits.max_sockets as usize
    }

    /// The address connected to, or the client of an accepted connection.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.current
    }

    pub fn family(&self) -> c_int {
        self.family
    }

    pub fn context(&self) -> &'static ClientContext {
        self.context
    }

    pub fn options(&self) -> &SocketOptions {
        &self.options
    }

    /// TLS_ERROR, as a refused bind() or listen() sets it.
    pub fn set_error(&mut self, reason: String) {
        self.error = Some(reason);
    }

    // -----------------------------------------------------------------------
    // Options
    // -----------------------------------------------------------------------

    /// `setsockopt(fd, IPPROTO_TLS, optname, value)`.
    pub fn set_option(&mut self, optname: u32, value: &[u8]) -> Result<(), Errno> {
        if value.len() > MAX_OPTION_LEN {
            return Err(Errno::EINVAL);
        }
        let phase = if self.state == State::Created { OptionPhase::Unconnected } else { OptionPhase::Connected };
        self.options.set(self.context.policy(), phase, optname, value)
    }

    /// `getsockopt(fd, IPPROTO_TLS, optname)` into `room` bytes; text gets
    /// a terminating NUL, as the guest driver adds.
    pub fn get_option(&self, optname: u32, room: usize) -> Result<Vec<u8>, Errno> {
        let string = is_string_option(optname);
        let room = room.saturating_sub(usize::from(string)).min(MAX_OPTION_LEN);
        let state = SocketState {
            id: self.id,
            options: &self.options,
            info: &self.info,
            error: self.error.as_deref(),
            accepted_for_name: self.accepted_for_name.as_deref(),
        };
        let mut value = option_value(self.context.policy(), &state, optname, room)?;
        if string {
            value.push(0);
        }
        Ok(value)
    }

    /// SO_ERROR: the pending failure, cleared by reading it.
    pub fn take_pending_error(&mut self) -> Option<Errno> {
        self.pending_error.take()
    }

    pub fn pending_error_set(&self) -> bool {
        self.pending_error.is_some()
    }

    // -----------------------------------------------------------------------
    // Connecting
    // -----------------------------------------------------------------------

    /// Starts connecting `fd` to `destination`: checks the policy for every
    /// address before any packet leaves, then starts the TCP connect
    /// without waiting. The handshake follows in [`Self::progress`].
    pub fn start_connect(&mut self, fd: c_int, destination: &Destination) -> Result<(), Failure> {
        self.error = None;
        self.pending_error = None;
        let result = self.begin(fd, destination);
        if let Err(failure) = &result {
            self.state = State::Failed;
            self.error = Some(failure.reason.clone());
            self.handshake_slot = None;
        }
        result
    }

    /// Takes the place a connect's handshake needs among the process's
    /// handshakes (max_pending_handshakes, handshakes_per_second), before
    /// anything else happens. Refused: EAGAIN, TLS_ERROR names the limit,
    /// and the socket stays as it was, so the program may try again (as
    /// through the device).
    pub fn admit(&mut self) -> Result<(), Errno> {
        match HandshakeSlot::take(self.context) {
            Ok(slot) => {
                self.handshake_slot = Some(slot.used());
                Ok(())
            }
            Err(refusal) => {
                self.error = Some(refusal.to_string());
                Err(Errno::EAGAIN)
            }
        }
    }

    fn begin(&mut self, fd: c_int, destination: &Destination) -> Result<(), Failure> {
        let allowed = destination::resolve(self.context.policy(), destination, self.options.hostname())?;
        self.connect_allowed(fd, destination, allowed)
    }

    /// A non-blocking connect to a name: the caller resolves it off this
    /// thread and hands the result to [`Self::resolved`].
    pub fn start_resolving(&mut self) {
        self.error = None;
        self.pending_error = None;
        self.state = State::Resolving;
        let limits = &self.context.policy().limits;
        let budget = u64::from(limits.connect_timeout_secs) + u64::from(limits.handshake_timeout_secs);
        self.deadline = Some(Instant::now() + Duration::from_secs(budget));
    }

    /// What resolving a name needs: the policy and the socket's TLS_HOSTNAME.
    pub fn resolver_inputs(&self) -> (&'static ClientContext, Option<String>) {
        (self.context, self.options.hostname().map(str::to_owned))
    }

    /// The name resolved (or not): connects as [`Self::start_connect`] would
    /// have; a failure is reported as a non-blocking connect's (SO_ERROR).
    pub fn resolved(&mut self, fd: c_int, destination: &Destination, result: Result<Vec<SocketAddr>, Failure>) {
        if self.state != State::Resolving {
            return; // timed out meanwhile
        }
        if let Err(failure) = result.and_then(|allowed| self.connect_allowed(fd, destination, allowed)) {
            self.fail(fd, failure);
        }
    }

    fn connect_allowed(&mut self, fd: c_int, destination: &Destination, allowed: Vec<SocketAddr>) -> Result<(), Failure> {
        let candidates: VecDeque<SocketAddr> =
            allowed.iter().filter_map(|addr| sockaddr::for_family(*addr, self.family)).collect();
        if candidates.is_empty() {
            let family = if self.family == libc::AF_INET { "AF_INET" } else { "AF_INET6" };
            return Err(Failure::new(
                Errno::EAFNOSUPPORT,
                format!("no address of {} fits this {family} socket ({allowed:?})", destination.server_name()),
            ));
        }
        let server_name = self.options.hostname().map(str::to_owned).unwrap_or_else(|| destination.server_name());
        self.connect_in_turn(fd, server_name, candidates)
    }

    /// Connects to the first of `candidates` that answers, verifying the
    /// peer as `server_name`; the policy has allowed them all.
    fn connect_in_turn(&mut self, fd: c_int, server_name: String, candidates: VecDeque<SocketAddr>) -> Result<(), Failure> {
        let policy = self.context.policy();
        self.server_name = server_name;
        self.candidates = candidates;
        let limits = &policy.limits;
        let budget = u64::from(limits.connect_timeout_secs) + u64::from(limits.handshake_timeout_secs);
        self.deadline = Some(Instant::now() + Duration::from_secs(budget));
        // Nothing of an earlier attempt carries over.
        self.tls = None;
        self.info = ConnectionInfo::default();
        self.tcp_eof = false;
        self.broken = None;
        self.broken_reported = false;
        self.read_shut = false;
        self.write_shut = false;
        self.try_next_address(fd, None)
    }

    fn try_next_address(&mut self, fd: c_int, mut last: Option<Failure>) -> Result<(), Failure> {
        while let Some(addr) = self.candidates.pop_front() {
            self.current = Some(addr);
            if self.tcp_used {
                sockaddr::replace_kernel_socket(fd, self.family)
                    .map_err(|e| Failure::new(Errno::from_io(&e), format!("cannot make a new socket to connect again: {e}")))?;
            }
            self.tcp_used = true;
            match sockaddr::connect_nonblocking(fd, addr) {
                Ok(()) => {
                    self.state = State::Connecting;
                    return Ok(());
                }
                Err(e) => last = Some(connect_failure(addr, &e)),
            }
        }
        Err(last.unwrap_or_else(|| Failure::new(Errno::EHOSTUNREACH, "no address to connect to")))
    }

    /// Does the connect and handshake work the kernel socket allows now.
    /// A failure moves the socket to [`State::Failed`] with SO_ERROR set.
    pub fn progress(&mut self, fd: c_int) {
        if let Err(failure) = self.step(fd) {
            self.fail(fd, failure);
        }
    }

    fn step(&mut self, fd: c_int) -> Result<(), Failure> {
        if self.connecting() && self.deadline.is_some_and(|d| Instant::now() >= d) {
            let what = match self.state {
                State::Resolving => "resolving the name to connect to",
                State::Connecting => "connecting",
                _ => "the TLS handshake",
            };
            let peer = if self.server_name.is_empty() { String::new() } else { format!(" ({})", self.server_name) };
            return Err(Failure::new(Errno::ETIMEDOUT, format!("{what} timed out{peer}")));
        }
        if self.state == State::Connecting {
            match sockaddr::connect_result(fd) {
                Ok(false) => return Ok(()),
                Ok(true) => {
                    self.tls = Some(self.context.connect(&self.options, &self.server_name)?.into());
                    self.state = State::Handshaking;
                }
                Err(e) => {
                    let failure = connect_failure(self.current.expect("connecting to an address"), &e);
                    return self.try_next_address(fd, Some(failure));
                }
            }
        }
        if self.state != State::Handshaking {
            return Ok(());
        }
        self.flush(fd)?;
        while self.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) {
            if !self.receive(fd)? {
                return Ok(());
            }
            if self.tcp_eof {
                return Err(Failure::new(
                    Errno::ECONNRESET,
                    format!("{} closed the connection during the handshake", self.server_name),
                ));
            }
        }
        let tls = self.tls.as_ref().expect("handshaking");
        self.info = ConnectionInfo::of(tls);
        if let Connection::Server(server) = tls {
            self.accepted_for_name = Some(server.server_name().unwrap_or_default().to_owned());
        }
        self.state = State::Established;
        self.deadline = None;
        self.handshake_slot = None;
        // The client's Finished (and anything after it) goes now.
        self.flush(fd)?;
        Ok(())
    }

    /// Records a failed connect or handshake: SO_ERROR, TLS_ERROR, and the
    /// TCP connection shut both ways so nothing more can pass on it.
    fn fail(&mut self, fd: c_int, failure: Failure) {
        if let Some(tls) = self.tls.as_mut() {
            // rustls has queued an alert telling the peer why.
            let _ = tls.write_tls(&mut KernelSocket(fd));
        }
        if self.tcp_used {
            // SAFETY: shutting down our own socket descriptor.
            unsafe { real::shutdown(fd, libc::SHUT_RDWR) };
        }
        self.tls = None;
        self.state = State::Failed;
        self.deadline = None;
        self.handshake_slot = None;
        self.candidates.clear();
        self.pending_error = Some(failure.errno);
        self.error = Some(failure.reason);
    }

    /// An established connection failed (protocol error, reset,
    /// truncation): plaintext that came before is still read, then this.
    fn break_connection(&mut self, fd: c_int, failure: Failure) {
        if self.broken.is_some() {
            return;
        }
        if let Some(tls) = self.tls.as_mut() {
            let _ = tls.write_tls(&mut KernelSocket(fd));
        }
        // SAFETY: shutting down our own socket descriptor.
        unsafe { real::shutdown(fd, libc::SHUT_RDWR) };
        self.broken = Some(failure.errno);
        self.error = Some(failure.reason);
    }

    /// Whether a connect is under way (resolving, TCP or the handshake).
    pub fn connecting(&self) -> bool {
        matches!(self.state, State::Resolving | State::Connecting | State::Handshaking)
    }

    /// The instant a pending connect or handshake times out.
    pub fn deadline(&self) -> Option<Instant> {
        if self.connecting() {
            self.deadline
        } else {
            None
        }
    }

    /// What the kernel socket must become for the connect or handshake to
    /// go on (poll events); nothing while the name is being resolved, when
    /// waits check back every [`RESOLVING_RECHECK`].
    pub fn connect_wants(&self) -> i16 {
        match self.state {
            State::Connecting => POLLOUT,
            State::Handshaking if self.tls.as_ref().is_some_and(|tls| tls.wants_write()) => POLLIN | POLLOUT,
            State::Handshaking => POLLIN,
            _ => 0,
        }
    }

    // -----------------------------------------------------------------------
    // Records
    // -----------------------------------------------------------------------

    /// Whether rustls holds records the kernel has not taken yet.
    pub fn pending_output(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write()) && self.broken.is_none()
    }

    /// Writes queued records to the kernel; false if it is full.
    pub fn flush(&mut self, fd: c_int) -> Result<bool, Failure> {
        let Some(tls) = self.tls.as_mut() else { return Ok(true) };
        while tls.wants_write() {
            match tls.write_tls(&mut KernelSocket(fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::new(Errno::from_io(&e), format!("sending to {} failed: {e}", self.server_name))),
            }
        }
        Ok(true)
    }

    /// Flushes what it can; true when nothing is left to send (or nothing
    /// can be sent any more: the connection broke).
    pub fn drain(&mut self, fd: c_int) -> bool {
        match self.flush(fd) {
            Ok(flushed) => flushed,
            Err(failure) => {
                self.break_connection(fd, failure);
                true
            }
        }
    }

    /// Takes what the kernel has received into rustls; false if nothing
    /// was there. Decrypted data stays in rustls until read.
    fn receive(&mut self, fd: c_int) -> Result<bool, Failure> {
        let range = self.options.version_range(self.context.policy());
        let Some(tls) = self.tls.as_mut() else { return Ok(false) };
        if self.tcp_eof || !tls.wants_read() {
            return Ok(false);
        }
        let read = loop {
            match tls.read_tls(&mut KernelSocket(fd)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Failure::new(Errno::from_io(&e), format!("connection to {} lost: {e}", self.server_name)))
                }
            }
        };
        if read == 0 {
            self.tcp_eof = true;
        }
        if let Err(error) = tls.process_new_packets() {
            return Err(describe_error(&error, &self.server_name, range));
        }
        // Handshake messages, key updates and alerts to answer.
        self.flush(fd)?;
        Ok(true)
    }

    /// Whether a read would return at once: data, end of stream or error.
    pub fn readable_now(&mut self) -> bool {
        if self.read_shut || self.broken.is_some() {
            return true;
        }
        match self.tls.as_mut() {
            Some(tls) => match tls.process_new_packets() {
                Ok(state) => state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() || self.tcp_eof,
                Err(_) => true,
            },
            None => false,
        }
    }

    /// Moves a connect in progress on, for a read or write that came
    /// during it: Ok once established, else what the call returns.
    fn finish_connect(&mut self, fd: c_int) -> Result<(), Progress> {
        self.progress(fd);
        match self.state {
            State::Established => Ok(()),
            State::Failed => Err(Progress::Failed(self.pending_error.take().unwrap_or(Errno::ENOTCONN))),
            _ => Err(Progress::WouldBlock),
        }
    }

    /// Reads plaintext into `bufs` (or copies it, for MSG_PEEK).
    pub fn read(&mut self, fd: c_int, bufs: &mut [&mut [u8]], peek: bool) -> Progress {
        match self.state {
            State::Created | State::Failed | State::Listening => return Progress::Failed(Errno::ENOTCONN),
            State::Resolving | State::Connecting | State::Handshaking => {
                if let Err(not_yet) = self.finish_connect(fd) {
                    return not_yet;
                }
            }
            State::Established => {}
        }
        if self.read_shut {
            return Progress::Done(0);
        }
        loop {
            let tls = self.tls.as_mut().expect("established");
            let result = if peek { peek_into(tls, bufs) } else { read_into(tls, bufs) };
            match result {
                Ok(n) => return Progress::Done(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    let failure = Failure::new(
                        Errno::ECONNRESET,
                        format!("{} closed the connection without close_notify (possible truncation)", self.server_name),
                    );
                    self.break_connection(fd, failure);
                }
                Err(e) => {
                    self.break_connection(fd, Failure::new(Errno(libc::EIO as u32), format!("TLS read failed: {e}")));
                }
            }
            if let Some(errno) = self.broken {
                if self.broken_reported {
                    return Progress::Done(0);
                }
                self.broken_reported = !peek;
                return Progress::Failed(errno);
            }
            match self.receive(fd) {
                Ok(true) => {}
                Ok(false) => return Progress::WouldBlock,
                Err(failure) => self.break_connection(fd, failure),
            }
        }
    }

    /// Hands plaintext to rustls (as much as its buffer takes) and sends
    /// what the kernel takes; `Done(0)` only for empty `bufs`.
    pub fn write(&mut self, fd: c_int, bufs: &[IoSlice<'_>]) -> Progress {
        match self.state {
            State::Created | State::Listening => return Progress::Failed(Errno::ENOTCONN),
            State::Failed => return Progress::Failed(self.pending_error.take().unwrap_or(Errno::ENOTCONN)),
            State::Resolving | State::Connecting | State::Handshaking => {
                if let Err(not_yet) = self.finish_connect(fd) {
                    return not_yet;
                }
            }
            State::Established => {}
        }
        if self.write_shut || self.broken.is_some() {
            return Progress::Failed(Errno::EPIPE);
        }
        match self.flush(fd) {
            Ok(true) => {}
            Ok(false) => return Progress::WouldBlock,
            Err(failure) => {
                let errno = failure.errno;
                self.break_connection(fd, failure);
                return Progress::Failed(errno);
            }
        }
        let tls = self.tls.as_mut().expect("established");
        let accepted = match tls.writer().write_vectored(bufs) {
            Ok(n) => n,
            Err(e) => return Progress::Failed(Errno::from_io(&e)),
        };
        // What the kernel does not take now goes with the next call that
        // touches this socket (write, read, poll, close).
        if let Err(failure) = self.flush(fd) {
            self.break_connection(fd, failure);
        }
        Progress::Done(accepted)
    }

    /// `shutdown(how)`: SHUT_WR sends close_notify, then ends the TCP
    /// stream (as SSA does); SHUT_RD discards what arrives from now on.
    pub fn shutdown(&mut self, fd: c_int, how: c_int) -> Result<(), Errno> {
        if !matches!(how, libc::SHUT_RD | libc::SHUT_WR | libc::SHUT_RDWR) {
            return Err(Errno::EINVAL);
        }
        if self.state != State::Established {
            return Err(Errno::ENOTCONN);
        }
        if how != libc::SHUT_WR {
            self.read_shut = true;
        }
        if how != libc::SHUT_RD && !self.write_shut {
            self.write_shut = true;
            self.send_close_notify(fd);
        }
        Ok(())
    }

    /// close_notify, with a bounded wait for it (and any data before it)
    /// to reach the kernel, then the TCP write side shut.
    fn send_close_notify(&mut self, fd: c_int) {
        if self.broken.is_some() {
            return;
        }
        let Some(tls) = self.tls.as_mut() else { return };
        tls.send_close_notify();
        let until = Instant::now() + CLOSE_LINGER;
        loop {
            match self.flush(fd) {
                Ok(true) => break,
                Ok(false) if Instant::now() < until => {
                    let mut wait = libc::pollfd { fd, events: POLLOUT, revents: 0 };
                    // SAFETY: one valid pollfd.
                    unsafe { real::poll(&mut wait, 1, 50) };
                }
                _ => return,
            }
        }
        // SAFETY: shutting down our own socket descriptor.
        unsafe { real::shutdown(fd, libc::SHUT_WR) };
    }

    /// The last descriptor of this socket in this process is closing.
    pub fn last_close(&mut self, fd: c_int) {
        if let Some(listening) = self.listening.take() {
            // Connections handshaking or not yet accepted go with it, as
            // with a kernel's accept queue.
            listening.stop();
            return;
        }
        // Another process may still be using the connection after a fork,
        // as with TCP, whose close sends no FIN while another descriptor
        // is open: ending the TLS stream is then left to shutdown().
        let shared = self.fork_generation != table::fork_generation();
        if self.state == State::Established && !self.write_shut && !shared {
            self.send_close_notify(fd);
        }
    }

    // -----------------------------------------------------------------------
    // Readiness
    // -----------------------------------------------------------------------

    /// For the program's poll interest `app`: what to ask the kernel
    /// socket for, and what is ready already without asking it.
    pub fn poll_interest(&mut self, app: i16) -> (i16, i16) {
        match self.state {
            State::Created => (app, 0),
            // The eventfd is readable while handshaken connections wait;
            // it is always writable, which a listening socket is not.
            State::Listening => (app & !POLLOUT, 0),
            State::Resolving | State::Connecting | State::Handshaking => (self.connect_wants(), 0),
            State::Established => {
                let ready = if app & POLLIN != 0 && self.readable_now() { POLLIN } else { 0 };
                let mut kernel = app & !POLLOUT;
                if app & POLLOUT != 0 || self.pending_output() {
                    kernel |= POLLOUT;
                }
                (kernel, ready)
            }
            State::Failed => {
                let error = if self.pending_error.is_some() { POLLERR } else { 0 };
                (0, error | POLLHUP | (app & (POLLIN | POLLOUT)))
            }
        }
    }

    /// The kernel socket reported `revents` for the interest
    /// [`Self::poll_interest`] gave: does the work it allows and says what
    /// the program sees.
    pub fn poll_complete(&mut self, fd: c_int, app: i16, revents: i16) -> i16 {
        let before = self.state;
        match before {
            State::Created => return revents,
            State::Listening => return revents & !POLLOUT,
            State::Resolving | State::Connecting | State::Handshaking => {
                if revents != 0 || self.deadline.is_some_and(|d| Instant::now() >= d) {
                    self.progress(fd);
                }
            }
            State::Established => {
                if revents & POLLOUT != 0 && self.pending_output() {
                    if let Err(failure) = self.flush(fd) {
                        self.break_connection(fd, failure);
                    }
                }
                // Until there is data (or the kernel has nothing more): a
                // session ticket alone is no reason to wake the program, and
                // under EPOLLET the kernel will not say again that the rest
                // is there.
                if revents & (POLLIN | POLLHUP | POLLERR) != 0 && app & POLLIN != 0 {
                    while !self.readable_now() {
                        match self.receive(fd) {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(failure) => self.break_connection(fd, failure),
                        }
                    }
                }
            }
            State::Failed => {}
        }
        let (_, mut ready) = self.poll_interest(app);
        if self.state == State::Established {
            let writable = revents & POLLOUT != 0 || before != State::Established;
            if app & POLLOUT != 0 && writable && !self.pending_output() && !self.write_shut {
                ready |= POLLOUT;
            }
            ready |= revents & (POLLERR | POLLHUP | libc::POLLPRI | libc::POLLRDHUP);
        }
        ready
    }
}

/// How often a wait looks again at a socket whose name is being resolved
/// (the resolver thread has no descriptor to wake it with).
pub const RESOLVING_RECHECK: Duration = Duration::from_millis(10);

/// How long close() and shutdown() wait for the kernel to take the last
/// records (close_notify included) when its send buffer is full.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// Copies buffered plaintext into `bufs` in order.
fn read_into(tls: &mut Connection, bufs: &mut [&mut [u8]]) -> io::Result<usize> {
    let mut total = 0;
    for buf in bufs.iter_mut().filter(|b| !b.is_empty()) {
        match tls.reader().read(buf) {
            Ok(n) => {
                total += n;
                if n < buf.len() {
                    break;
                }
            }
            Err(e) if total > 0 && e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return if total > 0 { Ok(total) } else { Err(e) },
        }
    }
    Ok(total)
}

/// MSG_PEEK: copies without consuming (what rustls has contiguous).
fn peek_into(tls: &mut Connection, bufs: &mut [&mut [u8]]) -> io::Result<usize> {
    let mut reader = tls.reader();
    let available = reader.fill_buf()?;
    let mut copied = 0;
    for buf in bufs.iter_mut() {
        let n = buf.len().min(available.len() - copied);
        buf[..n].copy_from_slice(&available[copied..copied + n]);
        copied += n;
    }
    Ok(copied)
}

fn connect_failure(addr: SocketAddr, error: &io::Error) -> Failure {
    Failure::new(Errno::from_io(error), format!("connecting to {addr} failed: {error}"))
}

/// The kernel socket under a TLS descriptor, for rustls: never waits.
pub struct KernelSocket(pub c_int);

impl Read for KernelSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes of writing.
        let n = unsafe { real::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl Write for KernelSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // MSG_NOSIGNAL: a broken pipe is reported to the program by the
        // call that sees it, with SIGPIPE raised there if it asked for one.
        // SAFETY: buf is valid for buf.len() bytes of reading.
        let n = unsafe { real::send(self.0, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let msg = libc::msghdr {
            msg_name: std::ptr::null_mut(),
            msg_namelen: 0,
            // IoSlice is ABI-compatible with iovec on Unix.
            msg_iov: bufs.as_ptr() as *mut libc::iovec,
            msg_iovlen: bufs.len(),
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
        };
        // SAFETY: msg points at bufs, valid for reading during the call.
        let n = unsafe { real::sendmsg(self.0, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::sync::Arc;

    use tls_engine::Policy;
    use vhost_tls_harness::peers::{Behaviour, RustlsServer};
    use vhost_tls_harness::pki::{loopback_names, TestCa, Validity};
    use vhost_tls_harness::testbed::LOOPBACK_POLICY;

    use super::*;

    struct Peer {
        _dir: tempfile::TempDir,
        context: &'static ClientContext,
        server: RustlsServer,
    }

    fn echo_peer() -> Peer {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("libipprototls test CA");
        std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
        let policy = Policy::from_toml_str(LOOPBACK_POLICY, "test", dir.path()).unwrap();
        let identity = ca.issue(&loopback_names(), Validity::Current);
        let server = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS13], Behaviour::Echo);
        // The socket keeps a 'static context, as the process's one is.
        let context = Box::leak(Box::new(ClientContext::new(Arc::new(policy))));
        Peer { _dir: dir, context, server }
    }

    fn tcp_socket() -> c_int {
        // SAFETY: socket() with constant arguments.
        let fd = unsafe { real::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0);
        fd
    }

    /// Drives a connect to its end, as a blocking connect() does.
    fn finish(socket: &mut TlsSocket, fd: c_int) {
        let until = Instant::now() + Duration::from_secs(20);
        while socket.connecting() {
            assert!(Instant::now() < until, "connect did not finish");
            let mut wait = libc::pollfd { fd, events: socket.connect_wants(), revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { real::poll(&mut wait, 1, 100) };
            socket.progress(fd);
        }
    }

    #[test]
    fn each_address_is_tried_in_turn_on_a_fresh_socket() {
        let peer = echo_peer();
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let fd = tcp_socket();
        let mut socket = TlsSocket::new(libc::AF_INET, peer.context).unwrap();
        let candidates = VecDeque::from([closed, peer.server.addr]);
        socket.connect_in_turn(fd, "localhost".into(), candidates).unwrap();
        finish(&mut socket, fd);
        assert_eq!(socket.state, State::Established, "TLS_ERROR: {:?}", socket.error);
        assert_eq!(socket.current, Some(peer.server.addr));

        let hello = [IoSlice::new(b"hello, "), IoSlice::new(b"echo")];
        assert_eq!(socket.write(fd, &hello), Progress::Done(11));
        let mut echoed = Vec::new();
        let until = Instant::now() + Duration::from_secs(10);
        while echoed.len() < 11 && Instant::now() < until {
            let mut buf = [0u8; 64];
            if let Progress::Done(n) = socket.read(fd, &mut [&mut buf[..]], false) {
                echoed.extend_from_slice(&buf[..n]);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(echoed, b"hello, echo");
        // SAFETY: our own descriptor.
        unsafe { real::close(fd) };
    }

    #[test]
    fn when_every_address_refuses_the_last_refusal_is_the_answer() {
        let peer = echo_peer();
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let fd = tcp_socket();
        let mut socket = TlsSocket::new(libc::AF_INET, peer.context).unwrap();
        socket.connect_in_turn(fd, "localhost".into(), VecDeque::from([closed, closed])).ok();
        finish(&mut socket, fd);
        assert_eq!(socket.state, State::Failed);
        assert_eq!(socket.take_pending_error(), Some(Errno::ECONNREFUSED));
        assert!(socket.error.as_deref().unwrap().contains(&closed.to_string()), "{:?}", socket.error);
        // SAFETY: our own descriptor.
        unsafe { real::close(fd) };
    }
}
