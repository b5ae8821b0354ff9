//! The process metrics Prometheus users expect of every exporter (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`…), read from `/proc` at each scrape.
//! Elsewhere than Linux there is no `/proc`, and they are left out.

use std::fs;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/self/stat`'s times: 100 on every Linux platform Rust
/// builds for (USER_HZ is fixed by the kernel ABI).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug)]
pub(super) struct ProcessCollector;

/// The CPU this process has used so far: user and system seconds (INFO's CPU section).
pub fn cpu_seconds() -> Option<(f64, f64)> {
    let stat = Stat::read()?;
    Some((
        stat.field(14)? / TICKS_PER_SECOND,
        stat.field(15)? / TICKS_PER_SECOND,
    ))
}

/// `/proc/self/stat`.
struct Stat(String);

impl Stat {
    fn read() -> Option<Stat> {
        fs::read_to_string("/proc/self/stat").ok().map(Stat)
    }

    /// Field `n` of stat(5). The fields after the command name, which is in parentheses and
    /// may hold spaces: state is field 3, so field n is at index n - 3 of them.
    fn field(&self, n: usize) -> Option<f64> {
        let after_name = self.0.rsplit_once(')')?.1;
        after_name.split_whitespace().nth(n - 3)?.parse().ok()
    }
}

/// What `/proc` says of this process.
struct Sample {
    cpu_seconds: f64,
    start_time_seconds: f64,
    threads: i64,
    resident_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    max_fds: Option<i64>,
}

impl Sample {
    fn read() -> Option<Sample> {
        let stat = Stat::read()?;
        let field = |n: usize| stat.field(n);
        let boot_time = fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
        let status = fs::read_to_string("/proc/self/status").ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| {
                    l.strip_prefix(key)?
                        .trim()
                        .strip_suffix(" kB")?
                        .trim()
                        .parse::<i64>()
                        .ok()
                })
                .map(|k| k * 1024)
        };
        let max_fds = fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| {
                limits.lines().find_map(|l| {
                    l.strip_prefix("Max open files")?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
            });
        Some(Sample {
            cpu_seconds: (field(14)? + field(15)?) / TICKS_PER_SECOND,
            start_time_seconds: boot_time + field(22)? / TICKS_PER_SECOND,
            threads: field(20)? as i64,
            resident_bytes: kib("VmRSS:")?,
            virtual_bytes: kib("VmSize:")?,
            open_fds: fs::read_dir("/proc/self/fd").ok()?.count() as i64,
            max_fds,
        })
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(s) = Sample::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(s.cpu_seconds);
        let help = "Total user and system CPU time spent in seconds.";
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            help,
            None,
            cpu.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: ConstGauge<f64>| {
            value.encode(encoder.encode_descriptor(name, help, None, value.metric_type())?)
        };
        let start = "Start time of the process since unix epoch in seconds.";
        gauge(
            "process_start_time_seconds",
            start,
            ConstGauge::new(s.start_time_seconds),
        )?;
        let whole = |v: i64| ConstGauge::new(v as f64);
        gauge(
            "process_threads",
            "Number of OS threads in the process.",
            whole(s.threads),
        )?;
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            whole(s.resident_bytes),
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            whole(s.virtual_bytes),
        )?;
        gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            whole(s.open_fds),
        )?;
        if let Some(max) = s.max_fds {
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                whole(max),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Sample;

    #[test]
    fn this_process_is_read_from_proc() {
        let s = Sample::read().expect("a Linux /proc");
        assert!(s.threads >= 1 && s.resident_bytes > 0 && s.open_fds > 0);
        assert!(s.virtual_bytes >= s.resident_bytes);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 3600.0);
    }
}
