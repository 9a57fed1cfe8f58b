//! Reading the controller process and the machine from /proc: RSS, CPU ticks, load.

use std::time::Instant;

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub at: Instant,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub cpu_ticks: u64,
}

#[allow(unsafe_code)] // sysconf(3): clock ticks, to turn /proc CPU times into seconds
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions and only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    };
    let rss_kib = kib("VmRSS:")?;
    let hwm_kib = kib("VmHWM:").unwrap_or(rss_kib);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command: state is field 3, utime 14, stime 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(ProcSample {
        at: Instant::now(),
        rss_kib,
        hwm_kib,
        cpu_ticks: utime + stime,
    })
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
