//! `loadtest floor`: what the kernel alone charges a server for one small write to a
//! loopback TCP connection on this machine, so gateway figures can be read against
//! it.
//!
//! A separate `floor-server` process (this executable again) accepts N plain TCP
//! connections from the load clients and does nothing but write: in `fanout` mode
//! one frame to every connection per tick (a blocking `write` each, no tasks, no
//! framing work: the least any server can do per delivery); in `relay` mode it reads
//! frames from one publisher connection and writes each to the next client, sleeping
//! in `read` between messages like a gateway waiting on Redis (the targeted
//! pattern). Its CPU is read from `/proc`, as the gateway's is.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::conn::{self, Target};
use crate::procfs;

/// Most connections: the floor server holds them all in one process.
pub const MAX_FLOOR_CONNECTIONS: usize = 19_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FloorMode {
    /// Every frame to every connection (the fan-out pattern).
    Fanout,
    /// Each frame read from a publisher connection, written to one client.
    Relay,
}

#[derive(Debug, Clone, Args, Serialize)]
pub struct FloorArgs {
    #[arg(long, value_enum, default_value = "fanout")]
    pub mode: FloorMode,
    /// Client connections.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub connections: usize,
    /// Frames: ticks to all connections (fanout) or frames relayed (relay).
    #[arg(short = 'm', long, default_value_t = 300)]
    pub messages: u64,
    /// Ticks (fanout) or frames (relay) per second.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Bytes per frame (a 100-byte payload makes a ~150-byte message frame).
    #[arg(long, default_value_t = 150)]
    pub size: usize,
    /// Relay mode: paced sends each frame at its own time (frame i at i/rate s, as
    /// `targeted --publish-mode paced` publishes); batched follows tokio's 1 ms
    /// timer ticks, which sends what is due per tick back to back (e.g. pairs at
    /// 2,000/s), so the server often reads two frames per wake-up.
    #[arg(long, value_enum, default_value_t = crate::cli::PublishMode::Paced)]
    pub publish_mode: crate::cli::PublishMode,
    /// Connections per local source address.
    #[arg(long, default_value_t = conn::DEFAULT_PER_SOURCE_IP)]
    pub per_source_ip: usize,
    /// Print nothing.
    #[arg(long)]
    pub quiet: bool,
    /// The loadtest executable to start as the floor server (default: this one).
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub server_exe: Option<std::path::PathBuf>,
}

/// Internal: the writing side, started by `loadtest floor`.
#[derive(Debug, Clone, Args)]
pub struct FloorServerArgs {
    #[arg(long, value_enum)]
    pub mode: FloorMode,
    #[arg(short = 'n', long)]
    pub connections: usize,
    #[arg(long)]
    pub size: usize,
}

/// What a floor run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FloorReport {
    pub mode: FloorMode,
    pub connections: usize,
    pub writes: u64,
    pub bytes_received: u64,
    pub seconds: f64,
    /// Server CPU (user + system) per write, microseconds.
    pub us_per_write: f64,
    pub server_cpu_percent: f64,
    /// How the relay's publisher spaced its frames (relay mode).
    pub publish_mode: crate::cli::PublishMode,
}

impl FloorArgs {
    pub fn validate(&self) -> Result<()> {
        if self.connections == 0 || self.connections > MAX_FLOOR_CONNECTIONS {
            bail!("-n must be 1..={MAX_FLOOR_CONNECTIONS} (one server process holds them)");
        }
        if self.messages == 0 || self.messages > 1_000_000 {
            bail!("--messages must be 1..=1000000");
        }
        if !(self.rate > 0.0 && self.rate <= 100_000.0) {
            bail!("--rate must be in (0, 100000]");
        }
        if self.size == 0 || self.size > 64 * 1024 {
            bail!("--size must be 1..=65536");
        }
        if self.per_source_ip == 0 || self.per_source_ip > 28_000 {
            bail!("--per-source-ip must be 1..=28000");
        }
        let seconds = self.messages as f64 / self.rate;
        if seconds > 600.0 {
            bail!("the run would take {seconds:.0} s; keep --messages / --rate under 600 s");
        }
        Ok(())
    }
}

/// The writing process: accept, write as told, exit when stdin closes.
pub fn serve(a: &FloorServerArgs) -> Result<()> {
    if a.connections == 0 || a.connections > MAX_FLOOR_CONNECTIONS || a.size == 0 {
        bail!("floor-server needs -n 1..={MAX_FLOOR_CONNECTIONS} and a positive --size");
    }
    // A deep accept queue: connects arrive 200 at a time while this loop accepts;
    // a full queue drops the handshake's last ACK and leaves the client believing
    // it is connected.
    let socket = tokio::net::TcpSocket::new_v4().context("socket")?;
    socket.bind("127.0.0.1:0".parse()?).context("bind")?;
    let listener: TcpListener = socket.listen(8192).context("listen")?.into_std()?;
    listener.set_nonblocking(false)?;
    let mut out = std::io::stdout();
    writeln!(out, "port {}", listener.local_addr()?.port())?;
    out.flush()?;
    let mut clients = Vec::with_capacity(a.connections);
    while clients.len() < a.connections {
        let (s, _) = listener.accept().context("accept")?;
        s.set_nodelay(true)?;
        clients.push(s);
    }
    let publisher = match a.mode {
        FloorMode::Relay => Some(listener.accept().context("accept publisher")?.0),
        FloorMode::Fanout => None,
    };
    writeln!(out, "ready")?;
    out.flush()?;
    let frame = vec![b'x'; a.size];
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    match publisher {
        None => {
            let mut it = line.split_whitespace().skip(1);
            let ticks: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let rate: f64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(1.0);
            let start = Instant::now();
            for t in 0..ticks {
                let due = start + Duration::from_secs_f64(t as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                for c in &mut clients {
                    c.write_all(&frame)?;
                }
            }
        }
        Some(mut p) => {
            let mut buf = vec![0u8; a.size];
            let n = clients.len();
            let mut i = 0;
            while p.read_exact(&mut buf).is_ok() {
                clients[i % n].write_all(&buf)?;
                i += 1;
            }
        }
    }
    writeln!(out, "done")?;
    out.flush()?;
    // Stay until told (EOF), so the clients can read everything first.
    let _ = stdin.read_line(&mut line);
    Ok(())
}

/// Runs the floor measurement and prints the result.
pub async fn run(a: &FloorArgs) -> Result<FloorReport> {
    a.validate()?;
    let exe = match &a.server_exe {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("cannot find this executable")?,
    };
    let mut child = Command::new(exe)
        .args(["floor-server", "--mode"])
        .arg(match a.mode {
            FloorMode::Fanout => "fanout",
            FloorMode::Relay => "relay",
        })
        .args([
            "-n",
            &a.connections.to_string(),
            "--size",
            &a.size.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the floor server")?;
    let pid = child.id().ok_or_else(|| anyhow!("floor server exited"))?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("server stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("server stdout"))?;
    let mut lines = tokio::io::BufReader::new(stdout);
    let mut next_line = async || -> Result<String> {
        let mut l = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut l).await?;
        if l.is_empty() {
            bail!("the floor server exited early");
        }
        Ok(l.trim().to_owned())
    };
    let port: u16 = next_line()
        .await?
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("floor server gave no port"))?;
    let target = Target::parse(&format!("ws://127.0.0.1:{port}/"))?;

    let received = Arc::new(AtomicU64::new(0));
    let mut readers = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let mut opening = tokio::task::JoinSet::new();
    for idx in 0..a.connections {
        let (target, sem, per_ip) = (target.clone(), sem.clone(), a.per_source_ip);
        opening.spawn(async move {
            let _permit = sem.acquire().await;
            let source = conn::source_ip(idx, per_ip);
            conn::open_tcp(&target, source, |k| conn::source_port(idx, per_ip, k)).await
        });
    }
    while let Some(r) = opening.join_next().await {
        let mut s = r.context("connect task")??;
        let received = received.clone();
        readers.spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
    let publisher = match a.mode {
        FloorMode::Relay => Some(
            tokio::net::TcpStream::connect(target.addr)
                .await
                .context("publisher connect")?,
        ),
        FloorMode::Fanout => None,
    };
    match tokio::time::timeout(Duration::from_secs(60), next_line()).await {
        Ok(Ok(l)) if l == "ready" => {}
        Ok(Ok(l)) => bail!("floor server said `{l}` instead of ready"),
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("floor server did not accept every connection within 60 s"),
    }
    let writes = match a.mode {
        FloorMode::Fanout => a.messages * a.connections as u64,
        FloorMode::Relay => a.messages,
    };
    let expected = writes * a.size as u64;
    let before = procfs::sample(pid)?;
    let started = Instant::now();
    tokio::io::AsyncWriteExt::write_all(
        &mut stdin,
        format!("go {} {}\n", a.messages, a.rate).as_bytes(),
    )
    .await?;
    if let Some(mut p) = publisher {
        let frame = vec![b'y'; a.size];
        match a.publish_mode {
            crate::cli::PublishMode::Paced => {
                let metronome =
                    crate::publish::Metronome::start(Instant::now(), a.rate, a.messages)?;
                for i in 0..a.messages {
                    metronome.wait_for(i).await;
                    tokio::io::AsyncWriteExt::write_all(&mut p, &frame).await?;
                }
            }
            crate::cli::PublishMode::Batched => {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                for _ in 0..a.messages {
                    tick.tick().await;
                    tokio::io::AsyncWriteExt::write_all(&mut p, &frame).await?;
                }
            }
        }
        drop(p);
    }
    let limit = Duration::from_secs_f64(a.messages as f64 / a.rate) + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected {
        if started.elapsed() > limit {
            bail!(
                "only {} of {expected} bytes arrived in {limit:?}",
                received.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = procfs::sample(pid)?;
    let (cpu_us, pct) = procfs::cpu_between(&before, &after);
    drop(stdin);
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    readers.abort_all();
    let report = FloorReport {
        mode: a.mode,
        connections: a.connections,
        writes,
        bytes_received: received.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        us_per_write: cpu_us as f64 / writes as f64,
        server_cpu_percent: pct,
        publish_mode: a.publish_mode,
    };
    if !a.quiet {
        let spacing = match (a.mode, a.publish_mode) {
            (FloorMode::Fanout, _) => "",
            (FloorMode::Relay, crate::cli::PublishMode::Paced) => " (frames paced)",
            (FloorMode::Relay, crate::cli::PublishMode::Batched) => " (frames per 1 ms tick)",
        };
        println!(
            "floor {:?}{spacing}: {} connections, {} writes of {} bytes in {:.1} s; server CPU {:.2} us per write ({:.1}% of a core)",
            report.mode,
            report.connections,
            report.writes,
            a.size,
            report.seconds,
            report.us_per_write,
            report.server_cpu_percent
        );
    }
    Ok(report)
}
