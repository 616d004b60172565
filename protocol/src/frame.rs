//! Frames exchanged over the WebSocket, in JSON (text frames) or MessagePack (binary
//! frames, maps with the same field names). Every frame is one object with a `type`.
//!
//! Decoding goes through a flat struct of optional fields rather than a tagged enum:
//! it keeps the payload's JSON text borrowed-free and lets errors name the missing
//! field and echo the correlation id when it was readable.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::presence::PresenceDiff;
use crate::{ErrorCode, Payload, ProtocolError, Publication};

pub use crate::results::{
    AckResult, HistoryEntry, HistoryResult, MAX_HISTORY_PAGE, PresenceResult, PresenceStatsResult,
    PublishResult, RefreshResult, ReplyResult, SubscribeResult, UnsubscribeResult,
};

/// Subprotocol selecting JSON text frames (the default when none is offered).
pub const JSON_PROTOCOL: &str = "tidings.json";
/// Subprotocol selecting MessagePack binary frames.
pub const MSGPACK_PROTOCOL: &str = "tidings.msgpack";
/// Prefix of a `Sec-WebSocket-Protocol` entry carrying the JWT (for browsers, which
/// cannot set an `Authorization` header). Never echoed back.
pub const TOKEN_PROTOCOL_PREFIX: &str = "tidings.token.";

/// The frame encoding of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Json,
    MsgPack,
}

impl Encoding {
    pub fn from_subprotocol(name: &str) -> Option<Self> {
        match name {
            JSON_PROTOCOL => Some(Encoding::Json),
            MSGPACK_PROTOCOL => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => JSON_PROTOCOL,
            Encoding::MsgPack => MSGPACK_PROTOCOL,
        }
    }

    /// JSON travels in text frames, MessagePack in binary frames.
    pub fn is_text(self) -> bool {
        self == Encoding::Json
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::MsgPack => "msgpack",
        }
    }

    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, ProtocolError> {
        match self {
            Encoding::Json => serde_json::to_vec(value)
                .map(Bytes::from)
                .map_err(|e| ProtocolError::Encode(e.to_string())),
            Encoding::MsgPack => rmp_serde::to_vec_named(value)
                .map(Bytes::from)
                .map_err(|e| ProtocolError::Encode(e.to_string())),
        }
    }

    fn decode<'de, T: Deserialize<'de>>(self, bytes: &'de [u8]) -> Result<T, String> {
        let max = crate::depth::MAX_FRAME_DEPTH;
        let within = match self {
            Encoding::Json => crate::depth::json_within(bytes, max),
            Encoding::MsgPack => crate::depth::msgpack_within(bytes, max),
        };
        if !within {
            return Err(format!(
                "nests deeper than {} levels (payloads: {})",
                max,
                crate::depth::MAX_PAYLOAD_DEPTH
            ));
        }
        match self {
            Encoding::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Encoding::MsgPack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

/// Where a subscriber left off in a channel's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Subscribe {
        id: u64,
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Since>,
    },
    Unsubscribe {
        id: u64,
        channel: String,
    },
    Publish {
        id: u64,
        channel: String,
        event: String,
        payload: Payload,
        /// A conditional publish: only if the channel's history is at this
        /// position (its latest offset and epoch), else a `conflict` error.
        #[serde(skip_serializing_if = "Option::is_none")]
        expect: Option<Since>,
    },
    Refresh {
        id: u64,
        token: String,
    },
    Ack {
        id: u64,
        offset: u64,
    },
    /// A page of a channel's presence members (after `cursor`, at most `limit`).
    Presence {
        id: u64,
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// A channel's presence counts.
    PresenceStats {
        id: u64,
        channel: String,
    },
    /// Entries of a channel's history: the last `limit`, or the first `limit`
    /// after `since`.
    History {
        id: u64,
        channel: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Since>,
    },
    Pong,
}

impl ClientFrame {
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::Publish { .. } => "publish",
            ClientFrame::Refresh { .. } => "refresh",
            ClientFrame::Ack { .. } => "ack",
            ClientFrame::Presence { .. } => "presence",
            ClientFrame::PresenceStats { .. } => "presence_stats",
            ClientFrame::History { .. } => "history",
            ClientFrame::Pong => "pong",
        }
    }

    pub fn encode(&self, enc: Encoding) -> Result<Bytes, ProtocolError> {
        enc.encode(self)
    }
}

#[derive(Deserialize)]
struct FlatClient {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<u64>,
    channel: Option<String>,
    event: Option<String>,
    payload: Option<Payload>,
    token: Option<String>,
    since: Option<Since>,
    // Fields only some frame types read: a value of the wrong type is an error for
    // those, and ignored (as any unknown field) by the others.
    expect: Option<Lenient<Since>>,
    offset: Option<u64>,
    limit: Option<Lenient<u32>>,
    cursor: Option<Lenient<String>>,
}

/// A field's value, or what it held when that was not of its type.
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient<T> {
    Valid(T),
    Invalid(serde::de::IgnoredAny),
}

impl<T> Lenient<T> {
    /// The value of a field this frame type reads: of its type, or a `bad_frame`.
    fn read(v: Option<Self>, field: &str, id: Option<u64>) -> Result<Option<T>, ProtocolError> {
        match v {
            None => Ok(None),
            Some(Lenient::Valid(t)) => Ok(Some(t)),
            Some(Lenient::Invalid(_)) => Err(frame_err(
                ErrorCode::BadFrame,
                id,
                format!("invalid type for field `{field}`"),
            )),
        }
    }
}

#[derive(Deserialize)]
struct IdOnly {
    id: Option<u64>,
}

fn frame_err(code: ErrorCode, id: Option<u64>, message: impl Into<String>) -> ProtocolError {
    ProtocolError::Frame {
        code,
        id,
        message: message.into(),
    }
}

/// Decodes a client frame. Errors carry the correlation id when it could be read.
pub fn decode_client(enc: Encoding, bytes: &[u8]) -> Result<ClientFrame, ProtocolError> {
    let flat: FlatClient = match enc.decode(bytes) {
        Ok(f) => f,
        Err(e) => {
            let id = enc.decode::<IdOnly>(bytes).ok().and_then(|i| i.id);
            return Err(frame_err(ErrorCode::BadFrame, id, e));
        }
    };
    let id = flat.id;
    let kind = flat
        .kind
        .ok_or_else(|| frame_err(ErrorCode::BadFrame, id, "missing field `type`"))?;
    if kind == "pong" {
        return Ok(ClientFrame::Pong);
    }
    let need_id = || id.ok_or_else(|| frame_err(ErrorCode::BadRequest, None, "missing field `id`"));
    let need = |v: Option<String>, field: &str| {
        v.ok_or_else(|| {
            frame_err(
                ErrorCode::BadRequest,
                id,
                format!("missing field `{field}`"),
            )
        })
    };
    Ok(match kind.as_str() {
        "subscribe" => ClientFrame::Subscribe {
            id: need_id()?,
            channel: need(flat.channel, "channel")?,
            since: flat.since,
        },
        "unsubscribe" => ClientFrame::Unsubscribe {
            id: need_id()?,
            channel: need(flat.channel, "channel")?,
        },
        "publish" => ClientFrame::Publish {
            id: need_id()?,
            channel: need(flat.channel, "channel")?,
            event: flat
                .event
                .unwrap_or_else(|| crate::envelope::DEFAULT_EVENT.to_owned()),
            payload: flat.payload.unwrap_or_else(Payload::null),
            expect: Lenient::read(flat.expect, "expect", id)?,
        },
        "refresh" => ClientFrame::Refresh {
            id: need_id()?,
            token: need(flat.token, "token")?,
        },
        "ack" => ClientFrame::Ack {
            id: need_id()?,
            offset: flat
                .offset
                .ok_or_else(|| frame_err(ErrorCode::BadRequest, id, "missing field `offset`"))?,
        },
        "presence" => ClientFrame::Presence {
            id: need_id()?,
            channel: need(flat.channel, "channel")?,
            limit: Lenient::read(flat.limit, "limit", id)?,
            cursor: Lenient::read(flat.cursor, "cursor", id)?,
        },
        "presence_stats" => ClientFrame::PresenceStats {
            id: need_id()?,
            channel: need(flat.channel, "channel")?,
        },
        "history" => ClientFrame::History {
            id: need_id()?,
            channel: need(flat.channel, "channel")?,
            limit: Lenient::read(flat.limit, "limit", id)?,
            since: flat.since,
        },
        other => {
            return Err(frame_err(
                ErrorCode::UnknownType,
                id,
                format!(
                    "unknown frame type `{}`",
                    other.chars().take(32).collect::<String>()
                ),
            ));
        }
    })
}

/// Limits advertised in `welcome` so clients can stay inside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest inbound frame; bigger ones close the connection with 1009.
    pub max_message_bytes: u64,
    /// Largest `publish` payload (JSON text bytes).
    pub max_payload_bytes: u64,
    /// Channels one connection may subscribe to, besides its personal and the
    /// broadcast channel.
    pub max_channels: u32,
    /// Sustained inbound frames per second, and the token bucket's size (the most
    /// frames accepted at once after a quiet period).
    pub rate_per_sec: u32,
    pub rate_burst: u32,
}

/// First frame on every connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    pub session: String,
    pub node: String,
    pub user: String,
    /// The personal channel the connection is already subscribed to.
    pub channel: String,
    pub heartbeat_ms: u64,
    /// Token expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    pub limits: Limits,
    /// The personal channel's history epoch, when it keeps history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The personal channel's latest offset (before any replay that follows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Present when a resume was attempted at connect: whether every missed message
    /// follows the welcome (`false`: refetch state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

/// A notification delivered to the client (what [`decode_server`] returns; the
/// gateway encodes a [`Publication`] directly with [`encode_message`]). Both write the
/// fields through one borrowed view, so the frame's shape is declared once.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub channel: String,
    pub event: String,
    pub payload: Payload,
    /// The publisher's message id, if it set one.
    pub msg_id: Option<String>,
    /// The position in the channel's history, when the channel keeps history.
    pub offset: Option<u64>,
    /// The history epoch `offset` belongs to (offsets restart in a new epoch).
    pub epoch: Option<String>,
    /// Publish time, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// The fields of a `message` frame, in the documented order, borrowed from a
/// [`Message`] or a [`Publication`]: the one declaration of the frame's shape.
#[derive(Serialize)]
struct MessageFields<'a> {
    channel: &'a str,
    event: &'a str,
    payload: &'a Payload,
    #[serde(skip_serializing_if = "Option::is_none")]
    msg_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    ts: u64,
}

impl<'a> From<&'a Message> for MessageFields<'a> {
    fn from(m: &'a Message) -> Self {
        MessageFields {
            channel: &m.channel,
            event: &m.event,
            payload: &m.payload,
            msg_id: m.msg_id.as_deref(),
            offset: m.offset,
            epoch: m.epoch.as_deref(),
            ts: m.ts,
        }
    }
}

impl<'a> From<&'a Publication> for MessageFields<'a> {
    fn from(p: &'a Publication) -> Self {
        MessageFields {
            channel: &p.channel,
            event: &p.event,
            payload: &p.payload,
            msg_id: p.id.as_deref(),
            offset: p.offset,
            epoch: p.epoch.as_deref(),
            ts: p.ts,
        }
    }
}

impl Serialize for Message {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        MessageFields::from(self).serialize(s)
    }
}

impl From<&Publication> for Message {
    fn from(p: &Publication) -> Self {
        Message {
            channel: p.channel.clone(),
            event: p.event.clone(),
            payload: p.payload.clone(),
            msg_id: p.id.clone(),
            offset: p.offset,
            epoch: p.epoch.clone(),
            ts: p.ts,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// With `conflict`: the channel's current latest offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// With `conflict`: the channel's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// The answer to a client request, echoing its `id` (absent when the request was
/// too malformed to carry one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Reply {
    /// A success answering request `id`: `result` is a typed result
    /// ([`SubscribeResult`], [`UnsubscribeResult`], [`PublishResult`],
    /// [`RefreshResult`], [`AckResult`]) or a JSON value.
    pub fn ok(id: u64, result: impl Into<serde_json::Value>) -> Self {
        Self {
            id: Some(id),
            ok: true,
            result: Some(result.into()),
            error: None,
        }
    }

    pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id,
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code,
                message: message.into(),
                offset: None,
                epoch: None,
            }),
        }
    }

    /// The refusal of a conditional publish: the channel is at `offset` of `epoch`.
    pub fn conflict(id: u64, offset: u64, epoch: impl Into<String>) -> Self {
        let epoch = epoch.into();
        Self {
            id: Some(id),
            ok: false,
            result: None,
            error: Some(ErrorBody {
                code: ErrorCode::Conflict,
                message: format!(
                    "the channel is at offset {offset} of epoch `{epoch}`, not at the expected position"
                ),
                offset: Some(offset),
                epoch: Some(epoch),
            }),
        }
    }

    /// The outcome for the requester: the `result` on success (`null` when absent;
    /// read it with [`ReplyResult::from_value`]), the `error` on failure (`internal`
    /// when a failed reply carries none).
    pub fn into_result(self) -> Result<serde_json::Value, ErrorBody> {
        match (self.ok, self.error) {
            (true, _) => Ok(self.result.unwrap_or(serde_json::Value::Null)),
            (false, Some(e)) => Err(e),
            (false, None) => Err(ErrorBody {
                code: ErrorCode::Internal,
                message: "reply without ok or error".into(),
                offset: None,
                epoch: None,
            }),
        }
    }
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome(Welcome),
    Message(Message),
    Reply(Reply),
    PresenceDiff(PresenceDiffFrame),
    Ping,
}

/// Users who joined or left a channel with presence events (protocol section 15).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceDiffFrame {
    pub channel: String,
    #[serde(flatten)]
    pub diff: PresenceDiff,
}

/// A `presence_diff` frame with its `type`, borrowed.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DiffFrame<'a> {
    PresenceDiff {
        channel: &'a str,
        #[serde(flatten)]
        diff: &'a PresenceDiff,
    },
}

/// Encodes the `presence_diff` frame of a channel once per encoding.
pub fn encode_presence_diff(
    enc: Encoding,
    channel: &str,
    diff: &PresenceDiff,
) -> Result<Bytes, ProtocolError> {
    enc.encode(&DiffFrame::PresenceDiff { channel, diff })
}

impl ServerFrame {
    pub fn encode(&self, enc: Encoding) -> Result<Bytes, ProtocolError> {
        enc.encode(self)
    }
}

/// A `message` frame with its `type`, as [`ServerFrame::Message`] writes it.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum MessageFrame<'a> {
    Message(MessageFields<'a>),
}

/// Encodes the `message` frame for a publication without copying its fields; the
/// gateway calls this once per publication and encoding.
pub fn encode_message(enc: Encoding, p: &Publication) -> Result<Bytes, ProtocolError> {
    enc.encode(&MessageFrame::Message(p.into()))
}

#[derive(Deserialize)]
struct FlatServer {
    #[serde(rename = "type")]
    kind: String,
    id: Option<u64>,
    session: Option<String>,
    node: Option<String>,
    user: Option<String>,
    channel: Option<String>,
    heartbeat_ms: Option<u64>,
    expires_at: Option<u64>,
    limits: Option<Limits>,
    epoch: Option<String>,
    recovered: Option<bool>,
    event: Option<String>,
    payload: Option<Payload>,
    msg_id: Option<String>,
    offset: Option<u64>,
    ts: Option<u64>,
    ok: Option<bool>,
    result: Option<serde_json::Value>,
    error: Option<ErrorBody>,
    joins: Option<Vec<crate::presence::Joined>>,
    leaves: Option<Vec<crate::presence::Left>>,
}

/// Decodes a server frame (for clients and tests).
pub fn decode_server(enc: Encoding, bytes: &[u8]) -> Result<ServerFrame, ProtocolError> {
    let f: FlatServer = enc
        .decode(bytes)
        .map_err(|e| frame_err(ErrorCode::BadFrame, None, e))?;
    let missing =
        |field: &str| frame_err(ErrorCode::BadRequest, f.id, format!("missing `{field}`"));
    Ok(match f.kind.as_str() {
        "welcome" => ServerFrame::Welcome(Welcome {
            session: f.session.clone().ok_or_else(|| missing("session"))?,
            node: f.node.clone().ok_or_else(|| missing("node"))?,
            user: f.user.clone().ok_or_else(|| missing("user"))?,
            channel: f.channel.clone().ok_or_else(|| missing("channel"))?,
            heartbeat_ms: f.heartbeat_ms.ok_or_else(|| missing("heartbeat_ms"))?,
            expires_at: f.expires_at.ok_or_else(|| missing("expires_at"))?,
            limits: f.limits.clone().ok_or_else(|| missing("limits"))?,
            epoch: f.epoch.clone(),
            offset: f.offset,
            recovered: f.recovered,
        }),
        "message" => ServerFrame::Message(Message {
            channel: f.channel.clone().ok_or_else(|| missing("channel"))?,
            event: f.event.clone().ok_or_else(|| missing("event"))?,
            payload: f.payload.clone().unwrap_or_else(Payload::null),
            msg_id: f.msg_id.clone(),
            offset: f.offset,
            epoch: f.epoch.clone(),
            ts: f.ts.unwrap_or(0),
        }),
        "reply" => ServerFrame::Reply(Reply {
            id: f.id,
            ok: f.ok.ok_or_else(|| missing("ok"))?,
            result: f.result.clone(),
            error: f.error.clone(),
        }),
        "presence_diff" => ServerFrame::PresenceDiff(PresenceDiffFrame {
            channel: f.channel.clone().ok_or_else(|| missing("channel"))?,
            diff: PresenceDiff {
                joins: f.joins.clone().unwrap_or_default(),
                leaves: f.leaves.clone().unwrap_or_default(),
            },
        }),
        "ping" => ServerFrame::Ping,
        other => {
            return Err(frame_err(
                ErrorCode::UnknownType,
                f.id,
                format!("unknown frame type `{other}`"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both() -> [Encoding; 2] {
        [Encoding::Json, Encoding::MsgPack]
    }

    #[test]
    fn client_frames_round_trip() {
        let frames = vec![
            ClientFrame::Subscribe {
                id: 1,
                channel: "news".into(),
                since: Some(Since {
                    offset: 3,
                    epoch: "e".into(),
                }),
            },
            ClientFrame::Unsubscribe {
                id: 2,
                channel: "news".into(),
            },
            ClientFrame::Publish {
                id: 3,
                channel: "room:1".into(),
                event: "typing".into(),
                payload: Payload::from_json(r#"{"who":"a","n":[1,2]}"#).unwrap(),
                expect: None,
            },
            ClientFrame::Publish {
                id: 30,
                channel: "doc:1".into(),
                event: "op".into(),
                payload: Payload::from_json("[1]").unwrap(),
                expect: Some(Since {
                    offset: 0,
                    epoch: String::new(),
                }),
            },
            ClientFrame::Refresh {
                id: 4,
                token: "t".into(),
            },
            ClientFrame::Ack { id: 5, offset: 9 },
            ClientFrame::Presence {
                id: 6,
                channel: "room:1".into(),
                limit: Some(10),
                cursor: Some("n1/00000000000000ff".into()),
            },
            ClientFrame::Presence {
                id: 7,
                channel: "room:1".into(),
                limit: None,
                cursor: None,
            },
            ClientFrame::PresenceStats {
                id: 8,
                channel: "room:1".into(),
            },
            ClientFrame::History {
                id: 9,
                channel: "snap:doc:1".into(),
                limit: Some(1),
                since: None,
            },
            ClientFrame::History {
                id: 10,
                channel: "doc:1".into(),
                limit: None,
                since: Some(Since {
                    offset: 4,
                    epoch: "e".into(),
                }),
            },
            ClientFrame::Pong,
        ];
        for enc in both() {
            for f in &frames {
                let bytes = f.encode(enc).unwrap();
                assert_eq!(&decode_client(enc, &bytes).unwrap(), f, "{enc:?}");
            }
        }
    }

    #[test]
    fn client_errors_name_the_problem() {
        let e = decode_client(Encoding::Json, br#"{"type":"subscribe","id":7}"#).unwrap_err();
        assert!(matches!(
            e,
            ProtocolError::Frame {
                code: ErrorCode::BadRequest,
                id: Some(7),
                ..
            }
        ));
        let e = decode_client(Encoding::Json, br#"{"type":"dance","id":8}"#).unwrap_err();
        assert!(matches!(
            e,
            ProtocolError::Frame {
                code: ErrorCode::UnknownType,
                id: Some(8),
                ..
            }
        ));
        let e = decode_client(Encoding::Json, b"not json").unwrap_err();
        assert!(matches!(
            e,
            ProtocolError::Frame {
                code: ErrorCode::BadFrame,
                id: None,
                ..
            }
        ));
        let e = decode_client(
            Encoding::Json,
            br#"{"type":"subscribe","id":9,"channel":5}"#,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            ProtocolError::Frame {
                code: ErrorCode::BadFrame,
                id: Some(9),
                ..
            }
        ));
        let e = decode_client(Encoding::MsgPack, b"\xc1").unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadFrame);
        // A field another frame type reads is ignored when of another type here,
        // and a bad_frame for the type that reads it.
        let f = decode_client(
            Encoding::Json,
            br#"{"type":"subscribe","id":1,"channel":"a","cursor":5,"limit":"x","expect":[]}"#,
        )
        .unwrap();
        assert!(matches!(f, ClientFrame::Subscribe { .. }));
        let e = decode_client(
            Encoding::Json,
            br#"{"type":"presence","id":2,"channel":"a","limit":"x"}"#,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            ProtocolError::Frame {
                code: ErrorCode::BadFrame,
                id: Some(2),
                ..
            }
        ));
        let e = decode_client(
            Encoding::Json,
            br#"{"type":"publish","id":3,"channel":"a","expect":{"offset":"1"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadFrame);
    }

    #[test]
    fn owned_and_borrowed_messages_encode_alike() {
        let mut full = Publication::new("$user:a", "e", Payload::from_json("[1]").unwrap());
        full.id = Some("m-1".into());
        full.offset = Some(7);
        full.epoch = Some("ep".into());
        let bare = Publication::new("room:1", "typing", Payload::null());
        for p in [full, bare] {
            for enc in both() {
                let owned = ServerFrame::Message(Message::from(&p)).encode(enc).unwrap();
                assert_eq!(owned, encode_message(enc, &p).unwrap(), "{enc:?}");
                let ServerFrame::Message(back) = decode_server(enc, &owned).unwrap() else {
                    panic!("not a message")
                };
                assert_eq!(back, Message::from(&p));
            }
        }
    }

    #[test]
    fn replies_carry_typed_results_and_give_them_back() {
        let r = Reply::ok(1, AckResult { offset: 3 });
        let back = match decode_server(
            Encoding::MsgPack,
            &ServerFrame::Reply(r).encode(Encoding::MsgPack).unwrap(),
        )
        .unwrap()
        {
            ServerFrame::Reply(r) => r,
            other => panic!("{other:?}"),
        };
        let v = back.into_result().unwrap();
        assert_eq!(AckResult::from_value(v).unwrap(), AckResult { offset: 3 });
        let e = Reply::error(Some(2), ErrorCode::Forbidden, "no")
            .into_result()
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        let odd = Reply {
            id: Some(3),
            ok: false,
            result: None,
            error: None,
        };
        assert_eq!(odd.into_result().unwrap_err().code, ErrorCode::Internal);
        let empty = Reply {
            id: Some(4),
            ok: true,
            result: None,
            error: None,
        };
        assert_eq!(empty.into_result().unwrap(), serde_json::Value::Null);
    }

    #[test]
    fn server_frames_round_trip() {
        let mut p = Publication::new("news", "created", Payload::from_json(r#"{"x":1}"#).unwrap());
        p.offset = Some(4);
        for enc in both() {
            let bytes = encode_message(enc, &p).unwrap();
            match decode_server(enc, &bytes).unwrap() {
                ServerFrame::Message(m) => {
                    assert_eq!(m.channel, "news");
                    assert_eq!(m.payload.json(), r#"{"x":1}"#);
                    assert_eq!(m.offset, Some(4));
                    assert_eq!(m.ts, p.ts);
                }
                other => panic!("{other:?}"),
            }
            let r = ServerFrame::Reply(Reply::error(Some(3), ErrorCode::Forbidden, "no"));
            assert_eq!(decode_server(enc, &r.encode(enc).unwrap()).unwrap(), r);
            let diff = ServerFrame::PresenceDiff(PresenceDiffFrame {
                channel: "room:1".into(),
                diff: PresenceDiff {
                    joins: vec![crate::presence::Joined {
                        user: "a".into(),
                        info: Some(serde_json::json!({"name": "A"})),
                    }],
                    leaves: vec![crate::presence::Left { user: "b".into() }],
                },
            });
            let bytes = encode_presence_diff(
                enc,
                "room:1",
                match &diff {
                    ServerFrame::PresenceDiff(d) => &d.diff,
                    _ => unreachable!(),
                },
            )
            .unwrap();
            assert_eq!(diff.encode(enc).unwrap(), bytes);
            assert_eq!(decode_server(enc, &bytes).unwrap(), diff);
            let ping = ServerFrame::Ping;
            assert_eq!(
                decode_server(enc, &ping.encode(enc).unwrap()).unwrap(),
                ping
            );
        }
        let json = encode_message(Encoding::Json, &p).unwrap();
        assert_eq!(
            ServerFrame::Message(Message::from(&p))
                .encode(Encoding::Json)
                .unwrap(),
            json
        );
        let text = std::str::from_utf8(&json).unwrap();
        assert!(
            text.starts_with(r#"{"type":"message","channel":"news""#),
            "{text}"
        );
    }
}
