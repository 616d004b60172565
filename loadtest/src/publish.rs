//! Publishing the load: through the publisher SDK straight to Redis, through a
//! gateway's HTTP publish API, or to Nchan's HTTP publisher location, at a fixed
//! rate with bounded calls in flight: one message per call at its own time
//! ([`PublishMode::Paced`]) or what is due at each timer tick in one call
//! ([`PublishMode::Batched`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use protocol::channel::{self, BROADCAST};
use protocol::{Payload, Publication};
use publisher::Publisher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use crate::cli::PublishMode;
use crate::stats::Hist;

/// Where one message goes.
#[derive(Debug, Clone)]
pub enum To {
    User(String),
    Channel(String),
    Broadcast,
}

/// One message: a target and the JSON text of its payload.
#[derive(Debug, Clone)]
pub struct Msg {
    pub to: To,
    pub payload: String,
}

/// Event name of every benchmark message.
pub const EVENT: &str = "bench";

/// A way to publish.
#[derive(Clone)]
pub enum Sink {
    Sdk(Publisher),
    Http(Arc<HttpApi>),
    /// Nchan's publisher location: one `POST /pub/<channel>` per message, the
    /// payload as the body (what its WebSocket subscribers receive as is).
    Nchan(Arc<HttpApi>),
}

/// Nchan's channel for a target: users and channels by name (Nchan has no
/// broadcast: loadtest publishes to every user's channel instead).
pub fn nchan_channel(to: &To) -> Result<&str> {
    match to {
        To::User(u) => Ok(u),
        To::Channel(c) => Ok(c),
        To::Broadcast => bail!("Nchan has no broadcast channel"),
    }
}

impl Sink {
    pub fn sdk(redis_url: &str, history: Option<&[String]>) -> Result<Sink> {
        let rules = match history {
            Some(r) => protocol::history::HistoryRules::parse(r.iter())
                .map_err(|e| anyhow!("--history: {e}"))?,
            None => protocol::history::HistoryRules::default(),
        };
        let p = Publisher::builder(redis_url)
            .history(rules)
            .connections(4)
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| anyhow!("publisher: {e}"))?;
        Ok(Sink::Sdk(p))
    }

    pub fn http(addr: SocketAddr, api_key: &str) -> Sink {
        Sink::Http(Arc::new(HttpApi::with_key(addr, api_key)))
    }

    /// Nchan's publisher at `addr` (`/pub/<channel>`); asks for the channel's
    /// figures as JSON, whose `subscribers` says how many got the message.
    pub fn nchan(addr: SocketAddr) -> Sink {
        Sink::Nchan(Arc::new(HttpApi {
            addr,
            headers: "Accept: text/json\r\nContent-Type: application/json\r\n".to_owned(),
            idle: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Publishes the messages in one call (one Redis pipeline, or one HTTP request
    /// or batch; Nchan: one request per message, in turn); returns, per message,
    /// how many nodes (Tidings via Redis) or subscribers (Nchan) took it when known.
    pub async fn send(&self, msgs: &[Msg]) -> Result<Vec<Option<u64>>> {
        match self {
            Sink::Sdk(p) if msgs.len() == 1 => {
                // One notification: the SDK's own one-publish call.
                let m = &msgs[0];
                let publish = match &m.to {
                    To::User(u) => p.to_user(u.as_str()),
                    To::Channel(c) => p.to_channel(c.as_str()),
                    To::Broadcast => p.broadcast(),
                };
                let r = publish
                    .event(EVENT)
                    .raw_payload(&m.payload)
                    .send()
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                Ok(r.per_target.into_iter().map(Some).collect())
            }
            Sink::Nchan(api) => {
                let mut out = Vec::with_capacity(msgs.len());
                for m in msgs {
                    let path = format!("/pub/{}", nchan_channel(&m.to)?);
                    let (status, reply) = api.post(&path, &m.payload).await?;
                    // 201: published with subscribers present, 202: queued, none present.
                    if status != 201 && status != 202 {
                        bail!(
                            "Nchan answered HTTP {status}: {}",
                            reply.chars().take(200).collect::<String>()
                        );
                    }
                    out.push(Some(
                        nchan_subscribers(&reply).unwrap_or(if status == 201 { 1 } else { 0 }),
                    ));
                }
                Ok(out)
            }
            Sink::Sdk(p) => {
                let mut pubs = Vec::with_capacity(msgs.len());
                for m in msgs {
                    let ch = match &m.to {
                        To::User(u) => channel::personal(u),
                        To::Channel(c) => c.clone(),
                        To::Broadcast => BROADCAST.to_owned(),
                    };
                    let payload = Payload::from_json(&m.payload).context("payload")?;
                    pubs.push(Publication::new(ch, EVENT, payload));
                }
                let r = p.publish_all(&pubs).await.map_err(|e| anyhow!("{e}"))?;
                Ok(r.per_target.into_iter().map(Some).collect())
            }
            Sink::Http(api) => {
                let body = |m: &Msg| {
                    let target = match &m.to {
                        To::User(u) => format!("\"user\":{}", serde_json::Value::from(u.as_str())),
                        To::Channel(c) => {
                            format!("\"channel\":{}", serde_json::Value::from(c.as_str()))
                        }
                        To::Broadcast => "\"broadcast\":true".to_owned(),
                    };
                    format!(
                        "{{{target},\"event\":\"{EVENT}\",\"payload\":{}}}",
                        m.payload
                    )
                };
                let (path, text) = if msgs.len() == 1 {
                    ("/api/v1/publish", body(&msgs[0]))
                } else {
                    let all: Vec<String> = msgs.iter().map(body).collect();
                    (
                        "/api/v1/publish/batch",
                        format!("{{\"messages\":[{}]}}", all.join(",")),
                    )
                };
                let (status, reply) = api.post(path, &text).await?;
                if status != 200 {
                    bail!(
                        "HTTP {status}: {}",
                        reply.chars().take(200).collect::<String>()
                    );
                }
                Ok(vec![None; msgs.len()])
            }
        }
    }
}

/// `subscribers` of Nchan's channel figures in JSON (`{"messages": 2, ...,
/// "subscribers": 1, ...}`).
pub fn nchan_subscribers(reply: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(reply).ok()?;
    v.get("subscribers")?.as_u64()
}

/// A minimal keep-alive HTTP/1.1 client for a publish API (the gateway's, Nchan's).
pub struct HttpApi {
    addr: SocketAddr,
    /// Header lines sent with every request, each ending in CRLF.
    headers: String,
    idle: std::sync::Mutex<Vec<TcpStream>>,
}

impl HttpApi {
    /// A client for GETs (Nchan's status page).
    pub fn new(addr: SocketAddr) -> HttpApi {
        HttpApi {
            addr,
            headers: String::new(),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// A client of a gateway's API (publish, presence) with its key.
    pub fn with_key(addr: SocketAddr, api_key: &str) -> HttpApi {
        HttpApi {
            addr,
            headers: format!(
                "Authorization: Bearer {api_key}\r\nContent-Type: application/json\r\n"
            ),
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// `GET path`: status and body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        self.request("GET", path, None).await
    }

    /// `POST path` with a JSON body: status and body.
    pub async fn post(&self, path: &str, body: &str) -> Result<(u16, String)> {
        self.request("POST", path, Some(body)).await
    }

    async fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
        let reused = self.idle.lock().ok().and_then(|mut v| v.pop());
        let mut conn = match reused {
            Some(c) => c,
            None => {
                crate::conn::ensure_loopback(
                    match self.addr.ip() {
                        std::net::IpAddr::V4(v4) => v4,
                        std::net::IpAddr::V6(_) => bail!("IPv6 publish target"),
                    },
                    "publish API",
                )?;
                let s = TcpStream::connect(self.addr)
                    .await
                    .context("connect to publish API")?;
                s.set_nodelay(true)?;
                s
            }
        };
        let req = match body {
            Some(body) => format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}Content-Length: {}\r\n\r\n{body}",
                self.addr,
                self.headers,
                body.len()
            ),
            None => format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\n{}\r\n",
                self.addr, self.headers
            ),
        };
        let run = async {
            conn.write_all(req.as_bytes()).await?;
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    bail!("{} closed the connection", self.addr);
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("bad HTTP response"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or_else(|| anyhow!("HTTP response without Content-Length"))?;
            while buf.len() < head_end + len {
                let n = conn.read(&mut chunk).await?;
                if n == 0 {
                    bail!("publish API closed the connection mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let keep = !head.to_ascii_lowercase().contains("connection: close");
            anyhow::Ok((
                status,
                String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
                keep,
            ))
        };
        let (status, body, keep) = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .map_err(|_| anyhow!("publish API did not answer in 10s"))??;
        if keep && let Ok(mut v) = self.idle.lock() {
            v.push(conn);
        }
        Ok((status, body))
    }
}

/// What a paced publish did.
#[derive(Debug, Clone, Default)]
pub struct Paced {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Messages Redis (or Nchan) reported no subscribed node (subscriber) for.
    pub unrouted: u64,
    /// Sum of the recipients each publish reported, where known (gateway nodes
    /// for Tidings via Redis, subscribers for Nchan).
    pub recipients: u64,
    pub errors: Vec<String>,
    /// Time of each publish call, microseconds.
    pub call: Hist,
    /// How late each call started after the time its (first) message was due,
    /// microseconds: how evenly the publisher kept to its schedule.
    pub lag: Hist,
    pub elapsed: Duration,
    /// Per message index: whether it was published (for expected-delivery counts).
    pub ok_flags: Vec<bool>,
}

/// How a run publishes: `total` messages at `rate` per second, in `mode`, at most
/// `batch` per call (batched mode) and `inflight` calls at once.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub rate: f64,
    pub total: u64,
    pub mode: PublishMode,
    pub batch: usize,
    pub inflight: usize,
}

impl Pacing {
    /// One message per call at its own time, one call at a time.
    pub fn paced(rate: f64, total: u64) -> Pacing {
        Pacing {
            rate,
            total,
            mode: PublishMode::Paced,
            batch: 1,
            inflight: 1,
        }
    }
}

/// A finished publish call: first message index, count, result, microseconds.
type CallDone = (u64, usize, Result<Vec<Option<u64>>>, u64);

/// A thread that keeps the schedule of [`PublishMode::Paced`]: at each message's
/// due time (`start + i / rate`, slept to with `nanosleep`, so well under a
/// millisecond off, where tokio's timer rounds up to whole milliseconds) it raises
/// the count of messages due and wakes the publisher. Stops when dropped.
pub struct Metronome {
    due: Arc<AtomicU64>,
    wake: Arc<tokio::sync::Notify>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Metronome {
    /// Starts the schedule of `total` ticks at `rate` per second from `start`.
    pub fn start(start: std::time::Instant, rate: f64, total: u64) -> Result<Metronome> {
        let m = Metronome {
            due: Arc::new(AtomicU64::new(0)),
            wake: Arc::new(tokio::sync::Notify::new()),
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let (due, wake, stop) = (m.due.clone(), m.wake.clone(), m.stop.clone());
        std::thread::Builder::new()
            .name("loadtest-pacer".into())
            .spawn(move || {
                let mut i = 0u64;
                while i < total && !stop.load(Ordering::Relaxed) {
                    let at = start + Duration::from_secs_f64(i as f64 / rate);
                    let now = std::time::Instant::now();
                    if at > now {
                        // Short naps, so a dropped publisher stops this thread soon.
                        std::thread::sleep((at - now).min(Duration::from_millis(50)));
                        continue;
                    }
                    // Everything due by now (more than one only when this thread
                    // was held up): the publisher sends each in its own call.
                    let by_now = ((now - start).as_secs_f64() * rate) as u64 + 1;
                    i = by_now.clamp(i + 1, total);
                    due.store(i, Ordering::Release);
                    wake.notify_one();
                }
            })
            .context("cannot start the pacing thread")?;
        Ok(m)
    }

    /// How many ticks are due by now.
    pub fn due(&self) -> u64 {
        self.due.load(Ordering::Acquire)
    }

    /// Waits until tick `i` (counted from 0) is due.
    pub async fn wait_for(&self, i: u64) {
        while self.due() <= i {
            self.wake.notified().await;
        }
    }
}

impl Drop for Metronome {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Publishes `p.total` messages at `p.rate` per second, built by `make(index)`
/// right before their call (so the payload's timestamp is the publish time).
///
/// [`PublishMode::Paced`]: one message per call, message i due at `i / rate`
/// seconds. [`PublishMode::Batched`]: at each 1 ms timer tick, what is due in
/// calls of at most `p.batch` messages. In both, at most `p.inflight` calls at once
/// (1 keeps the publish order: calls in parallel go over different connections and
/// may overtake each other); a call that has to wait for a free slot starts late
/// (see [`Paced::lag`]). `progress` counts messages sent.
pub async fn pace(
    sink: Sink,
    p: Pacing,
    mut make: impl FnMut(u64) -> Msg,
    progress: Arc<AtomicU64>,
) -> Paced {
    let (rate, total) = (p.rate, p.total);
    let start = Instant::now();
    let due_at = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let sem = Arc::new(Semaphore::new(p.inflight.max(1)));
    let mut calls: JoinSet<CallDone> = JoinSet::new();
    let mut out = Paced {
        ok_flags: vec![false; total as usize],
        ..Paced::default()
    };
    let mut sent = 0u64;
    let settle = |out: &mut Paced, r: CallDone| {
        let (first, n, res, us) = r;
        out.call.record(us);
        match res {
            Ok(per) => {
                out.ok += n as u64;
                for i in 0..n {
                    out.ok_flags[first as usize + i] = true;
                }
                out.unrouted += per.iter().filter(|p| **p == Some(0)).count() as u64;
                out.recipients += per.iter().flatten().sum::<u64>();
            }
            Err(e) => {
                out.failed += n as u64;
                if out.errors.len() < 5 {
                    out.errors.push(format!("{e:#}"));
                }
            }
        }
    };
    let metronome = match p.mode {
        PublishMode::Paced => match Metronome::start(start.into_std(), rate, total) {
            Ok(m) => Some(m),
            Err(e) => {
                out.failed = total;
                out.errors.push(format!("{e:#}"));
                return out;
            }
        },
        PublishMode::Batched => None,
    };
    let per_call = match p.mode {
        PublishMode::Paced => 1,
        PublishMode::Batched => p.batch.max(1),
    };
    while sent < total {
        let due = match &metronome {
            Some(m) => m.due(),
            None => ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total),
        };
        if due <= sent {
            match &metronome {
                Some(m) => m.wait_for(sent).await,
                None => tokio::time::sleep_until(due_at(sent)).await,
            }
            continue;
        }
        while sent < due {
            let n = ((due - sent) as usize).min(per_call);
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
            out.lag.record(
                Instant::now()
                    .saturating_duration_since(due_at(sent))
                    .as_micros() as u64,
            );
            let msgs: Vec<Msg> = (sent..sent + n as u64).map(&mut make).collect();
            let sink = sink.clone();
            let first = sent;
            calls.spawn(async move {
                let t = Instant::now();
                let r = sink.send(&msgs).await;
                drop(permit);
                (first, n, r, t.elapsed().as_micros() as u64)
            });
            sent += n as u64;
            progress.store(sent, Ordering::Relaxed);
            while let Some(Ok(r)) = calls.try_join_next() {
                settle(&mut out, r);
            }
        }
    }
    drop(metronome);
    while let Some(r) = calls.join_next().await {
        if let Ok(r) = r {
            settle(&mut out, r);
        }
    }
    out.sent = sent;
    out.elapsed = start.elapsed();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nchan_figures_are_read() {
        let reply =
            r#"{"messages": 2, "requested": -1, "subscribers": 3, "last_message_id": "1:1" }"#;
        assert_eq!(nchan_subscribers(reply), Some(3));
        assert_eq!(nchan_subscribers("queued messages: 1"), None);
        assert!(nchan_channel(&To::Broadcast).is_err());
        assert_eq!(nchan_channel(&To::User("lt-1".into())).ok(), Some("lt-1"));
    }
}
