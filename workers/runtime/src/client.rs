//! Request-reply for Rust producers: publish a request, wait for its reply by correlation
//! id. One reply queue per client; a background task routes each reply to its waiter.
//! Replies nobody waits for (timed out, or for another client) are acked and dropped.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::debug;

use crate::{
    contract::{codec::Codec, headers as h, timestamp, trace},
    transport::{Acker, Message, PublishError, Topology, Transport, TransportError},
};

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No reply within the timeout (the request carried the same deadline, so a worker
    /// that sees it later dead-letters it as `expired` instead of answering).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The broker did not confirm the request.
    #[error(transparent)]
    Publish(#[from] PublishError),
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Message>>>>;

/// A request-reply client on any transport.
#[derive(Clone, Debug)]
pub struct Client<T> {
    transport: T,
    replies: String,
    waiters: Waiters,
}

impl<T: Transport> Client<T> {
    /// Declare the reply queue `replies`, consume it, and route replies to waiters.
    pub async fn start(transport: T, replies: &str) -> Result<Self, TransportError> {
        let topology = Topology::replies_only(replies);
        transport.declare(&topology).await?;
        let mut subscription = transport.subscribe(&topology, 256).await?;
        let waiters: Waiters = Arc::default();
        let routes = Arc::clone(&waiters);
        tokio::spawn(async move {
            while let Some(delivery) = subscription.next().await {
                let id = delivery.message.headers.get(h::CORRELATION_ID).cloned().unwrap_or_default();
                let waiter = routes.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                match waiter {
                    Some(waiter) => drop(waiter.send(Arc::unwrap_or_clone(delivery.message))),
                    None => debug!(correlation_id = %id, "A reply nobody waits for; dropped."),
                }
                if let Err(error) = delivery.acker.ack().await {
                    debug!(%error, "Could not ack a reply.");
                }
            }
        });
        Ok(Self { transport, replies: replies.to_owned(), waiters })
    }

    /// Whether the transport is connected and consuming replies.
    pub fn is_ready(&self) -> bool {
        self.transport.is_ready()
    }

    /// Publish `payload` (in `codec`) to `queue` and wait for the reply, all within `timeout`,
    /// whatever the broker does. `traceparent` continues the caller's trace. While the
    /// transport is not ready (broker unreachable), the answer is `Unavailable` at once.
    pub async fn request(
        &self,
        queue: &str,
        payload: Bytes,
        codec: Codec,
        traceparent: Option<&str>,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let id = uuid::Uuid::new_v4().to_string();
        let deadline = SystemTime::now() + timeout;
        let headers = [
            (h::MESSAGE_ID, id.clone()),
            (h::CORRELATION_ID, id.clone()),
            (h::REPLY_TO, self.replies.clone()),
            (h::CONTENT_TYPE, codec.content_type().to_owned()),
            (h::DEADLINE, timestamp::format(deadline)),
            (h::TRACEPARENT, trace::child_of(traceparent)),
        ];
        let message = Message {
            payload,
            headers: headers.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            key: Some(id.clone().into()),
        };
        if !self.transport.is_ready() {
            return Err(RequestError::Publish(PublishError::Unavailable("the broker is not reachable".into())));
        }
        let (sender, reply) = oneshot::channel();
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), sender);
        let published = std::sync::atomic::AtomicBool::new(false);
        let exchange = async {
            self.transport.publish(queue, &message).await?;
            published.store(true, std::sync::atomic::Ordering::Relaxed);
            reply.await.map_err(|_| RequestError::Timeout(timeout))
        };
        // A publish the broker has not confirmed by then may still go out: the request's
        // deadline makes a worker that sees it late dead-letter it as `expired`.
        let outcome = tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| {
            Err(if published.load(std::sync::atomic::Ordering::Relaxed) {
                RequestError::Timeout(timeout)
            } else {
                RequestError::Publish(PublishError::Unavailable(format!("not confirmed within {timeout:?}")))
            })
        });
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        outcome
    }
}
