//! The scenarios, and the steps they share: start or attach ([`Run::new`]), open
//! the connections, wait until Redis routes every channel, publish at a rate while
//! keeping up with the clients' progress, drain, sample the gateway's and Redis'
//! cost, and assemble the report.

pub mod chaos;
pub mod chat;
pub mod fanout;
pub mod idle;
pub mod presence;
pub mod recovery;
pub mod storm;
pub mod targeted;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use crate::cli::{Common, ServerKind, Via};
use crate::launch::{self, Env};
use crate::payload;
use crate::pool::{Pool, Timeline, Totals};
use crate::procfs::{self, Sample};
use crate::publish::{self, Msg, Paced, Pacing, Sink};
use crate::report::{Connections, Delivery, GatewayCost, ProcessCost, Report, points};
use crate::stats::Cohort;
use crate::worker::{GroupSpec, GroupStats, PhaseResult, SubscribeTo};

/// Redis namespace of the gateways (their default).
pub const NAMESPACE: &str = protocol::keys::DEFAULT_NAMESPACE;

/// One run in progress.
pub struct Run {
    pub common: Common,
    pub scenario: &'static str,
    pub params: serde_json::Value,
    pub env: Env,
    pub start: Instant,
    pub start_unix_ms: u64,
    pub deadline: Instant,
    pub notes: Vec<String>,
    pub worker_pids: Vec<u32>,
    /// Connections opened by [`Run::connect`].
    pub connected: u64,
}

fn bar(len: u64, quiet: bool, msg: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_owned());
    pb
}

impl Run {
    pub async fn new(
        scenario: &'static str,
        common: &Common,
        params: serde_json::Value,
    ) -> Result<Run> {
        let start = Instant::now();
        let env = Env::setup(common).await?;
        Ok(Run {
            common: common.clone(),
            scenario,
            params,
            env,
            start,
            start_unix_ms: payload::now_millis(),
            deadline: start + common.max_duration.0,
            notes: Vec::new(),
            worker_pids: Vec::new(),
            connected: 0,
        })
    }

    /// Time left before the run's hard bound.
    pub fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub fn check_time(&mut self) -> Result<()> {
        if let Some(crash) = self.env.crashed() {
            bail!("{crash}");
        }
        if self.left().is_zero() {
            bail!("--max-duration reached");
        }
        Ok(())
    }

    /// Starts the client groups (not yet connected).
    pub async fn pool(&mut self, subscribe: SubscribeTo, drop_fraction: f64) -> Result<Pool> {
        let spec = self.group_spec(subscribe, drop_fraction);
        let per_process = self.common.per_process;
        self.pool_of(spec, per_process, false).await
    }

    /// Starts the client groups of `spec`, at most `per_process` clients in each;
    /// with `processes`, all in worker processes (even a single group).
    pub async fn pool_of(
        &mut self,
        spec: GroupSpec,
        per_process: usize,
        processes: bool,
    ) -> Result<Pool> {
        let exe = self.common.worker_exe.clone();
        let pool = Pool::start_in(spec, per_process, exe, processes).await?;
        self.worker_pids = pool.worker_pids.clone();
        Ok(pool)
    }

    /// The clients of the run, as the common options say.
    pub fn group_spec(&self, subscribe: SubscribeTo, drop_fraction: f64) -> GroupSpec {
        let c = &self.common;
        GroupSpec {
            targets: self.env.targets.clone(),
            secret: self.env.secret.clone(),
            first: 0,
            count: c.connections,
            total: c.connections,
            per_ip: c.per_source_ip,
            concurrency: c.concurrency,
            subscribe,
            drop_fraction,
            payload_size: c.payload_size,
            read_buffer: c.client_read_buffer,
            token_ttl_secs: c.max_duration.0.as_secs() + 600,
            connect_timeout_ms: c.connect_timeout.0.as_millis() as u64,
            server: c.server,
            presence_sample_every: 0,
        }
    }

    /// Opens every connection; fails when none could be opened.
    pub async fn connect(&mut self, pool: &mut Pool) -> Result<PhaseResult> {
        let n = self.common.connections as u64;
        let pb = bar(n, self.common.quiet, "connecting");
        pool.send(&crate::worker::Command::Connect)?;
        let within = self.left();
        pool.bar = Some(pb.clone());
        let phase = pool.phase(within, false).await;
        pool.bar = None;
        let phase = phase?;
        pb.set_position(phase.ok);
        pb.finish_and_clear();
        if phase.ok == 0 {
            bail!("no connection could be opened: {:?}", phase.errors);
        }
        self.connected = phase.ok;
        if phase.failed > 0 {
            self.notes.push(format!(
                "{} of {} connections failed, e.g. {:?}",
                phase.failed, n, phase.errors
            ));
        }
        Ok(phase)
    }

    /// Waits until Redis routes every channel to a gateway (no-op without Redis);
    /// with Nchan, until it counts a subscriber for every open connection.
    pub async fn wait_routes(&mut self, pool: &mut Pool, channels: &[String]) -> Result<()> {
        if let Some(nginx) = &self.env.nginx {
            let within = Duration::from_secs(30).min(self.left());
            let want = self.connected;
            let got = pool.drive(nginx.wait_subscribers(want, within)).await??;
            if got < want {
                self.notes.push(format!(
                    "Nchan counted {got} subscribers of {want} connections after {within:?}"
                ));
            }
            return Ok(());
        }
        let Some(url) = self.env.redis_url.clone() else {
            return Ok(());
        };
        let within = Duration::from_secs(30).min(self.left());
        let short = pool
            .drive(launch::wait_routes(&url, NAMESPACE, channels, 1, within))
            .await??;
        if short > 0 {
            self.notes.push(format!(
                "{short} channel(s) still had no gateway subscribed in Redis after {within:?}"
            ));
        }
        Ok(())
    }

    /// The personal channels of every client.
    pub fn personal_channels(&self) -> Vec<String> {
        (0..self.common.connections)
            .map(|i| protocol::channel::personal(&crate::conn::user_id(i)))
            .collect()
    }

    /// Summed sample of the gateways (None when no pid is known or one is gone).
    pub fn gateway_sample(&self) -> Option<Sample> {
        sum_samples(&self.env.gateway_pids)
    }

    pub fn redis_sample(&self) -> Option<Sample> {
        self.env.redis_pid.and_then(|p| procfs::sample(p).ok())
    }

    /// This process and its workers.
    pub fn loadtest_sample(&self) -> Option<Sample> {
        let mut pids = vec![std::process::id()];
        pids.extend(&self.worker_pids);
        sum_samples(&pids)
    }

    pub fn sink(&self, via: Via) -> Result<Sink> {
        if let Some(nginx) = &self.env.nginx {
            if via != Via::Http {
                bail!("Nchan is published to over HTTP only");
            }
            return Ok(Sink::nchan(nginx.addr));
        }
        match via {
            Via::Redis => match &self.env.redis_url {
                Some(url) => Sink::sdk(url, self.common.history.as_deref()),
                None => bail!(
                    "--via redis needs a Redis: --redis (with --spawn-gateway) or --redis-url"
                ),
            },
            Via::Http => {
                let t = &self.env.targets[0];
                Ok(Sink::http(t.http_addr(), &self.env.api_key))
            }
        }
    }

    /// Publishes while keeping up with the clients' events.
    pub async fn publish(
        &mut self,
        pool: &mut Pool,
        sink: Sink,
        pacing: Pacing,
        make: impl FnMut(u64) -> Msg + Send + 'static,
    ) -> Result<Paced> {
        let progress = Arc::new(AtomicU64::new(0));
        let pb = bar(pacing.total, self.common.quiet, "publishing");
        let task = tokio::spawn(publish::pace(sink, pacing, make, progress.clone()));
        tokio::pin!(task);
        let bound = self.left();
        let deadline = Instant::now() + bound;
        loop {
            let step = pool
                .drive(tokio::time::timeout(Duration::from_millis(200), &mut task))
                .await?;
            pb.set_position(progress.load(Ordering::Relaxed));
            match step {
                Ok(done) => {
                    pb.finish_and_clear();
                    return Ok(done?);
                }
                Err(_) => {
                    if let Some(crash) = self.env.crashed() {
                        task.abort();
                        bail!("{crash}");
                    }
                    if Instant::now() >= deadline {
                        task.abort();
                        bail!("--max-duration reached while publishing");
                    }
                }
            }
        }
    }

    /// Waits for outstanding deliveries; returns whether `done` held and when.
    pub async fn drain(
        &mut self,
        pool: &mut Pool,
        done: impl Fn(&Totals) -> bool,
    ) -> Result<(bool, Instant)> {
        let within = self.common.drain.0.min(self.left());
        let stall = Duration::from_secs(3).min(within);
        let ok = pool.wait_for(within, stall, done).await?;
        if !ok {
            self.notes.push(format!(
                "deliveries were still missing after draining (up to {within:?}, or {stall:?} without progress)"
            ));
        }
        Ok((ok, Instant::now()))
    }

    /// The report fields every scenario fills the same way.
    pub fn report(
        &self,
        conn: &PhaseResult,
        stats: &GroupStats,
        timeline: &Timeline,
        processes: usize,
    ) -> Report {
        let c = &self.common;
        let sources = (c.connections.saturating_sub(1) / c.per_source_ip) as u64 + 1;
        Report {
            scenario: self.scenario.to_owned(),
            server: c.server,
            label: c.label.clone(),
            params: self.params.clone(),
            machine: procfs::machine(),
            started_unix_ms: self.start_unix_ms,
            duration_secs: self.start.elapsed().as_secs_f64(),
            connections: Connections {
                requested: c.connections as u64,
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
            latency_us: stats.latency.summary(),
            publish_call_us: None,
            publish_lag_us: None,
            gateway: None,
            redis: None,
            loadtest: None,
            storm: None,
            recovery: None,
            chaos: None,
            presence: None,
            unexpected_closes: stats.unexpected_closes,
            close_reasons: stats.close_codes.clone(),
            pings_answered: stats.pings,
            ws_pings: stats.ws_pings,
            bad_frames: stats.bad_frames,
            timeline: points(timeline, self.start_unix_ms),
            notes: self.notes.clone(),
            correct: conn.failed == 0 && stats.unexpected_closes == 0 && stats.bad_frames == 0,
        }
    }

    /// Gateway cost between samples: RSS before connecting and once connected, CPU
    /// over the measured phase.
    pub fn gateway_cost(
        &self,
        before: Option<Sample>,
        connected: Option<Sample>,
        phase: Option<(Sample, Sample)>,
        deliveries: Option<u64>,
        connections: u64,
    ) -> Option<GatewayCost> {
        let (b, c) = (before?, connected?);
        let end = self.gateway_sample().unwrap_or(c);
        let mut g = GatewayCost {
            pids: self.env.gateway_pids.clone(),
            rss_before_bytes: b.rss,
            rss_connected_bytes: c.rss,
            rss_end_bytes: end.rss,
            rss_per_connection_bytes: (c.rss as f64 - b.rss as f64) / connections.max(1) as f64,
            ..GatewayCost::default()
        };
        let (cpu, pct) = procfs::cpu_between(&b, &c);
        g.cpu_us_per_connect = Some(cpu as f64 / connections.max(1) as f64);
        let _ = pct;
        if let Some((p0, p1)) = phase {
            let (cpu, pct) = procfs::cpu_between(&p0, &p1);
            g.cpu_us = cpu;
            g.cpu_percent = pct;
            g.cpu_us_per_delivery = deliveries.filter(|d| *d > 0).map(|d| cpu as f64 / d as f64);
        }
        Some(g)
    }

    /// Fills in the Redis and load-generator cost between two readings of each
    /// (`(redis, loadtest)`, as taken by [`Run::redis_sample`] and
    /// [`Run::loadtest_sample`]).
    pub fn side_costs(
        &self,
        report: &mut Report,
        (r0, l0): (Option<Sample>, Option<Sample>),
        (r1, l1): (Option<Sample>, Option<Sample>),
        deliveries: Option<u64>,
    ) {
        let redis = self.env.redis_pid.into_iter().collect();
        report.redis = self.process_cost(redis, r0, r1, deliveries);
        let mut loadtest = vec![std::process::id()];
        loadtest.extend(&self.worker_pids);
        report.loadtest = self.process_cost(loadtest, l0, l1, deliveries);
    }

    /// The end of a run that published at a pace (`paced`, measured from `t0` and
    /// the samples `s0` of gateway, Redis and load generator): waits until the steady
    /// clients received `expected` messages, then builds the report.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_paced(
        &mut self,
        mut pool: Pool,
        conn: &PhaseResult,
        (before, connected): (Option<Sample>, Option<Sample>),
        (t0, g0, r0, l0): (Instant, Option<Sample>, Option<Sample>, Option<Sample>),
        paced: Paced,
        expected: u64,
    ) -> Result<Report> {
        let (_, done) = self
            .drain(&mut pool, move |t| t.steady.unique >= expected)
            .await?;
        let (g1, r1, l1) = (
            self.gateway_sample(),
            self.redis_sample(),
            self.loadtest_sample(),
        );
        self.note_server().await;
        let window = done.duration_since(t0).as_secs_f64();
        let groups = pool.groups();
        let (stats, timeline) = pool
            .finish(self.left().max(Duration::from_secs(30)))
            .await?;
        let mut report = self.report(conn, &stats, &timeline, groups);
        let d = delivery(Some(&paced), expected, &stats.steady, window);
        let unique = Some(stats.steady.unique);
        report.gateway = self.gateway_cost(before, connected, g0.zip(g1), unique, conn.ok);
        self.side_costs(&mut report, (r0, l0), (r1, l1), unique);
        report.publish_call_us = Some(paced.call.summary());
        report.publish_lag_us = Some(paced.lag.summary());
        report.correct &= d.is_clean() && paced.failed == 0;
        report.delivery = Some(d);
        Ok(report)
    }

    /// Notes what the server says of itself at the end (Nchan: its stub status).
    pub async fn note_server(&mut self) {
        let Some(nginx) = &self.env.nginx else {
            return;
        };
        let note = match nginx.status().await {
            Ok(s) => {
                let get = |k: &str| s.get(k).map(String::as_str).unwrap_or("?");
                format!(
                    "Nchan {} ({}; {} worker(s), memory store): {} channels, {} subscribers, {} stored messages, shared memory used {} of {}",
                    get("nchan version"),
                    nginx.version,
                    nginx.workers.len(),
                    get("channels"),
                    get("subscribers"),
                    get("stored messages"),
                    get("shared memory used"),
                    get("shared memory limit"),
                )
            }
            Err(e) => format!("Nchan's status: {e:#}"),
        };
        self.notes.push(note);
    }

    pub fn process_cost(
        &self,
        pids: Vec<u32>,
        a: Option<Sample>,
        b: Option<Sample>,
        deliveries: Option<u64>,
    ) -> Option<ProcessCost> {
        let (a, b) = (a?, b?);
        let (cpu, pct) = procfs::cpu_between(&a, &b);
        Some(ProcessCost {
            pids,
            cpu_us: cpu,
            cpu_percent: pct,
            cpu_us_per_delivery: deliveries.filter(|d| *d > 0).map(|d| cpu as f64 / d as f64),
            rss_per_connection_bytes: None,
        })
    }
}

fn sum_samples(pids: &[u32]) -> Option<Sample> {
    if pids.is_empty() {
        return None;
    }
    let mut out: Option<Sample> = None;
    for p in pids {
        let s = procfs::sample(*p).ok()?;
        out = Some(match out {
            None => s,
            Some(o) => Sample {
                at: s.at,
                rss: o.rss + s.rss,
                cpu_us: o.cpu_us + s.cpu_us,
            },
        });
    }
    out
}

/// Delivery figures of a cohort that should have received `expected` messages.
pub fn delivery(paced: Option<&Paced>, expected: u64, got: &Cohort, window_secs: f64) -> Delivery {
    Delivery {
        published: paced.map_or(0, |p| p.ok),
        publish_failed: paced.map_or(0, |p| p.failed),
        unrouted: paced.map_or(0, |p| p.unrouted),
        expected,
        received: got.deliveries,
        unique: got.unique,
        lost: expected.saturating_sub(got.unique),
        duplicated: got.duplicates,
        out_of_order: got.out_of_order,
        unexpected: got.unique.saturating_sub(expected),
        window_secs,
        deliveries_per_sec: if window_secs > 0.0 {
            got.unique as f64 / window_secs
        } else {
            0.0
        },
        publish_errors: paced.map(|p| p.errors.clone()).unwrap_or_default(),
    }
}

/// A broadcast check: `n` messages to everyone, then wait until each connected
/// client (`clients` of them should be connected) has them.
pub async fn probe(
    run: &mut Run,
    pool: &mut Pool,
    n: u64,
    clients: u64,
) -> Result<(Paced, u64, Cohort)> {
    let before = pool.totals();
    let size = run.common.payload_size;
    let (paced, expected) = if run.common.server == ServerKind::Nchan {
        // No broadcast in Nchan: round after round, a message to every client's
        // channel; each publish says how many subscribers got it.
        let sink = run.sink(Via::Http)?;
        let users = run.common.connections as u64;
        let paced = run
            .publish(pool, sink, Pacing::paced(20_000.0, n * users), move |i| {
                Msg {
                    to: publish::To::User(crate::conn::user_id((i % users) as usize)),
                    payload: payload::make(i / users, None, size),
                }
            })
            .await?;
        let expected = paced.recipients;
        (paced, expected)
    } else {
        let sink = match &run.env.redis_url {
            Some(_) => run.sink(Via::Redis)?,
            None => run.sink(Via::Http)?,
        };
        run.wait_routes(pool, &[protocol::channel::BROADCAST.to_owned()])
            .await?;
        let paced = run
            .publish(pool, sink, Pacing::paced(100.0, n), move |i| Msg {
                to: publish::To::Broadcast,
                payload: payload::make(i, None, size),
            })
            .await?;
        let expected = paced.ok * clients;
        (paced, expected)
    };
    let base = before.unique();
    run.drain(pool, move |t| t.unique() - base >= expected)
        .await?;
    let after = pool.totals();
    let sum = |t: &Totals| {
        let mut c = t.steady;
        c.add(&t.dropped);
        c
    };
    let (a, b) = (sum(&after), sum(&before));
    let got = Cohort {
        clients,
        deliveries: a.deliveries - b.deliveries,
        unique: a.unique - b.unique,
        duplicates: a.duplicates - b.duplicates,
        out_of_order: a.out_of_order - b.out_of_order,
    };
    Ok((paced, expected, got))
}

/// Runs the scenario `cli` names and returns its report (also printed, written
/// and charted as the options ask).
pub async fn run(scenario: &crate::cli::Scenario) -> Result<Report> {
    use crate::cli::Scenario as S;
    scenario.validate()?;
    let report = match scenario {
        S::Idle(a) => idle::run(a).await?,
        S::Fanout(a) => fanout::run(a).await?,
        S::Targeted(a) => targeted::run(a).await?,
        S::Chat(a) => chat::run(a).await?,
        S::ReconnectStorm(a) => storm::run(a).await?,
        S::Recovery(a) => recovery::run(a).await?,
        S::Presence(a) => presence::run(a).await?,
        S::Chaos(a) => chaos::run(a).await?,
        S::Worker | S::ChaosWorker | S::FloorServer(_) => {
            bail!("`{}` is run by loadtest itself", scenario.name())
        }
        S::Floor(_) => bail!("`floor` is a calibration without a scenario report"),
        S::Compare(_) => bail!("`compare` runs several scenarios"),
    };
    let Some(common) = scenario.common() else {
        return Ok(report);
    };
    if let Some(path) = &common.json {
        report.write_json(path)?;
    }
    if let Some(dir) = &common.charts {
        crate::chart::draw_all(&report, dir)?;
    }
    if !common.quiet {
        print!("{}", report.table());
    }
    Ok(report)
}
