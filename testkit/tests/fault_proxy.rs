//! The fault proxy adds the delay it is told to, both ways, without serializing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use testkit::{FaultProxy, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_is_added_each_way_and_requests_overlap() {
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(redis.addr()).await;
    let client = redis::Client::open(proxy.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    proxy.delay(Duration::from_millis(50));
    let t = Instant::now();
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    let one = t.elapsed();
    assert!(one >= Duration::from_millis(100), "{one:?}");
    let t = Instant::now();
    let mut pings = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let mut c = conn.clone();
        pings.spawn(async move { redis::cmd("PING").query_async::<()>(&mut c).await.unwrap() });
    }
    pings.join_all().await;
    let many = t.elapsed();
    assert!(
        many < Duration::from_millis(400),
        "100 pipelined pings took {many:?}"
    );
    proxy.freeze();
    let frozen = tokio::time::timeout(
        Duration::from_millis(300),
        redis::cmd("PING").query_async::<()>(&mut conn),
    )
    .await;
    assert!(frozen.is_err(), "a frozen proxy forwards nothing");
    proxy.thaw();
    proxy.delay(Duration::ZERO);
    let _: () = redis::cmd("PING").query_async(&mut conn).await.unwrap();
}
