//! Publishing: enqueue in the idempotent producer (waiting while its queue is full), and
//! map the delivery report to the message's fate.

use std::time::Duration;

use rdkafka::{
    Message as _,
    error::{KafkaError, RDKafkaErrorCode},
    producer::{FutureRecord, Producer},
};

use super::{KafkaTransport, convert, failed};
use crate::transport::{BrokerError, Confirm, Message, PublishError, TransportError};

/// How long [`KafkaTransport::send`] waits while the producer's queue is full.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

impl KafkaTransport {
    /// [`Transport::send`](crate::transport::Transport::send): enqueues in the producer
    /// (idempotent: it keeps the order per partition, retries included); waits while its
    /// queue is full, up to [`ENQUEUE_TIMEOUT`].
    pub(super) async fn produce(&self, destination: &str, message: &Message) -> Result<Confirm, PublishError> {
        if !self.topic_exists(destination).await? {
            return Err(PublishError::Unroutable(destination.to_owned()));
        }
        let size = message.byte_len();
        let mut record = FutureRecord::to(destination)
            .payload(&message.payload[..])
            .headers(convert::record_headers(&message.headers));
        if let Some(key) = &message.key {
            record = record.key(&key[..]);
        }
        // The clock is read only once the queue is full.
        let mut full_since = None;
        let delivery = loop {
            match self.shared.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned))
                    if full_since.get_or_insert_with(std::time::Instant::now).elapsed() < ENQUEUE_TIMEOUT =>
                {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err((error, _)) => return Err(self.publish_error(destination, size, error)),
            }
        };
        let transport = self.clone();
        Ok(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) => Ok(()),
                // The record given back names its topic: no copy of it per send.
                Ok(Err((error, record))) => Err(transport.publish_error(record.topic(), size, error)),
                Err(_) => Err(PublishError::Unavailable("the producer dropped the message".into())),
            }
        }))
    }

    /// Our error for a failed produce, classified by what a retry can do about it.
    fn publish_error(&self, destination: &str, size: usize, error: KafkaError) -> PublishError {
        use RDKafkaErrorCode as Code;
        if self.shared.producer.client().fatal_error().is_some() {
            self.shared.fatal.store(true, std::sync::atomic::Ordering::Relaxed);
            return PublishError::Transport(TransportError::broker(error).context("the producer hit a fatal error"));
        }
        let KafkaError::MessageProduction(code) = error else {
            return PublishError::Transport(failed(error));
        };
        match code {
            Code::UnknownTopicOrPartition | Code::UnknownTopic => {
                self.shared.known_topics.write().unwrap_or_else(|p| p.into_inner()).set(destination, false);
                PublishError::Unroutable(destination.to_owned())
            }
            Code::MessageSizeTooLarge | Code::InvalidMessageSize => {
                PublishError::TooLarge { destination: destination.to_owned(), size, reason: BrokerError::client(code) }
            }
            Code::InvalidTopic => PublishError::invalid_name(destination, "the broker says the topic name is invalid"),
            // librdkafka already retried these for `message.timeout.ms`: the cluster is unwell.
            Code::MessageTimedOut
            | Code::QueueFull
            | Code::RequestTimedOut
            | Code::AllBrokersDown
            | Code::BrokerTransportFailure
            | Code::LeaderNotAvailable
            | Code::NotLeaderForPartition
            | Code::NotEnoughReplicas
            | Code::NotEnoughReplicasAfterAppend
            | Code::NetworkException => PublishError::Transport(TransportError::unavailable(code)),
            code => PublishError::Rejected { destination: destination.to_owned(), reason: BrokerError::client(code) },
        }
    }
}
