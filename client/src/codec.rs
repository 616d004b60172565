//! Server frames decoded with the protocol crate, leniently: unknown fields are
//! ignored by its decoder, and an unknown frame type is skipped here instead of being
//! an error, so a newer server's frames never break this client. Client frames go out
//! as WebSocket messages of the connection's kind (text for JSON, binary for
//! MessagePack). The frame types are the protocol crate's; nothing is redeclared.

use protocol::frame::{ClientFrame, ServerFrame, decode_server};
use protocol::{Encoding, ErrorCode, ProtocolError};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::Error;

/// A server frame; `Ok(None)` for a frame type this client does not know.
pub(crate) fn decode(enc: Encoding, bytes: &[u8]) -> Result<Option<ServerFrame>, ProtocolError> {
    match decode_server(enc, bytes) {
        Ok(f) => Ok(Some(f)),
        Err(ProtocolError::Frame {
            code: ErrorCode::UnknownType,
            message,
            ..
        }) => {
            tracing::debug!(%message, "unknown frame type ignored");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Encodes a client frame as a WebSocket message of the right kind.
pub(crate) fn encode(enc: Encoding, frame: &ClientFrame) -> Result<WsMessage, Error> {
    let bytes = frame
        .encode(enc)
        .map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(match enc {
        Encoding::Json => WsMessage::Text(
            String::from_utf8(bytes.to_vec())
                .map_err(|e| Error::Protocol(e.to_string()))?
                .into(),
        ),
        Encoding::MsgPack => WsMessage::Binary(bytes),
    })
}

/// The outcome of a reply for its requester: the `result` value, or the server's
/// error (read the value with [`protocol::frame::ReplyResult::from_value`]). A
/// `conflict` that says where the channel is becomes [`Error::Conflict`].
pub(crate) fn reply_result(r: protocol::frame::Reply) -> Result<serde_json::Value, Error> {
    r.into_result()
        .map_err(|e| match (e.code, e.offset, e.epoch) {
            (ErrorCode::Conflict, Some(offset), Some(epoch)) => Error::Conflict { offset, epoch },
            (code, _, _) => Error::Server {
                code: code.as_str().to_owned(),
                message: e.message,
            },
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]
    use super::*;
    use protocol::frame::{Reply, SubscribeResult};
    use protocol::{Payload, Publication};
    use serde_json::{Value, json};

    #[test]
    fn tolerates_fields_it_does_not_know() {
        let text = br#"{"type":"welcome","session":"s","node":"n","user":"u","channel":"$user:u",
            "heartbeat_ms":1000,"expires_at":5,"limits":{"max_message_bytes":1,"max_payload_bytes":1,
            "max_channels":1,"rate_per_sec":1,"rate_burst":1},"epoch":"ep","offset":9,"recovered":true,
            "something_new":[1]}"#;
        match decode(Encoding::Json, text).unwrap() {
            Some(ServerFrame::Welcome(w)) => {
                assert_eq!(w.epoch.as_deref(), Some("ep"));
                assert_eq!(w.offset, Some(9));
                assert_eq!(w.recovered, Some(true));
                assert_eq!(w.heartbeat_ms, 1000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_what_the_protocol_crate_encodes() {
        for enc in [Encoding::Json, Encoding::MsgPack] {
            // Built as a value: a welcome without the optional history fields.
            let w = json!({"type": "welcome", "session": "s", "node": "n",
                "user": "u", "channel": "$user:u", "heartbeat_ms": 30000, "expires_at": 99,
                "limits": {"max_message_bytes": 1, "max_payload_bytes": 2, "max_channels": 3,
                           "rate_per_sec": 4, "rate_burst": 5}});
            let bytes = match enc {
                Encoding::Json => serde_json::to_vec(&w).unwrap(),
                Encoding::MsgPack => rmp_serde::to_vec_named(&w).unwrap(),
            };
            let Some(ServerFrame::Welcome(got)) = decode(enc, &bytes).unwrap() else {
                panic!()
            };
            assert_eq!(got.limits.rate_burst, 5);
            assert_eq!(got.epoch, None);

            let mut p = Publication::new("news", "e", Payload::from_json(r#"{"a":1}"#).unwrap());
            p.offset = Some(3);
            let bytes = protocol::frame::encode_message(enc, &p).unwrap();
            let Some(ServerFrame::Message(m)) = decode(enc, &bytes).unwrap() else {
                panic!()
            };
            assert_eq!((m.channel.as_str(), m.offset), ("news", Some(3)));
            assert_eq!(m.payload.parse::<Value>().unwrap(), json!({"a":1}));

            let sub = SubscribeResult::with_history("x", "e", 4, None);
            let r = ServerFrame::Reply(Reply::ok(4, sub.clone()));
            let Some(ServerFrame::Reply(r)) = decode(enc, &r.encode(enc).unwrap()).unwrap() else {
                panic!()
            };
            assert_eq!(r.id, Some(4));
            let v = reply_result(r).unwrap();
            assert_eq!(
                <SubscribeResult as protocol::frame::ReplyResult>::from_value(v).unwrap(),
                sub
            );

            let r = ServerFrame::Reply(Reply::error(Some(5), ErrorCode::Forbidden, "no"));
            let Some(ServerFrame::Reply(r)) = decode(enc, &r.encode(enc).unwrap()).unwrap() else {
                panic!()
            };
            assert_eq!(
                reply_result(r).unwrap_err().code(),
                Some(ErrorCode::Forbidden)
            );

            assert!(matches!(
                decode(enc, &ServerFrame::Ping.encode(enc).unwrap()).unwrap(),
                Some(ServerFrame::Ping)
            ));
        }
        assert!(
            decode(Encoding::Json, br#"{"type":"later"}"#)
                .unwrap()
                .is_none()
        );
        assert!(decode(Encoding::Json, b"nope").is_err());
    }

    #[test]
    fn client_frames_go_out_as_the_encoding_s_message_kind() {
        let f = ClientFrame::Pong;
        assert!(
            matches!(encode(Encoding::Json, &f).unwrap(), WsMessage::Text(t) if t.as_str() == r#"{"type":"pong"}"#)
        );
        assert!(matches!(
            encode(Encoding::MsgPack, &f).unwrap(),
            WsMessage::Binary(_)
        ));
    }
}
