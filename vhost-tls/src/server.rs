//! Serving one front end (QEMU, or a test harness) on a vhost-user socket.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tls_engine::Policy;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::backend::VhostTlsBackend;
use crate::device::{DeviceShape, SocketReport};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot set up the device: {0}")]
    Device(#[source] std::io::Error),
    #[error("cannot listen on {path}: {source}")]
    Listen { path: PathBuf, source: vhost::vhost_user::Error },
    #[error("vhost-user daemon: {0}")]
    Daemon(vhost_user_backend::Error),
    #[error("cannot confine the backend: {0}")]
    Sandbox(#[source] crate::sandbox::SandboxError),
}

impl From<vhost_user_backend::Error> for ServerError {
    fn from(error: vhost_user_backend::Error) -> Self {
        ServerError::Daemon(error)
    }
}

/// Where the backend listens for its front end.
pub enum ListenOn {
    /// Bind this path (replacing a stale socket file); removed at exit.
    Path(PathBuf),
    /// A socket already listening, handed over by the caller (`serve --fd`,
    /// a systemd `.socket` unit): whoever made it owns its path.
    Listener(UnixListener),
}

impl ListenOn {
    /// The socket file this backend made and so removes, if any.
    pub fn own_path(&self) -> Option<&Path> {
        match self {
            ListenOn::Path(path) => Some(path),
            ListenOn::Listener(_) => None,
        }
    }
}

/// A running backend: listening, then serving one front end until it
/// disconnects or [`Server::stop`] is called.
pub struct Server {
    backend: Arc<VhostTlsBackend>,
    connection: Arc<Mutex<Option<ShutdownHandle>>>,
    thread: Mutex<Option<JoinHandle<Result<(), ServerError>>>>,
}

impl Server {
    /// Binds `socket_path` (replacing a stale socket file) and serves the
    /// first front end that connects, on a thread of its own.
    pub fn start(socket_path: &Path, policy: Arc<Policy>, shape: DeviceShape) -> Result<Server, ServerError> {
        Server::start_confined(ListenOn::Path(socket_path.to_owned()), policy, shape, || Ok(()))
    }

    /// As [`Server::start`] on `listen_on`, calling `confine` once the
    /// socket is bound and before any thread starts (see
    /// [`crate::sandbox::confine`]).
    pub fn start_confined(
        listen_on: ListenOn,
        policy: Arc<Policy>,
        shape: DeviceShape,
        confine: impl FnOnce() -> Result<(), crate::sandbox::SandboxError>,
    ) -> Result<Server, ServerError> {
        let backend = Arc::new(VhostTlsBackend::new(policy, shape).map_err(ServerError::Device)?);
        let mut listener = match listen_on {
            ListenOn::Path(path) => Listener::new(&path, true).map_err(|source| ServerError::Listen { path, source })?,
            ListenOn::Listener(handed_over) => Listener::from(handed_over),
        };
        if let Err(error) = confine() {
            // A Listener made from a path removes its file when dropped.
            drop(listener);
            return Err(ServerError::Sandbox(error));
        }
        let mut daemon = VhostUserDaemon::new(
            "vhost-tls".to_owned(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )?;
        for handler in daemon.get_epoll_handlers() {
            handler
                .register_listener(backend.reactor_fd(), EventSet::IN, u64::from(backend.reactor_event()))
                .map_err(ServerError::Device)?;
        }
        let connection = Arc::new(Mutex::new(None));
        let published = connection.clone();
        let worker_backend = backend.clone();
        let thread = std::thread::Builder::new()
            .name("vhost-tls-serve".to_owned())
            .spawn(move || {
                let result = (|| {
                    daemon.start(&mut listener)?;
                    tracing::info!("front end connected");
                    *published.lock().unwrap_or_else(|p| p.into_inner()) = daemon.shutdown_handle();
                    match daemon.wait() {
                        // A front end that goes away (QEMU quitting, a test
                        // dropping its connection) is the normal end.
                        Err(vhost_user_backend::Error::HandleRequest(
                            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
                        )) => Ok(()),
                        other => other.map_err(ServerError::from),
                    }
                })();
                tracing::info!("front end gone");
                worker_backend.request_exit();
                result
            })
            .map_err(ServerError::Device)?;
        Ok(Server { backend, connection, thread: Mutex::new(Some(thread)) })
    }

    pub fn backend(&self) -> &Arc<VhostTlsBackend> {
        &self.backend
    }

    pub fn sockets(&self) -> Vec<SocketReport> {
        self.backend.sockets()
    }

    /// New sessions get `policy`; open ones keep theirs (see
    /// [`crate::device::Device::reload`]). Returns the new generation.
    pub fn reload_policy(&self, policy: Arc<Policy>) -> Result<u64, String> {
        self.backend.with_device(|device| {
            let result = device.reload(policy);
            if result.is_err() {
                device.count_failed_reload();
            }
            result
        })
    }

    /// The Prometheus text of the device's metrics.
    pub fn metrics(&self) -> String {
        self.backend.with_device(|device| device.snapshot()).to_prometheus()
    }

    /// One JSON line per ended session goes to `log` from now on.
    pub fn set_audit_log(&self, log: Box<dyn std::io::Write + Send>) {
        self.backend.with_device(|device| device.set_audit_log(log));
    }

    /// Names the VM in every audit record and metric; returns the prefix
    /// of this process's session ids.
    pub fn set_vm_name(&self, name: String) -> String {
        self.backend.with_device(|device| {
            device.set_vm_name(name);
            device.instance()
        })
    }

    /// Whether a front end is connected (or was, and the session ended).
    pub fn connected(&self) -> bool {
        self.connection.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Disconnects the front end; `wait` then returns.
    pub fn stop(&self) {
        if let Some(handle) = self.connection.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            handle.shutdown();
        }
        self.backend.request_exit();
    }

    /// Waits until the front end has gone.
    pub fn wait(&self) -> Result<(), ServerError> {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let joined = thread.map(JoinHandle::join);
        // Connections still open go with the backend: their audit records
        // are written now, since nothing else will end them.
        self.backend.with_device(|device| device.end_all_sessions("the backend stopped serving the VM"));
        match joined {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ServerError::Device(std::io::Error::other("the serving thread panicked"))),
            None => Ok(()),
        }
    }

    /// How many queues the device has (for front ends that ask).
    pub fn num_queues(&self) -> usize {
        self.backend.num_queues()
    }
}
