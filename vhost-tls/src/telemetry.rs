//! What the operator learns about sessions: the JSON-lines audit log (one
//! record per session, written when it ends) and the counters behind the
//! Prometheus metrics.
//!
//! A session is one connection attempt of a guest socket: a CONNECT (a
//! client session, whether it is refused by policy, fails or completes) or
//! a connection a listening socket accepted (a server session). It ends
//! when the connection fails or the socket is closed, and only then is its
//! record written, so a record is complete and there is exactly one.
//!
//! Requests refused before any session starts (a CONNECT over a handshake
//! limit, a BIND the policy does not allow) are no sessions: a guest can
//! repeat them at will. They are counted, and audited as bursts: one record
//! per kind of refusal (request and errno) with the number of refusals,
//! written once the burst ends (a quiet second, or ten seconds after it
//! began).
//!
//! Everything here runs on the device's worker thread with the device lock
//! held; records are written with one `write` each to a file opened for
//! appending, so lines never interleave even with other writers.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tls_engine::errno::Errno;
use tls_engine::TlsVersion;

use crate::socket::Socket;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The guest connected out.
    Client,
    /// A client connected to a guest's listening socket.
    Server,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Client => "client",
            Direction::Server => "server",
        }
    }
}

/// A session in progress, kept in its socket.
#[derive(Clone, Debug)]
pub struct Session {
    /// `INSTANCE-N`: the backend process's random instance id and the
    /// session's number in it, so that ids never repeat across restarts.
    pub id: String,
    pub direction: Direction,
    pub started: SystemTime,
    /// The name the client verifies (client sessions) or asked for by SNI
    /// (server sessions, known once the handshake is done).
    pub server_name: Option<String>,
    pub established: bool,
    /// The policy generation the session was started under.
    pub policy_generation: u64,
    /// The socket's byte counters when the session started (a socket may
    /// connect again after a failure).
    pub(crate) bytes_to_peer_before: u64,
    pub(crate) bytes_from_peer_before: u64,
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The guest closed the socket before the handshake completed.
    Abandoned,
    /// The errno the guest saw and the TLS_ERROR reason.
    Failed { errno: Errno, reason: String },
}

impl Outcome {
    pub fn failed(errno: Errno, reason: impl Into<String>) -> Outcome {
        Outcome::Failed { errno, reason: reason.into() }
    }
}

/// Why handshakes fail, coarsely enough for a metrics label.
pub const FAILURE_CLASSES: [&str; 8] = ["denied", "certificate", "version", "tls", "timeout", "network", "abandoned", "other"];

/// The class of a failure, from its errno and the reasons
/// `tls_engine::tls::describe_error` and the destination check write.
pub fn failure_class(errno: Errno, reason: &str) -> &'static str {
    match errno {
        Errno::EACCES => "denied",
        Errno::ETIMEDOUT => "timeout",
        Errno::EPROTO if reason.starts_with("certificate verification failed") => "certificate",
        Errno::EPROTO if reason.contains("supports no TLS version") => "version",
        Errno::EPROTO => "tls",
        Errno::ECONNREFUSED | Errno::ECONNRESET | Errno::EHOSTUNREACH | Errno::ENETUNREACH | Errno::EPIPE => "network",
        _ => "other",
    }
}

/// Upper bounds (seconds) of the handshake duration histogram's buckets:
/// a resumed handshake on a LAN takes about a millisecond, a full one
/// across the world a few hundred.
pub const HANDSHAKE_BUCKETS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A Prometheus histogram of durations.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound of [`HANDSHAKE_BUCKETS`] (not
    /// cumulative here; the exposition adds them up).
    pub buckets: [u64; HANDSHAKE_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        if let Some(bucket) = HANDSHAKE_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket] += 1;
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// Counters since the backend started.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// From the start of the TLS handshake (the TCP connection is up) to
    /// its completion.
    pub handshake_seconds: BTreeMap<Direction, Histogram>,
    /// When the policy was last loaded (at start, or a reload applied or
    /// refused) and whether that worked.
    pub last_reload: Option<(SystemTime, bool)>,
    pub handshakes: BTreeMap<Direction, u64>,
    pub handshake_failures: BTreeMap<(Direction, &'static str), u64>,
    /// Sessions that failed after their handshake (peer reset, bad record).
    pub session_failures: BTreeMap<Direction, u64>,
    pub denied_destinations: u64,
    /// Bytes of sessions that have ended; open ones are added when read.
    pub ended_bytes_to_peer: u64,
    pub ended_bytes_from_peer: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Requests refused before a session, by request and errno name.
    pub refusals: BTreeMap<(&'static str, &'static str), u64>,
    /// SETSOCKOPTs the policy refused with EPERM (spec 2.6.10).
    pub sockopt_refused: u64,
}

impl Metrics {
    /// A policy reload was applied (`ok`) or refused.
    pub fn record_reload(&mut self, ok: bool) {
        if ok {
            self.reloads_ok += 1;
        } else {
            self.reloads_failed += 1;
        }
        self.last_reload = Some((SystemTime::now(), ok));
    }
}

/// The live numbers that go with [`Metrics`] in one scrape.
pub struct Snapshot {
    pub metrics: Metrics,
    pub sockets_open: usize,
    pub bytes_to_peer: u64,
    pub bytes_from_peer: u64,
    pub policy_generation: u64,
    /// Events waiting for the driver's event buffers.
    pub events_pending: usize,
    /// `vm="NAME"` on every sample (serve --vm-name).
    pub vm: Option<String>,
    /// The backend process's instance id (the prefix of its session ids).
    pub instance: String,
}

impl Snapshot {
    /// The Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in samples {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        let directions = [Direction::Client, Direction::Server];
        let m = &self.metrics;
        family(
            "vhost_tls_sockets_open",
            "gauge",
            "Guest sockets the device holds, in any state.",
            vec![(String::new(), self.sockets_open as u64)],
        );
        family(
            "vhost_tls_handshakes_total",
            "counter",
            "TLS handshakes completed.",
            directions
                .iter()
                .map(|d| (format!("{{direction=\"{}\"}}", d.as_str()), m.handshakes.get(d).copied().unwrap_or(0)))
                .collect(),
        );
        family(
            "vhost_tls_handshake_failures_total",
            "counter",
            "Sessions that failed before their handshake completed, by reason class.",
            directions
                .iter()
                .flat_map(|d| FAILURE_CLASSES.iter().map(move |class| (*d, *class)))
                .map(|(d, class)| {
                    (
                        format!("{{direction=\"{}\",reason=\"{class}\"}}", d.as_str()),
                        m.handshake_failures.get(&(d, class)).copied().unwrap_or(0),
                    )
                })
                .collect(),
        );
        family(
            "vhost_tls_session_failures_total",
            "counter",
            "Established sessions that ended in an error.",
            directions
                .iter()
                .map(|d| (format!("{{direction=\"{}\"}}", d.as_str()), m.session_failures.get(d).copied().unwrap_or(0)))
                .collect(),
        );
        family(
            "vhost_tls_denied_destinations_total",
            "counter",
            "Connects the policy refused.",
            vec![(String::new(), m.denied_destinations)],
        );
        family(
            "vhost_tls_bytes_total",
            "counter",
            "Application bytes, guest to peer and peer to guest.",
            vec![
                ("{direction=\"to_peer\"}".to_owned(), self.bytes_to_peer),
                ("{direction=\"from_peer\"}".to_owned(), self.bytes_from_peer),
            ],
        );
        family(
            "vhost_tls_policy_reloads_total",
            "counter",
            "Policy reloads, applied and refused.",
            vec![("{result=\"ok\"}".to_owned(), m.reloads_ok), ("{result=\"failed\"}".to_owned(), m.reloads_failed)],
        );
        let mut refusals = m.refusals.clone();
        // Present from the start, so that a dashboard finds the series.
        refusals.entry(("connect", Errno::EAGAIN.name())).or_default();
        refusals.entry(("bind", Errno::EACCES.name())).or_default();
        family(
            "vhost_tls_refusals_total",
            "counter",
            "Requests refused before any session (a CONNECT over a handshake limit, a BIND the policy does not allow), by request and errno.",
            refusals.into_iter().map(|((request, errno), n)| (format!("{{request=\"{request}\",errno=\"{errno}\"}}"), n)).collect(),
        );
        family(
            "vhost_tls_events_pending",
            "gauge",
            "Events waiting for the guest driver to post event buffers.",
            vec![(String::new(), self.events_pending as u64)],
        );
        family(
            "vhost_tls_sockopt_refused_total",
            "counter",
            "Socket options the policy refused (EPERM).",
            vec![(String::new(), m.sockopt_refused)],
        );
        family(
            "vhost_tls_policy_generation",
            "gauge",
            "The policy in force: 1 at start, one more per applied reload.",
            vec![(String::new(), self.policy_generation)],
        );
        family(
            "vhost_tls_policy_last_reload_successful",
            "gauge",
            "Whether the last policy load (at start, or the last reload) was applied (1) or refused (0).",
            vec![(String::new(), m.last_reload.map_or(1, |(_, ok)| u64::from(ok)))],
        );
        let build_labels = format!(
            "{{version=\"{}\",instance=\"{}\"}}",
            env!("CARGO_PKG_VERSION"),
            self.instance
        );
        family(
            "vhost_tls_build_info",
            "gauge",
            "The backend's version and this process's instance id (the prefix of its audit session ids); always 1.",
            vec![(build_labels, 1)],
        );
        let last_reload = m.last_reload.map_or(0.0, |(at, _)| at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64());
        out.push_str(&format!(
            "# HELP vhost_tls_policy_last_reload_timestamp_seconds When the policy was last loaded (at start, or the last reload, applied or refused), Unix time.\n\
             # TYPE vhost_tls_policy_last_reload_timestamp_seconds gauge\n\
             vhost_tls_policy_last_reload_timestamp_seconds {last_reload:.3}\n"
        ));
        out.push_str(
            "# HELP vhost_tls_handshake_duration_seconds TLS handshakes completed, by how long they took from the TCP connection to the end of the handshake.\n\
             # TYPE vhost_tls_handshake_duration_seconds histogram\n",
        );
        for direction in directions {
            let histogram = m.handshake_seconds.get(&direction).cloned().unwrap_or_default();
            let d = direction.as_str();
            let mut cumulative = 0;
            for (bound, n) in HANDSHAKE_BUCKETS.iter().zip(histogram.buckets) {
                cumulative += n;
                out.push_str(&format!("vhost_tls_handshake_duration_seconds_bucket{{direction=\"{d}\",le=\"{bound}\"}} {cumulative}\n"));
            }
            out.push_str(&format!(
                "vhost_tls_handshake_duration_seconds_bucket{{direction=\"{d}\",le=\"+Inf\"}} {}\n\
                 vhost_tls_handshake_duration_seconds_sum{{direction=\"{d}\"}} {:.6}\n\
                 vhost_tls_handshake_duration_seconds_count{{direction=\"{d}\"}} {}\n",
                histogram.count, histogram.sum_seconds, histogram.count
            ));
        }
        match &self.vm {
            Some(vm) => with_label(&out, "vm", vm),
            None => out,
        }
    }
}

/// Prometheus text with `name="value"` added to every sample that has no
/// label `name` yet.
pub fn with_label(text: &str, name: &str, value: &str) -> String {
    let value = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let mut out = String::with_capacity(text.len());
    let present = |labels: &str| labels.starts_with(&format!("{name}=")) || labels.contains(&format!(",{name}="));
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() || line.split_once('{').is_some_and(|(_, rest)| present(rest)) {
            out.push_str(line);
        } else if let Some((series, rest)) = line.split_once('{') {
            out.push_str(&format!("{series}{{{name}=\"{value}\",{rest}"));
        } else if let Some((series, sample)) = line.split_once(' ') {
            out.push_str(&format!("{series}{{{name}=\"{value}\"}} {sample}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// One line of the audit log.
#[derive(Debug, Serialize)]
struct AuditRecord<'a> {
    start: String,
    end: String,
    /// The VM (serve --vm-name).
    vm: Option<&'a str>,
    /// Unique across backend restarts: see [`Session::id`].
    session: &'a str,
    socket: u32,
    direction: Direction,
    peer: Option<String>,
    server_name: Option<&'a str>,
    tls_version: Option<String>,
    cipher: Option<&'a str>,
    /// The ALPN protocol agreed on; `None` when none was (or no handshake).
    alpn: Option<String>,
    /// Whether the handshake resumed an earlier session; `None` without one.
    resumed: Option<bool>,
    /// SHA-256 of the peer's certificate (DER), hex: the server's for a
    /// client session, the client's (if it sent one) for a server session.
    peer_certificate_sha256: Option<&'a str>,
    /// "ok", "error" or "abandoned".
    outcome: &'static str,
    errno: Option<u32>,
    errno_name: Option<&'static str>,
    reason: Option<&'a str>,
    bytes_to_peer: u64,
    bytes_from_peer: u64,
    policy_generation: u64,
}

/// The audit record of a burst of refusals.
#[derive(Debug, Serialize)]
struct RefusalRecord<'a> {
    start: String,
    end: String,
    vm: Option<&'a str>,
    /// "connect" or "bind".
    request: &'static str,
    direction: Direction,
    /// Always "refused".
    outcome: &'static str,
    errno: u32,
    errno_name: &'static str,
    /// The first refusal's reason.
    reason: &'a str,
    count: u64,
    policy_generation: u64,
}

/// Refusals of one kind, since the first of the burst.
#[derive(Debug)]
struct RefusalBurst {
    started: SystemTime,
    started_at: Instant,
    last_at: Instant,
    ended: SystemTime,
    errno: Errno,
    reason: String,
    count: u64,
    policy_generation: u64,
}

/// A burst of refusals ends after this long without one...
const REFUSAL_QUIET: Duration = Duration::from_secs(1);
/// ...or this long after it began (a steady stream gets a record this often).
const REFUSAL_BURST: Duration = Duration::from_secs(10);

/// Denied destinations audited one record each per window; past that, the
/// window's further denials go into one refusal record with a count.
const DENIAL_RECORDS_PER_WINDOW: u32 = 16;
const DENIAL_WINDOW: Duration = Duration::from_secs(10);

/// How many denied destinations the current window has audited one by one.
#[derive(Default)]
struct DenialWindow {
    started_at: Option<Instant>,
    records: u32,
}

impl DenialWindow {
    /// Whether a denial at `now` still gets a record of its own.
    fn admit(&mut self, now: Instant) -> bool {
        if self.started_at.is_none_or(|started| now.saturating_duration_since(started) >= DENIAL_WINDOW) {
            *self = DenialWindow { started_at: Some(now), records: 0 };
        }
        self.records += 1;
        self.records <= DENIAL_RECORDS_PER_WINDOW
    }
}

/// The session bookkeeping of one device.
pub struct Telemetry {
    pub metrics: Metrics,
    audit: Option<Box<dyn Write + Send>>,
    /// Bursts of refusals not yet written, by request and errno.
    refusals: BTreeMap<(&'static str, u32), RefusalBurst>,
    denials: DenialWindow,
    /// The VM's name, in every audit record and metric.
    vm: Option<String>,
    /// Random, once per backend process: the prefix of its session ids.
    instance: String,
    /// Sessions begun so far.
    sessions: u64,
}

impl Default for Telemetry {
    fn default() -> Telemetry {
        let mut random = [0u8; 8];
        // A restarted backend must not repeat the ids of the one before, so
        // neither a counter alone nor the pid (reused) will do.
        if rustls::crypto::ring::default_provider().secure_random.fill(&mut random).is_err() {
            let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
            random = (nanos as u64 ^ u64::from(std::process::id()).rotate_left(48)).to_be_bytes();
        }
        Telemetry {
            metrics: Metrics { last_reload: Some((SystemTime::now(), true)), ..Metrics::default() },
            audit: None,
            refusals: BTreeMap::new(),
            denials: DenialWindow::default(),
            vm: None,
            instance: random.iter().map(|byte| format!("{byte:02x}")).collect(),
            sessions: 0,
        }
    }
}

impl Telemetry {
    pub fn set_audit_log(&mut self, log: Box<dyn Write + Send>) {
        // The records still held (bursts of refusals) go to the file they
        // began in, which logrotate has renamed: written now, not lost.
        self.flush_refusals(true);
        self.audit = Some(log);
    }

    /// Puts `vm="NAME"` in every audit record and metric.
    pub fn set_vm_name(&mut self, name: String) {
        self.vm = Some(name);
    }

    pub fn vm_name(&self) -> Option<&str> {
        self.vm.as_deref()
    }

    /// The prefix of this process's session ids.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A `request` ("connect" or "bind") was refused with `errno` before
    /// any session: counted, and audited with the rest of its burst.
    pub fn refused(&mut self, request: &'static str, errno: Errno, reason: &str, policy_generation: u64) {
        *self.metrics.refusals.entry((request, errno.name())).or_default() += 1;
        self.add_to_burst(request, errno, reason, policy_generation);
    }

    /// Audits a refusal with the rest of its burst (one record with a count).
    fn add_to_burst(&mut self, request: &'static str, errno: Errno, reason: &str, policy_generation: u64) {
        let now = Instant::now();
        let key = (request, errno.0);
        if self.refusals.get(&key).is_some_and(|burst| now.saturating_duration_since(burst.started_at) >= REFUSAL_BURST) {
            let burst = self.refusals.remove(&key).expect("looked up above");
            self.write_refusals(request, &burst);
        }
        let burst = self.refusals.entry(key).or_insert_with(|| RefusalBurst {
            started: SystemTime::now(),
            started_at: now,
            last_at: now,
            ended: SystemTime::now(),
            errno,
            reason: reason.to_owned(),
            count: 0,
            policy_generation,
        });
        burst.count += 1;
        burst.last_at = now;
        burst.ended = SystemTime::now();
    }

    /// Writes the records of bursts of refusals that have ended (all of
    /// them with `all`: the device stops or resets).
    pub fn flush_refusals(&mut self, all: bool) {
        let now = Instant::now();
        let ended: Vec<(&'static str, u32)> = self
            .refusals
            .iter()
            .filter(|(_, burst)| {
                all || now.saturating_duration_since(burst.last_at) >= REFUSAL_QUIET
                    || now.saturating_duration_since(burst.started_at) >= REFUSAL_BURST
            })
            .map(|(key, _)| *key)
            .collect();
        for key in ended {
            let burst = self.refusals.remove(&key).expect("collected above");
            self.write_refusals(key.0, &burst);
        }
    }

    fn write_refusals(&mut self, request: &'static str, burst: &RefusalBurst) {
        let Some(audit) = self.audit.as_mut() else { return };
        let record = RefusalRecord {
            start: timestamp(burst.started),
            end: timestamp(burst.ended),
            vm: self.vm.as_deref(),
            request,
            direction: if request == "bind" { Direction::Server } else { Direction::Client },
            outcome: "refused",
            errno: burst.errno.0,
            errno_name: burst.errno.name(),
            reason: &burst.reason,
            count: burst.count,
            policy_generation: burst.policy_generation,
        };
        let mut line = serde_json::to_string(&record).expect("audit records serialize");
        line.push('\n');
        if let Err(error) = audit.write_all(line.as_bytes()).and_then(|()| audit.flush()) {
            tracing::warn!(%error, "cannot write the audit log");
        }
    }

    /// A session starts on `socket`.
    pub fn begin(&mut self, socket: &mut Socket, direction: Direction, server_name: Option<String>, policy_generation: u64) {
        self.sessions += 1;
        socket.session = Some(Session {
            id: format!("{}-{}", self.instance, self.sessions),
            direction,
            started: SystemTime::now(),
            server_name,
            established: false,
            policy_generation,
            bytes_to_peer_before: socket.bytes_to_peer,
            bytes_from_peer_before: socket.bytes_from_peer,
        });
    }

    /// The handshake of the session on `socket` completed.
    pub fn established(&mut self, socket: &mut Socket) {
        let requested_name = socket.requested_server_name().map(str::to_owned);
        let Some(session) = socket.session.as_mut() else { return };
        if session.established {
            return;
        }
        session.established = true;
        if session.direction == Direction::Server {
            session.server_name = requested_name;
        }
        *self.metrics.handshakes.entry(session.direction).or_default() += 1;
        if let Some(started) = socket.handshake_started {
            self.metrics.handshake_seconds.entry(session.direction).or_default().observe(started.elapsed());
        }
    }

    /// The session on `socket`, if one is open, ended: count it and write
    /// its record.
    pub fn end(&mut self, socket: &mut Socket, outcome: Outcome) {
        let Some(session) = socket.session.take() else { return };
        let to_peer = socket.bytes_to_peer - session.bytes_to_peer_before;
        let from_peer = socket.bytes_from_peer - session.bytes_from_peer_before;
        self.metrics.ended_bytes_to_peer += to_peer;
        self.metrics.ended_bytes_from_peer += from_peer;
        let class = match &outcome {
            Outcome::Ok => None,
            Outcome::Abandoned => Some("abandoned"),
            Outcome::Failed { errno, reason } => Some(failure_class(*errno, reason)),
        };
        if let Some(class) = class {
            if class == "denied" {
                self.metrics.denied_destinations += 1;
            }
            if session.established {
                *self.metrics.session_failures.entry(session.direction).or_default() += 1;
            } else {
                *self.metrics.handshake_failures.entry((session.direction, class)).or_default() += 1;
            }
        }
        if let (Some("denied"), Direction::Client, Outcome::Failed { errno, reason }) = (class, session.direction, &outcome) {
            // A guest can repeat a denied destination at will: past the
            // window's first records, one record with a count.
            if !self.denials.admit(Instant::now()) {
                self.add_to_burst("connect", *errno, reason, session.policy_generation);
                return;
            }
        }
        let vm = self.vm.as_deref();
        let Some(audit) = self.audit.as_mut() else { return };
        let (errno, reason) = match &outcome {
            Outcome::Ok => (None, None),
            Outcome::Abandoned => (None, Some("the guest closed the socket before the handshake completed")),
            Outcome::Failed { errno, reason } => (Some(*errno), Some(reason.as_str())),
        };
        // What the handshake agreed on, when there was one.
        let handshaken = socket.info.version.is_some();
        let record = AuditRecord {
            start: timestamp(session.started),
            end: timestamp(SystemTime::now()),
            vm,
            session: &session.id,
            socket: socket.id,
            direction: session.direction,
            peer: socket.peer().map(|addr: SocketAddr| addr.to_string()),
            server_name: session.server_name.as_deref(),
            tls_version: socket.info.version.map(|v: TlsVersion| v.to_string()),
            cipher: socket.info.cipher.as_deref(),
            alpn: (!socket.info.alpn.is_empty()).then(|| String::from_utf8_lossy(&socket.info.alpn).into_owned()),
            resumed: handshaken.then_some(socket.info.resumed),
            peer_certificate_sha256: socket.info.peer_certificate_sha256.as_deref(),
            outcome: match outcome {
                Outcome::Ok => "ok",
                Outcome::Abandoned => "abandoned",
                Outcome::Failed { .. } => "error",
            },
            errno: errno.map(|e| e.0),
            errno_name: errno.map(Errno::name),
            reason,
            bytes_to_peer: to_peer,
            bytes_from_peer: from_peer,
            policy_generation: session.policy_generation,
        };
        let mut line = serde_json::to_string(&record).expect("audit records serialize");
        line.push('\n');
        if let Err(error) = audit.write_all(line.as_bytes()).and_then(|()| audit.flush()) {
            tracing::warn!(%error, "cannot write the audit log");
        }
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-12-01T14:03:05.123Z`.
fn timestamp(at: SystemTime) -> String {
    // By hand rather than time's Rfc3339, which drops trailing zeros of the
    // fraction: fixed-width stamps sort as text.
    let at = time::OffsetDateTime::from(at);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tls_engine::tls::describe_error;

    #[test]
    fn failure_classes_follow_the_engine_reasons() {
        let range = (TlsVersion::Tls13, TlsVersion::Tls13);
        let certificate =
            describe_error(&rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer), "a.test", range);
        assert_eq!(failure_class(certificate.errno, &certificate.reason), "certificate");
        let version = describe_error(&rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion), "a", range);
        assert_eq!(failure_class(version.errno, &version.reason), "version");
        let alert = describe_error(&rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure), "a", range);
        assert_eq!(failure_class(alert.errno, &alert.reason), "tls");
        assert_eq!(failure_class(Errno::EACCES, "denied by destinations rule 1 (line 3)"), "denied");
        assert_eq!(failure_class(Errno::ECONNREFUSED, "connecting to 127.0.0.1:1 failed"), "network");
        assert_eq!(failure_class(Errno::ETIMEDOUT, "timed out"), "timeout");
        assert_eq!(failure_class(Errno::EINVAL, "x"), "other");
        assert!(FAILURE_CLASSES.contains(&"network"));
    }

    #[test]
    fn a_label_goes_on_every_sample() {
        let text = "# HELP a A.\n# TYPE a gauge\na 1\nb{direction=\"to_peer\"} 2\n";
        assert_eq!(
            with_label(text, "vm", "web\"1"),
            "# HELP a A.\n# TYPE a gauge\na{vm=\"web\\\"1\"} 1\nb{vm=\"web\\\"1\",direction=\"to_peer\"} 2\n"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_597_785_123) + std::time::Duration::from_nanos(456);
        assert_eq!(timestamp(at), "2025-12-01T14:03:05.123Z");
        let round = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_597_785_100);
        assert_eq!(timestamp(round), "2025-12-01T14:03:05.100Z", "fixed width");
    }
}
