//! vhost-tls: the host side of the virtio-tls device.
//!
//! A vhost-user backend that owns the guest's TLS connections: it speaks
//! the virtio-tls protocol (`spec/virtio-tls.md`) with the guest driver,
//! resolves and connects under the operator's policy, and runs handshakes
//! and record crypto with rustls (through `tls-engine`).

pub mod backend;
pub mod control;
pub mod device;
pub mod events;
pub mod limits;
pub mod listener;
pub mod queues;
pub mod sandbox;
pub mod server;
pub mod socket;
pub mod sockopt;
pub mod telemetry;

pub use backend::VhostTlsBackend;
pub use device::{DeviceShape, SocketReport};
pub use server::{ListenOn, Server, ServerError};
