//! Collider's WebSocket wire format: client frames (`register` / `send`) and server frames that
//! always carry both `msg` and `error`, byte-compatible with the Go server's JSON encoder.

use serde::Deserialize;
use thiserror::Error;

use crate::ids::{validate_id, IdError};

/// Error text for a second `register` on one socket.
pub const ERR_DUPLICATED_REGISTER: &str = "Duplicated register request";
/// Error text for a `register` without both ids.
pub const ERR_MISSING_IDS: &str = "Invalid register request: missing 'clientid' or 'roomid'";
/// Error text for a `send` before `register`.
pub const ERR_NOT_REGISTERED: &str = "Client not registered";
/// Error text for a `send` without `msg`.
pub const ERR_MISSING_MSG: &str = "Invalid send request: missing 'msg'";
/// Error text for an unknown `cmd`.
pub const ERR_UNEXPECTED_CMD: &str = "Invalid message: unexpected 'cmd'";

/// A frame a client sent, decoded afresh each time (Collider reused its struct between frames,
/// letting a key leak from one frame into the next; we do not).
#[allow(missing_docs)] // fields are the frame's keys
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"cmd":"register","roomid":R,"clientid":C}`.
    Register { room: String, client: String },
    /// `{"cmd":"send","msg":M}`; `msg` is an opaque string.
    Send { msg: String },
}

/// Why a client frame was refused. `Display` is the error text sent back in the frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Not JSON, or a key of the wrong type. Fatal: the socket is closed.
    #[error("websocket.JSON.Receive error: {0}")]
    Json(String),
    /// `register` without `roomid` or `clientid`. Fatal.
    #[error("{ERR_MISSING_IDS}")]
    MissingIds,
    /// `register` with an id outside `[A-Za-z0-9_-]{{1,64}}`. Fatal.
    #[error("Invalid register request: {0}")]
    BadId(IdError),
    /// `send` with an empty `msg`. Fatal.
    #[error("{ERR_MISSING_MSG}")]
    MissingMsg,
    /// Unknown `cmd`. Collider keeps the socket open after this one.
    #[error("{ERR_UNEXPECTED_CMD}")]
    UnexpectedCmd,
}

impl FrameError {
    /// Whether the socket is closed after reporting this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::UnexpectedCmd)
    }
}

#[derive(Deserialize)]
struct RawFrame {
    #[serde(default)]
    cmd: Option<String>,
    #[serde(default)]
    roomid: Option<String>,
    #[serde(default)]
    clientid: Option<String>,
    #[serde(default)]
    msg: Option<String>,
}

/// Decodes one text (or binary) frame. Whitespace and newlines (iOS pretty-prints) are fine.
pub fn parse_client_frame(data: &[u8]) -> Result<ClientFrame, FrameError> {
    // serde would also read a struct from a JSON array; Collider wants an object.
    if data.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(FrameError::Json("expected a JSON object".into()));
    }
    let raw: RawFrame =
        serde_json::from_slice(data).map_err(|e| FrameError::Json(e.to_string()))?;
    match raw.cmd.as_deref() {
        Some("register") => {
            let room = raw.roomid.unwrap_or_default();
            let client = raw.clientid.unwrap_or_default();
            if room.is_empty() || client.is_empty() {
                return Err(FrameError::MissingIds);
            }
            validate_id(&room).map_err(FrameError::BadId)?;
            validate_id(&client).map_err(FrameError::BadId)?;
            Ok(ClientFrame::Register { room, client })
        }
        Some("send") => match raw.msg {
            Some(msg) if !msg.is_empty() => Ok(ClientFrame::Send { msg }),
            _ => Err(FrameError::MissingMsg),
        },
        _ => Err(FrameError::UnexpectedCmd),
    }
}

/// The frame that carries a message to a peer: `{"msg":M,"error":""}` plus a newline.
pub fn message_frame(msg: &str) -> String {
    frame(msg, "")
}

/// The frame that reports an error: `{"msg":"","error":E}` plus a newline.
pub fn error_frame(error: &str) -> String {
    frame("", error)
}

fn frame(msg: &str, error: &str) -> String {
    let mut out = String::with_capacity(msg.len() + error.len() + 24);
    out.push_str("{\"msg\":");
    push_go_json_string(&mut out, msg);
    out.push_str(",\"error\":");
    push_go_json_string(&mut out, error);
    out.push_str("}\n");
    out
}

/// Appends `s` as a JSON string the way Go's `encoding/json` writes it (HTML-safe: `<`, `>` and
/// `&` escaped; U+2028 and U+2029 escaped), so clients see exactly Collider's bytes.
pub fn push_go_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut start = 0;
    for (i, ch) in s.char_indices() {
        let escape: Option<&str> = match ch {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            _ => None,
        };
        let needs_hex = matches!(ch, '\0'..='\x1f' | '<' | '>' | '&' | '\u{2028}' | '\u{2029}');
        if escape.is_none() && !needs_hex {
            continue;
        }
        out.push_str(&s[start..i]);
        start = i + ch.len_utf8();
        if let Some(e) = escape {
            out.push_str(e);
        } else {
            let c = ch as u32;
            out.push_str("\\u");
            for shift in [12, 8, 4, 0] {
                out.push(HEX[((c >> shift) & 0xf) as usize] as char);
            }
        }
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_register_and_send() {
        assert_eq!(
            parse_client_frame(br#"{"cmd":"register","roomid":"R","clientid":"C"}"#),
            Ok(ClientFrame::Register { room: "R".into(), client: "C".into() })
        );
        assert_eq!(
            parse_client_frame(br#"{"cmd":"send","msg":"{\"type\":\"bye\"}"}"#),
            Ok(ClientFrame::Send { msg: r#"{"type":"bye"}"#.into() })
        );
    }

    /// §7 row 36: iOS pretty-prints its frames.
    #[test]
    fn accepts_pretty_printed_frames() {
        let f = b"{\n  \"cmd\" : \"register\",\n  \"roomid\" : \"R\",\n  \"clientid\" : \"C\"\n}\n";
        assert!(matches!(parse_client_frame(f), Ok(ClientFrame::Register { .. })));
    }

    /// §7 rows 22-24 and §2.4.
    #[test]
    fn refuses_bad_frames_with_collider_texts() {
        assert_eq!(
            parse_client_frame(br#"{"cmd":"register","roomid":"","clientid":"C"}"#).unwrap_err().to_string(),
            ERR_MISSING_IDS
        );
        assert_eq!(parse_client_frame(br#"{"cmd":"send"}"#).unwrap_err().to_string(), ERR_MISSING_MSG);
        let e = parse_client_frame(br#"{"cmd":"foo"}"#).unwrap_err();
        assert_eq!(e.to_string(), ERR_UNEXPECTED_CMD);
        assert!(!e.is_fatal());
        let e = parse_client_frame(b"{not json").unwrap_err();
        assert!(e.to_string().starts_with("websocket.JSON.Receive error: "));
        assert!(e.is_fatal());
        assert!(matches!(parse_client_frame(br#"{"cmd":"send","msg":{"a":1}}"#), Err(FrameError::Json(_))));
        for not_object in [&b""[..], b"[]", b"null", b"\"x\"", b"  [1]"] {
            assert!(matches!(parse_client_frame(not_object), Err(FrameError::Json(_))), "{not_object:?}");
        }
        assert!(matches!(
            parse_client_frame(br#"{"cmd":"register","roomid":"a b","clientid":"C"}"#),
            Err(FrameError::BadId(IdError::BadChar))
        ));
    }

    #[test]
    fn frames_carry_both_keys_and_a_newline() {
        assert_eq!(message_frame("hello"), "{\"msg\":\"hello\",\"error\":\"\"}\n");
        assert_eq!(error_frame("Client not registered"), "{\"msg\":\"\",\"error\":\"Client not registered\"}\n");
    }

    /// Go's encoder escapes HTML characters and line separators; clients see those exact bytes.
    #[test]
    fn escapes_like_go() {
        let mut s = String::new();
        push_go_json_string(&mut s, "a\"b\\c\nd<e>&f\u{1}\u{2028}é");
        assert_eq!(s, r#""a\"b\\c\nd\u003ce\u003e\u0026f\u0001\u2028é""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd<e>&f\u{1}\u{2028}é");
    }
}
