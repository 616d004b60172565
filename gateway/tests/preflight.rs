//! scripts/preflight, as README's test command (scripts/test-all) runs it, in a scrubbed
//! environment: a PATH without redis-server and redis-cli, and a project virtualenv
//! whose Python cannot import `websockets`. The test command must stop within seconds,
//! name both, give the command that fixes each, and compile nothing (a `cargo` shim on
//! the PATH records every call).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tidings-preflight-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A directory holding a link to every executable of the current PATH (the first of
/// each name), except `drop`; `cargo` is replaced by a shim that logs to `log`.
fn scrubbed_path(dir: &Path, drop: &[&str], log: &Path) -> String {
    let mut seen = BTreeSet::new();
    let real_cargo = which("cargo");
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap()) {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if drop.contains(&name.as_str()) || !seen.insert(name.clone()) {
                continue;
            }
            let target = e.path();
            let is_exe = std::fs::metadata(&target)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false);
            if !is_exe {
                continue;
            }
            if name == "cargo" {
                continue;
            }
            let _ = std::os::unix::fs::symlink(&target, dir.join(&name));
        }
    }
    write_exe(
        &dir.join("cargo"),
        &format!(
            "#!/bin/sh\necho \"cargo $*\" >> '{}'\nexec '{}' \"$@\"\n",
            log.display(),
            real_cargo.display()
        ),
    );
    dir.display().to_string()
}

fn which(name: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{name} not on PATH");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn test_command_names_missing_prerequisites_before_compiling() {
    let base = scratch("scrubbed");
    let bin = base.join("bin");
    let root = base.join("checkout");
    std::fs::create_dir_all(&bin).unwrap();
    // A project virtualenv whose Python sees no site-packages: no `websockets`.
    let venv_bin = root.join(".venv/bin");
    std::fs::create_dir_all(&venv_bin).unwrap();
    write_exe(
        &venv_bin.join("python"),
        &format!(
            "#!/bin/sh\nexec '{}' -S \"$@\"\n",
            which("python3").display()
        ),
    );
    let cargo_log = base.join("cargo.log");
    let path = scrubbed_path(&bin, &["redis-server", "redis-cli"], &cargo_log);

    let started = Instant::now();
    let out = Command::new(repo().join("scripts/test-all"))
        .env_clear()
        .env("PATH", &path)
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
        )
        .env("TIDINGS_PREFLIGHT", "check")
        .env("TIDINGS_PREFLIGHT_ROOT", &root)
        .output()
        .expect("run scripts/test-all");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!("{stdout}\n{stderr}");

    assert!(
        !out.status.success(),
        "test-all went on without redis-server:\n{all}"
    );
    assert!(
        took < Duration::from_secs(20),
        "the preflight took {took:?}; it must answer in its first seconds"
    );
    for want in [
        "MISSING redis-server",
        "apt-get install redis-server",
        "websockets",
        ".venv/bin/pip install -r scripts/requirements.txt",
        "nothing was compiled",
    ] {
        assert!(
            all.contains(want),
            "the preflight did not say `{want}`:\n{all}"
        );
    }
    let cargo_calls = std::fs::read_to_string(&cargo_log).unwrap_or_default();
    assert!(
        cargo_calls.is_empty(),
        "cargo ran before the preflight stopped: {cargo_calls}"
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn check_mode_passes_where_everything_is_installed() {
    // On a machine the preflight has set up (scripts/test-all ran it before cargo),
    // `--check` finds nothing missing and installs nothing.
    let out = Command::new(repo().join("scripts/preflight"))
        .arg("--check")
        .output()
        .expect("run scripts/preflight --check");
    assert!(
        out.status.success(),
        "scripts/preflight --check failed on this machine:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("preflight: ok"));
}

#[test]
fn preflight_refuses_unknown_arguments() {
    let out = Command::new(repo().join("scripts/preflight"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
