//! The greeter under a 256 MiB memory limit (a cgroup v1 memory group, as Kubernetes sets
//! one) receives requests of 20 MiB on RabbitMQ, queued before it starts and sent while it
//! runs: it is not killed, and each one is dead-lettered as `too-large` (its copy without
//! the payload) with an error reply. Before the prefetch followed the deliveries' sizes, ten
//! of them arrived at once and the worker was OOM-killed. Its own binary: it moves 400 MiB
//! through the broker. Skipped where the memory controller cannot be written (not root).

use std::path::PathBuf;

use courier::{contract::headers as h, testing::Harness};
use courier_tests::{
    process::Process,
    rabbitmq::{PATIENCE, RabbitHarness, RawClient, cleanup, names, url},
    replies::Replies,
};

const LIMIT: u64 = 256 * 1024 * 1024;
const SIZE: usize = 20 * 1024 * 1024;

/// A memory cgroup of its own, removed when dropped.
struct Group(PathBuf);

impl Group {
    fn create() -> Option<Self> {
        let path = PathBuf::from(format!("/sys/fs/cgroup/memory/courier-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&path).ok()?;
        let group = Self(path);
        std::fs::write(group.0.join("memory.limit_in_bytes"), LIMIT.to_string()).ok()?;
        Some(group)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file)).unwrap_or_default()
    }

    fn oom_kills(&self) -> u64 {
        let control = self.read("memory.oom_control");
        let kills = control.lines().find_map(|l| l.strip_prefix("oom_kill "));
        kills.and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_20_mib_under_a_256_mib_limit_are_dead_lettered_without_a_restart() {
    let Some(group) = Group::create() else {
        eprintln!("skipped: the cgroup v1 memory controller cannot be written here");
        return;
    };
    let (queue, replies) = names("memory");
    let dlq = format!("{queue}.dlq");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let body = format!(r#"{{"message":"{}"}}"#, "x".repeat(SIZE));
    let send = async |prefix: &str| {
        for i in 0..10 {
            let properties = lapin::BasicProperties::default()
                .with_correlation_id(format!("{prefix}-{i}").as_str().into())
                .with_reply_to(replies.as_str().into());
            client.publish(&queue, body.as_bytes(), properties).await;
        }
    };
    send("queued").await;
    let procs = group.0.join("cgroup.procs");
    let script = format!("echo $$ > {} && exec \"$0\" \"$@\"", procs.display());
    let url = url();
    let args = ["--broker", &url, "--queue", &queue, "--replies", &replies, "--retry-delays="];
    let mut worker = Process::start_under(&["sh", "-c", &script], "greeter", "memory", &args, &[]);
    worker.wait_for_log("Consuming.", PATIENCE);
    send("running").await;

    let harness = RabbitHarness::new().await;
    for n in 0..20 {
        let record = harness
            .receive(&dlq, PATIENCE)
            .await
            .unwrap_or_else(|| panic!("{n} dead letters; oom kills {}\n{}", group.oom_kills(), worker.tail()));
        assert_eq!(record.headers.get(h::FAILURE_KIND).map(String::as_str), Some("too-large"));
        assert!(record.payload.is_empty(), "a copy without the payload");
        assert_eq!(record.headers.get(h::FAILURE_PAYLOAD_BYTES), Some(&body.len().to_string()));
    }
    let mut seen = Replies::default();
    client.collect_replies(&replies, 20, &mut seen, PATIENCE, |_| false).await;
    let peak = group.read("memory.max_usage_in_bytes").trim().parse::<u64>().unwrap_or(0);
    println!(
        "memory: 20 requests of 20 MiB under a 256 MiB limit: peak {} MiB, {} error replies, {} OOM kills",
        peak / (1024 * 1024),
        seen.by_id.len(),
        group.oom_kills()
    );
    assert_eq!(group.oom_kills(), 0, "{}", worker.tail());
    assert!(worker.running(), "not restarted\n{}", worker.tail());
    assert_eq!(seen.by_id.len(), 20, "every requester is told");
    assert!(worker.terminate());
    cleanup(&queue, &replies).await;
}
