//! Test harness shared by the Tidings crates: real gateway processes with the test
//! defaults ([`TestGateway`]), real `redis-server` processes on free ports (single
//! servers, several independent ones, or a Redis Cluster) and TCP proxies that
//! inject faults: connections that silently stop forwarding, added delay, freezes
//! and cuts. Tests never use a server on 6379.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod cluster;
mod fault;
pub mod gateway;
mod hold;
mod proxy;

pub use cluster::RedisCluster;
pub use fault::FaultProxy;
pub use gateway::{GatewayBuilder, TestGateway};
pub use hold::HoldProxy;
pub use proxy::FreezeProxy;

/// How long a harness operation may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// A `redis-server` started for one test on a free port; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// How a port is picked (cluster nodes also need `port + 10000` for their bus).
    pick_port: fn() -> u16,
    args: Vec<String>,
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
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(Instant::now().elapsed().as_nanos() as u64);
        let port = 12_000 + (h.finish() % 10_000) as u16;
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

impl RedisServer {
    /// Starts a server that keeps nothing on disk.
    pub async fn start() -> RedisServer {
        Self::start_with(&["--save", "", "--appendonly", "no"]).await
    }

    /// Starts a server with extra arguments (e.g. `--appendonly yes`).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        Self::start_picking(extra, free_port).await
    }

    /// Starts a Redis Cluster node (`extra` holds the cluster settings) on a port
    /// whose cluster bus port (`port + 10000`) is usable too.
    pub async fn start_cluster_node(extra: &[&str]) -> RedisServer {
        Self::start_picking(extra, free_cluster_port).await
    }

    async fn start_picking(extra: &[&str], pick_port: fn() -> u16) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "tidings-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port: 0,
            pick_port,
            args: extra.iter().map(|s| s.to_string()).collect(),
            dir,
        };
        for _ in 0..5 {
            server.port = (server.pick_port)();
            if server.spawn().await {
                return server;
            }
        }
        panic!("could not start redis-server (is it installed?)");
    }

    async fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir.to_str().unwrap(),
            ])
            .args(["--protected-mode", "no"])
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

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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
        let client = redis::Client::open(self.url())?;
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
