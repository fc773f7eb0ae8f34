//! Bytes from a peer node's link and from a Collider WebSocket: neither may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::cluster::FrameReader;
use switchboard_proto::collider::parse_client_frame;

fuzz_target!(|data: &[u8]| {
    let mut r = FrameReader::default();
    for chunk in data.chunks(7) {
        r.push(chunk);
        while let Ok(Some(_)) = r.next_frame() {}
    }
    let _ = parse_client_frame(data);
});
