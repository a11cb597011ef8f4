//! CPU time and disk writes of a process from Linux `/proc`: the whole process, and per
//! thread grouped by thread name (tokio workers, the journal committer, sled's threads...), so
//! a report can say where the CPU of an order goes without instrumenting the daemon.
//!
//! Resolution: clock ticks (USER_HZ, 100 per second on Linux), i.e. 10 ms per thread; runs
//! last seconds and burn seconds of CPU, so this is well under 1 %.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// Linux reports utime/stime in USER_HZ, which the kernel fixes at 100 for user space.
const TICKS_PER_S: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone)]
pub struct ProcSample {
    pub at: Instant,
    /// utime + stime of the process (live and exited threads), in ticks.
    pub total_ticks: u64,
    /// utime + stime per thread-name group, live threads only, in ticks.
    pub groups: BTreeMap<String, u64>,
    /// Bytes of page cache the process dirtied (`/proc/PID/io` write_bytes). Not what reaches
    /// the disk: a small write into a page that was already written back dirties the whole
    /// 4 KiB page again.
    pub write_bytes: Option<u64>,
}

/// What happened between two samples.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuDelta {
    pub wall_s: f64,
    pub cpu_s: f64,
    /// CPU seconds per thread group; `(exited threads)` holds what threads that ended in
    /// between used (blocking-pool threads come and go).
    pub groups_s: BTreeMap<String, f64>,
    pub write_bytes: Option<u64>,
}

impl CpuDelta {
    /// Mean cores busy.
    pub fn cores(&self) -> f64 {
        if self.wall_s > 0.0 {
            self.cpu_s / self.wall_s
        } else {
            0.0
        }
    }
}

/// Busy and total CPU ticks of the whole machine (all cores), from `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct MachineSample {
    pub at: Instant,
    pub busy_ticks: u64,
    pub steal_ticks: u64,
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Bytes of every file under `dir` (apparent sizes, like `du --apparent-size`).
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

pub fn machine() -> std::io::Result<MachineSample> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected /proc/stat");
    let line = stat.lines().next().ok_or_else(bad)?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal ...
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Ok(MachineSample {
        at: Instant::now(),
        busy_ticks: get(0) + get(1) + get(2) + get(5) + get(6) + get(7),
        steal_ticks: get(7),
    })
}

/// Mean cores busy (all processes) and stolen by the hypervisor between two samples.
pub fn machine_cores(a: &MachineSample, b: &MachineSample) -> (f64, f64) {
    let wall = b.at.duration_since(a.at).as_secs_f64();
    if wall <= 0.0 {
        return (0.0, 0.0);
    }
    let cores = |x: u64, y: u64| y.saturating_sub(x) as f64 / TICKS_PER_S / wall;
    (
        cores(a.busy_ticks, b.busy_ticks),
        cores(a.steal_ticks, b.steal_ticks),
    )
}

/// Bytes written to the block device holding `path` so far (`/sys/dev/block/MAJ:MIN/stat`,
/// sectors of 512 bytes). Device-wide: every process's writes count.
pub fn device_written_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    // Linux's encoding of dev_t (glibc's gnu_dev_major / gnu_dev_minor).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    let sectors: u64 = stat.split_whitespace().nth(6)?.parse().ok()?;
    Some(sectors * 512)
}

/// `pid` of `None` means this process.
pub fn sample(pid: Option<u32>) -> std::io::Result<ProcSample> {
    let base = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    };
    let at = Instant::now();
    let total_ticks = cpu_ticks(&std::fs::read_to_string(format!("{base}/stat"))?)?;
    let mut groups = BTreeMap::new();
    for entry in std::fs::read_dir(format!("{base}/task"))? {
        let Ok(entry) = entry else { continue };
        // A thread may end between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Ok(ticks), Some(name)) = (cpu_ticks(&stat), comm(&stat)) else {
            continue;
        };
        *groups.entry(group_name(name)).or_insert(0) += ticks;
    }
    let write_bytes = std::fs::read_to_string(format!("{base}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        });
    Ok(ProcSample {
        at,
        total_ticks,
        groups,
        write_bytes,
    })
}

pub fn delta(a: &ProcSample, b: &ProcSample) -> CpuDelta {
    let secs = |t: u64| t as f64 / TICKS_PER_S;
    let mut groups_s = BTreeMap::new();
    let mut live = 0;
    for (name, tb) in &b.groups {
        let ta = a.groups.get(name).copied().unwrap_or(0);
        let d = tb.saturating_sub(ta);
        live += d;
        groups_s.insert(name.clone(), secs(d));
    }
    let total = b.total_ticks.saturating_sub(a.total_ticks);
    if total > live {
        groups_s.insert("(exited threads)".to_owned(), secs(total - live));
    }
    CpuDelta {
        wall_s: b.at.duration_since(a.at).as_secs_f64(),
        cpu_s: secs(total),
        groups_s,
        write_bytes: a
            .write_bytes
            .zip(b.write_bytes)
            .map(|(x, y)| y.saturating_sub(x)),
    }
}

/// The thread name between the parentheses of a stat line.
fn comm(stat: &str) -> Option<&str> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    stat.get(open + 1..close)
}

/// utime + stime (fields 14 and 15) of a stat line. The name may contain spaces and
/// parentheses, so fields are counted after the last ')'.
fn cpu_ticks(stat: &str) -> std::io::Result<u64> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "unexpected stat format");
    let rest = stat
        .get(stat.rfind(')').ok_or_else(bad)? + 1..)
        .ok_or_else(bad)?;
    // After ')': field 3 (state) is the first; utime is field 14, stime 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> std::io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(bad)
    };
    Ok(field(14)? + field(15)?)
}

/// Threads of one kind share a name up to a trailing number: `sled-io-3` -> `sled-io-*`.
fn group_name(comm: &str) -> String {
    let trimmed = comm.trim_end_matches(|c: char| c.is_ascii_digit());
    if trimmed.len() < comm.len() {
        format!("{trimmed}*")
    } else {
        comm.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A stat line with spaces and parentheses in the name still yields utime + stime.
    #[test]
    fn stat_lines_parse() {
        let line = "1234 (tokio (w) 1) S 1 2 3 4 5 6 7 8 9 10 250 70 0 0 20 0 4 0";
        assert_eq!(comm(line), Some("tokio (w) 1"));
        assert_eq!(cpu_ticks(line).unwrap(), 320);
        assert!(cpu_ticks("garbage").is_err());
        assert_eq!(group_name("sled-io-12"), "sled-io-*");
        assert_eq!(group_name("orderd-commit"), "orderd-commit");
        // This process can be read.
        let s = sample(None).unwrap();
        assert!(!s.groups.is_empty());
        assert!(device_written_bytes(std::path::Path::new("/")).is_some());
        let m = machine().unwrap();
        assert!(machine_cores(&m, &m).0 == 0.0);
    }
}
