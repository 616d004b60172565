//! Test harness shared by the Tidings crates: real gateway processes with the test
//! defaults ([`TestGateway`]), real `redis-server` processes on free ports (single
//! servers, several independent ones, a Redis Cluster, a Sentinel set of primary,
//! replica and three sentinels), optionally with TLS (throwaway [`Certs`] from the
//! `openssl` CLI; TLS clusters too) or ACL users, and TCP proxies that inject
//! faults: connections that silently stop forwarding, added delay, freezes and
//! cuts. Tests never use a server on 6379. TLS and ACL servers keep a plain,
//! admin-authenticated loopback port for the harness's own commands, so the harness
//! itself needs no TLS client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod acl;
pub mod cluster;
mod fault;
pub mod gateway;
mod hold;
mod proxy;
pub mod sentinel;
mod tls;

pub use cluster::RedisCluster;
pub use fault::FaultProxy;
pub use gateway::{GatewayBuilder, TestGateway};
pub use hold::HoldProxy;
pub use proxy::FreezeProxy;
pub use sentinel::SentinelSet;
pub use tls::Certs;

/// How long a harness operation may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// A `redis-server` started for one test on a free port; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// The plain port; for TLS and ACL servers it is the harness's admin port.
    pub port: u16,
    /// The TLS port of a server started with TLS; kept across [`RedisServer::restart`].
    pub tls_port: Option<u16>,
    /// A Redis Cluster node: its ports come from [`free_cluster_port`], and its bus
    /// is pinned to `port + 10000` (`--cluster-port`), because with
    /// `tls-cluster yes` Redis would put it at `tls_port + 10000`, where a
    /// `CLUSTER MEET` on the plain port would not find it.
    cluster_node: bool,
    args: Vec<String>,
    /// User and password the harness's own connections log in with; an empty user
    /// sends `AUTH <password>` (for `requirepass`).
    login: Option<(String, String)>,
    /// ACL users as `(name, rules)`, given as `--user` lines at every start, so a
    /// restart keeps them.
    acl: Vec<(String, Vec<String>)>,
    /// A config file to start from (sentinels need one they can rewrite).
    config_file: Option<std::path::PathBuf>,
    pub dir: std::path::PathBuf,
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port for a Redis Cluster node: it and its bus port (`+ 10000`) are free, and
/// both lie below the kernel's ephemeral range (32768 and up), so outgoing
/// connections do not take them meanwhile. Redis refuses ports above 55535.
pub fn free_cluster_port() -> u16 {
    for _ in 0..1000 {
        let port = 12_000 + (random_u64() % 10_000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// A random number (std only: every `RandomState` gets fresh keys).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// A random password: 32 hex digits.
pub(crate) fn random_password() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

/// `s` percent-encoded for the user or password part of a URL.
pub(crate) fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk.
    pub async fn start() -> RedisServer {
        Self::start_with(&["--save", "", "--appendonly", "no"]).await
    }

    /// Starts a server with extra arguments (e.g. `--appendonly yes`).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        Self::new(extra, false).launch().await
    }

    /// Starts a Redis Cluster node (`extra` holds the cluster settings) on a port
    /// whose cluster bus port (`port + 10000`) is usable too.
    pub async fn start_cluster_node(extra: &[&str]) -> RedisServer {
        Self::new(extra, true).launch().await
    }

    /// A server not started yet, with its own directory; the `start_*` functions
    /// set TLS, login or config file on it, then [`RedisServer::launch`] it.
    pub(crate) fn new(extra: &[&str], cluster_node: bool) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "tidings-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        RedisServer {
            child: None,
            port: 0,
            tls_port: None,
            cluster_node,
            args: extra.iter().map(|s| s.to_string()).collect(),
            login: None,
            acl: Vec::new(),
            config_file: None,
            dir,
        }
    }

    /// Picks ports (and a TLS port if `tls_port` is set) and starts the server,
    /// with new ports if those were taken meanwhile.
    pub(crate) async fn launch(mut self) -> RedisServer {
        let pick: fn() -> u16 = if self.cluster_node {
            free_cluster_port
        } else {
            free_port
        };
        for _ in 0..5 {
            self.port = pick();
            if self.tls_port.is_some() {
                self.tls_port = Some(
                    std::iter::repeat_with(pick)
                        .find(|p| *p != self.port)
                        .unwrap(),
                );
            }
            if self.spawn().await {
                return self;
            }
            // It may still run (e.g. too slow to answer): never leave one behind.
            self.kill();
        }
        panic!("could not start redis-server (is it installed?)");
    }

    async fn spawn(&mut self) -> bool {
        let mut cmd = Command::new("redis-server");
        // A config file must be the first argument.
        if let Some(file) = &self.config_file {
            cmd.arg(file);
        }
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir.to_str().unwrap(),
        ])
        .args(["--protected-mode", "no"]);
        if let Some(tls_port) = self.tls_port {
            cmd.args(["--tls-port", &tls_port.to_string()]);
        }
        if self.cluster_node {
            cmd.args(["--cluster-port", &(self.port + 10_000).to_string()]);
        }
        for (user, rules) in &self.acl {
            // One `user` config line: the arguments up to the next `--`.
            cmd.arg("--user").arg(user).args(rules);
        }
        let child = cmd
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(500), self.try_cmd(&["PING"])).await {
                Ok(Ok(pong)) if pong == redis::Value::SimpleString("PONG".into()) => return true,
                // A server with `--requirepass` answers, but wants a password first.
                Ok(Err(e)) if e.to_string().contains("NOAUTH") => return true,
                _ => {}
            }
            if let Some(c) = self.child.as_mut()
                && c.try_wait().unwrap().is_some()
            {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Starts `n` independent servers (e.g. the shards of sharded mode).
    pub async fn start_many(n: usize) -> Vec<RedisServer> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(Self::start().await);
        }
        v
    }

    /// Whether the process was started and not killed.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The loopback address the server listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>`, without credentials.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The URL the harness's own connections use: [`RedisServer::url`] with the
    /// admin login, if the server has one.
    fn admin_url(&self) -> String {
        match &self.login {
            Some((user, password)) => self.url_as(user, password),
            None => self.url(),
        }
    }

    /// `redis://user:password@127.0.0.1:<port>` (percent-encoded); an empty user
    /// logs in with `AUTH <password>` alone.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!(
            "redis://{}:{}@127.0.0.1:{}",
            url_encode(user),
            url_encode(password),
            self.port
        )
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port with the same arguments.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn().await {
            assert!(
                Instant::now() < deadline,
                "redis did not restart on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.admin_url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await
    }

    /// Runs a command and returns its reply.
    pub async fn cmd(&self, args: &[&str]) -> redis::Value {
        tokio::time::timeout(WAIT, self.try_cmd(args))
            .await
            .expect("redis command timed out")
            .expect("redis command")
    }

    /// A section of `INFO` as text.
    pub async fn info(&self, section: &str) -> String {
        match self.cmd(&["INFO", section]).await {
            redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("unexpected INFO reply {other:?}"),
        }
    }

    /// Calls of one command so far (`INFO commandstats`; 0 if never called).
    pub async fn calls(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        self.info("commandstats")
            .await
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Commands processed so far (`INFO stats`).
    pub async fn commands_processed(&self) -> u64 {
        self.info("stats")
            .await
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `PUBSUB NUMSUB` of a client-visible channel in the default namespace.
    pub async fn numsub(&self, channel: &str) -> i64 {
        let name = protocol::keys::pubsub_channel("tidings", channel);
        match self.cmd(&["PUBSUB", "NUMSUB", &name]).await {
            redis::Value::Array(v) if v.len() == 2 => match &v[1] {
                redis::Value::Int(n) => *n,
                other => panic!("unexpected NUMSUB reply {other:?}"),
            },
            other => panic!("unexpected NUMSUB reply {other:?}"),
        }
    }

    /// Waits until `numsub(channel) == n`.
    pub async fn wait_numsub(&self, channel: &str, n: i64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let got = self.numsub(channel).await;
            if got == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "NUMSUB {channel} stuck at {got}, want {n}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every Tidings pub/sub channel Redis currently has subscribers for.
    pub async fn channels(&self) -> Vec<String> {
        match self.cmd(&["PUBSUB", "CHANNELS", "tidings:ch:*"]).await {
            redis::Value::Array(v) => v
                .into_iter()
                .map(|x| match x {
                    redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
                    other => panic!("unexpected {other:?}"),
                })
                .collect(),
            other => panic!("unexpected PUBSUB CHANNELS reply {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
