//! A group of load clients: one task per WebSocket, driven by commands (connect,
//! drop, resume, chat, stop) and reporting events (progress ticks, phase results,
//! final counters). A group runs inside the coordinating process, or in a worker
//! process (`loadtest worker`, hidden) that reads its spec and commands as JSON lines
//! on stdin and writes events as JSON lines on stdout, so one run can hold more
//! connections than one process may open files.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::ServerKind;
use crate::conn::{self, Target, Ws};
use crate::stats::{Cohort, Hist, SeqTracker};
use crate::{diff, payload};

/// How often a group reports progress.
pub const TICK: Duration = Duration::from_millis(250);

/// What each client subscribes to besides its personal channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeTo {
    /// Only the personal channel (idle, targeted, reconnect-storm).
    Personal,
    /// One shared channel (fanout, recovery).
    Channel(String),
    /// `room:<idx / size>`; clients also publish there (chat).
    Rooms { size: usize },
}

/// Everything a group needs to run its share of the clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSpec {
    pub targets: Vec<Target>,
    pub secret: String,
    /// Clients `first .. first + count` of `total`.
    pub first: usize,
    pub count: usize,
    pub total: usize,
    pub per_ip: usize,
    pub concurrency: usize,
    pub subscribe: SubscribeTo,
    /// Share of clients (spread evenly over indices) that drop commands affect.
    pub drop_fraction: f64,
    pub payload_size: usize,
    pub read_buffer: usize,
    pub token_ttl_secs: u64,
    pub connect_timeout_ms: u64,
    /// Tidings (welcome, subscribe frames, message frames) or Nchan (a plain
    /// WebSocket per channel, each frame a bare payload).
    #[serde(default)]
    pub server: ServerKind,
    /// Every this many clients (by index) one parses `presence_diff` frames and
    /// counts the users they announce (0: none does; all count frames and bytes).
    #[serde(default)]
    pub presence_sample_every: usize,
}

/// Whether client `idx` belongs to the cohort that drop commands disconnect:
/// exactly `floor(total * fraction)` clients, spread evenly.
pub fn in_drop_cohort(idx: usize, fraction: f64) -> bool {
    ((idx + 1) as f64 * fraction).floor() > (idx as f64 * fraction).floor()
}

/// The chat room of a client, and how many clients it holds.
pub fn room_of(idx: usize, size: usize, total: usize) -> (usize, u64) {
    let room = idx / size.max(1);
    let len = size.min(total - room * size);
    (room, len as u64)
}

/// Commands from the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open every connection of the group.
    Connect,
    /// Disconnect the drop cohort at once; with `hold` they stay away until
    /// `Resume`, otherwise they reconnect immediately (a reconnect storm).
    Drop {
        hold: bool,
    },
    Resume,
    /// Every client publishes to its room at `rate` messages/s for `duration_ms`.
    Chat {
        rate: f64,
        duration_ms: u64,
    },
    /// Close everything and report.
    Stop,
}

/// Progress, sent every [`TICK`]: per-interval figures and cumulative counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tick {
    pub unix_ms: u64,
    pub deliveries: u64,
    pub connects: u64,
    pub latency: Hist,
    pub steady: Cohort,
    pub dropped: Cohort,
    pub connected_now: u64,
    pub chat_expected: u64,
    /// Presence diffs received so far (cumulative).
    #[serde(default)]
    pub presence: diff::Seen,
}

/// A finished connect or reconnect phase of one group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseResult {
    pub ok: u64,
    pub failed: u64,
    /// From the phase's start to the last connection's welcome (and subscription).
    pub elapsed_us: u64,
    /// Time of each connection, from the phase's start for reconnects and from its
    /// own attempt for the first connect.
    pub hist: Hist,
    pub errors: Vec<String>,
}

/// The final counters of one group.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupStats {
    pub steady: Cohort,
    pub dropped: Cohort,
    pub latency: Hist,
    pub unexpected_closes: u64,
    pub close_codes: BTreeMap<String, u64>,
    pub pings: u64,
    /// WebSocket (protocol) pings received; tungstenite answers them itself.
    #[serde(default)]
    pub ws_pings: u64,
    pub bad_frames: u64,
    pub chat_sent: u64,
    pub chat_ok: u64,
    pub chat_failed: u64,
    pub chat_expected: u64,
    pub chat_errors: Vec<String>,
    pub since_sent: u64,
    pub recovered_true: u64,
    pub recovered_false: u64,
    pub recovered_absent: u64,
    /// Presence diffs received by all clients of the group.
    #[serde(default)]
    pub presence: diff::Seen,
    /// What each sample client saw of them.
    #[serde(default)]
    pub presence_samples: Vec<diff::Seen>,
}

/// Events to the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Tick(Tick),
    Connected(PhaseResult),
    Dropped { n: u64 },
    Reconnected(PhaseResult),
    ChatDone,
    Final(Box<GroupStats>),
    Fatal { message: String },
}

#[derive(Debug, Clone, Default)]
struct Control {
    stop: bool,
    drop_gen: u64,
    hold: bool,
    drop_at: Option<Instant>,
    resume_gen: u64,
    resume_at: Option<Instant>,
    chat: Option<ChatPlan>,
}

#[derive(Debug, Clone, Copy)]
struct ChatPlan {
    period: Duration,
    until: Instant,
}

#[derive(Default)]
struct Live {
    stats: GroupStats,
    interval_latency: Hist,
    interval_deliveries: u64,
    interval_connects: u64,
    connected_now: u64,
    // first connect
    connect_ok: u64,
    connect_failed: u64,
    connect_hist: Hist,
    connect_last: Option<Instant>,
    errors: Vec<String>,
    // drop / reconnect
    held: u64,
    reconnect_ok: u64,
    reconnect_failed: u64,
    reconnect_hist: Hist,
    reconnect_last: Option<Instant>,
    reconnect_errors: Vec<String>,
    chat_done: u64,
    chat_replies: u64,
    /// What each presence sample client saw so far, by client index.
    samples: BTreeMap<usize, diff::Seen>,
}

fn note(list: &mut Vec<String>, e: String) {
    if list.len() < 5 {
        list.push(e);
    }
}

struct Shared {
    spec: GroupSpec,
    sem: Semaphore,
    live: Mutex<Live>,
    control: watch::Sender<Control>,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, Live> {
        // A panicking client task must not take the counters down with it.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const PONG: &str = r#"{"type":"pong"}"#;

/// One client's protocol state that survives reconnects.
struct Client {
    idx: usize,
    dropper: bool,
    token: String,
    channel: Option<String>,
    room_len: u64,
    streams: Vec<(u64, SeqTracker)>,
    last_offset: Option<u64>,
    epoch: Option<String>,
    next_id: u64,
    chat_seq: u64,
    /// Set for the clients that parse presence diffs.
    sample: Option<Box<diff::Sample>>,
    sh: Arc<Shared>,
}

enum Flow {
    Continue,
    Closed(String),
}

impl Client {
    fn cohort<'a>(&self, live: &'a mut Live) -> &'a mut Cohort {
        if self.dropper {
            &mut live.stats.dropped
        } else {
            &mut live.stats.steady
        }
    }

    /// Counts one delivered benchmark payload (its stream's sequence, latency).
    fn delivered(&mut self, b: payload::Bench, now: u64) {
        let src = b.src.unwrap_or(u64::MAX);
        let pos = match self.streams.iter().position(|(s, _)| *s == src) {
            Some(p) => p,
            None => {
                self.streams.push((src, SeqTracker::default()));
                self.streams.len() - 1
            }
        };
        let seen = self.streams[pos].1.see(b.seq);
        let lat = now.saturating_sub(b.t);
        let mut live = self.sh.live();
        self.cohort(&mut live).count(seen);
        live.stats.latency.record(lat);
        live.interval_latency.record(lat);
        live.interval_deliveries += 1;
    }

    /// Counts a `presence_diff` frame (parsed by sample clients only).
    fn on_diff(&mut self, text: &str) {
        let (mut d, sample) = match &mut self.sample {
            Some(s) => (s.on_frame(text), Some(s.seen)),
            None => (diff::Seen::default(), None),
        };
        d.frames = 1;
        d.bytes = text.len() as u64;
        let mut live = self.sh.live();
        live.stats.presence.add(&d);
        if let Some(mut seen) = sample {
            seen.frames = seen.sample_frames;
            live.samples.insert(self.idx, seen);
        }
    }

    /// Handles one text frame; returns a frame to send back (a pong) if any.
    fn on_text(&mut self, text: &str) -> Option<&'static str> {
        if self.sh.spec.server == ServerKind::Nchan {
            // Nchan sends the published body as is.
            let now = payload::now_micros();
            match serde_json::from_str::<payload::Bench>(text) {
                Ok(b) => self.delivered(b, now),
                Err(_) => self.sh.live().stats.bad_frames += 1,
            }
            return None;
        }
        if diff::is_diff(text) {
            self.on_diff(text);
            return None;
        }
        let Some(f) = payload::decode(text) else {
            self.sh.live().stats.bad_frames += 1;
            return None;
        };
        match f.kind {
            "message" => {
                let now = payload::now_micros();
                let Some(b) = f.payload else {
                    self.sh.live().stats.bad_frames += 1;
                    return None;
                };
                if f.offset.is_some() {
                    self.last_offset = f.offset;
                    // The first message of a channel that had no history when we
                    // subscribed starts its epoch: resume in that one.
                    if let Some(e) = f.epoch
                        && self.epoch.as_deref() != Some(e)
                    {
                        self.epoch = Some(e.to_owned());
                    }
                }
                self.delivered(b, now);
                None
            }
            "ping" => {
                self.sh.live().stats.pings += 1;
                Some(PONG)
            }
            "reply" => {
                // Replies to chat publishes (subscribe replies are read in `open`).
                let mut live = self.sh.live();
                live.chat_replies += 1;
                if f.ok == Some(true) {
                    live.stats.chat_ok += 1;
                    live.stats.chat_expected += self.room_len;
                } else {
                    live.stats.chat_failed += 1;
                    let e = f.error.map(|e| e.to_string()).unwrap_or_default();
                    note(&mut live.stats.chat_errors, e);
                }
                None
            }
            _ => None,
        }
    }

    /// Reads one frame and handles it.
    async fn read_one(
        &mut self,
        ws: &mut Ws,
        msg: Option<Result<Message, impl std::fmt::Display>>,
    ) -> Flow {
        match msg {
            Some(Ok(Message::Text(t))) => {
                if let Some(reply) = self.on_text(t.as_str())
                    && let Err(e) = ws.send(Message::Text(reply.into())).await
                {
                    return Flow::Closed(format!("send: {e}"));
                }
                Flow::Continue
            }
            Some(Ok(Message::Ping(_))) => {
                self.sh.live().stats.ws_pings += 1;
                Flow::Continue
            }
            Some(Ok(Message::Close(f))) => Flow::Closed(
                f.map(|f| u16::from(f.code).to_string())
                    .unwrap_or_else(|| "close-without-code".into()),
            ),
            Some(Ok(_)) => Flow::Continue,
            Some(Err(e)) => Flow::Closed(format!("error: {e}")),
            None => Flow::Closed("eof".into()),
        }
    }

    /// Connects, reads the welcome and subscribes (with `since` when resuming and
    /// a position is known).
    async fn open(&mut self, resume: bool) -> Result<Ws> {
        let spec = &self.sh.spec;
        let target = &spec.targets[self.idx % spec.targets.len()];
        let source = conn::source_ip(self.idx, spec.per_ip);
        let timeout = Duration::from_millis(spec.connect_timeout_ms);
        let deadline = Instant::now() + timeout;
        if spec.server == ServerKind::Nchan {
            // One WebSocket per channel at Nchan's subscriber location; subscribed
            // once it is open (there is no welcome or subscribe frame).
            let channel = self
                .channel
                .clone()
                .unwrap_or_else(|| conn::user_id(self.idx));
            let at = Target {
                url: format!("{}/{channel}", target.url),
                addr: target.addr,
            };
            let from = (source, self.idx, spec.per_ip);
            return conn::connect_ws(&at, from, None, spec.read_buffer, timeout).await;
        }
        let mut ws = conn::connect(
            target,
            (source, self.idx, spec.per_ip),
            &self.token,
            spec.read_buffer,
            timeout,
        )
        .await?;
        // WebSocket pings may precede the welcome (a slow broker); skip them.
        let first = tokio::time::timeout_at(deadline, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => return other,
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no welcome in time"))?;
        match first {
            Some(Ok(Message::Text(t))) => {
                let kind = payload::decode(t.as_str()).map(|f| f.kind.to_owned());
                if kind.as_deref() != Some("welcome") {
                    bail!("expected welcome, got {}", t.as_str());
                }
            }
            other => bail!("expected welcome, got {other:?}"),
        }
        let Some(channel) = self.channel.clone() else {
            return Ok(ws);
        };
        self.next_id += 1;
        let id = self.next_id;
        let mut req = serde_json::json!({"type": "subscribe", "id": id, "channel": channel});
        let mut sent_since = false;
        if resume && let (Some(offset), Some(epoch)) = (self.last_offset, self.epoch.clone()) {
            req["since"] = serde_json::json!({"offset": offset, "epoch": epoch});
            sent_since = true;
            self.sh.live().stats.since_sent += 1;
        }
        ws.send(Message::Text(req.to_string().into())).await?;
        loop {
            let msg = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| anyhow!("no subscribe reply in time"))?;
            if let Some(Ok(Message::Text(t))) = &msg
                && let Some(f) = payload::decode(t.as_str())
                && f.kind == "reply"
                && f.id == Some(id)
            {
                if f.ok != Some(true) {
                    bail!("subscribe refused: {}", t.as_str());
                }
                let result = f.result.unwrap_or_default();
                if let Some(e) = result.get("epoch").and_then(|e| e.as_str()) {
                    self.epoch = Some(e.to_owned());
                }
                if resume {
                    let mut live = self.sh.live();
                    match result.get("recovered").and_then(|r| r.as_bool()) {
                        Some(true) => live.stats.recovered_true += 1,
                        Some(false) => live.stats.recovered_false += 1,
                        None => live.stats.recovered_absent += 1,
                    }
                    let _ = sent_since;
                }
                return Ok(ws);
            }
            if let Flow::Closed(why) = self.read_one(&mut ws, msg).await {
                bail!("closed while subscribing: {why}");
            }
        }
    }

    fn chat_frame(&mut self) -> String {
        self.next_id += 1;
        let p = payload::make(
            self.chat_seq,
            Some(self.idx as u64),
            self.sh.spec.payload_size,
        );
        self.chat_seq += 1;
        format!(
            r#"{{"type":"publish","id":{},"channel":"{}","event":"bench","payload":{p}}}"#,
            self.next_id,
            self.channel.as_deref().unwrap_or_default()
        )
    }

    async fn reopen(&mut self, since: Instant, resume: bool) -> Option<Ws> {
        let sh = self.sh.clone();
        let permit = sh.sem.acquire().await.ok();
        let r = self.open(resume).await;
        drop(permit);
        let mut live = self.sh.live();
        match r {
            Ok(ws) => {
                let now = Instant::now();
                live.reconnect_ok += 1;
                live.reconnect_hist.record((now - since).as_micros() as u64);
                live.reconnect_last = Some(live.reconnect_last.map_or(now, |l| l.max(now)));
                live.interval_connects += 1;
                live.connected_now += 1;
                Some(ws)
            }
            Err(e) => {
                live.reconnect_failed += 1;
                note(&mut live.reconnect_errors, format!("{e:#}"));
                None
            }
        }
    }

    async fn run(mut self, mut ctl: watch::Receiver<Control>) {
        let start = Instant::now();
        let sh = self.sh.clone();
        let permit = sh.sem.acquire().await.ok();
        let first = self.open(false).await;
        drop(permit);
        let mut ws = {
            let mut live = self.sh.live();
            match first {
                Ok(ws) => {
                    let now = Instant::now();
                    live.connect_ok += 1;
                    live.connect_hist.record((now - start).as_micros() as u64);
                    live.connect_last = Some(live.connect_last.map_or(now, |l| l.max(now)));
                    live.interval_connects += 1;
                    live.connected_now += 1;
                    if self.dropper {
                        live.stats.dropped.clients += 1;
                    } else {
                        live.stats.steady.clients += 1;
                    }
                    ws
                }
                Err(e) => {
                    live.connect_failed += 1;
                    note(&mut live.errors, format!("{e:#}"));
                    return;
                }
            }
        };
        let (mut seen_drop, mut seen_chat) = {
            let c = ctl.borrow_and_update();
            (c.drop_gen, c.chat.is_some())
        };
        let mut chat: Option<(tokio::time::Interval, Instant)> = None;
        loop {
            tokio::select! {
                changed = ctl.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let c = ctl.borrow_and_update().clone();
                    if c.stop {
                        break;
                    }
                    if c.drop_gen != seen_drop {
                        seen_drop = c.drop_gen;
                        if self.dropper {
                            drop(ws);
                            self.sh.live().connected_now -= 1;
                            let (since, resume) = if c.hold {
                                self.sh.live().held += 1;
                                let mut resumed = None;
                                while ctl.changed().await.is_ok() {
                                    let c = ctl.borrow_and_update().clone();
                                    if c.stop {
                                        return;
                                    }
                                    if c.resume_gen > 0 {
                                        resumed = c.resume_at;
                                        break;
                                    }
                                }
                                match resumed {
                                    Some(at) => (at, true),
                                    None => return,
                                }
                            } else {
                                (c.drop_at.unwrap_or_else(Instant::now), false)
                            };
                            match self.reopen(since, resume).await {
                                Some(w) => ws = w,
                                None => return,
                            }
                        }
                    }
                    if let (Some(plan), false) = (c.chat, seen_chat) {
                        seen_chat = true;
                        let offset = Duration::from_micros(
                            rand::random_range(0..plan.period.as_micros().max(1) as u64),
                        );
                        let mut iv = tokio::time::interval_at(Instant::now() + offset, plan.period);
                        iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
                        chat = Some((iv, plan.until));
                    }
                }
                msg = ws.next() => {
                    if let Flow::Closed(why) = self.read_one(&mut ws, msg).await {
                        let mut live = self.sh.live();
                        live.connected_now -= 1;
                        live.stats.unexpected_closes += 1;
                        *live.stats.close_codes.entry(why).or_default() += 1;
                        return;
                    }
                }
                _ = chat_tick(&mut chat), if chat.is_some() => {
                    let until = chat.as_ref().map(|(_, u)| *u).unwrap_or_else(Instant::now);
                    if Instant::now() >= until {
                        chat = None;
                        self.sh.live().chat_done += 1;
                        continue;
                    }
                    let frame = self.chat_frame();
                    if let Err(e) = ws.send(Message::Text(frame.into())).await {
                        let mut live = self.sh.live();
                        live.connected_now -= 1;
                        live.stats.unexpected_closes += 1;
                        *live.stats.close_codes.entry(format!("send: {e}")).or_default() += 1;
                        return;
                    }
                    self.sh.live().stats.chat_sent += 1;
                }
            }
        }
        let _ = ws.close(None).await;
    }
}

async fn chat_tick(chat: &mut Option<(tokio::time::Interval, Instant)>) {
    match chat {
        Some((iv, _)) => {
            iv.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sends `make(live)` once `done(live)` holds or `within` passed.
fn monitor(
    sh: &Arc<Shared>,
    events: &mpsc::UnboundedSender<Event>,
    within: Duration,
    done: impl Fn(&Live) -> bool + Send + 'static,
    make: impl FnOnce(&Live) -> Event + Send + 'static,
) {
    let sh = sh.clone();
    let events = events.clone();
    tokio::spawn(async move {
        let deadline = Instant::now() + within;
        loop {
            {
                let live = sh.live();
                if done(&live) || Instant::now() >= deadline {
                    let _ = events.send(make(&live));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

async fn ticker(sh: Arc<Shared>, events: mpsc::UnboundedSender<Event>) {
    let mut iv = tokio::time::interval(TICK);
    iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        let tick = {
            let mut live = sh.live();
            Tick {
                unix_ms: payload::now_millis(),
                deliveries: std::mem::take(&mut live.interval_deliveries),
                connects: std::mem::take(&mut live.interval_connects),
                latency: std::mem::take(&mut live.interval_latency),
                steady: live.stats.steady,
                dropped: live.stats.dropped,
                connected_now: live.connected_now,
                chat_expected: live.stats.chat_expected,
                presence: live.stats.presence,
            }
        };
        if events.send(Event::Tick(tick)).is_err() {
            return;
        }
    }
}

/// Reports `Reconnected` once `expected` clients came back (or failed to) since `since`.
fn monitor_reconnects(
    sh: &Arc<Shared>,
    events: &mpsc::UnboundedSender<Event>,
    within: Duration,
    expected: u64,
    since: Instant,
) {
    monitor(
        sh,
        events,
        within,
        move |l| l.reconnect_ok + l.reconnect_failed >= expected,
        move |l| {
            Event::Reconnected(phase(
                l.reconnect_ok,
                l.reconnect_failed,
                since,
                l.reconnect_last,
                &l.reconnect_hist,
                &l.reconnect_errors,
            ))
        },
    );
}

fn phase(
    ok: u64,
    failed: u64,
    start: Instant,
    last: Option<Instant>,
    hist: &Hist,
    errors: &[String],
) -> PhaseResult {
    PhaseResult {
        ok,
        failed,
        elapsed_us: last
            .map(|l| l.saturating_duration_since(start).as_micros() as u64)
            .unwrap_or(0),
        hist: hist.clone(),
        errors: errors.to_vec(),
    }
}

/// Runs one group of clients until `Stop` (or the command channel closes), then
/// sends `Final`.
pub async fn run_group(
    spec: GroupSpec,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) {
    let (control, _) = watch::channel(Control::default());
    let sh = Arc::new(Shared {
        sem: Semaphore::new(spec.concurrency.max(1)),
        spec,
        live: Mutex::new(Live::default()),
        control,
    });
    let count = sh.spec.count as u64;
    let phase_limit =
        Duration::from_millis(sh.spec.connect_timeout_ms) * 3 + Duration::from_secs(30);
    let mut tasks = JoinSet::new();
    let ticker = tokio::spawn(ticker(sh.clone(), events.clone()));
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            Command::Connect => {
                let spec = &sh.spec;
                for idx in spec.first..spec.first + spec.count {
                    let token = match conn::mint_token(
                        spec.secret.as_bytes(),
                        &conn::user_id(idx),
                        spec.token_ttl_secs,
                    ) {
                        Ok(t) => t,
                        Err(e) => {
                            let _ = events.send(Event::Fatal {
                                message: format!("{e:#}"),
                            });
                            return;
                        }
                    };
                    let (channel, room_len) = match &spec.subscribe {
                        SubscribeTo::Personal => (None, 0),
                        SubscribeTo::Channel(c) => (Some(c.clone()), 0),
                        SubscribeTo::Rooms { size } => {
                            let (room, len) = room_of(idx, *size, spec.total);
                            (Some(format!("room:{room}")), len)
                        }
                    };
                    let every = spec.presence_sample_every;
                    let sample = (every > 0 && idx % every == 0)
                        .then(|| Box::new(diff::Sample::new(spec.total)));
                    if sample.is_some() {
                        sh.live().samples.insert(idx, diff::Seen::default());
                    }
                    let client = Client {
                        sample,
                        idx,
                        dropper: in_drop_cohort(idx, spec.drop_fraction),
                        token,
                        channel,
                        room_len,
                        streams: Vec::new(),
                        last_offset: None,
                        epoch: None,
                        next_id: 0,
                        chat_seq: 0,
                        sh: sh.clone(),
                    };
                    tasks.spawn(client.run(sh.control.subscribe()));
                }
                let start = Instant::now();
                monitor(
                    &sh,
                    &events,
                    phase_limit
                        + Duration::from_millis(sh.spec.connect_timeout_ms)
                            * (count as u32 / sh.spec.concurrency.max(1) as u32 + 1),
                    move |l| l.connect_ok + l.connect_failed >= count,
                    move |l| {
                        Event::Connected(phase(
                            l.connect_ok,
                            l.connect_failed,
                            start,
                            l.connect_last,
                            &l.connect_hist,
                            &l.errors,
                        ))
                    },
                );
            }
            Command::Drop { hold } => {
                let now = Instant::now();
                let expected = {
                    let mut l = sh.live();
                    l.held = 0;
                    l.reconnect_ok = 0;
                    l.reconnect_failed = 0;
                    l.reconnect_hist = Hist::new();
                    l.reconnect_last = None;
                    l.reconnect_errors.clear();
                    l.stats.dropped.clients
                };
                sh.control.send_modify(|c| {
                    c.drop_gen += 1;
                    c.hold = hold;
                    c.drop_at = Some(now);
                    c.resume_gen = 0;
                });
                if hold {
                    monitor(
                        &sh,
                        &events,
                        phase_limit,
                        move |l| l.held >= expected,
                        |l| Event::Dropped { n: l.held },
                    );
                } else {
                    monitor_reconnects(&sh, &events, phase_limit, expected, now);
                }
            }
            Command::Resume => {
                let now = Instant::now();
                let expected = sh.live().held;
                sh.control.send_modify(|c| {
                    c.resume_gen += 1;
                    c.resume_at = Some(now);
                });
                monitor_reconnects(&sh, &events, phase_limit, expected, now);
            }
            Command::Chat { rate, duration_ms } => {
                let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
                let duration = Duration::from_millis(duration_ms);
                sh.control.send_modify(|c| {
                    c.chat = Some(ChatPlan {
                        period,
                        until: Instant::now() + duration,
                    });
                });
                monitor(
                    &sh,
                    &events,
                    duration + Duration::from_secs(10),
                    |l| l.chat_done >= l.connected_now && l.chat_replies >= l.stats.chat_sent,
                    |_| Event::ChatDone,
                );
            }
            Command::Stop => break,
        }
    }
    sh.control.send_modify(|c| c.stop = true);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    ticker.abort();
    let stats = {
        let live = sh.live();
        let mut stats = live.stats.clone();
        stats.presence_samples = live.samples.values().copied().collect();
        stats
    };
    let _ = events.send(Event::Final(Box::new(stats)));
}

/// The hidden `worker` subcommand: a group driven over stdin/stdout.
pub async fn worker_main() -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await
        .context("reading the group spec")?
        .ok_or_else(|| anyhow!("no group spec on stdin"))?;
    let spec: GroupSpec = serde_json::from_str(&first).context("bad group spec")?;
    // However the coordinator fares, a worker never outlives its tokens.
    let bound = Duration::from_secs(spec.token_ttl_secs);
    tokio::spawn(async move {
        tokio::time::sleep(bound).await;
        eprintln!("loadtest worker: time bound reached, exiting");
        std::process::exit(3);
    });
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(cmd) = serde_json::from_str::<Command>(&line)
                && cmd_tx.send(cmd).is_err()
            {
                return;
            }
        }
        // The coordinator went away: stop.
        let _ = cmd_tx.send(Command::Stop);
    });
    let group = tokio::spawn(run_group(spec, cmd_rx, ev_tx));
    let mut out = tokio::io::stdout();
    while let Some(ev) = ev_rx.recv().await {
        let is_final = matches!(ev, Event::Final(_));
        let mut line = serde_json::to_string(&ev).context("encoding an event")?;
        line.push('\n');
        out.write_all(line.as_bytes()).await?;
        out.flush().await?;
        if is_final {
            break;
        }
    }
    let _ = group.await;
    // The stdin reader sits in a blocking read that would hold the runtime open.
    std::process::exit(0);
}

impl GroupStats {
    /// Adds another group's counters.
    pub fn merge(&mut self, o: &GroupStats) {
        self.steady.add(&o.steady);
        self.dropped.add(&o.dropped);
        self.latency.merge(&o.latency);
        self.unexpected_closes += o.unexpected_closes;
        for (k, v) in &o.close_codes {
            *self.close_codes.entry(k.clone()).or_default() += v;
        }
        self.pings += o.pings;
        self.ws_pings += o.ws_pings;
        self.bad_frames += o.bad_frames;
        self.chat_sent += o.chat_sent;
        self.chat_ok += o.chat_ok;
        self.chat_failed += o.chat_failed;
        self.chat_expected += o.chat_expected;
        for e in &o.chat_errors {
            note(&mut self.chat_errors, e.clone());
        }
        self.since_sent += o.since_sent;
        self.recovered_true += o.recovered_true;
        self.recovered_false += o.recovered_false;
        self.recovered_absent += o.recovered_absent;
        self.presence.add(&o.presence);
        self.presence_samples
            .extend(o.presence_samples.iter().copied());
    }
}

impl PhaseResult {
    /// Adds another group's result of the same phase (phases run in parallel, so
    /// the elapsed time is the longest).
    pub fn merge(&mut self, o: &PhaseResult) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.elapsed_us = self.elapsed_us.max(o.elapsed_us);
        self.hist.merge(&o.hist);
        for e in &o.errors {
            note(&mut self.errors, e.clone());
        }
    }

    pub fn empty() -> PhaseResult {
        PhaseResult {
            ok: 0,
            failed: 0,
            elapsed_us: 0,
            hist: Hist::new(),
            errors: Vec::new(),
        }
    }

    /// Successful (re)connections per second over the phase.
    pub fn per_sec(&self) -> f64 {
        if self.elapsed_us == 0 {
            0.0
        } else {
            self.ok as f64 / (self.elapsed_us as f64 / 1e6)
        }
    }
}
