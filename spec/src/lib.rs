//! The virtio-tls wire format, as specified in `spec/virtio-tls.md`.
//!
//! `wire.rs` is the single source of truth: the host backend and the tests
//! use it through this crate, and the guest kernel module compiles the very
//! same file with `#[path = ...] mod wire;`. It therefore has no
//! dependencies, no `unsafe` and no allocation.
#![no_std]
#![forbid(unsafe_code)]

pub mod wire;
pub use wire::*;
