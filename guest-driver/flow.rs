// SPDX-License-Identifier: GPL-2.0

//! One socket's flow state as a driver keeps it (spec 2.8, 2.9): the
//! credit it may send against, the credit it owes the device, and what the
//! event queue said. No kernel bindings and no allocation: the guest driver
//! (`device.rs`) and the test harness (`tests/harness/src/driver.rs`)
//! compile this same file, so the rules are written once and unit-tested
//! here. The includer provides `wire` (spec/src/wire.rs) next to it.

use super::wire;

/// A driver's flow state for one socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketFlow {
    /// CONNECT_DONE's status, once it came (0: connected).
    pub connect_status: Option<u32>,
    /// The socket's failure: SOCKET_ERROR's status, or one the driver set.
    pub error: Option<u32>,
    /// The peer ended its stream (a data packet with the EOF flag).
    pub eof: bool,
    /// A listening socket may have a connection to accept: set by
    /// ACCEPT_READY and after every successful ACCEPT (more may wait),
    /// cleared before asking (`take_accept_ready`).
    pub accept_ready: bool,
    /// The driver's receive buffer for this socket, sent in every header.
    buf_alloc: u32,
    /// Payload bytes handed to the device, ever (spec tx_cnt; CLOSE and
    /// SHUTDOWN carry it).
    tx_bytes: u64,
    /// The device's receive buffer and what it has consumed of our data.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes the application consumed, ever, and what the device last heard.
    fwd_cnt: u32,
    fwd_reported: u32,
}

/// What a received data packet means for its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Stream bytes to keep for the application (the packet's payload).
    Data,
    /// Credit information only (CREDIT_UPDATE, or an unknown op).
    Credit,
}

impl SocketFlow {
    /// A new socket: our receive buffer is `buf_alloc`, the device's
    /// `peer_buf_alloc` (its config socket_buf_size until it says more).
    pub const fn new(buf_alloc: u32, peer_buf_alloc: u32) -> SocketFlow {
        SocketFlow {
            connect_status: None,
            error: None,
            eof: false,
            accept_ready: false,
            buf_alloc,
            tx_bytes: 0,
            peer_buf_alloc,
            peer_fwd_cnt: 0,
            fwd_cnt: 0,
            fwd_reported: 0,
        }
    }

    /// Bytes the device can take now (spec 2.8.2): its buffer less what
    /// we sent and it has not consumed.
    pub fn credit(&self) -> u32 {
        let in_flight = (self.tx_bytes as u32).wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// How much of `want` bytes the next packet may carry: credit, and at
    /// most `max_payload`.
    pub fn sendable(&self, want: usize, max_payload: usize) -> usize {
        (self.credit() as usize).min(max_payload).min(want)
    }

    /// Payload bytes handed to the device so far.
    pub fn tx_bytes(&self) -> u64 {
        self.tx_bytes
    }

    /// The header of our next packet for `socket_id`, carrying our credit.
    pub fn header(&self, socket_id: u32, op: u16, len: usize) -> wire::DataHeader {
        wire::DataHeader {
            socket_id,
            op,
            flags: 0,
            len: len as u32,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
            reserved: 0,
        }
    }

    /// `header` went to the device: its payload counts against credit, and
    /// the device knows our fwd_cnt.
    pub fn header_sent(&mut self, header: &wire::DataHeader) {
        if header.op == wire::VIRTIO_TLS_DATA_OP_RW {
            self.tx_bytes += u64::from(header.len);
        }
        self.fwd_reported = header.fwd_cnt;
    }

    /// A data packet from the device for this socket: its credit view is
    /// the device's latest, and EOF ends the stream.
    pub fn on_packet(&mut self, header: &wire::DataHeader) -> Received {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
        if header.op != wire::VIRTIO_TLS_DATA_OP_RW {
            return Received::Credit;
        }
        if header.flags & wire::VIRTIO_TLS_DATA_F_EOF != 0 {
            self.eof = true;
        }
        Received::Data
    }

    /// An event for this socket (spec 2.9). Unknown events change nothing.
    pub fn on_event(&mut self, event: &wire::Event) {
        match event.event {
            wire::VIRTIO_TLS_EVENT_CONNECT_DONE => self.connect_status = Some(event.status),
            wire::VIRTIO_TLS_EVENT_SOCKET_ERROR => self.error = Some(event.status),
            wire::VIRTIO_TLS_EVENT_ACCEPT_READY => self.accept_ready = true,
            _ => {}
        }
    }

    /// Why the socket cannot carry data: its error, or a failed connect.
    pub fn failure(&self) -> Option<u32> {
        self.error.or(self.connect_status.filter(|&status| status != 0))
    }

    /// Takes ACCEPT_READY before asking for a connection, so that one
    /// arriving while the request is answered sets it again.
    pub fn take_accept_ready(&mut self) -> bool {
        core::mem::replace(&mut self.accept_ready, false)
    }

    /// A new connect attempt forgets the last one's outcome (as TCP does).
    pub fn start_connect(&mut self) {
        self.connect_status = None;
        self.error = None;
    }

    /// The socket failed (`errno`) unless it had already: a connect in
    /// progress ends with the same error.
    pub fn fail(&mut self, errno: u32) {
        self.error.get_or_insert(errno);
        self.connect_status.get_or_insert(errno);
    }

    /// The application consumed `n` received bytes. True when the device
    /// should hear of the freed room now (a CREDIT_UPDATE): once a quarter
    /// of our buffer has been read since it last heard.
    pub fn consumed(&mut self, n: usize) -> bool {
        self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        self.fwd_cnt.wrapping_sub(self.fwd_reported) >= self.buf_alloc / 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(op: u16, flags: u16, buf_alloc: u32, fwd_cnt: u32) -> wire::DataHeader {
        wire::DataHeader { socket_id: 7, op, flags, len: 0, buf_alloc, fwd_cnt, reserved: 0 }
    }

    #[test]
    fn credit_is_the_device_buffer_less_what_it_has_not_consumed() {
        let mut flow = SocketFlow::new(256 * 1024, 1000);
        assert_eq!(flow.credit(), 1000);
        let header = flow.header(7, wire::VIRTIO_TLS_DATA_OP_RW, 600);
        flow.header_sent(&header);
        assert_eq!(flow.credit(), 400);
        assert_eq!(flow.sendable(10_000, 4096), 400);
        assert_eq!(flow.sendable(100, 4096), 100);
        // The device consumed 500 and grew its buffer.
        assert_eq!(flow.on_packet(&packet(wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, 0, 2000, 500)), Received::Credit);
        assert_eq!(flow.credit(), 2000 - 100);
        assert_eq!(flow.tx_bytes(), 600);
    }

    #[test]
    fn credit_never_goes_negative_when_the_device_shrinks_its_buffer() {
        let mut flow = SocketFlow::new(4096, 1000);
        flow.header_sent(&flow.header(7, wire::VIRTIO_TLS_DATA_OP_RW, 900));
        flow.on_packet(&packet(wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, 0, 100, 0));
        assert_eq!(flow.credit(), 0);
        assert_eq!(flow.sendable(10, 4096), 0);
    }

    #[test]
    fn counters_wrap_as_the_spec_says() {
        let mut flow = SocketFlow::new(4096, 1 << 20);
        // Four GiB and a bit sent, all consumed but the last 10 bytes.
        flow.tx_bytes = (1u64 << 32) + 50;
        flow.on_packet(&packet(wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, 0, 1 << 20, 40));
        assert_eq!(flow.credit(), (1 << 20) - 10);
    }

    #[test]
    fn credit_packets_do_not_count_as_data() {
        let mut flow = SocketFlow::new(4096, 1000);
        flow.header_sent(&flow.header(7, wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, 0));
        assert_eq!(flow.tx_bytes(), 0);
        assert_eq!(flow.credit(), 1000);
    }

    #[test]
    fn a_credit_update_is_due_after_a_quarter_of_the_buffer_is_read() {
        let mut flow = SocketFlow::new(1000, 1000);
        assert!(!flow.consumed(249));
        assert!(flow.consumed(1));
        // Reported with the next header: not due again until another quarter.
        let header = flow.header(7, wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, 0);
        assert_eq!(header.fwd_cnt, 250);
        assert_eq!(header.buf_alloc, 1000);
        flow.header_sent(&header);
        assert!(!flow.consumed(200));
        assert!(flow.consumed(50));
    }

    #[test]
    fn data_with_eof_ends_the_stream_and_events_set_their_state() {
        let mut flow = SocketFlow::new(4096, 4096);
        assert_eq!(flow.on_packet(&packet(wire::VIRTIO_TLS_DATA_OP_RW, 0, 4096, 0)), Received::Data);
        assert!(!flow.eof);
        assert_eq!(flow.on_packet(&packet(wire::VIRTIO_TLS_DATA_OP_RW, wire::VIRTIO_TLS_DATA_F_EOF, 4096, 0)), Received::Data);
        assert!(flow.eof);

        let event = |event, status| wire::Event { event, reserved0: 0, socket_id: 7, request_id: 0, status, reserved1: 0 };
        flow.on_event(&event(wire::VIRTIO_TLS_EVENT_CONNECT_DONE, 0));
        assert_eq!(flow.connect_status, Some(0));
        flow.on_event(&event(wire::VIRTIO_TLS_EVENT_ACCEPT_READY, 0));
        assert!(flow.take_accept_ready());
        assert!(!flow.take_accept_ready());
        flow.on_event(&event(wire::VIRTIO_TLS_EVENT_SOCKET_ERROR, 71));
        assert_eq!(flow.error, Some(71));
        flow.on_event(&event(999, 5));
        assert_eq!(flow.error, Some(71));
    }

    #[test]
    fn a_failure_ends_a_pending_connect_but_keeps_the_first_error() {
        let mut flow = SocketFlow::new(4096, 4096);
        assert_eq!(flow.failure(), None);
        flow.fail(104);
        assert_eq!((flow.error, flow.connect_status), (Some(104), Some(104)));
        assert_eq!(flow.failure(), Some(104));
        flow.fail(110);
        assert_eq!(flow.error, Some(104));
        flow.start_connect();
        assert_eq!((flow.error, flow.connect_status), (None, None));
        flow.on_event(&wire::Event { event: wire::VIRTIO_TLS_EVENT_CONNECT_DONE, reserved0: 0, socket_id: 7, request_id: 0, status: 111, reserved1: 0 });
        assert_eq!((flow.error, flow.failure()), (None, Some(111)));
        flow.start_connect();
        flow.connect_status = Some(0);
        flow.fail(104);
        assert_eq!(flow.connect_status, Some(0));
    }
}
