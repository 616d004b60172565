//! Collaborative documents against real gateways: two nodes on one Redis, editors
//! connected through either, random concurrent edits for a few seconds (seeded).
//! The editors end with the same text, equal to the document channel's log replayed
//! in order (read back with `history` requests, operations that do not apply
//! skipped); every character typed is there once unless someone deleted it. An
//! editor whose connection is cut keeps typing offline and comes back through the
//! other node; a new editor loads the latest snapshot and the tail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::{Client, Event, Since};
use collab::ot::{Operation, Selection};
use collab::{Document, DocumentEvent, DocumentEvents, Options};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::gateway::SECRET;
use testkit::{FaultProxy, RedisServer, TestGateway};
use tokio::time::{Instant, sleep, timeout};

/// The history rules of docs/collaboration.md.
const HISTORY: &str = "doc:* 100000 7d,snap:* 10 30d";
/// Generous bound for anything to happen (it normally takes well under a second).
const WAIT: Duration = Duration::from_secs(30);

fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let rights = ["doc:*", "snap:*", "cursor:*"];
    let claims = serde_json::json!({
        "sub": user, "exp": exp, "subscribe": rights, "publish": rights,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Two gateway nodes on one Redis with the documents' history rules (and room for
/// the reader's history pages).
async fn two_nodes(redis: &RedisServer) -> (TestGateway, TestGateway) {
    let node = |name: &str| {
        TestGateway::builder()
            .redis(redis, name)
            .drain_period("200ms")
            .args(&[
                "--history",
                HISTORY,
                "--resume-rate",
                "200",
                "--resume-burst",
                "400",
            ])
    };
    (node("node1").start().await, node("node2").start().await)
}

/// The URLs each connection attempt goes to, in turn.
fn ws(addrs: &[std::net::SocketAddr]) -> Vec<String> {
    addrs.iter().map(|a| format!("ws://{a}/ws")).collect()
}

/// A client that reconnects quickly; its main event stream is read in the
/// background, recording the URLs it connected to.
fn connect(urls: Vec<String>, user: &str, seed: u64) -> (Client, Arc<Mutex<Vec<String>>>) {
    let (client, mut events) = Client::builder(urls)
        .token(token(user))
        .backoff(Duration::from_millis(50), Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(1))
        .jitter_seed(seed)
        .build()
        .unwrap();
    let urls = Arc::new(Mutex::new(Vec::new()));
    let seen = urls.clone();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if let Event::Connected { url, .. } = e {
                seen.lock().unwrap().push(url);
            }
        }
    });
    (client, urls)
}

async fn open(client: &Client, doc: &str, snapshot_interval: u64) -> (Document, Watch) {
    let options = Options {
        snapshot_interval,
        ..Options::default()
    };
    let (d, events) = timeout(WAIT, Document::open(client, doc, options))
        .await
        .expect("the document did not load in time")
        .expect("open");
    (d, Watch::new(events))
}

/// Reads a document's events in the background: whether local edits were ever
/// lost, and the errors.
struct Watch {
    lost: Arc<Mutex<bool>>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Watch {
    fn new(mut events: DocumentEvents) -> Self {
        let lost = Arc::new(Mutex::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (l, e) = (lost.clone(), errors.clone());
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                match ev {
                    DocumentEvent::Reloaded {
                        lost_local_edits: true,
                        ..
                    } => *l.lock().unwrap() = true,
                    DocumentEvent::Error(err) => e.lock().unwrap().push(err.to_string()),
                    _ => {}
                }
            }
        });
        Self { lost, errors }
    }

    fn lost_edits(&self) -> bool {
        *self.lost.lock().unwrap()
    }
}

/// Who typed and deleted what: every character typed is unique.
#[derive(Default)]
struct Ledger {
    next: u32,
    inserted: HashSet<char>,
    deleted: HashSet<char>,
}

impl Ledger {
    /// A character no one typed before: CJK (3 UTF-8 bytes) or beyond the BMP (4).
    fn fresh(&mut self) -> char {
        let n = self.next;
        self.next += 1;
        let base = if n.is_multiple_of(3) {
            0x2_0000
        } else {
            0x4E00
        };
        let c = char::from_u32(base + n).unwrap();
        self.inserted.insert(c);
        c
    }
}

/// One random edit, made on the text as it is now: mostly inserts of 1 to 3 new
/// characters, sometimes a delete of up to 3, now and then a selection.
fn random_edit(doc: &Document, rng: &mut StdRng, ledger: &Mutex<Ledger>) {
    let mut ledger = ledger.lock().unwrap();
    let made = doc.edit_with(|text| {
        let chars: Vec<char> = text.chars().collect();
        let len = chars.len();
        let mut op = Operation::new();
        if len == 0 || rng.random_bool(0.65) {
            let pos = rng.random_range(0..=len);
            let n = rng.random_range(1..=3);
            let s: String = (0..n).map(|_| ledger.fresh()).collect();
            op.retain(pos).insert(&s).retain(len - pos);
        } else {
            let pos = rng.random_range(0..len);
            let n = rng.random_range(1..=3.min(len - pos));
            ledger.deleted.extend(&chars[pos..pos + n]);
            op.retain(pos).delete(n).retain(len - pos - n);
        }
        Some(op)
    });
    assert_eq!(made, Ok(true));
    if rng.random_bool(0.2) {
        let len = doc.len();
        let (a, h) = (rng.random_range(0..=len), rng.random_range(0..=len));
        doc.set_selection(Selection { anchor: a, head: h }).unwrap();
    }
}

/// Random edits by the documents, one at a time in a random order, every 2 to
/// 12 ms, for `d`.
async fn type_for(docs: &[&Document], d: Duration, rng: &mut StdRng, ledger: &Mutex<Ledger>) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let doc = docs[rng.random_range(0..docs.len())];
        random_edit(doc, rng, ledger);
        sleep(Duration::from_millis(rng.random_range(2..12))).await;
    }
}

/// The document channel's position (latest offset and epoch).
async fn head(reader: &Client, doc: &str) -> (u64, String) {
    let h = reader.history(doc, Some(1), None).await.unwrap();
    (h.offset, h.epoch)
}

/// Waits until every document is up to date with the log and has the same text.
async fn converged(docs: &[&Document], reader: &Client, doc: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (offset, epoch) = head(reader, doc).await;
        let text = docs[0].text();
        let done = docs.iter().all(|d| {
            d.is_synced() && d.revision() == offset && d.epoch() == epoch && d.text() == text
        });
        if done {
            return text;
        }
        if Instant::now() > deadline {
            let states: Vec<_> = docs
                .iter()
                .map(|d| {
                    (
                        d.revision(),
                        d.is_synced(),
                        d.has_pending(),
                        d.is_connected(),
                    )
                })
                .collect();
            panic!("no convergence at offset {offset}: {states:?}");
        }
        sleep(Duration::from_millis(50)).await;
    }
}

/// The log read back from the start with `history` requests and applied in order,
/// skipping what does not apply: the reference text, and the number of entries.
async fn replay(reader: &Client, doc: &str) -> (String, u64) {
    let mut text = String::new();
    let mut since = Since {
        offset: 0,
        epoch: String::new(),
    };
    loop {
        let page = reader
            .history(doc, Some(100), Some(since.clone()))
            .await
            .unwrap();
        for p in &page.publications {
            assert_eq!(p.offset, since.offset + 1, "a hole in the log");
            since.offset = p.offset;
            if p.event != "op" {
                continue;
            }
            let Some(op) = p
                .payload
                .get("op")
                .and_then(|v| Operation::from_value(v).ok())
            else {
                continue;
            };
            if let Ok(t) = op.apply(&text) {
                text = t;
            }
        }
        since.epoch = page.epoch.clone();
        if since.offset >= page.offset {
            return (text, since.offset);
        }
        assert!(!page.publications.is_empty(), "history stopped short");
    }
}

/// Every character typed is there once, unless someone deleted it.
fn check_intentions(text: &str, ledger: &Mutex<Ledger>) {
    let ledger = ledger.lock().unwrap();
    let mut seen = HashSet::new();
    for c in text.chars() {
        assert!(seen.insert(c), "{c:?} twice");
        assert!(ledger.inserted.contains(&c), "{c:?} never typed");
        assert!(!ledger.deleted.contains(&c), "{c:?} deleted but there");
    }
    let kept = ledger.inserted.difference(&ledger.deleted).count();
    assert_eq!(seen.len(), kept, "typed characters lost");
}

fn check_cursors(docs: &[&Document]) {
    for d in docs {
        let n = d.len();
        for c in d.remote_cursors() {
            assert!(
                c.selection.anchor <= n && c.selection.head <= n,
                "{c:?} beyond {n}"
            );
        }
    }
}

#[tokio::test]
async fn three_editors_on_two_nodes_converge_to_the_log() {
    let redis = RedisServer::start().await;
    let (gw1, gw2) = two_nodes(&redis).await;
    let (a, _) = connect(ws(&[gw1.addr]), "alice", 1);
    let (b, _) = connect(ws(&[gw2.addr]), "bob", 2);
    let (c, _) = connect(ws(&[gw1.addr]), "carol", 3);
    let (reader, _) = connect(ws(&[gw2.addr]), "reader", 4);
    let doc = "doc:converge";
    let (da, wa) = open(&a, doc, 500).await;
    let (db, wb) = open(&b, doc, 500).await;
    let (dc, wc) = open(&c, doc, 500).await;
    let docs = [&da, &db, &dc];

    let started = std::time::Instant::now();
    let mut rng = StdRng::seed_from_u64(20);
    let ledger = Mutex::new(Ledger::default());
    type_for(&docs, Duration::from_secs(3), &mut rng, &ledger).await;
    let text = converged(&docs, &reader, doc).await;
    let (reference, entries) = replay(&reader, doc).await;
    assert_eq!(text, reference, "not the log replayed");
    assert_eq!(da.revision(), entries);
    check_intentions(&text, &ledger);
    check_cursors(&docs);
    for w in [&wa, &wb, &wc] {
        assert!(!w.lost_edits());
        assert!(w.errors.lock().unwrap().is_empty(), "{:?}", w.errors);
    }
    eprintln!(
        "{} entries, {} characters, {} typed, converged after {:?}",
        entries,
        text.chars().count(),
        ledger.lock().unwrap().inserted.len(),
        started.elapsed()
    );
    assert!(entries > 20, "too little concurrency to test anything");

    // No snapshot yet (interval 500): a new editor replays the whole log.
    let (d, _) = connect(ws(&[gw2.addr]), "dave", 5);
    let (dd, _) = open(&d, doc, 500).await;
    assert_eq!(dd.loaded_from(), 0);
    assert_eq!((dd.text(), dd.revision()), (text, entries));
}

#[tokio::test]
async fn an_editor_cut_off_types_offline_and_converges_through_the_other_node() {
    let redis = RedisServer::start().await;
    let (gw1, gw2) = two_nodes(&redis).await;
    let p1 = FaultProxy::start(gw1.addr).await;
    let p2 = FaultProxy::start(gw2.addr).await;
    let (a, _) = connect(ws(&[gw1.addr]), "alice", 1);
    let (b, _) = connect(ws(&[gw2.addr]), "bob", 2);
    // Carol goes through the proxies: node 1 first, then node 2.
    let (c, carol_urls) = connect(ws(&[p1.addr, p2.addr]), "carol", 3);
    let (reader, _) = connect(ws(&[gw2.addr]), "reader", 4);
    let doc = "doc:offline";
    let (da, wa) = open(&a, doc, 500).await;
    let (db, wb) = open(&b, doc, 500).await;
    let (dc, wc) = open(&c, doc, 500).await;
    let docs = [&da, &db, &dc];
    let mut rng = StdRng::seed_from_u64(21);
    let ledger = Mutex::new(Ledger::default());
    type_for(&docs, Duration::from_millis(800), &mut rng, &ledger).await;

    // Cut carol off mid-edit: nothing gets through either proxy for now.
    random_edit(&dc, &mut rng, &ledger);
    p1.freeze();
    p2.freeze();
    p1.cut();
    let deadline = Instant::now() + WAIT;
    while dc.is_connected() {
        assert!(Instant::now() < deadline, "carol did not notice the cut");
        sleep(Duration::from_millis(10)).await;
    }
    // She keeps typing offline, and the others go on too.
    let offline_from = ledger.lock().unwrap().next;
    for _ in 0..40 {
        random_edit(&dc, &mut rng, &ledger);
        random_edit(
            if rng.random_bool(0.5) { &da } else { &db },
            &mut rng,
            &ledger,
        );
        sleep(Duration::from_millis(20)).await;
    }
    assert!(dc.has_pending() && !dc.is_connected());
    let offline_to = ledger.lock().unwrap().next;

    // Node 2 is reachable again (node 1 stays frozen): carol comes back there.
    p2.thaw();
    let text = converged(&docs, &reader, doc).await;
    let (reference, _) = replay(&reader, doc).await;
    assert_eq!(text, reference, "not the log replayed");
    check_intentions(&text, &ledger);
    assert_eq!(
        carol_urls.lock().unwrap().last().cloned(),
        Some(format!("ws://{}/ws", p2.addr)),
        "carol should be back through node 2"
    );
    // What she typed offline made it, except what someone deleted.
    let kept_offline = (offline_from..offline_to)
        .filter(|n| {
            let base = if n.is_multiple_of(3) {
                0x2_0000
            } else {
                0x4E00
            };
            let ch = char::from_u32(base + n).unwrap();
            text.contains(ch)
        })
        .count();
    assert!(kept_offline > 0);
    for w in [&wa, &wb, &wc] {
        assert!(!w.lost_edits(), "no local edit may be lost");
    }
}

#[tokio::test]
async fn a_new_editor_loads_the_latest_snapshot_and_the_tail() {
    let redis = RedisServer::start().await;
    let (gw1, gw2) = two_nodes(&redis).await;
    let (a, _) = connect(ws(&[gw1.addr]), "alice", 1);
    let (b, _) = connect(ws(&[gw2.addr]), "bob", 2);
    let (reader, _) = connect(ws(&[gw1.addr]), "reader", 4);
    let doc = "doc:snapshots";
    // A snapshot every 5 revisions.
    let (da, _wa) = open(&a, doc, 5).await;
    let (db, _wb) = open(&b, doc, 5).await;
    let mut rng = StdRng::seed_from_u64(22);
    let ledger = Mutex::new(Ledger::default());
    type_for(&[&da, &db], Duration::from_secs(1), &mut rng, &ledger).await;
    let text = converged(&[&da, &db], &reader, doc).await;
    let (offset, epoch) = head(&reader, doc).await;
    assert!(offset >= 10, "only {offset} entries");

    // The snapshots hold the log's text at their revision.
    let snaps = reader
        .history("snap:doc:snapshots", Some(10), None)
        .await
        .unwrap();
    assert!(!snaps.publications.is_empty(), "no snapshot was written");
    for p in &snaps.publications {
        let s = collab::Snapshot::from_payload(&p.payload).unwrap();
        assert_eq!(s.epoch, epoch);
        assert_eq!(s.rev % 5, 0);
        let upto = reader
            .history(
                doc,
                Some(100),
                Some(Since {
                    offset: 0,
                    epoch: epoch.clone(),
                }),
            )
            .await
            .unwrap();
        let mut t = String::new();
        let mut pages = vec![upto];
        while pages
            .last()
            .unwrap()
            .publications
            .last()
            .map(|p| p.offset)
            .unwrap_or(0)
            < s.rev.min(offset)
        {
            let from = pages.last().unwrap().publications.last().unwrap().offset;
            let next = reader
                .history(
                    doc,
                    Some(100),
                    Some(Since {
                        offset: from,
                        epoch: epoch.clone(),
                    }),
                )
                .await
                .unwrap();
            pages.push(next);
        }
        for e in pages
            .iter()
            .flat_map(|p| &p.publications)
            .filter(|e| e.offset <= s.rev)
        {
            if let Some(op) = e
                .payload
                .get("op")
                .and_then(|v| Operation::from_value(v).ok())
                && let Ok(n) = op.apply(&t)
            {
                t = n;
            }
        }
        assert_eq!(s.text, t, "snapshot at {}", s.rev);
    }
    let latest = snaps
        .publications
        .iter()
        .filter_map(|p| collab::Snapshot::from_payload(&p.payload))
        .map(|s| s.rev)
        .max()
        .unwrap();

    // A new editor on the other node: the latest snapshot, then the tail.
    let (d, _) = connect(ws(&[gw2.addr]), "dave", 5);
    let (dd, wd) = open(&d, doc, 5).await;
    assert_eq!(dd.loaded_from(), latest);
    assert_eq!((dd.text(), dd.revision()), (text, offset));
    // It follows what comes next, and edits too.
    type_for(
        &[&da, &db, &dd],
        Duration::from_millis(500),
        &mut rng,
        &ledger,
    )
    .await;
    let text = converged(&[&da, &db, &dd], &reader, doc).await;
    let (reference, _) = replay(&reader, doc).await;
    assert_eq!(text, reference);
    check_intentions(&text, &ledger);
    assert!(!wd.lost_edits());
}

/// An application that does not read a document's events does not make it keep
/// an unbounded backlog: past `event_capacity` events are dropped and reported as
/// `Lagged`, and the document itself stays right.
#[tokio::test]
async fn unread_events_are_bounded_and_reported_as_lagged() {
    let redis = RedisServer::start().await;
    let (n1, n2) = two_nodes(&redis).await;
    let (writer, _) = connect(ws(&[n1.addr]), "writer", 21);
    let (reader, _) = connect(ws(&[n2.addr]), "reader", 22);
    let (w, _watch) = open(&writer, "doc:lag", 0).await;
    let options = Options {
        snapshot_interval: 0,
        event_capacity: 4,
        ..Options::default()
    };
    let (r, mut events) = timeout(WAIT, Document::open(&reader, "doc:lag", options))
        .await
        .expect("loaded in time")
        .expect("open");
    for i in 0..40 {
        w.insert(w.len(), &format!("{}", i % 10)).unwrap();
        sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + WAIT;
    while r.text() != w.text() || w.has_pending() {
        assert!(
            Instant::now() < deadline,
            "{:?} vs {:?}",
            r.text(),
            w.text()
        );
        sleep(Duration::from_millis(20)).await;
    }
    let mut seen = Vec::new();
    while let Ok(Some(e)) = timeout(Duration::from_millis(200), events.next()).await {
        seen.push(e);
    }
    // The four kept, then the marker where the drops began (an event or two may
    // follow it once reading made room again).
    assert!(seen.len() <= 7, "{seen:?}");
    assert_eq!(seen.get(4), Some(&DocumentEvent::Lagged), "{seen:?}");
    // Read again: events flow again.
    w.insert(0, "x").unwrap();
    let next = timeout(WAIT, events.next())
        .await
        .expect("an event")
        .expect("open");
    assert!(matches!(next, DocumentEvent::Changed { .. }), "{next:?}");
}
