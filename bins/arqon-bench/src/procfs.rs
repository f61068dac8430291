//! Reading a process's memory and CPU time from /proc (Linux only; elsewhere
//! every reading is `None` and the report leaves the fields out).

use std::time::Instant;

/// Resident set size of `pid` in KiB (`VmRSS` of /proc/PID/status).
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident set size of `pid` in KiB over its life (`VmHWM`).
pub(crate) fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The 1-minute load average (/proc/loadavg).
pub(crate) fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// User plus system CPU time of a process (all its threads), in seconds,
/// from /proc/PID/stat (`self` for this process). Assumes USER_HZ = 100,
/// which Linux fixes for user space on every common architecture.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// Measures how busy a process was over an interval: 100% is one core.
#[derive(Debug, Clone)]
pub(crate) struct CpuMeter {
    pid: String,
    start_cpu: Option<f64>,
    start: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid` (`None`: this process).
    pub(crate) fn start(pid: Option<u32>) -> Self {
        let pid = pid.map_or_else(|| "self".to_owned(), |p| p.to_string());
        CpuMeter { start_cpu: cpu_seconds(&pid), pid, start: Instant::now() }
    }

    /// CPU use since `start`, in percent of one core; `None` if unreadable
    /// or the interval is too short to mean anything (under 0.2 s, two ticks).
    pub(crate) fn percent(&self) -> Option<f64> {
        let elapsed = self.start.elapsed().as_secs_f64();
        if elapsed < 0.2 {
            return None;
        }
        let used = cpu_seconds(&self.pid)? - self.start_cpu?;
        Some(100.0 * used / elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        if !std::path::Path::new("/proc/self/status").exists() {
            return;
        }
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
        assert!(cpu_seconds("self").is_some());
        assert!(load_average().is_some());
        assert!(rss_kib(u32::MAX).is_none());
    }
}
