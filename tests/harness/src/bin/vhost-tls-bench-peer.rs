//! The host side of the guest-level benchmark (tests/vm/guest-bench):
//! rustls servers with a fresh CA, on an address the benchmark chooses
//! (loopback, or the host end of a tap device in a network namespace the
//! benchmark made). Writes `ca.pem` into DIR, prints `echo PORT`,
//! `source PORT`, `sink PORT` and `ready`, and serves until its standard
//! input closes.
//!
//! usage: vhost-tls-bench-peer DIR BIND_ADDRESS SOURCE_BYTES

use std::io::Read;
use std::net::{IpAddr, SocketAddr};

use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{self, TestCa, Validity};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, bind, source_bytes] = &args[..] else {
        return Err("usage: vhost-tls-bench-peer DIR BIND_ADDRESS SOURCE_BYTES".into());
    };
    let dir = std::path::Path::new(dir);
    let bind: IpAddr = bind.parse()?;
    let total: u64 = source_bytes.parse()?;
    let ca = TestCa::new("vhost-tls benchmark CA");
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    let identity = ca.issue(&pki::loopback_names(), Validity::Current);
    let tls13 = [&rustls::version::TLS13];
    let echo = RustlsServer::start(SocketAddr::new(bind, 0), &identity, &tls13, Behaviour::Echo);
    let source = RustlsServer::start(SocketAddr::new(bind, 0), &identity, &tls13, Behaviour::Source { total });
    let sink = RustlsServer::start(SocketAddr::new(bind, 0), &identity, &tls13, Behaviour::Discard);
    println!("echo {}", echo.addr.port());
    println!("source {}", source.addr.port());
    println!("sink {}", sink.addr.port());
    println!("ready");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
