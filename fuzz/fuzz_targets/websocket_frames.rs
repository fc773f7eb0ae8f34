//! Bytes a client sends on a signaling WebSocket, along the path the node runs them: the HTTP
//! server's WebSocket codec (server side, masked frames, the node's 64 KiB frame limit),
//! continuations joined up to the same limit, Collider frame parsing, then `register` and
//! `send` applied to the room rules as the session does. Nothing may panic, and the rooms'
//! stored-bytes total must stay what its rooms hold.
#![no_main]

use actix_http::ws::{Codec, Frame, Item};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use switchboard_proto::collider::{parse_client_frame, ClientFrame};
use switchboard_proto::rooms::{Binding, Command, Limits, Origin, Rooms, SessionId};
use tokio_util::codec::Decoder;

const MAX: usize = 65_536;

struct Session {
    rooms: Rooms,
    at: Binding,
    registered: Option<(String, String)>,
    sent: u64,
    now_ms: u64,
}

impl Session {
    fn on_frame(&mut self, data: &[u8]) {
        self.now_ms += 10;
        match parse_client_frame(data) {
            Ok(ClientFrame::Register { room, client }) => {
                if self.registered.is_none() {
                    self.rooms.apply(Command::Register { room: room.clone(), client: client.clone(), at: self.at, now_ms: self.now_ms });
                    self.registered = Some((room, client));
                }
            }
            Ok(ClientFrame::Send { msg }) => {
                if let Some((room, client)) = &self.registered {
                    self.sent += 1;
                    let origin = Origin { session: self.at.session, first: self.sent };
                    self.rooms.apply(Command::Relay { room: room.clone(), client: client.clone(), bodies: vec![msg], origin, now_ms: self.now_ms });
                }
            }
            Err(_) => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else { return };
    let step = usize::from(step % 64) + 1;
    let mut codec = Codec::new().max_size(MAX);
    let mut buf = BytesMut::new();
    let mut joined: Option<Vec<u8>> = None;
    let mut s = Session {
        rooms: Rooms::new(Limits::default()),
        at: Binding { node: 1, session: SessionId(uuid::Uuid::from_u128(7)) },
        registered: None,
        sent: 0,
        now_ms: 1_000,
    };
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(Frame::Text(b) | Frame::Binary(b))) => s.on_frame(&b),
                Ok(Some(Frame::Continuation(item))) => match item {
                    Item::FirstText(b) | Item::FirstBinary(b) => joined = Some(b.to_vec()),
                    item @ (Item::Continue(_) | Item::Last(_)) => {
                        let (last, b) = match item {
                            Item::Last(b) => (true, b),
                            Item::Continue(b) | Item::FirstText(b) | Item::FirstBinary(b) => (false, b),
                        };
                        let Some(j) = joined.as_mut() else { return };
                        if j.len() + b.len() > MAX {
                            return; // closed with 1009
                        }
                        j.extend_from_slice(&b);
                        if last {
                            if let Some(j) = joined.take() {
                                s.on_frame(&j);
                            }
                        }
                    }
                },
                Ok(Some(Frame::Close(_))) => return,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return, // a protocol error closes the socket
            }
        }
    }
    s.rooms.apply(Command::Tick { now_ms: s.now_ms + 86_400_000 });
});
