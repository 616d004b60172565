//! The processes of a chaos run: one redis-server with AOF (`--appendonly yes
//! --appendfsync always`) and N gateways, all on fixed loopback ports below the
//! kernel's ephemeral range (so a restart finds its port free, and no outgoing
//! connection takes it meanwhile), each gateway (a [`testkit::TestGateway`])
//! talking to Redis through its own [`testkit::FaultProxy`]. Processes are signalled by pid only (SIGKILL through
//! `Child::kill`, SIGTERM through `kill -TERM <pid>`), logs go to one file per
//! process start, and an RSS sampler reads `/proc` of whatever pid is current.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Picks `n` distinct free ports on 127.0.0.1 in 4000..12000: below the ephemeral
/// range (no outgoing connection takes one while its gateway is down between a kill
/// and the restart) and below the ports testkit gives Redis Cluster nodes and their
/// bus ports (12000..32000), which tests running alongside may pick.
pub fn pick_ports(n: usize, seed: u64) -> Result<Vec<u16>> {
    let (lo, _) = crate::conn::port_range();
    let top = lo.clamp(5_000, 12_000);
    let base = 4_000u16;
    let span = (top - base) as u64;
    let mut rng =
        super::plan::Rng::new(seed ^ u64::from(std::process::id()) ^ crate::payload::now_micros());
    let mut out = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    for _ in 0..(n * 200 + 1000) {
        if out.len() == n {
            break;
        }
        let p = base + rng.below(span) as u16;
        if seen.insert(p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            out.push(p);
        }
    }
    if out.len() < n {
        bail!("could not find {n} free loopback ports below {top}");
    }
    Ok(out)
}

/// Sends SIGTERM to `pid` (with the `kill` program, so no unsafe code is needed).
async fn sigterm(pid: u32) -> Result<()> {
    let status = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .context("cannot run `kill`")?;
    if !status.success() {
        bail!("kill -TERM {pid} failed ({status})");
    }
    Ok(())
}

/// Waits until `child` exits, up to `within`; returns its status and how long it took.
async fn wait_exit(child: &mut Child, within: Duration) -> Result<Option<(ExitStatus, Duration)>> {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some((s, start.elapsed())));
        }
        if start.elapsed() >= within {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A minimal HTTP/1.1 GET (`Connection: close`); returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let run = async {
        let mut s = TcpStream::connect(addr).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .map_err(|_| anyhow!("GET {path} on {addr} timed out"))??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad HTTP answer from {addr}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sums the samples of a Prometheus metric (all label sets, or those whose label
/// text contains `labels`).
pub fn metric(text: &str, name: &str, labels: Option<&str>) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (lab, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None if rest.starts_with(' ') => ("", rest),
            None => continue,
        };
        if labels.is_some_and(|want| !lab.contains(want)) {
            continue;
        }
        if let Some(v) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The run's redis-server (AOF, fsync on every write), restartable on its port.
pub struct RedisProc {
    pub port: u16,
    dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    pub pid: Arc<AtomicU32>,
    pub starts: u32,
}

impl RedisProc {
    pub async fn start(port: u16, dir: &Path) -> Result<RedisProc> {
        let data = dir.join("redis-data");
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create {}", data.display()))?;
        let mut r = RedisProc {
            port,
            dir: data,
            log: dir.join("redis.log"),
            child: None,
            pid: Arc::new(AtomicU32::new(0)),
            starts: 0,
        };
        r.spawn().await?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts redis-server and waits until it answers PING (AOF loaded).
    pub async fn spawn(&mut self) -> Result<Duration> {
        let start = Instant::now();
        let mut last_err = String::new();
        for _ in 0..50 {
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(&self.dir)
                .arg("--logfile")
                .arg(&self.log)
                .args(["--protected-mode", "no", "--save", ""])
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context(
                    "cannot start redis-server (is it installed? apt-get install redis-server)",
                )?;
            self.pid.store(child.id(), Ordering::SeqCst);
            self.child = Some(child);
            self.starts += 1;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match ping(&self.url()).await {
                    Ok(()) => return Ok(start.elapsed()),
                    Err(e) => last_err = format!("{e:#}"),
                }
                if let Some(c) = self.child.as_mut()
                    && c.try_wait()?.is_some()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // Exited (the port may still be held by the old process): try again.
            self.kill_now();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "redis-server did not come up on port {}: {last_err}\n{}",
            self.port,
            tail(&self.log, 20)
        )
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.pid.store(0, Ordering::SeqCst);
    }

    /// Whether it exited by itself (a crash); with its status.
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    /// SIGKILL; returns the pid it had.
    pub async fn kill(&mut self) -> Result<u32> {
        let pid = self.pid.load(Ordering::SeqCst);
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            wait_exit(&mut c, Duration::from_secs(10)).await?;
        }
        self.pid.store(0, Ordering::SeqCst);
        Ok(pid)
    }

    /// SIGTERM (Redis flushes the AOF and exits); SIGKILL after `within`. Returns the
    /// pid, how long it took and whether it had to be killed.
    pub async fn term(&mut self, within: Duration) -> Result<(u32, Duration, bool)> {
        let pid = self.pid.load(Ordering::SeqCst);
        let Some(mut c) = self.child.take() else {
            return Ok((pid, Duration::ZERO, false));
        };
        sigterm(pid).await?;
        let r = match wait_exit(&mut c, within).await? {
            Some((_, took)) => (pid, took, false),
            None => {
                c.kill()?;
                wait_exit(&mut c, Duration::from_secs(10)).await?;
                (pid, within, true)
            }
        };
        self.pid.store(0, Ordering::SeqCst);
        Ok(r)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill_now();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ping(url: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let run = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    tokio::time::timeout(Duration::from_millis(500), run)
        .await
        .map_err(|_| anyhow!("no answer"))??;
    Ok(())
}

/// One gateway slot: the same ports and settings for every start.
pub struct GatewayProc {
    pub idx: usize,
    pub port: u16,
    pub admin_port: u16,
    gateway: testkit::GatewayBuilder,
    log_dir: PathBuf,
    running: Option<testkit::TestGateway>,
    pub pid: Arc<AtomicU32>,
    pub starts: u32,
    pub log: PathBuf,
}

impl GatewayProc {
    /// The slot of `gateway` on these ports.
    pub fn new(
        idx: usize,
        (port, admin_port): (u16, u16),
        gateway: testkit::GatewayBuilder,
        log_dir: &Path,
    ) -> GatewayProc {
        GatewayProc {
            idx,
            port,
            admin_port,
            gateway: gateway
                .port(port)
                .admin_listen(&format!("127.0.0.1:{admin_port}")),
            log_dir: log_dir.to_owned(),
            running: None,
            pid: Arc::new(AtomicU32::new(0)),
            starts: 0,
            log: PathBuf::new(),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn admin(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }

    /// Starts the gateway (its log in a file of its own) and waits until its admin
    /// port answers `/healthz`; retries a few times (e.g. while the old process'
    /// port is released).
    pub async fn spawn(&mut self) -> Result<Duration> {
        let start = Instant::now();
        let mut last = String::new();
        for _ in 0..3 {
            self.starts += 1;
            self.log = self
                .log_dir
                .join(format!("gw{}.{}.log", self.idx, self.starts));
            let gateway = self.gateway.clone().log_file(&self.log).log_tail(20);
            match gateway.try_start().await {
                Ok(gw) => {
                    self.pid.store(gw.pid(), Ordering::SeqCst);
                    self.running = Some(gw);
                    let deadline = Instant::now() + Duration::from_secs(20);
                    loop {
                        if let Ok((200, _)) = http_get(self.admin(), "/healthz").await {
                            return Ok(start.elapsed());
                        }
                        if let Some(s) = self.exited() {
                            last = format!("exited with {s}: {}", tail(&self.log, 20));
                            break;
                        }
                        if Instant::now() >= deadline {
                            last = format!("no /healthz within 20 s: {}", tail(&self.log, 20));
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Err(e) => last = e.to_string(),
            }
            self.kill_now();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        bail!(
            "gateway {} did not start on port {}: {last}",
            self.idx,
            self.port
        )
    }

    fn kill_now(&mut self) {
        // Dropping the gateway kills it.
        self.running = None;
        self.pid.store(0, Ordering::SeqCst);
    }

    /// Whether it exited by itself; with its status.
    pub fn exited(&mut self) -> Option<String> {
        Some(self.running.as_mut()?.try_wait()?.to_string())
    }

    /// SIGKILL; returns the pid it had.
    pub async fn kill(&mut self) -> Result<u32> {
        let pid = self.pid.load(Ordering::SeqCst);
        if let Some(mut gw) = self.running.take() {
            gw.kill();
        }
        self.pid.store(0, Ordering::SeqCst);
        Ok(pid)
    }

    /// SIGTERM (the gateway drains with 1001 and exits); SIGKILL after `within`.
    /// Returns the pid, how long it took and whether it had to be killed.
    pub async fn term(&mut self, within: Duration) -> Result<(u32, Duration, bool)> {
        let pid = self.pid.load(Ordering::SeqCst);
        let Some(mut gw) = self.running.take() else {
            return Ok((pid, Duration::ZERO, false));
        };
        sigterm(pid).await?;
        let start = Instant::now();
        let r = match gw.exit_within(within).await {
            Some(_) => (pid, start.elapsed(), false),
            None => {
                gw.kill();
                (pid, within, true)
            }
        };
        self.pid.store(0, Ordering::SeqCst);
        Ok(r)
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// Resident memory of one gateway slot over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayMemory {
    pub gateway: usize,
    /// RSS when the traffic started.
    pub start_bytes: u64,
    pub peak_bytes: u64,
    /// When the peak was seen, ms from the start of the traffic.
    pub peak_at_ms: u64,
    pub end_bytes: u64,
    pub samples: u64,
}

/// Resident memory figures of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Memory {
    /// The bound each gateway process must stay under.
    pub bound_bytes: u64,
    pub gateways: Vec<GatewayMemory>,
    pub redis_peak_bytes: u64,
    pub interval_ms: u64,
}

/// Samples the RSS of the current gateway and Redis pids every `interval`.
pub struct Sampler {
    state: Arc<Mutex<Memory>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sampler {
    pub fn start(
        gateways: Vec<Arc<AtomicU32>>,
        redis: Arc<AtomicU32>,
        bound: u64,
        interval: Duration,
    ) -> Sampler {
        let state = Arc::new(Mutex::new(Memory {
            bound_bytes: bound,
            gateways: (0..gateways.len())
                .map(|g| GatewayMemory {
                    gateway: g,
                    ..GatewayMemory::default()
                })
                .collect(),
            redis_peak_bytes: 0,
            interval_ms: interval.as_millis() as u64,
        }));
        let st = state.clone();
        let t0 = Instant::now();
        let task = tokio::spawn(async move {
            let mut iv = tokio::time::interval(interval);
            iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                iv.tick().await;
                let rss: Vec<Option<u64>> = gateways
                    .iter()
                    .map(|p| {
                        let pid = p.load(Ordering::SeqCst);
                        (pid != 0)
                            .then(|| crate::procfs::sample(pid).ok().map(|s| s.rss))
                            .flatten()
                    })
                    .collect();
                let redis_pid = redis.load(Ordering::SeqCst);
                let redis_rss = (redis_pid != 0)
                    .then(|| crate::procfs::sample(redis_pid).ok().map(|s| s.rss))
                    .flatten();
                let mut m = st.lock().unwrap_or_else(|p| p.into_inner());
                for (g, r) in rss.into_iter().enumerate() {
                    let Some(r) = r else { continue };
                    let gm = &mut m.gateways[g];
                    if gm.samples == 0 {
                        gm.start_bytes = r;
                    }
                    gm.samples += 1;
                    gm.end_bytes = r;
                    if r > gm.peak_bytes {
                        gm.peak_bytes = r;
                        gm.peak_at_ms = t0.elapsed().as_millis() as u64;
                    }
                }
                if let Some(r) = redis_rss {
                    m.redis_peak_bytes = m.redis_peak_bytes.max(r);
                }
            }
        });
        Sampler { state, task }
    }

    pub fn stop(self) -> Memory {
        self.task.abort();
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# HELP x\ntidings_connections 12\ntidings_closes_total{code=\"4002\"} 3\ntidings_closes_total{code=\"1001\"} 5\ntidings_connections_total 9\n";
        assert_eq!(metric(text, "tidings_connections", None), Some(12.0));
        assert_eq!(metric(text, "tidings_closes_total", None), Some(8.0));
        assert_eq!(
            metric(text, "tidings_closes_total", Some("\"4002\"")),
            Some(3.0)
        );
        assert_eq!(metric(text, "tidings_nothing", None), None);
    }

    #[test]
    fn ports_are_below_the_ephemeral_range() {
        let ports = pick_ports(5, 1).unwrap_or_default();
        assert_eq!(ports.len(), 5);
        let (lo, _) = crate::conn::port_range();
        assert!(
            ports
                .iter()
                .all(|p| (4_000..12_000).contains(p) && *p < lo.max(5_000))
        );
    }
}
