//! Configuration: one typed [`Config`], built from CLI flags, `TIDINGS_*` environment
//! variables and an optional TOML file (in that order of precedence), validated at
//! startup so a bad value fails fast with the setting's name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use protocol::history::HistoryRules;
use serde::Deserialize;

use crate::GatewayError;

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

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// How the Redis behind the gateways is laid out (`--redis-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One Redis instance.
    Standalone,
    /// Several independent Redis instances; each channel is owned by one.
    Sharded,
    /// A Redis Cluster, with sharded pub/sub.
    Cluster,
}

impl RedisMode {
    pub fn name(self) -> &'static str {
        match self {
            RedisMode::Standalone => "standalone",
            RedisMode::Sharded => "sharded",
            RedisMode::Cluster => "cluster",
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
    Ok(Some(match OneOrMany::deserialize(d)? {
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
}

/// Every setting, as given (unset ones are `None`). Flags override environment
/// variables, which override the file.
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// TOML file with any of these settings (keys as the long flag names).
    #[arg(long, env = "TIDINGS_CONFIG", help_heading = "Listeners and runtime")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Demo mode: serve the demo app at `/demo/` and mint tokens for demo users at
    /// `POST /demo/token` (needs --jwt-secret). Never in production. [default: false]
    #[arg(long, env = "TIDINGS_DEMO", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Demo")]
    pub demo: Option<bool>,
    /// Allow --demo next to a Redis broker or on a non-loopback listener: anyone who
    /// reaches the port gets demo tokens (for demo users only). [default: false]
    #[arg(long, env = "TIDINGS_DEMO_UNSAFE", num_args = 0..=1, default_missing_value = "true", require_equals = true, help_heading = "Demo")]
    pub demo_unsafe: Option<bool>,
    /// WebSocket and publish API listener. [default: 0.0.0.0:8080]
    #[arg(long, env = "TIDINGS_LISTEN", help_heading = "Listeners and runtime")]
    pub listen: Option<SocketAddr>,
    /// Accept backlog of the public listener (the kernel caps it at net.core.somaxconn). [default: 4096]
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
    /// the orchestrator needs it). [default: 127.0.0.1:9090]
    #[arg(
        long,
        env = "TIDINGS_ADMIN_LISTEN",
        help_heading = "Listeners and runtime"
    )]
    pub admin_listen: Option<SocketAddr>,
    /// Node id shown to clients and in logs. [default: hostname plus a random suffix]
    #[arg(long, env = "TIDINGS_NODE_ID", help_heading = "Listeners and runtime")]
    pub node_id: Option<String>,
    /// Log format: human or json. [default: human]
    #[arg(long, env = "TIDINGS_LOG_FORMAT", help_heading = "Logging")]
    pub log_format: Option<LogFormat>,
    /// Log filter in tracing's EnvFilter syntax. [default: info]
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
    /// Clock-skew leeway for `exp` and `nbf`. [default: 5s]
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

    /// Maximum open WebSocket connections on this node. [default: 100000]
    #[arg(
        long,
        env = "TIDINGS_MAX_CONNECTIONS",
        help_heading = "Connections and limits"
    )]
    pub max_connections: Option<usize>,
    /// Maximum connections of one user on this node. [default: 32]
    #[arg(
        long,
        env = "TIDINGS_MAX_CONNECTIONS_PER_USER",
        help_heading = "Connections and limits"
    )]
    pub max_connections_per_user: Option<u32>,
    /// Connections on the public listener that have not upgraded to a WebSocket
    /// (publish API requests, upgrades being authenticated); beyond it new ones get a
    /// 503 and are closed. [default: 4096]
    #[arg(
        long,
        env = "TIDINGS_MAX_PENDING_CONNECTIONS",
        help_heading = "Connections and limits"
    )]
    pub max_pending_connections: Option<usize>,
    /// Channels one connection may subscribe to besides its personal and the broadcast
    /// channel (0: none). [default: 128]
    #[arg(
        long,
        env = "TIDINGS_MAX_CHANNELS",
        help_heading = "Connections and limits"
    )]
    pub max_channels: Option<u32>,
    /// Largest inbound WebSocket message in bytes; larger closes with 1009. [default: 65536]
    #[arg(
        long,
        env = "TIDINGS_MAX_MESSAGE_SIZE",
        help_heading = "Connections and limits"
    )]
    pub max_message_size: Option<usize>,
    /// Largest publish payload (JSON text) in bytes. [default: 65536]
    #[arg(
        long,
        env = "TIDINGS_MAX_PAYLOAD_SIZE",
        help_heading = "Connections and limits"
    )]
    pub max_payload_size: Option<usize>,
    /// Bytes one publish API request may ask Redis to write: the sum over its
    /// messages of targets x payload (a batch counts all of its messages); beyond it
    /// `413 payload_too_large`. [default: 4194304]
    #[arg(long, env = "TIDINGS_MAX_PUBLISH_BYTES", help_heading = "Publish API")]
    pub max_publish_bytes: Option<usize>,
    /// Outbound frames queued per connection before it is closed as a slow consumer. [default: 256]
    #[arg(
        long,
        env = "TIDINGS_OUTBOUND_QUEUE",
        help_heading = "Connections and limits"
    )]
    pub outbound_queue: Option<usize>,
    /// Interval of server pings; a peer silent for two intervals is closed. [default: 30s]
    #[arg(
        long,
        env = "TIDINGS_HEARTBEAT_INTERVAL",
        help_heading = "Connections and limits"
    )]
    pub heartbeat_interval: Option<HumanDuration>,
    /// Time allowed for the HTTP request and upgrade, and how long an idle keep-alive
    /// connection of the publish API stays open. [default: 10s]
    #[arg(
        long,
        env = "TIDINGS_HANDSHAKE_TIMEOUT",
        help_heading = "Connections and limits"
    )]
    pub handshake_timeout: Option<HumanDuration>,
    /// Sustained inbound frames per second per connection. [default: 50]
    #[arg(
        long,
        env = "TIDINGS_RATE_LIMIT",
        help_heading = "Connections and limits"
    )]
    pub rate_limit: Option<u32>,
    /// Inbound frames that may arrive back to back (the size of the rate limit's token
    /// bucket). [default: 100]
    #[arg(
        long,
        env = "TIDINGS_RATE_BURST",
        help_heading = "Connections and limits"
    )]
    pub rate_burst: Option<u32>,
    /// Period over which connections are closed (1001) on shutdown. [default: 10s]
    #[arg(
        long,
        env = "TIDINGS_DRAIN_PERIOD",
        help_heading = "Connections and limits"
    )]
    pub drain_period: Option<HumanDuration>,
    /// Kernel send buffer per client connection in bytes (SO_SNDBUF; Linux doubles it
    /// for its own bookkeeping): what a client that stops reading can hold of the
    /// node's memory in the kernel before its write stalls. 0 leaves the kernel's
    /// autotuning (up to net.ipv4.tcp_wmem's maximum, often 4 MiB). [default: 65536]
    #[arg(
        long,
        env = "TIDINGS_SOCKET_SEND_BUFFER",
        help_heading = "Listeners and runtime"
    )]
    pub socket_send_buffer: Option<usize>,
    /// WebSocket read buffer per connection in bytes (grows for larger frames). [default: 512]
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
    /// instances, each channel owned by one) or cluster (Redis Cluster, sharded pub/sub). [default: standalone]
    #[arg(long, env = "TIDINGS_REDIS_MODE", help_heading = "Redis")]
    pub redis_mode: Option<RedisMode>,
    /// Partitions of the channels in cluster mode (one pub/sub connection per node each);
    /// the same on every gateway and publisher of a deployment. [default: 16]
    #[arg(long, env = "TIDINGS_REDIS_CLUSTER_PARTITIONS", help_heading = "Redis")]
    pub redis_cluster_partitions: Option<usize>,
    /// Namespace prefixed to every Redis key and channel. [default: tidings]
    #[arg(long, env = "TIDINGS_REDIS_NAMESPACE", help_heading = "Redis")]
    pub redis_namespace: Option<String>,
    /// Redis pub/sub connections per node; channels are hashed across them. [default: 2]
    #[arg(long, env = "TIDINGS_REDIS_SUBSCRIBERS", help_heading = "Redis")]
    pub redis_subscribers: Option<usize>,
    /// How long a channel stays subscribed in Redis after its last local subscriber left. [default: 5s]
    #[arg(long, env = "TIDINGS_REDIS_UNSUBSCRIBE_DELAY", help_heading = "Redis")]
    pub redis_unsubscribe_delay: Option<HumanDuration>,
    /// Interval of the liveness probe on each subscriber connection; a probe not back
    /// within one interval replaces the connection. [default: 5s]
    #[arg(long, env = "TIDINGS_REDIS_PROBE_INTERVAL", help_heading = "Redis")]
    pub redis_probe_interval: Option<HumanDuration>,
    /// Longest wait between Redis reconnect attempts (exponential backoff with jitter). [default: 2s]
    #[arg(long, env = "TIDINGS_REDIS_RECONNECT_MAX", help_heading = "Redis")]
    pub redis_reconnect_max: Option<HumanDuration>,
    /// How far behind a Redis subscriber connection may read (its liveness probe's
    /// round trip) before the node reports itself not ready. [default: 2s]
    #[arg(long, env = "TIDINGS_REDIS_MAX_LAG", help_heading = "Redis")]
    pub redis_max_lag: Option<HumanDuration>,
    /// Multiplexed command connections per Redis instance for publishing, and as many
    /// for reads (history, positions, acks); the liveness probes have one more. Each
    /// carries any number of requests at once. [default: 2]
    #[arg(long, env = "TIDINGS_REDIS_CONNECTIONS", help_heading = "Redis")]
    pub redis_connections: Option<usize>,
    /// History rules, comma-separated, first match wins: `<pattern> <max-len> <ttl>
    /// [<max-channels>]` or `<pattern> off`; `$user:*` covers personal channels. Publishers must use the
    /// same rules. [default: "$user:* 100 24h"]
    #[arg(
        long,
        env = "TIDINGS_HISTORY",
        value_delimiter = ',',
        help_heading = "History and recovery"
    )]
    pub history: Option<Vec<String>>,
    /// History channels each history rule may have at once (a rule's own
    /// `<max-channels>` wins; personal channels are exempt unless their rule sets one):
    /// a publish that would start one more is refused with `quota_exceeded`. [default: 100000]
    #[arg(
        long,
        env = "TIDINGS_HISTORY_MAX_CHANNELS",
        help_heading = "History and recovery"
    )]
    pub history_max_channels: Option<u64>,
    /// Bytes of history the in-memory broker keeps in all (single node); a publish
    /// that would keep more is refused with `quota_exceeded`. [default: 268435456]
    #[arg(
        long,
        env = "TIDINGS_HISTORY_MAX_BYTES",
        help_heading = "History and recovery"
    )]
    pub history_max_bytes: Option<usize>,
    /// How long a message id is remembered to drop retried publishes. [default: 5m]
    #[arg(
        long,
        env = "TIDINGS_IDEMPOTENCY_WINDOW",
        help_heading = "History and recovery"
    )]
    pub idempotency_window: Option<HumanDuration>,
    /// Most messages replayed when a client resumes one channel; beyond that the
    /// client is told it was not fully recovered. [default: 1000]
    #[arg(
        long,
        env = "TIDINGS_RECOVERY_LIMIT",
        help_heading = "History and recovery"
    )]
    pub recovery_limit: Option<usize>,
    /// Bytes of history one connection holds at a time while replaying (a resume, a
    /// subscribe with history, a gap fill): history is read in pages of at most this
    /// size (one entry at least), each written to the client before the next is read. [default: 262144]
    #[arg(
        long,
        env = "TIDINGS_REPLAY_PAGE_BYTES",
        help_heading = "History and recovery"
    )]
    pub replay_page_bytes: Option<usize>,
    /// History reads a connection may start per second (subscribes with history,
    /// resumes, gap fills), sustained; beyond it a subscribe is refused with
    /// `rate_limited` and a gap fill waits. [default: 5]
    #[arg(
        long,
        env = "TIDINGS_RESUME_RATE",
        help_heading = "History and recovery"
    )]
    pub resume_rate: Option<u32>,
    /// History reads a connection may start at once above the sustained rate. [default: 20]
    #[arg(
        long,
        env = "TIDINGS_RESUME_BURST",
        help_heading = "History and recovery"
    )]
    pub resume_burst: Option<u32>,
}

macro_rules! merge {
    ($hi:expr, $lo:expr, $($f:ident),* $(,)?) => {
        $( if $hi.$f.is_none() { $hi.$f = $lo.$f.take(); } )*
    };
}

impl Settings {
    /// Fills unset values from the config file named by `--config`, if any.
    pub fn with_file(mut self) -> Result<Self, GatewayError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| config_err("config", format!("cannot read {}: {e}", path.display())))?;
        let mut file: Settings = toml::from_str(&text)
            .map_err(|e| config_err("config", format!("{}: {e}", path.display())))?;
        merge!(
            self,
            file,
            listen,
            listen_backlog,
            worker_threads,
            admin_listen,
            node_id,
            log_format,
            log,
            jwt_secret,
            jwt_secret_file,
            jwt_public_keys,
            jwt_jwks_file,
            jwt_algorithms,
            jwt_issuer,
            jwt_audience,
            jwt_leeway,
            allowed_origins,
            api_keys,
            api_key_file,
            max_connections,
            max_connections_per_user,
            max_pending_connections,
            max_channels,
            max_message_size,
            max_payload_size,
            max_publish_bytes,
            outbound_queue,
            heartbeat_interval,
            handshake_timeout,
            rate_limit,
            rate_burst,
            drain_period,
            socket_send_buffer,
            ws_read_buffer,
            redis_url,
            redis_mode,
            redis_cluster_partitions,
            redis_namespace,
            redis_subscribers,
            redis_unsubscribe_delay,
            redis_probe_interval,
            redis_reconnect_max,
            redis_max_lag,
            redis_connections,
            history,
            history_max_channels,
            history_max_bytes,
            idempotency_window,
            recovery_limit,
            demo_unsafe,
            replay_page_bytes,
            resume_rate,
            resume_burst,
            demo,
        );
        Ok(self)
    }
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

/// History rules in demo mode when none are configured (the demo's rooms replay
/// what was said before one joined).
const DEMO_HISTORY: [&str; 2] = ["$user:* 100 24h", "room:* 100 1h"];

/// The validated configuration of one gateway node.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub listen_backlog: u32,
    pub worker_threads: usize,
    pub admin_listen: SocketAddr,
    pub node_id: String,
    pub log_format: LogFormat,
    pub log: String,
    pub jwt: JwtConfig,
    pub allowed_origins: Vec<String>,
    pub api_keys: Vec<String>,
    pub max_connections: usize,
    pub max_connections_per_user: u32,
    pub max_pending_connections: usize,
    pub max_channels: u32,
    pub max_message_size: usize,
    pub max_payload_size: usize,
    pub max_publish_bytes: usize,
    pub outbound_queue: usize,
    pub heartbeat_interval: Duration,
    pub handshake_timeout: Duration,
    pub rate_limit: u32,
    pub rate_burst: u32,
    pub drain_period: Duration,
    /// SO_SNDBUF of client sockets (0: the kernel's autotuning).
    pub socket_send_buffer: usize,
    pub ws_read_buffer: usize,
    /// Where Redis lives (`None`: in-memory broker, single node).
    pub redis: Option<publisher::Topology>,
    pub redis_mode: RedisMode,
    pub redis_namespace: String,
    pub redis_subscribers: usize,
    pub redis_unsubscribe_delay: Duration,
    pub redis_probe_interval: Duration,
    pub redis_reconnect_max: Duration,
    pub redis_max_lag: Duration,
    pub redis_connections: usize,
    pub history: HistoryRules,
    /// Bytes of history the memory broker keeps in all.
    pub history_max_bytes: usize,
    /// Serve the demo app and mint demo tokens.
    pub demo: bool,
    pub idempotency_window: Duration,
    pub recovery_limit: usize,
    pub replay_page_bytes: usize,
    pub resume_rate: u32,
    pub resume_burst: u32,
}

fn config_err(setting: &'static str, message: impl Into<String>) -> GatewayError {
    GatewayError::Config {
        setting,
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

/// The Redis topology from `redis-url`, `redis-mode` and `redis-cluster-partitions`.
fn redis_topology(
    s: &Settings,
    namespace: &str,
) -> Result<(Option<publisher::Topology>, RedisMode), GatewayError> {
    let urls: Vec<String> = s
        .redis_url
        .iter()
        .flatten()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let mode = s.redis_mode.unwrap_or(RedisMode::Standalone);
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
        return Ok((None, mode));
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
            let partitions = s
                .redis_cluster_partitions
                .unwrap_or(protocol::topology::DEFAULT_PARTITIONS);
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
    Ok((Some(topology), mode))
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
    /// Parses the process arguments and environment (and the file they name).
    pub fn from_settings(s: Settings) -> Result<Self, GatewayError> {
        let s = s.with_file()?;
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
            leeway: s.jwt_leeway.map(|d| d.0).unwrap_or(Duration::from_secs(5)),
        };
        if jwt.secret.is_none() && jwt.public_keys.is_empty() && jwt.jwks_file.is_none() {
            return Err(config_err(
                "jwt-secret",
                "no JWT key configured: set jwt-secret, jwt-secret-file, jwt-public-keys or jwt-jwks-file",
            ));
        }
        let mut api_keys = s.api_keys.clone().unwrap_or_default();
        if let Some(path) = &s.api_key_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                config_err(
                    "api-key-file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
        api_keys.retain(|k| !k.is_empty());
        if api_keys.iter().any(|k| k.len() < 16) {
            return Err(config_err(
                "api-keys",
                "every API key must be at least 16 characters",
            ));
        }
        let node_id = s.node_id.clone().unwrap_or_else(default_node_id);
        protocol::channel::validate_user(&node_id)
            .map_err(|e| config_err("node-id", e.to_string()))?;
        let allowed_origins = s.allowed_origins.clone().unwrap_or_default();
        for o in &allowed_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) {
                return Err(config_err(
                    "allowed-origins",
                    format!("`{o}` must start with http:// or https://"),
                ));
            }
        }
        let redis_namespace = s
            .redis_namespace
            .clone()
            .unwrap_or_else(|| protocol::keys::DEFAULT_NAMESPACE.to_owned());
        if redis_namespace.is_empty() || redis_namespace.contains(char::is_whitespace) {
            return Err(config_err(
                "redis-namespace",
                "must be non-empty without spaces",
            ));
        }
        let (redis, redis_mode) = redis_topology(&s, &redis_namespace)?;
        let demo = s.demo.unwrap_or(false);
        if demo && jwt.secret.is_none() {
            return Err(config_err(
                "demo",
                "demo mode mints HS256 tokens and needs --jwt-secret",
            ));
        }
        // Demo mode listens on loopback unless told otherwise, and refuses what
        // would hand its tokens to the world unless that is said to be intended.
        let loopback =
            |a: SocketAddr| SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), a.port());
        let default_listen: SocketAddr = ([0, 0, 0, 0], 8080).into();
        let listen = match s.listen {
            Some(l) => l,
            None if demo => loopback(default_listen),
            None => default_listen,
        };
        if demo && !s.demo_unsafe.unwrap_or(false) {
            if redis.is_some() {
                return Err(config_err(
                    "demo",
                    "demo mode next to a Redis broker would hand tokens to anyone who reaches any node; add --demo-unsafe if that is intended",
                ));
            }
            if !listen.ip().is_loopback() {
                return Err(config_err(
                    "demo",
                    "demo mode on a non-loopback address hands tokens to anyone who reaches it; listen on 127.0.0.1 or add --demo-unsafe",
                ));
            }
        }
        let max_message_size =
            positive(s.max_message_size.unwrap_or(64 * 1024), "max-message-size")?;
        if max_message_size < 256 {
            return Err(config_err("max-message-size", "must be at least 256 bytes"));
        }
        let heartbeat_interval = s
            .heartbeat_interval
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30));
        if heartbeat_interval < Duration::from_millis(100) {
            return Err(config_err("heartbeat-interval", "must be at least 100ms"));
        }
        Ok(Config {
            listen,
            listen_backlog: positive(s.listen_backlog.unwrap_or(4096), "listen-backlog")?,
            worker_threads: match s.worker_threads {
                Some(n) if !(1..=1024).contains(&n) => {
                    return Err(config_err("worker-threads", "must be 1..=1024"));
                }
                Some(n) => n,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            admin_listen: s.admin_listen.unwrap_or(([127, 0, 0, 1], 9090).into()),
            node_id,
            log_format: s.log_format.unwrap_or(LogFormat::Human),
            log: s.log.clone().unwrap_or_else(|| "info".to_owned()),
            jwt,
            allowed_origins,
            api_keys,
            max_connections: positive(s.max_connections.unwrap_or(100_000), "max-connections")?,
            max_connections_per_user: positive(
                s.max_connections_per_user.unwrap_or(32),
                "max-connections-per-user",
            )?,
            max_pending_connections: positive(
                s.max_pending_connections.unwrap_or(4096),
                "max-pending-connections",
            )?,
            max_channels: s.max_channels.unwrap_or(128),
            max_message_size,
            max_payload_size: positive(
                s.max_payload_size.unwrap_or(64 * 1024),
                "max-payload-size",
            )?,
            max_publish_bytes: positive(
                s.max_publish_bytes.unwrap_or(4 << 20),
                "max-publish-bytes",
            )?,
            outbound_queue: positive(s.outbound_queue.unwrap_or(256), "outbound-queue")?,
            heartbeat_interval,
            handshake_timeout: positive(
                s.handshake_timeout
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(10)),
                "handshake-timeout",
            )?,
            rate_limit: positive(s.rate_limit.unwrap_or(50), "rate-limit")?,
            rate_burst: positive(s.rate_burst.unwrap_or(100), "rate-burst")?,
            drain_period: s
                .drain_period
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(10)),
            socket_send_buffer: s.socket_send_buffer.unwrap_or(64 * 1024),
            ws_read_buffer: s.ws_read_buffer.unwrap_or(512).max(64),
            redis,
            redis_mode,
            redis_namespace,
            redis_subscribers: positive(s.redis_subscribers.unwrap_or(2), "redis-subscribers")?,
            redis_unsubscribe_delay: s
                .redis_unsubscribe_delay
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(5)),
            redis_probe_interval: positive(
                s.redis_probe_interval
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(5)),
                "redis-probe-interval",
            )?,
            redis_reconnect_max: positive(
                s.redis_reconnect_max
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(2)),
                "redis-reconnect-max",
            )?,
            redis_max_lag: positive(
                s.redis_max_lag
                    .map(|d| d.0)
                    .unwrap_or(Duration::from_secs(2)),
                "redis-max-lag",
            )?,
            redis_connections: positive(s.redis_connections.unwrap_or(2), "redis-connections")?,
            demo,
            history: match &s.history {
                None if demo => HistoryRules::parse(DEMO_HISTORY.iter())
                    .map_err(|e| config_err("history", e))?,
                None => HistoryRules::default(),
                Some(rules) => HistoryRules::parse(rules.iter().filter(|r| !r.trim().is_empty()))
                    .map_err(|e| config_err("history", e))?,
            }
            .with_default_budget(s.history_max_channels.unwrap_or(100_000)),
            history_max_bytes: positive(
                s.history_max_bytes.unwrap_or(256 << 20),
                "history-max-bytes",
            )?,
            idempotency_window: s
                .idempotency_window
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(300)),
            recovery_limit: positive(s.recovery_limit.unwrap_or(1000), "recovery-limit")?,
            replay_page_bytes: positive(
                s.replay_page_bytes.unwrap_or(256 * 1024),
                "replay-page-bytes",
            )?,
            resume_rate: positive(s.resume_rate.unwrap_or(5), "resume-rate")?,
            resume_burst: positive(s.resume_burst.unwrap_or(20), "resume-burst")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, GatewayError> {
        let mut full = vec!["gateway"];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).map_err(|e| config_err("cli", e.to_string()))?;
        Config::from_settings(cli.settings)
    }

    #[test]
    fn defaults_and_errors_name_the_setting() {
        let c = parse(&["--jwt-secret", "0123456789abcdef"]).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        // The unauthenticated admin listener stays on loopback unless told.
        assert_eq!(c.admin_listen, ([127, 0, 0, 1], 9090).into());
        assert_eq!(c.max_message_size, 65536);
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
        assert!(c.worker_threads >= 1);
        let w = parse(&["--jwt-secret", "0123456789abcdef", "--worker-threads", "3"]).unwrap();
        assert_eq!(w.worker_threads, 3);
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
        assert_eq!(c.redis, None);
        let c = with(&["--redis-url", "redis://a:1"]).unwrap();
        assert_eq!(
            c.redis,
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
            c.redis,
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
            c.redis,
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
            c.redis,
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
            (&["--redis-url", "rediss://a:1"][..], "redis-url"),
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
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.max_channels, 9);
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
                c.redis,
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
