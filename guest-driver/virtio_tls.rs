// SPDX-License-Identifier: GPL-2.0

//! virtio-tls guest driver: binds the virtio-tls device and registers
//! IPPROTO_TLS (205) SOCK_STREAM for AF_INET and AF_INET6, so that guest
//! programs get TLS from the hypervisor through the socket API (SSA).
//!
//! The parts, in the manner of drivers/gpu/nova-core:
//! - `virtio.rs`: the virtio core, as a safe `VirtioDevice` and
//!   `Virtqueue`s that own what is posted on them;
//! - `net.rs`: protocol registration and the `proto_ops` trampolines,
//!   which turn the core's pointers into safe handles once;
//! - `device.rs`: the bound device, its liveness, restarts and socket
//!   generations;
//! - `socket.rs`: the socket operations, safe code only;
//! - `flow.rs`: credit and event rules, shared with the test harness;
//! - `sync.rs`: the driver lock, wait queue, clocks and watchdog thread;
//! - `bindings.rs`: the module's own bindings (no kernel patch);
//! - `compat.rs`: what differs between the kernel versions it builds for.
//!
//! Requests and data follow `spec/virtio-tls.md`; the wire layout is
//! `spec/src/wire.rs`, the same file the host backend compiles.

use kernel::prelude::*;

mod bindings;
#[macro_use]
mod compat;
mod device;
#[allow(unreachable_pub)]
mod flow;
mod net;
mod socket;
mod sync;
mod virtio;

#[allow(dead_code, unreachable_pub)]
#[path = "../spec/src/wire.rs"]
mod wire;

compat::driver_module! {
    type: VirtioTls,
    name: "virtio_tls",
    author: "vhost-tls",
    description: "virtio-tls: IPPROTO_TLS sockets through the hypervisor",
    license: "GPL",
    alias: ["net-pf-2-proto-205-type-1", "net-pf-10-proto-205-type-1"],
}

/// The virtio id to bind (spec 2.1, DRV-1.1): the spec's default unless
/// the module is built with VIRTIO_TLS_DEVICE_ID=N. A build-time choice,
/// because the 6.12 `module!` macro has no module parameters.
const DEVICE_ID: u32 = match option_env!("VIRTIO_TLS_DEVICE_ID") {
    Some(digits) => parse_id(digits),
    None => wire::VIRTIO_ID_TLS_DEFAULT,
};

/// Decimal digits to a number, at compile time; anything else stops the
/// build.
const fn parse_id(digits: &str) -> u32 {
    let bytes = digits.as_bytes();
    assert!(!bytes.is_empty(), "VIRTIO_TLS_DEVICE_ID is empty");
    let mut value = 0u32;
    let mut at = 0;
    while at < bytes.len() {
        assert!(bytes[at].is_ascii_digit(), "VIRTIO_TLS_DEVICE_ID must be a decimal number");
        value = value * 10 + (bytes[at] - b'0') as u32;
        at += 1;
    }
    value
}

/// The device features the driver uses (spec 2.3): accepted when offered.
const FEATURES: [core::ffi::c_uint; 4] =
    [wire::VIRTIO_TLS_F_IPV6, wire::VIRTIO_TLS_F_HOSTNAME, wire::VIRTIO_TLS_F_SERVER, wire::VIRTIO_TLS_F_SOCKOPT];

struct VirtioTls {
    /// Probes a silent device while sockets are open (device::watch).
    watchdog: Option<sync::Ticker>,
    /// The driver lock, freed last.
    device_lock: Option<sync::Installed<Option<device::Device>>>,
}

impl kernel::Module for VirtioTls {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // SAFETY: module load, before anything that waits or wakes (the
        // driver is registered with no core yet).
        unsafe { sync::WAITERS.init(c"virtio_tls_waiters") };
        let device_lock = device::init()?;
        virtio::register(module)?;
        if let Err(error) = net::register(module) {
            virtio::unregister();
            return Err(error);
        }
        let watchdog = match sync::Ticker::start(c"virtio_tls_watch", device::watch) {
            Ok(watchdog) => watchdog,
            Err(error) => {
                net::unregister();
                virtio::unregister();
                return Err(error);
            }
        };
        pr_info!("loaded (virtio id {}, IPPROTO_TLS {})\n", DEVICE_ID, wire::IPPROTO_TLS);
        Ok(VirtioTls { watchdog: Some(watchdog), device_lock: Some(device_lock) })
    }
}

impl Drop for VirtioTls {
    fn drop(&mut self) {
        // Sockets hold a module reference, so none is open when this runs.
        drop(self.watchdog.take());
        net::unregister();
        virtio::unregister();
        drop(self.device_lock.take());
    }
}
