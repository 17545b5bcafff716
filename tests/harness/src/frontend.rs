//! The front-end side of vhost-user, as QEMU plays it: connect to the
//! backend's socket, negotiate features, share guest memory, set up and
//! enable every virtqueue.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};

use crate::guest_memory::GuestMemory;
use crate::virtqueue::DriverQueue;

/// Device features the harness driver understands: virtio 1.x, the
/// device-specific bits and EVENT_IDX (as Linux guests negotiate it). Not
/// INDIRECT_DESC: it never builds indirect tables.
const DEVICE_FEATURE_BITS: u64 = (1 << 24) - 1;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

pub struct VhostUserDevice {
    frontend: Frontend,
    memory: Arc<GuestMemory>,
    queues: Vec<DriverQueue>,
    acked_features: u64,
    /// How long to poll the used rings before sleeping for an interrupt.
    busy_poll: Duration,
}

fn vhost_error(error: vhost::Error) -> io::Error {
    io::Error::other(format!("vhost-user: {error}"))
}

impl VhostUserDevice {
    /// Connects (retrying while the backend comes up, up to 10 s) and
    /// brings the device to the point where all queues run, with EVENT_IDX
    /// when the backend offers it.
    pub fn connect(socket_path: &Path, memory: GuestMemory, num_queues: usize, queue_size: u16) -> io::Result<VhostUserDevice> {
        Self::connect_with(socket_path, memory, num_queues, queue_size, true)
    }

    /// As `connect`; without `event_idx` the driver kicks after every
    /// publication and takes every interrupt (for callers that write the
    /// rings themselves, such as the descriptor-chain fuzzer, and so do
    /// not keep the indexes EVENT_IDX needs).
    pub fn connect_with(
        socket_path: &Path,
        mut memory: GuestMemory,
        num_queues: usize,
        queue_size: u16,
        event_idx: bool,
    ) -> io::Result<VhostUserDevice> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut frontend = loop {
            match Frontend::connect(socket_path, num_queues as u64) {
                Ok(frontend) => break frontend,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(error) => return Err(vhost_error(error)),
            }
        };
        frontend.set_owner().map_err(vhost_error)?;
        let offered = frontend.get_features().map_err(vhost_error)?;
        let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let wanted_ring = if event_idx { VIRTIO_RING_F_EVENT_IDX } else { 0 };
        let acked_features = offered & (DEVICE_FEATURE_BITS | wanted_ring | VIRTIO_F_VERSION_1 | protocol);
        frontend.set_features(acked_features).map_err(vhost_error)?;
        if offered & protocol != 0 {
            let wanted = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ;
            let features = frontend.get_protocol_features().map_err(vhost_error)?;
            frontend.set_protocol_features(features & wanted).map_err(vhost_error)?;
            if features.contains(VhostUserProtocolFeatures::MQ) {
                let max = frontend.get_queue_num().map_err(vhost_error)?;
                if (max as usize) < num_queues {
                    return Err(io::Error::other(format!("the backend offers {max} queues, {num_queues} wanted")));
                }
            }
        }

        let layouts = (0..num_queues).map(|_| DriverQueue::allocate(&mut memory, queue_size)).collect::<io::Result<Vec<_>>>()?;
        let memory = Arc::new(memory);
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: memory.size() as u64,
            userspace_addr: memory.host_address(),
            mmap_offset: 0,
            mmap_handle: memory.fd(),
        };
        frontend.set_mem_table(&[region]).map_err(vhost_error)?;

        let mut queues = Vec::with_capacity(num_queues);
        for (index, layout) in layouts.into_iter().enumerate() {
            let mut queue = DriverQueue::new(memory.clone(), queue_size, layout)?;
            queue.set_event_idx(acked_features & VIRTIO_RING_F_EVENT_IDX != 0);
            // Like QEMU, vring addresses are given as front-end virtual
            // addresses; the backend translates them with the memory table.
            let va = |gpa: u64| memory.host_address() + gpa;
            let config = VringConfigData {
                queue_max_size: queue_size,
                queue_size,
                flags: 0,
                desc_table_addr: va(queue.desc_table),
                used_ring_addr: va(queue.used_ring),
                avail_ring_addr: va(queue.avail_ring),
                log_addr: None,
            };
            frontend.set_vring_num(index, queue_size).map_err(vhost_error)?;
            frontend.set_vring_base(index, 0).map_err(vhost_error)?;
            frontend.set_vring_addr(index, &config).map_err(vhost_error)?;
            frontend.set_vring_call(index, &queue.call).map_err(vhost_error)?;
            frontend.set_vring_kick(index, &queue.kick).map_err(vhost_error)?;
            if acked_features & protocol != 0 {
                frontend.set_vring_enable(index, true).map_err(vhost_error)?;
            }
            queues.push(queue);
        }
        Ok(VhostUserDevice { frontend, memory, queues, acked_features, busy_poll: Duration::ZERO })
    }

    /// Stops queue `index` and starts it again where the device left off
    /// (GET_VRING_BASE, then the set-up of `connect`), as QEMU does when
    /// the guest resets a device: a backend that gave up on a broken queue
    /// serves it again.
    pub fn restart_queue(&mut self, index: usize) -> io::Result<()> {
        let base = self.frontend.get_vring_base(index).map_err(vhost_error)?;
        let queue = &self.queues[index];
        let va = |gpa: u64| self.memory.host_address() + gpa;
        let config = VringConfigData {
            queue_max_size: queue.size(),
            queue_size: queue.size(),
            flags: 0,
            desc_table_addr: va(queue.desc_table),
            used_ring_addr: va(queue.used_ring),
            avail_ring_addr: va(queue.avail_ring),
            log_addr: None,
        };
        self.frontend.set_vring_num(index, queue.size()).map_err(vhost_error)?;
        self.frontend.set_vring_base(index, base as u16).map_err(vhost_error)?;
        self.frontend.set_vring_addr(index, &config).map_err(vhost_error)?;
        self.frontend.set_vring_call(index, &queue.call).map_err(vhost_error)?;
        self.frontend.set_vring_kick(index, &queue.kick).map_err(vhost_error)?;
        if self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            self.frontend.set_vring_enable(index, true).map_err(vhost_error)?;
        }
        Ok(())
    }

    /// Polls the used rings for up to `duration` before each sleep.
    pub fn set_busy_poll(&mut self, duration: Duration) {
        self.busy_poll = duration;
    }

    pub fn features(&self) -> u64 {
        self.acked_features
    }

    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    pub fn queue_mut(&mut self, index: usize) -> &mut DriverQueue {
        &mut self.queues[index]
    }

    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Reads `len` bytes of device config space at `offset`.
    pub fn get_config(&mut self, offset: u32, len: u32) -> io::Result<Vec<u8>> {
        let buf = vec![0u8; len as usize];
        let (_, bytes) = self.frontend.get_config(offset, len, VhostUserConfigFlags::WRITABLE, &buf).map_err(vhost_error)?;
        Ok(bytes)
    }

    /// Waits until the device signals any queue, or `timeout` passes.
    pub fn wait_for_interrupt(&self, timeout: Duration) {
        // A guest that polls (as Linux's busy_poll does for sockets) sees
        // an answer that comes soon without an interrupt and a wake-up.
        if !self.busy_poll.is_zero() {
            let until = std::time::Instant::now() + self.busy_poll.min(timeout);
            while std::time::Instant::now() < until {
                if self.queues.iter().any(DriverQueue::has_used) {
                    return;
                }
                std::hint::spin_loop();
            }
        }
        // Interrupts are wanted only now, before sleeping; a chain used in
        // the meantime means there is no need to sleep at all.
        let mut pending = false;
        for queue in &self.queues {
            pending |= queue.enable_interrupts().unwrap_or(true);
        }
        if pending {
            return;
        }
        let mut fds: Vec<libc::pollfd> =
            self.queues.iter().map(|q| libc::pollfd { fd: q.call.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
        let millis = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid, exclusively borrowed array of pollfd for
        // the duration of the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
        if ready > 0 {
            for queue in &self.queues {
                // Non-blocking: clears the counter if it was signalled.
                let _ = queue.call.read();
            }
        }
    }
}
