//! Request-reply for Rust producers: publish a request, wait for its reply by correlation
//! id. One reply queue per client; a background task routes each reply to its waiter.
//! Replies nobody waits for (timed out, or for another client) are acked and dropped.
//! The task lives as long as the client: when its last handle is dropped, it stops
//! consuming and closes the subscription.
//!
//! [`Client::connect`] takes the broker `--broker` names, so a producer (the gateway)
//! names no transport type; [`Client::start`] takes a transport already at hand (the
//! in-memory broker a test shares with a worker).

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::debug;

use crate::{
    broker::{Broker, UseTransport},
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

/// A request-reply client on whichever transport it was started on; its type names none.
#[derive(Clone)]
pub struct Client {
    /// Publishes the requests and tells readiness; erased, so that no transport type
    /// reaches the client's users.
    outbound: Arc<dyn Outbound>,
    /// The reply queue every request names as its reply-to.
    replies: String,
    /// Who waits for which correlation id; the reply task hands each reply over.
    waiters: Waiters,
    /// Stops the reply task when the last handle goes.
    _routing: Arc<DropGuard>,
}

impl Client {
    /// Connect to `broker` (`name` names the connection where the broker shows one:
    /// RabbitMQ), then [`Client::start`] on it. On [`Broker::Memory`] the client gets an
    /// in-memory broker of its own, which no worker reads: start on the worker's instead.
    pub async fn connect(broker: &Broker, name: &str, replies: &str) -> Result<Self, TransportError> {
        broker.run(name, Start { replies }).await?
    }

    /// Declare the reply queue `replies` on `transport`, consume it, and route replies to
    /// waiters.
    pub async fn start<T: Transport>(transport: T, replies: &str) -> Result<Self, TransportError> {
        let topology = Topology::replies_only(replies);
        transport.declare(&topology).await?;
        let mut subscription = transport.subscribe(&topology, 256).await?;
        let waiters: Waiters = Arc::default();
        let routes = Arc::clone(&waiters);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    biased;
                    () = stopped.cancelled() => break,
                    delivery = subscription.next() => match delivery {
                        Some(delivery) => delivery,
                        None => break,
                    },
                };
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
            subscription.close().await;
        });
        let outbound = Arc::new(transport);
        Ok(Self { outbound, replies: replies.to_owned(), waiters, _routing: Arc::new(stop.drop_guard()) })
    }

    /// Whether the transport is connected and consuming replies.
    pub fn is_ready(&self) -> bool {
        self.outbound.ready()
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
        if !self.outbound.ready() {
            return Err(RequestError::Publish(PublishError::Unavailable("the broker is not reachable".into())));
        }
        let (sender, reply) = oneshot::channel();
        self.waiters.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), sender);
        let published = std::sync::atomic::AtomicBool::new(false);
        let exchange = async {
            self.outbound.publish_boxed(queue, &message).await?;
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

/// What the client asks of its transport once the reply task runs. Object-safe, unlike
/// [`Transport`], so that [`Client`] needs no type parameter.
trait Outbound: Send + Sync {
    /// [`Transport::publish`], boxed. (Named apart from it, so that a transport's own
    /// `publish` stays unambiguous where both traits are in scope.)
    fn publish_boxed<'a>(
        &'a self,
        destination: &'a str,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<(), PublishError>>;
    /// [`Transport::is_ready`].
    fn ready(&self) -> bool;
}

impl<T: Transport> Outbound for T {
    fn publish_boxed<'a>(
        &'a self,
        destination: &'a str,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<(), PublishError>> {
        Box::pin(self.publish(destination, message))
    }

    fn ready(&self) -> bool {
        self.is_ready()
    }
}

/// [`Client::start`] on whichever transport a [`Broker`] connects to.
struct Start<'a> {
    /// The reply queue.
    replies: &'a str,
}

impl UseTransport for Start<'_> {
    type Output = Result<Client, TransportError>;

    async fn with<T: Transport>(self, transport: T) -> Self::Output {
        Client::start(transport, self.replies).await
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("replies", &self.replies).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::memory::MemoryBroker;

    /// Waits (in paused time) until `queue` holds no message that was not handed out.
    async fn drained(broker: &MemoryBroker, queue: &str) -> bool {
        for _ in 0..100 {
            if broker.peek(queue).is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// The reply task consumes while any handle of the client lives, and stops with the
    /// last one: a reply sent after that stays in the queue for the next consumer.
    #[tokio::test(start_paused = true)]
    async fn the_reply_task_ends_with_the_last_handle() {
        let broker = MemoryBroker::new();
        let client = Client::start(broker.clone(), "c.replies").await.expect("start");
        let other = client.clone();
        drop(client);
        broker.publish("c.replies", &Message::default()).await.expect("publish");
        assert!(drained(&broker, "c.replies").await, "a handle lives: the reply is taken");
        drop(other);
        tokio::time::sleep(Duration::from_millis(10)).await;
        broker.publish("c.replies", &Message::default()).await.expect("publish");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(broker.peek("c.replies").len(), 1, "no handle left: nothing takes the reply");
    }

    /// A request carries its reply-to, and the reply with its correlation id comes back
    /// to it; a reply for another id does not.
    #[tokio::test(start_paused = true)]
    async fn a_reply_reaches_the_request_it_answers() {
        let broker = MemoryBroker::new();
        broker.declare_queue("c.requests", None);
        let client = Client::start(broker.clone(), "c.replies").await.expect("start");
        let worker = tokio::spawn({
            let broker = broker.clone();
            async move {
                let request = broker.receive("c.requests", Duration::from_secs(1)).await.expect("the request");
                let reply_to = request.headers.get(h::REPLY_TO).cloned().expect("a reply-to");
                let id = request.headers.get(h::CORRELATION_ID).cloned().expect("a correlation id");
                for (id, payload) in [("another".to_owned(), "theirs"), (id, "ours")] {
                    let headers = [(h::CORRELATION_ID.into(), id)].into_iter().collect();
                    let reply = Message { payload: Bytes::from_static(payload.as_bytes()), headers, key: None };
                    broker.publish(&reply_to, &reply).await.expect("the reply");
                }
                reply_to
            }
        });
        let timeout = Duration::from_secs(5);
        let reply = client.request("c.requests", Bytes::from_static(b"{}"), Codec::Json, None, timeout).await;
        assert_eq!(worker.await.expect("the worker"), "c.replies");
        assert_eq!(reply.expect("a reply").payload, "ours");
    }
}
