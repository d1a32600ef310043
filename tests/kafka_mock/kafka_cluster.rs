//! Nothing lost when a Kafka broker dies: the mock cluster with three brokers (in a process
//! of its own), every topic replicated on all three, the worker given every broker's
//! address. Leaders are placed by the test and moved as an election would when their
//! broker goes down. After each scenario every request id has its reply, duplicates are
//! counted and printed, and none is lost. (The mock has no `min.insync.replicas`: a
//! produce is acknowledged by the leader alone; see docs/delivery.md.)

use std::{collections::HashMap, time::Duration};

use courier_tests::{
    kafka::{KafkaClient, MockKafkaProcess},
    process::Process,
    replies::Replies,
};

const PATIENCE: Duration = Duration::from_secs(45);
const PARTITIONS: i32 = 3;
const BROKERS: i32 = 3;

/// The mock cluster, the scenario's topics and who leads their partitions.
struct Scenario {
    cluster: MockKafkaProcess,
    queue: String,
    replies: String,
    group: String,
    /// (topic, partition) → leading broker.
    leaders: HashMap<(String, i32), i32>,
}

impl Scenario {
    /// Three brokers; the work topic led by broker 1, the reply topic by broker 2, the
    /// dead-letter, parking and retry topics and the group's coordinator by broker 3.
    fn start(test: &str) -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let (queue, replies, group) =
            (format!("{test}-{id}.requests"), format!("{test}-{id}.replies"), format!("{test}-{id}"));
        let placed = [
            (queue.clone(), 1),
            (replies.clone(), 2),
            (format!("{queue}.dlq"), 3),
            (format!("{queue}.parking"), 3),
            (format!("{queue}.retry.1s"), 3),
        ];
        let specs: Vec<(&str, i32, i32)> = placed.iter().map(|(t, _)| (t.as_str(), PARTITIONS, BROKERS)).collect();
        let mut scenario = Self {
            cluster: MockKafkaProcess::start_cluster(BROKERS, &specs),
            queue,
            replies,
            group,
            leaders: HashMap::new(),
        };
        for (topic, leader) in &placed {
            for partition in 0..PARTITIONS {
                scenario.lead(topic, partition, *leader);
            }
        }
        let command = format!("coordinator {} 3", scenario.group);
        scenario.cluster.command(&command);
        scenario
    }

    fn lead(&mut self, topic: &str, partition: i32, broker: i32) {
        self.cluster.command(&format!("leader {topic} {partition} {broker}"));
        self.leaders.insert((topic.to_owned(), partition), broker);
    }

    /// Broker `down` goes away; each partition it led elects the next broker that is up.
    fn fail_over(&mut self, down: i32, up: &[i32]) {
        self.cluster.command(&format!("down {down}"));
        let led: Vec<(String, i32)> =
            self.leaders.iter().filter(|(_, b)| **b == down).map(|(k, _)| k.clone()).collect();
        for (topic, partition) in led {
            let next = up[usize::try_from(partition).unwrap_or(0) % up.len()];
            self.lead(&topic, partition, next);
        }
    }

    fn greeter(&self, label: &str) -> Process {
        let broker = format!("kafka://{}", self.cluster.bootstrap);
        let partitions = PARTITIONS.to_string();
        let args = [
            "--broker",
            &broker,
            "--queue",
            &self.queue,
            "--replies",
            &self.replies,
            "--group",
            &self.group,
            "--instance",
            label,
            "--retry-delays",
            "1s",
            "--partitions",
            &partitions,
            "--replication",
            "3",
            "--kafka-property",
            "fetch.wait.max.ms=10",
        ];
        let mut process = Process::start("greeter", label, &args, &[]);
        process.wait_for_log("Partitions assigned.", PATIENCE);
        process
    }
}

/// Collect replies until `until` of them are in (or all, or patience runs out).
async fn collect(scenario: &Scenario, client: &mut KafkaClient, ids: &[String], seen: &mut Replies, until: usize) {
    let topic = &scenario.replies;
    client.collect_replies(topic, PARTITIONS, ids.len(), seen, PATIENCE, |r| r.by_id.len() >= until).await;
}

/// 10,000 requests; after 2,000 replies the work topic's leader dies (its partitions move
/// to broker 2), after 5,000 the reply topic's leader dies (broker 1 is back and takes
/// over), after 7,500 broker 3 — dead-letter topics and the group's coordinator — is cut
/// off for 3 s without an election, then comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_leaders_die_and_a_broker_is_cut_off_mid_load_and_nothing_is_lost() {
    let mut scenario = Scenario::start("kleaders");
    let mut worker = scenario.greeter("kleaders");
    let mut client = KafkaClient::new(&scenario.cluster.bootstrap);
    let ids = client.publish_greetings(&scenario.queue, &scenario.replies, "l", 10_000).await;
    let mut seen = Replies::default();
    collect(&scenario, &mut client, &ids, &mut seen, 2_000).await;
    scenario.fail_over(1, &[2]);
    collect(&scenario, &mut client, &ids, &mut seen, 5_000).await;
    scenario.cluster.command("up 1");
    scenario.fail_over(2, &[1]);
    collect(&scenario, &mut client, &ids, &mut seen, 7_500).await;
    scenario.cluster.command("down 3");
    tokio::time::sleep(Duration::from_secs(3)).await;
    scenario.cluster.command("up 3");
    scenario.cluster.command("up 2");
    collect(&scenario, &mut client, &ids, &mut seen, ids.len()).await;
    seen.assert_none_lost("work-topic leader, reply-topic leader and a broker cut off", &ids, || worker.tail());
    assert!(worker.running(), "the worker rode it out:\n{}", worker.tail());
    assert!(worker.terminate());
}

/// The broker coordinating the worker's consumer group dies mid-load; broker 1 takes over
/// the group (its committed offsets are the cluster's): every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_coordinator_dies_mid_load_and_nothing_is_lost() {
    let mut scenario = Scenario::start("kcoord");
    let mut worker = scenario.greeter("kcoord");
    let mut client = KafkaClient::new(&scenario.cluster.bootstrap);
    let ids = client.publish_greetings(&scenario.queue, &scenario.replies, "c", 10_000).await;
    let mut seen = Replies::default();
    collect(&scenario, &mut client, &ids, &mut seen, 3_000).await;
    scenario.fail_over(3, &[1, 2]);
    let command = format!("coordinator {} 1", scenario.group);
    scenario.cluster.command(&command);
    collect(&scenario, &mut client, &ids, &mut seen, ids.len()).await;
    seen.assert_none_lost("group coordinator's broker down", &ids, || worker.tail());
    assert!(worker.running(), "the worker rode it out:\n{}", worker.tail());
    assert!(worker.terminate());
}
