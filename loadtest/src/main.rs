//! `loadtest`: the load generator and benchmark for Tidings gateways.
//!
//! It opens many WebSocket connections to a gateway (one it starts itself with
//! `--spawn-gateway`, with `--redis` for a Redis of its own, or one given by
//! `--url`), runs one scenario (idle, fanout, targeted, chat, reconnect-storm,
//! recovery, presence, chaos), checks that nothing was lost, duplicated or
//! reordered, and measures latency, throughput and the gateway's memory and CPU
//! from `/proc`. It only ever targets 127.0.0.0/8, is bounded in time and size, and
//! stops by itself. Above `--per-process` connections it re-executes itself as
//! `loadtest worker` processes.
//! The work lives in the library (`lib.rs`); this file only parses and exits.

use clap::Parser;
use loadtest::{Cli, Scenario};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match cli.scenario {
        Scenario::Worker | Scenario::ChaosWorker | Scenario::FloorServer(_) => 1,
        _ => 2,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let report = runtime.block_on(loadtest::run(cli))?;
    // Worker processes and started servers are gone by now; exit with the verdict.
    if let Some(r) = report
        && !r.correct
    {
        std::process::exit(2);
    }
    Ok(())
}
