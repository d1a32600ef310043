//! The local RabbitMQ as a contract-suite harness, plus raw-client helpers.

use std::time::Duration;

use courier::{
    Message,
    testing::Harness,
    transport::{
        Transport,
        amqp::{AmqpTransport, topology},
    },
};
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicGetOptions, QueueDeleteOptions, QueuePurgeOptions},
    types::{AMQPValue, FieldTable, LongString},
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
}

impl RabbitHarness {
    /// Connect to the test broker.
    pub async fn new() -> Self {
        let transport = AmqpTransport::connect(&url(), "courier contract suite").await.expect("RabbitMQ is running");
        Self { transport }
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

    async fn declare_queue(&self, name: &str, max_length: Option<usize>) {
        let mut args = FieldTable::default();
        if let Some(max) = max_length {
            args.insert("x-max-length".into(), AMQPValue::LongLongInt(max as i64));
            args.insert("x-overflow".into(), AMQPValue::LongString(LongString::from(&b"reject-publish"[..])));
        }
        topology::declare_queue(&self.channel().await, name, args).await.expect("declare queue");
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

    async fn purge(&self, queue: &str) {
        self.channel().await.queue_purge(queue.into(), QueuePurgeOptions::default()).await.expect("purge");
    }

    async fn delete(&self, queues: &[String]) {
        let channel = self.channel().await;
        for queue in queues {
            let _ = channel.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
        }
    }
}

/// Publish `message` to `queue` with the transport (confirmed).
pub async fn publish(transport: &AmqpTransport, queue: &str, message: Message) {
    transport.publish(queue, message).await.expect("publish");
}
