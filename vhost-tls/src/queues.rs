//! The guest-memory edge: taking descriptor chains off virtqueues, reading
//! the driver's bytes out of them and writing replies into them. Every
//! address and length here comes from the untrusted guest; virtio-queue's
//! `Reader`/`Writer` check each against the memory table, so a bad
//! descriptor becomes an error for that one chain.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::{GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

pub type GuestMemoryMap = GuestMemoryMmap<()>;
pub type Memory = GuestMemoryAtomic<GuestMemoryMap>;
pub type MemoryGuard = GuestMemoryLoadGuard<GuestMemoryMap>;
pub type Vring = VringRwLock<Memory>;
pub type Chain = DescriptorChain<MemoryGuard>;

/// A queue the device can no longer serve: the driver broke the available
/// ring (virtio 1.x 2.7.6 has no way back but a device reset).
#[derive(Debug)]
pub struct BrokenQueue(pub String);

/// Takes the next available chain: `Ok(None)` when the driver has posted
/// none (or the queue is not running), `Err` when the available ring is
/// broken, so the caller stops serving the queue rather than look again:
/// an available index more than the queue size ahead of the device's
/// (virtio-queue's `InvalidAvailRingIndex`, which its own
/// `pop_descriptor_chain` turns into "empty" while `enable_notification`
/// keeps saying there is more), or a ring that cannot be read.
pub fn pop_chain(vring: &Vring, mem: &MemoryGuard) -> Result<Option<Chain>, BrokenQueue> {
    let mut state = vring.get_mut();
    let queue = state.get_queue_mut();
    if !queue.ready() {
        return Ok(None);
    }
    let next_avail = queue.next_avail();
    let avail = queue
        .avail_idx(&**mem, Ordering::Acquire)
        .map_err(|error| BrokenQueue(format!("the available ring cannot be read: {error}")))?;
    let ahead = avail.0.wrapping_sub(next_avail);
    if ahead == 0 {
        return Ok(None);
    }
    if ahead > queue.size() {
        return Err(BrokenQueue(format!(
            "the driver's available index ({}) is more than the queue size ({}) ahead of the device's ({next_avail})",
            avail.0,
            queue.size()
        )));
    }
    match queue.iter(mem.clone()) {
        Ok(mut chains) => chains.next().map(Some).ok_or_else(|| BrokenQueue("the available ring cannot be read".to_owned())),
        Err(virtio_queue::Error::QueueNotReady) => Ok(None),
        Err(error) => Err(BrokenQueue(error.to_string())),
    }
}

/// Returns the chain most recently popped to the available ring, for a
/// device that took a buffer it turned out not to need.
pub fn unpop_chain(vring: &Vring) {
    vring.set_queue_next_avail(vring.queue_next_avail().wrapping_sub(1));
}

/// Marks a chain used with `len` bytes written into it.
pub fn complete(vring: &Vring, head: u16, len: u32) {
    if let Err(error) = vring.add_used(head, len) {
        tracing::warn!(%error, "cannot return a descriptor chain to the used ring");
    }
}

/// Interrupts the driver if it wants to hear about used buffers.
pub fn notify(vring: &Vring) {
    match vring.needs_notification() {
        Ok(false) => {}
        Ok(true) | Err(_) => {
            if let Err(error) = vring.signal_used_queue() {
                tracing::warn!(%error, "cannot signal the driver");
            }
        }
    }
}

/// Asks the driver to kick when it posts buffers; true when some arrived in
/// the meantime (the caller should look again).
pub fn arm_notification(vring: &Vring) -> bool {
    if !vring.get_ref().get_queue().ready() {
        // Stopped (or never started): nothing to take, whatever its
        // rings say.
        return false;
    }
    // An error here is a ring that cannot be read: looking again makes
    // `pop_chain` say the queue is broken.
    vring.enable_notification().unwrap_or(true)
}

/// The device-readable bytes of a chain, at most `limit` of them.
pub enum ReadOutcome {
    Bytes(Vec<u8>),
    /// Readable descriptors outside guest memory.
    Fault,
    /// More than `limit` readable bytes.
    TooLong,
}

pub fn read_request(mem: &MemoryGuard, chain: &Chain, limit: usize) -> ReadOutcome {
    let Ok(mut reader) = Reader::new(&**mem, chain.clone()) else {
        return ReadOutcome::Fault;
    };
    let available = reader.available_bytes();
    if available > limit {
        return ReadOutcome::TooLong;
    }
    let mut bytes = vec![0u8; available];
    match reader.read_exact(&mut bytes) {
        Ok(()) => ReadOutcome::Bytes(bytes),
        Err(_) => ReadOutcome::Fault,
    }
}

/// A reader over a chain's readable part, for payloads read in place.
pub fn reader<'a>(mem: &'a MemoryGuard, chain: &Chain) -> io::Result<Reader<'a>> {
    Reader::new(&**mem, chain.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

/// A writer over a chain's writable part.
pub fn writer<'a>(mem: &'a MemoryGuard, chain: &Chain) -> io::Result<Writer<'a>> {
    Writer::new(&**mem, chain.clone()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

/// Writes `parts` back to back into the chain's writable part; returns the
/// bytes written, or `None` when they do not fit or memory is bad.
pub fn write_reply(mem: &MemoryGuard, chain: &Chain, parts: &[&[u8]]) -> Option<u32> {
    let mut writer = writer(mem, chain).ok()?;
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if writer.available_bytes() < total {
        return None;
    }
    for part in parts {
        writer.write_all(part).ok()?;
    }
    u32::try_from(total).ok()
}

/// The queues the device has stopped serving because the driver broke
/// them, by queue index. vhost-user gives the backend no way to set
/// DEVICE_NEEDS_RESET (vhost-user-backend 0.24 implements neither
/// GET_STATUS nor access to the vring's error eventfd), so the device
/// only stops looking at such a queue, says so once, and serves it again
/// when the front end stops and restarts it (GET_VRING_BASE, as on a
/// device reset) or resets the device.
#[derive(Debug)]
pub struct BrokenQueues(Vec<bool>);

impl BrokenQueues {
    pub fn new(num_queues: usize) -> BrokenQueues {
        BrokenQueues(vec![false; num_queues])
    }

    pub fn is_broken(&self, queue: u16) -> bool {
        self.0.get(usize::from(queue)).copied().unwrap_or(false)
    }

    /// Stops serving `queue`; the log line comes once per breakage.
    pub fn mark(&mut self, queue: u16, why: BrokenQueue) {
        let Some(broken) = self.0.get_mut(usize::from(queue)) else { return };
        if !*broken {
            *broken = true;
            tracing::warn!(queue, reason = %why.0, "the device stops serving a virtqueue the driver broke, until the driver resets the device");
        }
    }

    /// The front end stopped `queue` (it restarts it from a known state).
    pub fn clear(&mut self, queue: u16) {
        if let Some(broken) = self.0.get_mut(usize::from(queue)) {
            *broken = false;
        }
    }

    pub fn clear_all(&mut self) {
        self.0.iter_mut().for_each(|broken| *broken = false);
    }
}
