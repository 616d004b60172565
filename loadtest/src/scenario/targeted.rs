//! `targeted`: notifications to random users at R/s through the publisher SDK or the
//! gateway's HTTP API (or to Nchan's HTTP publisher): by default one notification
//! per publish call at evenly spaced times (`--publish-mode paced`), or what is due
//! at each 1 ms tick in one call (`batched`: one Redis pipeline or one HTTP batch).
//! Each user has its own sequence, so every client checks its own stream for gaps,
//! repeats and reordering.

use anyhow::Result;
use tokio::time::Instant;

use super::Run;
use crate::cli::{TargetedArgs, via_for};
use crate::conn::user_id;
use crate::payload;
use crate::publish::{Msg, Pacing, To};
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
    let sink = run.sink(via_for(a.via, a.common.server)?)?;
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
            Pacing {
                rate: a.rate,
                total,
                mode: a.publish_mode,
                batch: a.batch(),
                inflight: a.inflight,
            },
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
