//! Kafka for the tests: librdkafka's mock cluster (a real Kafka-protocol broker) hosted on
//! a thread of its own, and the contract-suite harness on top of it.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use courier::{
    Message,
    testing::Harness,
    transport::{
        Transport,
        kafka::{KafkaConfig, KafkaTransport, Ordering, record_headers, to_message},
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
    /// Delay every answer of broker `id` by this round trip time.
    RoundTrip(i32, Duration),
    /// Create a topic (the mock has no CreateTopics API) with this many partitions and
    /// replicas; answers when done.
    CreateTopic(String, i32, i32, std::sync::mpsc::Sender<()>),
    /// Make broker `id` the leader of a partition (an election), or none (`None`).
    Leader(String, i32, Option<i32>),
    /// Make broker `id` the coordinator of a consumer group.
    GroupCoordinator(String, i32),
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
        self.create_replicated_topics(names, partitions, 1);
    }

    /// Create topics with `partitions` partitions of `replication` replicas each.
    pub fn create_replicated_topics(&self, names: &[&str], partitions: i32, replication: i32) {
        for name in names {
            let (done, wait) = std::sync::mpsc::channel();
            self.command(Command::CreateTopic((*name).to_owned(), partitions, replication, done));
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
        Command::RoundTrip(id, rtt) => cluster.broker_round_trip_time(id, rtt).expect("round trip time"),
        Command::CreateTopic(name, partitions, replication, done) => {
            // An existing topic is fine: creation is idempotent for the tests.
            let _ = cluster.create_topic(&name, partitions, replication);
            let _ = done.send(());
        }
        Command::Leader(topic, partition, id) => cluster.partition_leader(&topic, partition, id).expect("leader"),
        Command::GroupCoordinator(group, id) => {
            cluster.coordinator(rdkafka::mocking::MockCoordinator::Group(group), id).expect("coordinator");
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
        max_message_bytes: KafkaConfig::max_message_bytes_for(1_048_576),
        buffer_bytes: 64 << 20,
        properties: vec![("fetch.wait.max.ms".into(), "10".into())],
    }
}

/// A consumer of every partition of `topic` from the beginning, outside any group
/// (nothing is committed): how the tests read replies and dead letters.
pub fn reader(bootstrap: &str, topic: &str, partitions: i32) -> StreamConsumer {
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("reader");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("offset");
    }
    reader.assign(&assignment).expect("assign");
    reader
}

/// The contract-suite harness on a fresh mock cluster.
pub struct KafkaHarness {
    /// The mock cluster (dropped with the harness); `None` on an external broker (tansu).
    pub cluster: Option<MockKafka>,
    /// `host:port` of the broker.
    pub bootstrap: String,
    /// The transport under test.
    pub transport: KafkaTransport,
    /// One reader per topic, positioned after what was already received.
    readers: Mutex<HashMap<String, std::sync::Arc<StreamConsumer>>>,
}

impl std::fmt::Debug for KafkaHarness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaHarness").field("bootstrap", &self.bootstrap).finish_non_exhaustive()
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
        Self { bootstrap: cluster.bootstrap.clone(), cluster: Some(cluster), transport, readers: Mutex::default() }
    }

    /// The independent broker tansu at `COURIER_TEST_TANSU` (default 127.0.0.1:9092, started
    /// by `scripts/brokers/tansu-up`); topics are created through its CreateTopics API.
    pub async fn tansu() -> Self {
        let bootstrap = std::env::var("COURIER_TEST_TANSU").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
        let transport = KafkaTransport::connect(config(&bootstrap, Ordering::Partition))
            .await
            .expect("tansu answers (scripts/brokers/tansu-up starts it)");
        Self { cluster: None, bootstrap, transport, readers: Mutex::default() }
    }

    /// Create topics: through the mock cluster, or the broker's CreateTopics API.
    async fn create_topics(&self, names: &[&str]) {
        match &self.cluster {
            Some(cluster) => cluster.create_topics(names, self.transport.config().partitions),
            None => self.transport.create_topics(names).await.expect("create topics"),
        }
    }

    async fn reader(&self, topic: &str) -> std::sync::Arc<StreamConsumer> {
        if let Some(reader) = self.readers.lock().expect("readers").get(topic) {
            return std::sync::Arc::clone(reader);
        }
        self.create_topics(&[topic]).await;
        let counts = self.transport.partition_counts(&[topic]).await.expect("metadata");
        let partitions = counts.get(topic).copied().unwrap_or(1) as i32;
        let reader = reader(&self.bootstrap, topic, partitions);
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
        self.create_topics(&names).await;
        self.transport.declare(topology).await.expect("declare topology");
    }

    fn can_refuse(&self) -> bool {
        self.cluster.is_some()
    }

    /// The mock cluster fails every produce or none, and topics cannot be deleted.
    fn refuses_one_destination(&self) -> bool {
        false
    }

    async fn declare_refusing(&self, name: &str) {
        self.create_topics(&[name]).await;
        if let Some(cluster) = &self.cluster {
            cluster.command(Command::FailProduces(1_000));
        }
    }

    async fn accept_publishes(&self, _name: &str) {
        if let Some(cluster) = &self.cluster {
            cluster.command(Command::ClearProduceErrors);
        }
    }

    async fn receive(&self, queue: &str, timeout: Duration) -> Option<Message> {
        let reader = self.reader(queue).await;
        let record = tokio::time::timeout(timeout, reader.recv()).await.ok()?.expect("read");
        Some(to_message(&record))
    }

    async fn delete(&self, _queues: &[String]) {}
}

/// The mock cluster in a process of its own (`mock-kafka`), for tests with several
/// worker processes; stopped when dropped.
#[derive(Debug)]
pub struct MockKafkaProcess {
    /// `host:port` of the brokers.
    pub bootstrap: String,
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl MockKafkaProcess {
    /// Start `mock-kafka` (one broker) with these topics (`name`, partitions).
    pub fn start(topics: &[(&str, i32)]) -> Self {
        let topics: Vec<(&str, i32, i32)> = topics.iter().map(|(name, partitions)| (*name, *partitions, 1)).collect();
        Self::start_cluster(1, &topics)
    }

    /// Start `mock-kafka` with `brokers` brokers and these topics (`name`, partitions,
    /// replicas).
    pub fn start_cluster(brokers: i32, topics: &[(&str, i32, i32)]) -> Self {
        use std::io::BufRead;
        let mut command = std::process::Command::new(crate::process::binary("mock-kafka"));
        command.args(["--brokers", &brokers.to_string()]);
        for (name, partitions, replicas) in topics {
            command.args(["--topic", &format!("{name}:{partitions}:{replicas}")]);
        }
        let mut child = command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start mock-kafka");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("bootstrap line");
        let bootstrap = line.trim().strip_prefix("bootstrap=").expect("bootstrap=").to_owned();
        Self { bootstrap, child, stdin, stdout }
    }

    /// Send a command (see `tests/bin/mock_kafka.rs`) and wait for its `ok`.
    pub fn command(&mut self, command: &str) {
        use std::io::{BufRead, Write};
        writeln!(self.stdin, "{command}").expect("send command");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("command answer");
    }
}

impl Drop for MockKafkaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain rdkafka client, as a producer in another language would use Kafka.
pub struct KafkaClient {
    bootstrap: String,
    producer: rdkafka::producer::FutureProducer,
    /// One reader per topic, positioned after what it already read.
    readers: HashMap<String, StreamConsumer>,
}

impl std::fmt::Debug for KafkaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaClient").field("bootstrap", &self.bootstrap).finish_non_exhaustive()
    }
}

impl KafkaClient {
    /// A client of the cluster at `bootstrap`.
    pub fn new(bootstrap: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "200000")
            // A producer in another language may send records up to what the broker takes.
            .set("message.max.bytes", "10000000")
            .create()
            .expect("producer");
        Self { bootstrap: bootstrap.to_owned(), producer, readers: HashMap::new() }
    }

    /// Publish `n` greeter requests (ids `<prefix>-<i>`, keyed by id) asking for replies
    /// on `reply_to`; returns the ids once every one is acknowledged.
    pub async fn publish_greetings(&self, topic: &str, reply_to: &str, prefix: &str, n: usize) -> Vec<String> {
        self.publish_greetings_to(topic, reply_to, prefix, n, None).await
    }

    /// [`Self::publish_greetings`], the `i`-th to partition `i % partitions` when given
    /// (an even spread; the keys alone spread unevenly).
    pub async fn publish_greetings_to(
        &self,
        topic: &str,
        reply_to: &str,
        prefix: &str,
        n: usize,
        partitions: Option<i32>,
    ) -> Vec<String> {
        use rdkafka::producer::FutureRecord;
        let mut ids = Vec::with_capacity(n);
        let mut pending = futures::stream::FuturesUnordered::new();
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            let (body, headers) = greeting(&id, reply_to);
            let mut record = FutureRecord::to(topic).key(id.as_str()).payload(body.as_str()).headers(headers);
            if let Some(partitions) = partitions {
                record = record.partition(i32::try_from(i).unwrap_or_default() % partitions);
            }
            let delivery = self.producer.send_result(record).map_err(|(e, _)| e).expect("queue the request");
            pending.push(delivery);
            ids.push(id);
            if pending.len() >= 10_000 {
                drain(&mut pending).await;
            }
        }
        drain(&mut pending).await;
        ids
    }

    /// Publish requests given as (id, JSON body): the id is each one's key, message id and
    /// correlation id; the `i`-th goes to partition `i % partitions`. Returns once every
    /// one is acknowledged.
    pub async fn publish_requests(&self, topic: &str, reply_to: &str, requests: &[(String, String)], partitions: i32) {
        use rdkafka::{
            message::{Header, OwnedHeaders},
            producer::FutureRecord,
        };
        let mut pending = futures::stream::FuturesUnordered::new();
        for (i, (id, body)) in requests.iter().enumerate() {
            let headers = OwnedHeaders::new()
                .insert(Header { key: "courier-message-id", value: Some(id) })
                .insert(Header { key: "courier-correlation-id", value: Some(id) })
                .insert(Header { key: "courier-reply-to", value: Some(reply_to) });
            let partition = i32::try_from(i).unwrap_or_default() % partitions;
            let record = FutureRecord::to(topic).key(id.as_str()).payload(body.as_str()).headers(headers);
            pending.push(self.producer.send_result(record.partition(partition)).map_err(|(e, _)| e).expect("queue"));
            if pending.len() >= 10_000 {
                drain(&mut pending).await;
            }
        }
        drain(&mut pending).await;
    }

    /// Publish greeter requests with these ids (and correlation ids), all under `key`, in
    /// order; returns once every one is acknowledged.
    pub async fn publish_greetings_under(&self, topic: &str, reply_to: &str, key: &str, ids: &[String]) {
        use rdkafka::producer::FutureRecord;
        let mut pending = futures::stream::FuturesUnordered::new();
        for id in ids {
            let (body, headers) = greeting(id, reply_to);
            let record = FutureRecord::to(topic).key(key).payload(body.as_str()).headers(headers);
            pending.push(self.producer.send_result(record).map_err(|(e, _)| e).expect("queue the request"));
        }
        drain(&mut pending).await;
    }

    /// Queue one greeter request without waiting for its acknowledgement.
    pub fn publish_one(&self, topic: &str, reply_to: &str, id: &str) {
        use rdkafka::producer::FutureRecord;
        let (body, headers) = greeting(id, reply_to);
        let record = FutureRecord::to(topic).key(id).payload(body.as_str()).headers(headers);
        // The delivery report is not awaited: the reply is what the caller waits for.
        drop(self.producer.send_result(record).map_err(|(e, _)| e).expect("queue the request"));
    }

    /// Publish one record as any producer could: key, payload and headers as given; waits
    /// for the broker's acknowledgement.
    pub async fn publish_raw(&self, topic: &str, key: &[u8], payload: &[u8], headers: &[(&str, &[u8])]) {
        use rdkafka::{message::OwnedHeaders, producer::FutureRecord};
        let headers = headers.iter().fold(OwnedHeaders::new(), |all, (key, value)| {
            all.insert(rdkafka::message::Header { key, value: Some(*value) })
        });
        let record = FutureRecord::to(topic).key(key).payload(payload).headers(headers);
        let delivery = self.producer.send_result(record).map_err(|(e, _)| e).expect("queue the record");
        delivery.await.expect("delivery report").expect("record delivered");
    }

    /// The next record of `topic` (read from its beginning by this client), as the
    /// runtime sees it; `None` after `patience` without one, or while the broker is down
    /// (librdkafka reconnects by itself).
    pub async fn next_record(&mut self, topic: &str, partitions: i32, patience: Duration) -> Option<Message> {
        let bootstrap = self.bootstrap.clone();
        let reader = self.readers.entry(topic.to_owned()).or_insert_with(|| reader(&bootstrap, topic, partitions));
        match tokio::time::timeout(patience, reader.recv()).await.ok()? {
            Ok(record) => Some(to_message(&record)),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                None
            }
        }
    }

    /// Count replies on `topic` until `expected` distinct correlation ids arrived,
    /// `stop_early` says so, or `patience` passed without a reply.
    pub async fn collect_replies(
        &mut self,
        topic: &str,
        partitions: i32,
        expected: usize,
        replies: &mut crate::replies::Replies,
        patience: Duration,
        stop_early: impl Fn(&crate::replies::Replies) -> bool,
    ) {
        let bootstrap = self.bootstrap.clone();
        let reader = self.readers.entry(topic.to_owned()).or_insert_with(|| reader(&bootstrap, topic, partitions));
        while replies.by_id.len() < expected && !stop_early(replies) {
            match tokio::time::timeout(patience, reader.recv()).await {
                Ok(Ok(record)) => {
                    let (id, by, status) = reply_of(&record);
                    replies.add(id, by, status);
                }
                // The broker may be down on purpose; librdkafka reconnects by itself.
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => break,
            }
        }
    }
}

/// A greeter request `id` asking for its reply on `reply_to`: its payload and headers.
fn greeting(id: &str, reply_to: &str) -> (String, rdkafka::message::OwnedHeaders) {
    use rdkafka::message::{Header, OwnedHeaders};
    let headers = OwnedHeaders::new()
        .insert(Header { key: "courier-correlation-id", value: Some(id) })
        .insert(Header { key: "courier-reply-to", value: Some(reply_to) });
    (format!(r#"{{"message":"{id}"}}"#), headers)
}

/// A reply's correlation id, `courier-replied-by` and `courier-status` (empty when missing).
fn reply_of(record: &rdkafka::message::BorrowedMessage<'_>) -> (String, String, String) {
    use courier::contract::headers::{CORRELATION_ID, REPLIED_BY, STATUS};
    let (mut id, mut by, mut status) = (String::new(), String::new(), String::new());
    for header in record.headers().iter().flat_map(|headers| headers.iter()) {
        let value = String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned();
        match header.key {
            CORRELATION_ID => id = value,
            REPLIED_BY => by = value,
            STATUS => status = value,
            _ => {}
        }
    }
    (id, by, status)
}

async fn drain(pending: &mut futures::stream::FuturesUnordered<rdkafka::producer::DeliveryFuture>) {
    use futures::StreamExt;
    while let Some(result) = pending.next().await {
        result.expect("delivery report").expect("request delivered");
    }
}

/// The dead-letter drills on a mock cluster of their own (one partition per topic, so
/// record order is one order).
pub struct KafkaDrill {
    /// The mock cluster, when the drill runs on one (else tansu at `bootstrap`); kept for
    /// the drill's life, stopped when dropped.
    _cluster: Option<MockKafkaProcess>,
    bootstrap: String,
    producer: rdkafka::producer::FutureProducer,
    readers: HashMap<String, StreamConsumer>,
    queue: String,
    replies: String,
    group: String,
}

impl std::fmt::Debug for KafkaDrill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaDrill").field("queue", &self.queue).finish_non_exhaustive()
    }
}

impl KafkaDrill {
    /// A cluster with every topic a greeter on `<test>-<id>.requests` and its dead-letter
    /// tools use (the mock has no CreateTopics).
    pub fn new(test: &str) -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let queue = format!("{test}-{id}.requests");
        let replies = format!("{test}-{id}.replies");
        let topics = [
            queue.clone(),
            replies.clone(),
            format!("{queue}.dlq"),
            format!("{queue}.parking"),
            format!("{queue}.dlq.ledger"),
            format!("{queue}.parking.ledger"),
        ];
        let specs: Vec<(&str, i32)> = topics.iter().map(|t| (t.as_str(), 1)).collect();
        let cluster = MockKafkaProcess::start(&specs);
        let bootstrap = cluster.bootstrap.clone();
        Self::on(Some(cluster), bootstrap, test, id, queue, replies)
    }

    /// The drill on tansu (`COURIER_TEST_TANSU`, default 127.0.0.1:9092): the work, reply
    /// and dead-letter topics are created through its CreateTopics API, one partition each.
    pub async fn tansu(test: &str) -> Self {
        let bootstrap = std::env::var("COURIER_TEST_TANSU").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
        let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
        let queue = format!("{test}-{id}.requests");
        let replies = format!("{test}-{id}.replies");
        let transport =
            KafkaTransport::connect(KafkaConfig { partitions: 1, ..config(&bootstrap, Ordering::Partition) })
                .await
                .expect("tansu answers (scripts/brokers/tansu-up starts it)");
        let dlq = format!("{queue}.dlq");
        transport.create_topics(&[&queue, &replies, &dlq]).await.expect("create topics");
        Self::on(None, bootstrap, test, id, queue, replies)
    }

    fn on(
        cluster: Option<MockKafkaProcess>,
        bootstrap: String,
        test: &str,
        id: &str,
        queue: String,
        replies: String,
    ) -> Self {
        let producer =
            ClientConfig::new().set("bootstrap.servers", &bootstrap).set("linger.ms", "5").create().expect("producer");
        Self {
            _cluster: cluster,
            bootstrap,
            producer,
            readers: HashMap::new(),
            queue,
            replies,
            group: format!("{test}-{id}"),
        }
    }

    /// Which of `topics` exist.
    pub async fn existing(&self, topics: &[&str]) -> Vec<String> {
        let transport = KafkaTransport::connect(config(&self.bootstrap, Ordering::Partition)).await.expect("connect");
        transport.partition_counts(topics).await.expect("metadata").into_keys().collect()
    }
}

impl crate::dlq::Drill for KafkaDrill {
    fn flags(&self) -> Vec<String> {
        let broker = format!("kafka://{}", self.bootstrap);
        [
            "--broker",
            &broker,
            "--queue",
            &self.queue,
            "--replies",
            &self.replies,
            "--group",
            &self.group,
            "--partitions",
            "1",
            "--kafka-property",
            "fetch.wait.max.ms=10",
        ]
        .map(String::from)
        .to_vec()
    }

    fn queue(&self) -> &str {
        &self.queue
    }

    fn replies(&self) -> &str {
        &self.replies
    }

    async fn publish(&mut self, queue: &str, messages: Vec<Message>) {
        use rdkafka::producer::FutureRecord;
        let mut pending = futures::stream::FuturesUnordered::new();
        for message in &messages {
            let mut record =
                FutureRecord::to(queue).payload(&message.payload[..]).headers(record_headers(&message.headers));
            if let Some(key) = &message.key {
                record = record.key(&key[..]);
            }
            pending.push(self.producer.send_result(record).map_err(|(e, _)| e).expect("queue the message"));
        }
        drain(&mut pending).await;
    }

    async fn take(&mut self, queue: &str) -> Vec<Message> {
        let bootstrap = self.bootstrap.clone();
        let reader = self.readers.entry(queue.to_owned()).or_insert_with(|| reader(&bootstrap, queue, 1));
        let mut messages = Vec::new();
        // What arrives within a second, or until the topic is quiet for 300 ms.
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
        while let Ok(Ok(record)) = tokio::time::timeout(std::time::Duration::from_millis(300), reader.recv()).await {
            if tokio::time::Instant::now() > until {
                // Not lost: the next call starts after it, so keep it in this one.
                messages.push(to_message(&record));
                break;
            }
            messages.push(to_message(&record));
        }
        messages
    }
}

/// Two requests whose dead-letter copy the producer cannot write whole, then a good one
/// with the same key (so the same partition), on a worker already consuming `queue`: one of
/// 1,010,000 bytes of bad JSON (under `--max-payload-bytes`; its copy keeps its payload)
/// and one of `too_large` bytes (`too-large`; its copy goes without the payload). Each
/// reaches its outcome within 10 s and the partition moves on. `tail` shows the worker's
/// log on failure.
pub async fn oversized_requests(
    client: &mut KafkaClient,
    queue: &str,
    replies: &str,
    partitions: i32,
    too_large: usize,
    tail: impl Fn() -> String,
) {
    let patience = Duration::from_secs(10);
    let bad_json = vec![b'{'; 1_010_000];
    let too_large = format!(r#"{{"message":"{}"}}"#, "x".repeat(too_large));
    let reply_to = replies.as_bytes();
    for (id, payload) in [("big-bad-json", bad_json.as_slice()), ("big-too-large", too_large.as_bytes())] {
        let headers: [(&str, &[u8]); 2] = [("courier-correlation-id", id.as_bytes()), ("courier-reply-to", reply_to)];
        client.publish_raw(queue, b"same-key", payload, &headers).await;
    }
    let headers: [(&str, &[u8]); 2] = [("courier-correlation-id", b"after"), ("courier-reply-to", reply_to)];
    client.publish_raw(queue, b"same-key", br#"{"message":"after"}"#, &headers).await;

    let mut answers = HashMap::new();
    while answers.len() < 3 {
        let Some(reply) = client.next_record(replies, partitions, patience).await else {
            panic!("replies so far: {answers:?}\n{}", tail());
        };
        let header = |name: &str| reply.headers.get(name).cloned().unwrap_or_default();
        answers.insert(header("courier-correlation-id"), (header("courier-status"), header("courier-error-code")));
    }
    assert_eq!(answers["big-bad-json"], ("error".to_owned(), "invalid_json".to_owned()));
    assert_eq!(answers["big-too-large"], ("error".to_owned(), "payload_too_large".to_owned()));
    assert_eq!(answers["after"].0, "ok", "the partition moved on");

    let dlq = format!("{queue}.dlq");
    let mut records = HashMap::new();
    while records.len() < 2 {
        let record = client.next_record(&dlq, partitions, patience).await.expect("dead-letter records");
        let id = record.headers.get("courier-correlation-id").cloned().unwrap_or_default();
        records.insert(id, record);
    }
    let whole = &records["big-bad-json"];
    assert_eq!(whole.payload.len(), 1_010_000, "a copy that fits keeps its payload");
    assert_eq!(whole.key.as_deref(), Some(&b"same-key"[..]));
    let omitted = &records["big-too-large"];
    assert_eq!(omitted.headers.get("courier-failure-kind").map(String::as_str), Some("too-large"));
    assert!(omitted.payload.is_empty(), "a copy too large for the producer goes without its payload");
    assert_eq!(
        omitted.headers.get("courier-failure-payload-bytes").map(String::as_str),
        Some(too_large.len().to_string().as_str())
    );
    assert!(omitted.headers.contains_key("courier-failure-offset"), "where the original still is");
}

/// A steady flow of greeter requests, one to each partition of a work topic every
/// `every`, and the replies to them as they arrive: when each request was sent and when,
/// and by which instance, it was first answered. What the rebalance tests measure a
/// hand-over with (`kafka_mock/kafka_rebalance.rs`).
#[derive(Debug)]
pub struct RequestFlow {
    /// What was sent and answered so far.
    state: std::sync::Arc<Mutex<FlowState>>,
    /// Stops the producing task (the reader goes on until [`RequestFlow::finish`]).
    stop_producing: tokio_util::sync::CancellationToken,
    /// Stops the reading task.
    stop_reading: tokio_util::sync::CancellationToken,
    producing: tokio::task::JoinHandle<()>,
    reading: tokio::task::JoinHandle<()>,
}

/// Requests of a [`RequestFlow`] and their replies.
#[derive(Debug, Default)]
pub struct FlowState {
    /// Request id → (partition, when it was sent), for every request the broker
    /// acknowledged.
    pub sent: HashMap<String, (i32, std::time::Instant)>,
    /// Request id → (when its first reply arrived, the instance that sent it).
    pub answered: HashMap<String, (std::time::Instant, String)>,
    /// Replies beyond the first per request.
    pub duplicates: usize,
}

impl FlowState {
    /// How long after `since` every partition had a reply to a request sent after
    /// `since` (replies flowing on every partition again); `None` while one has none.
    pub fn flowing_again_after(&self, since: std::time::Instant, partitions: i32) -> Option<Duration> {
        let mut first: HashMap<i32, std::time::Instant> = HashMap::new();
        for (id, (partition, sent)) in &self.sent {
            if *sent < since {
                continue;
            }
            if let Some((at, _)) = self.answered.get(id) {
                let earliest = first.entry(*partition).or_insert(*at);
                *earliest = (*earliest).min(*at);
            }
        }
        if first.len() < usize::try_from(partitions).unwrap_or_default() {
            return None;
        }
        first.values().max().map(|last| last.saturating_duration_since(since))
    }

    /// The longest time a partition went without a reply between `from` and `to` while
    /// requests were sent to it (the edges of the window count as replies).
    pub fn longest_gap(&self, from: std::time::Instant, to: std::time::Instant) -> Duration {
        let mut arrivals: HashMap<i32, Vec<std::time::Instant>> = HashMap::new();
        for (id, (at, _)) in &self.answered {
            if let Some((partition, _)) = self.sent.get(id)
                && *at >= from
                && *at <= to
            {
                arrivals.entry(*partition).or_default().push(*at);
            }
        }
        let mut longest = Duration::ZERO;
        for (_, mut times) in arrivals {
            times.push(from);
            times.push(to);
            times.sort_unstable();
            for pair in times.windows(2) {
                longest = longest.max(pair[1].saturating_duration_since(pair[0]));
            }
        }
        longest
    }

    /// Requests sent and never answered.
    pub fn unanswered(&self) -> Vec<&String> {
        self.sent.keys().filter(|id| !self.answered.contains_key(*id)).collect()
    }

    /// Replies per instance.
    pub fn by_instance(&self) -> std::collections::BTreeMap<&str, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for (_, by) in self.answered.values() {
            *counts.entry(by.as_str()).or_default() += 1;
        }
        counts
    }
}

impl RequestFlow {
    /// Start sending a request to each of the `partitions` partitions of `queue` every
    /// `every` (ids `<partition>-<n>`, replies asked on `replies`) and reading the replies.
    pub fn start(bootstrap: &str, queue: &str, replies: &str, partitions: i32, every: Duration) -> Self {
        let state = std::sync::Arc::new(Mutex::new(FlowState::default()));
        let stop_producing = tokio_util::sync::CancellationToken::new();
        let stop_reading = tokio_util::sync::CancellationToken::new();
        let client = KafkaClient::new(bootstrap);
        let producing = tokio::spawn({
            let (state, stop, queue, replies) =
                (std::sync::Arc::clone(&state), stop_producing.clone(), queue.to_owned(), replies.to_owned());
            async move {
                let mut tick = tokio::time::interval(every);
                for n in 0u64.. {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let sends = (0..partitions).map(|partition| {
                        let id = format!("{partition}-{n}");
                        let at = std::time::Instant::now();
                        let sent = client.send_to_partition(&queue, &replies, &id, partition);
                        async move { sent.await.then_some((id, partition, at)) }
                    });
                    let sent = futures::future::join_all(sends).await;
                    let mut state = state.lock().expect("flow state");
                    for (id, partition, at) in sent.into_iter().flatten() {
                        state.sent.insert(id, (partition, at));
                    }
                }
            }
        });
        let reading = tokio::spawn({
            let (state, stop) = (std::sync::Arc::clone(&state), stop_reading.clone());
            let reader = reader(bootstrap, replies, partitions);
            async move {
                loop {
                    let record = tokio::select! {
                        () = stop.cancelled() => return,
                        record = reader.recv() => record,
                    };
                    let Ok(record) = record else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let at = std::time::Instant::now();
                    let (id, by, _) = reply_of(&record);
                    let mut state = state.lock().expect("flow state");
                    match state.answered.entry(id) {
                        std::collections::hash_map::Entry::Occupied(_) => state.duplicates += 1,
                        std::collections::hash_map::Entry::Vacant(first) => {
                            first.insert((at, by));
                        }
                    }
                }
            }
        });
        Self { state, stop_producing, stop_reading, producing, reading }
    }

    /// Look at what was sent and answered so far.
    pub fn with<R>(&self, look: impl FnOnce(&FlowState) -> R) -> R {
        look(&self.state.lock().expect("flow state"))
    }

    /// Wait until replies flow on every partition again after `since` (see
    /// [`FlowState::flowing_again_after`]), up to `patience`; `None` if they do not.
    pub async fn wait_flowing_again(
        &self,
        since: std::time::Instant,
        partitions: i32,
        patience: Duration,
    ) -> Option<Duration> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(took) = self.with(|state| state.flowing_again_after(since, partitions)) {
                return Some(took);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop sending, wait until every request sent has its reply (or `patience` passes
    /// without a new one), and return what was seen.
    pub async fn finish(self, patience: Duration) -> FlowState {
        let Self { state, stop_producing, stop_reading, producing, reading } = self;
        stop_producing.cancel();
        let _ = producing.await;
        let with = |look: &dyn Fn(&FlowState) -> (usize, usize)| look(&state.lock().expect("flow state"));
        let mut last = (0, std::time::Instant::now());
        loop {
            let (answered, unanswered) = with(&|s| (s.answered.len(), s.unanswered().len()));
            if unanswered == 0 {
                break;
            }
            if answered != last.0 {
                last = (answered, std::time::Instant::now());
            } else if last.1.elapsed() > patience {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Duplicates arriving late are counted too.
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop_reading.cancel();
        let _ = reading.await;
        std::mem::take(&mut *state.lock().expect("flow state"))
    }
}

impl KafkaClient {
    /// Send one greeter request `id` (the key too) to `partition` of `topic`, replies asked
    /// on `reply_to`; resolves to whether the broker acknowledged it.
    pub fn send_to_partition(
        &self,
        topic: &str,
        reply_to: &str,
        id: &str,
        partition: i32,
    ) -> impl std::future::Future<Output = bool> + use<> {
        use rdkafka::producer::FutureRecord;
        let (body, headers) = greeting(id, reply_to);
        let record = FutureRecord::to(topic).key(id).payload(body.as_str()).headers(headers).partition(partition);
        let delivery = self.producer.send_result(record).map_err(|(e, _)| e);
        async move {
            match delivery {
                Ok(delivery) => matches!(delivery.await, Ok(Ok(_))),
                Err(_) => false,
            }
        }
    }
}
