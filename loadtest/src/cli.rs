//! Command line: one subcommand per scenario, each with the shared options of
//! [`Common`] (what to target or start, how many connections, where to write).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// HS256 secret used when loadtest starts the gateway itself.
pub const DEFAULT_SECRET: &str = "loadtest-secret-0123456789";
/// API key used when loadtest starts the gateway itself.
pub const DEFAULT_API_KEY: &str = "loadtest-api-key-0123456789";

/// Most connections one run may open.
pub const MAX_CONNECTIONS: usize = 200_000;
/// Highest publish rate accepted, messages per second.
pub const MAX_RATE: f64 = 200_000.0;
/// Most messages one run may publish.
pub const MAX_MESSAGES: u64 = 10_000_000;

/// A duration written like `30s`, `500ms` or `2m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(s)
            .map(Dur)
            .map_err(|e| format!("`{s}` is not a duration like 30s or 500ms ({e})"))
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// Load generator and benchmark for Tidings gateways (loopback only).
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Every connection only on its personal channel; hold, then measure memory per
    /// connection and idle CPU.
    Idle(IdleArgs),
    /// Every connection subscribed to one channel; M messages at R/s.
    Fanout(FanoutArgs),
    /// Notifications to random users at R/s, by default one per publish call at
    /// evenly spaced times (publisher SDK, HTTP API, or Nchan's HTTP publisher).
    Targeted(TargetedArgs),
    /// Rooms of K clients that publish over the WebSocket and receive each other.
    Chat(ChatArgs),
    /// Drop a share of the clients at once and measure how fast they come back.
    ReconnectStorm(StormArgs),
    /// Clients disconnected during a stream and resuming; reports what the gap lost.
    Recovery(RecoveryArgs),
    /// One channel with presence: N members (-n, default 10,000 here), then users
    /// joining and leaving at a rate; the cost per join/leave, Redis memory, the
    /// time of presence counts and listings, the joins and leaves subscribers see.
    #[command(
        long_about = PRESENCE_ABOUT,
        mut_arg("connections", |a| a.default_value("10000").help("Members: subscribers of the channel that stay for the whole run"))
    )]
    Presence(PresenceArgs),
    /// Mixed traffic over several gateways while a seeded controller kills,
    /// terminates and restarts gateways and Redis, freezes and delays the
    /// gateway<->Redis links and stalls clients; then checks every numbered stream.
    #[command(long_about = CHAOS_ABOUT)]
    Chaos(ChaosArgs),
    /// Internal: a share of the chaos clients in a separate process.
    #[command(hide = true)]
    ChaosWorker,
    /// Internal: a share of the clients in a separate process (driven over stdin/stdout).
    #[command(hide = true)]
    Worker,
    /// Calibration, not a gateway scenario: the kernel's cost of one small loopback
    /// write on this machine, measured on a server that does nothing but write.
    Floor(crate::floor::FloorArgs),
    /// Internal: the writing side of `floor`.
    #[command(hide = true)]
    FloorServer(crate::floor::FloorServerArgs),
    /// Tidings (Redis mode, and variants), Nchan and the floor under the same load
    /// in one sitting (idle, fanout, targeted), then one table.
    #[command(long_about = crate::compare::ABOUT)]
    Compare(crate::compare::CompareArgs),
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Idle(_) => "idle",
            Scenario::Fanout(_) => "fanout",
            Scenario::Targeted(_) => "targeted",
            Scenario::Chat(_) => "chat",
            Scenario::ReconnectStorm(_) => "reconnect-storm",
            Scenario::Recovery(_) => "recovery",
            Scenario::Presence(_) => "presence",
            Scenario::Chaos(_) => "chaos",
            Scenario::ChaosWorker => "chaos-worker",
            Scenario::Worker => "worker",
            Scenario::Floor(_) => "floor",
            Scenario::FloorServer(_) => "floor-server",
            Scenario::Compare(_) => "compare",
        }
    }

    pub fn common(&self) -> Option<&Common> {
        match self {
            Scenario::Idle(a) => Some(&a.common),
            Scenario::Fanout(a) => Some(&a.common),
            Scenario::Targeted(a) => Some(&a.common),
            Scenario::Chat(a) => Some(&a.common),
            Scenario::ReconnectStorm(a) => Some(&a.common),
            Scenario::Recovery(a) => Some(&a.common),
            Scenario::Presence(a) => Some(&a.common),
            Scenario::Chaos(a) => Some(&a.common),
            Scenario::Worker
            | Scenario::ChaosWorker
            | Scenario::Floor(_)
            | Scenario::FloorServer(_)
            | Scenario::Compare(_) => None,
        }
    }
}

/// How messages reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The publisher SDK, straight to Redis (needs --redis or --redis-url).
    Redis,
    /// The gateway's HTTP publish API (POST /api/v1/publish).
    Http,
}

/// The server under test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// A Tidings gateway (--spawn-gateway PATH, or --url of a running one).
    #[default]
    Tidings,
    /// Nchan in an nginx that loadtest starts itself (memory store, no Redis):
    /// WebSocket subscribers at /sub/<channel>, HTTP publish to /pub/<channel>.
    Nchan,
}

/// How a run's publisher spaces its publish calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// One notification per publish call (one SDK publish, or one HTTP request), each
    /// at its own time: call i is due at i/rate seconds, kept by a timer thread with
    /// sub-millisecond precision (as backends publish, one event at a time).
    Paced,
    /// Whatever is due at each 1 ms timer tick goes out as one call (one Redis
    /// pipeline, or one HTTP batch request), up to --batch messages.
    Batched,
}

/// Where the nginx with Nchan comes from and how it runs (with --server nchan).
#[derive(Debug, Clone, Args, Serialize)]
pub struct NchanOpts {
    /// The nginx binary [default: `nginx` on the PATH, else /usr/sbin/nginx].
    #[arg(
        long,
        value_name = "PATH",
        help_heading = "Nchan (with --server nchan)"
    )]
    pub nginx: Option<PathBuf>,
    /// Nchan's dynamic module, loaded with `load_module`.
    #[arg(
        long,
        value_name = "PATH",
        default_value = crate::nchan::DEFAULT_MODULE,
        help_heading = "Nchan (with --server nchan)"
    )]
    pub nchan_module: PathBuf,
    /// nginx worker processes (`worker_processes`).
    #[arg(
        long,
        default_value_t = 1,
        help_heading = "Nchan (with --server nchan)"
    )]
    pub nginx_workers: usize,
    /// Extra directive for nginx's `http` block, repeatable (e.g.
    /// --nginx-directive 'nchan_shared_memory_size 256M').
    #[arg(
        long = "nginx-directive",
        value_name = "LINE",
        allow_hyphen_values = true,
        help_heading = "Nchan (with --server nchan)"
    )]
    pub nginx_directives: Vec<String>,
    /// Extra directive for Nchan's subscriber and publisher locations, repeatable
    /// (e.g. --nchan-directive 'nchan_websocket_ping_interval 30' for heartbeats like
    /// the gateway's, or 'nchan_message_buffer_length 0').
    #[arg(
        long = "nchan-directive",
        value_name = "LINE",
        allow_hyphen_values = true,
        help_heading = "Nchan (with --server nchan)"
    )]
    pub nchan_directives: Vec<String>,
}

/// Options every scenario has.
#[derive(Debug, Clone, Args, Serialize)]
pub struct Common {
    /// The server under test (nchan: idle, fanout and targeted only).
    #[arg(long, value_enum, default_value_t = ServerKind::Tidings)]
    pub server: ServerKind,
    #[command(flatten)]
    pub nchan: NchanOpts,
    /// Gateway WebSocket URL(s), comma-separated, used round-robin (127.0.0.0/8 only).
    #[arg(long, value_delimiter = ',')]
    pub url: Vec<String>,
    /// Pid(s) of the attached gateway process(es), for memory and CPU figures.
    #[arg(long, value_delimiter = ',')]
    pub gateway_pid: Vec<u32>,
    /// Start this gateway binary (on 127.0.0.1, free ports) instead of attaching.
    #[arg(long, value_name = "PATH")]
    pub spawn_gateway: Option<PathBuf>,
    /// How many gateway processes to start with --spawn-gateway [default: 1; presence: 2; chaos: 3].
    #[arg(long)]
    pub gateways: Option<usize>,
    /// Extra argument for started gateways, repeatable (e.g. --gateway-arg=--heartbeat-interval=30s).
    #[arg(long = "gateway-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
    /// History rules (the gateway's `--history`), comma-separated: given to started
    /// gateways and to the publisher, which must agree (e.g. `bench:* 1000 1h`).
    #[arg(long, value_delimiter = ',')]
    pub history: Option<Vec<String>>,
    /// Start a redis-server on a free port and run the started gateways in Redis mode.
    #[arg(long)]
    pub redis: bool,
    /// An existing Redis (loopback) the gateways use, for publishing and its CPU figure.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// HS256 secret the gateway verifies tokens with.
    #[arg(long, env = "LOADTEST_JWT_SECRET", default_value = DEFAULT_SECRET, hide_env_values = true)]
    #[serde(skip)]
    pub jwt_secret: String,
    /// API key of the gateway's HTTP publish API.
    #[arg(long, env = "LOADTEST_API_KEY", default_value = DEFAULT_API_KEY, hide_env_values = true)]
    #[serde(skip)]
    pub api_key: String,
    /// Number of WebSocket connections.
    #[arg(short = 'n', long, default_value_t = 1000)]
    pub connections: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Most connections per process; above it the clients are split over worker processes.
    #[arg(long, default_value_t = 19_000)]
    pub per_process: usize,
    /// Connections per local source address (127.0.0.2, 127.0.0.3, ...).
    #[arg(long, default_value_t = crate::conn::DEFAULT_PER_SOURCE_IP)]
    pub per_source_ip: usize,
    /// Size of each message payload in bytes of JSON.
    #[arg(long, default_value_t = 100)]
    pub payload_size: usize,
    /// WebSocket read buffer of each load client, in bytes.
    #[arg(long, default_value_t = 4096)]
    pub client_read_buffer: usize,
    /// Time allowed for one connection (TCP, upgrade, welcome, subscribe).
    #[arg(long, default_value = "10s")]
    pub connect_timeout: Dur,
    /// Pause after connecting before measuring (lets subscriptions settle).
    #[arg(long, default_value = "1s")]
    pub settle: Dur,
    /// Longest wait for outstanding deliveries after publishing ends.
    #[arg(long, default_value = "10s")]
    pub drain: Dur,
    /// Hard bound on the whole run.
    #[arg(long, default_value = "15m")]
    pub max_duration: Dur,
    /// Write the report as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw PNG charts (latency percentiles, deliveries/s, connects/s) into this directory.
    #[arg(long, value_name = "DIR")]
    pub charts: Option<PathBuf>,
    /// A label stored in the report and chart titles.
    #[arg(long)]
    pub label: Option<String>,
    /// No progress bars or summary table.
    #[arg(long)]
    pub quiet: bool,
    /// Executable to run as worker processes (default: this one).
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub worker_exe: Option<PathBuf>,
}

impl Common {
    /// Checks the bounds that keep a run finite and local.
    pub fn validate(&self) -> Result<()> {
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            bail!("--connections must be 1..={MAX_CONNECTIONS}");
        }
        if self.server == ServerKind::Nchan {
            return self.validate_nchan();
        }
        if self.spawn_gateway.is_none() && self.url.is_empty() {
            bail!("give --url of a running gateway, or --spawn-gateway PATH");
        }
        if self.spawn_gateway.is_some() && !self.url.is_empty() {
            bail!("give either --url or --spawn-gateway, not both");
        }
        if self.redis && self.redis_url.is_some() {
            bail!("give either --redis (start one) or --redis-url, not both");
        }
        if self.redis && self.spawn_gateway.is_none() {
            bail!("--redis starts a Redis for started gateways: use it with --spawn-gateway");
        }
        if self.gateways.is_some_and(|g| g == 0 || g > 16) {
            bail!("--gateways must be 1..=16");
        }
        if self.concurrency == 0 || self.per_process == 0 || self.per_source_ip == 0 {
            bail!("--concurrency, --per-process and --per-source-ip must be positive");
        }
        if self.per_source_ip > 28_000 {
            bail!("--per-source-ip above 28000 would run out of ephemeral ports");
        }
        if self.payload_size > 60_000 {
            bail!("--payload-size must be at most 60000");
        }
        for u in &self.url {
            crate::conn::Target::parse(u)?;
        }
        if let Some(r) = &self.redis_url {
            crate::conn::ensure_loopback_redis(r)?;
        }
        Ok(())
    }
}

impl Common {
    /// `--server nchan`: loadtest starts nginx itself; nothing of a gateway applies.
    fn validate_nchan(&self) -> Result<()> {
        let gateway_only = [
            (!self.url.is_empty(), "--url"),
            (self.spawn_gateway.is_some(), "--spawn-gateway"),
            (self.gateways.is_some(), "--gateways"),
            (!self.gateway_args.is_empty(), "--gateway-arg"),
            (!self.gateway_pid.is_empty(), "--gateway-pid"),
            (self.history.is_some(), "--history"),
            (self.redis, "--redis"),
            (self.redis_url.is_some(), "--redis-url"),
        ];
        for (given, what) in gateway_only {
            if given {
                bail!("{what} is for Tidings gateways: --server nchan starts its own nginx");
            }
        }
        let workers = self.nchan.nginx_workers;
        if !(1..=16).contains(&workers) {
            bail!("--nginx-workers must be 1..=16");
        }
        let most = crate::nchan::MAX_CONNECTIONS_PER_WORKER * workers;
        if self.connections > most {
            bail!(
                "--server nchan holds at most {most} connections with {workers} nginx worker(s) \
                 (one process's open files)"
            );
        }
        if self.concurrency == 0 || self.per_process == 0 || self.per_source_ip == 0 {
            bail!("--concurrency, --per-process and --per-source-ip must be positive");
        }
        if self.per_source_ip > 28_000 {
            bail!("--per-source-ip above 28000 would run out of ephemeral ports");
        }
        if self.payload_size > 60_000 {
            bail!("--payload-size must be at most 60000");
        }
        for d in self
            .nchan
            .nginx_directives
            .iter()
            .chain(&self.nchan.nchan_directives)
        {
            if d.contains(['{', '}']) || d.trim().is_empty() {
                bail!("--nginx-directive and --nchan-directive take simple directives: `{d}`");
            }
        }
        Ok(())
    }
}

fn check_rate(rate: f64) -> Result<()> {
    if !(rate > 0.0 && rate <= MAX_RATE) {
        bail!("--rate must be in (0, {MAX_RATE}]");
    }
    Ok(())
}

fn check_fraction(f: f64) -> Result<()> {
    if !(f > 0.0 && f <= 1.0) {
        bail!("--drop-fraction must be in (0, 1]");
    }
    Ok(())
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: Common,
    /// How long to hold the connections (idle CPU is measured over this time).
    #[arg(long, default_value = "30s")]
    pub hold: Dur,
    /// Broadcast messages sent at the end to check every connection is still alive.
    #[arg(long, default_value_t = 1)]
    pub probe_messages: u64,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages to publish.
    #[arg(short = 'm', long, default_value_t = 300)]
    pub messages: u64,
    /// Messages per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How messages reach the server [default: redis for Tidings, http for Nchan].
    #[arg(long, value_enum)]
    pub via: Option<Via>,
    /// The channel every client subscribes to.
    #[arg(long, default_value = "bench")]
    pub channel: String,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct TargetedArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages per second (each to one random user).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// How long to publish.
    #[arg(long, default_value = "30s")]
    pub duration: Dur,
    /// How messages reach the server [default: redis for Tidings, http for Nchan].
    #[arg(long, value_enum)]
    pub via: Option<Via>,
    /// paced: one notification per publish call, evenly spaced; batched: what is due
    /// at each 1 ms tick in one call (Tidings only).
    #[arg(long, value_enum, default_value_t = PublishMode::Paced)]
    pub publish_mode: PublishMode,
    /// Most messages per publish call with --publish-mode batched (one Redis
    /// pipeline or one HTTP batch) [default: 32].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Publish calls in flight at once. Above 1, calls travel on different
    /// connections and two messages to one user may be published out of order by
    /// loadtest itself (counted as out of order).
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
}

impl TargetedArgs {
    /// Messages per publish call.
    pub fn batch(&self) -> usize {
        match self.publish_mode {
            PublishMode::Paced => 1,
            PublishMode::Batched => self.batch.unwrap_or(DEFAULT_BATCH),
        }
    }
}

/// Messages per call of `targeted --publish-mode batched` unless --batch says.
pub const DEFAULT_BATCH: usize = 32;

/// The way messages reach the server: as given, or the server's default (the SDK
/// through Redis for Tidings, HTTP for Nchan, which has no other).
pub fn via_for(via: Option<Via>, server: ServerKind) -> Result<Via> {
    match (server, via) {
        (ServerKind::Tidings, v) => Ok(v.unwrap_or(Via::Redis)),
        (ServerKind::Nchan, None | Some(Via::Http)) => Ok(Via::Http),
        (ServerKind::Nchan, Some(Via::Redis)) => {
            bail!("Nchan is published to over HTTP only: drop --via redis")
        }
    }
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: Common,
    /// Clients per room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Messages per second each client publishes (the gateway's default inbound limit is 50/s).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// How long clients publish.
    #[arg(long, default_value = "10s")]
    pub duration: Dur,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct StormArgs {
    #[command(flatten)]
    pub common: Common,
    /// Share of the clients dropped at once.
    #[arg(long, default_value_t = 0.5)]
    pub drop_fraction: f64,
    /// Broadcast messages sent after the storm to check every client is back.
    #[arg(long, default_value_t = 3)]
    pub probe_messages: u64,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct RecoveryArgs {
    #[command(flatten)]
    pub common: Common,
    /// Messages in the stream.
    #[arg(short = 'm', long, default_value_t = 300)]
    pub messages: u64,
    /// Messages per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Share of the clients disconnected during the stream.
    #[arg(long, default_value_t = 0.5)]
    pub drop_fraction: f64,
    /// How long they stay away.
    #[arg(long, default_value = "2s")]
    pub gap: Dur,
    #[arg(long, value_enum, default_value_t = Via::Redis)]
    pub via: Via,
    /// The stream's channel.
    #[arg(long, default_value = "bench:recovery")]
    pub channel: String,
}

impl Scenario {
    /// Scenario-specific bounds (on top of [`Common::validate`]).
    pub fn validate(&self) -> Result<()> {
        if let Some(c) = self.common() {
            c.validate()?;
        }
        let within = |d: Dur, what: &str, c: &Common| -> Result<()> {
            if d.0 > c.max_duration.0 {
                bail!("{what} is longer than --max-duration");
            }
            Ok(())
        };
        if let Some(c) = self.common()
            && c.server == ServerKind::Nchan
            && !matches!(
                self,
                Scenario::Idle(_) | Scenario::Fanout(_) | Scenario::Targeted(_)
            )
        {
            bail!(
                "--server nchan runs the idle, fanout and targeted scenarios, not {}",
                self.name()
            );
        }
        match self {
            Scenario::Idle(a) => within(a.hold, "--hold", &a.common),
            Scenario::Fanout(a) => {
                check_rate(a.rate)?;
                via_for(a.via, a.common.server)?;
                if a.common.server == ServerKind::Nchan {
                    crate::nchan::validate_channel(&a.channel)?;
                }
                if a.messages == 0 || a.messages > MAX_MESSAGES {
                    bail!("--messages must be 1..={MAX_MESSAGES}");
                }
                if a.messages as f64 * a.connections_f() > 1e9 {
                    bail!("more than 10^9 deliveries: lower --messages or --connections");
                }
                protocol::channel::validate(&a.channel)?;
                Ok(())
            }
            Scenario::Targeted(a) => {
                check_rate(a.rate)?;
                within(a.duration, "--duration", &a.common)?;
                if a.rate * a.duration.0.as_secs_f64() > MAX_MESSAGES as f64 {
                    bail!("more than {MAX_MESSAGES} messages: lower --rate or --duration");
                }
                if a.batch.is_some_and(|b| b == 0 || b > 100) || a.inflight == 0 {
                    bail!("--batch must be 1..=100 and --inflight positive");
                }
                if a.publish_mode == PublishMode::Paced && a.batch.is_some() {
                    bail!("--batch applies to --publish-mode batched (paced sends one per call)");
                }
                if a.common.server == ServerKind::Nchan && a.publish_mode == PublishMode::Batched {
                    bail!("Nchan has no batch publish: use --publish-mode paced");
                }
                via_for(a.via, a.common.server)?;
                Ok(())
            }
            Scenario::Chat(a) => {
                check_rate(a.rate)?;
                within(a.duration, "--duration", &a.common)?;
                if a.room_size == 0 || a.room_size > 1000 {
                    bail!("--room-size must be 1..=1000");
                }
                Ok(())
            }
            Scenario::ReconnectStorm(a) => check_fraction(a.drop_fraction),
            Scenario::Recovery(a) => {
                check_rate(a.rate)?;
                check_fraction(a.drop_fraction)?;
                within(a.gap, "--gap", &a.common)?;
                if a.messages < 3 || a.messages > MAX_MESSAGES {
                    bail!("--messages must be 3..={MAX_MESSAGES}");
                }
                protocol::channel::validate(&a.channel)?;
                Ok(())
            }
            Scenario::Presence(a) => a.validate(),
            Scenario::Chaos(a) => a.validate(),
            Scenario::Floor(a) => a.validate(),
            Scenario::Compare(a) => a.validate(),
            Scenario::Worker | Scenario::ChaosWorker | Scenario::FloorServer(_) => Ok(()),
        }
    }
}

/// The long help of `loadtest presence`.
const PRESENCE_ABOUT: &str = "\
One channel with presence (issue 19): N members subscribed for the whole run (-n,
default 10,000), and churn users joining and leaving it at --churn-rate. Loopback only,
bounded in time, stops by itself; needs Redis (--redis or --redis-url).

Setup: started gateways (--spawn-gateway PATH; 2 unless --gateways) get
--presence '<channel> events max=<M>' (without `events` with --no-events; M is
members + churn users + 1,000 unless --max-members), --presence-refresh and
--presence-grace as given here. With --url the gateways must have such a rule.

Phases (each measured on its own):
  populate   the members connect and subscribe (join events to everyone already
             there, with events); Redis' used_memory before and after; the time until
             presence_stats counts them all, and a listing of every member in pages
             of 1,000 through POST /api/v1/presence
  pre-join   churn users join until (rate / 2) x --hold of them are in
  baseline   --baseline with nothing happening (heartbeats, refresh passes): the
             idle CPU of gateways and Redis, subtracted below
  churn      --churn-rate joins + leaves per second together (half each): the churn
             user joined longest leaves (unsubscribes; after --hold), one away for
             longer than the grace period (or a new one) joins (subscribes); after a
             warm-up of grace + 1 s, CPU of gateways (/proc) and Redis (INFO cpu)
             and Redis' script calls (INFO commandstats) over --duration, per
             join/leave (gross, and above the baseline)
  queries    churn goes on for --query-window while --queries requests of each kind
             (presence_stats, a page of 100, a page of 1,000; over the WebSocket
             from --query-connections connections, and through the HTTP API) are
             spread over it: their latency, p50/p99
  grace      churn stops; after the grace period every leave must be announced:
             each sample subscriber (--sample of them) must have seen every churn
             join and leave exactly once, no member leave, nothing inconsistent
The members run in worker processes (at least two, --per-process each at most); the
churn users and query connections in this one.
Also: join latency (subscribe sent -> the joiner's own join in a presence_diff),
leave latency (unsubscribe -> the leave seen by another churn user; includes the
grace period), presence_diff frames and bytes all members received, the gateways'
refresh pass time (tidings_presence_refresh_seconds) and Redis SLOWLOG entries.

Listings over the WebSocket count against the gateway's per-connection
--resume-rate (5/s by default): keep 2 x --queries / --query-window / --query-connections
under it, or raise it with --gateway-arg=--resume-rate=N (then say so).

Example (build first: cargo build --release -p gateway -p loadtest):
  loadtest presence --spawn-gateway target/release/gateway --redis --json presence.json";

#[derive(Debug, Clone, Args, Serialize)]
pub struct PresenceArgs {
    #[command(flatten)]
    pub common: Common,
    /// The channel with presence.
    #[arg(long, default_value = "bench:presence")]
    pub channel: String,
    /// Joins + leaves per second, together (half of each).
    #[arg(long, default_value_t = 100.0)]
    pub churn_rate: f64,
    /// How long the churn is measured (after its warm-up, before the queries).
    #[arg(long, default_value = "30s")]
    pub duration: Dur,
    /// How long a churn user stays in the channel before leaving.
    #[arg(long, default_value = "5s")]
    pub hold: Dur,
    /// The quiet window measured before the churn (idle CPU).
    #[arg(long, default_value = "10s")]
    pub baseline: Dur,
    /// Requests of each kind (WebSocket and API: stats, page of 100, page of 1,000).
    #[arg(long, default_value_t = 200)]
    pub queries: u64,
    /// How long the queries are spread over (churn goes on meanwhile).
    #[arg(long, default_value = "20s")]
    pub query_window: Dur,
    /// WebSocket connections the presence requests are spread over.
    #[arg(long, default_value_t = 8)]
    pub query_connections: usize,
    /// Members that parse every presence_diff and check the joins and leaves.
    #[arg(long, default_value_t = 20)]
    pub sample: usize,
    /// The gateways' --presence-refresh.
    #[arg(long, default_value = "5s")]
    pub presence_refresh: Dur,
    /// The gateways' --presence-grace.
    #[arg(long, default_value = "5s")]
    pub presence_grace: Dur,
    /// The presence rule without `events` (no presence_diff frames): the bookkeeping alone.
    #[arg(long)]
    pub no_events: bool,
    /// The rule's `max` [default: members + churn users + 1,000].
    #[arg(long)]
    pub max_members: Option<u32>,
    /// Longest wait for all members to be counted after they subscribed.
    #[arg(long, default_value = "60s")]
    pub list_within: Dur,
}

impl PresenceArgs {
    /// Churn users that are in the channel at any time.
    pub fn held(&self) -> usize {
        (self.churn_rate / 2.0 * self.hold.0.as_secs_f64())
            .round()
            .max(1.0) as usize
    }

    /// Shortest time a churn user stays away (so its leave is announced first).
    pub fn min_away(&self) -> Duration {
        self.presence_grace.0 + Duration::from_secs(1)
    }

    /// Churn users (connections) needed: those in, and those away long enough.
    /// (Users away until their leave was seen, if later: room for announcements
    /// lagging by up to the grace period again.)
    pub fn churn_users(&self) -> usize {
        let away = self.presence_grace.0 + self.min_away() + Duration::from_secs(1);
        self.held() + (self.churn_rate / 2.0 * away.as_secs_f64()).ceil() as usize + 2
    }

    /// Churn before measuring: long enough for the first leaves to be announced.
    pub fn warmup(&self) -> Duration {
        self.presence_grace.0 + Duration::from_secs(1)
    }

    pub fn validate(&self) -> Result<()> {
        let c = &self.common;
        if c.server != ServerKind::Tidings {
            bail!("presence is a Tidings scenario");
        }
        if !c.redis && c.redis_url.is_none() {
            bail!("presence needs Redis (its memory and CPU are measured): --redis or --redis-url");
        }
        protocol::channel::validate(&self.channel)?;
        if !self.channel.starts_with("bench") {
            bail!("--channel must start with `bench` (the load clients' tokens allow bench*)");
        }
        if !(self.churn_rate > 0.0 && self.churn_rate <= 10_000.0) {
            bail!("--churn-rate must be in (0, 10000]");
        }
        if self.hold.0 < Duration::from_millis(500) {
            bail!(
                "--hold must be at least 500ms (a join and leave within one 50 ms batch cancel out)"
            );
        }
        if self.churn_users() > 50_000 {
            bail!("more than 50,000 churn users: lower --churn-rate, --hold or --presence-grace");
        }
        if self.presence_refresh.0 < Duration::from_millis(100) {
            bail!("--presence-refresh must be at least 100ms (the gateway's bound)");
        }
        if self.queries > 100_000 || self.query_connections == 0 || self.query_connections > 1000 {
            bail!("--queries must be at most 100000, --query-connections 1..=1000");
        }
        if self.queries > 0 && self.query_window.0.is_zero() {
            bail!("--query-window must be positive");
        }
        let per_conn = 2.0 * self.queries as f64
            / self.query_window.0.as_secs_f64().max(0.001)
            / self.query_connections as f64;
        let raised = c.gateway_args.iter().any(|a| a.contains("resume-rate"));
        if per_conn > 4.5 && !raised {
            bail!(
                "{per_conn:.1} listings/s per query connection is above the gateway's default \
                 --resume-rate (5/s): raise --query-connections or --query-window, or the \
                 gateway's limit with --gateway-arg=--resume-rate=N"
            );
        }
        let total = self.baseline.0
            + self.warmup()
            + self.duration.0
            + self.query_window.0
            + self.min_away()
            + Duration::from_secs(20);
        if total > c.max_duration.0 {
            bail!(
                "--baseline + --duration + --query-window, the warm-up, the grace and 20 s of setup is longer than --max-duration ({})",
                humantime::format_duration(c.max_duration.0)
            );
        }
        Ok(())
    }
}

/// The long help of `loadtest chaos`.
const CHAOS_ABOUT: &str = "\
Mixed traffic across several gateways (3 by default) while a controller injects faults,
then a check of every numbered stream at every client. Loopback only, bounded in time,
everything it starts is stopped by pid when it ends.

Setup: loadtest starts its own redis-server with AOF (--appendonly yes --appendfsync
always) and the gateways (--spawn-gateway PATH) on fixed ports below the ephemeral range,
each gateway talking to Redis through its own fault proxy. History: `$user:* 1000 1h`
and `bench:h:* 5000 1h` (gateways and publisher alike). Gateway settings for fast
detection, overridable with --gateway-arg: --heartbeat-interval 2s, --drain-period 1s,
--redis-probe-interval 1s, --redis-reconnect-max 1s, --redis-unsubscribe-delay 1s.

Traffic, for --duration, after every client is connected and subscribed:
  personal  backend notifications to `$user:lt-<i>` (history), --personal-rate in total
  room      backend messages to `bench:h:<i % rooms>` (history), --room-rate per room
  plain     backend messages to `bench:p:<i % plain>` (no history), --plain-rate each
  chat      each client publishes to `room:<i / size>` over the WebSocket, --chat-rate
The backend publishes each channel strictly in order with a message id per sequence
number and retries until Redis takes it (a retry that had gone through is dropped by
Redis as a duplicate), so it knows exactly what it published, with every history offset.

Faults (--faults, deterministic in --seed, about one per --fault-every, each kind at
least once when time allows, never all gateways down at once, all over by the end):
  gateway-kill  SIGKILL a gateway, restart it on the same ports after 0.3-2 s
  gateway-term  SIGTERM a gateway (drains with 1001), restart it once it exited
  redis-kill    SIGKILL Redis, restart it from its AOF on the same port after 0.3-2 s
  redis-term    SIGTERM Redis, restart it likewise
  freeze        stop all bytes between one gateway and Redis for 1-4 s
  delay         add 20-200 ms each way between one gateway and Redis for 2-6 s
  cut           close every connection between one gateway and Redis
  stall         --stall-fraction of the clients stop reading: silent stalls (nothing
                sent for 4.6-5.4 s from right after a pong, so the gateway's heartbeat
                timeout closes them and they read again 0.6-1.4 s later) alternate
                with blind ones (pongs still sent without reading, 2-6 s)

Clients reconnect as docs/protocol.md recommends (full-jitter backoff up to
--client-backoff-max, at once after 1001 and 4005, a dead-connection timer of two
heartbeats, the next gateway on every attempt) and resume every channel with history
from the last offset they processed. They never de-duplicate: what arrives twice counts.

End: faults undone, publisher flushed, every gateway ready and every client connected
again (--heal), then end markers on every channel until every client has one on each of
its channels (--grace). Checks (any failure exits with status 2):
  personal/room history  0 lost and 0 duplicated and 0 out of order, except losses a
                         `recovered: false` (welcome or subscribe reply, e.g. after a
                         4005) announced: those are counted separately
  no stuck client        every client has every end marker, or is reconnecting with a
                         known reason (at most --allow-reconnecting of them)
  memory                 every gateway process's RSS (sampled from /proc every 200 ms)
                         stays under --max-gateway-rss-mib
  publisher              every publish acknowledged by Redis
  connections            the gateways' tidings_connections equals the open clients
  stalled clients told   a stalled connection that its gateway closed (not killed or
                         restarted meanwhile) delivered its close frame: the client,
                         reading again about a second later, found a close code, not
                         an end of stream, a reset or a failed write
  processes              every SIGTERM drained in time, no unplanned exit
The report lists every fault with its time and outcome, and per kind of stream the
messages published, expected, delivered, lost (with and without notice), duplicated,
out of order, the resumes and their answers, and the disconnects by close code or
error. Logs of every process start are kept in --log-dir, with the schedule.

Examples (build first: cargo build --release -p gateway -p loadtest):
  loadtest chaos --spawn-gateway target/release/gateway -n 300 --duration 20s
  loadtest chaos --spawn-gateway target/release/gateway -n 10000 --duration 10m \\
      --json chaos.json --charts charts/
Above --per-process clients (19,000) the clients run in worker processes.";

#[derive(Debug, Clone, Args, Serialize)]
pub struct ChaosArgs {
    #[command(flatten)]
    pub common: Common,
    /// How long traffic runs and faults are injected.
    #[arg(long, default_value = "60s")]
    pub duration: Dur,
    /// Seed of the fault schedule (the same seed, the same schedule).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Mean time between two faults.
    #[arg(long, default_value = "4s")]
    pub fault_every: Dur,
    /// The faults to inject, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "gateway-kill,gateway-term,redis-kill,redis-term,freeze,delay,cut,stall"
    )]
    pub faults: Vec<crate::scenario::chaos::plan::FaultKind>,
    /// Inject no faults at all (a baseline run).
    #[arg(long)]
    pub no_faults: bool,
    /// Share of the clients one stall affects.
    #[arg(long, default_value_t = 0.02)]
    pub stall_fraction: f64,
    /// Messages per second to personal channels, all users together.
    #[arg(long, default_value_t = 100.0)]
    pub personal_rate: f64,
    /// History rooms (`bench:h:<n>`) [default: one per 50 clients].
    #[arg(long)]
    pub rooms: Option<usize>,
    /// Messages per second to each history room.
    #[arg(long, default_value_t = 1.0)]
    pub room_rate: f64,
    /// Plain channels without history (`bench:p:<n>`) [default: one per 50 clients].
    #[arg(long)]
    pub plain_channels: Option<usize>,
    /// Messages per second to each plain channel.
    #[arg(long, default_value_t = 1.0)]
    pub plain_rate: f64,
    /// Clients per chat room.
    #[arg(long, default_value_t = 10)]
    pub chat_room_size: usize,
    /// Chat messages per second each client publishes over its WebSocket (0: no chat).
    #[arg(long, default_value_t = 0.1)]
    pub chat_rate: f64,
    /// Longest wait after the faults until every client is connected and subscribed.
    #[arg(long, default_value = "30s")]
    pub heal: Dur,
    /// Longest wait for every client to have the end marker on every channel.
    #[arg(long, default_value = "20s")]
    pub grace: Dur,
    /// Bound on each gateway process's resident memory, MiB.
    #[arg(long, default_value_t = 512)]
    pub max_gateway_rss_mib: u64,
    /// Clients that may still be reconnecting (with a known reason) at the end.
    #[arg(long, default_value_t = 0)]
    pub allow_reconnecting: u64,
    /// Largest reconnect backoff of a client (full jitter below it).
    #[arg(long, default_value = "2s")]
    pub client_backoff_max: Dur,
    /// Where the gateways' and Redis' logs go [default: a new directory in the temp dir].
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
}

impl ChaosArgs {
    pub fn validate(&self) -> Result<()> {
        let c = &self.common;
        if c.spawn_gateway.is_none() || !c.url.is_empty() {
            bail!("chaos starts and kills its own gateways: give --spawn-gateway PATH, not --url");
        }
        if c.redis_url.is_some() {
            bail!("chaos starts and restarts its own Redis (with AOF): drop --redis-url");
        }
        if c.history.is_some() {
            bail!("chaos sets its own history rules: drop --history");
        }
        if !c.gateway_pid.is_empty() {
            bail!("chaos samples the gateways it starts: drop --gateway-pid");
        }
        if c.gateways.is_some_and(|g| g < 2) {
            bail!("chaos needs at least 2 gateways (one must stay up while another restarts)");
        }
        if self.duration.0.is_zero() || self.fault_every.0.is_zero() {
            bail!("--duration and --fault-every must be positive");
        }
        let total = self.duration.0 + self.heal.0 + self.grace.0 + Duration::from_secs(60);
        if total > c.max_duration.0 {
            bail!(
                "--duration + --heal + --grace + 60 s of setup is longer than --max-duration ({})",
                humantime::format_duration(c.max_duration.0)
            );
        }
        if !(0.0..=1.0).contains(&self.stall_fraction) {
            bail!("--stall-fraction must be in [0, 1]");
        }
        for (r, what) in [
            (self.personal_rate, "--personal-rate"),
            (self.room_rate, "--room-rate"),
            (self.plain_rate, "--plain-rate"),
        ] {
            if !(0.0..=MAX_RATE).contains(&r) {
                bail!("{what} must be in [0, {MAX_RATE}]");
            }
        }
        if !(0.0..=20.0).contains(&self.chat_rate) {
            bail!("--chat-rate must be in [0, 20] (the gateway's default inbound limit is 50/s)");
        }
        if self.chat_rate > 0.0 && !(1..=1000).contains(&self.chat_room_size) {
            bail!("--chat-room-size must be 1..=1000");
        }
        if self.max_gateway_rss_mib == 0 {
            bail!("--max-gateway-rss-mib must be positive");
        }
        Ok(())
    }
}

impl FanoutArgs {
    fn connections_f(&self) -> f64 {
        self.common.connections as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Scenario> {
        let mut full = vec!["loadtest"];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full)?;
        cli.scenario.validate()?;
        Ok(cli.scenario)
    }

    #[test]
    fn bounds_are_checked() {
        assert!(parse(&["idle", "--url", "ws://127.0.0.1:1/ws", "-n", "10"]).is_ok());
        assert!(parse(&["idle", "--url", "ws://10.1.1.1:1/ws"]).is_err());
        assert!(parse(&["idle", "--url", "ws://127.0.0.1:1/ws", "-n", "1000000"]).is_err());
        assert!(parse(&["idle"]).is_err());
        assert!(parse(&["fanout", "--url", "ws://127.0.0.1:1/ws", "--rate", "0"]).is_err());
        assert!(
            parse(&[
                "idle",
                "--spawn-gateway",
                "gw",
                "--redis-url",
                "redis://10.0.0.1:6379"
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "idle",
                "--spawn-gateway",
                "gw",
                "--redis",
                "--gateway-arg=--heartbeat-interval=30s",
                "--gateway-arg",
                "--log=warn"
            ])
            .is_ok()
        );
    }

    #[test]
    fn presence_bounds_are_checked() {
        let ok = |extra: &[&str]| {
            let mut a = vec!["presence", "--spawn-gateway", "gw", "--redis"];
            a.extend_from_slice(extra);
            parse(&a)
        };
        let Ok(Scenario::Presence(p)) = ok(&[]) else {
            panic!("not presence");
        };
        // 10,000 members by default here, 1,000 elsewhere.
        assert_eq!(p.common.connections, 10_000);
        assert_eq!(p.held(), 250);
        assert!(p.churn_users() > p.held() + 300);
        let Ok(Scenario::Fanout(f)) = parse(&["fanout", "--url", "ws://127.0.0.1:1/ws"]) else {
            panic!("not fanout");
        };
        assert_eq!(f.common.connections, 1000);
        assert!(ok(&["-n", "200", "--churn-rate", "20"]).is_ok());
        assert!(parse(&["presence", "--spawn-gateway", "gw"]).is_err());
        assert!(ok(&["--channel", "room:1"]).is_err());
        assert!(ok(&["--hold", "100ms"]).is_err());
        assert!(ok(&["--churn-rate", "0"]).is_err());
        // Listings over the WebSocket within the gateway's --resume-rate, or raised.
        assert!(ok(&["--queries", "1000"]).is_err());
        assert!(ok(&["--queries", "1000", "--gateway-arg=--resume-rate=100"]).is_ok());
        assert!(ok(&["--duration", "20m"]).is_err());
    }

    #[test]
    fn chaos_bounds_are_checked() {
        let ok = |extra: &[&str]| {
            let mut a = vec!["chaos", "--spawn-gateway", "gw", "-n", "50"];
            a.extend_from_slice(extra);
            parse(&a)
        };
        assert!(ok(&[]).is_ok());
        assert!(ok(&["--faults", "gateway-kill,stall", "--seed", "9"]).is_ok());
        assert!(ok(&["--faults", "meteor"]).is_err());
        assert!(ok(&["--gateways", "1"]).is_err());
        assert!(ok(&["--redis-url", "redis://127.0.0.1:6379"]).is_err());
        assert!(ok(&["--history", "room:* 10 1h"]).is_err());
        assert!(ok(&["--duration", "20m"]).is_err());
        assert!(ok(&["--chat-rate", "100"]).is_err());
        assert!(ok(&["--stall-fraction", "2"]).is_err());
        assert!(parse(&["chaos", "--url", "ws://127.0.0.1:1/ws"]).is_err());
        let Ok(Scenario::Chaos(a)) = ok(&[]) else {
            panic!("not chaos");
        };
        assert_eq!(a.faults.len(), 8);
        assert_eq!(a.common.gateways, None);
    }
}
