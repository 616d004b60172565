//! `fanout`: every connection subscribed to one channel; M messages at R/s, one per
//! publish call at evenly spaced times, through the publisher SDK (Redis) or the
//! gateway's HTTP API, or to Nchan's HTTP publisher. Measures the server's CPU per
//! delivery and publish-to-delivery latency.

use anyhow::Result;
use tokio::time::Instant;

use super::Run;
use crate::cli::{FanoutArgs, via_for};
use crate::payload;
use crate::publish::{Msg, Pacing, To};
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
    let sink = run.sink(via_for(a.via, a.common.server)?)?;
    let (g0, r0, l0) = (
        run.gateway_sample(),
        run.redis_sample(),
        run.loadtest_sample(),
    );
    let t0 = Instant::now();
    let (channel, size) = (a.channel.clone(), run.common.payload_size);
    let paced = run
        .publish(
            &mut pool,
            sink,
            Pacing::paced(a.rate, a.messages),
            move |i| Msg {
                to: To::Channel(channel.clone()),
                payload: payload::make(i, None, size),
            },
        )
        .await?;
    let expected = paced.ok * pool.totals().steady.clients;
    run.finish_paced(
        pool,
        &conn,
        (before, connected),
        (t0, g0, r0, l0),
        paced,
        expected,
    )
    .await
}
