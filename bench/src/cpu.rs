//! Where the machine's CPU goes during a load window: the server process, PostgreSQL's
//! processes, this load generator and everything else, read from `/proc` (Linux). The
//! benchmarks report it per request, so a run shows how much work one request costs on
//! each side and how far that is from a goal, not only how fast the run went.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// CPU time consumed so far, in nanoseconds, by each side.
#[derive(Debug, Clone)]
pub(crate) struct CpuSample {
    at: Instant,
    server_ns: Option<u64>,
    postgres_ns: u64,
    bench_ns: u64,
    /// `/proc/stat`'s first line: ticks busy and ticks in all, over all cores.
    machine_busy_ticks: u64,
    machine_total_ticks: u64,
}

/// The cores each side kept busy over a window (1.0 is one whole core), and its CPU time
/// per request of the window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CpuUse {
    pub seconds: f64,
    pub cores: f64,
    /// `None`: the server's process is not known (a server given by `--url`).
    pub server_cores: Option<f64>,
    pub postgres_cores: f64,
    pub bench_cores: f64,
    /// Busy cores not accounted to the three above (the kernel's interrupts included).
    pub other_cores: f64,
    pub idle_cores: f64,
    pub requests: u64,
    pub server_us_per_request: Option<f64>,
    pub postgres_us_per_request: f64,
    pub bench_us_per_request: f64,
    /// Busy CPU time of the whole machine per request.
    pub machine_us_per_request: f64,
}

impl CpuSample {
    pub(crate) fn take(server_pid: Option<u32>) -> Self {
        let (machine_busy_ticks, machine_total_ticks) = machine_ticks().unwrap_or((0, 0));
        Self {
            at: Instant::now(),
            server_ns: server_pid.map(|pid| process_ns(&Path::new("/proc").join(pid.to_string()))),
            postgres_ns: postgres_ns(),
            bench_ns: process_ns(Path::new("/proc/self")),
            machine_busy_ticks,
            machine_total_ticks,
        }
    }

    /// What was used from `self` to `later`, with `requests` made in between.
    pub(crate) fn until(&self, later: &CpuSample, requests: u64) -> CpuUse {
        let seconds = later.at.duration_since(self.at).as_secs_f64().max(1e-9);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let ns_cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9 / seconds;
        let server_cores = self
            .server_ns
            .zip(later.server_ns)
            .map(|(a, b)| ns_cores(a, b));
        let postgres_cores = ns_cores(self.postgres_ns, later.postgres_ns);
        let bench_cores = ns_cores(self.bench_ns, later.bench_ns);
        let total = later
            .machine_total_ticks
            .saturating_sub(self.machine_total_ticks);
        let busy_share = if total == 0 {
            0.0
        } else {
            later
                .machine_busy_ticks
                .saturating_sub(self.machine_busy_ticks) as f64
                / total as f64
        };
        let busy_cores = busy_share * cores;
        let accounted = server_cores.unwrap_or(0.0) + postgres_cores + bench_cores;
        let per_request = |c: f64| c * seconds * 1e6 / requests.max(1) as f64;
        CpuUse {
            seconds,
            cores,
            server_cores,
            postgres_cores,
            bench_cores,
            other_cores: (busy_cores - accounted).max(0.0),
            idle_cores: (cores - busy_cores).max(0.0),
            requests,
            server_us_per_request: server_cores.map(per_request),
            postgres_us_per_request: per_request(postgres_cores),
            bench_us_per_request: per_request(bench_cores),
            machine_us_per_request: per_request(busy_cores),
        }
    }
}

impl CpuUse {
    /// Two lines: the cores each side used, and its CPU time per request.
    pub(crate) fn print(&self, what: &str) {
        let known = |v: Option<f64>, digits: usize| match v {
            Some(v) => format!("{v:.digits$}"),
            None => "unknown".into(),
        };
        println!(
            "  cpu over {:.1} s ({} cores): server {} cores, postgres {:.2}, bench {:.2}, other {:.2}, idle {:.2}",
            self.seconds,
            self.cores,
            known(self.server_cores, 2),
            self.postgres_cores,
            self.bench_cores,
            self.other_cores,
            self.idle_cores
        );
        println!(
            "  cpu per {what} ({} of them): server {} µs, postgres {:.0} µs, bench {:.0} µs, whole machine {:.0} µs",
            self.requests,
            known(self.server_us_per_request, 0),
            self.postgres_us_per_request,
            self.bench_us_per_request,
            self.machine_us_per_request
        );
    }
}

/// CPU time of the process at `proc_dir` (`/proc/<pid>`): user and system time from its
/// `stat`, which keeps the time of threads that have exited (a server's blocking-pool
/// threads come and go). `/proc` counts in USER_HZ ticks, 100 per second on Linux.
/// 0 if the process is gone.
fn process_ns(proc_dir: &Path) -> u64 {
    const NS_PER_TICK: u64 = 10_000_000;
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return 0;
    };
    // The command name is in parentheses and may hold spaces: count fields after it.
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) * NS_PER_TICK
}

/// CPU time of every process named `postgres` on this machine (its server, backends and
/// background workers). A backend that exits within the window takes its time with it;
/// the servers keep their connections pooled, so that is rare.
fn postgres_ns() -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|p| {
            p.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|p| {
            std::fs::read_to_string(p.path().join("comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|p| process_ns(&p.path()))
        .sum()
}

/// (busy, total) ticks of all cores since boot, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_in_this_process_is_counted_as_the_bench() {
        let before = CpuSample::take(Some(std::process::id()));
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed().as_millis() < 200 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = before.until(&CpuSample::take(Some(std::process::id())), 10);
        // At least 0.15 s of the 0.2 s spent spinning shows up, for the bench and for
        // the "server" (the same process here), and in the machine's busy time.
        assert!(used.bench_cores * used.seconds > 0.15, "{used:?}");
        assert!(used.server_cores.unwrap() * used.seconds > 0.15, "{used:?}");
        assert!(used.machine_us_per_request * 10.0 > 150_000.0, "{used:?}");
        assert!(used.bench_us_per_request > 15_000.0, "{used:?}");
    }
}
