// SPDX-License-Identifier: GPL-2.0

//! virtio-tls guest driver.
//!
//! Binds the virtio-tls device, sets up its virtqueues from the spec's wire
//! definitions (`spec/src/wire.rs`, the same file the host backend
//! compiles), reads its configuration and sets DRIVER_OK, and registers
//! IPPROTO_TLS (205) SOCK_STREAM for AF_INET: `socket()` creates a device
//! socket (CREATE) and `close()` releases it (CLOSE). Connecting and data
//! are the next steps (see guest-driver/README.md).
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

/// The bound device, as the socket layer reaches it.
struct Device {
    control: *mut bindings::virtqueue,
    /// kmalloc'd request and response buffers (DMA-able, unlike the stack).
    request: KVec<u8>,
    response: KVec<u8>,
    next_request_id: u64,
}

static DEVICE: Shared<Option<Device>> = Shared(core::cell::UnsafeCell::new(None));
/// Serialises control requests and guards DEVICE.
static CONTROL_LOCK: Shared<bindings::mutex> =
    // SAFETY: initialised by __mutex_init in init before any use.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));
static CONTROL_LOCK_KEY: Shared<bindings::lock_class_key> =
    // SAFETY: lockdep keys are plain static storage.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// Holds CONTROL_LOCK for its lifetime.
struct ControlGuard;

impl ControlGuard {
    fn lock() -> ControlGuard {
        // SAFETY: initialised in init; callers are in process context.
        unsafe { bindings::mutex_lock(CONTROL_LOCK.0.get()) };
        ControlGuard
    }

    fn device(&mut self) -> Option<&mut Device> {
        // SAFETY: DEVICE is only touched with CONTROL_LOCK held, which this
        // guard proves.
        unsafe { (*DEVICE.0.get()).as_mut() }
    }
}

impl Drop for ControlGuard {
    fn drop(&mut self) {
        // SAFETY: locked in `lock`.
        unsafe { bindings::mutex_unlock(CONTROL_LOCK.0.get()) };
    }
}

/// Sends one control request and waits for its response (spec 2.6.1).
/// The control queue has no interrupt callback: requests are short and
/// rare, so the caller sleeps and polls the used ring.
fn control_request(op: u16, socket_id: u32, payload: &[u8]) -> Result<wire::CtrlResponse> {
    let mut guard = ControlGuard::lock();
    let device = guard.device().ok_or(ENODEV)?;
    device.next_request_id += 1;
    let header = wire::CtrlHeader { op, flags: 0, socket_id, request_id: device.next_request_id };
    let request_len = wire::CtrlHeader::SIZE + payload.len();
    if request_len > device.request.len() {
        return Err(EINVAL);
    }
    device.request[..wire::CtrlHeader::SIZE].copy_from_slice(&header.encode());
    device.request[wire::CtrlHeader::SIZE..request_len].copy_from_slice(payload);
    // SAFETY: scatterlists are plain C structs initialised by sg_init_one.
    let mut out: bindings::scatterlist = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    let mut inp: bindings::scatterlist = unsafe { core::mem::zeroed() };
    let mut used: core::ffi::c_uint = 0;
    // SAFETY: the buffers are kmalloc'd, live in DEVICE (kept while the
    // lock is held) and outlive the request, which completes before we
    // return; the queue belongs to the bound device.
    unsafe {
        bindings::sg_init_one(&mut out, device.request.as_ptr().cast::<c_void>(), request_len as u32);
        bindings::sg_init_one(&mut inp, device.response.as_mut_ptr().cast::<c_void>(), device.response.len() as u32);
        let mut sgs = [&mut out as *mut bindings::scatterlist, &mut inp as *mut bindings::scatterlist];
        let token = device.request.as_mut_ptr().cast::<c_void>();
        let err = bindings::virtqueue_add_sgs(device.control, sgs.as_mut_ptr(), 1, 1, token, bindings::GFP_KERNEL);
        if err != 0 {
            return Err(Error::from_errno(err));
        }
        bindings::virtqueue_kick(device.control);
        let mut waited = 0;
        while bindings::virtqueue_get_buf(device.control, &mut used).is_null() {
            if waited >= 10_000 {
                pr_err!("the device does not answer control requests\n");
                return Err(Error::from_errno(-(bindings::ETIMEDOUT as c_int)));
            }
            bindings::usleep_range_state(100, 1000, bindings::TASK_UNINTERRUPTIBLE);
            waited += 1;
        }
    }
    wire::CtrlResponse::decode(&device.response[..(used as usize).min(device.response.len())]).ok_or(EIO)
}

/// A zero-filled kmalloc'd buffer.
fn dma_buffer(len: usize) -> Result<KVec<u8>> {
    let mut buffer = KVec::with_capacity(len, GFP_KERNEL)?;
    for _ in 0..len {
        buffer.push(0, GFP_KERNEL)?;
    }
    Ok(buffer)
}

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
    let (request, response) = match (dma_buffer(4096), dma_buffer(4096)) {
        (Ok(request), Ok(response)) => (request, response),
        _ => return -(bindings::ENOMEM as c_int),
    };
    {
        let mut guard = ControlGuard::lock();
        // SAFETY: guarded by CONTROL_LOCK (held by `guard`).
        unsafe { *DEVICE.0.get() = Some(Device { control: vqs[0], request, response, next_request_id: 0 }) };
        drop(guard.device());
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
    {
        let _guard = ControlGuard::lock();
        // SAFETY: guarded by CONTROL_LOCK.
        unsafe { *DEVICE.0.get() = None };
    }
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

/// A guest TLS socket: the inet socket the core allocates (obj_size) with
/// the device's socket id after it.
#[repr(C)]
struct TlsSock {
    inet: bindings::inet_sock,
    socket_id: u32,
}

static PROTO: Shared<bindings::proto> =
    // SAFETY: all-zero is a valid `struct proto`; fields are set in init.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));
static OPS: Shared<bindings::proto_ops> =
    // SAFETY: as for PROTO.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));
static PROTOSW: Shared<bindings::inet_protosw> =
    // SAFETY: as for PROTO.
    Shared(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }));

/// proto.init: the new socket gets its device socket (CREATE).
unsafe extern "C" fn tls_init(sk: *mut bindings::sock) -> c_int {
    let request = wire::CreateRequest { family: wire::VIRTIO_TLS_AF_INET, queue_pair: 0, buf_alloc: 256 * 1024 };
    match control_request(wire::VIRTIO_TLS_OP_CREATE, 0, &request.encode()) {
        Ok(response) if response.status == 0 => {
            // SAFETY: sk was allocated with obj_size = size_of::<TlsSock>().
            unsafe { (*sk.cast::<TlsSock>()).socket_id = response.socket_id };
            0
        }
        Ok(response) => -(response.status as c_int),
        Err(error) => error.to_errno(),
    }
}

/// proto.close: release the device socket (CLOSE), then the kernel's.
unsafe extern "C" fn tls_close(sk: *mut bindings::sock, _timeout: kernel::ffi::c_long) {
    // SAFETY: as in tls_init.
    let socket_id = unsafe { (*sk.cast::<TlsSock>()).socket_id };
    if socket_id != 0 {
        let request = wire::CloseRequest { tx_bytes: 0 };
        if let Err(error) = control_request(wire::VIRTIO_TLS_OP_CLOSE, socket_id, &request.encode()) {
            pr_warn!("closing socket {} failed: {:?}\n", socket_id, error);
        }
    }
    // SAFETY: the core hands us a live socket it expects us to release.
    unsafe { bindings::sk_common_release(sk) };
}

/// TLS sockets live on the device, not in the kernel's hash tables.
unsafe extern "C" fn tls_hash(_sk: *mut bindings::sock) -> c_int {
    0
}

unsafe extern "C" fn tls_unhash(_sk: *mut bindings::sock) {}

/// Fills in and registers the protocol: IPPROTO_TLS on AF_INET.
fn register_protocol(module: &'static ThisModule) -> Result {
    let (proto, ops, protosw) = (PROTO.0.get(), OPS.0.get(), PROTOSW.0.get());
    // SAFETY: runs once in init before registration publishes the statics.
    unsafe {
        for (to, from) in (*proto).name.iter_mut().zip(b"TLS\0") {
            *to = *from as _;
        }
        (*proto).owner = module.as_ptr();
        (*proto).obj_size = core::mem::size_of::<TlsSock>() as u32;
        (*proto).init = Some(tls_init);
        (*proto).close = Some(tls_close);
        (*proto).hash = Some(tls_hash);
        (*proto).unhash = Some(tls_unhash);

        (*ops).family = bindings::AF_INET as _;
        (*ops).owner = module.as_ptr();
        (*ops).release = Some(bindings::inet_release);
        (*ops).bind = Some(bindings::sock_no_bind);
        (*ops).connect = Some(bindings::sock_no_connect);
        (*ops).socketpair = Some(bindings::sock_no_socketpair);
        (*ops).accept = Some(bindings::sock_no_accept);
        (*ops).getname = Some(bindings::sock_no_getname);
        (*ops).listen = Some(bindings::sock_no_listen);
        (*ops).shutdown = Some(bindings::sock_no_shutdown);
        (*ops).sendmsg = Some(bindings::sock_no_sendmsg);
        (*ops).recvmsg = Some(bindings::sock_no_recvmsg);
        (*ops).mmap = Some(bindings::sock_no_mmap);

        (*protosw).type_ = bindings::sock_type_SOCK_STREAM as _;
        (*protosw).protocol = wire::IPPROTO_TLS as _;
        (*protosw).prot = proto;
        (*protosw).ops = ops;

        let err = bindings::proto_register(proto, 1);
        if err != 0 {
            return Err(Error::from_errno(err));
        }
        bindings::inet_register_protosw(protosw);
    }
    Ok(())
}

struct VirtioTls;

impl kernel::Module for VirtioTls {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // SAFETY: init runs once, before anything can take the lock.
        unsafe {
            bindings::__mutex_init(CONTROL_LOCK.0.get(), c_str!("virtio_tls_control").as_char_ptr(), CONTROL_LOCK_KEY.0.get())
        };
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
        if let Err(error) = register_protocol(module) {
            // SAFETY: registered just above.
            unsafe { bindings::unregister_virtio_driver(driver) };
            return Err(error);
        }
        pr_info!("loaded (virtio id {}, IPPROTO_TLS {})\n", wire::VIRTIO_ID_TLS_DEFAULT, wire::IPPROTO_TLS);
        Ok(VirtioTls)
    }
}

impl Drop for VirtioTls {
    fn drop(&mut self) {
        // SAFETY: registered in init. Sockets hold a module reference, so
        // none is open when this runs.
        unsafe {
            bindings::inet_unregister_protosw(PROTOSW.0.get());
            bindings::proto_unregister(PROTO.0.get());
            bindings::unregister_virtio_driver(DRIVER.0.get());
        }
    }
}
