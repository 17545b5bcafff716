//! TLS peers on the host's loopback for VM tests, with certificates made
//! fresh by rcgen: writes `ca.pem` and a `policy.toml` trusting it into
//! DIR, starts one rustls server per case, prints `NAME PORT` lines and
//! `ready`, and serves until its standard input closes.
//!
//! Cases: echo (valid for localhost, 127.0.0.1, ::1), expired, self-signed,
//! untrusted (another CA), tls12 (valid, TLS 1.2 only), drop (sends 1000
//! bytes, then closes TCP without close_notify).
//!
//! usage: vhost-tls-peers DIR

use std::io::Read;

use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{self, TestCa, Validity};
use vhost_tls_harness::testbed::LOOPBACK_POLICY;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: vhost-tls-peers DIR")?;
    let dir = std::path::Path::new(&dir);
    let ca = TestCa::new("vhost-tls VM test CA");
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    std::fs::write(dir.join("policy.toml"), LOOPBACK_POLICY)?;
    let names = pki::loopback_names();
    let stranger = TestCa::new("untrusted test root");
    let both = [&rustls::version::TLS13, &rustls::version::TLS12];
    let cases = [
        ("echo", ca.issue(&names, Validity::Current), &both[..], Behaviour::Echo),
        ("expired", ca.issue(&names, Validity::Expired), &both[..], Behaviour::Echo),
        ("self-signed", pki::self_signed(&names), &both[..], Behaviour::Echo),
        ("untrusted", stranger.issue(&names, Validity::Current), &both[..], Behaviour::Echo),
        ("tls12", ca.issue(&names, Validity::Current), &both[1..], Behaviour::Echo),
        ("drop", ca.issue(&names, Validity::Current), &both[..], Behaviour::DropAfter { bytes: 1000 }),
    ];
    let mut servers = Vec::new();
    for (name, identity, versions, behaviour) in cases {
        let server = RustlsServer::start("127.0.0.1:0".parse()?, &identity, versions, behaviour);
        println!("{name} {}", server.addr.port());
        servers.push(server);
    }
    println!("ready");
    // Serve until the test closes our standard input.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
