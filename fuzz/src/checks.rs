//! The properties every fuzz target asserts over the protocol crate's decoders.
//!
//! Shared by the libFuzzer targets (`fuzz/fuzz_targets/*.rs`, through the
//! `tidings-fuzz` library) and by the stable property test
//! `protocol/tests/fuzz_props.rs` (which includes this file by path), so both
//! check exactly the same things. A violated property panics with what was
//! accepted and why it is wrong.
//!
//! - Decoding never panics: any input is either a frame or an error.
//! - Errors are the documented ones (`bad_frame`, `bad_request`, `unknown_type` for
//!   frames; an envelope error for the Redis envelope).
//! - Whatever decodes re-encodes in **both** encodings (every accepted payload can be
//!   delivered to JSON and to MessagePack subscribers), and decoding that again gives
//!   the same frame: exactly the same in the encoding it came in, the same up to the
//!   payload's JSON spelling (compared as JSON values) in the other one.
//! - Accepted payloads nest at most `MAX_PAYLOAD_DEPTH` levels.

use protocol::depth::MAX_PAYLOAD_DEPTH;
use protocol::frame::{self, ClientFrame, Encoding, ServerFrame};
use protocol::{ErrorCode, Payload, ProtocolError, Publication};

pub const BOTH: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

/// The payload as a JSON value: how two spellings of one payload compare.
fn value(p: &Payload) -> serde_json::Value {
    match p.parse::<serde_json::Value>() {
        Ok(v) => v,
        Err(e) => panic!("accepted payload is not a JSON value: {e}: {:?}", p.json()),
    }
}

fn check_payload(p: &Payload) {
    assert!(
        protocol::depth::json_within(p.json().as_bytes(), MAX_PAYLOAD_DEPTH),
        "accepted payload nests deeper than {MAX_PAYLOAD_DEPTH}: {:?}",
        p.json()
    );
}

/// A client frame with its payload taken out (replaced by `null`) and the payload's
/// value: equal keys mean the same frame up to the payload's spelling.
fn client_key(f: &ClientFrame) -> (ClientFrame, Option<serde_json::Value>) {
    match f {
        ClientFrame::Publish {
            id,
            channel,
            event,
            payload,
            expect,
        } => (
            ClientFrame::Publish {
                id: *id,
                channel: channel.clone(),
                event: event.clone(),
                payload: Payload::null(),
                expect: expect.clone(),
            },
            Some(value(payload)),
        ),
        other => (other.clone(), None),
    }
}

/// A reply's `result: null` is no result: JSON `null` decodes as none, and so does
/// a MessagePack NaN or infinity (JSON values have no non-finite numbers: serde_json
/// makes them `null`), which would otherwise decode as `Some(Null)` once.
fn normalized(f: &ServerFrame) -> ServerFrame {
    match f {
        ServerFrame::Reply(r) if r.result == Some(serde_json::Value::Null) => {
            let mut r = r.clone();
            r.result = None;
            ServerFrame::Reply(r)
        }
        other => other.clone(),
    }
}

fn server_key(f: &ServerFrame) -> (ServerFrame, Option<serde_json::Value>) {
    match &normalized(f) {
        ServerFrame::Message(m) => {
            let mut m = m.clone();
            let v = value(&m.payload);
            m.payload = Payload::null();
            (ServerFrame::Message(m), Some(v))
        }
        other => (other.clone(), None),
    }
}

/// Payloads print as their size; a failing comparison shows their text.
fn client_payload(f: &ClientFrame) -> Option<&str> {
    match f {
        ClientFrame::Publish { payload, .. } => Some(payload.json()),
        _ => None,
    }
}

fn server_payload(f: &ServerFrame) -> Option<&str> {
    match f {
        ServerFrame::Message(m) => Some(m.payload.json()),
        _ => None,
    }
}

fn frame_error(what: &str, e: &ProtocolError) {
    match e {
        ProtocolError::Frame { code, .. } => assert!(
            matches!(
                code,
                ErrorCode::BadFrame | ErrorCode::BadRequest | ErrorCode::UnknownType
            ),
            "{what}: unexpected error code {code}: {e}"
        ),
        other => panic!("{what}: unexpected error kind {other:?}"),
    }
}

/// `decode_client` in `enc`, then the re-encoding properties in both encodings.
pub fn client_frame(enc: Encoding, data: &[u8]) {
    let f = match frame::decode_client(enc, data) {
        Ok(f) => f,
        Err(e) => return frame_error("decode_client", &e),
    };
    if let ClientFrame::Publish { payload, .. } = &f {
        check_payload(payload);
    }
    for out in BOTH {
        let bytes = f.encode(out).unwrap_or_else(|e| {
            panic!("{enc:?} frame {f:?} accepted but not encodable as {out:?}: {e}")
        });
        let back = frame::decode_client(out, &bytes).unwrap_or_else(|e| {
            panic!("{f:?} re-encoded as {out:?} does not decode: {e}: {bytes:02x?}")
        });
        if out == enc {
            assert_eq!(
                back,
                f,
                "{enc:?} round trip changed the frame (payloads {:?} -> {:?})",
                client_payload(&f),
                client_payload(&back)
            );
        } else {
            assert_eq!(
                client_key(&back),
                client_key(&f),
                "{enc:?} -> {out:?} changed the frame"
            );
        }
    }
}

/// `decode_server` in `enc` (what clients parse), then the same re-encoding
/// properties with `ServerFrame::encode`.
pub fn server_frame(enc: Encoding, data: &[u8]) {
    let f = match frame::decode_server(enc, data) {
        Ok(f) => f,
        Err(e) => return frame_error("decode_server", &e),
    };
    if let ServerFrame::Message(m) = &f {
        check_payload(&m.payload);
    }
    for out in BOTH {
        let bytes = f.encode(out).unwrap_or_else(|e| {
            panic!("{enc:?} frame {f:?} accepted but not encodable as {out:?}: {e}")
        });
        let back = frame::decode_server(out, &bytes).unwrap_or_else(|e| {
            panic!("{f:?} re-encoded as {out:?} does not decode: {e}: {bytes:02x?}")
        });
        if out == enc {
            assert_eq!(
                normalized(&back),
                normalized(&f),
                "{enc:?} round trip changed the frame (payloads {:?} -> {:?})",
                server_payload(&f),
                server_payload(&back)
            );
        } else {
            assert_eq!(
                server_key(&back),
                server_key(&f),
                "{enc:?} -> {out:?} changed the frame"
            );
        }
    }
}

/// `Publication::decode` (the Redis envelope), its round trip through
/// `Publication::encode`, and the `message` frame every subscriber would get, in
/// both encodings.
pub fn envelope(data: &[u8]) {
    let p = match Publication::decode(data) {
        Ok(p) => p,
        Err(ProtocolError::Envelope(_)) => return,
        Err(e) => panic!("Publication::decode: unexpected error kind {e:?}"),
    };
    check_payload(&p.payload);
    let again = Publication::decode(&p.encode())
        .unwrap_or_else(|e| panic!("{p:?} re-encoded does not decode: {e}"));
    assert_eq!(again, p, "envelope round trip changed the publication");
    for enc in BOTH {
        let bytes = frame::encode_message(enc, &p)
            .unwrap_or_else(|e| panic!("{p:?} accepted but not deliverable as {enc:?}: {e}"));
        let m = match frame::decode_server(enc, &bytes) {
            Ok(ServerFrame::Message(m)) => m,
            other => panic!("{p:?} delivered as {enc:?} decodes as {other:?}"),
        };
        assert_eq!(
            (&m.channel, &m.event, &m.msg_id, m.offset, &m.epoch, m.ts),
            (&p.channel, &p.event, &p.id, p.offset, &p.epoch, p.ts),
            "{enc:?} message frame changed the publication"
        );
        match enc {
            Encoding::Json => assert_eq!(
                m.payload.json(),
                p.payload.json(),
                "JSON payload not verbatim"
            ),
            Encoding::MsgPack => assert_eq!(value(&m.payload), value(&p.payload)),
        }
    }
}
