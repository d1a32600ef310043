//! The circuit breaker's outage drill: the greeter's dependency goes down while requests
//! arrive (its `GREETER_DEPENDENCY_DOWN_FILE` switch), then comes back; what happened to
//! the requests is read off the worker's metrics and the replies.

use std::{path::PathBuf, time::Duration};

use crate::replies::Replies;

/// The dependency's switch: down while the file exists; removed when dropped.
#[derive(Debug)]
pub struct Outage {
    /// `GREETER_DEPENDENCY_DOWN_FILE`.
    file: PathBuf,
}

impl Outage {
    /// The dependency goes down.
    pub fn begin(name: &str) -> Self {
        let file = std::env::temp_dir().join(format!("courier-outage-{name}"));
        std::fs::write(&file, "").expect("create the outage switch");
        Self { file }
    }

    /// The greeter's environment that follows the switch.
    pub fn env(&self) -> [(&str, &str); 1] {
        [("GREETER_DEPENDENCY_DOWN_FILE", self.file.to_str().expect("a UTF-8 temporary path"))]
    }

    /// The dependency comes back.
    pub fn end(&self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.end();
    }
}

/// What one drill run did.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// The run, in the table.
    pub name: String,
    /// Requests sent.
    pub requests: usize,
    /// Dead-letter copies written (`courier_messages_dead_lettered_total`).
    pub dead_lettered: f64,
    /// Copies handed to a retry tier (`courier_messages_retried_total`).
    pub tier_traffic: f64,
    /// Deliveries given back to the broker by the open breaker.
    pub given_back: f64,
    /// Requests answered ok.
    pub ok: usize,
    /// Requests answered with an error reply.
    pub errors: usize,
    /// Replies beyond the first per request.
    pub duplicates: usize,
    /// Requests without any reply.
    pub lost: usize,
    /// From the dependency's return to the last reply.
    pub drain: Duration,
}

impl Figures {
    /// The figures of a run from the worker's metrics at the end and the replies seen.
    pub fn new(name: &str, ids: &[String], metrics: &str, replies: &Replies, drain: Duration) -> Self {
        let status = |s: &str| replies.by_status.get(s).copied().unwrap_or_default();
        Self {
            name: name.to_owned(),
            requests: ids.len(),
            dead_lettered: sum(metrics, "courier_messages_dead_lettered_total"),
            tier_traffic: sum(metrics, "courier_messages_retried_total"),
            given_back: crate::http::metric(
                metrics,
                r#"courier_messages_requeued_total{reason="breaker_open",worker="greeter"}"#,
            ),
            ok: status("ok"),
            errors: status("error"),
            duplicates: replies.duplicates(),
            lost: replies.missing(ids).len(),
            drain,
        }
    }
}

/// The sum of every series of the metric `name` in a Prometheus text exposition.
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(0.0, |total, value| total + value)
}

/// Print the runs as a Markdown table.
pub fn print_table(title: &str, outage: Duration, rows: &[&Figures]) {
    println!("\n{title}: dependency down for {outage:?} while the requests arrive, then up\n");
    println!(
        "| run | requests | dead-lettered | retry-tier copies | given back | ok replies | error replies | duplicates | lost | drain after recovery |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s |",
            row.name,
            row.requests,
            row.dead_lettered,
            row.tier_traffic,
            row.given_back,
            row.ok,
            row.errors,
            row.duplicates,
            row.lost,
            row.drain.as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_every_series_of_one_metric_only() {
        let text =
            "# HELP x\ncourier_a_total{k=\"1\"} 2\ncourier_a_total{k=\"2\"} 3\ncourier_ab_total 7\ncourier_a_total 1\n";
        assert_eq!(super::sum(text, "courier_a_total"), 6.0);
    }
}
