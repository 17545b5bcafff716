//! One guest socket on the host: its TCP connection, its rustls session and
//! the two byte streams between the guest and the peer, each bounded by the
//! virtio-tls credit scheme (spec 2.8.2).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::{Connection, ServerConnection};
use tls_engine::destination::Destination;
use tls_engine::errno::{Errno, Failure};
use tls_engine::options::SocketOptions;
use tls_engine::sockopt::{Family, HostOptions};
use tls_engine::tls::{describe_error, ClientContext, ConnectionInfo};

use crate::listener::Listener;
use crate::sockopt;
use crate::telemetry::Session;

/// Where a socket is in its life (spec 2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Created,
    /// BIND mapped the guest port to a host address (server sockets).
    Bound,
    /// LISTEN: accepting connections for the guest.
    Listening,
    Resolving,
    Connecting,
    Handshaking,
    Established,
    Failed,
}

/// What a step of network progress means for the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// The handshake completed: CONNECT_DONE with status 0.
    Connected,
    /// The socket failed: CONNECT_DONE (while connecting) or SOCKET_ERROR.
    Failed(Errno),
}

pub struct Socket {
    pub id: u32,
    pub queue_pair: u16,
    pub options: SocketOptions,
    /// The guest socket's family (CREATE), which its socket options follow.
    pub family: Family,
    /// Options at other levels the guest set, for host sockets created
    /// later (spec 2.6.10).
    pub host_options: HostOptions,
    /// A TCP socket that stands in for the host socket until it exists:
    /// it validates options and answers GETSOCKOPT.
    stand_in: Option<socket2::Socket>,
    pub phase: Phase,
    /// `request_id` of the CONNECT in progress, for its CONNECT_DONE.
    pub connect_request: u64,
    pub server_name: String,
    candidates: VecDeque<SocketAddr>,
    /// The address the current connection attempt goes to.
    current_addr: Option<SocketAddr>,
    stream: Option<TcpStream>,
    tls: Option<Connection>,
    /// A listening socket's host listener and accept queue.
    pub listener: Option<Listener>,
    /// For a connection a listening socket accepted: that socket, until the
    /// driver takes this one with ACCEPT. The driver does not know such a
    /// socket yet, so nothing is sent to it.
    pub unclaimed_by: Option<u32>,
    /// The client of an accepted connection.
    pub peer_addr: Option<SocketAddr>,
    pub info: ConnectionInfo,
    /// Reason of the last failure, for TLS_ERROR.
    pub error: Option<String>,
    /// When the connect/handshake in progress, or a closing linger, ends.
    pub deadline: Option<Instant>,
    /// When the TLS handshake in progress began (the TCP connection was up).
    pub handshake_started: Option<Instant>,
    /// The client configuration (and so the policy) of the policy
    /// generation the socket connected or was accepted under: a reload
    /// changes what new sessions get, never an open one.
    pub client_context: Option<Arc<ClientContext>>,
    /// The session in progress, for the audit log and metrics.
    pub session: Option<Session>,
    /// Application bytes handed to TLS for the peer, and received from it.
    pub bytes_to_peer: u64,
    pub bytes_from_peer: u64,

    // Guest to peer.
    tx_buf: VecDeque<u8>,
    /// Payload bytes received from the driver, ever.
    pub tx_received: u64,
    /// Payload bytes handed to TLS, ever (wrapping): the device's fwd_cnt.
    pub fwd_cnt: u32,
    /// The fwd_cnt the driver last heard of.
    pub fwd_reported: u32,
    /// SHUTDOWN(WR) or CLOSE: send close_notify once this many bytes came.
    pub write_end_at: Option<u64>,
    close_notify_queued: bool,
    write_shut: bool,

    // Peer to guest.
    rx_buf: VecDeque<u8>,
    pub driver_buf_alloc: u32,
    pub driver_fwd_cnt: u32,
    /// Payload bytes sent to the driver, ever (wrapping).
    pub rx_sent: u32,
    peer_eof: bool,
    pub eof_delivered: bool,
    pub read_shut: bool,
    /// The driver asked for a CREDIT_UPDATE, or one is due.
    pub credit_update_wanted: bool,
    /// The driver closed the socket; it lingers until its data is out.
    pub closing: bool,
}

/// Plaintext a socket holds for the guest before it stops reading the
/// network: enough for a full TLS record plus slack, small enough that ten
/// thousand sockets stay cheap.
pub const RX_HIGH_WATER: usize = 32 * 1024;
/// Transmit payload moves from guest memory to rustls this much at a time
/// (one TLS record's worth).
const TX_CHUNK: usize = 16 * 1024;

impl Socket {
    pub fn new(id: u32, queue_pair: u16) -> Socket {
        Socket {
            id,
            queue_pair,
            options: SocketOptions::default(),
            family: Family::Inet,
            host_options: HostOptions::default(),
            stand_in: None,
            phase: Phase::Created,
            connect_request: 0,
            server_name: String::new(),
            candidates: VecDeque::new(),
            current_addr: None,
            stream: None,
            tls: None,
            listener: None,
            unclaimed_by: None,
            peer_addr: None,
            info: ConnectionInfo::default(),
            error: None,
            deadline: None,
            handshake_started: None,
            client_context: None,
            session: None,
            bytes_to_peer: 0,
            bytes_from_peer: 0,
            tx_buf: VecDeque::new(),
            tx_received: 0,
            fwd_cnt: 0,
            fwd_reported: 0,
            write_end_at: None,
            close_notify_queued: false,
            write_shut: false,
            rx_buf: VecDeque::new(),
            driver_buf_alloc: 0,
            driver_fwd_cnt: 0,
            rx_sent: 0,
            peer_eof: false,
            eof_delivered: false,
            read_shut: false,
            credit_update_wanted: false,
            closing: false,
        }
    }

    /// A connection `listener_id` accepted from `peer`, handshaking. The
    /// driver's credit stays 0 until it claims the socket (ACCEPT) and sends
    /// a CREDIT_UPDATE.
    pub fn accepted(
        id: u32,
        listener_id: u32,
        registry: &Registry,
        mut stream: TcpStream,
        peer: SocketAddr,
        tls: ServerConnection,
    ) -> Result<Socket, Failure> {
        let mut socket = Socket::new(id, 0);
        registry
            .register(&mut stream, socket.token(), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| Failure::new(Errno::ENOBUFS, format!("cannot watch the connection: {e}")))?;
        socket.stream = Some(stream);
        socket.tls = Some(Connection::Server(tls));
        socket.phase = Phase::Handshaking;
        socket.handshake_started = Some(Instant::now());
        socket.unclaimed_by = Some(listener_id);
        socket.peer_addr = Some(peer);
        socket.server_name = format!("client {peer}");
        Ok(socket)
    }

    /// The name the client asked for (SNI), on an accepted connection.
    pub fn requested_server_name(&self) -> Option<&str> {
        match self.tls.as_ref()? {
            Connection::Server(server) => server.server_name(),
            Connection::Client(_) => None,
        }
    }

    pub fn token(&self) -> Token {
        Token(self.id as usize)
    }

    /// Bytes this socket holds in host memory (both directions).
    pub fn buffered_bytes(&self) -> usize {
        self.tx_buf.len() + self.rx_buf.len()
    }

    /// Bytes of the device's receive buffer in use (spec 2.8.2).
    pub fn tx_in_flight(&self) -> u32 {
        (self.tx_received as u32).wrapping_sub(self.fwd_cnt)
    }

    /// Bytes the driver can still take.
    pub fn driver_credit(&self) -> u32 {
        self.driver_buf_alloc.saturating_sub(self.rx_sent.wrapping_sub(self.driver_fwd_cnt))
    }

    /// Starts connecting to the allowed addresses of `destination`, in order.
    pub fn begin_connect(&mut self, registry: &Registry, destination: &Destination, addrs: Vec<SocketAddr>) -> Result<(), Failure> {
        if self.server_name.is_empty() {
            self.server_name = self.options.hostname().map(str::to_owned).unwrap_or_else(|| destination.server_name());
        }
        self.candidates = addrs.into();
        self.try_next_address(registry, None)
    }

    fn try_next_address(&mut self, registry: &Registry, mut last_error: Option<Failure>) -> Result<(), Failure> {
        self.drop_connection(registry);
        while let Some(addr) = self.candidates.pop_front() {
            self.current_addr = Some(addr);
            match self.start_stream(addr) {
                Ok(mut stream) => {
                    // The host socket answers for itself from now on.
                    self.stand_in = None;
                    if let Err(e) = registry.register(&mut stream, self.token(), Interest::READABLE | Interest::WRITABLE) {
                        return Err(Failure::new(Errno::ENOBUFS, format!("cannot watch the connection: {e}")));
                    }
                    self.stream = Some(stream);
                    self.phase = Phase::Connecting;
                    return Ok(());
                }
                Err(e) => last_error = Some(connect_failure(addr, &e)),
            }
        }
        Err(last_error.unwrap_or_else(|| Failure::new(Errno::EHOSTUNREACH, "no address to connect to")))
    }

    /// A host socket connecting to `addr`, with the guest's options applied
    /// before the connection starts (SYN retries, MSS, TOS, linger).
    fn start_stream(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        sockopt::apply_kept(socket.as_fd(), &self.host_options, self.id);
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(socket.into()))
    }

    /// The host socket the guest's options apply to, once it exists: the
    /// connection, or a server socket's listener.
    pub fn host_socket(&self) -> Option<BorrowedFd<'_>> {
        if let Some(stream) = &self.stream {
            return Some(stream.as_fd());
        }
        self.listener.as_ref().and_then(Listener::host_socket)
    }

    /// A server socket's host socket exists (BIND): the stand-in goes.
    pub fn host_socket_created(&mut self) {
        self.stand_in = None;
    }

    /// The socket that answers for the host socket: the host socket, or
    /// (before it exists) the stand-in, created on first use.
    pub fn option_socket(&mut self) -> Result<BorrowedFd<'_>, Errno> {
        if self.host_socket().is_some() {
            self.stand_in = None;
            return Ok(self.host_socket().expect("checked above"));
        }
        if self.stand_in.is_none() {
            // After a failed connection, what was set still answers.
            let stand_in = sockopt::stand_in(self.family)?;
            sockopt::apply_kept(stand_in.as_fd(), &self.host_options, self.id);
            self.stand_in = Some(stand_in);
        }
        Ok(self.stand_in.as_ref().expect("created above").as_fd())
    }

    /// Network readiness (or a nudge after the guest made room or gave
    /// data): does all the work that can be done without blocking.
    pub fn progress(&mut self, registry: &Registry, context: &ClientContext) -> Option<Notice> {
        match self.step(registry, context) {
            Ok(notice) => notice,
            Err(failure) => Some(self.fail(registry, failure)),
        }
    }

    fn step(&mut self, registry: &Registry, context: &ClientContext) -> Result<Option<Notice>, Failure> {
        if self.phase == Phase::Connecting {
            let Some(stream) = self.stream.as_ref() else { return Ok(None) };
            let addr = stream.peer_addr();
            match (stream.take_error(), addr) {
                (Ok(Some(e)), _) | (Err(e), _) => {
                    let failure = connect_failure(self.current_peer(), &e);
                    self.try_next_address(registry, Some(failure))?;
                    return Ok(None);
                }
                (Ok(None), Err(e)) if e.kind() == io::ErrorKind::NotConnected => return Ok(None),
                (Ok(None), Err(e)) => {
                    let failure = connect_failure(self.current_peer(), &e);
                    self.try_next_address(registry, Some(failure))?;
                    return Ok(None);
                }
                (Ok(None), Ok(_)) => {
                    self.tls = Some(Connection::Client(context.connect(&self.options, &self.server_name)?));
                    self.phase = Phase::Handshaking;
                    self.handshake_started = Some(Instant::now());
                }
            }
        }
        if !matches!(self.phase, Phase::Handshaking | Phase::Established) {
            return Ok(None);
        }
        let range = self.options.version_range(context.policy());
        let was_handshaking = self.phase == Phase::Handshaking;
        self.pump(range)?;
        if was_handshaking && self.tls.as_ref().is_some_and(|tls| !tls.is_handshaking()) {
            self.phase = Phase::Established;
            self.deadline = None;
            self.info = match self.tls.as_ref().expect("checked above") {
                Connection::Client(client) => ConnectionInfo::of(client),
                Connection::Server(server) => ConnectionInfo::of(server),
            };
            // Data the driver queued early, and any close, can go now.
            self.pump(range)?;
            return Ok(Some(Notice::Connected));
        }
        Ok(None)
    }

    fn current_peer(&self) -> Option<SocketAddr> {
        self.current_addr
    }

    /// The peer's address: the client of an accepted connection, the
    /// address a client socket connects or connected to.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer_addr.or(self.current_addr)
    }

    /// Moves bytes as far as they go in both directions.
    fn pump(&mut self, range: (tls_engine::TlsVersion, tls_engine::TlsVersion)) -> Result<(), Failure> {
        let (Some(tls), Some(stream)) = (self.tls.as_mut(), self.stream.as_mut()) else {
            return Ok(());
        };
        let established = !tls.is_handshaking();

        // Guest to peer: hand plaintext to rustls while it has room, and
        // its records to TCP, until TCP pushes back or nothing is left.
        let mut flushed = flush_tls(tls, stream)?;
        if established {
            while flushed && !self.tx_buf.is_empty() {
                let (front, _) = self.tx_buf.as_slices();
                let accepted = tls.writer().write(front).map_err(|e| Failure::new(Errno::EPIPE, format!("TLS write failed: {e}")))?;
                if accepted == 0 {
                    break; // cannot happen with its buffer empty; never spin
                }
                self.tx_buf.drain(..accepted);
                self.fwd_cnt = self.fwd_cnt.wrapping_add(accepted as u32);
                self.bytes_to_peer += accepted as u64;
                // rustls takes nothing more until its records are written.
                flushed = flush_tls(tls, stream)?;
            }
            if let Some(end) = self.write_end_at {
                if !self.close_notify_queued && self.tx_received >= end && self.tx_buf.is_empty() {
                    tls.send_close_notify();
                    self.close_notify_queued = true;
                    flushed = flush_tls(tls, stream)?;
                }
            }
        }
        if flushed && self.close_notify_queued && !self.write_shut {
            // close_notify is on the wire: end the TCP stream too, as SSA does.
            let _ = stream.shutdown(Shutdown::Write);
            self.write_shut = true;
        }

        // Peer to guest: read while the guest has room for more.
        while !self.peer_eof && self.rx_buf.len() < RX_HIGH_WATER {
            let read = match tls.read_tls(stream) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::new(Errno::from_io(&e), format!("connection to {} lost: {e}", self.server_name))),
            };
            let state = match tls.process_new_packets() {
                Ok(state) => state,
                Err(error) => {
                    // rustls queued an alert telling the peer why; try to send it.
                    let _ = tls.write_tls(stream);
                    return Err(describe_error(&error, &self.server_name, range));
                }
            };
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match tls.reader().read(&mut chunk) {
                    Ok(0) => {
                        self.peer_eof = true;
                        break;
                    }
                    Ok(n) if self.read_shut => {
                        // SHUT_RD: the guest said it wants no more.
                        self.bytes_from_peer += n as u64;
                    }
                    Ok(n) => {
                        self.rx_buf.extend(&chunk[..n]);
                        self.bytes_from_peer += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return Err(Failure::new(
                            Errno::ECONNRESET,
                            format!("{} closed the connection without close_notify (possible truncation)", self.server_name),
                        ));
                    }
                    Err(e) => return Err(Failure::new(Errno::from_io(&e), format!("TLS read failed: {e}"))),
                }
            }
            if state.peer_has_closed() {
                self.peer_eof = true;
            }
            if read == 0 {
                if tls.is_handshaking() {
                    return Err(Failure::new(
                        Errno::ECONNRESET,
                        format!("{} closed the connection during the handshake", self.server_name),
                    ));
                }
                if !self.peer_eof {
                    return Err(Failure::new(
                        Errno::ECONNRESET,
                        format!("{} closed the connection without close_notify (possible truncation)", self.server_name),
                    ));
                }
            }
            // Handshake messages, key updates and alerts to answer.
            flush_tls(tls, stream)?;
        }
        Ok(())
    }

    /// Plaintext for the guest, up to `max` bytes, as the ring buffer's two
    /// parts; `consume_rx` drops them once they are in guest memory. Read
    /// in place, so the bytes go from here to guest memory in one copy.
    pub fn rx_slices(&self, max: usize) -> (&[u8], &[u8]) {
        let n = max.min(self.rx_buf.len());
        let (front, back) = self.rx_buf.as_slices();
        let from_front = n.min(front.len());
        (&front[..from_front], &back[..n - from_front])
    }

    pub fn consume_rx(&mut self, n: usize) {
        self.rx_buf.drain(..n.min(self.rx_buf.len()));
    }

    /// Drops the plaintext nobody will read (the driver closed the socket).
    pub fn discard_rx(&mut self) {
        self.rx_buf.clear();
    }

    pub fn rx_pending(&self) -> usize {
        self.rx_buf.len()
    }

    /// The peer's end of stream is due to the guest (after all data).
    pub fn eof_pending(&self) -> bool {
        self.peer_eof && self.rx_buf.is_empty() && !self.eof_delivered
    }

    /// `len` payload bytes from the driver's transmit queue, read from
    /// `payload` (guest memory). While nothing waits ahead of them and the
    /// session is established they go straight to rustls, through a small
    /// buffer that stays in cache, rather than into the socket's queue and
    /// out again: one copy of the plaintext fewer on the bulk path. What
    /// rustls cannot take yet (its outgoing buffer is full because TCP
    /// pushes back) waits in the queue. A read error leaves the socket to
    /// be failed by the caller.
    pub fn accept_tx(&mut self, payload: &mut impl Read, len: usize) -> io::Result<()> {
        let mut chunk = [0u8; TX_CHUNK];
        let mut left = len;
        while left > 0 {
            let n = left.min(TX_CHUNK);
            payload.read_exact(&mut chunk[..n])?;
            let mut taken = 0;
            if self.tx_buf.is_empty() && self.phase == Phase::Established && !self.close_notify_queued {
                if let Some(tls) = self.tls.as_mut().filter(|tls| !tls.is_handshaking()) {
                    // An error here (a connection rustls has closed) shows
                    // again, with its reason, when the socket next moves.
                    taken = tls.writer().write(&chunk[..n]).unwrap_or(0);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(taken as u32);
                    self.bytes_to_peer += taken as u64;
                }
            }
            self.tx_buf.extend(&chunk[taken..n]);
            self.tx_received += n as u64;
            left -= n;
        }
        Ok(())
    }

    /// Whether a lingering closed socket has sent everything and can go.
    pub fn close_finished(&self) -> bool {
        match self.phase {
            Phase::Established => {
                self.write_end_at.is_some_and(|end| self.tx_received >= end)
                    && self.tx_buf.is_empty()
                    && self.close_notify_queued
                    && self.tls.as_ref().is_some_and(|tls| !tls.wants_write())
            }
            // A socket that never got connected (or a listening one) has
            // nothing to flush.
            _ => true,
        }
    }

    /// Records the failure, releases the connection and says what to tell
    /// the driver.
    pub fn fail(&mut self, registry: &Registry, failure: Failure) -> Notice {
        tracing::debug!(socket = self.id, %failure, "socket failed");
        self.drop_connection(registry);
        self.error = Some(failure.reason);
        self.phase = Phase::Failed;
        self.deadline = None;
        self.tx_buf = VecDeque::new();
        Notice::Failed(failure.errno)
    }

    pub fn drop_connection(&mut self, registry: &Registry) {
        if let Some(mut stream) = self.stream.take() {
            let _ = registry.deregister(&mut stream);
            sockopt::never_block_close(stream.as_fd());
        }
        if let Some(mut listener) = self.listener.take() {
            listener.stop(registry);
        }
        self.tls = None;
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        if let Some(stream) = &self.stream {
            sockopt::never_block_close(stream.as_fd());
        }
    }
}

/// Writes what rustls has for the peer; false when the socket is full.
fn flush_tls(tls: &mut Connection, stream: &mut TcpStream) -> Result<bool, Failure> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::new(Errno::from_io(&e), format!("sending to the peer failed: {e}"))),
        }
    }
    Ok(true)
}

fn connect_failure(addr: impl Into<Option<SocketAddr>>, error: &io::Error) -> Failure {
    let errno = Errno::from_io(error);
    match addr.into() {
        Some(addr) => Failure::new(errno, format!("connecting to {addr} failed: {error}")),
        None => Failure::new(errno, format!("connecting failed: {error}")),
    }
}
