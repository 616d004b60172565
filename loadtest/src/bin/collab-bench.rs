//! `collab-bench`: the collaborative-editing benchmark of issue 20 (docs/benchmarks.md,
//! "Collaborative editing"). Loopback only: it starts its own `redis-server` and two
//! gateway processes (release build, `--bin`) on free ports, drives the Rust editor
//! (`collab::Document` over `client::Client`) against them, and kills what it started
//! when it ends (also on a panic, Ctrl-C or `--max-time`).
//!
//! 1. Editing: 2, 5 and 20 editors on one document, spread over the two nodes, each
//!    typing at a fixed rate (`paced`, 10 edits/s each), or all together faster than
//!    one operation in flight per editor carries (`flood`, 4,000 edits/s split
//!    between them: edits wait in each editor's buffer, which goes out composed the
//!    moment the operation in flight is in the log, so the document runs as fast as
//!    one operation in flight allows). Every insert is a unique marker `<editor.n>`;
//!    the other editors see it in their `Changed` events, which gives the end-to-end
//!    latency (local edit to remote application). Reports the operations the log
//!    accepted per second, the publishes that did not land (conflicts and other
//!    retries) per accepted operation, the latency, and checks that every marker
//!    reached every other editor once and that all texts are equal at the end.
//! 2. Loading: a log of 100,000 operations written with conditional publishes
//!    (publisher SDK, pipelined with the right offsets), then `Document::open` timed
//!    until it returns (loaded and up to date) without a snapshot, with one 500
//!    operations before the end, and with one at the end; and the same log read by a
//!    bare client (subscribe from offset 0, nothing applied) for comparison.
//!
//! ```sh
//! cargo build --release -p gateway -p loadtest --bin collab-bench
//! target/release/collab-bench --json docs/benchmarks/collab/collab-1.json
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::{Parser, ValueEnum};
use client::{Client, Event as ClientEvent};
use collab::ot::{Component, Operation};
use collab::{Document, DocumentEvent, Options};
use hdrhistogram::Histogram;
use publisher::{PublishError, Publisher};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use testkit::gateway::SECRET;
use testkit::{RedisServer, TestGateway};
use tokio::time::{Instant, MissedTickBehavior, sleep, timeout};

/// The gateways' history rules: the document logs and their snapshots.
const HISTORY: &str = "doc:* 200000 1h,snap:* 10 1h";
/// The same rules for the publisher SDK that writes the load test's log.
const HISTORY_RULES: [&str; 2] = ["doc:* 200000 1h", "snap:* 10 1h"];
/// Inbound frames per second (and burst) per connection: high enough that no editor
/// is throttled (the default is 50/s, 100 at once).
const RATE_LIMIT: &str = "100000";
/// Conditional publishes in flight while writing the load test's log.
const WRITE_WINDOW: usize = 256;

#[derive(Parser, Debug)]
#[command(
    name = "collab-bench",
    about = "Collaborative editing benchmark (issue 20): editors on one document over two \
             gateway nodes, and the load time of a long document (loopback only)"
)]
struct Args {
    /// The gateway binary (a release build).
    #[arg(long, default_value = "target/release/gateway")]
    gateway: PathBuf,
    /// Editor counts, one run per count and mode.
    #[arg(long, value_delimiter = ',', default_value = "2,5,20")]
    editors: Vec<usize>,
    /// Modes: `paced` (each editor edits at --rate) and `flood` (the editors together
    /// edit at --flood-total, faster than one operation in flight per editor
    /// carries: each editor's buffer goes out, composed, the moment its previous
    /// operation is in the log).
    #[arg(long, value_delimiter = ',', default_value = "paced,flood")]
    modes: Vec<Mode>,
    /// How long the editors type in each run.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Edits per second per editor in the paced runs.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Edits per second of all the editors together in the flood runs (split
    /// evenly between them).
    #[arg(long, default_value_t = 4000.0)]
    flood_total: f64,
    /// Share of the edits that delete another editor's marker (the rest insert one).
    #[arg(long, default_value_t = 0.2)]
    delete_ratio: f64,
    /// Past this many code points, half the edits delete (keeps snapshots under the
    /// gateway's 64 KiB payload limit).
    #[arg(long, default_value_t = 16_000)]
    max_text: usize,
    /// Editors also publish and follow cursors (`cursor:<doc>`); off by default,
    /// so that every publish a gateway counts is an operation or a snapshot.
    #[arg(long)]
    cursors: bool,
    /// Operations in the log of the load test.
    #[arg(long, default_value_t = 100_000)]
    load_ops: u64,
    /// The snapshot of the second load variant is this many operations before the end.
    #[arg(long, default_value_t = 500)]
    snapshot_behind: u64,
    /// Timed opens per load variant (the median is reported).
    #[arg(long, default_value_t = 5)]
    load_reps: usize,
    #[arg(long)]
    skip_editing: bool,
    #[arg(long)]
    skip_load: bool,
    /// Seed of the edits' positions and the load test's log.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Before each run, wait up to this long for the machine to be quiet (under 15 %
    /// busy for three 2-second windows: other processes on the same cores skew every
    /// figure); then run anyway and record it. 0: do not wait.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    quiet_wait: Duration,
    /// Stop (and kill what was started) after this long whatever happens.
    #[arg(long, default_value = "20m", value_parser = humantime::parse_duration)]
    max_time: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Paced,
    Flood,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Paced => "paced",
            Mode::Flood => "flood",
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let max = args.max_time;
        tokio::select! {
            r = timeout(max, run(&args)) => match r {
                Ok(r) => r,
                Err(_) => Err(anyhow!("stopped after --max-time {}", humantime::format_duration(max))),
            },
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        }
    })
}

/// Redis and the two gateway nodes, killed on drop.
struct Env {
    redis: RedisServer,
    gateways: Vec<TestGateway>,
}

impl Env {
    async fn start(bin: &PathBuf) -> Result<Env> {
        ensure!(
            bin.exists(),
            "no gateway binary at {} (cargo build --release -p gateway)",
            bin.display()
        );
        let redis = RedisServer::start().await;
        let builder = TestGateway::builder()
            .bin(bin)
            .gateway_timings()
            .set("--history", HISTORY)
            .set("--recovery-limit", "200000")
            .set("--rate-limit", RATE_LIMIT)
            .set("--rate-burst", RATE_LIMIT)
            .log_tail(200);
        let mut gateways = Vec::new();
        for node in ["node-a", "node-b"] {
            let gw = builder
                .clone()
                .redis(&redis, node)
                .try_start()
                .await
                .map_err(|e| anyhow!("{e}"))?;
            gateways.push(gw);
        }
        Ok(Env { redis, gateways })
    }

    fn url(&self, i: usize) -> String {
        self.gateways[i % self.gateways.len()].ws_url()
    }

    /// Publishes the nodes accepted from clients (operations, snapshots, cursors).
    async fn client_publishes(&self) -> f64 {
        let mut n = 0.0;
        for gw in &self.gateways {
            n += gw
                .metric("tidings_published_total{source=\"client\"}")
                .await;
        }
        n
    }

    async fn gaps(&self) -> f64 {
        let mut n = 0.0;
        for gw in &self.gateways {
            let text = gw.metrics().await;
            n += text
                .lines()
                .filter(|l| l.starts_with("tidings_stream_gaps_total"))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum::<f64>();
        }
        n
    }

    /// CPU seconds used so far: the gateways (summed) and Redis.
    async fn cpu(&self) -> (f64, f64) {
        let gw = self.gateways.iter().map(|g| proc_cpu(g.pid())).sum();
        let info = self.redis.info("cpu").await;
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or(0.0)
        };
        (gw, field("used_cpu_user") + field("used_cpu_sys"))
    }
}

/// utime + stime of a process in seconds (`/proc/<pid>/stat`, 100 ticks a second).
fn proc_cpu(pid: u32) -> f64 {
    let path = format!("/proc/{pid}/stat");
    let Ok(stat) = std::fs::read_to_string(path) else {
        return 0.0;
    };
    // The fields after the command name (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of the line are the 12th and 13th after the name.
    (tick(11) + tick(12)) / 100.0
}

fn self_cpu() -> f64 {
    proc_cpu(std::process::id())
}

/// Waits until the machine is quiet (see `--quiet-wait`); returns whether it was.
async fn wait_quiet(within: Duration) -> bool {
    if within.is_zero() {
        return true;
    }
    let end = Instant::now() + within;
    let mut quiet = 0;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    while Instant::now() < end {
        let before = host_busy();
        sleep(Duration::from_secs(2)).await;
        let busy = (host_busy() - before) / (2.0 * cores);
        quiet = if busy < 0.15 { quiet + 1 } else { 0 };
        if quiet >= 3 {
            return true;
        }
    }
    eprintln!(
        "  the machine did not get quiet within {}: running anyway",
        humantime::format_duration(within)
    );
    false
}

/// CPU seconds the whole machine spent busy so far (all cores, `/proc/stat`), to
/// tell how much other processes took during a run.
fn host_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: f64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn token(user: &str) -> Result<String> {
    let claims = json!({
        "sub": user,
        "exp": now_secs() + 86_400,
        "subscribe": ["doc:*", "snap:*", "cursor:*"],
        "publish": ["doc:*", "snap:*", "cursor:*"],
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

/// A connected client and its main event stream.
async fn connect_raw(url: String, user: &str) -> Result<(Client, client::Events)> {
    let (client, mut events) = Client::builder(url.clone())
        .token(token(user)?)
        .build()
        .map_err(|e| anyhow!("client: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match timeout(deadline - Instant::now(), events.next()).await {
            Ok(Some(ClientEvent::Connected { .. })) => break,
            Ok(Some(_)) => {}
            Ok(None) => bail!("client for {user} stopped before connecting to {url}"),
            Err(_) => bail!("client for {user} not connected to {url} within 10 s"),
        }
    }
    Ok((client, events))
}

/// A connected client whose main event stream is drained in the background.
async fn connect(url: String, user: &str) -> Result<Client> {
    let (client, mut events) = connect_raw(url, user).await?;
    tokio::spawn(async move { while events.next().await.is_some() {} });
    Ok(client)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

async fn run(args: &Args) -> Result<()> {
    let env = Env::start(&args.gateway).await?;
    let started = std::time::SystemTime::now();
    let mut report = json!({
        "tool": "collab-bench",
        "started_unix": now_secs(),
        "commit": git_commit(),
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "gateway_flags": {
            "history": HISTORY,
            "recovery_limit": 200000,
            "rate_limit": RATE_LIMIT,
            "rate_burst": RATE_LIMIT,
            "nodes": env.gateways.len(),
        },
        "editor_options": {"cursors": args.cursors, "snapshot_interval": 500},
        "args": format!("{args:?}"),
    });
    if !args.skip_editing {
        let mut runs = Vec::new();
        for &mode in &args.modes {
            for &n in &args.editors {
                let r = editing_run(&env, args, n, mode).await?;
                print_editing(&r);
                runs.push(r);
            }
        }
        println!("\n{}", editing_table(&runs));
        report["editing"] = Value::Array(runs);
    }
    if !args.skip_load {
        let r = load_run(&env, args).await?;
        println!("\n{}", load_table(&r));
        report["load"] = r;
    }
    report["elapsed_s"] = json!(started.elapsed().map_or(0.0, |d| d.as_secs_f64()));
    if let Some(path) = &args.json {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    let failed: Vec<String> = report["editing"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["ok"] != json!(true))
        .map(|r| format!("{} editors {}", r["editors"], r["mode"]))
        .collect();
    ensure!(failed.is_empty(), "checks failed: {}", failed.join(", "));
    Ok(())
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// 1. Editing
// ---------------------------------------------------------------------------------

/// When each editor made each of its markers: `sent[editor][n]`.
type Sent = Arc<Mutex<Vec<Vec<Instant>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one editor saw of the others.
struct Seen {
    /// End-to-end latency of the others' markers, microseconds.
    latency: Histogram<u64>,
    /// Markers received per source editor, each counted once.
    received: Vec<Vec<bool>>,
    duplicates: u64,
    unknown: u64,
    changes: u64,
    reloads: u64,
    skipped: u64,
    lagged: u64,
    errors: Vec<String>,
    disconnects: u64,
}

/// What one editor did.
#[derive(Default)]
struct Typed {
    inserts: u64,
    deletes: u64,
}

/// A marker's editor and number, from the text between `<` and `>`.
fn parse_marker(s: &str) -> Option<(usize, usize)> {
    let (e, n) = s.split_once('.')?;
    Some((e.parse().ok()?, n.parse().ok()?))
}

/// The markers inserted by an operation.
fn markers(op: &Operation) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for c in op.components() {
        if let Component::Insert(s) = c {
            let mut rest = s.as_str();
            while let Some(start) = rest.find('<') {
                let Some(len) = rest[start..].find('>') else {
                    break;
                };
                if let Some(m) = parse_marker(&rest[start + 1..start + len]) {
                    out.push(m);
                }
                rest = &rest[start + len + 1..];
            }
        }
    }
    out
}

/// Reads one editor's events until its document is closed.
async fn watch(
    me: usize,
    editors: usize,
    mut events: collab::DocumentEvents,
    sent: Sent,
) -> Result<Seen> {
    let mut seen = Seen {
        latency: Histogram::new_with_bounds(1, 120_000_000, 3)?,
        received: vec![Vec::new(); editors],
        duplicates: 0,
        unknown: 0,
        changes: 0,
        reloads: 0,
        skipped: 0,
        lagged: 0,
        errors: Vec::new(),
        disconnects: 0,
    };
    while let Some(ev) = events.next().await {
        let at = Instant::now();
        match ev {
            DocumentEvent::Changed { op, .. } => {
                seen.changes += 1;
                let found = markers(&op);
                let sent = lock(&sent);
                for (e, n) in found {
                    let Some(t) = sent.get(e).and_then(|v| v.get(n)) else {
                        seen.unknown += 1;
                        continue;
                    };
                    if e == me {
                        seen.unknown += 1;
                        continue;
                    }
                    let got = &mut seen.received[e];
                    if got.len() <= n {
                        got.resize(n + 1, false);
                    }
                    if got[n] {
                        seen.duplicates += 1;
                        continue;
                    }
                    got[n] = true;
                    let us = at.saturating_duration_since(*t).as_micros() as u64;
                    seen.latency.saturating_record(us.max(1));
                }
            }
            DocumentEvent::Reloaded { .. } => seen.reloads += 1,
            DocumentEvent::Skipped { .. } => seen.skipped += 1,
            // Events dropped because this reader fell behind: markers go missing.
            DocumentEvent::Lagged => seen.lagged += 1,
            DocumentEvent::Connection { connected: false } => seen.disconnects += 1,
            DocumentEvent::Error(e) if seen.errors.len() < 10 => seen.errors.push(e.to_string()),
            _ => {}
        }
    }
    Ok(seen)
}

/// The next edit of editor `me` on `text` (ASCII: markers only): an insert of
/// `marker` at a marker boundary, or the deletion of a whole marker of another
/// editor. Positions are kept at boundaries so markers are never cut.
fn plan(
    text: &str,
    me: usize,
    marker: &str,
    delete_ratio: f64,
    max_text: usize,
    rng: &mut StdRng,
) -> (Operation, bool) {
    let len = text.len();
    let p_delete = if len > max_text { 0.5 } else { delete_ratio };
    let mut op = Operation::new();
    if len > 0 && rng.random_bool(p_delete) {
        let from = rng.random_range(0..len);
        // The first marker of another editor at or after `from` (wrapping round).
        let starts = text[from..]
            .match_indices('<')
            .map(|(i, _)| from + i)
            .chain(text[..from].match_indices('<').map(|(i, _)| i));
        for s in starts.take(64) {
            let Some(l) = text[s..].find('>') else {
                continue;
            };
            let own = parse_marker(&text[s + 1..s + l]).is_some_and(|(e, _)| e == me);
            if !own {
                op.retain(s).delete(l + 1).retain(len - s - l - 1);
                return (op, true);
            }
        }
    }
    let from = rng.random_range(0..=len);
    let at = text[from..].find('<').map_or(len, |i| from + i);
    op.retain(at).insert(marker).retain(len - at);
    (op, false)
}

/// Types into `doc` at `rate` edits per second until `deadline`.
#[allow(clippy::too_many_arguments)]
async fn type_into(
    doc: Arc<Document>,
    me: usize,
    rate: f64,
    delete_ratio: f64,
    max_text: usize,
    deadline: Instant,
    sent: Sent,
    seed: u64,
) -> Result<Typed> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut typed = Typed::default();
    let period = Duration::from_secs_f64(1.0 / rate);
    // A random phase, so that the paced editors do not edit in lockstep.
    let first = Instant::now() + period.mul_f64(rng.random_range(0.0..1.0));
    // Late ticks are caught up at once (`Burst`): the offered rate stays fixed (also
    // above 1,000/s, beyond the timer's millisecond), and editors delayed together do
    // not fall into step for the rest of the run.
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut n = 0usize;
    loop {
        ticks.tick().await;
        if Instant::now() >= deadline {
            break;
        }
        let marker = format!("<{me}.{n}>");
        let mut deleted = false;
        // Planned on the text of the moment and applied under the same lock, so a
        // remote operation cannot move the boundaries in between.
        doc.edit_with(|text| {
            let (op, delete) = plan(text, me, &marker, delete_ratio, max_text, &mut rng);
            deleted = delete;
            if !delete {
                // Registered before the edit, so no other editor can see it first.
                let mut s = lock(&sent);
                s[me].push(Instant::now());
            }
            Some(op)
        })
        .map_err(|e| anyhow!("editor {me}: {e}"))?;
        if deleted {
            typed.deletes += 1;
        } else {
            typed.inserts += 1;
            n += 1;
        }
    }
    Ok(typed)
}

async fn editing_run(env: &Env, args: &Args, editors: usize, mode: Mode) -> Result<Value> {
    let quiet = wait_quiet(args.quiet_wait).await;
    let channel = format!("doc:edit-{}-{editors}-{}", mode.name(), now_secs());
    eprintln!(
        "editing: {editors} editors, {}, {} on {channel}",
        mode.name(),
        humantime::format_duration(args.duration)
    );
    let mut clients = Vec::new();
    let mut docs = Vec::new();
    let mut watchers = Vec::new();
    let sent: Sent = Arc::new(Mutex::new(vec![Vec::new(); editors]));
    for i in 0..editors {
        let client = connect(env.url(i), &format!("editor{i}")).await?;
        let opts = Options {
            client_id: Some(format!("e{i}")),
            cursors: args.cursors,
            // Room for bursts of remote changes (20 editors flooding): the readers
            // keep up, but a dropped event would count as a lost marker.
            event_capacity: 1 << 16,
            ..Options::default()
        };
        let (doc, events) = timeout(
            Duration::from_secs(20),
            Document::open(&client, channel.clone(), opts),
        )
        .await
        .map_err(|_| anyhow!("editor {i}: open timed out"))??;
        watchers.push(tokio::spawn(watch(i, editors, events, sent.clone())));
        docs.push(Arc::new(doc));
        clients.push(client);
    }
    let publishes0 = env.client_publishes().await;
    let gaps0 = env.gaps().await;
    let (gw_cpu0, redis_cpu0) = env.cpu().await;
    let bench_cpu0 = self_cpu();
    let host0 = host_busy();
    let load_before = loadavg();
    let rev0 = docs[0].revision();
    let t0 = Instant::now();
    let deadline = t0 + args.duration;
    let rate = match mode {
        Mode::Flood => args.flood_total / editors as f64,
        Mode::Paced => args.rate,
    };
    let mut typists = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        typists.push(tokio::spawn(type_into(
            doc.clone(),
            i,
            rate,
            args.delete_ratio,
            args.max_text,
            deadline,
            sent.clone(),
            args.seed.wrapping_mul(1000).wrapping_add(i as u64),
        )));
    }
    // The log's growth, second by second, as editor 0 sees it.
    let mut timeline = Vec::new();
    let mut last = rev0;
    while Instant::now() < deadline {
        sleep(Duration::from_secs(1).min(deadline - Instant::now())).await;
        let r = docs[0].revision();
        timeline.push(r - last);
        last = r;
    }
    let rev_at_deadline = docs.iter().map(|d| d.revision()).max().unwrap_or(0);
    let (gw_cpu1, redis_cpu1) = env.cpu().await;
    let bench_cpu1 = self_cpu();
    let host1 = host_busy();
    let mut typed = Vec::new();
    for t in typists {
        typed.push(t.await??);
    }
    // Quiescence: nothing pending anywhere and every editor at the same revision.
    let settle_start = Instant::now();
    let settled = loop {
        let revs: Vec<u64> = docs.iter().map(|d| d.revision()).collect();
        let idle = docs.iter().all(|d| !d.has_pending() && d.is_synced());
        if idle && revs.iter().all(|&r| r == revs[0]) {
            break true;
        }
        if settle_start.elapsed() > Duration::from_secs(60) {
            break false;
        }
        sleep(Duration::from_millis(20)).await;
    };
    let settle_ms = settle_start.elapsed().as_secs_f64() * 1000.0;
    let final_rev = docs[0].revision();
    let texts: Vec<String> = docs.iter().map(|d| d.text()).collect();
    let texts_equal = texts.iter().all(|t| *t == texts[0]);
    let snap = clients[0]
        .history(collab::editor::snapshot_channel(&channel), Some(1), None)
        .await
        .map_err(|e| anyhow!("snapshot channel: {e}"))?;
    let snapshots = snap.offset;
    let publishes = env.client_publishes().await - publishes0;
    let gaps = env.gaps().await - gaps0;
    for d in &docs {
        d.close().await;
    }
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(w.await??);
    }
    for c in &clients {
        c.close().await;
    }

    // Every marker of every editor must have reached every other editor once.
    let sent = lock(&sent).clone();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let (mut expected, mut received, mut duplicates, mut unknown) = (0u64, 0u64, 0, 0);
    let (mut reloads, mut skipped, mut disconnects, mut lagged) = (0, 0, 0, 0);
    let mut errors = Vec::new();
    for (r, s) in seen.iter().enumerate() {
        latency.add(&s.latency)?;
        for (e, markers) in sent.iter().enumerate() {
            if e != r {
                expected += markers.len() as u64;
                received += s.received[e].iter().filter(|&&b| b).count() as u64;
            }
        }
        duplicates += s.duplicates;
        unknown += s.unknown;
        reloads += s.reloads;
        skipped += s.skipped;
        lagged += s.lagged;
        disconnects += s.disconnects;
        errors.extend(s.errors.iter().map(|e| format!("editor {r}: {e}")));
    }
    let inserts: u64 = typed.iter().map(|t| t.inserts).sum();
    let deletes: u64 = typed.iter().map(|t| t.deletes).sum();
    let edits = inserts + deletes;
    let accepted = final_rev - rev0;
    let in_window = rev_at_deadline - rev0;
    let secs = args.duration.as_secs_f64();
    let op_publishes = publishes - snapshots as f64;
    let retries = op_publishes - accepted as f64;
    let ok = settled
        && texts_equal
        && expected == received
        && duplicates == 0
        && unknown == 0
        && reloads == 0
        && lagged == 0;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(json!({
        "editors": editors,
        "mode": mode.name(),
        "rate_per_editor": rate,
        "duration_s": secs,
        "channel": channel,
        "edits": edits,
        "inserts": inserts,
        "deletes": deletes,
        "edits_per_s": edits as f64 / secs,
        "accepted_ops": accepted,
        "accepted_in_window": in_window,
        "ops_per_s": in_window as f64 / secs,
        "edits_per_op": if accepted > 0 { edits as f64 / accepted as f64 } else { 0.0 },
        // With cursors on, the nodes' publish counts mix cursors in: no retry figure.
        "op_publishes": if args.cursors { Value::Null } else { json!(op_publishes) },
        "retries": if args.cursors { Value::Null } else { json!(retries) },
        "retries_per_op": if args.cursors || accepted == 0 { Value::Null } else { json!(retries / accepted as f64) },
        "cursors": args.cursors,
        "snapshots_written": snapshots,
        "latency_ms": {
            "samples": latency.len(),
            "p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": latency.max() as f64 / 1000.0,
            "mean": latency.mean() / 1000.0,
        },
        "markers": {
            "expected": expected, "received": received, "lost": expected.saturating_sub(received),
            "duplicated": duplicates, "unknown": unknown,
        },
        "settled": settled,
        "settle_ms": settle_ms,
        "texts_equal": texts_equal,
        "final_revision": final_rev,
        "final_len": texts[0].len(),
        "reloads": reloads,
        "skipped": skipped,
        "lagged": lagged,
        "disconnects": disconnects,
        "stream_gaps": gaps,
        "errors": errors,
        "cpu_s": {
            "gateways": gw_cpu1 - gw_cpu0,
            "redis": redis_cpu1 - redis_cpu0,
            "bench": bench_cpu1 - bench_cpu0,
            "machine": host1 - host0,
            "others": (host1 - host0) - (gw_cpu1 - gw_cpu0) - (redis_cpu1 - redis_cpu0) - (bench_cpu1 - bench_cpu0),
        },
        "quiet_before": quiet,
        "ops_timeline": timeline,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "ok": ok,
    }))
}

fn print_editing(r: &Value) {
    eprintln!(
        "  {} editors {}: {:.0} ops/s ({} edits, {} ops), {:.2} retries/op, latency p50 {:.1} ms p99 {:.1} ms, markers {}/{}, texts equal {}, ok {}; cpu s: gateways {:.1} redis {:.1} bench {:.1} others {:.1}",
        r["editors"],
        r["mode"].as_str().unwrap_or(""),
        r["ops_per_s"].as_f64().unwrap_or(0.0),
        r["edits"],
        r["accepted_ops"],
        r["retries_per_op"].as_f64().unwrap_or(f64::NAN),
        r["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
        r["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        r["markers"]["received"],
        r["markers"]["expected"],
        r["texts_equal"],
        r["ok"],
        r["cpu_s"]["gateways"].as_f64().unwrap_or(0.0),
        r["cpu_s"]["redis"].as_f64().unwrap_or(0.0),
        r["cpu_s"]["bench"].as_f64().unwrap_or(0.0),
        r["cpu_s"]["others"].as_f64().unwrap_or(0.0),
    );
    if let Some(errors) = r["errors"].as_array().filter(|e| !e.is_empty()) {
        eprintln!("  errors: {errors:?}");
    }
}

fn editing_table(runs: &[Value]) -> String {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    let mut s = String::from(
        "| editors | mode | edits/s | accepted ops/s | edits per op | retries per accepted op | latency p50 / p99 (ms) | markers received / expected | texts equal |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let name = r["mode"].as_str().unwrap_or("");
        let mut mode = match r["rate_per_editor"].as_f64() {
            Some(rate) => format!("{name} {rate}/s each"),
            None => name.to_owned(),
        };
        if r["cursors"] == json!(true) {
            mode.push_str(", cursors");
        }
        let retries = r["retries_per_op"]
            .as_f64()
            .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} | {:.1} / {:.1} | {} / {} | {} |\n",
            r["editors"],
            mode,
            f(&r["edits_per_s"]),
            f(&r["ops_per_s"]),
            f(&r["edits_per_op"]),
            retries,
            f(&r["latency_ms"]["p50"]),
            f(&r["latency_ms"]["p99"]),
            r["markers"]["received"],
            r["markers"]["expected"],
            if r["texts_equal"] == json!(true) {
                "yes"
            } else {
                "NO"
            },
        ));
    }
    s
}

// ---------------------------------------------------------------------------------
// 2. Loading
// ---------------------------------------------------------------------------------

/// A typing session of `n` operations: one character typed (70 %) or deleted (30 %)
/// at a caret that mostly moves on by itself and sometimes jumps. Returns the
/// payloads and the text after each multiple of `keep` (and at the end).
fn typing_log(n: u64, seed: u64, keep: &[u64]) -> (Vec<String>, HashMap<u64, String>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text: Vec<u8> = Vec::new();
    let mut caret = 0usize;
    let mut payloads = Vec::with_capacity(n as usize);
    let mut texts = HashMap::new();
    for i in 1..=n {
        if rng.random_bool(0.05) {
            caret = rng.random_range(0..=text.len());
        }
        let len = text.len();
        let mut op = Operation::new();
        if len > 0 && caret > 0 && rng.random_bool(0.3) {
            // A backspace.
            op.retain(caret - 1).delete(1).retain(len - caret);
            text.remove(caret - 1);
            caret -= 1;
        } else {
            let c = if rng.random_bool(0.15) {
                b' '
            } else {
                rng.random_range(b'a'..=b'z')
            };
            let s = [c];
            let s = std::str::from_utf8(&s).unwrap_or("x");
            op.retain(caret).insert(s).retain(len - caret);
            text.insert(caret, c);
            caret += 1;
        }
        payloads.push(json!({"op": op, "client": "typist", "seq": i}).to_string());
        if keep.contains(&i) {
            texts.insert(i, String::from_utf8_lossy(&text).into_owned());
        }
    }
    (payloads, texts)
}

/// Appends `payloads` to `channel` as operations 1..=n with conditional publishes,
/// `WRITE_WINDOW` in flight on one connection (in order, so each finds the offset
/// it expects); a publish that lands out of order conflicts and is sent again.
/// Returns the epoch and the number of conflicts.
async fn write_log(publ: &Publisher, channel: &str, payloads: &[String]) -> Result<(String, u64)> {
    let first = publ
        .to_channel(channel)
        .event("op")
        .raw_payload(&payloads[0])
        .expect(0, "")
        .send()
        .await?;
    let epoch = first
        .epoch
        .clone()
        .ok_or_else(|| anyhow!("no epoch in a conditional receipt"))?;
    ensure!(
        first.offsets.first() == Some(&Some(1)),
        "first op not at offset 1: {first:?}"
    );
    let mut next = 1usize;
    let mut conflicts = 0u64;
    while next < payloads.len() {
        let end = (next + WRITE_WINDOW).min(payloads.len());
        let sends = (next..end).map(|k| {
            publ.to_channel(channel)
                .event("op")
                .raw_payload(&payloads[k])
                .expect(k as u64, epoch.clone())
                .send()
        });
        let results = futures_util::future::join_all(sends).await;
        let mut landed = next;
        let mut in_order = true;
        for (j, r) in results.into_iter().enumerate() {
            match r {
                Ok(_) if in_order => landed = next + j + 1,
                Ok(r) => bail!("operation {} landed after a conflict: {r:?}", next + j + 1),
                Err(PublishError::Conflict { offset, epoch: e }) => {
                    ensure!(e == epoch, "the epoch changed while writing the log");
                    in_order = false;
                    conflicts += 1;
                    landed = landed.max(offset as usize);
                }
                Err(e) => return Err(e.into()),
            }
        }
        next = landed;
    }
    Ok((epoch, conflicts))
}

/// Opens `channel` on a new connection and times it; checks the result.
async fn timed_open(env: &Env, i: usize, channel: &str, n: u64, expect: &str) -> Result<f64> {
    let client = connect(env.url(i), &format!("loader{i}")).await?;
    let t = Instant::now();
    let (doc, _events) = timeout(
        Duration::from_secs(120),
        Document::open(&client, channel.to_owned(), Options::default()),
    )
    .await
    .map_err(|_| anyhow!("opening {channel} took over 120 s"))??;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    ensure!(
        doc.is_synced(),
        "{channel}: open returned before it was synced"
    );
    ensure!(
        doc.revision() == n,
        "{channel}: opened at revision {} of {n}",
        doc.revision()
    );
    ensure!(
        doc.with_text(|t| t == expect),
        "{channel}: wrong text after open"
    );
    doc.close().await;
    client.close().await;
    Ok(ms)
}

/// The same log read by a bare client (subscribe from offset 0, every message
/// counted, nothing applied): the transport's share of a load.
async fn timed_replay(env: &Env, i: usize, channel: &str, n: u64) -> Result<f64> {
    let (client, mut events) = connect_raw(env.url(i), &format!("reader{i}")).await?;
    let t = Instant::now();
    let sub = {
        let (client, channel) = (client.clone(), channel.to_owned());
        tokio::spawn(async move {
            let since = client::Since {
                offset: 0,
                epoch: String::new(),
            };
            client.subscribe_from(channel, since).await
        })
    };
    let deadline = t + Duration::from_secs(120);
    let mut count = 0u64;
    loop {
        let ev = timeout(deadline - Instant::now(), events.next())
            .await
            .map_err(|_| anyhow!("{channel}: replay took over 120 s ({count} of {n})"))?
            .ok_or_else(|| anyhow!("client stopped during the replay"))?;
        if let ClientEvent::Message {
            channel: c,
            offset: Some(o),
            ..
        } = ev
            && c == channel
        {
            count += 1;
            if o == n {
                break;
            }
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    ensure!(count == n, "{channel}: replayed {count} messages of {n}");
    sub.await?.map_err(|e| anyhow!("subscribe: {e}"))?;
    client.close().await;
    Ok(ms)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

async fn load_run(env: &Env, args: &Args) -> Result<Value> {
    let n = args.load_ops;
    ensure!(
        n > args.snapshot_behind,
        "--snapshot-behind must be below --load-ops"
    );
    let snap_rev = n - args.snapshot_behind;
    let (payloads, texts) = typing_log(n, args.seed, &[snap_rev, n]);
    let final_text = texts.get(&n).cloned().unwrap_or_default();
    let snap_text = texts.get(&snap_rev).cloned().unwrap_or_default();
    let log_bytes: usize = payloads.iter().map(String::len).sum();
    let publ = Publisher::builder(env.redis.url())
        .history(protocol::history::HistoryRules::parse(HISTORY_RULES).map_err(|e| anyhow!(e))?)
        .connections(1)
        .build()?;
    let stamp = now_secs();
    let plain = format!("doc:load-plain-{stamp}");
    let snapped = format!("doc:load-snap-{stamp}");
    let mut writes = Vec::new();
    for channel in [&plain, &snapped] {
        eprintln!("load: writing {n} operations to {channel}");
        let t = Instant::now();
        let (epoch, conflicts) = write_log(&publ, channel, &payloads).await?;
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "  {:.1} s ({:.0} ops/s), {conflicts} conflicts",
            secs,
            n as f64 / secs
        );
        writes.push(json!({"channel": channel, "seconds": secs, "ops_per_s": n as f64 / secs, "conflicts": conflicts, "epoch": epoch}));
    }
    let epoch = writes[1]["epoch"].as_str().unwrap_or("").to_owned();
    let snapshot = |rev: u64, text: &str| json!({"rev": rev, "epoch": epoch, "text": text});
    publ.to_channel(format!("snap:{snapped}"))
        .event("snapshot")
        .payload(&snapshot(snap_rev, &snap_text))
        .send()
        .await?;

    let mut variants = Vec::new();
    let quiet = wait_quiet(args.quiet_wait).await;
    let host0 = host_busy();
    let behind = format!("snapshot {} behind", args.snapshot_behind);
    let mut times: HashMap<&str, Vec<f64>> = HashMap::new();
    for rep in 0..args.load_reps {
        for (name, channel) in [("no snapshot", &plain), (behind.as_str(), &snapped)] {
            let ms = timed_open(env, rep, channel, n, &final_text).await?;
            eprintln!("  open {name} #{rep}: {ms:.0} ms");
            times.entry(name).or_default().push(ms);
        }
        let ms = timed_replay(env, rep, &plain, n).await?;
        eprintln!("  bare replay #{rep}: {ms:.0} ms");
        times.entry("bare client replay").or_default().push(ms);
    }
    // Then a snapshot at the last revision: nothing left to replay.
    publ.to_channel(format!("snap:{snapped}"))
        .event("snapshot")
        .payload(&snapshot(n, &final_text))
        .send()
        .await?;
    for rep in 0..args.load_reps {
        let ms = timed_open(env, rep, &snapped, n, &final_text).await?;
        eprintln!("  open snapshot at the end #{rep}: {ms:.0} ms");
        times.entry("snapshot at the end").or_default().push(ms);
    }
    for (name, replayed, snap_len) in [
        ("no snapshot", n, 0),
        (behind.as_str(), args.snapshot_behind, snap_text.len()),
        ("snapshot at the end", 0, final_text.len()),
        ("bare client replay", n, 0),
    ] {
        let v = times.get(name).cloned().unwrap_or_default();
        variants.push(json!({
            "variant": name,
            "ops_replayed": replayed,
            "snapshot_chars": snap_len,
            "open_ms": v,
            "median_ms": median(&v),
            "min_ms": v.iter().copied().fold(f64::INFINITY, f64::min),
            "max_ms": v.iter().copied().fold(0.0, f64::max),
        }));
    }
    Ok(json!({
        "quiet_before_opens": quiet,
        "machine_busy_cpu_s_during_opens": host_busy() - host0,
        "loadavg": loadavg(),
        "ops": n,
        "log_payload_bytes": log_bytes,
        "final_chars": final_text.len(),
        "snapshot_rev": snap_rev,
        "writes": writes,
        "variants": variants,
    }))
}

fn load_table(r: &Value) -> String {
    let mut s = format!(
        "Document of {} operations ({} chars at the end, {} bytes of payloads)\n\n\
         | variant | operations replayed | open until synced, median (min-max) ms |\n|---|---|---|\n",
        r["ops"], r["final_chars"], r["log_payload_bytes"]
    );
    for v in r["variants"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {} | {:.0} ({:.0}-{:.0}) |\n",
            v["variant"].as_str().unwrap_or(""),
            v["ops_replayed"],
            v["median_ms"].as_f64().unwrap_or(0.0),
            v["min_ms"].as_f64().unwrap_or(0.0),
            v["max_ms"].as_f64().unwrap_or(0.0),
        ));
    }
    s
}
