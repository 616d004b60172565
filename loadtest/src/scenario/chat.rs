//! `chat`: rooms of K clients (`room:<n>`); every client publishes to its room over
//! the WebSocket (`publish` frames) and receives everyone's messages, its own
//! included. Each sender is its own stream of sequence numbers.

use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

use super::{Run, delivery};
use crate::cli::ChatArgs;
use crate::report::Report;
use crate::worker::{Command, Event, SubscribeTo};

pub async fn run(a: &ChatArgs) -> Result<Report> {
    let mut run = Run::new("chat", &a.common, serde_json::to_value(a)?).await?;
    let before = run.gateway_sample();
    let mut pool = run
        .pool(SubscribeTo::Rooms { size: a.room_size }, 0.0)
        .await?;
    let conn = run.connect(&mut pool).await?;
    let rooms: Vec<String> = (0..run.common.connections.div_ceil(a.room_size))
        .map(|r| format!("room:{r}"))
        .collect();
    run.wait_routes(&mut pool, &rooms).await?;
    pool.pump(run.common.settle.0).await?;
    let connected = run.gateway_sample();
    let (g0, r0, l0) = (
        run.gateway_sample(),
        run.redis_sample(),
        run.loadtest_sample(),
    );
    let t0 = Instant::now();
    pool.send(&Command::Chat {
        rate: a.rate,
        duration_ms: a.duration.0.as_millis() as u64,
    })?;
    pool.gather(
        a.duration.0 + Duration::from_secs(20),
        "the end of the chat",
        |e| matches!(e, Event::ChatDone).then_some(()),
    )
    .await?;
    let (_, done) = run
        .drain(&mut pool, |t| t.steady.unique >= t.chat_expected)
        .await?;
    let (g1, r1, l1) = (
        run.gateway_sample(),
        run.redis_sample(),
        run.loadtest_sample(),
    );
    let window = done.duration_since(t0).as_secs_f64();
    let groups = pool.groups();
    let (stats, timeline) = pool.finish(run.left().max(Duration::from_secs(30))).await?;
    let mut report = run.report(&conn, &stats, &timeline, groups);
    let mut d = delivery(None, stats.chat_expected, &stats.steady, window);
    d.published = stats.chat_ok;
    d.publish_failed = stats.chat_failed;
    d.publish_errors = stats.chat_errors.clone();
    let unique = Some(stats.steady.unique);
    report.gateway = run.gateway_cost(before, connected, g0.zip(g1), unique, conn.ok);
    run.side_costs(&mut report, (r0, l0), (r1, l1), unique);
    report.correct &= d.is_clean() && stats.chat_failed == 0 && stats.chat_ok == stats.chat_sent;
    if stats.chat_ok != stats.chat_sent {
        report.notes.push(format!(
            "{} publishes sent but {} acknowledged",
            stats.chat_sent, stats.chat_ok
        ));
    }
    report.delivery = Some(d);
    Ok(report)
}
