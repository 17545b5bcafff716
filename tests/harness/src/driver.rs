//! The guest driver's part of virtio-tls, as a test harness: sockets over
//! the control, event and data queues of a device reached through
//! vhost-user, following `spec/virtio-tls.md` (credit-based flow control
//! included). Single-threaded: every call polls the used rings.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use tls_engine::Errno;
use virtio_tls_spec::{self as wire, CtrlHeader, CtrlResponse, DataHeader, Event, SockAddr, VirtioTlsConfig};

use crate::frontend::VhostUserDevice;

/// The credit and event rules, the same file the guest driver compiles
/// (the harness has no use for a few of its helpers).
#[allow(dead_code)]
#[path = "../../../guest-driver/flow.rs"]
mod flow;
use flow::{Received, SocketFlow};
use crate::guest_memory::GuestMemory;

/// Guest memory for the harness: rings plus buffers.
const MEMORY_SIZE: usize = 64 << 20;
const QUEUE_SIZE: u16 = 256;
/// Room for the largest control request and GETOPT value.
const CONTROL_BUFFER: u32 = (CtrlHeader::SIZE + 64 * 1024) as u32;
const EVENT_BUFFERS: usize = 64;
const RX_BUFFERS: usize = 64;
const RX_BUFFER_SIZE: u32 = DataHeader::SIZE as u32 + 16 * 1024;
const TX_BUFFERS: usize = 64;
const TX_BUFFER_SIZE: u32 = DataHeader::SIZE as u32 + 32 * 1024;
/// The driver's receive buffer per socket (its buf_alloc).
pub const DRIVER_BUF_ALLOC: u32 = 256 * 1024;

/// What a receive attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recv {
    Data(Vec<u8>),
    /// The peer ended the stream with close_notify.
    Eof,
    /// Nothing yet.
    WouldBlock,
    /// The socket failed (SOCKET_ERROR, or a failed connect).
    Error(Errno),
}

/// A control request's raw outcome, for malformed-request tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawReply {
    pub used_len: u32,
    pub response: Option<CtrlResponse>,
}

impl RawReply {
    pub fn status(&self) -> Option<u32> {
        self.response.map(|r| r.status)
    }
}

struct SocketState {
    queue_pair: u16,
    rx: VecDeque<u8>,
    flow: SocketFlow,
}

impl SocketState {
    fn new(queue_pair: u16, peer_buf_alloc: u32) -> SocketState {
        SocketState { queue_pair, rx: VecDeque::new(), flow: SocketFlow::new(DRIVER_BUF_ALLOC, peer_buf_alloc) }
    }

    fn error(&self) -> Option<Errno> {
        self.flow.failure().map(Errno)
    }
}

pub struct TlsDevice {
    device: VhostUserDevice,
    config: VirtioTlsConfig,
    next_request: u64,
    /// Where a used receive buffer is read to (one allocation, reused: the
    /// harness should cost no more per byte than a guest's driver does).
    rx_scratch: Vec<u8>,
    control_request: u64,
    control_response: u64,
    /// Posted event buffers by descriptor head.
    event_buffers: HashMap<u16, u64>,
    /// Posted receive buffers by (pair, head).
    rx_buffers: HashMap<(u16, u16), u64>,
    /// Transmit buffers free for use, and in flight by (pair, head).
    tx_free: Vec<u64>,
    tx_in_flight: HashMap<(u16, u16), u64>,
    sockets: HashMap<u32, SocketState>,
    /// ACCEPT_READY events not yet answered by an ACCEPT, by listening socket.
    accept_ready: HashMap<u32, u32>,
    /// Receive buffers and events the device sent for socket ids this
    /// driver does not know (it must send none).
    pub messages_for_unknown_sockets: u64,
    /// Guest address just past guest memory, for fault tests.
    memory_end: u64,
}

impl TlsDevice {
    /// Connects to a vhost-tls backend's vhost-user socket as the guest,
    /// sets up all queues and stocks the event and receive queues.
    pub fn attach(socket_path: &Path, num_queues: usize) -> std::io::Result<TlsDevice> {
        Self::attach_with_event_buffers(socket_path, num_queues, EVENT_BUFFERS)
    }

    /// As `attach`, with `event_buffers` buffers on the event queue (0: a
    /// driver that never takes events, so the device must hold them).
    pub fn attach_with_event_buffers(socket_path: &Path, num_queues: usize, event_buffers: usize) -> std::io::Result<TlsDevice> {
        let mut memory = GuestMemory::new(MEMORY_SIZE)?;
        let control_request = memory.alloc(CONTROL_BUFFER as usize, 16)?;
        let control_response = memory.alloc(CONTROL_BUFFER as usize, 16)?;
        let event_addrs: Vec<u64> =
            (0..event_buffers).map(|_| memory.alloc(Event::SIZE, 8)).collect::<Result<_, _>>()?;
        let pairs = (num_queues as u16 - 2) / 2;
        let mut rx_addrs = Vec::new();
        for pair in 0..pairs {
            for _ in 0..RX_BUFFERS {
                rx_addrs.push((pair, memory.alloc(RX_BUFFER_SIZE as usize, 8)?));
            }
        }
        let tx_free: Vec<u64> =
            (0..TX_BUFFERS * pairs as usize).map(|_| memory.alloc(TX_BUFFER_SIZE as usize, 8)).collect::<Result<_, _>>()?;
        let memory_end = MEMORY_SIZE as u64;
        let mut device = VhostUserDevice::connect(socket_path, memory, num_queues, QUEUE_SIZE)?;
        let config_bytes = device.get_config(0, VirtioTlsConfig::SIZE as u32)?;
        let config = VirtioTlsConfig::decode(&config_bytes)
            .ok_or_else(|| std::io::Error::other("device config shorter than VirtioTlsConfig"))?;
        let mut this = TlsDevice {
            device,
            config,
            next_request: 1,
            rx_scratch: vec![0u8; RX_BUFFER_SIZE as usize],
            control_request,
            control_response,
            event_buffers: HashMap::new(),
            rx_buffers: HashMap::new(),
            tx_free,
            tx_in_flight: HashMap::new(),
            sockets: HashMap::new(),
            accept_ready: HashMap::new(),
            messages_for_unknown_sockets: 0,
            memory_end,
        };
        for addr in event_addrs {
            this.post_event_buffer(addr);
        }
        for (pair, addr) in rx_addrs {
            this.post_rx_buffer(pair, addr);
        }
        this.device.queue_mut(wire::EVENTQ as usize).kick()?;
        for pair in 0..pairs {
            this.device.queue_mut(wire::rx_queue(pair) as usize).kick()?;
        }
        Ok(this)
    }

    pub fn config(&self) -> VirtioTlsConfig {
        self.config
    }

    fn post_event_buffer(&mut self, addr: u64) {
        let head = self.device.queue_mut(wire::EVENTQ as usize).add_chain(&[], &[(addr, Event::SIZE as u32)]).expect("event queue has room");
        self.event_buffers.insert(head, addr);
    }

    fn post_rx_buffer(&mut self, pair: u16, addr: u64) {
        let head = self.device.queue_mut(wire::rx_queue(pair) as usize).add_chain(&[], &[(addr, RX_BUFFER_SIZE)]).expect("rx queue has room");
        self.rx_buffers.insert((pair, head), addr);
    }

    // ------------------------------------------------------------------
    // Control requests
    // ------------------------------------------------------------------

    /// Sends one control request and waits for its response.
    fn request(&mut self, op: u16, socket_id: u32, payload: &[u8], value_room: u32) -> (CtrlResponse, Vec<u8>) {
        let request_id = self.next_request;
        self.next_request += 1;
        let mut bytes = CtrlHeader { op, flags: 0, socket_id, request_id }.encode().to_vec();
        bytes.extend_from_slice(payload);
        let reply = self.raw_control(&bytes, CtrlResponse::SIZE as u32 + value_room);
        let response = reply.response.expect("the device answers well-formed requests");
        let value_len = (response.value_len as usize).min(value_room as usize);
        let mut value = vec![0u8; value_len];
        self.device.memory().read(self.control_response + CtrlResponse::SIZE as u64, &mut value).expect("read value");
        (response, value)
    }

    /// Sends `bytes` as the readable part of a control chain with
    /// `writable` bytes of response room, and waits for the device.
    pub fn raw_control(&mut self, bytes: &[u8], writable: u32) -> RawReply {
        assert!(bytes.len() <= 2 * CONTROL_BUFFER as usize);
        // Large requests span two descriptors: the device reads chains.
        let mut readable = Vec::new();
        if bytes.len() <= CONTROL_BUFFER as usize {
            self.device.memory().write(self.control_request, bytes).expect("write request");
            readable.push((self.control_request, bytes.len() as u32));
        } else {
            let (first, second) = bytes.split_at(CONTROL_BUFFER as usize);
            self.device.memory().write(self.control_request, first).expect("write request");
            self.device.memory().write(self.control_response, second).expect("write request");
            readable.push((self.control_request, first.len() as u32));
            readable.push((self.control_response, second.len() as u32));
            let scratch = self.tx_free.pop().expect("scratch buffer");
            let reply = self.control_chain(&readable, &[(scratch, writable.min(TX_BUFFER_SIZE))], Some(scratch));
            self.tx_free.push(scratch);
            return reply;
        }
        let response = self.control_response;
        self.control_chain(&readable, &[(response, writable.min(CONTROL_BUFFER))], Some(response))
    }

    fn control_chain(&mut self, readable: &[(u64, u32)], writable: &[(u64, u32)], response_at: Option<u64>) -> RawReply {
        let queue = wire::CONTROLQ as usize;
        let head = self.device.queue_mut(queue).add_chain(readable, writable).expect("control queue has room");
        self.device.queue_mut(queue).kick().expect("kick");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((used_head, used_len)) = self.device.queue_mut(queue).pop_used() {
                assert_eq!(used_head, head, "one control request at a time");
                let response = match response_at {
                    Some(addr) if used_len as usize >= CtrlResponse::SIZE => {
                        let mut bytes = [0u8; CtrlResponse::SIZE];
                        self.device.memory().read(addr, &mut bytes).expect("read response");
                        CtrlResponse::decode(&bytes)
                    }
                    _ => None,
                };
                return RawReply { used_len, response };
            }
            assert!(Instant::now() < deadline, "the device did not answer a control request");
            self.poll(Duration::from_millis(5));
        }
    }

    /// A control request whose readable descriptor lies outside guest memory.
    pub fn control_with_outside_request(&mut self) -> RawReply {
        let response = self.control_response;
        self.control_chain(&[(self.memory_end + 4096, 64)], &[(response, 64)], Some(response))
    }

    /// A control request whose response descriptor lies outside guest memory.
    pub fn control_with_outside_response(&mut self) -> RawReply {
        let bytes = CtrlHeader { op: wire::VIRTIO_TLS_OP_CREATE, flags: 0, socket_id: 0, request_id: 1 }.encode();
        self.device.memory().write(self.control_request, &bytes).expect("write request");
        let request = self.control_request;
        self.control_chain(&[(request, bytes.len() as u32)], &[(self.memory_end - 8, 64)], None)
    }

    fn status(response: &CtrlResponse) -> Result<(), Errno> {
        match response.status {
            0 => Ok(()),
            errno => Err(Errno(errno)),
        }
    }

    pub fn create(&mut self, family: u16) -> Result<u32, Errno> {
        self.create_on_pair(family, 0)
    }

    pub fn create_on_pair(&mut self, family: u16, queue_pair: u16) -> Result<u32, Errno> {
        let payload = wire::CreateRequest { family, queue_pair, buf_alloc: DRIVER_BUF_ALLOC }.encode();
        let (response, _) = self.request(wire::VIRTIO_TLS_OP_CREATE, 0, &payload, 0);
        Self::status(&response)?;
        self.sockets.insert(response.socket_id, SocketState::new(queue_pair, self.config.socket_buf_size));
        Ok(response.socket_id)
    }

    pub fn set_option(&mut self, id: u32, optname: u32, value: &[u8]) -> Result<(), Errno> {
        let mut payload = wire::SetOptRequest { optname, value_len: value.len() as u32 }.encode().to_vec();
        payload.extend_from_slice(value);
        let (response, _) = self.request(wire::VIRTIO_TLS_OP_SETOPT, id, &payload, 0);
        Self::status(&response)
    }

    pub fn get_option(&mut self, id: u32, optname: u32, max_len: u32) -> Result<Vec<u8>, Errno> {
        let payload = wire::GetOptRequest { optname, max_len }.encode();
        let (response, value) = self.request(wire::VIRTIO_TLS_OP_GETOPT, id, &payload, max_len);
        Self::status(&response)?;
        Ok(value)
    }

    /// SETSOCKOPT (spec 2.6.10): an option at SOL_SOCKET, IPPROTO_TCP,
    /// IPPROTO_IP or IPPROTO_IPV6, Linux's numbers and value bytes.
    pub fn set_socket_option(&mut self, id: u32, level: u32, optname: u32, value: &[u8]) -> Result<(), Errno> {
        let request = wire::SockOptRequest { level, optname, len: value.len() as u32, reserved: 0 };
        self.raw_socket_option(wire::VIRTIO_TLS_OP_SETSOCKOPT, id, request, value).map(drop)
    }

    /// GETSOCKOPT with room for `max_len` bytes of value.
    pub fn get_socket_option(&mut self, id: u32, level: u32, optname: u32, max_len: u32) -> Result<Vec<u8>, Errno> {
        let request = wire::SockOptRequest { level, optname, len: max_len, reserved: 0 };
        self.raw_socket_option(wire::VIRTIO_TLS_OP_GETSOCKOPT, id, request, &[])
    }

    /// An integer option (4 bytes) set with SETSOCKOPT.
    pub fn set_int_option(&mut self, id: u32, level: u32, optname: u32, value: i32) -> Result<(), Errno> {
        self.set_socket_option(id, level, optname, &value.to_le_bytes())
    }

    /// An integer option read with GETSOCKOPT.
    pub fn get_int_option(&mut self, id: u32, level: u32, optname: u32) -> Result<i32, Errno> {
        let value = self.get_socket_option(id, level, optname, 4)?;
        let bytes: [u8; 4] = value.as_slice().try_into().unwrap_or_else(|_| panic!("option {optname} at {level}: {value:?}"));
        Ok(i32::from_le_bytes(bytes))
    }

    /// SETSOCKOPT or GETSOCKOPT with any header and value, as a faulty
    /// driver might send it; GETSOCKOPT's room is `request.len`.
    pub fn raw_socket_option(&mut self, op: u16, id: u32, request: wire::SockOptRequest, value: &[u8]) -> Result<Vec<u8>, Errno> {
        let mut payload = request.encode().to_vec();
        payload.extend_from_slice(value);
        let room = if op == wire::VIRTIO_TLS_OP_GETSOCKOPT { request.len } else { 0 };
        let (response, value) = self.request(op, id, &payload, room);
        Self::status(&response)?;
        Ok(value)
    }

    /// TLS_ERROR as text (empty when there is none or on error).
    pub fn tls_error(&mut self, id: u32) -> String {
        self.get_option(id, wire::TLS_ERROR, wire::MAX_ERROR_LEN as u32)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    }

    /// Starts a connect; Ok means in progress (a CONNECT_DONE follows).
    pub fn start_connect(&mut self, id: u32, addr: SockAddr) -> Result<(), Errno> {
        if let Some(socket) = self.sockets.get_mut(&id) {
            socket.flow.start_connect();
        }
        let (response, _) = self.request(wire::VIRTIO_TLS_OP_CONNECT, id, &addr.encode(), 0);
        Self::status(&response)
    }

    /// The CONNECT_DONE status, once it came.
    pub fn connect_result(&mut self, id: u32) -> Option<Result<(), Errno>> {
        self.poll(Duration::ZERO);
        let status = self.sockets.get(&id)?.flow.connect_status?;
        Some(if status == 0 { Ok(()) } else { Err(Errno(status)) })
    }

    /// Connects and waits for the handshake to finish.
    pub fn connect(&mut self, id: u32, addr: SockAddr, timeout: Duration) -> Result<(), Errno> {
        self.start_connect(id, addr)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(result) = self.connect_result(id) {
                return result;
            }
            if Instant::now() >= deadline {
                return Err(Errno::ETIMEDOUT);
            }
            self.poll(Duration::from_millis(10));
        }
    }

    /// BIND to a guest port (the policy maps it to a host address).
    pub fn bind(&mut self, id: u32, addr: SockAddr) -> Result<(), Errno> {
        let (response, _) = self.request(wire::VIRTIO_TLS_OP_BIND, id, &addr.encode(), 0);
        Self::status(&response)
    }

    pub fn listen(&mut self, id: u32, backlog: u32) -> Result<(), Errno> {
        let payload = wire::ListenRequest { backlog, reserved: 0 }.encode();
        let (response, _) = self.request(wire::VIRTIO_TLS_OP_LISTEN, id, &payload, 0);
        Self::status(&response)
    }

    /// One ACCEPT: the new socket and its client, or EAGAIN when no
    /// handshaken connection waits. The new socket is set up and its
    /// receive credit sent, as a driver must (spec 2.6.9, DRV-6.9.1).
    pub fn try_accept(&mut self, id: u32) -> Result<(u32, SockAddr), Errno> {
        self.poll(Duration::ZERO);
        let payload = wire::AcceptRequest { queue_pair: 0, reserved0: 0, reserved1: 0 }.encode();
        let (response, value) = self.request(wire::VIRTIO_TLS_OP_ACCEPT, id, &payload, SockAddr::SIZE as u32);
        Self::status(&response)?;
        let peer = SockAddr::decode(&value).expect("ACCEPT returns the client's address");
        self.sockets.insert(response.socket_id, SocketState::new(0, self.config.socket_buf_size));
        self.send_packet(response.socket_id, wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, &[]);
        Ok((response.socket_id, peer))
    }

    /// ACCEPT_READY events seen for listening socket `id` (cleared by the caller's ACCEPTs).
    pub fn take_accept_ready(&mut self, id: u32) -> u32 {
        self.poll(Duration::ZERO);
        self.accept_ready.remove(&id).unwrap_or(0)
    }

    /// Waits for a handshaken connection and accepts it.
    pub fn accept(&mut self, id: u32, timeout: Duration) -> Result<(u32, SockAddr), Errno> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_accept(id) {
                Err(Errno::EAGAIN) if Instant::now() < deadline => self.poll(Duration::from_millis(10)),
                other => return other,
            }
        }
    }

    pub fn shutdown(&mut self, id: u32, how: u32) -> Result<(), Errno> {
        let tx_bytes = self.sockets.get(&id).map_or(0, |s| s.flow.tx_bytes());
        let payload = wire::ShutdownRequest { how, reserved: 0, tx_bytes }.encode();
        let (response, _) = self.request(wire::VIRTIO_TLS_OP_SHUTDOWN, id, &payload, 0);
        Self::status(&response)
    }

    pub fn close(&mut self, id: u32) -> Result<(), Errno> {
        let tx_bytes = self.sockets.get(&id).map_or(0, |s| s.flow.tx_bytes());
        let payload = wire::CloseRequest { tx_bytes }.encode();
        let (response, _) = self.request(wire::VIRTIO_TLS_OP_CLOSE, id, &payload, 0);
        Self::status(&response)?;
        self.sockets.remove(&id);
        Ok(())
    }

    // ------------------------------------------------------------------
    // Data
    // ------------------------------------------------------------------

    /// Queues as much of `data` as credit and transmit buffers allow.
    pub fn try_send(&mut self, id: u32, data: &[u8]) -> Result<usize, Errno> {
        self.poll(Duration::ZERO);
        let mut sent = 0;
        loop {
            let socket = self.sockets.get(&id).ok_or(Errno::EBADF)?;
            if let Some(errno) = socket.error() {
                return if sent > 0 { Ok(sent) } else { Err(errno) };
            }
            let room = socket.flow.sendable(data.len() - sent, TX_BUFFER_SIZE as usize - DataHeader::SIZE);
            if room == 0 {
                if socket.flow.credit() == 0 && sent == 0 {
                    // Ask, in case the device's update got lost in between.
                    self.send_packet(id, wire::VIRTIO_TLS_DATA_OP_CREDIT_REQUEST, &[]);
                }
                return Ok(sent);
            }
            if self.tx_free.is_empty() {
                return Ok(sent);
            }
            let chunk = &data[sent..sent + room];
            self.send_packet(id, wire::VIRTIO_TLS_DATA_OP_RW, chunk);
            sent += room;
        }
    }

    fn send_packet(&mut self, id: u32, op: u16, payload: &[u8]) {
        let Some(addr) = self.tx_free.pop() else { return };
        let socket = self.sockets.get_mut(&id).expect("known socket");
        let header = socket.flow.header(id, op, payload.len());
        socket.flow.header_sent(&header);
        let pair = socket.queue_pair;
        self.queue_tx(pair, addr, &header, payload);
    }

    /// Writes a header and payload into the transmit buffer at `addr` and
    /// makes it available on `pair`'s transmit queue.
    fn queue_tx(&mut self, pair: u16, addr: u64, header: &DataHeader, payload: &[u8]) {
        let memory = self.device.memory();
        memory.write(addr, &header.encode()).expect("write header");
        memory.write(addr + DataHeader::SIZE as u64, payload).expect("write payload");
        let queue = wire::tx_queue(pair) as usize;
        let head = self.device.queue_mut(queue).add_chain(&[(addr, (DataHeader::SIZE + payload.len()) as u32)], &[]).expect("tx room");
        self.tx_in_flight.insert((pair, head), addr);
        self.device.queue_mut(queue).kick().expect("kick");
    }

    pub fn send_all(&mut self, id: u32, data: &[u8], timeout: Duration) -> Result<(), Errno> {
        let deadline = Instant::now() + timeout;
        let mut sent = 0;
        while sent < data.len() {
            sent += self.try_send(id, &data[sent..])?;
            if sent < data.len() {
                if Instant::now() >= deadline {
                    return Err(Errno::ETIMEDOUT);
                }
                self.poll(Duration::from_millis(5));
            }
        }
        Ok(())
    }

    /// Takes up to `max` received bytes without waiting.
    pub fn try_recv(&mut self, id: u32, max: usize) -> Recv {
        self.poll(Duration::ZERO);
        let Some(socket) = self.sockets.get_mut(&id) else {
            return Recv::Error(Errno::EBADF);
        };
        if !socket.rx.is_empty() {
            let n = max.min(socket.rx.len());
            let (front, back) = socket.rx.as_slices();
            let from_front = n.min(front.len());
            let mut data = Vec::with_capacity(n);
            data.extend_from_slice(&front[..from_front]);
            data.extend_from_slice(&back[..n - from_front]);
            socket.rx.drain(..n);
            // Tell the device about freed room once a quarter has moved.
            if socket.flow.consumed(n) {
                self.send_packet(id, wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, &[]);
            }
            return Recv::Data(data);
        }
        if let Some(errno) = socket.error() {
            return Recv::Error(errno);
        }
        if socket.flow.eof {
            return Recv::Eof;
        }
        Recv::WouldBlock
    }

    /// Waits for data, end of stream or an error.
    pub fn recv(&mut self, id: u32, max: usize, timeout: Duration) -> Recv {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_recv(id, max) {
                Recv::WouldBlock if Instant::now() < deadline => self.poll(Duration::from_millis(10)),
                other => return other,
            }
        }
    }

    pub fn read_exact(&mut self, id: u32, len: usize, timeout: Duration) -> Result<Vec<u8>, Recv> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            match self.recv(id, len - out.len(), deadline.saturating_duration_since(Instant::now())) {
                Recv::Data(data) => out.extend_from_slice(&data),
                other => return Err(other),
            }
        }
        Ok(out)
    }

    /// Reads until the stream ends; the result says how it ended.
    pub fn read_to_end(&mut self, id: u32, timeout: Duration) -> (Vec<u8>, Result<(), Errno>) {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            match self.recv(id, 1 << 20, deadline.saturating_duration_since(Instant::now())) {
                Recv::Data(data) => out.extend_from_slice(&data),
                Recv::Eof => return (out, Ok(())),
                Recv::Error(errno) => return (out, Err(errno)),
                Recv::WouldBlock => return (out, Err(Errno::ETIMEDOUT)),
            }
        }
    }

    /// A data packet as given, for malformed-packet tests.
    pub fn raw_data(&mut self, pair: u16, socket_id: u32, op: u16, payload: &[u8]) {
        let addr = self.tx_free.pop().expect("tx buffer");
        let header = DataHeader { socket_id, op, len: payload.len() as u32, ..Default::default() };
        self.queue_tx(pair, addr, &header, payload);
        self.poll(Duration::from_millis(20));
    }

    /// `count` copies of one data packet as given, on the transmit queue
    /// of `pair` (one buffer, published again and again), for flooding
    /// tests: `batch` at a time, each batch kicked and waited for (1: a
    /// driver that sends packet by packet, the device waking for each).
    /// Returns when the device has returned them all.
    pub fn flood_data(&mut self, pair: u16, socket_id: u32, op: u16, payload: &[u8], count: usize, batch: usize) {
        let addr = self.tx_free.pop().expect("tx buffer");
        let header = DataHeader { socket_id, op, len: payload.len() as u32, ..Default::default() };
        let memory = self.device.memory();
        memory.write(addr, &header.encode()).expect("write header");
        memory.write(addr + DataHeader::SIZE as u64, payload).expect("write payload");
        let len = (DataHeader::SIZE + payload.len()) as u32;
        let queue = wire::tx_queue(pair) as usize;
        let (mut published, mut returned) = (0, 0);
        while returned < count {
            while self.device.queue_mut(queue).pop_used().is_some() {
                returned += 1;
            }
            let mut added = false;
            while published < count && published - returned < batch && self.device.queue_mut(queue).free_descriptors() > 0 {
                self.device.queue_mut(queue).add_chain(&[(addr, len)], &[]).expect("tx room");
                published += 1;
                added = true;
            }
            if added {
                self.device.queue_mut(queue).kick().expect("kick");
            } else if returned < count {
                self.device.wait_for_interrupt(Duration::from_millis(10));
            }
        }
        self.tx_free.push(addr);
    }

    /// Publishes an available index `ahead` entries past the true one on
    /// `queue`, with nothing behind them (more than the queue size ahead,
    /// the queue is broken), and kicks. The driver's own bookkeeping is
    /// untouched: `restore_avail_idx` writes the true index back.
    pub fn publish_avail_idx_ahead(&mut self, queue: u16, ahead: u16) {
        let queue = self.device.queue_mut(usize::from(queue));
        let bogus = queue.avail_idx().wrapping_add(ahead);
        queue.publish_avail_idx(bogus).expect("avail ring is in guest memory");
    }

    pub fn restore_avail_idx(&mut self, queue: u16) {
        let queue = self.device.queue_mut(usize::from(queue));
        let idx = queue.avail_idx();
        queue.publish_avail_idx(idx).expect("avail ring is in guest memory");
    }

    /// Stops and restarts `queue` through vhost-user (as QEMU does on a
    /// device reset), so that a device that gave up on it serves it again.
    pub fn restart_queue(&mut self, queue: u16) -> std::io::Result<()> {
        self.device.restart_queue(usize::from(queue))
    }

    /// A data packet whose payload descriptor lies outside guest memory.
    pub fn data_with_outside_payload(&mut self, pair: u16) {
        let addr = self.tx_free.pop().expect("tx buffer");
        let header = DataHeader { socket_id: 1, op: wire::VIRTIO_TLS_DATA_OP_RW, len: 100, ..Default::default() };
        self.device.memory().write(addr, &header.encode()).expect("write");
        let queue = wire::tx_queue(pair) as usize;
        let outside = self.memory_end + (1 << 20);
        let head = self
            .device
            .queue_mut(queue)
            .add_chain(&[(addr, DataHeader::SIZE as u32), (outside, 100)], &[])
            .expect("room");
        self.tx_in_flight.insert((pair, head), addr);
        self.device.queue_mut(queue).kick().expect("kick");
        self.poll(Duration::from_millis(20));
    }

    // ------------------------------------------------------------------
    // Used rings
    // ------------------------------------------------------------------

    /// Polls for up to `duration` for the device's answers before sleeping
    /// for an interrupt (zero, the default: sleeps at once).
    pub fn set_busy_poll(&mut self, duration: Duration) {
        self.device.set_busy_poll(duration);
    }

    /// Processes everything the device returned, waiting up to `timeout`
    /// for the first interrupt.
    pub fn poll(&mut self, timeout: Duration) {
        if !timeout.is_zero() {
            self.device.wait_for_interrupt(timeout);
        }
        self.collect_events();
        let pairs = self.config.num_queue_pairs;
        for pair in 0..pairs {
            self.collect_rx(pair);
            self.collect_tx(pair);
        }
    }

    /// Like `poll`, for callers that only want to wait.
    pub fn wait(&mut self, timeout: Duration) {
        self.poll(timeout);
    }

    fn collect_events(&mut self) {
        let queue = wire::EVENTQ as usize;
        let mut reposted = false;
        while let Some((head, len)) = self.device.queue_mut(queue).pop_used() {
            let addr = self.event_buffers.remove(&head).expect("known event buffer");
            if len as usize >= Event::SIZE {
                let mut bytes = [0u8; Event::SIZE];
                self.device.memory().read(addr, &mut bytes).expect("read event");
                let event = Event::decode(&bytes).expect("full event");
                if event.event == wire::VIRTIO_TLS_EVENT_ACCEPT_READY && self.sockets.contains_key(&event.socket_id) {
                    *self.accept_ready.entry(event.socket_id).or_default() += 1;
                } else if let Some(socket) = self.sockets.get_mut(&event.socket_id) {
                    assert!(
                        [wire::VIRTIO_TLS_EVENT_CONNECT_DONE, wire::VIRTIO_TLS_EVENT_SOCKET_ERROR].contains(&event.event),
                        "unknown event {}",
                        event.event
                    );
                    socket.flow.on_event(&event);
                } else {
                    self.messages_for_unknown_sockets += 1;
                }
            }
            self.post_event_buffer(addr);
            reposted = true;
        }
        if reposted {
            self.device.queue_mut(queue).kick().expect("kick");
        }
    }

    fn collect_rx(&mut self, pair: u16) {
        let queue = wire::rx_queue(pair) as usize;
        let mut reposted = false;
        while let Some((head, len)) = self.device.queue_mut(queue).pop_used() {
            let addr = self.rx_buffers.remove(&(pair, head)).expect("known rx buffer");
            if len as usize >= DataHeader::SIZE {
                assert!(len <= RX_BUFFER_SIZE, "the device wrote {len} bytes into a {RX_BUFFER_SIZE}-byte buffer");
                let bytes = &mut self.rx_scratch[..len as usize];
                self.device.memory().read(addr, bytes).expect("read rx");
                let header = DataHeader::decode(bytes).expect("header");
                assert_eq!(header.len as usize, len as usize - DataHeader::SIZE, "used length matches the header");
                if let Some(socket) = self.sockets.get_mut(&header.socket_id) {
                    if socket.flow.on_packet(&header) == Received::Data {
                        socket.rx.extend(&bytes[DataHeader::SIZE..]);
                        assert!(socket.rx.len() <= DRIVER_BUF_ALLOC as usize, "the device exceeded the driver's credit");
                    }
                } else {
                    self.messages_for_unknown_sockets += 1;
                }
            }
            self.post_rx_buffer(pair, addr);
            reposted = true;
        }
        if reposted {
            self.device.queue_mut(queue).kick().expect("kick");
        }
    }

    fn collect_tx(&mut self, pair: u16) {
        let queue = wire::tx_queue(pair) as usize;
        while let Some((head, _)) = self.device.queue_mut(queue).pop_used() {
            if let Some(addr) = self.tx_in_flight.remove(&(pair, head)) {
                self.tx_free.push(addr);
            }
        }
    }
}
