//! The Redis envelope: what publishers put on a Redis channel and gateways decode.
//!
//! MessagePack with named fields (so fields can be added without breaking older
//! nodes). The payload travels as JSON text inside it, so a node validates it once
//! and embeds it verbatim in JSON frames.

use serde::{Deserialize, Serialize};

use crate::{Payload, ProtocolError};

/// Version written into every envelope; decoders refuse versions they don't know.
pub const ENVELOPE_VERSION: u8 = 1;

/// Longest event name accepted, in bytes.
pub const MAX_EVENT_LEN: usize = 64;
/// Event name used when a publisher gives none.
pub const DEFAULT_EVENT: &str = "message";

/// One notification on its way to every subscriber of `channel`.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The client-visible channel (`$user:<id>`, `$broadcast` or a public channel).
    pub channel: String,
    /// Application event name, e.g. `order.shipped`.
    pub event: String,
    pub payload: Payload,
    /// Optional message id (also the idempotency key when the publisher sets one).
    pub id: Option<String>,
    /// Publish time, milliseconds since the Unix epoch (for latency measurement).
    pub ts: u64,
    /// Position in the channel's history stream, when the channel keeps history.
    pub offset: Option<u64>,
    /// The history stream's epoch, when the channel keeps history.
    pub epoch: Option<String>,
}

#[derive(Serialize)]
struct WireRef<'a> {
    v: u8,
    ch: &'a str,
    ev: &'a str,
    p: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    ts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    off: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ep: Option<&'a str>,
}

#[derive(Deserialize)]
struct WireOwned {
    v: u8,
    ch: String,
    ev: String,
    p: String,
    #[serde(default)]
    id: Option<String>,
    ts: u64,
    #[serde(default)]
    off: Option<u64>,
    #[serde(default)]
    ep: Option<String>,
}

/// Checks an event name: 1..=64 bytes of `A-Z a-z 0-9 _ - . : /`.
pub fn validate_event(event: &str) -> Result<(), String> {
    if event.is_empty() || event.len() > MAX_EVENT_LEN {
        return Err(format!("event must be 1..={MAX_EVENT_LEN} bytes"));
    }
    if !event
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
    {
        return Err("event allows A-Z a-z 0-9 _ - . : /".into());
    }
    Ok(())
}

impl Publication {
    /// A publication stamped with the current time and no history position.
    pub fn new(channel: impl Into<String>, event: impl Into<String>, payload: Payload) -> Self {
        Self {
            channel: channel.into(),
            event: event.into(),
            payload,
            id: None,
            ts: crate::now_millis(),
            offset: None,
            epoch: None,
        }
    }

    /// Encodes the envelope as MessagePack.
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireRef {
            v: ENVELOPE_VERSION,
            ch: &self.channel,
            ev: &self.event,
            p: self.payload.json(),
            id: self.id.as_deref(),
            ts: self.ts,
            off: self.offset,
            ep: self.epoch.as_deref(),
        };
        // Serializing plain strings and integers into a Vec cannot fail.
        rmp_serde::to_vec_named(&wire).unwrap_or_default()
    }

    /// Decodes an envelope, validating the payload's JSON once.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        if !crate::depth::msgpack_within(bytes, crate::depth::MAX_FRAME_DEPTH) {
            return Err(ProtocolError::Envelope("envelope nests too deep".into()));
        }
        let wire: WireOwned =
            rmp_serde::from_slice(bytes).map_err(|e| ProtocolError::Envelope(e.to_string()))?;
        if wire.v != ENVELOPE_VERSION {
            return Err(ProtocolError::Envelope(format!(
                "unknown envelope version {}",
                wire.v
            )));
        }
        let payload =
            Payload::from_json(&wire.p).map_err(|e| ProtocolError::Envelope(e.to_string()))?;
        Ok(Self {
            channel: wire.ch,
            event: wire.ev,
            payload,
            id: wire.id,
            ts: wire.ts,
            offset: wire.off,
            epoch: wire.ep,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip() {
        let mut p = Publication::new("news", "created", Payload::from_json(r#"{"n":1}"#).unwrap());
        p.id = Some("abc".into());
        p.offset = Some(7);
        p.epoch = Some("e1".into());
        let back = Publication::decode(&p.encode()).unwrap();
        assert_eq!(back, p);
        assert!(Publication::decode(b"\x01\x02").is_err());
    }

    #[test]
    fn events() {
        assert!(validate_event("order.shipped").is_ok());
        assert!(validate_event("").is_err());
        assert!(validate_event("a b").is_err());
        assert!(validate_event(&"e".repeat(65)).is_err());
    }
}
