//! Demo mode (`--demo`, off by default): serves the demo app embedded at build time
//! from `gateway/demo/` and mints short-lived tokens for demo users, so the gateway
//! can be tried in a browser without a backend. Anyone who can reach the port can get
//! a token for any demo user name, so demo tokens are kept apart from real ones: they
//! are signed with a key of their own (derived from the secret, not the secret) and
//! name `demo-<name>`, never a real user; and demo mode refuses to start next to a
//! Redis broker or on a non-loopback address unless `--demo-unsafe` says so.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use crate::http::{Body, error, json, text};
use crate::node::Node;

include!(concat!(env!("OUT_DIR"), "/demo_assets.rs"));

/// How long a demo token lives; the demo client refreshes it before then.
pub const TOKEN_TTL_SECS: u64 = 900;

/// Channels demo users may subscribe and publish to (chat rooms and typing events,
/// and collaborative documents: operations, snapshots and cursors).
pub fn rights() -> Vec<String> {
    ["room:*", "typing:*", "doc:*", "snap:*", "cursor:*"]
        .map(str::to_owned)
        .to_vec()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    token: String,
    user: &'a str,
    expires_in: u64,
}

fn valid_user(u: &str) -> bool {
    (1..=32).contains(&u.len())
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn asset(name: &str) -> Response<Body> {
    let Some((_, bytes)) = ASSETS.iter().find(|(n, _)| *n == name) else {
        return if ASSETS.is_empty() {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "the demo app was not built into this binary (npm run build:demo in client-js)",
            )
        } else {
            error(StatusCode::NOT_FOUND, "not_found", "no such demo file")
        };
    };
    let mut r = text(StatusCode::OK, content_type(name), *bytes);
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

async fn mint(req: Request<Incoming>, node: &Node) -> Response<Body> {
    let Some(secret) = node.config.auth.jwt.secret.as_deref() else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "demo tokens need --jwt-secret",
        );
    };
    let body =
        match crate::http::read_body(req, 1024, node.config.listeners.handshake_timeout).await {
            Ok(b) => b,
            Err(answer) if answer.status() == StatusCode::REQUEST_TIMEOUT => return *answer,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "body must be JSON of at most 1024 bytes",
                );
            }
        };
    let r: TokenRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("expected {{\"user\":\"name\"}}: {e}"),
            );
        }
    };
    if !valid_user(&r.user) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "user must be 1-32 characters of A-Z a-z 0-9 _ -",
        );
    }
    let rights = rights();
    match node
        .verifier
        .mint_demo(secret, &r.user, TOKEN_TTL_SECS, &rights)
    {
        Ok((token, sub)) => json(
            StatusCode::OK,
            &TokenResponse {
                token,
                user: &sub,
                expires_in: TOKEN_TTL_SECS,
            },
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("cannot sign token: {e}"),
        ),
    }
}

/// Serves a demo path (`/`, `/demo/...`); `None` when the path is not the demo's.
pub async fn handle(req: Request<Incoming>, node: &Arc<Node>) -> Option<Response<Body>> {
    let path = req.uri().path();
    if path == "/" || path == "/demo" {
        // Keep the query (e.g. `?user=alice`) across the redirect.
        let location = match req.uri().query() {
            Some(q) => HeaderValue::from_str(&format!("/demo/?{q}")).ok(),
            None => Some(HeaderValue::from_static("/demo/")),
        };
        let mut r = text(StatusCode::FOUND, "text/plain", "");
        if let Some(l) = location {
            r.headers_mut().insert(header::LOCATION, l);
        }
        return Some(r);
    }
    let name = path.strip_prefix("/demo/")?;
    if name == "token" {
        if req.method() != Method::POST {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            return Some(r);
        }
        return Some(mint(req, node).await);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Some(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        ));
    }
    Some(asset(if name.is_empty() { "index.html" } else { name }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_user_names() {
        assert!(valid_user("alice"));
        assert!(valid_user("a-b_9"));
        assert!(!valid_user(""));
        assert!(!valid_user("a b"));
        assert!(!valid_user("$user"));
        assert!(!valid_user(&"x".repeat(33)));
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("x"), "application/octet-stream");
    }
}
