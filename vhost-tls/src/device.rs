//! The virtio-tls device model: control requests, data queues, events, and
//! the network progress of every socket. Runs on the vhost-user worker
//! thread; it never blocks (host name resolution runs on helper threads).

use std::collections::{BTreeSet, HashMap};
use std::os::fd::AsRawFd;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tls_engine::destination::{self, Destination};
use tls_engine::errno::{Errno, Failure};
use tls_engine::getopt::{option_value, SocketState};
use tls_engine::limits::{admit_handshake, HandshakeRefusal, MemoryBudget};
use tls_engine::options::{parse_hostname, Phase as OptionPhase};
use tls_engine::sockopt::{disposition as sockopt_disposition, level_name, Access, Disposition, Family};
use tls_engine::tls::{ClientContext, ServerContext};
use tls_engine::Policy;
use virtio_tls_spec::{self as wire, CtrlHeader, CtrlResponse, DataHeader, Event};
use vhost_user_backend::VringT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::timerfd::TimerFd;

use crate::events::EventQueue;
use crate::limits::{HandshakeBucket, LimitWarnings};
use crate::listener::Listener;
use crate::queues::{self, BrokenQueues, MemoryGuard, ReadOutcome, Vring};
use crate::socket::{Notice, Phase, Socket};
use crate::sockopt;
use crate::telemetry::{Direction, Outcome, Snapshot, Telemetry};

const WAKER: Token = Token(usize::MAX);
const TIMER: Token = Token(usize::MAX - 1);
/// Largest control request: a header plus an option value.
pub const MAX_CONTROL_REQUEST: usize = CtrlHeader::SIZE + 64 * 1024;
/// Host name resolutions running at once, per device.
const MAX_PENDING_RESOLUTIONS: usize = 64;
/// How long a closed socket may take to send its last data.
const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// Static shape of the device, fixed at start.
#[derive(Clone, Debug)]
pub struct DeviceShape {
    pub queue_pairs: u16,
    /// How long the worker keeps polling after a wake-up (zero: it sleeps
    /// at once). Trades CPU for round-trip latency; `--busy-poll-us`.
    pub busy_poll: Duration,
}

impl DeviceShape {
    /// `queue_pairs` data queue pairs, no busy polling.
    pub fn with_pairs(queue_pairs: u16) -> DeviceShape {
        DeviceShape { queue_pairs, busy_poll: Duration::ZERO }
    }
}

/// A snapshot of one socket, for operators and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketReport {
    pub id: u32,
    pub phase: Phase,
    pub closing: bool,
    /// Bytes of stream data held in host memory for this socket.
    pub buffered_bytes: usize,
    pub server_name: String,
    /// Payload bytes the driver sent / the device handed to TLS.
    pub tx_received: u64,
    pub tx_consumed: u32,
    /// Where the driver asked the write side to end (SHUTDOWN/CLOSE).
    pub write_end_at: Option<u64>,
    /// Payload bytes delivered to the driver, and its credit left.
    pub rx_sent: u32,
    pub driver_credit: u32,
    /// `client`, `server` (a connection a listening socket accepted),
    /// `listener`, or empty for a socket that never connected.
    pub role: &'static str,
    pub peer: Option<SocketAddr>,
    /// The name a client asked for by SNI (accepted connections).
    pub requested_name: Option<String>,
    pub tls_version: Option<tls_engine::TlsVersion>,
    pub cipher: Option<String>,
    /// Application bytes, ever, to and from the peer.
    pub bytes_to_peer: u64,
    pub bytes_from_peer: u64,
    /// The policy generation the socket's session started under.
    pub policy_generation: Option<u64>,
}

struct Resolution {
    socket_id: u32,
    request_id: u64,
    destination: Destination,
    result: Result<Vec<SocketAddr>, Failure>,
}

pub struct Device {
    shape: DeviceShape,
    /// The policy for new sessions; open ones hold their own.
    context: Arc<ClientContext>,
    server_context: ServerContext,
    /// vm_buffer_mib: socket buffers and the contexts' cached TLS
    /// configurations.
    budget: Arc<MemoryBudget>,
    /// 1 at start, one more per reload.
    policy_generation: u64,
    telemetry: Telemetry,
    mem: Option<queues::Memory>,
    poll: Poll,
    waker: Arc<Waker>,
    resolutions_tx: Sender<Resolution>,
    resolutions_rx: Receiver<Resolution>,
    pending_resolutions: usize,
    timer: TimerFd,
    sockets: HashMap<u32, Socket>,
    next_id: u32,
    events: EventQueue,
    /// Per data queue pair: sockets with something for the driver.
    rx_waiting: Vec<BTreeSet<u32>>,
    /// Failures to report once the socket's remaining data is delivered.
    deferred_errors: HashMap<u32, Errno>,
    handshake_bucket: HandshakeBucket,
    limit_warnings: LimitWarnings,
    /// Queues the driver broke, which the device no longer serves.
    broken_queues: BrokenQueues,
    /// Listening sockets with room for more connections, and whether the
    /// loop that serves them runs (see `accept_incoming`).
    listeners_to_serve: BTreeSet<u32>,
    accepting: bool,
}

impl Device {
    pub fn new(policy: Arc<Policy>, shape: DeviceShape) -> std::io::Result<Device> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        // A coarse tick bounds connects, handshakes and close lingers.
        let mut timer = TimerFd::new()?;
        timer.reset(Duration::from_millis(500), Some(Duration::from_millis(500)))?;
        poll.registry().register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;
        let (resolutions_tx, resolutions_rx) = channel();
        let policy_rate = policy.limits.handshakes_per_second;
        let budget = Arc::new(MemoryBudget::new(&policy.limits));
        Ok(Device {
            rx_waiting: vec![BTreeSet::new(); shape.queue_pairs as usize],
            broken_queues: BrokenQueues::new(wire::num_queues(shape.queue_pairs) as usize),
            listeners_to_serve: BTreeSet::new(),
            accepting: false,
            shape,
            server_context: ServerContext::with_budget(policy.clone(), budget.clone()),
            context: Arc::new(ClientContext::with_budget(policy, budget.clone())),
            budget,
            policy_generation: 1,
            telemetry: Telemetry::default(),
            mem: None,
            poll,
            waker,
            resolutions_tx,
            resolutions_rx,
            pending_resolutions: 0,
            timer,
            sockets: HashMap::new(),
            next_id: 1,
            events: EventQueue::default(),
            deferred_errors: HashMap::new(),
            handshake_bucket: HandshakeBucket::new(policy_rate),
            limit_warnings: LimitWarnings::default(),
        })
    }

    /// Handshakes in progress (client and server): sockets resolving,
    /// connecting or handshaking.
    fn handshakes_in_progress(&self) -> usize {
        self.sockets.values().filter(|s| matches!(s.phase, Phase::Resolving | Phase::Connecting | Phase::Handshaking)).count()
    }

    /// The fd that becomes readable when sockets need attention.
    pub fn reactor_fd(&self) -> std::os::fd::RawFd {
        self.poll.as_raw_fd()
    }

    pub fn policy(&self) -> &Arc<Policy> {
        self.context.policy()
    }

    pub fn set_memory(&mut self, mem: queues::Memory) {
        self.mem = Some(mem);
    }

    /// The driver reset the device: every socket goes.
    pub fn reset(&mut self) {
        self.end_all_sessions("the guest driver reset the device");
        for (_, mut socket) in self.sockets.drain() {
            socket.drop_connection(self.poll.registry());
        }
        self.events.clear();
        self.deferred_errors.clear();
        for waiting in &mut self.rx_waiting {
            waiting.clear();
        }
        self.broken_queues.clear_all();
        self.listeners_to_serve.clear();
        self.accepting = false;
    }

    /// The front end stopped queue `index` (GET_VRING_BASE): it starts
    /// again from the state the front end gives it, so a queue the driver
    /// broke is served again.
    pub fn queue_stopped(&mut self, index: u16) {
        self.broken_queues.clear(index);
    }

    pub fn report(&self) -> Vec<SocketReport> {
        let mut reports: Vec<SocketReport> = self
            .sockets
            .values()
            .map(|s| SocketReport {
                id: s.id,
                phase: s.phase,
                closing: s.closing,
                buffered_bytes: s.buffered_bytes(),
                server_name: s.server_name.clone(),
                tx_received: s.tx_received,
                tx_consumed: s.fwd_cnt,
                write_end_at: s.write_end_at,
                rx_sent: s.rx_sent,
                driver_credit: s.driver_credit(),
                role: if s.listener.is_some() {
                    "listener"
                } else if s.peer_addr.is_some() {
                    "server"
                } else if s.client_context.is_some() {
                    "client"
                } else {
                    ""
                },
                peer: s.peer(),
                requested_name: s.requested_server_name().map(str::to_owned),
                tls_version: s.info.version,
                cipher: s.info.cipher.clone(),
                bytes_to_peer: s.bytes_to_peer,
                bytes_from_peer: s.bytes_from_peer,
                policy_generation: s.session.as_ref().map(|session| session.policy_generation),
            })
            .collect();
        reports.sort_by_key(|r| r.id);
        reports
    }

    /// Applies a new policy to sessions that start from now on. Open
    /// sockets keep the configuration they connected (or were accepted)
    /// with; listening sockets stay bound and hand the connections they
    /// accept from now on to the new policy's TLS configuration. What the
    /// driver read from the config space at probe time (limits, versions)
    /// is not changed, so the buffer size, which the credit scheme of open
    /// sockets depends on, cannot change without a restart.
    pub fn reload(&mut self, policy: Arc<Policy>) -> Result<u64, String> {
        let current = self.policy().limits.socket_buffer_bytes;
        if policy.limits.socket_buffer_bytes != current {
            return Err(format!(
                "socket_buffer_bytes cannot change while the device runs ({current} now, {} in the new policy): \
                 the guest driver sized its buffers by it; restart the backend to change it",
                policy.limits.socket_buffer_bytes
            ));
        }
        self.budget.set_limits(&policy.limits);
        let server_context = ServerContext::with_budget(policy.clone(), self.budget.clone());
        for socket in self.sockets.values_mut() {
            let Some(listener) = socket.listener.as_mut().filter(|listener| listener.is_listening()) else { continue };
            match server_context.config(&socket.options) {
                Ok(config) => listener.config = Some(config),
                // Refusing the whole reload for this would let one guest
                // socket pin the old policy; it keeps its configuration.
                Err(failure) => tracing::warn!(
                    socket = socket.id,
                    %failure,
                    "listening socket keeps its TLS configuration: the new policy gives it none"
                ),
            }
        }
        self.server_context = server_context;
        self.context = Arc::new(ClientContext::with_budget(policy, self.budget.clone()));
        self.policy_generation += 1;
        self.telemetry.metrics.record_reload(true);
        tracing::info!(generation = self.policy_generation, "policy reloaded");
        Ok(self.policy_generation)
    }

    /// A reload refused before it reached the device (a bad policy file).
    pub fn count_failed_reload(&mut self) {
        self.telemetry.metrics.record_reload(false);
    }

    pub fn policy_generation(&self) -> u64 {
        self.policy_generation
    }

    /// Writes one JSON line per ended session to `log` from now on.
    pub fn set_audit_log(&mut self, log: Box<dyn std::io::Write + Send>) {
        self.telemetry.set_audit_log(log);
    }

    /// Names the VM in every audit record and metric.
    pub fn set_vm_name(&mut self, name: String) {
        self.telemetry.set_vm_name(name);
    }

    /// The prefix of this backend process's audit session ids.
    pub fn instance(&self) -> String {
        self.telemetry.instance().to_owned()
    }

    /// Counters and live numbers, for the metrics endpoint.
    pub fn snapshot(&self) -> Snapshot {
        let open = self.sockets.values().filter_map(|s| {
            let session = s.session.as_ref()?;
            Some((s.bytes_to_peer - session.bytes_to_peer_before, s.bytes_from_peer - session.bytes_from_peer_before))
        });
        let (open_to_peer, open_from_peer) = open.fold((0, 0), |(a, b), (to, from)| (a + to, b + from));
        let metrics = self.telemetry.metrics.clone();
        Snapshot {
            sockets_open: self.sockets.len(),
            bytes_to_peer: metrics.ended_bytes_to_peer + open_to_peer,
            bytes_from_peer: metrics.ended_bytes_from_peer + open_from_peer,
            policy_generation: self.policy_generation,
            events_pending: self.events.len(),
            vm: self.telemetry.vm_name().map(str::to_owned),
            instance: self.telemetry.instance().to_owned(),
            metrics,
        }
    }

    /// Ends the record of every open session (device reset, backend
    /// stopping): the connections go without the guest closing them.
    pub fn end_all_sessions(&mut self, reason: &str) {
        self.telemetry.flush_refusals(true);
        let mut ids: Vec<u32> = self.sockets.values().filter(|s| s.session.is_some()).map(|s| s.id).collect();
        ids.sort_unstable();
        for id in ids {
            let socket = self.sockets.get_mut(&id).expect("collected above");
            self.telemetry.end(socket, Outcome::failed(Errno::ECONNRESET, reason));
        }
    }

    /// One wake-up of the worker: a queue kick (`event` < number of queues)
    /// or network readiness (`reactor_event`).
    pub fn handle_event(&mut self, event: u16, reactor_event: u16, vrings: &[Vring]) {
        let Some(mem) = self.mem.as_ref().map(|m| m.memory()) else {
            if event == reactor_event {
                // No guest yet, but the timer still ticks: read it, or the
                // level-triggered reactor fd keeps the worker spinning.
                self.process_network();
            }
            return;
        };
        match event {
            wire::CONTROLQ => self.process_control(&mem, &vrings[wire::CONTROLQ as usize]),
            wire::EVENTQ => {}
            e if e == reactor_event => self.process_network(),
            q if (q as usize) < vrings.len() && q % 2 == 1 => self.process_tx(&mem, &vrings[q as usize], (q - 3) / 2),
            _ => {} // A receive queue got buffers: delivered below.
        }
        for pair in 0..self.shape.queue_pairs {
            if let Some(rxq) = vrings.get(wire::rx_queue(pair) as usize) {
                self.flush_rx(&mem, rxq, pair);
            }
        }
        if let Some(eventq) = vrings.get(wire::EVENTQ as usize) {
            self.flush_events(&mem, eventq);
        }
        if !self.shape.busy_poll.is_zero() {
            self.busy_poll(&mem, vrings);
        }
    }

    /// Stays awake for `busy_poll` after a wake-up, looking at the sockets
    /// and the transmit queues, so an answer that comes within that time is
    /// handled without the epoll sleep and wake-up in between (as
    /// vhost-net's busyloop_timeout). Costs CPU: the worker spins for that
    /// long after every wake-up. The device lock is held meanwhile, so
    /// control requests and `vhost-tls ctl` wait at most that long.
    fn busy_poll(&mut self, mem: &MemoryGuard, vrings: &[Vring]) {
        let until = Instant::now() + self.shape.busy_poll;
        while Instant::now() < until {
            self.process_network();
            for pair in 0..self.shape.queue_pairs {
                if let Some(txq) = vrings.get(wire::tx_queue(pair) as usize) {
                    self.process_tx(mem, txq, pair);
                }
                if let Some(rxq) = vrings.get(wire::rx_queue(pair) as usize) {
                    self.flush_rx(mem, rxq, pair);
                }
            }
            if let Some(eventq) = vrings.get(wire::EVENTQ as usize) {
                self.flush_events(mem, eventq);
            }
            std::hint::spin_loop();
        }
    }

    // ----------------------------------------------------------------------
    // Control queue
    // ----------------------------------------------------------------------

    fn process_control(&mut self, mem: &MemoryGuard, vring: &Vring) {
        if self.broken_queues.is_broken(wire::CONTROLQ) {
            return;
        }
        loop {
            let _ = vring.disable_notification();
            while let Some(chain) = self.pop_chain(wire::CONTROLQ, vring, mem) {
                let used = self.handle_control_chain(mem, &chain);
                queues::complete(vring, chain.head_index(), used);
            }
            if self.broken_queues.is_broken(wire::CONTROLQ) || !queues::arm_notification(vring) {
                break;
            }
        }
        queues::notify(vring);
    }

    /// The next chain of `queue`; `None` when there is none, or when the
    /// driver broke the queue (which then is no longer served).
    fn pop_chain(&mut self, queue: u16, vring: &Vring, mem: &MemoryGuard) -> Option<queues::Chain> {
        queues::pop_chain(vring, mem).unwrap_or_else(|broken| {
            self.broken_queues.mark(queue, broken);
            None
        })
    }

    fn handle_control_chain(&mut self, mem: &MemoryGuard, chain: &queues::Chain) -> u32 {
        let (response, value) = match queues::read_request(mem, chain, MAX_CONTROL_REQUEST) {
            ReadOutcome::Bytes(request) => self.handle_control_request(&request),
            ReadOutcome::Fault => (error_response(0, Errno::EFAULT), Vec::new()),
            ReadOutcome::TooLong => (error_response(0, Errno::EINVAL), Vec::new()),
        };
        // No room for the response: nothing can be said, the chain is
        // returned empty (spec 2.6.1).
        queues::write_reply(mem, chain, &[&response.encode(), &value]).unwrap_or(0)
    }

    /// One control request, as the bytes the driver put in the readable
    /// part of a control chain: the response the device writes back and
    /// the value that follows it. The control queue's path without guest
    /// memory, for fuzzing (`fuzz/`) and tests of malformed requests.
    #[doc(hidden)]
    pub fn handle_control_request(&mut self, request: &[u8]) -> (CtrlResponse, Vec<u8>) {
        let (response, value) = self.dispatch(request);
        (CtrlResponse { value_len: value.len() as u32, ..response }, value)
    }

    fn dispatch(&mut self, request: &[u8]) -> (CtrlResponse, Vec<u8>) {
        let Some(header) = CtrlHeader::decode(request) else {
            return (error_response(0, Errno::EINVAL), Vec::new());
        };
        let payload = &request[CtrlHeader::SIZE..];
        let id = header.socket_id;
        if header.flags != 0 {
            return (error_response(id, Errno::EINVAL), Vec::new());
        }
        let result = match header.op {
            wire::VIRTIO_TLS_OP_CREATE => match self.create(payload) {
                Ok(new_id) => return (CtrlResponse { socket_id: new_id, ..Default::default() }, Vec::new()),
                Err(errno) => Err(errno),
            },
            wire::VIRTIO_TLS_OP_CLOSE => self.close(id, payload),
            wire::VIRTIO_TLS_OP_SETOPT => self.set_option(id, payload),
            wire::VIRTIO_TLS_OP_GETOPT => match self.get_option(id, payload) {
                Ok(value) => return (CtrlResponse { socket_id: id, ..Default::default() }, value),
                Err(errno) => Err(errno),
            },
            wire::VIRTIO_TLS_OP_CONNECT => self.connect(id, header.request_id, payload),
            wire::VIRTIO_TLS_OP_SHUTDOWN => self.shutdown(id, payload),
            wire::VIRTIO_TLS_OP_BIND => self.bind(id, payload),
            wire::VIRTIO_TLS_OP_LISTEN => self.listen(id, payload),
            wire::VIRTIO_TLS_OP_ACCEPT => match self.accept(id, payload) {
                Ok((new_id, peer)) => return (CtrlResponse { socket_id: new_id, ..Default::default() }, peer.encode().to_vec()),
                Err(errno) => Err(errno),
            },
            wire::VIRTIO_TLS_OP_SETSOCKOPT => self.set_socket_option(id, payload),
            wire::VIRTIO_TLS_OP_GETSOCKOPT => match self.get_socket_option(id, payload) {
                Ok(value) => return (CtrlResponse { socket_id: id, ..Default::default() }, value),
                Err(errno) => Err(errno),
            },
            _ => Err(Errno::EOPNOTSUPP),
        };
        match result {
            Ok(()) => (CtrlResponse { socket_id: id, ..Default::default() }, Vec::new()),
            Err(errno) => (error_response(id, errno), Vec::new()),
        }
    }

    /// A socket the driver may still address (not closed).
    fn open_socket(sockets: &mut HashMap<u32, Socket>, id: u32) -> Result<&mut Socket, Errno> {
        match sockets.get_mut(&id) {
            // Accepted connections exist for the driver once ACCEPT gave them.
            Some(socket) if !socket.closing && socket.unclaimed_by.is_none() => Ok(socket),
            _ => Err(Errno::EBADF),
        }
    }

    fn create(&mut self, payload: &[u8]) -> Result<u32, Errno> {
        let request = wire::CreateRequest::decode(payload).ok_or(Errno::EINVAL)?;
        if request.family != wire::VIRTIO_TLS_AF_INET && request.family != wire::VIRTIO_TLS_AF_INET6 {
            return Err(Errno::EAFNOSUPPORT);
        }
        if request.queue_pair >= self.shape.queue_pairs {
            return Err(Errno::EINVAL);
        }
        let limits = &self.context.policy().limits;
        if self.sockets.len() >= limits.max_sockets as usize {
            self.limit_warnings.sockets.warn(&format!("max_sockets = {}: CREATE fails with EMFILE", limits.max_sockets));
            return Err(Errno::EMFILE);
        }
        if !self.budget.socket_fits(self.sockets.len(), limits.socket_buffer_bytes) {
            self.limit_warnings
                .buffer_memory
                .warn(&format!(
                    "vm_buffer_mib = {} is reserved by {} sockets and {} KiB of TLS configurations: CREATE fails with ENOBUFS",
                    limits.vm_buffer_mib,
                    self.sockets.len(),
                    self.budget.configs_bytes() / 1024
                ));
            return Err(Errno::ENOBUFS);
        }
        let id = self.allocate_id();
        let mut socket = Socket::new(id, request.queue_pair);
        socket.driver_buf_alloc = request.buf_alloc;
        socket.family = if request.family == wire::VIRTIO_TLS_AF_INET6 { Family::Inet6 } else { Family::Inet };
        self.sockets.insert(id, socket);
        tracing::debug!(socket = id, "created");
        Ok(id)
    }

    /// A fresh socket id: not in use, and never 0.
    fn allocate_id(&mut self) -> u32 {
        let mut id = self.next_id;
        while id == 0 || self.sockets.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        id
    }

    fn close(&mut self, id: u32, payload: &[u8]) -> Result<(), Errno> {
        let request = wire::CloseRequest::decode(payload).ok_or(Errno::EINVAL)?;
        let socket = Self::open_socket(&mut self.sockets, id)?;
        socket.closing = true;
        socket.write_end_at = Some(socket.write_end_at.map_or(request.tx_bytes, |at| at.max(request.tx_bytes)));
        socket.deadline = Some(Instant::now() + CLOSE_LINGER);
        self.rx_waiting[socket.queue_pair as usize].remove(&id);
        self.deferred_errors.remove(&id);
        self.events.forget(id);
        if let Some(listener) = socket.listener.take() {
            self.close_listener(id, listener);
        }
        tracing::debug!(socket = id, "closing");
        self.advance(id);
        Ok(())
    }

    fn set_option(&mut self, id: u32, payload: &[u8]) -> Result<(), Errno> {
        let request = wire::SetOptRequest::decode(payload).ok_or(Errno::EINVAL)?;
        let value = &payload[wire::SetOptRequest::SIZE..];
        if request.value_len as usize != value.len() {
            return Err(Errno::EINVAL);
        }
        let policy = self.context.policy().clone();
        let socket = Self::open_socket(&mut self.sockets, id)?;
        let phase = match socket.phase {
            Phase::Created | Phase::Bound => OptionPhase::Unconnected,
            _ => OptionPhase::Connected,
        };
        socket.options.set(&policy, phase, request.optname, value)
    }

    fn get_option(&mut self, id: u32, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let request = wire::GetOptRequest::decode(payload).ok_or(Errno::EINVAL)?;
        let policy = self.context.policy().clone();
        let socket = Self::open_socket(&mut self.sockets, id)?;
        let accepted_for_name = socket.peer_addr.map(|_| socket.requested_server_name().unwrap_or_default());
        let state = SocketState {
            id: u64::from(id),
            options: &socket.options,
            info: &socket.info,
            error: socket.error.as_deref(),
            accepted_for_name,
        };
        option_value(&policy, &state, request.optname, request.max_len as usize)
    }

    /// SETSOCKOPT (spec 2.6.10): tls-engine's table decides; Linux
    /// validates the value on the host socket or its stand-in.
    fn set_socket_option(&mut self, id: u32, payload: &[u8]) -> Result<(), Errno> {
        let request = wire::SockOptRequest::decode(payload).ok_or(Errno::EINVAL)?;
        let value = &payload[wire::SockOptRequest::SIZE..];
        if request.reserved != 0 || request.len as usize != value.len() {
            return Err(Errno::EINVAL);
        }
        let socket = Self::open_socket(&mut self.sockets, id)?;
        let (level, optname) = (request.level, request.optname);
        match sockopt_disposition(socket.family, Access::Set, level, optname, value) {
            Disposition::Host => {
                sockopt::set_raw(socket.option_socket()?, level, optname, value)?;
                socket.host_options.keep(level, optname, value);
                Ok(())
            }
            Disposition::Refused => {
                self.telemetry.metrics.sockopt_refused += 1;
                self.limit_warnings.refused_sockopts.warn_refusal(&format!(
                    "the policy refuses socket option {optname} at {} (socket {id}): EPERM",
                    level_name(level)
                ));
                Err(Errno::EPERM)
            }
            Disposition::Fail(errno) => Err(errno),
            Disposition::Protocol | Disposition::Own => Err(Errno::ENOPROTOOPT),
        }
    }

    /// GETSOCKOPT (spec 2.6.10): from the host socket once it exists.
    fn get_socket_option(&mut self, id: u32, payload: &[u8]) -> Result<Vec<u8>, Errno> {
        let request = wire::SockOptRequest::decode(payload).ok_or(Errno::EINVAL)?;
        if request.reserved != 0 {
            return Err(Errno::EINVAL);
        }
        let socket = Self::open_socket(&mut self.sockets, id)?;
        let (level, optname, max_len) = (request.level, request.optname, request.len as usize);
        match sockopt_disposition(socket.family, Access::Get, level, optname, &[]) {
            Disposition::Host => sockopt::get_raw(socket.option_socket()?, level, optname, max_len),
            Disposition::Protocol => Ok(tls_engine::sockopt::protocol_value(level, max_len)),
            Disposition::Refused => Err(Errno::EPERM),
            Disposition::Fail(errno) => Err(errno),
            Disposition::Own => Err(Errno::ENOPROTOOPT),
        }
    }

    fn connect(&mut self, id: u32, request_id: u64, payload: &[u8]) -> Result<(), Errno> {
        let addr = wire::SockAddr::decode(payload).ok_or(Errno::EINVAL)?;
        let policy = self.context.policy().clone();
        let handshakes_in_progress = self.handshakes_in_progress();
        let socket = Self::open_socket(&mut self.sockets, id)?;
        match socket.phase {
            Phase::Created | Phase::Failed => {}
            Phase::Bound | Phase::Listening => return Err(Errno::EINVAL),
            Phase::Resolving | Phase::Connecting | Phase::Handshaking => return Err(Errno::EALREADY),
            Phase::Established => return Err(Errno::EISCONN),
        }
        if addr.port == 0 {
            return Err(Errno::EINVAL);
        }
        let destination = match addr.family {
            wire::VIRTIO_TLS_AF_INET => {
                let octets: [u8; 4] = addr.addr[..4].try_into().expect("4 bytes");
                Destination::Address(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), addr.port))
            }
            wire::VIRTIO_TLS_AF_INET6 => {
                let octets: [u8; 16] = addr.addr[..16].try_into().expect("16 bytes");
                Destination::Address(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), addr.port, 0, addr.scope_id)))
            }
            wire::VIRTIO_TLS_AF_HOSTNAME => {
                let name = addr.hostname_bytes().ok_or(Errno::EINVAL)?;
                Destination::Name { host: parse_hostname(name)?, port: addr.port }
            }
            _ => return Err(Errno::EAFNOSUPPORT),
        };
        socket.error = None;
        socket.server_name = String::new();
        socket.connect_request = request_id;
        socket.client_context = Some(self.context.clone());
        let audit_name = socket.options.hostname().map(str::to_owned).unwrap_or_else(|| destination.server_name());
        self.telemetry.begin(socket, Direction::Client, Some(audit_name), self.policy_generation);
        let limits = &policy.limits;
        let refusal = match admit_handshake(handshakes_in_progress, &mut self.handshake_bucket, limits, Instant::now()) {
            Ok(()) => None,
            Err(refusal) => {
                let reason = refusal.to_string();
                match refusal {
                    HandshakeRefusal::Pending(_) => self.limit_warnings.pending_handshakes.warn(&reason),
                    HandshakeRefusal::Rate(_) => self.limit_warnings.handshake_rate.warn(&reason),
                };
                Some(reason)
            }
        };
        if let Some(reason) = refusal {
            // The socket stays Created: the program may try again. No
            // session began: the refusal is counted and audited in its burst.
            socket.session = None;
            self.telemetry.refused("connect", Errno::EAGAIN, &reason, self.policy_generation);
            socket.error = Some(reason);
            return Err(Errno::EAGAIN);
        }
        socket.deadline = Some(
            Instant::now()
                + Duration::from_secs(u64::from(limits.connect_timeout_secs) + u64::from(limits.handshake_timeout_secs)),
        );
        if destination.needs_resolution() {
            // A name no rule could allow fails here and now, not after a
            // resolver thread: CONNECT itself answers EACCES.
            if let Err(failure) = destination::refuse_before_resolution(&policy, &destination, socket.options.hostname()) {
                socket.deadline = None;
                self.limit_warnings.connect_refused.info(&format!("connect refused (socket {id}): {failure}"));
                self.telemetry.end(socket, Outcome::failed(failure.errno, failure.reason.clone()));
                socket.error = Some(failure.reason);
                return Err(failure.errno);
            }
            if self.pending_resolutions >= MAX_PENDING_RESOLUTIONS {
                // Still Created: no deadline may fail it later.
                socket.deadline = None;
                socket.session = None;
                self.telemetry.refused("connect", Errno::EAGAIN, "too many host name resolutions at once", self.policy_generation);
                return Err(Errno::EAGAIN);
            }
            socket.phase = Phase::Resolving;
            self.pending_resolutions += 1;
            let (sender, waker) = (self.resolutions_tx.clone(), self.waker.clone());
            let server_name = socket.options.hostname().map(str::to_owned);
            let spawned = std::thread::Builder::new().name("vhost-tls-resolve".into()).spawn(move || {
                let result = destination::resolve(&policy, &destination, server_name.as_deref());
                let _ = sender.send(Resolution { socket_id: id, request_id, destination, result });
                let _ = waker.wake();
            });
            if spawned.is_err() {
                self.pending_resolutions -= 1;
                let socket = self.sockets.get_mut(&id).expect("looked up above");
                socket.phase = Phase::Created;
                socket.deadline = None;
                socket.session = None;
                self.telemetry.refused("connect", Errno::EAGAIN, "cannot start a host name resolution", self.policy_generation);
                return Err(Errno::EAGAIN);
            }
            return Ok(());
        }
        let addrs = match destination::resolve(&policy, &destination, socket.options.hostname()) {
            Ok(addrs) => addrs,
            Err(failure) => {
                self.limit_warnings.connect_refused.info(&format!("connect refused (socket {id}): {failure}"));
                self.telemetry.end(socket, Outcome::failed(failure.errno, failure.reason.clone()));
                socket.error = Some(failure.reason);
                return Err(failure.errno);
            }
        };
        if let Err(failure) = socket.begin_connect(self.poll.registry(), &destination, addrs) {
            self.telemetry.end(socket, Outcome::failed(failure.errno, failure.reason.clone()));
            socket.error = Some(failure.reason);
            socket.phase = Phase::Failed;
            return Err(failure.errno);
        }
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Server sockets (VIRTIO_TLS_F_SERVER)
    // ----------------------------------------------------------------------

    fn bind(&mut self, id: u32, payload: &[u8]) -> Result<(), Errno> {
        let addr = wire::SockAddr::decode(payload).ok_or(Errno::EINVAL)?;
        let policy = self.context.policy().clone();
        let socket = Self::open_socket(&mut self.sockets, id)?;
        if addr.family != wire::VIRTIO_TLS_AF_INET && addr.family != wire::VIRTIO_TLS_AF_INET6 {
            return Err(Errno::EAFNOSUPPORT);
        }
        if socket.phase != Phase::Created {
            return Err(Errno::EINVAL);
        }
        let mapping = match policy.server.mapping_for_bind(addr.port) {
            Ok(mapping) => mapping,
            Err(failure) => {
                self.limit_warnings.bind_refused.info(&format!("bind refused (socket {id}, port {}): {}", addr.port, failure.reason));
                self.telemetry.refused("bind", failure.errno, &failure.reason, self.policy_generation);
                socket.error = Some(failure.reason);
                return Err(failure.errno);
            }
        };
        // The host's SO_REUSEADDR would let two sockets bind one port
        // until one listens; the guest expects its own stack's answer.
        let in_use = self.sockets.values().any(|s| s.listener.as_ref().is_some_and(|l| l.guest_port == mapping.guest_port));
        let socket = self.sockets.get_mut(&id).expect("looked up above");
        if in_use {
            let reason = format!("guest port {} is already bound", mapping.guest_port);
            self.telemetry.refused("bind", Errno::EADDRINUSE, &reason, self.policy_generation);
            socket.error = Some(reason);
            return Err(Errno::EADDRINUSE);
        }
        match Listener::bind(mapping.guest_port, mapping.host, &socket.host_options, id) {
            Ok(listener) => {
                tracing::info!(socket = id, guest_port = mapping.guest_port, host = %mapping.host, "bound");
                socket.listener = Some(listener);
                socket.host_socket_created();
                socket.phase = Phase::Bound;
                Ok(())
            }
            Err(failure) => {
                self.limit_warnings.bind_refused.info(&format!("bind refused (socket {id}): {failure}"));
                self.telemetry.refused("bind", failure.errno, &failure.reason, self.policy_generation);
                socket.error = Some(failure.reason);
                Err(failure.errno)
            }
        }
    }

    fn listen(&mut self, id: u32, payload: &[u8]) -> Result<(), Errno> {
        let request = wire::ListenRequest::decode(payload).ok_or(Errno::EINVAL)?;
        if request.reserved != 0 {
            return Err(Errno::EINVAL);
        }
        let socket = Self::open_socket(&mut self.sockets, id)?;
        if !matches!(socket.phase, Phase::Bound | Phase::Listening) {
            // The guest's stack would pick a port; only the policy's work.
            return Err(Errno::EINVAL);
        }
        let backlog = tls_engine::policy::backlog(i64::from(request.backlog));
        let config = match self.server_context.config(&socket.options) {
            Ok(config) => config,
            Err(failure) => {
                socket.error = Some(failure.reason);
                return Err(failure.errno);
            }
        };
        let token = socket.token();
        let listener = socket.listener.as_mut().expect("a bound socket has a listener");
        if let Err(failure) = listener.listen(self.poll.registry(), token, backlog, config) {
            socket.error = Some(failure.reason);
            return Err(failure.errno);
        }
        socket.phase = Phase::Listening;
        tracing::info!(socket = id, host = %listener.host, backlog, "listening");
        // Clients may have queued up between bind and listen.
        self.accept_incoming(id);
        Ok(())
    }

    fn accept(&mut self, id: u32, payload: &[u8]) -> Result<(u32, wire::SockAddr), Errno> {
        let request = wire::AcceptRequest::decode(payload).ok_or(Errno::EINVAL)?;
        if request.reserved0 != 0 || request.reserved1 != 0 || request.queue_pair >= self.shape.queue_pairs {
            return Err(Errno::EINVAL);
        }
        let listener_socket = Self::open_socket(&mut self.sockets, id)?;
        let listener = match listener_socket.listener.as_mut() {
            Some(listener) if listener.is_listening() => listener,
            _ => return Err(Errno::EINVAL),
        };
        let new_id = listener.ready.pop_front().ok_or(Errno::EAGAIN)?;
        let socket = self.sockets.get_mut(&new_id).expect("ready connections stay until claimed");
        socket.unclaimed_by = None;
        socket.queue_pair = request.queue_pair;
        let peer = socket.peer_addr.expect("accepted connections know their client");
        tracing::debug!(socket = new_id, listener = id, %peer, "accepted by the driver");
        // A slot in the backlog came free.
        self.accept_incoming(id);
        Ok((new_id, sockaddr_of(peer)))
    }

    /// Takes connections off the host listener while the backlog and the
    /// socket limit allow, and starts their handshakes. Iterative: a
    /// connection that fails at once (its client left) frees its slot from
    /// within this loop, and its listener is served again by the loop, not
    /// by a nested call: thousands of such clients queued behind a limit
    /// would otherwise nest once each and overflow the worker's stack.
    fn accept_incoming(&mut self, listener_id: u32) {
        self.listeners_to_serve.insert(listener_id);
        if self.accepting {
            return;
        }
        self.accepting = true;
        while let Some(id) = self.listeners_to_serve.pop_first() {
            self.accept_from(id);
        }
        self.accepting = false;
    }

    fn accept_from(&mut self, listener_id: u32) {
        let max_sockets = self.policy().limits.max_sockets as usize;
        let handshake_timeout = Duration::from_secs(u64::from(self.policy().limits.handshake_timeout_secs));
        loop {
            let Some(listener_socket) = self.sockets.get(&listener_id) else { return };
            let Some(listener) = listener_socket.listener.as_ref() else { return };
            if !listener.has_room() || self.sockets.len() >= max_sockets {
                // The rest wait in the host's accept queue until a slot
                // frees (ACCEPT, a failed handshake).
                return;
            }
            // The VM's limits hold for handshakes it serves too; clients
            // over them wait in the host's accept queue (the timer retries).
            let limits = &self.context.policy().limits;
            if !self.budget.socket_fits(self.sockets.len(), limits.socket_buffer_bytes) {
                self.limit_warnings.buffer_memory.warn("vm_buffer_mib reached: incoming connections wait");
                return;
            }
            match admit_handshake(self.handshakes_in_progress(), &mut self.handshake_bucket, limits, Instant::now()) {
                Ok(()) => {}
                Err(HandshakeRefusal::Pending(_)) => {
                    self.limit_warnings.pending_handshakes.warn("max_pending_handshakes reached: incoming connections wait");
                    return;
                }
                Err(HandshakeRefusal::Rate(_)) => {
                    self.limit_warnings.handshake_rate.warn("handshakes_per_second reached: incoming connections wait");
                    return;
                }
            }
            let listener = self.sockets.get(&listener_id).and_then(|s| s.listener.as_ref()).expect("looked up above");
            let (stream, peer) = match listener.accept() {
                Ok(Some(accepted)) => accepted,
                Ok(None) => {
                    self.handshake_bucket.refund();
                    return;
                }
                Err(error) => {
                    self.handshake_bucket.refund();
                    tracing::warn!(socket = listener_id, %error, "accepting a connection failed");
                    return;
                }
            };
            let config = listener.config.clone().expect("a listening socket has its configuration");
            let tls = match rustls::ServerConnection::new(config) {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::warn!(socket = listener_id, %error, "cannot start a server handshake");
                    continue;
                }
            };
            let id = self.allocate_id();
            let family = self.sockets.get(&listener_id).map_or(Family::Inet, |s| s.family);
            match Socket::accepted(id, listener_id, self.poll.registry(), stream, peer, tls) {
                Ok(mut socket) => {
                    socket.family = family;
                    socket.deadline = Some(Instant::now() + handshake_timeout);
                    socket.client_context = Some(self.context.clone());
                    self.telemetry.begin(&mut socket, Direction::Server, None, self.policy_generation);
                    self.sockets.insert(id, socket);
                }
                Err(failure) => {
                    tracing::warn!(socket = listener_id, %failure, "dropping a connection");
                    continue;
                }
            }
            let listener = self.sockets.get_mut(&listener_id).and_then(|s| s.listener.as_mut()).expect("looked up above");
            listener.handshaking += 1;
            tracing::debug!(socket = id, listener = listener_id, %peer, "connection accepted, handshaking");
            self.advance(id);
        }
    }

    /// A listening socket closed: connections the driver never took go.
    fn close_listener(&mut self, id: u32, mut listener: Listener) {
        listener.stop(self.poll.registry());
        let orphans: Vec<u32> = self.sockets.values().filter(|s| s.unclaimed_by == Some(id)).map(|s| s.id).collect();
        for orphan in orphans {
            if let Some(mut socket) = self.sockets.remove(&orphan) {
                let outcome = Outcome::failed(Errno::ECONNRESET, "the guest closed the listening socket before accepting");
                self.telemetry.end(&mut socket, outcome);
                socket.drop_connection(self.poll.registry());
            }
        }
    }

    /// An accepted connection the driver has not taken made progress.
    fn unclaimed_progress(&mut self, id: u32, listener_id: u32, notice: Option<Notice>) {
        let Some(notice) = notice else { return };
        let listener = self.sockets.get_mut(&listener_id).and_then(|s| s.listener.as_mut());
        match (notice, listener) {
            (Notice::Connected, Some(listener)) if !listener.ready.contains(&id) => {
                listener.handshaking = listener.handshaking.saturating_sub(1);
                listener.ready.push_back(id);
                let waiting = listener.ready.len();
                let socket = &self.sockets[&id];
                tracing::info!(
                    socket = id,
                    listener = listener_id,
                    client = %socket.server_name,
                    sni = socket.requested_server_name().unwrap_or("-"),
                    "handshake done, waiting for ACCEPT"
                );
                self.events.push(event(wire::VIRTIO_TLS_EVENT_ACCEPT_READY, listener_id, 0, Errno(0)), waiting);
            }
            (Notice::Connected, _) => {}
            (Notice::Failed(_), listener) => {
                // The guest never learns of a connection that failed before
                // it took it, as with a kernel's accept queue.
                if let Some(listener) = listener {
                    match listener.ready.iter().position(|&ready| ready == id) {
                        Some(at) => {
                            listener.ready.remove(at);
                        }
                        None => listener.handshaking = listener.handshaking.saturating_sub(1),
                    }
                }
                if let Some(mut socket) = self.sockets.remove(&id) {
                    tracing::info!(
                        socket = id,
                        listener = listener_id,
                        client = %socket.server_name,
                        reason = socket.error.as_deref().unwrap_or("-"),
                        "incoming connection failed before ACCEPT"
                    );
                    socket.drop_connection(self.poll.registry());
                }
                self.accept_incoming(listener_id);
            }
        }
    }

    fn shutdown(&mut self, id: u32, payload: &[u8]) -> Result<(), Errno> {
        let request = wire::ShutdownRequest::decode(payload).ok_or(Errno::EINVAL)?;
        let socket = Self::open_socket(&mut self.sockets, id)?;
        if request.how > wire::VIRTIO_TLS_SHUT_RDWR || request.reserved != 0 {
            return Err(Errno::EINVAL);
        }
        if socket.phase != Phase::Established {
            return Err(Errno::ENOTCONN);
        }
        if request.how != wire::VIRTIO_TLS_SHUT_RD {
            if request.tx_bytes < socket.tx_received {
                return Err(Errno::EINVAL);
            }
            socket.write_end_at = Some(request.tx_bytes);
        }
        if request.how != wire::VIRTIO_TLS_SHUT_WR {
            socket.read_shut = true;
            socket.discard_rx();
        }
        self.advance(id);
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Transmit queues
    // ----------------------------------------------------------------------

    fn process_tx(&mut self, mem: &MemoryGuard, vring: &Vring, pair: u16) {
        let queue = wire::tx_queue(pair);
        if self.broken_queues.is_broken(queue) {
            return;
        }
        loop {
            let _ = vring.disable_notification();
            while let Some(chain) = self.pop_chain(queue, vring, mem) {
                self.handle_tx_chain(mem, &chain, pair);
                queues::complete(vring, chain.head_index(), 0);
            }
            if self.broken_queues.is_broken(queue) || !queues::arm_notification(vring) {
                break;
            }
        }
        queues::notify(vring);
    }

    fn handle_tx_chain(&mut self, mem: &MemoryGuard, chain: &queues::Chain, pair: u16) {
        use std::io::Read;
        let Ok(mut reader) = queues::reader(mem, chain) else {
            tracing::debug!("transmit buffer outside guest memory: dropped");
            return;
        };
        let mut header_bytes = [0u8; DataHeader::SIZE];
        if reader.read_exact(&mut header_bytes).is_err() {
            tracing::debug!("transmit buffer shorter than its header: dropped");
            return;
        }
        let header = DataHeader::decode(&header_bytes).expect("full header read");
        let available = reader.available_bytes();
        self.handle_tx_packet(pair, header, available, &mut reader);
    }

    /// One transmit-queue packet, as the bytes of a transmit chain: the
    /// path of `handle_tx_chain` without guest memory, for fuzzing
    /// (`fuzz/`) and tests of malformed packets. Shorter than a header:
    /// dropped, as from a queue.
    #[doc(hidden)]
    pub fn handle_data_packet(&mut self, pair: u16, packet: &[u8]) {
        let Some(header) = DataHeader::decode(packet) else {
            tracing::debug!("transmit buffer shorter than its header: dropped");
            return;
        };
        let mut payload = &packet[DataHeader::SIZE..];
        self.handle_tx_packet(pair, header, payload.len(), &mut payload);
    }

    /// A data packet whose header has been read; `available` payload bytes
    /// can be read from `payload`.
    fn handle_tx_packet(&mut self, pair: u16, header: DataHeader, available: usize, payload: &mut impl std::io::Read) {
        let id = header.socket_id;
        let buf_size = self.policy().limits.socket_buffer_bytes;
        let Some(socket) = self.sockets.get_mut(&id).filter(|s| s.unclaimed_by.is_none()) else {
            tracing::debug!(socket = id, "data for an unknown socket: dropped");
            return;
        };
        let malformed = socket.queue_pair != pair
            || header.len > wire::MAX_DATA_PAYLOAD
            || available < header.len as usize
            || (header.op != wire::VIRTIO_TLS_DATA_OP_RW && header.len != 0);
        if malformed {
            self.fail_socket(id, Failure::new(Errno::EINVAL, "malformed data packet from the driver"));
            return;
        }
        socket.driver_buf_alloc = header.buf_alloc;
        socket.driver_fwd_cnt = header.fwd_cnt;
        match header.op {
            wire::VIRTIO_TLS_DATA_OP_RW if header.len > 0 => {
                let sendable = matches!(socket.phase, Phase::Resolving | Phase::Connecting | Phase::Handshaking | Phase::Established);
                if !sendable || socket.write_end_at.is_some_and(|end| socket.tx_received >= end) {
                    // The guest's socket layer should have said EPIPE/ENOTCONN.
                    tracing::debug!(socket = id, "data after the write side ended: dropped");
                    return;
                }
                if header.len > buf_size.saturating_sub(socket.tx_in_flight()) {
                    self.fail_socket(id, Failure::new(Errno::ENOBUFS, "the driver sent more than its credit"));
                    return;
                }
                if socket.accept_tx(payload, header.len as usize).is_err() {
                    self.fail_socket(id, Failure::new(Errno::EFAULT, "unreadable data packet from the driver"));
                    return;
                }
            }
            wire::VIRTIO_TLS_DATA_OP_RW | wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE => {}
            wire::VIRTIO_TLS_DATA_OP_CREDIT_REQUEST => socket.credit_update_wanted = true,
            _ => {
                tracing::debug!(socket = id, op = header.op, "unknown data op: ignored");
            }
        }
        self.advance(id);
    }

    // ----------------------------------------------------------------------
    // Receive queues and events
    // ----------------------------------------------------------------------

    fn flush_rx(&mut self, mem: &MemoryGuard, vring: &Vring, pair: u16) {
        if self.broken_queues.is_broken(wire::rx_queue(pair)) {
            return;
        }
        let buf_size = self.policy().limits.socket_buffer_bytes;
        let waiting: Vec<u32> = self.rx_waiting[pair as usize].iter().copied().collect();
        let mut used_any = false;
        'sockets: for id in waiting {
            loop {
                let Some(socket) = self.sockets.get_mut(&id) else {
                    self.rx_waiting[pair as usize].remove(&id);
                    continue 'sockets;
                };
                let credit = socket.driver_credit() as usize;
                let (op, flags, want) = if socket.rx_pending() > 0 && credit > 0 {
                    (wire::VIRTIO_TLS_DATA_OP_RW, 0, socket.rx_pending().min(credit))
                } else if socket.eof_pending() {
                    (wire::VIRTIO_TLS_DATA_OP_RW, wire::VIRTIO_TLS_DATA_F_EOF, 0)
                } else if socket.credit_update_wanted {
                    (wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, 0, 0)
                } else {
                    self.rx_waiting[pair as usize].remove(&id);
                    if let Some(errno) = self.deferred_errors.remove(&id) {
                        if socket.rx_pending() == 0 {
                            self.events.push(event(wire::VIRTIO_TLS_EVENT_SOCKET_ERROR, id, 0, errno), 0);
                        } else {
                            // Waiting for driver credit; keep the error for later.
                            self.deferred_errors.insert(id, errno);
                        }
                    }
                    continue 'sockets;
                };
                let chain = loop {
                    match queues::pop_chain(vring, mem) {
                        Ok(Some(chain)) => break chain,
                        Ok(None) if queues::arm_notification(vring) => {}
                        // No buffers: the driver kicks when it posts some.
                        Ok(None) => break 'sockets,
                        Err(broken) => {
                            self.broken_queues.mark(wire::rx_queue(pair), broken);
                            break 'sockets;
                        }
                    }
                };
                let room = match queues::writer(mem, &chain) {
                    Ok(writer) => writer.available_bytes(),
                    Err(_) => 0,
                };
                if room < DataHeader::SIZE {
                    tracing::debug!("receive buffer too small or outside guest memory: returned empty");
                    queues::complete(vring, chain.head_index(), 0);
                    used_any = true;
                    continue;
                }
                let len = want.min(room - DataHeader::SIZE).min(wire::MAX_DATA_PAYLOAD as usize);
                let (front, back) = socket.rx_slices(len);
                let payload_len = front.len() + back.len();
                let header = DataHeader {
                    socket_id: id,
                    op,
                    flags,
                    len: payload_len as u32,
                    buf_alloc: buf_size,
                    fwd_cnt: socket.fwd_cnt,
                    reserved: 0,
                };
                let written = queues::write_reply(mem, &chain, &[&header.encode(), front, back]).unwrap_or(0);
                socket.consume_rx(payload_len);
                queues::complete(vring, chain.head_index(), written);
                used_any = true;
                socket.rx_sent = socket.rx_sent.wrapping_add(payload_len as u32);
                socket.fwd_reported = socket.fwd_cnt;
                socket.credit_update_wanted = false;
                if flags & wire::VIRTIO_TLS_DATA_F_EOF != 0 {
                    socket.eof_delivered = true;
                }
                if socket.rx_pending() == 0 {
                    // Room again: read on from the network.
                    self.advance(id);
                }
            }
        }
        if used_any {
            queues::notify(vring);
        }
    }

    fn flush_events(&mut self, mem: &MemoryGuard, vring: &Vring) {
        if self.broken_queues.is_broken(wire::EVENTQ) {
            return;
        }
        let mut used_any = false;
        while let Some(next) = self.events.front() {
            let chain = match queues::pop_chain(vring, mem) {
                Ok(Some(chain)) => chain,
                Ok(None) if queues::arm_notification(vring) => continue,
                Ok(None) => break,
                Err(broken) => {
                    self.broken_queues.mark(wire::EVENTQ, broken);
                    break;
                }
            };
            let written = queues::write_reply(mem, &chain, &[&next.encode()]);
            queues::complete(vring, chain.head_index(), written.unwrap_or(0));
            used_any = true;
            if written.is_some() {
                self.events.pop_front();
            }
        }
        if used_any {
            queues::notify(vring);
        }
    }

    // ----------------------------------------------------------------------
    // Network
    // ----------------------------------------------------------------------

    /// The network work that is ready now (connects, handshakes, incoming
    /// connections, finished lookups, expired deadlines): what a reactor
    /// wake-up does, for fuzzing (`fuzz/`) without a vhost-user worker.
    #[doc(hidden)]
    pub fn handle_network_events(&mut self) {
        self.process_network();
    }

    fn process_network(&mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            if let Err(error) = self.poll.poll(&mut events, Some(Duration::ZERO)) {
                if error.kind() != std::io::ErrorKind::Interrupted {
                    tracing::warn!(%error, "polling sockets failed");
                }
                return;
            }
            if events.is_empty() {
                return;
            }
            for ready in events.iter() {
                match ready.token() {
                    WAKER => self.collect_resolutions(),
                    TIMER => self.expire_deadlines(),
                    Token(id) => self.advance(id as u32),
                }
            }
        }
    }

    fn collect_resolutions(&mut self) {
        while let Ok(resolution) = self.resolutions_rx.try_recv() {
            self.pending_resolutions -= 1;
            let id = resolution.socket_id;
            let Some(socket) = self.sockets.get_mut(&id) else { continue };
            if socket.phase != Phase::Resolving || socket.connect_request != resolution.request_id {
                continue;
            }
            let started = resolution
                .result
                .and_then(|addrs| socket.begin_connect(self.poll.registry(), &resolution.destination, addrs));
            if let Err(failure) = started {
                self.fail_socket(id, failure);
            }
        }
    }

    fn expire_deadlines(&mut self) {
        // Readable, so this read does not block; it re-arms the edge.
        let _ = self.timer.wait();
        self.telemetry.flush_refusals(false);
        // Clients held back by a limit get another chance.
        let listeners: Vec<u32> = self.sockets.values().filter(|s| s.phase == Phase::Listening).map(|s| s.id).collect();
        for id in listeners {
            self.accept_incoming(id);
        }
        let now = Instant::now();
        let expired: Vec<u32> =
            self.sockets.values().filter(|s| s.deadline.is_some_and(|d| d <= now)).map(|s| s.id).collect();
        for id in expired {
            let socket = self.sockets.get_mut(&id).expect("collected above");
            if socket.closing {
                let outcome = Outcome::failed(Errno::ETIMEDOUT, "closed, but its last data could not be sent in time");
                self.telemetry.end(socket, outcome);
                socket.drop_connection(self.poll.registry());
                self.sockets.remove(&id);
                continue;
            }
            let what = match socket.phase {
                Phase::Resolving => "resolving",
                _ if socket.unclaimed_by.is_some() => "handshaking with",
                _ => "connecting and handshaking with",
            };
            let reason = format!("timed out {what} {}", socket.server_name);
            self.fail_socket(id, Failure::new(Errno::ETIMEDOUT, reason));
        }
    }

    fn fail_socket(&mut self, id: u32, failure: Failure) {
        let Some(socket) = self.sockets.get_mut(&id) else { return };
        if let Some(listener) = socket.listener.take() {
            // A listening socket's connections the driver never took go
            // with it, and so does their share of the socket limit.
            self.close_listener(id, listener);
        }
        let Some(socket) = self.sockets.get_mut(&id) else { return };
        let connecting = matches!(socket.phase, Phase::Resolving | Phase::Connecting | Phase::Handshaking);
        let notice = socket.fail(self.poll.registry(), failure);
        self.after_progress(id, connecting, Some(notice));
    }

    /// Lets socket `id` make progress and tells the driver what came of it.
    fn advance(&mut self, id: u32) {
        let Some(socket) = self.sockets.get_mut(&id) else { return };
        if socket.listener.is_some() {
            self.accept_incoming(id);
            return;
        }
        let connecting = matches!(socket.phase, Phase::Resolving | Phase::Connecting | Phase::Handshaking);
        let context = socket.client_context.clone().unwrap_or_else(|| self.context.clone());
        let notice = socket.progress(self.poll.registry(), &context);
        self.after_progress(id, connecting, notice);
    }

    fn after_progress(&mut self, id: u32, was_connecting: bool, notice: Option<Notice>) {
        let buf_size = self.policy().limits.socket_buffer_bytes;
        let Some(socket) = self.sockets.get_mut(&id) else { return };
        match &notice {
            Some(Notice::Connected) => self.telemetry.established(socket),
            Some(Notice::Failed(errno)) => {
                let reason = socket.error.clone().unwrap_or_default();
                self.telemetry.end(socket, Outcome::failed(*errno, reason));
            }
            None => {}
        }
        if let Some(listener_id) = socket.unclaimed_by {
            self.unclaimed_progress(id, listener_id, notice);
            return;
        }
        if socket.closing {
            // The driver has forgotten this socket: nothing more for it.
            socket.discard_rx();
            if socket.phase == Phase::Failed || socket.close_finished() {
                let outcome = match &socket.session {
                    Some(session) if !session.established => Outcome::Abandoned,
                    _ => Outcome::Ok,
                };
                self.telemetry.end(socket, outcome);
                socket.drop_connection(self.poll.registry());
                self.sockets.remove(&id);
                tracing::debug!(socket = id, "closed");
            }
            return;
        }
        match notice {
            Some(Notice::Connected) => {
                tracing::debug!(socket = id, server = %socket.server_name, "handshake done");
                self.events.push(event(wire::VIRTIO_TLS_EVENT_CONNECT_DONE, id, socket.connect_request, Errno(0)), 0);
            }
            Some(Notice::Failed(errno)) if was_connecting => {
                self.events.push(event(wire::VIRTIO_TLS_EVENT_CONNECT_DONE, id, socket.connect_request, errno), 0);
            }
            Some(Notice::Failed(errno)) => {
                // Data that arrived before the failure is delivered first.
                self.deferred_errors.insert(id, errno);
            }
            None => {}
        }
        // The driver's credit runs low when it does not hear about consumed
        // bytes: tell it once a quarter of the buffer has moved on.
        if socket.fwd_cnt.wrapping_sub(socket.fwd_reported) >= buf_size / 4 {
            socket.credit_update_wanted = true;
        }
        if socket.rx_pending() > 0 || socket.eof_pending() || socket.credit_update_wanted || self.deferred_errors.contains_key(&id) {
            self.rx_waiting[socket.queue_pair as usize].insert(id);
        }
    }
}

fn error_response(socket_id: u32, errno: Errno) -> CtrlResponse {
    CtrlResponse { status: errno.0, socket_id, ..Default::default() }
}

fn event(kind: u16, socket_id: u32, request_id: u64, status: Errno) -> Event {
    Event { event: kind, socket_id, request_id, status: status.0, ..Default::default() }
}

/// The wire form of a host socket address.
fn sockaddr_of(addr: SocketAddr) -> wire::SockAddr {
    match addr {
        SocketAddr::V4(v4) => wire::SockAddr::ipv4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => wire::SockAddr::ipv4(v4.octets(), v6.port()),
            None => wire::SockAddr::ipv6(v6.ip().octets(), v6.port(), v6.scope_id()),
        },
    }
}
