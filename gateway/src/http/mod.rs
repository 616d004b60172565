//! The HTTP side of a node: the public listener ([`server`]: WebSocket upgrades,
//! the publish [`api`], the [`demo`]), the [`admin`] listener (health, readiness,
//! metrics), and the plumbing they share: JSON error bodies and small helpers.

pub(crate) mod admin;
pub mod api;
pub(crate) mod demo;
pub(crate) mod presence;
pub(crate) mod server;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

pub type Body = Full<Bytes>;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

/// A JSON `{error, message}` response.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(&ErrorBody {
        error: code,
        message,
    })
    .unwrap_or_default();
    json_bytes(status, body)
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(b) => json_bytes(status, b),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &e.to_string(),
        ),
    }
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Whether any comma-separated element of the header values equals `token`
/// (case-insensitively), as `Connection: keep-alive, Upgrade` requires.
pub fn header_has_token(headers: &http::HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// The value after `Bearer ` in an Authorization header.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Marks a response as the connection's last (`connection: close`), e.g. when the
/// request's body was not read to its end.
pub fn closing(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    r
}

/// Reads a request body of at most `limit` bytes that must arrive within
/// `within`: the answer to send instead when it is too large, does not arrive in
/// time (the connection is then closed) or cannot be read.
pub async fn read_body(
    req: http::Request<hyper::body::Incoming>,
    limit: usize,
    within: std::time::Duration,
) -> Result<Bytes, Box<Response<Body>>> {
    use http_body_util::{BodyExt, Limited};
    let read = Limited::new(req.into_body(), limit).collect();
    let Ok(collected) = tokio::time::timeout(within, read).await else {
        return Err(Box::new(closing(error(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time",
        ))));
    };
    match collected {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Box::new(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!("body is larger than {limit} bytes"),
            )))
        }
        Err(_) => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "cannot read body",
        ))),
    }
}
