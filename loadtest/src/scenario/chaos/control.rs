//! Executes the fault schedule in real time: one task per target (each gateway with
//! its Redis proxy, Redis, the stalled clients), so a slow restart of one target
//! never delays the faults of another. Each task also watches its process between
//! faults: an exit nobody asked for is recorded as a crash and the process is
//! started again. Every fault undoes itself (restart, thaw, no delay) before its
//! task ends, which is by the end of the traffic.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use testkit::FaultProxy;
use tokio::time::Instant;

use super::client::Cmd;
use super::cluster::{GatewayProc, RedisProc, tail};
use super::plan::{Fault, FaultKind};
use super::pool::Commander;

/// One fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub kind: String,
    pub target: String,
    /// The gateway (index) for gateway and proxy faults.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<usize>,
    /// Planned start, ms from the start of the traffic.
    pub planned_ms: u64,
    /// Actual start.
    pub at_ms: u64,
    /// How long the fault held (down time, freeze, delay, stall), ms.
    pub hold_ms: u64,
    /// Until the target was back (restart answered, thawed), ms from the start.
    pub back_ms: u64,
    pub detail: String,
    /// False when something did not go as a healthy system would: a gateway that did
    /// not exit within the drain bound after SIGTERM, an unplanned exit (crash), a
    /// stalled client whose connection ended without the close frame reaching it.
    pub ok: bool,
    /// Stalls: how the stalled connections ended within a few seconds after the
    /// stall (close code or error), or "kept the connection".
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub outcomes: BTreeMap<String, u64>,
}

fn ms(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

/// Waits until `at`, checking `exited` every 200 ms; returns the crash status if
/// the process exited by itself meanwhile.
async fn wait_watching(at: Instant, mut exited: impl FnMut() -> Option<String>) -> Option<String> {
    loop {
        if let Some(s) = exited() {
            return Some(s);
        }
        let now = Instant::now();
        if now >= at {
            return None;
        }
        tokio::time::sleep((at - now).min(Duration::from_millis(200))).await;
    }
}

/// Runs the faults of one gateway (process faults and its proxy's) until `end`.
pub async fn gateway(
    mut gw: GatewayProc,
    proxy: Arc<FaultProxy>,
    faults: Vec<Fault>,
    t0: Instant,
    end: Instant,
    drain_bound: Duration,
) -> Result<(GatewayProc, Vec<FaultRecord>)> {
    let mut out = Vec::new();
    let target = format!("gateway {}", gw.idx);
    let mut queue = faults.into_iter();
    loop {
        let next = queue.next();
        let at = next
            .as_ref()
            .map_or(end, |f| t0 + Duration::from_millis(f.at_ms));
        while let Some(status) = wait_watching(at, || gw.exited()).await {
            let at_ms = ms(t0);
            let log = gw.log.clone();
            let took = gw.spawn().await?;
            out.push(FaultRecord {
                kind: "crash (unplanned exit)".into(),
                target: target.clone(),
                gateway: Some(gw.idx),
                planned_ms: at_ms,
                at_ms,
                hold_ms: 0,
                back_ms: ms(t0),
                detail: format!(
                    "exited with {status}; restarted in {} ms; last log lines ({}):\n{}",
                    took.as_millis(),
                    log.display(),
                    tail(&log, 10)
                ),
                ok: false,
                outcomes: BTreeMap::new(),
            });
        }
        let Some(f) = next else { break };
        let at_ms = ms(t0);
        let hold = Duration::from_millis(f.hold_ms);
        let mut rec = FaultRecord {
            kind: f.kind.name().into(),
            target: target.clone(),
            gateway: Some(gw.idx),
            planned_ms: f.at_ms,
            at_ms,
            hold_ms: f.hold_ms,
            back_ms: at_ms,
            detail: String::new(),
            ok: true,
            outcomes: BTreeMap::new(),
        };
        match f.kind {
            FaultKind::GatewayKill => {
                let pid = gw.kill().await?;
                tokio::time::sleep(hold).await;
                let took = gw.spawn().await?;
                rec.detail = format!(
                    "SIGKILL pid {pid}; down {} ms; restarted on port {} (pid {}) in {} ms",
                    f.hold_ms,
                    gw.port,
                    gw.pid.load(std::sync::atomic::Ordering::SeqCst),
                    took.as_millis()
                );
            }
            FaultKind::GatewayTerm => {
                let (pid, took, forced) = gw.term(drain_bound).await?;
                tokio::time::sleep(hold).await;
                let up = gw.spawn().await?;
                rec.ok = !forced;
                rec.detail = if forced {
                    format!(
                        "SIGTERM pid {pid}: still running after {} ms, killed (SIGKILL); restarted in {} ms",
                        took.as_millis(),
                        up.as_millis()
                    )
                } else {
                    format!(
                        "SIGTERM pid {pid}: drained and exited in {} ms; down {} ms more; restarted in {} ms",
                        took.as_millis(),
                        f.hold_ms,
                        up.as_millis()
                    )
                };
            }
            FaultKind::Freeze => {
                proxy.freeze();
                tokio::time::sleep(hold).await;
                proxy.thaw();
                rec.detail = format!("gateway<->Redis frozen for {} ms", f.hold_ms);
            }
            FaultKind::Delay => {
                let d = f.delay_ms.unwrap_or(100);
                proxy.delay(Duration::from_millis(d));
                tokio::time::sleep(hold).await;
                proxy.delay(Duration::ZERO);
                rec.detail = format!("gateway<->Redis +{d} ms each way for {} ms", f.hold_ms);
            }
            FaultKind::Cut => {
                proxy.cut();
                rec.detail = "every gateway<->Redis connection closed".into();
            }
            _ => {}
        }
        rec.back_ms = ms(t0);
        out.push(rec);
    }
    Ok((gw, out))
}

/// Runs the Redis faults until `end`.
pub async fn redis(
    mut redis: RedisProc,
    faults: Vec<Fault>,
    t0: Instant,
    end: Instant,
) -> Result<(RedisProc, Vec<FaultRecord>)> {
    let mut out = Vec::new();
    let mut queue = faults.into_iter();
    loop {
        let next = queue.next();
        let at = next
            .as_ref()
            .map_or(end, |f| t0 + Duration::from_millis(f.at_ms));
        while let Some(status) = wait_watching(at, || redis.exited()).await {
            let at_ms = ms(t0);
            let took = redis.spawn().await?;
            out.push(FaultRecord {
                kind: "crash (unplanned exit)".into(),
                target: "redis".into(),
                gateway: None,
                planned_ms: at_ms,
                at_ms,
                hold_ms: 0,
                back_ms: ms(t0),
                detail: format!(
                    "exited with {status}; restarted in {} ms; log: {}",
                    took.as_millis(),
                    tail(&redis.log, 5)
                ),
                ok: false,
                outcomes: BTreeMap::new(),
            });
        }
        let Some(f) = next else { break };
        let at_ms = ms(t0);
        let hold = Duration::from_millis(f.hold_ms);
        let detail = match f.kind {
            FaultKind::RedisKill => {
                let pid = redis.kill().await?;
                tokio::time::sleep(hold).await;
                let took = redis.spawn().await?;
                format!(
                    "SIGKILL pid {pid}; down {} ms; restarted from the AOF on port {} in {} ms",
                    f.hold_ms,
                    redis.port,
                    took.as_millis()
                )
            }
            FaultKind::RedisTerm => {
                let (pid, took, forced) = redis.term(Duration::from_secs(10)).await?;
                tokio::time::sleep(hold).await;
                let up = redis.spawn().await?;
                format!(
                    "SIGTERM pid {pid}: exited in {} ms{}; down {} ms more; restarted from the AOF in {} ms",
                    took.as_millis(),
                    if forced { " (had to be killed)" } else { "" },
                    f.hold_ms,
                    up.as_millis()
                )
            }
            _ => String::new(),
        };
        out.push(FaultRecord {
            kind: f.kind.name().into(),
            target: "redis".into(),
            gateway: None,
            planned_ms: f.at_ms,
            at_ms,
            hold_ms: f.hold_ms,
            back_ms: ms(t0),
            detail,
            ok: true,
            outcomes: BTreeMap::new(),
        });
    }
    Ok((redis, out))
}

/// Sends the stalls to the client groups at their times.
pub async fn stalls(cmd: Commander, faults: Vec<Fault>, t0: Instant) -> Result<Vec<FaultRecord>> {
    let mut out = Vec::new();
    for f in faults {
        tokio::time::sleep_until(t0 + Duration::from_millis(f.at_ms)).await;
        let at_ms = ms(t0);
        cmd.send(&Cmd::Stall {
            clients: f.clients.clone(),
            ms: f.hold_ms,
            blind: f.blind,
        })?;
        let shown: Vec<String> = f.clients.iter().take(8).map(|c| c.to_string()).collect();
        out.push(FaultRecord {
            kind: f.kind.name().into(),
            target: format!("{} clients", f.clients.len()),
            gateway: None,
            planned_ms: f.at_ms,
            at_ms,
            hold_ms: f.hold_ms,
            back_ms: at_ms + f.hold_ms,
            detail: format!(
                "{} stop reading for {} ms{} (clients {}{})",
                f.clients.len(),
                f.hold_ms,
                if f.blind {
                    ", still sending pongs blindly"
                } else {
                    ", sending nothing"
                },
                shown.join(","),
                if f.clients.len() > 8 { ",..." } else { "" }
            ),
            ok: true,
            outcomes: BTreeMap::new(),
        });
    }
    Ok(out)
}
