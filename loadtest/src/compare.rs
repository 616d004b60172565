//! `loadtest compare`: Tidings (in its Redis mode, plus any variants: other
//! settings or another build), Nchan and the kernel's floor under the same load in
//! one sitting, each scenario run for every server back to back, `--rounds` times,
//! then one table with the range over the rounds of each figure.
//!
//! Every run is an ordinary `idle`, `fanout` or `targeted` run (or `floor`), with
//! the same checks (lost, duplicated, out of order) and figures; its report is
//! written to `--json-dir` when given, next to `compare.json` and `compare.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, ValueEnum};
use serde::Serialize;

use crate::cli::{Cli, Dur, NchanOpts, Scenario, Via};
use crate::floor::{FloorMode, FloorReport};
use crate::report::Report;

/// The columns besides the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Column {
    /// The gateway of --spawn-gateway with its default settings, in Redis mode.
    Tidings,
    /// Nchan in nginx (see `--server nchan`).
    Nchan,
    /// `loadtest floor`: fanout mode for fan-out, relay mode for targeted.
    Floor,
}

/// The scenarios compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Which {
    Idle,
    Fanout,
    Targeted,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Idle => "idle",
            Which::Fanout => "fanout",
            Which::Targeted => "targeted",
        }
    }
}

/// The long help of `loadtest compare`.
pub const ABOUT: &str = "\
Tidings (Redis mode, its own redis-server), Nchan (nginx with the Nchan module, memory
store, --nginx-workers 1) and the kernel's floor (`loadtest floor`) under the same load
in one sitting: for each scenario, every server back to back, --rounds times; then one
table of the ranges over the rounds.

  idle      -n connections held for --hold: server RSS per connection (and Redis'
            for Tidings), idle CPU
  fanout    -n subscribers of one channel, --fanout-messages at --fanout-rate, one
            publish per message: server CPU per delivery, latency;
            floor: `floor --mode fanout` (one plain write per delivery)
  targeted  -n users, --targeted-rate notifications/s to random users for
            --targeted-duration, one publish per notification, evenly spaced (SDK
            via Redis or --via http for Tidings; HTTP POST for Nchan): server CPU
            per delivery (Redis' separately), latency;
            floor: `floor --mode relay` with frames at the same pace

Variants add Tidings columns: --variant 'NAME=ARGS' runs the gateway with ARGS added
(split at spaces), --variant 'NAME@PATH' (or 'NAME@PATH=ARGS') another gateway binary,
e.g. a build from before a change. Every run checks every delivery; any loss,
duplicate, reordering or failed run makes loadtest end with an error (exit status 1).

Example (build first: cargo build --release -p gateway -p loadtest):
  loadtest compare --spawn-gateway target/release/gateway \\
      --variant 'threads-1=--worker-threads 1' --rounds 3 --json-dir bench-out/";

#[derive(Debug, Clone, Args, Serialize)]
pub struct CompareArgs {
    /// The gateway binary (needed for the tidings column and variants).
    #[arg(long, value_name = "PATH")]
    pub spawn_gateway: Option<PathBuf>,
    /// Extra argument for every Tidings gateway, repeatable.
    #[arg(long = "gateway-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
    /// Another Tidings column: NAME=ARGS, NAME@PATH or NAME@PATH=ARGS, repeatable.
    #[arg(long = "variant", value_name = "SPEC")]
    pub variants: Vec<String>,
    /// Columns besides the variants.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "tidings,nchan,floor"
    )]
    pub columns: Vec<Column>,
    /// Scenarios to compare.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "idle,fanout,targeted"
    )]
    pub scenarios: Vec<Which>,
    /// WebSocket connections (and floor connections).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub connections: usize,
    /// How long idle runs hold their connections.
    #[arg(long, default_value = "30s")]
    pub hold: Dur,
    /// Fan-out messages.
    #[arg(long, default_value_t = 300)]
    pub fanout_messages: u64,
    /// Fan-out messages per second.
    #[arg(long, default_value_t = 10.0)]
    pub fanout_rate: f64,
    /// Targeted notifications per second.
    #[arg(long, default_value_t = 2000.0)]
    pub targeted_rate: f64,
    /// How long targeted runs publish.
    #[arg(long, default_value = "30s")]
    pub targeted_duration: Dur,
    /// JSON payload bytes (the floor writes frames 50 bytes larger).
    #[arg(long, default_value_t = 100)]
    pub payload_size: usize,
    /// How Tidings is published to (Nchan: always HTTP).
    #[arg(long, value_enum, default_value_t = Via::Redis)]
    pub via: Via,
    /// How many times every run is repeated (figures are given as ranges).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
    /// Pause after connecting before measuring.
    #[arg(long, default_value = "1s")]
    pub settle: Dur,
    /// Hard bound on each run.
    #[arg(long, default_value = "15m")]
    pub max_duration: Dur,
    /// Write every run's report, compare.json and compare.md here.
    #[arg(long, value_name = "DIR")]
    pub json_dir: Option<PathBuf>,
    #[command(flatten)]
    pub nchan: NchanOpts,
    /// Executable for worker processes and the floor server (default: this one).
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub worker_exe: Option<PathBuf>,
}

/// One server column: its name and the options of its runs.
#[derive(Debug, Clone)]
struct Server {
    name: String,
    args: Vec<String>,
    /// The `--variant` that made it.
    spec: Option<String>,
}

/// One run to make.
#[derive(Debug)]
enum Job {
    Run {
        server: usize,
        which: Which,
        scenario: Box<Scenario>,
    },
    Floor(Box<crate::floor::FloorArgs>),
}

/// The comparison's result.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub columns: Vec<String>,
    /// Row title, then one cell per column.
    pub rows: Vec<(String, Vec<String>)>,
    pub failures: Vec<String>,
    pub correct: bool,
    pub markdown: String,
}

fn parse_scenario(args: &[String]) -> Result<Scenario> {
    let mut full = vec!["loadtest".to_owned()];
    full.extend(args.iter().cloned());
    let cli = Cli::try_parse_from(&full).map_err(|e| anyhow::anyhow!("{e}"))?;
    cli.scenario.validate()?;
    Ok(cli.scenario)
}

impl CompareArgs {
    fn servers(&self) -> Result<Vec<Server>> {
        let mut out = Vec::new();
        let gateway = |path: Option<&str>| -> Result<Vec<String>> {
            let bin = match path {
                Some(p) => PathBuf::from(p),
                None => self.spawn_gateway.clone().context(
                    "the tidings column and variants need --spawn-gateway PATH (or NAME@PATH)",
                )?,
            };
            let mut a = vec![
                "--spawn-gateway".to_owned(),
                bin.display().to_string(),
                "--redis".to_owned(),
            ];
            a.extend(
                self.gateway_args
                    .iter()
                    .map(|g| format!("--gateway-arg={g}")),
            );
            Ok(a)
        };
        if self.columns.contains(&Column::Tidings) {
            out.push(Server {
                name: "tidings".into(),
                args: gateway(None)?,
                spec: None,
            });
        }
        for v in &self.variants {
            let (head, extra) = v.split_once('=').unwrap_or((v.as_str(), ""));
            let (name, path) = match head.split_once('@') {
                Some((n, p)) => (n, Some(p)),
                None => (head, None),
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                bail!("--variant `{v}`: NAME must be letters, digits, _ . -");
            }
            if out.iter().any(|s: &Server| s.name == name) || name == "nchan" || name == "floor" {
                bail!("--variant `{v}`: the name `{name}` is taken");
            }
            let mut args = gateway(path)?;
            args.extend(
                extra
                    .split_whitespace()
                    .map(|g| format!("--gateway-arg={g}")),
            );
            out.push(Server {
                name: name.to_owned(),
                args,
                spec: Some(v.clone()),
            });
        }
        if self.columns.contains(&Column::Nchan) {
            let mut args = vec![
                "--server".to_owned(),
                "nchan".to_owned(),
                "--nchan-module".to_owned(),
                self.nchan.nchan_module.display().to_string(),
                "--nginx-workers".to_owned(),
                self.nchan.nginx_workers.to_string(),
            ];
            if let Some(n) = &self.nchan.nginx {
                args.extend(["--nginx".to_owned(), n.display().to_string()]);
            }
            for d in &self.nchan.nginx_directives {
                args.push(format!("--nginx-directive={d}"));
            }
            for d in &self.nchan.nchan_directives {
                args.push(format!("--nchan-directive={d}"));
            }
            out.push(Server {
                name: "nchan".into(),
                args,
                spec: None,
            });
        }
        Ok(out)
    }

    fn scenario_args(&self, s: &Server, which: Which, round: usize) -> Vec<String> {
        let dur = |d: Dur| humantime::format_duration(d.0).to_string();
        let mut a: Vec<String> = vec![
            which.name().into(),
            "-n".into(),
            self.connections.to_string(),
            "--payload-size".into(),
            self.payload_size.to_string(),
            "--settle".into(),
            dur(self.settle),
            "--max-duration".into(),
            dur(self.max_duration),
            "--quiet".into(),
            "--label".into(),
            s.name.clone(),
        ];
        match which {
            Which::Idle => a.extend(["--hold".into(), dur(self.hold)]),
            Which::Fanout => a.extend([
                "-m".into(),
                self.fanout_messages.to_string(),
                "--rate".into(),
                self.fanout_rate.to_string(),
            ]),
            Which::Targeted => a.extend([
                "--rate".into(),
                self.targeted_rate.to_string(),
                "--duration".into(),
                dur(self.targeted_duration),
                "--publish-mode".into(),
                "paced".into(),
            ]),
        }
        if which != Which::Idle && s.name != "nchan" {
            a.extend(["--via".into(), format!("{:?}", self.via).to_lowercase()]);
        }
        if let Some(dir) = &self.json_dir {
            let file = dir.join(format!("r{round}-{}-{}.json", s.name, which.name()));
            a.extend(["--json".into(), file.display().to_string()]);
        }
        if let Some(w) = &self.worker_exe {
            a.extend(["--worker-exe".into(), w.display().to_string()]);
        }
        a.extend(s.args.iter().cloned());
        a
    }

    fn floor_args(&self, which: Which) -> Option<crate::floor::FloorArgs> {
        let (mode, messages, rate) = match which {
            Which::Idle => return None,
            Which::Fanout => (FloorMode::Fanout, self.fanout_messages, self.fanout_rate),
            Which::Targeted => (
                FloorMode::Relay,
                (self.targeted_rate * self.targeted_duration.0.as_secs_f64()).round() as u64,
                self.targeted_rate,
            ),
        };
        Some(crate::floor::FloorArgs {
            mode,
            connections: self.connections,
            messages,
            rate,
            size: self.payload_size + 50,
            per_source_ip: crate::conn::DEFAULT_PER_SOURCE_IP,
            publish_mode: crate::cli::PublishMode::Paced,
            quiet: true,
            server_exe: self.worker_exe.clone(),
        })
    }

    /// Every run of one round, in order, each already validated.
    fn jobs(&self, servers: &[Server], round: usize) -> Result<Vec<Job>> {
        let mut jobs = Vec::new();
        let mut scenarios = self.scenarios.clone();
        scenarios.sort();
        scenarios.dedup();
        for which in scenarios {
            for (i, s) in servers.iter().enumerate() {
                let args = self.scenario_args(s, which, round);
                let scenario = parse_scenario(&args)
                    .with_context(|| format!("{} {}", s.name, which.name()))?;
                jobs.push(Job::Run {
                    server: i,
                    which,
                    scenario: Box::new(scenario),
                });
            }
            if self.columns.contains(&Column::Floor)
                && let Some(f) = self.floor_args(which)
            {
                f.validate()
                    .with_context(|| format!("floor for {}", which.name()))?;
                jobs.push(Job::Floor(Box::new(f)));
            }
        }
        Ok(jobs)
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=20).contains(&self.rounds) {
            bail!("--rounds must be 1..=20");
        }
        let servers = self.servers()?;
        if servers.is_empty() && !self.columns.contains(&Column::Floor) {
            bail!("nothing to compare: give --columns or --variant");
        }
        self.jobs(&servers, 1)?;
        Ok(())
    }
}

/// `lo-hi` (or one value when they agree at this precision) of `vals`.
fn range(vals: &[f64], decimals: usize, unit: &str) -> String {
    if vals.is_empty() {
        return "-".into();
    }
    let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (a, b) = (format!("{lo:.decimals$}"), format!("{hi:.decimals$}"));
    if a == b {
        format!("{a}{unit}")
    } else {
        format!("{a}-{b}{unit}")
    }
}

/// What the runs of one column gave, per scenario.
#[derive(Default)]
struct Results {
    reports: BTreeMap<(usize, Which), Vec<Report>>,
    floors: BTreeMap<Which, Vec<FloorReport>>,
    failures: Vec<String>,
    incorrect: Vec<String>,
}

impl Results {
    fn of(&self, server: usize, which: Which) -> &[Report] {
        self.reports
            .get(&(server, which))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn values(&self, server: usize, which: Which, f: impl Fn(&Report) -> Option<f64>) -> Vec<f64> {
        self.of(server, which).iter().filter_map(f).collect()
    }
}

fn table(
    a: &CompareArgs,
    servers: &[Server],
    res: &Results,
) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let floor = a.columns.contains(&Column::Floor);
    let mut columns: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
    if floor {
        columns.push("floor".into());
    }
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let ms = |us: u64| us as f64 / 1000.0;
    let mut row = |title: String,
                   which: Which,
                   cell: &dyn Fn(usize) -> String,
                   floor_cell: &dyn Fn() -> String| {
        if !a.scenarios.contains(&which) {
            return;
        }
        let mut cells: Vec<String> = (0..servers.len()).map(cell).collect();
        if floor {
            cells.push(floor_cell());
        }
        rows.push((title, cells));
    };
    let none = || "-".to_owned();
    let floor_us = |which: Which, what: &str| {
        let v: Vec<f64> = res
            .floors
            .get(&which)
            .map(|f| f.iter().map(|r| r.us_per_write).collect())
            .unwrap_or_default();
        if v.is_empty() {
            "-".to_owned()
        } else {
            format!("{} {what}", range(&v, 2, " us"))
        }
    };
    let gw = |r: &Report| r.gateway.clone();
    row(
        "memory per idle subscribed connection".into(),
        Which::Idle,
        &|s| {
            range(
                &res.values(s, Which::Idle, |r| {
                    gw(r).map(|g| g.rss_per_connection_bytes / 1024.0)
                }),
                2,
                " KiB",
            )
        },
        &none,
    );
    row(
        "Redis memory per idle connection (Tidings' subscriptions)".into(),
        Which::Idle,
        &|s| {
            range(
                &res.values(s, Which::Idle, |r| {
                    r.redis
                        .as_ref()
                        .and_then(|p| p.rss_per_connection_bytes)
                        .map(|b| b / 1024.0)
                }),
                2,
                " KiB",
            )
        },
        &none,
    );
    row(
        format!(
            "idle CPU ({} held {})",
            a.connections,
            humantime::format_duration(a.hold.0)
        ),
        Which::Idle,
        &|s| {
            range(
                &res.values(s, Which::Idle, |r| gw(r).and_then(|g| g.idle_cpu_percent)),
                3,
                " % of a core",
            )
        },
        &none,
    );
    row(
        format!(
            "fan-out ({} messages to {} at {}/s): server CPU per delivery",
            a.fanout_messages, a.connections, a.fanout_rate
        ),
        Which::Fanout,
        &|s| {
            range(
                &res.values(s, Which::Fanout, |r| {
                    gw(r).and_then(|g| g.cpu_us_per_delivery)
                }),
                2,
                " us",
            )
        },
        &|| floor_us(Which::Fanout, "per write"),
    );
    row(
        "fan-out p50 / p99 latency".into(),
        Which::Fanout,
        &|s| {
            let p50 = res.values(s, Which::Fanout, |r| Some(ms(r.latency_us.p50)));
            let p99 = res.values(s, Which::Fanout, |r| Some(ms(r.latency_us.p99)));
            format!("{} / {}", range(&p50, 1, ""), range(&p99, 1, " ms"))
        },
        &none,
    );
    row(
        format!(
            "targeted ({}/s, one publish per notification): server CPU per delivery",
            a.targeted_rate
        ),
        Which::Targeted,
        &|s| {
            range(
                &res.values(s, Which::Targeted, |r| {
                    gw(r).and_then(|g| g.cpu_us_per_delivery)
                }),
                2,
                " us",
            )
        },
        &|| floor_us(Which::Targeted, "per relayed frame"),
    );
    row(
        "targeted: Redis CPU per delivery".into(),
        Which::Targeted,
        &|s| {
            range(
                &res.values(s, Which::Targeted, |r| {
                    r.redis.as_ref().and_then(|p| p.cpu_us_per_delivery)
                }),
                2,
                " us",
            )
        },
        &none,
    );
    row(
        "targeted p50 / p99 latency".into(),
        Which::Targeted,
        &|s| {
            let p50 = res.values(s, Which::Targeted, |r| Some(ms(r.latency_us.p50)));
            let p99 = res.values(s, Which::Targeted, |r| Some(ms(r.latency_us.p99)));
            format!("{} / {}", range(&p50, 2, ""), range(&p99, 2, " ms"))
        },
        &none,
    );
    row(
        "targeted publish call p50 / lag p99".into(),
        Which::Targeted,
        &|s| {
            let call = res.values(s, Which::Targeted, |r| {
                r.publish_call_us.as_ref().map(|p| p.p50 as f64)
            });
            let lag = res.values(s, Which::Targeted, |r| {
                r.publish_lag_us.as_ref().map(|p| p.p99 as f64)
            });
            format!("{} / {}", range(&call, 0, " us"), range(&lag, 0, " us"))
        },
        &none,
    );
    let mut checked = Vec::new();
    for s in 0..servers.len() {
        let (mut n, mut lost, mut dup, mut ooo, mut runs, mut bad) = (0, 0, 0, 0, 0, 0);
        for ((server, _), reports) in &res.reports {
            if *server != s {
                continue;
            }
            for r in reports {
                runs += 1;
                bad += u64::from(!r.correct);
                if let Some(d) = &r.delivery {
                    n += d.unique;
                    lost += d.lost;
                    dup += d.duplicated;
                    ooo += d.out_of_order;
                }
            }
        }
        checked.push(format!(
            "{n} deliveries: {lost} lost, {dup} duplicated, {ooo} out of order; {} of {runs} runs correct",
            runs - bad
        ));
    }
    if floor {
        checked.push("-".into());
    }
    rows.push(("checked".into(), checked));
    (columns, rows)
}

fn markdown(
    a: &CompareArgs,
    servers: &[Server],
    columns: &[String],
    rows: &[(String, Vec<String>)],
    res: &Results,
    nchan_note: Option<&str>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| | {} |", columns.join(" | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(columns.len()));
    for (title, cells) in rows {
        let _ = writeln!(out, "| {title} | {} |", cells.join(" | "));
    }
    let machine = res
        .reports
        .values()
        .flatten()
        .next()
        .map(|r| {
            format!(
                "{} CPUs ({}), kernel {}",
                r.machine.nproc, r.machine.cpu_model, r.machine.kernel
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "\n{} connections, {}-byte JSON payloads, {} round(s), one run at a time on {machine}, \
         the load generator on the same CPUs. Tidings in Redis mode (its own redis-server; \
         the gateway's memory and CPU in the server rows, Redis' on their own), published \
         via {}, gateway settings default{}; targeted publishes one notification per call, \
         evenly spaced (publish lag: how late calls started). Server CPU from /proc \
         (utime + stime, 10 ms ticks) over publishing and draining.",
        a.connections,
        a.payload_size,
        a.rounds,
        format!("{:?}", a.via).to_lowercase(),
        if a.gateway_args.is_empty() {
            String::new()
        } else {
            format!(" except {}", a.gateway_args.join(" "))
        }
    );
    for (name, spec) in servers
        .iter()
        .filter_map(|s| Some((&s.name, s.spec.as_ref()?)))
    {
        let _ = writeln!(out, "Variant `{name}`: `--variant '{spec}'`.");
    }
    if let Some(n) = nchan_note {
        let _ = writeln!(out, "{n}");
    }
    for f in res.failures.iter().chain(&res.incorrect) {
        let _ = writeln!(out, "- {f}");
    }
    out
}

/// Runs the comparison and prints its table.
pub async fn run(a: &CompareArgs) -> Result<Comparison> {
    a.validate()?;
    let servers = a.servers()?;
    if let Some(dir) = &a.json_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut res = Results::default();
    let mut nchan_note = None;
    for round in 1..=a.rounds {
        for job in a.jobs(&servers, round)? {
            match job {
                Job::Run {
                    server,
                    which,
                    scenario,
                } => {
                    let name = &servers[server].name;
                    let what = format!("round {round}/{}: {} {name}", a.rounds, which.name());
                    eprintln!("{what} ...");
                    match crate::scenario::run(&scenario).await {
                        Ok(r) => {
                            eprintln!("{what}: {}", one_line(&r));
                            if !r.correct {
                                res.incorrect
                                    .push(format!("{what} was not correct:\n{}", r.table()));
                            }
                            if name == "nchan"
                                && let Some(n) = r.notes.iter().find(|n| n.starts_with("Nchan "))
                            {
                                // "Nchan 1.3.6 (nginx version: ...; 1 worker(s), memory store)".
                                let head = n.find("):").map_or(n.as_str(), |i| &n[..=i]);
                                nchan_note = Some(format!(
                                    "{head}, Nchan's defaults otherwise (a 10-message buffer per \
                                     channel kept 1 h, no WebSocket pings){}.",
                                    {
                                        let extra: Vec<&str> = a
                                            .nchan
                                            .nginx_directives
                                            .iter()
                                            .chain(&a.nchan.nchan_directives)
                                            .map(String::as_str)
                                            .collect();
                                        if extra.is_empty() {
                                            String::new()
                                        } else {
                                            format!(" except as set by: {}", extra.join("; "))
                                        }
                                    }
                                ));
                            }
                            res.reports.entry((server, which)).or_default().push(r);
                        }
                        Err(e) => {
                            eprintln!("{what}: FAILED: {e:#}");
                            res.failures.push(format!("{what} failed: {e:#}"));
                        }
                    }
                }
                Job::Floor(f) => {
                    let what = format!("round {round}/{}: floor {:?}", a.rounds, f.mode);
                    eprintln!("{what} ...");
                    match crate::floor::run(&f).await {
                        Ok(r) => {
                            eprintln!("{what}: {:.2} us per write", r.us_per_write);
                            let which = match f.mode {
                                FloorMode::Fanout => Which::Fanout,
                                FloorMode::Relay => Which::Targeted,
                            };
                            res.floors.entry(which).or_default().push(r);
                        }
                        Err(e) => {
                            eprintln!("{what}: FAILED: {e:#}");
                            res.failures.push(format!("{what} failed: {e:#}"));
                        }
                    }
                }
            }
        }
    }
    let (columns, rows) = table(a, &servers, &res);
    let md = markdown(a, &servers, &columns, &rows, &res, nchan_note.as_deref());
    print!("{md}");
    let out = Comparison {
        columns,
        rows,
        failures: res.failures.clone(),
        correct: res.failures.is_empty() && res.incorrect.is_empty(),
        markdown: md,
    };
    if let Some(dir) = &a.json_dir {
        let json = serde_json::json!({ "args": a, "comparison": &out });
        std::fs::write(
            dir.join("compare.json"),
            serde_json::to_string_pretty(&json)?,
        )
        .context("cannot write compare.json")?;
        std::fs::write(dir.join("compare.md"), &out.markdown).context("cannot write compare.md")?;
    }
    Ok(out)
}

fn one_line(r: &Report) -> String {
    let g = r.gateway.as_ref();
    let mut s = format!(
        "{} connected, correct: {}",
        r.connections.connected,
        if r.correct { "yes" } else { "NO" }
    );
    if let Some(g) = g {
        let _ = write!(s, ", RSS {:.0} B/conn", g.rss_per_connection_bytes);
        if let Some(x) = g.cpu_us_per_delivery {
            let _ = write!(s, ", {x:.2} us/delivery");
        }
    }
    if r.latency_us.count > 0 {
        let _ = write!(
            s,
            ", p50 {} us, p99 {} us",
            r.latency_us.p50, r.latency_us.p99
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Result<CompareArgs> {
        let mut full = vec!["loadtest", "compare"];
        full.extend_from_slice(extra);
        match Cli::try_parse_from(full)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .scenario
        {
            Scenario::Compare(a) => Ok(a),
            _ => bail!("not compare"),
        }
    }

    #[test]
    fn columns_and_variants() {
        let a = args(&[
            "--spawn-gateway",
            "gw",
            "--variant",
            "threads-1=--worker-threads 1",
            "--variant",
            "before@/tmp/old-gateway",
        ]);
        let a = a.unwrap_or_else(|e| panic!("{e}"));
        let servers = a.servers().unwrap_or_default();
        let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["tidings", "threads-1", "before", "nchan"]);
        assert!(
            servers[1]
                .args
                .contains(&"--gateway-arg=--worker-threads".to_owned())
        );
        assert!(servers[1].args.contains(&"--gateway-arg=1".to_owned()));
        assert!(servers[2].args.contains(&"/tmp/old-gateway".to_owned()));
        // 3 scenarios x 4 servers + 2 floors.
        assert_eq!(a.jobs(&servers, 1).map(|j| j.len()).unwrap_or(0), 14);
        assert!(a.validate().is_ok());
        assert!(args(&["--variant", "x=--a"]).is_ok_and(|a| a.validate().is_err()));
        assert!(args(&["--columns", "nchan,floor"]).is_ok_and(|a| a.validate().is_ok()));
        assert!(args(&["--columns", "nchan", "-n", "50000"]).is_ok_and(|a| a.validate().is_err()));
        assert!(
            args(&["--spawn-gateway", "gw", "--variant", "nchan=--x"])
                .is_ok_and(|a| a.validate().is_err())
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(range(&[], 1, " us"), "-");
        assert_eq!(range(&[1.0, 1.04], 1, " us"), "1.0 us");
        assert_eq!(range(&[3.5, 3.9, 3.7], 1, " KiB"), "3.5-3.9 KiB");
    }
}
