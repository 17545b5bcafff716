//! Real TLS peers on the host's loopback: a rustls server run by the test,
//! and OpenSSL's `openssl s_server`, which nobody here wrote.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned, SupportedProtocolVersion};
use sha2::{Digest, Sha256};

use crate::pki::Identity;

/// What the rustls test server does with a connection.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Sends back every byte it receives; ends with close_notify after the
    /// client's.
    Echo,
    /// Answers one HTTP request with `body`, then close_notify.
    Http { body: String },
    /// Sends `total` bytes of [`Pattern`] as fast as the client takes them,
    /// then close_notify.
    Source { total: u64 },
    /// Reads and counts everything, answers the client's close_notify.
    Sink,
    /// As `Sink`, without hashing what it reads: for benchmarks, where the
    /// peer should spend no CPU beyond TLS itself (its digest is empty).
    Discard,
    /// Completes the handshake, then drops TCP without close_notify after
    /// sending `bytes` of [`Pattern`].
    DropAfter { bytes: u64 },
}

/// Counters a test can read while the server runs.
#[derive(Default, Debug)]
pub struct ServerStats {
    pub connections: AtomicUsize,
    pub handshakes_completed: AtomicUsize,
    pub handshakes_failed: AtomicUsize,
    /// Plaintext bytes handed to TLS for sending, all connections.
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    /// SHA-256 of what each finished connection received, in order.
    pub received_digests: Mutex<Vec<[u8; 32]>>,
}

pub struct RustlsServer {
    pub addr: SocketAddr,
    pub stats: Arc<ServerStats>,
    stop: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl RustlsServer {
    /// Listens on `bind` (port 0 picks one) with `identity`, offering only
    /// `versions`.
    pub fn start(bind: SocketAddr, identity: &Identity, versions: &[&'static SupportedProtocolVersion], behaviour: Behaviour) -> RustlsServer {
        RustlsServer::start_with_alpn(bind, identity, versions, behaviour, &[])
    }

    /// As [`RustlsServer::start`], choosing among the client's ALPN
    /// protocols by the order of `alpn` (none: no ALPN).
    pub fn start_with_alpn(
        bind: SocketAddr,
        identity: &Identity,
        versions: &[&'static SupportedProtocolVersion],
        behaviour: Behaviour,
        alpn: &[&[u8]],
    ) -> RustlsServer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(identity.chain.clone(), identity.key())
            .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let config = Arc::new(config);
        let listener = TcpListener::bind(bind).expect("bind test server");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let stats = Arc::new(ServerStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_stats, thread_stop) = (stats.clone(), stop.clone());
        let accept_thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        thread_stats.connections.fetch_add(1, Ordering::Relaxed);
                        let (config, stats, behaviour) = (config.clone(), thread_stats.clone(), behaviour.clone());
                        std::thread::spawn(move || serve_connection(tcp, config, stats, behaviour));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
                    Err(_) => break,
                }
            }
        });
        RustlsServer { addr, stats, stop, accept_thread: Some(accept_thread) }
    }
}

impl Drop for RustlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_connection(tcp: TcpStream, config: Arc<ServerConfig>, stats: Arc<ServerStats>, behaviour: Behaviour) {
    let _ = tcp.set_nodelay(true);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(120)));
    let conn = ServerConnection::new(config).expect("server connection");
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    stats.handshakes_completed.fetch_add(1, Ordering::Relaxed);
    let mut digest = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    match behaviour {
        Behaviour::Echo => loop {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    digest.update(&buf[..n]);
                    stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    if tls.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        },
        Behaviour::Sink => loop {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    digest.update(&buf[..n]);
                    stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        },
        Behaviour::Discard => loop {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    stats.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        },
        Behaviour::Http { body } => {
            let mut request = Vec::new();
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            digest.update(&request);
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if tls.write_all(reply.as_bytes()).is_err() {
                return;
            }
            stats.bytes_sent.fetch_add(reply.len() as u64, Ordering::Relaxed);
        }
        Behaviour::Source { total } => {
            let mut pattern = Pattern::new(total);
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = pattern.fill(&mut chunk);
                if n == 0 {
                    break;
                }
                if tls.write_all(&chunk[..n]).is_err() {
                    return;
                }
                stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        Behaviour::DropAfter { bytes } => {
            let mut pattern = Pattern::new(bytes);
            let mut chunk = vec![0u8; bytes as usize];
            let n = pattern.fill(&mut chunk);
            let _ = tls.write_all(&chunk[..n]);
            let _ = tls.flush();
            stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
            return; // dropping the TcpStream: FIN without close_notify
        }
    }
    stats.received_digests.lock().unwrap().push(digest.finalize().into());
    tls.conn.send_close_notify();
    let _ = tls.flush();
    let _ = tls.sock.shutdown(std::net::Shutdown::Write);
    // Let the client read what is left before the socket goes.
    let _ = tls.sock.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = tls.sock.read(&mut buf);
}

/// A deterministic byte stream (xorshift), so both ends can check bulk
/// data without keeping it.
pub struct Pattern {
    state: u64,
    remaining: u64,
}

impl Pattern {
    pub fn new(total: u64) -> Pattern {
        Pattern { state: 0x9E37_79B9_7F4A_7C15, remaining: total }
    }

    /// Fills `buf` with the next bytes; returns how many (0 at the end).
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let n = (buf.len() as u64).min(self.remaining) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        self.remaining -= n as u64;
        n
    }

    /// SHA-256 of the whole pattern of `total` bytes.
    pub fn digest(total: u64) -> [u8; 32] {
        let mut pattern = Pattern::new(total);
        let mut digest = Sha256::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = pattern.fill(&mut chunk);
            if n == 0 {
                return digest.finalize().into();
            }
            digest.update(&chunk[..n]);
        }
    }
}

/// `openssl s_server` on loopback, killed on drop.
pub struct OpensslServer {
    pub addr: SocketAddr,
    child: Child,
    pub output: Arc<Mutex<String>>,
}

impl OpensslServer {
    /// Starts `openssl s_server -accept BIND -cert CERT -key KEY EXTRA...`;
    /// `bind` is `127.0.0.1:0` or `[::1]:0` style.
    pub fn start(bind: &str, cert: &std::path::Path, key: &std::path::Path, extra: &[&str]) -> std::io::Result<OpensslServer> {
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", bind, "-cert"])
            .arg(cert)
            .arg("-key")
            .arg(key)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped stdout");
        let output = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let sink = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("ACCEPT ") {
                    let _ = addr_tx.send(addr.trim().to_owned());
                }
                let mut out = sink.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        if let Some(stderr) = child.stderr.take() {
            let sink = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut out = sink.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            match addr_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => break addr,
                Err(_) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(std::io::Error::other(format!(
                            "openssl s_server exited ({status}): {}",
                            output.lock().unwrap()
                        )));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    return Err(std::io::Error::other("openssl s_server printed no ACCEPT line"));
                }
            }
        };
        let addr: SocketAddr = addr.parse().map_err(|e| std::io::Error::other(format!("bad ACCEPT address {addr}: {e}")))?;
        Ok(OpensslServer { addr, child, output })
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
