//! The process metrics every Prometheus user expects, under their standard
//! unprefixed names (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, …), read from `/proc` at each scrape.
//!
//! CPU time has the kernel's 10 ms resolution (clock ticks of 1/100 s, the
//! USER_HZ of `/proc` on every mainstream platform), not whole seconds: a
//! relay that needs a fraction of a core shows it. Off Linux nothing is
//! exported.

use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, Opts, Registry};

/// The process collector of one service's `/metrics`.
#[derive(Debug, Clone)]
pub struct ProcessMetrics {
    registry: Registry,
    cpu: Counter,
    resident: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
}

/// What `/proc` says of this process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub virtual_bytes: i64,
    pub threads: i64,
    /// Since the Unix epoch.
    pub start_time_seconds: f64,
}

/// Clock ticks per second of `/proc/*/stat`.
const USER_HZ: f64 = 100.0;

/// Parses `/proc/self/stat` (`stat`), `/proc/self/status` (`status`) and
/// the boot time line of `/proc/stat` (`btime`, seconds since the epoch).
pub fn parse(stat: &str, status: &str, btime: u64) -> Option<Sample> {
    // After the parenthesised command name (which may hold spaces):
    // state is field 3 overall, utime 14, stime 15, num_threads 20,
    // starttime 22.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let at = |overall: usize| fields.get(overall - 3).and_then(|f| f.parse::<u64>().ok());
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .map(|k| k * 1024)
    };
    Some(Sample {
        cpu_seconds: (at(14)? + at(15)?) as f64 / USER_HZ,
        resident_bytes: kib("VmRSS:").unwrap_or(0),
        virtual_bytes: kib("VmSize:").unwrap_or(0),
        threads: at(20)? as i64,
        start_time_seconds: btime as f64 + at(22)? as f64 / USER_HZ,
    })
}

fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let btime = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())?;
    parse(&stat, &status, btime)
}

fn must<T>(name: &str, r: Result<T, prometheus::Error>) -> T {
    // Names and help texts are constants of this file; the metrics tests
    // catch a malformed one.
    r.unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"))
}

impl ProcessMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let int = |name: &str, help: &str| {
            let g = must(name, IntGauge::with_opts(Opts::new(name, help)));
            let _ = registry.register(Box::new(g.clone()));
            g
        };
        let cpu = must(
            "process_cpu_seconds_total",
            Counter::with_opts(Opts::new(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            )),
        );
        let _ = registry.register(Box::new(cpu.clone()));
        let start_time = must(
            "process_start_time_seconds",
            Gauge::with_opts(Opts::new(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            )),
        );
        let _ = registry.register(Box::new(start_time.clone()));
        ProcessMetrics {
            cpu,
            start_time,
            resident: int(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            virtual_memory: int(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            open_fds: int("process_open_fds", "Number of open file descriptors."),
            max_fds: int(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            ),
            threads: int("process_threads", "Number of OS threads in the process."),
            registry,
        }
    }

    /// Reads `/proc` and returns the families to expose (none off Linux).
    pub fn gather(&self) -> Vec<MetricFamily> {
        let Some(now) = read() else {
            return Vec::new();
        };
        // A counter only goes up: add what was used since the last scrape.
        let grown = now.cpu_seconds - self.cpu.get();
        if grown > 0.0 {
            self.cpu.inc_by(grown);
        }
        self.resident.set(now.resident_bytes);
        self.virtual_memory.set(now.virtual_bytes);
        self.threads.set(now.threads);
        self.start_time.set(now.start_time_seconds);
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
            self.max_fds.set(i64::try_from(soft).unwrap_or(i64::MAX));
        }
        self.registry.gather()
    }
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fractions_of_a_second_and_a_command_with_spaces() {
        let stat = "4242 (residency relay) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    87 14 0 0 20 0 6 0 3000 123456789 4000 18446744073709551615";
        let status =
            "Name:\tresidency-relay\nVmSize:\t  120560 kB\nVmRSS:\t   16000 kB\nThreads:\t6\n";
        let s = parse(stat, status, 1_700_000_000).unwrap();
        assert!((s.cpu_seconds - 1.01).abs() < 1e-9, "{}", s.cpu_seconds);
        assert_eq!(s.threads, 6);
        assert_eq!(s.resident_bytes, 16000 * 1024);
        assert_eq!(s.virtual_bytes, 120560 * 1024);
        assert!((s.start_time_seconds - 1_700_000_030.0).abs() < 1e-9);
        assert_eq!(parse("garbage", status, 0), None);
    }

    #[test]
    fn exports_unprefixed_names_on_linux() {
        let m = ProcessMetrics::new();
        let names: Vec<String> = m.gather().iter().map(|f| f.name().to_owned()).collect();
        if cfg!(target_os = "linux") {
            for n in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_max_fds",
                "process_threads",
                "process_start_time_seconds",
                "process_virtual_memory_bytes",
            ] {
                assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
            }
        }
    }
}
