// SPDX-License-Identifier: GPL-2.0

//! The bound device: its queues and buffers, the sockets it knows, whether
//! it answers, and socket generations across resets (spec 2.12). All of it
//! lives in `DEVICE`, behind the driver lock; the socket layer
//! (`socket.rs`) reaches it through `lock()` and the requests below. Built
//! on `virtio.rs` only: no bindings here.
//!
//! Control requests are answered on the control queue, which the caller
//! polls (answers take tens of microseconds). Events, received data and
//! returned transmit buffers raise the queues' interrupts, which wake
//! `WAITERS`; whoever wakes collects the used buffers under the lock.
//! Data goes out in packets of up to `TX_PAYLOAD` bytes, up to
//! `TX_IN_FLIGHT` of them posted at once; a sender does not wait for the
//! device to take each one.
//!
//! A device that stops answering (its backend is gone) is found by a
//! control request that times out, by a probe a blocked caller sends every
//! few seconds, or by the watchdog (`watch`), which probes while sockets
//! are open and the device has been silent: every socket then fails
//! (ECONNRESET) and waiters and pollers are woken to see it.

use crate::flow::{Received, SocketFlow};
use crate::net::code;
use crate::sync::{self, Global, Guard, Installed};
use crate::virtio::{Packet, Queues, VirtioDevice, Virtqueue};
use crate::wire;
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::prelude::*;

pub(crate) use crate::sync::WAITERS;

/// The bound device, if any. The driver serves one.
static DEVICE: Global<Option<Device>> = Global::new();

/// Receive buffers posted at once, and the payload each holds.
const RX_BUFFERS: usize = 16;
const RX_PAYLOAD: usize = 16384;
const EVENT_BUFFERS: usize = 16;
/// Largest payload of one transmit packet.
pub(crate) const TX_PAYLOAD: usize = 16384;
/// Transmit packets posted and not yet returned, at most.
const TX_IN_FLIGHT: usize = 16;
/// The driver's receive buffer per socket (its buf_alloc).
pub(crate) const DRIVER_BUF_ALLOC: u32 = 256 * 1024;
/// Request and response buffers of a control request.
/// (16 KiB: room for a PEM chain or key, TLS_CERTIFICATE_CHAIN.)
const CONTROL_BUFFER: usize = 16 * 1024;

/// Sleeps of 1-2 ms a control request may take before the device is
/// declared gone.
const CONTROL_PATIENCE: u32 = 1500;
/// How long a control request spins for its answer before sleeping. Even
/// a 10 µs sleep costs far more in a TCG guest (a timer programmed and
/// fired through the emulator), and the answer usually takes tens of
/// microseconds; tests/vm/guest-bench prints the per-cycle cost.
const CONTROL_SPIN_NS: u64 = 1_000_000;
/// Sleeps of 10-20 µs after the spin, before the millisecond sleeps.
const CONTROL_QUICK_POLLS: u32 = 100;
/// The watchdog probes a device silent this long while sockets are open.
const WATCH_SILENCE_NS: u64 = 3_000_000_000;

/// The largest IPPROTO_TLS option value (SETOPT, GETOPT): what fits in a
/// control request.
pub(crate) const MAX_OPTION: usize = CONTROL_BUFFER - wire::CtrlHeader::SIZE - wire::SetOptRequest::SIZE;
/// The same for options at other levels (SETSOCKOPT, GETSOCKOPT). Longer
/// values are cut to it (Linux reads no more than that of any of them).
pub(crate) const MAX_SOCKOPT: usize = CONTROL_BUFFER - wire::CtrlHeader::SIZE - wire::SockOptRequest::SIZE;

/// A socket as the driver names it to the device: the id the device
/// assigned, in the device generation that assigned it. A restarted
/// backend knows nothing of earlier ids and may hand out the same numbers
/// again, so an id alone does not name a socket across restarts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct SocketKey {
    pub(crate) id: u32,
    pub(crate) generation: u32,
}

impl SocketKey {
    /// For requests about no socket (CREATE), and sockets without one.
    pub(crate) const NONE: SocketKey = SocketKey { id: 0, generation: 0 };
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

/// One socket the driver has, with what the device said about it.
pub(crate) struct SocketEntry {
    /// `SocketKey::NONE` for a free slot.
    key: SocketKey,
    pub(crate) flow: SocketFlow,
    /// Received bytes not yet read, from `rx_start` on.
    rx: KVec<u8>,
    rx_start: usize,
}

impl SocketEntry {
    fn free() -> SocketEntry {
        SocketEntry { key: SocketKey::NONE, flow: SocketFlow::new(0, 0), rx: KVec::new(), rx_start: 0 }
    }

    /// Received bytes not yet read.
    pub(crate) fn unread(&self) -> &[u8] {
        &self.rx[self.rx_start..]
    }

    /// The application read `n` bytes: they go, and true says the device
    /// should hear of the room (a CREDIT_UPDATE).
    pub(crate) fn consume(&mut self, n: usize) -> bool {
        let n = n.min(self.unread().len());
        self.rx_start += n;
        self.compact();
        self.flow.consumed(n)
    }

    /// Drops the bytes already read once they are worth a copy, so the
    /// buffer stays near the credit bound (DRIVER_BUF_ALLOC) however the
    /// application interleaves reads with arrivals.
    fn compact(&mut self) {
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

/// Keeps a transmit packet for the next send. Only an optimisation:
/// without room for it, it is freed.
fn keep_for_reuse(free: &mut KVec<Option<KBox<Packet>>>, packet: KBox<Packet>) {
    // A header-only credit packet (send_credit past the bound) cannot
    // carry data: it is freed.
    if packet.bytes.len() < wire::DataHeader::SIZE + TX_PAYLOAD {
        return;
    }
    match free.iter_mut().find(|slot| slot.is_none()) {
        Some(slot) => *slot = Some(packet),
        None => {
            let _ = free.push(Some(packet), GFP_KERNEL);
        }
    }
}

/// Hands every buffer the device returned on `queue` to `handle` (with the
/// bytes the device wrote, within the buffer), posts it again and tells
/// the device. True if there were any: then waiters are woken, since what
/// came may be another socket's than the one whose caller collected it
/// (its pollers were woken by the interrupt and may have looked too early).
fn recycle(queue: &mut Virtqueue, mut handle: impl FnMut(&Packet, usize)) -> bool {
    let mut any = false;
    while let Some((packet, len)) = queue.take_used() {
        handle(&packet, len.min(packet.bytes.len()));
        // A ring cannot be too full for a buffer it just gave back.
        let _ = queue.add(packet);
        any = true;
    }
    if any {
        queue.kick();
        WAITERS.wake_all();
    }
    any
}

/// The entry of a socket of the current generation, by the id the device
/// named (events and data name no generation: they are the current one's).
fn socket_of(sockets: &mut KVec<SocketEntry>, key: SocketKey) -> Option<&mut SocketEntry> {
    if key.id == 0 {
        return None;
    }
    sockets.iter_mut().find(|entry| entry.key == key)
}

/// The bound device, as the socket layer reaches it.
pub(crate) struct Device {
    vdev: VirtioDevice,
    /// None once Broken.
    queues: Option<Queues>,
    sockets: KVec<SocketEntry>,
    /// The control request's buffers, while not posted.
    control: Option<KBox<Packet>>,
    /// Transmit packets back from the device, for reuse (slots: 6.12's
    /// KVec has no pop).
    tx_free: KVec<Option<KBox<Packet>>>,
    tx_in_flight: usize,
    /// The device's receive buffer per socket (config socket_buf_size).
    device_buf_alloc: u32,
    liveness: Liveness,
    /// This device generation (spec 2.12), from `next_generation`.
    generation: u32,
    next_request_id: u64,
    /// When the device last returned anything (`sync::now_ns`).
    heard_ns: u64,
}

/// The driver lock, held: the bound device if there is one.
pub(crate) struct DeviceGuard(Guard<Option<Device>>);

impl DeviceGuard {
    pub(crate) fn device(&mut self) -> Option<&mut Device> {
        (*self.0).as_mut()
    }

    pub(crate) fn device_ref(&self) -> Option<&Device> {
        (*self.0).as_ref()
    }

    fn slot(&mut self) -> &mut Option<Device> {
        &mut self.0
    }
}

/// Takes the driver lock. Never held across a user copy or a sleep.
pub(crate) fn lock() -> DeviceGuard {
    DeviceGuard(DEVICE.lock())
}

/// Module load: the driver lock, before the driver registers with the
/// virtio and socket cores. It lives until the returned value is dropped,
/// at unload after unregistering.
pub(crate) fn init() -> Result<Installed<Option<Device>>> {
    DEVICE.install(None)
}

/// The device's configuration (spec 2.4), checked.
fn read_config(vdev: &VirtioDevice) -> Result<wire::VirtioTlsConfig> {
    let mut bytes = [0u8; wire::VirtioTlsConfig::SIZE];
    vdev.read_config(&mut bytes)?;
    let config = wire::VirtioTlsConfig::decode(&bytes).ok_or(EINVAL)?;
    if config.num_queue_pairs == 0 {
        pr_err!("the device offers no data queues\n");
        return Err(EINVAL);
    }
    Ok(config)
}

/// The virtio core found a device (virtio.rs).
pub(crate) fn probe(vdev: VirtioDevice) -> Result {
    // Under the lock from the check to DEVICE being set, so that two
    // devices probed at once cannot both pass the check.
    let mut guard = lock();
    if guard.device_ref().is_some() {
        // One device serves every socket: a second one would replace it
        // under its open sockets and posted buffers.
        pr_err!("a virtio-tls device is bound already: this driver serves one, refusing another\n");
        return Err(EBUSY);
    }
    let config = read_config(&vdev)?;
    let queues = vdev.find_vqs().inspect_err(|error| pr_err!("cannot set up virtqueues: {:?}\n", error))?;
    let control = match Packet::new(2 * CONTROL_BUFFER, CONTROL_BUFFER) {
        Ok(control) => control,
        Err(error) => {
            vdev.reset_and_delete(Some(queues));
            return Err(error);
        }
    };
    let generation = next_generation();
    let mut device = Device {
        vdev,
        queues: Some(queues),
        sockets: KVec::new(),
        control: Some(control),
        tx_free: KVec::new(),
        tx_in_flight: 0,
        device_buf_alloc: config.socket_buf_size,
        liveness: Liveness::Answering,
        generation,
        next_request_id: 0,
        heard_ns: sync::now_ns(),
    };
    device.vdev.ready();
    if let Err(error) = device.post_all_buffers() {
        device.vdev.reset_and_delete(device.queues.take());
        return Err(error);
    }
    *guard.slot() = Some(device);
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
    Ok(())
}

/// The device goes (unbind, unplug, rmmod). Its sockets fail; waiters
/// and pollers are woken to see it.
pub(crate) fn remove(vdev: VirtioDevice) {
    // Out of DEVICE under the lock (no caller can reach it after); the
    // reset then takes every buffer back before they are freed.
    let device = lock().slot().take();
    match device {
        Some(mut device) => device.vdev.reset_and_delete(device.queues.take()),
        None => vdev.reset_and_delete(None),
    }
    WAITERS.wake_all();
    pr_info!("device removed\n");
}

/// The watchdog's tick (about once a second, sync::Ticker): a device that
/// has been silent for a while with sockets open is asked something, so
/// that a lost backend fails its sockets and wakes their pollers even
/// when nobody is blocked in a call.
pub(crate) fn watch() {
    let socket = {
        let mut guard = lock();
        let Some(device) = guard.device() else { return };
        device.collect();
        if device.liveness != Liveness::Answering || sync::now_ns().wrapping_sub(device.heard_ns) < WATCH_SILENCE_NS {
            return;
        }
        let generation = device.generation;
        match device.sockets.iter().find(|entry| entry.key.id != 0 && entry.key.generation == generation) {
            Some(entry) => entry.key,
            None => return,
        }
    };
    probe_device(socket);
}

/// Asks the device something cheap about `socket`; a device that does not
/// answer is declared dead (and its sockets failed) by the request.
pub(crate) fn probe_device(socket: SocketKey) {
    let request = wire::GetOptRequest { optname: wire::TLS_ID, max_len: 8 };
    let _ = request_value(wire::VIRTIO_TLS_OP_GETOPT, socket, &request.encode());
}

/// Sends one control request and waits for its response (spec 2.6.1).
pub(crate) fn request(op: u16, socket: SocketKey, payload: &[u8]) -> Result<wire::CtrlResponse> {
    request_value(op, socket, payload).map(|(response, _)| response)
}

/// As `request`, also returning the value after the response.
pub(crate) fn request_value(op: u16, socket: SocketKey, payload: &[u8]) -> Result<(wire::CtrlResponse, KVec<u8>)> {
    let mut guard = lock();
    // A socket whose device went (unbound, unplugged) has failed.
    let device = guard.device().ok_or(code::ECONNRESET)?;
    device.exchange(op, socket, payload)
}

/// A device status (a wire errno) as the error the caller gets.
pub(crate) fn status(response: &wire::CtrlResponse) -> Result {
    match response.status {
        0 => Ok(()),
        errno => Err(code::from_device(errno)),
    }
}

impl Device {
    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether feature `bit` was negotiated.
    pub(crate) fn has_feature(&self, bit: u32) -> bool {
        self.vdev.has_feature(bit)
    }

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
        for entry in self.sockets.iter_mut().filter(|entry| entry.key.id != 0) {
            entry.flow.fail(code::ECONNRESET.status());
        }
        WAITERS.wake_all();
    }

    /// The driver's entry for one of its sockets.
    pub(crate) fn entry(&mut self, key: SocketKey) -> Option<&mut SocketEntry> {
        socket_of(&mut self.sockets, key)
    }

    /// The entry of an open socket for a call on it: ECONNRESET for a
    /// socket of an earlier generation (DRV-12.3), EBADF for one the driver
    /// does not know.
    pub(crate) fn open_entry(&mut self, key: SocketKey) -> Result<&mut SocketEntry> {
        if key.generation != self.generation {
            return Err(code::ECONNRESET.into());
        }
        self.entry(key).ok_or(EBADF)
    }

    /// Keeps an entry for a socket the device just made (CREATE, ACCEPT).
    /// A socket of an earlier generation is failed from the start.
    pub(crate) fn adopt(&mut self, key: SocketKey) -> Result<&mut SocketEntry> {
        let mut entry = SocketEntry::free();
        entry.key = key;
        entry.flow = SocketFlow::new(DRIVER_BUF_ALLOC, self.device_buf_alloc);
        if key.generation != self.generation {
            entry.flow.fail(code::ECONNRESET.status());
        }
        let slot = match self.sockets.iter().position(|entry| entry.key.id == 0) {
            Some(free) => free,
            None => {
                self.sockets.push(SocketEntry::free(), GFP_KERNEL)?;
                self.sockets.len() - 1
            }
        };
        self.sockets[slot] = entry;
        Ok(&mut self.sockets[slot])
    }

    /// Forgets a socket being closed; its bytes sent so far, if it was
    /// known.
    pub(crate) fn forget(&mut self, key: SocketKey) -> Option<u64> {
        let entry = self.entry(key)?;
        let tx_bytes = entry.flow.tx_bytes();
        *entry = SocketEntry::free();
        Some(tx_bytes)
    }

    /// Takes every used buffer: events, received data and credit, and
    /// transmit packets the device is done with.
    pub(crate) fn collect(&mut self) {
        self.collect_events();
        self.collect_rx();
        self.collect_tx();
    }

    /// Makes every event and receive buffer available to the device.
    fn post_all_buffers(&mut self) -> Result {
        let queues = self.queues.as_mut().ok_or(code::ECONNRESET)?;
        for _ in 0..EVENT_BUFFERS {
            queues.event.add(Packet::new(wire::Event::SIZE, 0)?).map_err(|(error, _)| error)?;
        }
        for _ in 0..RX_BUFFERS {
            queues.rx.add(Packet::new(wire::DataHeader::SIZE + RX_PAYLOAD, 0)?).map_err(|(error, _)| error)?;
        }
        queues.event.kick();
        queues.rx.kick();
        Ok(())
    }

    /// Takes the events the device returned and posts their buffers again.
    fn collect_events(&mut self) {
        let Some(queues) = self.queues.as_mut() else { return };
        let (sockets, generation) = (&mut self.sockets, self.generation);
        let any = recycle(&mut queues.event, |packet, len| {
            let Some(event) = wire::Event::decode(&packet.bytes[..len]) else { return };
            if let Some(entry) = socket_of(sockets, SocketKey { id: event.socket_id, generation }) {
                entry.flow.on_event(&event);
            }
        });
        if any {
            self.heard_ns = sync::now_ns();
        }
    }

    /// Takes received data and credit updates (spec 2.8).
    fn collect_rx(&mut self) {
        let Some(queues) = self.queues.as_mut() else { return };
        let (sockets, generation) = (&mut self.sockets, self.generation);
        let any = recycle(&mut queues.rx, |packet, len| {
            let Some(header) = wire::DataHeader::decode(&packet.bytes[..len]) else { return };
            let Some(entry) = socket_of(sockets, SocketKey { id: header.socket_id, generation }) else { return };
            if entry.flow.on_packet(&header) == Received::Data {
                let start = wire::DataHeader::SIZE;
                let payload_len = (header.len as usize).min(len - start);
                if entry.rx.extend_from_slice(&packet.bytes[start..start + payload_len], GFP_KERNEL).is_err() {
                    entry.flow.error.get_or_insert(code::ENOMEM.status());
                }
            }
        });
        if any {
            self.heard_ns = sync::now_ns();
        }
    }

    /// Transmit packets the device took come back for reuse.
    fn collect_tx(&mut self) {
        let Some(queues) = self.queues.as_mut() else { return };
        let mut returned = false;
        while let Some((packet, _)) = queues.tx.take_used() {
            self.tx_in_flight -= 1;
            returned = true;
            keep_for_reuse(&mut self.tx_free, packet);
        }
        if returned {
            self.heard_ns = sync::now_ns();
        }
    }

    /// A transmit packet to fill, if fewer than TX_IN_FLIGHT are posted;
    /// None means wait for the device to return some.
    pub(crate) fn tx_packet(&mut self) -> Result<Option<KBox<Packet>>> {
        self.collect_tx();
        // Senders hold at most one packet each between this and `post`
        // (under their socket lock), so a few more than TX_IN_FLIGHT can
        // be out at once: harmless, the bound is for memory.
        if self.tx_in_flight >= TX_IN_FLIGHT {
            return Ok(None);
        }
        match self.tx_free.iter_mut().find_map(Option::take) {
            Some(packet) => Ok(Some(packet)),
            None => Ok(Some(Packet::new(wire::DataHeader::SIZE + TX_PAYLOAD, wire::DataHeader::SIZE + TX_PAYLOAD)?)),
        }
    }

    /// Gives back a packet taken with `tx_packet` and not posted.
    pub(crate) fn return_tx_packet(&mut self, packet: KBox<Packet>) {
        keep_for_reuse(&mut self.tx_free, packet);
    }

    /// Posts `packet` (filled after its header with `len` payload bytes,
    /// from `tx_packet`) as data (`op`) for `key`; its payload then counts
    /// against the socket's credit. The packet is the device's from here,
    /// even when the socket turns out failed.
    pub(crate) fn post(&mut self, key: SocketKey, op: u16, mut packet: KBox<Packet>, len: usize) -> Result {
        if self.liveness != Liveness::Answering {
            self.return_tx_packet(packet);
            return Err(code::ECONNRESET.into());
        }
        let entry = match self.open_entry(key) {
            Ok(entry) => entry,
            Err(error) => {
                self.return_tx_packet(packet);
                return Err(error);
            }
        };
        let header = entry.flow.header(key.id, op, len);
        let total = wire::DataHeader::SIZE + len;
        packet.bytes[..wire::DataHeader::SIZE].copy_from_slice(&header.encode());
        packet.readable = total;
        let Some(queues) = self.queues.as_mut() else {
            self.return_tx_packet(packet);
            return Err(code::ECONNRESET.into());
        };
        match queues.tx.add(packet) {
            Ok(()) => {
                queues.tx.kick();
                self.tx_in_flight += 1;
                if let Some(entry) = self.entry(key) {
                    entry.flow.header_sent(&header);
                }
                Ok(())
            }
            Err((error, mut packet)) => {
                packet.readable = packet.bytes.len();
                self.return_tx_packet(packet);
                Err(error)
            }
        }
    }

    /// Sends a packet without payload (CREDIT_UPDATE): our credit to the
    /// device. It must go even when TX_IN_FLIGHT data packets are out: a
    /// device that does not hear of freed room (or, for an accepted
    /// socket, of our buffer at all) sends nothing more, and a reader would
    /// wait forever. So it takes a fresh packet past the bound if need be.
    pub(crate) fn send_credit(&mut self, key: SocketKey) -> Result {
        let packet = match self.tx_packet()? {
            Some(packet) => packet,
            None => Packet::new(wire::DataHeader::SIZE, wire::DataHeader::SIZE)?,
        };
        self.post(key, wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, packet, 0)
    }

    /// One control request and its response, under the driver lock. A
    /// socket of an earlier generation, or a device that does not answer,
    /// fails at once with ECONNRESET; so does a socket the device no
    /// longer knows (then the device is restarted, DRV-12.4).
    pub(crate) fn exchange(&mut self, op: u16, socket: SocketKey, payload: &[u8]) -> Result<(wire::CtrlResponse, KVec<u8>)> {
        if self.liveness != Liveness::Answering && !self.answers_again() {
            return Err(code::ECONNRESET.into());
        }
        if socket != SocketKey::NONE && socket.generation != self.generation {
            return Err(code::ECONNRESET.into());
        }
        let request_len = wire::CtrlHeader::SIZE + payload.len();
        if request_len > CONTROL_BUFFER {
            return Err(EINVAL);
        }
        let mut packet = match self.control.take() {
            Some(packet) => packet,
            None => Packet::new(2 * CONTROL_BUFFER, CONTROL_BUFFER)?,
        };
        self.next_request_id += 1;
        let header = wire::CtrlHeader { op, flags: 0, socket_id: socket.id, request_id: self.next_request_id };
        packet.bytes[..wire::CtrlHeader::SIZE].copy_from_slice(&header.encode());
        packet.bytes[wire::CtrlHeader::SIZE..request_len].copy_from_slice(payload);
        // The device reads the request, writes the response after it.
        packet.readable = request_len;
        let queues = self.queues.as_mut().ok_or(code::ECONNRESET)?;
        if let Err((error, packet)) = queues.control.add(packet) {
            self.control = Some(packet);
            return Err(error);
        }
        queues.control.kick();
        // Most answers come within tens of microseconds: spin for them
        // first, then look often, then back off to millisecond sleeps. A
        // device silent for seconds has lost its backend; its request
        // stays posted (the queue owns the packet), see `answers_again`.
        let spin_until = sync::now_ns() + CONTROL_SPIN_NS;
        let mut quick_polls = 0;
        let mut waited = 0;
        let (packet, used) = loop {
            if let Some(answer) = queues.control.take_used() {
                break answer;
            }
            if sync::now_ns() < spin_until {
                core::hint::spin_loop();
            } else if quick_polls < CONTROL_QUICK_POLLS {
                quick_polls += 1;
                sync::sleep_us(10, 20);
            } else if waited >= CONTROL_PATIENCE {
                self.declare_dead();
                return Err(code::ECONNRESET.into());
            } else {
                sync::sleep_us(1000, 2000);
                waited += 1;
            }
        };
        self.heard_ns = sync::now_ns();
        let response_bytes = &packet.bytes[packet.readable..];
        let used = used.min(response_bytes.len());
        let decoded = wire::CtrlResponse::decode(&response_bytes[..used]);
        let value = decoded.map(|response| {
            let end = (wire::CtrlResponse::SIZE + response.value_len as usize).min(used).max(wire::CtrlResponse::SIZE);
            let mut value = KVec::new();
            value.extend_from_slice(&response_bytes[wire::CtrlResponse::SIZE..end], GFP_KERNEL).map(|()| value)
        });
        self.control = Some(packet);
        let response = decoded.ok_or(EIO)?;
        let value = value.ok_or(EIO)??;
        if response.status == wire::VIRTIO_TLS_EBADF && socket != SocketKey::NONE && self.entry(socket).is_some() {
            // DEV-5.1: EBADF is for ids never assigned or closed, and this
            // socket is open: the device forgot it, so it is a new backend.
            pr_err!("the device forgot socket {}: its backend was restarted\n", socket.id);
            self.restart();
            return Err(code::ECONNRESET.into());
        }
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
        let Some(queues) = self.queues.as_mut() else { return false };
        let Some((packet, _)) = queues.control.take_used() else { return false };
        self.control = Some(packet);
        pr_info!("the device answers again\n");
        self.restart();
        self.liveness == Liveness::Answering
    }

    /// Fails every socket, resets the device and sets it up again, for a
    /// new generation of sockets (spec 2.12): nothing the old backend left
    /// half done (unanswered requests, untaken packets) reaches the new
    /// one, and no old socket is confused with a new one of the same id.
    pub(crate) fn restart(&mut self) {
        self.fail_all_sockets();
        // The reset takes every posted buffer back; they are freed.
        self.vdev.reset_and_delete(self.queues.take());
        self.tx_in_flight = 0;
        self.liveness = Liveness::Broken;
        if !self.vdev.renegotiate() {
            pr_err!("the device refused its features after a reset: it stays unusable\n");
            return;
        }
        let config = match read_config(&self.vdev) {
            Ok(config) => config,
            Err(_) => {
                pr_err!("cannot read the device's configuration after a reset: it stays unusable\n");
                return;
            }
        };
        match self.vdev.find_vqs() {
            Ok(queues) => self.queues = Some(queues),
            Err(_) => {
                pr_err!("cannot set the device up again after a reset: it stays unusable\n");
                return;
            }
        }
        self.device_buf_alloc = config.socket_buf_size;
        self.generation = next_generation();
        self.liveness = Liveness::Answering;
        self.heard_ns = sync::now_ns();
        self.vdev.ready();
        if self.post_all_buffers().is_err() {
            pr_err!("cannot post buffers after a reset: the device stays unusable\n");
            self.vdev.reset_and_delete(self.queues.take());
            self.liveness = Liveness::Broken;
            return;
        }
        pr_info!("device reset: socket generation {}, earlier sockets stay failed\n", self.generation);
    }
}
