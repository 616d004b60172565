//! The documentation against the code, in both directions, so the docs cannot drift:
//!
//! - every flag, environment variable and default in the tables of
//!   docs/configuration.md against the live binary's `gateway --help` (and
//!   `gateway mint-token --help`), and every flag of `--help` in those tables;
//! - every flag in the gateway commands of README.md and docs/integrating.md exists;
//! - the metric table of docs/configuration.md against the `/metrics` of running
//!   gateways (in-memory broker and Redis): every metric, type, label and label value,
//!   and every `tidings_*` name (with `{label="value"}`) anywhere in the docs;
//! - the error code and close code tables of docs/protocol.md against the protocol
//!   crate (`ErrorCode`, `close::*`).
//!
//! Nothing here is a hard-coded list of flags or metrics: the binary and the crate are
//! the reference, so a new flag or metric without documentation fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::ErrorCode;
use support::{Client, Gateway, eventually, token};
use testkit::RedisServer;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// --- Markdown tables -----------------------------------------------------------------

/// Cells of a table row (`| a | b |`), split on unescaped `|`, trimmed, with `\|`
/// turned back into `|`.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cur.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cur).trim().to_owned()),
            _ => cur.push(c),
        }
    }
    out.push(cur.trim().to_owned());
    out
}

/// The body rows of every table in `text` whose header row is exactly `header`.
fn tables(text: &str, header: &[&str]) -> Vec<Vec<String>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut rows = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_start().starts_with('|') && cells(lines[i]) == header {
            i += 2; // header and the |---| line
            while i < lines.len() && lines[i].trim_start().starts_with('|') {
                rows.push(cells(lines[i]));
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    rows
}

/// The contents of the `code spans` in a cell, in order.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_owned())
        .collect()
}

// --- `--help` ------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Flag {
    env: Option<String>,
    default: Option<String>,
}

/// Long flags of a `--help` text with their `[env: ...]` and first `[default: ...]`.
fn parse_help(text: &str) -> BTreeMap<String, Flag> {
    let mut flags: BTreeMap<String, Flag> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim_start();
        // Flag lines are indented by 2 or 6; descriptions by 10 or more.
        let flag_part = if indent < 10 {
            t.strip_prefix("--").or_else(|| {
                t.strip_prefix('-')
                    .and_then(|r| r.split_once(", --").map(|(_, f)| f))
            })
        } else {
            None
        };
        if let Some(rest) = flag_part {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if !name.is_empty() {
                flags.entry(name.clone()).or_default();
                current = Some(name);
            }
        } else if indent < 10 && !t.is_empty() {
            // A heading ("Options:", a group name): no flag is current any more.
            current = None;
        }
        let Some(cur) = &current else { continue };
        let f = flags.get_mut(cur).unwrap();
        if let Some(i) = line.find("[env: ") {
            let name: String = line[i + 6..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            f.env = Some(name);
        }
        if f.default.is_none()
            && let Some(i) = line.find("[default: ")
        {
            let v = &line[i + 10..];
            let v = &v[..v.find(']').unwrap_or(v.len())];
            f.default = Some(v.trim().trim_matches('"').to_owned());
        }
    }
    flags.remove("help");
    flags.remove("version");
    flags
}

fn help_of(args: &[&str]) -> BTreeMap<String, Flag> {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env_clear()
        .output()
        .expect("run gateway --help");
    assert!(out.status.success(), "gateway {args:?} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let flags = parse_help(&text);
    assert!(flags.len() >= 3, "cannot parse gateway {args:?}:\n{text}");
    flags
}

/// The Default cell of the docs against `--help`'s default: the cell (code spans
/// unwrapped) starts with it, followed by nothing, ` (` or `,`; without a default in
/// `--help` the cell starts with one of `without`.
fn default_matches(doc: &str, help: Option<&str>, without: &[&str]) -> bool {
    let doc = doc.replace('`', "");
    match help {
        Some(h) => {
            doc == h
                || doc
                    .strip_prefix(h)
                    .is_some_and(|rest| rest.starts_with(" (") || rest.starts_with(','))
        }
        None => without.iter().any(|w| doc.starts_with(w)),
    }
}

#[test]
fn configuration_tables_match_gateway_help() {
    let help = help_of(&["--help"]);
    let doc = read("docs/configuration.md");
    let rows = tables(
        &doc,
        &["Flag / TOML key", "Environment", "Default", "Meaning"],
    );
    assert!(
        rows.len() > 20,
        "settings tables not found in configuration.md"
    );
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for row in &rows {
        let Some(flag) = code_spans(&row[0])
            .first()
            .and_then(|f| f.strip_prefix("--"))
            .map(str::to_owned)
        else {
            problems.push(format!("row without a `--flag`: {row:?}"));
            continue;
        };
        if !documented.insert(flag.clone()) {
            problems.push(format!("--{flag} is documented twice"));
        }
        let Some(h) = help.get(&flag) else {
            problems.push(format!(
                "configuration.md documents --{flag}, which `gateway --help` does not list"
            ));
            continue;
        };
        let env = code_spans(&row[1]).first().cloned();
        if env != h.env {
            problems.push(format!(
                "--{flag}: configuration.md says environment {env:?}, --help says {:?}",
                h.env
            ));
        }
        if !default_matches(&row[2], h.default.as_deref(), &["none"]) {
            problems.push(format!(
                "--{flag}: configuration.md's default `{}` does not start with --help's [default: {}]",
                row[2],
                h.default.as_deref().unwrap_or("(none: write `none`)")
            ));
        }
    }
    for (flag, h) in &help {
        if !documented.contains(flag) {
            problems.push(format!(
                "--{flag} (`gateway --help`: env {:?}, default {:?}) is missing from the tables of docs/configuration.md",
                h.env, h.default
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn mint_token_table_matches_its_help() {
    let help = help_of(&["mint-token", "--help"]);
    let doc = read("docs/configuration.md");
    let rows = tables(&doc, &["Option", "Default", "Meaning"]);
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for row in &rows {
        let spans = code_spans(&row[0]);
        let Some(flag) = spans
            .first()
            .and_then(|f| f.strip_prefix("--"))
            .map(str::to_owned)
        else {
            continue;
        };
        documented.insert(flag.clone());
        let Some(h) = help.get(&flag) else {
            problems.push(format!("mint-token has no --{flag}"));
            continue;
        };
        let env = spans.iter().find(|s| s.starts_with("TIDINGS_")).cloned();
        if env != h.env {
            problems.push(format!(
                "mint-token --{flag}: docs say env {env:?}, --help says {:?}",
                h.env
            ));
        }
        if !default_matches(&row[1], h.default.as_deref(), &["none", "required"]) {
            problems.push(format!(
                "mint-token --{flag}: default `{}` vs --help {:?}",
                row[1], h.default
            ));
        }
    }
    for flag in help.keys() {
        if !documented.contains(flag) {
            problems.push(format!("mint-token --{flag} is not in configuration.md"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Shell lines of fenced code blocks, with `\` continuations joined.
fn shell_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    let mut cur = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        let l = line.trim_end();
        if let Some(head) = l.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(l);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

#[test]
fn gateway_commands_in_the_guides_use_real_flags() {
    let gateway = help_of(&["--help"]);
    let mint = help_of(&["mint-token", "--help"]);
    let mut problems = Vec::new();
    let mut commands = 0;
    for file in ["README.md", "docs/integrating.md", "client-js/README.md"] {
        let Ok(text) = std::fs::read_to_string(repo().join(file)) else {
            continue;
        };
        for line in shell_lines(&text) {
            let words: Vec<&str> = line.split_whitespace().collect();
            // `cargo run ... -p gateway -- <args>`, or `gateway <args>`.
            let start = if let Some(i) = words.windows(3).position(|w| w == ["-p", "gateway", "--"])
            {
                i + 3
            } else if let Some(i) = words
                .iter()
                .position(|w| *w == "gateway" || w.ends_with("/gateway"))
                .filter(|i| *i == 0 || words[*i - 1].ends_with('(') || words[*i - 1] == "$(")
            {
                i + 1
            } else {
                continue;
            };
            commands += 1;
            let args = &words[start..];
            let table = if args.first() == Some(&"mint-token") {
                &mint
            } else {
                &gateway
            };
            for w in args {
                let w = w.trim_end_matches(')');
                if let Some(flag) = w.strip_prefix("--") {
                    let flag = flag.split('=').next().unwrap();
                    if !table.contains_key(flag) {
                        problems.push(format!(
                            "{file}: `{line}` uses --{flag}, unknown to the gateway"
                        ));
                    }
                }
            }
        }
    }
    assert!(commands >= 2, "no gateway commands found in the guides");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// --- Metrics ----------------------------------------------------------------------------

#[derive(Default)]
struct Exposition {
    /// name -> type, from the `# TYPE` lines.
    types: BTreeMap<String, String>,
    /// metric name -> label name -> values (histogram `le` left out).
    labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exposition {
    fn add(&mut self, text: &str) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                self.types.insert(name.to_owned(), kind.to_owned());
                self.labels.entry(name.to_owned()).or_default();
            } else if !line.starts_with('#') && !line.is_empty() {
                let series = line.rsplit_once(' ').unwrap().0;
                let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
                let base = self.base(name);
                let entry = self.labels.entry(base).or_default();
                for (k, v) in matchers(labels.trim_end_matches('}')) {
                    if k != "le" {
                        entry.entry(k).or_default().insert(v);
                    }
                }
            }
        }
    }

    /// The metric a sample name belongs to (`x_bucket` -> `x` for histograms).
    fn base(&self, sample: &str) -> String {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(b) = sample.strip_suffix(suffix)
                && self.types.get(b).is_some_and(|t| t == "histogram")
            {
                return b.to_owned();
            }
        }
        sample.to_owned()
    }
}

/// `a="x", b=~"y"` -> the exact (`=`) matchers.
fn matchers(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|m| {
            let (k, v) = m.split_once('=')?;
            let k = k.trim();
            if k.is_empty() || k.ends_with('!') || v.starts_with('~') {
                return None;
            }
            Some((k.to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect()
}

async fn exposition() -> Exposition {
    let mut e = Exposition::default();
    // In-memory broker, then Redis (the broker's per-connection series exist only
    // there). Each gateway delivers one message to a connected client, and the Redis
    // one runs a few fast probe rounds, so that series created on first use show.
    let redis = RedisServer::start().await;
    for with_redis in [false, true] {
        let mut b = Gateway::builder();
        if with_redis {
            b = b
                .redis(&redis, "docs")
                .args(&["--redis-probe-interval", "100ms"]);
        }
        let gw = b.start().await;
        eventually("ready", || async { gw.admin_get("/readyz").await.0 == 200 }).await;
        let mut c = Client::connect(&gw, &token("docs-check", &[], &[], 60)).await;
        let (status, body) = gw
            .publish(serde_json::json!({"user": "docs-check", "payload": {}}))
            .await;
        assert_eq!(status, 200, "{body}");
        c.message().await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        e.add(&gw.metrics().await);
    }
    assert!(
        e.types.contains_key("tidings_connections"),
        "no metrics read"
    );
    e
}

#[tokio::test]
async fn metric_table_matches_live_metrics() {
    let e = exposition().await;
    let doc = read("docs/configuration.md");
    let rows = tables(&doc, &["Metric", "Type", "Labels", "Meaning"]);
    assert!(
        rows.len() > 10,
        "metric table not found in configuration.md"
    );
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for row in &rows {
        let name = code_spans(&row[0]).first().cloned().unwrap_or_default();
        documented.insert(name.clone());
        let Some(kind) = e.types.get(&name) else {
            problems.push(format!(
                "configuration.md lists `{name}`, which no gateway exports"
            ));
            continue;
        };
        if &row[1] != kind {
            problems.push(format!(
                "{name}: documented as {}, exported as {kind}",
                row[1]
            ));
        }
        let live = &e.labels[&name];
        let spans = code_spans(&row[2]);
        if row[2] == "none" {
            if !live.is_empty() {
                problems.push(format!(
                    "{name}: documented without labels, exported with {:?}",
                    live.keys().collect::<Vec<_>>()
                ));
            }
            continue;
        }
        let Some((label, values)) = spans.split_first() else {
            problems.push(format!(
                "{name}: Labels cell `{}` is neither `none` nor `label`: values",
                row[2]
            ));
            continue;
        };
        let live_labels: Vec<&String> = live.keys().collect();
        if live_labels != [label] {
            problems.push(format!(
                "{name}: documented label `{label}`, exported labels {live_labels:?}"
            ));
            continue;
        }
        if !values.is_empty() {
            let doc_values: BTreeSet<String> = values.iter().cloned().collect();
            if &doc_values != live.get(label).unwrap() {
                problems.push(format!(
                    "{name}{{{label}}}: documented values {doc_values:?}, exported {:?}",
                    live[label]
                ));
            }
        }
    }
    for (name, kind) in &e.types {
        if !documented.contains(name) {
            problems.push(format!(
                "`{name}` ({kind}, labels {:?}) is exported but missing from the metric table of docs/configuration.md",
                e.labels[name].keys().collect::<Vec<_>>()
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Every metric name (or `tidings_x_` prefix) named anywhere in the docs exists, and
    // so does every `{label="value"}` written after it.
    let mut files: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .filter_map(|d| {
            let p = d.unwrap().path();
            (p.extension().is_some_and(|x| x == "md"))
                .then(|| format!("docs/{}", p.file_name().unwrap().to_string_lossy()))
        })
        .collect();
    files.extend(["README.md".to_owned(), "client-js/README.md".to_owned()]);
    for f in &files {
        let text = read(f);
        let mut rest = text.as_str();
        while let Some(i) = rest.find("tidings_") {
            let tail = &rest[i..];
            let len = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..len];
            rest = &tail[len..];
            if name.ends_with('_') {
                if !e.types.keys().any(|k| k.starts_with(name)) {
                    problems.push(format!("{f}: no metric starts with `{name}`"));
                }
                continue;
            }
            let base = e.base(name);
            let Some(live) = e.labels.get(&base) else {
                problems.push(format!("{f}: `{name}` is not exported by the gateway"));
                continue;
            };
            if let Some(body) = rest
                .strip_prefix('{')
                .and_then(|r| r.find('}').map(|j| &r[..j]))
            {
                for (label, value) in matchers(body) {
                    match live.get(&label) {
                        Some(values) if !values.contains(&value) => problems.push(format!(
                            "{f}: {name}{{{label}=\"{value}\"}}: exported values are {values:?}"
                        )),
                        None => problems.push(format!("{f}: {name} has no label `{label}`")),
                        _ => {}
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// --- Error and close codes ----------------------------------------------------------------

/// `ErrorCode::X => "x"` arms of protocol/src/error.rs: every code the crate has.
fn crate_error_codes() -> BTreeSet<String> {
    let src = read("protocol/src/error.rs");
    let mut codes = BTreeSet::new();
    for line in src.lines() {
        if let Some((_, rhs)) = line.trim().split_once("=> \"")
            && line.trim().starts_with("ErrorCode::")
        {
            codes.insert(rhs.trim_end_matches(['"', ',']).to_owned());
        }
    }
    // `unknown` stands for codes of a newer peer; it is never sent.
    codes.remove("unknown");
    assert!(codes.len() >= 10, "cannot read protocol/src/error.rs");
    codes
}

#[test]
fn error_code_table_matches_the_protocol_crate() {
    let doc = read("docs/protocol.md");
    let rows = tables(
        &doc,
        &["Code", "Meaning", "Strike", "What the client should do"],
    );
    let documented: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| code_spans(&r[0]).first().cloned())
        .collect();
    let crate_codes = crate_error_codes();
    for code in &crate_codes {
        // The real type, not only its source text: the string decodes to that code.
        let c: ErrorCode = serde_json::from_value(serde_json::json!(code)).unwrap();
        assert_eq!(c.as_str(), code, "ErrorCode does not round-trip `{code}`");
    }
    for code in &documented {
        let c: ErrorCode = serde_json::from_value(serde_json::json!(code)).unwrap();
        assert_ne!(
            c,
            ErrorCode::Unknown,
            "docs/protocol.md section 7 lists `{code}`, which the protocol crate does not know"
        );
    }
    let missing: Vec<_> = crate_codes.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "error codes of the protocol crate missing from docs/protocol.md section 7: {missing:?}"
    );
}

/// `pub const NAME: u16 = N;` of protocol/src/close.rs.
fn crate_close_codes() -> BTreeMap<u16, String> {
    let src = read("protocol/src/close.rs");
    let mut codes = BTreeMap::new();
    for line in src.lines() {
        if let Some(rest) = line.trim().strip_prefix("pub const ")
            && let Some((name, value)) = rest.split_once(": u16 = ")
        {
            codes.insert(
                value.trim_end_matches(';').trim().parse().unwrap(),
                name.to_owned(),
            );
        }
    }
    assert!(codes.len() >= 10, "cannot read protocol/src/close.rs");
    codes
}

#[test]
fn close_code_table_matches_the_protocol_crate() {
    let doc = read("docs/protocol.md");
    let rows = tables(
        &doc,
        &[
            "Code",
            "Name",
            "When",
            "Reconnect?",
            "What the client should do",
        ],
    );
    assert!(rows.len() >= 10, "close code table not found");
    let crate_codes = crate_close_codes();
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    for row in &rows {
        let code: u16 = code_spans(&row[0])[0].parse().unwrap();
        documented.insert(code);
        if !crate_codes.contains_key(&code) {
            problems.push(format!(
                "{code} is documented but not a constant of protocol::close"
            ));
        }
        let name = protocol::close::name(code);
        if row[1] != name {
            problems.push(format!(
                "{code}: documented name `{}`, close::name says `{name}`",
                row[1]
            ));
        }
        let reconnect = row[3].replace("**", "");
        let expected = if protocol::close::needs_new_token(code) {
            "only with a new token"
        } else if protocol::close::should_reconnect(code) {
            "yes"
        } else {
            "no"
        };
        if !reconnect.starts_with(expected) {
            problems.push(format!(
                "{code}: Reconnect? says `{reconnect}`; should_reconnect={}, needs_new_token={} mean `{expected}`",
                protocol::close::should_reconnect(code),
                protocol::close::needs_new_token(code)
            ));
        }
    }
    for (code, name) in &crate_codes {
        if !documented.contains(code) {
            problems.push(format!(
                "close::{name} ({code}) is missing from docs/protocol.md section 8"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn table_reader_understands_escaped_pipes() {
    assert_eq!(
        cells("| `--node-id` | a \\| b | `x` |"),
        vec!["`--node-id`", "a | b", "`x`"]
    );
    assert_eq!(code_spans("`a`: `b`, `c` (429)"), vec!["a", "b", "c"]);
    assert!(default_matches("`4096`", Some("4096"), &[]));
    assert!(default_matches(
        "none (in-memory broker)",
        Some("none"),
        &[]
    ));
    assert!(!default_matches("`2048`", Some("512"), &[]));
    assert!(default_matches("none", None, &["none"]));
}

#[test]
fn integration_guide_shows_the_tested_examples_verbatim() {
    let guide = read("docs/integrating.md");
    let mut shown = BTreeSet::new();
    let mut rest = guide.as_str();
    while let Some(i) = rest.find("<!-- example: ") {
        let after = &rest[i + 14..];
        let path = after[..after.find(" -->").unwrap()].to_owned();
        let block = &after[after.find("```").unwrap()..];
        let body_start = block.find('\n').unwrap() + 1;
        let body_end = block[body_start..].find("\n```").unwrap() + body_start;
        let shown_text = &block[body_start..body_end];
        let file = read(&path);
        assert_eq!(
            shown_text,
            file.trim_end_matches('\n'),
            "docs/integrating.md shows a different {path} than the file the tests run"
        );
        shown.insert(path);
        rest = &block[body_end..];
    }
    for entry in std::fs::read_dir(repo().join("docs/examples")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".mjs") || name.ends_with(".py") {
            let path = format!("docs/examples/{name}");
            assert!(
                shown.contains(&path),
                "{path} is not shown in docs/integrating.md"
            );
        }
    }
}
