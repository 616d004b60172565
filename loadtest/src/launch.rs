//! What a run measures: gateway processes and a Redis that loadtest starts itself
//! (on 127.0.0.1, free ports; stopped when the run ends) or existing ones it
//! attaches to, or an nginx with Nchan (`--server nchan`, see [`crate::nchan`]),
//! plus the Redis queries a run needs (its pid, subscription counts).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::time::Instant;

use crate::cli::{Common, ServerKind};
use crate::conn::Target;
use crate::nchan::Nginx;

/// The gateways and Redis (or the nginx with Nchan) of one run.
pub struct Env {
    pub server: ServerKind,
    /// WebSocket URLs: a gateway's `/ws`, or Nchan's subscriber prefix
    /// (`ws://127.0.0.1:PORT/sub`, the channel appended per client).
    pub targets: Vec<Target>,
    /// The server processes measured from /proc: the gateways, or nginx's master
    /// and workers.
    pub gateway_pids: Vec<u32>,
    /// Admin listeners (`/metrics`) of the started gateways.
    pub admin_addrs: Vec<std::net::SocketAddr>,
    pub redis_url: Option<String>,
    pub redis_pid: Option<u32>,
    pub secret: String,
    pub api_key: String,
    pub spawned: bool,
    gateways: Vec<testkit::TestGateway>,
    _redis: Option<testkit::RedisServer>,
    pub nginx: Option<Nginx>,
}

impl Env {
    /// Starts or attaches to what `c` names.
    pub async fn setup(c: &Common) -> Result<Env> {
        let mut env = Env {
            server: c.server,
            targets: Vec::new(),
            gateway_pids: c.gateway_pid.clone(),
            admin_addrs: Vec::new(),
            redis_url: c.redis_url.clone(),
            redis_pid: None,
            secret: c.jwt_secret.clone(),
            api_key: c.api_key.clone(),
            spawned: c.spawn_gateway.is_some(),
            gateways: Vec::new(),
            _redis: None,
            nginx: None,
        };
        if c.server == ServerKind::Nchan {
            // nginx ends by itself a while after the run's bound, whatever happens here.
            let bound = c.max_duration.0 + Duration::from_secs(120);
            let nginx = Nginx::start(&c.nchan, c.connections, bound).await?;
            env.gateway_pids = nginx.pids();
            env.targets.push(Target::parse(&format!(
                "ws://{}{}",
                nginx.addr,
                crate::nchan::SUB_PREFIX
            ))?);
            env.nginx = Some(nginx);
            return Ok(env);
        }
        if c.redis {
            which("redis-server")
                .context("--redis needs redis-server on the PATH (apt-get install redis-server)")?;
            let server = testkit::RedisServer::start().await;
            env.redis_url = Some(server.url());
            env._redis = Some(server);
        }
        if let Some(url) = &env.redis_url {
            env.redis_pid = Some(redis_pid(url).await?);
        }
        match &c.spawn_gateway {
            Some(path) => {
                for i in 0..c.gateways.unwrap_or(1) {
                    let gw = spawn_gateway(path, i, c, &env).await?;
                    env.gateway_pids.push(gw.pid());
                    env.admin_addrs.push(gw.admin);
                    env.targets.push(Target::parse(&gw.ws_url())?);
                    env.gateways.push(gw);
                }
            }
            None => {
                for u in &c.url {
                    env.targets.push(Target::parse(u)?);
                }
            }
        }
        Ok(env)
    }

    /// Whether a started gateway has exited (a crash during the run), with its last logs.
    pub fn crashed(&mut self) -> Option<String> {
        if let Some(n) = &mut self.nginx
            && let Some(why) = n.crashed()
        {
            return Some(why);
        }
        for g in &mut self.gateways {
            if let Some(status) = g.try_wait() {
                return Some(format!(
                    "gateway exited with {status}; last logs:\n{}",
                    g.logs()
                ));
            }
        }
        None
    }
}

fn which(cmd: &str) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join(cmd).is_file()) {
        Ok(())
    } else {
        bail!("`{cmd}` not found")
    }
}

/// Starts gateway `i` of the run: testkit's test gateway (loopback, port 0, JSON
/// log) with the run's credentials and the gateway's own timings, then the run's
/// gateway arguments.
async fn spawn_gateway(
    path: &Path,
    i: usize,
    c: &Common,
    env: &Env,
) -> Result<testkit::TestGateway> {
    if !path.is_file() {
        bail!(
            "no gateway binary at {} (build it: cargo build --release -p gateway)",
            path.display()
        );
    }
    let mut gw = testkit::TestGateway::builder()
        .bin(path)
        .gateway_timings()
        .jwt_secret(&env.secret)
        .api_keys(&env.api_key)
        .node(&format!("loadtest-gw-{i}"))
        // The gateway's log is read for the whole run; the last lines are kept.
        .log_tail(50);
    if let Some(url) = &env.redis_url {
        gw = gw.set("--redis-url", url);
    }
    if let Some(rules) = &c.history {
        gw = gw.arg(format!("--history={}", rules.join(",")));
    }
    Ok(gw.args(&c.gateway_args).try_start().await?)
}

/// A connection to the run's Redis for its queries (INFO, PUBSUB NUMSUB, MEMORY
/// USAGE): each may wait up to 10 s for its answer (the client's default is 0.5 s, too
/// short while this process or the machine is busy with the load).
pub async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).context("bad Redis URL")?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| anyhow!("Redis at {url} did not answer"))?
    .with_context(|| format!("cannot connect to Redis at {url}"))
}

/// The pid of the Redis server (`INFO server` process_id).
pub async fn redis_pid(url: &str) -> Result<u32> {
    let mut conn = redis_conn(url).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no process_id in INFO server"))
}

/// One section of Redis' `INFO` (e.g. `memory`, `cpu`, `commandstats`) as
/// field -> value.
pub async fn redis_info(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let info: String = redis::cmd("INFO").arg(section).query_async(conn).await?;
    Ok(info
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect())
}

/// Waits until every client-visible channel has at least `min` subscribed gateway
/// nodes in Redis (the gateways subscribe asynchronously after a client's first
/// interest, so publishing earlier would be lost by pub/sub, not by the gateway).
/// Returns how many channels were still short when `within` ran out.
pub async fn wait_routes(
    url: &str,
    namespace: &str,
    channels: &[String],
    min: i64,
    within: Duration,
) -> Result<usize> {
    let mut conn = redis_conn(url).await?;
    let deadline = Instant::now() + within;
    let mut pending: Vec<String> = channels
        .iter()
        .map(|c| protocol::keys::pubsub_channel(namespace, c))
        .collect();
    loop {
        let mut short = Vec::new();
        for chunk in pending.chunks(1000) {
            let mut cmd = redis::cmd("PUBSUB");
            cmd.arg("NUMSUB");
            for ch in chunk {
                cmd.arg(ch);
            }
            let reply: Vec<redis::Value> = cmd.query_async(&mut conn).await?;
            for pair in reply.chunks(2) {
                if let [name, redis::Value::Int(n)] = pair
                    && *n < min
                    && let redis::Value::BulkString(b) = name
                {
                    short.push(String::from_utf8_lossy(b).into_owned());
                }
            }
        }
        if short.is_empty() || Instant::now() >= deadline {
            return Ok(short.len());
        }
        pending = short;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
