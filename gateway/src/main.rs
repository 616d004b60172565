//! The `gateway` binary: parse configuration, start tracing, run until a signal.

use std::process::ExitCode;

use anyhow::Context;
use gateway::config::{Cli, Command};

/// Errors end the process with one line on stderr (no backtrace, whatever
/// RUST_BACKTRACE says): exit code 2 for invalid settings, 1 for the rest.
fn main() -> ExitCode {
    match start() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let config = e
                .downcast_ref::<gateway::GatewayError>()
                .is_some_and(|g| matches!(g, gateway::GatewayError::Config { .. }));
            ExitCode::from(if config { 2 } else { 1 })
        }
    }
}

fn start() -> anyhow::Result<()> {
    let cli = Cli::parse_args();
    if let Some(Command::MintToken(m)) = cli.command {
        if m.secret.len() < 16 {
            anyhow::bail!(
                "invalid setting `secret`: must be at least 16 bytes, like the gateway's jwt-secret"
            );
        }
        let info: Option<serde_json::Value> = m
            .info
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .context("invalid setting `info`: must be JSON, e.g. '{\"name\":\"Alice\"}'")?;
        let token = gateway::auth::mint_hs256_with(
            m.secret.as_bytes(),
            &m.sub,
            m.ttl.0.as_secs(),
            &m.subscribe,
            &m.publish,
            gateway::auth::Extra {
                presence: &m.presence,
                info: info.as_ref(),
            },
        )
        .context("cannot mint token")?;
        println!("{token}");
        return Ok(());
    }
    let config = gateway::Config::from_settings(cli.settings)?;
    gateway::init_tracing(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.node.worker_threads)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let shutdown = gateway::shutdown_signal().context("cannot install signal handlers")?;
        gateway::run(config, shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}
