//! Sequences of raw control requests (the whole `Device::dispatch` path:
//! header, every op's payload, option values, addresses), so that socket
//! state machines are driven through many steps. Input: records of the
//! `Records` framing; each record's bytes are one request as the driver
//! would put them in a control chain; a record of kind `NETWORK_EVENTS`
//! lets the network make progress in between.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_tls_fuzz::{Records, Session, NETWORK_EVENTS};

fuzz_target!(|input: &[u8]| {
    let mut session = Session::new();
    for (kind, request) in Records::new(input) {
        if kind == NETWORK_EVENTS {
            session.network();
        } else {
            session.control(request);
        }
    }
});
