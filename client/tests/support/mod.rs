//! Real gateway processes for the client's integration tests ([`testkit::TestGateway`]
//! with a shorter drain: port 0 or a given port, addresses read from the JSON
//! `listening` log line, killed on drop), tokens minted with `jsonwebtoken`, and
//! waiting for the client's events.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use client::{Event, Events};

pub use testkit::gateway::{API_KEY, SECRET, gateway_bin, http_request};
pub use testkit::{GatewayBuilder, TestGateway as Gateway, WAIT, free_port};

/// A gateway for the client's tests: the testkit defaults with a shorter drain.
pub fn gateway() -> GatewayBuilder {
    Gateway::builder().drain_period("200ms")
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Mints an HS256 token with the test secret; `ttl_secs` may be negative (expired).
pub fn token(sub: &str, subscribe: &[&str], publish: &[&str], ttl_secs: i64) -> String {
    let claims = serde_json::json!({
        "sub": sub,
        "exp": now_secs() + ttl_secs,
        "subscribe": subscribe,
        "publish": publish,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Like [`token`], with the public `info` claim presence shows (a day long).
pub fn token_with_info(sub: &str, subscribe: &[&str], info: serde_json::Value) -> String {
    let claims = serde_json::json!({
        "sub": sub,
        "exp": now_secs() + 86_400,
        "subscribe": subscribe,
        "info": info,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// The next event, or a failure after [`WAIT`].
pub async fn next(events: &mut Events) -> Event {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("no event in time")
        .expect("event stream ended")
}

/// Skips events until one matches `pred`.
pub async fn until(events: &mut Events, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let e = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|| panic!("event stream ended while waiting for {what}"));
        if pred(&e) {
            return e;
        }
    }
}

pub async fn connected(events: &mut Events) -> (String, String) {
    match until(events, "Connected", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await
    {
        Event::Connected { node, url, .. } => (node, url),
        _ => unreachable!(),
    }
}

/// The payload field `n` of the next message on `channel`.
pub async fn next_n(events: &mut Events, channel: &str) -> u64 {
    match until(
        events,
        "a message",
        |e| matches!(e, Event::Message { channel: c, .. } if c == channel),
    )
    .await
    {
        Event::Message { payload, .. } => payload.parse::<serde_json::Value>().unwrap()["n"]
            .as_u64()
            .unwrap(),
        _ => unreachable!(),
    }
}
