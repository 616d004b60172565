//! `fanout`: every connection subscribed to one channel; M messages at R/s through
//! the publisher SDK (Redis) or the gateway's HTTP API. Measures the gateway's CPU
//! per delivery and publish-to-delivery latency.

use anyhow::Result;
use tokio::time::Instant;

use super::{Run, delivery};
use crate::cli::FanoutArgs;
use crate::payload;
use crate::publish::{Msg, To};
use crate::report::Report;
use crate::worker::SubscribeTo;

pub async fn run(a: &FanoutArgs) -> Result<Report> {
    let mut run = Run::new("fanout", &a.common, serde_json::to_value(a)?).await?;
    let before = run.gateway_sample();
    let mut pool = run
        .pool(SubscribeTo::Channel(a.channel.clone()), 0.0)
        .await?;
    let conn = run.connect(&mut pool).await?;
    run.wait_routes(&mut pool, std::slice::from_ref(&a.channel))
        .await?;
    pool.pump(run.common.settle.0).await?;
    let connected = run.gateway_sample();
    let sink = run.sink(a.via)?;
    let (g0, r0, l0) = (
        run.gateway_sample(),
        run.redis_sample(),
        run.loadtest_sample(),
    );
    let t0 = Instant::now();
    let (channel, size) = (a.channel.clone(), run.common.payload_size);
    let paced = run
        .publish(&mut pool, sink, a.rate, a.messages, 1, 1, move |i| Msg {
            to: To::Channel(channel.clone()),
            payload: payload::make(i, None, size),
        })
        .await?;
    let clients = pool.totals().steady.clients;
    let expected = paced.ok * clients;
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
