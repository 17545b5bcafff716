//! What TCP_NODELAY on the host connection does to a small request/response
//! through the device (issue 15): the harness plays the guest, which writes
//! a 64-byte request in two parts (a header, then a body, as many
//! protocols' writers do) and reads a 64-byte response; the peer, a rustls
//! server in this process, answers once it has the whole request. Without
//! TCP_NODELAY the host's Nagle algorithm holds the body until the header
//! is acknowledged, and the peer acknowledges late (it has nothing to send
//! yet: delayed ACK). Prints median and 90th percentile round trips with
//! TCP_NODELAY off and on (set with SETSOCKOPT before CONNECT). A benchmark,
//! not a test: it asserts nothing about speed.
//!
//! Usage: vhost-tls-nodelay [ROUND_TRIPS] [GAP_US]
//! (GAP_US: pause between the two writes, default 200 µs)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};
use vhost_tls_harness::driver::TlsDevice;
use vhost_tls_harness::pki::{self, Identity, Validity};
use vhost_tls_harness::testbed::{Testbed, LOOPBACK_POLICY};
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(60);
const MESSAGE: usize = 64;
const HEADER: usize = 16;
const WARM_UP: usize = 20;

/// A peer that reads whole 64-byte requests and answers each with 64 bytes.
fn request_response_peer(identity: &Identity) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key())
        .expect("server certificate");
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind peer");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                // The peer's own side answers at once: only the device's
                // host socket decides.
                let _ = tcp.set_nodelay(true);
                let mut tls = StreamOwned::new(ServerConnection::new(config).expect("server"), tcp);
                let mut request = [0u8; MESSAGE];
                while tls.read_exact(&mut request).is_ok() {
                    if tls.write_all(&[b'r'; MESSAGE]).and_then(|()| tls.flush()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn pause(gap: Duration) {
    let until = Instant::now() + gap;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// Round-trip times of `count` requests on one connection, microseconds.
fn measure(device: &mut TlsDevice, peer: SocketAddr, nodelay: bool, count: usize, gap: Duration) -> Vec<f64> {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).expect("create");
    device.set_int_option(id, wire::VIRTIO_TLS_SOL_TCP, wire::TCP_NODELAY, i32::from(nodelay)).expect("TCP_NODELAY");
    let SocketAddr::V4(v4) = peer else { unreachable!() };
    device.connect(id, SockAddr::ipv4(v4.ip().octets(), v4.port()), TIMEOUT).expect("connect");
    assert_eq!(device.get_int_option(id, wire::VIRTIO_TLS_SOL_TCP, wire::TCP_NODELAY), Ok(i32::from(nodelay)));
    let request = [b'q'; MESSAGE];
    let mut times = Vec::with_capacity(count);
    for round in 0..WARM_UP + count {
        let start = Instant::now();
        device.send_all(id, &request[..HEADER], TIMEOUT).expect("send header");
        pause(gap);
        device.send_all(id, &request[HEADER..], TIMEOUT).expect("send body");
        let response = device.read_exact(id, MESSAGE, TIMEOUT).expect("response");
        assert_eq!(response.len(), MESSAGE);
        if round >= WARM_UP {
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    device.close(id).expect("close");
    times
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map_or(200, |a| a.parse().expect("ROUND_TRIPS"));
    let gap = Duration::from_micros(args.next().map_or(200, |a| a.parse().expect("GAP_US")));
    let bed = Testbed::start(LOOPBACK_POLICY);
    let peer = request_response_peer(&bed.ca.issue(&pki::loopback_names(), Validity::Current));
    println!("{count} round trips of a {MESSAGE}-byte request written as {HEADER} + {} bytes ({} µs apart), a {MESSAGE}-byte response", MESSAGE - HEADER, gap.as_micros());
    // One front end per vhost-user socket: both runs share the driver.
    let mut device = bed.driver();
    for nodelay in [false, true] {
        let mut times = measure(&mut device, peer, nodelay, count, gap);
        times.sort_by(f64::total_cmp);
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "TCP_NODELAY {}: median {:8.0} µs, p90 {:8.0} µs, mean {:8.0} µs",
            if nodelay { "on " } else { "off" },
            percentile(&times, 0.5),
            percentile(&times, 0.9),
            mean
        );
    }
}
