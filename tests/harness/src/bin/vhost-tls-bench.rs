//! Throughput and handshake rate through the device (the harness playing
//! the guest over vhost-user) against plain rustls over loopback, measured
//! in the same run, printed with their ratios. A benchmark, not a test: it
//! asserts nothing about speed.
//!
//! Usage: vhost-tls-bench [MIB_PER_DIRECTION] [HANDSHAKES] [--only METRIC,...]
//! [--side plain|device|both] [--round-trips N] [--rounds N] [--busy-poll-us N]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;
use vhost_tls_harness::driver::{Recv, TlsDevice};
use vhost_tls_harness::bench::{mib_per_s, per_second};
use vhost_tls_harness::peers::{Behaviour, RustlsServer};
use vhost_tls_harness::pki::{self, Validity};
use vhost_tls_harness::testbed::{Testbed, LOOPBACK_POLICY};
use vhost_tls::DeviceShape;
use virtio_tls_spec::{self as wire, SockAddr};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Which measurements to run and on which side, so a profiler can look at
/// one of them alone (`scripts/profile`).
struct Selection {
    only: Option<Vec<String>>,
    plain: bool,
    device: bool,
}

impl Selection {
    fn wants(&self, metric: &str) -> bool {
        self.only.as_ref().is_none_or(|names| names.iter().any(|n| n == metric))
    }
}

const METRICS: [&str; 7] = ["download1", "upload1", "download8", "upload8", "handshakes", "handshakes8", "round-trip"];

fn usage() -> ! {
    eprintln!("usage: vhost-tls-bench [MIB_PER_DIRECTION] [HANDSHAKES] [--only METRIC[,METRIC...]] [--side plain|device|both] [--round-trips N] [--rounds N] [--busy-poll-us N]");
    eprintln!("metrics: {}", METRICS.join(", "));
    std::process::exit(2);
}

fn main() {
    let mut positional = Vec::new();
    let mut selection = Selection { only: None, plain: true, device: true };
    let mut round_trips = 2000usize;
    let mut rounds = 3usize;
    let mut busy_poll_us = 50u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--only" => {
                let names: Vec<String> = args.next().unwrap_or_else(|| usage()).split(',').map(str::to_owned).collect();
                if let Some(bad) = names.iter().find(|n| !METRICS.contains(&n.as_str())) {
                    eprintln!("vhost-tls-bench: unknown metric {bad:?}");
                    usage();
                }
                selection.only = Some(names);
            }
            "--side" => match args.next().as_deref() {
                Some("plain") => selection.device = false,
                Some("device") => selection.plain = false,
                Some("both") => {}
                _ => usage(),
            },
            "--round-trips" => round_trips = args.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| usage()),
            "--busy-poll-us" => busy_poll_us = args.next().and_then(|n| n.parse().ok()).unwrap_or_else(|| usage()),
            "--rounds" => rounds = args.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0).unwrap_or_else(|| usage()),
            _ if arg.starts_with('-') => usage(),
            _ => positional.push(arg),
        }
    }
    let mib: u64 = positional.first().map(|a| a.parse().unwrap_or_else(|_| usage())).unwrap_or(256);
    let handshakes: usize = positional.get(1).map(|a| a.parse().unwrap_or_else(|_| usage())).unwrap_or(300);
    let total = mib << 20;

    // The benchmark measures the device, not the policy's rate limit.
    let bed = Testbed::start(&LOOPBACK_POLICY.replace("[limits]", "[limits]\nhandshakes_per_second = 1000000"));
    let identity = bed.ca.issue(&pki::loopback_names(), Validity::Current);
    let versions = [&rustls::version::TLS13];
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let client = pki::client_config(bed.ca.cert_der(), &versions);
    let mut device = bed.driver();
    // Each metric runs `rounds` times, plain and device alternating, and
    // the medians are compared: load from other work on a shared machine
    // then falls on both sides alike instead of on whichever ran during
    // it. A side left out measures as NaN, and so does its ratio.
    // The device side also reports how busy the backend's worker thread
    // and the harness's guest thread (this one) were: their CPU time over
    // the wall time. Near 100% means that thread is what bounds the figure.
    let measure = |plain: &mut dyn FnMut() -> f64, device: &mut dyn FnMut() -> f64| -> (f64, f64, Busy) {
        let (mut plain_runs, mut device_runs, mut worker_runs, mut guest_runs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            plain_runs.push(if selection.plain { plain() } else { f64::NAN });
            if selection.device {
                let (worker, guest, wall) = (thread_cpu_seconds(WORKER), thread_cpu_seconds(GUEST), Instant::now());
                device_runs.push(device());
                let elapsed = wall.elapsed().as_secs_f64();
                worker_runs.push((thread_cpu_seconds(WORKER) - worker) / elapsed);
                guest_runs.push((thread_cpu_seconds(GUEST) - guest) / elapsed);
            }
        }
        (median(plain_runs), median(device_runs), Busy { worker: median(worker_runs), guest: median(guest_runs) })
    };

    println!("vhost-tls benchmark: {mib} MiB per direction and connection count, {handshakes} handshakes, {round_trips} round trips, TLS 1.3; median of {rounds} alternating rounds");
    println!("machine: {} cores; plain = rustls client in this process over loopback TCP; device = the same through virtio-tls (harness as guest)", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!();
    println!("{:<34} {:>14} {:>14} {:>8} {:>8} {:>8}", "metric", "plain rustls", "device", "ratio", "worker", "guest");

    for connections in [1usize, 8] {
        let per_connection = total / connections as u64;
        if selection.wants(&format!("download{connections}")) {
            let source = RustlsServer::start(loopback, &identity, &versions, Behaviour::Source { total: per_connection });
            let (plain, through, busy) = measure(
                &mut || mib_per_s(total, || plain_download(&client, source.addr, connections)),
                &mut || mib_per_s(total, || device_download(&mut device, source.addr, connections)),
            );
            row(&format!("download MiB/s, {connections} conn"), plain, through, busy);
        }
        if selection.wants(&format!("upload{connections}")) {
            let sink = RustlsServer::start(loopback, &identity, &versions, Behaviour::Discard);
            let (plain, through, busy) = measure(
                &mut || mib_per_s(total, || plain_upload(&client, sink.addr, connections, per_connection)),
                &mut || mib_per_s(total, || device_upload(&mut device, sink.addr, connections, per_connection, &bed)),
            );
            row(&format!("upload MiB/s, {connections} conn"), plain, through, busy);
        }
    }

    let echo = RustlsServer::start(loopback, &identity, &versions, Behaviour::Echo);
    if selection.wants("handshakes") {
        let plain_cycles = || {
            for _ in 0..handshakes {
                let mut tls = plain_connect(&client, echo.addr);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        };
        let (plain, through, busy) = measure(&mut || per_second(handshakes, plain_cycles), &mut || {
            per_second(handshakes, || {
                for _ in 0..handshakes {
                    let id = device_connect(&mut device, echo.addr);
                    device.close(id).unwrap();
                }
            })
        });
        row("handshakes/s (sequential)", plain, through, busy);
    }

    if selection.wants("handshakes8") {
        // Eight connections handshaking at a time: plain, eight threads;
        // through the device, eight sockets connecting at once.
        const AT_ONCE: usize = 8;
        let per_thread = handshakes.div_ceil(AT_ONCE);
        let total = per_thread * AT_ONCE;
        let plain_parallel = || {
            let threads: Vec<_> = (0..AT_ONCE)
                .map(|_| {
                    let (client, addr) = (client.clone(), echo.addr);
                    std::thread::spawn(move || {
                        for _ in 0..per_thread {
                            let mut tls = plain_connect(&client, addr);
                            tls.conn.send_close_notify();
                            let _ = tls.flush();
                        }
                    })
                })
                .collect();
            threads.into_iter().for_each(|t| t.join().unwrap());
        };
        let (plain, through, busy) = measure(&mut || per_second(total, plain_parallel), &mut || {
            per_second(total, || device_parallel_handshakes(&mut device, echo.addr, total, AT_ONCE))
        });
        row("handshakes/s (8 at a time)", plain, through, busy);
    }

    if selection.wants("round-trip") {
        let plain_round_trips = || {
            let mut tls = plain_connect(&client, echo.addr);
            let mut byte = [0u8; 64];
            per_second(round_trips, || {
                for _ in 0..round_trips {
                    tls.write_all(&byte).unwrap();
                    tls.read_exact(&mut byte).unwrap();
                }
            })
        };
        let device_round_trips = |device: &mut TlsDevice, echo: SocketAddr| {
            let id = device_connect(device, echo);
            let rate = per_second(round_trips, || {
                for _ in 0..round_trips {
                    device.send_all(id, &[0u8; 64], TIMEOUT).unwrap();
                    device.read_exact(id, 64, TIMEOUT).unwrap();
                }
            });
            device.close(id).unwrap();
            rate
        };
        let (plain, through, busy) = measure(&mut || plain_round_trips(), &mut || device_round_trips(&mut device, echo.addr));
        round_trip_row("64-byte round trip, µs (lower=better)", plain, through, busy);
        if busy_poll_us > 0 {
            // The same with both sides of the device polling before they
            // sleep: the backend (`--busy-poll-us`) and the harness's
            // guest, as a latency-minded guest does with busy_poll.
            let busy_poll = Duration::from_micros(busy_poll_us);
            let shape = DeviceShape { queue_pairs: 1, busy_poll };
            let polling_bed = Testbed::start_with_shape(LOOPBACK_POLICY, shape, |_, _| {});
            let identity = polling_bed.ca.issue(&pki::loopback_names(), Validity::Current);
            let polling_echo = RustlsServer::start(loopback, &identity, &versions, Behaviour::Echo);
            let mut polling_device = polling_bed.driver();
            polling_device.set_busy_poll(busy_poll);
            // Against a plain client that polls too (a non-blocking socket
            // read in a loop), so that like is compared with like.
            let plain_polling = || {
                let mut tls = plain_connect(&client, echo.addr);
                tls.sock.set_nonblocking(true).unwrap();
                let mut byte = [0u8; 64];
                per_second(round_trips, || {
                    for _ in 0..round_trips {
                        tls.write_all(&byte).unwrap();
                        let mut got = 0;
                        while got < byte.len() {
                            match tls.read(&mut byte[got..]) {
                                Ok(n) => got += n,
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                                Err(e) => panic!("round trip: {e}"),
                            }
                        }
                    }
                })
            };
            let (plain, through, busy) = measure(&mut || plain_polling(), &mut || device_round_trips(&mut polling_device, polling_echo.addr));
            round_trip_row(&format!("  all polling ({busy_poll_us} µs device)"), plain, through, busy);
        }
    }
    println!();
    println!("ratio = device / plain for rates (1.00 = as fast as rustls on the host); for the round trip, device time / plain time.");
    println!("worker, guest = CPU share of the backend's worker thread and of the harness thread playing the guest, during the device runs.");
}

/// The middle value (NaN when the side was not measured).
fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs.get(runs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// CPU shares of the device side's two threads during a measurement.
struct Busy {
    worker: f64,
    guest: f64,
}

fn row(metric: &str, plain: f64, device: f64, busy: Busy) {
    println!(
        "{metric:<34} {plain:>14.1} {device:>14.1} {:>8.2} {:>7.0}% {:>7.0}%",
        device / plain,
        busy.worker * 100.0,
        busy.guest * 100.0
    );
}

fn round_trip_row(metric: &str, plain: f64, device: f64, busy: Busy) {
    println!(
        "{metric:<34} {:>14.1} {:>14.1} {:>8.2} {:>7.0}% {:>7.0}%",
        1e6 / plain,
        1e6 / device,
        plain / device,
        busy.worker * 100.0,
        busy.guest * 100.0
    );
}

/// The backend's worker thread: vhost-user-backend names it so.
const WORKER: &str = "vring_worker";
/// The harness thread that plays the guest: the main thread.
const GUEST: &str = "vhost-tls-bench";

/// CPU time (user + system) used so far by the threads of this process
/// named `name`.
fn thread_cpu_seconds(name: &str) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return f64::NAN };
    let main_thread = std::process::id().to_string();
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        // The guest thread is the main one; peers' threads share its name.
        let wanted = if name == GUEST {
            task.file_name().to_str() == Some(main_thread.as_str())
        } else {
            std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim_end() == name
        };
        if !wanted {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        ticks += fields.get(11).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        ticks += fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    }
    ticks as f64 / ticks_per_second
}

fn plain_connect(config: &Arc<ClientConfig>, addr: SocketAddr) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    let conn = ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    tls
}

fn plain_download(config: &Arc<ClientConfig>, addr: SocketAddr, connections: usize) {
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || {
                let mut tls = plain_connect(&config, addr);
                let mut buf = vec![0u8; 256 * 1024];
                while tls.read(&mut buf).unwrap() > 0 {}
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
}

fn plain_upload(config: &Arc<ClientConfig>, addr: SocketAddr, connections: usize, bytes: u64) {
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || {
                let mut tls = plain_connect(&config, addr);
                let buf = vec![0x42u8; 256 * 1024];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    tls.write_all(&buf[..n]).unwrap();
                    left -= n as u64;
                }
                tls.conn.send_close_notify();
                tls.flush().unwrap();
                // Wait for the server's close_notify: all bytes arrived.
                let mut rest = Vec::new();
                let _ = tls.read_to_end(&mut rest);
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
}

fn device_connect(device: &mut TlsDevice, addr: SocketAddr) -> u32 {
    let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
    device.set_option(id, wire::TLS_HOSTNAME, b"localhost").unwrap();
    let SocketAddr::V4(v4) = addr else { unreachable!("loopback v4") };
    device.connect(id, SockAddr::ipv4(v4.ip().octets(), v4.port()), TIMEOUT).unwrap();
    id
}

/// `total` connect + handshake + close cycles, `at_once` of them in flight.
fn device_parallel_handshakes(device: &mut TlsDevice, addr: SocketAddr, total: usize, at_once: usize) {
    let SocketAddr::V4(v4) = addr else { unreachable!("loopback v4") };
    let start = |device: &mut TlsDevice| {
        let id = device.create(wire::VIRTIO_TLS_AF_INET).unwrap();
        device.set_option(id, wire::TLS_HOSTNAME, b"localhost").unwrap();
        device.start_connect(id, SockAddr::ipv4(v4.ip().octets(), v4.port())).unwrap();
        id
    };
    let mut in_flight: Vec<u32> = (0..at_once.min(total)).map(|_| start(device)).collect();
    let mut started = in_flight.len();
    while !in_flight.is_empty() {
        let mut finished = Vec::new();
        for &id in &in_flight {
            match device.connect_result(id) {
                Some(Ok(())) => finished.push(id),
                Some(Err(e)) => panic!("handshake failed: {e}"),
                None => {}
            }
        }
        if finished.is_empty() {
            device.wait(Duration::from_millis(1));
            continue;
        }
        in_flight.retain(|id| !finished.contains(id));
        for id in finished {
            device.close(id).unwrap();
            if started < total {
                in_flight.push(start(device));
                started += 1;
            }
        }
    }
}

fn device_download(device: &mut TlsDevice, addr: SocketAddr, connections: usize) {
    let mut open: Vec<u32> = (0..connections).map(|_| device_connect(device, addr)).collect();
    while !open.is_empty() {
        let mut progressed = false;
        open.retain(|&id| match device.try_recv(id, 1 << 20) {
            Recv::Data(_) => {
                progressed = true;
                true
            }
            Recv::WouldBlock => true,
            Recv::Eof => {
                device.close(id).unwrap();
                false
            }
            Recv::Error(e) => panic!("download failed: {e}"),
        });
        if !progressed {
            device.wait(Duration::from_millis(1));
        }
    }
}

fn device_upload(device: &mut TlsDevice, addr: SocketAddr, connections: usize, bytes: u64, bed: &Testbed) {
    let ids: Vec<u32> = (0..connections).map(|_| device_connect(device, addr)).collect();
    let buf = vec![0x42u8; 256 * 1024];
    let mut left = vec![bytes; connections];
    while left.iter().any(|&l| l > 0) {
        let mut progressed = false;
        for (i, &id) in ids.iter().enumerate() {
            if left[i] > 0 {
                let n = left[i].min(buf.len() as u64) as usize;
                let sent = device.try_send(id, &buf[..n]).unwrap();
                left[i] -= sent as u64;
                progressed |= sent > 0;
            }
        }
        if !progressed {
            device.wait(Duration::from_millis(1));
        }
    }
    for &id in &ids {
        device.shutdown(id, wire::VIRTIO_TLS_SHUT_WR).unwrap();
    }
    for &id in &ids {
        let end = device.recv(id, 1024, Duration::from_secs(20));
        assert_eq!(end, Recv::Eof, "the sink acknowledges the end; device sockets: {:#?}", bed.server.sockets());
        device.close(id).unwrap();
    }
}
