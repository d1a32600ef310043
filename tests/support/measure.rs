//! Process measurements for the benchmarks: CPU time and peak memory from /proc, and
//! latency percentiles.

use std::time::Duration;

/// CPU seconds (user + system) the process `pid` used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident memory of `pid` in MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The `p`-th percentile (0–100) of `samples` (sorted in place).
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// One benchmarked pipe's figures.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Name in the table.
    pub name: String,
    /// Messages per second at full speed.
    pub rate: f64,
    /// CPU seconds per 10,000 messages.
    pub cpu_per_10k: f64,
    /// Median request→reply latency at half the peak rate.
    pub p50: Duration,
    /// 99th percentile latency at half the peak rate.
    pub p99: Duration,
    /// Peak RSS in MiB.
    pub rss_mib: f64,
}

impl Figures {
    /// Each figure's median over `rounds` of one pipe (peak RSS: the highest).
    pub fn median(rounds: &[Figures]) -> Figures {
        let pick = |f: fn(&Figures) -> f64| median(rounds.iter().map(f).collect());
        let pick_time = |f: fn(&Figures) -> Duration| median(rounds.iter().map(f).collect());
        Figures {
            name: rounds.first().map(|r| r.name.clone()).unwrap_or_default(),
            rate: pick(|r| r.rate),
            cpu_per_10k: pick(|r| r.cpu_per_10k),
            p50: pick_time(|r| r.p50),
            p99: pick_time(|r| r.p99),
            rss_mib: rounds.iter().map(|r| r.rss_mib).fold(0.0, f64::max),
        }
    }
}

/// The median of `values` (the upper one of an even count); `values` must not be empty.
pub fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[values.len() / 2]
}

/// One alternated round's line: the worker's throughput and CPU against the raw pipe's.
pub fn print_round(round: usize, raw: &Figures, worker: &Figures) {
    println!(
        "round {round}: raw {:.0} msg/s, {} {:.0} msg/s ({:.2}x); CPU {:.2}x",
        raw.rate,
        worker.name,
        worker.rate,
        worker.rate / raw.rate,
        worker.cpu_per_10k / raw.cpu_per_10k
    );
}

/// One alternated round's line for two builds of a pipe (`COURIER_BENCH_COMPARE`): this
/// build's throughput and CPU against the earlier build's (`before`, named `earlier`).
pub fn print_against(round: usize, earlier: &str, before: &Figures, this: &Figures) {
    println!(
        "round {round}: {} {:.0} msg/s against {earlier}'s {:.0} msg/s ({:.2}x); CPU {:.2}x",
        this.name,
        this.rate,
        before.rate,
        this.rate / before.rate,
        this.cpu_per_10k / before.cpu_per_10k
    );
}

/// The median of a row's rounds as the table's row, or no row when it did not run.
pub fn medians(rounds: &[Figures]) -> Vec<Figures> {
    if rounds.is_empty() { Vec::new() } else { vec![Figures::median(rounds)] }
}

/// Print the median of the rounds' throughput ratios (worker ÷ raw, round by round).
pub fn print_median_ratio(raw: &[Figures], worker: &[Figures]) {
    let ratios = raw.iter().zip(worker).map(|(r, w)| w.rate / r.rate).collect();
    println!("median of the rounds' throughput ratios ({}): {:.2}x", worker[0].name, median(ratios));
}

/// Print figures as a Markdown table, with each row's ratio to the first (the baseline).
pub fn print_table(title: &str, rows: &[Figures]) {
    print_table_against(title, rows, "raw");
}

/// [`print_table`], the first row's name in the ratio columns being `first`.
pub fn print_table_against(title: &str, rows: &[Figures], first: &str) {
    println!("\n{title}\n");
    println!(
        "| pipe | msg/s | CPU s / 10k msg | p50 latency | p99 latency | peak RSS | throughput vs {first} | CPU vs {first} |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let base = rows.first().cloned().unwrap_or_default();
    for row in rows {
        println!(
            "| {} | {:.0} | {:.3} | {:.1} ms | {:.1} ms | {:.1} MiB | {:.2}x | {:.2}x |",
            row.name,
            row.rate,
            row.cpu_per_10k,
            row.p50.as_secs_f64() * 1e3,
            row.p99.as_secs_f64() * 1e3,
            row.rss_mib,
            row.rate / base.rate,
            row.cpu_per_10k / base.cpu_per_10k,
        );
    }
}
