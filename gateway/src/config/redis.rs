//! The Redis subsystem's settings: where Redis lives (one instance, several
//! independent ones, a cluster) and how the broker talks to it. Handed to the
//! broker as they are.

use std::time::Duration;

use super::settings::{RedisMode, Settings, setting};
use super::{config_err, positive};
use crate::error::GatewayError;

/// How a node reaches Redis (present only when `--redis-url` is given).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where Redis lives: one instance, several independent ones, or a cluster.
    pub topology: publisher::Topology,
    pub mode: RedisMode,
    pub namespace: String,
    /// Pub/sub connections per instance (standalone and sharded modes).
    pub subscribers: usize,
    pub unsubscribe_delay: Duration,
    pub probe_interval: Duration,
    pub reconnect_max: Duration,
    /// A read side further behind than this makes the node not ready.
    pub max_lag: Duration,
    /// Multiplexed command connections per instance, for each of publishes and reads.
    pub connections: usize,
}

impl RedisConfig {
    /// The Redis settings, or `None` without `--redis-url` (the in-memory broker).
    pub(super) fn from_settings(s: &Settings) -> Result<Option<Self>, GatewayError> {
        let namespace: String = setting!(s, redis_namespace)?;
        if namespace.is_empty() || namespace.contains(char::is_whitespace) {
            return Err(config_err(
                "redis-namespace",
                "must be non-empty without spaces",
            ));
        }
        let Some((topology, mode)) = topology(s, &namespace)? else {
            return Ok(None);
        };
        let duration = |d: super::settings::HumanDuration| d.0;
        Ok(Some(Self {
            topology,
            mode,
            namespace,
            subscribers: positive(setting!(s, redis_subscribers)?, "redis-subscribers")?,
            unsubscribe_delay: duration(setting!(s, redis_unsubscribe_delay)?),
            probe_interval: positive(
                duration(setting!(s, redis_probe_interval)?),
                "redis-probe-interval",
            )?,
            reconnect_max: positive(
                duration(setting!(s, redis_reconnect_max)?),
                "redis-reconnect-max",
            )?,
            max_lag: positive(duration(setting!(s, redis_max_lag)?), "redis-max-lag")?,
            connections: positive(setting!(s, redis_connections)?, "redis-connections")?,
        }))
    }
}

/// The Redis topology from `redis-url`, `redis-mode` and `redis-cluster-partitions`.
fn topology(
    s: &Settings,
    namespace: &str,
) -> Result<Option<(publisher::Topology, RedisMode)>, GatewayError> {
    let urls: Vec<String> = s
        .redis_url
        .iter()
        .flatten()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let mode: RedisMode = setting!(s, redis_mode)?;
    if s.redis_cluster_partitions.is_some() && mode != RedisMode::Cluster {
        return Err(config_err(
            "redis-cluster-partitions",
            "only applies to redis-mode cluster",
        ));
    }
    if urls.is_empty() {
        if s.redis_mode.is_some() {
            return Err(config_err("redis-mode", "needs redis-url"));
        }
        return Ok(None);
    }
    for url in &urls {
        if url.starts_with("rediss://") {
            return Err(config_err(
                "redis-url",
                "TLS (rediss://) is not built in; reach Redis over a private network or a TLS sidecar",
            ));
        }
        let unix = url.starts_with("redis+unix://") || url.starts_with("unix://");
        if !(url.starts_with("redis://") || unix) {
            return Err(config_err(
                "redis-url",
                "must start with redis://, redis+unix:// or unix://",
            ));
        }
        if unix && mode == RedisMode::Cluster {
            return Err(config_err(
                "redis-url",
                "cluster nodes are reached over TCP (redis://host:port)",
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = urls.iter().find(|u| !seen.insert(u.as_str())) {
        return Err(config_err(
            "redis-url",
            format!("`{}` is listed twice", publisher::redact_url(dup)),
        ));
    }
    let topology = match mode {
        RedisMode::Standalone => {
            if urls.len() > 1 {
                return Err(config_err(
                    "redis-mode",
                    "standalone takes one redis-url; set redis-mode to sharded (independent instances) or cluster (Redis Cluster seeds) for several",
                ));
            }
            publisher::Topology::Standalone(urls[0].clone())
        }
        RedisMode::Sharded => publisher::Topology::Sharded(urls),
        RedisMode::Cluster => {
            let partitions: usize = setting!(s, redis_cluster_partitions)?;
            protocol::topology::Partitions::new(partitions)
                .map_err(|e| config_err("redis-cluster-partitions", e))?;
            if namespace.contains(['{', '}']) {
                return Err(config_err(
                    "redis-namespace",
                    "must not contain `{` or `}` in cluster mode (it would become the hash tag)",
                ));
            }
            publisher::Topology::Cluster {
                seeds: urls,
                partitions,
            }
        }
    };
    Ok(Some((topology, mode)))
}
