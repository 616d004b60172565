//! `presence`: one channel with presence (issue 19). N members subscribe and stay;
//! churn users then join and leave at a rate while the cost per join/leave is
//! measured on the gateways and Redis; presence counts and listings are timed
//! over the WebSocket and the HTTP API; a sample of the members checks every
//! `presence_diff` they get against the churn. See `loadtest presence --help`.

mod clients;
pub mod figures;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use self::clients::{ChurnShared, Driver, Opener, Queriers, QueryKind};
use self::figures::{
    ChurnCost, DiffCheck, Mark, Populate, PresenceReport, QueryFigures, RedisMemory, Window,
};
use super::{NAMESPACE, Run};
use crate::cli::PresenceArgs;
use crate::launch;
use crate::pool::Pool;
use crate::publish::HttpApi;
use crate::report::Report;
use crate::worker::SubscribeTo;

/// The gateway arguments of the run's presence rule and timings.
fn gateway_args(a: &PresenceArgs, rule: &str) -> Vec<String> {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    vec![
        format!("--presence={rule}"),
        format!("--presence-refresh={}", d(a.presence_refresh.0)),
        format!("--presence-grace={}", d(a.presence_grace.0)),
    ]
}

/// `POST path` with a JSON body; the answer as JSON (an error unless 200).
async fn api_json(api: &HttpApi, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
    let (status, text) = api.post(path, &body.to_string()).await?;
    if status != 200 {
        bail!(
            "{path} answered HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        );
    }
    serde_json::from_str(&text).with_context(|| format!("{path}: not JSON"))
}

/// The channel's counts: (clients, users).
async fn stats(api: &HttpApi, channel: &str) -> Result<(u64, u64)> {
    let v = api_json(
        api,
        "/api/v1/presence/stats",
        serde_json::json!({"channel": channel}),
    )
    .await?;
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
    Ok((n("clients"), n("users")))
}

/// Polls the counts until they reach `want` clients; returns when, and the last counts.
async fn wait_counted(
    api: &HttpApi,
    channel: &str,
    want: u64,
    within: Duration,
) -> Result<(Option<Duration>, (u64, u64))> {
    let start = Instant::now();
    loop {
        let got = stats(api, channel).await?;
        if got.0 >= want {
            return Ok((Some(start.elapsed()), got));
        }
        if start.elapsed() >= within {
            return Ok((None, got));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every member, in pages of 1,000: (time, pages, distinct clients, the cursor
/// each page started from).
async fn list_all(
    api: &HttpApi,
    channel: &str,
) -> Result<(Duration, u64, u64, Vec<Option<String>>)> {
    let start = Instant::now();
    let mut cursor: Option<String> = None;
    let mut starts = Vec::new();
    let mut seen = HashSet::new();
    let mut pages = 0u64;
    loop {
        let mut body = serde_json::json!({"channel": channel, "limit": 1000});
        if let Some(c) = &cursor {
            body["cursor"] = c.clone().into();
        }
        starts.push(cursor.clone());
        let v = api_json(api, "/api/v1/presence", body).await?;
        pages += 1;
        for m in v
            .get("members")
            .and_then(|m| m.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(c) = m.get("client").and_then(|c| c.as_str()) {
                seen.insert(c.to_owned());
            }
        }
        match v.get("cursor").and_then(|c| c.as_str()) {
            Some(c) if Some(c) != cursor.as_deref() => cursor = Some(c.to_owned()),
            Some(_) => bail!("the listing's cursor did not move"),
            None => break,
        }
        if pages > 100_000 {
            bail!("more than 100,000 pages");
        }
    }
    Ok((start.elapsed(), pages, seen.len() as u64, starts))
}

/// Redis' `used_memory` and key count.
async fn used_memory(conn: &mut MultiplexedConnection) -> Result<(u64, u64)> {
    let mem = launch::redis_info(conn, "memory").await?;
    let used = mem
        .get("used_memory")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no used_memory in INFO memory"))?;
    let keys: u64 = redis::cmd("DBSIZE").query_async(conn).await?;
    Ok((used, keys))
}

async fn memory_usage(conn: &mut MultiplexedConnection, key: &str) -> Result<u64> {
    let v: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(conn)
        .await?;
    Ok(v.unwrap_or(0))
}

/// The channel's presence keys (every node's included) and their memory.
async fn channel_keys(conn: &mut MultiplexedConnection, channel: &str) -> Result<(u64, u64)> {
    let pattern = format!("{}*", protocol::keys::presence(NAMESPACE, channel, ""));
    let mut cursor: u64 = 0;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut bytes = 0;
    for k in &keys {
        bytes += memory_usage(conn, k).await?;
    }
    Ok((keys.len() as u64, bytes))
}

/// Average memory of a member's online-status keys, over up to 100 members.
async fn online_bytes(conn: &mut MultiplexedConnection, members: usize) -> Result<f64> {
    let step = (members / 100).max(1);
    let (mut total, mut n) = (0u64, 0u64);
    for idx in (0..members).step_by(step).take(100) {
        let personal = protocol::channel::personal(&crate::conn::user_id(idx));
        total += memory_usage(conn, &protocol::keys::online(NAMESPACE, &personal)).await?;
        total += memory_usage(conn, &protocol::keys::last_seen(NAMESPACE, &personal)).await?;
        n += 1;
    }
    Ok(total as f64 / n.max(1) as f64)
}

/// Redis SLOWLOG entries logged since `since_unix` (seconds): "duration us: command".
async fn slowlog(conn: &mut MultiplexedConnection, since_unix: u64) -> Result<Vec<String>> {
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(20)
        .query_async(conn)
        .await?;
    let int = |v: &redis::Value| match v {
        redis::Value::Int(n) => *n,
        _ => 0,
    };
    let text = |v: &redis::Value| match v {
        redis::Value::BulkString(b) => String::from_utf8_lossy(b).chars().take(40).collect(),
        redis::Value::SimpleString(s) => s.clone(),
        other => format!("{other:?}"),
    };
    let mut out = Vec::new();
    for e in entries {
        let redis::Value::Array(f) = e else { continue };
        if f.len() < 4 || (int(&f[1]) as u64) < since_unix {
            continue;
        }
        let args = match &f[3] {
            redis::Value::Array(a) => a.iter().take(3).map(text).collect::<Vec<_>>().join(" "),
            other => text(other),
        };
        out.push(format!("{} us: {args}", int(&f[2])));
    }
    Ok(out)
}

/// The gateways' `/metrics` texts.
async fn scrape(admins: &[std::net::SocketAddr]) -> Vec<String> {
    let mut out = Vec::new();
    for a in admins {
        match HttpApi::new(*a).get("/metrics").await {
            Ok((200, text)) => out.push(text),
            _ => out.push(String::new()),
        }
    }
    out
}

/// `/proc/loadavg`'s three load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The readings of this moment.
async fn mark(
    run: &Run,
    pool: &Pool,
    rc: &mut MultiplexedConnection,
    counters: &clients::Counters,
) -> Result<Mark> {
    Mark::take(
        rc,
        run.gateway_sample(),
        run.loadtest_sample(),
        pool.totals().presence,
        counters.joins.load(Ordering::Relaxed),
        counters.leaves.load(Ordering::Relaxed),
    )
    .await
}

/// Number of sample clients among `members` when every `every`-th one is.
fn sample_count(members: usize, every: usize) -> u64 {
    if every == 0 || members == 0 {
        0
    } else {
        ((members - 1) / every + 1) as u64
    }
}

pub async fn run(a: &PresenceArgs) -> Result<Report> {
    let members = a.common.connections;
    let churn_n = a.churn_users();
    let held = a.held();
    let max = a
        .max_members
        .unwrap_or((members + churn_n + 1000).min(u32::MAX as usize) as u32);
    let rule = format!(
        "{}{} max={max}",
        a.channel,
        if a.no_events { "" } else { " events" }
    );
    let mut common = a.common.clone();
    if common.spawn_gateway.is_some() {
        common.gateways.get_or_insert(2);
        let mut args = gateway_args(a, &rule);
        args.append(&mut common.gateway_args);
        common.gateway_args = args;
    }
    let mut params = serde_json::to_value(a)?;
    params["common"]["gateways"] = common.gateways.into();
    params["common"]["gateway_args"] = serde_json::to_value(&common.gateway_args)?;
    let mut run = Run::new("presence", &common, params).await?;
    if !run.env.spawned {
        run.notes.push(format!(
            "attached gateways: they must have a presence rule like `{rule}`"
        ));
    }
    let redis_url = run
        .env
        .redis_url
        .clone()
        .ok_or_else(|| anyhow!("presence needs Redis"))?;
    let mut rc = launch::redis_conn(&redis_url).await?;
    let load_start = loadavg();
    let start_unix = crate::payload::now_millis() / 1000;
    let c = &run.common;
    let opener = Opener {
        targets: run.env.targets.clone(),
        secret: run.env.secret.clone(),
        per_ip: c.per_source_ip,
        token_ttl_secs: c.max_duration.0.as_secs() + 600,
        read_buffer: c.client_read_buffer,
        timeout: c.connect_timeout.0,
    };
    let apis: Vec<Arc<HttpApi>> = run
        .env
        .targets
        .iter()
        .map(|t| Arc::new(HttpApi::with_key(t.http_addr(), &run.env.api_key)))
        .collect();
    let api = apis[0].clone();

    // This process' own connections first (not in the channel): churn users and
    // query connections, users lt-<members> and up.
    let churn_conns = opener
        .open_all(members..members + churn_n, c.concurrency)
        .await?;
    let q_first = members + churn_n;
    let query_conns = opener
        .open_all(q_first..q_first + a.query_connections, c.concurrency)
        .await?;
    let churn_sh = ChurnShared::new(&a.channel, !a.no_events);
    let mut driver = Driver::start(churn_conns, members, a.min_away(), !a.no_events, &churn_sh);
    let queriers = Queriers::start(query_conns, apis.clone());

    // Populate.
    let (mem0, keys0) = used_memory(&mut rc).await?;
    let before = run.gateway_sample();
    let r_before = figures::redis_cpu_us(&mut rc).await?;
    let mut spec = run.group_spec(SubscribeTo::Channel(a.channel.clone()), 0.0);
    let every = members.checked_div(a.sample).map_or(0, |e| e.max(1));
    spec.presence_sample_every = every;
    let samples = sample_count(members, every);
    // The members run in worker processes (two at least: a worker has one thread),
    // so that this process' runtime (churn users, query connections, timings) is
    // not held up by their diffs.
    let per_process = run.common.per_process.min(members.div_ceil(2)).max(1);
    let mut pool = run.pool_of(spec, per_process, true).await?;
    let t_pop = Instant::now();
    let mut phases = std::collections::BTreeMap::new();
    let run_start = run.start;
    let since = move |at: Instant| at.duration_since(run_start).as_secs_f64();
    phases.insert("1 populate".to_owned(), since(t_pop));
    let conn = run.connect(&mut pool).await?;
    let (counted_after, counted) = pool
        .drive(wait_counted(
            &api,
            &a.channel,
            members as u64,
            a.list_within.0.min(run.left()),
        ))
        .await??;
    if counted_after.is_none() {
        run.notes.push(format!(
            "presence_stats counted {} of {members} members after {:?}",
            counted.0, a.list_within.0
        ));
    }
    let (list_time, list_pages, listed, cursors) = pool.drive(list_all(&api, &a.channel)).await??;
    // The join events of the filling settle: no diff for a second.
    pool.wait_for(
        Duration::from_secs(60).min(run.left()),
        Duration::from_secs(1),
        |_| false,
    )
    .await?;
    let quiet_secs = t_pop.elapsed().as_secs_f64();
    let connected = run.gateway_sample();
    let r_connected = figures::redis_cpu_us(&mut rc).await?;
    let pop_seen = pool.totals().presence;
    let (mem1, keys1) = used_memory(&mut rc).await?;
    let (ch_keys, ch_bytes) = channel_keys(&mut rc, &a.channel).await?;
    let online = online_bytes(&mut rc, members).await?;
    let n = members.max(1) as f64;
    let per_member = (mem1 as f64 - mem0 as f64) / n;
    let memory = RedisMemory {
        used_before: mem0,
        used_after: mem1,
        bytes_per_member: per_member,
        channel_keys: ch_keys,
        channel_key_bytes: ch_bytes,
        channel_bytes_per_member: ch_bytes as f64 / n,
        online_bytes_per_user: online,
        other_bytes_per_member: per_member - ch_bytes as f64 / n - online,
        keys_before: keys0,
        keys_after: keys1,
    };
    let mut populate = Populate {
        members: members as u64,
        connect_secs: conn.elapsed_us as f64 / 1e6,
        connects_per_sec: conn.per_sec(),
        counted_after_secs: counted_after.map(|d| d.as_secs_f64()),
        counted_clients: counted.0,
        counted_users: counted.1,
        list_all_secs: list_time.as_secs_f64(),
        list_pages,
        listed_distinct: listed,
        secs_until_quiet: quiet_secs,
        diff_frames: pop_seen.frames,
        diff_bytes: pop_seen.bytes,
        ..Populate::default()
    };
    if let (Some(b), Some(c)) = (before, connected) {
        populate.gateway_cpu_us_per_member = c.cpu_us.saturating_sub(b.cpu_us) as f64 / n;
    }
    populate.redis_cpu_us_per_member = r_connected.saturating_sub(r_before) as f64 / n;

    // Pre-join: the churn users that are in at any time.
    for _ in 0..held {
        driver.join_one();
    }
    let want = members as u64 + held as u64;
    let (prejoined, _) = pool
        .drive(wait_counted(
            &api,
            &a.channel,
            want,
            Duration::from_secs(30).min(run.left()),
        ))
        .await??;
    if prejoined.is_none() {
        run.notes.push(format!(
            "the {held} pre-joined churn users were not all counted in 30 s"
        ));
    }
    if !a.no_events {
        let expect = held as u64 * samples;
        pool.wait_for(
            Duration::from_secs(30).min(run.left()),
            Duration::from_secs(5),
            move |t| t.presence.other_joins >= expect,
        )
        .await?;
    }
    pool.pump(Duration::from_millis(500)).await?;

    // Baseline.
    let counters = driver.counters.clone();
    let metrics0 = pool.drive(scrape(&run.env.admin_addrs)).await?;
    let m0 = mark(&run, &pool, &mut rc, &counters).await?;
    phases.insert("2 baseline".to_owned(), since(m0.at));
    pool.pump(a.baseline.0).await?;
    run.check_time()?;
    let m1 = mark(&run, &pool, &mut rc, &counters).await?;
    let baseline = Window::between(&m0, &m1);

    // Churn: a warm-up of the grace period (so leaves are announced in the
    // window), then the measured window.
    let stop = Arc::new(AtomicBool::new(false));
    phases.insert("3 churn (warm-up)".to_owned(), since(Instant::now()));
    let churn = tokio::spawn(driver.run(a.churn_rate, stop.clone()));
    pool.pump(a.warmup()).await?;
    run.check_time()?;
    let g0 = run.gateway_sample();
    let l0 = run.loadtest_sample();
    let r_churn0 = run.redis_sample();
    let m2 = mark(&run, &pool, &mut rc, &counters).await?;
    phases.insert("4 churn measured".to_owned(), since(m2.at));
    pool.pump(a.duration.0).await?;
    run.check_time()?;
    let m3 = mark(&run, &pool, &mut rc, &counters).await?;
    phases.insert("5 queries".to_owned(), since(m3.at));
    let g1 = run.gateway_sample();
    let l1 = run.loadtest_sample();
    let r_churn1 = run.redis_sample();
    let churn_cost = ChurnCost::new(Window::between(&m2, &m3), &baseline);

    // Queries, the churn going on.
    pool.drive(queriers.run(&a.channel, a.queries, a.query_window.0, &cursors))
        .await??;
    let ws_requests = a.queries * QueryKind::ALL.iter().filter(|k| k.ws).count() as u64;
    pool.drive(queriers.settle(ws_requests, Duration::from_secs(10)))
        .await?;
    let m4 = mark(&run, &pool, &mut rc, &counters).await?;
    phases.insert("6 grace".to_owned(), since(m4.at));
    stop.store(true, Ordering::Relaxed);
    let driver = churn.await.map_err(|e| anyhow!("churn task: {e}"))?;
    let query_window = Window::between(&m3, &m4);
    let nq = (a.queries * QueryKind::ALL.len() as u64).max(1) as f64;
    let gateway_us_per_query = (query_window.gateway_cpu_us as f64
        - churn_cost.window.gateway_rate() * query_window.secs)
        / nq;
    let redis_us_per_query = (query_window.redis_cpu_us as f64
        - churn_cost.window.redis_rate() * query_window.secs)
        / nq;

    // Grace: every leave announced, then the check.
    let churn_joins = driver.counters.joins.load(Ordering::Relaxed);
    let churn_leaves = driver.counters.leaves.load(Ordering::Relaxed);
    let t_end = Instant::now();

    let mut waited = 0.0;
    if !a.no_events {
        let (ej, el) = (churn_joins * samples, churn_leaves * samples);
        let within = a.min_away() + Duration::from_secs(10);
        pool.wait_for(within.min(run.left()), within, move |t| {
            t.presence.other_joins >= ej && t.presence.other_leaves >= el
        })
        .await?;
        waited = t_end.elapsed().as_secs_f64();
        // Anything more (duplicates) would come right after.
        pool.pump(Duration::from_millis(300)).await?;
    } else {
        pool.pump(a.min_away()).await?;
    }
    let metrics1 = pool.drive(scrape(&run.env.admin_addrs)).await?;
    run.notes.push(format!(
        "machine load average (1, 5, 15 min) at the start {load_start}, at the end {}",
        loadavg()
    ));
    let slow = slowlog(&mut rc, start_unix).await.unwrap_or_default();
    let groups = pool.groups();
    let (stats, timeline) = pool.finish(run.left().max(Duration::from_secs(30))).await?;
    // Closes the churn users' and the query connections.
    drop(driver);
    let query_stats = queriers.stats.clone();
    drop(queriers);

    // The report.
    let mut report = run.report(&conn, &stats, &timeline, groups);
    report.gateway = run.gateway_cost(before, connected, g0.zip(g1), None, conn.ok);
    report.redis = run.process_cost(
        run.env.redis_pid.into_iter().collect(),
        r_churn0,
        r_churn1,
        None,
    );
    let mut lt = vec![std::process::id()];
    lt.extend(&run.worker_pids);
    report.loadtest = run.process_cost(lt, l0, l1, None);
    let mut check = DiffCheck {
        events: !a.no_events,
        samples: stats.presence_samples.len() as u64,
        churn_joins,
        churn_leaves,
        waited_secs: waited,
        min_joins_seen: u64::MAX,
        min_leaves_seen: u64::MAX,
        ..DiffCheck::default()
    };
    for s in &stats.presence_samples {
        check.min_joins_seen = check.min_joins_seen.min(s.other_joins);
        check.max_joins_seen = check.max_joins_seen.max(s.other_joins);
        check.min_leaves_seen = check.min_leaves_seen.min(s.other_leaves);
        check.max_leaves_seen = check.max_leaves_seen.max(s.other_leaves);
        check.member_joins_seen += s.member_joins;
        check.member_leaves_seen += s.member_leaves;
        check.inconsistent += s.inconsistent;
        check.unreadable += s.unreadable;
        if s.other_joins == churn_joins && s.other_leaves == churn_leaves {
            check.samples_exact += 1;
        }
    }
    if check.samples == 0 {
        check.min_joins_seen = 0;
        check.min_leaves_seen = 0;
    }
    check.ok = if a.no_events {
        stats.presence.frames == 0
    } else {
        check.samples == samples
            && check.samples_exact == check.samples
            && check.member_leaves_seen == 0
            && check.inconsistent == 0
            && check.unreadable == 0
    };
    let queries: Vec<QueryFigures> = {
        let s = query_stats.lock().unwrap_or_else(|p| p.into_inner());
        QueryKind::ALL
            .iter()
            .zip(s.iter())
            .map(|(k, st)| QueryFigures {
                name: k.name(),
                latency_us: st.latency.summary(),
                errors: st.errors,
                rate_limited: st.rate_limited,
                short_pages: st.short_pages,
                notes: st.notes.clone(),
            })
            .collect()
    };
    let cs = churn_sh.stats();
    let refresh = metrics0
        .iter()
        .zip(&metrics1)
        .map(|(x, y)| figures::refresh_between(x, y))
        .collect();
    let gateway_metrics = figures::metrics_of(&metrics1);
    let skipped = counters.skipped.load(Ordering::Relaxed);
    phases.insert("7 end".to_owned(), since(Instant::now()));
    let presence = PresenceReport {
        phases,
        channel: a.channel.clone(),
        rule: rule.clone(),
        gateways: run.env.targets.len() as u64,
        members: members as u64,
        churn_users: churn_n as u64,
        held: held as u64,
        populate,
        memory,
        baseline,
        churn: churn_cost,
        query_window,
        gateway_us_per_query,
        redis_us_per_query,
        queries,
        subscribe_us: cs.subscribe_us.summary(),
        unsubscribe_us: cs.unsubscribe_us.summary(),
        join_seen_us: cs.join_seen_us.summary(),
        leave_seen_us: cs.leave_seen_us.summary(),
        leaves_unseen_before_rejoin: cs.leaves_unseen,
        skipped_joins: skipped,
        churn_errors: cs.errors,
        churn_closed: cs.closed,
        check,
        refresh,
        gateway_metrics,
        slowlog: slow,
        notes: cs.notes.clone(),
    };
    drop(cs);
    let queries_clean = presence
        .queries
        .iter()
        .all(|q| q.errors == 0 && q.rate_limited == 0 && q.short_pages == 0);
    let refused = presence
        .gateway_metrics
        .get("tidings_presence_refused_total")
        .copied()
        .unwrap_or(0.0);
    report.correct &= presence.check.ok
        && presence.populate.counted_after_secs.is_some()
        && presence.populate.listed_distinct == members as u64
        && presence.churn_errors == 0
        && presence.churn_closed == 0
        && presence.skipped_joins == 0
        && queries_clean
        && refused == 0.0;
    report.presence = Some(presence);
    Ok(report)
}
