//! Configuration: one typed [`Config`] with a part per subsystem (as linkerd2-proxy
//! nests its config), built from CLI flags, `TIDINGS_*` environment variables and
//! an optional TOML file (in that order of precedence; [`settings`]) and validated
//! at startup, so a bad value fails fast with the setting's name. Each default is
//! declared once, in [`settings::defaults`].

mod redis;
mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use protocol::history::HistoryRules;
use protocol::presence::PresenceRules;

use crate::error::GatewayError;
pub use redis::RedisConfig;
use settings::setting;
pub use settings::{
    Cli, Command, HumanDuration, LogFormat, MintToken, RedisMode, Settings, defaults, flag_name,
};

/// History rules in demo mode when none are configured (the demo's rooms replay
/// what was said before one joined; its documents are logs of operations with
/// snapshots, docs/collaboration.md).
const DEMO_HISTORY: [&str; 4] = [
    "$user:* 100 24h",
    "room:* 100 1h",
    "doc:* 100000 7d",
    "snap:* 10 30d",
];

/// Presence rules in demo mode when none are configured (the rooms and documents
/// show who is there).
const DEMO_PRESENCE: [&str; 2] = ["room:* events", "doc:* events"];

/// The validated configuration of one gateway node.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeConfig,
    pub listeners: ListenersConfig,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub conn: ConnConfig,
    pub history: HistoryConfig,
    pub presence: PresenceConfig,
    /// Where Redis lives (`None`: the in-memory broker, single node).
    pub redis: Option<RedisConfig>,
    /// Serve the demo app and mint demo tokens.
    pub demo: bool,
}

/// The node itself: its name, its runtime, its logs, its shutdown.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Shown to clients and in logs.
    pub id: String,
    pub worker_threads: usize,
    pub log_format: LogFormat,
    pub log: String,
    /// Period over which connections are closed (1001) on shutdown.
    pub drain_period: Duration,
}

/// The listeners and what reaches them before a connection is a WebSocket.
#[derive(Debug, Clone)]
pub struct ListenersConfig {
    pub public: SocketAddr,
    pub backlog: u32,
    pub admin: SocketAddr,
    /// SO_SNDBUF of client sockets (0: the kernel's autotuning).
    pub socket_send_buffer: usize,
    /// Time for the HTTP request and the upgrade (and a publish API keep-alive).
    pub handshake_timeout: Duration,
    /// Connections not (yet) upgraded to a WebSocket.
    pub max_pending: usize,
}

/// Who may connect.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub jwt: JwtConfig,
    pub allowed_origins: Vec<String>,
}

/// JWT verification settings.
#[derive(Debug, Clone, Default)]
pub struct JwtConfig {
    pub secret: Option<Vec<u8>>,
    pub public_keys: Vec<PathBuf>,
    pub jwks_file: Option<PathBuf>,
    pub algorithms: Option<Vec<String>>,
    pub issuer: Vec<String>,
    pub audience: Vec<String>,
    pub leeway: Duration,
}

/// The HTTP publish API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// No keys: the API is off.
    pub keys: Vec<String>,
    /// Bytes one request may ask Redis to write (targets x payload, summed).
    pub max_publish_bytes: usize,
}

/// What one WebSocket connection may do and hold.
#[derive(Debug, Clone)]
pub struct ConnConfig {
    pub max_connections: usize,
    pub max_per_user: u32,
    pub max_channels: u32,
    pub max_message_size: usize,
    pub max_payload_size: usize,
    pub outbound_queue: usize,
    pub heartbeat_interval: Duration,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub ws_read_buffer: usize,
}

/// History, recovery and idempotency.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    pub rules: HistoryRules,
    /// Bytes of history the memory broker keeps in all.
    pub max_bytes: usize,
    pub idempotency_window: Duration,
    pub recovery_limit: usize,
    pub replay_page_bytes: usize,
    pub resume_rate: u32,
    pub resume_burst: u32,
}

/// Who is in a channel, and who is online.
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    pub rules: PresenceRules,
    /// How often a node refreshes its entries (they live twice as long).
    pub refresh: Duration,
    pub grace: Duration,
    pub online: bool,
    pub last_seen_ttl: Duration,
}

impl PresenceConfig {
    fn from_settings(s: &Settings, demo: bool) -> Result<Self, GatewayError> {
        let rules = match &s.presence {
            None if demo => PresenceRules::parse(DEMO_PRESENCE.iter()),
            _ => PresenceRules::parse(
                s.list(&s.presence, "presence")
                    .iter()
                    .filter(|r| !r.trim().is_empty()),
            ),
        }
        .map_err(|e| config_err("presence", e))?;
        let refresh = setting!(s, presence_refresh)?.0;
        if refresh < Duration::from_millis(100) {
            return Err(config_err("presence-refresh", "must be at least 100ms"));
        }
        Ok(Self {
            rules,
            refresh,
            grace: setting!(s, presence_grace)?.0,
            online: setting!(s, presence_online)?,
            last_seen_ttl: positive(
                setting!(s, presence_last_seen_ttl)?.0,
                "presence-last-seen-ttl",
            )?,
        })
    }

    /// How long an entry lives without a refresh.
    pub fn ttl(&self) -> Duration {
        self.refresh * 2
    }
}

fn config_err(setting: impl Into<String>, message: impl Into<String>) -> GatewayError {
    GatewayError::Config {
        setting: setting.into(),
        message: message.into(),
    }
}

fn positive<T: PartialOrd + Default + Copy>(
    v: T,
    setting: &'static str,
) -> Result<T, GatewayError> {
    if v > T::default() {
        Ok(v)
    } else {
        Err(config_err(setting, "must be greater than zero"))
    }
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{:04x}", rand::random::<u16>())
}

impl Config {
    /// Validates the settings (after filling them from the file `--config` names).
    pub fn from_settings(s: Settings) -> Result<Self, GatewayError> {
        let s = s.with_file()?;
        let demo: bool = setting!(s, demo)?;
        let auth = AuthConfig::from_settings(&s)?;
        let redis = RedisConfig::from_settings(&s)?;
        if demo && auth.jwt.secret.is_none() {
            return Err(config_err(
                "demo",
                "demo mode mints HS256 tokens and needs --jwt-secret",
            ));
        }
        let listeners = ListenersConfig::from_settings(&s, demo)?;
        // Demo mode refuses what would hand its tokens to the world unless that is
        // said to be intended.
        if demo && !setting!(s, demo_unsafe)? {
            if redis.is_some() {
                return Err(config_err(
                    "demo",
                    "demo mode next to a Redis broker would hand tokens to anyone who reaches any node; add --demo-unsafe if that is intended",
                ));
            }
            if !listeners.public.ip().is_loopback() {
                return Err(config_err(
                    "demo",
                    "demo mode on a non-loopback address hands tokens to anyone who reaches it; listen on 127.0.0.1 or add --demo-unsafe",
                ));
            }
        }
        Ok(Config {
            node: NodeConfig::from_settings(&s)?,
            listeners,
            auth,
            api: ApiConfig::from_settings(&s)?,
            conn: ConnConfig::from_settings(&s)?,
            history: HistoryConfig::from_settings(&s, demo)?,
            presence: PresenceConfig::from_settings(&s, demo)?,
            redis,
            demo,
        })
    }
}

impl NodeConfig {
    fn from_settings(s: &Settings) -> Result<Self, GatewayError> {
        let id = s.node_id.clone().unwrap_or_else(default_node_id);
        protocol::channel::validate_user(&id).map_err(|e| config_err("node-id", e.to_string()))?;
        Ok(Self {
            id,
            worker_threads: match s.worker_threads {
                Some(n) if !(1..=1024).contains(&n) => {
                    return Err(config_err("worker-threads", "must be 1..=1024"));
                }
                Some(n) => n,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            log_format: setting!(s, log_format)?,
            log: setting!(s, log)?,
            drain_period: setting!(s, drain_period)?.0,
        })
    }
}

impl ListenersConfig {
    fn from_settings(s: &Settings, demo: bool) -> Result<Self, GatewayError> {
        // Demo mode listens on loopback unless told otherwise.
        let default: SocketAddr = setting!(s, listen)?;
        let public = match s.listen {
            None if demo => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), default.port()),
            _ => default,
        };
        Ok(Self {
            public,
            backlog: positive(setting!(s, listen_backlog)?, "listen-backlog")?,
            admin: setting!(s, admin_listen)?,
            socket_send_buffer: setting!(s, socket_send_buffer)?,
            handshake_timeout: positive(setting!(s, handshake_timeout)?.0, "handshake-timeout")?,
            max_pending: positive(
                setting!(s, max_pending_connections)?,
                "max-pending-connections",
            )?,
        })
    }
}

impl AuthConfig {
    fn from_settings(s: &Settings) -> Result<Self, GatewayError> {
        let secret = match (&s.jwt_secret, &s.jwt_secret_file) {
            (Some(_), Some(_)) => {
                return Err(config_err(
                    "jwt-secret",
                    "set jwt-secret or jwt-secret-file, not both",
                ));
            }
            (Some(sec), None) => Some(sec.clone().into_bytes()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    config_err(
                        "jwt-secret-file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                Some(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
            }
            (None, None) => None,
        };
        if let Some(sec) = &secret
            && sec.len() < 16
        {
            return Err(config_err("jwt-secret", "must be at least 16 bytes"));
        }
        let jwt = JwtConfig {
            secret,
            public_keys: s.jwt_public_keys.clone().unwrap_or_default(),
            jwks_file: s.jwt_jwks_file.clone(),
            algorithms: s.jwt_algorithms.clone(),
            issuer: s.jwt_issuer.clone().unwrap_or_default(),
            audience: s.jwt_audience.clone().unwrap_or_default(),
            leeway: setting!(s, jwt_leeway)?.0,
        };
        if jwt.secret.is_none() && jwt.public_keys.is_empty() && jwt.jwks_file.is_none() {
            return Err(config_err(
                "jwt-secret",
                "no JWT key configured: set jwt-secret, jwt-secret-file, jwt-public-keys or jwt-jwks-file",
            ));
        }
        let allowed_origins = s.allowed_origins.clone().unwrap_or_default();
        for o in &allowed_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(config_err(
                    "allowed-origins",
                    format!("`{o}` must start with http:// or https://"),
                ));
            }
        }
        Ok(Self {
            jwt,
            allowed_origins,
        })
    }
}

impl ApiConfig {
    fn from_settings(s: &Settings) -> Result<Self, GatewayError> {
        let mut keys = s.api_keys.clone().unwrap_or_default();
        if let Some(path) = &s.api_key_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                config_err(
                    "api-key-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
        keys.retain(|k| !k.is_empty());
        if keys.iter().any(|k| k.len() < 16) {
            return Err(config_err(
                "api-keys",
                "every API key must be at least 16 characters",
            ));
        }
        Ok(Self {
            keys,
            max_publish_bytes: positive(setting!(s, max_publish_bytes)?, "max-publish-bytes")?,
        })
    }
}

impl ConnConfig {
    fn from_settings(s: &Settings) -> Result<Self, GatewayError> {
        let max_message_size = positive(setting!(s, max_message_size)?, "max-message-size")?;
        if max_message_size < 256 {
            return Err(config_err("max-message-size", "must be at least 256 bytes"));
        }
        let heartbeat_interval = setting!(s, heartbeat_interval)?.0;
        if heartbeat_interval < Duration::from_millis(100) {
            return Err(config_err("heartbeat-interval", "must be at least 100ms"));
        }
        Ok(Self {
            max_connections: positive(setting!(s, max_connections)?, "max-connections")?,
            max_per_user: positive(
                setting!(s, max_connections_per_user)?,
                "max-connections-per-user",
            )?,
            max_channels: setting!(s, max_channels)?,
            max_message_size,
            max_payload_size: positive(setting!(s, max_payload_size)?, "max-payload-size")?,
            outbound_queue: positive(setting!(s, outbound_queue)?, "outbound-queue")?,
            heartbeat_interval,
            rate_limit: positive(setting!(s, rate_limit)?, "rate-limit")?,
            rate_burst: positive(setting!(s, rate_burst)?, "rate-burst")?,
            ws_read_buffer: setting!(s, ws_read_buffer)?.max(64),
        })
    }
}

impl HistoryConfig {
    fn from_settings(s: &Settings, demo: bool) -> Result<Self, GatewayError> {
        let rules = match &s.history {
            None if demo => HistoryRules::parse(DEMO_HISTORY.iter()),
            _ => HistoryRules::parse(
                s.list(&s.history, "history")
                    .iter()
                    .filter(|r| !r.trim().is_empty()),
            ),
        }
        .map_err(|e| config_err("history", e))?
        .with_default_budget(setting!(s, history_max_channels)?);
        Ok(Self {
            rules,
            max_bytes: positive(setting!(s, history_max_bytes)?, "history-max-bytes")?,
            idempotency_window: setting!(s, idempotency_window)?.0,
            recovery_limit: positive(setting!(s, recovery_limit)?, "recovery-limit")?,
            replay_page_bytes: positive(setting!(s, replay_page_bytes)?, "replay-page-bytes")?,
            resume_rate: positive(setting!(s, resume_rate)?, "resume-rate")?,
            resume_burst: positive(setting!(s, resume_burst)?, "resume-burst")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Config, GatewayError> {
        let mut full = vec!["gateway"];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).map_err(|e| config_err("cli", e.to_string()))?;
        Config::from_settings(cli.settings)
    }

    #[test]
    fn defaults_and_errors_name_the_setting() {
        let c = parse(&["--jwt-secret", "0123456789abcdef"]).unwrap();
        assert_eq!(c.conn.heartbeat_interval, Duration::from_secs(30));
        // The unauthenticated admin listener stays on loopback unless told.
        assert_eq!(c.listeners.admin, ([127, 0, 0, 1], 9090).into());
        assert_eq!(c.conn.max_message_size, 65536);
        let e = parse(&[]).unwrap_err().to_string();
        assert!(e.contains("jwt-secret"), "{e}");
        let e = parse(&["--jwt-secret", "short"]).unwrap_err().to_string();
        assert!(e.contains("jwt-secret"), "{e}");
        let e = parse(&["--jwt-secret", "0123456789abcdef", "--outbound-queue", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("outbound-queue"), "{e}");
        let e = parse(&[
            "--jwt-secret",
            "0123456789abcdef",
            "--allowed-origins",
            "example.com",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("allowed-origins"), "{e}");
        assert!(c.node.worker_threads >= 1);
        let w = parse(&["--jwt-secret", "0123456789abcdef", "--worker-threads", "3"]).unwrap();
        assert_eq!(w.node.worker_threads, 3);
        let e = parse(&["--jwt-secret", "0123456789abcdef", "--worker-threads", "0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("worker-threads"), "{e}");
    }

    #[test]
    fn redis_modes_and_their_errors() {
        const S: [&str; 2] = ["--jwt-secret", "0123456789abcdef"];
        let with = |extra: &[&str]| {
            let mut a = S.to_vec();
            a.extend_from_slice(extra);
            parse(&a)
        };
        let c = with(&[]).unwrap();
        assert!(c.redis.is_none());
        let c = with(&["--redis-url", "redis://a:1"]).unwrap();
        assert_eq!(
            c.redis.map(|r| r.topology),
            Some(publisher::Topology::Standalone("redis://a:1".into()))
        );
        let c = with(&[
            "--redis-url",
            "redis://a:1,redis://b:2",
            "--redis-mode",
            "sharded",
        ])
        .unwrap();
        assert_eq!(
            c.redis.map(|r| r.topology),
            Some(publisher::Topology::Sharded(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
        let c = with(&[
            "--redis-url",
            "redis://a:1",
            "--redis-url",
            "redis://b:2",
            "--redis-mode",
            "cluster",
        ])
        .unwrap();
        assert_eq!(
            c.redis.map(|r| r.topology),
            Some(publisher::Topology::Cluster {
                seeds: vec!["redis://a:1".into(), "redis://b:2".into()],
                partitions: 16
            }),
            "a repeated flag adds URLs"
        );
        let c = with(&[
            "--redis-url",
            "redis://a:1,redis://b:2",
            "--redis-mode",
            "cluster",
            "--redis-cluster-partitions",
            "64",
        ])
        .unwrap();
        assert!(matches!(
            c.redis.map(|r| r.topology),
            Some(publisher::Topology::Cluster { partitions: 64, .. })
        ));
        for (args, setting) in [
            (
                &["--redis-url", "redis://a:1,redis://b:2"][..],
                "redis-mode",
            ),
            (&["--redis-mode", "cluster"][..], "redis-mode"),
            (
                &[
                    "--redis-url",
                    "redis://a:1",
                    "--redis-cluster-partitions",
                    "8",
                ][..],
                "redis-cluster-partitions",
            ),
            (
                &[
                    "--redis-url",
                    "redis://a:1",
                    "--redis-mode",
                    "cluster",
                    "--redis-cluster-partitions",
                    "0",
                ][..],
                "redis-cluster-partitions",
            ),
            (
                &[
                    "--redis-url",
                    "redis://a:1,redis://a:1",
                    "--redis-mode",
                    "sharded",
                ][..],
                "redis-url",
            ),
            (
                &[
                    "--redis-url",
                    "rediss://a:1,redis://b:1",
                    "--redis-mode",
                    "sharded",
                ][..],
                "redis-url",
            ),
            (
                &["--redis-url", "redis://a:1", "--redis-tls-ca", "/x.pem"][..],
                "redis-tls-ca",
            ),
            (
                &[
                    "--redis-url",
                    "rediss://a:1",
                    "--redis-tls-ca",
                    "/nonexistent/ca.pem",
                ][..],
                "redis-tls-ca",
            ),
            (
                &["--redis-url", "redis://a:1", "--redis-sentinel-master", "m"][..],
                "redis-sentinel-master",
            ),
            (
                &[
                    "--redis-url",
                    "redis://a:1",
                    "--redis-mode",
                    "cluster",
                    "--redis-namespace",
                    "a{b}",
                ][..],
                "redis-namespace",
            ),
        ] {
            let e = with(args).unwrap_err().to_string();
            assert!(e.contains(setting), "{args:?}: {e}");
        }
    }

    #[test]
    fn file_fills_what_flags_leave_unset() {
        let dir = std::env::temp_dir().join(format!("tidings-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "jwt-secret = \"0123456789abcdef\"\nheartbeat-interval = \"5s\"\nmax-channels = 7\n",
        )
        .unwrap();
        let c = parse(&["--config", path.to_str().unwrap(), "--max-channels", "9"]).unwrap();
        assert_eq!(c.conn.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.conn.max_channels, 9);
        // Redis URLs in the file: one string (comma-separated) or an array.
        for urls in [
            "\"redis://a:1,redis://b:2\"",
            "[\"redis://a:1\", \"redis://b:2\"]",
        ] {
            std::fs::write(
                &path,
                format!(
                    "jwt-secret = \"0123456789abcdef\"\nredis-url = {urls}\nredis-mode = \"sharded\"\n"
                ),
            )
            .unwrap();
            let c = parse(&["--config", path.to_str().unwrap()]).unwrap();
            assert_eq!(
                c.redis.map(|r| r.topology),
                Some(publisher::Topology::Sharded(vec![
                    "redis://a:1".into(),
                    "redis://b:2".into()
                ]))
            );
        }
        std::fs::write(&path, "no-such-setting = 1\n").unwrap();
        let e = parse(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-setting"), "{e}");
    }
}
