//! `reconnect-storm`: a share of the clients is dropped at once (sockets closed
//! without a close handshake, as a network blip would) and reconnects immediately.
//! Measures reconnect time and connects per second, then checks with a broadcast
//! that every client is back and subscribed.

use std::time::Duration;

use anyhow::Result;

use super::{Run, delivery, probe};
use crate::cli::StormArgs;
use crate::report::{Report, Storm};
use crate::worker::{Command, SubscribeTo};

pub async fn run(a: &StormArgs) -> Result<Report> {
    let mut run = Run::new("reconnect-storm", &a.common, serde_json::to_value(a)?).await?;
    let before = run.gateway_sample();
    let mut pool = run.pool(SubscribeTo::Personal, a.drop_fraction).await?;
    let conn = run.connect(&mut pool).await?;
    let channels = run.personal_channels();
    run.wait_routes(&mut pool, &channels).await?;
    pool.pump(run.common.settle.0).await?;
    let connected = run.gateway_sample();
    let (r0, l0) = (run.redis_sample(), run.loadtest_sample());
    pool.send(&Command::Drop { hold: false })?;
    let back = pool.phase(run.left(), true).await?;
    let storm_end = run.gateway_sample();
    let (r1, l1) = (run.redis_sample(), run.loadtest_sample());
    run.wait_routes(&mut pool, &channels).await?;
    let (paced, expected, got) = probe(
        &mut run,
        &mut pool,
        a.probe_messages.max(1),
        conn.ok - back.failed,
    )
    .await?;
    let groups = pool.groups();
    let (stats, timeline) = pool.finish(run.left().max(Duration::from_secs(30))).await?;
    let mut report = run.report(&conn, &stats, &timeline, groups);
    let probe_d = delivery(Some(&paced), expected, &got, 0.0);
    report.gateway = run.gateway_cost(before, connected, connected.zip(storm_end), None, conn.ok);
    if let (Some(g), Some(a), Some(b)) = (&mut report.gateway, connected, storm_end) {
        let (cpu, _) = crate::procfs::cpu_between(&a, &b);
        g.cpu_us_per_connect = Some(cpu as f64 / back.ok.max(1) as f64);
    }
    run.side_costs(&mut report, (r0, l0), (r1, l1), None);
    report.correct &= probe_d.is_clean() && back.failed == 0;
    report.storm = Some(Storm {
        dropped: back.ok + back.failed,
        reconnected: back.ok,
        failed: back.failed,
        secs: back.elapsed_us as f64 / 1e6,
        reconnects_per_sec: back.per_sec(),
        reconnect_us: back.hist.summary(),
        errors: back.errors.clone(),
        probe: probe_d,
    });
    Ok(report)
}
