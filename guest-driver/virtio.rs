// SPDX-License-Identifier: GPL-2.0

//! The only user of the virtio bindings: the driver's registration with
//! the virtio core, a safe `VirtioDevice` (configuration, features,
//! status, reset, queues) and `Virtqueue`s that own what is posted on
//! them. Rust-for-Linux has no virtio abstractions (6.12 and 7.3 alike);
//! what `virtio_config.h` does in static inline functions
//! (`virtio_find_vqs`, `virtio_device_ready`, `virtio_cread_bytes`,
//! `virtio_has_feature`) is done here through the `vdev->config`
//! operations table they call, so no C is needed.

use crate::bindings;
use core::ffi::{c_int, c_uint, c_void};
use core::ptr::{self, NonNull};
use kernel::prelude::*;

/// A buffer posted on a virtqueue: the device reads `bytes[..readable]`
/// and may write `bytes[readable..]`. Posting hands it to the queue;
/// `Virtqueue::take_used` hands it back.
pub(crate) struct Packet {
    pub(crate) bytes: KVec<u8>,
    pub(crate) readable: usize,
}

impl Packet {
    /// A zeroed buffer of `len` bytes (kmalloc'd, so DMA-able, unlike the
    /// stack), the first `readable` of them for the device to read.
    pub(crate) fn new(len: usize, readable: usize) -> Result<KBox<Packet>> {
        let bytes = KVec::from_elem(0u8, len, GFP_KERNEL)?;
        Ok(KBox::new(Packet { bytes, readable: readable.min(len) }, GFP_KERNEL)?)
    }
}

/// A virtqueue of the bound device. Every buffer on it is a `Packet`
/// posted by `add`, so a used token is always one of those.
pub(crate) struct Virtqueue {
    vq: NonNull<bindings::virtqueue>,
}

// SAFETY: the virtio core allows a queue to be used from any task as long
// as calls are serialised; the device's owner (device.rs) uses its queues
// only under the driver lock.
unsafe impl Send for Virtqueue {}

impl Virtqueue {
    /// Posts `packet`; on failure (a full ring) it comes back with the error.
    pub(crate) fn add(&mut self, packet: KBox<Packet>) -> core::result::Result<(), (Error, KBox<Packet>)> {
        let total = packet.bytes.len();
        let readable = packet.readable;
        let base = packet.bytes.as_ptr() as *mut c_void;
        // SAFETY: plain C structs, set by sg_init_one before use.
        let mut out: bindings::scatterlist = unsafe { core::mem::zeroed() };
        // SAFETY: as above.
        let mut inp: bindings::scatterlist = unsafe { core::mem::zeroed() };
        let mut sgs: [*mut bindings::scatterlist; 2] = [ptr::null_mut(); 2];
        let (mut outs, mut ins) = (0u32, 0u32);
        // SAFETY: the byte ranges lie within the packet's heap buffer,
        // which the queue owns from here until take_used or detach_unused
        // returns it (KBox::into_raw below), so it stays valid and is not
        // written by us meanwhile.
        unsafe {
            if readable > 0 {
                bindings::sg_init_one(&mut out, base, readable as c_uint);
                sgs[0] = &mut out;
                outs = 1;
            }
            if total > readable {
                bindings::sg_init_one(&mut inp, base.cast::<u8>().add(readable).cast(), (total - readable) as c_uint);
                sgs[outs as usize] = &mut inp;
                ins = 1;
            }
        }
        let token = KBox::into_raw(packet);
        // SAFETY: a queue of the bound device (constructed only by
        // VirtioDevice::find_vqs); the scatterlists live through the call;
        // the token is the packet, taken back below or by take_used.
        let err = unsafe {
            bindings::virtqueue_add_sgs(self.vq.as_ptr(), sgs.as_mut_ptr(), outs, ins, token.cast(), bindings::VIRTIO_TLS_GFP_KERNEL)
        };
        if err != 0 {
            // SAFETY: not posted: still ours, from into_raw above.
            return Err((Error::from_errno(err), unsafe { KBox::from_raw(token) }));
        }
        Ok(())
    }

    /// Tells the device there are new buffers.
    pub(crate) fn kick(&mut self) {
        // SAFETY: a queue of the bound device.
        unsafe { bindings::virtqueue_kick(self.vq.as_ptr()) };
    }

    /// A buffer the device is done with, and how many bytes it wrote.
    pub(crate) fn take_used(&mut self) -> Option<(KBox<Packet>, usize)> {
        let mut len: c_uint = 0;
        // SAFETY: a queue of the bound device.
        let token = unsafe { bindings::virtqueue_get_buf(self.vq.as_ptr(), &mut len) };
        // SAFETY: every token on this queue is a KBox<Packet> from `add`.
        NonNull::new(token.cast::<Packet>()).map(|token| (unsafe { KBox::from_raw(token.as_ptr()) }, len as usize))
    }

    /// After a reset: a buffer the device never returned.
    fn detach_unused(&mut self) -> Option<KBox<Packet>> {
        // SAFETY: only called after the device was reset, as required.
        let token = unsafe { bindings::virtqueue_detach_unused_buf(self.vq.as_ptr()) };
        // SAFETY: as in take_used.
        NonNull::new(token.cast::<Packet>()).map(|token| unsafe { KBox::from_raw(token.as_ptr()) })
    }
}

/// The device's four queues (spec 2.2): control, event, and data queue
/// pair 0.
pub(crate) struct Queues {
    pub(crate) control: Virtqueue,
    pub(crate) event: Virtqueue,
    pub(crate) rx: Virtqueue,
    pub(crate) tx: Virtqueue,
}

/// A virtio device bound to this driver.
pub(crate) struct VirtioDevice {
    vdev: NonNull<bindings::virtio_device>,
}

// SAFETY: the device may be used from any task; its owner serialises
// calls (the driver lock), and the virtio core keeps it until remove().
unsafe impl Send for VirtioDevice {}

impl VirtioDevice {
    /// # Safety
    ///
    /// `vdev` is a device the virtio core bound to this driver (probe) and
    /// does not free before `remove` for it returns; the caller keeps the
    /// value no longer than that.
    unsafe fn from_raw(vdev: *mut bindings::virtio_device) -> Option<VirtioDevice> {
        NonNull::new(vdev).map(|vdev| VirtioDevice { vdev })
    }

    fn ops(&self) -> &bindings::virtio_config_ops {
        // SAFETY: a bound device's transport (virtio-pci) set its config
        // ops before probe, for the device's lifetime.
        unsafe { &*(*self.vdev.as_ptr()).config }
    }

    /// Reads the configuration space into `into` (a multiple of 4 bytes):
    /// virtio-pci reads 1, 2, 4 or 8 bytes at a time only (other lengths
    /// are a BUG()), so 4 at a time as virtio_cread_bytes() does.
    pub(crate) fn read_config(&self, into: &mut [u8]) -> Result {
        let get = self.ops().get.ok_or(ENODEV)?;
        for (index, word) in into.chunks_mut(4).enumerate() {
            let mut bytes = [0u8; 4];
            // SAFETY: `get` copies 4 config bytes into our 4-byte array.
            unsafe { get(self.vdev.as_ptr(), (index * 4) as c_uint, bytes.as_mut_ptr().cast(), 4) };
            word.copy_from_slice(&bytes[..word.len()]);
        }
        Ok(())
    }

    /// Whether feature `bit` was negotiated (virtio_has_feature()).
    pub(crate) fn has_feature(&self, bit: u32) -> bool {
        // SAFETY: a bound device, whose features the core set before probe.
        crate::compat::device_features(unsafe { &*self.vdev.as_ptr() }) & (1u64 << bit) != 0
    }

    /// Sets up the four queues; the event, receive and transmit queues
    /// wake waiters when the device returns a buffer (`on_used`, hard IRQ).
    pub(crate) fn find_vqs(&self) -> Result<Queues> {
        let find_vqs = self.ops().find_vqs.ok_or(ENODEV)?;
        let names = [c"control", c"event", c"rx0", c"tx0"];
        let mut vqs: [*mut bindings::virtqueue; 4] = [ptr::null_mut(); 4];
        let mut infos: [bindings::virtqueue_info; 4] =
            names.map(|name| bindings::virtqueue_info { name: name.as_ptr().cast(), callback: Some(on_used), ctx: false });
        // Control answers are awaited by the caller that asked.
        infos[0].callback = None;
        // SAFETY: both arrays hold 4 entries and outlive the call, as the
        // inline virtio_find_vqs() this stands for requires.
        let err = unsafe { find_vqs(self.vdev.as_ptr(), 4, vqs.as_mut_ptr(), infos.as_mut_ptr(), ptr::null_mut()) };
        if err != 0 {
            return Err(Error::from_errno(err));
        }
        let queue = |vq: *mut bindings::virtqueue| NonNull::new(vq).map(|vq| Virtqueue { vq }).ok_or(ENODEV);
        Ok(Queues { control: queue(vqs[0])?, event: queue(vqs[1])?, rx: queue(vqs[2])?, tx: queue(vqs[3])? })
    }

    /// virtio_device_ready(): DRIVER_OK on top of the current status.
    pub(crate) fn ready(&self) {
        let ops = self.ops();
        if let (Some(get_status), Some(set_status)) = (ops.get_status, ops.set_status) {
            // SAFETY: status accessors of a bound device.
            unsafe { set_status(self.vdev.as_ptr(), get_status(self.vdev.as_ptr()) | bindings::VIRTIO_CONFIG_S_DRIVER_OK as u8) };
        }
    }

    /// Resets the device (it stops using every buffer), frees what it had
    /// not returned, and deletes the queues.
    pub(crate) fn reset_and_delete(&self, queues: Option<Queues>) {
        // SAFETY: a bound device; resetting is always allowed.
        unsafe { bindings::virtio_reset_device(self.vdev.as_ptr()) };
        let Some(mut queues) = queues else { return };
        for queue in [&mut queues.control, &mut queues.event, &mut queues.rx, &mut queues.tx] {
            while queue.detach_unused().is_some() {}
        }
        if let Some(del_vqs) = self.ops().del_vqs {
            // SAFETY: the queues were made by find_vqs and are consumed
            // here: no handle to them remains.
            unsafe { del_vqs(self.vdev.as_ptr()) };
        }
    }

    /// After a reset, what virtio_device_restore() does before setting up
    /// queues: the features negotiated at probe again. False if the
    /// device refused them.
    pub(crate) fn renegotiate(&self) -> bool {
        let vdev = self.vdev.as_ptr();
        let ops = self.ops();
        // SAFETY: the virtio core's status and config operations, on a
        // bound device that was just reset.
        unsafe {
            bindings::virtio_add_status(vdev, bindings::VIRTIO_CONFIG_S_ACKNOWLEDGE);
            bindings::virtio_add_status(vdev, bindings::VIRTIO_CONFIG_S_DRIVER);
            let finalized = ops.finalize_features.is_some_and(|finalize| finalize(vdev) == 0);
            bindings::virtio_add_status(vdev, bindings::VIRTIO_CONFIG_S_FEATURES_OK);
            let status = ops.get_status.map_or(0, |get_status| get_status(vdev));
            finalized && status & bindings::VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0
        }
    }
}

/// `VIRTIO_DEV_ANY_ID`.
const ANY_VENDOR: u32 = 0xffff_ffff;

/// Statics the virtio core reads through raw pointers.
struct Shared<T>(core::cell::UnsafeCell<T>);
// SAFETY: written once in `register` before the core sees them, then only
// read by the core.
unsafe impl<T> Sync for Shared<T> {}

static ID_TABLE: [bindings::virtio_device_id; 2] = [
    bindings::virtio_device_id { device: crate::DEVICE_ID, vendor: ANY_VENDOR },
    bindings::virtio_device_id { device: 0, vendor: 0 },
];

static FEATURES: [c_uint; 4] = crate::FEATURES;

static DRIVER: Shared<bindings::virtio_driver> =
    // SAFETY: all-zero is a valid virtio_driver (null pointers, no
    // callbacks); `register` fills in what matters.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// Registers the driver: the core then probes matching devices.
pub(crate) fn register(module: &'static ThisModule) -> Result {
    let driver = DRIVER.0.get();
    // SAFETY: module init runs once, before the driver is registered, so
    // nothing reads DRIVER while it is filled in.
    let err = unsafe {
        (*driver).driver.name = c"virtio_tls".as_ptr().cast();
        (*driver).id_table = ID_TABLE.as_ptr();
        (*driver).feature_table = FEATURES.as_ptr();
        (*driver).feature_table_size = FEATURES.len() as c_uint;
        (*driver).probe = Some(probe);
        (*driver).remove = Some(remove);
        bindings::__register_virtio_driver(driver, module.as_ptr().cast())
    };
    kernel::error::to_result(err)
}

/// Undoes `register`: the core removes every bound device first.
pub(crate) fn unregister() {
    // SAFETY: registered at module init (`register` succeeded, or the
    // module would not have loaded).
    unsafe { bindings::unregister_virtio_driver(DRIVER.0.get()) };
}

/// # Safety
///
/// Called by the virtio core with a device matching ID_TABLE.
unsafe extern "C" fn probe(vdev: *mut bindings::virtio_device) -> c_int {
    // SAFETY: the core keeps the device until remove() returns; device.rs
    // drops its VirtioDevice in remove.
    let Some(device) = (unsafe { VirtioDevice::from_raw(vdev) }) else { return EINVAL.to_errno() };
    match crate::device::probe(device) {
        Ok(()) => 0,
        Err(error) => error.to_errno(),
    }
}

/// # Safety
///
/// Called by the virtio core for a device `probe` accepted.
unsafe extern "C" fn remove(vdev: *mut bindings::virtio_device) {
    // SAFETY: as in probe; the device is still alive during remove.
    if let Some(device) = unsafe { VirtioDevice::from_raw(vdev) } {
        crate::device::remove(device);
    }
}

/// Queue callback (hard IRQ): the device returned a buffer; wake whoever
/// waits, who collect it in process context under the driver lock.
unsafe extern "C" fn on_used(_vq: *mut bindings::virtqueue) {
    crate::device::WAITERS.wake_all();
}
