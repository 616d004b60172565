//! A Sentinel set for tests: a primary, one replica and three sentinels (quorum 2)
//! on free ports, with short timings so that a failover takes a few seconds. Every
//! process is killed (SIGKILL) on drop.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Value;

use crate::RedisServer;

/// How long an instance may stay silent before a sentinel calls it down. Short, so
/// that a failover takes ~2-4 s; sentinels ping every second (or this often if
/// less), and a loopback server answers in microseconds, so 1 s does not flap.
const DOWN_AFTER_MS: u32 = 1000;

/// A primary, its replica and three sentinels monitoring them.
pub struct SentinelSet {
    master_name: String,
    primary: RedisServer,
    replica: RedisServer,
    sentinels: Vec<RedisServer>,
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        other => panic!("expected a string, got {other:?}"),
    }
}

/// A flat `[field, value, …]` reply (RESP2 sentinel maps) or a RESP3 map.
fn fields(v: &Value) -> HashMap<String, String> {
    match v {
        Value::Array(f) => f.chunks(2).map(|p| (text(&p[0]), text(&p[1]))).collect(),
        Value::Map(m) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
        other => panic!("expected a sentinel map, got {other:?}"),
    }
}

impl SentinelSet {
    /// Starts the set without passwords and waits until it is ready
    /// ([`SentinelSet::wait_ready`]; about 2-3 s, mostly the sentinels finding
    /// each other through their 2-second hello messages).
    pub async fn start(master_name: &str) -> SentinelSet {
        Self::start_with_auth(master_name, None, None).await
    }

    /// Like [`SentinelSet::start`], with passwords: `sentinel_password` is the
    /// sentinels' `requirepass` (they also use it with each other);
    /// `data_password` is the primary's and replica's `requirepass` and
    /// `masterauth`, and the sentinels' `auth-pass` for them. The harness logs in
    /// with them itself.
    pub async fn start_with_auth(
        master_name: &str,
        sentinel_password: Option<&str>,
        data_password: Option<&str>,
    ) -> SentinelSet {
        // Either may become the master, so both sync replicas at once (the default
        // waits 5 s for more replicas) and both know the password of the other.
        let mut data_args = vec!["--save", "", "--appendonly", "no"];
        data_args.extend(["--repl-diskless-sync-delay", "0"]);
        if let Some(pw) = data_password {
            data_args.extend(["--requirepass", pw, "--masterauth", pw]);
        }
        let data_login = data_password.map(|pw| (String::new(), pw.to_owned()));
        let mut primary = RedisServer::new(&data_args, false);
        primary.login = data_login.clone();
        let primary = primary.launch().await;
        let primary_port = primary.port.to_string();
        data_args.extend(["--replicaof", "127.0.0.1", &primary_port]);
        let mut replica = RedisServer::new(&data_args, false);
        replica.login = data_login;
        let replica = replica.launch().await;
        // Sentinels read the replica from the primary's INFO as soon as they
        // connect, so it is there first.
        wait_link_up(&replica).await;

        let mut config = format!(
            "sentinel resolve-hostnames no\n\
             sentinel monitor {master_name} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {master_name} {DOWN_AFTER_MS}\n\
             sentinel failover-timeout {master_name} 5000\n\
             sentinel parallel-syncs {master_name} 1\n"
        );
        if let Some(pw) = data_password {
            config += &format!("sentinel auth-pass {master_name} {pw}\n");
        }
        if let Some(pw) = sentinel_password {
            config += &format!("requirepass {pw}\n");
        }
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let mut s = RedisServer::new(&["--sentinel"], false);
            // Sentinels rewrite their config file, so each has its own writable one.
            let file = s.dir.join("sentinel.conf");
            std::fs::write(&file, &config).unwrap();
            s.config_file = Some(file);
            s.login = sentinel_password.map(|pw| (String::new(), pw.to_owned()));
            sentinels.push(s.launch().await);
        }
        let set = SentinelSet {
            master_name: master_name.to_owned(),
            primary,
            replica,
            sentinels,
        };
        set.wait_ready().await;
        set
    }

    /// `redis://127.0.0.1:<port>` of each sentinel (without credentials).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The name the sentinels monitor the master under.
    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    /// The server that was the master at start (it may no longer be).
    pub fn primary(&self) -> &RedisServer {
        &self.primary
    }

    /// The server that was the replica at start (it may no longer be).
    pub fn replica(&self) -> &RedisServer {
        &self.replica
    }

    /// The sentinel processes (e.g. to kill one).
    pub fn sentinels_mut(&mut self) -> &mut [RedisServer] {
        &mut self.sentinels
    }

    /// The primary or the replica, by its port.
    pub fn server(&self, port: u16) -> &RedisServer {
        [&self.primary, &self.replica]
            .into_iter()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no data server on port {port}"))
    }

    /// The master's address as the first live sentinel reports it
    /// (`SENTINEL get-master-addr-by-name`).
    pub async fn master_addr_from_sentinels(&self) -> (String, u16) {
        let sentinel = self.sentinels.iter().find(|s| s.is_running());
        master_addr(sentinel.expect("no live sentinel"), &self.master_name).await
    }

    /// Waits until every live sentinel reports the primary as the master, sees the
    /// replica with its link up, and knows the two other sentinels.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let why = match self.readiness().await {
                Ok(()) => return,
                Err(why) => why,
            };
            assert!(Instant::now() < deadline, "sentinels not ready: {why}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn readiness(&self) -> Result<(), String> {
        let name = &self.master_name;
        for s in self.sentinels.iter().filter(|s| s.is_running()) {
            let (_, port) = master_addr(s, name).await;
            if port != self.primary.port {
                return Err(format!("sentinel {} says the master is {port}", s.port));
            }
            let master = fields(&s.cmd(&["SENTINEL", "MASTER", name]).await);
            let others = &master["num-other-sentinels"];
            if others != "2" {
                return Err(format!(
                    "sentinel {} knows {others} other sentinels",
                    s.port
                ));
            }
            let replicas = match s.cmd(&["SENTINEL", "REPLICAS", name]).await {
                Value::Array(r) => r.iter().map(fields).collect::<Vec<_>>(),
                other => panic!("unexpected SENTINEL REPLICAS reply {other:?}"),
            };
            let port = self.replica.port.to_string();
            let ok = replicas.iter().any(|r| {
                r["port"] == port && r["flags"] == "slave" && r["master-link-status"] == "ok"
            });
            if !ok {
                return Err(format!("sentinel {} does not see the replica up", s.port));
            }
        }
        Ok(())
    }

    /// Kills the primary (SIGKILL), as a crash would.
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// Waits until every live sentinel reports a master other than `old_port`, has
    /// finished the failover, and that server answers `ROLE` as master; returns its
    /// port. After [`SentinelSet::kill_primary`] this takes ~2-4 s.
    pub async fn wait_failover(&self, old_port: u16, within: Duration) -> u16 {
        let deadline = Instant::now() + within;
        loop {
            let why = match self.failed_over(old_port).await {
                Ok(port) => return port,
                Err(why) => why,
            };
            assert!(
                Instant::now() < deadline,
                "no failover from {old_port}: {why}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn failed_over(&self, old_port: u16) -> Result<u16, String> {
        let name = &self.master_name;
        let mut seen = None;
        for s in self.sentinels.iter().filter(|s| s.is_running()) {
            let (_, port) = master_addr(s, name).await;
            if port == old_port || seen.is_some_and(|p| p != port) {
                return Err(format!("sentinel {} says the master is {port}", s.port));
            }
            seen = Some(port);
            let flags = &fields(&s.cmd(&["SENTINEL", "MASTER", name]).await)["flags"];
            if flags != "master" {
                return Err(format!("sentinel {}: master flags {flags}", s.port));
            }
        }
        let port = seen.ok_or("no live sentinel")?;
        match self.server(port).cmd(&["ROLE"]).await {
            Value::Array(role) if role.first().map(text).as_deref() == Some("master") => Ok(port),
            other => Err(format!("{port} is not master yet: {other:?}")),
        }
    }
}

/// `SENTINEL get-master-addr-by-name` of one sentinel.
async fn master_addr(sentinel: &RedisServer, name: &str) -> (String, u16) {
    match sentinel
        .cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", name])
        .await
    {
        Value::Array(a) if a.len() == 2 => (text(&a[0]), text(&a[1]).parse().unwrap()),
        other => panic!("unexpected get-master-addr-by-name reply {other:?}"),
    }
}

/// Waits until a replica's link to its master is up (first sync done).
async fn wait_link_up(replica: &RedisServer) {
    let deadline = Instant::now() + crate::WAIT;
    while !replica
        .info("replication")
        .await
        .contains("master_link_status:up")
    {
        assert!(
            Instant::now() < deadline,
            "replica {} never synced",
            replica.port
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
