//! `idle`: every connection only on its personal channel. Measures the gateway's
//! memory per connection and its CPU while merely holding them (heartbeats), then
//! checks with a broadcast that every connection is still alive.

use anyhow::Result;

use super::{Run, delivery, probe};
use crate::cli::IdleArgs;
use crate::report::Report;
use crate::worker::SubscribeTo;

pub async fn run(a: &IdleArgs) -> Result<Report> {
    let mut run = Run::new("idle", &a.common, serde_json::to_value(a)?).await?;
    let before = run.gateway_sample();
    let redis_before = run.redis_sample();
    let mut pool = run.pool(SubscribeTo::Personal, 0.0).await?;
    let conn = run.connect(&mut pool).await?;
    let channels = run.personal_channels();
    run.wait_routes(&mut pool, &channels).await?;
    pool.pump(run.common.settle.0).await?;
    let connected = run.gateway_sample();
    let (r0, l0) = (run.redis_sample(), run.loadtest_sample());
    let hold = a.hold.0.min(run.left());
    pool.pump(hold).await?;
    run.check_time()?;
    let held = run.gateway_sample();
    let (r1, l1) = (run.redis_sample(), run.loadtest_sample());
    run.note_server().await;
    let checked = if a.probe_messages > 0 {
        Some(probe(&mut run, &mut pool, a.probe_messages, conn.ok).await?)
    } else {
        None
    };
    let groups = pool.groups();
    let (stats, timeline) = pool
        .finish(run.left().max(std::time::Duration::from_secs(30)))
        .await?;
    let mut report = run.report(&conn, &stats, &timeline, groups);
    report.gateway = run.gateway_cost(before, connected, connected.zip(held), None, conn.ok);
    if let Some(g) = &mut report.gateway {
        g.idle_cpu_percent = Some(g.cpu_percent);
    }
    run.side_costs(&mut report, (r0, l0), (r1, l1), None);
    if let (Some(redis), Some(b), Some(c)) = (&mut report.redis, redis_before, r0) {
        redis.rss_per_connection_bytes =
            Some((c.rss as f64 - b.rss as f64) / conn.ok.max(1) as f64);
    }
    if let Some((paced, expected, got)) = checked {
        let d = delivery(Some(&paced), expected, &got, 0.0);
        report.correct &= d.is_clean();
        report.delivery = Some(d);
    }
    Ok(report)
}
