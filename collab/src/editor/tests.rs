//! Unit tests of the editor: loading, publishing and the buffer, remote operations
//! and ties, conflicts, lost replies, skipped entries, snapshots, splitting, gaps
//! and history reads, reloads (trimmed history, another epoch), refusals, offline,
//! cursors. The simulated gateway with many editors is in `tests/editor_sim.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use client::HistoryEntry;

const E: &str = "ep1";

fn cfg() -> Config {
    let mut c = Config::new("me");
    c.user = "alice".into();
    c
}

fn op(json: &str) -> Operation {
    Operation::from_json(json).unwrap()
}

fn sub(epoch: &str, offset: u64, recovered: Option<bool>) -> Subscription {
    Subscription {
        channel: "doc:1".into(),
        epoch: Some(epoch.into()),
        offset: Some(offset),
        recovered,
    }
}

fn snapshot_request(ed: &mut Editor) -> u64 {
    let actions = ed.take_actions();
    match actions.as_slice() {
        [Action::LoadSnapshot { request, .. }] => *request,
        other => panic!("expected LoadSnapshot, got {other:?}"),
    }
}

fn history_request(ed: &mut Editor) -> (u64, Since) {
    let actions = ed.take_actions();
    match actions.as_slice() {
        [Action::FetchHistory { request, since }] => (*request, since.clone()),
        other => panic!("expected FetchHistory, got {other:?}"),
    }
}

/// An editor loaded at `rev` of epoch `E` with `text` (no entries to replay).
fn loaded_with(cfg: Config, text: &str, rev: u64) -> Editor {
    let mut ed = Editor::new(cfg);
    let request = snapshot_request(&mut ed);
    ed.on_snapshot(
        request,
        Some(Snapshot {
            rev,
            epoch: E.into(),
            text: text.into(),
        }),
    );
    assert_eq!(
        ed.take_actions(),
        [Action::Subscribe {
            since: Since {
                offset: rev,
                epoch: E.into()
            }
        }]
    );
    ed.on_subscribed(&sub(E, rev, Some(true)));
    assert_eq!(
        ed.take_events(),
        [Event::Loaded {
            text: text.into(),
            revision: rev
        }]
    );
    assert!(ed.take_actions().is_empty());
    assert!(ed.is_synced());
    ed
}

fn loaded(text: &str, rev: u64) -> Editor {
    loaded_with(cfg(), text, rev)
}

fn payload(op: &str, client: &str, seq: u64) -> Value {
    json!({"op": serde_json::from_str::<Value>(op).unwrap(), "client": client, "seq": seq})
}

fn msg(ed: &mut Editor, offset: u64, op: &str, client: &str, seq: u64) {
    ed.on_message(Some(offset), Some(E), OP_EVENT, &payload(op, client, seq));
}

/// The publishes among the actions: (seq, attempt, op, expected offset).
fn publishes(actions: &[Action]) -> Vec<(u64, u32, String, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish {
                seq,
                attempt,
                payload,
                expect,
            } => {
                assert_eq!(payload["client"], "me");
                assert_eq!(payload["seq"], *seq);
                assert_eq!(expect.epoch, E);
                Some((*seq, *attempt, payload["op"].to_string(), expect.offset))
            }
            _ => None,
        })
        .collect()
}

fn entry(offset: u64, op: &str, client: &str) -> HistoryEntry {
    HistoryEntry {
        event: OP_EVENT.into(),
        payload: payload(op, client, 1),
        msg_id: None,
        offset,
        ts: 0,
    }
}

fn page(epoch: &str, head: u64, entries: Vec<HistoryEntry>) -> HistoryResult {
    HistoryResult {
        channel: "doc:1".into(),
        epoch: epoch.into(),
        offset: head,
        publications: entries,
    }
}

#[test]
fn loads_a_snapshot_and_the_operations_after_it() {
    let mut ed = Editor::new(cfg());
    assert_eq!(ed.insert(0, "x"), Err(EditError::NotLoaded));
    let request = snapshot_request(&mut ed);
    ed.on_snapshot(
        request,
        Some(Snapshot {
            rev: 7,
            epoch: E.into(),
            text: "ab".into(),
        }),
    );
    assert!(
        matches!(ed.take_actions().as_slice(), [Action::Subscribe { since }] if since.offset == 7)
    );
    // The replay follows the answer; the editor is loaded once it has it all.
    ed.on_subscribed(&sub(E, 9, Some(true)));
    msg(&mut ed, 8, r#"[2,"c"]"#, "other", 1);
    assert!(ed.take_events().is_empty(), "no change before Loaded");
    assert!(!ed.is_loaded());
    msg(&mut ed, 9, r#"["<",3]"#, "other", 2);
    assert_eq!(
        ed.take_events(),
        [Event::Loaded {
            text: "<abc".into(),
            revision: 9
        }]
    );
    assert_eq!((ed.text(), ed.revision(), ed.epoch()), ("<abc", 9, E));
    assert!(ed.is_synced());
}

#[test]
fn a_new_document_checks_the_snapshot_again_when_the_channel_is_empty() {
    let mut ed = Editor::new(cfg());
    let request = snapshot_request(&mut ed);
    ed.on_snapshot(request, None);
    assert!(
        matches!(ed.take_actions().as_slice(), [Action::Subscribe { since }] if *since == Since { offset: 0, epoch: String::new() })
    );
    // Empty: a new document, or one that lost its history since the read.
    ed.on_subscribed(&sub("", 0, Some(true)));
    let request = snapshot_request(&mut ed);
    ed.on_snapshot(request, None);
    let (request, since) = history_request(&mut ed);
    assert_eq!(since.offset, 0);
    ed.on_history(request, &page("", 0, vec![]));
    assert_eq!(
        ed.take_events(),
        [Event::Loaded {
            text: String::new(),
            revision: 0
        }]
    );
    // The first operation starts the history; its epoch is adopted.
    ed.insert(0, "hi").unwrap();
    let p = publishes(
        &ed.take_actions()
            .iter()
            .map(|a| match a {
                Action::Publish {
                    seq,
                    attempt,
                    payload,
                    ..
                } => Action::Publish {
                    seq: *seq,
                    attempt: *attempt,
                    payload: payload.clone(),
                    expect: Since {
                        offset: 0,
                        epoch: E.into(),
                    },
                },
                other => other.clone(),
            })
            .collect::<Vec<_>>(),
    );
    assert_eq!(p, [(1, 1, r#"["hi"]"#.into(), 0)]);
    ed.on_publish_result(
        1,
        1,
        PublishOutcome::Accepted {
            offset: 1,
            epoch: E.into(),
        },
    );
    assert_eq!(ed.epoch(), E);
    msg(&mut ed, 1, r#"["hi"]"#, "me", 1);
    assert!(ed.is_synced());
}

#[test]
fn one_operation_in_flight_and_the_buffer_after_it() {
    let mut ed = loaded("abc", 4);
    ed.insert(3, "d").unwrap();
    assert_eq!(
        publishes(&ed.take_actions()),
        [(1, 1, r#"[3,"d"]"#.into(), 4)]
    );
    ed.insert(0, "<").unwrap();
    ed.delete(1, 1).unwrap();
    assert!(ed.take_actions().is_empty(), "one in flight");
    assert_eq!(ed.text(), "<bcd");
    assert!(ed.has_pending() && !ed.is_synced());
    // The reply alone changes nothing; the operation in the log does.
    ed.on_publish_result(
        1,
        1,
        PublishOutcome::Accepted {
            offset: 5,
            epoch: E.into(),
        },
    );
    assert!(ed.take_actions().is_empty());
    msg(&mut ed, 5, r#"[3,"d"]"#, "me", 1);
    assert_eq!(
        publishes(&ed.take_actions()),
        [(2, 1, r#"["<",-1,3]"#.into(), 5)]
    );
    assert!(ed.take_events().is_empty(), "own operations are not echoed");
    msg(&mut ed, 6, r#"["<",-1,3]"#, "me", 2);
    assert!(ed.is_synced());
    assert_eq!((ed.server_text(), ed.revision()), ("<bcd", 6));
}

#[test]
fn remote_operations_go_through_the_inflight_one_and_the_buffer_first_at_ties() {
    let mut ed = loaded("ab", 1);
    ed.insert(1, "X").unwrap(); // in flight
    ed.insert(3, "Y").unwrap(); // buffered: aXbY
    let _ = ed.take_actions();
    ed.set_selection(Selection::caret(1));
    // Another editor inserted at the same place first: its text goes first.
    msg(&mut ed, 2, r#"[1,"R",1]"#, "other", 1);
    assert_eq!(ed.text(), "aRXbY");
    assert_eq!(
        ed.take_events(),
        [Event::Changed {
            op: op(r#"[1,"R",3]"#),
            revision: 2
        }]
    );
    // A remote caret at the insert stays before it.
    assert_eq!(ed.selection(), Selection::caret(1));
    // The in-flight operation was rebased (it conflicts, and goes again as such).
    ed.on_publish_result(
        1,
        1,
        PublishOutcome::Conflict {
            offset: 2,
            epoch: E.into(),
        },
    );
    assert_eq!(
        publishes(&ed.take_actions()),
        [(1, 2, r#"[2,"X",1]"#.into(), 2)]
    );
    msg(&mut ed, 3, r#"[2,"X",1]"#, "me", 1);
    assert_eq!(
        publishes(&ed.take_actions()),
        [(2, 1, r#"[4,"Y"]"#.into(), 3)]
    );
}

#[test]
fn a_conflict_waits_until_the_revision_reaches_its_offset() {
    let mut ed = loaded("", 0);
    // Fresh documents adopt the epoch of their first history.
    ed.insert(0, "x").unwrap();
    let _ = ed.take_actions();
    ed.on_publish_result(
        1,
        1,
        PublishOutcome::Conflict {
            offset: 2,
            epoch: E.into(),
        },
    );
    assert!(ed.take_actions().is_empty(), "not before the revision is 2");
    msg(&mut ed, 1, r#"["a"]"#, "other", 1);
    assert!(ed.take_actions().is_empty());
    msg(&mut ed, 2, r#"[1,"b"]"#, "other", 2);
    // Both remote inserts were first in the log: they go first at equal positions.
    assert_eq!(
        publishes(&ed.take_actions()),
        [(1, 2, r#"[2,"x"]"#.into(), 2)]
    );
    assert_eq!(ed.text(), "abx");
}

#[test]
fn a_lost_reply_is_sent_again_and_the_log_tells_it_went_through() {
    let mut ed = loaded("ab", 3);
    ed.insert(2, "!").unwrap();
    let _ = ed.take_actions();
    ed.on_disconnected();
    ed.on_publish_result(1, 1, PublishOutcome::Failed);
    ed.insert(0, "<").unwrap();
    assert!(
        ed.take_actions().is_empty(),
        "nothing goes out while offline"
    );
    // Back: it was accepted after all; the replay shows it as this editor's own.
    ed.on_resumed(true);
    assert_eq!(
        publishes(&ed.take_actions()),
        [(1, 2, r#"[2,"!"]"#.into(), 3)]
    );
    msg(&mut ed, 4, r#"[2,"!"]"#, "me", 1);
    // The resend's conflict no longer matters (the operation is acknowledged).
    ed.on_publish_result(
        1,
        2,
        PublishOutcome::Conflict {
            offset: 4,
            epoch: E.into(),
        },
    );
    assert_eq!(
        publishes(&ed.take_actions()),
        [(2, 1, r#"["<",3]"#.into(), 4)]
    );
    assert_eq!(ed.text(), "<ab!");
}

#[test]
fn entries_that_are_not_operations_of_the_document_are_skipped_alike() {
    let mut ed = loaded("abc", 1);
    for (offset, event, p) in [
        (2, "op", json!({"op": [5], "client": "x", "seq": 1})),
        (3, "op", json!({"op": "nope"})),
        (4, "chat", json!({"op": [3]})),
        (5, "op", json!({"client": "x"})),
        (6, "op", json!({"op": [1, "!", 2]})),
    ] {
        ed.on_message(Some(offset), Some(E), event, &p);
    }
    let events = ed.take_events();
    let skipped: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Skipped { offset, .. } => Some(*offset),
            _ => None,
        })
        .collect();
    assert_eq!(skipped, [2, 3, 4, 5]);
    assert_eq!((ed.text(), ed.revision()), ("a!bc", 6));
    // Messages without an offset (no history) and duplicates are ignored.
    ed.on_message(None, None, "op", &json!({"op": [4, "?"]}));
    msg(&mut ed, 6, r#"[4,"?"]"#, "x", 2);
    assert_eq!(ed.text(), "a!bc");
}

#[test]
fn snapshots_after_own_operations_at_the_interval() {
    let mut c = cfg();
    c.snapshot_interval = 2;
    let mut ed = loaded_with(c, "", 0);
    ed.insert(0, "a").unwrap();
    let _ = ed.take_actions();
    msg(&mut ed, 1, r#"["a"]"#, "me", 1);
    assert!(ed.take_actions().is_empty());
    msg(&mut ed, 2, r#"[1,"b"]"#, "other", 1);
    assert!(ed.take_actions().is_empty(), "not for another's operation");
    ed.insert(2, "c").unwrap();
    let _ = ed.take_actions();
    msg(&mut ed, 3, r#"[2,"c"]"#, "me", 2);
    msg(&mut ed, 4, r#"[3,"d"]"#, "other", 2);
    ed.insert(4, "e").unwrap();
    let _ = ed.take_actions();
    msg(&mut ed, 5, r#"[4,"e"]"#, "me", 3);
    ed.insert(5, "f").unwrap();
    let _ = ed.take_actions();
    msg(&mut ed, 6, r#"[5,"f"]"#, "me", 4);
    let actions = ed.take_actions();
    let snap = actions.iter().find_map(|a| match a {
        Action::PublishSnapshot { payload } => Snapshot::from_payload(payload),
        _ => None,
    });
    assert_eq!(
        snap,
        Some(Snapshot {
            rev: 6,
            epoch: E.into(),
            text: "abcdef".into()
        })
    );
}

#[test]
fn pick_takes_the_highest_revision_of_the_newest_epoch() {
    let s = |rev: u64, epoch: &str| json!({"rev": rev, "epoch": epoch, "text": format!("{epoch}{rev}")});
    let entries = [
        s(900, "old"),
        s(500, "new"),
        s(1000, "new"),
        s(1, "x"),
        s(500, "new"),
        json!(7),
    ];
    assert_eq!(Snapshot::pick(&entries).map(|s| s.rev), Some(1000));
    assert_eq!(
        Snapshot::pick(&[s(900, "old"), s(3, "new")]).map(|s| s.text),
        Some("new3".into())
    );
    assert_eq!(Snapshot::pick(&[]), None);
}

#[test]
fn long_edits_go_out_in_pieces_that_keep_a_paste_whole() {
    let paste: String = "0123456789".repeat(10);
    let mut big = Operation::new();
    big.retain(2).insert(&paste).delete(1).retain(3);
    let mut doc = "abcdef".to_owned();
    let mut rest = Some(big.clone());
    let mut pieces = 0;
    while let Some(o) = rest {
        let (head, tail) = split_operation(&o, 30);
        assert!(head.to_json().len() <= 30, "{head}");
        assert!(!head.is_noop());
        doc = head.apply(&doc).unwrap();
        rest = tail;
        pieces += 1;
    }
    assert_eq!(doc, big.apply("abcdef").unwrap());
    assert!(pieces > 4);
    // The first piece inserts the end of the paste.
    let (head, _) = split_operation(&big, 30);
    assert!(matches!(&head.components()[1], Component::Insert(s) if paste.ends_with(s.as_str())));
    // An operation that fits is not split; JSON escapes and non-BMP text count.
    assert_eq!(
        split_operation(&op(r#"[1,"x"]"#), 30),
        (op(r#"[1,"x"]"#), None)
    );
    let (h, t) = split_operation(&op(r#"["😀😀😀😀😀😀\n\n"]"#), 12);
    assert_eq!(
        compose(&h, &t.unwrap()).unwrap(),
        op(r#"["😀😀😀😀😀😀\n\n"]"#)
    );

    // In the editor: piece after piece, each acknowledged before the next.
    let mut c = cfg();
    c.max_op_bytes = 40;
    let mut ed = loaded_with(c, "ab", 1);
    ed.insert(1, &paste).unwrap();
    let mut rev = 1;
    let mut seqs = Vec::new();
    loop {
        let p = publishes(&ed.take_actions());
        let Some((seq, _, json, expect)) = p.first().cloned() else {
            break;
        };
        assert!(json.len() <= 40, "{json}");
        assert_eq!(expect, rev);
        rev += 1;
        seqs.push(seq);
        msg(&mut ed, rev, &json, "me", seq);
    }
    assert!(seqs.len() > 3);
    assert_eq!(ed.server_text(), format!("a{paste}b"));
    assert!(ed.is_synced());
}

#[test]
fn a_gap_is_filled_from_history_and_a_partial_resume_too() {
    let mut ed = loaded("", 0);
    msg(&mut ed, 1, r#"["a"]"#, "x", 1);
    // 2 is missing: 3 waits while history is read.
    msg(&mut ed, 3, r#"[2,"c"]"#, "x", 3);
    assert_eq!(ed.text(), "a");
    let (request, since) = history_request(&mut ed);
    assert_eq!(since.offset, 1);
    assert!(ed.is_behind());
    ed.on_history(
        request,
        &page(
            E,
            3,
            vec![entry(2, r#"[1,"b"]"#, "x"), entry(3, r#"[2,"c"]"#, "x")],
        ),
    );
    assert_eq!((ed.text(), ed.revision()), ("abc", 3));
    assert!(!ed.is_behind());

    // A resume that could not replay everything: history, page after page.
    ed.on_disconnected();
    ed.on_resumed(false);
    let (request, since) = history_request(&mut ed);
    assert_eq!(since.offset, 3);
    ed.on_history(request, &page(E, 5, vec![entry(4, r#"[3,"d"]"#, "x")]));
    let (request, since) = history_request(&mut ed);
    assert_eq!(since.offset, 4);
    ed.on_history(request, &page(E, 5, vec![entry(5, r#"[4,"e"]"#, "x")]));
    assert_eq!(ed.text(), "abcde");
    assert!(ed.is_synced());
    // A failed read is asked again.
    msg(&mut ed, 7, r#"[5,"g"]"#, "x", 7);
    let (request, _) = history_request(&mut ed);
    ed.on_history_failed(request);
    let (request, _) = history_request(&mut ed);
    ed.on_history(
        request,
        &page(
            E,
            7,
            vec![entry(6, r#"[5,"f"]"#, "x"), entry(7, r#"[6,"g"]"#, "x")],
        ),
    );
    assert_eq!(ed.text(), "abcdefg");
}

#[test]
fn history_no_longer_holding_the_revision_reloads_and_drops_local_edits() {
    let mut ed = loaded("ab", 2);
    ed.insert(0, "x").unwrap();
    let _ = ed.take_actions();
    ed.on_resumed(false);
    let (request, _) = history_request(&mut ed);
    // Entries 3 and 4 are gone (trimmed).
    ed.on_history(request, &page(E, 6, vec![entry(5, r#"[2,"!"]"#, "y")]));
    let request = snapshot_request(&mut ed);
    assert!(ed.insert(0, "y").is_err(), "no edits while loading");
    ed.on_snapshot(
        request,
        Some(Snapshot {
            rev: 5,
            epoch: E.into(),
            text: "AB!".into(),
        }),
    );
    assert_eq!(
        ed.take_events(),
        [Event::Reloaded {
            text: "AB!".into(),
            revision: 5,
            lost_local_edits: true
        }]
    );
    let (request, since) = history_request(&mut ed);
    assert_eq!(since.offset, 5);
    ed.on_history(request, &page(E, 6, vec![entry(6, r#"[3,"?"]"#, "y")]));
    assert_eq!(ed.text(), "AB!?");
    assert!(ed.is_synced());
}

#[test]
fn another_epoch_starts_again_from_the_snapshot_as_its_revision_0() {
    let mut ed = loaded("abc", 8);
    ed.insert(3, "d").unwrap();
    let _ = ed.take_actions();
    // Redis lost the history; someone started it again from the snapshot.
    ed.on_publish_result(
        1,
        1,
        PublishOutcome::Conflict {
            offset: 1,
            epoch: "ep2".into(),
        },
    );
    let request = snapshot_request(&mut ed);
    ed.on_snapshot(
        request,
        Some(Snapshot {
            rev: 5,
            epoch: E.into(),
            text: "ab".into(),
        }),
    );
    assert!(matches!(
        ed.take_events().as_slice(),
        [Event::Reloaded {
            lost_local_edits: true,
            ..
        }]
    ));
    let (request, since) = history_request(&mut ed);
    assert_eq!(
        since,
        Since {
            offset: 5,
            epoch: E.into()
        }
    );
    ed.on_history(request, &page("ep2", 1, vec![]));
    let (request, since) = history_request(&mut ed);
    assert_eq!(
        since,
        Since {
            offset: 0,
            epoch: "ep2".into()
        }
    );
    ed.on_history(request, &page("ep2", 1, vec![entry(1, r#"[2,"c"]"#, "y")]));
    assert_eq!((ed.text(), ed.revision(), ed.epoch()), ("abc", 1, "ep2"));
    // Late messages of the old epoch are ignored.
    msg(&mut ed, 9, r#"[3,"z"]"#, "y", 9);
    assert_eq!(ed.text(), "abc");
    assert!(ed.is_synced());
}

#[test]
fn a_publish_refused_for_good_drops_the_local_edits() {
    let mut ed = loaded("ab", 1);
    ed.insert(0, "x").unwrap();
    ed.insert(0, "y").unwrap();
    let _ = ed.take_actions();
    ed.on_publish_result(1, 1, PublishOutcome::Refused);
    assert_eq!(
        ed.take_events(),
        [Event::Reloaded {
            text: "ab".into(),
            revision: 1,
            lost_local_edits: true
        }]
    );
    assert!(ed.is_synced());
    assert_eq!(ed.text(), "ab");
}

#[test]
fn stale_outcomes_are_ignored() {
    let mut ed = loaded("ab", 1);
    ed.insert(0, "x").unwrap();
    let _ = ed.take_actions();
    ed.on_publish_result(1, 9, PublishOutcome::Failed);
    ed.on_publish_result(7, 1, PublishOutcome::Refused);
    assert!(ed.take_actions().is_empty() && ed.take_events().is_empty());
    ed.on_history(99, &page("zzz", 50, vec![]));
    ed.on_snapshot(99, None);
    assert!(ed.take_actions().is_empty() && ed.is_loaded());
}

#[test]
fn edits_out_of_range_or_of_another_length_are_refused() {
    let mut ed = loaded("abc", 1);
    assert_eq!(
        ed.insert(4, "x"),
        Err(EditError::OutOfRange { end: 4, len: 3 })
    );
    assert_eq!(
        ed.delete(2, 2),
        Err(EditError::OutOfRange { end: 4, len: 3 })
    );
    assert!(matches!(ed.edit(&op("[2]")), Err(EditError::Ot(_))));
    assert_eq!(ed.text(), "abc");
    ed.edit(&op("[3]")).unwrap();
    assert!(ed.take_actions().is_empty(), "a no-op is not published");
    ed.replace(1, 1, "😀").unwrap();
    assert_eq!((ed.text(), ed.len()), ("a😀c", 3));
}

#[test]
fn cursors_are_sent_in_log_coordinates_and_received_in_local_ones() {
    let mut ed = loaded("hello", 3);
    assert_eq!(ed.take_cursor(), None);
    ed.insert(0, ">> ").unwrap(); // pending
    ed.set_selection(Selection { anchor: 3, head: 8 });
    // Sent at revision 3, in the log's text: the caret inside the pending insert
    // goes where it is inserted.
    assert_eq!(
        ed.take_cursor(),
        Some(json!({"client": "me", "user": "alice", "rev": 3, "anchor": 0, "head": 5}))
    );
    assert!(!ed.cursor_pending());

    // Another editor's cursor at this revision shows after the pending insert.
    assert!(ed.on_cursor(&json!({"client": "bob", "user": "b", "rev": 3, "anchor": 1, "head": 1})));
    assert_eq!(
        ed.take_events(),
        [Event::Cursor {
            client: "bob".into(),
            user: "b".into(),
            selection: Selection::caret(4)
        }]
    );
    // One of an older revision moves through the operations in between; one of a
    // revision not reached yet waits for it.
    msg(&mut ed, 4, r#"[5,"!"]"#, "carol", 1);
    let _ = ed.take_events();
    assert!(ed.on_cursor(&json!({"client": "dan", "user": "d", "rev": 3, "anchor": 5, "head": 5})));
    assert!(
        ed.on_cursor(&json!({"client": "carol", "user": "c", "rev": 5, "anchor": 0, "head": 6}))
    );
    let events = ed.take_events();
    assert_eq!(
        events,
        [Event::Cursor {
            client: "dan".into(),
            user: "d".into(),
            selection: Selection::caret(8)
        }]
    );
    let clients: Vec<String> = ed.remote_cursors().into_iter().map(|c| c.client).collect();
    assert_eq!(clients, ["bob", "dan"]);
    msg(&mut ed, 5, r#"[6,"?"]"#, "x", 1);
    let events = ed.take_events();
    assert!(events.contains(&Event::Cursor {
        client: "carol".into(),
        user: "c".into(),
        selection: Selection { anchor: 0, head: 9 }
    }));
    // A user who left takes their cursors along; own and malformed ones are ignored.
    ed.remove_cursors_of("b");
    assert_eq!(
        ed.take_events(),
        [Event::CursorRemoved {
            client: "bob".into()
        }]
    );
    assert!(!ed.on_cursor(&json!({"client": "me", "rev": 5, "anchor": 0, "head": 0})));
    assert!(!ed.on_cursor(&json!({"client": "eve", "rev": -1, "anchor": 0, "head": 0})));
    assert!(!ed.on_cursor(&json!("nope")));
    // Positions past the end are taken as the end.
    assert!(ed.on_cursor(&json!({"client": "zed", "rev": 5, "anchor": 99, "head": 99})));
    let zed = ed
        .remote_cursors()
        .into_iter()
        .find(|c| c.client == "zed")
        .unwrap();
    assert_eq!(zed.selection, Selection::caret(ed.len()));
}
