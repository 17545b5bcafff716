//! A guest listening socket on the host: the TCP listener at the address
//! the policy maps the guest's port to, and the connections it accepted.
//! Connections reach the guest only once their handshake completed.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use rustls::ServerConfig;
use socket2::{Domain, Protocol, Socket as RawSocket, Type};
use tls_engine::errno::{Errno, Failure};
use tls_engine::sockopt::HostOptions;

use tls_engine::policy::DEFAULT_BACKLOG;

pub struct Listener {
    /// The guest's view: the port it bound (and the family it used).
    pub guest_port: u16,
    /// Where the backend listens on the host.
    pub host: SocketAddr,
    bound: Option<RawSocket>,
    listening: Option<TcpListener>,
    pub config: Option<Arc<ServerConfig>>,
    pub backlog: usize,
    /// Accepted connections still handshaking.
    pub handshaking: usize,
    /// Handshaken connections waiting for ACCEPT, oldest first.
    pub ready: VecDeque<u32>,
}

impl Listener {
    /// Binds `host` now, so that a port already in use fails BIND as it
    /// would in the guest's own stack. The guest's socket options come
    /// after the device's own and before the bind (spec 2.6.10), so that
    /// SO_REUSEADDR, SO_REUSEPORT and IPV6_V6ONLY decide it.
    pub fn bind(guest_port: u16, host: SocketAddr, guest_options: &HostOptions, socket_id: u32) -> Result<Listener, Failure> {
        let fail = |what: &str, e: io::Error| Failure::new(Errno::from_io(&e), format!("{what} {host} for guest port {guest_port}: {e}"));
        let socket = RawSocket::new(Domain::for_address(host), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| fail("cannot create a socket for", e))?;
        // A restarted backend must get its ports back while old
        // connections sit in TIME_WAIT.
        socket.set_reuse_address(true).map_err(|e| fail("cannot set SO_REUSEADDR on", e))?;
        if host.is_ipv6() {
            socket.set_only_v6(true).map_err(|e| fail("cannot set IPV6_V6ONLY on", e))?;
        }
        socket.set_nonblocking(true).map_err(|e| fail("cannot make nonblocking", e))?;
        crate::sockopt::apply_kept(socket.as_fd(), guest_options, socket_id);
        socket.bind(&host.into()).map_err(|e| fail("cannot bind", e))?;
        Ok(Listener {
            guest_port,
            host,
            bound: Some(socket),
            listening: None,
            config: None,
            backlog: DEFAULT_BACKLOG,
            handshaking: 0,
            ready: VecDeque::new(),
        })
    }

    /// The host socket: bound, or listening.
    pub fn host_socket(&self) -> Option<BorrowedFd<'_>> {
        match (&self.bound, &self.listening) {
            (Some(bound), _) => Some(bound.as_fd()),
            (None, Some(listening)) => Some(listening.as_fd()),
            (None, None) => None,
        }
    }

    pub fn is_listening(&self) -> bool {
        self.listening.is_some()
    }

    /// Starts listening (or, listening already, only changes the backlog).
    pub fn listen(&mut self, registry: &Registry, token: Token, backlog: usize, config: Arc<ServerConfig>) -> Result<(), Failure> {
        self.backlog = backlog;
        self.config = Some(config);
        let Some(socket) = self.bound.take() else { return Ok(()) };
        let host = self.host;
        let fail = |e: io::Error| Failure::new(Errno::from_io(&e), format!("cannot listen on {host}: {e}"));
        socket.listen(backlog.min(i32::MAX as usize) as i32).map_err(fail)?;
        let mut listener = TcpListener::from_std(socket.into());
        registry.register(&mut listener, token, Interest::READABLE).map_err(fail)?;
        self.listening = Some(listener);
        Ok(())
    }

    /// The next connection waiting in the host's accept queue.
    pub fn accept(&self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        let Some(listener) = &self.listening else { return Ok(None) };
        loop {
            match listener.accept() {
                Ok(accepted) => {
                    // Inherited from the listener; closing must not block.
                    crate::sockopt::never_block_close(accepted.0.as_fd());
                    return Ok(Some(accepted));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether another connection fits under the backlog.
    pub fn has_room(&self) -> bool {
        self.handshaking + self.ready.len() < self.backlog
    }

    pub fn stop(&mut self, registry: &Registry) {
        if let Some(mut listener) = self.listening.take() {
            let _ = registry.deregister(&mut listener);
        }
        self.bound = None;
    }
}
