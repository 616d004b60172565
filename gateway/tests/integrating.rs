//! The examples of docs/integrating.md, run as they are against real gateways, so the
//! guide cannot rot: publishing from Node (fetch) and Python (urllib) with message ids,
//! batches and retries on 503 (Redis stopped, then started again); minting tokens with
//! jose and PyJWT; receiving with a plain `WebSocket` and with the `tidings-client`
//! package, installed from the tarball `npm pack` makes of client-js.
//!
//! Needs Node >= 20 with docs/examples' npm packages and client-js' dev packages, and
//! the project virtualenv's Python with PyJWT: scripts/preflight installs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use support::{API_KEY, Client, Gateway, SECRET, eventually, token};
use testkit::RedisServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

/// Bound on one example run, or on one line from a running example.
const STEP: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn examples() -> PathBuf {
    let dir = repo().join("docs/examples");
    assert!(
        dir.join("node_modules/jose").exists(),
        "docs/examples has no node_modules: run scripts/preflight (it runs npm ci there)"
    );
    dir
}

/// The project virtualenv's Python, as in interop.rs.
fn python() -> String {
    if let Ok(p) = std::env::var("TIDINGS_PYTHON")
        && !p.is_empty()
    {
        return p;
    }
    let venv = repo().join(".venv/bin/python");
    if venv.exists() {
        return venv.display().to_string();
    }
    "python3".to_owned()
}

/// `node`, with `--experimental-websocket` where WebSocket is not global (Node 20).
async fn node() -> Command {
    let global = Command::new("node")
        .args([
            "-e",
            "process.exit(typeof WebSocket === 'undefined' ? 1 : 0)",
        ])
        .status()
        .await
        .expect("node must be installed (Node >= 20): run scripts/preflight");
    let mut cmd = Command::new("node");
    if !global.success() {
        cmd.arg("--experimental-websocket");
    }
    cmd
}

fn http_base(gw: &Gateway) -> String {
    format!("http://{}", gw.addr)
}

/// Runs an example to its end; returns its stdout lines as JSON (or text).
async fn run(mut cmd: Command, what: &str) -> (Vec<String>, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(STEP, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP:?}"))
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout.lines().map(str::to_owned).collect(), stderr)
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

/// A running receiver example (plain WebSocket or tidings-client), read line by line.
struct Receiver {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<Value>,
}

impl Receiver {
    fn start(mut cmd: Command, url: &str, token: &str, want: usize) -> Receiver {
        let mut child = cmd
            .arg(want.to_string())
            .env("TIDINGS_WS_URL", url)
            .env("TIDINGS_TOKEN", token)
            .env("TIDINGS_TIMEOUT_MS", "25000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the receiver example");
        let stdout = child.stdout.take().unwrap();
        Receiver {
            child,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// Reads lines until one has `kind`; returns it.
    async fn until(&mut self, kind: &str) -> Value {
        loop {
            let line = tokio::time::timeout(STEP, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no `{kind}` within {STEP:?}; saw {:?}", self.seen))
                .unwrap();
            let Some(line) = line else {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut err).await;
                }
                panic!("receiver ended before `{kind}`; saw {:?}\n{err}", self.seen);
            };
            let v: Value = serde_json::from_str(&line).unwrap();
            self.seen.push(v.clone());
            if v["kind"] == kind {
                return v;
            }
        }
    }

    /// The messages it printed until it exited by itself (after its `want` messages).
    async fn finish(mut self) -> Vec<Value> {
        while let Ok(Some(line)) = tokio::time::timeout(STEP, self.lines.next_line())
            .await
            .expect("receiver did not exit")
        {
            self.seen.push(serde_json::from_str(&line).unwrap());
        }
        let status = self.child.wait().await.unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err).await;
        }
        assert!(status.success(), "receiver failed: {:?}\n{err}", self.seen);
        self.seen
            .into_iter()
            .filter(|v| v["kind"] == "message")
            .collect()
    }
}

async fn publish_node(gw: &Gateway, user: &str) -> Vec<Value> {
    let mut cmd = node().await;
    cmd.current_dir(examples())
        .arg("publish.mjs")
        .arg(user)
        .env("TIDINGS_URL", http_base(gw))
        .env("TIDINGS_API_KEY", API_KEY);
    json_lines(&run(cmd, "publish.mjs").await.0)
}

async fn publish_python(gw: &Gateway, user: &str) -> Vec<Value> {
    let mut cmd = Command::new(python());
    cmd.current_dir(examples())
        .arg("publish.py")
        .arg(user)
        .env("TIDINGS_URL", http_base(gw))
        .env("TIDINGS_API_KEY", API_KEY);
    json_lines(&run(cmd, "publish.py").await.0)
}

/// The receipts of one run of a publish example: a delivered publish, its retry
/// reported as a duplicate, and a batch with an error in the middle.
fn check_receipts(out: &[Value], reached: u64) {
    fn step<'a>(out: &'a [Value], s: &'a str) -> impl Iterator<Item = &'a Value> {
        out.iter().filter(move |v| v["step"] == s)
    }
    let publish = step(out, "publish").next().expect("publish step");
    assert_eq!(publish["receipt"]["nodes"], reached, "{out:?}");
    assert_eq!(publish["receipt"].get("duplicates"), None, "{out:?}");
    let retry = step(out, "retry").next().expect("retry step");
    assert_eq!(retry["receipt"]["duplicates"], 1, "{out:?}");
    assert_eq!(retry["receipt"]["nodes"], 0, "{out:?}");
    let batch: Vec<&Value> = step(out, "batch").collect();
    assert_eq!(batch.len(), 3, "{out:?}");
    assert_eq!(batch[0]["result"]["nodes"], reached);
    assert_eq!(batch[1]["result"]["error"], "bad_request");
    assert_eq!(batch[2]["result"]["nodes"], reached);
}

#[tokio::test]
async fn tokens_minted_with_jose_and_pyjwt_are_accepted() {
    let gw = Gateway::start().await;
    let mut cmd = node().await;
    cmd.current_dir(examples())
        .args(["mint-token.mjs", "alice"])
        .env("TIDINGS_JWT_SECRET", SECRET);
    let (out, _) = run(cmd, "mint-token.mjs").await;
    let mut py = Command::new(python());
    py.current_dir(examples())
        .args(["mint_token.py", "bob"])
        .env("TIDINGS_JWT_SECRET", SECRET);
    let (out_py, _) = run(py, "mint_token.py").await;
    for (tok, user) in [(&out[0], "alice"), (&out_py[0], "bob")] {
        let mut c = Client::connect(&gw, tok).await;
        assert_eq!(c.welcome.user, user);
        assert!(
            c.welcome.expires_at > 0,
            "the minted token has an exp: {:?}",
            c.welcome
        );
        // Its claims grant what the guide says: subscribe to news and room:*.
        assert!(c.subscribe("news").await.ok);
        assert!(c.subscribe("room:1").await.ok);
        assert!(!c.subscribe("other").await.ok);
    }
}

#[tokio::test]
async fn publish_examples_reach_a_plain_websocket_once() {
    let gw = Gateway::start().await;
    let mut cmd = node().await;
    cmd.current_dir(examples()).arg("plain-websocket.mjs");
    // 3 notifications from publish.mjs and 3 from publish.py reach carol; the retried
    // ones and the batch's bad entry do not.
    let mut rx = Receiver::start(cmd, &gw.ws_url(), &token("carol", &["news"], &[], 120), 6);
    assert_eq!(rx.until("welcome").await["user"], "carol");
    assert_eq!(rx.until("reply").await["channel"], "news");

    check_receipts(&publish_node(&gw, "carol").await, 1);
    check_receipts(&publish_python(&gw, "carol").await, 1);

    let got = rx.finish().await;
    let events: Vec<&str> = got.iter().map(|m| m["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "order.shipped",
            "badge",
            "digest",
            "invoice.paid",
            "badge",
            "digest"
        ]
    );
    let offsets: Vec<u64> = got.iter().map(|m| m["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5, 6], "personal channel offsets");
    assert!(got.iter().all(|m| m["channel"] == "$user:carol"), "{got:?}");
}

/// Runs a publish example while Redis is down; restarts Redis once the example has
/// reported its first retry. The example must then succeed.
async fn retries_until_redis_is_back(mut cmd: Command, what: &str) {
    let mut redis = RedisServer::start().await;
    let gw = Gateway::builder().redis(&redis, "retry").start().await;
    eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
    redis.kill();
    let mut child = cmd
        .env("TIDINGS_URL", http_base(&gw))
        .env("TIDINGS_API_KEY", API_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut errs = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(STEP, errs.next_line())
        .await
        .unwrap_or_else(|_| panic!("{what} reported no retry"))
        .unwrap()
        .unwrap_or_default();
    assert!(first.contains("503, retrying"), "{what}: {first}");
    redis.restart().await;
    let mut rest = String::new();
    while let Ok(Some(l)) = errs.next_line().await {
        rest.push_str(&l);
        rest.push('\n');
    }
    let status = tokio::time::timeout(STEP, child.wait())
        .await
        .expect("example did not finish")
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .await
        .unwrap();
    assert!(
        status.success(),
        "{what} gave up although Redis came back:\n{first}\n{rest}\n{out}"
    );
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    check_receipts(&json_lines(&lines), 0);
}

#[tokio::test]
async fn publish_examples_retry_503_with_the_same_id() {
    let mut cmd = node().await;
    cmd.current_dir(examples()).args(["publish.mjs", "dave"]);
    retries_until_redis_is_back(cmd, "publish.mjs").await;
    let mut py = Command::new(python());
    py.current_dir(examples()).args(["publish.py", "dave"]);
    retries_until_redis_is_back(py, "publish.py").await;
}

#[tokio::test]
async fn tidings_client_package_installs_from_npm_pack_and_connects() {
    let client_js = repo().join("client-js");
    assert!(
        client_js.join("node_modules/typescript").exists(),
        "client-js has no node_modules: run scripts/preflight"
    );
    let dir = std::env::temp_dir().join(format!("tidings-pack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("app")).unwrap();

    // `npm pack` builds dist/ (prepack) and lists what the tarball holds.
    let mut pack = Command::new("npm");
    pack.current_dir(&client_js)
        .args(["pack", "--json", "--pack-destination"])
        .arg(&dir);
    let (out, _) = run(pack, "npm pack").await;
    let text = out.join("\n");
    let listing: Value = serde_json::from_str(&text[text.find('[').unwrap()..]).unwrap();
    let files: Vec<&str> = listing[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(client_js.join("package.json")).unwrap())
            .unwrap();
    // Every export (types and code) and the main/types fields point into the tarball.
    let mut targets = vec![
        manifest["main"].as_str().unwrap().to_owned(),
        manifest["types"].as_str().unwrap().to_owned(),
    ];
    for (_, e) in manifest["exports"].as_object().unwrap() {
        for key in ["types", "import"] {
            targets.push(e[key].as_str().unwrap().to_owned());
        }
    }
    assert!(targets.len() >= 8, "{targets:?}");
    for t in &targets {
        let t = t.trim_start_matches("./");
        assert!(
            files.contains(&t),
            "package.json points to {t}, which the tarball lacks: {files:?}"
        );
    }
    assert!(
        files
            .iter()
            .all(|f| !f.starts_with("test/") && !f.starts_with("src/")),
        "{files:?}"
    );
    let tarball = dir.join(listing[0]["filename"].as_str().unwrap());

    // Install it into a fresh app, as the guide says, and run the example there.
    let app = dir.join("app");
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"app","private":true,"type":"module"}"#,
    )
    .unwrap();
    let mut install = Command::new("npm");
    install
        .current_dir(&app)
        .args(["install", "--no-audit", "--no-fund", "--prefer-offline"])
        .arg(&tarball);
    run(install, "npm install <tarball>").await;
    std::fs::copy(
        examples().join("tidings-client.mjs"),
        app.join("tidings-client.mjs"),
    )
    .unwrap();

    let gw = Gateway::start().await;
    let mut cmd = node().await;
    cmd.current_dir(&app).arg("tidings-client.mjs");
    let mut rx = Receiver::start(cmd, &gw.ws_url(), &token("erin", &["news"], &[], 120), 2);
    assert_eq!(rx.until("welcome").await["user"], "erin");
    rx.until("subscribed").await;
    for (target, event) in [
        (json!({"user": "erin"}), "to-erin"),
        (json!({"channel": "news"}), "news-item"),
    ] {
        let mut body = target;
        body["event"] = json!(event);
        body["payload"] = json!({"n": 1});
        let (status, receipt) = gw.publish(body).await;
        assert_eq!(status, 200, "{receipt}");
    }
    let got = rx.finish().await;
    let events: Vec<&str> = got.iter().map(|m| m["event"].as_str().unwrap()).collect();
    assert_eq!(events[..2], ["to-erin", "news-item"], "{got:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
