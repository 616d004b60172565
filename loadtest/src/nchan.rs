//! Nchan as the other server of a comparison (`--server nchan`): loadtest writes an
//! nginx.conf into a new temporary directory, starts nginx with the Nchan module
//! (`load_module`) on a free loopback port, and stops it by its pid when the run
//! ends. Nchan runs on its memory store (no Redis), with `--nginx-workers` worker
//! processes (1 by default):
//!
//! - `GET /sub/<channel>`: a WebSocket subscriber of one channel; each message
//!   arrives as one text frame holding the published body as is (the benchmark
//!   payload `{"seq":N,"t":micros,"pad":"..."}`), so the same checks and latency
//!   apply as for a gateway;
//! - `POST /pub/<channel>`: publishes the body; answers 201 when subscribers were
//!   present, 202 when none, with the channel's figures (`subscribers`);
//! - `GET /nchan_status`: `nchan_stub_status`, whose `subscribers` count tells when
//!   every client's subscription is in place.
//!
//! Everything else is Nchan's and nginx's default (a 10-message buffer kept for an
//! hour per channel, no WebSocket pings), plus whatever `--nginx-directive` (http
//! block) and `--nchan-directive` (both locations) add.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::time::Instant;

use crate::cli::NchanOpts;
use crate::publish::HttpApi;

/// Where Debian's `libnginx-mod-nchan` puts the module.
pub const DEFAULT_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";
/// Most connections per nginx worker (one process's open files here: 20,000).
pub const MAX_CONNECTIONS_PER_WORKER: usize = 19_000;
/// Location prefix of WebSocket subscribers (`/sub/<channel>`).
pub const SUB_PREFIX: &str = "/sub";
/// Location prefix of the HTTP publisher (`/pub/<channel>`).
pub const PUB_PREFIX: &str = "/pub";
/// Nchan's stub status page.
pub const STATUS_PATH: &str = "/nchan_status";
/// What the test suite prints when it cannot run the Nchan tests.
pub const MISSING: &str = "nginx with nchan not installed";

/// Channel ids the locations accept: `[A-Za-z0-9_.:-]`, 1 to 200 of them.
pub fn validate_channel(c: &str) -> Result<()> {
    let ok = !c.is_empty()
        && c.len() <= 200
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if !ok {
        bail!("Nchan channel `{c}`: use 1-200 of A-Z a-z 0-9 _ . : -");
    }
    Ok(())
}

fn on_path(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// The nginx binary and the Nchan module to load, or why there are none.
pub fn locate(opts: &NchanOpts) -> Result<(PathBuf, PathBuf)> {
    let nginx = match &opts.nginx {
        Some(p) => p.clone(),
        None => on_path("nginx").unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx")),
    };
    let module = opts.nchan_module.clone();
    match (nginx.is_file(), module.is_file()) {
        (true, true) => Ok((nginx, module)),
        (has_nginx, _) => bail!(
            "{MISSING}: no {} at {} (Debian: apt-get install nginx libnginx-mod-nchan)",
            if has_nginx { "Nchan module" } else { "nginx" },
            if has_nginx {
                module.display()
            } else {
                nginx.display()
            }
        ),
    }
}

/// Whether the default nginx and Nchan module are installed.
pub fn installed() -> bool {
    locate(&NchanOpts {
        nginx: None,
        nchan_module: PathBuf::from(DEFAULT_MODULE),
        nginx_workers: 1,
        nginx_directives: Vec::new(),
        nchan_directives: Vec::new(),
    })
    .is_ok()
}

/// The hard limit of open files of this process (nginx inherits it).
fn open_files_hard_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let hard = line.split_whitespace().nth(4)?;
    if hard == "unlimited" {
        Some(u64::MAX)
    } else {
        hard.parse().ok()
    }
}

/// The nginx.conf of a run: `module` loaded, `workers` worker processes, room for
/// `connections` connections, listening on `addr`, everything written under `dir`.
pub fn config(
    dir: &Path,
    module: &Path,
    addr: SocketAddr,
    workers: usize,
    connections: usize,
    (http_extra, location_extra): (&[String], &[String]),
) -> String {
    // Workers need not share the connections evenly: room for all in each, as far
    // as the open-file limit goes. Twice as many as the clients: with as many, about
    // 6 % of 10,000 WebSocket subscribers were reset at connect (Nchan takes more
    // than one connection slot for some subscribers).
    let worker_connections = connections * 2 + 512;
    let nofile = ((connections * 2 + 1024) as u64).min(open_files_hard_limit().unwrap_or(u64::MAX));
    let d = dir.display();
    let lines = |extra: &[String], indent: &str| -> String {
        extra
            .iter()
            .map(|l| {
                let l = l.trim();
                let end = if l.ends_with(';') { "" } else { ";" };
                format!("{indent}{l}{end}\n")
            })
            .collect()
    };
    let extra = lines(http_extra, "    ");
    let loc = lines(location_extra, "            ");
    format!(
        "# Written by loadtest for one run (--server nchan); removed when the run ends.
load_module {module};
worker_processes {workers};
worker_rlimit_nofile {nofile};
worker_shutdown_timeout 5s;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections {worker_connections};
}}

http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{extra}
    server {{
        listen {addr} backlog=4096;
        location = {STATUS_PATH} {{
            nchan_stub_status;
        }}
        location ~ ^{SUB_PREFIX}/([A-Za-z0-9_.:-]+)$ {{
            nchan_subscriber websocket;
            nchan_channel_id $1;
{loc}        }}
        location ~ ^{PUB_PREFIX}/([A-Za-z0-9_.:-]+)$ {{
            nchan_publisher http;
            nchan_channel_id $1;
{loc}        }}
    }}
}}
",
        module = module.display(),
    )
}

/// The fields of Nchan's stub status page (`key: value` lines).
pub fn parse_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// An nginx with Nchan started for one run; stopped (SIGQUIT to the master, then
/// SIGKILL to master and workers if they linger) and its directory removed on drop.
/// It runs under `timeout --foreground`, so it ends by itself (SIGQUIT to the
/// master, then SIGKILL 10 s later) a while after the run's --max-duration even
/// should loadtest be killed.
pub struct Nginx {
    /// `timeout`, whose child is nginx's master (or the master itself when there is
    /// no `timeout` program).
    child: Child,
    /// The master process (`daemon off`: it stays in the foreground).
    pub master: u32,
    /// Its worker processes.
    pub workers: Vec<u32>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub version: String,
    status: HttpApi,
}

fn free_port() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    l.local_addr().context("local address")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends `signal` to `pid` with the `kill` program (no unsafe code needed).
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl Nginx {
    /// Starts nginx for `connections` clients and waits until it answers.
    pub async fn start(opts: &NchanOpts, connections: usize, bound: Duration) -> Result<Nginx> {
        let (nginx, module) = locate(opts)?;
        let version = Command::new(&nginx)
            .arg("-v")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default();
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("loadtest-nchan-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // The port is free when found; should another program take it before nginx
        // binds it, try another.
        let mut last = String::new();
        for _ in 0..5 {
            let addr = free_port()?;
            let conf = config(
                &dir,
                &module,
                addr,
                opts.nginx_workers,
                connections,
                (&opts.nginx_directives, &opts.nchan_directives),
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf)
                .with_context(|| format!("cannot write {}", conf_path.display()))?;
            match Self::launch(&nginx, &dir, addr, opts.nginx_workers, bound).await {
                Ok((child, master, workers)) => {
                    return Ok(Nginx {
                        master,
                        child,
                        workers,
                        addr,
                        dir,
                        version,
                        status: HttpApi::new(addr),
                    });
                }
                Err(e) => {
                    last = format!("{e:#}");
                    if !last.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        bail!("nginx with Nchan did not start: {last}")
    }

    async fn launch(
        nginx: &Path,
        dir: &Path,
        addr: SocketAddr,
        workers: usize,
        bound: Duration,
    ) -> Result<(Child, u32, Vec<u32>)> {
        let stderr = std::fs::File::create(dir.join("stderr.log"))?;
        let mut prefix = dir.as_os_str().to_owned();
        prefix.push("/");
        let bounded = on_path("timeout").is_some();
        let mut cmd = if bounded {
            let mut c = Command::new("timeout");
            // --foreground: nginx stays in loadtest's process group, so a Ctrl-C
            // at the terminal reaches it as it reaches loadtest.
            c.args(["--foreground", "-s", "QUIT", "-k", "10"])
                .arg(format!("{}s", bound.as_secs().max(1)))
                .arg(nginx);
            c
        } else {
            Command::new(nginx)
        };
        let mut child = cmd
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {}", nginx.display()))?;
        let api = HttpApi::new(addr);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut master = (!bounded).then(|| child.id());
        let failed = |child: &mut Child, master: Option<u32>, why: String| -> anyhow::Error {
            if let Some(m) = master {
                for w in crate::procfs::children(m) {
                    signal(w, "KILL");
                }
                signal(m, "KILL");
            }
            let _ = child.kill();
            let _ = child.wait();
            anyhow!(
                "{why}; stderr: {} error log: {}",
                tail(&dir.join("stderr.log"), 10),
                tail(&dir.join("error.log"), 10)
            )
        };
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(
                    &mut child,
                    master,
                    format!("nginx exited with {status}"),
                ));
            }
            if master.is_none() {
                master = crate::procfs::children(child.id()).first().copied();
            }
            if let Some(m) = master
                && let Ok(Ok((200, _))) =
                    tokio::time::timeout(Duration::from_secs(1), api.get(STATUS_PATH)).await
            {
                let found = crate::procfs::children(m);
                if found.len() >= workers {
                    return Ok((child, m, found));
                }
            }
            if Instant::now() >= deadline {
                return Err(failed(
                    &mut child,
                    master,
                    "nginx did not answer in 15 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Master and workers, for memory and CPU from /proc.
    pub fn pids(&self) -> Vec<u32> {
        let mut p = vec![self.master];
        p.extend(&self.workers);
        p
    }

    /// Whether nginx (or one of its workers) has gone away during the run.
    pub fn crashed(&mut self) -> Option<String> {
        let why = match self.child.try_wait() {
            Ok(Some(status)) => format!("nginx exited with {status}"),
            _ => {
                let gone: Vec<u32> = self
                    .workers
                    .iter()
                    .copied()
                    .filter(|w| crate::procfs::sample(*w).is_err())
                    .collect();
                if gone.is_empty() {
                    return None;
                }
                format!("nginx worker(s) {gone:?} exited")
            }
        };
        Some(format!(
            "{why}; error log:\n{}",
            tail(&self.dir.join("error.log"), 20)
        ))
    }

    /// Nchan's stub status.
    pub async fn status(&self) -> Result<BTreeMap<String, String>> {
        let (code, body) =
            tokio::time::timeout(Duration::from_secs(5), self.status.get(STATUS_PATH))
                .await
                .map_err(|_| anyhow!("Nchan's status did not answer in 5 s"))??;
        if code != 200 {
            bail!("Nchan's status answered HTTP {code}");
        }
        Ok(parse_status(&body))
    }

    /// Waits until Nchan counts at least `min` subscribers (subscriptions are in
    /// place once the WebSocket is open, but waiting for the count is certain);
    /// returns the last count.
    pub async fn wait_subscribers(&self, min: u64, within: Duration) -> Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            let n = self
                .status()
                .await?
                .get("subscribers")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if n >= min || Instant::now() >= deadline {
                return Ok(n);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops nginx: SIGQUIT to the master (workers finish, at most
    /// `worker_shutdown_timeout`), then SIGKILL to whatever of it is left after 8 s.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            self.kill_workers();
            return;
        }
        signal(self.master, "QUIT");
        let deadline = std::time::Instant::now() + Duration::from_secs(8);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.kill_workers();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.is_ours(self.master) {
            signal(self.master, "KILL");
        }
        self.kill_workers();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether `pid` is still the nginx master this run started.
    fn is_ours(&self, pid: u32) -> bool {
        let child = self.child.id();
        crate::procfs::name(pid).is_some_and(|n| n == "nginx")
            && (pid == child || crate::procfs::parent(pid) == Some(child))
    }

    /// SIGKILL to workers still running (only processes that are still this
    /// master's children, or orphans of it named nginx).
    fn kill_workers(&self) {
        for w in &self.workers {
            if crate::procfs::parent(*w).is_some_and(|pp| pp == self.master || pp == 1)
                && crate::procfs::name(*w).is_some_and(|n| n == "nginx")
            {
                signal(*w, "KILL");
            }
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_checked() {
        assert!(validate_channel("lt-12").is_ok());
        assert!(validate_channel("bench:a.b_c").is_ok());
        assert!(validate_channel("").is_err());
        assert!(validate_channel("$user:x").is_err());
        assert!(validate_channel("a/b").is_err());
    }

    #[test]
    fn config_has_the_locations_and_one_worker() {
        let c = config(
            Path::new("/tmp/x"),
            Path::new(DEFAULT_MODULE),
            "127.0.0.1:4567"
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1))),
            1,
            10_000,
            (
                &["nchan_shared_memory_size 64M".to_owned()],
                &["nchan_websocket_ping_interval 30;".to_owned()],
            ),
        );
        assert!(c.contains(&format!("load_module {DEFAULT_MODULE};")));
        assert!(c.contains("worker_processes 1;"));
        assert!(c.contains("worker_connections 20512;"));
        assert!(c.contains("listen 127.0.0.1:4567 backlog=4096;"));
        assert!(c.contains("nchan_subscriber websocket;"));
        assert!(c.contains("nchan_publisher http;"));
        assert!(c.contains("\n    nchan_shared_memory_size 64M;\n"));
        assert_eq!(
            c.matches("\n            nchan_websocket_ping_interval 30;\n")
                .count(),
            2
        );
        let s = parse_status("subscribers: 3\nnchan version: 1.3.6\n");
        assert_eq!(s.get("subscribers").map(String::as_str), Some("3"));
        assert_eq!(s.get("nchan version").map(String::as_str), Some("1.3.6"));
    }
}
