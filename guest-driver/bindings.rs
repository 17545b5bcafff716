// SPDX-License-Identifier: GPL-2.0

//! The module's own bindings to the kernel C API it uses (`bindings.h`),
//! generated at build time by Kbuild's bindgen run against the tree the
//! module is built for: no kernel patch, and layouts that are that
//! kernel's. Only `virtio.rs`, `net.rs` and `sync.rs` use them.

#![allow(
    clippy::all,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    improper_ctypes,
    unreachable_pub,
    unsafe_op_in_unsafe_fn
)]

use kernel::ffi;
// 7.x's rust/bindgen_parameters (which the module's bindgen run reads)
// derive pin-init's MaybeZeroable on every struct, as rust/bindings does.
#[cfg(virtio_tls_kernel_7)]
use pin_init::MaybeZeroable;

// What rust/bindings/lib.rs defines by hand (bindgen_parameters blocklists
// them, so that sizes are usize/isize).
type __kernel_size_t = usize;
type __kernel_ssize_t = isize;
type __kernel_ptrdiff_t = isize;

include!("bindings_generated.rs");
