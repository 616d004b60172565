//! The Redis subsystem's settings: where Redis lives (one instance, several
//! independent ones, a cluster) and how the broker talks to it. Handed to the
//! broker as they are.

use std::time::Duration;

use publisher::{Connector, RedisOptions, Secret, TlsOptions};

use super::settings::{ReadyPolicy, RedisMode, Settings, setting};
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
    /// Opens every connection: TLS, credentials, connect timeout, keepalive.
    pub connector: Connector,
    /// The sentinels' own password (Sentinel mode).
    pub sentinel_password: Option<Secret>,
    /// Upper bound for one command.
    pub command_timeout: Duration,
    /// First wait before a subscriber connection is opened again.
    pub reconnect_min: Duration,
    /// When the node is ready with several instances or partitions.
    pub ready: ReadyPolicy,
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
        let connector = connector(s, &topology)?;
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
            connector,
            sentinel_password: secret_file(
                &s.redis_sentinel_password_file,
                "redis-sentinel-password-file",
            )?,
            command_timeout: positive(
                duration(setting!(s, redis_command_timeout)?),
                "redis-command-timeout",
            )?,
            reconnect_min: positive(
                duration(setting!(s, redis_reconnect_min)?),
                "redis-reconnect-min",
            )?,
            ready: setting!(s, redis_ready)?,
        }))
    }
}

fn secret_file(
    path: &Option<std::path::PathBuf>,
    name: &'static str,
) -> Result<Option<Secret>, GatewayError> {
    match path {
        None => Ok(None),
        Some(p) => Secret::from_file(p)
            .map(Some)
            .map_err(|e| config_err(name, format!("cannot read {}: {e}", p.display()))),
    }
}

/// TLS, credentials and connection settings, checked now: files readable, PEM
/// valid, the key fitting its certificate.
fn connector(s: &Settings, topology: &publisher::Topology) -> Result<Connector, GatewayError> {
    let duration = |d: super::settings::HumanDuration| d.0;
    let tls = TlsOptions {
        ca_file: s.redis_tls_ca.clone(),
        cert_file: s.redis_tls_cert.clone(),
        key_file: s.redis_tls_key.clone(),
        server_name: s.redis_tls_server_name.clone(),
        insecure: setting!(s, redis_tls_insecure)?,
    };
    let uses_tls = topology.urls().iter().any(|u| u.starts_with("rediss://"));
    if tls.is_set() && !uses_tls {
        let flag = match () {
            _ if tls.ca_file.is_some() => "redis-tls-ca",
            _ if tls.cert_file.is_some() => "redis-tls-cert",
            _ if tls.key_file.is_some() => "redis-tls-key",
            _ if tls.server_name.is_some() => "redis-tls-server-name",
            _ => "redis-tls-insecure",
        };
        return Err(config_err(
            flag,
            "applies to TLS connections only; use rediss:// URLs in redis-url",
        ));
    }
    if uses_tls && !topology.urls().iter().all(|u| u.starts_with("rediss://")) {
        return Err(config_err(
            "redis-url",
            "mixes rediss:// and redis:// URLs; use TLS for all or none",
        ));
    }
    if tls.server_name.is_some() && matches!(topology, publisher::Topology::Cluster { .. }) {
        return Err(config_err(
            "redis-tls-server-name",
            "cannot be used in cluster mode: each node is checked against the name the cluster announces",
        ));
    }
    let keepalive = duration(setting!(s, redis_keepalive)?);
    let options = RedisOptions {
        tls,
        username: s.redis_username.clone(),
        password: secret_file(&s.redis_password_file, "redis-password-file")?,
        connect_timeout: positive(
            duration(setting!(s, redis_connect_timeout)?),
            "redis-connect-timeout",
        )?,
        keepalive: (!keepalive.is_zero()).then_some(keepalive),
    };
    Connector::new(options, uses_tls, "--redis-tls-ca").map_err(|e| {
        use publisher::connect::TlsSetupError as E;
        let flag = match &e {
            E::Ca { .. } | E::Roots(_) => "redis-tls-ca",
            E::Cert { .. } => "redis-tls-cert",
            E::Key { .. } => "redis-tls-key",
            E::ServerName(_) => "redis-tls-server-name",
        };
        config_err(flag, e.to_string())
    })
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
    if s.redis_sentinel_master.is_some() && mode != RedisMode::Sentinel {
        return Err(config_err(
            "redis-sentinel-master",
            "only applies to redis-mode sentinel",
        ));
    }
    for url in &urls {
        let unix = url.starts_with("redis+unix://") || url.starts_with("unix://");
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || unix) {
            return Err(config_err(
                "redis-url",
                "must start with redis://, rediss:// (TLS), redis+unix:// or unix://",
            ));
        }
        if unix && matches!(mode, RedisMode::Cluster | RedisMode::Sentinel) {
            return Err(config_err(
                "redis-url",
                "cluster nodes and sentinels are reached over TCP (redis:// or rediss://)",
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
        RedisMode::Sentinel => {
            let master = s
                .redis_sentinel_master
                .clone()
                .filter(|m| !m.trim().is_empty())
                .ok_or_else(|| {
                    config_err(
                        "redis-sentinel-master",
                        "redis-mode sentinel needs the master name the sentinels monitor",
                    )
                })?;
            publisher::Topology::Sentinel {
                sentinels: urls,
                master,
            }
        }
    };
    Ok(Some((topology, mode)))
}
