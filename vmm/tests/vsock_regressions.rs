//! Regressions found while fuzzing the vsock muxer (fuzz/fuzz_targets/
//! vsock_muxer.rs), through its public API and real Unix sockets.

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

use runvm_vmm::devices::virtio::vsock::muxer::Muxer;
use runvm_vmm::devices::virtio::vsock::packet::*;

const CID: u64 = 3;

struct TestDir(PathBuf);

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A guest may post an RX buffer with room for the packet header only.
/// Reading the host socket into its zero bytes of payload room returns 0,
/// which the connection takes for the host's end of file: the guest is
/// told SHUTDOWN(SEND) while the host end is open with data waiting, and
/// the connection delivers nothing more.
#[test]
fn a_header_only_rx_buffer_is_not_the_hosts_end_of_file() {
    let dir =
        TestDir(std::env::temp_dir().join(format!("runvm-vsock-zero-room-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("v.sock");
    let listener = UnixListener::bind(dir.0.join("v.sock_52")).unwrap();
    let mut muxer = Muxer::bind(CID, &path).unwrap();
    let request = PacketHeader {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 5000,
        dst_port: 52,
        type_: TYPE_STREAM,
        op: OP_REQUEST,
        buf_alloc: 65536,
        ..Default::default()
    };
    muxer.on_guest_packet(&request, &[]);
    let (mut host, _) = listener.accept().unwrap();
    let mut payload = vec![0u8; 4096];
    let (response, _) = muxer.next_packet_for_guest(&mut payload).unwrap();
    assert_eq!({ response.op }, OP_RESPONSE);

    host.write_all(b"hello").unwrap();
    muxer.on_connection_ready((52, 5000), true, false);
    if let Some((header, len)) = muxer.next_packet_for_guest(&mut payload[..0]) {
        assert_ne!(
            { header.op },
            OP_SHUTDOWN,
            "end of stream while the host end is open"
        );
        assert_eq!(len, 0);
    }
    // With a real buffer the data comes through.
    muxer.on_connection_ready((52, 5000), true, false);
    let (data, len) = muxer.next_packet_for_guest(&mut payload).unwrap();
    assert_eq!(({ data.op }, &payload[..len]), (OP_RW, &b"hello"[..]));
}
