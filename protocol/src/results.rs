//! The `result` of a successful `reply`, one type per request (docs/protocol.md
//! section 6, "Client frames"; `Reply` in docs/api/asyncapi.yaml).
//!
//! The gateway builds these and the Rust client reads them back, so a field is named
//! once. Field order is the documented order: with `serde_json`'s `preserve_order`
//! (on in this workspace) and MessagePack maps written field by field, it decides the
//! bytes of the docs' examples, which `protocol/tests/client_fixtures.rs` compares.
//!
//! A [`Reply`](crate::frame::Reply) carries its result as a `serde_json::Value`
//! (tests index it, and a client decodes it before it knows which request it
//! answers): [`ReplyResult::to_value`] and [`ReplyResult::from_value`] convert, and
//! `Reply::ok` takes any of these types directly.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{ErrorCode, ProtocolError};

/// A reply result: the request it answers, and the conversions from and to the
/// `result` value of a [`Reply`](crate::frame::Reply).
pub trait ReplyResult: Serialize + DeserializeOwned + Into<serde_json::Value> {
    /// The `type` of the client frame this answers.
    const REQUEST: &'static str;

    /// The `result` value. Cannot fail for these types (string keys, integers,
    /// strings, booleans, arrays); a failure would give `null`.
    fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Reads a reply's `result`. Unknown fields are ignored (a newer server may add
    /// some); a missing or mistyped documented field is a `bad_frame` error naming it.
    fn from_value(v: serde_json::Value) -> Result<Self, ProtocolError> {
        serde_json::from_value(v).map_err(|e| ProtocolError::Frame {
            code: ErrorCode::BadFrame,
            id: None,
            message: format!("result of `{}`: {e}", Self::REQUEST),
        })
    }
}

/// The answer to `subscribe`.
///
/// - a channel without history: only `channel` (and `recovered: false` when the
///   subscribe asked to resume with `since`: nothing can be replayed);
/// - with history: also `epoch` and `offset`, the channel's position (`""` and `0`
///   before its first message), and with `since` also `recovered`;
/// - the history could not be read: as without history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeResult {
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Present when the subscribe asked to resume (`since`): whether every missed
    /// message follows the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
}

impl SubscribeResult {
    /// A subscription without a history position: the channel keeps no history, or
    /// it could not be read. `resumed` (the subscribe had `since`) adds
    /// `recovered: false`, since nothing can be replayed.
    pub fn without_history(channel: impl Into<String>, resumed: bool) -> Self {
        Self {
            channel: channel.into(),
            epoch: None,
            offset: None,
            recovered: resumed.then_some(false),
        }
    }

    /// A subscription to a channel with history at `epoch`/`offset`; `recovered`
    /// when the subscribe asked to resume.
    pub fn with_history(
        channel: impl Into<String>,
        epoch: impl Into<String>,
        offset: u64,
        recovered: Option<bool>,
    ) -> Self {
        Self {
            channel: channel.into(),
            epoch: Some(epoch.into()),
            offset: Some(offset),
            recovered,
        }
    }
}

impl ReplyResult for SubscribeResult {
    const REQUEST: &'static str = "subscribe";
}

/// The answer to `unsubscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeResult {
    pub channel: String,
}

impl ReplyResult for UnsubscribeResult {
    const REQUEST: &'static str = "unsubscribe";
}

/// The answer to `publish`: a receipt. The same object is the HTTP API's receipt
/// (`Receipt` in docs/api/openapi.yaml): what one publish request reached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResult {
    /// Gateway nodes that had subscribers for the channel when it was published
    /// (summed over the targets of an API request).
    pub nodes: u64,
    /// Connections reached; only a single node (in-memory broker) knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<u64>,
    /// Publications not delivered again because their message id was seen within the
    /// idempotency window; absent when 0 (always, for client publishes: they carry
    /// no id).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub duplicates: u64,
    /// A conditional publish's offset in the channel's history (its new position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The epoch of that offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ReplyResult for PublishResult {
    const REQUEST: &'static str = "publish";
}

/// The answer to `refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshResult {
    /// The new token's `exp`, Unix seconds: when the connection now expires.
    pub expires_at: u64,
    /// Channels the connection left because the new token no longer allows them
    /// (empty when none).
    pub unsubscribed: Vec<String>,
}

impl ReplyResult for RefreshResult {
    const REQUEST: &'static str = "refresh";
}

/// The answer to `ack`: the user's acknowledged position on the personal channel,
/// as stored (never lower than before within an epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckResult {
    pub offset: u64,
}

impl ReplyResult for AckResult {
    const REQUEST: &'static str = "ack";
}

/// The answer to `presence`: the channel's counts and one page of its members,
/// ordered by client id; `cursor` (the last client listed) asks for the next page,
/// absent on the last one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceResult {
    pub channel: String,
    /// Connections present.
    pub clients: u64,
    /// Distinct users among them.
    pub users: u64,
    pub members: Vec<crate::presence::Member>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl ReplyResult for PresenceResult {
    const REQUEST: &'static str = "presence";
}

/// The answer to `presence_stats`: the channel's counts without listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceStatsResult {
    pub channel: String,
    pub clients: u64,
    pub users: u64,
}

impl ReplyResult for PresenceStatsResult {
    const REQUEST: &'static str = "presence_stats";
}

/// Most entries one `history` request returns, and its default.
pub const MAX_HISTORY_PAGE: u32 = 100;

/// One entry of a channel's history, as a `history` reply lists it (the fields of a
/// `message` frame without the channel, which the reply names once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub event: String,
    pub payload: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
    pub offset: u64,
    pub ts: u64,
}

/// The answer to `history`: the channel's position (`epoch`, latest `offset`; `""`
/// and `0` before its first message) and entries oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryResult {
    pub channel: String,
    pub epoch: String,
    pub offset: u64,
    pub publications: Vec<HistoryEntry>,
}

impl ReplyResult for HistoryResult {
    const REQUEST: &'static str = "history";
}

macro_rules! into_value {
    ($($t:ty),*) => {$(
        impl From<$t> for serde_json::Value {
            fn from(r: $t) -> Self {
                r.to_value()
            }
        }
    )*};
}

into_value!(
    SubscribeResult,
    UnsubscribeResult,
    PublishResult,
    RefreshResult,
    AckResult,
    PresenceResult,
    PresenceStatsResult,
    HistoryResult
);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_serialize_as_documented() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                SubscribeResult::without_history("news", false).into(),
                r#"{"channel":"news"}"#,
            ),
            (
                SubscribeResult::without_history("news", true).into(),
                r#"{"channel":"news","recovered":false}"#,
            ),
            (
                SubscribeResult::with_history("room:42", "d41e7a9c03b5f218", 19, Some(true)).into(),
                r#"{"channel":"room:42","epoch":"d41e7a9c03b5f218","offset":19,"recovered":true}"#,
            ),
            (
                UnsubscribeResult {
                    channel: "news".into(),
                }
                .into(),
                r#"{"channel":"news"}"#,
            ),
            (
                PublishResult {
                    nodes: 1,
                    sessions: Some(3),
                    ..PublishResult::default()
                }
                .into(),
                r#"{"nodes":1,"sessions":3}"#,
            ),
            (
                PublishResult {
                    nodes: 2,
                    offset: Some(18),
                    epoch: Some("d41e7a9c03b5f218".into()),
                    ..PublishResult::default()
                }
                .into(),
                r#"{"nodes":2,"offset":18,"epoch":"d41e7a9c03b5f218"}"#,
            ),
            (
                PublishResult {
                    nodes: 0,
                    duplicates: 1,
                    ..PublishResult::default()
                }
                .into(),
                r#"{"nodes":0,"duplicates":1}"#,
            ),
            (
                RefreshResult {
                    expires_at: 1_767_232_800,
                    unsubscribed: vec![],
                }
                .into(),
                r#"{"expires_at":1767232800,"unsubscribed":[]}"#,
            ),
            (AckResult { offset: 17 }.into(), r#"{"offset":17}"#),
        ];
        for (value, text) in cases {
            assert_eq!(serde_json::to_string(&value).unwrap_or_default(), text);
        }
    }

    #[test]
    fn reading_ignores_unknown_fields_and_names_missing_ones() {
        let r = SubscribeResult::from_value(json!({"channel": "a", "later": [1]}));
        assert_eq!(r.ok(), Some(SubscribeResult::without_history("a", false)));
        let e = AckResult::from_value(json!({})).map(|_| ()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::BadFrame);
        assert!(e.to_string().contains("`ack`"), "{e}");
        assert!(e.to_string().contains("offset"), "{e}");
        assert!(PublishResult::from_value(json!({"nodes": -1})).is_err());
        assert_eq!(
            PublishResult::from_value(json!({"nodes": 2})).ok(),
            Some(PublishResult {
                nodes: 2,
                ..PublishResult::default()
            })
        );
    }
}
