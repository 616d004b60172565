//! `recovery`: a stream on one channel; part of the clients disconnect in the middle,
//! stay away for a gap and come back, resubscribing with `since {offset, epoch}`
//! when the messages they saw carried an offset (history), plainly otherwise. The
//! report states how many deliveries the gap cost them, and what the gateway said
//! about recovery (`recovered`), rather than assuming anything.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use tokio::time::Instant;

use super::{Run, delivery};
use crate::cli::RecoveryArgs;
use crate::payload;
use crate::publish::{self, Msg, To};
use crate::report::{Recovery, Report};
use crate::stats::Cohort;
use crate::worker::{Command, Event, SubscribeTo};

pub async fn run(a: &RecoveryArgs) -> Result<Report> {
    let mut run = Run::new("recovery", &a.common, serde_json::to_value(a)?).await?;
    let before = run.gateway_sample();
    let mut pool = run
        .pool(SubscribeTo::Channel(a.channel.clone()), a.drop_fraction)
        .await?;
    let conn = run.connect(&mut pool).await?;
    run.wait_routes(&mut pool, std::slice::from_ref(&a.channel))
        .await?;
    pool.pump(run.common.settle.0).await?;
    let connected = run.gateway_sample();
    let sink = run.sink(a.via)?;
    let (channel, size) = (a.channel.clone(), run.common.payload_size);
    let progress = Arc::new(AtomicU64::new(0));
    let g0 = run.gateway_sample();
    let t0 = Instant::now();
    let task = tokio::spawn(publish::pace(
        sink,
        publish::Pacing::paced(a.rate, a.messages),
        move |i| Msg {
            to: To::Channel(channel.clone()),
            payload: payload::make(i, None, size),
        },
        progress.clone(),
    ));
    tokio::pin!(task);
    // Drop a third of the way in.
    let third = a.messages / 3;
    while progress.load(Ordering::Relaxed) < third {
        pool.pump(Duration::from_millis(5)).await?;
        run.check_time()?;
    }
    let at_drop = progress.load(Ordering::Relaxed);
    pool.send(&Command::Drop { hold: true })?;
    pool.gather(run.left(), "the dropped clients", |e| match e {
        Event::Dropped { n } => Some(n),
        _ => None,
    })
    .await?;
    let away = Instant::now();
    pool.pump(a.gap.0).await?;
    pool.send(&Command::Resume)?;
    let back = pool.phase(run.left(), true).await?;
    let at_back = progress.load(Ordering::Relaxed);
    let gap_secs = away.elapsed().as_secs_f64();
    let paced = match pool.drive(&mut task).await? {
        Ok(p) => p,
        Err(e) => bail!("publisher task failed: {e}"),
    };
    let totals = pool.totals();
    let (steady_clients, dropped_clients) = (totals.steady.clients, totals.dropped.clients);
    let ok = paced.ok;
    let (_, done) = run
        .drain(&mut pool, move |t| t.steady.unique >= ok * steady_clients)
        .await?;
    // Stragglers of the returning clients (they are connected to the same stream).
    pool.wait_for(
        Duration::from_millis(1500),
        Duration::from_millis(500),
        move |t| t.dropped.unique >= ok * dropped_clients,
    )
    .await?;
    let g1 = run.gateway_sample();
    let window = done.duration_since(t0).as_secs_f64();
    let groups = pool.groups();
    let (stats, timeline) = pool.finish(run.left().max(Duration::from_secs(30))).await?;
    let mut report = run.report(&conn, &stats, &timeline, groups);
    let steady = delivery(Some(&paced), ok * steady_clients, &stats.steady, window);
    let dropped: &Cohort = &stats.dropped;
    let lost_during_gap = (ok * dropped_clients).saturating_sub(dropped.unique);
    let verdict = if lost_during_gap == 0 && stats.recovered_true > 0 {
        "the gateway replayed the gap: nothing lost".to_owned()
    } else if lost_during_gap == 0 {
        "nothing lost, but nothing was published while the clients were away".to_owned()
    } else {
        format!(
            "{lost_during_gap} deliveries lost while {dropped_clients} clients were away ({} subscribes carried `since`; the gateway answered recovered=false {} times): run with --history covering the channel to resume",
            stats.since_sent, stats.recovered_false
        )
    };
    let unique = Some(stats.steady.unique + stats.dropped.unique);
    report.gateway = run.gateway_cost(before, connected, g0.zip(g1), unique, conn.ok);
    report.correct &= steady.is_clean()
        && dropped.duplicates == 0
        && dropped.out_of_order == 0
        && back.failed == 0;
    report.publish_call_us = Some(paced.call.summary());
    report.recovery = Some(Recovery {
        steady_clients,
        dropped_clients,
        stream_messages: ok,
        published_while_away: at_back.saturating_sub(at_drop),
        gap_secs,
        reconnected: back.ok,
        reconnect_secs: back.elapsed_us as f64 / 1e6,
        since_sent: stats.since_sent,
        recovered_true: stats.recovered_true,
        recovered_false: stats.recovered_false,
        recovered_absent: stats.recovered_absent,
        lost_during_gap,
        dropped_duplicates: dropped.duplicates,
        dropped_out_of_order: dropped.out_of_order,
        steady: steady.clone(),
        verdict,
    });
    report.delivery = Some(steady);
    Ok(report)
}
