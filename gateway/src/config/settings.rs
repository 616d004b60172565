//! The command line, `TIDINGS_*` environment variables and the TOML file, as given:
//! [`Settings`] holds what was set (flags win over the environment, which wins over
//! the file), and [`defaults`] holds every default that is a value, once: `--help`
//! shows it and [`Settings::get`] parses it like input. [`Config`](super::Config)
//! is built from these and validated.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::{Deserialize, Serialize};

use super::config_err;
use crate::error::GatewayError;

/// Every default that is a value, by setting (its field name), written as a user
/// would write it. Settings missing here have no value by default (a JWT key) or
/// one worked out at startup (the number of worker threads, the node id), which
/// their help describes.
pub fn defaults() -> &'static HashMap<&'static str, String> {
    static DEFAULTS: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    DEFAULTS.get_or_init(|| {
        [
            ("demo", "false".to_owned()),
            ("demo_unsafe", "false".to_owned()),
            ("listen", "0.0.0.0:8080".to_owned()),
            ("listen_backlog", "4096".to_owned()),
            ("admin_listen", "127.0.0.1:9090".to_owned()),
            ("log_format", "human".to_owned()),
            ("log", "info".to_owned()),
            ("jwt_leeway", "5s".to_owned()),
            ("max_connections", "100000".to_owned()),
            ("max_connections_per_user", "32".to_owned()),
            ("max_pending_connections", "4096".to_owned()),
            ("max_channels", "128".to_owned()),
            ("max_message_size", "65536".to_owned()),
            ("max_payload_size", "65536".to_owned()),
            ("max_publish_bytes", "4194304".to_owned()),
            ("outbound_queue", "256".to_owned()),
            ("heartbeat_interval", "30s".to_owned()),
            ("handshake_timeout", "10s".to_owned()),
            ("rate_limit", "50".to_owned()),
            ("rate_burst", "100".to_owned()),
            ("drain_period", "10s".to_owned()),
            ("socket_send_buffer", "65536".to_owned()),
            ("ws_read_buffer", "512".to_owned()),
            ("redis_mode", "standalone".to_owned()),
            (
                "redis_cluster_partitions",
                protocol::topology::DEFAULT_PARTITIONS.to_string(),
            ),
            (
                "redis_namespace",
                protocol::keys::DEFAULT_NAMESPACE.to_owned(),
            ),
            ("redis_subscribers", "2".to_owned()),
            ("redis_unsubscribe_delay", "5s".to_owned()),
            ("redis_probe_interval", "5s".to_owned()),
            ("redis_reconnect_max", "2s".to_owned()),
            ("redis_max_lag", "2s".to_owned()),
            ("redis_connections", "2".to_owned()),
            ("redis_connect_timeout", "3s".to_owned()),
            ("redis_command_timeout", "2s".to_owned()),
            ("redis_keepalive", "60s".to_owned()),
            ("redis_reconnect_min", "100ms".to_owned()),
            ("redis_ready", "any".to_owned()),
            ("redis_tls_insecure", "false".to_owned()),
            ("history", protocol::history::DEFAULT_RULE.to_owned()),
            ("history_max_channels", "100000".to_owned()),
            ("history_max_bytes", "268435456".to_owned()),
            ("idempotency_window", "5m".to_owned()),
            ("recovery_limit", "1000".to_owned()),
            ("replay_page_bytes", "262144".to_owned()),
            ("resume_rate", "5".to_owned()),
            ("resume_burst", "20".to_owned()),
            ("presence_refresh", "5s".to_owned()),
            ("presence_grace", "5s".to_owned()),
            ("presence_online", "true".to_owned()),
            ("presence_last_seen_ttl", "30d".to_owned()),
        ]
        .into_iter()
        .collect()
    })
}

/// A setting's flag name (`max-connections`) from its field name.
pub fn flag_name(field: &str) -> String {
    field.replace('_', "-")
}

/// The value of a setting: what was given, else its default (see [`defaults`]).
/// `setting!(s, max_connections)` names the field once.
macro_rules! setting {
    ($s:expr, $field:ident) => {
        $s.get(&$s.$field, stringify!($field))
    };
}
pub(crate) use setting;

/// A duration written like `30s`, `500ms` or `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(HumanDuration)
            .map_err(|e| format!("`{s}` is not a duration like 30s or 500ms ({e})"))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// When a node with several Redis instances (or cluster partitions) is ready
/// (`--redis-ready`): every one up, at least one, or at least a share of them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ReadyPolicy {
    All,
    Any,
    Fraction(f64),
}

impl ReadyPolicy {
    /// Whether `up` of `total` is enough.
    pub fn ready(self, up: usize, total: usize) -> bool {
        match self {
            ReadyPolicy::All => up == total,
            ReadyPolicy::Any => up > 0,
            ReadyPolicy::Fraction(f) => up > 0 && up as f64 >= f * total as f64 - 1e-9,
        }
    }
}

impl FromStr for ReadyPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" => Ok(ReadyPolicy::All),
            "any" => Ok(ReadyPolicy::Any),
            other => match other.parse::<f64>() {
                Ok(f) if f > 0.0 && f <= 1.0 => Ok(ReadyPolicy::Fraction(f)),
                _ => Err(format!(
                    "`{other}`: expected all, any, or a fraction in (0, 1]"
                )),
            },
        }
    }
}

impl TryFrom<String> for ReadyPolicy {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ReadyPolicy> for String {
    fn from(p: ReadyPolicy) -> String {
        match p {
            ReadyPolicy::All => "all".into(),
            ReadyPolicy::Any => "any".into(),
            ReadyPolicy::Fraction(f) => f.to_string(),
        }
    }
}

/// How the Redis behind the gateways is laid out (`--redis-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One Redis instance.
    Standalone,
    /// Several independent Redis instances; each channel is owned by one.
    Sharded,
    /// A Redis Cluster, with sharded pub/sub.
    Cluster,
    /// One primary with replicas, found and followed through Sentinel.
    Sentinel,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, true)
    }
}

impl FromStr for RedisMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Self as clap::ValueEnum>::from_str(s, true)
    }
}

impl RedisMode {
    pub fn name(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Sharded => "sharded",
            RedisMode::Cluster => "cluster",
            RedisMode::Sentinel => "sentinel",
        }
    }
}

/// A list in the config file: a TOML array, or one string with comma-separated items
/// (like the flag and the environment variable).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
        OneOrMany::One(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
        OneOrMany::Many(v) => v,
    }))
}

/// Command line of the `gateway` binary.
#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "Tidings WebSocket notification gateway",
    args_override_self = true,
    after_help = "Every setting can also come from its TIDINGS_* environment variable or from \
the TOML file named by --config (keys as the long flag names); flags win over the \
environment, which wins over the file.\n\n\
Example (one node on loopback, in-memory broker, demo app at http://127.0.0.1:8080/):\n  \
gateway --jwt-secret dev-secret-change-me --api-keys dev-api-key-change-me \\\n    \
--listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9090 --demo\n\n\
Docs: docs/configuration.md (every setting), docs/protocol.md, docs/operations.md."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print an HS256 development token (for trying the gateway out; never for production).
    MintToken(MintToken),
}

#[derive(Debug, Args)]
pub struct MintToken {
    /// HS256 secret, the same as the gateway's --jwt-secret.
    #[arg(long, env = "TIDINGS_JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// The user id (`sub` claim).
    #[arg(long, default_value = "dev-user")]
    pub sub: String,
    /// Lifetime of the token.
    #[arg(long, default_value = "1h")]
    pub ttl: HumanDuration,
    /// Channel patterns the user may subscribe to (`news`, `room:*`).
    #[arg(long, value_delimiter = ',')]
    pub subscribe: Vec<String>,
    /// Channel patterns the user may publish to.
    #[arg(long, value_delimiter = ',')]
    pub publish: Vec<String>,
    /// Channel patterns whose presence the user may read without subscribing.
    #[arg(long, value_delimiter = ',')]
    pub presence: Vec<String>,
    /// Public information for presence (`info` claim), as JSON, e.g.
    /// '{"name":"Alice"}'.
    #[arg(long)]
    pub info: Option<String>,
}

/// Every setting, as given (unset ones are `None`). Flags override environment
/// variables, which override the file.
#[derive(Debug, Default, Clone, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// TOML file with any of these settings (keys as the long flag names).
    #[arg(long, env = "TIDINGS_CONFIG", help_heading = "Listeners and runtime")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Demo mode: serve the demo app at `/demo/` and mint tokens for demo users at
    /// `POST /demo/token` (needs --jwt-secret). Never in production.
    #[arg(long, env = "TIDINGS_DEMO", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Demo")]
    pub demo: Option<bool>,
    /// Allow --demo next to a Redis broker or on a non-loopback listener: anyone who
    /// reaches the port gets demo tokens (for demo users only).
    #[arg(long, env = "TIDINGS_DEMO_UNSAFE", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Demo")]
    pub demo_unsafe: Option<bool>,
    /// WebSocket and publish API listener.
    #[arg(long, env = "TIDINGS_LISTEN", help_heading = "Listeners and runtime")]
    pub listen: Option<SocketAddr>,
    /// Accept backlog of the public listener (the kernel caps it at net.core.somaxconn).
    #[arg(
        long,
        env = "TIDINGS_LISTEN_BACKLOG",
        help_heading = "Listeners and runtime"
    )]
    pub listen_backlog: Option<u32>,
    /// Threads of the async runtime. [default: the number of CPUs available]
    #[arg(
        long,
        env = "TIDINGS_WORKER_THREADS",
        help_heading = "Listeners and runtime"
    )]
    pub worker_threads: Option<usize>,
    /// Admin listener (/healthz, /readyz, /metrics; unauthenticated, so loopback unless
    /// the orchestrator needs it).
    #[arg(
        long,
        env = "TIDINGS_ADMIN_LISTEN",
        help_heading = "Listeners and runtime"
    )]
    pub admin_listen: Option<SocketAddr>,
    /// Node id shown to clients and in logs. [default: hostname plus a random suffix]
    #[arg(long, env = "TIDINGS_NODE_ID", help_heading = "Listeners and runtime")]
    pub node_id: Option<String>,
    /// Log format: human or json.
    #[arg(long, env = "TIDINGS_LOG_FORMAT", help_heading = "Logging")]
    pub log_format: Option<LogFormat>,
    /// Log filter in tracing's EnvFilter syntax.
    #[arg(long, env = "TIDINGS_LOG", help_heading = "Logging")]
    pub log: Option<String>,

    /// Shared secret (HMAC) for verifying client JWTs: HS256, or HS384/HS512 when
    /// --jwt-algorithms lists them. [default: none]
    #[arg(
        long,
        env = "TIDINGS_JWT_SECRET",
        hide_env_values = true,
        help_heading = "Client authentication (JWT)"
    )]
    pub jwt_secret: Option<String>,
    /// File holding the shared secret of --jwt-secret (trailing newline ignored). [default: none]
    #[arg(
        long,
        env = "TIDINGS_JWT_SECRET_FILE",
        help_heading = "Client authentication (JWT)"
    )]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key files (RSA, EC P-256/P-384 or Ed25519), comma-separated. [default: none]
    #[arg(
        long,
        env = "TIDINGS_JWT_PUBLIC_KEYS",
        value_delimiter = ',',
        help_heading = "Client authentication (JWT)"
    )]
    pub jwt_public_keys: Option<Vec<PathBuf>>,
    /// JWKS file; tokens select a key by `kid`. [default: none]
    #[arg(
        long,
        env = "TIDINGS_JWT_JWKS_FILE",
        help_heading = "Client authentication (JWT)"
    )]
    pub jwt_jwks_file: Option<PathBuf>,
    /// Accepted JWT algorithms, comma-separated (HS256, HS384, HS512, RS256, RS384, RS512,
    /// PS256, PS384, PS512, ES256, ES384, EdDSA). [default: inferred from the configured keys]
    #[arg(
        long,
        env = "TIDINGS_JWT_ALGORITHMS",
        value_delimiter = ',',
        help_heading = "Client authentication (JWT)"
    )]
    pub jwt_algorithms: Option<Vec<String>>,
    /// Required `iss` values, comma-separated. [default: not checked]
    #[arg(
        long,
        env = "TIDINGS_JWT_ISSUER",
        value_delimiter = ',',
        help_heading = "Client authentication (JWT)"
    )]
    pub jwt_issuer: Option<Vec<String>>,
    /// Required `aud` values, comma-separated. [default: not checked]
    #[arg(
        long,
        env = "TIDINGS_JWT_AUDIENCE",
        value_delimiter = ',',
        help_heading = "Client authentication (JWT)"
    )]
    pub jwt_audience: Option<Vec<String>>,
    /// Clock-skew leeway for `exp` and `nbf`.
    #[arg(
        long,
        env = "TIDINGS_JWT_LEEWAY",
        help_heading = "Client authentication (JWT)"
    )]
    pub jwt_leeway: Option<HumanDuration>,

    /// Allowed `Origin` values for browser upgrades, comma-separated; `*` as the first
    /// label of a host matches subdomains (https://*.example.com). [default: any origin]
    #[arg(
        long,
        env = "TIDINGS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        help_heading = "Client authentication (JWT)"
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// API keys for the HTTP publish API, comma-separated. [default: API disabled]
    #[arg(
        long,
        env = "TIDINGS_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true,
        help_heading = "Publish API"
    )]
    pub api_keys: Option<Vec<String>>,
    /// File with one API key per line. [default: none]
    #[arg(long, env = "TIDINGS_API_KEY_FILE", help_heading = "Publish API")]
    pub api_key_file: Option<PathBuf>,

    /// Maximum open WebSocket connections on this node.
    #[arg(
        long,
        env = "TIDINGS_MAX_CONNECTIONS",
        help_heading = "Connections and limits"
    )]
    pub max_connections: Option<usize>,
    /// Maximum connections of one user on this node.
    #[arg(
        long,
        env = "TIDINGS_MAX_CONNECTIONS_PER_USER",
        help_heading = "Connections and limits"
    )]
    pub max_connections_per_user: Option<u32>,
    /// Connections on the public listener that have not upgraded to a WebSocket
    /// (publish API requests, upgrades being authenticated); beyond it new ones get a
    /// 503 and are closed.
    #[arg(
        long,
        env = "TIDINGS_MAX_PENDING_CONNECTIONS",
        help_heading = "Connections and limits"
    )]
    pub max_pending_connections: Option<usize>,
    /// Channels one connection may subscribe to besides its personal and the broadcast
    /// channel (0: none).
    #[arg(
        long,
        env = "TIDINGS_MAX_CHANNELS",
        help_heading = "Connections and limits"
    )]
    pub max_channels: Option<u32>,
    /// Largest inbound WebSocket message in bytes; larger closes with 1009.
    #[arg(
        long,
        env = "TIDINGS_MAX_MESSAGE_SIZE",
        help_heading = "Connections and limits"
    )]
    pub max_message_size: Option<usize>,
    /// Largest publish payload (JSON text) in bytes.
    #[arg(
        long,
        env = "TIDINGS_MAX_PAYLOAD_SIZE",
        help_heading = "Connections and limits"
    )]
    pub max_payload_size: Option<usize>,
    /// Bytes one publish API request may ask Redis to write: the sum over its
    /// messages of targets x payload (a batch counts all of its messages); beyond it
    /// `413 payload_too_large`.
    #[arg(long, env = "TIDINGS_MAX_PUBLISH_BYTES", help_heading = "Publish API")]
    pub max_publish_bytes: Option<usize>,
    /// Outbound frames queued per connection before it is closed as a slow consumer.
    #[arg(
        long,
        env = "TIDINGS_OUTBOUND_QUEUE",
        help_heading = "Connections and limits"
    )]
    pub outbound_queue: Option<usize>,
    /// Interval of server pings; a peer silent for two intervals is closed.
    #[arg(
        long,
        env = "TIDINGS_HEARTBEAT_INTERVAL",
        help_heading = "Connections and limits"
    )]
    pub heartbeat_interval: Option<HumanDuration>,
    /// Time allowed for the HTTP request and upgrade, and how long an idle keep-alive
    /// connection of the publish API stays open.
    #[arg(
        long,
        env = "TIDINGS_HANDSHAKE_TIMEOUT",
        help_heading = "Connections and limits"
    )]
    pub handshake_timeout: Option<HumanDuration>,
    /// Sustained inbound frames per second per connection.
    #[arg(
        long,
        env = "TIDINGS_RATE_LIMIT",
        help_heading = "Connections and limits"
    )]
    pub rate_limit: Option<u32>,
    /// Inbound frames that may arrive back to back (the size of the rate limit's token
    /// bucket).
    #[arg(
        long,
        env = "TIDINGS_RATE_BURST",
        help_heading = "Connections and limits"
    )]
    pub rate_burst: Option<u32>,
    /// Period over which connections are closed (1001) on shutdown.
    #[arg(
        long,
        env = "TIDINGS_DRAIN_PERIOD",
        help_heading = "Connections and limits"
    )]
    pub drain_period: Option<HumanDuration>,
    /// Kernel send buffer per client connection in bytes (SO_SNDBUF; Linux doubles it
    /// for its own bookkeeping): what a client that stops reading can hold of the
    /// node's memory in the kernel before its write stalls. 0 leaves the kernel's
    /// autotuning (up to net.ipv4.tcp_wmem's maximum, often 4 MiB).
    #[arg(
        long,
        env = "TIDINGS_SOCKET_SEND_BUFFER",
        help_heading = "Listeners and runtime"
    )]
    pub socket_send_buffer: Option<usize>,
    /// WebSocket read buffer per connection in bytes (grows for larger frames).
    #[arg(
        long,
        env = "TIDINGS_WS_READ_BUFFER",
        help_heading = "Listeners and runtime"
    )]
    pub ws_read_buffer: Option<usize>,
    /// Redis URL (redis://host:port/db); comma-separated for the instances of sharded mode or
    /// the seed nodes of a cluster. Without it the node runs alone on the in-memory broker. [default: none]
    #[arg(
        long,
        env = "TIDINGS_REDIS_URL",
        hide_env_values = true,
        value_delimiter = ',',
        help_heading = "Redis"
    )]
    #[serde(default, deserialize_with = "one_or_many")]
    pub redis_url: Option<Vec<String>>,
    /// How Redis is laid out: standalone (one instance), sharded (several independent
    /// instances, each channel owned by one), cluster (Redis Cluster, sharded pub/sub) or
    /// sentinel (a primary with replicas; redis-url then lists the sentinels).
    #[arg(long, env = "TIDINGS_REDIS_MODE", help_heading = "Redis")]
    pub redis_mode: Option<RedisMode>,
    /// Partitions of the channels in cluster mode (one pub/sub connection per node each);
    /// the same on every gateway and publisher of a deployment.
    #[arg(long, env = "TIDINGS_REDIS_CLUSTER_PARTITIONS", help_heading = "Redis")]
    pub redis_cluster_partitions: Option<usize>,
    /// Namespace prefixed to every Redis key and channel.
    #[arg(long, env = "TIDINGS_REDIS_NAMESPACE", help_heading = "Redis")]
    pub redis_namespace: Option<String>,
    /// Redis pub/sub connections per node; channels are hashed across them.
    #[arg(long, env = "TIDINGS_REDIS_SUBSCRIBERS", help_heading = "Redis")]
    pub redis_subscribers: Option<usize>,
    /// How long a channel stays subscribed in Redis after its last local subscriber left.
    #[arg(long, env = "TIDINGS_REDIS_UNSUBSCRIBE_DELAY", help_heading = "Redis")]
    pub redis_unsubscribe_delay: Option<HumanDuration>,
    /// Interval of the liveness probe on each subscriber connection; a probe not back
    /// within one interval replaces the connection.
    #[arg(long, env = "TIDINGS_REDIS_PROBE_INTERVAL", help_heading = "Redis")]
    pub redis_probe_interval: Option<HumanDuration>,
    /// Longest wait between Redis reconnect attempts (exponential backoff with jitter).
    #[arg(long, env = "TIDINGS_REDIS_RECONNECT_MAX", help_heading = "Redis")]
    pub redis_reconnect_max: Option<HumanDuration>,
    /// How far behind a Redis subscriber connection may read (its liveness probe's
    /// round trip) before the node reports itself not ready.
    #[arg(long, env = "TIDINGS_REDIS_MAX_LAG", help_heading = "Redis")]
    pub redis_max_lag: Option<HumanDuration>,
    /// Multiplexed command connections per Redis instance for publishing, and as many
    /// for reads (history, positions, acks); the liveness probes have one more. Each
    /// carries any number of requests at once.
    #[arg(long, env = "TIDINGS_REDIS_CONNECTIONS", help_heading = "Redis")]
    pub redis_connections: Option<usize>,
    /// Sentinel mode: the master name the sentinels monitor. [default: none]
    #[arg(long, env = "TIDINGS_REDIS_SENTINEL_MASTER", help_heading = "Redis")]
    pub redis_sentinel_master: Option<String>,
    /// Sentinel mode: file holding the sentinels' password (when their URLs carry
    /// none). [default: none]
    #[arg(
        long,
        env = "TIDINGS_REDIS_SENTINEL_PASSWORD_FILE",
        help_heading = "Redis"
    )]
    pub redis_sentinel_password_file: Option<PathBuf>,
    /// ACL user for the Redis data nodes, in place of one in redis-url. [default: none]
    #[arg(long, env = "TIDINGS_REDIS_USERNAME", help_heading = "Redis")]
    pub redis_username: Option<String>,
    /// File holding the Redis password (e.g. a mounted secret), in place of one in
    /// redis-url; one trailing newline is ignored. [default: none]
    #[arg(long, env = "TIDINGS_REDIS_PASSWORD_FILE", help_heading = "Redis")]
    pub redis_password_file: Option<PathBuf>,
    /// PEM bundle of the CAs that sign the Redis servers' certificates (rediss:// URLs).
    /// [default: the system's roots]
    #[arg(long, env = "TIDINGS_REDIS_TLS_CA", help_heading = "Redis")]
    pub redis_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for Redis servers that require one (mutual TLS); needs
    /// redis-tls-key. [default: none]
    #[arg(long, env = "TIDINGS_REDIS_TLS_CERT", help_heading = "Redis")]
    pub redis_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM). [default: none]
    #[arg(long, env = "TIDINGS_REDIS_TLS_KEY", help_heading = "Redis")]
    pub redis_tls_key: Option<PathBuf>,
    /// The name the Redis servers' certificates must carry, when it is not the host in
    /// redis-url (not in cluster mode). [default: the host of the URL]
    #[arg(long, env = "TIDINGS_REDIS_TLS_SERVER_NAME", help_heading = "Redis")]
    pub redis_tls_server_name: Option<String>,
    /// Accept any Redis server certificate. Development only: logged as a warning at
    /// startup.
    #[arg(long, env = "TIDINGS_REDIS_TLS_INSECURE", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Redis")]
    pub redis_tls_insecure: Option<bool>,
    /// Upper bound for opening one Redis connection: TCP, TLS and authentication.
    #[arg(long, env = "TIDINGS_REDIS_CONNECT_TIMEOUT", help_heading = "Redis")]
    pub redis_connect_timeout: Option<HumanDuration>,
    /// Upper bound for one Redis command (a publish, a history read, an ack); past it
    /// the request fails as unavailable and the connection is replaced.
    #[arg(long, env = "TIDINGS_REDIS_COMMAND_TIMEOUT", help_heading = "Redis")]
    pub redis_command_timeout: Option<HumanDuration>,
    /// TCP keepalive idle time on Redis connections (0s: off).
    #[arg(long, env = "TIDINGS_REDIS_KEEPALIVE", help_heading = "Redis")]
    pub redis_keepalive: Option<HumanDuration>,
    /// First wait before a Redis subscriber connection is opened again; doubles up to
    /// redis-reconnect-max.
    #[arg(long, env = "TIDINGS_REDIS_RECONNECT_MIN", help_heading = "Redis")]
    pub redis_reconnect_min: Option<HumanDuration>,
    /// When the node is ready with several Redis instances or partitions: all (every one
    /// reachable), any (at least one) or a fraction such as 0.5 (at least that share).
    #[arg(long, env = "TIDINGS_REDIS_READY", help_heading = "Redis")]
    pub redis_ready: Option<ReadyPolicy>,
    /// History rules, comma-separated, first match wins: `<pattern> <max-len> <ttl>
    /// [<max-channels>]` or `<pattern> off`; `$user:*` covers personal channels. Publishers must use the
    /// same rules.
    #[arg(
        long,
        env = "TIDINGS_HISTORY",
        value_delimiter = ',',
        help_heading = "History and recovery"
    )]
    pub history: Option<Vec<String>>,
    /// History channels each history rule may have at once (a rule's own
    /// `<max-channels>` wins; personal channels are exempt unless their rule sets one):
    /// a publish that would start one more is refused with `quota_exceeded`.
    #[arg(
        long,
        env = "TIDINGS_HISTORY_MAX_CHANNELS",
        help_heading = "History and recovery"
    )]
    pub history_max_channels: Option<u64>,
    /// Bytes of history the in-memory broker keeps in all (single node); a publish
    /// that would keep more is refused with `quota_exceeded`.
    #[arg(
        long,
        env = "TIDINGS_HISTORY_MAX_BYTES",
        help_heading = "History and recovery"
    )]
    pub history_max_bytes: Option<usize>,
    /// How long a message id is remembered to drop retried publishes.
    #[arg(
        long,
        env = "TIDINGS_IDEMPOTENCY_WINDOW",
        help_heading = "History and recovery"
    )]
    pub idempotency_window: Option<HumanDuration>,
    /// Most messages replayed when a client resumes one channel; beyond that the
    /// client is told it was not fully recovered.
    #[arg(
        long,
        env = "TIDINGS_RECOVERY_LIMIT",
        help_heading = "History and recovery"
    )]
    pub recovery_limit: Option<usize>,
    /// Bytes of history one connection holds at a time while replaying (a resume, a
    /// subscribe with history, a gap fill): history is read in pages of at most this
    /// size (one entry at least), each written to the client before the next is read.
    #[arg(
        long,
        env = "TIDINGS_REPLAY_PAGE_BYTES",
        help_heading = "History and recovery"
    )]
    pub replay_page_bytes: Option<usize>,
    /// History reads a connection may start per second (subscribes with history,
    /// resumes, gap fills), sustained; beyond it a subscribe is refused with
    /// `rate_limited` and a gap fill waits.
    #[arg(
        long,
        env = "TIDINGS_RESUME_RATE",
        help_heading = "History and recovery"
    )]
    pub resume_rate: Option<u32>,
    /// History reads a connection may start at once above the sustained rate.
    #[arg(
        long,
        env = "TIDINGS_RESUME_BURST",
        help_heading = "History and recovery"
    )]
    pub resume_burst: Option<u32>,
    /// Presence rules, first match wins: `"<pattern> [events] [max=<members>]"` or
    /// `"<pattern> off"` (e.g. `room:* events max=5000`). `events` sends join and
    /// leave (`presence_diff`) frames to the channel's subscribers; `max` caps the
    /// members listed (default 10000). None by default; `room:* events` with --demo.
    #[arg(
        long,
        env = "TIDINGS_PRESENCE",
        value_delimiter = ',',
        help_heading = "Presence"
    )]
    pub presence: Option<Vec<String>>,
    /// How often a node refreshes its presence and online entries in Redis; entries
    /// live twice as long, so a crashed node's members are gone within 2x this.
    #[arg(long, env = "TIDINGS_PRESENCE_REFRESH", help_heading = "Presence")]
    pub presence_refresh: Option<HumanDuration>,
    /// How long after a user's last connection to a channel went their leave is
    /// announced: a reconnect (to any node) within it shows neither leave nor join.
    #[arg(long, env = "TIDINGS_PRESENCE_GRACE", help_heading = "Presence")]
    pub presence_grace: Option<HumanDuration>,
    /// Keep each user's online status and last-seen time (API `/api/v1/online`).
    #[arg(long, env = "TIDINGS_PRESENCE_ONLINE", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Presence")]
    pub presence_online: Option<bool>,
    /// How long a user's last-seen time is kept after they were last connected.
    #[arg(
        long,
        env = "TIDINGS_PRESENCE_LAST_SEEN_TTL",
        help_heading = "Presence"
    )]
    pub presence_last_seen_ttl: Option<HumanDuration>,
}

impl Cli {
    /// The command line with each default shown in its setting's help.
    pub fn command_with_defaults() -> clap::Command {
        let mut cmd = Self::command();
        for (field, value) in defaults() {
            cmd = cmd.mut_arg(*field, |a| {
                let with = |h: Option<&clap::builder::StyledStr>| {
                    format!(
                        "{} [default: {value}]",
                        h.map(|h| h.to_string()).unwrap_or_default()
                    )
                };
                let help = with(a.get_help());
                let long = a.get_long_help().map(|l| with(Some(l)));
                let a = a.help(help);
                match long {
                    Some(l) => a.long_help(l),
                    None => a,
                }
            });
        }
        cmd
    }

    /// Parses the process's arguments (and environment); exits with clap's message
    /// (and status 2) on a malformed command line, as `Parser::parse` does.
    pub fn parse_args() -> Self {
        let matches = Self::command_with_defaults().get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

impl Settings {
    /// Fills unset values from the config file named by `--config`, if any: the
    /// file is read as settings too, and whatever flags and environment left unset
    /// comes from it.
    pub fn with_file(self) -> Result<Self, GatewayError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| config_err("config", format!("cannot read {}: {e}", path.display())))?;
        let file: Settings = toml::from_str(&text)
            .map_err(|e| config_err("config", format!("{}: {e}", path.display())))?;
        let merge = || -> Result<Settings, serde_json::Error> {
            let serde_json::Value::Object(mut merged) = serde_json::to_value(&file)? else {
                return Ok(self.clone());
            };
            if let serde_json::Value::Object(given) = serde_json::to_value(&self)? {
                for (k, v) in given.into_iter().filter(|(_, v)| !v.is_null()) {
                    merged.insert(k, v);
                }
            }
            let mut out: Settings = serde_json::from_value(serde_json::Value::Object(merged))?;
            out.config = self.config.clone();
            Ok(out)
        };
        merge().map_err(|e| config_err("config", format!("{}: {e}", path.display())))
    }

    /// `value` if given, else the setting's default parsed like input; use through
    /// [`setting!`], which names the field once.
    pub fn get<T>(&self, value: &Option<T>, field: &'static str) -> Result<T, GatewayError>
    where
        T: FromStr + Clone,
        T::Err: std::fmt::Display,
    {
        if let Some(v) = value {
            return Ok(v.clone());
        }
        let text = defaults()
            .get(field)
            .ok_or_else(|| config_err(flag_name(field), "has no default and was not given"))?;
        text.parse()
            .map_err(|e| config_err(flag_name(field), format!("default `{text}`: {e}")))
    }

    /// A list setting: what was given, else its default split at commas.
    pub fn list(&self, value: &Option<Vec<String>>, field: &'static str) -> Vec<String> {
        match value {
            Some(v) => v.clone(),
            None => defaults()
                .get(field)
                .map(|d| d.split(',').map(|p| p.trim().to_owned()).collect())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_names_a_flag_and_parses() {
        let cmd = Cli::command_with_defaults();
        for (field, value) in defaults() {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id() == *field)
                .unwrap_or_else(|| panic!("default for unknown setting {field}"));
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(
                help.ends_with(&format!("[default: {value}]")),
                "{field}: {help}"
            );
        }
        // Parsed like input, through the same types the flags use.
        let s = Settings::default();
        super::super::Config::from_settings(Settings {
            jwt_secret: Some("0123456789abcdef".into()),
            ..s
        })
        .unwrap_or_else(|e| panic!("{e}"));
    }
}
