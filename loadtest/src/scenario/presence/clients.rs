//! The presence scenario's own connections, in this process: churn users, which
//! stay connected and subscribe to (join) and unsubscribe from (leave) the channel
//! when the [`Driver`] says, and query connections, which send `presence` and
//! `presence_stats` requests and time the replies. Both answer the gateway's
//! heartbeats; churn users also read the `presence_diff` frames, for the join and
//! leave latency.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Target, Ws};
use crate::stats::Hist;
use crate::{diff, payload};

const PONG: &str = r#"{"type":"pong"}"#;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn note(list: &mut Vec<String>, e: String) {
    if list.len() < 5 {
        list.push(e);
    }
}

/// How this process opens its connections (the run's targets and credentials).
#[derive(Clone)]
pub struct Opener {
    pub targets: Vec<Target>,
    pub secret: String,
    pub per_ip: usize,
    pub token_ttl_secs: u64,
    pub read_buffer: usize,
    pub timeout: Duration,
}

impl Opener {
    /// Connects load client `idx` (user `lt-<idx>`) and reads its welcome.
    pub async fn open(&self, idx: usize) -> Result<Ws> {
        let target = &self.targets[idx % self.targets.len()];
        let token = conn::mint_token(
            self.secret.as_bytes(),
            &conn::user_id(idx),
            self.token_ttl_secs,
        )?;
        let source = conn::source_ip(idx, self.per_ip);
        let mut ws = conn::connect(
            target,
            (source, idx, self.per_ip),
            &token,
            self.read_buffer,
            self.timeout,
        )
        .await?;
        let first = tokio::time::timeout(self.timeout, async {
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
            Some(Ok(Message::Text(t)))
                if payload::decode(t.as_str()).is_some_and(|f| f.kind == "welcome") =>
            {
                Ok(ws)
            }
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    /// Opens clients `range`, `concurrency` at a time, in order.
    pub async fn open_all(&self, range: Range<usize>, concurrency: usize) -> Result<Vec<Ws>> {
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
        let mut set = JoinSet::new();
        for idx in range.clone() {
            let (me, sem) = (self.clone(), sem.clone());
            set.spawn(async move {
                let _permit = sem.acquire().await;
                (idx, me.open(idx).await)
            });
        }
        let mut out: Vec<Option<Ws>> = (0..range.len()).map(|_| None).collect();
        while let Some(r) = set.join_next().await {
            let (idx, ws) = r?;
            out[idx - range.start] =
                Some(ws.map_err(|e| anyhow!("client {idx} could not connect: {e:#}"))?);
        }
        Ok(out.into_iter().flatten().collect())
    }
}

/// What a churn user does next.
#[derive(Debug, Clone, Copy)]
pub enum Cmd {
    Join,
    Leave,
}

/// What the churn users measured, together.
#[derive(Debug, Default)]
pub struct ChurnStats {
    /// Subscribe sent -> its reply.
    pub subscribe_us: Hist,
    /// Unsubscribe sent -> its reply.
    pub unsubscribe_us: Hist,
    /// Subscribe sent -> the user's own join in a `presence_diff`.
    pub join_seen_us: Hist,
    /// Unsubscribe sent -> the user's leave in a `presence_diff` read by another
    /// churn user (includes the grace period).
    pub leave_seen_us: Hist,
    /// Users that joined again before any churn user had seen their leave (only
    /// without events: with events a user joins again once its leave was seen).
    pub leaves_unseen: u64,
    pub diff_frames: u64,
    /// Refused requests and closed connections.
    pub errors: u64,
    pub closed: u64,
    pub notes: Vec<String>,
}

/// Shared by the churn users of a run.
pub struct ChurnShared {
    channel: String,
    /// The channel's rule has events (else nobody sees leaves).
    events: bool,
    pub stats: Mutex<ChurnStats>,
    /// Users who unsubscribed and whose leave nobody has seen yet, since when.
    left_at: Mutex<HashMap<String, Instant>>,
}

impl ChurnShared {
    pub fn new(channel: &str, events: bool) -> Arc<Self> {
        Arc::new(ChurnShared {
            channel: channel.to_owned(),
            events,
            stats: Mutex::new(ChurnStats::default()),
            left_at: Mutex::new(HashMap::new()),
        })
    }

    pub fn stats(&self) -> MutexGuard<'_, ChurnStats> {
        lock(&self.stats)
    }
}

/// One churn user's connection, until its command channel closes.
async fn churn_user(
    mut ws: Ws,
    user: String,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    sh: Arc<ChurnShared>,
) {
    let mut next_id = 0u64;
    // Requests waiting for their reply: id, subscribe (or unsubscribe), sent at.
    let mut pending: VecDeque<(u64, bool, Instant)> = VecDeque::new();
    let mut join_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                next_id += 1;
                let now = Instant::now();
                let (kind, sub) = match cmd {
                    Cmd::Join => {
                        if lock(&sh.left_at).remove(&user).is_some() {
                            sh.stats().leaves_unseen += 1;
                        }
                        join_sent = Some(now);
                        ("subscribe", true)
                    }
                    Cmd::Leave => {
                        if sh.events {
                            lock(&sh.left_at).insert(user.clone(), now);
                        }
                        join_sent = None;
                        ("unsubscribe", false)
                    }
                };
                pending.push_back((next_id, sub, now));
                let frame = serde_json::json!({"type": kind, "id": next_id, "channel": sh.channel});
                if let Err(e) = ws.send(Message::Text(frame.to_string().into())).await {
                    let mut s = sh.stats();
                    s.closed += 1;
                    note(&mut s.notes, format!("{user}: send: {e}"));
                    return;
                }
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(f))) => {
                        let mut s = sh.stats();
                        s.closed += 1;
                        note(&mut s.notes, format!("{user}: closed by the gateway: {f:?}"));
                        return;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => {
                        let mut s = sh.stats();
                        s.closed += 1;
                        note(&mut s.notes, format!("{user}: {e}"));
                        return;
                    }
                    None => {
                        sh.stats().closed += 1;
                        return;
                    }
                };
                let text = text.as_str();
                if diff::is_diff(text) {
                    let now = Instant::now();
                    let parsed = diff::parse(text);
                    let mut s = sh.stats();
                    s.diff_frames += 1;
                    let Some((joins, leaves)) = parsed else {
                        s.errors += 1;
                        note(&mut s.notes, "unreadable presence_diff".into());
                        continue;
                    };
                    if let Some(at) = join_sent
                        && joins.contains(&user)
                    {
                        s.join_seen_us.record((now - at).as_micros() as u64);
                        join_sent = None;
                    }
                    if !leaves.is_empty() {
                        let mut left = lock(&sh.left_at);
                        for u in leaves {
                            if let Some(at) = left.remove(&u) {
                                s.leave_seen_us.record((now - at).as_micros() as u64);
                            }
                        }
                    }
                    continue;
                }
                let Some(f) = payload::decode(text) else { continue };
                match f.kind {
                    "ping" if ws.send(Message::Text(PONG.into())).await.is_err() => {
                        sh.stats().closed += 1;
                        return;
                    }
                    "reply" => {
                        let Some(pos) = pending.iter().position(|p| Some(p.0) == f.id) else {
                            continue;
                        };
                        let (_, sub, at) = pending.remove(pos).unwrap_or((0, false, Instant::now()));
                        let us = at.elapsed().as_micros() as u64;
                        let mut s = sh.stats();
                        if f.ok != Some(true) {
                            s.errors += 1;
                            note(&mut s.notes, format!("{user}: {text}"));
                        } else if sub {
                            s.subscribe_us.record(us);
                        } else {
                            s.unsubscribe_us.record(us);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = ws.close(None).await;
}

/// Counts of what the driver has sent so far.
#[derive(Debug, Default)]
pub struct Counters {
    pub joins: AtomicU64,
    pub leaves: AtomicU64,
    /// Joins skipped: no churn user was away long enough (should be 0).
    pub skipped: AtomicU64,
}

/// Sends the churn users their joins and leaves: the user in longest leaves, a user
/// away for at least `min_away` (or one never used) joins. With events, only users
/// whose leave a churn user has seen join again: a user back before its leave was
/// announced is, to Redis, back within the grace period (neither leave nor join),
/// however long ago it left; that happens when announcements lag (a busy node), and
/// would make the joins and leaves the subscribers see differ from the churn.
pub struct Driver {
    users: Vec<mpsc::UnboundedSender<Cmd>>,
    names: Vec<String>,
    present: VecDeque<usize>,
    absent: VecDeque<(usize, Instant)>,
    fresh: usize,
    min_away: Duration,
    events: bool,
    sh: Arc<ChurnShared>,
    pub counters: Arc<Counters>,
}

impl Driver {
    /// Starts a task per connection (user `lt-<first + i>`).
    pub fn start(
        conns: Vec<Ws>,
        first: usize,
        min_away: Duration,
        events: bool,
        sh: &Arc<ChurnShared>,
    ) -> Self {
        let names: Vec<String> = (0..conns.len()).map(|i| conn::user_id(first + i)).collect();
        let users = conns
            .into_iter()
            .zip(&names)
            .map(|(ws, name)| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(churn_user(ws, name.clone(), rx, sh.clone()));
                tx
            })
            .collect();
        Driver {
            users,
            names,
            present: VecDeque::new(),
            absent: VecDeque::new(),
            fresh: 0,
            min_away,
            events,
            sh: sh.clone(),
            counters: Arc::new(Counters::default()),
        }
    }

    /// Whether an absent user may join again.
    fn may_return(&self, user: usize, left: Instant, now: Instant) -> bool {
        now.duration_since(left) >= self.min_away
            && (!self.events || !lock(&self.sh.left_at).contains_key(&self.names[user]))
    }

    pub fn join_one(&mut self) {
        let now = Instant::now();
        let user = match self.absent.front() {
            Some((u, at)) if self.may_return(*u, *at, now) => {
                let u = *u;
                self.absent.pop_front();
                u
            }
            _ if self.fresh < self.users.len() => {
                self.fresh += 1;
                self.fresh - 1
            }
            _ => {
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if self.users[user].send(Cmd::Join).is_ok() {
            self.present.push_back(user);
            self.counters.joins.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn leave_one(&mut self) {
        let Some(user) = self.present.pop_front() else {
            return;
        };
        if self.users[user].send(Cmd::Leave).is_ok() {
            self.absent.push_back((user, Instant::now()));
            self.counters.leaves.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Alternates a leave and a join, `rate` changes per second in all, until `stop`.
    pub async fn run(mut self, rate: f64, stop: Arc<AtomicBool>) -> Driver {
        let mut iv = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        iv.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut k = 0u64;
        while !stop.load(Ordering::Relaxed) {
            iv.tick().await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if k.is_multiple_of(2) {
                self.leave_one();
            } else {
                self.join_one();
            }
            k += 1;
        }
        self
    }
}

/// One kind of presence request and where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryKind {
    /// Over the WebSocket (else the HTTP API).
    pub ws: bool,
    /// A page of this many members, or the counts (`None`).
    pub page: Option<u32>,
}

impl QueryKind {
    pub const ALL: [QueryKind; 6] = [
        QueryKind {
            ws: true,
            page: None,
        },
        QueryKind {
            ws: true,
            page: Some(100),
        },
        QueryKind {
            ws: true,
            page: Some(1000),
        },
        QueryKind {
            ws: false,
            page: None,
        },
        QueryKind {
            ws: false,
            page: Some(100),
        },
        QueryKind {
            ws: false,
            page: Some(1000),
        },
    ];

    pub fn name(&self) -> String {
        let via = if self.ws { "websocket" } else { "api" };
        match self.page {
            None => format!("{via} presence_stats"),
            Some(n) => format!("{via} presence page of {n}"),
        }
    }
}

/// The replies to one kind of request.
#[derive(Debug, Default, Clone)]
pub struct QueryStats {
    pub latency: Hist,
    pub errors: u64,
    pub rate_limited: u64,
    /// Pages with fewer members than asked (the channel has more than a page).
    pub short_pages: u64,
    pub notes: Vec<String>,
}

/// A page's or a count's reply, checked: the number of members listed (a first
/// page is full when the channel has more members than it asked for).
fn check_result(kind: QueryKind, first: bool, result: &serde_json::Value, st: &mut QueryStats) {
    let clients = result.get("clients").and_then(|c| c.as_u64());
    if clients.is_none() {
        st.errors += 1;
        note(&mut st.notes, format!("no counts in {result}"));
        return;
    }
    if let Some(n) = kind.page {
        let listed = result
            .get("members")
            .and_then(|m| m.as_array())
            .map_or(0, |m| m.len());
        if first && (listed as u64) < u64::from(n) && clients.unwrap_or(0) > u64::from(n) {
            st.short_pages += 1;
        }
    }
}

/// A request for a query connection: which kind (index into `QueryKind::ALL`),
/// its frame without the id.
struct QueryReq {
    kind: usize,
    frame: serde_json::Value,
    /// No cursor: the first page.
    first: bool,
}

async fn query_conn(
    mut ws: Ws,
    mut rx: mpsc::UnboundedReceiver<QueryReq>,
    stats: Arc<Mutex<Vec<QueryStats>>>,
) {
    let mut next_id = 0u64;
    let mut pending: VecDeque<(u64, usize, bool, Instant)> = VecDeque::new();
    loop {
        tokio::select! {
            req = rx.recv() => {
                let Some(mut req) = req else { break };
                next_id += 1;
                req.frame["id"] = next_id.into();
                pending.push_back((next_id, req.kind, req.first, Instant::now()));
                if ws.send(Message::Text(req.frame.to_string().into())).await.is_err() {
                    let mut s = lock(&stats);
                    s[req.kind].errors += 1;
                    note(&mut s[req.kind].notes, "query connection closed".into());
                    return;
                }
            }
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => {
                        let mut s = lock(&stats);
                        for (_, kind, _, _) in pending.drain(..) {
                            s[kind].errors += 1;
                            note(&mut s[kind].notes, "query connection closed".into());
                        }
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                let Some(f) = payload::decode(text.as_str()) else { continue };
                match f.kind {
                    "ping" => {
                        let _ = ws.send(Message::Text(PONG.into())).await;
                    }
                    "reply" => {
                        let Some(pos) = pending.iter().position(|p| Some(p.0) == f.id) else {
                            continue;
                        };
                        let Some((_, kind, first, at)) = pending.remove(pos) else { continue };
                        let us = at.elapsed().as_micros() as u64;
                        let mut s = lock(&stats);
                        let st = &mut s[kind];
                        if f.ok == Some(true) {
                            st.latency.record(us);
                            let result = f.result.unwrap_or_default();
                            check_result(QueryKind::ALL[kind], first, &result, st);
                        } else {
                            let error = f.error.map(|e| e.to_string()).unwrap_or_default();
                            if error.contains("rate_limited") {
                                st.rate_limited += 1;
                            } else {
                                st.errors += 1;
                            }
                            note(&mut st.notes, text.as_str().chars().take(200).collect());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = ws.close(None).await;
}

/// The query connections and the API client, with what their replies measured.
pub struct Queriers {
    conns: Vec<mpsc::UnboundedSender<QueryReq>>,
    apis: Vec<Arc<crate::publish::HttpApi>>,
    pub stats: Arc<Mutex<Vec<QueryStats>>>,
}

impl Queriers {
    pub fn start(conns: Vec<Ws>, apis: Vec<Arc<crate::publish::HttpApi>>) -> Self {
        let stats = Arc::new(Mutex::new(vec![
            QueryStats::default();
            QueryKind::ALL.len()
        ]));
        let conns = conns
            .into_iter()
            .map(|ws| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(query_conn(ws, rx, stats.clone()));
                tx
            })
            .collect();
        Queriers { conns, apis, stats }
    }

    /// `per_kind` requests of every kind, interleaved, evenly spread over `window`;
    /// pages start at one of `cursors` (`None`: the first page), in turn. Returns
    /// once every API call has come back (WebSocket replies may still be on their way).
    pub async fn run(
        &self,
        channel: &str,
        per_kind: u64,
        window: Duration,
        cursors: &[Option<String>],
    ) -> Result<()> {
        let total = per_kind * QueryKind::ALL.len() as u64;
        if total == 0 {
            return Ok(());
        }
        let mut iv = tokio::time::interval(window.div_f64(total as f64));
        iv.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut calls = JoinSet::new();
        let (mut ws_turn, mut api_turn) = (0usize, 0usize);
        for i in 0..total {
            iv.tick().await;
            let k = (i % QueryKind::ALL.len() as u64) as usize;
            let kind = QueryKind::ALL[k];
            let cursor = cursors
                .get((i / QueryKind::ALL.len() as u64) as usize % cursors.len().max(1))
                .cloned()
                .flatten();
            let mut body = serde_json::json!({"channel": channel});
            let first = cursor.is_none();
            if let Some(n) = kind.page {
                body["limit"] = n.into();
                if let Some(c) = cursor {
                    body["cursor"] = c.into();
                }
            }
            if kind.ws {
                body["type"] = if kind.page.is_some() {
                    "presence"
                } else {
                    "presence_stats"
                }
                .into();
                let conn = &self.conns[ws_turn % self.conns.len()];
                ws_turn += 1;
                if conn
                    .send(QueryReq {
                        kind: k,
                        frame: body,
                        first,
                    })
                    .is_err()
                {
                    let mut s = lock(&self.stats);
                    s[k].errors += 1;
                    note(&mut s[k].notes, "query connection gone".into());
                }
            } else {
                let api = self.apis[api_turn % self.apis.len()].clone();
                api_turn += 1;
                let stats = self.stats.clone();
                calls.spawn(async move {
                    let path = if kind.page.is_some() {
                        "/api/v1/presence"
                    } else {
                        "/api/v1/presence/stats"
                    };
                    let at = Instant::now();
                    let mut r = api.post(path, &body.to_string()).await;
                    // A kept-alive connection the gateway closed meanwhile (its header
                    // read timeout also bounds idle time): once more on a new one.
                    if r.as_ref()
                        .is_err_and(|e| e.to_string().contains("closed the connection"))
                    {
                        r = api.post(path, &body.to_string()).await;
                    }
                    let us = at.elapsed().as_micros() as u64;
                    let mut s = lock(&stats);
                    let st = &mut s[k];
                    match r {
                        Ok((200, text)) => {
                            st.latency.record(us);
                            let v: serde_json::Value =
                                serde_json::from_str(&text).unwrap_or_default();
                            check_result(kind, first, &v, st);
                        }
                        Ok((status, text)) => {
                            st.errors += 1;
                            note(
                                &mut st.notes,
                                format!(
                                    "HTTP {status}: {}",
                                    text.chars().take(200).collect::<String>()
                                ),
                            );
                        }
                        Err(e) => {
                            st.errors += 1;
                            note(&mut st.notes, format!("{e:#}"));
                        }
                    }
                });
            }
            while calls.try_join_next().is_some() {}
        }
        while calls.join_next().await.is_some() {}
        Ok(())
    }

    /// Waits (up to `within`) until the WebSocket requests have their replies.
    pub async fn settle(&self, expected: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let answered: u64 = {
                let s = lock(&self.stats);
                QueryKind::ALL
                    .iter()
                    .zip(s.iter())
                    .filter(|(k, _)| k.ws)
                    .map(|(_, st)| st.latency.len() + st.errors + st.rate_limited)
                    .sum()
            };
            if answered >= expected || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
