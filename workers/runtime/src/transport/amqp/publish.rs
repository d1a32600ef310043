//! Publishing with confirms: refuse what the broker would refuse (too large, no such
//! queue) before sending, publish `mandatory`, and read the broker's confirm as the
//! message's fate.

use std::sync::Arc;

use lapin::{BasicProperties, Confirmation, options::BasicPublishOptions, types::ShortString};

use super::{AmqpTransport, convert, failed};
use crate::transport::{BrokerError, Confirm, Message, PublishError};

impl AmqpTransport {
    /// [`Transport::send`](crate::transport::Transport::send): checked, published, and its
    /// confirm returned to await.
    pub(super) async fn send_confirmed(&self, destination: &str, message: &Message) -> Result<Confirm, PublishError> {
        let Ok(routing_key) = ShortString::try_new(destination.to_owned()) else {
            return Err(PublishError::invalid_name(destination, "longer than an AMQP short string"));
        };
        let size = message.payload.len() + message.headers.byte_len();
        if size > MAX_MESSAGE_BYTES {
            let reason = format!("larger than {MAX_MESSAGE_BYTES} bytes (RabbitMQ 4's default max_message_size)");
            return Err(PublishError::TooLarge { destination: destination.to_owned(), size, reason: reason.into() });
        }
        if !self.queue_exists(destination).await? {
            return Err(PublishError::Unroutable(destination.to_owned()));
        }
        let session = self.session().await?;
        let props: BasicProperties = convert::properties(message);
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = session
            .publish(routing_key, options, &message.payload, props)
            .await
            .map_err(|e| publish_failure(destination, size, e))?;
        let (shared, destination, payload) =
            (Arc::clone(&self.shared), destination.to_owned(), message.payload.clone());
        Ok(Box::pin(async move {
            match confirm.await.map_err(|e| publish_failure(&destination, size, e))? {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(returned))
                    if returned.delivery.routing_key.as_str() == destination && returned.delivery.data == payload =>
                {
                    shared.known_queues.write().unwrap_or_else(|p| p.into_inner()).set(&destination, false);
                    Err(PublishError::Unroutable(destination))
                }
                // Another publish's return, pinned on this confirm by lapin: this one was routed.
                Confirmation::Ack(Some(_)) => Ok(()),
                Confirmation::Nack(_) => Err(PublishError::Rejected {
                    destination,
                    reason: "the broker nacked the message (queue full or unavailable)".into(),
                }),
                Confirmation::NotRequested => {
                    Err(PublishError::Unavailable("the publishing channel is not in confirm mode".to_owned()))
                }
            }
        }))
    }
}

/// Messages larger than this are refused before they are sent: RabbitMQ 4's default
/// `max_message_size` (3.x allows 128 MiB), which the broker enforces by closing the
/// publishing channel (every publish in flight on it fails).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A failed publish: the broker's "larger than configured max size" (406, which closes
/// the channel) is [`PublishError::TooLarge`]; the rest is the client's failure, which the
/// message is not at fault for.
fn publish_failure(destination: &str, size: usize, error: lapin::Error) -> PublishError {
    let too_large = match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp)
            if amqp.kind()
                == &lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)
                && amqp.get_message().as_str().contains("max size") =>
        {
            Some(amqp.get_message().as_str().to_owned())
        }
        _ => None,
    };
    match too_large {
        Some(said) => PublishError::TooLarge {
            destination: destination.to_owned(),
            size,
            reason: BrokerError::said(said).with_source(error),
        },
        None => PublishError::Transport(failed(error)),
    }
}
