//! The deployment files (deploy/, k8s/, docs/operations.md) against the real gateway:
//! metric names in the dashboard and alert rules, settings, flags, ports and probe
//! paths in the manifests, the Dockerfile's build against the README and toolchain,
//! and deploy/check.sh (kustomize, kubernetes-validate, promtool) when its tools exist.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::Gateway;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Files under `dir` (relative to the repo) whose names end with one of `exts`.
fn files_under(dir: &str, exts: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![repo().join(dir)];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if exts
                .iter()
                .any(|x| p.to_string_lossy().ends_with(&format!(".{x}")))
            {
                out.push(
                    p.strip_prefix(repo())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

// --- What the binary accepts -------------------------------------------------------

struct Help {
    flags: BTreeSet<String>,
    envs: BTreeSet<String>,
    /// `[default: ...]` per long flag.
    defaults: BTreeMap<String, String>,
}

fn gateway_help() -> Help {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--help")
        .output()
        .expect("run gateway --help");
    assert!(out.status.success(), "gateway --help failed");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut help = Help {
        flags: BTreeSet::new(),
        envs: BTreeSet::new(),
        defaults: BTreeMap::new(),
    };
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("--").or_else(|| {
            t.strip_prefix("-")
                .and_then(|r| r.split_once(", --").map(|(_, f)| f))
        }) {
            current = rest
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap()
                .to_owned();
            help.flags.insert(current.clone());
        }
        let mut rest = line;
        while let Some(i) = rest.find("[env: ") {
            rest = &rest[i + 6..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            help.envs.insert(name);
        }
        if let Some(i) = line.find("[default: ") {
            let v = &line[i + 10..];
            help.defaults
                .insert(current.clone(), v[..v.find(']').unwrap()].to_owned());
        }
    }
    assert!(
        help.flags.contains("admin-listen") && help.envs.contains("TIDINGS_REDIS_URL"),
        "cannot parse gateway --help:\n{text}"
    );
    help
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

// --- A small reader for the block-style YAML of our manifests -----------------------

/// Every scalar of a block-style YAML stream as (path, value), paths like
/// `spec.template.spec.containers[0].ports[1].name`. Block scalars (`|`, `>`) are
/// recorded as empty; flow collections as their text. Enough for the files in deploy/
/// and k8s/, which kubectl and kubernetes-validate parse for real in deploy/check.sh.
fn yaml_scalars(text: &str) -> Vec<(String, String)> {
    enum Seg {
        Key(String),
        Item(usize),
    }
    let mut out = Vec::new();
    let mut stack: Vec<(usize, Seg)> = Vec::new();
    let mut block: Option<usize> = None;
    let path = |stack: &Vec<(usize, Seg)>| {
        let mut p = String::new();
        for (_, s) in stack {
            match s {
                Seg::Key(k) => {
                    if !p.is_empty() {
                        p.push('.');
                    }
                    p.push_str(k);
                }
                Seg::Item(i) => p.push_str(&format!("[{i}]")),
            }
        }
        p
    };
    for raw in text.lines() {
        let indent = raw.len() - raw.trim_start().len();
        if let Some(b) = block {
            if raw.trim().is_empty() || indent > b {
                continue;
            }
            block = None;
        }
        let line = strip_comment(raw);
        if line.trim().is_empty() {
            continue;
        }
        if line.trim_end() == "---" {
            stack.clear();
            continue;
        }
        let mut col = indent;
        let mut rest = line.trim();
        while rest == "-" || rest.starts_with("- ") {
            let mut idx = 0;
            while let Some((i, s)) = stack.last() {
                if *i > col {
                    stack.pop();
                } else if *i == col && matches!(s, Seg::Item(_)) {
                    if let Some((_, Seg::Item(n))) = stack.pop() {
                        idx = n + 1;
                    }
                } else {
                    break;
                }
            }
            stack.push((col, Seg::Item(idx)));
            rest = rest[1..].trim_start();
            col += 2;
        }
        if rest.is_empty() {
            continue;
        }
        match split_key(rest) {
            Some((key, value)) => {
                while stack.last().is_some_and(|(i, _)| *i >= col) {
                    stack.pop();
                }
                let mut value = value.trim();
                // An anchor (`key: &name`) before a nested block.
                if value.starts_with('&') && !value.contains(' ') {
                    value = "";
                }
                if value.is_empty() {
                    stack.push((col, Seg::Key(key)));
                } else {
                    let p = path(&stack);
                    let full = if p.is_empty() {
                        key
                    } else {
                        format!("{p}.{key}")
                    };
                    if value.starts_with('|') || value.starts_with('>') {
                        block = Some(col);
                        out.push((full, String::new()));
                    } else {
                        out.push((full, unquote(value)));
                    }
                }
            }
            None => out.push((path(&stack), unquote(rest))),
        }
    }
    out
}

fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return &line[..i],
            _ => {}
        }
        prev = c;
    }
    line
}

/// `key: value` or `key:` (outside quotes); `None` for a plain scalar.
fn split_key(s: &str) -> Option<(String, &str)> {
    if s.starts_with('"') || s.starts_with('\'') || s.starts_with('[') || s.starts_with('{') {
        let q = s.chars().next().unwrap();
        if q == '"' || q == '\'' {
            let end = s[1..].find(q)? + 1;
            let after = &s[end + 1..];
            return after
                .strip_prefix(':')
                .filter(|a| a.is_empty() || a.starts_with(' '))
                .map(|a| (s[1..end].to_owned(), a));
        }
        return None;
    }
    let i = s
        .find(": ")
        .or_else(|| s.ends_with(':').then(|| s.len() - 1))?;
    Some((s[..i].to_owned(), &s[i + 1..]))
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_owned();
        }
    }
    s.to_owned()
}

fn get<'a>(doc: &'a [(String, String)], path: &str) -> Option<&'a str> {
    doc.iter().find(|(p, _)| p == path).map(|(_, v)| v.as_str())
}

// --- Tokens --------------------------------------------------------------------------

/// Identifiers starting with `prefix` (not preceded by an identifier character).
fn tokens(text: &str, prefix: &str, ident: fn(char) -> bool) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(prefix) {
        let start = from + i;
        let before = text[..start].chars().next_back();
        let end = start
            + text[start..]
                .char_indices()
                .find(|(_, c)| !ident(*c))
                .map_or(text.len() - start, |(j, _)| j);
        from = end.max(start + 1);
        if before.is_some_and(|c| ident(c) || c == ':') {
            continue;
        }
        out.push((text[start..end].to_owned(), end));
    }
    out
}

fn metric_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

fn env_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'
}

/// `TIDINGS_*` names in a text (a bare `TIDINGS_` as in "TIDINGS_*" is skipped).
fn env_names(text: &str) -> BTreeSet<String> {
    tokens(text, "TIDINGS_", env_char)
        .into_iter()
        .map(|(t, _)| t.trim_end_matches('_').to_owned())
        .filter(|t| t != "TIDINGS")
        .collect()
}

// --- Metrics -------------------------------------------------------------------------

struct Exposition {
    /// name -> type, from the `# TYPE` lines (present for every registered metric).
    types: BTreeMap<String, String>,
    /// sample name -> label name -> values seen.
    labels: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut e = Exposition {
        types: BTreeMap::new(),
        labels: BTreeMap::new(),
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            e.types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let series = line.rsplit_once(' ').unwrap().0;
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let entry = e.labels.entry(name.to_owned()).or_default();
            for (k, v) in parse_matchers(labels.trim_end_matches('}')) {
                entry.entry(k).or_default().insert(v);
            }
        }
    }
    e
}

/// `a="x", b=~"y"` -> the exact (`=`) matchers only.
fn parse_matchers(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|m| {
            let (k, v) = m.split_once('=')?;
            let k = k.trim();
            if k.ends_with('!') || v.starts_with('~') {
                return None;
            }
            Some((k.to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect()
}

/// Labels that Prometheus or the Kubernetes service discovery add to every series.
const TARGET_LABELS: [&str; 7] = [
    "job",
    "instance",
    "pod",
    "namespace",
    "service",
    "container",
    "endpoint",
];

/// Checks every `tidings_*` identifier (and its `{label="value"}` matchers) in `text`
/// against the exposition; returns the identifiers and the problems.
fn check_metric_refs(what: &str, text: &str, e: &Exposition) -> (BTreeSet<String>, Vec<String>) {
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for (name, end) in tokens(text, "tidings_", metric_char) {
        let known = e.types.contains_key(&name)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .and_then(|base| e.types.get(base))
                    .is_some_and(|t| t == "histogram" || (t == "summary" && *suffix != "_bucket"))
            });
        if !known {
            problems.push(format!("{what}: `{name}` is not exported by the gateway"));
            continue;
        }
        used.insert(name.clone());
        let Some(body) = text[end..]
            .strip_prefix('{')
            .and_then(|r| r.find('}').map(|j| &r[..j]))
        else {
            continue;
        };
        let seen = e.labels.get(&name);
        for (label, value) in parse_matchers(body) {
            if TARGET_LABELS.contains(&label.as_str()) {
                continue;
            }
            match seen.and_then(|s| s.get(&label)) {
                Some(values) if !values.contains(&value) => problems.push(format!(
                    "{what}: {name}{{{label}=\"{value}\"}}: the gateway exports {label} values {values:?}"
                )),
                None if seen.is_some_and(|s| !s.is_empty()) => problems.push(format!(
                    "{what}: {name} has no label `{label}` (it has {:?})",
                    seen.unwrap().keys().collect::<Vec<_>>()
                )),
                _ => {}
            }
        }
    }
    (used, problems)
}

fn json_strings(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| json_strings(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| json_strings(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_and_alert_rules_use_only_exported_metrics() {
    let gw = Gateway::start().await;
    // Labelled counters without pre-created children (tidings_published_total) have no
    // HELP/TYPE lines until first used: publish once so that every metric shows.
    let (status, body) = gw
        .publish(serde_json::json!({"user": "deploy-check", "event": "e", "payload": {}}))
        .await;
    assert_eq!(status, 200, "publish: {body}");
    let exposition = parse_exposition(&gw.metrics().await);
    assert!(
        exposition.types.len() >= 10,
        "too few metrics: {:?}",
        exposition.types
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/tidings.json")).unwrap();
    let mut dash_text = String::new();
    json_strings(&dashboard, &mut dash_text);
    let mut problems = Vec::new();
    let (dash_used, p) = check_metric_refs("dashboard", &dash_text, &exposition);
    problems.extend(p);
    let alerts = read("deploy/prometheus/alerts.yml");
    let (alert_used, p) = check_metric_refs("alerts.yml", &alerts, &exposition);
    problems.extend(p);
    let (_, p) = check_metric_refs(
        "alerts.test.yml",
        &read("deploy/prometheus/alerts.test.yml"),
        &exposition,
    );
    problems.extend(p);
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    for m in [
        "tidings_connections",
        "tidings_connection_attempts_total",
        "tidings_messages_delivered_total",
        "tidings_messages_dropped_total",
        "tidings_delivery_latency_seconds_bucket",
        "tidings_broker_up",
        "tidings_broker_reconnects_total",
        "tidings_draining",
    ] {
        assert!(dash_used.contains(m), "the dashboard does not show {m}");
    }
    for m in [
        "tidings_broker_up",
        "tidings_closes_total",
        "tidings_delivery_latency_seconds_bucket",
        "tidings_connection_attempts_total",
    ] {
        assert!(alert_used.contains(m), "no alert uses {m}");
    }
    let rules = yaml_scalars(&alerts);
    let names: BTreeSet<&str> = rules
        .iter()
        .filter(|(p, _)| p.ends_with(".alert"))
        .map(|(_, v)| v.as_str())
        .collect();
    for a in [
        "TidingsNoReadyReplicas",
        "TidingsBrokerDown",
        "TidingsSlowConsumerClosesRising",
        "TidingsDeliveryLatencyHigh",
        "TidingsAuthFailuresSpiking",
    ] {
        assert!(names.contains(a), "alert {a} missing from alerts.yml");
    }
    // docs/operations.md explains every alert.
    let ops = read("docs/operations.md");
    for a in &names {
        assert!(ops.contains(a), "docs/operations.md does not explain {a}");
    }
}

// --- Settings, flags, ports, probes ------------------------------------------------

fn check_flags(what: &str, args: &[&str], help: &Help, problems: &mut Vec<String>) {
    for a in args {
        if let Some(flag) = a.strip_prefix("--") {
            let flag = flag.split('=').next().unwrap();
            if !help.flags.contains(flag) {
                problems.push(format!("{what}: unknown gateway flag --{flag}"));
            }
        }
    }
}

/// Values under paths `prefix[<n>]`.
fn items<'a>(doc: &'a [(String, String)], prefix: &str) -> Vec<&'a str> {
    doc.iter()
        .filter(|(p, _)| {
            p.strip_prefix(prefix).is_some_and(|r| {
                r.starts_with('[') && r.ends_with(']') && r[1..r.len() - 1].parse::<u32>().is_ok()
            })
        })
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test]
async fn manifests_use_settings_ports_and_probes_the_gateway_accepts() {
    let help = gateway_help();
    let listen = port_of(&help.defaults["listen"]);
    let admin = port_of(&help.defaults["admin-listen"]);
    let mut problems = Vec::new();

    // Every TIDINGS_* name anywhere in the deployment files and the operations guide.
    let mut files = files_under("k8s", &["yaml", "yml"]);
    files.extend(files_under("deploy", &["yaml", "yml", "conf", "sh", "py"]));
    files.extend([
        "deploy/Dockerfile".to_owned(),
        "docs/operations.md".to_owned(),
    ]);
    for f in &files {
        for name in env_names(&read(f)) {
            if !help.envs.contains(&name) {
                problems.push(format!("{f}: {name} is not a setting of the gateway"));
            }
        }
    }

    // Kubernetes: the gateway container's ports, probes, args and env.
    let dep = yaml_scalars(&read("k8s/base/deployment.yaml"));
    let c = (0..8)
        .map(|i| format!("spec.template.spec.containers[{i}]"))
        .find(|c| get(&dep, &format!("{c}.name")) == Some("gateway"))
        .expect("a container named gateway in k8s/base/deployment.yaml");
    let mut ports = BTreeMap::new();
    for i in 0.. {
        let Some(name) = get(&dep, &format!("{c}.ports[{i}].name")) else {
            break;
        };
        let port: u16 = get(&dep, &format!("{c}.ports[{i}].containerPort"))
            .unwrap()
            .parse()
            .unwrap();
        ports.insert(name.to_owned(), port);
    }
    assert_eq!(
        ports.get("ws"),
        Some(&listen),
        "container port ws: {ports:?}"
    );
    assert_eq!(
        ports.get("admin"),
        Some(&admin),
        "container port admin: {ports:?}"
    );
    let mut probe_paths = BTreeSet::new();
    for (probe, want) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let path = get(&dep, &format!("{c}.{probe}.httpGet.path"))
            .unwrap_or_else(|| panic!("{probe} has no httpGet path"));
        assert_eq!(path, want, "{probe} path");
        let port = get(&dep, &format!("{c}.{probe}.httpGet.port")).unwrap();
        let port = ports
            .get(port)
            .copied()
            .unwrap_or_else(|| port.parse().unwrap());
        assert_eq!(port, admin, "{probe} must use the admin port");
        probe_paths.insert(path.to_owned());
    }
    for key in ["args", "command"] {
        check_flags(
            "k8s/base/deployment.yaml",
            &items(&dep, &format!("{c}.{key}")),
            &help,
            &mut problems,
        );
    }
    for (p, v) in &dep {
        if p.starts_with(&format!("{c}.env[")) && p.ends_with("].name") && !help.envs.contains(v) {
            problems.push(format!("deployment env {v} is not a gateway setting"));
        }
    }
    let cm = yaml_scalars(&read("k8s/base/configmap.yaml"));
    for (p, v) in &cm {
        if let Some(key) = p.strip_prefix("data.") {
            assert!(
                help.envs.contains(key),
                "ConfigMap key {key} is not a setting"
            );
            if key == "TIDINGS_LISTEN" {
                assert_eq!(port_of(v), listen, "ConfigMap TIDINGS_LISTEN vs port ws");
            }
            if key == "TIDINGS_ADMIN_LISTEN" {
                assert_eq!(
                    port_of(v),
                    admin,
                    "ConfigMap TIDINGS_ADMIN_LISTEN vs port admin"
                );
            }
        }
    }
    let svc = yaml_scalars(&read("k8s/base/service.yaml"));
    for (p, v) in &svc {
        if p.ends_with(".targetPort") {
            let ok = ports.contains_key(v)
                || v.parse()
                    .is_ok_and(|n: u16| ports.values().any(|x| *x == n));
            assert!(ok, "Service targetPort {v} is not a container port");
        }
    }
    let sm = yaml_scalars(&read("k8s/components/servicemonitor/servicemonitor.yaml"));
    assert_eq!(get(&sm, "spec.endpoints[0].port"), Some("admin"));
    assert_eq!(get(&sm, "spec.endpoints[0].path"), Some("/metrics"));

    // Compose: gateway services' command flags and env; nginx and Prometheus targets.
    let compose_text = read("deploy/docker-compose.yml");
    let compose = yaml_scalars(&compose_text);
    let env_listen = get(&compose, "x-gateway-env.TIDINGS_LISTEN").map_or(listen, port_of);
    let env_admin = get(&compose, "x-gateway-env.TIDINGS_ADMIN_LISTEN").map_or(admin, port_of);
    let mut gateways = 0;
    for (p, v) in &compose {
        if let Some(svc) = p
            .strip_prefix("services.")
            .and_then(|r| r.strip_suffix(".<<"))
            && v == "*gateway"
        {
            gateways += 1;
            for key in ["command", "entrypoint"] {
                let path = format!("services.{svc}.{key}");
                check_flags(&path, &items(&compose, &path), &help, &mut problems);
            }
        }
        if (p.starts_with("x-gateway-env.") || p.contains(".environment."))
            && p.rsplit('.').next().unwrap().starts_with("TIDINGS_")
        {
            let name = p.rsplit('.').next().unwrap();
            if !help.envs.contains(name) {
                problems.push(format!("docker-compose.yml: {name} is not a setting"));
            }
        }
    }
    check_flags(
        "x-gateway.command",
        &items(&compose, "x-gateway.command"),
        &help,
        &mut problems,
    );
    assert_eq!(gateways, 3, "three gateway replicas in docker-compose.yml");
    let expose = items(&compose, "x-gateway.expose");
    for port in [env_listen, env_admin] {
        assert!(
            expose.contains(&port.to_string().as_str()),
            "compose exposes {port}"
        );
    }
    let nginx = read("deploy/nginx/nginx.conf");
    for n in 1..=3 {
        assert!(
            nginx.contains(&format!("server gateway-{n}:{env_listen} ")),
            "nginx upstream gateway-{n}:{env_listen}"
        );
    }
    for header in [
        "proxy_set_header Upgrade $http_upgrade",
        "proxy_set_header Connection $connection_upgrade",
        "proxy_read_timeout",
    ] {
        assert!(nginx.contains(header), "nginx.conf lacks `{header}`");
    }
    let prom = yaml_scalars(&read("deploy/prometheus/prometheus.yml"));
    let targets = items(&prom, "scrape_configs[0].static_configs[0].targets");
    assert_eq!(targets.len(), 3, "three scrape targets");
    for t in targets {
        assert_eq!(port_of(t), env_admin, "scrape target {t} vs the admin port");
    }
    assert_eq!(
        get(&prom, "scrape_configs[0].job_name"),
        Some("tidings"),
        "the alert rules select job=\"tidings\""
    );

    // Dockerfile: exposed ports and entrypoint flags.
    let dockerfile = read("deploy/Dockerfile");
    let expose_line = dockerfile
        .lines()
        .find(|l| l.starts_with("EXPOSE "))
        .expect("EXPOSE in Dockerfile");
    for port in [listen, admin] {
        assert!(
            expose_line
                .split_whitespace()
                .any(|p| p == port.to_string()),
            "Dockerfile EXPOSE {port}"
        );
    }
    for l in dockerfile
        .lines()
        .filter(|l| l.starts_with("ENTRYPOINT") || l.starts_with("CMD"))
    {
        let args: Vec<&str> = l.split('"').skip(1).step_by(2).collect();
        check_flags("Dockerfile", &args, &help, &mut problems);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // The probe paths answer 200 on a running gateway's admin listener.
    let gw = Gateway::start().await;
    for path in &probe_paths {
        let (status, body) = gw.admin_get(path).await;
        assert_eq!(status, 200, "GET {path} on the admin port: {body}");
    }
}

// --- Dockerfile build --------------------------------------------------------------

fn version(s: &str) -> Vec<u32> {
    s.split('.').map(|x| x.parse().unwrap()).collect()
}

#[test]
fn dockerfile_builds_like_the_readme() {
    let dockerfile = read("deploy/Dockerfile");
    // Shell continuation lines joined.
    let joined = dockerfile.replace("\\\n", " ");
    let build = joined
        .lines()
        .find(|l| l.starts_with("RUN ") && l.contains("cargo build"))
        .expect("a RUN with cargo build in the Dockerfile");
    let words: Vec<&str> = build.split_whitespace().collect();
    for flag in ["--release", "--locked"] {
        assert!(words.contains(&flag), "Dockerfile cargo build lacks {flag}");
    }
    assert!(
        words.windows(2).any(|w| w == ["-p", "gateway"]),
        "Dockerfile builds -p gateway"
    );

    let readme = read("README.md");
    let cargo_lines: Vec<&str> = readme
        .lines()
        .filter(|l| l.contains("cargo ") && l.contains("-p gateway"))
        .collect();
    assert!(
        cargo_lines.iter().any(|l| l.contains("--release")),
        "README builds or runs `-p gateway` with --release: {cargo_lines:?}"
    );
    assert!(
        readme.contains("--locked"),
        "README uses --locked like the Dockerfile"
    );

    // The binary the build produces is the one the image runs.
    let manifest: toml::Value = toml::from_str(&read("gateway/Cargo.toml")).unwrap();
    let bin = manifest["bin"][0]["name"].as_str().unwrap();
    assert!(
        build.contains(&format!("target/release/{bin}")),
        "Dockerfile copies target/release/{bin}"
    );
    let install_to = build.split_whitespace().last().unwrap();
    let runtime_path = dockerfile
        .lines()
        .find(|l| l.starts_with("COPY --from=build"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap();
    assert!(
        dockerfile.contains(&format!("COPY --from=build {install_to} {runtime_path}")),
        "runtime copies the built binary"
    );
    assert!(
        dockerfile.contains(&format!("ENTRYPOINT [\"{runtime_path}\"]")),
        "ENTRYPOINT runs {runtime_path}"
    );
    assert!(
        dockerfile.contains("USER 65532") || dockerfile.contains(":nonroot"),
        "non-root runtime"
    );

    // Builder and runtime share the Debian release (glibc), and the builder's Rust is
    // new enough for the workspace and every locked dependency.
    let from: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(from.len(), 2, "two stages: {from:?}");
    assert!(
        from[0].contains("bookworm") && from[1].contains("debian12"),
        "builder and runtime on Debian 12: {from:?}"
    );
    let rust = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUST_VERSION="))
        .expect("ARG RUST_VERSION");
    let ws: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let mut needed = (
        version(ws["workspace"]["package"]["rust-version"].as_str().unwrap()),
        "workspace".to_owned(),
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo())
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for p in meta["packages"].as_array().unwrap() {
        if let Some(v) = p["rust_version"].as_str() {
            let v = version(v);
            if v > needed.0 {
                needed = (v, p["name"].as_str().unwrap().to_owned());
            }
        }
    }
    let mut have = version(rust);
    have.resize(3, 0);
    needed.0.resize(3, 0);
    assert!(
        have >= needed.0,
        "Dockerfile RUST_VERSION={rust} is older than {:?} needed by {}",
        needed.0,
        needed.1
    );

    let ignore = read(".dockerignore");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    assert!(
        lines.iter().any(|l| l.contains("target")),
        ".dockerignore excludes target/"
    );
    for member in ws["workspace"]["members"].as_array().unwrap() {
        let m = member.as_str().unwrap();
        for keep in [m, "Cargo.lock", "Cargo.toml"] {
            assert!(
                !lines.contains(&keep) && !lines.contains(&format!("{keep}/").as_str()),
                ".dockerignore must not exclude {keep}"
            );
        }
    }
}

// --- deploy/check.sh ----------------------------------------------------------------

/// Runs deploy/check.sh (kustomize render, kubernetes-validate, promtool) when its tools
/// are installed. Without them it is skipped locally but fails in CI (CI=true): CI must
/// run `deploy/check.sh` first, which installs them.
#[test]
fn deploy_check_script_passes() {
    let missing: Vec<&str> = ["kubectl", "kubernetes-validate", "promtool"]
        .into_iter()
        .filter(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .map_or(true, |o| !o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "CI=true but {missing:?} missing: run `bash deploy/check.sh` (it installs them) before the tests"
        );
        eprintln!("skipping deploy/check.sh: {missing:?} not installed (run deploy/check.sh)");
        return;
    }
    let out = Command::new("bash")
        .arg(repo().join("deploy/check.sh"))
        .arg("--no-install")
        .output()
        .expect("run deploy/check.sh");
    assert!(
        out.status.success(),
        "deploy/check.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn yaml_reader_understands_our_manifests() {
    let doc = yaml_scalars(
        "x: &anchor\n  y: z\na:\n  b: 1 # c\n  list:\n    - name: x\n      port: 2\n    - name: y\n  seq:\n  - \"q: r\"\n  - --flag=1\n  blk: |\n    z: 3\n  after: 'v'\n---\nk: v\n",
    );
    let want = [
        ("x.y", "z"),
        ("a.b", "1"),
        ("a.list[0].name", "x"),
        ("a.list[0].port", "2"),
        ("a.list[1].name", "y"),
        ("a.seq[0]", "q: r"),
        ("a.seq[1]", "--flag=1"),
        ("a.blk", ""),
        ("a.after", "v"),
        ("k", "v"),
    ];
    let got: Vec<(&str, &str)> = doc.iter().map(|(p, v)| (p.as_str(), v.as_str())).collect();
    assert_eq!(got, want);
}
