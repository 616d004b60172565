//! A chaos client: one WebSocket that is kept alive through every fault the way the
//! protocol recommends (reconnect with backoff and full jitter, at once after 1001
//! and 4005, a dead-connection timer of two heartbeats, resume of every channel with
//! history from the last offset it processed), while it records exactly what
//! arrived: per channel and publishing stream the set of sequence numbers received,
//! duplicates, late arrivals, every `recovered: false` with the position it gave,
//! and whether the end-of-run marker came. It never de-duplicates: what the gateway
//! sends twice is counted twice.
//!
//! A group of clients runs in this process or in a worker process (`loadtest
//! chaos-worker`, hidden), driven by [`Cmd`]s and reporting [`Ev`]s, both JSON lines
//! across processes.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::check::RangeSet;
use super::lanes;
use super::plan::{Kind, Layout, Rng};
use crate::conn::{self, Target, Ws};
use crate::stats::Hist;
use crate::worker::PhaseResult;

/// How often a group reports progress.
pub const TICK: Duration = Duration::from_millis(250);

/// Everything a group needs to run its share of the clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSpec {
    pub targets: Vec<Target>,
    pub secret: String,
    /// Clients `first .. first + count`.
    pub first: usize,
    pub count: usize,
    pub layout: Layout,
    pub per_ip: usize,
    pub concurrency: usize,
    pub payload_size: usize,
    pub read_buffer: usize,
    pub token_ttl_secs: u64,
    pub connect_timeout_ms: u64,
    /// How long a subscribe may wait for its reply.
    pub request_timeout_ms: u64,
    /// Largest reconnect backoff (full jitter below it).
    pub backoff_max_ms: u64,
    pub seed: u64,
}

/// Commands from the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Cmd {
    /// Start every client (each keeps reconnecting until `Stop`).
    Connect,
    /// Every client publishes to its chat room at `rate`/s for `duration_ms`.
    Chat { rate: f64, duration_ms: u64 },
    /// These clients stop reading for `ms` (with `blind`, they keep sending pongs).
    Stall {
        clients: Vec<usize>,
        ms: u64,
        blind: bool,
    },
    /// Close everything and report.
    Stop,
}

/// Progress, every [`TICK`]: per-interval figures and current counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tick {
    pub unix_ms: u64,
    pub deliveries: u64,
    pub connects: u64,
    pub latency: Hist,
    /// Clients with an open WebSocket.
    pub open: u64,
    /// Clients whose subscriptions are all confirmed.
    pub ready: u64,
    /// Clients that have the end marker on every channel.
    pub complete: u64,
    pub stalled: u64,
}

/// Events to the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Ev {
    Tick(Tick),
    /// Every client of the group was connected and subscribed once (or the time ran out).
    Connected(PhaseResult),
    Final(Box<GroupFinal>),
    Fatal {
        message: String,
    },
}

/// Received sequence numbers of one publishing stream on one channel.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamRx {
    /// The publishing client (chat), or `None` for the backend.
    pub src: Option<u64>,
    pub got: RangeSet,
    pub dups: u64,
    /// Arrived after a higher sequence number had (late).
    pub ooo: u64,
}

/// A `recovered: false` the client was given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    /// The highest sequence number of the backend stream received before it.
    pub before: Option<u64>,
    /// The position the gateway reported with it.
    pub epoch: Option<String>,
    pub offset: Option<u64>,
    /// The first backend sequence number received after it.
    pub after: Option<u64>,
}

/// What one client saw on one channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChanSummary {
    pub kind: Kind,
    pub name: String,
    pub marker: bool,
    pub streams: Vec<StreamRx>,
    pub notices: Vec<Notice>,
    pub resumes: u64,
    pub recovered_true: u64,
    pub recovered_absent: u64,
    pub gaps_seen: u64,
}

/// What one client published to its chat room.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChatSent {
    pub sent: u64,
    /// Sequence numbers the gateway acknowledged (`ok` reply).
    pub acked: RangeSet,
    pub refused: u64,
    /// Sent, but the connection ended before the reply.
    pub unknown: u64,
}

/// One client at the end of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientSummary {
    pub idx: usize,
    pub open: bool,
    pub ready: bool,
    /// Why the last connection ended or attempt failed.
    pub last_reason: Option<String>,
    pub connects: u64,
    pub channels: Vec<ChanSummary>,
    pub chat: Option<ChatSent>,
    /// From the first marker publish (group-local clock) to having them all, ms.
    pub markers_ms: Option<u64>,
}

/// One occurrence of a disconnect reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReasonExample {
    pub unix_ms: u64,
    /// The gateway (index) the connection was on or went to.
    pub gateway: usize,
    pub detail: String,
}

/// Occurrences of each reason kept as examples.
pub const EXAMPLES_PER_REASON: usize = 3;

/// How the connections of one stall on one gateway went on, and how many.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StallOutcome {
    /// 1 for the first `Stall` command, 2 for the next, ...
    pub stall: u64,
    /// The gateway (index) the stalled connection was on.
    pub gateway: usize,
    /// How the connection ended within a few seconds of the stall (close code or
    /// error), or "kept the connection".
    pub outcome: String,
    pub count: u64,
}

/// A group's final report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupFinal {
    pub clients: Vec<ClientSummary>,
    /// Connections ended or attempts failed, by reason (close code or error).
    pub reasons: BTreeMap<String, u64>,
    /// The first few occurrences of each reason: when, on which gateway, the message.
    pub examples: BTreeMap<String, Vec<ReasonExample>>,
    pub latency: Hist,
    pub pings: u64,
    pub bad_frames: u64,
    pub stalls: u64,
    /// What the stalled connections did next.
    pub stall_outcomes: Vec<StallOutcome>,
    /// Client tasks that did not end on `Stop` (their summaries are missing).
    pub lost_tasks: u64,
}

#[derive(Debug, Clone, Default)]
struct Control {
    stop: bool,
    chat: Option<(Duration, Instant)>,
    stall_gen: u64,
    stall: Option<Arc<(Vec<usize>, Duration, bool)>>,
}

#[derive(Default)]
struct Live {
    interval_deliveries: u64,
    interval_connects: u64,
    interval_latency: Hist,
    latency: Hist,
    open: u64,
    ready: u64,
    complete: u64,
    stalled: u64,
    first_ok: u64,
    first_hist: Hist,
    first_last: Option<Instant>,
    reasons: BTreeMap<String, u64>,
    examples: BTreeMap<String, Vec<ReasonExample>>,
    pings: u64,
    bad_frames: u64,
    stalls: u64,
    stall_outcomes: BTreeMap<(u64, usize, String), u64>,
}

struct Shared {
    spec: GroupSpec,
    sem: Semaphore,
    live: Mutex<Live>,
    control: watch::Sender<Control>,
    /// When the first end marker was seen by any client of the group.
    first_marker: Mutex<Option<Instant>>,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reason(&self, why: &str, detail: &str, gateway: usize) {
        let mut l = self.live();
        *l.reasons.entry(why.to_owned()).or_default() += 1;
        let ex = l.examples.entry(why.to_owned()).or_default();
        if ex.len() < EXAMPLES_PER_REASON {
            ex.push(ReasonExample {
                unix_ms: crate::payload::now_millis(),
                gateway,
                detail: detail.chars().take(300).collect(),
            });
        }
    }
}

/// The benchmark fields of a chaos payload.
#[derive(Debug, Deserialize)]
struct Body {
    seq: u64,
    t: u64,
    #[serde(default)]
    src: Option<u64>,
    #[serde(default)]
    end: Option<u8>,
}

/// A server frame, reduced to what a chaos client reads.
#[derive(Debug, Deserialize)]
struct In<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<u64>,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    payload: Option<Body>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    heartbeat_ms: Option<u64>,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

const PONG: &str = r#"{"type":"pong"}"#;
/// The connection ended without a close frame (what browsers report as 1006).
const EOF: &str = "1006 (no close frame)";
/// The connection was reset (RST) without a close frame.
const RESET: &str = "1006 (reset)";
/// How long after a stall the end of the connection is attributed to it.
const STALL_EFFECT: Duration = Duration::from_secs(6);

struct Chan {
    kind: Kind,
    name: String,
    /// Last (epoch, offset) processed, for channels with history.
    pos: Option<(String, u64)>,
    marker: bool,
    streams: Vec<StreamRx>,
    notices: Vec<Notice>,
    /// A notice waits for the first backend message after it.
    awaiting_after: bool,
    resumes: u64,
    recovered_true: u64,
    recovered_absent: u64,
    gaps_seen: u64,
}

impl Chan {
    fn stream(&mut self, src: Option<u64>) -> &mut StreamRx {
        match self.streams.iter().position(|s| s.src == src) {
            Some(i) => &mut self.streams[i],
            None => {
                self.streams.push(StreamRx {
                    src,
                    ..StreamRx::default()
                });
                let last = self.streams.len() - 1;
                &mut self.streams[last]
            }
        }
    }

    fn backend_max(&self) -> Option<u64> {
        self.streams
            .iter()
            .find(|s| s.src.is_none())
            .and_then(|s| s.got.max())
    }

    /// An answer to a resume (welcome or subscribe reply) and the position it gave.
    fn answered(
        &mut self,
        resumed: bool,
        recovered: Option<bool>,
        epoch: Option<&str>,
        offset: Option<u64>,
    ) {
        if resumed {
            self.resumes += 1;
            match recovered {
                Some(true) => self.recovered_true += 1,
                Some(false) => {
                    let before = self.backend_max();
                    self.notices.push(Notice {
                        before,
                        epoch: epoch.map(str::to_owned),
                        offset,
                        after: None,
                    });
                    self.awaiting_after = true;
                }
                None => self.recovered_absent += 1,
            }
        }
        // After `recovered: true` the replay brings the position forward; otherwise
        // the answer's position is where this stream continues.
        if recovered != Some(true)
            && let (Some(e), Some(o)) = (epoch, offset)
        {
            self.pos = Some((e.to_owned(), o));
        }
    }

    /// Tracks the history position of a message.
    fn advance(&mut self, epoch: Option<&str>, offset: Option<u64>) {
        let (Some(e), Some(o)) = (epoch, offset) else {
            return;
        };
        match &mut self.pos {
            Some((pe, po)) if pe == e => {
                if o > *po + 1 && *po > 0 {
                    self.gaps_seen += 1;
                }
                if o > *po {
                    *po = o;
                }
            }
            _ => self.pos = Some((e.to_owned(), o)),
        }
    }

    fn summary(&self) -> ChanSummary {
        ChanSummary {
            kind: self.kind,
            name: self.name.clone(),
            marker: self.marker,
            streams: self.streams.clone(),
            notices: self.notices.clone(),
            resumes: self.resumes,
            recovered_true: self.recovered_true,
            recovered_absent: self.recovered_absent,
            gaps_seen: self.gaps_seen,
        }
    }
}

/// How a connection ended.
enum End {
    Stop,
    /// Reason key (close code or error class) and a longer description.
    Closed(String, String),
}

struct Client {
    idx: usize,
    token: String,
    chans: Vec<Chan>,
    chat_chan: Option<usize>,
    chat: Option<ChatSent>,
    chat_seq: u64,
    rng: Rng,
    open: bool,
    ready: bool,
    complete: bool,
    markers_ms: Option<u64>,
    last_reason: Option<String>,
    connects: u64,
    attempts: u64,
    /// The gateway (index) of the current or last connection.
    gateway: usize,
    sh: Arc<Shared>,
}

/// Classifies a failed connection attempt.
fn connect_reason(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    if let Some(io) = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>()) {
        use std::io::ErrorKind as K;
        return match io.kind() {
            K::ConnectionRefused => "connect: refused".into(),
            K::ConnectionReset => "connect: reset".into(),
            K::TimedOut => "connect: timeout".into(),
            other => format!("connect: {other:?}"),
        };
    }
    if let Some(code) = text.split("HTTP ").nth(1) {
        return format!("connect: HTTP {}", code.chars().take(3).collect::<String>());
    }
    if text.contains("timed out") {
        return "connect: timeout".into();
    }
    "connect: other".into()
}

fn ws_reason(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    use tokio_tungstenite::tungstenite::error::ProtocolError as P;
    match e {
        E::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionReset => RESET.into(),
            std::io::ErrorKind::BrokenPipe => "broken pipe".into(),
            k => format!("io: {k:?}"),
        },
        E::Protocol(P::ResetWithoutClosingHandshake) => EOF.into(),
        E::Protocol(p) => format!("protocol: {p}").chars().take(60).collect(),
        E::ConnectionClosed | E::AlreadyClosed => "closed".into(),
        _ => "ws error".into(),
    }
}

impl Client {
    fn new(idx: usize, token: String, sh: Arc<Shared>) -> Client {
        let layout = sh.spec.layout;
        let chans: Vec<Chan> = layout
            .channels(idx)
            .into_iter()
            .map(|(kind, name)| Chan {
                kind,
                name,
                pos: None,
                marker: false,
                streams: Vec::new(),
                notices: Vec::new(),
                awaiting_after: false,
                resumes: 0,
                recovered_true: 0,
                recovered_absent: 0,
                gaps_seen: 0,
            })
            .collect();
        let chat_chan = chans.iter().position(|c| c.kind == Kind::Chat);
        Client {
            idx,
            token,
            chat: chat_chan.map(|_| ChatSent::default()),
            chat_chan,
            chans,
            chat_seq: 0,
            rng: Rng::new(sh.spec.seed ^ (idx as u64).wrapping_mul(0x9E37_79B9)),
            open: false,
            ready: false,
            complete: false,
            markers_ms: None,
            last_reason: None,
            connects: 0,
            attempts: 0,
            gateway: 0,
            sh,
        }
    }

    fn summary(&self) -> ClientSummary {
        ClientSummary {
            idx: self.idx,
            open: self.open,
            ready: self.ready,
            last_reason: self.last_reason.clone(),
            connects: self.connects,
            channels: self.chans.iter().map(Chan::summary).collect(),
            chat: self.chat.clone(),
            markers_ms: self.markers_ms,
        }
    }

    fn set_open(&mut self, open: bool) {
        if self.open != open {
            self.open = open;
            let mut l = self.sh.live();
            if open {
                l.open += 1;
            } else {
                l.open -= 1;
            }
        }
        if !open {
            self.set_ready(false);
        }
    }

    fn set_ready(&mut self, ready: bool) {
        if self.ready != ready {
            self.ready = ready;
            let mut l = self.sh.live();
            if ready {
                l.ready += 1;
            } else {
                l.ready -= 1;
            }
        }
    }

    /// Connects (resuming the personal channel when a position is known) and reads
    /// the welcome; returns the socket and the heartbeat interval.
    async fn open(&mut self) -> Result<(Ws, Duration), End> {
        let spec = &self.sh.spec;
        self.gateway = (self.idx + self.attempts as usize) % spec.targets.len();
        let base = &spec.targets[self.gateway];
        self.attempts += 1;
        let mut target = base.clone();
        let personal_resume = self.chans[0].pos.clone();
        if let Some((epoch, offset)) = &personal_resume {
            target.url = format!("{}?since={offset}&epoch={epoch}", base.url);
        }
        let timeout = Duration::from_millis(spec.connect_timeout_ms);
        let deadline = Instant::now() + timeout;
        let source = conn::source_ip(self.idx, spec.per_ip);
        let mut ws = conn::connect(
            &target,
            (source, self.idx, spec.per_ip),
            &self.token,
            spec.read_buffer,
            timeout,
        )
        .await
        .map_err(|e| End::Closed(connect_reason(&e), format!("{e:#}")))?;
        // WebSocket pings may come first (the gateway pings while a slow broker
        // delays the welcome); tungstenite answers them.
        let first = tokio::time::timeout_at(deadline, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => return other,
                }
            }
        })
        .await
        .map_err(|_| {
            End::Closed(
                "connect: no welcome".into(),
                format!("no welcome within {timeout:?}"),
            )
        })?;
        let text = match first {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                let (code, why) = f.map_or_else(
                    || ("close".to_owned(), String::new()),
                    |f| (u16::from(f.code).to_string(), f.reason.to_string()),
                );
                return Err(End::Closed(format!("{code} before welcome"), why));
            }
            Some(Ok(other)) => {
                return Err(End::Closed(
                    "connect: bad welcome".into(),
                    format!("{other:?}"),
                ));
            }
            Some(Err(e)) => {
                return Err(End::Closed(
                    format!("connect: {}", ws_reason(&e)),
                    e.to_string(),
                ));
            }
            None => {
                return Err(End::Closed(
                    "connect: eof".into(),
                    "closed before welcome".into(),
                ));
            }
        };
        let Ok(f) = serde_json::from_str::<In<'_>>(text.as_str()) else {
            return Err(End::Closed(
                "connect: bad welcome".into(),
                text.as_str().chars().take(200).collect(),
            ));
        };
        if f.kind != "welcome" {
            return Err(End::Closed(
                "connect: bad welcome".into(),
                text.as_str().chars().take(200).collect(),
            ));
        }
        self.chans[0].answered(
            personal_resume.is_some(),
            f.recovered,
            f.epoch.as_deref(),
            f.offset,
        );
        let hb = Duration::from_millis(f.heartbeat_ms.unwrap_or(30_000).max(100));
        Ok((ws, hb))
    }

    fn subscribe_frame(&self, ch: usize, id: u64) -> String {
        let c = &self.chans[ch];
        let mut req = serde_json::json!({"type": "subscribe", "id": id, "channel": c.name});
        if c.kind.has_history()
            && let Some((epoch, offset)) = &c.pos
        {
            req["since"] = serde_json::json!({"offset": offset, "epoch": epoch});
        }
        req.to_string()
    }

    fn chat_frame(&mut self, id: u64) -> Option<(String, u64)> {
        let ch = self.chat_chan?;
        let seq = self.chat_seq;
        self.chat_seq += 1;
        let p = lanes::payload(seq, Some(self.idx as u64), false, self.sh.spec.payload_size);
        let frame = format!(
            r#"{{"type":"publish","id":{id},"channel":"{}","event":"{}","payload":{p}}}"#,
            self.chans[ch].name,
            lanes::EVENT
        );
        Some((frame, seq))
    }

    /// Handles a message frame.
    fn on_message(&mut self, f: &In<'_>) {
        let Some(body) = &f.payload else {
            self.sh.live().bad_frames += 1;
            return;
        };
        let Some(ch) = f
            .channel
            .as_deref()
            .and_then(|n| self.chans.iter().position(|c| c.name == n))
        else {
            self.sh.live().bad_frames += 1;
            return;
        };
        let now = crate::payload::now_micros();
        let chan = &mut self.chans[ch];
        if chan.kind.has_history() {
            chan.advance(f.epoch.as_deref(), f.offset);
        }
        let src = if chan.kind == Kind::Chat {
            body.src
        } else {
            None
        };
        let backend = src.is_none();
        if backend && chan.awaiting_after {
            chan.awaiting_after = false;
            if let Some(n) = chan.notices.last_mut() {
                n.after = Some(body.seq);
            }
        }
        let s = chan.stream(src);
        let max = s.got.max();
        if !s.got.insert(body.seq) {
            s.dups += 1;
        } else if max.is_some_and(|m| body.seq < m) {
            s.ooo += 1;
        }
        let marker = body.end == Some(1) && backend && !chan.marker;
        if marker {
            chan.marker = true;
        }
        let lat = now.saturating_sub(body.t);
        {
            let mut l = self.sh.live();
            l.interval_deliveries += 1;
            l.interval_latency.record(lat);
            l.latency.record(lat);
        }
        if marker && !self.complete && self.chans.iter().all(|c| c.marker) {
            self.complete = true;
            self.sh.live().complete += 1;
            let first = *self
                .sh
                .first_marker
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.markers_ms = first.map(|t| t.elapsed().as_millis() as u64);
        }
        if marker {
            let mut fm = self
                .sh
                .first_marker
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if fm.is_none() {
                *fm = Some(Instant::now());
            }
        }
    }

    /// One connection's life: subscribe, then read until it ends.
    async fn session(
        &mut self,
        mut ws: Ws,
        hb: Duration,
        ctl: &mut watch::Receiver<Control>,
        seen_stall: &mut u64,
    ) -> End {
        let request_timeout = Duration::from_millis(self.sh.spec.request_timeout_ms);
        let dead_after = hb * 2 + Duration::from_secs(1);
        let mut next_id = 0u64;
        // Subscribe ids -> channel index.
        let mut subs: HashMap<u64, usize> = HashMap::new();
        // Whether each subscribe asked to resume (`since`).
        let mut resumed: HashMap<u64, bool> = HashMap::new();
        for ch in 1..self.chans.len() {
            next_id += 1;
            let frame = self.subscribe_frame(ch, next_id);
            resumed.insert(
                next_id,
                self.chans[ch].kind.has_history() && self.chans[ch].pos.is_some(),
            );
            if let Err(e) = ws.send(Message::Text(frame.into())).await {
                return End::Closed(format!("send: {}", ws_reason(&e)), e.to_string());
            }
            subs.insert(next_id, ch);
        }
        if subs.is_empty() {
            self.set_ready(true);
        }
        let subscribe_deadline = Instant::now() + request_timeout;
        let mut last_rx = Instant::now();
        let mut pending_chat: HashMap<u64, u64> = HashMap::new();
        let mut chat: Option<(tokio::time::Interval, Instant)> = None;
        let mut chat_seen: Option<Instant> = None;
        // When the last stall of this connection ended.
        let mut stalled_until: Option<(Instant, u64)> = None;
        // A silent stall waiting for the next ping (answered first, so the gateway
        // heard from the client right before it went silent), or for its deadline.
        let mut stall_next: Option<(Duration, u64, Instant)> = None;
        // A failed send (the peer closed): keep reading what is buffered (messages
        // and the close frame, whose code is the real reason) for a moment.
        let mut send_failed: Option<(Instant, String, String)> = None;
        let end = loop {
            // Start chatting when asked (with a random phase per client).
            let plan = ctl.borrow().chat;
            if let Some((period, until)) = plan
                && chat_seen != Some(until)
                && self.chat_chan.is_some()
            {
                chat_seen = Some(until);
                let phase = Duration::from_micros(self.rng.below(period.as_micros().max(1) as u64));
                let mut iv = tokio::time::interval_at(Instant::now() + phase, period);
                iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
                chat = Some((iv, until));
            }
            tokio::select! {
                changed = ctl.changed() => {
                    if changed.is_err() {
                        break End::Stop;
                    }
                    let c = ctl.borrow_and_update().clone();
                    if c.stop {
                        break End::Stop;
                    }
                    if c.stall_gen != *seen_stall {
                        *seen_stall = c.stall_gen;
                        if let Some(st) = &c.stall
                            && st.0.binary_search(&self.idx).is_ok()
                        {
                            if st.2 {
                                if self.stall(&mut ws, st.1, true, hb, ctl).await {
                                    break End::Stop;
                                }
                                last_rx = Instant::now();
                                stalled_until = Some((last_rx, c.stall_gen));
                            } else {
                                // A silent stall starts right after the next pong.
                                stall_next = Some((st.1, c.stall_gen, Instant::now() + hb + Duration::from_secs(1)));
                            }
                        }
                    }
                }
                msg = ws.next() => {
                    last_rx = Instant::now();
                    let text = match msg {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(f))) => {
                            let code = f.as_ref().map_or_else(|| "close without code".to_owned(), |f| u16::from(f.code).to_string());
                            let why = f.map(|f| f.reason.to_string()).unwrap_or_default();
                            break End::Closed(code, why);
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => break End::Closed(ws_reason(&e), e.to_string()),
                        None => break End::Closed(EOF.into(), "stream ended".into()),
                    };
                    let Ok(f) = serde_json::from_str::<In<'_>>(text.as_str()) else {
                        self.sh.live().bad_frames += 1;
                        continue;
                    };
                    match f.kind.as_ref() {
                        "message" => self.on_message(&f),
                        "ping" => {
                            self.sh.live().pings += 1;
                            if send_failed.is_none()
                                && let Err(e) = ws.send(Message::Text(PONG.into())).await
                            {
                                send_failed = Some((Instant::now(), format!("send: {}", ws_reason(&e)), e.to_string()));
                            }
                            if send_failed.is_none()
                                && let Some((d, stall, _)) = stall_next.take()
                            {
                                if self.stall(&mut ws, d, false, hb, ctl).await {
                                    break End::Stop;
                                }
                                last_rx = Instant::now();
                                stalled_until = Some((last_rx, stall));
                            }
                        }
                        "reply" => {
                            let Some(id) = f.id else {
                                self.sh.live().bad_frames += 1;
                                continue;
                            };
                            if let Some(ch) = subs.remove(&id) {
                                if f.ok != Some(true) {
                                    let code = f.error.as_ref().and_then(|e| e.get("code")).and_then(|c| c.as_str()).unwrap_or("?").to_owned();
                                    break End::Closed(format!("subscribe refused: {code}"), text.as_str().chars().take(200).collect());
                                }
                                let r = f.result.unwrap_or_default();
                                if self.chans[ch].kind.has_history() {
                                    let was = resumed.remove(&id).unwrap_or(false);
                                    self.chans[ch].answered(
                                        was,
                                        r.get("recovered").and_then(|v| v.as_bool()),
                                        r.get("epoch").and_then(|v| v.as_str()),
                                        r.get("offset").and_then(|v| v.as_u64()),
                                    );
                                }
                                if subs.is_empty() {
                                    self.set_ready(true);
                                }
                            } else if let Some(seq) = pending_chat.remove(&id)
                                && let Some(c) = self.chat.as_mut()
                            {
                                if f.ok == Some(true) {
                                    c.acked.insert(seq);
                                } else {
                                    c.refused += 1;
                                }
                            }
                        }
                        _ => {}
                    }
                }
                _ = chat_tick(&mut chat), if chat.is_some() && self.ready && send_failed.is_none() => {
                    let until = chat.as_ref().map_or_else(Instant::now, |(_, u)| *u);
                    if Instant::now() >= until {
                        chat = None;
                        continue;
                    }
                    next_id += 1;
                    if let Some((frame, seq)) = self.chat_frame(next_id) {
                        if let Err(e) = ws.send(Message::Text(frame.into())).await {
                            send_failed = Some((Instant::now(), format!("send: {}", ws_reason(&e)), e.to_string()));
                            continue;
                        }
                        pending_chat.insert(next_id, seq);
                        if let Some(c) = self.chat.as_mut() {
                            c.sent += 1;
                        }
                    }
                }
                () = tokio::time::sleep_until(send_failed.as_ref().map_or(last_rx, |s| s.0) + Duration::from_secs(2)), if send_failed.is_some() => {
                    let Some((_, why, detail)) = send_failed.take() else {
                        continue;
                    };
                    break End::Closed(why, detail);
                }
                () = tokio::time::sleep_until(stall_next.as_ref().map_or(last_rx, |s| s.2)), if stall_next.is_some() => {
                    let Some((d, stall, _)) = stall_next.take() else {
                        continue;
                    };
                    if self.stall(&mut ws, d, false, hb, ctl).await {
                        break End::Stop;
                    }
                    last_rx = Instant::now();
                    stalled_until = Some((last_rx, stall));
                }
                () = tokio::time::sleep_until(last_rx + dead_after) => {
                    break End::Closed("client: silent connection".into(), format!("nothing received for {dead_after:?}"));
                }
                () = tokio::time::sleep_until(subscribe_deadline), if !subs.is_empty() => {
                    break End::Closed("client: subscribe reply timeout".into(), format!("no reply to {} subscribe(s) within {request_timeout:?}", subs.len()));
                }
            }
        };
        if let Some(c) = self.chat.as_mut() {
            c.unknown += pending_chat.len() as u64;
        }
        if let Some((t, stall)) = stalled_until {
            let outcome = match &end {
                End::Closed(why, _) if t.elapsed() < STALL_EFFECT => why.clone(),
                _ => "kept the connection".to_owned(),
            };
            *self
                .sh
                .live()
                .stall_outcomes
                .entry((stall, self.gateway, outcome))
                .or_default() += 1;
        }
        if matches!(end, End::Stop) {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
        end
    }

    /// Stops reading for `d` (answering nothing, or with `blind` sending a pong every
    /// half heartbeat without reading). Returns true when told to stop meanwhile.
    async fn stall(
        &mut self,
        ws: &mut Ws,
        d: Duration,
        blind: bool,
        hb: Duration,
        ctl: &mut watch::Receiver<Control>,
    ) -> bool {
        {
            let mut l = self.sh.live();
            l.stalled += 1;
            l.stalls += 1;
        }
        let until = Instant::now() + d;
        let mut pong = tokio::time::interval(hb / 2);
        pong.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stop = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                changed = ctl.changed() => {
                    if changed.is_err() || ctl.borrow_and_update().stop {
                        stop = true;
                        break;
                    }
                }
                _ = pong.tick(), if blind => {
                    if ws.send(Message::Text(PONG.into())).await.is_err() {
                        // Reading after the stall will tell why.
                        tokio::time::sleep_until(until).await;
                        break;
                    }
                }
            }
        }
        self.sh.live().stalled -= 1;
        stop
    }

    fn backoff(&mut self, why: &str, stable: bool) -> Duration {
        if stable {
            self.attempts = 0;
        }
        let max = Duration::from_millis(self.sh.spec.backoff_max_ms.max(1));
        let cap = match why {
            // Draining node: come back at once elsewhere; resync: at once.
            "1001" => Duration::from_millis(500),
            "4005" => Duration::from_millis(100),
            _ => {
                let n = self.attempts.min(10) as u32;
                (Duration::from_millis(100) * 2u32.pow(n)).min(max)
            }
        };
        Duration::from_micros(self.rng.below(cap.as_micros() as u64 + 1))
    }

    async fn run(mut self, mut ctl: watch::Receiver<Control>) -> ClientSummary {
        let mut seen_stall = ctl.borrow().stall_gen;
        loop {
            if ctl.borrow().stop {
                break;
            }
            let sh = self.sh.clone();
            let opened = tokio::select! {
                r = async {
                    let _permit = sh.sem.acquire().await.ok();
                    self.open().await
                } => r,
                () = wait_stop(&mut ctl) => break,
            };
            let (why, detail, stable) = match opened {
                Ok((ws, hb)) => {
                    self.connects += 1;
                    self.sh.live().interval_connects += 1;
                    self.set_open(true);
                    let began = Instant::now();
                    let end = self.session(ws, hb, &mut ctl, &mut seen_stall).await;
                    self.set_open(false);
                    match end {
                        End::Stop => break,
                        End::Closed(why, detail) => {
                            (why, detail, began.elapsed() >= Duration::from_secs(3))
                        }
                    }
                }
                Err(End::Stop) => break,
                Err(End::Closed(why, detail)) => (why, detail, false),
            };
            self.sh.reason(&why, &detail, self.gateway);
            let pause = self.backoff(&why, stable);
            self.last_reason = Some(why);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = wait_stop(&mut ctl) => break,
            }
        }
        self.summary()
    }
}

async fn wait_stop(ctl: &mut watch::Receiver<Control>) {
    loop {
        if ctl.borrow_and_update().stop {
            return;
        }
        if ctl.changed().await.is_err() {
            return;
        }
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

async fn ticker(sh: Arc<Shared>, events: mpsc::UnboundedSender<Ev>) {
    let mut iv = tokio::time::interval(TICK);
    iv.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        let tick = {
            let mut l = sh.live();
            Tick {
                unix_ms: crate::payload::now_millis(),
                deliveries: std::mem::take(&mut l.interval_deliveries),
                connects: std::mem::take(&mut l.interval_connects),
                latency: std::mem::take(&mut l.interval_latency),
                open: l.open,
                ready: l.ready,
                complete: l.complete,
                stalled: l.stalled,
            }
        };
        if events.send(Ev::Tick(tick)).is_err() {
            return;
        }
    }
}

/// Runs one group until `Stop` (or the command channel closes), then sends `Final`.
pub async fn run_group(
    spec: GroupSpec,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<Ev>,
) {
    let (control, _) = watch::channel(Control::default());
    let sh = Arc::new(Shared {
        sem: Semaphore::new(spec.concurrency.max(1)),
        spec,
        live: Mutex::new(Live::default()),
        control,
        first_marker: Mutex::new(None),
    });
    let mut tasks: JoinSet<ClientSummary> = JoinSet::new();
    let ticker = tokio::spawn(ticker(sh.clone(), events.clone()));
    let mut first_ready_watch: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            Cmd::Connect => {
                let spec = &sh.spec;
                for idx in spec.first..spec.first + spec.count {
                    let token = match conn::mint_token(
                        spec.secret.as_bytes(),
                        &conn::user_id(idx),
                        spec.token_ttl_secs,
                    ) {
                        Ok(t) => t,
                        Err(e) => {
                            let _ = events.send(Ev::Fatal {
                                message: format!("{e:#}"),
                            });
                            return;
                        }
                    };
                    let client = Client::new(idx, token, sh.clone());
                    tasks.spawn(client.run(sh.control.subscribe()));
                }
                // Report once every client was ready at least once (ready counts
                // the current ones; during the connect phase nothing drops them).
                let sh2 = sh.clone();
                let ev = events.clone();
                let count = sh.spec.count as u64;
                let within = Duration::from_millis(sh.spec.connect_timeout_ms) * 3
                    + Duration::from_secs(30)
                    + Duration::from_millis(sh.spec.connect_timeout_ms)
                        * (count as u32 / sh.spec.concurrency.max(1) as u32 + 1);
                first_ready_watch = Some(tokio::spawn(async move {
                    let start = Instant::now();
                    let deadline = start + within;
                    loop {
                        let (ready, failed_reasons) = {
                            let mut l = sh2.live();
                            if l.ready > l.first_ok {
                                let now = Instant::now();
                                let n = l.ready - l.first_ok;
                                for _ in 0..n {
                                    l.first_hist.record((now - start).as_micros() as u64);
                                }
                                l.first_ok = l.ready;
                                l.first_last = Some(now);
                            }
                            (
                                l.ready,
                                l.examples
                                    .iter()
                                    .take(5)
                                    .map(|(k, v)| {
                                        format!(
                                            "{k}: {}",
                                            v.first().map_or("", |e| e.detail.as_str())
                                        )
                                    })
                                    .collect::<Vec<_>>(),
                            )
                        };
                        let now = Instant::now();
                        if ready >= count || now >= deadline {
                            let l = sh2.live();
                            let _ = ev.send(Ev::Connected(PhaseResult {
                                ok: ready,
                                failed: count.saturating_sub(ready),
                                elapsed_us: l
                                    .first_last
                                    .map(|t| t.saturating_duration_since(start).as_micros() as u64)
                                    .unwrap_or(0),
                                hist: l.first_hist.clone(),
                                errors: failed_reasons,
                            }));
                            return;
                        }
                        drop(failed_reasons);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }));
            }
            Cmd::Chat { rate, duration_ms } => {
                let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
                let until = Instant::now() + Duration::from_millis(duration_ms);
                sh.control.send_modify(|c| c.chat = Some((period, until)));
            }
            Cmd::Stall { clients, ms, blind } => {
                let mut clients = clients;
                clients.sort_unstable();
                sh.control.send_modify(|c| {
                    c.stall_gen += 1;
                    c.stall = Some(Arc::new((clients, Duration::from_millis(ms), blind)));
                });
            }
            Cmd::Stop => break,
        }
    }
    if let Some(w) = first_ready_watch {
        w.abort();
    }
    sh.control.send_modify(|c| c.stop = true);
    let mut clients = Vec::with_capacity(sh.spec.count);
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(r) = tasks.join_next().await {
            if let Ok(s) = r {
                clients.push(s);
            }
        }
    })
    .await;
    tasks.abort_all();
    ticker.abort();
    clients.sort_by_key(|c| c.idx);
    let lost_tasks = (sh.spec.count - clients.len()) as u64;
    let l = sh.live();
    let fin = GroupFinal {
        clients,
        reasons: l.reasons.clone(),
        examples: l.examples.clone(),
        latency: l.latency.clone(),
        pings: l.pings,
        bad_frames: l.bad_frames,
        stalls: l.stalls,
        stall_outcomes: l
            .stall_outcomes
            .iter()
            .map(|((stall, gateway, outcome), count)| StallOutcome {
                stall: *stall,
                gateway: *gateway,
                outcome: outcome.clone(),
                count: *count,
            })
            .collect(),
        lost_tasks,
    };
    drop(l);
    let _ = events.send(Ev::Final(Box::new(fin)));
}

/// The hidden `chaos-worker` subcommand: a group driven over stdin/stdout.
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
        eprintln!("loadtest chaos-worker: time bound reached, exiting");
        std::process::exit(3);
    });
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(cmd) = serde_json::from_str::<Cmd>(&line)
                && cmd_tx.send(cmd).is_err()
            {
                return;
            }
        }
        let _ = cmd_tx.send(Cmd::Stop);
    });
    let group = tokio::spawn(run_group(spec, cmd_rx, ev_tx));
    let mut out = tokio::io::stdout();
    while let Some(ev) = ev_rx.recv().await {
        let is_final = matches!(ev, Ev::Final(_));
        let mut line = serde_json::to_string(&ev).context("encoding an event")?;
        line.push('\n');
        out.write_all(line.as_bytes()).await?;
        out.flush().await?;
        if is_final {
            break;
        }
    }
    let _ = group.await;
    std::process::exit(0);
}
