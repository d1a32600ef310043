//! The local RabbitMQ as a contract-suite harness, plus raw-client helpers.

use std::time::Duration;

use crate::replies::Replies;
use courier::{
    Message,
    contract::codec::Codec,
    testing::Harness,
    transport::{
        Transport,
        amqp::{AmqpTransport, topology},
    },
};
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions, QueuePurgeOptions},
    types::FieldTable,
};

/// The broker the tests use: `COURIER_TEST_AMQP_URL`, else the local RabbitMQ.
pub fn url() -> String {
    std::env::var("COURIER_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A harness on the local RabbitMQ; one connection per test.
#[derive(Clone, Debug)]
pub struct RabbitHarness {
    /// The transport under test (and the raw channel source for the harness's own work).
    pub transport: AmqpTransport,
    /// Queues this harness made refuse publishes (by a policy, cleared on delete).
    refusing: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl RabbitHarness {
    /// Connect to the test broker.
    pub async fn new() -> Self {
        let transport = AmqpTransport::connect(&url(), "courier contract suite").await.expect("RabbitMQ is running");
        Self { transport, refusing: Default::default() }
    }

    async fn channel(&self) -> Channel {
        self.transport.channel().await.expect("channel")
    }
}

impl Harness for RabbitHarness {
    type Transport = AmqpTransport;
    const PAUSED_TIME: bool = false;

    async fn transport(&self) -> AmqpTransport {
        self.transport.clone()
    }

    async fn declare(&self, topology: &courier::transport::Topology) {
        self.transport.declare(topology).await.expect("declare topology");
    }

    /// A policy caps the queue at one message with `reject-publish` (a policy, not queue
    /// arguments, so a queue the worker declares itself, its dead-letter queue say, can
    /// refuse too), and a filler takes that one place: the broker nacks every publish.
    async fn declare_refusing(&self, name: &str) {
        if !self.transport.queue_exists(name).await.expect("passive declare") {
            topology::declare_queue(&self.channel().await, name, FieldTable::default()).await.expect("declare queue");
        }
        let pattern = format!("^{}$", name.replace('.', "\\."));
        rabbitmqctl(&["set_policy", "--apply-to", "queues", &policy(name), &pattern, REFUSING]);
        self.refusing.lock().expect("refusing").push(name.to_owned());
        let filler = Message { payload: "filler".into(), ..Message::default() };
        for _ in 0..100 {
            if let Err(courier::transport::PublishError::Rejected { .. }) = self.transport.publish(name, &filler).await
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("RabbitMQ did not apply the refusing policy to {name}");
    }

    /// Purge first (the queue's one place is then free for the next publish), then lift
    /// the cap.
    async fn accept_publishes(&self, name: &str) {
        self.channel().await.queue_purge(name.into(), QueuePurgeOptions::default()).await.expect("purge");
        rabbitmqctl(&["clear_policy", &policy(name)]);
        self.refusing.lock().expect("refusing").retain(|q| q != name);
    }

    async fn receive(&self, queue: &str, timeout: Duration) -> Option<Message> {
        let channel = self.channel().await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = channel.basic_get(queue.into(), BasicGetOptions::default()).await.expect("basic.get");
            if let Some(got) = got {
                got.delivery.ack(BasicAckOptions::default()).await.expect("ack");
                let delivery = got.delivery;
                let headers = courier::transport::amqp::headers(&delivery.properties);
                return Some(Message { payload: delivery.data.into(), headers, key: None });
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn delete(&self, queues: &[String]) {
        let channel = self.channel().await;
        for queue in queues {
            let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
        let lifted: Vec<String> = {
            let mut refusing = self.refusing.lock().expect("refusing");
            let (lifted, kept) = refusing.drain(..).partition(|q| queues.contains(q));
            *refusing = kept;
            lifted
        };
        for queue in lifted {
            rabbitmqctl(&["clear_policy", &policy(&queue)]);
        }
    }
}

/// The policy definition that makes a queue refuse publishes once it holds one message.
const REFUSING: &str = r#"{"max-length":1,"overflow":"reject-publish"}"#;

/// The name of the refusing policy of `queue`.
fn policy(queue: &str) -> String {
    format!("courier-test-refuse-{queue}")
}

/// Run `rabbitmqctl` (policies have no AMQP method); panics when it fails.
fn rabbitmqctl(args: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A plain lapin client, as a producer in another language would use the broker.
#[derive(Debug)]
pub struct RawClient {
    /// Kept open for the client's lifetime.
    _connection: lapin::Connection,
    /// Confirm-mode channel for publishing and reading.
    pub channel: Channel,
}

impl RawClient {
    /// Connect to the test broker.
    pub async fn connect() -> Self {
        Self::connect_to(&url()).await
    }

    /// Connect to the broker at `url`.
    pub async fn connect_to(url: &str) -> Self {
        let connection =
            lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await.expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        channel.confirm_select(Default::default()).await.expect("confirms");
        Self { _connection: connection, channel }
    }

    /// Declare a plain durable queue (for replies).
    pub async fn declare(&self, queue: &str) {
        topology::declare_queue(&self.channel, queue, FieldTable::default()).await.expect("declare");
    }

    /// Publish raw bytes with raw properties and wait for the confirm.
    pub async fn publish(&self, queue: &str, payload: &[u8], properties: lapin::BasicProperties) {
        let confirm = self
            .channel
            .basic_publish("".into(), queue.into(), Default::default(), payload, properties)
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "broker refused the publish");
    }

    /// Publish `n` greeter requests (ids `<prefix>-<i>`) with replies to `reply_to`,
    /// pipelining confirms in batches.
    pub async fn publish_greetings(&self, queue: &str, reply_to: &str, prefix: &str, n: usize) -> Vec<String> {
        self.publish_greetings_in(Codec::Json, queue, reply_to, prefix, n).await
    }

    /// [`Self::publish_greetings`] in `codec`.
    pub async fn publish_greetings_in(
        &self,
        codec: Codec,
        queue: &str,
        reply_to: &str,
        prefix: &str,
        n: usize,
    ) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for batch in (0..n).collect::<Vec<_>>().chunks(500) {
            let mut confirms = Vec::with_capacity(batch.len());
            for i in batch {
                let id = format!("{prefix}-{i}");
                let body = greeting(codec, &id);
                let props = lapin::BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_correlation_id(id.as_str().into())
                    .with_reply_to(reply_to.into())
                    .with_content_type(codec.content_type().into())
                    .with_delivery_mode(2);
                confirms.push(
                    self.channel
                        .basic_publish("".into(), queue.into(), Default::default(), &body, props)
                        .await
                        .expect("publish"),
                );
                ids.push(id);
            }
            for confirm in confirms {
                assert!(confirm.await.expect("confirm").is_ack());
            }
        }
        ids
    }

    /// Publish requests given as (id, JSON body), persistent, the id as message id and
    /// correlation id, pipelining confirms in batches of 500.
    pub async fn publish_requests(&self, queue: &str, reply_to: &str, requests: &[(String, String)]) {
        for batch in requests.chunks(500) {
            let mut confirms = Vec::with_capacity(batch.len());
            for (id, body) in batch {
                let props = lapin::BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_correlation_id(id.as_str().into())
                    .with_reply_to(reply_to.into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2);
                let publish =
                    self.channel.basic_publish("".into(), queue.into(), Default::default(), body.as_bytes(), props);
                confirms.push(publish.await.expect("publish"));
            }
            for confirm in confirms {
                assert!(confirm.await.expect("confirm").is_ack());
            }
        }
    }

    /// Every message waiting in `queue` now (acked as taken).
    pub async fn take(&self, queue: &str) -> Vec<Message> {
        let mut messages = Vec::new();
        self.take_into(queue, &mut messages).await.expect("basic.get");
        messages
    }

    /// [`Self::take`] into `messages`, which keeps what was taken before an error.
    pub async fn take_into(&self, queue: &str, messages: &mut Vec<Message>) -> Result<(), lapin::Error> {
        while let Some(got) = self.channel.basic_get(queue.into(), BasicGetOptions::default()).await? {
            got.delivery.ack(BasicAckOptions::default()).await?;
            let headers = courier::transport::amqp::headers(&got.delivery.properties);
            messages.push(Message { payload: got.delivery.data.into(), headers, key: None });
        }
        Ok(())
    }

    /// Count replies on `queue` until `expected` distinct correlation ids arrived,
    /// `stop_early` says so, or `patience` passed without a reply.
    pub async fn collect_replies(
        &self,
        queue: &str,
        expected: usize,
        replies: &mut Replies,
        patience: Duration,
        stop_early: impl Fn(&Replies) -> bool,
    ) {
        use futures::StreamExt;
        // Manual acks: a reply is removed only once counted, so stopping early loses none.
        self.channel.basic_qos(500, Default::default()).await.expect("qos");
        let mut consumer = self
            .channel
            .basic_consume(queue.into(), "".into(), Default::default(), FieldTable::default())
            .await
            .expect("consume");
        while replies.by_id.len() < expected && !stop_early(replies) {
            match tokio::time::timeout(patience, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    delivery.ack(BasicAckOptions::default()).await.expect("ack reply");
                    let headers = courier::transport::amqp::headers(&delivery.properties);
                    let get = |name: &str| headers.get(name).cloned().unwrap_or_default();
                    use courier::contract::headers::{CORRELATION_ID, REPLIED_BY, STATUS};
                    replies.add(get(CORRELATION_ID), get(REPLIED_BY), get(STATUS));
                }
                Ok(other) => panic!("reply consumer ended: {other:?}"),
                Err(_) => break,
            }
        }
        let _ = self.channel.basic_cancel(consumer.tag(), Default::default()).await;
        // Deliveries already buffered after the cancel go back to the queue.
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(Duration::from_millis(50), consumer.next()).await {
            let _ = delivery.nack(lapin::options::BasicNackOptions { requeue: true, ..Default::default() }).await;
        }
    }
}

/// How long the black-box tests wait for progress.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// The greeter's concurrency (and prefetch) in the black-box tests.
pub const CONCURRENCY: usize = 64;

/// Unique work and reply queue names for one test.
pub fn names(test: &str) -> (String, String) {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    (format!("{test}-{id}.requests"), format!("{test}-{id}.replies"))
}

/// Start the greeter binary on the test broker (`label` names its instance and log).
pub fn greeter(label: &str, queue: &str, replies: &str, extra: &[&str]) -> crate::process::Process {
    greeter_env(label, queue, replies, extra, &[])
}

/// [`greeter`] with environment variables.
pub fn greeter_env(
    label: &str,
    queue: &str,
    replies: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> crate::process::Process {
    greeter_at(&url(), label, queue, replies, extra, env)
}

/// [`greeter_env`] on the broker (or comma-separated list of cluster nodes) at `url`.
pub fn greeter_at(
    url: &str,
    label: &str,
    queue: &str,
    replies: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> crate::process::Process {
    let concurrency = CONCURRENCY.to_string();
    let mut args = vec!["--broker", url, "--queue", queue, "--replies", replies, "--instance", label];
    args.extend(["--shutdown-grace", "5s"]);
    if !extra.contains(&"--retry-delays") {
        args.extend(["--retry-delays", "1s"]);
    }
    if !extra.contains(&"--concurrency") {
        args.extend(["--concurrency", &concurrency]);
    }
    args.extend_from_slice(extra);
    let mut process = crate::process::Process::start("greeter", label, &args, env);
    process.wait_for_log("Consuming.", PATIENCE);
    process
}

/// Delete the queues a greeter test used.
pub async fn cleanup(queue: &str, replies: &str) {
    let harness = RabbitHarness::new().await;
    let names = [
        queue.to_owned(),
        replies.to_owned(),
        format!("{queue}.dlq"),
        format!("{queue}.parking"),
        format!("{queue}.retry.1s"),
    ];
    harness.delete(&names).await;
}

/// The dead-letter drills on the local RabbitMQ; the queues are deleted when dropped.
#[derive(Debug)]
pub struct RabbitDrill {
    client: RawClient,
    queue: String,
    replies: String,
}

impl RabbitDrill {
    /// Fresh queue names for `test`.
    pub async fn new(test: &str) -> Self {
        let (queue, replies) = names(test);
        Self { client: RawClient::connect().await, queue, replies }
    }
}

impl crate::dlq::Drill for RabbitDrill {
    fn flags(&self) -> Vec<String> {
        ["--broker", &url(), "--queue", &self.queue, "--replies", &self.replies].map(String::from).to_vec()
    }

    fn queue(&self) -> &str {
        &self.queue
    }

    fn replies(&self) -> &str {
        &self.replies
    }

    async fn publish(&mut self, queue: &str, messages: Vec<Message>) {
        for chunk in messages.chunks(500) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for message in chunk {
                let props = courier::transport::amqp::properties(message);
                let publish = self.client.channel.basic_publish(
                    "".into(),
                    queue.into(),
                    Default::default(),
                    &message.payload,
                    props,
                );
                confirms.push(publish.await.expect("publish"));
            }
            for confirm in confirms {
                assert!(confirm.await.expect("confirm").is_ack(), "broker refused the publish");
            }
        }
    }

    async fn take(&mut self, queue: &str) -> Vec<Message> {
        let mut messages = Vec::new();
        while let Some(got) =
            self.client.channel.basic_get(queue.into(), BasicGetOptions::default()).await.expect("basic.get")
        {
            got.delivery.acker.ack(BasicAckOptions::default()).await.expect("ack");
            let headers = courier::transport::amqp::headers(&got.delivery.properties);
            messages.push(Message { payload: got.delivery.data.into(), headers, key: None });
        }
        messages
    }
}

impl Drop for RabbitDrill {
    fn drop(&mut self) {
        let (queue, replies) = (self.queue.clone(), self.replies.clone());
        // A runtime of its own: the test's runtime may be shutting down.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(cleanup(&queue, &replies));
        })
        .join();
    }
}

/// A greeter request for `message`, in `codec`.
pub fn greeting(codec: Codec, message: &str) -> Vec<u8> {
    match codec {
        Codec::Json => format!(r#"{{"message":"{message}"}}"#).into_bytes(),
        Codec::Protobuf => prost::Message::encode_to_vec(&greeter::Request { message: message.to_owned() }),
    }
}
