//! Load generator and benchmark harness for Tidings gateways, as a library so the
//! smoke tests drive it in-process; `main.rs` is a thin command-line wrapper.
//!
//! A run starts (or attaches to) gateways and Redis on loopback, or an nginx with
//! Nchan for comparison (`--server nchan`), opens N WebSocket connections from
//! 127.0.0.2, 127.0.0.3, ... in one or several processes, drives one scenario, and
//! reports deliveries, losses, latency and the server's cost.

pub mod chart;
pub mod cli;
pub mod compare;
pub mod conn;
pub mod diff;
pub mod floor;
pub mod launch;
pub mod nchan;
pub mod payload;
pub mod pool;
pub mod procfs;
pub mod publish;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod worker;

pub use cli::{Cli, Scenario};
pub use report::Report;

/// Runs a parsed command line: a scenario (returns its report) or a worker.
pub async fn run(cli: Cli) -> anyhow::Result<Option<Report>> {
    match &cli.scenario {
        Scenario::Worker => {
            worker::worker_main().await?;
            Ok(None)
        }
        Scenario::ChaosWorker => {
            scenario::chaos::client::worker_main().await?;
            Ok(None)
        }
        Scenario::Floor(a) => {
            floor::run(a).await?;
            Ok(None)
        }
        Scenario::Compare(a) => {
            let c = compare::run(a).await?;
            if !c.correct {
                anyhow::bail!(
                    "the comparison failed: {}",
                    if c.failures.is_empty() {
                        "a run lost, duplicated or reordered deliveries (see above)".to_owned()
                    } else {
                        c.failures.join("; ")
                    }
                );
            }
            Ok(None)
        }
        Scenario::FloorServer(a) => {
            let a = a.clone();
            tokio::task::spawn_blocking(move || floor::serve(&a)).await??;
            Ok(None)
        }
        s => scenario::run(s).await.map(Some),
    }
}
