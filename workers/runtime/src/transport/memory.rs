//! The embedded in-memory broker: the same semantics as the real transports (confirmed
//! publish, unroutable detection, ack/nack/redelivery, delayed retry tiers, dead-letter
//! queue, full queues that reject publishes), fast and deterministic under paused tokio
//! time. For unit tests, the contract suite and the demo, never for production.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::Notify;

use super::{
    Acker, Delivery, Intake, Message, PublishError, Source, Subscription, Topology, Transport, TransportError,
};

/// An in-memory broker; clones share the same queues.
#[derive(Clone, Debug, Default)]
pub struct MemoryBroker {
    /// All queues, by name. Never locked across an `.await`.
    state: Arc<Mutex<HashMap<String, Queue>>>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Messages waiting for a consumer, oldest first.
    ready: VecDeque<Stored>,
    /// For a retry tier: how long messages wait, and the queue they then move to.
    delay: Option<(Duration, String)>,
    /// Publishes are rejected while `ready` holds this many messages.
    max_length: Option<usize>,
    /// Wakes consumers when a message arrives.
    arrived: Arc<Notify>,
}

#[derive(Debug)]
struct Stored {
    /// The message.
    message: Message,
    /// Whether it was handed out before.
    redelivered: bool,
}

impl MemoryBroker {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Queue>> {
        // A panic while holding the lock cannot leave the map half-updated; keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Create a plain queue if missing; `max_length` makes it reject publishes when full.
    pub fn declare_queue(&self, name: &str, max_length: Option<usize>) {
        let mut state = self.lock();
        let queue = state.entry(name.to_owned()).or_default();
        queue.max_length = max_length;
    }

    fn declare_tier(&self, name: &str, delay: Duration, target: &str) -> Result<(), TransportError> {
        let mut state = self.lock();
        let queue = state.entry(name.to_owned()).or_default();
        match &queue.delay {
            Some(existing) if *existing != (delay, target.to_owned()) => Err(TransportError::TopologyMismatch(
                format!("queue {name} exists with delay {:?} to {}", existing.0, existing.1),
            )),
            _ => {
                queue.delay = Some((delay, target.to_owned()));
                Ok(())
            }
        }
    }

    /// Messages waiting in `queue` (not those handed out), oldest first.
    pub(crate) fn peek(&self, queue: &str) -> Vec<Message> {
        self.lock().get(queue).map(|q| q.ready.iter().map(|s| s.message.clone()).collect()).unwrap_or_default()
    }

    /// Wait up to `timeout` for a message in `queue` and take it.
    pub async fn receive(&self, queue: &str, timeout: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = {
                let mut state = self.lock();
                let q = state.entry(queue.to_owned()).or_default();
                if let Some(stored) = q.ready.pop_front() {
                    return Some(stored.message);
                }
                Arc::clone(&q.arrived)
            };
            let notified = arrived.notified();
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Remove `queue` and its messages (publishing there is then unroutable).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn delete_queue(&self, queue: &str) {
        self.lock().remove(queue);
    }

    /// Remove every waiting message of `queue`; returns how many.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn purge(&self, queue: &str) -> usize {
        self.lock().get_mut(queue).map_or(0, |q| std::mem::take(&mut q.ready).len())
    }

    fn enqueue(&self, name: &str, stored: Stored, front: bool) {
        let mut state = self.lock();
        let queue = state.entry(name.to_owned()).or_default();
        if front {
            queue.ready.push_front(stored)
        } else {
            queue.ready.push_back(stored)
        }
        queue.arrived.notify_one();
    }

    /// Move the messages of a retry tier that are due (the oldest) to the tier's target.
    fn release_one(&self, tier: &str) {
        let mut state = self.lock();
        let Some(queue) = state.get_mut(tier) else { return };
        let (Some(stored), Some((_, target))) = (queue.ready.pop_front(), queue.delay.clone()) else { return };
        let target = state.entry(target).or_default();
        target.ready.push_back(stored);
        target.arrived.notify_one();
    }

    /// Pop the next message of `queue`, waiting for one.
    async fn next(&self, queue: &str) -> Stored {
        loop {
            let arrived = {
                let mut state = self.lock();
                let q = state.entry(queue.to_owned()).or_default();
                if let Some(stored) = q.ready.pop_front() {
                    return stored;
                }
                Arc::clone(&q.arrived)
            };
            // `notify_one` stores a permit, so an arrival between unlock and here is not missed.
            arrived.notified().await;
        }
    }
}

impl Transport for MemoryBroker {
    type Acker = MemoryAcker;

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        for name in [&topology.queue, &topology.dead_letter, &topology.parking, &topology.replies] {
            self.lock().entry(name.clone()).or_default();
        }
        for tier in &topology.retry_tiers {
            self.declare_tier(&tier.name, tier.delay, &topology.queue)?;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        topology: &Topology,
        _prefetch: usize,
    ) -> Result<Subscription<MemoryAcker>, TransportError> {
        let broker = self.clone();
        let queue = topology.queue.clone();
        let (intake, wanted) = super::intake();
        // Pops only when polled: the worker polls only when it has room for a message.
        let stream = futures::stream::unfold((broker, queue, wanted), |(broker, queue, mut wanted)| async move {
            let stored = loop {
                // Stopped: nothing is taken until the intake changes.
                if *wanted.borrow_and_update() == Intake::Stopped {
                    wanted.changed().await.ok()?;
                    continue;
                }
                tokio::select! {
                    stored = broker.next(&queue) => break stored,
                    changed = wanted.changed() => changed.ok()?,
                }
            };
            let delivery = Delivery {
                source: Source { queue: queue.as_str().into(), position: None },
                redelivered: stored.redelivered,
                message: Arc::new(stored.message.clone()),
                acker: MemoryAcker { broker: broker.clone(), queue: queue.clone(), stored: Some(stored) },
            };
            Some((delivery, (broker, queue, wanted)))
        });
        Ok(Subscription::new(stream, intake))
    }

    /// Enqueues at once: the confirm is already there.
    async fn send(&self, destination: &str, message: &Message) -> Result<super::Confirm, PublishError> {
        let delay = {
            let state = self.lock();
            let Some(queue) = state.get(destination) else {
                return Err(PublishError::Unroutable(destination.to_owned()));
            };
            if queue.max_length.is_some_and(|max| queue.ready.len() >= max) {
                return Err(PublishError::Rejected {
                    destination: destination.to_owned(),
                    reason: "queue is full".into(),
                });
            }
            queue.delay.as_ref().map(|(delay, _)| *delay)
        };
        self.enqueue(destination, Stored { message: message.clone(), redelivered: false }, false);
        if let Some(delay) = delay {
            let broker = self.clone();
            let tier = destination.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                broker.release_one(&tier);
            });
        }
        Ok(Box::pin(std::future::ready(Ok(()))))
    }
}

/// Settles one in-memory delivery; dropping it unsettled requeues the message.
#[derive(Debug)]
pub struct MemoryAcker {
    /// The broker the message came from.
    broker: MemoryBroker,
    /// The queue it came from.
    queue: String,
    /// The message, until settled.
    stored: Option<Stored>,
}

impl MemoryAcker {
    fn requeue(&mut self) {
        if let Some(mut stored) = self.stored.take() {
            stored.redelivered = true;
            self.broker.enqueue(&self.queue, stored, true);
        }
    }
}

impl Acker for MemoryAcker {
    async fn ack(mut self) -> Result<(), TransportError> {
        self.stored = None;
        Ok(())
    }

    async fn nack(mut self) -> Result<(), TransportError> {
        self.requeue();
        Ok(())
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        self.requeue();
    }
}
