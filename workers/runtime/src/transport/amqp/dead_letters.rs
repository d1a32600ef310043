//! A RabbitMQ dead-letter queue as a [`DeadLetterStore`]: records are fetched with
//! `basic.get` (unacked) on a transactional channel; a batch is published and acked in one
//! `tx.commit`. Closing the channel returns the records read but not settled to their
//! original positions, so inspecting a queue removes and reorders nothing.

use std::collections::HashMap;

use lapin::{
    Channel,
    options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions},
    types::ShortString,
};

use super::{AmqpTransport, convert, failed};
use crate::transport::{
    BrokerError, Message, TransportError,
    dead_letters::{DeadLetterError, DeadLetterStore, Record, RecordId, Settlement},
};

/// One dead-letter (or parking) queue, opened for reading and settling.
#[derive(Debug)]
pub struct AmqpDeadLetterStore {
    /// Asks whether a destination exists.
    transport: AmqpTransport,
    /// The queue read.
    queue: String,
    /// Transactional channel holding the unacked records read so far.
    channel: Channel,
    /// Records in the queue when it was opened: reading stops there, so records that
    /// arrive meanwhile (or come back) are not read twice.
    snapshot: u64,
    /// Records read so far.
    read: u64,
    /// Position → delivery tag of the records read and not settled.
    tags: HashMap<u64, u64>,
}

impl AmqpDeadLetterStore {
    /// Open `queue`; fails with [`DeadLetterError::NotFound`] when it does not exist.
    pub async fn open(transport: &AmqpTransport, queue: &str) -> Result<Self, DeadLetterError> {
        let snapshot = checked_count(transport, queue).await?;
        let channel = transport.channel().await?;
        channel.tx_select().await.map_err(failed)?;
        Ok(Self {
            transport: transport.clone(),
            queue: queue.to_owned(),
            channel,
            snapshot,
            read: 0,
            tags: HashMap::new(),
        })
    }
}

/// The records in `queue` now. A quorum queue whose leader is moving can answer 0 while it
/// holds records (seen on RabbitMQ 3.10 right after a node died): a 0 is checked with a
/// `basic.get` on a channel of its own, whose record goes back when the channel closes, and
/// a queue that holds records after all is an error to retry, never an empty run.
async fn checked_count(transport: &AmqpTransport, queue: &str) -> Result<u64, DeadLetterError> {
    let count = transport.message_count(queue).await?.ok_or_else(|| DeadLetterError::NotFound(queue.to_owned()))?;
    if count > 0 {
        return Ok(count);
    }
    let channel = transport.channel().await?;
    let got = channel.basic_get(queue.into(), BasicGetOptions::default()).await;
    let _ = channel.close(200, "checked".into()).await;
    match got {
        Ok(None) => Ok(0),
        Ok(Some(_)) => Err(TransportError::Unavailable(BrokerError::said(format!(
            "{queue} reports no records but holds some (a quorum queue electing a new leader?): try again in a few \
             seconds"
        )))
        .into()),
        Err(error) => Err(failed(error).into()),
    }
}

impl DeadLetterStore for AmqpDeadLetterStore {
    fn pending(&self) -> Option<u64> {
        Some(self.snapshot)
    }

    async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, DeadLetterError> {
        let mut records = Vec::new();
        while records.len() < max && self.read < self.snapshot {
            let got =
                self.channel.basic_get(short(&self.queue)?, BasicGetOptions { no_ack: false }).await.map_err(failed)?;
            let Some(got) = got else {
                // Someone else consumed the rest.
                self.snapshot = self.read;
                break;
            };
            self.read += 1;
            let delivery = got.delivery;
            self.tags.insert(self.read, delivery.delivery_tag);
            let message =
                Message { payload: delivery.data.into(), headers: convert::headers(&delivery.properties), key: None };
            records.push(Record { id: RecordId::Position(self.read), message });
        }
        Ok(records)
    }

    async fn exists(&mut self, destination: &str) -> Result<bool, DeadLetterError> {
        Ok(self.transport.queue_exists(destination).await?)
    }

    async fn settle(&mut self, batch: Vec<Settlement>) -> Result<(), DeadLetterError> {
        for settlement in batch {
            let RecordId::Position(position) = settlement.id else {
                return Err(DeadLetterError::Misuse(format!("record {} is not from this queue", settlement.id)));
            };
            let Some(tag) = self.tags.remove(&position) else {
                return Err(DeadLetterError::Misuse(format!("record {position} was not read or is already settled")));
            };
            if let Some((destination, message)) = settlement.output {
                // In a transaction there are no confirms: the commit below is the confirmation.
                self.channel
                    .basic_publish(
                        "".into(),
                        short(&destination)?,
                        BasicPublishOptions::default(),
                        &message.payload,
                        convert::properties(&message),
                    )
                    .await
                    .map_err(failed)?;
            }
            self.channel.basic_ack(tag, BasicAckOptions::default()).await.map_err(failed)?;
        }
        Ok(self.channel.tx_commit().await.map_err(failed)?)
    }

    async fn close(self) -> Result<(), DeadLetterError> {
        Ok(self.channel.close(200, "done".into()).await.map_err(failed)?)
    }
}

/// `name` as an AMQP short string, or the broker's refusal of a longer one.
fn short(name: &str) -> Result<ShortString, TransportError> {
    ShortString::try_new(name.to_owned()).map_err(|error| {
        TransportError::Broker(BrokerError::said(format!("{name:?} is longer than 255 bytes")).with_source(error))
    })
}
