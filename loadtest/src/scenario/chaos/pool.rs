//! The coordinator's view of the chaos client groups: one in this process when the
//! run fits under `--per-process`, otherwise one `loadtest chaos-worker` process per
//! share (like the other scenarios' workers). Commands go to every group through a
//! cloneable [`Commander`] (the fault controller sends stalls); ticks are folded
//! into a per-second timeline and current totals.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::client::{self, Cmd, Ev, GroupFinal, GroupSpec, Tick};
use crate::pool::Timeline;
use crate::worker::PhaseResult;

#[derive(Clone)]
enum Link {
    Local(mpsc::UnboundedSender<Cmd>),
    Process(mpsc::UnboundedSender<String>),
}

/// Sends commands to every group; cheap to clone.
#[derive(Clone)]
pub struct Commander(Vec<Link>);

impl Commander {
    pub fn send(&self, cmd: &Cmd) -> Result<()> {
        for link in &self.0 {
            match link {
                Link::Local(tx) => tx
                    .send(cmd.clone())
                    .map_err(|_| anyhow!("client group stopped"))?,
                Link::Process(tx) => tx
                    .send(serde_json::to_string(cmd)?)
                    .map_err(|_| anyhow!("worker process stopped"))?,
            }
        }
        Ok(())
    }
}

/// Current totals over all groups (from their latest ticks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub open: u64,
    pub ready: u64,
    pub complete: u64,
    pub stalled: u64,
}

pub struct Groups {
    cmd: Commander,
    events: mpsc::UnboundedReceiver<(usize, Ev)>,
    pending: VecDeque<(usize, Ev)>,
    last: Vec<Option<Tick>>,
    pub timeline: Timeline,
    children: Vec<Child>,
    pub worker_pids: Vec<u32>,
}

impl Groups {
    /// Splits `template.count` clients into groups of at most `per_process` and
    /// starts them (in-process when one group suffices).
    pub async fn start(
        template: GroupSpec,
        per_process: usize,
        worker_exe: Option<PathBuf>,
    ) -> Result<Groups> {
        let total = template.count;
        let groups = total.div_ceil(per_process.max(1)).max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut links = Vec::new();
        let mut children = Vec::new();
        let mut worker_pids = Vec::new();
        let (base, extra) = (total / groups, total % groups);
        let mut first = 0;
        for g in 0..groups {
            let count = base + usize::from(g < extra);
            let mut spec = template.clone();
            spec.first = first;
            spec.count = count;
            spec.concurrency = (template.concurrency / groups).max(1);
            first += count;
            if groups == 1 {
                let (ctx, crx) = mpsc::unbounded_channel();
                let (etx, mut erx) = mpsc::unbounded_channel();
                tokio::spawn(client::run_group(spec, crx, etx));
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(ev) = erx.recv().await {
                        if tx.send((g, ev)).is_err() {
                            return;
                        }
                    }
                });
                links.push(Link::Local(ctx));
                continue;
            }
            let exe = match &worker_exe {
                Some(p) => p.clone(),
                None => std::env::current_exe().context("cannot find this executable")?,
            };
            let mut child = tokio::process::Command::new(&exe)
                .arg("chaos-worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start worker {}", exe.display()))?;
            worker_pids.push(child.id().unwrap_or(0));
            let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("worker stdin"))?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| anyhow!("worker stdout"))?;
            let (ltx, mut lrx) = mpsc::unbounded_channel::<String>();
            ltx.send(serde_json::to_string(&spec)?)?;
            tokio::spawn(async move {
                while let Some(mut line) = lrx.recv().await {
                    line.push('\n');
                    if stdin.write_all(line.as_bytes()).await.is_err()
                        || stdin.flush().await.is_err()
                    {
                        return;
                    }
                }
            });
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                let mut finished = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    let ev = serde_json::from_str::<Ev>(&line).unwrap_or_else(|e| Ev::Fatal {
                        message: format!("worker {g} sent a bad line: {e}"),
                    });
                    finished |= matches!(ev, Ev::Final(_));
                    if tx.send((g, ev)).is_err() {
                        return;
                    }
                }
                if !finished {
                    let _ = tx.send((
                        g,
                        Ev::Fatal {
                            message: format!("worker {g} exited early"),
                        },
                    ));
                }
            });
            links.push(Link::Process(ltx));
            children.push(child);
        }
        Ok(Groups {
            cmd: Commander(links),
            events: rx,
            pending: VecDeque::new(),
            last: vec![None; groups],
            timeline: Timeline::new(),
            children,
            worker_pids,
        })
    }

    pub fn groups(&self) -> usize {
        self.last.len()
    }

    pub fn commander(&self) -> Commander {
        self.cmd.clone()
    }

    pub fn send(&self, cmd: &Cmd) -> Result<()> {
        self.cmd.send(cmd)
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for k in self.last.iter().flatten() {
            t.open += k.open;
            t.ready += k.ready;
            t.complete += k.complete;
            t.stalled += k.stalled;
        }
        t
    }

    fn handle(&mut self, g: usize, ev: Ev) -> Result<()> {
        match ev {
            Ev::Tick(t) => {
                let b = self.timeline.entry(t.unix_ms / 1000).or_default();
                b.deliveries += t.deliveries;
                b.connects += t.connects;
                b.latency.merge(&t.latency);
                self.last[g] = Some(t);
            }
            Ev::Fatal { message } => bail!("client group {g}: {message}"),
            other => self.pending.push_back((g, other)),
        }
        Ok(())
    }

    /// Runs `fut` while keeping up with events.
    pub async fn drive<F: Future>(&mut self, fut: F) -> Result<F::Output> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                ev = self.events.recv() => match ev {
                    Some((g, ev)) => self.handle(g, ev)?,
                    None => bail!("all client groups are gone"),
                },
            }
        }
    }

    /// Keeps up with events for `d`.
    pub async fn pump(&mut self, d: Duration) -> Result<()> {
        self.drive(tokio::time::sleep(d)).await
    }

    /// Waits until `done(totals)` holds or `within` passes; returns whether it held.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        done: impl Fn(&Totals) -> bool,
    ) -> Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            if done(&self.totals()) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            self.pump(Duration::from_millis(50)).await?;
        }
    }

    async fn next(&mut self, deadline: Instant) -> Result<(usize, Ev)> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((g, ev))) => self.handle(g, ev)?,
                Ok(None) => bail!("all client groups are gone"),
                Err(_) => bail!("client groups did not answer in time"),
            }
        }
    }

    async fn gather<T>(
        &mut self,
        within: Duration,
        what: &str,
        pick: impl Fn(Ev) -> Option<T>,
    ) -> Result<Vec<T>> {
        let deadline = Instant::now() + within;
        let mut got: Vec<Option<T>> = (0..self.groups()).map(|_| None).collect();
        while got.iter().any(Option::is_none) {
            let (g, ev) = self
                .next(deadline)
                .await
                .with_context(|| format!("waiting for {what}"))?;
            if let Some(v) = pick(ev) {
                got[g] = Some(v);
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Waits for the first-connect result of every group, merged.
    pub async fn connected(&mut self, within: Duration) -> Result<PhaseResult> {
        let parts = self
            .gather(within, "the first connections", |e| match e {
                Ev::Connected(p) => Some(p),
                _ => None,
            })
            .await?;
        let mut out = PhaseResult::empty();
        for p in &parts {
            out.merge(p);
        }
        Ok(out)
    }

    /// Stops every group and returns their final reports.
    pub async fn finish(mut self, within: Duration) -> Result<(Vec<GroupFinal>, Timeline)> {
        self.send(&Cmd::Stop)?;
        let parts = self
            .gather(within, "final reports", |e| match e {
                Ev::Final(f) => Some(*f),
                _ => None,
            })
            .await?;
        for mut c in std::mem::take(&mut self.children) {
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
        Ok((parts, std::mem::take(&mut self.timeline)))
    }
}
