//! The shared vectors of `vectors/ot.json`, which the TypeScript implementation
//! (client-js/test/collab-ot.test.ts) checks too.

// Helpers outside #[test] functions unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use collab::ot::{Operation, compose, invert, transform, transform_position};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors/ot.json");
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cases(name: &str) -> Vec<Value> {
    let cases = vectors()[name].as_array().unwrap().clone();
    assert!(!cases.is_empty(), "no {name} cases");
    cases
}

/// An operation of the vectors, which must be written normalized.
fn op(case: &Value, field: &str) -> Operation {
    let value = &case[field];
    let op = Operation::from_value(value).unwrap_or_else(|e| panic!("{field} of {case}: {e}"));
    assert_eq!(&wire(&op), value, "{field} is not normalized in {case}");
    op
}

fn wire(op: &Operation) -> Value {
    serde_json::to_value(op).unwrap()
}

fn str_field<'a>(case: &'a Value, field: &str) -> &'a str {
    case[field].as_str().unwrap()
}

fn expected_error(case: &Value) -> Option<&str> {
    case.get("error").map(|e| e.as_str().unwrap())
}

#[test]
fn apply() {
    for case in cases("apply") {
        let result = op(&case, "op").apply(str_field(&case, "doc"));
        match expected_error(&case) {
            Some(code) => assert_eq!(result.unwrap_err().code(), code, "{case}"),
            None => assert_eq!(result.unwrap(), str_field(&case, "expected"), "{case}"),
        }
    }
}

#[test]
fn compose_vectors() {
    for case in cases("compose") {
        let result = compose(&op(&case, "a"), &op(&case, "b"));
        match expected_error(&case) {
            Some(code) => assert_eq!(result.unwrap_err().code(), code, "{case}"),
            None => assert_eq!(wire(&result.unwrap()), case["expected"], "{case}"),
        }
    }
}

#[test]
fn transform_vectors() {
    let cases = cases("transform");
    assert!(cases.len() >= 15);
    for case in cases {
        let (a, b) = (op(&case, "a"), op(&case, "b"));
        let result = transform(&a, &b);
        if let Some(code) = expected_error(&case) {
            assert_eq!(result.unwrap_err().code(), code, "{case}");
            continue;
        }
        let (a2, b2) = result.unwrap();
        assert_eq!(wire(&a2), case["a_prime"], "a' of {case}");
        assert_eq!(wire(&b2), case["b_prime"], "b' of {case}");
        let doc = str_field(&case, "doc");
        let expected = str_field(&case, "result");
        assert_eq!(
            b2.apply(&a.apply(doc).unwrap()).unwrap(),
            expected,
            "a then b' of {case}"
        );
        assert_eq!(
            a2.apply(&b.apply(doc).unwrap()).unwrap(),
            expected,
            "b then a' of {case}"
        );
    }
}

#[test]
fn transform_position_vectors() {
    for case in cases("transform_position") {
        let pos = usize::try_from(case["pos"].as_u64().unwrap()).unwrap();
        let own = case["own"].as_bool().unwrap();
        let expected = case["expected"].as_u64().unwrap();
        assert_eq!(
            transform_position(pos, &op(&case, "op"), own) as u64,
            expected,
            "{case}"
        );
    }
}

#[test]
fn invert_vectors() {
    for case in cases("invert") {
        let o = op(&case, "op");
        let doc = str_field(&case, "doc");
        let result = invert(&o, doc);
        if let Some(code) = expected_error(&case) {
            assert_eq!(result.unwrap_err().code(), code, "{case}");
            continue;
        }
        let inverse = result.unwrap();
        assert_eq!(wire(&inverse), case["expected"], "{case}");
        assert_eq!(
            inverse.apply(&o.apply(doc).unwrap()).unwrap(),
            doc,
            "{case}"
        );
    }
}

#[test]
fn parse_vectors() {
    for case in cases("parse") {
        let o = Operation::from_json(str_field(&case, "json"))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(wire(&o), case["expected"], "{case}");
        assert_eq!(
            o.base_len() as u64,
            case["base_len"].as_u64().unwrap(),
            "{case}"
        );
        assert_eq!(
            o.target_len() as u64,
            case["target_len"].as_u64().unwrap(),
            "{case}"
        );
        // The compact text is the expected value's, and reads back the same.
        assert_eq!(o.to_json(), case["expected"].to_string(), "{case}");
        assert_eq!(Operation::from_json(&o.to_json()).unwrap(), o);
    }
}

#[test]
fn invalid_vectors() {
    for case in cases("invalid") {
        let json = str_field(&case, "json");
        let code = expected_error(&case).unwrap();
        let err = Operation::from_json(json).expect_err(json);
        assert_eq!(err.code(), code, "{case}: {err}");
        // serde refuses it too; when it is JSON, so does from_value.
        assert!(serde_json::from_str::<Operation>(json).is_err(), "{case}");
        if let Ok(value) = serde_json::from_str::<Value>(json) {
            assert_eq!(
                Operation::from_value(&value).unwrap_err().code(),
                code,
                "{case}"
            );
        }
    }
}
