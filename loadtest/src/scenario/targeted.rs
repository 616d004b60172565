//! `targeted`: notifications to random users at R/s through the publisher SDK (one
//! Redis pipeline per batch) or the HTTP API. Each user has its own sequence, so
//! every client checks its own stream for gaps, repeats and reordering.

use anyhow::Result;
use tokio::time::Instant;

use super::{Run, delivery};
use crate::cli::TargetedArgs;
use crate::conn::user_id;
use crate::payload;
use crate::publish::{Msg, To};
use crate::report::Report;
use crate::worker::SubscribeTo;

pub async fn run(a: &TargetedArgs) -> Result<Report> {
    let mut run = Run::new("targeted", &a.common, serde_json::to_value(a)?).await?;
    let before = run.gateway_sample();
    let mut pool = run.pool(SubscribeTo::Personal, 0.0).await?;
    let conn = run.connect(&mut pool).await?;
    let channels = run.personal_channels();
    run.wait_routes(&mut pool, &channels).await?;
    pool.pump(run.common.settle.0).await?;
    let connected = run.gateway_sample();
    let sink = run.sink(a.via)?;
    let n = run.common.connections;
    let total = (a.rate * a.duration.0.as_secs_f64()).round().max(1.0) as u64;
    let size = run.common.payload_size;
    let mut next_seq = vec![0u64; n];
    let (g0, r0, l0) = (
        run.gateway_sample(),
        run.redis_sample(),
        run.loadtest_sample(),
    );
    let t0 = Instant::now();
    let paced = run
        .publish(
            &mut pool,
            sink,
            a.rate,
            total,
            a.batch,
            a.inflight,
            move |_| {
                let u = rand::random_range(0..n);
                let seq = next_seq[u];
                next_seq[u] += 1;
                Msg {
                    to: To::User(user_id(u)),
                    payload: payload::make(seq, None, size),
                }
            },
        )
        .await?;
    let expected = paced.ok;
    let (_, done) = run
        .drain(&mut pool, move |t| t.steady.unique >= expected)
        .await?;
    let (g1, r1, l1) = (
        run.gateway_sample(),
        run.redis_sample(),
        run.loadtest_sample(),
    );
    let window = done.duration_since(t0).as_secs_f64();
    let groups = pool.groups();
    let (stats, timeline) = pool
        .finish(run.left().max(std::time::Duration::from_secs(30)))
        .await?;
    let mut report = run.report(&conn, &stats, &timeline, groups);
    let d = delivery(Some(&paced), expected, &stats.steady, window);
    let unique = Some(stats.steady.unique);
    report.gateway = run.gateway_cost(before, connected, g0.zip(g1), unique, conn.ok);
    report.redis = run.process_cost(run.env.redis_pid.into_iter().collect(), r0, r1, unique);
    report.loadtest = run.process_cost(vec![std::process::id()], l0, l1, unique);
    report.publish_call_us = Some(paced.call.summary());
    report.correct &= d.is_clean() && paced.failed == 0;
    report.delivery = Some(d);
    Ok(report)
}
