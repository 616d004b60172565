//! Starting and stopping the binary as a user meets it: one clean line for a bad
//! setting, a second Ctrl-C that does not wait for the drain, a connection limit
//! that fits the open-file limit, the demo's address in the log, and a `/` that
//! says where to go.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Client, Gateway, token};

#[test]
fn a_bad_setting_is_one_line_and_exit_code_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--jwt-secret", "short"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err, "error: invalid setting `jwt-secret`: must be at least 16 bytes\n",
        "one line, no backtrace"
    );
}

#[tokio::test]
async fn a_second_interrupt_exits_without_waiting_for_the_drain() {
    let mut gw = Gateway::builder()
        .args(&["--drain-period", "30s"])
        .start()
        .await;
    // A connection that the drain would take its time to close.
    let _c = Client::connect(&gw, &token("waiting", &[], &[], 60)).await;
    gw.signal("INT");
    gw.wait_metric("tidings_draining", |v| v == 1.0).await;
    gw.signal("INT");
    let status = gw.wait_exit(Duration::from_secs(2)).await;
    assert_eq!(status.code(), Some(130));
}

#[tokio::test]
async fn max_connections_is_lowered_to_fit_the_open_file_limit() {
    // 320 open files leave 64: 8 for pending connections, 56 for clients.
    let gw = Gateway::builder()
        .wrapped_in("bash", ["-c", r#"ulimit -n 320 && exec "$0" "$@""#])
        .start()
        .await;
    support::eventually("a warning names the open-file limit", || async {
        gw.logs().contains("open-file limit")
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..56 {
        clients.push(Client::connect(&gw, &token(&format!("u{i}"), &[], &[], 60)).await);
    }
    let refused =
        Client::connect_with(&gw, support::Connect::new(&token("one-more", &[], &[], 60)))
            .await
            .err()
            .expect("the 57th connection is refused");
    assert_eq!(refused.status, 429);
}

#[tokio::test]
async fn the_demo_address_is_logged_and_root_points_to_ws() {
    let demo = Gateway::builder().args(&["--demo"]).start().await;
    let url = format!("http://{}/demo/", demo.addr);
    support::eventually("the log names the demo's address", || async {
        demo.logs().contains(&url)
    })
    .await;
    let plain = Gateway::start().await;
    let (status, body) = plain.http("GET", "/", &[], "").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["websocket"], "/ws");
    assert!(v["demo"].as_str().unwrap().contains("--demo"));
}
