//! Real gateway processes for the client's integration tests (adapted from
//! gateway/tests/support): started on port 0 (or a given port), addresses read from the
//! JSON `listening` log line, killed on drop. Tokens are minted here with
//! `jsonwebtoken`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Event, Events};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const SECRET: &str = "test-secret-0123456789";
pub const API_KEY: &str = "test-api-key-0123456789";
/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// The gateway binary next to this test's directory: tests run from
/// `<target>/<profile>/deps/`, the binary is `<target>/<profile>/gateway`.
pub fn gateway_bin() -> PathBuf {
    testkit::gateway::gateway_bin()
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A gateway process started for one test; killed on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

pub struct GatewayBuilder {
    args: Vec<String>,
}

impl GatewayBuilder {
    /// Adds command-line arguments (later ones win over the defaults).
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|s| s.to_string()));
        self
    }

    pub fn node(self, id: &str) -> Self {
        self.args(&["--node-id", id])
    }

    /// Listens on a fixed port (to restart a node "in place").
    pub fn port(self, port: u16) -> Self {
        self.args(&["--listen", &format!("127.0.0.1:{port}")])
    }

    pub async fn start(self) -> Gateway {
        let mut cmd = testkit::gateway::command(gateway_bin());
        cmd.args(&self.args);
        let testkit::gateway::Spawned {
            child,
            addr,
            admin,
            logs,
        } = testkit::gateway::spawn(cmd).await;
        Gateway {
            child,
            addr,
            admin,
            logs,
        }
    }
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            args: [
                "--jwt-secret",
                SECRET,
                "--api-keys",
                API_KEY,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--log",
                "info",
                "--jwt-leeway",
                "0s",
                "--drain-period",
                "200ms",
                "--node-id",
                "test-node",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        }
    }

    pub async fn start() -> Gateway {
        Self::builder().start().await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Sends a Unix signal ("TERM", "STOP", "CONT", ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Freezes the process (SIGSTOP) and waits until the kernel reports it stopped, so
    /// that no frame sent afterwards is answered.
    pub async fn freeze(&self) {
        self.signal("STOP");
        let stat = format!("/proc/{}/stat", self.child.id());
        let deadline = Instant::now() + WAIT;
        loop {
            let state = std::fs::read_to_string(&stat).unwrap_or_default();
            // Field 3, after the parenthesised command name.
            let stopped = state
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'));
            if stopped {
                return;
            }
            assert!(Instant::now() < deadline, "gateway did not stop: {state}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `POST /api/v1/publish` with the test API key.
    pub async fn publish(&self, body: serde_json::Value) -> (u16, String) {
        let auth = format!("Bearer {API_KEY}");
        http_request(
            self.addr,
            "POST",
            "/api/v1/publish",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &body.to_string(),
        )
        .await
    }

    pub async fn metric(&self, sample: &str) -> f64 {
        let (status, body) = http_request(self.admin, "GET", "/metrics", &[], "").await;
        assert_eq!(status, 200);
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 request with `Connection: close`; returns status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("http response timed out")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
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
