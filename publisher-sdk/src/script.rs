//! Publishing through Redis: plain `PUBLISH` (`SPUBLISH` in a cluster) where nothing
//! else is needed, the atomic Lua script (idempotency check, XADD, PUBLISH) where
//! history or an idempotency key is involved. Every call gets publications owned by
//! one Redis (one shard, or one cluster partition whose names share a slot).

use std::sync::LazyLock;

use protocol::Publication;
use redis::{ErrorKind, ServerErrorKind};

use crate::backend::Conn;
use crate::{Inner, PublishError, Receipt, unavailable};

/// A Lua script: its source (for `SCRIPT LOAD`) and its SHA1 (for `EVALSHA`).
pub(crate) struct Lua {
    src: &'static str,
    script: LazyLock<redis::Script>,
}

impl Lua {
    pub(crate) const fn new(src: &'static str, script: LazyLock<redis::Script>) -> Self {
        Self { src, script }
    }

    fn hash(&self) -> &str {
        self.script.get_hash()
    }
}

pub(crate) static PUBLISH: Lua = Lua {
    src: include_str!("publish.lua"),
    script: LazyLock::new(|| redis::Script::new(include_str!("publish.lua"))),
};
pub(crate) static PUBLISH_MANY: Lua = Lua {
    src: include_str!("publish_many.lua"),
    script: LazyLock::new(|| redis::Script::new(include_str!("publish_many.lua"))),
};
pub(crate) static HISTORY: Lua = Lua {
    src: include_str!("history.lua"),
    script: LazyLock::new(|| redis::Script::new(include_str!("history.lua"))),
};
pub(crate) static ACK: Lua = Lua {
    src: include_str!("ack.lua"),
    script: LazyLock::new(|| redis::Script::new(include_str!("ack.lua"))),
};

fn random_epoch() -> String {
    format!("{:016x}", rand_u64())
}

/// A random u64 without pulling a RNG crate into the SDK: std's hasher is seeded
/// randomly per process, and the counter makes successive values differ.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn scripted_args(inner: &Inner, p: &Publication, cmd: &mut redis::Cmd) {
    let keys = &inner.keys;
    let policy = inner.history.policy(&p.channel);
    let window = if p.id.is_some() {
        inner.idempotency_window.as_secs()
    } else {
        0
    };
    cmd.arg(4)
        .arg(keys.history_stream(&p.channel))
        .arg(keys.history_meta(&p.channel))
        .arg(keys.idempotency(&p.channel, p.id.as_deref().unwrap_or("")))
        .arg(keys.history_registry(&p.channel, policy.map_or(0, |p| p.rule)))
        .arg(keys.pubsub_channel(&p.channel))
        .arg(&p.channel)
        .arg(&p.event)
        .arg(p.payload.json())
        .arg(p.id.as_deref().unwrap_or(""))
        .arg(p.ts)
        .arg(policy.map_or(0, |p| p.max_len))
        .arg(policy.map_or(1, |p| p.ttl.as_secs().max(1)))
        .arg(random_epoch())
        .arg(window)
        .arg(inner.publish_command())
        .arg(inner.budget_here(policy));
}

/// A conditional publish: the publish script with the expected position.
pub(crate) async fn publish_if(
    inner: &Inner,
    conn: &mut Conn,
    p: &Publication,
    at: &protocol::history::StreamPosition,
) -> Result<Receipt, PublishError> {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(PUBLISH.hash());
    scripted_args(inner, p, &mut cmd);
    cmd.arg(at.offset).arg(&at.epoch);
    let reply: Vec<redis::Value> = match cmd.query_async(conn).await {
        Ok(r) => r,
        Err(e) if is_noscript(&e) => {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(PUBLISH.src)
                .query_async::<String>(conn)
                .await
                .map_err(unavailable)?;
            cmd.query_async(conn).await.map_err(unavailable)?
        }
        Err(e) => return Err(unavailable(e)),
    };
    let int = |v: Option<&redis::Value>| match v {
        Some(redis::Value::Int(n)) => *n,
        _ => 0,
    };
    let (n, off) = (int(reply.first()), int(reply.get(1)));
    let epoch = match reply.get(2) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        _ => String::new(),
    };
    match n {
        -3 => Err(PublishError::Conflict {
            offset: off.max(0) as u64,
            epoch,
        }),
        -2 => budget_verdict(vec![p.channel.clone()]).map(|()| Receipt::default()),
        n => Ok(Receipt {
            nodes: n.max(0) as u64,
            per_target: vec![n.max(0) as u64],
            offsets: vec![(off > 0).then_some(off as u64)],
            duplicates: usize::from(n == -1),
            epoch: (!epoch.is_empty()).then_some(epoch),
        }),
    }
}

fn needs_script(inner: &Inner, p: &Publication) -> bool {
    inner.history.policy(&p.channel).is_some()
        || (p.id.is_some() && !inner.idempotency_window.is_zero())
}

fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

pub(crate) async fn publish(
    inner: &Inner,
    conn: &mut Conn,
    pubs: &[Publication],
) -> Result<Receipt, PublishError> {
    if pubs.len() > 1 && same_notification(pubs) {
        return publish_many(inner, conn, pubs).await;
    }
    let (scripted, plain): (Vec<usize>, Vec<usize>) =
        (0..pubs.len()).partition(|&i| needs_script(inner, &pubs[i]));
    let mut per_target = vec![0u64; pubs.len()];
    let mut offsets = vec![None; pubs.len()];
    let mut duplicates = 0;
    let mut over_budget = Vec::new();
    if !scripted.is_empty() {
        let build = || {
            let mut pipe = redis::pipe();
            for &i in &scripted {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(PUBLISH.hash());
                scripted_args(inner, &pubs[i], &mut cmd);
                pipe.add_command(cmd);
            }
            pipe
        };
        // Every EVALSHA fails alike when the script is not loaded (e.g. after a Redis
        // restart), so nothing ran and the whole pipeline can be retried once.
        let replies: Vec<(i64, u64)> = match build().query_async(conn).await {
            Ok(r) => r,
            Err(e) if is_noscript(&e) => {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(PUBLISH.src)
                    .query_async::<String>(conn)
                    .await
                    .map_err(unavailable)?;
                build().query_async(conn).await.map_err(unavailable)?
            }
            Err(e) => return Err(unavailable(e)),
        };
        for (&i, (n, off)) in scripted.iter().zip(replies) {
            if n == -2 {
                over_budget.push(pubs[i].channel.clone());
            } else if n < 0 {
                duplicates += 1;
            } else {
                per_target[i] = n as u64;
                offsets[i] = (off > 0).then_some(off);
            }
        }
    }
    if !plain.is_empty() {
        let mut pipe = redis::pipe();
        for &i in &plain {
            let p = &pubs[i];
            pipe.cmd(inner.publish_command())
                .arg(inner.keys.pubsub_channel(&p.channel))
                .arg(p.encode());
        }
        let replies: Vec<u64> = pipe.query_async(conn).await.map_err(unavailable)?;
        for (&i, n) in plain.iter().zip(replies) {
            per_target[i] = n;
        }
    }
    budget_verdict(over_budget)?;
    Ok(Receipt {
        nodes: per_target.iter().sum(),
        per_target,
        offsets,
        duplicates,
        epoch: None,
    })
}

/// Targets whose history would have exceeded their rule's budget were not
/// published: the call fails (the others went through; a retry with the same
/// message id reports them as duplicates).
fn budget_verdict(over: Vec<String>) -> Result<(), PublishError> {
    match over.len() {
        0 => Ok(()),
        n => Err(PublishError::QuotaExceeded(format!(
            "{n} target(s) would start a history beyond their rule's budget (first: `{}`)",
            over[0]
        ))),
    }
}

/// Whether every publication is the same notification to another channel (what a
/// multi-target publish makes): then its event, payload and id go to Redis once.
fn same_notification(pubs: &[Publication]) -> bool {
    let first = &pubs[0];
    pubs[1..].iter().all(|p| {
        // Built together (the same payload, shared): their publish times differ by
        // the time it took to build them, and the first one's stands for all.
        p.event == first.event
            && p.id == first.id
            && p.payload.json().as_ptr() == first.payload.json().as_ptr()
    })
}

/// One notification to several channels of one Redis, in one script run: the
/// payload crosses to Redis once, however many targets (a publish to 1,000 users
/// of a 60 KB payload used to send 60 MB).
async fn publish_many(
    inner: &Inner,
    conn: &mut Conn,
    pubs: &[Publication],
) -> Result<Receipt, PublishError> {
    let first = &pubs[0];
    let keys = &inner.keys;
    let window = if first.id.is_some() {
        inner.idempotency_window.as_secs()
    } else {
        0
    };
    let mut key_args = Vec::with_capacity(pubs.len() * 4);
    let mut args: Vec<Vec<u8>> = Vec::with_capacity(6 + pubs.len() * 6);
    args.push(first.event.clone().into_bytes());
    args.push(first.payload.json().as_bytes().to_vec());
    args.push(first.id.clone().unwrap_or_default().into_bytes());
    args.push(first.ts.to_string().into_bytes());
    args.push(window.to_string().into_bytes());
    args.push(inner.publish_command().as_bytes().to_vec());
    for p in pubs {
        key_args.push(keys.history_stream(&p.channel));
        key_args.push(keys.history_meta(&p.channel));
        key_args.push(keys.idempotency(&p.channel, p.id.as_deref().unwrap_or("")));
        let policy = inner.history.policy(&p.channel);
        key_args.push(keys.history_registry(&p.channel, policy.map_or(0, |p| p.rule)));
        args.push(keys.pubsub_channel(&p.channel).into_bytes());
        args.push(p.channel.clone().into_bytes());
        args.push(policy.map_or(0, |p| p.max_len).to_string().into_bytes());
        args.push(
            policy
                .map_or(1, |p| p.ttl.as_secs().max(1))
                .to_string()
                .into_bytes(),
        );
        args.push(random_epoch().into_bytes());
        args.push(inner.budget_here(policy).to_string().into_bytes());
    }
    let replies: Vec<i64> = eval(conn, &PUBLISH_MANY, &key_args, &args).await?;
    let mut per_target = vec![0u64; pubs.len()];
    let mut offsets = vec![None; pubs.len()];
    let mut duplicates = 0;
    let mut over_budget = Vec::new();
    for (i, pair) in replies.chunks(2).enumerate().take(pubs.len()) {
        let (n, off) = (pair[0], pair.get(1).copied().unwrap_or(0));
        if n == -2 {
            over_budget.push(pubs[i].channel.clone());
        } else if n < 0 {
            duplicates += 1;
        } else {
            per_target[i] = n as u64;
            offsets[i] = (off > 0).then_some(off as u64);
        }
    }
    budget_verdict(over_budget)?;
    Ok(Receipt {
        nodes: per_target.iter().sum(),
        per_target,
        offsets,
        duplicates,
        epoch: None,
    })
}

/// Runs a script by hash, loading it first if Redis does not know it.
pub(crate) async fn eval<T: redis::FromRedisValue, A: redis::ToRedisArgs>(
    conn: &mut Conn,
    script: &Lua,
    keys: &[String],
    args: &[A],
) -> Result<T, PublishError> {
    let build = || {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script.hash()).arg(keys.len()).arg(keys).arg(args);
        cmd
    };
    match build().query_async(conn).await {
        Ok(v) => Ok(v),
        Err(e) if is_noscript(&e) => {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(script.src)
                .query_async::<String>(conn)
                .await
                .map_err(unavailable)?;
            build().query_async(conn).await.map_err(unavailable)
        }
        Err(e) => Err(unavailable(e)),
    }
}
