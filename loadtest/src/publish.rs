//! Publishing the load: through the publisher SDK straight to Redis, or through a
//! gateway's HTTP publish API, paced at a fixed rate with bounded calls in flight.

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
        Sink::Http(Arc::new(HttpApi {
            addr,
            auth: format!("Bearer {api_key}"),
            idle: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Publishes the messages in one call (one Redis pipeline, or one HTTP request
    /// or batch); returns, per message, how many nodes took it when known.
    pub async fn send(&self, msgs: &[Msg]) -> Result<Vec<Option<u64>>> {
        match self {
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

/// A minimal keep-alive HTTP/1.1 client for the gateway's publish API.
pub struct HttpApi {
    addr: SocketAddr,
    auth: String,
    idle: std::sync::Mutex<Vec<TcpStream>>,
}

impl HttpApi {
    async fn post(&self, path: &str, body: &str) -> Result<(u16, String)> {
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
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            self.auth,
            body.len()
        );
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
                    bail!("publish API closed the connection");
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
    /// Messages Redis reported no subscribed node for.
    pub unrouted: u64,
    pub errors: Vec<String>,
    /// Time of each publish call, microseconds.
    pub call: Hist,
    pub elapsed: Duration,
    /// Per message index: whether it was published (for expected-delivery counts).
    pub ok_flags: Vec<bool>,
}

/// A finished publish call: first message index, count, result, microseconds.
type CallDone = (u64, usize, Result<Vec<Option<u64>>>, u64);

/// Publishes `total` messages at `rate` per second, built by `make(index)`; at most
/// `batch` per call and `inflight` calls at once (1 keeps the publish order: calls
/// in parallel go over different connections and may overtake each other). `progress` counts messages sent.
pub async fn pace(
    sink: Sink,
    rate: f64,
    total: u64,
    batch: usize,
    inflight: usize,
    mut make: impl FnMut(u64) -> Msg,
    progress: Arc<AtomicU64>,
) -> Paced {
    let start = Instant::now();
    let sem = Arc::new(Semaphore::new(inflight.max(1)));
    let mut calls: JoinSet<CallDone> = JoinSet::new();
    let mut out = Paced {
        ok_flags: vec![false; total as usize],
        ..Paced::default()
    };
    let mut sent = 0u64;
    let settle = |out: &mut Paced, r: (u64, usize, Result<Vec<Option<u64>>>, u64)| {
        let (first, n, res, us) = r;
        out.call.record(us);
        match res {
            Ok(per) => {
                out.ok += n as u64;
                for i in 0..n {
                    out.ok_flags[first as usize + i] = true;
                }
                out.unrouted += per.iter().filter(|p| **p == Some(0)).count() as u64;
            }
            Err(e) => {
                out.failed += n as u64;
                if out.errors.len() < 5 {
                    out.errors.push(format!("{e:#}"));
                }
            }
        }
    };
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        if due <= sent {
            let next = start + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(next).await;
            continue;
        }
        while sent < due {
            let n = ((due - sent) as usize).min(batch.max(1));
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break;
            };
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
    while let Some(r) = calls.join_next().await {
        if let Ok(r) = r {
            settle(&mut out, r);
        }
    }
    out.sent = sent;
    out.elapsed = start.elapsed();
    out
}
