//! Kafka for the tests: librdkafka's mock cluster (a real Kafka-protocol broker) hosted on
//! a thread of its own, and the contract-suite harness on top of it.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use courier::{
    Message,
    contract::headers::Headers,
    testing::Harness,
    transport::{
        Transport,
        kafka::{KafkaConfig, KafkaTransport, Ordering},
    },
};
use rdkafka::{
    ClientConfig, Message as _, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    message::Headers as _,
    mocking::MockCluster,
    types::{RDKafkaApiKey, RDKafkaRespErr},
};

/// Senders of every cluster started by this process (see [`MockKafka::start`]).
static KEEP_ALIVE: Mutex<Vec<std::sync::mpsc::Sender<Command>>> = Mutex::new(Vec::new());

/// What the cluster's thread can be asked to do.
#[derive(Debug)]
pub enum Command {
    /// Fail the next `n` produce requests with a non-retriable error.
    FailProduces(usize),
    /// Stop failing produce requests.
    ClearProduceErrors,
    /// Take broker `id` down.
    BrokerDown(i32),
    /// Bring broker `id` back.
    BrokerUp(i32),
    /// Create a topic (the mock has no CreateTopics API); answers when done.
    CreateTopic(String, i32, std::sync::mpsc::Sender<()>),
}

/// A mock Kafka cluster; it lives until the test process exits.
#[derive(Debug)]
pub struct MockKafka {
    /// `host:port` of the brokers.
    pub bootstrap: String,
    /// To the thread that owns the cluster (librdkafka's handle is not `Send`).
    commands: Mutex<std::sync::mpsc::Sender<Command>>,
}

impl MockKafka {
    /// Start a cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Self {
        let (commands, inbox) = std::sync::mpsc::channel::<Command>();
        let (ready, bootstrap) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let cluster = MockCluster::new(brokers).expect("mock cluster");
            ready.send(cluster.bootstrap_servers()).expect("report bootstrap");
            while let Ok(command) = inbox.recv() {
                apply(&cluster, command);
            }
        });
        let bootstrap = bootstrap.recv().expect("mock cluster started");
        // Clusters live as long as the test process: a client that closes after its test
        // (a consumer leaving its group) must still find its broker, or it hangs.
        KEEP_ALIVE.lock().expect("clusters").push(commands.clone());
        Self { bootstrap, commands: Mutex::new(commands) }
    }

    /// Create topics with `partitions` partitions (existing ones are kept).
    pub fn create_topics(&self, names: &[&str], partitions: i32) {
        for name in names {
            let (done, wait) = std::sync::mpsc::channel();
            self.command(Command::CreateTopic((*name).to_owned(), partitions, done));
            wait.recv().expect("topic created");
        }
    }

    /// Ask the cluster to do something.
    pub fn command(&self, command: Command) {
        let _ = self.commands.lock().expect("commands").send(command);
    }
}

/// Carry out one command on the cluster.
pub fn apply(cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>, command: Command) {
    match command {
        Command::FailProduces(n) => {
            let errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; n];
            cluster.request_errors(RDKafkaApiKey::Produce, &errors);
        }
        Command::ClearProduceErrors => cluster.clear_request_errors(RDKafkaApiKey::Produce),
        Command::BrokerDown(id) => cluster.broker_down(id).expect("broker down"),
        Command::BrokerUp(id) => cluster.broker_up(id).expect("broker up"),
        Command::CreateTopic(name, partitions, done) => {
            // An existing topic is fine: creation is idempotent for the tests.
            let _ = cluster.create_topic(&name, partitions, 1);
            let _ = done.send(());
        }
    }
}

/// Transport settings for tests: short fetch waits (the mock holds an empty fetch for
/// the full `fetch.wait.max.ms`).
pub fn config(bootstrap: &str, ordering: Ordering) -> KafkaConfig {
    KafkaConfig {
        bootstrap: bootstrap.to_owned(),
        group: format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        ordering,
        partitions: 2,
        replication: 1,
        properties: vec![("fetch.wait.max.ms".into(), "10".into())],
    }
}

/// The contract-suite harness on a fresh mock cluster.
pub struct KafkaHarness {
    /// The cluster (dropped with the harness).
    pub cluster: MockKafka,
    /// The transport under test.
    pub transport: KafkaTransport,
    /// One reader per topic, positioned after what was already received.
    readers: Mutex<HashMap<String, std::sync::Arc<StreamConsumer>>>,
}

impl std::fmt::Debug for KafkaHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaHarness").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

impl KafkaHarness {
    /// A new cluster and a transport connected to it.
    pub async fn mock() -> Self {
        if std::env::var_os("COURIER_TEST_LOG").is_some() {
            courier::app::init_logging("text", "debug,rdkafka=info");
        }
        let cluster = MockKafka::start(1);
        let transport =
            KafkaTransport::connect(config(&cluster.bootstrap, Ordering::Partition)).await.expect("connect");
        Self { cluster, transport, readers: Mutex::default() }
    }

    async fn reader(&self, topic: &str) -> std::sync::Arc<StreamConsumer> {
        if let Some(reader) = self.readers.lock().expect("readers").get(topic) {
            return std::sync::Arc::clone(reader);
        }
        self.cluster.create_topics(&[topic], self.transport.config().partitions);
        let reader: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.cluster.bootstrap)
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4().simple()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .expect("reader");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..self.transport.config().partitions {
            assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("offset");
        }
        reader.assign(&assignment).expect("assign");
        let reader = std::sync::Arc::new(reader);
        self.readers.lock().expect("readers").insert(topic.to_owned(), std::sync::Arc::clone(&reader));
        reader
    }
}

impl Harness for KafkaHarness {
    type Transport = KafkaTransport;
    const PAUSED_TIME: bool = false;

    async fn transport(&self) -> KafkaTransport {
        self.transport.clone()
    }

    async fn declare(&self, topology: &courier::transport::Topology) {
        let mut names = vec![topology.queue.as_str(), &topology.dead_letter, &topology.parking, &topology.replies];
        names.extend(topology.retry_tiers.iter().map(|t| t.name.as_str()));
        self.cluster.create_topics(&names, self.transport.config().partitions);
        self.transport.declare(topology).await.expect("declare topology");
    }

    async fn declare_refusing(&self, name: &str) {
        self.cluster.create_topics(&[name], self.transport.config().partitions);
        self.cluster.command(Command::FailProduces(1_000));
    }

    async fn accept_publishes(&self, _name: &str) {
        self.cluster.command(Command::ClearProduceErrors);
    }

    async fn receive(&self, queue: &str, timeout: Duration) -> Option<Message> {
        let reader = self.reader(queue).await;
        let record = tokio::time::timeout(timeout, reader.recv()).await.ok()?.expect("read");
        let mut headers = Headers::new();
        if let Some(list) = record.headers() {
            for header in list.iter() {
                headers.insert(
                    header.key.to_owned(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        Some(Message {
            payload: record.payload().map(bytes::Bytes::copy_from_slice).unwrap_or_default(),
            headers,
            key: record.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        })
    }

    async fn delete(&self, _queues: &[String]) {}
}
