//! The HTTP publish API for backends in any language: `POST /api/v1/publish` and
//! `POST /api/v1/publish/batch`, authenticated by an API key (Bearer). Publications
//! go through the hub's broker, the same path client publishes take.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use protocol::target::{self, Target};
use protocol::{ErrorCode, Payload, Publication, envelope};
use serde::Deserialize;
use serde_json::json;

use crate::broker::Receipt;
use crate::http::{Body, bearer, error, json};
use crate::node::Node;

/// Most targets (users or channels) in one publish request.
pub const MAX_TARGETS: usize = 1000;
/// Most messages in one batch request.
pub const MAX_BATCH: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    user: Option<String>,
    users: Option<Vec<String>>,
    channel: Option<String>,
    channels: Option<Vec<String>>,
    #[serde(default)]
    broadcast: bool,
    event: Option<String>,
    payload: Option<Payload>,
    /// Message id, passed to clients as `msg_id`.
    id: Option<String>,
    /// A conditional publish (one channel with history): only if its history is
    /// at this position, else `409 conflict` with the current one.
    expect: Option<protocol::frame::Since>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    messages: Vec<PublishRequest>,
}

struct Invalid(String);

/// The request's one target (exactly one of user, users, channel, channels and
/// broadcast), with the API's bound on target lists.
fn target(r: &PublishRequest) -> Result<Target, Invalid> {
    let target = match (&r.user, &r.users, &r.channel, &r.channels, r.broadcast) {
        (Some(u), None, None, None, false) => Target::Users(vec![u.clone()]),
        (None, Some(us), None, None, false) => Target::Users(us.clone()),
        (None, None, Some(c), None, false) => Target::Channels(vec![c.clone()]),
        (None, None, None, Some(cs), false) => Target::Channels(cs.clone()),
        (None, None, None, None, true) => Target::Broadcast,
        _ => {
            return Err(Invalid(
                "give exactly one target: user, users, channel, channels or broadcast: true".into(),
            ));
        }
    };
    if target.is_empty() || target.len() > MAX_TARGETS {
        return Err(Invalid(format!(
            "a target list holds 1..={MAX_TARGETS} entries"
        )));
    }
    Ok(target)
}

/// Resolves a request into the client-visible channels it targets (the rules are
/// the SDK's: `protocol::target`).
fn targets(r: &PublishRequest) -> Result<Vec<String>, Invalid> {
    target(r)?.channels().map_err(|e| Invalid(e.to_string()))
}

enum Failure {
    Invalid(String),
    TooLarge(String),
    Unavailable(String),
    Quota(String),
    Conflict(protocol::history::StreamPosition),
}

impl Failure {
    fn code(&self) -> (StatusCode, &'static str, &str) {
        match self {
            Failure::Invalid(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            Failure::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m),
            Failure::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
            Failure::Quota(m) => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", m),
            Failure::Conflict(_) => (
                StatusCode::CONFLICT,
                "conflict",
                "the channel is not at the expected position",
            ),
        }
    }
}

/// What a request asks Redis to write: its payload once per target (what the
/// publish budget counts; a request that cannot be resolved costs nothing).
fn cost(r: &PublishRequest) -> usize {
    let payload = r.payload.as_ref().map_or(4, Payload::len);
    targets(r).map_or(0, |t| t.len().saturating_mul(payload))
}

/// The refusal of a request (all of a batch) that would write more than the
/// budget; `None` when it fits.
fn over_budget(node: &Node, cost: usize) -> Option<Response<Body>> {
    let max = node.config.api.max_publish_bytes;
    if cost <= max {
        return None;
    }
    node.metrics
        .budget_refused(crate::metrics::Budget::PublishBytes);
    Some(error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        &format!(
            "the request would write {cost} bytes (targets x payload), more than the {max} allowed"
        ),
    ))
}

async fn publish_one(node: &Node, r: PublishRequest) -> Result<Receipt, Failure> {
    let channels = targets(&r).map_err(|Invalid(m)| Failure::Invalid(m))?;
    let event = r
        .event
        .unwrap_or_else(|| envelope::DEFAULT_EVENT.to_owned());
    envelope::validate_event(&event).map_err(Failure::Invalid)?;
    let payload = r.payload.unwrap_or_else(Payload::null);
    if payload.len() > node.config.conn.max_payload_size {
        return Err(Failure::TooLarge(format!(
            "payload is larger than {} bytes",
            node.config.conn.max_payload_size
        )));
    }
    if let Some(id) = &r.id {
        target::validate_message_id(id).map_err(Failure::Invalid)?;
    }
    let pubs: Vec<Publication> = channels
        .into_iter()
        .map(|ch| {
            node.metrics.published("api");
            let mut p = Publication::new(ch, event.clone(), payload.clone());
            p.id = r.id.clone();
            p
        })
        .collect();
    let failed = |e: crate::broker::BrokerError| match e {
        crate::broker::BrokerError::Conflict(at) => Failure::Conflict(at),
        e => match e.code() {
            ErrorCode::Unavailable => Failure::Unavailable(e.to_string()),
            ErrorCode::QuotaExceeded => Failure::Quota(e.to_string()),
            _ => Failure::Invalid(e.to_string()),
        },
    };
    if let Some(at) = r.expect {
        let Ok([p]) = <[Publication; 1]>::try_from(pubs) else {
            return Err(Failure::Invalid(
                "a conditional publish (expect) has exactly one target".into(),
            ));
        };
        let at = protocol::history::StreamPosition {
            epoch: at.epoch,
            offset: at.offset,
        };
        return node.broker.publish_if(p, &at).await.map_err(failed);
    }
    // One broker call: with Redis, one pipelined round trip for every target.
    node.broker.publish(pubs).await.map_err(failed)
}

fn failure_response(f: Failure) -> Response<Body> {
    let (status, code, message) = f.code();
    if let Failure::Conflict(at) = &f {
        return json(
            status,
            &json!({
                "error": code,
                "message": message,
                "offset": at.offset,
                "epoch": at.epoch,
            }),
        );
    }
    error(status, code, message)
}

fn key_matches(keys: &[String], given: &str) -> bool {
    // Every byte of every key is compared whatever is given, and the time depends
    // only on the keys' lengths: neither a prefix nor the length of a key shows.
    let given = given.as_bytes();
    keys.iter().fold(false, |found, k| {
        let k = k.as_bytes();
        let mut diff = u8::from(k.len() != given.len());
        for (i, a) in k.iter().enumerate() {
            diff |= a ^ given.get(i).copied().unwrap_or(0);
        }
        found | (diff == 0)
    })
}

/// The checks every API request passes first: POST, the API enabled, the key.
pub(crate) fn admit(req: &Request<Incoming>, node: &Node) -> Option<Response<Body>> {
    if req.method() != http::Method::POST {
        let mut resp = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        );
        // RFC 9110 §15.5.6: a 405 must list the allowed methods.
        resp.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return Some(resp);
    }
    if node.config.api.keys.is_empty() {
        return Some(error(
            StatusCode::NOT_FOUND,
            "not_found",
            "the publish API is disabled: configure --api-keys",
        ));
    }
    match bearer(req.headers()) {
        Some(k) if key_matches(&node.config.api.keys, k) => None,
        _ => Some(error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key",
        )),
    }
}

/// Serves the publish routes (the caller matched the path).
pub async fn handle(req: Request<Incoming>, node: Arc<Node>, batch: bool) -> Response<Body> {
    if let Some(refused) = admit(&req, &node) {
        return refused;
    }
    let limit = if batch {
        MAX_BATCH * (node.config.conn.max_payload_size + 4096)
    } else {
        node.config.conn.max_payload_size + 16 * 1024
    };
    // The body must arrive within the handshake timeout, like the head: a client
    // that announces a body and sends it slowly (or never) does not hold the
    // connection.
    let body =
        match crate::http::read_body(req, limit, node.config.listeners.handshake_timeout).await {
            Ok(b) => b,
            Err(answer) => return *answer,
        };
    if !batch {
        let r: PublishRequest = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("invalid JSON body: {e}"),
                );
            }
        };
        if let Some(refused) = over_budget(&node, cost(&r)) {
            return refused;
        }
        return match publish_one(&node, r).await {
            Ok(receipt) => json(StatusCode::OK, &receipt),
            Err(f) => failure_response(f),
        };
    }
    let b: BatchRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("invalid JSON body: {e}"),
            );
        }
    };
    if b.messages.is_empty() || b.messages.len() > MAX_BATCH {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("a batch holds 1..={MAX_BATCH} messages"),
        );
    }
    let total = b
        .messages
        .iter()
        .map(cost)
        .fold(0usize, usize::saturating_add);
    if let Some(refused) = over_budget(&node, total) {
        return refused;
    }
    let mut results = Vec::with_capacity(b.messages.len());
    for r in b.messages {
        results.push(match publish_one(&node, r).await {
            Ok(receipt) => json!(receipt),
            Err(Failure::Conflict(at)) => json!({
                "error": "conflict",
                "message": "the channel is not at the expected position",
                "offset": at.offset,
                "epoch": at.epoch,
            }),
            Err(f) => {
                let (_, code, message) = f.code();
                json!({"error": code, "message": message})
            }
        });
    }
    json(StatusCode::OK, &json!({ "results": results }))
}

/// The parsing and validation an API request body goes through, without a node:
/// the entry point of the fuzz target and property test of the HTTP publish body.
/// Returns how many publications the body would make (invalid messages of a batch
/// count none), or why the whole body is refused.
#[doc(hidden)]
pub fn check_body(body: &[u8], batch: bool) -> Result<usize, String> {
    let requests = if batch {
        let b: BatchRequest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if b.messages.is_empty() || b.messages.len() > MAX_BATCH {
            return Err(format!("a batch holds 1..={MAX_BATCH} messages"));
        }
        b.messages
    } else {
        vec![serde_json::from_slice(body).map_err(|e| e.to_string())?]
    };
    Ok(requests
        .iter()
        .filter_map(|r| {
            let event = r.event.as_deref().unwrap_or(envelope::DEFAULT_EVENT);
            envelope::validate_event(event).ok()?;
            targets(r).ok().map(|t| t.len())
        })
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        let keys = vec![
            "0123456789abcdef".to_string(),
            "fedcba9876543210".to_string(),
        ];
        assert!(key_matches(&keys, "fedcba9876543210"));
        assert!(!key_matches(&keys, "0123456789abcde"));
        assert!(!key_matches(&keys, "0123456789abcdefX"));
        assert!(!key_matches(&[], "x"));
    }

    #[test]
    fn exactly_one_target() {
        let r: PublishRequest = serde_json::from_str(r#"{"user":"a","channel":"b"}"#).unwrap();
        assert!(targets(&r).is_err());
        let r: PublishRequest = serde_json::from_str(r#"{"users":["a","b"]}"#).unwrap();
        assert_eq!(targets(&r).ok().unwrap(), vec!["$user:a", "$user:b"]);
        let r: PublishRequest = serde_json::from_str(r#"{"broadcast":true}"#).unwrap();
        assert_eq!(targets(&r).ok().unwrap(), vec!["$broadcast"]);
        let r: PublishRequest = serde_json::from_str(r#"{"channel":"$broadcast"}"#).unwrap();
        assert!(targets(&r).is_err());
    }
}
