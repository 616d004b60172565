//! A real Redis Cluster for tests: masters and replicas on free ports, created with
//! `redis-cli --cluster create`, ready when every node agrees the cluster is ok and
//! every replica is in sync. Nodes are killed (SIGKILL) on drop.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use redis::Value;

use crate::{Certs, RedisServer};

/// The settings of every cluster node: a short node timeout, nothing on disk.
const NODE_ARGS: &[&str] = &[
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "1000",
    "--appendonly",
    "no",
    "--save",
    "",
    // Replicas sync at once instead of after the 5 s default delay.
    "--repl-diskless-sync-delay",
    "0",
];

/// A Redis Cluster of `masters` masters with one replica each.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// One slot range of `CLUSTER SLOTS`: `[start, end]` and the master's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub port: u16,
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::VerbatimString { text, .. } => text.clone(),
        other => panic!("expected a string, got {other:?}"),
    }
}

/// The value of `field` in an INFO-style reply (`field:value` lines).
pub fn info_field(reply: &Value, field: &str) -> Option<String> {
    text(reply).lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    })
}

impl RedisCluster {
    /// Starts `masters` masters and as many replicas, and waits until the cluster is
    /// ok everywhere (takes about two seconds).
    pub async fn start(masters: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..masters * 2 {
            nodes.push(RedisServer::new(NODE_ARGS, true).launch().await);
        }
        Self::create(nodes).await
    }

    /// Like [`RedisCluster::start`], but every node also listens with TLS
    /// (`tls-port`), and the nodes talk TLS to each other (`tls-cluster yes`,
    /// `tls-replication yes`). Clients need no certificate (`tls-auth-clients no`).
    /// The plain ports stay open for the harness: `urls`, `owner`, `masters` and the
    /// other methods keep using them; the system under test gets [`RedisCluster::tls_urls`].
    ///
    /// With `tls-cluster yes`, Redis 7.0 answers `CLUSTER SLOTS`, `CLUSTER NODES`
    /// and `-MOVED` (and `-ASK`, same code) with the port of the asking
    /// connection's kind: TLS ports on a TLS connection, plain ports on a plain one
    /// (`CLUSTER SLOTS` and `-MOVED` are tested in `tests/harness.rs`);
    /// `CLUSTER SHARDS` lists both as `port` and `tls-port`. So a TLS client is
    /// only ever sent to TLS ports, and the harness's slot views here show plain
    /// ports.
    pub async fn start_tls(masters: usize, certs: &Certs) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..masters * 2 {
            let mut node = RedisServer::new(NODE_ARGS, true);
            let tls = certs.server_args(&node.dir, false);
            node.args.extend(tls);
            node.args
                .extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
            node.tls_port = Some(0);
            nodes.push(node.launch().await);
        }
        Self::create(nodes).await
    }

    /// Joins started nodes into a cluster with one replica per master, through
    /// their plain ports (the cluster bus is pinned to `port + 10000` even with
    /// TLS, see [`RedisServer`]), and waits until it is healthy.
    async fn create(nodes: Vec<RedisServer>) -> RedisCluster {
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy(Duration::from_secs(20)).await;
        cluster
    }

    /// TLS seed URLs (`rediss://127.0.0.1:<tls_port>`) of a [`RedisCluster::start_tls`]
    /// cluster: every node, live or not.
    pub fn tls_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::tls_url).collect()
    }

    /// Seed URLs: every node, live or not.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Nodes whose process runs.
    pub fn live(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// The node on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// `CLUSTER SLOTS` as seen by one node.
    pub async fn slots_seen_by(node: &RedisServer) -> Vec<SlotRange> {
        match node.cmd(&["CLUSTER", "SLOTS"]).await {
            Value::Array(ranges) => ranges
                .iter()
                .map(|r| match r {
                    Value::Array(f) if f.len() >= 3 => SlotRange {
                        start: int(&f[0]) as u16,
                        end: int(&f[1]) as u16,
                        port: match &f[2] {
                            Value::Array(m) if m.len() >= 2 => int(&m[1]) as u16,
                            other => panic!("unexpected CLUSTER SLOTS master {other:?}"),
                        },
                    },
                    other => panic!("unexpected CLUSTER SLOTS range {other:?}"),
                })
                .collect(),
            other => panic!("unexpected CLUSTER SLOTS reply {other:?}"),
        }
    }

    /// The port of the master that owns `slot`, as the first live node sees it.
    pub async fn owner(&self, slot: u16) -> u16 {
        let node = self.live().next().expect("no live node");
        Self::slots_seen_by(node)
            .await
            .into_iter()
            .find(|r| (r.start..=r.end).contains(&slot))
            .map(|r| r.port)
            .unwrap_or_else(|| panic!("slot {slot} is not served"))
    }

    /// Ports of the masters that serve slots.
    pub async fn masters(&self) -> Vec<u16> {
        let node = self.live().next().expect("no live node");
        let mut ports: Vec<u16> = Self::slots_seen_by(node)
            .await
            .into_iter()
            .map(|r| r.port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// Waits until every live node says `cluster_state:ok`, knows every node, sees all
    /// 16384 slots served by live masters with one view, and every live replica's
    /// link to its master is up. Replicas may still be missing from `CLUSTER SLOTS`
    /// then: Redis 7.0 lists a replica only once the gossip shows it with a non-zero
    /// replication offset, i.e. after the first write to its master or the master's
    /// first replication PING (every 10 s); about 8 s after a fresh cluster is healthy.
    pub async fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut why = String::new();
        while Instant::now() < deadline {
            match self.health().await {
                Ok(()) => return,
                Err(e) => why = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cluster not healthy within {within:?}: {why}");
    }

    async fn health(&self) -> Result<(), String> {
        let live_ports: Vec<u16> = self.live().map(|n| n.port).collect();
        let mut view: Option<Vec<SlotRange>> = None;
        for node in self.live() {
            let info = node.cmd(&["CLUSTER", "INFO"]).await;
            if info_field(&info, "cluster_state").as_deref() != Some("ok") {
                return Err(format!("{} not ok", node.port));
            }
            if info_field(&info, "cluster_slots_ok").as_deref() != Some("16384") {
                return Err(format!("{}: not every slot ok", node.port));
            }
            if info_field(&info, "cluster_known_nodes") != Some(self.nodes.len().to_string()) {
                return Err(format!("{}: does not know every node yet", node.port));
            }
            let mut slots = Self::slots_seen_by(node).await;
            slots.sort_by_key(|r| r.start);
            if slots.iter().any(|r| !live_ports.contains(&r.port)) {
                return Err(format!("{}: a slot is served by a dead node", node.port));
            }
            match &view {
                None => view = Some(slots),
                Some(v) if *v != slots => {
                    return Err(format!("{}: slot views differ", node.port));
                }
                Some(_) => {}
            }
            let repl = node.cmd(&["INFO", "replication"]).await;
            if info_field(&repl, "role").as_deref() == Some("slave")
                && info_field(&repl, "master_link_status").as_deref() != Some("up")
            {
                return Err(format!("{}: replica not in sync", node.port));
            }
        }
        Ok(())
    }

    /// Kills (SIGKILL) the master that owns `slot` and waits until one of its
    /// replicas took over and the cluster is healthy again. Returns the old and the
    /// new master's ports.
    pub async fn fail_over_slot(&mut self, slot: u16) -> (u16, u16) {
        let old = self.kill_owner(slot).await;
        (old, self.wait_new_owner(slot, old).await)
    }

    /// Kills (SIGKILL) the master that owns `slot`; returns its port.
    pub async fn kill_owner(&mut self, slot: u16) -> u16 {
        let old = self.owner(slot).await;
        self.nodes
            .iter_mut()
            .find(|n| n.port == old)
            .expect("owner is a node")
            .kill();
        old
    }

    /// Waits until a master other than `old` owns `slot` and the cluster is healthy.
    pub async fn wait_new_owner(&self, slot: u16, old: u16) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let owner = self.owner(slot).await;
            if owner != old && self.health().await.is_ok() {
                return owner;
            }
            assert!(
                Instant::now() < deadline,
                "no replica took over slot {slot} from {old}"
            );
        }
    }

    /// Moves `slot` (with its keys) to the master on port `to`, the way
    /// `redis-cli --cluster reshard` does, and tells every node.
    pub async fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.owner(slot).await;
        assert_ne!(from, to, "slot {slot} is already on {to}");
        let id = |port: u16| async move { text(&self.node(port).cmd(&["CLUSTER", "MYID"]).await) };
        let (from_id, to_id) = (id(from).await, id(to).await);
        let s = slot.to_string();
        let (src, dst) = (self.node(from), self.node(to));
        dst.cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id])
            .await;
        src.cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id])
            .await;
        loop {
            let keys = match src.cmd(&["CLUSTER", "GETKEYSINSLOT", &s, "100"]).await {
                Value::Array(k) => k.iter().map(text).collect::<Vec<_>>(),
                other => panic!("unexpected GETKEYSINSLOT reply {other:?}"),
            };
            if keys.is_empty() {
                break;
            }
            let port = to.to_string();
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                &port,
                "",
                "0",
                "5000",
                "REPLACE",
                "KEYS",
            ];
            args.extend(keys.iter().map(String::as_str));
            src.cmd(&args).await;
        }
        // The destination first, then the source, then the other masters.
        let mut order = vec![to, from];
        order.extend(
            self.masters()
                .await
                .into_iter()
                .filter(|p| *p != to && *p != from),
        );
        for port in order {
            self.node(port)
                .cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id])
                .await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.owner(slot).await != to || self.health().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "slot {slot} did not move to {to}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `PUBSUB SHARDNUMSUB` of a shard channel on one node.
    pub async fn shard_numsub(node: &RedisServer, shard_channel: &str) -> i64 {
        match node.cmd(&["PUBSUB", "SHARDNUMSUB", shard_channel]).await {
            Value::Array(v) if v.len() == 2 => int(&v[1]),
            other => panic!("unexpected SHARDNUMSUB reply {other:?}"),
        }
    }

    /// `PUBSUB SHARDCHANNELS <pattern>` of one node.
    pub async fn shard_channels(node: &RedisServer, pattern: &str) -> Vec<String> {
        match node.cmd(&["PUBSUB", "SHARDCHANNELS", pattern]).await {
            Value::Array(v) => v.iter().map(text).collect(),
            other => panic!("unexpected SHARDCHANNELS reply {other:?}"),
        }
    }
}
