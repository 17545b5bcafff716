//! Malformed guest input through the device's byte-level entry points
//! (`Device::handle_control_request`, `Device::handle_data_packet`, what
//! the fuzz targets in `fuzz/` drive): each must fail only its own request
//! with an errno, never panic. Inputs the fuzzers found are kept here as
//! regression tests, named after what they triggered.

use std::sync::Arc;

use tls_engine::{Errno, Policy};
use vhost_tls::device::Device;
use vhost_tls::DeviceShape;
use virtio_tls_spec::{self as wire, CtrlHeader, CtrlResponse, DataHeader};

fn device() -> Device {
    let mut policy = Policy::builtin_default();
    policy.limits.max_sockets = 4;
    policy.limits.socket_buffer_bytes = 4096;
    Device::new(Arc::new(policy), DeviceShape::with_pairs(1)).expect("device")
}

fn request(op: u16, socket_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = CtrlHeader { op, flags: 0, socket_id, request_id: 9 }.encode().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

fn status(response: &CtrlResponse) -> Result<(), Errno> {
    match response.status {
        0 => Ok(()),
        errno => Err(Errno(errno)),
    }
}

fn create(device: &mut Device) -> u32 {
    let payload = wire::CreateRequest { family: wire::VIRTIO_TLS_AF_INET, queue_pair: 0, buf_alloc: 4096 }.encode();
    let (response, _) = device.handle_control_request(&request(wire::VIRTIO_TLS_OP_CREATE, 0, &payload));
    assert_eq!(status(&response), Ok(()));
    response.socket_id
}

#[test]
fn malformed_headers_fail_with_einval_or_eopnotsupp() {
    let mut device = device();
    let (response, value) = device.handle_control_request(&[]);
    assert_eq!((status(&response), value.len()), (Err(Errno::EINVAL), 0));
    let (response, _) = device.handle_control_request(&request(wire::VIRTIO_TLS_OP_CREATE, 0, &[])[..CtrlHeader::SIZE - 1]);
    assert_eq!(status(&response), Err(Errno::EINVAL));
    let mut flagged = request(wire::VIRTIO_TLS_OP_CLOSE, 3, &[0; 8]);
    flagged[2] = 1;
    let (response, _) = device.handle_control_request(&flagged);
    assert_eq!((status(&response), response.socket_id), (Err(Errno::EINVAL), 3));
    let (response, _) = device.handle_control_request(&request(0xffff, 3, &[]));
    assert_eq!(status(&response), Err(Errno::EOPNOTSUPP));
}

#[test]
fn truncated_payloads_fail_with_einval() {
    let mut device = device();
    let id = create(&mut device);
    for op in [
        wire::VIRTIO_TLS_OP_CREATE,
        wire::VIRTIO_TLS_OP_CLOSE,
        wire::VIRTIO_TLS_OP_SETOPT,
        wire::VIRTIO_TLS_OP_GETOPT,
        wire::VIRTIO_TLS_OP_CONNECT,
        wire::VIRTIO_TLS_OP_SHUTDOWN,
        wire::VIRTIO_TLS_OP_BIND,
        wire::VIRTIO_TLS_OP_LISTEN,
        wire::VIRTIO_TLS_OP_ACCEPT,
    ] {
        let (response, value) = device.handle_control_request(&request(op, id, &[1, 2, 3]));
        assert_eq!(status(&response), Err(Errno::EINVAL), "op {op} with a 3-byte payload");
        assert!(value.is_empty());
    }
    // The socket is unharmed: it still answers.
    let getopt = wire::GetOptRequest { optname: wire::TLS_ID, max_len: 8 }.encode();
    let (response, value) = device.handle_control_request(&request(wire::VIRTIO_TLS_OP_GETOPT, id, &getopt));
    assert_eq!((status(&response), response.value_len as usize), (Ok(()), value.len()));
    assert_eq!(value, u64::from(id).to_le_bytes());
}

#[test]
fn malformed_data_packets_fail_only_their_socket() {
    let mut device = device();
    let bad = create(&mut device);
    let good = create(&mut device);
    // Shorter than a header, or for no socket: dropped.
    device.handle_data_packet(0, &[0; DataHeader::SIZE - 1]);
    let unknown = DataHeader { socket_id: 77, op: wire::VIRTIO_TLS_DATA_OP_RW, len: 1, ..Default::default() };
    device.handle_data_packet(0, &[&unknown.encode()[..], b"x"].concat());
    // A length beyond the buffer: that socket fails with EINVAL.
    let lying = DataHeader { socket_id: bad, op: wire::VIRTIO_TLS_DATA_OP_RW, len: 100, ..Default::default() };
    device.handle_data_packet(0, &[&lying.encode()[..], b"short"].concat());
    let error = wire::GetOptRequest { optname: wire::TLS_ERROR, max_len: 255 }.encode();
    let (_, reason) = device.handle_control_request(&request(wire::VIRTIO_TLS_OP_GETOPT, bad, &error));
    assert_eq!(String::from_utf8_lossy(&reason), "malformed data packet from the driver");
    let (_, reason) = device.handle_control_request(&request(wire::VIRTIO_TLS_OP_GETOPT, good, &error));
    assert!(reason.is_empty(), "the other socket is untouched: {:?}", String::from_utf8_lossy(&reason));
    let phases: Vec<_> = device.report().into_iter().map(|s| (s.id, s.phase)).collect();
    assert_eq!(phases, [(bad, vhost_tls::socket::Phase::Failed), (good, vhost_tls::socket::Phase::Created)]);
}
