//! The control socket of a running backend (`serve --control-socket`) and
//! its client (`vhost-tls ctl`).
//!
//! Protocol: a Unix stream socket; the client sends one request as a line
//! of JSON and reads one response line of JSON, then the connection ends.
//!
//! ```text
//! {"command":"sockets"}                  {"ok":true,"output":"ID ROLE ..."}
//! {"command":"policy"}                   {"ok":true,"output":"[tls]\n..."}
//! {"command":"reload"}                   {"ok":true,"output":"policy generation 2 ..."}
//! {"command":"reload","policy":"/etc/vhost-tls/vm1.toml"}
//! {"command":"metrics"}                  {"ok":true,"output":"# HELP ..."}
//!                                        {"ok":false,"output":"vm1.toml:3: ..."}
//! ```
//!
//! Requests are served one at a time on a thread of their own; each holds
//! the device lock only for as long as it takes to read or swap state, so
//! the worker thread's event loop is never stalled by a slow client.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tls_engine::Policy;

use crate::device::SocketReport;
use crate::server::Server;

/// Longest request line accepted; requests are tiny, this only stops a
/// confused client from growing the backend's memory.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Request {
    /// The device's sockets and their sessions, as a table.
    Sockets,
    /// The effective policy, after includes and defaults.
    Policy,
    /// Load the policy file again (or `policy`, which then stays the file
    /// later reloads read) and apply it to new sessions.
    Reload {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<PathBuf>,
    },
    /// Prometheus text format.
    Metrics,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What to print: the answer, or the error.
    pub output: String,
}

/// What the control socket and SIGHUP act on.
pub struct Control {
    server: Arc<Server>,
    /// The file reloads read.
    policy_path: Mutex<PathBuf>,
}

impl Control {
    pub fn new(server: Arc<Server>, policy_path: PathBuf) -> Control {
        Control { server, policy_path: Mutex::new(policy_path) }
    }

    pub fn handle(&self, request: &Request) -> Response {
        let result = match request {
            Request::Sockets => Ok(sockets_table(&self.server.sockets())),
            Request::Policy => Ok(self.effective_policy()),
            Request::Reload { policy } => self.reload(policy.clone()),
            Request::Metrics => Ok(self.server.metrics()),
        };
        match result {
            Ok(output) => Response { ok: true, output },
            Err(output) => Response { ok: false, output },
        }
    }

    /// Loads the policy file (`path`, or the one in use) and applies it to
    /// new sessions. A policy that does not load is refused with its error
    /// (file:line) and the one in force stays.
    pub fn reload(&self, path: Option<PathBuf>) -> Result<String, String> {
        let path = path.unwrap_or_else(|| self.policy_path().clone());
        let policy = match Policy::load(&path) {
            Ok(policy) => Arc::new(policy),
            Err(error) => {
                self.server.backend().with_device(|device| device.count_failed_reload());
                tracing::warn!(%error, "policy reload refused; the policy in force stays");
                let hint = crate::sandbox::reload_hint(&error.to_string());
                return Err(format!("reload refused, the policy in force stays: {error}{hint}"));
            }
        };
        let generation = self
            .server
            .reload_policy(policy)
            .map_err(|error| format!("reload refused, the policy in force stays: {}: {error}", path.display()))?;
        let message = format!("policy generation {generation} loaded from {}: new sessions use it", path.display());
        *self.policy_path() = path;
        Ok(message)
    }

    fn policy_path(&self) -> std::sync::MutexGuard<'_, PathBuf> {
        self.policy_path.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn effective_policy(&self) -> String {
        let (policy, generation) =
            self.server.backend().with_device(|device| (device.policy().clone(), device.policy_generation()));
        format!("# policy generation {generation}, from {}\n\n{policy}", self.policy_path().display())
    }
}

/// Binds the control socket at `path`, replacing a stale one; only the
/// backend's user may connect. Bound before the backend starts, so that a
/// path that cannot be used stops it before a VM depends on it.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    // Reloading and reading sessions is the operator's business alone.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the control socket on a thread of its own.
pub fn serve(listener: UnixListener, control: Arc<Control>) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("vhost-tls-control".to_owned()).spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    if let Err(error) = serve_one(stream, &control) {
                        tracing::debug!(%error, "control connection failed");
                    }
                }
                Err(error) => tracing::warn!(%error, "control socket accept failed"),
            }
        }
    })
}

fn serve_one(stream: UnixStream, control: &Control) -> io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST_BYTES)).read_line(&mut line)?;
    let response = match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => {
            // Scrapes come every few seconds; only changes are worth a line.
            match request {
                Request::Reload { .. } => tracing::info!(?request, "control request"),
                _ => tracing::debug!(?request, "control request"),
            }
            control.handle(&request)
        }
        Err(error) => Response { ok: false, output: format!("bad request {:?}: {error}", line.trim()) },
    };
    let mut text = serde_json::to_string(&response).map_err(io::Error::other)?;
    text.push('\n');
    (&stream).write_all(text.as_bytes())
}

/// Sends `request` to the backend listening at `path` and returns its answer.
pub fn request(path: &Path, request: &Request) -> io::Result<Response> {
    let mut stream = UnixStream::connect(path)?;
    let mut text = serde_json::to_string(request).map_err(io::Error::other)?;
    text.push('\n');
    stream.write_all(text.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    serde_json::from_str(answer.trim())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad response from the backend: {e}")))
}

/// One line per socket, columns aligned.
pub fn sockets_table(reports: &[SocketReport]) -> String {
    let header = ["ID", "ROLE", "STATE", "PEER", "NAME", "VERSION", "CIPHER", "TO_PEER", "FROM_PEER", "POLICY"];
    let or_dash = |value: Option<String>| value.filter(|v| !v.is_empty()).unwrap_or_else(|| "-".to_owned());
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let mut state = format!("{:?}", r.phase).to_ascii_lowercase();
            if r.closing {
                state.push_str(",closing");
            }
            // A client socket's name is the one it verifies; an accepted
            // connection's the one its client asked for (SNI).
            let name = if r.role == "server" { r.requested_name.clone() } else { Some(r.server_name.clone()) };
            vec![
                r.id.to_string(),
                or_dash(Some(r.role.to_owned())),
                state,
                or_dash(r.peer.map(|p| p.to_string())),
                or_dash(name),
                or_dash(r.tls_version.map(|v| v.to_string())),
                or_dash(r.cipher.clone()),
                r.bytes_to_peer.to_string(),
                r.bytes_from_peer.to_string(),
                or_dash(r.policy_generation.map(|g| g.to_string())),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header.iter().map(|h| h.to_string()).collect::<Vec<_>>()).chain(rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_json_lines() {
        assert_eq!(serde_json::to_string(&Request::Sockets).unwrap(), r#"{"command":"sockets"}"#);
        assert_eq!(serde_json::to_string(&Request::Reload { policy: None }).unwrap(), r#"{"command":"reload"}"#);
        let reload: Request = serde_json::from_str(r#"{"command":"reload","policy":"/etc/vm1.toml"}"#).unwrap();
        assert_eq!(reload, Request::Reload { policy: Some(PathBuf::from("/etc/vm1.toml")) });
        assert!(serde_json::from_str::<Request>(r#"{"command":"shutdown"}"#).is_err());
    }
}
