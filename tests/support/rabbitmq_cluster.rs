//! The three-node RabbitMQ cluster of `scripts/brokers/rabbitmq-cluster`, beside the
//! system broker: started (idempotently) by each test that needs it, one such test at a
//! time in a test process (they kill and start its nodes); `scripts/test` stops it.

use std::{process::Command, time::Duration};

/// One test's hold on the cluster: every node up and joined.
#[derive(Debug)]
pub struct Cluster {
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// One test at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The nodes: 1, 2 and 3.
pub const NODES: [usize; 3] = [1, 2, 3];

impl Cluster {
    /// Wait for this process's other cluster tests, then bring every node up.
    pub async fn up() -> Self {
        let turn = TURN.lock().await;
        tokio::task::spawn_blocking(|| script(&["up"])).await.expect("cluster script");
        Self { _turn: turn }
    }

    /// The AMQP URL of node `n`.
    pub fn url(n: usize) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", 5680 + n)
    }

    /// Every node's URL, comma-separated, as a worker's `--broker` takes them.
    pub fn urls() -> String {
        NODES.map(Self::url).join(",")
    }

    /// kill -9 node `n`.
    pub fn kill(&self, n: usize) {
        script(&["kill", &n.to_string()]);
    }

    /// Start node `n` again.
    pub async fn start(&self, n: usize) {
        tokio::task::spawn_blocking(move || script(&["start", &n.to_string()])).await.expect("cluster script");
    }

    /// The node that leads quorum queue `queue` (asked of a node other than `not`, which
    /// may be down), waiting up to 30 s for one to be elected.
    pub fn leader(&self, queue: &str, not: Option<usize>) -> usize {
        let ask = NODES.into_iter().find(|n| Some(*n) != not).expect("a node");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let listed = self.ctl(ask, &["list_queues", "name", "leader", "--formatter", "json"]);
            let queues: serde_json::Value = serde_json::from_str(&listed).unwrap_or_default();
            let leader = queues.as_array().into_iter().flatten().find(|q| q["name"] == queue).and_then(|q| {
                let name = q["leader"].as_str()?;
                NODES.into_iter().find(|n| name == format!("courier-{n}@localhost") && Some(*n) != not)
            });
            if let Some(leader) = leader {
                return leader;
            }
            assert!(std::time::Instant::now() < deadline, "no leader for {queue}: {listed}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `rabbitmqctl` against node `n`; its standard output.
    pub fn ctl(&self, n: usize, args: &[&str]) -> String {
        let mut all = vec!["ctl", &*n.to_string()].into_iter().map(str::to_owned).collect::<Vec<_>>();
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let output = Command::new(path()).args(&all).output().expect("run rabbitmq-cluster");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

fn path() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/brokers/rabbitmq-cluster").to_owned()
}

fn script(args: &[&str]) {
    let status = Command::new(path()).args(args).status().expect("run rabbitmq-cluster");
    assert!(status.success(), "rabbitmq-cluster {args:?} failed");
}
