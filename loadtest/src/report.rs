//! The result of a run: one serializable [`Report`], printed as a summary table and
//! written as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::pool::Timeline;
use crate::procfs::Machine;
use crate::stats::Percentiles;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// The server under test: `tidings`, or `nchan` (then `gateway` holds nginx's
    /// master and worker processes).
    pub server: crate::cli::ServerKind,
    pub label: Option<String>,
    /// The scenario's options as given.
    pub params: serde_json::Value,
    pub machine: Machine,
    pub started_unix_ms: u64,
    pub duration_secs: f64,
    pub connections: Connections,
    pub delivery: Option<Delivery>,
    /// Publish-to-delivery latency, microseconds.
    pub latency_us: Percentiles,
    /// Time of each publish call (SDK pipeline or HTTP request), microseconds.
    pub publish_call_us: Option<Percentiles>,
    /// How late each publish call started after its message was due,
    /// microseconds (how evenly the publisher kept to its schedule).
    pub publish_lag_us: Option<Percentiles>,
    /// The server's cost: the gateways', or nginx's (master and workers) with Nchan.
    pub gateway: Option<GatewayCost>,
    pub redis: Option<ProcessCost>,
    pub loadtest: Option<ProcessCost>,
    pub storm: Option<Storm>,
    pub recovery: Option<Recovery>,
    pub chaos: Option<crate::scenario::chaos::ChaosReport>,
    pub presence: Option<crate::scenario::presence::figures::PresenceReport>,
    pub unexpected_closes: u64,
    pub close_reasons: BTreeMap<String, u64>,
    pub pings_answered: u64,
    /// WebSocket pings the clients received (and answered with pongs).
    pub ws_pings: u64,
    pub bad_frames: u64,
    pub timeline: Vec<Point>,
    pub notes: Vec<String>,
    /// Nothing lost, duplicated or out of order among the clients expected to get
    /// everything, every connection made, none closed unexpectedly.
    pub correct: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Connections {
    pub requested: u64,
    pub connected: u64,
    pub failed: u64,
    pub source_addresses: u64,
    pub processes: u64,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    /// Time of one connection (TCP, upgrade, welcome, subscribe), microseconds.
    pub connect_us: Percentiles,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    pub published: u64,
    pub publish_failed: u64,
    pub unrouted: u64,
    /// Deliveries expected: published messages times their recipients.
    pub expected: u64,
    /// Message frames received (including duplicates).
    pub received: u64,
    pub unique: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Unique deliveries beyond the expected (should be 0).
    pub unexpected: u64,
    pub window_secs: f64,
    pub deliveries_per_sec: f64,
    pub publish_errors: Vec<String>,
}

impl Delivery {
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.out_of_order == 0 && self.unexpected == 0
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayCost {
    pub pids: Vec<u32>,
    pub rss_before_bytes: u64,
    pub rss_connected_bytes: u64,
    pub rss_end_bytes: u64,
    /// (RSS with the connections - RSS before) / connections.
    pub rss_per_connection_bytes: f64,
    /// CPU over the measured phase (publishing and draining, or holding).
    pub cpu_us: u64,
    pub cpu_percent: f64,
    pub cpu_us_per_delivery: Option<f64>,
    /// CPU while only holding the connections (idle).
    pub idle_cpu_percent: Option<f64>,
    /// CPU over the connect phase, per connection.
    pub cpu_us_per_connect: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessCost {
    pub pids: Vec<u32>,
    pub cpu_us: u64,
    pub cpu_percent: f64,
    pub cpu_us_per_delivery: Option<f64>,
    /// (RSS with the connections - RSS before) / connections (idle: Redis' share
    /// of a gateway connection, its subscriptions).
    pub rss_per_connection_bytes: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Storm {
    pub dropped: u64,
    pub reconnected: u64,
    pub failed: u64,
    /// From the drop to the last client's welcome and subscription.
    pub secs: f64,
    pub reconnects_per_sec: f64,
    /// From the drop to each client being back, microseconds.
    pub reconnect_us: Percentiles,
    pub errors: Vec<String>,
    /// The broadcast check after the storm.
    pub probe: Delivery,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Recovery {
    pub steady_clients: u64,
    pub dropped_clients: u64,
    pub stream_messages: u64,
    /// Messages published from the drop command until the last client was back
    /// (an upper bound of what each dropped client can have missed).
    pub published_while_away: u64,
    /// From all clients gone to all back.
    pub gap_secs: f64,
    pub reconnected: u64,
    pub reconnect_secs: f64,
    /// Subscribes that carried `since {offset, epoch}` (needs offsets in messages).
    pub since_sent: u64,
    pub recovered_true: u64,
    pub recovered_false: u64,
    pub recovered_absent: u64,
    /// Deliveries the dropped clients missed (the gap, unless the gateway replays it).
    pub lost_during_gap: u64,
    pub dropped_duplicates: u64,
    pub dropped_out_of_order: u64,
    /// The clients that stayed connected (must get everything).
    pub steady: Delivery,
    pub verdict: String,
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Point {
    pub t: u64,
    pub deliveries: u64,
    pub connects: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Seconds from the start of the run -> per-second figures.
pub fn points(t: &Timeline, start_unix_ms: u64) -> Vec<Point> {
    let start = start_unix_ms / 1000;
    t.iter()
        .map(|(sec, b)| {
            let s = b.latency.summary();
            Point {
                t: sec.saturating_sub(start),
                deliveries: b.deliveries,
                connects: b.connects,
                p50_us: s.p50,
                p90_us: s.p90,
                p99_us: s.p99,
                p999_us: s.p999,
                max_us: s.max,
            }
        })
        .collect()
}

fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1} ms", v as f64 / 1000.0)
    } else {
        format!("{v} us")
    }
}

fn pct(p: &Percentiles) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        us(p.p50),
        us(p.p90),
        us(p.p99),
        us(p.p999),
        us(p.max),
        p.count
    )
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn delivery_rows(rows: &mut Vec<(String, String)>, prefix: &str, d: &Delivery) {
    rows.push((
        format!("{prefix}published"),
        format!(
            "{} ok, {} failed, {} unrouted",
            d.published, d.publish_failed, d.unrouted
        ),
    ));
    rows.push((
        format!("{prefix}deliveries"),
        format!(
            "{} expected, {} received, {} unique, {} lost, {} duplicated, {} out of order",
            d.expected, d.received, d.unique, d.lost, d.duplicated, d.out_of_order
        ),
    ));
    if d.window_secs > 0.0 {
        rows.push((
            format!("{prefix}deliveries/s"),
            format!("{:.0} (over {:.1} s)", d.deliveries_per_sec, d.window_secs),
        ));
    }
}

impl Report {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let title = match &self.label {
            Some(l) => format!("{} ({l})", self.scenario),
            None => self.scenario.clone(),
        };
        rows.push(("scenario".into(), title));
        let server = match self.server {
            crate::cli::ServerKind::Tidings => "gateway",
            crate::cli::ServerKind::Nchan => "nginx",
        };
        if self.server == crate::cli::ServerKind::Nchan {
            rows.push((
                "server".into(),
                "nchan (nginx master and workers measured)".into(),
            ));
        }
        rows.push((
            "machine".into(),
            format!(
                "{} cpus, {} MiB, kernel {}",
                self.machine.nproc, self.machine.mem_total_mib, self.machine.kernel
            ),
        ));
        let c = &self.connections;
        rows.push((
            "connections".into(),
            format!(
                "{}/{} connected, {} failed, {} source addresses, {} process(es)",
                c.connected, c.requested, c.failed, c.source_addresses, c.processes
            ),
        ));
        rows.push((
            "connect rate".into(),
            format!("{:.0}/s ({:.2} s)", c.connects_per_sec, c.connect_secs),
        ));
        rows.push(("connect time".into(), pct(&c.connect_us)));
        if let Some(d) = &self.delivery {
            delivery_rows(&mut rows, "", d);
        }
        if self.latency_us.count > 0 {
            rows.push(("latency".into(), pct(&self.latency_us)));
        }
        if let Some(p) = &self.publish_call_us {
            rows.push(("publish call".into(), pct(p)));
        }
        if let Some(p) = &self.publish_lag_us {
            rows.push(("publish lag".into(), pct(p)));
        }
        if let Some(g) = &self.gateway {
            rows.push((
                format!("{server} rss"),
                format!(
                    "{} before, {} connected, {} at end; {:.0} bytes ({:.2} KiB) per connection",
                    mib(g.rss_before_bytes),
                    mib(g.rss_connected_bytes),
                    mib(g.rss_end_bytes),
                    g.rss_per_connection_bytes,
                    g.rss_per_connection_bytes / 1024.0
                ),
            ));
            let mut cpu = format!("{:.1}% of a core over the measured phase", g.cpu_percent);
            if let Some(x) = g.cpu_us_per_delivery {
                let _ = write!(cpu, "; {x:.2} us per delivery");
            }
            if let Some(x) = g.idle_cpu_percent {
                let _ = write!(cpu, "; idle {x:.3}% of a core");
            }
            if let Some(x) = g.cpu_us_per_connect {
                let _ = write!(cpu, "; {x:.1} us per connect");
            }
            rows.push((format!("{server} cpu"), cpu));
        }
        if let Some(r) = &self.redis {
            let mut s = format!("{:.1}% of a core", r.cpu_percent);
            if let Some(x) = r.cpu_us_per_delivery {
                let _ = write!(s, "; {x:.2} us per delivery");
            }
            if let Some(x) = r.rss_per_connection_bytes {
                let _ = write!(s, "; rss {x:.0} bytes per connection");
            }
            rows.push(("redis cpu".into(), s));
        }
        if let Some(r) = &self.loadtest {
            rows.push((
                "loadtest cpu".into(),
                format!("{:.1}% of a core", r.cpu_percent),
            ));
        }
        if let Some(s) = &self.storm {
            rows.push((
                "storm".into(),
                format!(
                    "{} dropped, {} back, {} failed in {:.2} s = {:.0} reconnects/s",
                    s.dropped, s.reconnected, s.failed, s.secs, s.reconnects_per_sec
                ),
            ));
            rows.push(("reconnect time".into(), pct(&s.reconnect_us)));
            delivery_rows(&mut rows, "probe ", &s.probe);
        }
        if let Some(r) = &self.recovery {
            rows.push((
                "recovery".into(),
                format!(
                    "{} steady + {} dropped clients; {} of {} messages published while away ({:.2} s gap)",
                    r.steady_clients, r.dropped_clients, r.published_while_away, r.stream_messages, r.gap_secs
                ),
            ));
            rows.push((
                "resume".into(),
                format!(
                    "since sent {}, recovered true {}, false {}, not said {}",
                    r.since_sent, r.recovered_true, r.recovered_false, r.recovered_absent
                ),
            ));
            rows.push((
                "lost during gap".into(),
                format!(
                    "{} deliveries ({} duplicated, {} out of order)",
                    r.lost_during_gap, r.dropped_duplicates, r.dropped_out_of_order
                ),
            ));
            delivery_rows(&mut rows, "steady ", &r.steady);
            rows.push(("verdict".into(), r.verdict.clone()));
        }
        if let Some(c) = &self.chaos {
            c.rows(&mut rows);
        }
        if let Some(p) = &self.presence {
            p.rows(&mut rows);
        }
        rows.push((
            "closes".into(),
            format!(
                "{} unexpected {:?}; {} pings answered; {} WebSocket pings; {} bad frames",
                self.unexpected_closes,
                self.close_reasons,
                self.pings_answered,
                self.ws_pings,
                self.bad_frames
            ),
        ));
        for n in &self.notes {
            rows.push(("note".into(), n.clone()));
        }
        rows.push((
            "correct".into(),
            if self.correct {
                "yes".into()
            } else {
                "NO".into()
            },
        ));
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<w$}  {v}");
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}
