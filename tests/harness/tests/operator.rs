//! Policy management as the hypervisor operator sees it, through the
//! backend in this process: a reload changes what new sessions get while
//! open ones keep their policy, every session leaves exactly one complete
//! audit record, and the metrics count what happened.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;
use serde_json::Value;
use tls_engine::{Errno, Policy};
use vhost_tls_harness::driver::TlsDevice;
use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{self, Validity};
use vhost_tls_harness::testbed::{Testbed, LOOPBACK_POLICY};
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(60);

fn addr_of(addr: SocketAddr) -> SockAddr {
    match addr {
        SocketAddr::V4(v4) => SockAddr::ipv4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => SockAddr::ipv6(v6.ip().octets(), v6.port(), 0),
    }
}

/// A new IPv4 socket connected to `addr`, verifying it as `localhost`.
fn connect(device: &mut TlsDevice, addr: SocketAddr) -> (u32, Result<(), Errno>) {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).expect("create");
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").expect("TLS_HOSTNAME");
    let result = device.connect(id, addr_of(addr), TIMEOUT);
    (id, result)
}

fn echo_round_trip(device: &mut TlsDevice, id: u32, message: &[u8]) {
    device.send_all(id, message, TIMEOUT).expect("send");
    assert_eq!(device.read_exact(id, message.len(), TIMEOUT).expect("echo"), message);
}

fn chosen_version(device: &mut TlsDevice, id: u32) -> u32 {
    u32::from_le_bytes(device.get_option(id, wire::TLS_CHOSEN_VERSION, 4).unwrap().try_into().unwrap())
}

fn policy(text: &str, dir: &Path) -> Arc<Policy> {
    Arc::new(Policy::from_toml_str(text, "reloaded.toml", dir).unwrap_or_else(|e| panic!("{e}")))
}

#[test]
fn a_reload_that_raises_the_minimum_version_affects_new_sessions_only() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let tls12_only = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS12], Behaviour::Echo);
    let modern = RustlsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        Behaviour::Echo,
    );
    let mut device = bed.driver();

    let (old, result) = connect(&mut device, tls12_only.addr);
    result.unwrap_or_else(|e| panic!("connect under the first policy: {e}: {}", device.tls_error(old)));
    assert_eq!(chosen_version(&mut device, old), wire::TLS_1_2);
    const BEFORE: &[u8] = b"before the reload";
    const AFTER: &[u8] = b"after the reload, same TLS 1.2 session";
    const BULK: usize = 300_000;
    echo_round_trip(&mut device, old, BEFORE);

    let strict = LOOPBACK_POLICY.replace("min_version = \"1.2\"", "min_version = \"1.3\"");
    assert_ne!(strict, LOOPBACK_POLICY);
    assert_eq!(bed.server.reload_policy(policy(&strict, bed.dir())), Ok(2));

    // The session established under the old policy keeps working.
    echo_round_trip(&mut device, old, AFTER);
    echo_round_trip(&mut device, old, &vec![0x42; BULK]);

    // A new session to the same TLS 1.2-only server is refused...
    let (refused, result) = connect(&mut device, tls12_only.addr);
    assert_eq!(result, Err(Errno::EPROTO));
    let reason = device.tls_error(refused);
    assert!(reason.contains("no TLS version the policy allows (TLSv1.3..TLSv1.3)"), "{reason}");
    // ...while one to a server that speaks TLS 1.3 gets it.
    let (new, result) = connect(&mut device, modern.addr);
    result.unwrap_or_else(|e| panic!("connect under the new policy: {e}: {}", device.tls_error(new)));
    assert_eq!(chosen_version(&mut device, new), wire::TLS_1_3);
    echo_round_trip(&mut device, new, b"new session");

    let reports = bed.server.sockets();
    let generation = |id: u32| reports.iter().find(|r| r.id == id).and_then(|r| r.policy_generation);
    assert_eq!(generation(old), Some(1), "{reports:?}");
    assert_eq!(generation(new), Some(2), "{reports:?}");
    // What `vhost-tls ctl sockets` prints for them.
    let table = vhost_tls::control::sockets_table(&reports);
    let row = |id: u32| -> Vec<String> {
        let line = table.lines().find(|line| line.split_whitespace().next() == Some(&id.to_string())).unwrap();
        line.split_whitespace().map(str::to_owned).collect()
    };
    let old_row = row(old);
    assert_eq!(old_row[..6], [old.to_string(), "client".into(), "established".into(), tls12_only.addr.to_string(), "localhost".into(), "TLSv1.2".into()]);
    assert!(old_row[6].starts_with("TLS_ECDHE_"), "{table}");
    let echoed = (BEFORE.len() + AFTER.len() + BULK).to_string();
    assert_eq!(old_row[7..], [echoed.clone(), echoed, "1".into()], "{table}");
    let refused_row = row(refused);
    assert_eq!(refused_row[..6], [refused.to_string(), "client".into(), "failed".into(), tls12_only.addr.to_string(), "localhost".into(), "-".into()], "{table}");

    // A reload the running device cannot take is refused whole: the
    // guest driver sized its buffers by socket_buffer_bytes.
    let resized = strict.replace("socket_buffer_bytes = 262144", "socket_buffer_bytes = 65536");
    let refusal = bed.server.reload_policy(policy(&resized, bed.dir())).unwrap_err();
    assert!(refusal.contains("socket_buffer_bytes cannot change"), "{refusal}");
    let (still_strict, result) = connect(&mut device, tls12_only.addr);
    assert_eq!(result, Err(Errno::EPROTO), "the generation 2 policy stays in force");

    for id in [old, refused, new, still_strict] {
        device.close(id).unwrap();
    }
    bed.wait_until_no_sockets();
    let metrics = bed.server.metrics();
    assert_eq!(sample(&metrics, "vhost_tls_policy_reloads_total{result=\"ok\"}"), 1);
    assert_eq!(sample(&metrics, "vhost_tls_policy_reloads_total{result=\"failed\"}"), 1);
    assert_eq!(sample(&metrics, "vhost_tls_handshake_failures_total{direction=\"client\",reason=\"version\"}"), 2);
}

/// A reload also applies to connections a listening guest socket accepts
/// from then on: the socket stays bound and listening.
#[test]
fn listening_sockets_serve_new_connections_with_the_reloaded_policy() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let server_section = format!(
        "\n[[server.listen]]\nguest_port = 443\nhost = \"127.0.0.1:{port}\"\n\n[[server.identities]]\ncertificate_chain = \"www.pem\"\nprivate_key = \"www.key\"\n"
    );
    let text = format!("{LOOPBACK_POLICY}{server_section}");
    let bed = Testbed::start_with_files(&text, 1, |ca, dir| {
        ca.issue(&["localhost"], Validity::Current).write_to(dir, "www").unwrap();
    });
    let log_path = bed.dir().join("audit.jsonl");
    bed.server.set_audit_log(Box::new(std::fs::File::create(&log_path).unwrap()));
    let mut device = bed.driver();
    let listener = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.bind(listener, SockAddr::ipv4([0; 4], 443)).unwrap();
    device.listen(listener, 8).unwrap();
    let host: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    let client = host_client(host, bed.ca.cert_der(), &[&rustls::version::TLS12]);
    let (accepted, _) = device.accept(listener, TIMEOUT).expect("a TLS 1.2 client under the first policy");
    echo_once(&mut device, accepted, client);

    let strict = format!("{}{server_section}", LOOPBACK_POLICY.replace("min_version = \"1.2\"", "min_version = \"1.3\""));
    bed.server.reload_policy(policy(&strict, bed.dir())).unwrap();
    let refused = host_client(host, bed.ca.cert_der(), &[&rustls::version::TLS12]).join().unwrap();
    assert!(refused.is_err(), "a TLS 1.2 client is refused after the reload");
    let client = host_client(host, bed.ca.cert_der(), &[&rustls::version::TLS13, &rustls::version::TLS12]);
    let (accepted, _) = device.accept(listener, TIMEOUT).expect("a TLS 1.3 client after the reload");
    assert_eq!(chosen_version(&mut device, accepted), wire::TLS_1_3);
    echo_once(&mut device, accepted, client);
    device.close(listener).unwrap();
    bed.wait_until_no_sockets();

    // Server sessions are audited too, the refused one included.
    let log = std::fs::read_to_string(&log_path).unwrap();
    let records: Vec<Value> = log.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(records.len(), 3, "{log}");
    for record in &records {
        assert_eq!(record["direction"], "server", "{record}");
        assert!(record["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{record}");
    }
    // Records are written as sessions end, which need not be the order
    // they started in.
    let mut summary: Vec<(u64, &str, Option<&str>, Option<u64>)> = records
        .iter()
        .map(|r| (r["policy_generation"].as_u64().unwrap(), r["outcome"].as_str().unwrap(), r["tls_version"].as_str(), r["bytes_from_peer"].as_u64()))
        .collect();
    summary.sort();
    assert_eq!(summary, [(1, "ok", Some("TLSv1.2"), Some(4)), (2, "error", None, Some(0)), (2, "ok", Some("TLSv1.3"), Some(4))], "{log}");
    for record in records.iter().filter(|r| r["outcome"] == "ok") {
        assert_eq!(record["server_name"], "localhost", "the SNI the client sent: {record}");
    }
    let refused = records.iter().find(|r| r["outcome"] == "error").unwrap();
    assert!(refused["reason"].as_str().unwrap().contains("no TLS version"), "{refused}");
}

/// A rustls client on the host sending "ping" and reading it back.
fn host_client(
    addr: SocketAddr,
    ca: rustls_pki_types::CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::thread::JoinHandle<Result<(), String>> {
    let versions = versions.to_vec();
    std::thread::spawn(move || {
        let config = pki::client_config(ca, &versions);
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut tls = StreamOwned::new(conn, tcp);
        tls.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut reply = [0u8; 4];
        tls.read_exact(&mut reply).map_err(|e| e.to_string())?;
        assert_eq!(&reply, b"ping");
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| e.to_string())
    })
}

/// The guest echoes the client's "ping" and closes.
fn echo_once(device: &mut TlsDevice, id: u32, client: std::thread::JoinHandle<Result<(), String>>) {
    let ping = device.read_exact(id, 4, TIMEOUT).expect("ping");
    device.send_all(id, &ping, TIMEOUT).unwrap();
    client.join().unwrap().unwrap_or_else(|e| panic!("client: {e}"));
    device.close(id).unwrap();
}

/// The value of one series in Prometheus text.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in\n{metrics}"))
}

/// Every line of Prometheus text is a comment (`# HELP`/`# TYPE` naming
/// a family) or `name{labels} value` with a numeric value; returns the
/// samples (values truncated to integers: sums and timestamps are
/// checked elsewhere).
fn parse_prometheus(text: &str) -> Vec<(String, u64)> {
    let mut declared = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name, rest) = (words.next().unwrap(), words.next().unwrap(), words.next().unwrap_or(""));
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            if kind == "TYPE" {
                assert!(rest == "counter" || rest == "gauge" || rest == "histogram", "{line}");
                declared.push(name.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| name.strip_suffix(suffix)).filter(|f| declared.iter().any(|d| d == f));
        assert!(declared.iter().any(|d| d == name) || family.is_some(), "{name} has no # TYPE before it");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{name}");
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "{line}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        assert!(value.is_finite() && value >= 0.0, "{line}");
        samples.push((series.to_owned(), value as u64));
    }
    samples
}

#[test]
fn every_session_leaves_one_complete_audit_record_and_is_counted() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let log_path = bed.dir().join("audit.jsonl");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
    bed.server.set_audit_log(Box::new(log));
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let echo = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS13], Behaviour::Echo);
    let untrusted = pki::self_signed(&pki::loopback_names());
    let impostor = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &untrusted, &[&rustls::version::TLS13], Behaviour::Echo);
    let mut device = bed.driver();

    // 1: a session that works, with different amounts each way.
    let (ok, result) = connect(&mut device, echo.addr);
    result.unwrap();
    const BULK: usize = 10_000;
    const MORE: &[u8] = b"and a little more";
    const SECOND_TRY: &[u8] = b"second try";
    let first_session = (BULK + MORE.len()) as u64;
    echo_round_trip(&mut device, ok, &vec![7u8; BULK]);
    echo_round_trip(&mut device, ok, MORE);
    let live = parse_prometheus(&bed.server.metrics());
    assert!(live.contains(&("vhost_tls_sockets_open".to_owned(), 1)), "{live:?}");
    assert!(live.contains(&("vhost_tls_bytes_total{direction=\"to_peer\"}".to_owned(), first_session)), "open sessions count: {live:?}");
    device.close(ok).unwrap();
    // 2: a certificate that does not verify.
    let (bad_cert, result) = connect(&mut device, impostor.addr);
    assert_eq!(result, Err(Errno::EPROTO));
    // 3: a destination the policy denies (nothing is sent to it).
    let (denied, result) = connect(&mut device, "192.0.2.1:443".parse().unwrap());
    assert_eq!(result, Err(Errno::EACCES));
    // 4: a connect that goes nowhere, then the socket connects again: two sessions.
    let closed_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (retried, result) = connect(&mut device, closed_port);
    assert_eq!(result, Err(Errno::ECONNREFUSED));
    device.connect(retried, addr_of(echo.addr), TIMEOUT).unwrap();
    echo_round_trip(&mut device, retried, SECOND_TRY);

    for id in [bad_cert, denied, retried] {
        device.close(id).unwrap();
    }
    bed.wait_until_no_sockets();

    let log = std::fs::read_to_string(&log_path).unwrap();
    let records: Vec<Value> =
        log.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect();
    assert_eq!(records.len(), 5, "one line per session:\n{log}");
    let of = |id: u32| -> Vec<&Value> { records.iter().filter(|r| r["socket"] == id).collect() };
    for record in &records {
        for key in ["start", "end", "direction", "peer", "server_name", "tls_version", "cipher", "outcome", "errno", "reason"] {
            assert!(record.get(key).is_some(), "{key} missing in {record}");
        }
        let (start, end) = (record["start"].as_str().unwrap(), record["end"].as_str().unwrap());
        assert!(start.ends_with('Z') && start.len() == "2026-12-01T14:03:05.123Z".len() && start <= end, "{record}");
        assert_eq!(record["direction"], "client");
        assert_eq!(record["server_name"], "localhost");
        assert_eq!(record["policy_generation"], 1);
    }

    let ok_record = of(ok);
    assert_eq!(ok_record.len(), 1);
    let ok_record = ok_record[0];
    assert_eq!(ok_record["outcome"], "ok", "{ok_record}");
    assert_eq!(ok_record["peer"], echo.addr.to_string());
    assert_eq!(ok_record["tls_version"], "TLSv1.3");
    assert!(ok_record["cipher"].as_str().unwrap().starts_with("TLS_"), "{ok_record}");
    assert_eq!((ok_record["bytes_to_peer"].as_u64(), ok_record["bytes_from_peer"].as_u64()), (Some(first_session), Some(first_session)));
    assert!(ok_record["errno"].is_null() && ok_record["reason"].is_null(), "{ok_record}");

    let cert_record = of(bad_cert)[0];
    assert_eq!((cert_record["outcome"].as_str(), cert_record["errno"].as_u64()), (Some("error"), Some(71)), "{cert_record}");
    assert_eq!(cert_record["errno_name"], "EPROTO");
    assert!(cert_record["reason"].as_str().unwrap().starts_with("certificate verification failed"), "{cert_record}");
    assert!(cert_record["tls_version"].is_null(), "no version without a handshake: {cert_record}");

    let denied_record = of(denied)[0];
    assert_eq!(denied_record["errno_name"], "EACCES", "{denied_record}");
    assert!(denied_record["reason"].as_str().unwrap().contains("the default is deny"), "{denied_record}");
    assert_eq!((denied_record["bytes_to_peer"].as_u64(), denied_record["bytes_from_peer"].as_u64()), (Some(0), Some(0)));

    let retried_records = of(retried);
    assert_eq!(retried_records.len(), 2, "{retried_records:?}");
    assert_eq!(retried_records[0]["errno_name"], "ECONNREFUSED");
    assert_eq!(retried_records[0]["peer"], closed_port.to_string());
    assert_eq!(retried_records[1]["outcome"], "ok");
    assert_eq!(retried_records[1]["bytes_to_peer"], SECOND_TRY.len(), "bytes of the second session only");

    let metrics = bed.server.metrics();
    let samples = parse_prometheus(&metrics);
    let value = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
    assert_eq!(value("vhost_tls_sockets_open"), Some(0));
    assert_eq!(value("vhost_tls_handshakes_total{direction=\"client\"}"), Some(2));
    assert_eq!(value("vhost_tls_handshakes_total{direction=\"server\"}"), Some(0));
    assert_eq!(value("vhost_tls_handshake_failures_total{direction=\"client\",reason=\"certificate\"}"), Some(1));
    assert_eq!(value("vhost_tls_handshake_failures_total{direction=\"client\",reason=\"denied\"}"), Some(1));
    assert_eq!(value("vhost_tls_handshake_failures_total{direction=\"client\",reason=\"network\"}"), Some(1));
    assert_eq!(value("vhost_tls_handshake_failures_total{direction=\"client\",reason=\"version\"}"), Some(0));
    assert_eq!(value("vhost_tls_denied_destinations_total"), Some(1));
    assert_eq!(value("vhost_tls_bytes_total{direction=\"to_peer\"}"), Some(first_session + SECOND_TRY.len() as u64));
    assert_eq!(value("vhost_tls_bytes_total{direction=\"from_peer\"}"), Some(first_session + SECOND_TRY.len() as u64));
    assert_eq!(value("vhost_tls_policy_generation"), Some(1));
}

/// Sessions still open when the backend stops serving the VM get their
/// record then, since nothing else will end them.
#[test]
fn open_sessions_are_audited_when_the_backend_stops() {
    let bed = Testbed::start(LOOPBACK_POLICY);
    let log_path = bed.dir().join("audit.jsonl");
    bed.server.set_audit_log(Box::new(std::fs::File::create(&log_path).unwrap()));
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let echo = RustlsServer::start("127.0.0.1:0".parse().unwrap(), &identity, &[&rustls::version::TLS13], Behaviour::Echo);
    let mut device = bed.driver();
    let (id, result) = connect(&mut device, echo.addr);
    result.unwrap();
    const MESSAGE: &[u8] = b"still open";
    echo_round_trip(&mut device, id, MESSAGE);
    assert_eq!(std::fs::read_to_string(&log_path).unwrap(), "", "no record while the session is open");

    drop(device); // the front end goes, as when QEMU quits
    bed.server.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let records: Vec<Value> = log.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(records.len(), 1, "{log}");
    let record = &records[0];
    assert_eq!((record["socket"].as_u64(), record["outcome"].as_str()), (Some(u64::from(id)), Some("error")), "{record}");
    assert_eq!(record["reason"], "the backend stopped serving the VM");
    assert_eq!(record["tls_version"], "TLSv1.3");
    assert_eq!(record["bytes_to_peer"], MESSAGE.len());
    assert_eq!(record["bytes_from_peer"], MESSAGE.len());
}
