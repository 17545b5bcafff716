//! Guest TLS servers: a listening socket in the guest (the harness as
//! driver), the backend listening where the policy maps its port and
//! terminating TLS with the operator's identities, and real clients on the
//! host loopback: rustls, `openssl s_client` and curl, all verifying the
//! operator's certificate against the test CA.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::{CertificateDer, ServerName};
use tls_engine::Errno;
use vhost_tls_harness::driver::{Recv, TlsDevice};
use vhost_tls_harness::pki::{self, TestCa, Validity};
use vhost_tls_harness::testbed::{Testbed, LOOPBACK_POLICY};
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(60);
const GUEST_PORT: u16 = 8443;
const GUEST_PORT_V6: u16 = 8444;

/// A port free on the host right now (the kernel picks it).
fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0)).unwrap().local_addr().unwrap().port()
}

/// The loopback policy plus two guest ports and two identities: `www`
/// (also the loopback names, and first, so the default) and `api`.
struct ServerBed {
    bed: Testbed,
    host_v4: SocketAddr,
    host_v6: SocketAddr,
    www_leaf: CertificateDer<'static>,
    api_leaf: CertificateDer<'static>,
}

fn start(extra_policy: &str) -> ServerBed {
    start_from(LOOPBACK_POLICY, extra_policy)
}

fn start_from(base_policy: &str, extra_policy: &str) -> ServerBed {
    let (port4, port6) = (free_port("127.0.0.1"), free_port("::1"));
    let policy = format!(
        r#"{base_policy}
[[server.listen]]
guest_port = {GUEST_PORT}
host = "127.0.0.1:{port4}"

[[server.listen]]
guest_port = {GUEST_PORT_V6}
host = "[::1]:{port6}"

[[server.identities]]
certificate_chain = "www.pem"
private_key = "www.key"

[[server.identities]]
certificate_chain = "api.pem"
private_key = "api.key"
{extra_policy}"#
    );
    let mut leaves = Vec::new();
    let bed = Testbed::start_with_files(&policy, 1, |ca: &TestCa, dir: &Path| {
        // For policies that give client sockets a certificate ([client]).
        ca.issue(&["vm-client.test"], Validity::Current).write_to(dir, "client").unwrap();
        for (name, names) in [("www", vec!["www.test", "localhost", "127.0.0.1", "::1"]), ("api", vec!["api.test"])] {
            let identity = ca.issue(&names, Validity::Current);
            identity.write_to(dir, name).unwrap();
            leaves.push(identity.chain[0].clone());
        }
    });
    ServerBed {
        bed,
        host_v4: format!("127.0.0.1:{port4}").parse().unwrap(),
        host_v6: format!("[::1]:{port6}").parse().unwrap(),
        www_leaf: leaves[0].clone(),
        api_leaf: leaves[1].clone(),
    }
}

/// A listening guest socket on `guest_port`.
fn listen(device: &mut TlsDevice, family: u16, guest_port: u16) -> u32 {
    let id = device.create(family).expect("create");
    let local = if family == wire::VIRTIO_TLS_AF_INET { SockAddr::ipv4([0; 4], guest_port) } else { SockAddr::ipv6([0; 16], guest_port, 0) };
    device.bind(id, local).unwrap_or_else(|e| panic!("bind: {e}: {}", device.tls_error(id)));
    device.listen(id, 16).unwrap_or_else(|e| panic!("listen: {e}: {}", device.tls_error(id)));
    id
}

fn client_config(ca_der: CertificateDer<'static>) -> Arc<ClientConfig> {
    pki::client_config(ca_der, rustls::DEFAULT_VERSIONS)
}

/// What a host client saw of the guest server.
struct ClientOutcome {
    leaf: CertificateDer<'static>,
    reply: Vec<u8>,
    local: SocketAddr,
}

/// A rustls client on the host: connects to `addr` asking for `name`,
/// sends `message`, reads as many bytes back, then sends close_notify.
fn rustls_client(addr: SocketAddr, name: &str, ca: CertificateDer<'static>, message: &'static [u8]) -> JoinHandle<Result<ClientOutcome, String>> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    std::thread::spawn(move || {
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
        let local = tcp.local_addr().unwrap();
        let conn = ClientConnection::new(client_config(ca), name).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, tcp);
        tls.write_all(message).map_err(|e| e.to_string())?;
        let mut reply = vec![0u8; message.len()];
        tls.read_exact(&mut reply).map_err(|e| e.to_string())?;
        let leaf = tls.conn.peer_certificates().unwrap()[0].clone().into_owned();
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| e.to_string())?;
        Ok(ClientOutcome { leaf, reply, local })
    })
}

/// The guest side of one echo session on an accepted socket: echoes until
/// the client's close_notify, then closes.
fn guest_echo_until_eof(device: &mut TlsDevice, id: u32) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match device.recv(id, 64 * 1024, Duration::from_millis(50)) {
            Recv::Data(data) => device.send_all(id, &data, TIMEOUT).expect("echo"),
            Recv::Eof => break,
            Recv::WouldBlock => assert!(Instant::now() < deadline, "no close_notify from the client"),
            Recv::Error(errno) => panic!("accepted socket failed: {errno}: {}", device.tls_error(id)),
        }
    }
    device.close(id).unwrap();
}

/// Runs the driver while `client` runs: accepts one connection and echoes.
/// Returns the accepted socket's SNI, version and client address.
fn serve_one(device: &mut TlsDevice, listener: u32, client: JoinHandle<Result<ClientOutcome, String>>) -> (ClientOutcome, String, SockAddr) {
    let (id, peer) = device.accept(listener, TIMEOUT).unwrap_or_else(|e| panic!("accept: {e}"));
    let sni = String::from_utf8(device.get_option(id, wire::TLS_HOSTNAME, 255).unwrap()).unwrap();
    assert_eq!(device.get_option(id, wire::TLS_CHOSEN_VERSION, 4).unwrap(), wire::TLS_1_3.to_le_bytes());
    guest_echo_until_eof(device, id);
    let outcome = client.join().unwrap().unwrap_or_else(|e| panic!("client: {e}"));
    (outcome, sni, peer)
}

#[test]
fn rustls_clients_reach_a_guest_server_and_sni_picks_the_certificate() {
    let sb = start("");
    let mut device = sb.bed.driver();
    assert_ne!(device.config().policy_flags & wire::VIRTIO_TLS_POLICY_SERVER, 0, "the policy lets guests listen");
    let listener = listen(&mut device, wire::VIRTIO_TLS_AF_INET, GUEST_PORT);
    let ca = sb.bed.ca.cert_der();

    let (outcome, sni, peer) = serve_one(&mut device, listener, rustls_client(sb.host_v4, "api.test", ca.clone(), b"ping api"));
    assert_eq!(outcome.reply, b"ping api");
    assert_eq!(outcome.leaf, sb.api_leaf, "SNI api.test gets the api certificate");
    assert_eq!(sni, "api.test");
    assert_eq!(peer.family, wire::VIRTIO_TLS_AF_INET);
    assert_eq!(&peer.addr[..4], &[127, 0, 0, 1]);
    assert_eq!(peer.port, outcome.local.port(), "ACCEPT gives the real client address");

    let (outcome, sni, _) = serve_one(&mut device, listener, rustls_client(sb.host_v4, "www.test", ca.clone(), b"ping www"));
    assert_eq!(outcome.reply, b"ping www");
    assert_eq!(outcome.leaf, sb.www_leaf, "SNI www.test gets the www certificate");
    assert_eq!(sni, "www.test");

    // An IP address as the name: rustls sends no SNI, the first identity answers.
    let (outcome, sni, _) = serve_one(&mut device, listener, rustls_client(sb.host_v4, "127.0.0.1", ca, b"no sni"));
    assert_eq!(outcome.leaf, sb.www_leaf, "no SNI gets the first identity");
    assert_eq!(sni, "");

    assert_eq!(device.messages_for_unknown_sockets, 0, "nothing was sent for connections before ACCEPT");
    device.close(listener).unwrap();
    sb.bed.wait_until_no_sockets();
}

#[test]
fn ipv6_guest_server() {
    let sb = start("");
    let mut device = sb.bed.driver();
    let listener = listen(&mut device, wire::VIRTIO_TLS_AF_INET6, GUEST_PORT_V6);
    let (outcome, _, peer) = serve_one(&mut device, listener, rustls_client(sb.host_v6, "localhost", sb.bed.ca.cert_der(), b"over ::1"));
    assert_eq!(outcome.reply, b"over ::1");
    assert_eq!(peer.family, wire::VIRTIO_TLS_AF_INET6);
    assert_eq!(&peer.addr[..16], &std::net::Ipv6Addr::LOCALHOST.octets());
    assert_eq!(peer.port, outcome.local.port());
}

#[test]
fn openssl_s_client_verifies_the_operators_certificate() {
    let sb = start("");
    let mut device = sb.bed.driver();
    let listener = listen(&mut device, wire::VIRTIO_TLS_AF_INET, GUEST_PORT);
    let ca_file = sb.bed.dir().join("ca.pem");
    let target = sb.host_v4.to_string();
    let client = std::thread::spawn(move || {
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect", &target, "-servername", "api.test", "-verify_hostname", "api.test"])
            .arg("-CAfile")
            .arg(&ca_file)
            .args(["-verify_return_error", "-quiet", "-no_ign_eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run openssl s_client (installed by scripts/setup)");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"hello from openssl\n").unwrap();
        // Give the echo time to come back before EOF makes s_client close.
        std::thread::sleep(Duration::from_secs(2));
        drop(stdin);
        child.wait_with_output().unwrap()
    });
    let (id, _) = device.accept(listener, TIMEOUT).unwrap_or_else(|e| panic!("accept: {e}"));
    assert_eq!(device.get_option(id, wire::TLS_HOSTNAME, 255).unwrap(), b"api.test");
    let line = device.read_exact(id, b"hello from openssl\n".len(), TIMEOUT).expect("read the client's line");
    assert_eq!(line, b"hello from openssl\n");
    device.send_all(id, b"echo: hello from openssl\n", TIMEOUT).unwrap();
    let (rest, end) = device.read_to_end(id, TIMEOUT);
    assert!(rest.is_empty(), "{rest:?}");
    // s_client ends with close_notify or a plain TCP close, either is fine here.
    assert!(matches!(end, Ok(()) | Err(Errno::ECONNRESET)), "{end:?}");
    device.close(id).unwrap();
    let output = client.join().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "s_client failed: {stderr}");
    assert!(stdout.contains("echo: hello from openssl"), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("verify return:1") && stderr.replace(" = ", "=").contains("CN=api.test"), "stderr: {stderr}");
}

#[test]
fn curl_fetches_a_page_from_a_guest_server() {
    let sb = start("");
    let mut device = sb.bed.driver();
    let listener = listen(&mut device, wire::VIRTIO_TLS_AF_INET, GUEST_PORT);
    let ca_file = sb.bed.dir().join("ca.pem");
    let port = sb.host_v4.port();
    let client = std::thread::spawn(move || {
        Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "60", "--http1.1", "--resolve"])
            .arg(format!("www.test:{port}:127.0.0.1"))
            .arg("--cacert")
            .arg(&ca_file)
            .arg(format!("https://www.test:{port}/hello"))
            .output()
            .expect("run curl (installed by scripts/setup)")
    });
    let (id, _) = device.accept(listener, TIMEOUT).unwrap_or_else(|e| panic!("accept: {e}"));
    let mut request = Vec::new();
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match device.recv(id, 4096, TIMEOUT) {
            Recv::Data(data) => request.extend(data),
            other => panic!("reading the request: {other:?}"),
        }
    }
    let request = String::from_utf8(request).unwrap();
    assert!(request.starts_with("GET /hello HTTP/1.1\r\n"), "{request}");
    let body = "served from inside the guest\n";
    let response = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    device.send_all(id, response.as_bytes(), TIMEOUT).unwrap();
    device.shutdown(id, wire::VIRTIO_TLS_SHUT_WR).unwrap();
    let output = client.join().unwrap();
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout), body);
    device.close(id).unwrap();
}

#[test]
fn failed_handshakes_never_reach_accept() {
    let sb = start("");
    let mut device = sb.bed.driver();
    let listener = listen(&mut device, wire::VIRTIO_TLS_AF_INET, GUEST_PORT);

    // Plaintext where TLS is expected.
    let mut plain = TcpStream::connect(sb.host_v4).unwrap();
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    // A client that does not trust the operator's CA aborts the handshake.
    let stranger = TestCa::new("some other CA");
    let untrusting = rustls_client(sb.host_v4, "www.test", stranger.cert_der(), b"x");
    let err = untrusting.join().unwrap().err().expect("a client without the CA fails");
    assert!(err.contains("UnknownIssuer") || err.contains("invalid peer certificate"), "{err}");
    // A client that connects and leaves mid-handshake.
    drop(TcpStream::connect(sb.host_v4).unwrap());

    let settle = Instant::now() + Duration::from_secs(2);
    while Instant::now() < settle {
        assert_eq!(device.try_accept(listener).map(|(id, _)| id), Err(Errno::EAGAIN), "no failed connection is offered");
        device.poll(Duration::from_millis(50));
    }
    assert_eq!(device.take_accept_ready(listener), 0);
    drop(plain);

    let (outcome, _, _) = serve_one(&mut device, listener, rustls_client(sb.host_v4, "www.test", sb.bed.ca.cert_der(), b"fine"));
    assert_eq!(outcome.reply, b"fine");
    assert_eq!(device.messages_for_unknown_sockets, 0);
}

#[test]
fn listening_hostname_restricts_the_names_served() {
    let sb = start("");
    let mut device = sb.bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, b"api.test").unwrap();
    device.bind(id, SockAddr::ipv4([0; 4], GUEST_PORT)).unwrap();
    device.listen(id, 0).unwrap();

    let refused = rustls_client(sb.host_v4, "www.test", sb.bed.ca.cert_der(), b"x").join().unwrap();
    assert!(refused.is_err(), "a client asking for www.test is turned away");
    assert_eq!(device.try_accept(id).map(|(id, _)| id), Err(Errno::EAGAIN));

    let (outcome, sni, _) = serve_one(&mut device, id, rustls_client(sb.host_v4, "api.test", sb.bed.ca.cert_der(), b"api only"));
    assert_eq!(outcome.leaf, sb.api_leaf);
    assert_eq!(sni, "api.test");
}

#[test]
fn only_ports_the_policy_maps_may_listen() {
    let sb = start("");
    let mut device = sb.bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    assert_eq!(device.bind(id, SockAddr::ipv4([0; 4], 9999)), Err(Errno::EACCES));
    assert!(device.tls_error(id).contains("port 9999"), "{}", device.tls_error(id));
    assert_eq!(device.bind(id, SockAddr::ipv4([0; 4], 0)), Err(Errno::EACCES));
    // LISTEN needs a bound socket; ACCEPT a listening one.
    assert_eq!(device.listen(id, 0), Err(Errno::EINVAL));
    assert_eq!(device.try_accept(id).map(|(id, _)| id), Err(Errno::EINVAL));
    // The host port is taken while one guest socket holds it.
    device.bind(id, SockAddr::ipv4([0; 4], GUEST_PORT)).unwrap();
    let second = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    assert_eq!(device.bind(second, SockAddr::ipv4([0; 4], GUEST_PORT)), Err(Errno::EADDRINUSE));
    // A bound socket cannot connect.
    assert_eq!(device.start_connect(id, SockAddr::ipv4([127, 0, 0, 1], 443)), Err(Errno::EINVAL));
    device.close(id).unwrap();
    // Closed, the port is free again.
    device.bind(second, SockAddr::ipv4([0; 4], GUEST_PORT)).unwrap();

    // Without a [server] section nothing may listen.
    let client_only = Testbed::start(LOOPBACK_POLICY);
    let mut device = client_only.driver();
    assert_eq!(device.config().policy_flags & wire::VIRTIO_TLS_POLICY_SERVER, 0);
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    assert_eq!(device.bind(id, SockAddr::ipv4([0; 4], GUEST_PORT)), Err(Errno::EACCES));
}

/// Waits until `count` handshaken connections are ready on `listener`.
fn wait_accept_ready(device: &mut TlsDevice, listener: u32, count: u32) {
    let deadline = Instant::now() + TIMEOUT;
    let mut ready = 0;
    while ready < count {
        assert!(Instant::now() < deadline, "{count} handshakes complete");
        device.poll(Duration::from_millis(20));
        ready += device.take_accept_ready(listener);
    }
}

#[test]
fn closing_a_listener_drops_connections_not_yet_accepted() {
    let sb = start("");
    let mut device = sb.bed.driver();
    let listener = listen(&mut device, wire::VIRTIO_TLS_AF_INET, GUEST_PORT);
    let clients: Vec<_> = (0..3).map(|_| rustls_client(sb.host_v4, "www.test", sb.bed.ca.cert_der(), b"never echoed")).collect();
    wait_accept_ready(&mut device, listener, 3);
    device.close(listener).unwrap();
    for client in clients {
        assert!(client.join().unwrap().is_err(), "the client sees its connection end");
    }
    sb.bed.wait_until_no_sockets();
    assert_eq!(device.messages_for_unknown_sockets, 0);
}

/// A guest client socket connecting to the guest's own listening socket
/// through the host: both ends of the TLS session run in the backend.
fn connect_to_self(device: &mut TlsDevice, host: SocketAddr, name: &str, options: &[(u32, &[u8])]) -> (u32, Result<(), Errno>) {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, name.as_bytes()).unwrap();
    for (optname, value) in options {
        device.set_option(id, *optname, value).unwrap_or_else(|e| panic!("option {optname}: {e}"));
    }
    let addr = match host {
        SocketAddr::V4(v4) => SockAddr::ipv4(v4.ip().octets(), v4.port()),
        SocketAddr::V6(v6) => SockAddr::ipv6(v6.ip().octets(), v6.port(), 0),
    };
    let result = device.connect(id, addr, TIMEOUT);
    (id, result)
}

fn int(value: u32) -> [u8; 4] {
    value.to_le_bytes()
}

fn string_option(device: &mut TlsDevice, id: u32, optname: u32) -> String {
    String::from_utf8(device.get_option(id, optname, 16 * 1024).unwrap()).unwrap()
}

#[test]
fn alpn_picks_h2_or_http11() {
    let sb = start("");
    let mut device = sb.bed.driver();
    let listener = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(listener, wire::TLS_ALPN, b"h2,http/1.1").unwrap();
    device.bind(listener, SockAddr::ipv4([0; 4], GUEST_PORT)).unwrap();
    device.listen(listener, 0).unwrap();

    for (offered, agreed) in [(&b"h2,http/1.1"[..], "h2"), (b"http/1.1", "http/1.1"), (b"h2", "h2")] {
        let (client, result) = connect_to_self(&mut device, sb.host_v4, "www.test", &[(wire::TLS_ALPN, offered)]);
        result.unwrap_or_else(|e| panic!("connect: {e}: {}", device.tls_error(client)));
        assert_eq!(string_option(&mut device, client, wire::TLS_ALPN), agreed, "client offering {offered:?}");
        let (server, _) = device.accept(listener, TIMEOUT).unwrap();
        assert_eq!(string_option(&mut device, server, wire::TLS_ALPN), agreed);
        device.close(client).unwrap();
        device.close(server).unwrap();
    }
    // Before a handshake, TLS_ALPN reads back what was set.
    assert_eq!(string_option(&mut device, listener, wire::TLS_ALPN), "h2,http/1.1");
    // No protocol in common: the server refuses the handshake.
    let (client, result) = connect_to_self(&mut device, sb.host_v4, "www.test", &[(wire::TLS_ALPN, b"spdy/3")]);
    assert_eq!(result, Err(Errno::EPROTO));
    assert!(device.tls_error(client).contains("NoApplicationProtocol"), "{}", device.tls_error(client));
    // A host client asking for h2 gets it too.
    let ca = sb.bed.ca.cert_der();
    let outcome = std::thread::spawn(move || {
        let mut config = (*client_config(ca)).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(sb.host_v4).unwrap();
        let mut tls = StreamOwned::new(ClientConnection::new(Arc::new(config), ServerName::try_from("www.test").unwrap()).unwrap(), tcp);
        tls.write_all(b"x").unwrap();
        tls.flush().unwrap();
        tls.conn.alpn_protocol().map(<[u8]>::to_vec)
    })
    .join()
    .unwrap();
    assert_eq!(outcome.as_deref(), Some(&b"http/1.1"[..]));
}

#[test]
fn mutual_tls_accepts_trusted_clients_and_rejects_others() {
    let sb = start("\n[client]\ncertificate_chain = \"client.pem\"\nprivate_key = \"client.key\"\n");
    let mut device = sb.bed.driver();
    let listener = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(listener, wire::TLS_REQUEST_PEER_AUTH, &int(1)).unwrap();
    device.bind(listener, SockAddr::ipv4([0; 4], GUEST_PORT)).unwrap();
    device.listen(listener, 0).unwrap();

    // A client socket presents the operator's client certificate ([client]).
    let (client, result) = connect_to_self(&mut device, sb.host_v4, "www.test", &[]);
    result.unwrap_or_else(|e| panic!("connect: {e}: {}", device.tls_error(client)));
    let (server, _) = device.accept(listener, TIMEOUT).unwrap();
    assert!(string_option(&mut device, server, wire::TLS_PEER_IDENTITY).contains("CN=vm-client.test"));
    let chain = string_option(&mut device, server, wire::TLS_PEER_CERTIFICATE_CHAIN);
    assert!(chain.starts_with("-----BEGIN CERTIFICATE-----") && chain.trim_end().ends_with("-----END CERTIFICATE-----"), "{chain}");
    // The client sees the server's chain the same way.
    let server_chain = string_option(&mut device, client, wire::TLS_PEER_CERTIFICATE_CHAIN);
    assert!(server_chain.starts_with("-----BEGIN CERTIFICATE-----"), "{server_chain}");
    device.send_all(client, b"authenticated", TIMEOUT).unwrap();
    assert_eq!(device.read_exact(server, 13, TIMEOUT).unwrap(), b"authenticated");

    // A host client without a certificate never reaches accept().
    let anonymous = rustls_client(sb.host_v4, "www.test", sb.bed.ca.cert_der(), b"x").join().unwrap();
    assert!(anonymous.is_err(), "a client without a certificate is refused");
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        assert_eq!(device.try_accept(listener).map(|(id, _)| id), Err(Errno::EAGAIN));
        device.poll(Duration::from_millis(50));
    }
    // Without TLS_REQUEST_PEER_AUTH nobody is asked: the peer identity is empty.
    let plain = listen(&mut device, wire::VIRTIO_TLS_AF_INET6, GUEST_PORT_V6);
    let (outcome, _, _) = {
        let client = rustls_client(sb.host_v6, "localhost", sb.bed.ca.cert_der(), b"anon ok");
        let (id, _) = device.accept(plain, TIMEOUT).unwrap();
        assert_eq!(string_option(&mut device, id, wire::TLS_PEER_IDENTITY), "");
        guest_echo_until_eof(&mut device, id);
        (client.join().unwrap().unwrap(), (), ())
    };
    assert_eq!(outcome.reply, b"anon ok");
}

#[test]
fn sessions_resume_unless_turned_off_or_expired() {
    let sb = start("");
    let mut device = sb.bed.driver();
    let listener = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(listener, wire::TLS_SESSION_TTL, &int(2)).unwrap();
    device.bind(listener, SockAddr::ipv4([0; 4], GUEST_PORT)).unwrap();
    device.listen(listener, 0).unwrap();
    let session = |device: &mut TlsDevice, options: &[(u32, &[u8])]| {
        let (client, result) = connect_to_self(device, sb.host_v4, "www.test", options);
        result.unwrap_or_else(|e| panic!("connect: {e}: {}", device.tls_error(client)));
        // TLS 1.3 tickets come after the handshake: let data flow first.
        let (server, _) = device.accept(listener, TIMEOUT).unwrap();
        device.send_all(server, b"ticket", TIMEOUT).unwrap();
        assert_eq!(device.read_exact(client, 6, TIMEOUT).unwrap(), b"ticket");
        let resumed = |device: &mut TlsDevice, id| device.get_option(id, wire::TLS_RESUMED_SESSION, 4).unwrap() == int(1);
        let (client_resumed, server_resumed) = (resumed(device, client), resumed(device, server));
        assert_eq!(client_resumed, server_resumed, "both ends agree");
        device.close(client).unwrap();
        device.close(server).unwrap();
        client_resumed
    };
    assert!(!session(&mut device, &[]), "the first session is a full handshake");
    assert!(session(&mut device, &[]), "the second resumes (TLS_RESUMED_SESSION)");
    assert!(!session(&mut device, &[(wire::TLS_SESSION_REUSE, &int(0))]), "TLS_SESSION_REUSE = 0: a full handshake");
    assert!(session(&mut device, &[]));
    // Another TLS_CONTEXT has a session cache of its own.
    let context = 42u64.to_le_bytes();
    assert!(!session(&mut device, &[(wire::TLS_CONTEXT, &context)]), "a new context starts with no session");
    assert!(session(&mut device, &[(wire::TLS_CONTEXT, &context)]), "and then resumes within itself");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!session(&mut device, &[]), "past the listener's TLS_SESSION_TTL the session is gone");
}

#[test]
fn application_identities_only_when_the_policy_allows() {
    let strict = start("");
    let mut device = strict.bed.driver();
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    let app = strict.bed.ca.issue(&["app.test"], Validity::Current);
    assert_eq!(device.set_option(id, wire::TLS_CERTIFICATE_CHAIN, app.cert_pem.as_bytes()), Err(Errno::EPERM));
    assert_eq!(device.set_option(id, wire::TLS_PRIVATE_KEY, app.key_pem.as_bytes()), Err(Errno::EPERM));
    drop(device);
    drop(strict);

    let sb = start_from(&LOOPBACK_POLICY.replace("[tls]\n", "[tls]\napplication_identities = true\n"), "");
    let mut device = sb.bed.driver();
    let app = sb.bed.ca.issue(&["app.test"], Validity::Current);
    let other = sb.bed.ca.issue(&["other.test"], Validity::Current);
    let listener = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    assert_eq!(device.set_option(listener, wire::TLS_CERTIFICATE_CHAIN, b"garbage"), Err(Errno::EINVAL));
    device.set_option(listener, wire::TLS_CERTIFICATE_CHAIN, app.cert_pem.as_bytes()).unwrap();
    assert_eq!(device.set_option(listener, wire::TLS_PRIVATE_KEY, other.key_pem.as_bytes()), Err(Errno::EPROTO));
    device.set_option(listener, wire::TLS_PRIVATE_KEY, app.key_pem.as_bytes()).unwrap();
    device.bind(listener, SockAddr::ipv4([0; 4], GUEST_PORT)).unwrap();
    device.listen(listener, 0).unwrap();
    let (outcome, _, _) = serve_one(&mut device, listener, rustls_client(sb.host_v4, "app.test", sb.bed.ca.cert_der(), b"own cert"));
    assert_eq!(outcome.leaf, app.chain[0], "the program's own certificate is presented");
}

/// Connects to `addr` and closes at once, `count` times, without waiting
/// long for a connect the host's accept queue has no room for; returns how
/// many connected (and so wait, closed, in that queue).
fn connect_and_close(addr: SocketAddr, count: usize) -> usize {
    let mut connected = 0;
    let mut refused_in_a_row = 0;
    for _ in 0..count {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(20)) {
            Ok(stream) => {
                connected += 1;
                refused_in_a_row = 0;
                drop(stream);
            }
            // The accept queue is full (somaxconn): the kernel drops SYNs.
            Err(_) => {
                refused_in_a_row += 1;
                if refused_in_a_row == 20 {
                    break;
                }
            }
        }
    }
    connected
}

/// Clients that connect and leave at once, queued behind a listening
/// socket while the socket limit holds the device back: when the limit is
/// released, each fails on its first read and the next is taken, thousands
/// in a row, without the worker's stack growing with them.
#[test]
fn thousands_of_queued_clients_that_leave_at_once() {
    let base = LOOPBACK_POLICY.replace("max_sockets = 64", "max_sockets = 2\nhandshakes_per_second = 1000000\nmax_pending_handshakes = 65536");
    let sb = start_from(&base, "");
    let mut device = sb.bed.driver();
    let listener = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.bind(listener, SockAddr::ipv4([0; 4], GUEST_PORT)).unwrap();
    device.listen(listener, 4096).unwrap();
    // The socket limit reached: clients wait in the host's accept queue.
    let filler = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    let queued = connect_and_close(sb.host_v4, 5000);
    eprintln!("{queued} clients connected and left, queued behind the listener");
    assert!(queued >= 4000, "only {queued} clients got into the accept queue");
    assert_eq!(sb.bed.server.sockets().len(), 2, "none taken while the limit holds");
    device.close(filler).unwrap();

    // Served after every queued one (the accept queue is in order).
    let (outcome, _, _) = serve_one(&mut device, listener, rustls_client(sb.host_v4, "www.test", sb.bed.ca.cert_der(), b"after them"));
    assert_eq!(outcome.reply, b"after them");
    let reports = sb.bed.server.sockets();
    assert_eq!(reports.iter().map(|r| r.id).collect::<Vec<_>>(), [listener], "every queued client is gone: {reports:?}");
    device.close(listener).unwrap();
}

/// A malformed packet for a listening socket fails it; the connections it
/// handshook that the guest never accepted go with it, and so does their
/// share of the socket limit.
#[test]
fn a_failed_listener_releases_its_unaccepted_connections() {
    let base = LOOPBACK_POLICY.replace("max_sockets = 64", "max_sockets = 4");
    let sb = start_from(&base, "");
    let mut device = sb.bed.driver();
    let listener = listen(&mut device, wire::VIRTIO_TLS_AF_INET, GUEST_PORT);
    let clients: Vec<_> = (0..3).map(|_| rustls_client(sb.host_v4, "www.test", sb.bed.ca.cert_der(), b"never echoed")).collect();
    wait_accept_ready(&mut device, listener, 3);
    assert_eq!(device.create(wire::VIRTIO_TLS_AF_INET), Err(Errno::EMFILE), "the listener and its 3 connections fill the limit");

    // A CREDIT_UPDATE carrying payload: malformed, the listener fails.
    device.raw_data(0, listener, wire::VIRTIO_TLS_DATA_OP_CREDIT_UPDATE, b"x");
    let deadline = Instant::now() + Duration::from_secs(5);
    let created = loop {
        match device.create(wire::VIRTIO_TLS_AF_INET) {
            Err(Errno::EMFILE) if Instant::now() < deadline => device.poll(Duration::from_millis(50)),
            other => break other,
        }
    };
    let created = created.unwrap_or_else(|e| panic!("{e}: the failed listener's connections still count: {:?}", sb.bed.server.sockets()));
    for client in clients {
        assert!(client.join().unwrap().is_err(), "the client sees its connection end");
    }
    device.close(created).unwrap();
    device.close(listener).unwrap();
    sb.bed.wait_until_no_sockets();
    assert_eq!(device.messages_for_unknown_sockets, 0);
}
