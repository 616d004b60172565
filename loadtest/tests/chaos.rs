//! A small `loadtest chaos` run in the suite: 300 clients over 3 real gateway
//! processes and a real redis-server with AOF, every fault kind injected at least
//! once in 20 s of mixed traffic (gateways SIGKILLed and SIGTERMed and restarted on
//! their ports, Redis killed and terminated and restarted from its AOF, the
//! gateway<->Redis links frozen, delayed and cut, clients stalled), the clients split
//! over two worker processes. Checks the scenario's invariants: nothing lost,
//! duplicated or reordered on channels with history except what a
//! `recovered: false` announced, no client stuck, gateway memory bounded, every
//! publish acknowledged, the gateways counting as many connections as the clients
//! hold, stalled clients getting their close frame, and the fault schedule fixed
//! by the seed. Seed 13 puts a silent stall (longer than two heartbeats, so the
//! gateway closes those connections) where no gateway restarts meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::Parser;
use loadtest::scenario::chaos::plan::{self, FaultKind, ScheduleSpec};
use loadtest::{Cli, Report};

async fn chaos(args: &[&str]) -> Report {
    let gateway = testkit::gateway::gateway_bin();
    let mut full: Vec<String> = vec!["loadtest".into(), "chaos".into()];
    full.extend(args.iter().map(|s| s.to_string()));
    full.extend(
        [
            "--spawn-gateway",
            gateway.to_str().unwrap(),
            "--quiet",
            "--settle",
            "200ms",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_keeps_every_stream_with_history_whole() {
    let dir = std::env::temp_dir().join(format!("loadtest-chaos-test-{}", std::process::id()));
    let logs = dir.join("logs");
    let json = dir.join("chaos.json");
    let r = chaos(&[
        "-n",
        "300",
        "--per-process",
        "150",
        "--seed",
        "13",
        "--duration",
        "20s",
        "--fault-every",
        "1200ms",
        "--stall-fraction",
        "0.03",
        "--personal-rate",
        "150",
        "--room-rate",
        "5",
        "--plain-rate",
        "5",
        "--chat-rate",
        "0.5",
        "--heal",
        "20s",
        "--grace",
        "15s",
        "--max-gateway-rss-mib",
        "256",
        "--max-duration",
        "150s",
        "--log-dir",
        logs.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ])
    .await;
    let table = r.table();
    let c = r.chaos.as_ref().expect("chaos figures");
    // The schedule is the seed's, and every kind of fault happened.
    let planned = plan::schedule(&ScheduleSpec {
        seed: 13,
        duration_ms: 20_000,
        every_ms: 1_200,
        kinds: FaultKind::ALL.to_vec(),
        gateways: 3,
        clients: 300,
        stall_fraction: 0.03,
    });
    assert_eq!(c.faults_planned, planned.len() as u64, "{table}");
    for k in FaultKind::ALL {
        assert!(
            c.fault_counts.get(k.name()).is_some_and(|n| *n > 0),
            "no {} fault\n{table}",
            k.name()
        );
    }
    assert_eq!(r.connections.processes, 2, "{table}");
    // The stall was exercised: its clients report how their connections went on.
    let stall = c
        .faults
        .iter()
        .find(|f| f.kind == "stall")
        .expect("a stall");
    assert!(stall.outcomes.values().sum::<u64>() > 0, "{table}");
    // Every kind of stream carried traffic.
    for k in ["personal", "room", "plain", "chat"] {
        let f = &c.streams[k];
        assert!(f.published > 0 && f.delivered > 0, "{k}\n{table}");
        assert_eq!(f.unexpected, 0, "{k}\n{table}");
    }
    // The invariants (each is also one of the report's checks).
    for k in ["personal", "room"] {
        let f = &c.streams[k];
        assert_eq!(f.lost, 0, "{k} lost without notice\n{table}");
        assert_eq!(f.duplicated, 0, "{k} duplicated\n{table}");
        assert_eq!(f.out_of_order, 0, "{k} out of order\n{table}");
        assert_eq!(f.delivered + f.lost_announced, f.expected, "{k}\n{table}");
    }
    assert_eq!(c.end.complete, 300, "stuck clients\n{table}");
    assert_eq!(c.publisher.uncertain, 0, "{table}");
    assert!(
        c.memory
            .gateways
            .iter()
            .all(|g| g.samples > 0 && g.peak_bytes <= c.memory.bound_bytes),
        "{table}"
    );
    for check in &c.checks {
        assert!(check.ok, "check {}: {}\n{table}", check.name, check.detail);
    }
    assert!(r.correct, "{table}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(
        written["chaos"]["faults"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    );
    assert_eq!(written["chaos"]["streams"]["room"]["lost"], 0);
    let _ = std::fs::remove_dir_all(&dir);
}
