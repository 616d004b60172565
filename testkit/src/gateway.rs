//! Starting real gateway processes for tests: the binary is given `--listen
//! 127.0.0.1:0`-style arguments and reports its bound addresses in the JSON
//! `"listening"` log line, which is read from its stderr.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A started gateway process: the child, its public and admin addresses, and every
/// stderr line it has written so far.
pub struct Spawned {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

/// A command for `bin` without any `TIDINGS_*` variable of the test's environment,
/// so only the arguments a test passes configure the gateway.
pub fn command(bin: impl Into<PathBuf>) -> Command {
    let mut cmd = Command::new(bin.into());
    for (k, _) in std::env::vars() {
        if k.starts_with("TIDINGS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Spawns `cmd` (which must log in JSON and listen on port 0 or a given port) and
/// waits for its `listening` line; panics with the logs if it does not start.
pub async fn spawn(mut cmd: Command) -> Spawned {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn gateway");
    let stderr = child.stderr.take().expect("stderr");
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "listening"
                && let Some(tx) = tx.take()
            {
                let _ = tx.send((
                    v["addr"].as_str().unwrap_or_default().to_owned(),
                    v["admin_addr"].as_str().unwrap_or_default().to_owned(),
                ));
            }
            sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
        }
    });
    let got = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .expect("join");
    let parsed = got
        .ok()
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    let Some((addr, admin)) = parsed else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "gateway did not start; logs:\n{}",
            logs.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
        );
    };
    Spawned {
        child,
        addr,
        admin,
        logs,
    }
}

/// The gateway binary for tests of other packages (which cannot use
/// `CARGO_BIN_EXE_gateway`): `TIDINGS_GATEWAY_BIN`, or `<target>/<profile>/gateway`
/// next to the running test binary, which `cargo test --workspace` builds.
pub fn gateway_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TIDINGS_GATEWAY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary outside <target>/<profile>/deps");
    let bin = profile_dir.join(format!("gateway{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "gateway binary not found at {}: build it first (`cargo build -p gateway`, or run \
         `cargo test --workspace`, which builds it), or set TIDINGS_GATEWAY_BIN",
        bin.display()
    );
    bin
}
