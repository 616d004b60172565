//! Interoperability: the gateway driven by a WebSocket client nobody on the team
//! wrote, Python's `websockets` package, through `tests/interop/client.py`.
//!
//! The script prints one JSON line per step; these tests feed it (publishing
//! through the HTTP API once it says `ready`) and assert on what it saw. Python 3
//! with `websockets` is required: when missing, the tests fail and say so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Gateway, token};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/client.py");
/// Bound on each step of the script (passed to it) and on each line read here.
const STEP: Duration = Duration::from_secs(10);

/// The Python that runs the script: `TIDINGS_PYTHON` (scripts/test-all sets it to the
/// project virtualenv that scripts/preflight prepares), else that virtualenv
/// (`.venv/bin/python` in the repository) when it exists, else `python3` on PATH.
fn python() -> String {
    if let Ok(p) = std::env::var("TIDINGS_PYTHON")
        && !p.is_empty()
    {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    if std::path::Path::new(venv).exists() {
        return venv.to_owned();
    }
    "python3".to_owned()
}

/// Fails the test (never skips it) when python3 or `websockets` is missing.
async fn require_python() {
    let out = Command::new(python())
        .args([
            "-c",
            "import websockets, sys; print(websockets.__version__); sys.exit(0)",
        ])
        .stdin(Stdio::null())
        .output();
    let out = match tokio::time::timeout(STEP, out).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!(
            "the interop test needs Python ({}), and running it failed: {e}. \
             Run scripts/preflight, which prepares the virtualenv .venv/.",
            python()
        ),
        Err(_) => panic!("python3 did not answer within {STEP:?}"),
    };
    assert!(
        out.status.success(),
        "the interop test needs the Python package `websockets` in {}: run \
         scripts/preflight (it installs scripts/requirements.txt into .venv/) ({})",
        python(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The running script: its JSON lines as they come, and its stderr at the end.
struct Script {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    seen: Vec<Value>,
}

impl Script {
    async fn start(url: &str, token: &str, args: &[&str]) -> Script {
        require_python().await;
        let mut child = Command::new(python())
            .arg(SCRIPT)
            .arg(url)
            .arg(token)
            .args(["--timeout", &STEP.as_secs().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} {SCRIPT}: {e}", python()));
        let stdout = child.stdout.take().unwrap();
        Script {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    async fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), e.read_to_string(&mut s)).await;
        }
        s
    }

    /// Reads lines until one with `step`, failing on an error line, EOF or timeout.
    async fn until(&mut self, step: &str) -> Value {
        loop {
            let line = match tokio::time::timeout(STEP, self.lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) => {
                    let err = self.stderr().await;
                    panic!(
                        "client.py ended before `{step}`; saw {:?}; stderr:\n{err}",
                        self.seen
                    );
                }
                Ok(Err(e)) => panic!("reading client.py output: {e}"),
                Err(_) => {
                    let _ = self.child.start_kill();
                    let err = self.stderr().await;
                    panic!(
                        "client.py printed no `{step}` within {STEP:?}; saw {:?}; stderr:\n{err}",
                        self.seen
                    );
                }
            };
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("client.py printed a non-JSON line {line:?}: {e}"));
            self.seen.push(v.clone());
            if v["step"] == "error" {
                let err = self.stderr().await;
                panic!("client.py failed: {v}; saw {:?}; stderr:\n{err}", self.seen);
            }
            if v["step"] == step {
                return v;
            }
        }
    }

    /// Waits for `done` and a zero exit status.
    async fn finish(mut self) -> Vec<Value> {
        self.until("done").await;
        let status = tokio::time::timeout(STEP, self.child.wait())
            .await
            .expect("client.py did not exit")
            .unwrap();
        assert!(status.success(), "client.py exited with {status}");
        self.seen
    }
}

fn steps<'a>(seen: &'a [Value], step: &str) -> Vec<&'a Value> {
    seen.iter().filter(|v| v["step"] == step).collect()
}

#[tokio::test]
async fn python_websockets_client_with_token_subprotocol() {
    let gw = Gateway::start().await;
    let t = token("py-user", &["news"], &["news"], 60);
    let mut py = Script::start(
        &gw.ws_url(),
        &t,
        &["--auth", "subprotocol", "--channel", "news", "--publish"],
    )
    .await;

    let w = py.until("welcome").await;
    // Exactly the encoding is echoed; the token entry never is.
    assert_eq!(w["subprotocol"], "tidings.json", "{w}");
    assert_eq!(w["user"], "py-user", "{w}");
    assert_eq!(w["channel"], "$user:py-user", "{w}");
    assert_eq!(w["node"], "test-node", "{w}");
    assert_eq!(w["has_session"], true, "{w}");
    assert_eq!(w["limits"]["max_message_bytes"], 65536, "{w}");
    let s = py.until("subscribed").await;
    assert_eq!(s["result"], json!({"channel": "news"}), "{s}");
    py.until("ready").await;

    let (status, body) = gw
        .publish(json!({
            "channel": "news",
            "event": "api.hello",
            "payload": {"text": "h\u{e9}llo", "n": [1, -2, 3.5]},
            "id": "interop-1",
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], 1, "{body}");

    let seen = py.finish().await;
    let messages = steps(&seen, "message");
    assert_eq!(messages.len(), 2, "{seen:?}");
    let api = messages[0];
    assert_eq!(api["source"], "api");
    assert_eq!(api["channel"], "news");
    assert_eq!(api["event"], "api.hello");
    assert_eq!(api["msg_id"], "interop-1");
    assert_eq!(
        api["payload"],
        json!({"text": "h\u{e9}llo", "n": [1, -2, 3.5]})
    );

    let published = steps(&seen, "published");
    assert_eq!(published.len(), 1, "{seen:?}");
    assert_eq!(published[0]["ok"], true, "{seen:?}");
    assert_eq!(published[0]["result"]["sessions"], 1, "{seen:?}");
    let own = messages[1];
    assert_eq!(own["source"], "client");
    assert_eq!(own["channel"], "news");
    assert_eq!(own["event"], "py.hello");
    assert_eq!(own["payload_roundtrip"], true, "{own}");

    let unknown = steps(&seen, "unknown_type");
    assert_eq!(unknown.len(), 1, "{seen:?}");
    assert_eq!(unknown[0]["id"], 3);
    assert_eq!(unknown[0]["ok"], false);
    assert_eq!(unknown[0]["code"], "unknown_type");

    let closed = steps(&seen, "closed");
    assert_eq!(closed.len(), 1, "{seen:?}");
    assert_eq!(closed[0]["code"], 1000, "{seen:?}");
    gw.wait_metric("tidings_connections", |v| v == 0.0).await;
}

#[tokio::test]
async fn python_websockets_client_with_bearer_header() {
    let gw = Gateway::start().await;
    let t = token("py-bearer", &["alerts"], &[], 60);
    let mut py = Script::start(
        &gw.ws_url(),
        &t,
        &["--auth", "bearer", "--channel", "alerts"],
    )
    .await;

    let w = py.until("welcome").await;
    // No subprotocol offered: none selected, JSON by default.
    assert_eq!(w["subprotocol"], Value::Null, "{w}");
    assert_eq!(w["user"], "py-bearer", "{w}");
    assert_eq!(w["channel"], "$user:py-bearer", "{w}");
    py.until("ready").await;

    // The personal channel needs no subscribe.
    let (status, body) = gw
        .publish(json!({"user": "py-bearer", "payload": [true, null]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions"], 1, "{body}");

    let seen = py.finish().await;
    let messages = steps(&seen, "message");
    assert_eq!(messages.len(), 1, "{seen:?}");
    assert_eq!(messages[0]["channel"], "$user:py-bearer");
    assert_eq!(messages[0]["event"], "message");
    assert_eq!(messages[0]["msg_id"], Value::Null);
    assert_eq!(messages[0]["payload"], json!([true, null]));
    assert!(steps(&seen, "published").is_empty());
    assert_eq!(steps(&seen, "closed")[0]["code"], 1000, "{seen:?}");
}
