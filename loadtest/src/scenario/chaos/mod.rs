//! `chaos`: mixed traffic across several gateways while a controller injects faults,
//! then a check of every numbered stream at every client.
//!
//! The run: start Redis (AOF, fsync always) and the gateways (each behind its own
//! fault proxy to Redis, on fixed ports), connect every client and subscribe it to
//! its channels, then for `--duration` publish (personal notifications and history
//! rooms with history, plain channels without, clients chatting in their rooms over
//! the WebSocket) while the seeded fault schedule runs. Afterwards: every fault is
//! undone, the publisher flushes, every client must be connected again (`--heal`),
//! and end markers are published on every channel until every client has one on
//! each of its channels (`--grace`). Finally each (client, stream) is compared with
//! what the publisher got acknowledged.

pub mod check;
pub mod client;
pub mod cluster;
pub mod control;
pub mod lanes;
pub mod plan;
pub mod pool;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use self::check::StreamFigures;
use self::client::{Cmd, GroupSpec};
use self::cluster::{GatewayProc, Memory, RedisProc, Sampler, http_get, metric};
use self::control::FaultRecord;
use self::lanes::{Lanes, PublisherFigures, Rates};
use self::plan::{FaultKind, Kind, Layout, ScheduleSpec};
use self::pool::Groups;
use crate::cli::ChaosArgs;
use crate::conn::Target;
use crate::report::{Connections, Report, points};

/// What the clients saw at the end of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EndState {
    pub clients: u64,
    /// Clients with the end marker on every channel.
    pub complete: u64,
    /// Connected and subscribed, yet without a marker on some channel: silently stuck.
    pub silent: u64,
    /// Not connected at the end, with the reason of their last failure.
    pub reconnecting: u64,
    /// Connected, subscriptions not yet confirmed.
    pub subscribing: u64,
    /// Reasons of the clients still reconnecting.
    pub reconnecting_reasons: BTreeMap<String, u64>,
    /// A few incomplete clients, described.
    pub examples: Vec<String>,
    /// From the end of the traffic until every client was connected and subscribed.
    pub heal_secs: f64,
    /// From the first marker until every client had all of them.
    pub markers_secs: f64,
    pub marker_rounds: u64,
    /// Time from the first marker publish to each client having all markers, ms.
    pub markers_ms_p99: u64,
}

/// One gateway's metrics at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayMetrics {
    pub gateway: usize,
    pub starts: u32,
    pub connections: Option<f64>,
    /// `tidings_stream_gaps_total` by label set (since the last start).
    pub stream_gaps: BTreeMap<String, f64>,
    /// `tidings_closes_total` by label set (since the last start).
    pub closes: BTreeMap<String, f64>,
}

/// The gateways' own view at the end.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerView {
    /// Sum of `tidings_connections` over the gateways.
    pub connections: Option<u64>,
    /// Clients with an open WebSocket at the same time.
    pub clients_open: u64,
    pub gateways: Vec<GatewayMetrics>,
}

/// One pass/fail check of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The chaos part of a report.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub traffic_secs: f64,
    pub gateways: usize,
    pub layout: Layout,
    /// Messages/s: personal (all users), per room, per plain channel, per chatting client.
    pub rates: BTreeMap<&'static str, f64>,
    pub faults_planned: u64,
    /// Every fault as it happened, in time order.
    pub faults: Vec<FaultRecord>,
    pub fault_counts: BTreeMap<String, u64>,
    /// Per kind of stream: personal, room (history), plain, chat.
    pub streams: BTreeMap<&'static str, StreamFigures>,
    /// Connections that ended or attempts that failed, by close code or error.
    pub reconnects: BTreeMap<String, u64>,
    /// The first occurrences of each reason: "gw<i> at <s> s: <message>", seconds
    /// from the start of the traffic.
    pub reconnect_examples: BTreeMap<String, Vec<String>>,
    /// Successful connections after the first one of each client.
    pub reconnected: u64,
    pub stalls: u64,
    /// What stalled connections did next (see `GroupFinal::stall_outcomes`).
    pub stall_outcomes: BTreeMap<String, u64>,
    pub end: EndState,
    pub memory: Memory,
    pub publisher: PublisherFigures,
    pub server: ServerView,
    pub checks: Vec<Check>,
    pub log_dir: String,
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

impl ChaosReport {
    /// Rows for the summary table.
    pub fn rows(&self, rows: &mut Vec<(String, String)>) {
        let l = &self.layout;
        rows.push((
            "chaos".into(),
            format!(
                "seed {}, {:.0} s of traffic, {} gateways; {} rooms with history, {} plain channels, chat rooms of {}",
                self.seed, self.traffic_secs, self.gateways, l.rooms, l.plain, l.chat_size
            ),
        ));
        let counts: Vec<String> = self
            .fault_counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        rows.push((
            "faults".into(),
            format!(
                "{} injected ({} planned): {}",
                self.faults.len(),
                self.faults_planned,
                counts.join(", ")
            ),
        ));
        for f in &self.faults {
            rows.push((
                format!("  {:>7.1}s", f.at_ms as f64 / 1000.0),
                format!(
                    "{} {}{}: {}",
                    f.kind,
                    f.target,
                    if f.ok { "" } else { " [NOT OK]" },
                    f.detail.lines().next().unwrap_or_default()
                ),
            ));
        }
        for (k, f) in &self.streams {
            rows.push((
                format!("{k} streams"),
                format!(
                    "{} published to {} streams; {} expected, {} delivered, {} lost, {} lost with notice, {} duplicated, {} out of order",
                    f.published, f.streams, f.expected, f.delivered, f.lost, f.lost_announced, f.duplicated, f.out_of_order
                ),
            ));
            if f.resumes > 0
                || f.not_recovered_notices > 0
                || f.gaps_seen > 0
                || f.unacknowledged_delivered > 0
            {
                rows.push((
                    format!("{k} resume"),
                    format!(
                        "{} resumes: {} recovered, {} not recovered, {} unanswered; {} gaps let through; {} unacknowledged delivered",
                        f.resumes,
                        f.recovered_true,
                        f.not_recovered_notices,
                        f.recovered_absent,
                        f.gaps_seen,
                        f.unacknowledged_delivered
                    ),
                ));
            }
        }
        let r: Vec<String> = self
            .reconnects
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        rows.push((
            "disconnects".into(),
            format!(
                "{} reconnected; by reason: {}",
                self.reconnected,
                if r.is_empty() {
                    "none".into()
                } else {
                    r.join(", ")
                }
            ),
        ));
        for (why, ex) in &self.reconnect_examples {
            if let Some(first) = ex.first() {
                rows.push((format!("  {why}"), format!("first: {first}")));
            }
        }
        if self.stalls > 0 {
            let o: Vec<String> = self
                .stall_outcomes
                .iter()
                .map(|(k, v)| format!("{k} x{v}"))
                .collect();
            rows.push((
                "stalled clients".into(),
                format!("{} stalls; then: {}", self.stalls, o.join(", ")),
            ));
        }
        let e = &self.end;
        rows.push((
            "end".into(),
            format!(
                "{}/{} clients complete, {} silent, {} reconnecting {:?}, {} subscribing; healed in {:.1} s, markers in {:.1} s ({} rounds)",
                e.complete,
                e.clients,
                e.silent,
                e.reconnecting,
                e.reconnecting_reasons,
                e.subscribing,
                e.heal_secs,
                e.markers_secs,
                e.marker_rounds
            ),
        ));
        let mem: Vec<String> = self
            .memory
            .gateways
            .iter()
            .map(|g| {
                format!(
                    "gw{} {} -> peak {} at {:.0} s",
                    g.gateway,
                    mib(g.start_bytes),
                    mib(g.peak_bytes),
                    g.peak_at_ms as f64 / 1000.0
                )
            })
            .collect();
        rows.push((
            "gateway rss".into(),
            format!(
                "{} (bound {})",
                mem.join("; "),
                mib(self.memory.bound_bytes)
            ),
        ));
        let p = &self.publisher;
        rows.push((
            "publisher".into(),
            format!(
                "{} messages on {} lanes; {} failed calls retried, {} duplicates dropped on retry, {} uncertain, {} offset breaks, slowest {} ms",
                p.published, p.lanes, p.failed_calls, p.duplicates_on_retry, p.uncertain, p.offset_breaks, p.longest_publish_ms
            ),
        ));
        let s = &self.server;
        rows.push((
            "server view".into(),
            format!(
                "{} connections on the gateways, {} clients open",
                s.connections.map_or("?".into(), |c| c.to_string()),
                s.clients_open
            ),
        ));
        for c in &self.checks {
            rows.push((
                format!("check {}", c.name),
                format!("{} {}", if c.ok { "ok" } else { "FAIL" }, c.detail),
            ));
        }
        rows.push(("logs".into(), self.log_dir.clone()));
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }
}

/// A spawned task that is aborted when dropped, so an error anywhere in the run
/// never leaves a controller restarting processes (its processes are killed when
/// the aborted task drops them).
struct Guard<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Guard<T> {
    fn spawn(f: impl std::future::Future<Output = T> + Send + 'static) -> Guard<T>
    where
        T: Send + 'static,
    {
        Guard(Some(tokio::spawn(f)))
    }

    /// Waits for the task's result (the guard still aborts it if this wait is
    /// given up).
    async fn join(&mut self) -> Result<T> {
        match self.0.as_mut() {
            Some(h) => h.await.map_err(|e| anyhow!("task failed: {e}")),
            None => bail!("task already joined"),
        }
    }
}

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Default history rooms and plain channels: one per 50 clients, at least one.
fn per_fifty(n: usize) -> usize {
    n.div_ceil(50).max(1)
}

/// Gateway `idx` of the run, talking to Redis through `proxy_url`: testkit's test
/// gateway with the run's credentials, short heartbeats and Redis timings (ports
/// are set by [`GatewayProc`]).
fn gateway(a: &ChaosArgs, idx: usize, bin: &Path, proxy_url: &str) -> testkit::GatewayBuilder {
    let c = &a.common;
    testkit::TestGateway::builder()
        .bin(bin)
        .gateway_timings()
        .jwt_secret(&c.jwt_secret)
        .api_keys(&c.api_key)
        .node(&format!("chaos-gw-{idx}"))
        .set("--redis-url", proxy_url)
        .set("--heartbeat-interval", "2s")
        .drain_period("1s")
        .set("--redis-probe-interval", "1s")
        .set("--redis-reconnect-max", "1s")
        .set("--redis-unsubscribe-delay", "1s")
        .arg(format!("--history={}", plan::HISTORY_RULES.join(",")))
        // Given last: the gateway takes the last value of a repeated flag.
        .args(&c.gateway_args)
}

/// Runs the chaos scenario.
pub async fn run(a: &ChaosArgs) -> Result<Report> {
    let c = &a.common;
    let started = Instant::now();
    let start_unix_ms = crate::payload::now_millis();
    let deadline = started + c.max_duration.0;
    let left = || deadline.saturating_duration_since(Instant::now());
    let n = c.connections;
    let gateways = c.gateways.unwrap_or(3);
    let bin = c
        .spawn_gateway
        .clone()
        .ok_or_else(|| anyhow!("chaos starts its own gateways: give --spawn-gateway PATH"))?;
    if !bin.is_file() {
        bail!(
            "no gateway binary at {} (build it: cargo build --release -p gateway)",
            bin.display()
        );
    }
    let layout = Layout {
        clients: n,
        rooms: a.rooms.unwrap_or_else(|| per_fifty(n)).min(n),
        plain: a.plain_channels.unwrap_or_else(|| per_fifty(n)).min(n),
        chat_size: if a.chat_rate > 0.0 {
            a.chat_room_size
        } else {
            0
        },
    };
    let kinds: Vec<FaultKind> = if a.no_faults {
        Vec::new()
    } else {
        a.faults.clone()
    };
    let schedule = plan::schedule(&ScheduleSpec {
        seed: a.seed,
        duration_ms: a.duration.0.as_millis() as u64,
        every_ms: a.fault_every.0.as_millis() as u64,
        kinds,
        gateways,
        clients: n,
        stall_fraction: a.stall_fraction,
    });
    let log_dir: PathBuf = match &a.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "loadtest-chaos-{}-{}",
            std::process::id(),
            start_unix_ms
        )),
    };
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    std::fs::write(
        log_dir.join("schedule.json"),
        serde_json::to_string_pretty(&schedule)?,
    )?;
    let mut notes: Vec<String> = Vec::new();

    // Redis, proxies, gateways.
    let ports = cluster::pick_ports(1 + 2 * gateways, a.seed)?;
    let redis = RedisProc::start(ports[0], &log_dir).await?;
    let mut proxies = Vec::with_capacity(gateways);
    let mut gws = Vec::with_capacity(gateways);
    for i in 0..gateways {
        let proxy = Arc::new(testkit::FaultProxy::start(redis.addr()).await);
        let pair = (ports[1 + 2 * i], ports[2 + 2 * i]);
        let mut g = GatewayProc::new(i, pair, gateway(a, i, &bin, &proxy.url()), &log_dir);
        g.spawn().await?;
        proxies.push(proxy);
        gws.push(g);
    }
    let targets: Vec<Target> = gws
        .iter()
        .map(|g| Target::parse(&g.ws_url()))
        .collect::<Result<_>>()?;

    // The backend publisher and its lanes: one per personal channel, room and plain
    // channel, plus one marker lane per chat room.
    let rules = protocol::history::HistoryRules::parse(plan::HISTORY_RULES.iter())
        .map_err(|e| anyhow!("history rules: {e}"))?;
    let publisher = publisher::Publisher::builder(redis.url())
        .history(rules)
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| anyhow!("publisher: {e}"))?;
    let channels = layout.all_channels();
    let lane_info: Vec<(String, Kind, Option<u64>)> = channels
        .iter()
        .map(|(k, ch)| (ch.clone(), *k, None))
        .collect();
    let lanes = Lanes::new(lane_info, publisher, &redis.url(), c.payload_size);

    // Clients.
    let spec = GroupSpec {
        targets,
        secret: c.jwt_secret.clone(),
        first: 0,
        count: n,
        layout,
        per_ip: c.per_source_ip,
        concurrency: c.concurrency,
        payload_size: c.payload_size,
        read_buffer: c.client_read_buffer,
        token_ttl_secs: c.max_duration.0.as_secs() + 600,
        connect_timeout_ms: c.connect_timeout.0.as_millis() as u64,
        request_timeout_ms: 10_000,
        backoff_max_ms: a.client_backoff_max.0.as_millis() as u64,
        seed: a.seed,
    };
    let mut groups = Groups::start(spec, c.per_process, c.worker_exe.clone()).await?;
    let processes = groups.groups();
    groups.send(&Cmd::Connect)?;
    let conn = groups.connected(left()).await?;
    if conn.failed > 0 {
        bail!(
            "{} of {n} clients could not connect and subscribe before the traffic: {:?}",
            conn.failed,
            conn.errors
        );
    }
    let names: Vec<String> = channels.iter().map(|(_, ch)| ch.clone()).collect();
    let short = groups
        .drive(crate::launch::wait_routes(
            &redis.url(),
            super::NAMESPACE,
            &names,
            1,
            Duration::from_secs(30).min(left()),
        ))
        .await??;
    if short > 0 {
        notes.push(format!(
            "{short} channel(s) had no gateway subscribed in Redis before the traffic"
        ));
    }
    groups.pump(c.settle.0).await?;

    // Traffic and faults.
    let sampler = Sampler::start(
        gws.iter().map(|g| g.pid.clone()).collect(),
        redis.pid.clone(),
        a.max_gateway_rss_mib * 1024 * 1024,
        Duration::from_millis(200),
    );
    let t0 = Instant::now();
    let traffic_unix_ms = crate::payload::now_millis();
    let traffic_end = t0 + a.duration.0;
    let give_up = deadline
        .checked_sub(Duration::from_secs(20))
        .unwrap_or(deadline)
        .max(traffic_end);
    let stop_dispatch = Arc::new(Notify::new());
    let mut dispatch = Guard::spawn(lanes.clone().dispatch(stop_dispatch.clone(), give_up));
    let mut feed = Guard::spawn(lanes::feed(
        lanes.clone(),
        Rates {
            personal: a.personal_rate,
            room: a.room_rate,
            plain: a.plain_rate,
        },
        traffic_end,
    ));
    if layout.chat_size > 0 {
        groups.send(&Cmd::Chat {
            rate: a.chat_rate,
            duration_ms: a.duration.0.as_millis() as u64,
        })?;
    }
    let drain_bound = Duration::from_secs(12);
    let mut gw_tasks = Vec::new();
    for (i, (g, p)) in gws.into_iter().zip(proxies.iter()).enumerate() {
        let mine: Vec<_> = schedule
            .iter()
            .filter(|f| f.gateway == Some(i))
            .cloned()
            .collect();
        gw_tasks.push(Guard::spawn(control::gateway(
            g,
            p.clone(),
            mine,
            t0,
            traffic_end,
            drain_bound,
        )));
    }
    let redis_faults: Vec<_> = schedule
        .iter()
        .filter(|f| matches!(f.kind, FaultKind::RedisKill | FaultKind::RedisTerm))
        .cloned()
        .collect();
    let mut redis_task = Guard::spawn(control::redis(redis, redis_faults, t0, traffic_end));
    let stall_faults: Vec<_> = schedule
        .iter()
        .filter(|f| f.kind == FaultKind::Stall)
        .cloned()
        .collect();
    let mut stall_task = Guard::spawn(control::stalls(groups.commander(), stall_faults, t0));
    groups.pump(a.duration.0).await?;

    // Undo: every target's task ends once its faults are over.
    let mut records: Vec<FaultRecord> = Vec::new();
    let mut gws = Vec::new();
    for mut t in gw_tasks {
        let (g, r) = groups
            .drive(t.join())
            .await?
            .context("fault controller")??;
        gws.push(g);
        records.extend(r);
    }
    let (redis, r) = groups
        .drive(redis_task.join())
        .await?
        .context("fault controller")??;
    records.extend(r);
    records.extend(
        groups
            .drive(stall_task.join())
            .await?
            .context("fault controller")??,
    );
    records.sort_by_key(|r| r.at_ms);
    groups.drive(feed.join()).await??;
    for p in &proxies {
        p.thaw();
        p.delay(Duration::ZERO);
    }
    let traffic_secs = t0.elapsed().as_secs_f64();

    // Heal: the publisher's backlog out, every gateway ready, every client back.
    let heal_start = Instant::now();
    let heal_end = heal_start + a.heal.0.min(left());
    while !lanes.flushed() && Instant::now() < heal_end {
        groups.pump(Duration::from_millis(50)).await?;
    }
    if !lanes.flushed() {
        notes.push(format!(
            "the publisher still had {} messages to publish after --heal",
            lanes.backlog()
        ));
    }
    let mut unready: Vec<usize> = (0..gws.len()).collect();
    while !unready.is_empty() && Instant::now() < heal_end {
        let mut still = Vec::new();
        for &i in &unready {
            let ok = matches!(
                groups.drive(http_get(gws[i].admin(), "/readyz")).await?,
                Ok((200, _))
            );
            if !ok {
                still.push(i);
            }
        }
        unready = still;
        if !unready.is_empty() {
            groups.pump(Duration::from_millis(100)).await?;
        }
    }
    if !unready.is_empty() {
        notes.push(format!(
            "gateway(s) {unready:?} still not ready (/readyz) after --heal"
        ));
    }
    let all_ready = groups
        .wait_for(heal_end.saturating_duration_since(Instant::now()), |t| {
            t.ready >= n as u64 && t.stalled == 0
        })
        .await?;
    let heal_secs = heal_start.elapsed().as_secs_f64();
    if !all_ready {
        let t = groups.totals();
        notes.push(format!(
            "after --heal only {} of {n} clients were connected and subscribed ({} open)",
            t.ready, t.open
        ));
    }

    // End markers on every channel until every client has one on each.
    let markers_start = Instant::now();
    let markers_end = markers_start + a.grace.0.min(left());
    let mut rounds = 0u64;
    loop {
        lanes.add_markers();
        rounds += 1;
        let next = (Instant::now() + Duration::from_secs(1)).min(markers_end);
        let done = groups
            .wait_for(next.saturating_duration_since(Instant::now()), |t| {
                t.complete >= n as u64
            })
            .await?;
        if done || Instant::now() >= markers_end {
            break;
        }
    }
    let markers_secs = markers_start.elapsed().as_secs_f64();

    // The gateways' view: as many connections as clients with an open socket.
    let settle_end = Instant::now() + Duration::from_secs(10).min(left());
    let server = loop {
        let mut total = Some(0u64);
        let mut per = Vec::new();
        for g in &gws {
            let m = match groups.drive(http_get(g.admin(), "/metrics")).await? {
                Ok((200, body)) => body,
                _ => String::new(),
            };
            let conns = metric(&m, "tidings_connections", None);
            total = total.zip(conns).map(|(t, c)| t + c as u64);
            per.push(GatewayMetrics {
                gateway: g.idx,
                starts: g.starts,
                connections: conns,
                stream_gaps: labelled(&m, "tidings_stream_gaps_total"),
                closes: labelled(&m, "tidings_closes_total"),
            });
        }
        let open = groups.totals().open;
        if total == Some(open) || Instant::now() >= settle_end {
            break ServerView {
                connections: total,
                clients_open: open,
                gateways: per,
            };
        }
        groups.pump(Duration::from_millis(250)).await?;
    };

    // Stop: publisher, clients, sampler.
    stop_dispatch.notify_one();
    groups.drive(dispatch.join()).await??;
    let (finals, timeline) = groups
        .finish(
            Duration::from_secs(60)
                .min(left())
                .max(Duration::from_secs(20)),
        )
        .await?;
    let memory = sampler.stop();
    let (lane_results, publisher) = lanes.results();
    drop(gws);
    drop(redis);
    drop(proxies);

    // Verdict.
    let mut clients = Vec::with_capacity(n);
    let mut reconnects: BTreeMap<String, u64> = BTreeMap::new();
    let mut examples: BTreeMap<String, Vec<client::ReasonExample>> = BTreeMap::new();
    let mut latency = crate::stats::Hist::new();
    let (mut pings, mut bad_frames, mut stalls, mut lost_tasks) = (0, 0, 0, 0);
    let mut stall_outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_stall: Vec<client::StallOutcome> = Vec::new();
    for f in finals {
        for o in f.stall_outcomes {
            *stall_outcomes.entry(o.outcome.clone()).or_default() += o.count;
            per_stall.push(o);
        }
        for (k, v) in f.reasons {
            *reconnects.entry(k).or_default() += v;
        }
        for (k, v) in f.examples {
            examples.entry(k).or_default().extend(v);
        }
        latency.merge(&f.latency);
        pings += f.pings;
        bad_frames += f.bad_frames;
        stalls += f.stalls;
        lost_tasks += f.lost_tasks;
        clients.extend(f.clients);
    }
    clients.sort_by_key(|c| c.idx);
    let streams = check::figures(&layout, &clients, &lane_results);
    let mut end = EndState {
        clients: clients.len() as u64,
        heal_secs,
        markers_secs,
        marker_rounds: rounds,
        ..EndState::default()
    };
    let mut marker_hist = crate::stats::Hist::new();
    for cl in &clients {
        if cl.channels.iter().all(|ch| ch.marker) {
            end.complete += 1;
            if let Some(ms) = cl.markers_ms {
                marker_hist.record(ms.max(1));
            }
            continue;
        }
        let missing: Vec<&str> = cl
            .channels
            .iter()
            .filter(|ch| !ch.marker)
            .map(|ch| ch.name.as_str())
            .collect();
        let state = if !cl.open {
            end.reconnecting += 1;
            let why = cl
                .last_reason
                .clone()
                .unwrap_or_else(|| "never connected".into());
            *end.reconnecting_reasons.entry(why.clone()).or_default() += 1;
            format!("reconnecting ({why})")
        } else if !cl.ready {
            end.subscribing += 1;
            "connected, subscriptions unconfirmed".to_owned()
        } else {
            end.silent += 1;
            "connected and subscribed".to_owned()
        };
        if end.examples.len() < 10 {
            end.examples.push(format!(
                "client {} ({}): no end marker on {}; {} connections, last reason {:?}",
                cl.idx,
                state,
                missing.join(", "),
                cl.connects,
                cl.last_reason
            ));
        }
    }
    end.markers_ms_p99 = marker_hist.summary().p99;
    let reconnected: u64 = clients.iter().map(|c| c.connects.saturating_sub(1)).sum();
    let untold = judge_stalls(&mut records, per_stall);
    let mut fault_counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        *fault_counts.entry(r.kind.clone()).or_default() += 1;
    }

    let mut checks = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        checks.push(Check {
            name: name.to_owned(),
            ok,
            detail,
        });
    };
    for k in [Kind::Personal, Kind::Room] {
        let f = streams.get(k.name()).cloned().unwrap_or_default();
        check(
            &format!("{} history", k.name()),
            f.lost == 0 && f.duplicated == 0 && f.out_of_order == 0,
            format!(
                "{} lost without notice, {} duplicated, {} out of order ({} lost with a recovered:false notice)",
                f.lost, f.duplicated, f.out_of_order, f.lost_announced
            ),
        );
    }
    check(
        "no stuck client",
        end.silent == 0 && end.subscribing == 0 && end.reconnecting <= a.allow_reconnecting,
        format!(
            "{} silent, {} subscribing, {} reconnecting (allowed {}) of {} after {:.1} s of markers",
            end.silent,
            end.subscribing,
            end.reconnecting,
            a.allow_reconnecting,
            end.clients,
            markers_secs
        ),
    );
    let worst = memory
        .gateways
        .iter()
        .map(|g| g.peak_bytes)
        .max()
        .unwrap_or(0);
    check(
        "gateway memory bounded",
        worst <= memory.bound_bytes && memory.gateways.iter().all(|g| g.samples > 0),
        format!(
            "peak {} per process, bound {}",
            mib(worst),
            mib(memory.bound_bytes)
        ),
    );
    check(
        "every publish acknowledged",
        publisher.uncertain == 0 && lanes.backlog() == 0,
        format!(
            "{} uncertain, {} never published",
            publisher.uncertain,
            lanes.backlog()
        ),
    );
    check(
        "gateways agree on connections",
        server.connections == Some(server.clients_open),
        format!(
            "{} on the gateways, {} clients open",
            server.connections.map_or("?".into(), |c| c.to_string()),
            server.clients_open
        ),
    );
    check(
        "stalled clients told",
        untold == 0,
        format!(
            "{untold} stalled connection(s) ended without their close frame reaching the client (stalls that overlapped no gateway kill or restart)"
        ),
    );
    let bad_faults: Vec<String> = records
        .iter()
        .filter(|r| !r.ok && r.kind != FaultKind::Stall.name())
        .map(|r| format!("{} {} at {} ms", r.kind, r.target, r.at_ms))
        .collect();
    check(
        "processes behaved",
        bad_faults.is_empty(),
        if bad_faults.is_empty() {
            "every SIGTERM drained in time, no unplanned exit".into()
        } else {
            bad_faults.join("; ")
        },
    );
    check(
        "clients accounted",
        lost_tasks == 0 && bad_frames == 0,
        format!("{lost_tasks} client tasks without a summary, {bad_frames} unreadable frames"),
    );

    let chaos = ChaosReport {
        seed: a.seed,
        traffic_secs,
        gateways,
        layout,
        rates: BTreeMap::from([
            ("personal", a.personal_rate),
            ("room", a.room_rate),
            ("plain", a.plain_rate),
            (
                "chat",
                if layout.chat_size > 0 {
                    a.chat_rate
                } else {
                    0.0
                },
            ),
        ]),
        faults_planned: schedule.len() as u64,
        faults: records,
        fault_counts,
        streams,
        reconnects: reconnects.clone(),
        reconnect_examples: examples
            .into_iter()
            .map(|(k, mut v)| {
                v.sort_by_key(|e| e.unix_ms);
                v.truncate(client::EXAMPLES_PER_REASON);
                let shown = v
                    .iter()
                    .map(|e| {
                        format!(
                            "gw{} at {:.1} s: {}",
                            e.gateway,
                            (e.unix_ms as f64 - traffic_unix_ms as f64) / 1000.0,
                            e.detail
                        )
                    })
                    .collect();
                (k, shown)
            })
            .collect(),
        reconnected,
        stalls,
        stall_outcomes,
        end,
        memory,
        publisher,
        server,
        checks,
        log_dir: log_dir.display().to_string(),
    };
    let correct = chaos.passed();
    let sources = (n.saturating_sub(1) / c.per_source_ip) as u64 + 1;
    let report = Report {
        scenario: "chaos".into(),
        server: crate::cli::ServerKind::Tidings,
        label: c.label.clone(),
        params: serde_json::to_value(a)?,
        machine: crate::procfs::machine(),
        started_unix_ms: start_unix_ms,
        duration_secs: started.elapsed().as_secs_f64(),
        connections: Connections {
            requested: n as u64,
            connected: conn.ok,
            failed: conn.failed,
            source_addresses: sources,
            processes: processes as u64,
            connect_secs: conn.elapsed_us as f64 / 1e6,
            connects_per_sec: conn.per_sec(),
            connect_us: conn.hist.summary(),
            errors: conn.errors.clone(),
        },
        delivery: None,
        latency_us: latency.summary(),
        publish_call_us: None,
        publish_lag_us: None,
        gateway: None,
        redis: None,
        loadtest: None,
        storm: None,
        recovery: None,
        chaos: Some(chaos),
        presence: None,
        unexpected_closes: reconnects.values().sum(),
        close_reasons: reconnects,
        pings_answered: pings,
        ws_pings: 0,
        bad_frames,
        timeline: points(&timeline, start_unix_ms),
        notes,
        correct,
    };
    Ok(report)
}

/// How long after a stall a connection's end is attributed to it (the clients' rule).
const STALL_EFFECT_MS: u64 = 6_000;
/// Longest delay between a stall command and a silent stall's start (2 s heartbeat + 1 s).
const STALL_START_MS: u64 = 3_000;

/// Whether a stalled connection ended without reading a close frame: end of stream
/// or reset (1006), or a write that failed because the gateway had already closed
/// its socket (the client answers the pings it reads; a gateway that closes the TCP
/// connection right after its close frame makes that write fail, and the kernel
/// then discards the close frame still unread).
fn untold_outcome(o: &str) -> bool {
    o.starts_with("1006") || o.starts_with("send:") || o.starts_with("io:") || o == "broken pipe"
}

/// Fills each stall record with what its clients saw next, and marks it not ok when
/// a stalled connection ended without a close frame reaching the client (it read
/// to the end of the stream, or the connection was reset), unless its gateway was
/// killed, terminated or restarted meanwhile. Returns how many connections that was.
fn judge_stalls(records: &mut [FaultRecord], per_stall: Vec<client::StallOutcome>) -> u64 {
    let restarts: Vec<(usize, u64, u64)> = records
        .iter()
        .filter(|r| {
            r.kind == FaultKind::GatewayKill.name()
                || r.kind == FaultKind::GatewayTerm.name()
                || r.kind.starts_with("crash")
        })
        .filter_map(|r| r.gateway.map(|g| (g, r.at_ms, r.back_ms)))
        .collect();
    let mut untold = 0;
    // Stall commands are numbered from 1 in the order they were sent.
    for (r, stall) in records
        .iter_mut()
        .filter(|r| r.kind == FaultKind::Stall.name())
        .zip(1u64..)
    {
        // A silent stall starts at the client's next pong (up to a heartbeat and a
        // second after the command).
        let (lo, hi) = (
            r.at_ms,
            r.at_ms + r.hold_ms + STALL_START_MS + STALL_EFFECT_MS,
        );
        let mut excused = 0;
        for o in per_stall.iter().filter(|o| o.stall == stall) {
            *r.outcomes.entry(o.outcome.clone()).or_default() += o.count;
            let untold_here = untold_outcome(&o.outcome);
            if !untold_here {
                continue;
            }
            if restarts
                .iter()
                .any(|&(g, a, b)| g == o.gateway && a < hi && lo < b)
            {
                excused += o.count;
            } else {
                untold += o.count;
                r.ok = false;
            }
        }
        let o: Vec<String> = r
            .outcomes
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        if !o.is_empty() {
            r.detail.push_str("; then ");
            r.detail.push_str(&o.join(", "));
        }
        if excused > 0 {
            r.detail.push_str(&format!(
                " ({excused} of them on a gateway that was killed or restarted meanwhile)"
            ));
        }
    }
    untold
}

/// Every sample of a metric, keyed by its label text.
fn labelled(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(name)
            && let Some(r) = rest.strip_prefix('{')
            && let Some((labels, value)) = r.split_once('}')
            && let Some(v) = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            && v != 0.0
        {
            out.insert(labels.to_owned(), v);
        }
    }
    out
}
