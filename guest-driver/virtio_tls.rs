// SPDX-License-Identifier: GPL-2.0

//! virtio-tls guest driver (first step: binds the device).
//!
//! Binds the virtio-tls device, sets up its virtqueues from the spec's wire
//! definitions (`spec/src/wire.rs`, the same file the host backend
//! compiles), reads its configuration and sets DRIVER_OK. The IPPROTO_TLS
//! socket family is the next step (see guest-driver/README.md).
//!
//! Rust-for-Linux 6.12 has no virtio abstractions: this module calls the
//! virtio core through the generated bindings (added to the guest kernel by
//! qemu/kernel-patches/). What `virtio_config.h` does in static inline
//! functions (`virtio_find_vqs`, `virtio_device_ready`, `virtio_cread`) is
//! done here through the `vdev->config` operations table they call, so no C
//! is needed.

use core::ffi::{c_int, c_void};
use core::ptr;
use kernel::bindings;
use kernel::c_str;
use kernel::str::CStr;
use kernel::prelude::*;

#[allow(dead_code, unreachable_pub)]
#[path = "../spec/src/wire.rs"]
mod wire;

module! {
    type: VirtioTls,
    name: "virtio_tls",
    author: "vhost-tls",
    description: "virtio-tls: IPPROTO_TLS sockets through the hypervisor",
    license: "GPL",
}

/// `VIRTIO_DEV_ANY_ID`.
const ANY_VENDOR: u32 = 0xffff_ffff;

/// Statics the virtio core reads through raw pointers.
struct Shared<T>(core::cell::UnsafeCell<T>);
// SAFETY: the wrapped C structures are written once before registration
// and afterwards only read by the virtio core, under its own locking.
unsafe impl<T> Sync for Shared<T> {}

/// The id table: the virtio-tls id, any vendor, then the terminator.
/// The id is the spec's default (a module parameter needs the `params`
/// support of later Rust-for-Linux `module!` macros).
static ID_TABLE: [bindings::virtio_device_id; 2] = [
    bindings::virtio_device_id { device: wire::VIRTIO_ID_TLS_DEFAULT, vendor: ANY_VENDOR },
    bindings::virtio_device_id { device: 0, vendor: 0 },
];

static DRIVER: Shared<bindings::virtio_driver> =
    // SAFETY: virtio_driver is a C struct for which all-zero is valid
    // (null pointers, no callbacks); the fields that matter are set in init.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));

const QUEUE_NAMES: [&CStr; 4] = [c_str!("control"), c_str!("event"), c_str!("rx0"), c_str!("tx0")];

unsafe extern "C" fn probe(vdev: *mut bindings::virtio_device) -> c_int {
    // SAFETY: the virtio core passes a live device whose `config` ops table
    // is set by its transport (virtio-pci) for the duration of the call.
    let ops = unsafe { &*(*vdev).config };
    let mut config_bytes = [0u8; wire::VirtioTlsConfig::SIZE];
    let Some(get) = ops.get else { return -(bindings::ENODEV as c_int) };
    // virtio-pci reads config in 1, 2, 4 or 8-byte units only (anything
    // else is a BUG()), as virtio_cread_bytes() does: 4 at a time.
    for (index, word) in config_bytes.chunks_mut(4).enumerate() {
        // SAFETY: `get` copies 4 config bytes into a 4-byte chunk of ours.
        unsafe { get(vdev, (index * 4) as u32, word.as_mut_ptr().cast::<c_void>(), 4) };
    }
    let Some(config) = wire::VirtioTlsConfig::decode(&config_bytes) else { return -(bindings::EINVAL as c_int) };
    if config.num_queue_pairs == 0 {
        pr_err!("the device offers no data queues\n");
        return -(bindings::EINVAL as c_int);
    }

    let mut vqs: [*mut bindings::virtqueue; 4] = [ptr::null_mut(); 4];
    let mut infos: [bindings::virtqueue_info; 4] = QUEUE_NAMES.map(|name| bindings::virtqueue_info {
        name: name.as_char_ptr(),
        callback: None,
        ctx: false,
    });
    let Some(find_vqs) = ops.find_vqs else { return -(bindings::ENODEV as c_int) };
    // SAFETY: both arrays hold `nvqs` entries and outlive the call, as the
    // inline virtio_find_vqs() this stands for requires.
    let err = unsafe { find_vqs(vdev, 4, vqs.as_mut_ptr(), infos.as_mut_ptr(), ptr::null_mut()) };
    if err != 0 {
        pr_err!("cannot set up virtqueues: {}\n", err);
        return err;
    }
    // virtio_device_ready(): DRIVER_OK on top of the current status.
    if let (Some(get_status), Some(set_status)) = (ops.get_status, ops.set_status) {
        // SAFETY: status accessors of a live device.
        unsafe { set_status(vdev, get_status(vdev) | bindings::VIRTIO_CONFIG_S_DRIVER_OK as u8) };
    }
    pr_info!(
        "device ready: {} sockets, {} queue pair(s), {} bytes per socket, TLS {}..{}\n",
        config.max_sockets,
        config.num_queue_pairs,
        config.socket_buf_size,
        config.tls_version_min,
        config.tls_version_max
    );
    0
}

unsafe extern "C" fn remove(vdev: *mut bindings::virtio_device) {
    // SAFETY: as in probe; reset stops the device before its queues go.
    unsafe {
        let ops = &*(*vdev).config;
        if let Some(reset) = ops.reset {
            reset(vdev);
        }
        if let Some(del_vqs) = ops.del_vqs {
            del_vqs(vdev);
        }
    }
    pr_info!("device removed\n");
}

struct VirtioTls;

impl kernel::Module for VirtioTls {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let driver = DRIVER.0.get();
        // SAFETY: init runs once, before the driver is registered, so
        // nothing else reads DRIVER while it is filled in.
        let err = unsafe {
            (*driver).driver.name = c_str!("virtio_tls").as_char_ptr();
            (*driver).id_table = ID_TABLE.as_ptr();
            (*driver).probe = Some(probe);
            (*driver).remove = Some(remove);
            bindings::__register_virtio_driver(driver, module.as_ptr())
        };
        if err != 0 {
            return Err(Error::from_errno(err));
        }
        pr_info!("loaded (virtio id {})\n", wire::VIRTIO_ID_TLS_DEFAULT);
        Ok(VirtioTls)
    }
}

impl Drop for VirtioTls {
    fn drop(&mut self) {
        // SAFETY: registered in init; unregistering removes bound devices.
        unsafe { bindings::unregister_virtio_driver(DRIVER.0.get()) };
    }
}
