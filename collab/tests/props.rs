//! Property tests of `collab::ot` on random documents with non-BMP text and random
//! concurrent operations. The TypeScript tests (client-js/test/collab-ot.test.ts)
//! check the same properties with fast-check.

// Helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use collab::ot::{Component, Operation, Selection, compose, invert, transform, transform_position};
use proptest::prelude::*;

/// Characters of the random documents and inserts: ASCII, BMP (é, 中) and non-BMP
/// (😀, U+10FFFF, the last code point).
const ALPHABET: &[char] = &['a', 'b', '😀', 'é', '\u{10FFFF}', '中'];

/// A character no random text has, to follow in the results.
const MARK: char = '☃';

fn text(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(ALPHABET), len).prop_map(String::from_iter)
}

/// One step of a random operation; lengths are clipped to what is left of the
/// document when the operation is built.
#[derive(Debug, Clone)]
enum Step {
    Retain(usize),
    Delete(usize),
    Insert(String),
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        (1..6usize).prop_map(Step::Retain),
        (1..6usize).prop_map(Step::Delete),
        text(1..=3).prop_map(Step::Insert),
    ];
    prop::collection::vec(step, 0..8)
}

/// A random operation on documents of `len` code points: the steps, then a retain of
/// whatever is left.
fn build(len: usize, steps: &[Step]) -> Operation {
    let mut op = Operation::new();
    let mut left = len;
    for step in steps {
        match step {
            Step::Retain(n) => {
                let n = (*n).min(left);
                op.retain(n);
                left -= n;
            }
            Step::Delete(n) => {
                let n = (*n).min(left);
                op.delete(n);
                left -= n;
            }
            Step::Insert(s) => {
                op.insert(s);
            }
        }
    }
    op.retain(left);
    assert_eq!(op.base_len(), len);
    op
}

fn len(s: &str) -> usize {
    s.chars().count()
}

/// The invariants of the normalized form.
fn assert_normalized(op: &Operation) {
    let (mut base, mut target) = (0, 0);
    for c in op.components() {
        match c {
            Component::Retain(n) => {
                assert!(*n > 0, "{op}");
                base += n;
                target += n;
            }
            Component::Insert(s) => {
                assert!(!s.is_empty(), "{op}");
                target += len(s);
            }
            Component::Delete(n) => {
                assert!(*n > 0, "{op}");
                base += n;
            }
        }
    }
    assert_eq!((base, target), (op.base_len(), op.target_len()), "{op}");
    for pair in op.components().windows(2) {
        let same = std::mem::discriminant(&pair[0]) == std::mem::discriminant(&pair[1]);
        assert!(!same, "adjacent components of one kind in {op}");
        let delete_insert = matches!(pair, [Component::Delete(_), Component::Insert(_)]);
        assert!(!delete_insert, "a delete before an insert in {op}");
    }
    assert_eq!(Operation::from_json(&op.to_json()).as_ref(), Ok(op));
}

/// The code point position of `c` in `s`.
fn index_of(s: &str, c: char) -> Option<usize> {
    s.chars().position(|x| x == c)
}

// --- Documents and inserts where every character is unique, to tell where each one
// went. Original text, a's inserts and b's inserts come from disjoint ranges, each
// mixing BMP and non-BMP code points.

fn original(i: usize) -> char {
    let base = if i.is_multiple_of(2) { 0x100 } else { 0x1F300 };
    char::from_u32(base + i as u32).unwrap_or('?')
}

fn unique_doc(n: usize) -> String {
    (0..n).map(original).collect()
}

/// `op` with every inserted character replaced by a fresh one of `side` (0 or 1).
fn uniquify(op: &Operation, side: u32) -> Operation {
    let mut out = Operation::new();
    let mut k = 0u32;
    for c in op.components() {
        match c {
            Component::Retain(n) => {
                out.retain(*n);
            }
            Component::Delete(n) => {
                out.delete(*n);
            }
            Component::Insert(s) => {
                let fresh: String = s
                    .chars()
                    .map(|_| {
                        k += 1;
                        let base = match (side, k % 2) {
                            (0, 0) => 0xE000,
                            (0, _) => 0xF0000,
                            (_, 0) => 0xE800,
                            _ => 0x100000,
                        };
                        char::from_u32(base + k).unwrap_or('?')
                    })
                    .collect();
                out.insert(&fresh);
            }
        }
    }
    out
}

/// The base-document indices an operation deletes.
fn deleted(op: &Operation) -> HashSet<usize> {
    let mut old = 0;
    let mut out = HashSet::new();
    for c in op.components() {
        match c {
            Component::Retain(n) => old += n,
            Component::Insert(_) => {}
            Component::Delete(n) => {
                out.extend(old..old + n);
                old += n;
            }
        }
    }
    out
}

/// The inserts of an operation with the base-document position (gap) of each.
fn inserts(op: &Operation) -> Vec<(usize, String)> {
    let mut old = 0;
    let mut out = Vec::new();
    for c in op.components() {
        match c {
            Component::Retain(n) | Component::Delete(n) => old += n,
            Component::Insert(s) => out.push((old, s.clone())),
        }
    }
    out
}

/// The characters of `s` that are in `keep`, in order.
fn project(s: &str, keep: &HashSet<char>) -> String {
    s.chars().filter(|c| keep.contains(c)).collect()
}

/// A wire form element, valid but not necessarily normalized.
#[derive(Debug, Clone)]
enum Raw {
    Num(i64),
    Str(String),
}

/// The reference semantics of a wire array: apply the elements one by one.
fn naive_apply(doc: &str, raw: &[Raw]) -> String {
    let chars: Vec<char> = doc.chars().collect();
    let mut at = 0;
    let mut out = String::new();
    for r in raw {
        match r {
            Raw::Num(n) if *n > 0 => {
                let n = *n as usize;
                out.extend(&chars[at..at + n]);
                at += n;
            }
            Raw::Num(n) => at += n.unsigned_abs() as usize,
            Raw::Str(s) => out.push_str(s),
        }
    }
    assert_eq!(at, chars.len());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// TP1: both orders converge, and the transformed operations fit where they go.
    #[test]
    fn transform_converges(doc in text(0..=16), sa in steps(), sb in steps()) {
        let a = build(len(&doc), &sa);
        let b = build(len(&doc), &sb);
        let (a2, b2) = transform(&a, &b).unwrap();
        assert_normalized(&a2);
        assert_normalized(&b2);
        prop_assert_eq!(a2.base_len(), b.target_len());
        prop_assert_eq!(b2.base_len(), a.target_len());
        let via_a = b2.apply(&a.apply(&doc).unwrap()).unwrap();
        let via_b = a2.apply(&b.apply(&doc).unwrap()).unwrap();
        prop_assert_eq!(&via_a, &via_b);
        // The composed histories agree as operations too.
        let ab = compose(&a, &b2).unwrap();
        let ba = compose(&b, &a2).unwrap();
        prop_assert_eq!(ab.apply(&doc).unwrap(), via_a);
        prop_assert_eq!(ba.apply(&doc).unwrap(), via_b);
    }

    /// Intention preservation, on documents and inserts of unique characters: every
    /// character deleted by either side is gone, every other original character and
    /// every inserted one is there exactly once, each side's own edit is intact in the
    /// result (the result restricted to that side's inserts and the surviving original
    /// text is what that side produced, restricted the same way), each insert stays in
    /// one piece, and at the same position a's insert comes before b's.
    #[test]
    fn transform_preserves_intentions(n in 0..=16usize, sa in steps(), sb in steps()) {
        let doc = unique_doc(n);
        let a = uniquify(&build(n, &sa), 0);
        let b = uniquify(&build(n, &sb), 1);
        let (a2, b2) = transform(&a, &b).unwrap();
        let result = b2.apply(&a.apply(&doc).unwrap()).unwrap();
        prop_assert_eq!(&a2.apply(&b.apply(&doc).unwrap()).unwrap(), &result);

        let gone: HashSet<usize> = deleted(&a).union(&deleted(&b)).copied().collect();
        for i in &gone {
            prop_assert!(!result.contains(original(*i)), "deleted {} in {}", i, result);
        }
        let kept: HashSet<char> = (0..n).filter(|i| !gone.contains(i)).map(original).collect();
        let (ins_a, ins_b) = (inserts(&a), inserts(&b));
        let chars = |ins: &[(usize, String)]| -> HashSet<char> {
            ins.iter().flat_map(|(_, s)| s.chars()).collect()
        };
        let (chars_a, chars_b) = (chars(&ins_a), chars(&ins_b));
        let expected: HashSet<char> = kept.iter().chain(&chars_a).chain(&chars_b).copied().collect();
        let got: HashSet<char> = result.chars().collect();
        prop_assert_eq!(len(&result), got.len(), "a character twice in {}", result);
        prop_assert_eq!(&got, &expected);

        for (op, own) in [(&a, &chars_a), (&b, &chars_b)] {
            let keep: HashSet<char> = kept.iter().chain(own).copied().collect();
            let alone = op.apply(&doc).unwrap();
            prop_assert_eq!(project(&result, &keep), project(&alone, &keep));
        }
        for (_, s) in ins_a.iter().chain(&ins_b) {
            prop_assert!(result.contains(s.as_str()), "{} split in {}", s, result);
        }
        for (gap_a, sa) in &ins_a {
            for (gap_b, sb) in &ins_b {
                if gap_a == gap_b {
                    prop_assert!(result.find(sa.as_str()) < result.find(sb.as_str()), "tie-break in {}", result);
                }
            }
        }
    }

    /// compose(a, b) has the effect of a then b.
    #[test]
    fn compose_matches_apply(doc in text(0..=16), sa in steps(), sb in steps(), sc in steps()) {
        let a = build(len(&doc), &sa);
        let after_a = a.apply(&doc).unwrap();
        let b = build(len(&after_a), &sb);
        let ab = compose(&a, &b).unwrap();
        assert_normalized(&ab);
        prop_assert_eq!((ab.base_len(), ab.target_len()), (a.base_len(), b.target_len()));
        let after_b = b.apply(&after_a).unwrap();
        prop_assert_eq!(&ab.apply(&doc).unwrap(), &after_b);
        // Associative in effect, and the identity does nothing.
        let c = build(len(&after_b), &sc);
        let left = compose(&ab, &c).unwrap();
        let right = compose(&a, &compose(&b, &c).unwrap()).unwrap();
        prop_assert_eq!(left.apply(&doc).unwrap(), right.apply(&doc).unwrap());
        let mut id = Operation::new();
        id.retain(len(&doc));
        prop_assert_eq!(&compose(&id, &a).unwrap(), &a);
    }

    /// invert undoes; composed with its inverse, an operation has no effect.
    #[test]
    fn invert_undoes(doc in text(0..=16), sa in steps()) {
        let a = build(len(&doc), &sa);
        let inv = invert(&a, &doc).unwrap();
        assert_normalized(&inv);
        prop_assert_eq!(inv.apply(&a.apply(&doc).unwrap()).unwrap(), doc.clone());
        prop_assert_eq!(compose(&a, &inv).unwrap().apply(&doc).unwrap(), doc);
    }

    /// A caret follows the text around it: on unique characters, a caret right before
    /// a surviving character is still right before it after the operation when it is
    /// one's own (an own insert at the caret goes before it), and a caret right after
    /// a surviving character is still right after it when the operation is remote.
    #[test]
    fn positions_follow_the_text(n in 0..=16usize, sa in steps()) {
        let doc = unique_doc(n);
        let a = uniquify(&build(n, &sa), 0);
        let result = a.apply(&doc).unwrap();
        let gone = deleted(&a);
        for i in 0..n {
            if !gone.contains(&i) {
                let before = index_of(&result, original(i));
                prop_assert_eq!(Some(transform_position(i, &a, true)), before);
                let after = before.map(|p| p + 1);
                prop_assert_eq!(Some(transform_position(i + 1, &a, false)), after);
            }
        }
        prop_assert_eq!(transform_position(0, &a, false), 0);
        prop_assert_eq!(transform_position(n, &a, true), a.target_len());
        let mut last = (0, 0);
        for p in 0..=n + 2 {
            let now = (transform_position(p, &a, false), transform_position(p, &a, true));
            prop_assert!(now.0 <= now.1 && now.1 <= a.target_len());
            prop_assert!(now.0 >= last.0 && now.1 >= last.1, "not monotonic");
            last = now;
        }
    }

    /// transform_position agrees with transform: a one-character insert at p lands at
    /// transform_position(p, a, true) when a wins the tie (a is transform's first
    /// argument) and at transform_position(p, a, false) when it does.
    #[test]
    fn positions_agree_with_transform(doc in text(0..=16), sa in steps(), p in 0..=16usize) {
        let n = len(&doc);
        let p = p.min(n);
        let a = build(n, &sa);
        let mut b = Operation::new();
        b.retain(p).insert(&MARK.to_string()).retain(n - p);
        let (_, b2) = transform(&a, &b).unwrap();
        let a_first = b2.apply(&a.apply(&doc).unwrap()).unwrap();
        prop_assert_eq!(index_of(&a_first, MARK), Some(transform_position(p, &a, true)));
        let (b2, _) = transform(&b, &a).unwrap();
        let b_first = b2.apply(&a.apply(&doc).unwrap()).unwrap();
        prop_assert_eq!(index_of(&b_first, MARK), Some(transform_position(p, &a, false)));
        let sel = Selection { anchor: p, head: n };
        prop_assert_eq!(sel.transform(&a, false), Selection {
            anchor: transform_position(p, &a, false),
            head: transform_position(n, &a, false),
        });
    }

    /// The wire form reads back what it writes, normalizes what it reads without
    /// changing its meaning, and serde agrees with to_json.
    #[test]
    fn json_round_trip(
        raw in prop::collection::vec(prop_oneof![
            (1i64..5).prop_map(Raw::Num),
            (-4i64..0).prop_map(Raw::Num),
            text(1..=3).prop_map(Raw::Str),
        ], 0..10),
        pool in text(40..=40),
    ) {
        let value = serde_json::Value::Array(raw.iter().map(|r| match r {
            Raw::Num(n) => serde_json::Value::from(*n),
            Raw::Str(s) => serde_json::Value::from(s.as_str()),
        }).collect());
        let op = Operation::from_json(&value.to_string()).unwrap();
        assert_normalized(&op);
        prop_assert_eq!(&Operation::from_value(&value).unwrap(), &op);
        prop_assert_eq!(serde_json::to_string(&op).unwrap(), op.to_json());
        let back: Operation = serde_json::from_str(&op.to_json()).unwrap();
        prop_assert_eq!(&back, &op);
        let doc: String = pool.chars().take(op.base_len()).collect();
        prop_assert_eq!(op.apply(&doc).unwrap(), naive_apply(&doc, &raw));
    }
}

/// Nothing is quadratic: a long insert cut into 50,000 pieces by the next operation,
/// and transformed against 50,000 small edits. A quadratic split would take minutes.
#[test]
fn long_operations_are_linear() {
    let n = 100_000;
    let mut a = Operation::new();
    a.insert(&"😀é".repeat(n / 2));
    let mut b = Operation::new();
    let mut c = Operation::new();
    for _ in 0..n / 2 {
        b.retain(1).delete(1);
        c.retain(1).insert("x");
    }
    let ab = compose(&a, &b).unwrap();
    assert_eq!(ab.apply("").unwrap(), "😀".repeat(n / 2));
    let mut d = Operation::new();
    d.delete(n / 2);
    let (c2, d2) = transform(&c, &d).unwrap();
    assert_eq!(c2.target_len(), n / 2);
    assert_eq!(d2.base_len(), n);
    let doc = "a".repeat(n / 2);
    let r = c.apply(&doc).unwrap();
    assert_eq!(invert(&c, &doc).unwrap().apply(&r).unwrap(), doc);
    assert_eq!(transform_position(n / 2, &c, true), n);
}
