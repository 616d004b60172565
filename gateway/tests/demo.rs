//! Demo mode end to end: the embedded app is served, `/demo/token` mints working
//! tokens for demo users only, chat rooms keep history, and nothing of it exists
//! without `--demo`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::{Client, Gateway};

async fn demo_token(gw: &Gateway, body: &str) -> (u16, Value) {
    let (status, body) = gw
        .http(
            "POST",
            "/demo/token",
            &[("Content-Type", "application/json")],
            body,
        )
        .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn demo_mode_serves_the_app_and_mints_demo_tokens() {
    let gw = Gateway::builder().args(&["--demo"]).start().await;

    let (status, _) = gw.http("GET", "/", &[], "").await;
    assert_eq!(status, 302, "/ redirects to the demo");
    let (status, html) = gw.http("GET", "/demo/", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("<html") || html.contains("<!doctype"),
        "{html}"
    );
    assert!(html.contains("app.js"), "the page loads the bundle: {html}");
    let (status, js) = gw.http("GET", "/demo/app.js", &[], "").await;
    assert_eq!(status, 200);
    assert!(js.len() > 1000, "bundle is {} bytes", js.len());
    let (status, _) = gw.http("GET", "/demo/nope.js", &[], "").await;
    assert_eq!(status, 404);

    for bad in [
        r#"{"user":""}"#,
        r#"{"user":"a b"}"#,
        r#"{"user":"$user"}"#,
        r#"{"user":"alice","admin":true}"#,
        "not json",
    ] {
        let (status, body) = demo_token(&gw, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request");
    }
    let (status, _) = gw.http("GET", "/demo/token", &[], "").await;
    assert_eq!(status, 405);

    let (status, body) = demo_token(&gw, r#"{"user":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"], "alice");
    assert_eq!(body["expires_in"], 900);
    let alice_token = body["token"].as_str().unwrap().to_owned();
    let (_, body) = demo_token(&gw, r#"{"user":"bob"}"#).await;
    let bob_token = body["token"].as_str().unwrap().to_owned();

    let mut alice = Client::connect(&gw, &alice_token).await;
    let mut bob = Client::connect(&gw, &bob_token).await;
    assert!(alice.subscribe("room:lobby").await.ok);
    assert!(bob.subscribe("room:lobby").await.ok);
    assert!(bob.subscribe("typing:lobby").await.ok);
    // Demo rights stop at rooms and typing events.
    assert!(!alice.subscribe("news").await.ok);

    assert!(alice.publish("typing:lobby", "typing", json!({})).await.ok);
    let m = bob.message().await;
    assert_eq!(m.channel, "typing:lobby");
    assert!(m.offset.unwrap_or(0) == 0, "typing events keep no history");

    assert!(
        alice
            .publish("room:lobby", "chat", json!({"text": "hi"}))
            .await
            .ok
    );
    let m = bob.message().await;
    assert_eq!(m.channel, "room:lobby");
    assert!(m.offset.unwrap_or(0) > 0, "rooms keep history in demo mode");
}

#[tokio::test]
async fn without_demo_mode_there_is_no_demo() {
    let gw = Gateway::start().await;
    let (status, _) = gw.http("GET", "/demo/", &[], "").await;
    assert_eq!(status, 404);
    let (status, _) = demo_token(&gw, r#"{"user":"alice"}"#).await;
    assert_eq!(status, 404);
    let (status, _) = gw.http("GET", "/", &[], "").await;
    assert_eq!(status, 404);
}
