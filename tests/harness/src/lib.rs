//! A test harness that plays the guest side of virtio-tls: the vhost-user
//! front end (as QEMU), guest memory in a memfd, driver-side split
//! virtqueues, and a driver that speaks the virtio-tls protocol; plus the
//! real TLS peers and throwaway certificates the tests use.

pub mod bench;
pub mod driver;
pub mod frontend;
pub mod guest_memory;
pub mod peers;
pub mod pki;
pub mod testbed;
pub mod virtqueue;
