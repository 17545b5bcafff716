// SPDX-License-Identifier: GPL-2.0

//! IPPROTO_TLS socket operations, as safe code: create, close, connect,
//! send, receive, poll, bind, listen, accept, names, options and shutdown.
//! Each maps to device requests (spec 2.6) through `device.rs` and reaches
//! the kernel's socket objects through the handles of `net.rs`.
//!
//! Locking: the driver lock (`device::lock`) is held only to look at or
//! change driver state, never across a user copy or a sleep; a call that
//! moves data holds its socket's lock (`Sock::lock`) throughout, releasing
//! it while it waits.

use crate::device::{self, DeviceGuard, SocketKey, DRIVER_BUF_ALLOC, MAX_OPTION, MAX_SOCKOPT, TX_PAYLOAD, WAITERS};
use crate::net::{code, Family, MsgIter, OptValue, Sock, Socket, State, AF_INET, AF_INET6, MSG_PEEK, O_NONBLOCK, SOL_SOCKET};
use crate::sync::{self, Deadline};
use crate::wire;
use kernel::prelude::*;

/// SSA's `struct sockaddr_host`: family, port (network order), name[120].
const SOCKADDR_HOST_LEN: usize = 2 + 2 + 120;
/// SSA's AF_HOSTNAME, as a sockaddr's first field.
const AF_HOSTNAME: u16 = wire::AF_HOSTNAME as u16;
/// `struct sockaddr_in`: family, port, addr[4], zero[8].
const SOCKADDR_IN_LEN: usize = 16;
/// `struct sockaddr_in6`: family, port, flowinfo, addr[16], scope_id.
const SOCKADDR_IN6_LEN: usize = 28;
/// The shortest `struct sockaddr_in6` bind() takes (RFC 2133, no scope).
const SOCKADDR_IN6_MIN_LEN: usize = 24;

/// Most bytes one recv copies out: received data is copied into a kernel
/// buffer under the driver lock and from there to the caller without it.
const RECV_CHUNK: usize = 64 * 1024;

/// While a caller waits for the network, the device is asked whether it
/// is still there after this many short waits (a few seconds).
const PROBE_EVERY: u32 = 1_000;
/// connect() asks four times as often.
const CONNECT_PROBE_EVERY: u32 = PROBE_EVERY / 4;

const EPOLLIN: u32 = 0x1;
const EPOLLOUT: u32 = 0x4;
const EPOLLERR: u32 = 0x8;
const EPOLLHUP: u32 = 0x10;
const EPOLLRDNORM: u32 = 0x40;
const EPOLLWRNORM: u32 = 0x100;

/// The bound device, or ECONNRESET: a socket whose device went (unbound,
/// unplugged) has failed.
fn bound(guard: &mut DeviceGuard) -> Result<&mut device::Device> {
    Ok(guard.device().ok_or(code::ECONNRESET)?)
}

/// Waits a little for the device (data, credit, an event), asking it
/// first whether it is still there every `probe_every` waits, so that a
/// lost backend ends the wait.
fn wait_for_device(socket: SocketKey, waits: u32, probe_every: u32, max_us: u64) {
    if waits % probe_every == 0 {
        device::probe_device(socket);
    }
    WAITERS.wait(max_us);
}

/// proto.init: a new socket gets its device socket (CREATE).
pub(crate) fn create(sock: &mut Sock<'_>) -> Result {
    let family = match sock.family() {
        Family::Inet6 => wire::VIRTIO_TLS_AF_INET6,
        Family::Inet => wire::VIRTIO_TLS_AF_INET,
    };
    let request = wire::CreateRequest { family, queue_pair: 0, buf_alloc: DRIVER_BUF_ALLOC };
    let mut guard = device::lock();
    let device = guard.device().ok_or(ENODEV)?;
    // Under one lock from request to entry, so no restart comes between.
    // A second attempt only after the device turned out restarted.
    for _ in 0..2 {
        let (response, _) = device.exchange(wire::VIRTIO_TLS_OP_CREATE, SocketKey::NONE, &request.encode())?;
        device::status(&response)?;
        let key = SocketKey { id: response.socket_id, generation: device.generation() };
        if device.entry(key).is_some() {
            // DEV-5.2: the device does not reuse the id of a socket that is
            // still open, and ours is: the device forgot it (DRV-12.4).
            pr_err!("the device gave out socket {} twice: its backend was restarted\n", key.id);
            device.restart();
            continue;
        }
        device.adopt(key)?;
        sock.set_key(key);
        return Ok(());
    }
    Err(code::ECONNRESET.into())
}

/// proto.close: releases the device socket (CLOSE, with the bytes sent so
/// the device sends close_notify after them). A socket of an earlier
/// device generation is only forgotten: its id may name another socket
/// now (DRV-12.3).
pub(crate) fn close(sock: &mut Sock<'_>) {
    let key = sock.key();
    if key.id == 0 {
        return;
    }
    let (tx_bytes, current) = {
        let mut guard = device::lock();
        match guard.device() {
            Some(device) => (device.forget(key).unwrap_or(0), key.generation == device.generation()),
            None => return,
        }
    };
    if !current {
        return;
    }
    let request = wire::CloseRequest { tx_bytes };
    match device::request(wire::VIRTIO_TLS_OP_CLOSE, key, &request.encode()) {
        // The device lost its backend: nothing to close there.
        Ok(_) => {}
        Err(error) if error.to_errno() == Error::from(code::ECONNRESET).to_errno() => {}
        Err(error) => pr_warn!("closing socket {} failed: {:?}\n", key.id, error),
    }
}

/// A connect the caller did not wait for (non-blocking) ends when the
/// device says so: the socket becomes connected, or unconnected with the
/// error in SO_ERROR.
fn refresh_state(socket: &mut Socket<'_>, connect_status: Option<u32>) {
    if socket.state() != State::Connecting {
        return;
    }
    match connect_status {
        Some(0) => socket.set_state(State::Connected),
        Some(errno) => {
            socket.set_state(State::Unconnected);
            socket.sk().set_error(errno);
        }
        None => {}
    }
}

/// `refresh_state`, collecting events first.
fn refresh_connect(socket: &mut Socket<'_>) {
    if socket.state() != State::Connecting {
        return;
    }
    let key = socket.sk().key();
    let mut guard = device::lock();
    if let Some(device) = guard.device() {
        device.collect();
        let status = device.entry(key).and_then(|entry| entry.flow.connect_status);
        refresh_state(socket, status);
    }
}

/// The address a connect() names: AF_INET, AF_INET6 or SSA's AF_HOSTNAME.
fn connect_target(address: &[u8]) -> Result<wire::SockAddr> {
    let len = address.len().min(SOCKADDR_HOST_LEN.max(SOCKADDR_IN6_LEN));
    if len < 4 {
        return Err(EINVAL);
    }
    let raw = &address[..len];
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    match family {
        AF_INET if len >= 8 => Ok(wire::SockAddr::ipv4([raw[4], raw[5], raw[6], raw[7]], port)),
        AF_INET6 if len >= SOCKADDR_IN6_LEN => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&raw[8..24]);
            let scope_id = u32::from_ne_bytes([raw[24], raw[25], raw[26], raw[27]]);
            Ok(wire::SockAddr::ipv6(octets, port, scope_id))
        }
        AF_HOSTNAME if len > 4 => {
            let name = &raw[4..];
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            wire::SockAddr::hostname(&name[..end], port).ok_or(EINVAL)
        }
        AF_INET | AF_INET6 | AF_HOSTNAME => Err(EINVAL),
        _ => Err(code::EAFNOSUPPORT.into()),
    }
}

/// `connect()`: CONNECT, then wait for CONNECT_DONE (or EINPROGRESS for a
/// non-blocking socket: poll reports the outcome).
pub(crate) fn connect(socket: &mut Socket<'_>, address: &[u8], flags: i32) -> Result {
    refresh_connect(socket);
    match socket.state() {
        State::Connected => return Err(code::EISCONN.into()),
        State::Connecting => return Err(code::EALREADY.into()),
        _ => {}
    }
    let mut sk = socket.sk();
    // A new attempt forgets the last failure (as TCP does).
    sk.set_error(0);
    let target = connect_target(address)?;
    let key = sk.key();
    {
        let mut guard = device::lock();
        if let Some(entry) = guard.device().and_then(|device| device.entry(key)) {
            entry.flow.start_connect();
        }
    }
    device::status(&device::request(wire::VIRTIO_TLS_OP_CONNECT, key, &target.encode())?)?;
    // A peer reached by name is not known to the guest (the host resolved it).
    sk.set_peer(if target.family == wire::VIRTIO_TLS_AF_HOSTNAME { wire::SockAddr::default() } else { target });
    socket.set_state(State::Connecting);
    if flags & O_NONBLOCK != 0 {
        return Err(code::EINPROGRESS.into());
    }
    // The device bounds connect + handshake by its policy's timeouts and
    // then reports ETIMEDOUT; this bound only guards against a lost device.
    for waits in 1..=600_000u32 {
        let status = {
            let mut guard = device::lock();
            match guard.device() {
                Some(device) => {
                    device.collect();
                    device.entry(key).and_then(|entry| entry.flow.connect_status)
                }
                None => Some(code::ECONNRESET.status()),
            }
        };
        match status {
            Some(0) => {
                socket.set_state(State::Connected);
                return Ok(());
            }
            Some(errno) => {
                socket.set_state(State::Unconnected);
                return Err(code::from_device(errno));
            }
            // Still SS_CONNECTING: a later connect says EALREADY until done.
            None if sync::signal_pending() => return Err(EINTR),
            // CONNECT_DONE comes as an event, whose interrupt ends the
            // wait; the timeouts only bound a missed wake-up. Handshakes on
            // loopback take a few milliseconds: short waits during those.
            None if waits < 200 => wait_for_device(key, waits, CONNECT_PROBE_EVERY, 50),
            None => wait_for_device(key, waits, CONNECT_PROBE_EVERY, 1000),
        }
    }
    Err(code::ETIMEDOUT.into())
}

/// poll/select/epoll: readable with data, end of stream or an error;
/// writable with credit; a non-blocking connect is writable when done; a
/// listening socket is readable while a connection may wait.
pub(crate) fn poll(socket: &mut Socket<'_>) -> u32 {
    let sk = socket.sk();
    let key = sk.key();
    let mut guard = device::lock();
    let Some(device) = guard.device() else { return EPOLLERR | EPOLLHUP };
    device.collect();
    let Some(entry) = device.entry(key) else { return EPOLLERR | EPOLLHUP };
    refresh_state(socket, entry.flow.connect_status);
    let mut mask = 0;
    match socket.state() {
        // "Maybe": accept() may still find nothing (EAGAIN) after another
        // caller took the connection, as with TCP.
        _ if sk.is_listening() => {
            if entry.flow.accept_ready {
                mask |= EPOLLIN | EPOLLRDNORM;
            }
        }
        State::Connected => {
            if !entry.unread().is_empty() || entry.flow.eof || entry.flow.error.is_some() {
                mask |= EPOLLIN | EPOLLRDNORM;
            }
            if entry.flow.error.is_some() {
                mask |= EPOLLERR;
            } else if entry.flow.credit() > 0 {
                mask |= EPOLLOUT | EPOLLWRNORM;
            }
        }
        // A failed connect, as TCP reports it.
        State::Unconnected if sk.error() != 0 => mask |= EPOLLOUT | EPOLLERR,
        State::Unconnected => mask |= EPOLLOUT | EPOLLHUP,
        _ => {}
    }
    mask
}

/// What a call that moved `done` bytes before failing returns: the bytes,
/// or the error when there were none.
fn partial(done: usize, error: Error) -> Result<usize> {
    if done > 0 {
        Ok(done)
    } else {
        Err(error)
    }
}

/// `send`/`write`: as much as fits in the device's credit, in packets of
/// up to TX_PAYLOAD bytes; waits for credit (and for transmit packets the
/// device has not returned yet) unless non-blocking. Each chunk is copied
/// from the caller straight into a transmit packet with only the socket
/// lock held, then posted under the driver lock; the device takes it
/// while the next one is filled.
pub(crate) fn send(socket: &mut Socket<'_>, data: &mut MsgIter<'_>, total: usize) -> Result<usize> {
    refresh_connect(socket);
    if socket.state() != State::Connected {
        return Err(code::ENOTCONN.into());
    }
    let sk = socket.sk();
    let key = sk.key();
    let dontwait = socket.nonblocking(0);
    let until = Deadline::after(sk.send_timeout());
    let total = total.min(i32::MAX as usize);
    let mut sent = 0usize;
    let mut waits = 0u32;
    let mut socket_lock = sk.lock();
    while sent < total {
        // Only this call sends on the socket (socket lock), so the credit
        // seen here is still there when the packet goes out.
        let (room, packet) = {
            let mut guard = device::lock();
            let device = match bound(&mut guard) {
                Ok(device) => device,
                Err(error) => return partial(sent, error),
            };
            device.collect();
            let entry = match device.open_entry(key) {
                Ok(entry) => entry,
                Err(error) => return partial(sent, error),
            };
            if let Some(errno) = entry.flow.failure() {
                return partial(sent, code::from_device(errno));
            }
            match entry.flow.sendable(total - sent, TX_PAYLOAD) {
                0 => (0, None),
                room => match device.tx_packet() {
                    Ok(packet) => (room, packet),
                    Err(error) => return partial(sent, error),
                },
            }
        };
        let Some(mut packet) = packet else {
            if dontwait || until.passed() {
                return partial(sent, EAGAIN);
            }
            if sync::signal_pending() {
                return partial(sent, EINTR);
            }
            waits += 1;
            socket_lock.released(|| wait_for_device(key, waits, PROBE_EVERY, 500));
            continue;
        };
        let payload = &mut packet.bytes[wire::DataHeader::SIZE..wire::DataHeader::SIZE + room];
        let copied = data.copy_from(payload);
        let mut guard = device::lock();
        let Some(device) = guard.device() else { return partial(sent, code::ECONNRESET.into()) };
        if copied == 0 {
            device.return_tx_packet(packet);
            return partial(sent, EFAULT);
        }
        if let Err(error) = device.post(key, wire::VIRTIO_TLS_DATA_OP_RW, packet, copied) {
            return partial(sent, error);
        }
        sent += copied;
    }
    Ok(sent)
}

/// `recv`/`read`: what has arrived, up to `total`; 0 at the peer's
/// close_notify; waits for data unless non-blocking. MSG_PEEK leaves the
/// bytes for the next read.
pub(crate) fn receive(socket: &mut Socket<'_>, data: &mut MsgIter<'_>, total: usize, flags: i32) -> Result<usize> {
    refresh_connect(socket);
    if socket.state() != State::Connected {
        return Err(code::ENOTCONN.into());
    }
    if total == 0 {
        return Ok(0);
    }
    let sk = socket.sk();
    let key = sk.key();
    let dontwait = socket.nonblocking(flags);
    let peek = flags & MSG_PEEK != 0;
    let until = Deadline::after(sk.receive_timeout());
    let want = total.min(RECV_CHUNK);
    let mut bytes = KVVec::<u8>::with_capacity(want, GFP_KERNEL)?;
    let mut waits = 0u32;
    // Only this call reads from the socket until it returns (socket lock):
    // what it copies out stays first in the entry's buffer, to be consumed
    // after the copy to the caller succeeded.
    let mut socket_lock = sk.lock();
    loop {
        {
            let mut guard = device::lock();
            let device = bound(&mut guard)?;
            device.collect();
            let entry = device.open_entry(key)?;
            let unread = entry.unread();
            if !unread.is_empty() {
                // Within the capacity reserved above: no allocation here.
                bytes.extend_from_slice(&unread[..unread.len().min(want)], GFP_KERNEL)?;
                break;
            } else if let Some(errno) = entry.flow.failure() {
                return Err(code::from_device(errno));
            } else if entry.flow.eof {
                return Ok(0);
            }
        }
        if dontwait || until.passed() {
            return Err(EAGAIN);
        }
        if sync::signal_pending() {
            return Err(EINTR);
        }
        waits += 1;
        socket_lock.released(|| wait_for_device(key, waits, PROBE_EVERY, 500));
    }
    let copied = data.copy_to(&bytes);
    if copied == 0 {
        // Nothing consumed: the bytes stay for the next read, as TCP's do.
        return Err(EFAULT);
    }
    if !peek {
        let mut guard = device::lock();
        if let Some(device) = guard.device() {
            if let Ok(entry) = device.open_entry(key) {
                // Tell the device about freed room once a quarter moved.
                if entry.consume(copied) {
                    let _ = device.send_credit(key);
                }
            }
        }
    }
    drop(socket_lock);
    Ok(copied)
}

/// `shutdown()`: SHUTDOWN with the bytes sent so far, so the device sends
/// close_notify after them (SHUT_WR) and/or drops what comes (SHUT_RD).
pub(crate) fn shutdown(socket: &Socket<'_>, how: i32) -> Result {
    if socket.state() != State::Connected {
        return Err(code::ENOTCONN.into());
    }
    if !(0..=2).contains(&how) {
        return Err(EINVAL);
    }
    let key = socket.sk().key();
    let tx_bytes = {
        let mut guard = device::lock();
        bound(&mut guard)?.open_entry(key)?.flow.tx_bytes()
    };
    let request = wire::ShutdownRequest { how: how as u32, reserved: 0, tx_bytes };
    device::status(&device::request(wire::VIRTIO_TLS_OP_SHUTDOWN, key, &request.encode())?)
}

/// `bind()`: BIND to a guest port; the operator's policy decides whether
/// the port may listen and where on the host (spec 2.6.7). Binding a
/// connected socket is EINVAL, as SSA's tests expect.
pub(crate) fn bind(socket: &mut Socket<'_>, address: &[u8]) -> Result {
    if socket.state() != State::Unconnected {
        return Err(EINVAL);
    }
    let mut sk = socket.sk();
    if address.len() < 2 {
        return Err(EINVAL);
    }
    let raw = address;
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    if family != sk.family().number() {
        return Err(code::EAFNOSUPPORT.into());
    }
    let port = || u16::from_be_bytes([raw[2], raw[3]]);
    let local = match family {
        AF_INET if raw.len() >= SOCKADDR_IN_LEN => wire::SockAddr::ipv4([raw[4], raw[5], raw[6], raw[7]], port()),
        AF_INET6 if raw.len() >= SOCKADDR_IN6_MIN_LEN => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&raw[8..24]);
            wire::SockAddr::ipv6(octets, port(), 0)
        }
        _ => return Err(EINVAL),
    };
    device::status(&device::request(wire::VIRTIO_TLS_OP_BIND, sk.key(), &local.encode())?)?;
    sk.set_local_port(local.port);
    Ok(())
}

/// `listen()`: LISTEN (spec 2.6.8). The backend listens on the host and
/// completes handshakes before a connection reaches accept().
pub(crate) fn listen(socket: &mut Socket<'_>, backlog: i32) -> Result {
    match socket.state() {
        State::Unconnected => {}
        // What SSA's tests expect of a connected TLS socket.
        State::Connected => return Err(code::EOPNOTSUPP.into()),
        _ => return Err(EINVAL),
    }
    let mut sk = socket.sk();
    let key = sk.key();
    let request = wire::ListenRequest { backlog: backlog.max(0) as u32, reserved: 0 };
    device::status(&device::request(wire::VIRTIO_TLS_OP_LISTEN, key, &request.encode())?)?;
    sk.set_listening();
    let mut guard = device::lock();
    if let Some(entry) = guard.device().and_then(|device| device.entry(key)) {
        // Clients may have connected already.
        entry.flow.accept_ready = true;
    }
    Ok(())
}

/// One ACCEPT: the new socket (of the listener's generation, in which the
/// device answered) and its client, or the error (EAGAIN when nothing
/// waits).
fn accept_once(listener: SocketKey) -> Result<(SocketKey, wire::SockAddr)> {
    {
        let mut guard = device::lock();
        if let Some(entry) = guard.device().and_then(|device| device.entry(listener)) {
            entry.flow.take_accept_ready();
        }
    }
    let request = wire::AcceptRequest { queue_pair: 0, reserved0: 0, reserved1: 0 };
    let (response, value) = device::request_value(wire::VIRTIO_TLS_OP_ACCEPT, listener, &request.encode())?;
    device::status(&response)?;
    let mut guard = device::lock();
    if let Some(entry) = guard.device().and_then(|device| device.entry(listener)) {
        // More connections may wait: the next accept() asks.
        entry.flow.accept_ready = true;
    }
    let accepted = SocketKey { id: response.socket_id, generation: listener.generation };
    Ok((accepted, wire::SockAddr::decode(&value).unwrap_or_default()))
}

/// `accept()`/`accept4()`: a connection whose handshake the backend
/// completed, as a new connected socket (spec 2.6.9). Blocks until
/// ACCEPT_READY unless non-blocking; SO_RCVTIMEO bounds the wait.
pub(crate) fn accept(listener: &mut Socket<'_>, newsock: &mut Socket<'_>, flags: i32, kern: bool) -> Result {
    let listener_sk = listener.sk();
    if !listener_sk.is_listening() {
        return Err(EINVAL);
    }
    let listener_key = listener_sk.key();
    let dontwait = flags & O_NONBLOCK != 0;
    let until = Deadline::after(listener_sk.receive_timeout());
    let mut waits = 0u32;
    let (accepted, peer) = loop {
        match accept_once(listener_key) {
            Ok(accepted) => break accepted,
            Err(error) if error == EAGAIN => {}
            Err(error) => return Err(error),
        }
        // Wait for ACCEPT_READY.
        loop {
            if dontwait || until.passed() {
                return Err(EAGAIN);
            }
            if sync::signal_pending() {
                return Err(EINTR);
            }
            let ready = {
                let mut guard = device::lock();
                let device = bound(&mut guard)?;
                device.collect();
                device.entry(listener_key).is_some_and(|entry| entry.flow.accept_ready)
            };
            if ready {
                break;
            }
            waits += 1;
            wait_for_device(listener_key, waits, PROBE_EVERY, 500);
        }
    };
    let mut sk = match crate::net::new_accepted(&listener_sk, newsock, kern) {
        Ok(sk) => sk,
        Err(error) => {
            let request = wire::CloseRequest { tx_bytes: 0 };
            let _ = device::request(wire::VIRTIO_TLS_OP_CLOSE, accepted, &request.encode());
            return Err(error);
        }
    };
    sk.set_local_port(listener_sk.local_port());
    sk.set_peer(peer);
    newsock.set_state(State::Connected);
    let mut guard = device::lock();
    let device = bound(&mut guard)?;
    if device.entry(accepted).is_some() {
        // As in create: the device gave out the id of an open socket. The
        // new sock keeps no key, so its release frees nothing of another's.
        pr_err!("the device gave out socket {} twice: its backend was restarted\n", accepted.id);
        device.restart();
        return Err(code::ECONNRESET.into());
    }
    // From here the new socket is closed (CLOSE included) by the core's
    // release if anything fails.
    sk.set_key(accepted);
    device.adopt(accepted)?.flow.connect_status.get_or_insert(0);
    // The device sends nothing for this socket before it hears our
    // receive buffer (DRV-6.9.1).
    device.send_credit(accepted)
}

/// getsockname()/getpeername(): the bound port, and the peer the socket
/// connected to or was accepted from. The guest never learns host
/// addresses: the local address is the wildcard, and a peer reached by
/// host name is the wildcard address with its port.
pub(crate) fn getname(socket: &Socket<'_>, out: &mut [u8; 128], peer: bool) -> Result<usize> {
    let sk = socket.sk();
    let family = sk.family();
    let (port, address) = if peer {
        if socket.state() != State::Connected {
            return Err(code::ENOTCONN.into());
        }
        (sk.peer().port, sk.peer())
    } else {
        (sk.local_port(), wire::SockAddr::default())
    };
    out[..SOCKADDR_IN6_LEN].fill(0);
    out[0..2].copy_from_slice(&family.number().to_ne_bytes());
    out[2..4].copy_from_slice(&port.to_be_bytes());
    if family == Family::Inet6 {
        match address.family {
            wire::VIRTIO_TLS_AF_INET6 => {
                out[8..24].copy_from_slice(&address.addr[..16]);
                out[24..28].copy_from_slice(&address.scope_id.to_ne_bytes());
            }
            wire::VIRTIO_TLS_AF_INET => {
                // An IPv4 client of an IPv6 socket: ::ffff:a.b.c.d.
                out[18..20].copy_from_slice(&[0xff, 0xff]);
                out[20..24].copy_from_slice(&address.addr[..4]);
            }
            _ => {}
        }
        Ok(SOCKADDR_IN6_LEN)
    } else {
        if address.family == wire::VIRTIO_TLS_AF_INET {
            out[4..8].copy_from_slice(&address.addr[..4]);
        }
        Ok(SOCKADDR_IN_LEN)
    }
}

/// Whether the bound device takes socket options at other levels than
/// IPPROTO_TLS (SETSOCKOPT, GETSOCKOPT: VIRTIO_TLS_F_SOCKOPT).
fn device_takes_sockopts() -> bool {
    device::lock().device_ref().is_some_and(|device| device.has_feature(wire::VIRTIO_TLS_F_SOCKOPT))
}

/// setsockopt. IPPROTO_TLS options go to the device (SETOPT). At other
/// levels (spec 2.6.10), device-routed options go to the device
/// (SETSOCKOPT) when it takes them, and a SOL_SOCKET one that the device
/// accepted is then set on the guest socket too, so that the generic
/// getsockopt reads it back (DRV-6.10.1). Guest-routed SOL_SOCKET options
/// are the generic code's alone. Without VIRTIO_TLS_F_SOCKOPT: SOL_SOCKET
/// as any socket, ENOPROTOOPT elsewhere.
pub(crate) fn setsockopt(sock: &Sock<'_>, socket: &Socket<'_>, level: i32, optname: i32, value: OptValue<'_>) -> Result {
    if level == wire::IPPROTO_TLS as i32 {
        if value.len() > MAX_OPTION {
            return Err(EINVAL);
        }
        let header = wire::SetOptRequest { optname: optname as u32, value_len: value.len() as u32 };
        let mut payload = KVec::new();
        payload.extend_from_slice(&header.encode(), GFP_KERNEL)?;
        payload.extend_from_slice(&value.read(value.len())?, GFP_KERNEL)?;
        return device::status(&device::request(wire::VIRTIO_TLS_OP_SETOPT, sock.key(), &payload)?);
    }
    let generic = level == SOL_SOCKET;
    let device_routed = wire::sockopt_route(level as u32, optname as u32) == wire::SockOptRoute::Device;
    if !device_routed || !device_takes_sockopts() {
        if generic {
            return socket.generic_setsockopt(optname, value);
        }
        return Err(code::ENOPROTOOPT.into());
    }
    let len = value.len().min(MAX_SOCKOPT);
    let bytes = value.read(len)?;
    let request = wire::SockOptRequest { level: level as u32, optname: optname as u32, len: len as u32, reserved: 0 };
    let mut payload = KVec::new();
    payload.extend_from_slice(&request.encode(), GFP_KERNEL)?;
    payload.extend_from_slice(&bytes, GFP_KERNEL)?;
    device::status(&device::request(wire::VIRTIO_TLS_OP_SETSOCKOPT, sock.key(), &payload)?)?;
    if generic {
        socket.generic_setsockopt(optname, OptValue::kernel(&bytes))?;
    }
    Ok(())
}

/// The caller's room for a getsockopt value (`*optlen`); EINVAL if
/// negative, as TCP's getsockopt.
fn option_room(optlen: usize) -> Result<usize> {
    let mut room = [0u8; 4];
    crate::net::user_slice(optlen, 4).reader().read_slice(&mut room)?;
    usize::try_from(i32::from_ne_bytes(room)).map_err(|_| EINVAL)
}

/// Writes a getsockopt value and its length back to the caller.
fn give_option(optval: usize, optlen: usize, value: &[u8]) -> Result {
    crate::net::user_slice(optval, value.len()).writer().write_slice(value)?;
    crate::net::user_slice(optlen, 4).writer().write_slice(&(value.len() as i32).to_ne_bytes())
}

/// getsockopt at IPPROTO_TLS (GETOPT; string values get a NUL for C
/// callers) and, when the device takes socket options, at the levels it
/// routes to itself (GETSOCKOPT). The core answers SOL_SOCKET itself.
pub(crate) fn getsockopt(sock: &Sock<'_>, level: i32, optname: i32, optval: usize, optlen: usize) -> Result {
    if level == wire::IPPROTO_TLS as i32 {
        let room = option_room(optlen)?;
        let optname = optname as u32;
        let string = wire::is_string_option(optname);
        // A string needs one byte for its NUL.
        let max_len = room.saturating_sub(string as usize).min(MAX_OPTION);
        let request = wire::GetOptRequest { optname, max_len: max_len as u32 };
        let (response, mut value) = device::request_value(wire::VIRTIO_TLS_OP_GETOPT, sock.key(), &request.encode())?;
        device::status(&response)?;
        if string {
            value.push(0, GFP_KERNEL)?;
        }
        return give_option(optval, optlen, &value);
    }
    if wire::sockopt_route(level as u32, optname as u32) != wire::SockOptRoute::Device || !device_takes_sockopts() {
        return Err(code::ENOPROTOOPT.into());
    }
    let max_len = option_room(optlen)?.min(MAX_SOCKOPT);
    let request = wire::SockOptRequest { level: level as u32, optname: optname as u32, len: max_len as u32, reserved: 0 };
    let (response, value) = device::request_value(wire::VIRTIO_TLS_OP_GETSOCKOPT, sock.key(), &request.encode())?;
    device::status(&response)?;
    give_option(optval, optlen, &value[..value.len().min(max_len)])
}
