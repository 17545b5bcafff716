//! The guest-memory edge: taking descriptor chains off virtqueues, reading
//! the driver's bytes out of them and writing replies into them. Every
//! address and length here comes from the untrusted guest; virtio-queue's
//! `Reader`/`Writer` check each against the memory table, so a bad
//! descriptor becomes an error for that one chain.

use std::io::{self, Read, Write};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT, Reader, Writer};
use vm_memory::{GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

pub type GuestMemoryMap = GuestMemoryMmap<()>;
pub type Memory = GuestMemoryAtomic<GuestMemoryMap>;
pub type MemoryGuard = GuestMemoryLoadGuard<GuestMemoryMap>;
pub type Vring = VringRwLock<Memory>;
pub type Chain = DescriptorChain<MemoryGuard>;

/// Takes the next available chain, if the driver has posted one.
pub fn pop_chain(vring: &Vring, mem: &MemoryGuard) -> Option<Chain> {
    vring.get_mut().get_queue_mut().pop_descriptor_chain(mem.clone())
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
