//! The backend side of a chaos run: one numbered stream ("lane") per channel that
//! the backend publishes to, each published strictly in order (one message in
//! flight per lane) with a message id per sequence number, and retried until Redis
//! takes it. A retried publish that had gone through is dropped by Redis as a
//! duplicate, so no message is ever published twice and none silently fails: at the
//! end each lane knows exactly how many messages it published and, for channels
//! with history, the history offset and epoch of every one of them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Result, anyhow};
use protocol::{Payload, Publication};
use publisher::Publisher;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use super::plan::Kind;

/// Event name of chaos messages.
pub const EVENT: &str = "chaos";
/// Most messages per publish call (one Redis pipeline).
const BATCH: usize = 64;
/// Publish calls in flight at once.
const INFLIGHT: usize = 8;

/// Builds a payload: `{"seq":N,"t":micros[,"src":S][,"end":1],"pad":"..."}`, at
/// least `size` bytes of JSON. `end` marks the end-of-run markers.
pub fn payload(seq: u64, src: Option<u64>, end: bool, size: usize) -> String {
    use std::fmt::Write as _;
    let mut head = format!("{{\"seq\":{seq},\"t\":{}", crate::payload::now_micros());
    if let Some(s) = src {
        let _ = write!(head, ",\"src\":{s}");
    }
    if end {
        head.push_str(",\"end\":1");
    }
    head.push_str(",\"pad\":\"");
    let fill = size.saturating_sub(head.len() + 2);
    let mut out = String::with_capacity(head.len() + fill + 2);
    out.push_str(&head);
    out.extend(std::iter::repeat_n('x', fill));
    out.push_str("\"}");
    out
}

/// A run of sequence numbers whose history offsets follow each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub first_seq: u64,
    pub first_offset: u64,
    /// The history epoch, read right after the segment's first message.
    pub epoch: Option<String>,
}

/// What one lane published.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaneResult {
    pub channel: String,
    pub kind: Kind,
    pub src: Option<u64>,
    /// Messages published: sequence numbers `0..published`.
    pub published: u64,
    /// 1 when the publish of sequence number `published` was still failing when the
    /// run had to end (it may or may not have reached Redis).
    pub uncertain: u64,
    /// The first end marker's sequence number.
    pub marker_from: Option<u64>,
    /// History offsets (channels with history); more than one segment means the
    /// offsets did not continue (Redis lost entries or the epoch changed).
    pub segments: Vec<Segment>,
}

#[derive(Debug, Default)]
struct Lane {
    next: u64,
    due: u64,
    busy: bool,
    queued: bool,
    /// Gave up (the run ended while its publish kept failing).
    stuck: bool,
    marker_from: Option<u64>,
    last_offset: Option<u64>,
    segments: Vec<Segment>,
}

/// Counters of the publisher.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublisherFigures {
    pub lanes: u64,
    pub published: u64,
    /// Publish calls that failed and were retried.
    pub failed_calls: u64,
    /// Messages of retried calls that Redis had taken already (dropped as duplicates).
    pub duplicates_on_retry: u64,
    /// Messages whose publish was still failing when the run ended.
    pub uncertain: u64,
    /// Lanes whose history offsets did not continue (Redis lost entries or the epoch changed).
    pub offset_breaks: u64,
    /// Longest time one message took until Redis took it, ms (retries included).
    pub longest_publish_ms: u64,
    pub errors: Vec<String>,
}

struct Stats {
    failed_calls: u64,
    duplicates: u64,
    longest_ms: u64,
    errors: Vec<String>,
}

/// Every lane of a run and the publishing machinery.
pub struct Lanes {
    info: Vec<(String, Kind, Option<u64>)>,
    state: Mutex<Vec<Lane>>,
    ready: Mutex<VecDeque<usize>>,
    wake: Notify,
    stats: Mutex<Stats>,
    payload_size: usize,
    publisher: Publisher,
    redis_url: String,
    namespace: String,
    meta: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Lanes {
    pub fn new(
        info: Vec<(String, Kind, Option<u64>)>,
        publisher: Publisher,
        redis_url: &str,
        payload_size: usize,
    ) -> Arc<Lanes> {
        let n = info.len();
        Arc::new(Lanes {
            info,
            state: Mutex::new((0..n).map(|_| Lane::default()).collect()),
            ready: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            stats: Mutex::new(Stats {
                failed_calls: 0,
                duplicates: 0,
                longest_ms: 0,
                errors: Vec::new(),
            }),
            payload_size,
            namespace: publisher.namespace().to_owned(),
            publisher,
            redis_url: redis_url.to_owned(),
            meta: tokio::sync::Mutex::new(None),
        })
    }

    pub fn len(&self) -> usize {
        self.info.len()
    }

    pub fn is_empty(&self) -> bool {
        self.info.is_empty()
    }

    pub fn kind(&self, lane: usize) -> Kind {
        self.info[lane].1
    }

    /// One more message is due on `lane`.
    pub fn add(&self, lane: usize) {
        let push = {
            let mut st = lock(&self.state);
            let l = &mut st[lane];
            l.due += 1;
            let push = !l.busy && !l.queued && !l.stuck;
            if push {
                l.queued = true;
            }
            push
        };
        if push {
            lock(&self.ready).push_back(lane);
            self.wake.notify_one();
        }
    }

    /// An end marker on every lane (the first one fixes the lane's marker start).
    pub fn add_markers(&self) {
        for lane in 0..self.len() {
            {
                let mut st = lock(&self.state);
                let l = &mut st[lane];
                if l.marker_from.is_none() {
                    l.marker_from = Some(l.due);
                }
            }
            self.add(lane);
        }
    }

    /// Whether every due message is published (or given up on).
    pub fn flushed(&self) -> bool {
        lock(&self.state)
            .iter()
            .all(|l| l.stuck || (!l.busy && l.next >= l.due))
    }

    /// Messages due but not yet published.
    pub fn backlog(&self) -> u64 {
        lock(&self.state)
            .iter()
            .filter(|l| !l.stuck)
            .map(|l| l.due.saturating_sub(l.next))
            .sum()
    }

    fn take_batch(&self) -> Vec<(usize, u64, bool)> {
        let mut ready = lock(&self.ready);
        let mut st = lock(&self.state);
        let mut out = Vec::new();
        while out.len() < BATCH {
            let Some(lane) = ready.pop_front() else { break };
            let l = &mut st[lane];
            l.queued = false;
            if l.busy || l.stuck || l.next >= l.due {
                continue;
            }
            l.busy = true;
            let end = l.marker_from.is_some_and(|m| l.next >= m);
            out.push((lane, l.next, end));
        }
        out
    }

    /// Publishes what becomes due until `stop` is set and everything is flushed, or
    /// `give_up` passes (then messages still failing are recorded as uncertain).
    pub async fn dispatch(self: Arc<Self>, stop: Arc<Notify>, give_up: Instant) {
        let permits = Arc::new(Semaphore::new(INFLIGHT));
        let mut calls = tokio::task::JoinSet::new();
        let stopped = stop.notified();
        tokio::pin!(stopped);
        let mut stopping = false;
        loop {
            loop {
                let batch = self.take_batch();
                if batch.is_empty() {
                    break;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                calls.spawn(async move {
                    me.publish(batch, give_up).await;
                    drop(permit);
                });
            }
            while calls.try_join_next().is_some() {}
            if stopping && self.flushed() {
                break;
            }
            if Instant::now() >= give_up {
                break;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = &mut stopped, if !stopping => stopping = true,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        // Calls still retrying give up at `give_up` by themselves.
        while calls.join_next().await.is_some() {}
    }

    async fn publish(&self, batch: Vec<(usize, u64, bool)>, give_up: Instant) {
        let started = Instant::now();
        let pubs: Vec<Publication> = batch
            .iter()
            .map(|&(lane, seq, end)| {
                let (channel, _, src) = &self.info[lane];
                let text = payload(seq, *src, end, self.payload_size);
                let mut p = Publication::new(
                    channel.clone(),
                    EVENT,
                    Payload::from_json(&text).unwrap_or_else(|_| Payload::null()),
                );
                p.id = Some(format!("q{seq}"));
                p
            })
            .collect();
        let mut pause = Duration::from_millis(50);
        let receipt = loop {
            match self.publisher.publish_all(&pubs).await {
                Ok(r) => break Some(r),
                Err(e) => {
                    {
                        let mut s = lock(&self.stats);
                        s.failed_calls += 1;
                        if s.errors.len() < 5 {
                            s.errors.push(e.to_string());
                        }
                    }
                    if Instant::now() + pause >= give_up {
                        break None;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        };
        let Some(receipt) = receipt else {
            let mut st = lock(&self.state);
            for &(lane, _, _) in &batch {
                st[lane].busy = false;
                st[lane].stuck = true;
            }
            return;
        };
        {
            let mut s = lock(&self.stats);
            s.duplicates += receipt.duplicates as u64;
            s.longest_ms = s.longest_ms.max(started.elapsed().as_millis() as u64);
        }
        for (i, &(lane, seq, _)) in batch.iter().enumerate() {
            if self.info[lane].1.has_history() {
                let offset = match receipt.offsets.get(i).copied().flatten() {
                    Some(o) => Some(o),
                    // A duplicate (an earlier attempt went through): its offset is
                    // in the idempotency key.
                    None => self.offset_of_duplicate(lane, seq, give_up).await,
                };
                self.record_offset(lane, seq, offset, give_up).await;
            }
            let requeue = {
                let mut st = lock(&self.state);
                let l = &mut st[lane];
                l.next = seq + 1;
                l.busy = false;
                let requeue = l.due > l.next && !l.queued;
                if requeue {
                    l.queued = true;
                }
                requeue
            };
            if requeue {
                lock(&self.ready).push_back(lane);
                self.wake.notify_one();
            }
        }
    }

    async fn record_offset(&self, lane: usize, seq: u64, offset: Option<u64>, give_up: Instant) {
        let Some(offset) = offset else { return };
        let starts = {
            let mut st = lock(&self.state);
            let l = &mut st[lane];
            let continues = l.last_offset.is_some_and(|p| p + 1 == offset);
            l.last_offset = Some(offset);
            if !continues {
                l.segments.push(Segment {
                    first_seq: seq,
                    first_offset: offset,
                    epoch: None,
                });
            }
            !continues
        };
        if starts {
            let epoch = self.epoch_of(lane, give_up).await;
            let mut st = lock(&self.state);
            if let Some(s) = st[lane].segments.last_mut() {
                s.epoch = epoch;
            }
        }
    }

    /// Runs a Redis command on the publisher's side connection, reconnecting and
    /// retrying until `give_up`.
    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
        give_up: Instant,
    ) -> Option<T> {
        let mut pause = Duration::from_millis(50);
        loop {
            let conn = {
                let mut g = self.meta.lock().await;
                if g.is_none() {
                    *g = connect(&self.redis_url).await.ok();
                }
                g.clone()
            };
            if let Some(mut c) = conn {
                match tokio::time::timeout(Duration::from_secs(2), cmd.query_async::<T>(&mut c))
                    .await
                {
                    Ok(Ok(v)) => return Some(v),
                    _ => *self.meta.lock().await = None,
                }
            }
            if Instant::now() + pause >= give_up {
                return None;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    async fn epoch_of(&self, lane: usize, give_up: Instant) -> Option<String> {
        let key = protocol::keys::history_meta(&self.namespace, &self.info[lane].0);
        let mut cmd = redis::cmd("HGET");
        cmd.arg(key).arg("epoch");
        self.query::<Option<String>>(cmd, give_up).await.flatten()
    }

    async fn offset_of_duplicate(&self, lane: usize, seq: u64, give_up: Instant) -> Option<u64> {
        let key =
            protocol::keys::idempotency(&self.namespace, &self.info[lane].0, &format!("q{seq}"));
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        self.query::<Option<u64>>(cmd, give_up)
            .await
            .flatten()
            .filter(|o| *o > 0)
    }

    /// What every lane published, and the publisher's counters.
    pub fn results(&self) -> (Vec<LaneResult>, PublisherFigures) {
        let st = lock(&self.state);
        let lanes: Vec<LaneResult> = self
            .info
            .iter()
            .zip(st.iter())
            .map(|((channel, kind, src), l)| LaneResult {
                channel: channel.clone(),
                kind: *kind,
                src: *src,
                published: l.next,
                uncertain: u64::from(l.stuck && l.due > l.next),
                marker_from: l.marker_from,
                segments: l.segments.clone(),
            })
            .collect();
        let s = lock(&self.stats);
        let figures = PublisherFigures {
            lanes: lanes.len() as u64,
            published: lanes.iter().map(|l| l.published).sum(),
            failed_calls: s.failed_calls,
            duplicates_on_retry: s.duplicates,
            uncertain: lanes.iter().map(|l| l.uncertain).sum(),
            offset_breaks: lanes
                .iter()
                .map(|l| l.segments.len().saturating_sub(1) as u64)
                .sum(),
            longest_publish_ms: s.longest_ms,
            errors: s.errors.clone(),
        };
        (lanes, figures)
    }
}

async fn connect(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).map_err(|e| anyhow!("bad Redis URL: {e}"))?;
    let c = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| anyhow!("Redis did not answer"))??;
    Ok(c)
}

/// Message rates of the backend, per second.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    /// Over all personal channels together.
    pub personal: f64,
    /// Per history room.
    pub room: f64,
    /// Per plain channel.
    pub plain: f64,
}

/// Adds due messages at `rates` until `until`: personal messages go to the users in
/// turn, room and plain messages to each channel at its rate (in turn, so evenly).
pub async fn feed(lanes: Arc<Lanes>, rates: Rates, until: Instant) {
    let by_kind =
        |k: Kind| -> Vec<usize> { (0..lanes.len()).filter(|&i| lanes.kind(i) == k).collect() };
    let groups = [
        (by_kind(Kind::Personal), rates.personal),
        (
            by_kind(Kind::Room),
            rates.room * by_kind(Kind::Room).len() as f64,
        ),
        (
            by_kind(Kind::Plain),
            rates.plain * by_kind(Kind::Plain).len() as f64,
        ),
    ];
    let mut acc = [0.0f64; 3];
    let mut turn = [0usize; 3];
    let mut last = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while Instant::now() < until {
        tick.tick().await;
        let now = Instant::now().min(until);
        let dt = now.saturating_duration_since(last).as_secs_f64();
        last = now;
        for (g, (members, rate)) in groups.iter().enumerate() {
            if members.is_empty() || *rate <= 0.0 {
                continue;
            }
            acc[g] += rate * dt;
            while acc[g] >= 1.0 {
                acc[g] -= 1.0;
                lanes.add(members[turn[g] % members.len()]);
                turn[g] += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_reads_back_and_has_its_size() {
        let p = payload(5, Some(3), true, 120);
        assert_eq!(p.len(), 120);
        let v: serde_json::Value = serde_json::from_str(&p).unwrap_or_default();
        assert_eq!(v["seq"], 5);
        assert_eq!(v["src"], 3);
        assert_eq!(v["end"], 1);
        let q: serde_json::Value =
            serde_json::from_str(&payload(1, None, false, 10)).unwrap_or_default();
        assert!(q.get("src").is_none() && q.get("end").is_none());
    }
}
