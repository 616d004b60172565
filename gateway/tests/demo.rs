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
    // Demo users are never real users: their subject carries a visible prefix.
    assert_eq!(body["user"], "demo-alice");
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
    // `/` says where things are instead.
    let (status, body) = gw.http("GET", "/", &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("--demo"), "{body}");
}

/// Demo mode used to sign tokens with the production secret for any name, so a demo
/// token for "alice" was alice's token on every node sharing the secret.
#[tokio::test]
async fn demo_tokens_cannot_pass_for_real_users() {
    let demo = Gateway::builder().args(&["--demo"]).start().await;
    let plain = Gateway::start().await;
    let (status, body) = demo_token(&demo, r#"{"user":"alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    // Another node with the same secret, not in demo mode, refuses it.
    let refused = Client::connect_with(&plain, support::Connect::new(&token))
        .await
        .err()
        .expect("a demo token on a node without demo mode");
    assert_eq!(refused.status, 401);
    // On the demo node it is demo-alice, who does not get alice's notifications.
    let mut c = Client::connect(&demo, &token).await;
    assert_eq!(c.welcome.user, "demo-alice");
    let (status, _) = demo
        .publish(json!({"user": "alice", "payload": "private"}))
        .await;
    assert_eq!(status, 200);
    c.no_message_within(std::time::Duration::from_millis(300))
        .await;
}

/// Demo mode refuses to hand out tokens beyond loopback or next to Redis unless told.
#[tokio::test]
async fn demo_mode_stays_on_loopback_unless_told() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--jwt-secret", support::SECRET, "--demo"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--listen", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--demo-unsafe"));
    let out = run(&[
        "--listen",
        "127.0.0.1:0",
        "--redis-url",
        "redis://127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--demo-unsafe"));
    // Told: it starts.
    let gw = Gateway::builder()
        .args(&["--demo", "--demo-unsafe", "--listen", "0.0.0.0:0"])
        .start()
        .await;
    let (status, _) = demo_token(&gw, r#"{"user":"bob"}"#).await;
    assert_eq!(status, 200);
}
