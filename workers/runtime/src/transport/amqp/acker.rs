//! Settling a RabbitMQ delivery: ack or nack (requeue) on the channel it came from, and a
//! nack when it is dropped unsettled.

use lapin::{
    Acker as LapinAcker, Channel,
    options::{BasicAckOptions, BasicNackOptions},
};

use super::failed;
use crate::transport::{Acker, TransportError};

/// Settles one RabbitMQ delivery on the channel it came from.
#[derive(Debug)]
pub struct AmqpAcker {
    /// lapin's acker, until used.
    pub(super) acker: Option<LapinAcker>,
    /// Keeps the consumer's channel open until this delivery is settled, even after the
    /// subscription stopped (graceful shutdown acks in-flight work on it).
    pub(super) _channel: Channel,
}

impl AmqpAcker {
    /// Ack or nack (requeue), once: a second call does nothing.
    async fn settle(&mut self, ack: bool) -> Result<(), TransportError> {
        let Some(acker) = self.acker.take() else { return Ok(()) };
        let sent = if ack {
            acker.ack(BasicAckOptions::default()).await
        } else {
            acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await
        };
        match sent {
            Ok(true) => Ok(()),
            Ok(false) => {
                Err(TransportError::Unavailable("the channel closed; the broker will deliver the message again".into()))
            }
            Err(error) => Err(failed(error)),
        }
    }
}

impl Acker for AmqpAcker {
    async fn ack(mut self) -> Result<(), TransportError> {
        self.settle(true).await
    }

    async fn nack(mut self) -> Result<(), TransportError> {
        self.settle(false).await
    }
}

impl Drop for AmqpAcker {
    /// Unsettled on drop: requeue now rather than when the channel closes.
    fn drop(&mut self) {
        if let (Some(acker), Ok(runtime)) = (self.acker.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                let _ = acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
            });
        }
    }
}
