//! The harness's TLS, ACL, TLS cluster and Sentinel servers come up as documented.
//! TLS is checked from the outside with the `openssl` CLI and a TLS `redis-cli`
//! (the same OpenSSL the servers use), so the harness needs no TLS client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use testkit::{Certs, RedisCluster, RedisServer, SentinelSet};

/// Runs `openssl verify` on `cert` against `ca` with extra checks.
fn verifies(ca: &Path, cert: &Path, checks: &[&str]) -> bool {
    std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .args(checks)
        .arg(cert)
        .output()
        .unwrap()
        .status
        .success()
}

/// Runs one command with `redis-cli --tls` (JSON output) on `port`; `Err` holds
/// what it printed when it failed (a refused handshake, an error reply).
async fn tls_cli(
    ca: &Path,
    client: Option<&Certs>,
    port: u16,
    cmd: &[&str],
) -> Result<String, String> {
    let mut cli = tokio::process::Command::new("redis-cli");
    cli.args([
        "--tls",
        "-2",
        "--json",
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
    ])
    .arg("--cacert")
    .arg(ca);
    if let Some(c) = client {
        cli.arg("--cert")
            .arg(&c.client_cert)
            .arg("--key")
            .arg(&c.client_key);
    }
    let out = cli
        .args(cmd)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(testkit::WAIT, out)
        .await
        .expect("redis-cli hung")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    // redis-cli exits 0 on an error reply too; those start with "ERR"/"MOVED"…
    // in JSON mode, but a proper reply is JSON.
    match serde_json::from_str::<serde_json::Value>(&stdout) {
        Ok(_) if out.status.success() => Ok(stdout),
        _ => Err(format!("{stdout}{stderr}")),
    }
}

/// A plain, credential-less `PING` through the redis crate.
async fn ping(url: &str) -> redis::RedisResult<String> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async(&mut conn).await
}

#[test]
fn certs_verify_for_their_names_and_purposes() {
    let t = Instant::now();
    let certs = Certs::generate();
    let took = t.elapsed();
    eprintln!("Certs::generate took {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let server = ["-purpose", "sslserver"];
    assert!(verifies(
        &certs.ca,
        &certs.server_cert,
        &[&server[..], &["-verify_ip", "127.0.0.1"]].concat()
    ));
    for host in ["localhost", "redis.test"] {
        assert!(verifies(
            &certs.ca,
            &certs.server_cert,
            &[&server[..], &["-verify_hostname", host]].concat()
        ));
    }
    assert!(!verifies(
        &certs.ca,
        &certs.server_cert,
        &["-verify_hostname", "other.test"]
    ));
    // Servers present their certificate to each other (cluster bus, replication).
    assert!(verifies(
        &certs.ca,
        &certs.server_cert,
        &["-purpose", "sslclient"]
    ));
    assert!(verifies(
        &certs.ca,
        &certs.client_cert,
        &["-purpose", "sslclient"]
    ));
    assert!(!verifies(&certs.ca, &certs.client_cert, &server));
    assert!(!verifies(&certs.other_ca, &certs.server_cert, &[]));
    let dir = certs.dir.clone();
    drop(certs);
    assert!(!dir.exists(), "the certificate directory outlived Certs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_answers_on_its_tls_port_and_keeps_it_across_restart() {
    let certs = Certs::generate();
    let t = Instant::now();
    let mut redis = RedisServer::start_tls(&certs, false).await;
    eprintln!("RedisServer::start_tls took {:?}", t.elapsed());
    let tls = redis.tls_port.unwrap();
    assert_ne!(tls, redis.port);
    assert_eq!(redis.tls_url(), format!("rediss://127.0.0.1:{tls}"));
    assert_eq!(
        tls_cli(&certs.ca, None, tls, &["PING"]).await.unwrap(),
        "\"PONG\""
    );
    let wrong_ca = tls_cli(&certs.other_ca, None, tls, &["PING"]).await;
    assert!(
        wrong_ca.is_err(),
        "a client trusting another CA got {wrong_ca:?}"
    );
    // The plain port is the harness's.
    redis.cmd(&["SET", "k", "v"]).await;
    // The server copied its certificate files: it restarts without `certs`.
    let ca = std::env::temp_dir().join(format!("tidings-ca-{tls}.crt"));
    std::fs::copy(&certs.ca, &ca).unwrap();
    drop(certs);
    redis.restart().await;
    assert_eq!(redis.tls_port, Some(tls));
    let after = tls_cli(&ca, None, tls, &["PING"]).await;
    std::fs::remove_file(&ca).unwrap();
    assert_eq!(after.unwrap(), "\"PONG\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_with_client_certs_refuses_a_client_without_one() {
    let certs = Certs::generate();
    let redis = RedisServer::start_tls(&certs, true).await;
    let tls = redis.tls_port.unwrap();
    let anonymous = tls_cli(&certs.ca, None, tls, &["PING"]).await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate got {anonymous:?}"
    );
    let with_cert = tls_cli(&certs.ca, Some(&certs), tls, &["PING"]).await;
    assert_eq!(with_cert.unwrap(), "\"PONG\"");
    assert_eq!(
        redis.cmd(&["PING"]).await,
        redis::Value::SimpleString("PONG".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_server_refuses_anonymous_clients_and_keeps_users_across_restart() {
    let t = Instant::now();
    let mut redis = RedisServer::start_acl().await;
    eprintln!("RedisServer::start_acl took {:?}", t.elapsed());
    let anonymous = ping(&redis.url()).await.unwrap_err();
    assert!(anonymous.to_string().contains("NOAUTH"), "{anonymous}");
    redis
        .acl_setuser(&["alice", "on", ">pw", "+@all", "~*", "&*"])
        .await;
    let alice = redis.url_as("alice", "pw");
    assert_eq!(alice, format!("redis://alice:pw@127.0.0.1:{}", redis.port));
    assert_eq!(ping(&alice).await.unwrap(), "PONG");
    assert!(ping(&redis.url_as("alice", "nope")).await.is_err());
    // Rules add up, in order, and survive a restart.
    redis.acl_setuser(&["alice", "-ping"]).await;
    redis.restart().await;
    assert!(redis.info("server").await.contains("redis_version"));
    let denied = ping(&alice).await.unwrap_err();
    assert!(denied.to_string().contains("no permissions"), "{denied}");
    assert!(ping(&redis.url()).await.is_err());
}

/// The master port of each slot range of a `CLUSTER SLOTS` reply in
/// `redis-cli --json` form, by first slot.
fn slot_masters(json: &str) -> Vec<(u64, u16)> {
    let ranges: Vec<Vec<serde_json::Value>> = serde_json::from_str(json).unwrap();
    let mut masters: Vec<(u64, u16)> = ranges
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[2][1].as_u64().unwrap() as u16))
        .collect();
    masters.sort_unstable();
    masters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_comes_up_and_answers_with_the_ports_of_the_asking_connection() {
    let certs = Certs::generate();
    let t = Instant::now();
    let cluster = RedisCluster::start_tls(3, &certs).await;
    eprintln!("RedisCluster::start_tls(3) took {:?}", t.elapsed());
    let node = &cluster.nodes[0];
    let over_tls = tls_cli(
        &certs.ca,
        None,
        node.tls_port.unwrap(),
        &["CLUSTER", "SLOTS"],
    )
    .await
    .unwrap();
    // The same masters, but as TLS ports; the harness's plain connections see
    // plain ones.
    let tls_of = |port: u16| cluster.node(port).tls_port.unwrap();
    let plain = RedisCluster::slots_seen_by(node).await;
    let mut expected: Vec<(u64, u16)> = plain
        .iter()
        .map(|r| (r.start.into(), tls_of(r.port)))
        .collect();
    expected.sort_unstable();
    assert_eq!(slot_masters(&over_tls), expected, "{over_tls}");
    // Redirections too: a TLS client is sent to the owner's TLS port.
    let slot = match node.cmd(&["CLUSTER", "KEYSLOT", "k"]).await {
        redis::Value::Int(n) => n as u16,
        other => panic!("unexpected KEYSLOT reply {other:?}"),
    };
    let owner = cluster.owner(slot).await;
    let owner_tls = cluster.node(owner).tls_port.unwrap();
    let other = cluster.nodes.iter().find(|n| n.port != owner).unwrap();
    let (Ok(moved) | Err(moved)) =
        tls_cli(&certs.ca, None, other.tls_port.unwrap(), &["GET", "k"]).await;
    assert!(
        moved.contains(&format!("MOVED {slot} 127.0.0.1:{owner_tls}")),
        "{moved}"
    );
    assert_eq!(cluster.tls_urls().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_set_fails_over_to_the_replica() {
    let t = Instant::now();
    let mut set = SentinelSet::start("tidings-test").await;
    eprintln!("SentinelSet::start took {:?}", t.elapsed());
    assert_eq!(set.master_name(), "tidings-test");
    assert_eq!(set.sentinel_urls().len(), 3);
    let old = set.primary().port;
    assert_eq!(
        set.master_addr_from_sentinels().await,
        ("127.0.0.1".to_owned(), old)
    );
    set.primary().cmd(&["SET", "k", "v"]).await;
    let t = Instant::now();
    set.kill_primary();
    let new = set.wait_failover(old, Duration::from_secs(15)).await;
    eprintln!("failover took {:?}", t.elapsed());
    assert_eq!(new, set.replica().port);
    assert_eq!(set.master_addr_from_sentinels().await.1, new);
    set.replica().cmd(&["SET", "k2", "v"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_set_with_passwords_wants_them_and_the_harness_has_them() {
    let t = Instant::now();
    let set = SentinelSet::start_with_auth("authed", Some("s3ntinel"), Some("d4ta")).await;
    eprintln!("SentinelSet::start_with_auth took {:?}", t.elapsed());
    let sentinel = &set.sentinel_urls()[0];
    assert!(
        ping(sentinel)
            .await
            .unwrap_err()
            .to_string()
            .contains("NOAUTH")
    );
    let with_pw = sentinel.replace("redis://", "redis://:s3ntinel@");
    assert_eq!(ping(&with_pw).await.unwrap(), "PONG");
    assert!(
        ping(&set.primary().url())
            .await
            .unwrap_err()
            .to_string()
            .contains("NOAUTH")
    );
    assert_eq!(
        ping(&set.primary().url_as("", "d4ta")).await.unwrap(),
        "PONG"
    );
    assert_eq!(set.master_addr_from_sentinels().await.1, set.primary().port);
}
