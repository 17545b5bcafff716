//! Guest memory for the harness: a memfd shared with the backend through
//! VHOST_USER_SET_MEM_TABLE, mapped here at guest physical address 0.
//!
//! The backend reads and writes this memory concurrently, so it is only
//! ever touched through raw-pointer copies and atomics, never through Rust
//! references to its bytes.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use memmap2::MmapRaw;

pub struct GuestMemory {
    file: File,
    map: MmapRaw,
    size: usize,
    /// Next free byte for `alloc`.
    next: usize,
}

impl GuestMemory {
    pub fn new(size: usize) -> io::Result<GuestMemory> {
        let fd = rustix::fs::memfd_create("vhost-tls-harness-guest", rustix::fs::MemfdFlags::CLOEXEC)?;
        let file = File::from(fd);
        file.set_len(size as u64)?;
        let map = MmapRaw::map_raw(&file)?;
        Ok(GuestMemory { file, map, size, next: 0 })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Where guest address 0 is mapped in this process (what QEMU passes as
    /// `userspace_addr`, and how vring addresses are given).
    pub fn host_address(&self) -> u64 {
        self.map.as_mut_ptr() as u64
    }

    /// Reserves `len` bytes aligned to `align` (a power of two); the memory
    /// is never given back, which suits a test's lifetime.
    pub fn alloc(&mut self, len: usize, align: usize) -> io::Result<u64> {
        let start = self.next.next_multiple_of(align);
        let end = start.checked_add(len).filter(|&end| end <= self.size);
        let end = end.ok_or_else(|| io::Error::new(io::ErrorKind::OutOfMemory, "guest memory exhausted"))?;
        self.next = end;
        Ok(start as u64)
    }

    fn range(&self, addr: u64, len: usize) -> io::Result<*mut u8> {
        let start = usize::try_from(addr).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        match start.checked_add(len) {
            Some(end) if end <= self.size => {
                // SAFETY: start + len is within the mapping checked just above.
                Ok(unsafe { self.map.as_mut_ptr().add(start) })
            }
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{len} bytes at {addr:#x} are outside guest memory"))),
        }
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        let dst = self.range(addr, bytes.len())?;
        // SAFETY: dst is valid for bytes.len() bytes (range checked) and
        // cannot overlap a Rust-owned slice; the backend may access it at
        // the same time, as hardware would, which is why no reference to
        // guest memory is ever formed.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len()) };
        Ok(())
    }

    pub fn read(&self, addr: u64, bytes: &mut [u8]) -> io::Result<()> {
        let src = self.range(addr, bytes.len())?;
        // SAFETY: as in `write`, with the copy going the other way.
        unsafe { std::ptr::copy_nonoverlapping(src, bytes.as_mut_ptr(), bytes.len()) };
        Ok(())
    }

    /// A ring index shared with the device (`avail.idx`, `used.idx`).
    pub fn atomic_u16(&self, addr: u64) -> io::Result<&AtomicU16> {
        if !addr.is_multiple_of(2) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "misaligned ring index"));
        }
        let ptr = self.range(addr, 2)?;
        // SAFETY: in bounds, 2-byte aligned, and the mapping lives as long
        // as `self`; AtomicU16 has the layout of u16 and makes concurrent
        // access by the device well-defined.
        Ok(unsafe { &*(ptr as *const AtomicU16) })
    }

    pub fn load_u16(&self, addr: u64) -> io::Result<u16> {
        Ok(self.atomic_u16(addr)?.load(Ordering::Acquire))
    }

    pub fn store_u16(&self, addr: u64, value: u16) -> io::Result<()> {
        self.atomic_u16(addr)?.store(value, Ordering::Release);
        Ok(())
    }
}
