//! Real gateway processes for tests and for loadtest, all started through one
//! builder: [`TestGateway::builder`] holds the test defaults (each declared once,
//! below), a test changes what it needs, and [`GatewayBuilder::start`] runs the
//! binary and reads its bound addresses from the JSON `"listening"` log line.
//!
//! ```no_run
//! # async fn f(redis: &testkit::RedisServer) {
//! use testkit::TestGateway;
//! let gw = TestGateway::builder()
//!     .redis(redis, "node0")
//!     .args(&["--heartbeat-interval", "100ms"])
//!     .start()
//!     .await;
//! let (status, _receipt) = gw.publish(serde_json::json!({"user": "alice"})).await;
//! # }
//! ```

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{RedisCluster, RedisServer, WAIT};

/// The JWT secret test gateways verify tokens with.
pub const SECRET: &str = "test-secret-0123456789";
/// The API key test gateways accept.
pub const API_KEY: &str = "test-api-key-0123456789";

/// The defaults of every gateway the harness starts, as `(flag, value)`: the test
/// credentials, a node name, port 0 on loopback for both listeners and the JSON
/// log that the `listening` line is read from.
const DEFAULTS: &[(&str, &str)] = &[
    ("--jwt-secret", SECRET),
    ("--api-keys", API_KEY),
    ("--listen", "127.0.0.1:0"),
    ("--admin-listen", "127.0.0.1:0"),
    ("--log-format", "json"),
    ("--log", "info"),
    ("--node-id", "test-node"),
];

/// Short timings for tests (left out by [`GatewayBuilder::gateway_timings`]): no
/// leeway on token expiry, a short drain.
const TEST_TIMINGS: &[(&str, &str)] = &[("--jwt-leeway", "0s"), ("--drain-period", "1s")];

/// Short Redis timings for tests, added with the test timings when the gateway has
/// a `--redis-url`: quick unsubscribes, probes and reconnects.
const REDIS_TEST_TIMINGS: &[(&str, &str)] = &[
    ("--redis-unsubscribe-delay", "100ms"),
    ("--redis-probe-interval", "500ms"),
    ("--redis-reconnect-max", "500ms"),
];

/// How long a gateway may take to log its `listening` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How to start a gateway process: the binary, its settings and what to do with its
/// log. Reusable: every [`start`](Self::start) runs a new process with the same
/// settings (e.g. to restart a node on the same ports).
#[derive(Clone, Debug)]
pub struct GatewayBuilder {
    bin: Option<PathBuf>,
    wrapper: Option<(String, Vec<String>)>,
    /// Settings over the defaults, in the order given; `None` leaves the flag out.
    settings: Vec<(String, Option<String>)>,
    test_timings: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_file: Option<PathBuf>,
    log_tail: Option<usize>,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        GatewayBuilder {
            bin: None,
            wrapper: None,
            settings: Vec::new(),
            test_timings: true,
            args: Vec::new(),
            env: Vec::new(),
            log_file: None,
            log_tail: None,
        }
    }
}

impl GatewayBuilder {
    /// Runs this binary (by default [`gateway_bin`]: `TIDINGS_GATEWAY_BIN`, or the
    /// `gateway` next to the running test binary).
    pub fn bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = Some(path.into());
        self
    }

    /// Runs the gateway through `program`: `program <args> <gateway binary>
    /// <gateway arguments>`, e.g. `bash -c 'ulimit -n 320 && exec "$0" "$@"'`.
    pub fn wrapped_in<S: AsRef<str>>(
        mut self,
        program: &str,
        args: impl IntoIterator<Item = S>,
    ) -> Self {
        let args = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self.wrapper = Some((program.to_owned(), args));
        self
    }

    /// Sets a flag's value, replacing its default or an earlier setting.
    pub fn set(mut self, flag: &str, value: impl Into<String>) -> Self {
        self.put(flag, Some(value.into()));
        self
    }

    /// Leaves a flag out (a default included), e.g. `--api-keys` for a gateway
    /// without an HTTP API.
    pub fn unset(mut self, flag: &str) -> Self {
        self.put(flag, None);
        self
    }

    fn put(&mut self, flag: &str, value: Option<String>) {
        match self.settings.iter_mut().find(|(f, _)| f == flag) {
            Some(slot) => slot.1 = value,
            None => self.settings.push((flag.to_owned(), value)),
        }
    }

    pub fn jwt_secret(self, secret: &str) -> Self {
        self.set("--jwt-secret", secret)
    }

    pub fn api_keys(self, keys: &str) -> Self {
        self.set("--api-keys", keys)
    }

    pub fn node(self, id: &str) -> Self {
        self.set("--node-id", id)
    }

    pub fn listen(self, addr: &str) -> Self {
        self.set("--listen", addr)
    }

    pub fn admin_listen(self, addr: &str) -> Self {
        self.set("--admin-listen", addr)
    }

    /// Listens on a fixed loopback port (to restart a node "in place").
    pub fn port(self, port: u16) -> Self {
        self.listen(&format!("127.0.0.1:{port}"))
    }

    pub fn drain_period(self, period: &str) -> Self {
        self.set("--drain-period", period)
    }

    /// Leaves out the short test timings (JWT leeway, drain period, Redis delays):
    /// the gateway runs with its own defaults, as loadtest measures it.
    pub fn gateway_timings(mut self) -> Self {
        self.test_timings = false;
        self
    }

    /// Attaches the gateway, named `node`, to Redis at `url` (with the short
    /// Redis test timings).
    pub fn redis_url(self, url: &str, node: &str) -> Self {
        self.set("--redis-url", url).node(node)
    }

    /// Attaches the gateway, named `node`, to a test Redis.
    pub fn redis(self, redis: &RedisServer, node: &str) -> Self {
        self.redis_url(&redis.url(), node)
    }

    /// Attaches the gateway to several independent Redis instances (sharded mode).
    pub fn redis_sharded(self, shards: &[RedisServer], node: &str) -> Self {
        let urls: Vec<String> = shards.iter().map(RedisServer::url).collect();
        self.redis_url(&urls.join(","), node)
            .set("--redis-mode", "sharded")
    }

    /// Attaches the gateway to a Redis Cluster (its seed nodes) with `partitions`.
    pub fn redis_cluster(self, cluster: &RedisCluster, partitions: usize, node: &str) -> Self {
        self.redis_url(&cluster.urls().join(","), node)
            .set("--redis-mode", "cluster")
            .set("--redis-cluster-partitions", partitions.to_string())
    }

    /// Adds one command-line argument, after the settings (the gateway takes the
    /// last value of a repeated flag, so it wins over a default).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds command-line arguments, as [`arg`](Self::arg).
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable (the test's own `TIDINGS_*` variables are
    /// never passed on).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Also writes every log line to `path` (created or truncated at each start).
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// Keeps only the last `lines` log lines in memory (all of them by default).
    pub fn log_tail(mut self, lines: usize) -> Self {
        self.log_tail = Some(lines);
        self
    }

    /// The gateway's command-line arguments: the defaults with the settings over
    /// them, the other settings, the timings (the test timings unless set otherwise
    /// or left out with [`gateway_timings`](Self::gateway_timings)), then the extra
    /// arguments.
    pub fn command_line(&self) -> Vec<String> {
        let timings = || TEST_TIMINGS.iter().chain(REDIS_TEST_TIMINGS);
        let set = |flag: &str| self.settings.iter().find(|(f, _)| f == flag);
        let mut out = Vec::new();
        let mut push = |flag: &str, value: Option<&str>| {
            if let Some(v) = value {
                out.extend([flag.to_owned(), v.to_owned()]);
            }
        };
        for (flag, default) in DEFAULTS {
            push(
                flag,
                set(flag).map_or(Some(*default), |(_, v)| v.as_deref()),
            );
        }
        for (flag, value) in &self.settings {
            if !DEFAULTS.iter().chain(timings()).any(|(f, _)| f == flag) {
                push(flag, value.as_deref());
            }
        }
        let redis = set("--redis-url").is_some_and(|(_, v)| v.is_some());
        for (flag, default) in timings() {
            let applies =
                self.test_timings && (redis || TEST_TIMINGS.iter().any(|(f, _)| f == flag));
            match set(flag) {
                Some((_, v)) => push(flag, v.as_deref()),
                None if applies => push(flag, Some(default)),
                None => {}
            }
        }
        out.extend(self.args.iter().cloned());
        out
    }

    /// The API key [`TestGateway::publish`] uses: the first of the `--api-keys`
    /// setting.
    fn api_key(&self) -> Option<String> {
        let keys = match self.settings.iter().find(|(f, _)| f == "--api-keys") {
            Some((_, v)) => v.clone()?,
            None => API_KEY.to_owned(),
        };
        keys.split(',').next().map(|k| k.trim().to_owned())
    }

    /// Starts the gateway and waits for its `listening` line; panics with its logs
    /// if it does not start.
    pub async fn start(&self) -> TestGateway {
        self.try_start().await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the gateway and waits for its `listening` line.
    pub async fn try_start(&self) -> Result<TestGateway, StartError> {
        let fail = |reason: String, logs: String| StartError { reason, logs };
        let bin = match &self.bin {
            Some(b) => b.clone(),
            None => default_bin().map_err(|e| fail(e, String::new()))?,
        };
        let mut cmd = match &self.wrapper {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        without_tidings_env(&mut cmd);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(self.command_line())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut file =
            match &self.log_file {
                Some(p) => Some(std::fs::File::create(p).map_err(|e| {
                    fail(format!("cannot create {}: {e}", p.display()), String::new())
                })?),
                None => None,
            };
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", bin.display()), String::new()))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail("no stderr pipe".into(), String::new()));
        };
        let logs = Logs {
            lines: Arc::new(Mutex::new(VecDeque::new())),
            cap: self.log_tail,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        // Reads the log for the process' whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.is_some()
                    && let Some(addrs) = listening(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addrs);
                }
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                sink.push(line);
            }
        });
        let got = tokio::task::spawn_blocking(move || rx.recv_timeout(START_TIMEOUT))
            .await
            .map_err(|e| fail(format!("log reader: {e}"), String::new()))?;
        match got {
            Ok((addr, admin)) => Ok(TestGateway {
                child,
                addr,
                admin,
                logs,
                api_key: self.api_key(),
            }),
            Err(e) => {
                let reason = match (e, child.try_wait()) {
                    (_, Ok(Some(status))) => format!("it exited with {status}"),
                    (std::sync::mpsc::RecvTimeoutError::Timeout, _) => {
                        format!("no `listening` line within {START_TIMEOUT:?}")
                    }
                    _ => "its log ended without a `listening` line".into(),
                };
                let _ = child.kill();
                let _ = child.wait();
                Err(fail(reason, logs.text()))
            }
        }
    }
}

/// The public and admin addresses of a JSON `listening` log line.
fn listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = if v["message"] == "listening" {
        &v
    } else if v["fields"]["message"] == "listening" {
        &v["fields"]
    } else {
        return None;
    };
    let addr = |k: &str| fields[k].as_str()?.parse().ok();
    Some((addr("addr")?, addr("admin_addr")?))
}

/// A gateway that did not start: why, and what it logged.
#[derive(Debug)]
pub struct StartError {
    pub reason: String,
    pub logs: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gateway did not start: {}; logs:\n{}",
            self.reason, self.logs
        )
    }
}

impl std::error::Error for StartError {}

/// The log lines read so far (the last `cap` of them when capped).
#[derive(Clone)]
struct Logs {
    lines: Arc<Mutex<VecDeque<String>>>,
    cap: Option<usize>,
}

impl Logs {
    fn push(&self, line: String) {
        let mut l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cap) = self.cap {
            while l.len() >= cap.max(1) {
                l.pop_front();
            }
        }
        l.push_back(line);
    }

    fn text(&self) -> String {
        let l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        l.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }
}

/// A started gateway process: its addresses and log; killed on drop.
pub struct TestGateway {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    logs: Logs,
    api_key: Option<String>,
}

impl TestGateway {
    /// A builder with the test defaults.
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// A gateway with the test defaults.
    pub async fn start() -> TestGateway {
        Self::builder().start().await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every log line so far (the last ones with [`GatewayBuilder::log_tail`]).
    pub fn logs(&self) -> String {
        self.logs.text()
    }

    /// Sends a Unix signal ("TERM", "INT", "KILL", "STOP", "CONT", ...) with `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {} failed", self.child.id());
    }

    /// SIGTERM: the gateway drains and exits.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// SIGKILL, and waits for the process to go.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the process (SIGSTOP) and waits until the kernel reports it stopped,
    /// so that nothing sent afterwards is answered.
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

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().is_ok_and(|s| s.is_none())
    }

    /// Waits up to `within` for the process to exit.
    pub async fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the process to exit; panics after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match self.exit_within(within).await {
            Some(s) => s,
            None => panic!("gateway did not exit within {within:?}"),
        }
    }

    /// `GET /metrics` on the admin listener.
    pub async fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics").await;
        assert_eq!(status, 200);
        body
    }

    /// The value of one sample, e.g. `tidings_connections` or
    /// `tidings_closes_total{code="4002"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.metrics().await, sample)
    }

    /// Polls a metric until `pred` holds (or fails after [`WAIT`]).
    pub async fn wait_metric(&self, sample: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let v = self.metric(sample).await;
            if pred(v) {
                return v;
            }
            assert!(Instant::now() < deadline, "metric {sample} stuck at {v}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A request on the public listener.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        http_request(self.addr, method, path, headers, body).await
    }

    /// A GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_request(self.admin, "GET", path, &[], "").await
    }

    /// A POST of a raw JSON `body` to an API `path` with the gateway's API key.
    pub async fn post_api(&self, path: &str, body: &str) -> (u16, String) {
        let key = self.api_key.as_deref().unwrap_or_default();
        let auth = format!("Bearer {key}");
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        self.http("POST", path, &headers, body).await
    }

    /// `POST /api/v1/publish` with the gateway's API key; the status and the JSON
    /// body (`null` when it is not JSON).
    pub async fn publish(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let (s, b) = self.post_api("/api/v1/publish", &body.to_string()).await;
        (
            s,
            serde_json::from_str(&b).unwrap_or(serde_json::Value::Null),
        )
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of one sample in a Prometheus text exposition; 0 when absent.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A minimal HTTP/1.1 request with `Connection: close`; returns status and body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let text = http_exchange(addr, method, path, headers, body).await;
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

/// The same request as [`http_request`]; returns the whole response as text (status
/// line, headers and body).
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
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
    String::from_utf8_lossy(&buf).into_owned()
}

/// A command for the gateway binary ([`gateway_bin`]) without any `TIDINGS_*`
/// variable of the test's environment, for runs that are not started through the
/// builder (e.g. a setting the gateway must refuse).
pub fn command() -> Command {
    let mut cmd = Command::new(gateway_bin());
    without_tidings_env(&mut cmd);
    cmd
}

/// Keeps the test's own `TIDINGS_*` variables from configuring the gateway.
fn without_tidings_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("TIDINGS_") {
            cmd.env_remove(k);
        }
    }
}

/// The gateway binary for tests: `TIDINGS_GATEWAY_BIN` (to run them against another
/// build, e.g. a release binary or an older one), or `<target>/<profile>/gateway`
/// next to the running test binary, which cargo builds for the gateway's own tests
/// (it is their `CARGO_BIN_EXE_gateway`) and `cargo test --workspace` for the rest.
pub fn gateway_bin() -> PathBuf {
    default_bin().unwrap_or_else(|e| panic!("{e}"))
}

fn default_bin() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("TIDINGS_GATEWAY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("test binary outside <target>/<profile>/deps")?;
    let bin = profile_dir.join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        return Err(format!(
            "gateway binary not found at {}: build it first (`cargo build -p gateway`, or \
             run `cargo test --workspace`, which builds it), or set TIDINGS_GATEWAY_BIN",
            bin.display()
        ));
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(b: GatewayBuilder) -> String {
        b.command_line().join(" ")
    }

    #[test]
    fn defaults_settings_and_timings() {
        assert_eq!(
            line(TestGateway::builder()),
            "--jwt-secret test-secret-0123456789 --api-keys test-api-key-0123456789 \
             --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-format json --log info \
             --node-id test-node --jwt-leeway 0s --drain-period 1s"
        );
        assert_eq!(
            line(
                TestGateway::builder()
                    .unset("--api-keys")
                    .redis_url("redis://r", "n1")
                    .drain_period("200ms")
                    .args(&["--demo"])
            ),
            "--jwt-secret test-secret-0123456789 --listen 127.0.0.1:0 --admin-listen \
             127.0.0.1:0 --log-format json --log info --node-id n1 --redis-url redis://r \
             --jwt-leeway 0s --drain-period 200ms --redis-unsubscribe-delay 100ms \
             --redis-probe-interval 500ms --redis-reconnect-max 500ms --demo"
        );
        assert_eq!(
            line(
                TestGateway::builder()
                    .gateway_timings()
                    .set("--redis-url", "redis://r")
                    .set("--redis-probe-interval", "1s")
            ),
            "--jwt-secret test-secret-0123456789 --api-keys test-api-key-0123456789 \
             --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --log-format json --log info \
             --node-id test-node --redis-url redis://r --redis-probe-interval 1s"
        );
    }

    #[test]
    fn the_listening_line_gives_both_addresses() {
        let l = r#"{"message":"listening","addr":"127.0.0.1:5","admin_addr":"127.0.0.1:6"}"#;
        let (a, b) = listening(l).unwrap();
        assert_eq!((a.port(), b.port()), (5, 6));
        let nested =
            r#"{"fields":{"message":"listening","addr":"127.0.0.1:5","admin_addr":"[::1]:6"}}"#;
        assert!(listening(nested).is_some());
        assert!(listening(r#"{"message":"started"}"#).is_none());
        assert!(listening("not json").is_none());
    }
}
