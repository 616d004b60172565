//! A small run of every scenario (a few hundred connections, seconds long) against a
//! real gateway process in Redis mode with a real Redis, checking correctness only:
//! nothing lost, duplicated or out of order; for `recovery`, that the report states
//! what the gap lost instead of claiming nothing was. Benchmarks themselves are not
//! timed tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::Parser;
use loadtest::{Cli, Report};
use testkit::RedisServer;

async fn run(redis: &RedisServer, args: &[&str]) -> Report {
    let gateway = testkit::gateway::gateway_bin();
    let url = redis.url();
    let mut full: Vec<String> = vec!["loadtest".into()];
    full.extend(args.iter().map(|s| s.to_string()));
    full.extend(
        [
            "--spawn-gateway",
            gateway.to_str().unwrap(),
            "--redis-url",
            &url,
            "--quiet",
            "--settle",
            "200ms",
            "--max-duration",
            "60s",
            "--worker-exe",
            env!("CARGO_BIN_EXE_loadtest"),
            // Short Redis delays, as the gateway's own tests use.
            "--gateway-arg=--redis-unsubscribe-delay=100ms",
            "--gateway-arg=--redis-probe-interval=500ms",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let cli = Cli::try_parse_from(&full).unwrap_or_else(|e| panic!("{e}"));
    loadtest::run(cli)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e:#}"))
        .expect("a scenario returns a report")
}

fn assert_clean(r: &Report) {
    let table = r.table();
    assert!(r.correct, "{table}");
    assert_eq!(r.connections.failed, 0, "{table}");
    assert_eq!(r.unexpected_closes, 0, "{table}");
    let d = r.delivery.as_ref().expect("delivery figures");
    assert!(d.expected > 0, "{table}");
    assert_eq!(d.lost, 0, "{table}");
    assert_eq!(d.duplicated, 0, "{table}");
    assert_eq!(d.out_of_order, 0, "{table}");
    assert_eq!(d.unique, d.expected, "{table}");
    let g = r.gateway.as_ref().expect("gateway cost from /proc");
    assert!(g.rss_connected_bytes > 0, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_every_connection() {
    let redis = RedisServer::start().await;
    let r = run(
        &redis,
        &[
            "idle",
            "-n",
            "300",
            "--hold",
            "1s",
            "--gateway-arg=--heartbeat-interval=300ms",
        ],
    )
    .await;
    assert_clean(&r);
    // Heartbeats came and were answered while idle.
    assert!(r.pings_answered >= 300, "{}", r.table());
    assert!(r.gateway.as_ref().unwrap().idle_cpu_percent.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_worker_processes_loses_nothing() {
    let redis = RedisServer::start().await;
    let dir = std::env::temp_dir().join(format!("loadtest-smoke-{}", std::process::id()));
    let json = dir.join("fanout.json");
    let charts = dir.join("charts");
    let r = run(
        &redis,
        &[
            "fanout",
            "-n",
            "300",
            "-m",
            "20",
            "--rate",
            "20",
            "--per-process",
            "150",
            "--json",
            json.to_str().unwrap(),
            "--charts",
            charts.to_str().unwrap(),
        ],
    )
    .await;
    assert_clean(&r);
    assert_eq!(r.connections.processes, 2, "{}", r.table());
    assert_eq!(r.delivery.as_ref().unwrap().expected, 300 * 20);
    assert!(r.latency_us.count == 6000 && r.latency_us.max > 0);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(written["delivery"]["lost"], 0);
    assert!(charts.join("fanout-latency.png").is_file());
    assert!(charts.join("fanout-deliveries.png").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_through_the_http_api() {
    let redis = RedisServer::start().await;
    let r = run(
        &redis,
        &[
            "fanout", "-n", "200", "-m", "10", "--rate", "20", "--via", "http",
        ],
    )
    .await;
    assert_clean(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_reaches_each_user_in_order() {
    let redis = RedisServer::start().await;
    let r = run(
        &redis,
        &["targeted", "-n", "300", "--rate", "500", "--duration", "2s"],
    )
    .await;
    assert_clean(&r);
    assert_eq!(r.delivery.as_ref().unwrap().expected, 1000);
}

/// The default publish mode of `targeted` is paced: one SDK publish per
/// notification, each its own call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_paced_sends_one_notification_per_call() {
    let redis = RedisServer::start().await;
    let r = run(
        &redis,
        &[
            "targeted",
            "-n",
            "200",
            "--rate",
            "1000",
            "--duration",
            "1s",
        ],
    )
    .await;
    assert_clean(&r);
    let table = r.table();
    assert_eq!(r.params["publish_mode"], "paced", "{table}");
    let d = r.delivery.as_ref().unwrap();
    assert_eq!(d.published, 1000, "{table}");
    let calls = r.publish_call_us.as_ref().expect("publish calls");
    assert_eq!(calls.count, 1000, "one call per notification: {table}");
    let lag = r.publish_lag_us.as_ref().expect("publish lag");
    assert_eq!(lag.count, 1000, "{table}");
}

/// Paced through the gateway's HTTP API: one `POST /api/v1/publish` per notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_paced_through_the_http_api() {
    let redis = RedisServer::start().await;
    let r = run(
        &redis,
        &[
            "targeted",
            "-n",
            "200",
            "--rate",
            "500",
            "--duration",
            "1s",
            "--via",
            "http",
            "--publish-mode",
            "paced",
        ],
    )
    .await;
    assert_clean(&r);
    let calls = r.publish_call_us.as_ref().expect("publish calls");
    assert_eq!(calls.count, 500, "{}", r.table());
}

/// The batched mode stays selectable: what is due at each 1 ms tick goes out in one
/// call, so at 2,000/s (two due per tick) there are fewer calls than messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_batched_publishes_what_is_due_per_tick() {
    let redis = RedisServer::start().await;
    let r = run(
        &redis,
        &[
            "targeted",
            "-n",
            "200",
            "--rate",
            "2000",
            "--duration",
            "1s",
            "--publish-mode",
            "batched",
            "--batch",
            "8",
        ],
    )
    .await;
    assert_clean(&r);
    let table = r.table();
    assert_eq!(r.params["publish_mode"], "batched", "{table}");
    assert_eq!(r.delivery.as_ref().unwrap().published, 2000, "{table}");
    let calls = r.publish_call_us.as_ref().expect("publish calls");
    assert!(calls.count < 2000, "{table}");
    assert!(calls.count >= 2000 / 8, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_rooms_hear_every_member() {
    let redis = RedisServer::start().await;
    let r = run(
        &redis,
        &[
            "chat",
            "-n",
            "200",
            "--room-size",
            "10",
            "--rate",
            "2",
            "--duration",
            "2s",
        ],
    )
    .await;
    assert_clean(&r);
    let d = r.delivery.as_ref().unwrap();
    // Every acknowledged publish reaches the whole room, the sender included.
    assert_eq!(d.expected, d.published * 10, "{}", r.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_brings_everyone_back() {
    let redis = RedisServer::start().await;
    let r = run(
        &redis,
        &["reconnect-storm", "-n", "300", "--drop-fraction", "0.5"],
    )
    .await;
    let table = r.table();
    assert!(r.correct, "{table}");
    let s = r.storm.as_ref().expect("storm figures");
    assert_eq!(s.dropped, 150, "{table}");
    assert_eq!(s.reconnected, 150, "{table}");
    assert!(s.reconnects_per_sec > 0.0, "{table}");
    assert_eq!(s.probe.lost, 0, "{table}");
    assert_eq!(s.probe.duplicated, 0, "{table}");
    assert_eq!(s.probe.expected, 300 * 3, "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_reports_what_the_gap_lost() {
    let redis = RedisServer::start().await;
    let r = run(
        &redis,
        &[
            "recovery",
            "-n",
            "200",
            "-m",
            "120",
            "--rate",
            "60",
            "--gap",
            "500ms",
            "--drop-fraction",
            "0.25",
        ],
    )
    .await;
    let table = r.table();
    assert!(r.correct, "{table}");
    let rec = r.recovery.as_ref().expect("recovery figures");
    assert_eq!(rec.dropped_clients, 50, "{table}");
    assert_eq!(rec.reconnected, 50, "{table}");
    // Those that stayed got everything.
    assert_eq!(rec.steady.lost, 0, "{table}");
    assert_eq!(rec.steady.duplicated, 0, "{table}");
    assert_eq!(rec.steady.out_of_order, 0, "{table}");
    assert_eq!(rec.dropped_duplicates, 0, "{table}");
    assert_eq!(rec.dropped_out_of_order, 0, "{table}");
    // Until the gateway keeps history, the gap is lost, and the report says how much.
    if rec.recovered_true == 0 {
        assert!(rec.lost_during_gap > 0, "{table}");
        // Counted from the drop command, so a message or two still in flight
        // then may be lost as well.
        assert!(
            rec.lost_during_gap <= (rec.published_while_away + 3) * rec.dropped_clients,
            "{table}"
        );
        assert!(rec.verdict.contains("lost"), "{table}");
    } else {
        assert_eq!(rec.lost_during_gap, 0, "{table}");
    }
}

/// `presence`: 200 members on one channel with presence events over two gateways,
/// churn of 20 joins + leaves per second for 3 s, then presence requests over the
/// WebSocket and the API. Every sample member sees every churn join and leave once,
/// the channel is listed in full, and the figures are in range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_churn_and_queries() {
    let redis = RedisServer::start().await;
    let r = run(
        &redis,
        &[
            "presence",
            "-n",
            "200",
            "--churn-rate",
            "20",
            "--duration",
            "3s",
            "--hold",
            "1s",
            "--baseline",
            "1s",
            "--queries",
            "20",
            "--query-window",
            "3s",
            "--query-connections",
            "4",
            "--presence-grace",
            "500ms",
            "--presence-refresh",
            "1s",
            "--sample",
            "10",
        ],
    )
    .await;
    let table = r.table();
    assert!(r.correct, "{table}");
    assert_eq!(r.connections.connected, 200, "{table}");
    assert_eq!(r.unexpected_closes, 0, "{table}");
    let p = r.presence.as_ref().expect("presence figures");
    assert_eq!(p.gateways, 2, "{table}");
    assert!(p.rule.contains("events"), "{table}");
    // The channel filled: counted, listed in full, Redis grew.
    assert_eq!(p.populate.counted_clients, 200, "{table}");
    assert_eq!(p.populate.listed_distinct, 200, "{table}");
    assert!(p.populate.diff_frames > 0, "{table}");
    assert!(p.memory.used_after > p.memory.used_before, "{table}");
    assert!(p.memory.channel_bytes_per_member > 10.0, "{table}");
    assert!(p.memory.channel_bytes_per_member < 10_000.0, "{table}");
    // About 20 changes per second, half of each, measured with their cost.
    let c = &p.churn;
    assert!((40..=80).contains(&c.changes), "{table}");
    assert!(c.window.joins.abs_diff(c.window.leaves) <= 1, "{table}");
    assert!(c.gateway_us_per_change > 0.0, "{table}");
    assert!(c.window.redis_scripts > 0, "{table}");
    assert!(c.window.diff_frames > 0, "{table}");
    // Every sample saw every churn join and leave exactly once.
    let k = &p.check;
    assert!(k.ok, "{table}");
    assert_eq!(k.samples, 10, "{table}");
    assert_eq!(k.samples_exact, 10, "{table}");
    assert!(k.churn_joins > 10 && k.churn_leaves > 10, "{table}");
    assert_eq!(k.member_leaves_seen, 0, "{table}");
    assert_eq!(k.inconsistent, 0, "{table}");
    // Joins are seen within the batch window and a few round trips (a join that
    // arrives while a batch is gathering goes out with it, sooner than the window);
    // leaves after the grace period.
    assert!(p.join_seen_us.count > 0, "{table}");
    assert!(p.join_seen_us.p50 < 2_000_000, "{table}");
    assert!(p.leave_seen_us.p50 >= 500_000, "{table}");
    // Every request kind answered, none refused.
    assert_eq!(p.queries.len(), 6, "{table}");
    for q in &p.queries {
        assert_eq!(q.latency_us.count, 20, "{}: {table}", q.name);
        assert_eq!(q.errors + q.rate_limited + q.short_pages, 0, "{table}");
        assert!(
            q.latency_us.p50 > 0 && q.latency_us.p50 < 1_000_000,
            "{table}"
        );
    }
    // Both gateways refreshed their entries.
    assert_eq!(p.refresh.len(), 2, "{table}");
    assert!(p.refresh.iter().all(|f| f.passes >= 2), "{table}");
}

/// `compare` runs every scenario for every column (Nchan's when nginx with nchan is
/// installed) and the floor, checks them all, and writes its table and reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_every_column() {
    let gateway = testkit::gateway::gateway_bin();
    let dir = std::env::temp_dir().join(format!("loadtest-compare-{}", std::process::id()));
    let columns = if loadtest::nchan::installed() {
        "tidings,nchan,floor"
    } else {
        println!("nchan column skipped: nginx with nchan not installed");
        "tidings,floor"
    };
    let cli = Cli::try_parse_from([
        "loadtest",
        "compare",
        "--spawn-gateway",
        gateway.to_str().unwrap(),
        "--gateway-arg=--redis-unsubscribe-delay=100ms",
        "--variant",
        "threads-1=--worker-threads 1",
        "--columns",
        columns,
        "-n",
        "100",
        "--hold",
        "300ms",
        "--fanout-messages",
        "5",
        "--fanout-rate",
        "20",
        "--targeted-rate",
        "200",
        "--targeted-duration",
        "1s",
        "--settle",
        "200ms",
        "--max-duration",
        "60s",
        "--json-dir",
        dir.to_str().unwrap(),
        "--worker-exe",
        env!("CARGO_BIN_EXE_loadtest"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let loadtest::Scenario::Compare(args) = cli.scenario else {
        panic!("not compare");
    };
    let c = loadtest::compare::run(&args).await.unwrap();
    assert!(c.correct, "{}", c.markdown);
    let servers = if columns.contains("nchan") { 3 } else { 2 };
    assert_eq!(c.columns.len(), servers + 1, "{}", c.markdown);
    // Every server measured in every scenario.
    for (title, cells) in &c.rows {
        if title.starts_with("memory") || title.contains("server CPU per delivery") {
            for cell in &cells[..servers] {
                assert_ne!(cell, "-", "{title}: {}", c.markdown);
            }
        }
    }
    let checked = &c.rows.last().unwrap().1;
    for cell in &checked[..servers] {
        assert!(
            cell.contains("0 lost, 0 duplicated, 0 out of order; 3 of 3 runs correct"),
            "{}",
            c.markdown
        );
    }
    assert!(dir.join("compare.md").is_file());
    assert!(dir.join("compare.json").is_file());
    assert!(dir.join("r1-threads-1-targeted.json").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The floor calibration runs end to end in both modes and every byte arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floor_calibration_delivers_every_write() {
    for (mode, messages) in [("fanout", "5"), ("relay", "200")] {
        let cli = Cli::try_parse_from([
            "loadtest",
            "floor",
            "--mode",
            mode,
            "-n",
            "50",
            "-m",
            messages,
            "--rate",
            "500",
            "--quiet",
            "--server-exe",
            env!("CARGO_BIN_EXE_loadtest"),
        ])
        .unwrap();
        let loadtest::Scenario::Floor(args) = cli.scenario else {
            panic!("not floor");
        };
        let r = loadtest::floor::run(&args).await.unwrap();
        let writes = if mode == "fanout" { 5 * 50 } else { 200 };
        assert_eq!(r.writes, writes, "{mode}");
        assert_eq!(r.bytes_received, writes * 150, "{mode}");
    }
}
