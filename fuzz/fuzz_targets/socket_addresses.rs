//! Socket addresses from the guest: `SockAddr::decode` (and its host name
//! part, through `parse_hostname`), then the same bytes as the payload of
//! CONNECT or BIND on a fresh socket, followed by the requests that come
//! next in a socket's life (LISTEN, ACCEPT, a second CONNECT, CLOSE).
//! Input: a selector byte (bit 0: IPv6 socket, bit 1: BIND instead of
//! CONNECT, bit 2: once listening, a client connects and sends the
//! address bytes as its TLS hello), then the address bytes.
#![no_main]

use std::io::Write;
use std::net::TcpStream;

use libfuzzer_sys::fuzz_target;
use tls_engine::options::parse_hostname;
use vhost_tls_fuzz::Session;
use virtio_tls_spec::{self as wire, CtrlHeader, SockAddr};

fn request(op: u16, socket_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = CtrlHeader { op, flags: 0, socket_id, request_id: 7 }.encode().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, address)) = input.split_first() else { return };
    if let Some(addr) = SockAddr::decode(address) {
        assert_eq!(&addr.encode()[..], &address[..SockAddr::SIZE], "decode and encode disagree");
        if let Some(name) = addr.hostname_bytes() {
            assert!(name.len() <= wire::MAX_HOSTNAME_LEN && !name.contains(&0), "host name bytes {name:?}");
            if let Ok(parsed) = parse_hostname(name) {
                assert!(!parsed.is_empty() && parsed.len() <= tls_engine::options::MAX_HOSTNAME_LEN);
            }
        } else {
            assert!(addr.family != wire::VIRTIO_TLS_AF_HOSTNAME || !addr.addr[..=wire::MAX_HOSTNAME_LEN].contains(&0));
        }
    }

    let mut session = Session::new();
    let family = if selector & 1 == 0 { wire::VIRTIO_TLS_AF_INET } else { wire::VIRTIO_TLS_AF_INET6 };
    let create = wire::CreateRequest { family, queue_pair: 0, buf_alloc: 4096 }.encode();
    let (created, _) = session.control(&request(wire::VIRTIO_TLS_OP_CREATE, 0, &create));
    assert_eq!(created.status, 0, "a valid CREATE on a fresh device succeeds");
    let id = created.socket_id;
    let op = if selector & 2 == 0 { wire::VIRTIO_TLS_OP_CONNECT } else { wire::VIRTIO_TLS_OP_BIND };
    let (first, _) = session.control(&request(op, id, address));
    if op == wire::VIRTIO_TLS_OP_BIND && first.status == 0 {
        let listen = wire::ListenRequest { backlog: 1, reserved: 0 }.encode();
        let (listening, _) = session.control(&request(wire::VIRTIO_TLS_OP_LISTEN, id, &listen));
        if listening.status == 0 && selector & 4 != 0 {
            // A client that sends these bytes as its first flight, which
            // the backend's TLS server must refuse.
            let port = vhost_tls_fuzz::fixture().listen_port;
            if let Ok(mut client) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = client.write_all(address);
                session.network();
                session.network();
            }
        }
        let accept = wire::AcceptRequest { queue_pair: 0, reserved0: 0, reserved1: 0 }.encode();
        session.control(&request(wire::VIRTIO_TLS_OP_ACCEPT, id, &accept));
    }
    session.control(&request(wire::VIRTIO_TLS_OP_CONNECT, id, address));
    let getopt = wire::GetOptRequest { optname: wire::TLS_ERROR, max_len: 255 }.encode();
    session.control(&request(wire::VIRTIO_TLS_OP_GETOPT, id, &getopt));
    let (closed, _) = session.control(&request(wire::VIRTIO_TLS_OP_CLOSE, id, &wire::CloseRequest { tx_bytes: 0 }.encode()));
    assert_eq!(closed.status, 0, "CLOSE of an open socket succeeds");
});
