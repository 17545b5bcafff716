//! The driver side of a split virtqueue (virtio 1.x, 2.7), as a guest
//! kernel's virtio_ring keeps it: descriptor table, available ring and used
//! ring in guest memory, a free list of descriptors, and notification
//! through eventfds (kick: driver to device, call: device to driver).

use std::io;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest_memory::GuestMemory;

const DESC_SIZE: u64 = 16;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;

/// A descriptor exactly as given, for tests of malformed chains.
#[derive(Clone, Copy, Debug)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no free descriptors for a chain of {0}")]
    Full(usize),
    #[error("empty chain")]
    Empty,
    #[error("guest memory: {0}")]
    Memory(#[from] io::Error),
}

pub struct DriverQueue {
    memory: Arc<GuestMemory>,
    size: u16,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    free: Vec<u16>,
    /// Descriptors of each outstanding chain, by head.
    chains: Vec<Vec<u16>>,
    avail_idx: u16,
    /// `avail_idx` when the device was last notified (or had said it
    /// needed no notification).
    notified_idx: u16,
    last_used: u16,
    /// VIRTIO_RING_F_EVENT_IDX negotiated: kicks and interrupts are
    /// suppressed through the avail_event and used_event fields.
    event_idx: bool,
    pub kick: EventFd,
    pub call: EventFd,
}

impl DriverQueue {
    /// Lays out a queue of `size` (a power of two) in `memory`.
    pub fn allocate(memory: &mut GuestMemory, size: u16) -> io::Result<(u64, u64, u64)> {
        assert!(size.is_power_of_two(), "queue sizes are powers of two");
        let n = u64::from(size);
        let desc = memory.alloc((DESC_SIZE * n) as usize, 16)?;
        let avail = memory.alloc((6 + 2 * n) as usize, 2)?;
        let used = memory.alloc((6 + 8 * n) as usize, 4)?;
        Ok((desc, avail, used))
    }

    pub fn new(memory: Arc<GuestMemory>, size: u16, layout: (u64, u64, u64)) -> io::Result<DriverQueue> {
        let (desc_table, avail_ring, used_ring) = layout;
        Ok(DriverQueue {
            memory,
            size,
            desc_table,
            avail_ring,
            used_ring,
            free: (0..size).rev().collect(),
            chains: vec![Vec::new(); size as usize],
            avail_idx: 0,
            notified_idx: 0,
            last_used: 0,
            event_idx: false,
            kick: EventFd::new(EFD_NONBLOCK)?,
            call: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn size(&self) -> u16 {
        self.size
    }

    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Makes a chain of device-readable then device-writable buffers
    /// available; returns its head.
    pub fn add_chain(&mut self, readable: &[(u64, u32)], writable: &[(u64, u32)]) -> Result<u16, QueueError> {
        let count = readable.len() + writable.len();
        if count == 0 {
            return Err(QueueError::Empty);
        }
        if self.free.len() < count {
            return Err(QueueError::Full(count));
        }
        let indices: Vec<u16> = (0..count).map(|_| self.free.pop().expect("counted")).collect();
        let buffers = readable.iter().map(|&(a, l)| (a, l, 0)).chain(writable.iter().map(|&(a, l)| (a, l, VIRTQ_DESC_F_WRITE)));
        for (i, (addr, len, flags)) in buffers.enumerate() {
            let last = i + 1 == count;
            let desc = RawDesc {
                addr,
                len,
                flags: flags | if last { 0 } else { VIRTQ_DESC_F_NEXT },
                next: if last { 0 } else { indices[i + 1] },
            };
            self.write_desc(indices[i], desc)?;
        }
        let head = indices[0];
        self.chains[head as usize] = indices;
        self.publish(head)?;
        Ok(head)
    }

    /// Publishes descriptors exactly as given (they occupy table slots
    /// starting at a free one, `next` fields untouched).
    pub fn add_raw_chain(&mut self, descs: &[RawDesc]) -> Result<u16, QueueError> {
        if descs.is_empty() {
            return Err(QueueError::Empty);
        }
        if self.free.len() < descs.len() {
            return Err(QueueError::Full(descs.len()));
        }
        let indices: Vec<u16> = (0..descs.len()).map(|_| self.free.pop().expect("counted")).collect();
        for (&index, &desc) in indices.iter().zip(descs) {
            self.write_desc(index, desc)?;
        }
        let head = indices[0];
        self.chains[head as usize] = indices;
        self.publish(head)?;
        Ok(head)
    }

    fn write_desc(&self, index: u16, desc: RawDesc) -> io::Result<()> {
        let mut bytes = [0u8; DESC_SIZE as usize];
        bytes[0..8].copy_from_slice(&desc.addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&desc.len.to_le_bytes());
        bytes[12..14].copy_from_slice(&desc.flags.to_le_bytes());
        bytes[14..16].copy_from_slice(&desc.next.to_le_bytes());
        self.memory.write(self.desc_table + DESC_SIZE * u64::from(index), &bytes)
    }

    fn publish(&mut self, head: u16) -> io::Result<()> {
        let slot = u64::from(self.avail_idx % self.size);
        self.memory.write(self.avail_ring + 4 + 2 * slot, &head.to_le_bytes())?;
        // The device must see the descriptors and the ring entry before the
        // new index (virtio 1.x 2.7.13).
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.memory.store_u16(self.avail_ring + 2, self.avail_idx)
    }

    /// The available index this driver has published.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Writes `idx` as the available index, whatever chains are behind it
    /// (a broken or hostile driver; `idx` far ahead of the device breaks
    /// the queue), and notifies the device whatever EVENT_IDX says.
    /// `publish_avail_idx(avail_idx())` puts the true index back.
    pub fn publish_avail_idx(&self, idx: u16) -> io::Result<()> {
        fence(Ordering::Release);
        self.memory.store_u16(self.avail_ring + 2, idx)?;
        fence(Ordering::SeqCst);
        self.kick.write(1)
    }

    /// With EVENT_IDX the device says where it wants kicks (avail_event)
    /// and the driver where it wants interrupts (used_event).
    pub fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    /// Notifies the device of the chains published since the last call,
    /// unless it asked not to be (EVENT_IDX: its avail_event is not among
    /// them), as Linux's virtqueue_kick_prepare() decides.
    pub fn kick(&mut self) -> io::Result<()> {
        let old = self.notified_idx;
        let new = self.avail_idx;
        self.notified_idx = new;
        if self.event_idx {
            // The new avail index must be visible before avail_event is
            // read, or a device going to sleep could miss both.
            fence(Ordering::SeqCst);
            let avail_event = self.memory.load_u16(self.used_ring + 4 + 8 * u64::from(self.size))?;
            if !need_event(avail_event, new, old) {
                return Ok(());
            }
        }
        self.kick.write(1)
    }

    /// Whether the device has returned a chain not yet popped.
    pub fn has_used(&self) -> bool {
        self.memory.load_u16(self.used_ring + 2).map_or(true, |used| used != self.last_used)
    }

    /// Asks for an interrupt at the next used chain (EVENT_IDX: sets
    /// used_event; without it interrupts are never suppressed); true when
    /// a used chain is already waiting, so the caller should not sleep.
    /// Until the next call, used chains raise no interrupts: a driver that
    /// is busy collecting them does not want to be woken for each.
    pub fn enable_interrupts(&self) -> io::Result<bool> {
        if self.event_idx {
            self.memory.store_u16(self.avail_ring + 4 + 2 * u64::from(self.size), self.last_used)?;
            fence(Ordering::SeqCst);
        }
        Ok(self.has_used())
    }

    /// The next chain the device has finished with: its head and the
    /// number of bytes the device wrote. Frees its descriptors.
    pub fn pop_used(&mut self) -> Option<(u16, u32)> {
        let used_idx = self.memory.load_u16(self.used_ring + 2).ok()?;
        if used_idx == self.last_used {
            return None;
        }
        fence(Ordering::Acquire);
        let slot = u64::from(self.last_used % self.size);
        let mut elem = [0u8; 8];
        self.memory.read(self.used_ring + 4 + 8 * slot, &mut elem).ok()?;
        self.last_used = self.last_used.wrapping_add(1);
        let id = u32::from_le_bytes(elem[0..4].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(elem[4..8].try_into().expect("4 bytes"));
        let head = u16::try_from(id).ok().filter(|&h| h < self.size).expect("the device returned a head it was never given");
        let chain = std::mem::take(&mut self.chains[head as usize]);
        assert!(!chain.is_empty(), "the device returned chain {head} twice");
        self.free.extend(chain);
        Some((head, len))
    }
}

/// vring_need_event() of the virtio spec (2.7.10): whether moving an index
/// from `old` to `new` passes `event`.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn need_event_fires_when_the_index_passes_the_event() {
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 9, 3));
        assert!(!need_event(5, 5, 3));
        assert!(!need_event(9, 6, 5));
        // Across the wrap of the 16-bit indexes.
        assert!(need_event(0xffff, 2, 0xfffe));
        assert!(!need_event(3, 2, 0xfffe));
    }
}
