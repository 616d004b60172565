//! The WebSocket upgrade: everything is checked before the 101 is sent, and every
//! refusal is an HTTP status with a JSON `{error, message}` body.
//!
//! Order of checks: a valid WebSocket request (400), the node not draining (503),
//! the origin allowlist (403), the token (401), connection limits (429).

use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use protocol::Encoding;
use protocol::frame::{Since, TOKEN_PROTOCOL_PREFIX};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::auth::{AuthError, Claims};
use crate::http::{Body, bearer, error, header_has_token};
use crate::metrics::Attempt;
use crate::node::{Node, Slot, SlotError};
use crate::session::Session;

struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    attempt: Attempt,
}

fn refuse(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
    attempt: Attempt,
) -> Refusal {
    Refusal {
        status,
        code,
        message: message.into(),
        attempt,
    }
}

struct Accepted {
    key: String,
    encoding: Encoding,
    /// Whether the client offered subprotocols (then exactly one is echoed).
    echo_protocol: bool,
    claims: Claims,
    slot: Slot,
    resume: Option<Since>,
}

/// Subprotocol entries offered by the client, across all header lines.
fn offered(req: &Request<Incoming>) -> Vec<&str> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

fn query_param<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// `?since=<offset>&epoch=<epoch>`: where the client left off on its personal
/// channel (not secret, so a query parameter is fine).
fn resume_position(req: &Request<Incoming>) -> Result<Option<Since>, &'static str> {
    match (query_param(req, "since"), query_param(req, "epoch")) {
        (None, None) => Ok(None),
        // A client that saw no history yet (empty epoch) and nothing in it.
        (Some("0"), None) => Ok(Some(Since {
            offset: 0,
            epoch: String::new(),
        })),
        (Some(off), Some(epoch)) => {
            let offset = off
                .parse()
                .map_err(|_| "`since` must be an integer offset")?;
            if epoch.len() > 64
                || !epoch
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err("`epoch` is malformed");
            }
            Ok(Some(Since {
                offset,
                epoch: epoch.to_owned(),
            }))
        }
        _ => Err("`since` and `epoch` go together"),
    }
}

fn query_token(req: &Request<Incoming>) -> Option<&str> {
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .filter(|t| !t.is_empty())
}

fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed.iter().any(|a| {
        if a == origin {
            return true;
        }
        // https://*.example.com matches https://x.example.com (and deeper).
        match a.split_once("://*.") {
            Some((scheme, suffix)) => origin
                .strip_prefix(scheme)
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|host| host.ends_with(&format!(".{suffix}"))),
            None => false,
        }
    })
}

fn check(req: &Request<Incoming>, node: &Arc<Node>) -> Result<Accepted, Refusal> {
    let h = req.headers();
    let bad = |m: &str| {
        refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            m,
            Attempt::BadRequest,
        )
    };
    if req.method() != http::Method::GET {
        return Err(bad("WebSocket upgrades use GET"));
    }
    if !header_has_token(h, header::CONNECTION, "upgrade")
        || !header_has_token(h, header::UPGRADE, "websocket")
    {
        return Err(bad(
            "not a WebSocket upgrade: need Connection: Upgrade and Upgrade: websocket",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(bad("Sec-WebSocket-Version must be 13"));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| k.len() == 24)
        .ok_or_else(|| bad("missing or malformed Sec-WebSocket-Key"))?
        .to_owned();
    let protocols = offered(req);
    let mut encoding = None;
    let mut proto_token = None;
    for p in &protocols {
        if let Some(t) = p.strip_prefix(TOKEN_PROTOCOL_PREFIX) {
            proto_token = Some(t);
        } else if encoding.is_none() {
            encoding = Encoding::from_subprotocol(p);
        }
    }
    let echo_protocol = !protocols.is_empty();
    let resume = resume_position(req).map_err(bad)?;
    if echo_protocol && encoding.is_none() {
        return Err(bad(
            "unsupported subprotocols: offer tidings.json or tidings.msgpack (alongside tidings.token.<jwt> if used)",
        ));
    }
    if node.is_draining() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "this node is shutting down; connect to another",
            Attempt::Draining,
        ));
    }
    if !node.config.auth.allowed_origins.is_empty()
        && let Some(origin) = h.get(header::ORIGIN)
    {
        let ok = origin
            .to_str()
            .map(|o| origin_allowed(&node.config.auth.allowed_origins, o))
            .unwrap_or(false);
        if !ok {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "forbidden",
                "origin not allowed",
                Attempt::Forbidden,
            ));
        }
    }
    let token = bearer(h).or(proto_token).or_else(|| query_token(req));
    let unauthorized = |e: AuthError| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            e.to_string(),
            Attempt::Unauthorized,
        )
    };
    let token = token.ok_or_else(|| unauthorized(AuthError::Missing))?;
    let claims = node.verifier.verify(token).map_err(unauthorized)?;
    let slot = node.reserve(&claims.sub).map_err(|e| match e {
        SlotError::NodeFull => refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "node connection limit reached",
            Attempt::Limited,
        ),
        SlotError::UserFull => refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            "per-user connection limit reached",
            Attempt::Limited,
        ),
    })?;
    Ok(Accepted {
        key,
        encoding: encoding.unwrap_or(Encoding::Json),
        echo_protocol,
        claims,
        slot,
        resume,
    })
}

/// Answers `GET /ws`: a refusal, or 101 and a task that runs the connection.
pub fn upgrade(req: Request<Incoming>, node: Arc<Node>) -> Response<Body> {
    let started = Instant::now();
    let accepted = match check(&req, &node) {
        Ok(a) => a,
        Err(r) => {
            node.metrics.attempt(r.attempt);
            tracing::debug!(
                status = r.status.as_u16(),
                reason = r.code,
                "upgrade refused"
            );
            let mut resp = error(r.status, r.code, &r.message);
            if r.attempt == Attempt::BadRequest {
                resp.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            return resp;
        }
    };
    let Accepted {
        key,
        encoding,
        echo_protocol,
        claims,
        slot,
        resume,
    } = accepted;
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    match HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        Ok(v) => headers.insert(header::SEC_WEBSOCKET_ACCEPT, v),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot derive accept key",
            );
        }
    };
    if echo_protocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(encoding.subprotocol()),
        );
    }
    node.metrics.attempt(Attempt::Ok);
    node.metrics.handshake(started.elapsed().as_secs_f64());
    // Take the upgrade out of the request and drop the request now. This task
    // only waits for hyper to hand over the socket, then starts the connection's
    // own task and ends: the connection carries nothing of the handshake.
    let mut req = req;
    let on_upgrade = hyper::upgrade::on(&mut req);
    drop(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => connection(upgraded, node, slot, claims, encoding, resume),
            Err(e) => tracing::debug!(error = %e, "upgrade failed after 101"),
        }
    });
    resp
}

/// Starts the connection's task: one task per connection for its whole life, whose
/// state is the socket loop's future itself (see `socket::run` on its size).
fn connection(
    upgraded: hyper::upgrade::Upgraded,
    node: Arc<Node>,
    slot: Slot,
    claims: Claims,
    encoding: Encoding,
    resume: Option<Since>,
) {
    // Back to the plain TCP stream: hyper's upgraded wrapper boxes the stream
    // behind a trait object with a rewind buffer, which every connection would
    // carry. Bytes the client sent right behind its request are handed over.
    let parts = match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
        Ok(parts) => parts,
        Err(_) => {
            tracing::error!("upgraded connection is not a TCP stream");
            return;
        }
    };
    // Shared with the hub, which writes to it directly while the connection is idle.
    let outbox = Arc::new(crate::hub::outbox::Outbox::new(
        node.config.conn.outbound_queue,
        Some(parts.io.into_inner()),
    ));
    let Some(stream) = crate::conn::shared_socket::SharedSocket::new(outbox.clone()) else {
        return;
    };
    // Both constructors only wrap the stream and never wait, so they complete on
    // the first poll.
    let ws = if parts.read_buf.is_empty() {
        WebSocketStream::from_raw_socket(stream, Role::Server, Some(node.ws_config)).now_or_never()
    } else {
        WebSocketStream::from_partially_read(
            stream,
            parts.read_buf.to_vec(),
            Role::Server,
            Some(node.ws_config),
        )
        .now_or_never()
    };
    let Some(ws) = ws else {
        tracing::error!("websocket setup did not complete at once");
        return;
    };
    node.metrics.connection_opened();
    let session = Session::open(node.clone(), slot, claims, encoding, outbox);
    tokio::spawn(crate::conn::socket::run(ws, session, resume));
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins() {
        let allowed = vec![
            "https://app.example.com".to_string(),
            "https://*.example.org".to_string(),
        ];
        assert!(origin_allowed(&allowed, "https://app.example.com"));
        assert!(!origin_allowed(&allowed, "http://app.example.com"));
        assert!(origin_allowed(&allowed, "https://a.b.example.org"));
        assert!(!origin_allowed(&allowed, "https://example.org"));
        assert!(!origin_allowed(&allowed, "https://evil-example.org"));
        assert!(!origin_allowed(&allowed, "https://evil.com"));
    }
}
