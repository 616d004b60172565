//! The cost of a process, read from `/proc/<pid>`: resident memory and CPU time
//! (user + system), plus a little about the machine.

use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: u64 = 100;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    /// Resident set size in bytes.
    pub rss: u64,
    /// User + system CPU time in microseconds.
    pub cpu_us: u64,
}

/// Reads `/proc/<pid>/status` (VmRSS) and `/proc/<pid>/stat` (utime + stime).
pub fn sample(pid: u32) -> Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS for process {pid}"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let tick = |i: usize| -> Result<u64> {
        fields
            .get(i - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))
    };
    let ticks = tick(14)? + tick(15)?;
    Ok(Sample {
        at: Instant::now(),
        rss: rss_kib * 1024,
        cpu_us: ticks * 1_000_000 / TICKS_PER_SEC,
    })
}

/// The name (`comm`) and the fields after it of `/proc/<pid>/stat`.
fn stat_fields(pid: u32) -> Option<(String, Vec<String>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    Some((name, rest.split_whitespace().map(str::to_owned).collect()))
}

/// The parent of a process.
pub fn parent(pid: u32) -> Option<u32> {
    // After the name: state, then ppid (field 4 in proc(5)).
    stat_fields(pid)?.1.get(1)?.parse().ok()
}

/// The name of a process (`comm`).
pub fn name(pid: u32) -> Option<String> {
    stat_fields(pid).map(|(n, _)| n)
}

/// The processes whose parent is `pid` (e.g. nginx's workers), lowest pid first.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent(*p) == Some(pid))
        .collect();
    out.sort_unstable();
    out
}

/// CPU used between two samples, in microseconds, and as a percentage of one core.
pub fn cpu_between(a: &Sample, b: &Sample) -> (u64, f64) {
    let used = b.cpu_us.saturating_sub(a.cpu_us);
    let wall = b.at.saturating_duration_since(a.at).as_micros().max(1) as f64;
    (used, used as f64 * 100.0 / wall)
}

/// The machine a run measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total_mib: u64,
    pub kernel: String,
    pub open_files_limit: String,
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem_total_mib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or(0);
    let open_files_limit = read("/proc/self/limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default();
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        mem_total_mib,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        open_files_limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_itself() {
        let s = sample(std::process::id());
        assert!(s.is_ok_and(|s| s.rss > 0));
        assert!(machine().nproc >= 1);
        let me = std::process::id();
        assert!(parent(me).is_some_and(|p| p > 0));
        assert!(name(me).is_some_and(|n| !n.is_empty()));
        let child = std::process::Command::new("sleep").arg("5").spawn();
        if let Ok(mut c) = child {
            assert!(children(me).contains(&c.id()));
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
