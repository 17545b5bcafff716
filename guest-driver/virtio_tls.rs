// SPDX-License-Identifier: GPL-2.0

//! virtio-tls guest driver.
//!
//! Binds the virtio-tls device, sets up its virtqueues from the spec's wire
//! definitions (`spec/src/wire.rs`, the same file the host backend
//! compiles), reads its configuration and sets DRIVER_OK, and registers
//! IPPROTO_TLS (205) SOCK_STREAM for AF_INET and AF_INET6: `socket()` creates a device
//! socket (CREATE), `setsockopt`/`getsockopt` at level IPPROTO_TLS map to
//! SETOPT/GETOPT, a blocking `connect()` to an AF_INET or AF_HOSTNAME
//! address waits for the device's CONNECT_DONE event, and `close()`
//! releases the socket (CLOSE). `send`/`recv` (and read/write) move data
//! on the first data queue pair under the spec's credit flow control.
//! Waiting is done by polling the used rings from the caller (see
//! guest-driver/README.md for what comes next).
//!
//! Rust-for-Linux 6.12 has no virtio abstractions: this module calls the
//! virtio core through the generated bindings (added to the guest kernel by
//! qemu/kernel-patches/). What `virtio_config.h` does in static inline
//! functions (`virtio_find_vqs`, `virtio_device_ready`, `virtio_cread`) is
//! done here through the `vdev->config` operations table they call, so no C
//! is needed.

use core::ffi::{c_int, c_void};
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::bindings;
use kernel::c_str;
use kernel::str::CStr;
use kernel::uaccess::UserSlice;
use kernel::prelude::*;

#[allow(dead_code, unreachable_pub)]
#[path = "../spec/src/wire.rs"]
mod wire;

module! {
    type: VirtioTls,
    name: "virtio_tls",
    author: "vhost-tls",
    description: "virtio-tls: IPPROTO_TLS sockets through the hypervisor",
    license: "GPL",
}

/// `VIRTIO_DEV_ANY_ID`.
const ANY_VENDOR: u32 = 0xffff_ffff;

/// Statics the virtio core reads through raw pointers.
struct Shared<T>(core::cell::UnsafeCell<T>);
// SAFETY: the wrapped C structures are written once before registration
// and afterwards only read by the virtio core, under its own locking.
unsafe impl<T> Sync for Shared<T> {}

/// The virtio id to bind (spec 2.1, DRV-1.1): the spec's default unless
/// the module is built with VIRTIO_TLS_DEVICE_ID=N. A build-time choice,
/// because the 6.12 `module!` macro has no module parameters yet.
const DEVICE_ID: u32 = match option_env!("VIRTIO_TLS_DEVICE_ID") {
    Some(digits) => parse_id(digits),
    None => wire::VIRTIO_ID_TLS_DEFAULT,
};

/// Decimal digits to a number, at compile time; anything else stops the
/// build.
const fn parse_id(digits: &str) -> u32 {
    let bytes = digits.as_bytes();
    assert!(!bytes.is_empty(), "VIRTIO_TLS_DEVICE_ID is empty");
    let mut value = 0u32;
    let mut at = 0;
    while at < bytes.len() {
        assert!(bytes[at].is_ascii_digit(), "VIRTIO_TLS_DEVICE_ID must be a decimal number");
        value = value * 10 + (bytes[at] - b'0') as u32;
        at += 1;
    }
    value
}

/// The device features the driver uses (spec 2.3): accepted when offered.
static FEATURES: [core::ffi::c_uint; 4] =
    [wire::VIRTIO_TLS_F_IPV6, wire::VIRTIO_TLS_F_HOSTNAME, wire::VIRTIO_TLS_F_SERVER, wire::VIRTIO_TLS_F_SOCKOPT];

/// The id table: the virtio-tls id, any vendor, then the terminator.
static ID_TABLE: [bindings::virtio_device_id; 2] = [
    bindings::virtio_device_id { device: DEVICE_ID, vendor: ANY_VENDOR },
    bindings::virtio_device_id { device: 0, vendor: 0 },
];

static DRIVER: Shared<bindings::virtio_driver> =
    // SAFETY: virtio_driver is a C struct for which all-zero is valid
    // (null pointers, no callbacks); the fields that matter are set in init.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// A socket as the driver names it to the device: the id the device
/// assigned, in the device generation that assigned it. A restarted
/// backend knows nothing of earlier ids and may hand out the same numbers
/// again, so an id alone does not name a socket across restarts.
#[derive(Clone, Copy, PartialEq, Eq)]
struct SocketKey {
    id: u32,
    generation: u32,
}

impl SocketKey {
    /// For requests about no socket (CREATE).
    const NONE: SocketKey = SocketKey { id: 0, generation: 0 };
}

/// Whether the device answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Answering,
    /// A control request went unanswered (its backend is gone): every
    /// socket has failed, and the request stays on the control queue.
    /// Later requests fail at once unless it has come back by then, which
    /// says a backend is there again (QEMU reconnected it and restored the
    /// rings): then the device is reset (`restart`).
    Unanswered,
    /// A reset to start a new generation failed half way: the virtqueues
    /// are gone and nothing touches the device until it is removed.
    Broken,
}

/// The bound device, as the socket layer reaches it.
struct Device {
    vdev: *mut bindings::virtio_device,
    control: *mut bindings::virtqueue,
    event: *mut bindings::virtqueue,
    /// EVENT_BUFFERS event buffers, back to back (kmalloc'd).
    events: KVec<u8>,
    /// Sockets the driver has, with what the device said about them.
    sockets: KVec<SocketEntry>,
    rx: *mut bindings::virtqueue,
    tx: *mut bindings::virtqueue,
    /// RX_BUFFERS receive buffers back to back, and the transmit buffer.
    rx_buffers: KVec<u8>,
    tx_buffer: KVec<u8>,
    /// Transmit buffers the device did not take in time (send_packet):
    /// still posted, so the device may read them yet. Each is freed when
    /// the device returns it, or after a reset.
    tx_stranded: KVec<Option<KVec<u8>>>,
    /// The device's receive buffer per socket (config socket_buf_size).
    device_buf_alloc: u32,
    liveness: Liveness,
    /// This device generation (spec 2.12), from `next_generation`: sockets
    /// of an earlier generation, of this device or of one bound before it,
    /// stay failed and are never named to the device again.
    generation: u32,
    /// kmalloc'd request and response buffers (DMA-able, unlike the stack).
    request: KVec<u8>,
    response: KVec<u8>,
    next_request_id: u64,
}

/// What the event queue told about one socket.
struct SocketEntry {
    /// 0 for a free slot.
    id: u32,
    /// The device generation that assigned `id`.
    generation: u32,
    /// CONNECT_DONE's status, once it came.
    connect_status: Option<u32>,
    /// SOCKET_ERROR's status.
    error: Option<u32>,
    /// Received bytes not yet read, from `rx_start` on.
    rx: KVec<u8>,
    rx_start: usize,
    /// The peer ended its stream (EOF flag).
    eof: bool,
    /// A listening socket may have a connection to accept: set by
    /// ACCEPT_READY and after every successful ACCEPT (more may wait),
    /// cleared when ACCEPT finds none.
    accept_ready: bool,
    /// Payload bytes sent, ever (the spec's tx_cnt; CLOSE's tx_bytes).
    tx_bytes: u64,
    /// The device's credit view (spec 2.8.2).
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes the application read, ever, and what the device last heard.
    fwd_cnt: u32,
    fwd_reported: u32,
}

impl SocketEntry {
    fn new(key: SocketKey, peer_buf_alloc: u32) -> SocketEntry {
        SocketEntry {
            id: key.id,
            generation: key.generation,
            connect_status: None,
            error: None,
            rx: KVec::new(),
            rx_start: 0,
            eof: false,
            accept_ready: false,
            tx_bytes: 0,
            peer_buf_alloc,
            peer_fwd_cnt: 0,
            fwd_cnt: 0,
            fwd_reported: 0,
        }
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc.saturating_sub((self.tx_bytes as u32).wrapping_sub(self.peer_fwd_cnt))
    }

    fn unread(&self) -> usize {
        self.rx.len() - self.rx_start
    }

    /// Drops the bytes already read once they are worth a copy, so the
    /// buffer stays near the credit bound (DRIVER_BUF_ALLOC) however the
    /// application interleaves reads with arrivals.
    fn compact_rx(&mut self) {
        if self.rx_start == self.rx.len() {
            self.rx = KVec::new();
            self.rx_start = 0;
        } else if self.rx_start >= 32 * 1024 {
            let mut unread = KVec::new();
            if unread.extend_from_slice(&self.rx[self.rx_start..], GFP_KERNEL).is_ok() {
                self.rx = unread;
                self.rx_start = 0;
            }
        }
    }
}

const RX_BUFFERS: usize = 16;
const RX_PAYLOAD: usize = 16384;
const RX_BUFFER: usize = wire::DataHeader::SIZE + RX_PAYLOAD;
const TX_PAYLOAD: usize = 4096;
/// The driver's receive buffer per socket (its buf_alloc).
const DRIVER_BUF_ALLOC: u32 = 256 * 1024;

const EVENT_BUFFERS: usize = 16;

/// The last device generation handed out. Generations never repeat within
/// a boot: not across device resets (restart), and not across probes (an
/// unbind and bind through sysfs, a hot-replugged device), so a socket
/// opened on an earlier device never matches a socket of a later one that
/// got the same id.
static LAST_GENERATION: AtomicU32 = AtomicU32::new(0);

/// A generation no socket has had yet in this boot (never 0, which
/// SocketKey::NONE uses).
fn next_generation() -> u32 {
    loop {
        let generation = LAST_GENERATION.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if generation != 0 {
            return generation;
        }
    }
}

impl Device {
    /// The device stopped answering: fail every socket (ECONNRESET) so that
    /// nothing waits for it forever.
    fn declare_dead(&mut self) {
        if self.liveness == Liveness::Answering {
            pr_err!("the device stopped answering: failing all sockets\n");
            self.liveness = Liveness::Unanswered;
        }
        self.fail_all_sockets();
    }

    fn fail_all_sockets(&mut self) {
        for entry in self.sockets.iter_mut().filter(|entry| entry.id != 0) {
            entry.error.get_or_insert(bindings::ECONNRESET);
            entry.connect_status.get_or_insert(bindings::ECONNRESET);
        }
        wake_waiters();
    }

    /// The driver's entry for one of its sockets.
    fn entry(&mut self, key: SocketKey) -> Option<&mut SocketEntry> {
        self.sockets.iter_mut().find(|entry| entry.id == key.id && entry.id != 0 && entry.generation == key.generation)
    }

    /// The entry of an open socket for a call on it: ECONNRESET for a
    /// socket of an earlier generation (DRV-12.3), EBADF for one the driver
    /// does not know.
    fn open_entry(&mut self, key: SocketKey) -> core::result::Result<&mut SocketEntry, c_int> {
        if key.generation != self.generation {
            return Err(-(bindings::ECONNRESET as c_int));
        }
        self.entry(key).ok_or(-(bindings::EBADF as c_int))
    }

    /// The entry of the socket the device means by `id` now (events and
    /// received data name no generation: they are the current one's).
    fn current_entry(&mut self, id: u32) -> Option<&mut SocketEntry> {
        let key = SocketKey { id, generation: self.generation };
        self.entry(key)
    }

    /// Keeps an entry for a socket the device just made (CREATE, ACCEPT).
    /// A socket of an earlier generation is failed from the start.
    fn adopt(&mut self, key: SocketKey) -> Result<&mut SocketEntry> {
        let mut entry = SocketEntry::new(key, self.device_buf_alloc);
        if key.generation != self.generation {
            entry.error = Some(bindings::ECONNRESET);
            entry.connect_status = Some(bindings::ECONNRESET);
        }
        let slot = match self.sockets.iter().position(|entry| entry.id == 0) {
            Some(free) => free,
            None => {
                self.sockets.push(SocketEntry::new(SocketKey::NONE, 0), GFP_KERNEL)?;
                self.sockets.len() - 1
            }
        };
        self.sockets[slot] = entry;
        Ok(&mut self.sockets[slot])
    }

    /// Makes event buffer `index` available to the device again.
    fn post_event_buffer(&mut self, index: usize) -> c_int {
        post_inbuf(self.event, &mut self.events, index, wire::Event::SIZE)
    }

    /// Makes receive buffer `index` available to the device again.
    fn post_rx_buffer(&mut self, index: usize) -> c_int {
        post_inbuf(self.rx, &mut self.rx_buffers, index, RX_BUFFER)
    }

    /// Takes received data and credit updates (spec 2.8).
    fn collect_rx(&mut self) {
        if self.liveness == Liveness::Broken {
            return;
        }
        let mut reposted = false;
        loop {
            let mut len: core::ffi::c_uint = 0;
            // SAFETY: the receive queue of the bound device.
            let token = unsafe { bindings::virtqueue_get_buf(self.rx, &mut len) };
            if token.is_null() {
                break;
            }
            let offset = token as usize - self.rx_buffers.as_ptr() as usize;
            let used = (len as usize).min(RX_BUFFER);
            if let Some(header) = wire::DataHeader::decode(&self.rx_buffers[offset..offset + used]) {
                let payload_len = (header.len as usize).min(used - wire::DataHeader::SIZE);
                let start = offset + wire::DataHeader::SIZE;
                // Split borrows: the entry lives in `sockets`, the bytes in `rx_buffers`.
                let (sockets, buffers, generation) = (&mut self.sockets, &self.rx_buffers, self.generation);
                if let Some(entry) =
                    sockets.iter_mut().find(|e| e.id == header.socket_id && e.id != 0 && e.generation == generation)
                {
                    entry.peer_buf_alloc = header.buf_alloc;
                    entry.peer_fwd_cnt = header.fwd_cnt;
                    if header.op == wire::VIRTIO_TLS_DATA_OP_RW {
                        if entry.rx.extend_from_slice(&buffers[start..start + payload_len], GFP_KERNEL).is_err() {
                            entry.error = Some(bindings::ENOMEM);
                        }
                        if header.flags & wire::VIRTIO_TLS_DATA_F_EOF != 0 {
                            entry.eof = true;
                        }
                    }
                }
            }
            self.post_rx_buffer(offset / RX_BUFFER);
            reposted = true;
        }
        if reposted {
            // SAFETY: as above.
            unsafe { bindings::virtqueue_kick(self.rx) };
            // Whoever collected, the data may be another socket's: its
            // pollers were woken by the interrupt, may have looked too
            // early, and must look again.
            wake_waiters();
        }
    }

    /// Sends one data packet on the transmit queue and waits until the
    /// device has taken it; only then does the payload count in the
    /// socket's tx_bytes (and the credit it reported in fwd_reported).
    ///
    /// A packet the device does not take in time stays the device's: its
    /// buffer is stranded (never written again, freed when the device
    /// returns it or at a reset) and the next packet gets a fresh one. Its
    /// socket fails with ETIMEDOUT: whether the device still sends those
    /// bytes is unknown, so the stream cannot go on.
    fn send_packet(&mut self, key: SocketKey, op: u16, payload: &[u8]) -> Result {
        if self.liveness != Liveness::Answering || key.generation != self.generation {
            return Err(connection_reset());
        }
        let total = wire::DataHeader::SIZE + payload.len();
        if payload.len() > TX_PAYLOAD {
            return Err(EINVAL);
        }
        if self.tx_buffer.len() < total {
            // The last buffer was stranded and no fresh one could be had then.
            self.tx_buffer = dma_buffer(wire::DataHeader::SIZE + TX_PAYLOAD)?;
        }
        let Some(entry) = self.entry(key) else { return Err(EBADF) };
        let fwd_cnt = entry.fwd_cnt;
        let header = wire::DataHeader {
            socket_id: key.id,
            op,
            flags: 0,
            len: payload.len() as u32,
            buf_alloc: DRIVER_BUF_ALLOC,
            fwd_cnt,
            reserved: 0,
        };
        self.tx_buffer[..wire::DataHeader::SIZE].copy_from_slice(&header.encode());
        self.tx_buffer[wire::DataHeader::SIZE..total].copy_from_slice(payload);
        let buffer = self.tx_buffer.as_mut_ptr().cast::<c_void>();
        // SAFETY: scatterlist is a plain C struct set by sg_init_one.
        let mut sg: bindings::scatterlist = unsafe { core::mem::zeroed() };
        // SAFETY: the transmit buffer is kmalloc'd, at least `total` bytes
        // long, and not written again until the device returns it: below,
        // or, after a timeout, as a stranded buffer.
        unsafe {
            bindings::sg_init_one(&mut sg, buffer, total as u32);
            let err = bindings::virtqueue_add_outbuf(self.tx, &mut sg, 1, buffer, bindings::GFP_KERNEL);
            if err != 0 {
                return Err(Error::from_errno(err));
            }
            bindings::virtqueue_kick(self.tx);
        }
        if !self.wait_for_transmit(buffer) {
            self.strand_tx_buffer();
            if let Some(entry) = self.entry(key) {
                entry.error.get_or_insert(bindings::ETIMEDOUT);
            }
            wake_waiters();
            return Err(Error::from_errno(-(bindings::ETIMEDOUT as c_int)));
        }
        if let Some(entry) = self.entry(key) {
            entry.tx_bytes += payload.len() as u64;
            entry.fwd_reported = fwd_cnt;
        }
        Ok(())
    }

    /// Waits until the device returns the transmit buffer `token`; false
    /// if it does not in time. Stranded buffers it returns meanwhile are
    /// freed.
    fn wait_for_transmit(&mut self, token: *mut c_void) -> bool {
        // The device takes a packet within microseconds: spin for it, as
        // for control answers, before sleeping (a timer sleep costs far
        // more than that in a TCG guest).
        // SAFETY: reading the monotonic clock has no preconditions.
        let spin_until = unsafe { bindings::ktime_get_mono_fast_ns() } + CONTROL_SPIN_NS;
        let mut waited = 0;
        loop {
            let mut len: core::ffi::c_uint = 0;
            // SAFETY: the transmit queue of the bound device.
            let used = unsafe { bindings::virtqueue_get_buf(self.tx, &mut len) };
            if used == token {
                return true;
            }
            if !used.is_null() {
                self.release_stranded(used);
                continue;
            }
            // SAFETY: as above.
            if unsafe { bindings::ktime_get_mono_fast_ns() } < spin_until {
                core::hint::spin_loop();
                continue;
            }
            if waited >= 100_000 {
                return false;
            }
            // SAFETY: process context; CONTROL_LOCK is a mutex, so sleeping
            // under it is allowed.
            unsafe { bindings::usleep_range_state(20, 200, bindings::TASK_UNINTERRUPTIBLE) };
            waited += 1;
        }
    }

    /// Leaves the posted transmit buffer to the device (it may still read
    /// it) and takes a fresh one for the next packet.
    fn strand_tx_buffer(&mut self) {
        let posted = core::mem::replace(&mut self.tx_buffer, KVec::new());
        let slot = match self.tx_stranded.iter().position(Option::is_none) {
            Some(free) => Some(free),
            // Room first, so that pushing cannot fail and drop the buffer.
            None => match self.tx_stranded.reserve(1, GFP_KERNEL) {
                Ok(()) => self.tx_stranded.push(None, GFP_KERNEL).ok().map(|()| self.tx_stranded.len() - 1),
                Err(_) => None,
            },
        };
        match slot {
            Some(slot) => self.tx_stranded[slot] = Some(posted),
            // Without room to remember it, leak it rather than free memory
            // the device may still read.
            None => core::mem::forget(posted),
        }
        pr_warn!("the device did not take a transmit packet in time: its socket fails (ETIMEDOUT)\n");
        // A fresh buffer now if there is memory; else the next send_packet
        // tries again.
        if let Ok(fresh) = dma_buffer(wire::DataHeader::SIZE + TX_PAYLOAD) {
            self.tx_buffer = fresh;
        }
    }

    /// Frees the stranded transmit buffer the device just returned.
    fn release_stranded(&mut self, token: *mut c_void) {
        for slot in self.tx_stranded.iter_mut() {
            if slot.as_ref().is_some_and(|buffer| buffer.as_ptr() as *mut c_void == token) {
                *slot = None;
                return;
            }
        }
    }

    /// Takes the events the device returned and recycles their buffers.
    /// The event queue has no interrupt callback yet: waiters poll this.
    fn collect_events(&mut self) {
        if self.liveness == Liveness::Broken {
            return;
        }
        let mut reposted = false;
        loop {
            let mut len: core::ffi::c_uint = 0;
            // SAFETY: the event queue of the bound device.
            let token = unsafe { bindings::virtqueue_get_buf(self.event, &mut len) };
            if token.is_null() {
                break;
            }
            let offset = token as usize - self.events.as_ptr() as usize;
            let index = offset / wire::Event::SIZE;
            let event = wire::Event::decode(&self.events[offset..offset + wire::Event::SIZE]);
            if let (Some(event), true) = (event, len as usize >= wire::Event::SIZE) {
                if let Some(entry) = self.current_entry(event.socket_id) {
                    match event.event {
                        wire::VIRTIO_TLS_EVENT_CONNECT_DONE => entry.connect_status = Some(event.status),
                        wire::VIRTIO_TLS_EVENT_SOCKET_ERROR => entry.error = Some(event.status),
                        wire::VIRTIO_TLS_EVENT_ACCEPT_READY => entry.accept_ready = true,
                        _ => {}
                    }
                }
            }
            self.post_event_buffer(index);
            reposted = true;
        }
        if reposted {
            // SAFETY: as above.
            unsafe { bindings::virtqueue_kick(self.event) };
            wake_waiters(); // as in collect_rx
        }
    }
}

/// Posts slot `index` of `buffers` (slots of `size` bytes) as a
/// device-writable buffer on `vq`; the slot's address is its token.
fn post_inbuf(vq: *mut bindings::virtqueue, buffers: &mut KVec<u8>, index: usize, size: usize) -> c_int {
    if (index + 1) * size > buffers.len() {
        return -(bindings::EINVAL as c_int);
    }
    // SAFETY: scatterlist is a plain C struct set by sg_init_one.
    let mut sg: bindings::scatterlist = unsafe { core::mem::zeroed() };
    // SAFETY: the slot is in bounds (checked above) of a kmalloc'd buffer
    // that lives in DEVICE until remove() resets the device.
    unsafe {
        let slot = buffers.as_mut_ptr().add(index * size);
        bindings::sg_init_one(&mut sg, slot.cast::<c_void>(), size as u32);
        bindings::virtqueue_add_inbuf(vq, &mut sg, 1, slot.cast::<c_void>(), bindings::GFP_KERNEL)
    }
}

static DEVICE: Shared<Option<Device>> = Shared(core::cell::UnsafeCell::new(None));
/// Serialises control requests and guards DEVICE.
static CONTROL_LOCK: Shared<bindings::mutex> =
    // SAFETY: initialised by __mutex_init in init before any use.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));
static CONTROL_LOCK_KEY: Shared<bindings::lock_class_key> =
    // SAFETY: lockdep keys are plain static storage.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// Holds CONTROL_LOCK for its lifetime.
struct ControlGuard;

impl ControlGuard {
    fn lock() -> ControlGuard {
        // SAFETY: initialised in init; callers are in process context.
        unsafe { bindings::mutex_lock(CONTROL_LOCK.0.get()) };
        ControlGuard
    }

    fn device(&mut self) -> Option<&mut Device> {
        // SAFETY: DEVICE is only touched with CONTROL_LOCK held, which this
        // guard proves.
        unsafe { (*DEVICE.0.get()).as_mut() }
    }
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        // SAFETY: locked in `lock`.
        unsafe { bindings::mutex_unlock(CONTROL_LOCK.0.get()) };
    }
}

/// Sends one control request and waits for its response (spec 2.6.1).
/// The control queue has no interrupt callback: requests are short and
/// rare, so the caller sleeps and polls the used ring.
fn control_request(op: u16, socket: SocketKey, payload: &[u8]) -> Result<wire::CtrlResponse> {
    control_request_value(op, socket, payload).map(|(response, _)| response)
}

/// As `control_request`, also returning the value after the response.
fn control_request_value(op: u16, socket: SocketKey, payload: &[u8]) -> Result<(wire::CtrlResponse, KVec<u8>)> {
    let mut guard = ControlGuard::lock();
    // Requests are about an open socket: one whose device went (unbound,
    // unplugged) has failed.
    let device = guard.device().ok_or_else(connection_reset)?;
    device.exchange(op, socket, payload)
}

fn connection_reset() -> Error {
    Error::from_errno(-(bindings::ECONNRESET as c_int))
}

impl Device {
    /// One control request and its response, under CONTROL_LOCK. A socket
    /// of an earlier generation, or a device that does not answer, fails
    /// at once with ECONNRESET; so does a socket the device no longer
    /// knows (then the device is restarted, DRV-12.4).
    fn exchange(&mut self, op: u16, socket: SocketKey, payload: &[u8]) -> Result<(wire::CtrlResponse, KVec<u8>)> {
        if self.liveness != Liveness::Answering && !self.answers_again() {
            return Err(connection_reset());
        }
        if socket != SocketKey::NONE && socket.generation != self.generation {
            return Err(connection_reset());
        }
        self.next_request_id += 1;
        let header = wire::CtrlHeader { op, flags: 0, socket_id: socket.id, request_id: self.next_request_id };
        let request_len = wire::CtrlHeader::SIZE + payload.len();
        if request_len > self.request.len() {
            return Err(EINVAL);
        }
        self.request[..wire::CtrlHeader::SIZE].copy_from_slice(&header.encode());
        self.request[wire::CtrlHeader::SIZE..request_len].copy_from_slice(payload);
        // SAFETY: scatterlists are plain C structs initialised by sg_init_one.
        let mut out: bindings::scatterlist = unsafe { core::mem::zeroed() };
        // SAFETY: as above.
        let mut inp: bindings::scatterlist = unsafe { core::mem::zeroed() };
        let mut used: core::ffi::c_uint = 0;
        // SAFETY: the buffers are kmalloc'd, live in DEVICE (kept while the
        // lock is held) and outlive the request: it completes before we
        // return, or stays on the queue unanswered, and then no other
        // request is made until it has come back or the device was reset
        // (DRV-12.1); the queue belongs to the bound device.
        unsafe {
            bindings::sg_init_one(&mut out, self.request.as_ptr().cast::<c_void>(), request_len as u32);
            bindings::sg_init_one(&mut inp, self.response.as_mut_ptr().cast::<c_void>(), self.response.len() as u32);
            let mut sgs = [&mut out as *mut bindings::scatterlist, &mut inp as *mut bindings::scatterlist];
            let token = self.request.as_mut_ptr().cast::<c_void>();
            let err = bindings::virtqueue_add_sgs(self.control, sgs.as_mut_ptr(), 1, 1, token, bindings::GFP_KERNEL);
            if err != 0 {
                return Err(Error::from_errno(err));
            }
            bindings::virtqueue_kick(self.control);
            // Most answers come within tens of microseconds: spin for them
            // first, then look often, then back off to millisecond sleeps.
            // A device silent for seconds has lost its backend.
            let spin_until = bindings::ktime_get_mono_fast_ns() + CONTROL_SPIN_NS;
            let mut quick_polls = 0;
            let mut waited = 0;
            while bindings::virtqueue_get_buf(self.control, &mut used).is_null() {
                if bindings::ktime_get_mono_fast_ns() < spin_until {
                    core::hint::spin_loop();
                    continue;
                }
                if quick_polls < CONTROL_QUICK_POLLS {
                    quick_polls += 1;
                    bindings::usleep_range_state(10, 20, bindings::TASK_UNINTERRUPTIBLE);
                    continue;
                }
                if waited >= CONTROL_PATIENCE {
                    self.declare_dead();
                    return Err(connection_reset());
                }
                bindings::usleep_range_state(1000, 2000, bindings::TASK_UNINTERRUPTIBLE);
                waited += 1;
            }
        }
        let used = (used as usize).min(self.response.len());
        let response = wire::CtrlResponse::decode(&self.response[..used]).ok_or(EIO)?;
        if response.status == bindings::EBADF && socket != SocketKey::NONE && self.entry(socket).is_some() {
            // DEV-5.1: EBADF is for ids never assigned or closed, and this
            // socket is open: the device forgot it, so it is a new backend.
            pr_err!("the device forgot socket {}: its backend was restarted\n", socket.id);
            self.restart();
            return Err(connection_reset());
        }
        let value_end = (wire::CtrlResponse::SIZE + response.value_len as usize).min(used);
        let mut value = KVec::with_capacity(value_end - wire::CtrlResponse::SIZE, GFP_KERNEL)?;
        value.extend_from_slice(&self.response[wire::CtrlResponse::SIZE..value_end], GFP_KERNEL)?;
        Ok((response, value))
    }

    /// Whether a device that stopped answering does again: the request it
    /// left unanswered has come back (a new backend took the restored
    /// rings, or the old one was only slow). Then the device is reset for
    /// a new generation; the late answer itself is dropped unread, since
    /// its caller has long had ECONNRESET (DRV-12.2).
    fn answers_again(&mut self) -> bool {
        if self.liveness != Liveness::Unanswered {
            return false;
        }
        let mut used: core::ffi::c_uint = 0;
        // SAFETY: the control queue of the bound device (not Broken).
        if unsafe { bindings::virtqueue_get_buf(self.control, &mut used) }.is_null() {
            return false;
        }
        pr_info!("the device answers again\n");
        self.restart();
        self.liveness == Liveness::Answering
    }

    /// Fails every socket, resets the device and sets it up again, for a
    /// new generation of sockets (spec 2.12): nothing the old backend left
    /// half done (unanswered requests, untaken packets) reaches the new
    /// one, and no old socket is confused with a new one of the same id.
    fn restart(&mut self) {
        self.fail_all_sockets();
        let vdev = self.vdev;
        // SAFETY: the device is bound (DEVICE holds it until remove(),
        // which takes CONTROL_LOCK, held by our caller); virtio_reset_device
        // stops the device before its queues are deleted, as in remove().
        unsafe {
            bindings::virtio_reset_device(vdev);
            if let Some(del_vqs) = (*(*vdev).config).del_vqs {
                del_vqs(vdev);
            }
        }
        self.liveness = Liveness::Broken;
        // The reset took every buffer back from the device.
        for stranded in self.tx_stranded.iter_mut() {
            *stranded = None;
        }
        // What virtio_device_restore() does after a reset: the features
        // negotiated at probe, then queues, buffers and DRIVER_OK.
        // SAFETY: as above; the virtio core's status and config operations.
        let features_ok = unsafe {
            bindings::virtio_add_status(vdev, bindings::VIRTIO_CONFIG_S_ACKNOWLEDGE);
            bindings::virtio_add_status(vdev, bindings::VIRTIO_CONFIG_S_DRIVER);
            let ops = &*(*vdev).config;
            let finalized = match ops.finalize_features {
                Some(finalize) => finalize(vdev) == 0,
                None => false,
            };
            bindings::virtio_add_status(vdev, bindings::VIRTIO_CONFIG_S_FEATURES_OK);
            let status = ops.get_status.map_or(0, |get_status| get_status(vdev));
            finalized && status & bindings::VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0
        };
        if !features_ok {
            pr_err!("the device refused its features after a reset: it stays unusable\n");
            return;
        }
        let config = read_config(vdev);
        let queues = match config {
            Some(_) => setup_queues(vdev),
            None => Err(-(bindings::EINVAL as c_int)),
        };
        let (Some(config), Ok(vqs)) = (config, queues) else {
            pr_err!("cannot set the device up again after a reset: it stays unusable\n");
            return;
        };
        self.control = vqs[0];
        self.event = vqs[1];
        self.rx = vqs[2];
        self.tx = vqs[3];
        self.device_buf_alloc = config.socket_buf_size;
        self.generation = next_generation();
        self.liveness = Liveness::Answering;
        set_driver_ok(vdev);
        self.post_all_buffers();
        pr_info!("device reset: socket generation {}, earlier sockets stay failed\n", self.generation);
    }

    /// Makes every event and receive buffer available to the device.
    fn post_all_buffers(&mut self) {
        for index in 0..EVENT_BUFFERS {
            self.post_event_buffer(index);
        }
        for index in 0..RX_BUFFERS {
            self.post_rx_buffer(index);
        }
        // SAFETY: the queues of the device just set up.
        unsafe {
            bindings::virtqueue_kick(self.event);
            bindings::virtqueue_kick(self.rx);
        }
    }
}

/// The device's configuration space (spec 2.4).
fn read_config(vdev: *mut bindings::virtio_device) -> Option<wire::VirtioTlsConfig> {
    // SAFETY: the virtio core passes (probe) or we hold (restart) a live
    // device whose `config` ops table its transport (virtio-pci) set.
    let ops = unsafe { &*(*vdev).config };
    let mut config_bytes = [0u8; wire::VirtioTlsConfig::SIZE];
    let get = ops.get?;
    // virtio-pci reads config in 1, 2, 4 or 8-byte units only (anything
    // else is a BUG()), as virtio_cread_bytes() does: 4 at a time.
    for (index, word) in config_bytes.chunks_mut(4).enumerate() {
        // SAFETY: `get` copies 4 config bytes into a 4-byte chunk of ours.
        unsafe { get(vdev, (index * 4) as u32, word.as_mut_ptr().cast::<c_void>(), 4) };
    }
    let config = wire::VirtioTlsConfig::decode(&config_bytes)?;
    if config.num_queue_pairs == 0 {
        pr_err!("the device offers no data queues\n");
        return None;
    }
    Some(config)
}

/// Sets up the control, event and first data queue pair.
fn setup_queues(vdev: *mut bindings::virtio_device) -> core::result::Result<[*mut bindings::virtqueue; 4], c_int> {
    // SAFETY: as in read_config.
    let ops = unsafe { &*(*vdev).config };
    let mut vqs: [*mut bindings::virtqueue; 4] = [ptr::null_mut(); 4];
    let mut infos: [bindings::virtqueue_info; 4] = QUEUE_NAMES.map(|name| bindings::virtqueue_info {
        name: name.as_char_ptr(),
        callback: None,
        ctx: false,
    });
    // Events and received data wake pollers; control and transmit
    // completions are awaited by their callers.
    infos[1].callback = Some(queue_interrupt);
    infos[2].callback = Some(queue_interrupt);
    let Some(find_vqs) = ops.find_vqs else { return Err(-(bindings::ENODEV as c_int)) };
    // SAFETY: both arrays hold `nvqs` entries and outlive the call, as the
    // inline virtio_find_vqs() this stands for requires.
    let err = unsafe { find_vqs(vdev, 4, vqs.as_mut_ptr(), infos.as_mut_ptr(), ptr::null_mut()) };
    if err != 0 {
        pr_err!("cannot set up virtqueues: {}\n", err);
        return Err(err);
    }
    Ok(vqs)
}

/// virtio_device_ready(): DRIVER_OK on top of the current status.
fn set_driver_ok(vdev: *mut bindings::virtio_device) {
    // SAFETY: as in read_config.
    let ops = unsafe { &*(*vdev).config };
    if let (Some(get_status), Some(set_status)) = (ops.get_status, ops.set_status) {
        // SAFETY: status accessors of a live device.
        unsafe { set_status(vdev, get_status(vdev) | bindings::VIRTIO_CONFIG_S_DRIVER_OK as u8) };
    }
}

/// Sleeps of 1-2 ms a control request may take before the device is
/// declared gone.
const CONTROL_PATIENCE: u32 = 1500;
/// How long a control request spins for its answer before sleeping. Even
/// a 10 µs sleep costs far more in a TCG guest (a timer programmed and
/// fired through the emulator), and the answer usually takes tens of
/// microseconds; tests/vm/guest-bench prints the per-cycle cost.
const CONTROL_SPIN_NS: u64 = 1_000_000;
/// Sleeps of 10-20 µs after the spin, before the millisecond sleeps.
/// Measured by tests/vm/guest-bench: with 1-2 ms sleeps only, each of a
/// connect's five requests cost a millisecond or more.
const CONTROL_QUICK_POLLS: u32 = 100;

/// While a caller waits for the network, the device is asked whether it
/// is still there after this many short sleeps (a few seconds).
const PROBE_EVERY: u32 = 1_000;

/// Asks the device something cheap; a device that does not answer is
/// declared dead (and its sockets failed) by control_request.
fn probe_device(socket: SocketKey) {
    let request = wire::GetOptRequest { optname: wire::TLS_ID, max_len: 8 };
    let _ = control_request(wire::VIRTIO_TLS_OP_GETOPT, socket, &request.encode());
}

/// A zero-filled kmalloc'd buffer.
fn dma_buffer(len: usize) -> Result<KVec<u8>> {
    Ok(KVec::from_elem(0, len, GFP_KERNEL)?)
}

/// Everyone in poll/select/epoll on one of our sockets waits here; the
/// event and receive queues' interrupts wake them, and they look again.
static WAITERS: Shared<bindings::wait_queue_head> =
    // SAFETY: initialised by __init_waitqueue_head in init before use.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));
static WAITERS_KEY: Shared<bindings::lock_class_key> =
    // SAFETY: lockdep keys are plain static storage.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// Virtqueue callback (hard IRQ): only wakes the pollers, who collect the
/// used buffers in process context under CONTROL_LOCK.
unsafe extern "C" fn queue_interrupt(_vq: *mut bindings::virtqueue) {
    wake_waiters();
}

/// Wakes every poller so it looks at its socket again.
fn wake_waiters() {
    // SAFETY: WAITERS is initialised in init, before any device or socket.
    unsafe {
        bindings::__wake_up(
            WAITERS.0.get(),
            bindings::TASK_INTERRUPTIBLE | bindings::TASK_UNINTERRUPTIBLE,
            0,
            ptr::null_mut(),
        )
    };
}

const QUEUE_NAMES: [&CStr; 4] = [c_str!("control"), c_str!("event"), c_str!("rx0"), c_str!("tx0")];

unsafe extern "C" fn probe(vdev: *mut bindings::virtio_device) -> c_int {
    // Under the lock from the check to DEVICE being set, so that two
    // devices probed at once cannot both pass the check.
    let mut guard = ControlGuard::lock();
    if guard.device().is_some() {
        // One device serves every socket (DEVICE, the one set of queues):
        // a second one would replace it under its open sockets and posted
        // buffers.
        pr_err!("a virtio-tls device is bound already: this driver serves one, refusing another\n");
        return -(bindings::EBUSY as c_int);
    }
    let Some(config) = read_config(vdev) else { return -(bindings::EINVAL as c_int) };
    let vqs = match setup_queues(vdev) {
        Ok(vqs) => vqs,
        Err(err) => return err,
    };
    let buffers = (
        dma_buffer(CONTROL_BUFFER),
        dma_buffer(CONTROL_BUFFER),
        dma_buffer(EVENT_BUFFERS * wire::Event::SIZE),
        dma_buffer(RX_BUFFERS * RX_BUFFER),
        dma_buffer(wire::DataHeader::SIZE + TX_PAYLOAD),
    );
    let (Ok(request), Ok(response), Ok(events), Ok(rx_buffers), Ok(tx_buffer)) = buffers else {
        // SAFETY: the queues were set up above and nothing is posted yet;
        // a failed probe must leave none behind.
        unsafe {
            if let Some(del_vqs) = (*(*vdev).config).del_vqs {
                del_vqs(vdev);
            }
        }
        return -(bindings::ENOMEM as c_int);
    };
    let generation = next_generation();
    let device = Device {
        vdev,
        control: vqs[0],
        event: vqs[1],
        events,
        sockets: KVec::new(),
        rx: vqs[2],
        tx: vqs[3],
        rx_buffers,
        tx_buffer,
        tx_stranded: KVec::new(),
        device_buf_alloc: config.socket_buf_size,
        liveness: Liveness::Answering,
        generation,
        request,
        response,
        next_request_id: 0,
    };
    set_driver_ok(vdev);
    // SAFETY: guarded by CONTROL_LOCK (held by `guard`).
    unsafe { *DEVICE.0.get() = Some(device) };
    if let Some(device) = guard.device() {
        device.post_all_buffers();
    }
    drop(guard);
    pr_info!(
        "device ready: {} sockets, {} queue pair(s), {} bytes per socket, TLS {}..{}\n",
        config.max_sockets,
        config.num_queue_pairs,
        config.socket_buf_size,
        config.tls_version_min,
        config.tls_version_max
    );
    pr_info!("socket generation {}\n", generation);
    0
}

unsafe extern "C" fn remove(vdev: *mut bindings::virtio_device) {
    // Out of DEVICE under the lock (no caller can reach it after), but
    // freed only after the reset: until then the device may still write
    // to its receive and event buffers and read its transmit buffers.
    let device = {
        let _guard = ControlGuard::lock();
        // SAFETY: guarded by CONTROL_LOCK.
        unsafe { (*DEVICE.0.get()).take() }
    };
    let broken = device.as_ref().is_some_and(|device| device.liveness == Liveness::Broken);
    // SAFETY: as in probe; reset stops the device before its queues go.
    unsafe {
        let ops = &*(*vdev).config;
        if let Some(reset) = ops.reset {
            reset(vdev);
        }
        if let (Some(del_vqs), false) = (ops.del_vqs, broken) {
            del_vqs(vdev);
        }
    }
    drop(device);
    // Sleepers and pollers look again, and find their device gone.
    wake_waiters();
    pr_info!("device removed\n");
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
    /// accepted socket came from. Family 0 when unknown (connect by name:
    /// the host resolved it).
    peer: wire::SockAddr,
}

/// An AF_INET6 TLS socket: inet6_create finds the IPv6 part through
/// proto.ipv6_pinfo_offset.
#[repr(C)]
struct TlsSock6 {
    tls: TlsSock,
    ipv6: bindings::ipv6_pinfo,
}

static PROTO6: Shared<bindings::proto> =
    // SAFETY: as for PROTO.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));
static OPS6: Shared<bindings::proto_ops> =
    // SAFETY: as for PROTO.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));
static PROTOSW6: Shared<bindings::inet_protosw> =
    // SAFETY: as for PROTO.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));

static PROTO: Shared<bindings::proto> =
    // SAFETY: all-zero is a valid `struct proto`; fields are set in init.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));
static OPS: Shared<bindings::proto_ops> =
    // SAFETY: as for PROTO.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));
static PROTOSW: Shared<bindings::inet_protosw> =
    // SAFETY: as for PROTO.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// proto.init: the new socket gets its device socket (CREATE).
unsafe extern "C" fn tls_init(sk: *mut bindings::sock) -> c_int {
    // SAFETY: the core passes the socket it is creating.
    let family = match unsafe { (*sk).__sk_common.skc_family } as u32 {
        bindings::AF_INET6 => wire::VIRTIO_TLS_AF_INET6,
        _ => wire::VIRTIO_TLS_AF_INET,
    };
    let request = wire::CreateRequest { family, queue_pair: 0, buf_alloc: DRIVER_BUF_ALLOC };
    let mut guard = ControlGuard::lock();
    let Some(device) = guard.device() else { return -(bindings::ENODEV as c_int) };
    // Under one lock from request to entry, so no restart comes between.
    // A second attempt only after the device turned out restarted.
    for _ in 0..2 {
        let response = match device.exchange(wire::VIRTIO_TLS_OP_CREATE, SocketKey::NONE, &request.encode()) {
            Ok((response, _)) if response.status != 0 => return -(response.status as c_int),
            Ok((response, _)) => response,
            Err(error) => return error.to_errno(),
        };
        let key = SocketKey { id: response.socket_id, generation: device.generation };
        if device.entry(key).is_some() {
            // DEV-5.2: the device does not reuse the id of a socket that is
            // still open, and ours is: the device forgot it (DRV-12.4).
            pr_err!("the device gave out socket {} twice: its backend was restarted\n", key.id);
            device.restart();
            continue;
        }
        if device.adopt(key).is_err() {
            return -(bindings::ENOMEM as c_int);
        }
        // SAFETY: sk was allocated with obj_size = size_of::<TlsSock>().
        unsafe {
            (*sk.cast::<TlsSock>()).socket_id = key.id;
            (*sk.cast::<TlsSock>()).generation = key.generation;
        }
        // SAFETY: inet_create linked the socket (sock_init_data) before
        // calling proto.init.
        take_sol_socket_options(unsafe { (*sk).sk_socket });
        return 0;
    }
    -(bindings::ECONNRESET as c_int)
}

/// proto.close: release the device socket (CLOSE), then the kernel's.
/// A socket of an earlier device generation is only forgotten: its id
/// may name another socket now (DRV-12.3).
unsafe extern "C" fn tls_close(sk: *mut bindings::sock, _timeout: kernel::ffi::c_long) {
    let socket = socket_of(sk);
    if socket.id != 0 {
        let mut guard = ControlGuard::lock();
        let mut tx_bytes = 0;
        let mut current = false;
        if let Some(device) = guard.device() {
            current = socket.generation == device.generation;
            if let Some(entry) = device.entry(socket) {
                tx_bytes = entry.tx_bytes;
                // A free slot (id 0 is never a socket id) for the next socket.
                *entry = SocketEntry::new(SocketKey::NONE, 0);
            }
        }
        drop(guard);
        let request = wire::CloseRequest { tx_bytes };
        if current {
            match control_request(wire::VIRTIO_TLS_OP_CLOSE, socket, &request.encode()) {
                Ok(_) => {}
                // The device lost its backend: nothing to close there.
                Err(error) if error.to_errno() == -(bindings::ECONNRESET as c_int) => {}
                Err(error) => pr_warn!("closing socket {} failed: {:?}\n", socket.id, error),
            }
        }
    }
    // SAFETY: the core hands us a live socket it expects us to release;
    // inet_sock_destruct refuses (and leaks) a stream socket whose state
    // is not TCP_CLOSE, as a listening one's is.
    unsafe {
        (*sk).__sk_common.skc_state = bindings::TCP_CLOSE as u8;
        bindings::sk_common_release(sk)
    };
}

/// The device socket of one of our socks.
fn socket_of(sk: *mut bindings::sock) -> SocketKey {
    // SAFETY: our sockets are allocated with obj_size = size_of::<TlsSock>().
    let tls = unsafe { &*sk.cast::<TlsSock>() };
    SocketKey { id: tls.socket_id, generation: tls.generation }
}


/// Largest option value passed through: room for a PEM chain or key
/// (TLS_CERTIFICATE_CHAIN, TLS_PEER_CERTIFICATE_CHAIN).
const MAX_OPTION: usize = CONTROL_BUFFER - wire::CtrlHeader::SIZE - wire::SetOptRequest::SIZE;
/// Bytes of each control request and response buffer.
const CONTROL_BUFFER: usize = 16 * 1024;

unsafe extern "C" fn tls_setsockopt(
    sk: *mut bindings::sock,
    level: c_int,
    optname: c_int,
    optval: bindings::sockptr_t,
    optlen: core::ffi::c_uint,
) -> c_int {
    if level != wire::IPPROTO_TLS as c_int {
        return set_other_level(sk, level, optname, optval, optlen);
    }
    let len = optlen as usize;
    if len > MAX_OPTION {
        return -(bindings::EINVAL as c_int);
    }
    let mut payload = KVec::new();
    let header = wire::SetOptRequest { optname: optname as u32, value_len: optlen };
    if payload.extend_from_slice(&header.encode(), GFP_KERNEL).is_err() {
        return -(bindings::ENOMEM as c_int);
    }
    let value = match option_value(optval, len) {
        Ok(value) => value,
        Err(errno) => return errno,
    };
    if payload.extend_from_slice(&value, GFP_KERNEL).is_err() {
        return -(bindings::ENOMEM as c_int);
    }
    match control_request(wire::VIRTIO_TLS_OP_SETOPT, socket_of(sk), &payload) {
        Ok(response) => -(response.status as c_int),
        Err(error) => error.to_errno(),
    }
}

unsafe extern "C" fn tls_getsockopt(
    sk: *mut bindings::sock,
    level: c_int,
    optname: c_int,
    optval: *mut kernel::ffi::c_char,
    optlen: *mut c_int,
) -> c_int {
    if level != wire::IPPROTO_TLS as c_int {
        return get_other_level(sk, level, optname, optval, optlen);
    }
    let mut room_bytes = [0u8; 4];
    if let Err(error) = UserSlice::new(optlen as usize, 4).reader().read_slice(&mut room_bytes) {
        return error.to_errno();
    }
    let room = i32::from_ne_bytes(room_bytes);
    if room < 0 {
        return -(bindings::EINVAL as c_int);
    }
    let optname = optname as u32;
    let string = wire::is_string_option(optname);
    // A string needs one byte for its NUL.
    let max_len = (room as usize).saturating_sub(string as usize).min(MAX_OPTION);
    let request = wire::GetOptRequest { optname, max_len: max_len as u32 };
    let mut value = match control_request_value(wire::VIRTIO_TLS_OP_GETOPT, socket_of(sk), &request.encode()) {
        Ok((response, _)) if response.status != 0 => return -(response.status as c_int),
        Ok((_, value)) => value,
        Err(error) => return error.to_errno(),
    };
    if string && value.push(0, GFP_KERNEL).is_err() {
        return -(bindings::ENOMEM as c_int);
    }
    let length = (value.len() as i32).to_ne_bytes();
    let written = UserSlice::new(optval as usize, value.len())
        .writer()
        .write_slice(&value)
        .and_then(|()| UserSlice::new(optlen as usize, 4).writer().write_slice(&length));
    match written {
        Ok(()) => 0,
        Err(error) => error.to_errno(),
    }
}

/// Largest value passed through SETSOCKOPT, and room asked for with
/// GETSOCKOPT: what fits in a control request. Longer values are cut to
/// it (Linux reads no more than that of any option at these levels).
const MAX_SOCKOPT: usize = CONTROL_BUFFER - wire::CtrlHeader::SIZE - wire::SockOptRequest::SIZE;

impl Device {
    /// Whether feature `bit` was negotiated (virtio_has_feature()).
    fn has_feature(&self, bit: u32) -> bool {
        // SAFETY: the bound device, whose features the virtio core set
        // before probe and never changes while bound.
        unsafe { (*self.vdev).features & (1u64 << bit) != 0 }
    }
}

/// Whether the bound device takes socket options at other levels than
/// IPPROTO_TLS (SETSOCKOPT, GETSOCKOPT: VIRTIO_TLS_F_SOCKOPT).
fn device_takes_sockopts() -> bool {
    let mut guard = ControlGuard::lock();
    guard.device().is_some_and(|device| device.has_feature(wire::VIRTIO_TLS_F_SOCKOPT))
}

/// The first `len` bytes of a setsockopt value, from user or kernel memory.
fn option_value(optval: bindings::sockptr_t, len: usize) -> core::result::Result<KVec<u8>, c_int> {
    let mut value = KVec::new();
    // SAFETY: reading the union member the is_kernel flag selects; a
    // kernel pointer comes with `len` readable bytes from the core.
    let copied = unsafe {
        if optval.is_kernel() {
            let from = core::slice::from_raw_parts(optval.__bindgen_anon_1.kernel.cast::<u8>(), len);
            value.extend_from_slice(from, GFP_KERNEL).map_err(Error::from)
        } else {
            UserSlice::new(optval.__bindgen_anon_1.user as usize, len).read_all(&mut value, GFP_KERNEL)
        }
    };
    copied.map(|()| value).map_err(|error| error.to_errno())
}

/// A sockptr_t for a kernel buffer (KERNEL_SOCKPTR()).
fn kernel_sockptr(bytes: &[u8]) -> bindings::sockptr_t {
    // SAFETY: a plain C struct; all-zero is a null user pointer.
    let mut pointer: bindings::sockptr_t = unsafe { core::mem::zeroed() };
    pointer.__bindgen_anon_1.kernel = bytes.as_ptr() as *mut c_void;
    pointer.set_is_kernel(true);
    pointer
}

/// setsockopt at a level other than IPPROTO_TLS (spec 2.6.10). Device-
/// routed options go to the device (SETSOCKOPT) when it takes them, and a
/// SOL_SOCKET one that the device accepted is then set on the guest socket
/// too, so that the generic getsockopt reads it back (DRV-6.10.1). Guest-
/// routed SOL_SOCKET options are the generic code's alone. Without
/// VIRTIO_TLS_F_SOCKOPT: SOL_SOCKET as any socket, ENOPROTOOPT elsewhere.
fn set_other_level(sk: *mut bindings::sock, level: c_int, optname: c_int, optval: bindings::sockptr_t, optlen: u32) -> c_int {
    // SAFETY: the core passes a sock of a socket (sock_init_data linked it).
    let sock = unsafe { (*sk).sk_socket };
    let generic = level == bindings::SOL_SOCKET as c_int;
    let device_routed = wire::sockopt_route(level as u32, optname as u32) == wire::SockOptRoute::Device;
    if !device_routed || !device_takes_sockopts() {
        if generic {
            // SAFETY: what the core calls for SOL_SOCKET on a socket
            // without SOCK_CUSTOM_SOCKOPT, with the caller's arguments.
            return unsafe { bindings::sock_setsockopt(sock, level, optname, optval, optlen) };
        }
        return -(bindings::ENOPROTOOPT as c_int);
    }
    let len = (optlen as usize).min(MAX_SOCKOPT);
    let value = match option_value(optval, len) {
        Ok(value) => value,
        Err(errno) => return errno,
    };
    let request = wire::SockOptRequest { level: level as u32, optname: optname as u32, len: len as u32, reserved: 0 };
    let mut payload = KVec::new();
    if payload.extend_from_slice(&request.encode(), GFP_KERNEL).is_err() || payload.extend_from_slice(&value, GFP_KERNEL).is_err() {
        return -(bindings::ENOMEM as c_int);
    }
    match control_request(wire::VIRTIO_TLS_OP_SETSOCKOPT, socket_of(sk), &payload) {
        Ok(response) if response.status != 0 => -(response.status as c_int),
        // SAFETY: as above, with the value the device accepted, in kernel
        // memory that outlives the call.
        Ok(_) if generic => unsafe { bindings::sock_setsockopt(sock, level, optname, kernel_sockptr(&value), len as u32) },
        Ok(_) => 0,
        Err(error) => error.to_errno(),
    }
}

/// getsockopt at a level other than IPPROTO_TLS and SOL_SOCKET (the core
/// answers SOL_SOCKET itself): GETSOCKOPT when the device takes socket
/// options, else ENOPROTOOPT.
fn get_other_level(sk: *mut bindings::sock, level: c_int, optname: c_int, optval: *mut kernel::ffi::c_char, optlen: *mut c_int) -> c_int {
    if wire::sockopt_route(level as u32, optname as u32) != wire::SockOptRoute::Device || !device_takes_sockopts() {
        return -(bindings::ENOPROTOOPT as c_int);
    }
    let mut room_bytes = [0u8; 4];
    if let Err(error) = UserSlice::new(optlen as usize, 4).reader().read_slice(&mut room_bytes) {
        return error.to_errno();
    }
    let room = i32::from_ne_bytes(room_bytes);
    if room < 0 {
        // As TCP's getsockopt.
        return -(bindings::EINVAL as c_int);
    }
    let max_len = (room as usize).min(MAX_SOCKOPT);
    let request = wire::SockOptRequest { level: level as u32, optname: optname as u32, len: max_len as u32, reserved: 0 };
    let value = match control_request_value(wire::VIRTIO_TLS_OP_GETSOCKOPT, socket_of(sk), &request.encode()) {
        Ok((response, _)) if response.status != 0 => return -(response.status as c_int),
        Ok((_, value)) => value,
        Err(error) => return error.to_errno(),
    };
    let value = &value[..value.len().min(max_len)];
    let length = (value.len() as i32).to_ne_bytes();
    let written = UserSlice::new(optval as usize, value.len())
        .writer()
        .write_slice(value)
        .and_then(|()| UserSlice::new(optlen as usize, 4).writer().write_slice(&length));
    match written {
        Ok(()) => 0,
        Err(error) => error.to_errno(),
    }
}

/// Lets SOL_SOCKET setsockopt reach tls_setsockopt (as MPTCP does), so
/// that options the host connection needs go to the device.
fn take_sol_socket_options(sock: *mut bindings::socket) {
    if sock.is_null() {
        return;
    }
    // SAFETY: a socket being set up (socket(), accept()), not yet visible
    // to another task, so a plain write of its flags races with nothing.
    unsafe { (*sock).flags |= 1 << bindings::SOCK_CUSTOM_SOCKOPT };
}

/// SSA's `struct sockaddr_host`: family, port (network order), name[120].
const SOCKADDR_HOST_LEN: usize = 2 + 2 + 120;
/// `struct sockaddr_in6`: family, port, flowinfo, addr[16], scope_id.
const SOCKADDR_IN6_LEN: usize = 28;

/// `connect()`: CONNECT, then wait for CONNECT_DONE. Blocking only, for
/// now: a non-blocking socket waits too (EINPROGRESS comes with poll).
unsafe extern "C" fn tls_connect(
    sock: *mut bindings::socket,
    uaddr: *mut bindings::sockaddr,
    addr_len: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: the core passes a live socket with its sock.
    let sk = unsafe { (*sock).sk };
    refresh_connect(sock);
    // SAFETY: as above.
    match unsafe { (*sock).state } {
        bindings::socket_state_SS_CONNECTED => return -(bindings::EISCONN as c_int),
        bindings::socket_state_SS_CONNECTING => return -(bindings::EALREADY as c_int),
        _ => {}
    }
    // A new attempt forgets the last failure (as TCP does).
    // SAFETY: as above.
    unsafe { (*sk).sk_err = 0 };
    let len = (addr_len.max(0) as usize).min(SOCKADDR_HOST_LEN.max(SOCKADDR_IN6_LEN));
    if len < 4 {
        return -(bindings::EINVAL as c_int);
    }
    // SAFETY: move_addr_to_kernel copied addr_len bytes to this kernel buffer.
    let raw = unsafe { core::slice::from_raw_parts(uaddr.cast::<u8>(), len) };
    let family = u16::from_ne_bytes([raw[0], raw[1]]) as u32;
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let target = match family {
        bindings::AF_INET if len >= 8 => wire::SockAddr::ipv4([raw[4], raw[5], raw[6], raw[7]], port),
        bindings::AF_INET6 if len >= SOCKADDR_IN6_LEN => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&raw[8..24]);
            let scope_id = u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]]);
            wire::SockAddr::ipv6(octets, port, scope_id)
        }
        wire::AF_HOSTNAME if len > 4 => {
            let name = &raw[4..];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            match wire::SockAddr::hostname(&name[..end], port) {
                Some(target) => target,
                None => return -(bindings::EINVAL as c_int),
            }
        }
        bindings::AF_INET | bindings::AF_INET6 | wire::AF_HOSTNAME => return -(bindings::EINVAL as c_int),
        _ => return -(bindings::EAFNOSUPPORT as c_int),
    };
    let socket = socket_of(sk);
    {
        let mut guard = ControlGuard::lock();
        if let Some(entry) = guard.device().and_then(|device| device.entry(socket)) {
            entry.connect_status = None;
            entry.error = None;
        }
    }
    match control_request(wire::VIRTIO_TLS_OP_CONNECT, socket, &target.encode()) {
        Ok(response) if response.status != 0 => return -(response.status as c_int),
        Ok(_) => {}
        Err(error) => return error.to_errno(),
    }
    let peer = if target.family == wire::VIRTIO_TLS_AF_HOSTNAME { wire::SockAddr::default() } else { target };
    // SAFETY: sk was allocated with obj_size = size_of::<TlsSock>().
    unsafe { (*sk.cast::<TlsSock>()).peer = peer };
    // SAFETY: as above.
    unsafe { (*sock).state = bindings::socket_state_SS_CONNECTING };
    if flags as u32 & bindings::O_NONBLOCK != 0 {
        // CONNECT_DONE will make it writable (poll) and connected.
        return -(bindings::EINPROGRESS as c_int);
    }
    // The device bounds connect + handshake by its policy's timeouts and
    // then reports ETIMEDOUT; this bound only guards against a lost device.
    for waits in 1..=600_000u32 {
        if waits % (PROBE_EVERY / 4) == 0 {
            probe_device(socket);
        }
        let status = {
            let mut guard = ControlGuard::lock();
            match guard.device() {
                Some(device) => {
                    device.collect_events();
                    device.entry(socket).and_then(|entry| entry.connect_status)
                }
                None => Some(bindings::ECONNRESET),
            }
        };
        match status {
            Some(0) => {
                // SAFETY: as above; the socket lock is not needed for the
                // state of a socket only this call connects.
                unsafe { (*sock).state = bindings::socket_state_SS_CONNECTED };
                return 0;
            }
            Some(errno) => {
                // SAFETY: as above.
                unsafe { (*sock).state = bindings::socket_state_SS_UNCONNECTED };
                return -(errno as c_int);
            }
            // The device keeps connecting; like TCP, a later connect says
            // EALREADY until it is done.
            None if interrupted() => return -(bindings::EINTR as c_int), // still SS_CONNECTING: EALREADY next
            // CONNECT_DONE comes as an event, whose interrupt ends the
            // wait; the timeouts only bound a missed wake-up. Handshakes on
            // loopback take a few milliseconds: short ones during those.
            None if waits < 200 => wait_for_device(50),
            None => wait_for_device(1000),
        }
    }
    -(bindings::ETIMEDOUT as c_int)
}

/// Whether the calling task has a signal to handle: blocking socket calls
/// return then, as TCP's do.
fn interrupted() -> bool {
    // SAFETY: called from a syscall, where `current` is the calling task
    // and outlives this function.
    unsafe { kernel::task::Task::current() }.signal_pending()
}

/// When a wait bounded by SO_RCVTIMEO/SO_SNDTIMEO (`timeout`, jiffies;
/// `c_long::MAX` for none, as sock_init_data sets it) started now ends.
fn deadline(timeout: kernel::ffi::c_long) -> Option<u64> {
    if timeout == kernel::ffi::c_long::MAX || timeout <= 0 {
        return None;
    }
    Some(now_jiffies().wrapping_add(timeout as u64))
}

fn now_jiffies() -> u64 {
    // SAFETY: jiffies is the kernel's tick counter, only ever read here;
    // a volatile read is how C reads it too.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(bindings::jiffies)) as u64 }
}

fn passed(deadline: Option<u64>) -> bool {
    deadline.is_some_and(|end| (now_jiffies().wrapping_sub(end) as i64) >= 0)
}

/// Waits a little for the device: for data, credit or an event.
fn sleep_briefly() {
    wait_for_device(500);
}

/// Sleeps until the device returns a buffer on the event or a receive
/// queue (their interrupts wake WAITERS, see queue_interrupt) or `max_us`
/// pass, whichever is first. Callers check their condition before and
/// after: a wake-up that comes between their check and this call is
/// missed, and the timeout bounds what that costs. Waking on the interrupt
/// instead of sleeping a fixed time is what lets a blocked recv see data
/// as soon as it lands (a TCG guest pays dearly for each timer sleep).
fn wait_for_device(max_us: u64) {
    // SAFETY: a plain C struct, initialised by init_wait_entry below.
    let mut entry: bindings::wait_queue_entry = unsafe { core::mem::zeroed() };
    let mut expires: bindings::ktime_t = (max_us * 1000) as bindings::ktime_t;
    // SAFETY: process context with no lock held (callers drop the control
    // lock first); WAITERS is initialised in init, before any socket
    // exists; `entry` stays on this stack until finish_wait has taken it
    // off the queue again. prepare_to_wait_event sets the task state the
    // hrtimer sleep then sleeps in; with a signal pending it does not, and
    // the caller sees the signal.
    unsafe {
        bindings::init_wait_entry(&mut entry, 0);
        let pending_signal =
            bindings::prepare_to_wait_event(WAITERS.0.get(), &mut entry, bindings::TASK_INTERRUPTIBLE as c_int) != 0;
        if !pending_signal {
            bindings::schedule_hrtimeout_range(&mut expires, max_us * 250, bindings::hrtimer_mode_HRTIMER_MODE_REL);
        }
        bindings::finish_wait(WAITERS.0.get(), &mut entry);
    }
}

fn nonblocking(sock: *mut bindings::socket, flags: c_int) -> bool {
    // SAFETY: the core passes a live socket with its file.
    let file_flags = unsafe { if (*sock).file.is_null() { 0 } else { (*(*sock).file).f_flags } };
    flags as u32 & bindings::MSG_DONTWAIT != 0 || file_flags & bindings::O_NONBLOCK != 0
}

/// A connect the caller did not wait for (non-blocking) ends when the
/// device says so: the socket becomes connected, or unconnected with the
/// error in SO_ERROR.
fn refresh_state(sock: *mut bindings::socket, entry: &mut SocketEntry) {
    // SAFETY: the core passes live sockets; the socket's own state and
    // sk_err are what TCP updates from its event paths too.
    unsafe {
        if (*sock).state != bindings::socket_state_SS_CONNECTING {
            return;
        }
        match entry.connect_status {
            Some(0) => (*sock).state = bindings::socket_state_SS_CONNECTED,
            Some(errno) => {
                (*sock).state = bindings::socket_state_SS_UNCONNECTED;
                (*(*sock).sk).sk_err = errno as c_int;
            }
            None => {}
        }
    }
}

/// `refresh_state` for a socket, collecting events first.
fn refresh_connect(sock: *mut bindings::socket) {
    // SAFETY: the core passes a live socket.
    if unsafe { (*sock).state } != bindings::socket_state_SS_CONNECTING {
        return;
    }
    // SAFETY: as above.
    let socket = socket_of(unsafe { (*sock).sk });
    let mut guard = ControlGuard::lock();
    if let Some(device) = guard.device() {
        device.collect_events();
        if let Some(entry) = device.entry(socket) {
            refresh_state(sock, entry);
        }
    }
}

const EPOLLIN: u32 = 0x1;
const EPOLLOUT: u32 = 0x4;
const EPOLLERR: u32 = 0x8;
const EPOLLHUP: u32 = 0x10;
const EPOLLRDNORM: u32 = 0x40;
const EPOLLWRNORM: u32 = 0x100;

/// poll/select/epoll: readable with data, end of stream or an error;
/// writable with credit; a non-blocking connect is writable when done.
unsafe extern "C" fn tls_poll(file: *mut bindings::file, sock: *mut bindings::socket, wait: *mut bindings::poll_table_struct) -> bindings::__poll_t {
    // poll_wait(), an inline function: register on WAITERS.
    // SAFETY: the poll table is the caller's and lives through this call.
    unsafe {
        if !wait.is_null() {
            if let Some(queue) = (*wait)._qproc {
                queue(file, WAITERS.0.get(), wait);
            }
        }
    }
    // SAFETY: the core passes a live socket.
    let socket = socket_of(unsafe { (*sock).sk });
    let mut guard = ControlGuard::lock();
    let Some(device) = guard.device() else { return EPOLLERR | EPOLLHUP };
    device.collect_events();
    device.collect_rx();
    let Some(entry) = device.entry(socket) else { return EPOLLERR | EPOLLHUP };
    refresh_state(sock, entry);
    // SAFETY: as above.
    let state = unsafe { (*sock).state };
    let mut mask = 0;
    // SAFETY: as above.
    if is_listening(unsafe { (*sock).sk }) {
        // "Maybe": accept() may still find nothing (EAGAIN) after another
        // caller took the connection, as with TCP.
        if entry.accept_ready {
            mask |= EPOLLIN | EPOLLRDNORM;
        }
    } else if state == bindings::socket_state_SS_CONNECTED {
        if entry.unread() > 0 || entry.eof || entry.error.is_some() {
            mask |= EPOLLIN | EPOLLRDNORM;
        }
        if entry.error.is_some() {
            mask |= EPOLLERR;
        } else if entry.credit() > 0 {
            mask |= EPOLLOUT | EPOLLWRNORM;
        }
    } else if state == bindings::socket_state_SS_UNCONNECTED {
        // SAFETY: as above.
        if unsafe { (*(*sock).sk).sk_err } != 0 {
            // A failed connect, as TCP reports it.
            mask |= EPOLLOUT | EPOLLERR;
        } else {
            mask |= EPOLLOUT | EPOLLHUP;
        }
    }
    mask
}

/// The socket lock (`lock_sock`) for one call, as TCP takes it: calls on
/// one socket take turns (one sender, one reader at a time), and a caller
/// whose buffer faults slowly holds up only its own socket. CONTROL_LOCK,
/// which every socket needs, is never held across a user copy.
struct SocketLock(*mut bindings::sock);

impl SocketLock {
    fn lock(sk: *mut bindings::sock) -> SocketLock {
        // SAFETY: callers pass the live sock of the socket their syscall
        // holds; process context.
        unsafe { bindings::lock_sock_nested(sk, 0) };
        SocketLock(sk)
    }

    /// Runs `wait` with the socket lock released (as sk_wait_event does),
    /// so that the socket's other calls go on meanwhile.
    fn released<R>(&mut self, wait: impl FnOnce() -> R) -> R {
        // SAFETY: locked by this guard, and locked again before returning.
        unsafe { bindings::release_sock(self.0) };
        let result = wait();
        // SAFETY: as in `lock`.
        unsafe { bindings::lock_sock_nested(self.0, 0) };
        result
    }
}

impl Drop for SocketLock {
    fn drop(&mut self) {
        // SAFETY: locked by this guard.
        unsafe { bindings::release_sock(self.0) };
    }
}

/// The errno for a call on a socket whose device is gone (unbound,
/// unplugged): the socket has failed.
const GONE: c_int = -(bindings::ECONNRESET as c_int);

/// `send`/`write`: as much as fits in the device's credit, in packets of
/// up to TX_PAYLOAD bytes; waits for credit unless non-blocking. Each
/// chunk is copied from the caller into a kernel buffer with only the
/// socket lock held, then sent under CONTROL_LOCK.
unsafe extern "C" fn tls_sendmsg(sock: *mut bindings::socket, msg: *mut bindings::msghdr, total: usize) -> c_int {
    refresh_connect(sock);
    // SAFETY: the core passes a live socket.
    if unsafe { (*sock).state } != bindings::socket_state_SS_CONNECTED {
        return -(bindings::ENOTCONN as c_int);
    }
    // SAFETY: as above.
    let sk = unsafe { (*sock).sk };
    let socket = socket_of(sk);
    let dontwait = nonblocking(sock, 0);
    let Ok(mut chunk) = KVec::<u8>::from_elem(0, TX_PAYLOAD, GFP_KERNEL) else {
        return -(bindings::ENOMEM as c_int);
    };
    let mut sent = 0usize;
    let mut waits = 0u32;
    // SAFETY: the core passes a live socket with its sock.
    let until = deadline(unsafe { (*sk).sk_sndtimeo });
    let total = total.min(i32::MAX as usize);
    let mut socket_lock = SocketLock::lock(sk);
    while sent < total {
        // Only this call sends on the socket (socket lock), so the credit
        // seen here is still there when the chunk goes out.
        let room = {
            let mut guard = ControlGuard::lock();
            let Some(device) = guard.device() else { return if sent > 0 { sent as c_int } else { GONE } };
            device.collect_events();
            device.collect_rx();
            let entry = match device.open_entry(socket) {
                Ok(entry) => entry,
                Err(errno) => return if sent > 0 { sent as c_int } else { errno },
            };
            if let Some(errno) = entry.error {
                return if sent > 0 { sent as c_int } else { -(errno as c_int) };
            }
            (entry.credit() as usize).min(TX_PAYLOAD).min(total - sent)
        };
        if room == 0 {
            if dontwait || passed(until) {
                return if sent > 0 { sent as c_int } else { -(bindings::EAGAIN as c_int) };
            }
            if interrupted() {
                return if sent > 0 { sent as c_int } else { -(bindings::EINTR as c_int) };
            }
            waits += 1;
            socket_lock.released(|| {
                if waits % PROBE_EVERY == 0 {
                    probe_device(socket);
                }
                sleep_briefly();
            });
            continue;
        }
        // SAFETY: copies at most `room` (<= TX_PAYLOAD) bytes from the
        // caller's iterator into our buffer of TX_PAYLOAD bytes; may fault
        // and sleep, with no driver-wide lock held.
        let copied = unsafe { bindings::_copy_from_iter(chunk.as_mut_ptr().cast::<c_void>(), room, &mut (*msg).msg_iter) };
        if copied == 0 {
            return if sent > 0 { sent as c_int } else { -(bindings::EFAULT as c_int) };
        }
        let result = {
            let mut guard = ControlGuard::lock();
            match guard.device() {
                Some(device) => device.send_packet(socket, wire::VIRTIO_TLS_DATA_OP_RW, &chunk[..copied]).map_err(|error| error.to_errno()),
                None => Err(GONE),
            }
        };
        if let Err(errno) = result {
            return if sent > 0 { sent as c_int } else { errno };
        }
        sent += copied;
    }
    sent as c_int
}

/// Most bytes one recv copies out: received data is copied into a kernel
/// buffer under CONTROL_LOCK and from there to the caller without it.
const RECV_CHUNK: usize = 64 * 1024;

/// `recv`/`read`: what has arrived, up to `total`; 0 at the peer's
/// close_notify; waits for data unless non-blocking.
unsafe extern "C" fn tls_recvmsg(sock: *mut bindings::socket, msg: *mut bindings::msghdr, total: usize, flags: c_int) -> c_int {
    refresh_connect(sock);
    // SAFETY: the core passes a live socket.
    if unsafe { (*sock).state } != bindings::socket_state_SS_CONNECTED {
        return -(bindings::ENOTCONN as c_int);
    }
    // SAFETY: as above.
    let sk = unsafe { (*sock).sk };
    let socket = socket_of(sk);
    let dontwait = nonblocking(sock, flags);
    let peek = flags as u32 & bindings::MSG_PEEK != 0;
    let mut waits = 0u32;
    // SAFETY: the core passes a live socket with its sock.
    let until = deadline(unsafe { (*sk).sk_rcvtimeo });
    if total == 0 {
        return 0;
    }
    let want = total.min(RECV_CHUNK);
    let Ok(mut bytes) = KVVec::<u8>::with_capacity(want, GFP_KERNEL) else {
        return -(bindings::ENOMEM as c_int);
    };
    // Only this call reads from the socket until it returns (socket
    // lock): what it copies out stays first in the entry's buffer, to be
    // consumed after the copy to the caller succeeded.
    let mut socket_lock = SocketLock::lock(sk);
    loop {
        {
            let mut guard = ControlGuard::lock();
            let Some(device) = guard.device() else { return GONE };
            device.collect_events();
            device.collect_rx();
            let entry = match device.open_entry(socket) {
                Ok(entry) => entry,
                Err(errno) => return errno,
            };
            let unread = entry.unread();
            if unread > 0 {
                let n = unread.min(want);
                let start = entry.rx_start;
                // Within the capacity reserved above: no allocation here.
                if bytes.extend_from_slice(&entry.rx[start..start + n], GFP_KERNEL).is_err() {
                    return -(bindings::ENOMEM as c_int);
                }
            } else if let Some(errno) = entry.error {
                return -(errno as c_int);
            } else if entry.eof {
                return 0;
            }
        }
        if !bytes.is_empty() {
            break;
        }
        if dontwait || passed(until) {
            return -(bindings::EAGAIN as c_int);
        }
        if interrupted() {
            return -(bindings::EINTR as c_int);
        }
        waits += 1;
        socket_lock.released(|| {
            if waits % PROBE_EVERY == 0 {
                probe_device(socket);
            }
            sleep_briefly();
        });
    }
    // SAFETY: copies our kernel buffer's bytes to the caller's iterator;
    // may fault and sleep, with no driver-wide lock held.
    let copied = unsafe { bindings::_copy_to_iter(bytes.as_ptr().cast::<c_void>(), bytes.len(), &mut (*msg).msg_iter) };
    if copied == 0 {
        // Nothing consumed: the bytes stay for the next read, as TCP's do.
        return -(bindings::EFAULT as c_int);
    }
    if !peek {
        let mut guard = ControlGuard::lock();
        if let Some(device) = guard.device() {
            if let Ok(entry) = device.open_entry(socket) {
                entry.rx_start += copied.min(entry.unread());
                entry.fwd_cnt = entry.fwd_cnt.wrapping_add(copied as u32);
                entry.compact_rx();
                // Tell the device about freed room once a quarter moved.
                if entry.fwd_cnt.wrapping_sub(entry.fwd_reported) >= DRIVER_BUF_ALLOC / 4 {
                    let _ = device.send_packet(socket, wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, &[]);
                }
            }
        }
    }
    drop(socket_lock);
    copied as c_int
}

/// `shutdown()`: SHUTDOWN with the bytes sent so far, so the device sends
/// close_notify after them (SHUT_WR) and/or drops what comes (SHUT_RD).
unsafe extern "C" fn tls_shutdown(sock: *mut bindings::socket, how: c_int) -> c_int {
    // SAFETY: the core passes a live socket.
    if unsafe { (*sock).state } != bindings::socket_state_SS_CONNECTED {
        return -(bindings::ENOTCONN as c_int);
    }
    if !(0..=2).contains(&how) {
        return -(bindings::EINVAL as c_int);
    }
    // SAFETY: as above.
    let socket = socket_of(unsafe { (*sock).sk });
    let tx_bytes = {
        let mut guard = ControlGuard::lock();
        let Some(device) = guard.device() else { return GONE };
        match device.open_entry(socket) {
            Ok(entry) => entry.tx_bytes,
            Err(errno) => return errno,
        }
    };
    let request = wire::ShutdownRequest { how: how as u32, reserved: 0, tx_bytes };
    match control_request(wire::VIRTIO_TLS_OP_SHUTDOWN, socket, &request.encode()) {
        Ok(response) => -(response.status as c_int),
        Err(error) => error.to_errno(),
    }
}

/// `struct sockaddr_in`: family, port, addr[4], zero[8].
const SOCKADDR_IN_LEN: usize = 16;
/// The shortest `struct sockaddr_in6` bind() takes (RFC 2133, no scope).
const SOCKADDR_IN6_MIN_LEN: usize = 24;

/// `bind()`: BIND to a guest port; the operator's policy decides whether
/// the port may listen and where on the host (spec 2.6.7). Binding a
/// connected socket is EINVAL, as SSA's tests expect.
unsafe extern "C" fn tls_bind(sock: *mut bindings::socket, uaddr: *mut bindings::sockaddr, addr_len: c_int) -> c_int {
    // SAFETY: the core passes a live socket.
    if unsafe { (*sock).state } != bindings::socket_state_SS_UNCONNECTED {
        return -(bindings::EINVAL as c_int);
    }
    // SAFETY: as above.
    let sk = unsafe { (*sock).sk };
    // SAFETY: as above.
    let socket_family = unsafe { (*sk).__sk_common.skc_family } as u32;
    let len = addr_len.max(0) as usize;
    if len < 2 {
        return -(bindings::EINVAL as c_int);
    }
    // SAFETY: move_addr_to_kernel copied addr_len bytes (at most a
    // sockaddr_storage) to this kernel buffer.
    let raw = unsafe { core::slice::from_raw_parts(uaddr.cast::<u8>(), len.min(128)) };
    let family = u16::from_ne_bytes([raw[0], raw[1]]) as u32;
    if family != socket_family {
        return -(bindings::EAFNOSUPPORT as c_int);
    }
    let local = match family {
        bindings::AF_INET if len >= SOCKADDR_IN_LEN => {
            wire::SockAddr::ipv4([raw[4], raw[5], raw[6], raw[7]], u16::from_be_bytes([raw[2], raw[3]]))
        }
        bindings::AF_INET6 if len >= SOCKADDR_IN6_MIN_LEN => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&raw[8..24]);
            wire::SockAddr::ipv6(octets, u16::from_be_bytes([raw[2], raw[3]]), 0)
        }
        _ => return -(bindings::EINVAL as c_int),
    };
    match control_request(wire::VIRTIO_TLS_OP_BIND, socket_of(sk), &local.encode()) {
        Ok(response) if response.status != 0 => -(response.status as c_int),
        Ok(_) => {
            // SAFETY: sk was allocated with obj_size = size_of::<TlsSock>().
            unsafe { (*sk.cast::<TlsSock>()).local_port = local.port };
            0
        }
        Err(error) => error.to_errno(),
    }
}

fn is_listening(sk: *mut bindings::sock) -> bool {
    // SAFETY: callers pass live sockets of ours.
    u32::from(unsafe { (*sk).__sk_common.skc_state }) == bindings::TCP_LISTEN
}

/// `listen()`: LISTEN (spec 2.6.8). The backend listens on the host and
/// completes handshakes before a connection reaches accept().
unsafe extern "C" fn tls_listen(sock: *mut bindings::socket, backlog: c_int) -> c_int {
    // SAFETY: the core passes a live socket.
    match unsafe { (*sock).state } {
        bindings::socket_state_SS_UNCONNECTED => {}
        // What SSA's tests expect of a connected TLS socket.
        bindings::socket_state_SS_CONNECTED => return -(bindings::EOPNOTSUPP as c_int),
        _ => return -(bindings::EINVAL as c_int),
    }
    // SAFETY: as above.
    let sk = unsafe { (*sock).sk };
    let socket = socket_of(sk);
    let request = wire::ListenRequest { backlog: backlog.max(0) as u32, reserved: 0 };
    match control_request(wire::VIRTIO_TLS_OP_LISTEN, socket, &request.encode()) {
        Ok(response) if response.status != 0 => return -(response.status as c_int),
        Ok(_) => {}
        Err(error) => return error.to_errno(),
    }
    // SAFETY: as above; sk_state is how inet sockets say "listening" too.
    unsafe { (*sk).__sk_common.skc_state = bindings::TCP_LISTEN as u8 };
    let mut guard = ControlGuard::lock();
    if let Some(entry) = guard.device().and_then(|device| device.entry(socket)) {
        // Clients may have connected already.
        entry.accept_ready = true;
    }
    0
}

/// One ACCEPT: the new socket (of the listener's generation, in which
/// the device answered) and its client, or the errno (EAGAIN
/// when nothing waits).
fn accept_once(listener: SocketKey) -> core::result::Result<(SocketKey, wire::SockAddr), c_int> {
    {
        let mut guard = ControlGuard::lock();
        if let Some(entry) = guard.device().and_then(|device| device.entry(listener)) {
            // Before asking, so that an ACCEPT_READY racing with the
            // answer sets it again.
            entry.accept_ready = false;
        }
    }
    let request = wire::AcceptRequest { queue_pair: 0, reserved0: 0, reserved1: 0 };
    match control_request_value(wire::VIRTIO_TLS_OP_ACCEPT, listener, &request.encode()) {
        Ok((response, _)) if response.status != 0 => Err(-(response.status as c_int)),
        Ok((response, value)) => {
            let mut guard = ControlGuard::lock();
            if let Some(entry) = guard.device().and_then(|device| device.entry(listener)) {
                // More connections may wait: the next accept() asks.
                entry.accept_ready = true;
            }
            let accepted = SocketKey { id: response.socket_id, generation: listener.generation };
            Ok((accepted, wire::SockAddr::decode(&value).unwrap_or_default()))
        }
        Err(error) => Err(error.to_errno()),
    }
}

/// `accept()`/`accept4()`: a connection whose handshake the backend
/// completed, as a new connected socket (spec 2.6.9). Blocks until
/// ACCEPT_READY unless non-blocking; SO_RCVTIMEO bounds the wait.
unsafe extern "C" fn tls_accept(sock: *mut bindings::socket, newsock: *mut bindings::socket, arg: *mut bindings::proto_accept_arg) -> c_int {
    // SAFETY: the core passes a live listening socket, a new socket
    // without a sock, and its accept arguments.
    let (sk, flags, kern) = unsafe { ((*sock).sk, (*arg).flags, (*arg).kern) };
    if !is_listening(sk) {
        return -(bindings::EINVAL as c_int);
    }
    let listener = socket_of(sk);
    let dontwait = flags as u32 & bindings::O_NONBLOCK != 0;
    // SAFETY: as above.
    let until = deadline(unsafe { (*sk).sk_rcvtimeo });
    let mut waits = 0u32;
    let (accepted, peer) = loop {
        match accept_once(listener) {
            Ok(accepted) => break accepted,
            Err(errno) if errno == -(bindings::EAGAIN as c_int) => {}
            Err(errno) => return errno,
        }
        // Wait for ACCEPT_READY.
        loop {
            if dontwait || passed(until) {
                return -(bindings::EAGAIN as c_int);
            }
            if interrupted() {
                return -(bindings::EINTR as c_int);
            }
            let ready = {
                let mut guard = ControlGuard::lock();
                match guard.device() {
                    Some(device) => {
                        device.collect_events();
                        device.entry(listener).is_some_and(|entry| entry.accept_ready)
                    }
                    None => return -(bindings::ECONNRESET as c_int),
                }
            };
            if ready {
                break;
            }
            waits += 1;
            if waits % PROBE_EVERY == 0 {
                probe_device(listener);
            }
            sleep_briefly();
        }
    };
    // SAFETY: the listening socket's family and protocol are the new one's.
    let (family, prot) = unsafe { ((*sk).__sk_common.skc_family, (*sk).__sk_common.skc_prot) };
    // SAFETY: what inet_create does for a new socket, minus the CREATE
    // our proto.init would send: the device created this socket already.
    // Without CONFIG_NET_NS every socket lives in init_net. sk_alloc
    // zeroes the object (TlsSock, TlsSock6).
    let newsk = unsafe {
        bindings::sk_alloc(core::ptr::addr_of_mut!(bindings::init_net), family as c_int, bindings::GFP_KERNEL, prot, kern as c_int)
    };
    if newsk.is_null() {
        let request = wire::CloseRequest { tx_bytes: 0 };
        let _ = control_request(wire::VIRTIO_TLS_OP_CLOSE, accepted, &request.encode());
        return -(bindings::ENOMEM as c_int);
    }
    // SAFETY: newsk is a fresh, zeroed sock of our protocol; newsock is the
    // core's new socket, which sock_init_data links to it.
    unsafe {
        bindings::sock_init_data(newsock, newsk);
        (*newsk).sk_protocol = wire::IPPROTO_TLS as u16;
        (*newsk).__sk_common.skc_state = bindings::TCP_ESTABLISHED as u8;
        // What an accepted TCP socket inherits from its listener and
        // sock_init_data does not set as inet_create does (SO_TXREHASH).
        (*newsk).sk_txrehash = (*sk).sk_txrehash;
        if family as u32 == bindings::AF_INET6 {
            // inet6_sk() finds the IPv6 part through pinet6.
            let tls6 = newsk.cast::<TlsSock6>();
            (*tls6).tls.inet.pinet6 = core::ptr::addr_of_mut!((*tls6).ipv6);
        }
        let tls = newsk.cast::<TlsSock>();
        (*tls).socket_id = accepted.id;
        (*tls).generation = accepted.generation;
        (*tls).local_port = (*sk.cast::<TlsSock>()).local_port;
        (*tls).peer = peer;
        (*newsock).state = bindings::socket_state_SS_CONNECTED;
    }
    take_sol_socket_options(newsock);
    let mut guard = ControlGuard::lock();
    let Some(device) = guard.device() else { return -(bindings::ECONNRESET as c_int) };
    if device.entry(accepted).is_some() {
        // As in tls_init: the device gave out the id of an open socket.
        pr_err!("the device gave out socket {} twice: its backend was restarted\n", accepted.id);
        device.restart();
        // The entry is the other socket's: the new one's release must not
        // free it.
        // SAFETY: newsk is the TlsSock set up above, not yet visible to
        // anyone but this call.
        unsafe { (*newsk.cast::<TlsSock>()).socket_id = 0 };
        return -(bindings::ECONNRESET as c_int);
    }
    match device.adopt(accepted) {
        Ok(entry) => {
            entry.connect_status.get_or_insert(0);
        }
        // The new socket is closed (CLOSE included) by the core's release.
        Err(_) => return -(bindings::ENOMEM as c_int),
    }
    // The device sends nothing for this socket before it hears our
    // receive buffer (DRV-6.9.1).
    if let Err(error) = device.send_packet(accepted, wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, &[]) {
        return error.to_errno();
    }
    0
}

/// getsockname()/getpeername(): the bound port, and the peer the socket
/// connected to or was accepted from. The guest never learns host
/// addresses: the local address is the wildcard, and a peer reached by
/// host name is the wildcard address with its port.
unsafe extern "C" fn tls_getname(sock: *mut bindings::socket, uaddr: *mut bindings::sockaddr, peer: c_int) -> c_int {
    // SAFETY: the core passes a live socket.
    let (sk, state) = unsafe { ((*sock).sk, (*sock).state) };
    // SAFETY: our sockets are allocated with obj_size = size_of::<TlsSock>().
    let tls = unsafe { &*sk.cast::<TlsSock>() };
    // SAFETY: as above.
    let family = unsafe { (*sk).__sk_common.skc_family } as u32;
    let (port, address) = if peer != 0 {
        if state != bindings::socket_state_SS_CONNECTED {
            return -(bindings::ENOTCONN as c_int);
        }
        (tls.peer.port, tls.peer)
    } else {
        (tls.local_port, wire::SockAddr::default())
    };
    let mut out = [0u8; SOCKADDR_IN6_LEN];
    out[0..2].copy_from_slice(&(family as u16).to_ne_bytes());
    out[2..4].copy_from_slice(&port.to_be_bytes());
    let len = if family == bindings::AF_INET6 {
        match address.family {
            wire::VIRTIO_TLS_AF_INET6 => {
                out[8..24].copy_from_slice(&address.addr[..16]);
                out[24..28].copy_from_slice(&address.scope_id.to_ne_bytes());
            }
            wire::VIRTIO_TLS_AF_INET => {
                // An IPv4 client of an IPv6 socket: ::ffff:a.b.c.d.
                out[18..20].copy_from_slice(&[0xff, 0xff]);
                out[20..24].copy_from_slice(&address.addr[..4]);
            }
            _ => {}
        }
        SOCKADDR_IN6_LEN
    } else {
        if address.family == wire::VIRTIO_TLS_AF_INET {
            out[4..8].copy_from_slice(&address.addr[..4]);
        }
        SOCKADDR_IN_LEN
    };
    // SAFETY: the core passes a sockaddr_storage-sized kernel buffer.
    unsafe { core::ptr::copy_nonoverlapping(out.as_ptr(), uaddr.cast::<u8>(), len) };
    len as c_int
}

/// TLS sockets live on the device, not in the kernel's hash tables.
unsafe extern "C" fn tls_hash(_sk: *mut bindings::sock) -> c_int {
    0
}

unsafe extern "C" fn tls_unhash(_sk: *mut bindings::sock) {}

/// Fills in one family's protocol, operations and switch entry.
///
/// # Safety
///
/// Only from init, before the entries are registered.
unsafe fn fill_protocol(
    module: &'static ThisModule,
    proto: *mut bindings::proto,
    ops: *mut bindings::proto_ops,
    protosw: *mut bindings::inet_protosw,
    family: u32,
) {
    // SAFETY: the caller guarantees nothing else uses these yet.
    unsafe {
        for (to, from) in (*proto).name.iter_mut().zip(if family == bindings::AF_INET6 { &b"TLSv6\0"[..] } else { &b"TLS\0"[..] }) {
            *to = *from as _;
        }
        (*proto).owner = module.as_ptr();
        if family == bindings::AF_INET6 {
            (*proto).obj_size = core::mem::size_of::<TlsSock6>() as u32;
            (*proto).ipv6_pinfo_offset = core::mem::offset_of!(TlsSock6, ipv6) as u32;
        } else {
            (*proto).obj_size = core::mem::size_of::<TlsSock>() as u32;
        }
        (*proto).init = Some(tls_init);
        (*proto).close = Some(tls_close);
        (*proto).hash = Some(tls_hash);
        (*proto).setsockopt = Some(tls_setsockopt);
        (*proto).getsockopt = Some(tls_getsockopt);
        (*proto).unhash = Some(tls_unhash);

        (*ops).family = family as _;
        (*ops).owner = module.as_ptr();
        (*ops).release = Some(if family == bindings::AF_INET6 { bindings::inet6_release } else { bindings::inet_release });
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

/// Registers IPPROTO_TLS for AF_INET and AF_INET6.
fn register_protocol(module: &'static ThisModule) -> Result {
    // SAFETY: runs once in init before registration publishes the statics;
    // each step is undone if a later one fails.
    unsafe {
        fill_protocol(module, PROTO.0.get(), OPS.0.get(), PROTOSW.0.get(), bindings::AF_INET);
        fill_protocol(module, PROTO6.0.get(), OPS6.0.get(), PROTOSW6.0.get(), bindings::AF_INET6);
        let err = bindings::proto_register(PROTO.0.get(), 1);
        if err != 0 {
            return Err(Error::from_errno(err));
        }
        let err = bindings::proto_register(PROTO6.0.get(), 1);
        if err != 0 {
            bindings::proto_unregister(PROTO.0.get());
            return Err(Error::from_errno(err));
        }
        bindings::inet_register_protosw(PROTOSW.0.get());
        let err = bindings::inet6_register_protosw(PROTOSW6.0.get());
        if err != 0 {
            bindings::inet_unregister_protosw(PROTOSW.0.get());
            bindings::proto_unregister(PROTO6.0.get());
            bindings::proto_unregister(PROTO.0.get());
            return Err(Error::from_errno(err));
        }
    }
    Ok(())
}

struct VirtioTls;

impl kernel::Module for VirtioTls {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // SAFETY: init runs once, before anything can take the lock or wait.
        unsafe {
            bindings::__mutex_init(CONTROL_LOCK.0.get(), c_str!("virtio_tls_control").as_char_ptr(), CONTROL_LOCK_KEY.0.get());
            bindings::__init_waitqueue_head(WAITERS.0.get(), c_str!("virtio_tls_waiters").as_char_ptr(), WAITERS_KEY.0.get());
        };
        let driver = DRIVER.0.get();
        // SAFETY: init runs once, before the driver is registered, so
        // nothing else reads DRIVER while it is filled in.
        let err = unsafe {
            (*driver).driver.name = c_str!("virtio_tls").as_char_ptr();
            (*driver).id_table = ID_TABLE.as_ptr();
            (*driver).feature_table = FEATURES.as_ptr();
            (*driver).feature_table_size = FEATURES.len() as core::ffi::c_uint;
            (*driver).probe = Some(probe);
            (*driver).remove = Some(remove);
            bindings::__register_virtio_driver(driver, module.as_ptr())
        };
        if err != 0 {
            return Err(Error::from_errno(err));
        }
        if let Err(error) = register_protocol(module) {
            // SAFETY: registered just above.
            unsafe { bindings::unregister_virtio_driver(driver) };
            return Err(error);
        }
        pr_info!("loaded (virtio id {}, IPPROTO_TLS {})\n", DEVICE_ID, wire::IPPROTO_TLS);
        Ok(VirtioTls)
    }
}

impl Drop for VirtioTls {
    fn drop(&mut self) {
        // SAFETY: registered in init. Sockets hold a module reference, so
        // none is open when this runs.
        unsafe {
            bindings::inet6_unregister_protosw(PROTOSW6.0.get());
            bindings::inet_unregister_protosw(PROTOSW.0.get());
            bindings::proto_unregister(PROTO6.0.get());
            bindings::proto_unregister(PROTO.0.get());
            bindings::unregister_virtio_driver(DRIVER.0.get());
        }
    }
}
