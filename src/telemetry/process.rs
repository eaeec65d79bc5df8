//! Process metrics read from `/proc/self` at each collection: resident
//! memory, CPU time, open file descriptors, and the build's identity.

use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

use super::catalog::{self, Def};
use super::instruments;

/// The git commit the binary was built from (`unknown` outside a checkout).
pub const GIT_COMMIT: &str = env!("SLUICE_GIT_COMMIT");

/// Registers the process metrics for a process running `command`.
pub fn register(meter: &Meter, command: &'static str) {
    observe_f64(meter, &catalog::PROCESS_RSS, || {
        rss_bytes().map(|b| b as f64)
    });
    observe_f64(meter, &catalog::PROCESS_OPEN_FDS, || {
        open_fds().map(|n| n as f64)
    });
    instruments::observable_counter_f64(meter, &catalog::PROCESS_CPU, move |o| {
        if let Some(secs) = cpu_seconds() {
            o.observe(secs, &[]);
        }
    });
    let labels = [
        KeyValue::new("version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("commit", GIT_COMMIT),
        KeyValue::new("command", command),
    ];
    instruments::observable_gauge(meter, &catalog::BUILD_INFO, move |o| {
        o.observe(1.0, &labels)
    });
}

fn observe_f64(meter: &Meter, def: &'static Def, read: fn() -> Option<f64>) {
    instruments::observable_gauge(meter, def, move |o| {
        if let Some(v) = read() {
            o.observe(v, &[]);
        }
    });
}

/// Resident set size, from `/proc/self/statm` (pages).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// User plus system CPU time, from `/proc/self/stat` (clock ticks).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ')': state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Open file descriptors: the entries of `/proc/self/fd`.
pub fn open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_readings_are_plausible() {
        let rss = rss_bytes().expect("rss");
        assert!(rss > 1 << 20, "{rss}");
        let before = cpu_seconds().expect("cpu");
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds().expect("cpu") >= before);
        // Other tests open and close files meanwhile: hold many, allow slack.
        let fds = open_fds().expect("fds");
        let files: Vec<_> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        assert!(open_fds().unwrap() >= fds + 32);
        drop(files);
    }
}
