//! Decoding server frames leniently (unknown fields and new optional ones are
//! tolerated), and encoding client frames with the protocol crate.

use protocol::frame::{ClientFrame, Limits, ServerFrame, decode_server};
use protocol::{Encoding, ErrorCode, Payload, ProtocolError};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::Error;

/// The `welcome` frame, including the history fields (`epoch`, `offset`,
/// `recovered`) that servers with history add.
#[derive(Debug, Clone)]
pub(crate) struct WelcomeIn {
    pub session: String,
    pub node: String,
    pub user: String,
    pub channel: String,
    pub heartbeat_ms: u64,
    pub expires_at: u64,
    pub limits: Option<Limits>,
    pub epoch: Option<String>,
    pub offset: Option<u64>,
    pub recovered: Option<bool>,
}

#[derive(Debug, Clone)]
pub(crate) struct MessageIn {
    pub channel: String,
    pub event: String,
    pub payload: Payload,
    pub msg_id: Option<String>,
    pub offset: Option<u64>,
    /// The history epoch `offset` belongs to; offsets restart in a new epoch.
    pub epoch: Option<String>,
    pub ts: u64,
}

#[derive(Debug)]
pub(crate) enum Incoming {
    Welcome(WelcomeIn),
    Message(MessageIn),
    Reply {
        id: Option<u64>,
        result: Result<Value, Error>,
    },
    Ping,
    /// A frame type this client does not know (ignored, for forward compatibility).
    Other(String),
}

/// Decodes with the protocol crate's decoder (which ignores unknown fields), and
/// turns an unknown frame type into [`Incoming::Other`] instead of an error, so a
/// newer server's frames never break this client.
pub(crate) fn decode(enc: Encoding, bytes: &[u8]) -> Result<Incoming, String> {
    let frame = match decode_server(enc, bytes) {
        Ok(f) => f,
        Err(ProtocolError::Frame {
            code: ErrorCode::UnknownType,
            message,
            ..
        }) => return Ok(Incoming::Other(message)),
        Err(e) => return Err(e.to_string()),
    };
    Ok(match frame {
        ServerFrame::Welcome(w) => Incoming::Welcome(WelcomeIn {
            session: w.session,
            node: w.node,
            user: w.user,
            channel: w.channel,
            heartbeat_ms: w.heartbeat_ms,
            expires_at: w.expires_at,
            limits: Some(w.limits),
            epoch: w.epoch,
            offset: w.offset,
            recovered: w.recovered,
        }),
        ServerFrame::Message(m) => Incoming::Message(MessageIn {
            channel: m.channel,
            event: m.event,
            payload: m.payload,
            msg_id: m.msg_id,
            offset: m.offset,
            epoch: m.epoch,
            ts: m.ts,
        }),
        ServerFrame::Reply(r) => Incoming::Reply {
            id: r.id,
            result: match (r.ok, r.error) {
                (true, _) => Ok(r.result.unwrap_or(Value::Null)),
                (false, Some(e)) => Err(Error::Server {
                    code: e.code.as_str().to_owned(),
                    message: e.message,
                }),
                (false, None) => Err(Error::Server {
                    code: ErrorCode::Internal.as_str().to_owned(),
                    message: "reply without ok or error".into(),
                }),
            },
        },
        ServerFrame::Ping => Incoming::Ping,
    })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use protocol::Publication;
    use protocol::frame::Reply;

    #[test]
    fn reads_history_fields_the_protocol_crate_does_not_know_yet() {
        let text = br#"{"type":"welcome","session":"s","node":"n","user":"u","channel":"$user:u",
            "heartbeat_ms":1000,"expires_at":5,"limits":{"max_message_bytes":1,"max_payload_bytes":1,
            "max_channels":1,"rate_per_sec":1,"rate_burst":1},"epoch":"ep","offset":9,"recovered":true,
            "something_new":[1]}"#;
        match decode(Encoding::Json, text).unwrap() {
            Incoming::Welcome(w) => {
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
            // Built as a value so the test does not depend on which optional fields
            // the protocol crate's `Welcome` has.
            let w = serde_json::json!({"type": "welcome", "session": "s", "node": "n",
                "user": "u", "channel": "$user:u", "heartbeat_ms": 30000, "expires_at": 99,
                "limits": {"max_message_bytes": 1, "max_payload_bytes": 2, "max_channels": 3,
                           "rate_per_sec": 4, "rate_burst": 5}});
            let bytes = match enc {
                Encoding::Json => serde_json::to_vec(&w).unwrap(),
                Encoding::MsgPack => rmp_serde::to_vec_named(&w).unwrap(),
            };
            let Incoming::Welcome(got) = decode(enc, &bytes).unwrap() else {
                panic!()
            };
            assert_eq!(got.limits.unwrap().rate_burst, 5);
            assert_eq!(got.epoch, None);

            let mut p = Publication::new("news", "e", Payload::from_json(r#"{"a":1}"#).unwrap());
            p.offset = Some(3);
            let bytes = protocol::frame::encode_message(enc, &p).unwrap();
            let Incoming::Message(m) = decode(enc, &bytes).unwrap() else {
                panic!()
            };
            assert_eq!((m.channel.as_str(), m.offset), ("news", Some(3)));
            assert_eq!(
                m.payload.parse::<Value>().unwrap(),
                serde_json::json!({"a":1})
            );

            let r =
                ServerFrame::Reply(Reply::ok(4, serde_json::json!({"channel":"x","epoch":"e"})));
            let Incoming::Reply { id, result } = decode(enc, &r.encode(enc).unwrap()).unwrap()
            else {
                panic!()
            };
            assert_eq!(id, Some(4));
            assert_eq!(result.unwrap()["epoch"], "e");

            let r = ServerFrame::Reply(Reply::error(Some(5), ErrorCode::Forbidden, "no"));
            let Incoming::Reply { result, .. } = decode(enc, &r.encode(enc).unwrap()).unwrap()
            else {
                panic!()
            };
            assert_eq!(result.unwrap_err().code(), Some(ErrorCode::Forbidden));

            assert!(matches!(
                decode(enc, &ServerFrame::Ping.encode(enc).unwrap()).unwrap(),
                Incoming::Ping
            ));
        }
        assert!(matches!(
            decode(Encoding::Json, br#"{"type":"later"}"#).unwrap(),
            Incoming::Other(_)
        ));
        assert!(decode(Encoding::Json, b"nope").is_err());
    }
}
