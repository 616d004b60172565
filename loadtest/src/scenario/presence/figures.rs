//! What the presence scenario reports, and the readings it is computed from: CPU of
//! the gateways (/proc), of Redis (`INFO cpu`) and Redis' script calls
//! (`INFO commandstats`) at the edges of each phase, Redis memory, the gateways'
//! presence metrics.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use tokio::time::Instant;

use crate::diff;
use crate::launch::redis_info;
use crate::procfs::{self, Sample};
use crate::stats::Percentiles;

/// Readings at one moment.
#[derive(Debug, Clone)]
pub struct Mark {
    pub at: Instant,
    pub gateway: Option<Sample>,
    pub loadtest: Option<Sample>,
    /// Redis' `used_cpu_sys + used_cpu_user`, microseconds.
    pub redis_cpu_us: u64,
    /// `EVALSHA` + `EVAL` calls and their time (`INFO commandstats`).
    pub scripts: u64,
    pub script_us: u64,
    /// `PUBLISH` + `SPUBLISH` calls (the scripts' presence diffs among them).
    pub publishes: u64,
    /// Presence diffs the members received so far.
    pub seen: diff::Seen,
    pub joins: u64,
    pub leaves: u64,
}

/// `calls` and `usec` of one `cmdstat_*` line.
fn cmdstat(stats: &BTreeMap<String, String>, cmd: &str) -> (u64, u64) {
    let Some(v) = stats.get(&format!("cmdstat_{cmd}")) else {
        return (0, 0);
    };
    let field = |name: &str| {
        v.split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("calls"), field("usec"))
}

/// Redis' CPU (user + system) so far, microseconds.
pub async fn redis_cpu_us(conn: &mut MultiplexedConnection) -> Result<u64> {
    let cpu = redis_info(conn, "cpu").await?;
    let get = |k: &str| {
        cpu.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(((get("used_cpu_sys") + get("used_cpu_user")) * 1e6) as u64)
}

impl Mark {
    #[allow(clippy::too_many_arguments)]
    pub async fn take(
        conn: &mut MultiplexedConnection,
        gateway: Option<Sample>,
        loadtest: Option<Sample>,
        seen: diff::Seen,
        joins: u64,
        leaves: u64,
    ) -> Result<Mark> {
        let at = Instant::now();
        let redis_cpu_us = redis_cpu_us(conn).await?;
        let stats = redis_info(conn, "commandstats").await?;
        let (evalsha, evalsha_us) = cmdstat(&stats, "evalsha");
        let (eval, eval_us) = cmdstat(&stats, "eval");
        let (publish, _) = cmdstat(&stats, "publish");
        let (spublish, _) = cmdstat(&stats, "spublish");
        Ok(Mark {
            at,
            gateway,
            loadtest,
            redis_cpu_us,
            scripts: evalsha + eval,
            script_us: evalsha_us + eval_us,
            publishes: publish + spublish,
            seen,
            joins,
            leaves,
        })
    }
}

/// What happened between two marks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    pub secs: f64,
    pub joins: u64,
    pub leaves: u64,
    pub gateway_cpu_us: u64,
    pub gateway_cpu_percent: f64,
    pub redis_cpu_us: u64,
    pub redis_cpu_percent: f64,
    pub loadtest_cpu_percent: f64,
    pub redis_scripts: u64,
    /// Time Redis spent in those scripts (commandstats), microseconds.
    pub redis_script_us: u64,
    pub redis_publishes: u64,
    /// `presence_diff` frames (and bytes) all members received.
    pub diff_frames: u64,
    pub diff_bytes: u64,
}

impl Window {
    pub fn between(a: &Mark, b: &Mark) -> Window {
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let wall = (secs * 1e6).max(1.0);
        let (gateway_cpu_us, gateway_cpu_percent) = match (&a.gateway, &b.gateway) {
            (Some(x), Some(y)) => procfs::cpu_between(x, y),
            _ => (0, 0.0),
        };
        let loadtest_cpu_percent = match (&a.loadtest, &b.loadtest) {
            (Some(x), Some(y)) => procfs::cpu_between(x, y).1,
            _ => 0.0,
        };
        let redis_cpu_us = b.redis_cpu_us.saturating_sub(a.redis_cpu_us);
        Window {
            secs,
            joins: b.joins - a.joins,
            leaves: b.leaves - a.leaves,
            gateway_cpu_us,
            gateway_cpu_percent,
            redis_cpu_us,
            redis_cpu_percent: redis_cpu_us as f64 * 100.0 / wall,
            loadtest_cpu_percent,
            redis_scripts: b.scripts.saturating_sub(a.scripts),
            redis_script_us: b.script_us.saturating_sub(a.script_us),
            redis_publishes: b.publishes.saturating_sub(a.publishes),
            diff_frames: b.seen.frames.saturating_sub(a.seen.frames),
            diff_bytes: b.seen.bytes.saturating_sub(a.seen.bytes),
        }
    }

    /// Gateway CPU per second, microseconds.
    pub fn gateway_rate(&self) -> f64 {
        self.gateway_cpu_us as f64 / self.secs.max(1e-6)
    }

    pub fn redis_rate(&self) -> f64 {
        self.redis_cpu_us as f64 / self.secs.max(1e-6)
    }
}

/// The churn phase's cost per join or leave.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChurnCost {
    pub window: Window,
    /// Joins + leaves sent in the window (subscribes and unsubscribes).
    pub changes: u64,
    pub changes_per_sec: f64,
    /// Gateway CPU (all gateways) per join or leave, microseconds.
    pub gateway_us_per_change: f64,
    /// The same above the baseline's idle CPU.
    pub gateway_us_per_change_above_idle: f64,
    pub redis_us_per_change: f64,
    pub redis_us_per_change_above_idle: f64,
    pub scripts_per_change: f64,
    /// Redis time per script call (commandstats), microseconds.
    pub script_us_per_call: f64,
    pub diff_frames_per_sec: f64,
    /// Gateway CPU above idle per presence_diff frame delivered, microseconds.
    pub gateway_us_per_diff_frame: Option<f64>,
}

impl ChurnCost {
    pub fn new(window: Window, baseline: &Window) -> ChurnCost {
        let changes = window.joins + window.leaves;
        let per = |v: f64| v / changes.max(1) as f64;
        let above_gw = window.gateway_cpu_us as f64 - baseline.gateway_rate() * window.secs;
        let above_redis = window.redis_cpu_us as f64 - baseline.redis_rate() * window.secs;
        ChurnCost {
            changes,
            changes_per_sec: changes as f64 / window.secs.max(1e-6),
            gateway_us_per_change: per(window.gateway_cpu_us as f64),
            gateway_us_per_change_above_idle: per(above_gw),
            redis_us_per_change: per(window.redis_cpu_us as f64),
            redis_us_per_change_above_idle: per(above_redis),
            scripts_per_change: per(window.redis_scripts as f64),
            script_us_per_call: window.redis_script_us as f64 / window.redis_scripts.max(1) as f64,
            diff_frames_per_sec: window.diff_frames as f64 / window.secs.max(1e-6),
            gateway_us_per_diff_frame: (window.diff_frames > 0)
                .then(|| above_gw / window.diff_frames as f64),
            window,
        }
    }
}

/// Filling the channel.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Populate {
    pub members: u64,
    pub connect_secs: f64,
    pub connects_per_sec: f64,
    /// From the last member's subscribe reply until `presence_stats` counted every
    /// member (`None`: not within --list-within).
    pub counted_after_secs: Option<f64>,
    /// What `presence_stats` said last.
    pub counted_clients: u64,
    pub counted_users: u64,
    /// Listing every member in pages of 1,000 through the API.
    pub list_all_secs: f64,
    pub list_pages: u64,
    pub listed_distinct: u64,
    /// Gateway and Redis CPU from before the first connect until the join events
    /// stopped, per member.
    pub gateway_cpu_us_per_member: f64,
    pub redis_cpu_us_per_member: f64,
    pub secs_until_quiet: f64,
    /// presence_diff frames and bytes all members received while filling.
    pub diff_frames: u64,
    pub diff_bytes: u64,
}

/// Redis memory for the channel's presence.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedisMemory {
    /// `used_memory` before the members connected, and after.
    pub used_before: u64,
    pub used_after: u64,
    pub bytes_per_member: f64,
    /// The channel's presence keys (`MEMORY USAGE ... SAMPLES 0`, summed).
    pub channel_keys: u64,
    pub channel_key_bytes: u64,
    pub channel_bytes_per_member: f64,
    /// A member's online-status keys (online set and last-seen), averaged over a sample.
    pub online_bytes_per_user: f64,
    /// The rest of the growth per member (its personal channel's subscription, buffers).
    pub other_bytes_per_member: f64,
    pub keys_before: u64,
    pub keys_after: u64,
}

/// The joins and leaves the sample subscribers saw, against the churn.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffCheck {
    pub events: bool,
    pub samples: u64,
    /// Churn joins and leaves sent over the whole run (each should be announced
    /// once to every sample subscriber).
    pub churn_joins: u64,
    pub churn_leaves: u64,
    pub samples_exact: u64,
    pub min_joins_seen: u64,
    pub max_joins_seen: u64,
    pub min_leaves_seen: u64,
    pub max_leaves_seen: u64,
    /// Member joins the samples saw (each saw those that came after it).
    pub member_joins_seen: u64,
    /// Leaves of members (none leave: must be 0).
    pub member_leaves_seen: u64,
    pub inconsistent: u64,
    pub unreadable: u64,
    /// From the end of the churn until every sample had every leave.
    pub waited_secs: f64,
    pub ok: bool,
}

/// One kind of request's replies.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueryFigures {
    pub name: String,
    pub latency_us: Percentiles,
    pub errors: u64,
    pub rate_limited: u64,
    pub short_pages: u64,
    pub notes: Vec<String>,
}

/// A gateway's refresh passes (`tidings_presence_refresh_seconds`) while the
/// channel was full.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Refresh {
    pub passes: u64,
    pub mean_ms: f64,
    /// The smallest histogram bound holding every pass, ms (`None`: above 5 s).
    pub max_bound_ms: Option<f64>,
}

/// Everything the presence scenario measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PresenceReport {
    pub channel: String,
    pub rule: String,
    pub gateways: u64,
    pub members: u64,
    pub churn_users: u64,
    /// Churn users in the channel at any time.
    pub held: u64,
    /// When each phase started, seconds from the start of the run.
    pub phases: BTreeMap<String, f64>,
    pub populate: Populate,
    pub memory: RedisMemory,
    pub baseline: Window,
    pub churn: ChurnCost,
    pub query_window: Window,
    /// Gateway and Redis CPU per request above the churn's, over the query window.
    pub gateway_us_per_query: f64,
    pub redis_us_per_query: f64,
    pub queries: Vec<QueryFigures>,
    pub subscribe_us: Percentiles,
    pub unsubscribe_us: Percentiles,
    /// Subscribe sent -> the joiner's own join in a presence_diff.
    pub join_seen_us: Percentiles,
    /// Unsubscribe sent -> the leave seen by another churn user (grace included).
    pub leave_seen_us: Percentiles,
    pub leaves_unseen_before_rejoin: u64,
    pub skipped_joins: u64,
    pub churn_errors: u64,
    pub churn_closed: u64,
    pub check: DiffCheck,
    pub refresh: Vec<Refresh>,
    /// Presence metrics of the gateways, summed, at the end.
    pub gateway_metrics: BTreeMap<String, f64>,
    /// Redis SLOWLOG entries of the run (duration us, command).
    pub slowlog: Vec<String>,
    pub notes: Vec<String>,
}

fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1} ms", v as f64 / 1000.0)
    } else {
        format!("{v} us")
    }
}

fn p5099(p: &Percentiles) -> String {
    format!(
        "p50 {}  p99 {}  max {}  (n={})",
        us(p.p50),
        us(p.p99),
        us(p.max),
        p.count
    )
}

impl PresenceReport {
    /// Rows of the summary table.
    pub fn rows(&self, rows: &mut Vec<(String, String)>) {
        let mut add = |k: &str, v: String| rows.push((k.to_owned(), v));
        add(
            "presence",
            format!(
                "`{}` on {} gateway(s), {} members, {} churn users ({} in at a time)",
                self.rule, self.gateways, self.members, self.churn_users, self.held
            ),
        );
        let p = &self.populate;
        add(
            "populate",
            format!(
                "{} members subscribed in {:.2} s ({:.0}/s); counted {} after {}; gateway {:.1} us + Redis {:.1} us CPU per member",
                p.members,
                p.connect_secs,
                p.connects_per_sec,
                p.counted_clients,
                p.counted_after_secs
                    .map_or("NOT in time".to_owned(), |s| format!("{:.3} s", s)),
                p.gateway_cpu_us_per_member,
                p.redis_cpu_us_per_member
            ),
        );
        add(
            "populate diffs",
            format!(
                "{} presence_diff frames, {:.1} MiB to all members until quiet ({:.1} s)",
                p.diff_frames,
                p.diff_bytes as f64 / 1048576.0,
                p.secs_until_quiet
            ),
        );
        add(
            "list all",
            format!(
                "{} distinct members in {} API pages of 1,000 in {:.1} ms",
                p.listed_distinct,
                p.list_pages,
                p.list_all_secs * 1000.0
            ),
        );
        let m = &self.memory;
        add(
            "redis memory",
            format!(
                "used_memory {:.1} -> {:.1} MiB: {:.0} bytes per member (channel keys {:.0}, online status {:.0}, other {:.0})",
                m.used_before as f64 / 1048576.0,
                m.used_after as f64 / 1048576.0,
                m.bytes_per_member,
                m.channel_bytes_per_member,
                m.online_bytes_per_user,
                m.other_bytes_per_member
            ),
        );
        let b = &self.baseline;
        add(
            "baseline",
            format!(
                "{:.1} s idle: gateways {:.2}% of a core, Redis {:.2}%, {} scripts",
                b.secs, b.gateway_cpu_percent, b.redis_cpu_percent, b.redis_scripts
            ),
        );
        let c = &self.churn;
        let w = &c.window;
        add(
            "churn",
            format!(
                "{} joins + {} leaves in {:.1} s = {:.1}/s; gateways {:.1}%, Redis {:.1}%, loadtest {:.1}% of a core",
                w.joins,
                w.leaves,
                w.secs,
                c.changes_per_sec,
                w.gateway_cpu_percent,
                w.redis_cpu_percent,
                w.loadtest_cpu_percent
            ),
        );
        add(
            "cost per join/leave",
            format!(
                "gateways {:.0} us ({:.0} above idle), Redis {:.0} us ({:.0} above idle); {:.2} scripts of {:.0} us each",
                c.gateway_us_per_change,
                c.gateway_us_per_change_above_idle,
                c.redis_us_per_change,
                c.redis_us_per_change_above_idle,
                c.scripts_per_change,
                c.script_us_per_call
            ),
        );
        let mut diffs = format!(
            "{} frames to all members ({:.0}/s, {:.1} MiB)",
            w.diff_frames,
            c.diff_frames_per_sec,
            w.diff_bytes as f64 / 1048576.0
        );
        if let Some(x) = c.gateway_us_per_diff_frame {
            let _ = write!(diffs, "; {x:.1} us of gateway CPU per frame above idle");
        }
        add("churn diffs", diffs);
        add("subscribe", p5099(&self.subscribe_us));
        add("unsubscribe", p5099(&self.unsubscribe_us));
        if self.join_seen_us.count > 0 {
            add("join seen (by joiner)", p5099(&self.join_seen_us));
            add("leave seen (w/ grace)", p5099(&self.leave_seen_us));
        }
        for q in &self.queries {
            let mut v = p5099(&q.latency_us);
            if q.errors + q.rate_limited + q.short_pages > 0 {
                let _ = write!(
                    v,
                    "; {} errors, {} rate limited, {} short pages {:?}",
                    q.errors, q.rate_limited, q.short_pages, q.notes
                );
            }
            add(&q.name, v);
        }
        let est = |v: f64| {
            if v > 0.0 {
                format!("{v:.0} us")
            } else {
                "below the noise".to_owned()
            }
        };
        add(
            "cost per query",
            format!(
                "gateways {}, Redis {} (the query window's CPU above the churn's rate, all kinds together; an estimate)",
                est(self.gateway_us_per_query),
                est(self.redis_us_per_query)
            ),
        );
        let k = &self.check;
        if k.events {
            add(
                "diff check",
                format!(
                    "{} of {} samples saw all {} churn joins and {} leaves exactly (joins {}..{}, leaves {}..{}); {} member leaves, {} inconsistent, {} unreadable; waited {:.1} s",
                    k.samples_exact,
                    k.samples,
                    k.churn_joins,
                    k.churn_leaves,
                    k.min_joins_seen,
                    k.max_joins_seen,
                    k.min_leaves_seen,
                    k.max_leaves_seen,
                    k.member_leaves_seen,
                    k.inconsistent,
                    k.unreadable,
                    k.waited_secs
                ),
            );
        }
        for (i, r) in self.refresh.iter().enumerate() {
            add(
                &format!("refresh gw{i}"),
                format!(
                    "{} passes, mean {:.2} ms, all under {}",
                    r.passes,
                    r.mean_ms,
                    r.max_bound_ms
                        .map_or("5 s: NO".to_owned(), |b| format!("{b} ms"))
                ),
            );
        }
        if !self.slowlog.is_empty() {
            add("redis slowlog", self.slowlog.join("; "));
        }
        for n in &self.notes {
            add("note", n.clone());
        }
    }
}

/// The presence metrics worth keeping, summed over the gateways' `/metrics` texts.
pub fn metrics_of(texts: &[String]) -> BTreeMap<String, f64> {
    const KEEP: &[&str] = &[
        "tidings_presence_members",
        "tidings_presence_pending",
        "tidings_presence_joins_total",
        "tidings_presence_leaves_total",
        "tidings_presence_failures_total",
        "tidings_presence_refused_total",
        "tidings_presence_queries_total",
        "tidings_messages_dropped_total",
        "tidings_connections",
        "tidings_history_reads_limited_total",
    ];
    let mut out = BTreeMap::new();
    for text in texts {
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = l.rsplit_once(' ') else {
                continue;
            };
            let base = name.split('{').next().unwrap_or(name);
            if KEEP.contains(&base)
                && let Ok(v) = value.parse::<f64>()
            {
                *out.entry(name.to_owned()).or_insert(0.0) += v;
            }
        }
    }
    out
}

/// `tidings_presence_refresh_seconds`: (count, sum, buckets as (le, count)).
pub fn refresh_histogram(text: &str) -> (u64, f64, Vec<(f64, u64)>) {
    let name = "tidings_presence_refresh_seconds";
    let mut count = 0;
    let mut sum = 0.0;
    let mut buckets = Vec::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((k, v)) = l.rsplit_once(' ') else {
            continue;
        };
        if k == format!("{name}_count") {
            count = v.parse::<f64>().unwrap_or(0.0) as u64;
        } else if k == format!("{name}_sum") {
            sum = v.parse().unwrap_or(0.0);
        } else if let Some(le) = k
            .strip_prefix(&format!("{name}_bucket{{le=\""))
            .and_then(|r| r.strip_suffix("\"}"))
        {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            buckets.push((le, v.parse::<f64>().unwrap_or(0.0) as u64));
        }
    }
    (count, sum, buckets)
}

/// The refresh passes between two scrapes of one gateway.
pub fn refresh_between(a: &str, b: &str) -> Refresh {
    let (c0, s0, b0) = refresh_histogram(a);
    let (c1, s1, b1) = refresh_histogram(b);
    let passes = c1.saturating_sub(c0);
    let max_bound_ms = b1
        .iter()
        .map(|(le, n)| {
            let before = b0.iter().find(|(l, _)| l == le).map_or(0, |(_, n)| *n);
            (*le, n.saturating_sub(before))
        })
        .filter(|(le, n)| le.is_finite() && *n >= passes)
        .map(|(le, _)| le * 1000.0)
        .reduce(f64::min);
    Refresh {
        passes,
        mean_ms: if passes > 0 {
            (s1 - s0) * 1000.0 / passes as f64
        } else {
            0.0
        },
        max_bound_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read() {
        let a = "# HELP x\ntidings_presence_refresh_seconds_bucket{le=\"0.001\"} 1\n\
                 tidings_presence_refresh_seconds_bucket{le=\"0.005\"} 2\n\
                 tidings_presence_refresh_seconds_bucket{le=\"+Inf\"} 2\n\
                 tidings_presence_refresh_seconds_sum 0.003\n\
                 tidings_presence_refresh_seconds_count 2\n\
                 tidings_presence_members 7\n";
        let b = "tidings_presence_refresh_seconds_bucket{le=\"0.001\"} 1\n\
                 tidings_presence_refresh_seconds_bucket{le=\"0.005\"} 3\n\
                 tidings_presence_refresh_seconds_bucket{le=\"0.01\"} 4\n\
                 tidings_presence_refresh_seconds_bucket{le=\"+Inf\"} 4\n\
                 tidings_presence_refresh_seconds_sum 0.015\n\
                 tidings_presence_refresh_seconds_count 4\n\
                 tidings_presence_members 3\n";
        let r = refresh_between(a, b);
        assert_eq!(r.passes, 2);
        assert!((r.mean_ms - 6.0).abs() < 1e-9);
        assert_eq!(r.max_bound_ms, Some(10.0));
        let m = metrics_of(&[a.to_owned(), b.to_owned()]);
        assert_eq!(m.get("tidings_presence_members"), Some(&10.0));
        let mut stats = BTreeMap::new();
        stats.insert(
            "cmdstat_evalsha".to_owned(),
            "calls=12,usec=340,usec_per_call=28.33,rejected_calls=0,failed_calls=0".to_owned(),
        );
        assert_eq!(cmdstat(&stats, "evalsha"), (12, 340));
        assert_eq!(cmdstat(&stats, "eval"), (0, 0));
    }
}
