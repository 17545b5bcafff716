//! Arbitrary descriptor tables, driven through the real vhost-user path:
//! the backend (`vhost_tls::Server`, in this process so libFuzzer sees its
//! coverage) serves a front end from `tests/harness` over a vhost-user
//! socket with shared guest memory, and this target writes descriptors and
//! available-ring entries of the control, transmit, event and receive
//! queues itself.
//! Descriptors can point anywhere in or out of guest memory, chain to any
//! slot (loops included), have any length and mix readable and writable
//! parts in any order. The device must return every control and transmit
//! chain it is given on the used ring, exactly once, and keep serving;
//! event and receive buffers it keeps until it has something to write,
//! but it may only return buffers it was given, once each, and hold only
//! a bounded number of events for them.
//!
//! Input: a byte D (1 + D % 16 descriptors follow), D descriptors of 8
//! bytes each, a byte I (I % 17 indirect-table entries follow), I entries
//! of 8 bytes each, then the bytes of the request area (what readable
//! descriptors pointing there read). A descriptor's bytes:
//!   [0] table slot (mod queue size)
//!   [1] bits 0-1: region (request area, scratch area, past the end of
//!       guest memory, or near u64::MAX so that address + length wraps);
//!       bit 2: publish this slot as a chain head; bits 3-4: the queue
//!       (control, transmit, event, receive)
//!   [2..4] offset into the region; [4..6] length
//!   [6] flags: bit 0 NEXT, bit 1 WRITE, bit 2 length | 0xffff_0000,
//!       bit 3 INDIRECT (queue descriptors only: the offset, in entries,
//!       and length then select a table in the indirect area)
//!   [7] next slot (mod queue size; in an indirect table, as given)
//!
//! With bit 7 of D set, once the chains are answered the driver publishes
//! an available index past the queue size on one queue (bits 5-6: control,
//! transmit, event, receive; bit 4: 0x8000 ahead rather than the queue
//! size plus one), with nothing behind it: the device must stop serving
//! that queue and stay responsive (its lock is taken right after; a
//! worker spinning on the queue would hang here until libFuzzer's
//! timeout). The true index is then put back and the queue restarted
//! through vhost-user, as a device reset would.
//!
//! The backend offers VIRTIO_RING_F_INDIRECT_DESC, so a guest's chains may
//! go through indirect tables; the harness writes them into an area of
//! their own, entry by entry as decoded here (so theirs obey the same
//! rule for writable buffers), and indirect entries cannot nest.
//!
//! The device keeps its state from input to input (one vhost-user session
//! for the whole run): a crash may need the inputs before it to reproduce.
//! Writable descriptors only point at the scratch area, the request area
//! or outside guest memory, never at the rings, so that nothing the
//! device legitimately writes can corrupt this driver's own bookkeeping.
#![no_main]

use std::collections::HashMap;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tempfile::TempDir;
use vhost_tls::{DeviceShape, Server};
use vhost_tls_harness::frontend::VhostUserDevice;
use vhost_tls_harness::guest_memory::GuestMemory;
use virtio_tls_spec as wire;

const QUEUE_SIZE: u16 = 64;
const AREA_SIZE: usize = 64 * 1024;
const MEMORY_SIZE: usize = 1 << 20;
const DESC_SIZE: u64 = 16;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;

struct Guest {
    device: VhostUserDevice,
    indirect_area: u64,
    request_area: u64,
    scratch_area: u64,
    /// Per fuzzed queue: the next available index this driver publishes
    /// and the used index it has seen.
    avail_idx: HashMap<u16, u16>,
    used_seen: HashMap<u16, u16>,
    /// Event and receive buffers made available and not yet returned
    /// (the device keeps them across inputs).
    posted: HashMap<u16, Vec<u16>>,
    // Dropped last: the backend serving `device`.
    server: Server,
    _dir: TempDir,
}

fn guest() -> &'static Mutex<Guest> {
    static GUEST: OnceLock<Mutex<Guest>> = OnceLock::new();
    GUEST.get_or_init(|| {
        let fixture = vhost_tls_fuzz::fixture();
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("vhost-tls.sock");
        let server = Server::start(&socket, fixture.policy.clone(), DeviceShape::with_pairs(1)).expect("start the backend");
        let mut memory = GuestMemory::new(MEMORY_SIZE).expect("guest memory");
        // The areas come first; the front end lays out the rings after them.
        let indirect_area = memory.alloc(AREA_SIZE, 16).expect("indirect area");
        let request_area = memory.alloc(AREA_SIZE, 16).expect("request area");
        let scratch_area = memory.alloc(AREA_SIZE, 16).expect("scratch area");
        // Without EVENT_IDX: this target writes the rings itself, so the
        // harness's queues do not know the indexes EVENT_IDX kicks by.
        let device =
            VhostUserDevice::connect_with(&socket, memory, server.num_queues(), QUEUE_SIZE, false).expect("vhost-user session");
        let fuzzed = [wire::CONTROLQ, wire::tx_queue(0), wire::EVENTQ, wire::rx_queue(0)];
        Mutex::new(Guest {
            device,
            indirect_area,
            request_area,
            scratch_area,
            avail_idx: fuzzed.iter().map(|&q| (q, 0)).collect(),
            used_seen: fuzzed.iter().map(|&q| (q, 0)).collect(),
            posted: HashMap::new(),
            server,
            _dir: dir,
        })
    })
}

struct Descriptor {
    queue: u16,
    slot: u16,
    publish: bool,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

impl Guest {
    /// Decodes a queue descriptor, or with `in_table` an entry of an
    /// indirect table.
    fn descriptor(&self, bytes: &[u8; 8], in_table: bool) -> Descriptor {
        let offset = u64::from(u16::from_le_bytes([bytes[2], bytes[3]]));
        let mut flags = u16::from(bytes[6] & 0b11);
        let writable = flags & VIRTQ_DESC_F_WRITE != 0;
        let addr = match bytes[1] & 0b11 {
            0 => self.request_area + offset % AREA_SIZE as u64,
            1 => self.scratch_area + offset % AREA_SIZE as u64,
            2 => MEMORY_SIZE as u64 + offset,
            _ => u64::MAX - offset,
        };
        let short = u32::from(u16::from_le_bytes([bytes[4], bytes[5]]));
        let len = if bytes[6] & 0b100 != 0 { 0xffff_0000 | short } else { short };
        // A writable descriptor in an area may run past it only into the
        // other area or the bytes after it, which the rings start beyond:
        // keep writes inside the two areas.
        let mut len = if writable && (bytes[1] & 0b11) < 2 {
            let end_of_areas = self.scratch_area + AREA_SIZE as u64;
            len.min(u32::try_from(end_of_areas - addr).expect("areas are small"))
        } else {
            len
        };
        let mut addr = addr;
        if !in_table && bytes[6] & 0b1000 != 0 {
            // A table inside the indirect area, whatever its length says.
            let start = offset * DESC_SIZE % AREA_SIZE as u64;
            addr = self.indirect_area + start;
            len = len.min(u32::try_from(AREA_SIZE as u64 - start).expect("areas are small"));
            flags |= VIRTQ_DESC_F_INDIRECT;
        }
        Descriptor {
            queue: match bytes[1] >> 3 & 0b11 {
                0 => wire::CONTROLQ,
                1 => wire::tx_queue(0),
                2 => wire::EVENTQ,
                _ => wire::rx_queue(0),
            },
            slot: u16::from(bytes[0]) % QUEUE_SIZE,
            publish: bytes[1] & 0b100 != 0,
            addr,
            len,
            flags,
            next: if in_table { u16::from(bytes[7]) } else { u16::from(bytes[7]) % QUEUE_SIZE },
        }
    }

    fn write_descriptor(&mut self, desc: &Descriptor) {
        let table = self.device.queue_mut(usize::from(desc.queue)).desc_table;
        self.write_descriptor_at(table + DESC_SIZE * u64::from(desc.slot), desc);
    }

    fn write_descriptor_at(&self, at: u64, desc: &Descriptor) {
        let mut bytes = [0u8; DESC_SIZE as usize];
        bytes[0..8].copy_from_slice(&desc.addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&desc.len.to_le_bytes());
        bytes[12..14].copy_from_slice(&desc.flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&desc.next.to_le_bytes());
        self.device.memory().write(at, &bytes).expect("descriptor tables are in memory");
    }

    fn publish(&mut self, queue: u16, head: u16) {
        let avail_ring = self.device.queue_mut(usize::from(queue)).avail_ring;
        let idx = self.avail_idx.get_mut(&queue).expect("a fuzzed queue");
        let slot = u64::from(*idx % QUEUE_SIZE);
        self.device.memory().write(avail_ring + 4 + 2 * slot, &head.to_le_bytes()).expect("avail ring is in memory");
        // The device must see the entry before the index (virtio 1.x 2.7.13).
        fence(Ordering::Release);
        *idx = idx.wrapping_add(1);
        self.device.memory().store_u16(avail_ring + 2, *idx).expect("avail ring is in memory");
    }

    /// Event and receive buffers the device returned: each must be one it
    /// held.
    fn check_returned(&mut self, returned: &HashMap<u16, Vec<u16>>) {
        for queue in [wire::EVENTQ, wire::rx_queue(0)] {
            for &head in returned.get(&queue).into_iter().flatten() {
                let posted = self.posted.entry(queue).or_default();
                let at = posted.iter().position(|&h| h == head);
                let at = at.unwrap_or_else(|| panic!("queue {queue}: the device returned buffer {head}, which it did not hold"));
                posted.swap_remove(at);
            }
        }
    }

    /// Waits until the device has returned every published control and
    /// transmit chain; returns the heads it returned per queue.
    fn collect_used(&mut self) -> HashMap<u16, Vec<u16>> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut returned: HashMap<u16, Vec<u16>> = HashMap::new();
        loop {
            let mut outstanding = 0;
            for (&queue, &avail) in &self.avail_idx {
                let used_ring = self.device.queue_mut(usize::from(queue)).used_ring;
                let used = self.device.memory().load_u16(used_ring + 2).expect("used ring is in memory");
                fence(Ordering::Acquire);
                let seen = self.used_seen.get_mut(&queue).expect("a fuzzed queue");
                while *seen != used {
                    let slot = u64::from(*seen % QUEUE_SIZE);
                    let mut elem = [0u8; 8];
                    self.device.memory().read(used_ring + 4 + 8 * slot, &mut elem).expect("used ring is in memory");
                    let id = u32::from_le_bytes(elem[0..4].try_into().expect("4 bytes"));
                    let head = u16::try_from(id).ok().filter(|&h| h < QUEUE_SIZE);
                    let head = head.unwrap_or_else(|| panic!("queue {queue}: the device returned head {id}, beyond the queue"));
                    returned.entry(queue).or_default().push(head);
                    *seen = seen.wrapping_add(1);
                }
                let pending = avail.wrapping_sub(used);
                assert!(pending <= QUEUE_SIZE, "queue {queue}: the device returned more chains than it was given");
                if !device_keeps(queue) {
                    outstanding += usize::from(pending);
                }
            }
            if outstanding == 0 {
                return returned;
            }
            assert!(Instant::now() < deadline, "the device kept {outstanding} chains for 5 s");
            self.device.wait_for_interrupt(Duration::from_millis(10));
        }
    }
}

/// Queues whose buffers the device holds until it has something for them.
fn device_keeps(queue: u16) -> bool {
    queue == wire::EVENTQ || queue == wire::rx_queue(0)
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else { return };
    let count = 1 + usize::from(first % 16);
    if rest.len() < 8 * count + 1 {
        return;
    }
    let (table, rest) = rest.split_at(8 * count);
    let (&indirect_count, rest) = rest.split_first().expect("checked above");
    let indirect_count = usize::from(indirect_count % 17);
    if rest.len() < 8 * indirect_count {
        return;
    }
    let (indirect_table, request) = rest.split_at(8 * indirect_count);
    let mut guest = guest().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let request = &request[..request.len().min(AREA_SIZE)];
    let request_area = guest.request_area;
    guest.device.memory().write(request_area, request).expect("request area is in memory");

    let indirect_area = guest.indirect_area;
    for (index, bytes) in indirect_table.chunks_exact(8).enumerate() {
        let entry = guest.descriptor(bytes.try_into().expect("8 bytes"), true);
        guest.write_descriptor_at(indirect_area + DESC_SIZE * index as u64, &entry);
    }
    let descriptors: Vec<Descriptor> =
        table.chunks_exact(8).map(|bytes| guest.descriptor(bytes.try_into().expect("8 bytes"), false)).collect();
    for desc in &descriptors {
        guest.write_descriptor(desc);
    }
    // Queue by queue, in the order a driver would (control requests make
    // the sockets the transmit queue names), each answered before the next.
    for queue in [wire::CONTROLQ, wire::EVENTQ, wire::rx_queue(0), wire::tx_queue(0)] {
        let mut given: Vec<u16> = Vec::new();
        for desc in descriptors.iter().filter(|d| d.publish && d.queue == queue) {
            // A head may be given again only after the device returned it.
            if given.contains(&desc.slot) {
                continue;
            }
            if device_keeps(queue) {
                let posted = guest.posted.entry(queue).or_default();
                if posted.len() >= usize::from(QUEUE_SIZE) {
                    continue; // the available ring is full
                }
                posted.push(desc.slot);
            }
            guest.publish(queue, desc.slot);
            given.push(desc.slot);
        }
        if given.is_empty() {
            continue;
        }
        guest.device.queue_mut(usize::from(queue)).kick().expect("kick");
        let returned = guest.collect_used();
        guest.check_returned(&returned);
        if !device_keeps(queue) {
            given.sort_unstable();
            let mut back = returned.get(&queue).cloned().unwrap_or_default();
            back.sort_unstable();
            assert_eq!(given, back, "queue {queue}: the chains returned are not the chains given");
        }
    }
    if first & 0x80 != 0 {
        guest.break_queue(first);
    }
    let pending = guest.server.backend().with_device(|device| device.snapshot().events_pending);
    vhost_tls_fuzz::check_pending_events(pending);
});

impl Guest {
    /// Publishes an available index past the queue size (the queue and
    /// how far from `selector`), checks the backend still answers, then
    /// puts the true index back and restarts the queue.
    fn break_queue(&mut self, selector: u8) {
        let queue = [wire::CONTROLQ, wire::tx_queue(0), wire::EVENTQ, wire::rx_queue(0)][usize::from(selector >> 5 & 0b11)];
        let ahead = if selector & 0x10 != 0 { 0x8000 } else { QUEUE_SIZE + 1 };
        let avail = self.avail_idx[&queue];
        self.device.queue_mut(usize::from(queue)).publish_avail_idx(avail.wrapping_add(ahead)).expect("avail ring is in memory");
        // The worker takes the kick; the device lock must come free.
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(1));
            let _ = self.server.sockets();
        }
        self.device.queue_mut(usize::from(queue)).publish_avail_idx(avail).expect("avail ring is in memory");
        self.device.restart_queue(usize::from(queue)).expect("restart the queue");
    }
}
