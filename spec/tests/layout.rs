//! Pins every wire struct's size and field offsets: changing one is a wire
//! format change and must update spec/virtio-tls.md as well.
use core::mem::{offset_of, size_of};
use virtio_tls_spec::*;

#[test]
fn config_layout() {
    assert_eq!(size_of::<VirtioTlsConfig>(), 32);
    assert_eq!(offset_of!(VirtioTlsConfig, max_sockets), 0);
    assert_eq!(offset_of!(VirtioTlsConfig, socket_buf_size), 4);
    assert_eq!(offset_of!(VirtioTlsConfig, num_queue_pairs), 8);
    assert_eq!(offset_of!(VirtioTlsConfig, tls_version_min), 10);
    assert_eq!(offset_of!(VirtioTlsConfig, tls_version_max), 11);
    assert_eq!(offset_of!(VirtioTlsConfig, policy_flags), 12);
    assert_eq!(offset_of!(VirtioTlsConfig, max_hostname_len), 16);
}

#[test]
fn control_layout() {
    assert_eq!(CtrlHeader::SIZE, 16);
    assert_eq!(offset_of!(CtrlHeader, op), 0);
    assert_eq!(offset_of!(CtrlHeader, flags), 2);
    assert_eq!(offset_of!(CtrlHeader, socket_id), 4);
    assert_eq!(offset_of!(CtrlHeader, request_id), 8);
    assert_eq!(CtrlResponse::SIZE, 16);
    assert_eq!(offset_of!(CtrlResponse, status), 0);
    assert_eq!(offset_of!(CtrlResponse, socket_id), 4);
    assert_eq!(offset_of!(CtrlResponse, value_len), 8);
    assert_eq!(CreateRequest::SIZE, 8);
    assert_eq!(offset_of!(CreateRequest, queue_pair), 2);
    assert_eq!(offset_of!(CreateRequest, buf_alloc), 4);
    assert_eq!(CloseRequest::SIZE, 8);
    assert_eq!(SetOptRequest::SIZE, 8);
    assert_eq!(offset_of!(SetOptRequest, value_len), 4);
    assert_eq!(GetOptRequest::SIZE, 8);
    assert_eq!(offset_of!(GetOptRequest, max_len), 4);
    assert_eq!(ShutdownRequest::SIZE, 16);
    assert_eq!(SockOptRequest::SIZE, 16);
    assert_eq!(offset_of!(SockOptRequest, level), 0);
    assert_eq!(offset_of!(SockOptRequest, optname), 4);
    assert_eq!(offset_of!(SockOptRequest, len), 8);
    assert_eq!(offset_of!(SockOptRequest, reserved), 12);
    assert_eq!(ListenRequest::SIZE, 8);
    assert_eq!(offset_of!(ListenRequest, backlog), 0);
    assert_eq!(AcceptRequest::SIZE, 8);
    assert_eq!(offset_of!(AcceptRequest, queue_pair), 0);
    assert_eq!(offset_of!(AcceptRequest, reserved1), 4);
    assert_eq!(offset_of!(ShutdownRequest, tx_bytes), 8);
    assert_eq!(SockAddr::SIZE, 136);
    assert_eq!(offset_of!(SockAddr, port), 2);
    assert_eq!(offset_of!(SockAddr, scope_id), 4);
    assert_eq!(offset_of!(SockAddr, addr), 8);
}

#[test]
fn event_and_data_layout() {
    assert_eq!(Event::SIZE, 24);
    assert_eq!(offset_of!(Event, socket_id), 4);
    assert_eq!(offset_of!(Event, request_id), 8);
    assert_eq!(offset_of!(Event, status), 16);
    assert_eq!(DataHeader::SIZE, 24);
    assert_eq!(offset_of!(DataHeader, op), 4);
    assert_eq!(offset_of!(DataHeader, flags), 6);
    assert_eq!(offset_of!(DataHeader, len), 8);
    assert_eq!(offset_of!(DataHeader, buf_alloc), 12);
    assert_eq!(offset_of!(DataHeader, fwd_cnt), 16);
}

#[test]
fn encoding_is_little_endian_at_the_pinned_offsets() {
    let header = CtrlHeader { op: 0x0102, flags: 0, socket_id: 0x0a0b0c0d, request_id: 0x1122334455667788 };
    let bytes = header.encode();
    assert_eq!(&bytes[0..2], &[0x02, 0x01]);
    assert_eq!(&bytes[4..8], &[0x0d, 0x0c, 0x0b, 0x0a]);
    assert_eq!(&bytes[8..16], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
    assert_eq!(CtrlHeader::decode(&bytes), Some(header));
    assert_eq!(CtrlHeader::decode(&bytes[..15]), None);

    let data = DataHeader { socket_id: 7, op: VIRTIO_TLS_DATA_OP_RW, flags: VIRTIO_TLS_DATA_F_EOF, len: 5, buf_alloc: 65536, fwd_cnt: u32::MAX, reserved: 0 };
    let bytes = data.encode();
    assert_eq!(&bytes[12..16], &65536u32.to_le_bytes());
    assert_eq!(DataHeader::decode(&bytes), Some(data));
}

#[test]
fn sockaddr_forms() {
    let v4 = SockAddr::ipv4([127, 0, 0, 1], 443);
    let bytes = v4.encode();
    assert_eq!(&bytes[0..2], &VIRTIO_TLS_AF_INET.to_le_bytes());
    assert_eq!(&bytes[2..4], &443u16.to_le_bytes());
    assert_eq!(&bytes[8..12], &[127, 0, 0, 1]);
    assert_eq!(SockAddr::decode(&bytes), Some(v4));

    let name = SockAddr::hostname(b"localhost", 8443).unwrap();
    assert_eq!(name.hostname_bytes(), Some(&b"localhost"[..]));
    assert_eq!(SockAddr::decode(&name.encode()).unwrap().hostname_bytes(), Some(&b"localhost"[..]));
    assert!(SockAddr::hostname(b"", 1).is_none());
    assert!(SockAddr::hostname(&[b'a'; MAX_HOSTNAME_LEN + 1], 1).is_none());
    let mut unterminated = SockAddr { family: VIRTIO_TLS_AF_HOSTNAME, ..SockAddr::default() };
    unterminated.addr = [b'a'; SOCKADDR_ADDR_LEN];
    assert_eq!(unterminated.hostname_bytes(), None);
    assert_eq!(v4.hostname_bytes(), None);
}

#[test]
fn queue_numbering() {
    assert_eq!(num_queues(1), 4);
    assert_eq!((rx_queue(0), tx_queue(0)), (2, 3));
    assert_eq!((rx_queue(3), tx_queue(3)), (8, 9));
    assert_eq!(virtio_pci_device_id(VIRTIO_ID_TLS_DEFAULT), 0x107f);
}

#[test]
fn ssa_numbers() {
    assert_eq!(IPPROTO_TLS, 715 % 255);
    assert_eq!((TLS_HOSTNAME, TLS_REMOTE_HOSTNAME, TLS_ERROR, TLS_VERSION_MIN, TLS_CHOSEN_VERSION), (85, 85, 100, 111, 113));
    assert_eq!((TLS_1_2, TLS_1_3, AF_HOSTNAME), (2, 3, 43));
}

#[test]
fn sockopt_numbers_and_routes() {
    assert_eq!((VIRTIO_TLS_F_SOCKOPT, VIRTIO_TLS_OP_SETSOCKOPT, VIRTIO_TLS_OP_GETSOCKOPT), (3, 10, 11));
    assert_eq!((VIRTIO_TLS_SOL_IP, VIRTIO_TLS_SOL_SOCKET, VIRTIO_TLS_SOL_TCP, VIRTIO_TLS_SOL_IPV6), (0, 1, 6, 41));
    assert_eq!((SO_KEEPALIVE, SO_LINGER, SO_REUSEPORT, SO_BINDTODEVICE, SO_MARK, SO_BINDTOIFINDEX), (9, 13, 15, 25, 36, 62));
    assert_eq!((TCP_NODELAY, TCP_INFO, TCP_USER_TIMEOUT, TCP_IS_MPTCP), (1, 11, 18, 43));
    assert_eq!((IP_TOS, IP_TRANSPARENT, IP_PROTOCOL, IPV6_V6ONLY, IPV6_TCLASS, IPV6_FREEBIND), (1, 19, 52, 26, 67, 78));
    let request = SockOptRequest { level: VIRTIO_TLS_SOL_TCP, optname: TCP_NODELAY, len: 4, reserved: 0 };
    let bytes = request.encode();
    assert_eq!(&bytes[0..4], &6u32.to_le_bytes());
    assert_eq!(&bytes[8..12], &4u32.to_le_bytes());
    assert_eq!(SockOptRequest::decode(&bytes), Some(request));

    for device in [SO_KEEPALIVE, SO_LINGER, SO_REUSEADDR, SO_REUSEPORT, SO_PRIORITY, SO_BINDTODEVICE, SO_MARK, SO_BINDTOIFINDEX] {
        assert_eq!(sockopt_route(VIRTIO_TLS_SOL_SOCKET, device), SockOptRoute::Device, "SOL_SOCKET {device}");
    }
    for guest in [SO_RCVBUF, SO_SNDBUF, SO_RCVTIMEO_OLD, SO_SNDTIMEO_NEW, SO_ERROR, SO_TYPE, SO_PROTOCOL, SO_DOMAIN, SO_ACCEPTCONN, SO_RCVLOWAT, 1000] {
        assert_eq!(sockopt_route(VIRTIO_TLS_SOL_SOCKET, guest), SockOptRoute::Guest, "SOL_SOCKET {guest}");
    }
    for level in [VIRTIO_TLS_SOL_TCP, VIRTIO_TLS_SOL_IP, VIRTIO_TLS_SOL_IPV6] {
        for optname in [0, TCP_NODELAY, SO_RCVBUF, IP_TOS, 1000] {
            assert_eq!(sockopt_route(level, optname), SockOptRoute::Device);
        }
    }
}
