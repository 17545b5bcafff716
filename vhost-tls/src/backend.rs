//! The vhost-user face of the device: features, config space, memory, and
//! the event loop glue. The device state sits behind its own mutex, so
//! GET_CONFIG and friends never wait for socket work.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tls_engine::Policy;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_tls_spec::{self as wire, VirtioTlsConfig};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use crate::device::{Device, DeviceShape, SocketReport};
use crate::queues::Memory;

/// Descriptors per virtqueue the device accepts at most.
pub const MAX_QUEUE_SIZE: usize = 1024;

pub struct VhostTlsBackend {
    shape: DeviceShape,
    config: VirtioTlsConfig,
    device: Mutex<Device>,
    exit_consumer: EventConsumer,
    exit_notifier: EventNotifier,
}

impl VhostTlsBackend {
    pub fn new(policy: Arc<Policy>, shape: DeviceShape) -> io::Result<VhostTlsBackend> {
        if shape.queue_pairs == 0 || shape.queue_pairs > wire::MAX_QUEUE_PAIRS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("queue pairs must be 1..={}", wire::MAX_QUEUE_PAIRS),
            ));
        }
        let config = VirtioTlsConfig {
            max_sockets: policy.limits.max_sockets,
            socket_buf_size: policy.limits.socket_buffer_bytes,
            num_queue_pairs: shape.queue_pairs,
            tls_version_min: policy.min_version.wire_value() as u8,
            tls_version_max: policy.max_version.wire_value() as u8,
            policy_flags: if policy.server.listen.is_empty() {
                wire::VIRTIO_TLS_POLICY_CLIENT
            } else {
                wire::VIRTIO_TLS_POLICY_CLIENT | wire::VIRTIO_TLS_POLICY_SERVER
            },
            max_hostname_len: wire::MAX_HOSTNAME_LEN as u32,
            ..Default::default()
        };
        let (exit_consumer, exit_notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK)?;
        Ok(VhostTlsBackend { device: Mutex::new(Device::new(policy, shape.clone())?), shape, config, exit_consumer, exit_notifier })
    }

    /// Event id of the device's own network readiness in the worker's epoll
    /// (ids up to the number of queues belong to vhost-user-backend).
    pub fn reactor_event(&self) -> u16 {
        self.num_queues() as u16 + 1
    }

    pub fn reactor_fd(&self) -> std::os::fd::RawFd {
        self.device().reactor_fd()
    }

    /// Ends the worker thread (on signal or when the front end has gone).
    pub fn request_exit(&self) {
        let _ = self.exit_notifier.notify();
    }

    pub fn sockets(&self) -> Vec<SocketReport> {
        self.device().report()
    }

    /// Runs `f` on the device, between two wake-ups of the worker (for the
    /// control socket: reloads, metrics, the effective policy).
    pub fn with_device<R>(&self, f: impl FnOnce(&mut Device) -> R) -> R {
        f(&mut self.device())
    }

    fn device(&self) -> MutexGuard<'_, Device> {
        // A panic while holding the lock is a bug already reported; the
        // state is still the best there is.
        self.device.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl VhostUserBackend for VhostTlsBackend {
    type Bitmap = ();
    type Vring = VringRwLock<Memory>;

    fn num_queues(&self) -> usize {
        wire::num_queues(self.shape.queue_pairs) as usize
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        tracing::debug!("front end read the device features");
        (1 << wire::VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << wire::VIRTIO_TLS_F_IPV6)
            | (1 << wire::VIRTIO_TLS_F_HOSTNAME)
            | (1 << wire::VIRTIO_TLS_F_SERVER)
            | (1 << wire::VIRTIO_TLS_F_SOCKOPT)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        tracing::debug!("front end read the protocol features");
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ
    }

    fn acked_features(&self, features: u64) {
        tracing::info!(features = format_args!("{features:#x}"), "front end acked features");
    }

    fn set_event_idx(&self, enabled: bool) {
        tracing::debug!(enabled, "event index");
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        tracing::debug!(offset, size, "front end read the config space");
        let bytes = self.config.encode();
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        bytes[start..end].to_vec()
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap<()>>) -> io::Result<()> {
        {
            use vm_memory::{GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};
            let guard = mem.memory();
            let bytes: u64 = guard.iter().map(|region| region.len()).sum();
            tracing::info!(regions = guard.num_regions(), mib = bytes >> 20, "guest memory table");
        }
        self.device().set_memory(mem);
        Ok(())
    }

    fn reset_device(&self) {
        self.device().reset();
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit_consumer.try_clone().ok()?, self.exit_notifier.try_clone().ok()?))
    }

    fn handle_event(&self, device_event: u16, _evset: EventSet, vrings: &[Self::Vring], _thread_id: usize) -> io::Result<()> {
        let reactor = self.reactor_event();
        self.device().handle_event(device_event, reactor, vrings);
        Ok(())
    }
}
