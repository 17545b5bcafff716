//! Transmit-queue packets (data header and payload, `handle_tx_chain`'s
//! parsing and credit checks) interleaved with control requests that make
//! the sockets they address: a record of even kind is a control request,
//! one of odd kind a data packet on queue pair `kind / 2 % 4` (the device
//! has two pairs, so half the pairs named are wrong); a record of kind
//! `NETWORK_EVENTS` lets the network make progress in between.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_tls_fuzz::{Records, Session, NETWORK_EVENTS};

fuzz_target!(|input: &[u8]| {
    let mut session = Session::new();
    for (kind, bytes) in Records::new(input) {
        if kind == NETWORK_EVENTS {
            session.network();
        } else if kind % 2 == 0 {
            session.control(bytes);
        } else {
            session.data(u16::from(kind / 2 % 4), bytes);
        }
    }
});
