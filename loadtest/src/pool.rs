//! The coordinator's view of all client groups: one in this process when the run
//! fits under the per-process connection cap, otherwise one worker process per
//! share (this binary re-executed as `loadtest worker`). Commands go to every
//! group; progress ticks are folded into a per-second timeline and cumulative totals.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::stats::{Cohort, Hist};
use crate::worker::{self, Command, Event, GroupSpec, GroupStats, PhaseResult, Tick};

/// One second of a run, summed over groups.
#[derive(Debug, Clone, Default)]
pub struct Bucket {
    pub deliveries: u64,
    pub connects: u64,
    pub latency: Hist,
}

/// Seconds since the Unix epoch -> what happened in that second.
pub type Timeline = BTreeMap<u64, Bucket>;

/// Cumulative counters over all groups (from their latest ticks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub steady: Cohort,
    pub dropped: Cohort,
    pub connected_now: u64,
    pub chat_expected: u64,
    /// Presence diffs received (see [`crate::diff::Seen`]).
    pub presence: crate::diff::Seen,
}

impl Totals {
    pub fn unique(&self) -> u64 {
        self.steady.unique + self.dropped.unique
    }
}

/// Where a group runs.
enum Link {
    Local(mpsc::UnboundedSender<Command>),
    Process(mpsc::UnboundedSender<String>),
}

/// All groups of one run.
pub struct Pool {
    links: Vec<Link>,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    pending: VecDeque<(usize, Event)>,
    last: Vec<Option<Tick>>,
    pub timeline: Timeline,
    children: Vec<Child>,
    pub worker_pids: Vec<u32>,
    /// Shows connected clients while set.
    pub bar: Option<indicatif::ProgressBar>,
}

impl Pool {
    /// Splits `template.total` clients into groups of at most `per_process` and
    /// starts them (in-process when one group suffices).
    pub async fn start(
        template: GroupSpec,
        per_process: usize,
        worker_exe: Option<PathBuf>,
    ) -> Result<Pool> {
        Self::start_in(template, per_process, worker_exe, false).await
    }

    /// [`Pool::start`]; with `processes`, a single group runs in a worker process
    /// too (keeps this process' runtime free for what the scenario does itself).
    pub async fn start_in(
        template: GroupSpec,
        per_process: usize,
        worker_exe: Option<PathBuf>,
        processes: bool,
    ) -> Result<Pool> {
        let total = template.total;
        let per = per_process.max(1);
        let groups = total.div_ceil(per).max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut pool = Pool {
            links: Vec::new(),
            events: rx,
            pending: VecDeque::new(),
            last: vec![None; groups],
            timeline: Timeline::new(),
            children: Vec::new(),
            worker_pids: Vec::new(),
            bar: None,
        };
        // Even shares, so every worker has about the same load.
        let base = total / groups;
        let extra = total % groups;
        let mut first = 0;
        for g in 0..groups {
            let count = base + usize::from(g < extra);
            let mut spec = template.clone();
            spec.first = first;
            spec.count = count;
            spec.concurrency = (template.concurrency / groups).max(1);
            first += count;
            if groups == 1 && !processes {
                let (ctx, crx) = mpsc::unbounded_channel();
                let (etx, mut erx) = mpsc::unbounded_channel();
                tokio::spawn(worker::run_group(spec, crx, etx));
                let tx = tx.clone();
                tokio::spawn(async move {
                    while let Some(ev) = erx.recv().await {
                        if tx.send((g, ev)).is_err() {
                            return;
                        }
                    }
                });
                pool.links.push(Link::Local(ctx));
            } else {
                let exe = match &worker_exe {
                    Some(p) => p.clone(),
                    None => std::env::current_exe().context("cannot find this executable")?,
                };
                let mut child = tokio::process::Command::new(&exe)
                    .arg("worker")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| format!("cannot start worker {}", exe.display()))?;
                pool.worker_pids.push(child.id().unwrap_or(0));
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
                        match serde_json::from_str::<Event>(&line) {
                            Ok(ev) => {
                                finished |= matches!(ev, Event::Final(_));
                                if tx.send((g, ev)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send((
                                    g,
                                    Event::Fatal {
                                        message: format!("worker {g} sent a bad line: {e}"),
                                    },
                                ));
                            }
                        }
                    }
                    if !finished {
                        let _ = tx.send((
                            g,
                            Event::Fatal {
                                message: format!("worker {g} exited early"),
                            },
                        ));
                    }
                });
                pool.links.push(Link::Process(ltx));
                pool.children.push(child);
            }
        }
        Ok(pool)
    }

    pub fn groups(&self) -> usize {
        self.links.len()
    }

    /// Sends a command to every group.
    pub fn send(&self, cmd: &Command) -> Result<()> {
        for link in &self.links {
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

    fn fold(&mut self, g: usize, t: Tick) {
        let b = self.timeline.entry(t.unix_ms / 1000).or_default();
        b.deliveries += t.deliveries;
        b.connects += t.connects;
        b.latency.merge(&t.latency);
        self.last[g] = Some(t);
        if let Some(bar) = &self.bar {
            bar.set_position(self.totals().connected_now);
        }
    }

    /// Cumulative totals from the latest tick of each group.
    pub fn totals(&self) -> Totals {
        let mut out = Totals::default();
        for t in self.last.iter().flatten() {
            out.steady.add(&t.steady);
            out.dropped.add(&t.dropped);
            out.connected_now += t.connected_now;
            out.chat_expected += t.chat_expected;
            out.presence.add(&t.presence);
        }
        out
    }

    /// Handles one event: ticks are folded, fatal ones become errors, others are
    /// queued for [`Pool::next`].
    fn handle(&mut self, g: usize, ev: Event) -> Result<()> {
        match ev {
            Event::Tick(t) => self.fold(g, t),
            Event::Fatal { message } => bail!("client group {g}: {message}"),
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

    /// The next non-tick event, before `deadline`.
    async fn next(&mut self, deadline: Instant) -> Result<(usize, Event)> {
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

    /// Waits for one event picked by `pick` from every group.
    pub async fn gather<T>(
        &mut self,
        within: Duration,
        what: &str,
        pick: impl Fn(Event) -> Option<T>,
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

    /// Waits for a connect/reconnect phase result from every group, merged.
    pub async fn phase(&mut self, within: Duration, reconnect: bool) -> Result<PhaseResult> {
        let parts = self
            .gather(
                within,
                if reconnect {
                    "reconnections"
                } else {
                    "connections"
                },
                |e| match e {
                    Event::Connected(p) if !reconnect => Some(p),
                    Event::Reconnected(p) if reconnect => Some(p),
                    _ => None,
                },
            )
            .await?;
        let mut out = PhaseResult::empty();
        for p in &parts {
            out.merge(p);
        }
        Ok(out)
    }

    /// Waits until `done(totals)` holds; gives up at `within` or when the totals
    /// have not changed for `stall`. Returns whether `done` held.
    pub async fn wait_for(
        &mut self,
        within: Duration,
        stall: Duration,
        done: impl Fn(&Totals) -> bool,
    ) -> Result<bool> {
        let deadline = Instant::now() + within;
        let mut last = self.totals();
        let mut changed_at = Instant::now();
        loop {
            let t = self.totals();
            if done(&t) {
                return Ok(true);
            }
            if t != last {
                last = t;
                changed_at = Instant::now();
            }
            let now = Instant::now();
            if now >= deadline || now.duration_since(changed_at) >= stall {
                return Ok(false);
            }
            self.pump(Duration::from_millis(50)).await?;
        }
    }

    /// Stops every group and returns the merged final counters.
    pub async fn finish(mut self, within: Duration) -> Result<(GroupStats, Timeline)> {
        self.send(&Command::Stop)?;
        let parts = self
            .gather(within, "final counters", |e| match e {
                Event::Final(s) => Some(*s),
                _ => None,
            })
            .await?;
        let mut out = GroupStats::default();
        for p in &parts {
            out.merge(p);
        }
        self.links.clear();
        for mut c in std::mem::take(&mut self.children) {
            if tokio::time::timeout(Duration::from_secs(5), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
        Ok((out, std::mem::take(&mut self.timeline)))
    }
}
