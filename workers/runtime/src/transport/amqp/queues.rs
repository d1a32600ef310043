//! Asking the broker about a queue (a passive declare): whether it exists, for the
//! unroutable check before a publish, and how many messages wait in it, for backlog and
//! `courier dlq`.

use lapin::types::{FieldTable, ShortString};

use super::{AmqpTransport, failed};
use crate::{contract::naming, transport::PublishError};

impl AmqpTransport {
    /// Whether a queue named `name` exists (cached once seen; a missing one is asked again
    /// after a second). Another connection's exclusive queue exists: publishing to it works.
    pub async fn queue_exists(&self, name: &str) -> Result<bool, PublishError> {
        if let Some(reason) = naming::amqp_queue_problem(name) {
            return Err(PublishError::invalid_name(name, reason));
        }
        if let Some(exists) = self.shared.known_queues.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(exists);
        }
        let exists = !matches!(self.passive_declare(name).await?, Declared::Missing);
        self.shared.known_queues.write().unwrap_or_else(|p| p.into_inner()).set(name, exists);
        Ok(exists)
    }

    /// Messages ready in queue `name`, or `None` when there is no such queue, or it is
    /// another connection's exclusive queue (which cannot be asked).
    pub(crate) async fn message_count(&self, name: &str) -> Result<Option<u64>, PublishError> {
        Ok(match self.passive_declare(name).await? {
            Declared::Ready(count) => Some(count),
            Declared::Exclusive | Declared::Missing => None,
        })
    }

    /// A passive declare on a throwaway channel, since a missing queue closes the channel
    /// it was asked on.
    async fn passive_declare(&self, name: &str) -> Result<Declared, PublishError> {
        use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
        let channel = self.channel().await?;
        let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
        let queue = ShortString::try_new(name.to_owned())
            .map_err(|_| PublishError::invalid_name(name, "longer than an AMQP short string"))?;
        match channel.queue_declare(queue, options, FieldTable::default()).await {
            Ok(declared) => {
                let _ = channel.close(200, "checked".into()).await;
                Ok(Declared::Ready(u64::from(declared.message_count())))
            }
            Err(error) => {
                let answer = match error.kind() {
                    lapin::ErrorKind::ProtocolError(amqp) => match amqp.kind() {
                        AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => Some(Declared::Missing),
                        AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => Some(Declared::Exclusive),
                        _ => None,
                    },
                    _ => None,
                };
                // Any other refusal of a passive declare is not the message's doing.
                answer.ok_or_else(|| PublishError::Transport(failed(error)))
            }
        }
    }
}

/// What a passive declare found.
enum Declared {
    /// A queue with this many ready messages.
    Ready(u64),
    /// Another connection's exclusive queue (405 RESOURCE_LOCKED): it exists.
    Exclusive,
    /// No such queue (404 NOT_FOUND).
    Missing,
}
