//! `--server nchan`: the idle, fanout and targeted scenarios against an nginx with
//! Nchan that loadtest starts itself (one worker, memory store), small and seconds
//! long, with the same checks as against a gateway: nothing lost, duplicated or out
//! of order, latency from the payload's timestamp, nginx's memory and CPU from
//! /proc. Needs nginx and Debian's libnginx-mod-nchan; without them each test says
//! `skipped: nginx with nchan not installed` and passes (the test installs nothing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::Parser;
use loadtest::{Cli, Report};

fn missing() -> bool {
    if loadtest::nchan::installed() {
        return false;
    }
    let msg = format!(
        "skipped: {} (apt-get install nginx libnginx-mod-nchan)",
        loadtest::nchan::MISSING
    );
    println!("{msg}");
    eprintln!("{msg}");
    true
}

async fn run(args: &[&str]) -> Report {
    let mut full: Vec<String> = vec!["loadtest".into()];
    full.extend(args.iter().map(|s| s.to_string()));
    full.extend(
        [
            "--server",
            "nchan",
            "--quiet",
            "--settle",
            "200ms",
            "--max-duration",
            "60s",
            "--worker-exe",
            env!("CARGO_BIN_EXE_loadtest"),
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
    assert_eq!(r.server, loadtest::cli::ServerKind::Nchan, "{table}");
    assert_eq!(r.connections.failed, 0, "{table}");
    assert_eq!(r.unexpected_closes, 0, "{table}");
    assert_eq!(r.bad_frames, 0, "{table}");
    let d = r.delivery.as_ref().expect("delivery figures");
    assert!(d.expected > 0, "{table}");
    assert_eq!(d.lost, 0, "{table}");
    assert_eq!(d.duplicated, 0, "{table}");
    assert_eq!(d.out_of_order, 0, "{table}");
    assert_eq!(d.unique, d.expected, "{table}");
    assert_eq!(d.publish_failed, 0, "{table}");
    // nginx's master and its one worker, measured from /proc.
    let g = r.gateway.as_ref().expect("nginx's cost from /proc");
    assert_eq!(g.pids.len(), 2, "{table}");
    assert!(g.rss_connected_bytes > 0, "{table}");
    assert!(r.notes.iter().any(|n| n.starts_with("Nchan 1.")), "{table}");
}

/// Every pid the runs started is gone afterwards (nginx stopped by its pid).
fn assert_stopped(r: &Report) {
    for pid in &r.gateway.as_ref().unwrap().pids {
        let alive = loadtest::procfs::sample(*pid).is_ok()
            && loadtest::procfs::name(*pid).as_deref() == Some("nginx");
        assert!(!alive, "nginx process {pid} still running");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nchan_idle_measures_memory_per_connection() {
    if missing() {
        return;
    }
    let r = run(&[
        "idle",
        "-n",
        "200",
        "--hold",
        "500ms",
        "--probe-messages",
        "2",
    ])
    .await;
    assert_clean(&r);
    let table = r.table();
    // The probe went to every client's own channel, twice.
    assert_eq!(r.delivery.as_ref().unwrap().expected, 400, "{table}");
    let g = r.gateway.as_ref().unwrap();
    assert!(g.rss_per_connection_bytes > 0.0, "{table}");
    assert!(g.idle_cpu_percent.is_some(), "{table}");
    assert_stopped(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nchan_fanout_over_worker_processes_loses_nothing() {
    if missing() {
        return;
    }
    let r = run(&[
        "fanout",
        "-n",
        "300",
        "-m",
        "20",
        "--rate",
        "20",
        "--per-process",
        "150",
    ])
    .await;
    assert_clean(&r);
    let table = r.table();
    assert_eq!(r.connections.processes, 2, "{table}");
    assert_eq!(r.delivery.as_ref().unwrap().expected, 300 * 20, "{table}");
    assert_eq!(r.latency_us.count, 6000, "{table}");
    assert_eq!(r.publish_call_us.as_ref().unwrap().count, 20, "{table}");
    assert!(
        r.gateway.as_ref().unwrap().cpu_us_per_delivery.is_some(),
        "{table}"
    );
    assert_stopped(&r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nchan_targeted_one_request_per_notification() {
    if missing() {
        return;
    }
    let r = run(&["targeted", "-n", "200", "--rate", "500", "--duration", "1s"]).await;
    assert_clean(&r);
    let table = r.table();
    let d = r.delivery.as_ref().unwrap();
    assert_eq!(d.published, 500, "{table}");
    assert_eq!(d.unrouted, 0, "{table}");
    assert_eq!(r.publish_call_us.as_ref().unwrap().count, 500, "{table}");
    assert_stopped(&r);
}

/// What Nchan cannot do is refused before anything starts.
#[test]
fn nchan_refuses_what_it_cannot_run() {
    let parse = |args: &[&str]| {
        let mut full = vec!["loadtest"];
        full.extend_from_slice(args);
        let cli = Cli::try_parse_from(full).map_err(|e| anyhow::anyhow!("{e}"))?;
        cli.scenario.validate()
    };
    assert!(parse(&["targeted", "--server", "nchan"]).is_ok());
    assert!(parse(&["idle", "--server", "nchan", "-n", "10000"]).is_ok());
    assert!(parse(&["chat", "--server", "nchan"]).is_err());
    assert!(parse(&["recovery", "--server", "nchan"]).is_err());
    assert!(parse(&["targeted", "--server", "nchan", "--via", "redis"]).is_err());
    assert!(parse(&["targeted", "--server", "nchan", "--publish-mode", "batched"]).is_err());
    assert!(parse(&["targeted", "--server", "nchan", "--redis"]).is_err());
    assert!(parse(&["fanout", "--server", "nchan", "--channel", "$user:x"]).is_err());
    assert!(parse(&["idle", "--server", "nchan", "-n", "30000"]).is_err());
    assert!(
        parse(&[
            "idle",
            "--server",
            "nchan",
            "-n",
            "30000",
            "--nginx-workers",
            "2"
        ])
        .is_ok()
    );
    assert!(parse(&["targeted", "--url", "ws://127.0.0.1:1/ws", "--batch", "8"]).is_err());
}
