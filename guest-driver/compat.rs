// SPDX-License-Identifier: GPL-2.0

//! What differs between the kernels the module builds for, in one place:
//! Debian's 6.12 (the project's default guest) and 7.x (Debian 13
//! backports' 7.3.4). Kbuild passes `--cfg virtio_tls_kernel_7` for a tree
//! of version 7 or later. Everything else goes through the module's own
//! bindings, which follow the tree they are generated from.

/// `module!` with the driver's fields: 7.x's macro takes `authors: [..]`
/// where 6.12's takes `author: ".."`.
#[cfg(virtio_tls_kernel_7)]
macro_rules! driver_module {
    (type: $type:tt, name: $name:tt, author: $author:tt, $($rest:tt)*) => {
        kernel::prelude::module! { type: $type, name: $name, authors: [$author], $($rest)* }
    };
}

#[cfg(not(virtio_tls_kernel_7))]
macro_rules! driver_module {
    (type: $type:tt, name: $name:tt, author: $author:tt, $($rest:tt)*) => {
        kernel::prelude::module! { type: $type, name: $name, author: $author, $($rest)* }
    };
}

pub(crate) use driver_module;

use crate::bindings;

/// The address argument of proto_ops bind and connect: 7.x passes a
/// `struct sockaddr_unsized`, 6.12 a `struct sockaddr` (both a kernel copy
/// of the caller's address, of the length passed with it).
#[cfg(virtio_tls_kernel_7)]
pub(crate) type SockaddrArg = bindings::sockaddr_unsized;
#[cfg(not(virtio_tls_kernel_7))]
pub(crate) type SockaddrArg = bindings::sockaddr;

/// The device's negotiated features (the low 64): 7.x keeps them in a
/// union with the extended feature array.
pub(crate) fn device_features(vdev: &bindings::virtio_device) -> u64 {
    #[cfg(virtio_tls_kernel_7)]
    // SAFETY: `features` is the union's first member, the low 64 bits of
    // `features_array` (VIRTIO_DECLARE_FEATURES): either reading is valid.
    return unsafe { vdev.__bindgen_anon_1.features };
    #[cfg(not(virtio_tls_kernel_7))]
    return vdev.features;
}

/// SO_TXREHASH, which an accepted socket inherits from its listener as a
/// TCP one does: 7.x put `sk_txrehash` in a union.
///
/// # Safety
///
/// Both are live socks.
pub(crate) unsafe fn copy_txrehash(from: *const bindings::sock, to: *mut bindings::sock) {
    // SAFETY: the caller's contract; a u8 member of either layout.
    unsafe {
        #[cfg(virtio_tls_kernel_7)]
        {
            (*to).__bindgen_anon_4.sk_txrehash = (*from).__bindgen_anon_4.sk_txrehash;
        }
        #[cfg(not(virtio_tls_kernel_7))]
        {
            (*to).sk_txrehash = (*from).sk_txrehash;
        }
    }
}

/// Caller memory at `address` (a user pointer the core passed), as the
/// kernel crate's safe `UserSlice`: 7.x made `UserPtr` a type of its own,
/// 6.12 takes the address.
pub(crate) fn user_slice(address: usize, len: usize) -> kernel::uaccess::UserSlice {
    #[cfg(virtio_tls_kernel_7)]
    let address = kernel::uaccess::UserPtr::from_addr(address);
    kernel::uaccess::UserSlice::new(address, len)
}
