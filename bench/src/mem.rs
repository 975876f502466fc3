//! A process's memory and limits, from Linux's `/proc`: the server's resident set size
//! (`VmRSS` in `/proc/PID/status`) and this process's open-file limit.

use anyhow::Context as _;

/// The resident set size of process `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {path} (--pid)"))?;
    status_kib(&text, "VmRSS").with_context(|| format!("no VmRSS line in {path}"))
}

/// The resident set size of process `pid` if one is given (`--pid` is optional: without
/// it a tool runs and reports no memory), in KiB.
pub fn vm_rss_kib_of(pid: Option<u32>) -> anyhow::Result<Option<u64>> {
    pid.map(vm_rss_kib).transpose()
}

/// The value of a `KEY:  1234 kB` line of a `/proc/PID/status` text, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if name != key {
            return None;
        }
        value.split_whitespace().next()?.parse().ok()
    })
}

/// This process's soft limit on open files, if `/proc/self/limits` says.
pub fn open_files_limit() -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// Bytes per item of a growth from `before` to `after` KiB over `items` (negative if the
/// process shrank).
pub fn bytes_per(before_kib: u64, after_kib: u64, items: u64) -> f64 {
    if items == 0 {
        return 0.0;
    }
    let grown = (after_kib as f64 - before_kib as f64) * 1024.0;
    (grown / items as f64 * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rss_line_is_found() {
        let status = "Name:\therd\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(12345));
        assert_eq!(status_kib(status, "VmHWM"), None);
    }

    #[test]
    fn our_own_memory_and_limit_can_be_read() {
        assert!(vm_rss_kib(std::process::id()).expect("own status") > 0);
        assert!(open_files_limit().is_some());
    }

    #[test]
    fn growth_is_shared_out() {
        assert_eq!(bytes_per(1000, 2000, 1024), 1000.0);
        assert_eq!(bytes_per(2000, 1000, 1024), -1000.0);
        assert_eq!(bytes_per(1, 2, 0), 0.0);
    }
}
