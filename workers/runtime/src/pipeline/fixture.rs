//! A worker's pipeline in a unit test: the in-memory broker, a scripted handler, and one
//! delivery at a time, under paused time.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::{Pipeline, Slot};
use crate::{
    breaker::Gate,
    budget::Budget,
    config::Settings,
    contract::headers as h,
    handler::{Context, Handler, HandlerError},
    observe::Metrics,
    retry::RetryPolicy,
    schema::RequestSchema,
    transport::{Delivery, Message, Subscription, Topology, Transport, memory::MemoryBroker},
};

/// A handler told what to do by its request's `op`: `ok` (echo the request), `transient`,
/// `permanent`, `panic`, `slow` (an hour), `stall` (400 ms of the wall clock, then transient), or `script` (the next of [`Scripted::script`],
/// ok once it is empty).
#[derive(Clone, Debug, Default)]
pub(super) struct Scripted {
    /// Calls so far.
    pub(super) calls: Arc<AtomicU32>,
    /// What `script` requests get, in order.
    pub(super) script: Arc<Mutex<VecDeque<Result<(), HandlerError>>>>,
    /// The attempt of each call's context.
    pub(super) attempts: Arc<Mutex<Vec<u32>>>,
    /// The size of each batch call.
    pub(super) batches: Arc<Mutex<Vec<usize>>>,
    /// Batch calls to come that fail as a whole (transiently).
    pub(super) failing_batches: Arc<AtomicU32>,
}

impl Scripted {
    pub(super) fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    pub(super) fn batches(&self) -> Vec<usize> {
        self.batches.lock().expect("not poisoned").clone()
    }

    pub(super) fn then(&self, outcomes: impl IntoIterator<Item = Result<(), HandlerError>>) {
        self.script.lock().expect("not poisoned").extend(outcomes);
    }
}

impl Handler for Scripted {
    type Request = serde_json::Value;
    type Reply = serde_json::Value;
    const NAME: &'static str = "scripted";
    const REQUEST_SCHEMA: &'static str =
        r#"{"type": "object", "required": ["op"], "properties": {"op": {"type": "string"}}}"#;

    async fn handle(&self, request: serde_json::Value, context: &Context) -> Result<serde_json::Value, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.attempts.lock().expect("not poisoned").push(context.attempt);
        match request["op"].as_str() {
            Some("transient") => Err(HandlerError::transient("db_down", "the database is down")),
            Some("permanent") => Err(HandlerError::permanent("bad_name", "no such name")),
            Some("panic" | "explode") => panic!("scripted panic"),
            Some("stall") => {
                // Blocks the thread: the wall clock moves, which paused tokio time does not.
                std::thread::sleep(Duration::from_millis(400));
                Err(HandlerError::transient("stalled", "the dependency stalled"))
            }
            Some("slow") => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(request)
            }
            Some("script") => {
                let next = self.script.lock().expect("not poisoned").pop_front();
                next.unwrap_or(Ok(())).map(|()| request)
            }
            _ => Ok(request),
        }
    }

    /// Each request on its own; a batch with a `short` request returns a result too few; a
    /// batch of more than one with an `explode` request panics (alone, it panics in `handle`).
    async fn handle_batch(&self, batch: Vec<(Self::Request, Context)>) -> crate::handler::BatchResult<Self::Reply> {
        self.batches.lock().expect("not poisoned").push(batch.len());
        let failing = self.failing_batches.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(HandlerError::transient("db_down", "the batch's database is down"));
        }
        assert!(batch.len() == 1 || batch.iter().all(|(request, _)| request["op"] != "explode"), "the batch explodes");
        let short = batch.iter().any(|(request, _)| request["op"] == "short");
        let mut results = crate::handler::each(self, batch).await;
        if short {
            results.pop();
        }
        Ok(results)
    }
}

/// A request for [`Scripted`].
pub(super) fn request(op: &str) -> Message {
    let mut message = Message { payload: Bytes::from(format!(r#"{{"op":"{op}"}}"#)), ..Message::default() };
    message.headers.insert(h::CORRELATION_ID.into(), format!("c-{op}"));
    message
}

/// Settings for tests: two retry tiers (1 s, 5 s), three in-process calls 10 ms apart, a
/// one-second handler timeout, two requeues of a refused output (the third refusal gives up).
pub(super) fn settings() -> Settings {
    let retry = RetryPolicy::new(
        3,
        Duration::from_millis(10),
        Duration::from_millis(10),
        false,
        vec![Duration::from_secs(1), Duration::from_secs(5)],
    )
    .expect("valid");
    Settings { retry, handler_timeout: Duration::from_secs(1), max_redeliveries: 2, ..Settings::defaults("scripted") }
}

/// The pipeline of one worker on its own in-memory broker.
pub(super) struct Fixture {
    pub(super) broker: MemoryBroker,
    pub(super) handler: Scripted,
    pub(super) topology: Topology,
    pub(super) gate: Gate,
    pipeline: Pipeline<Scripted, MemoryBroker>,
    subscription: Subscription<<MemoryBroker as Transport>::Acker>,
    handlers: Arc<Semaphore>,
    confirms: Arc<Semaphore>,
    budget: Budget,
}

impl Fixture {
    pub(super) async fn new(settings: Settings) -> Self {
        let broker = MemoryBroker::new();
        let topology = settings.topology();
        broker.declare(&topology).await.expect("declared");
        let subscription = broker.subscribe(&topology, 16).await.expect("subscribed");
        let handler = Scripted::default();
        let schema = RequestSchema::compile(Scripted::REQUEST_SCHEMA).expect("compiles");
        let metrics = Metrics::new(&settings.worker);
        let gate = Gate::new(settings.breaker.clone(), metrics.clone());
        let pipeline = Pipeline::new(handler.clone(), broker.clone(), schema, settings, metrics, gate.clone(), None);
        let (handlers, confirms) = (Arc::new(Semaphore::new(16)), Arc::new(Semaphore::new(160)));
        Self {
            broker,
            handler,
            topology,
            gate,
            pipeline,
            subscription,
            handlers,
            confirms,
            budget: Budget::new(1 << 30),
        }
    }

    /// Publish `message` to the work queue and run its delivery to the end.
    pub(super) async fn deliver(&mut self, message: Message) {
        self.broker.publish(&self.topology.queue, &message).await.expect("published");
        self.deliver_next().await;
    }

    /// Run the next delivery of the work queue to the end (a redelivery, a retried copy).
    pub(super) async fn deliver_next(&mut self) {
        let (delivery, slot) = self.next_delivery().await;
        self.pipeline.deliver(delivery, slot).await;
    }

    /// The next delivery of the work queue, with its handler slot and byte charge.
    async fn next_delivery(&mut self) -> (Delivery<<MemoryBroker as Transport>::Acker>, Slot) {
        let delivery = tokio::time::timeout(Duration::from_secs(600), self.subscription.next())
            .await
            .expect("a delivery within ten minutes")
            .expect("the subscription goes on");
        let handler = Arc::clone(&self.handlers).acquire_owned().await.expect("open");
        let charge = self.budget.admit(delivery.message.byte_len()).await;
        (delivery, Slot::new(handler, Arc::clone(&self.confirms), charge, None))
    }

    /// Publish `message` and run its delivery to the end; returns the size of the
    /// delivery's future, which the consume loop copies into fresh memory per message.
    pub(super) async fn deliver_measured(&mut self, message: Message) -> usize {
        self.broker.publish(&self.topology.queue, &message).await.expect("published");
        let (delivery, slot) = self.next_delivery().await;
        let delivering = self.pipeline.deliver(delivery, slot);
        let size = std::mem::size_of_val(&delivering);
        delivering.await;
        size
    }

    /// Publish `messages` and run their deliveries to the end, concurrently.
    pub(super) async fn deliver_together(&mut self, messages: Vec<Message>) {
        let count = messages.len();
        for message in &messages {
            self.broker.publish(&self.topology.queue, message).await.expect("published");
        }
        let mut deliveries = Vec::with_capacity(count);
        for _ in 0..count {
            let delivery = self.subscription.next().await.expect("the subscription goes on");
            let handler = Arc::clone(&self.handlers).acquire_owned().await.expect("open");
            let charge = self.budget.admit(delivery.message.byte_len()).await;
            deliveries.push((delivery, Slot::new(handler, Arc::clone(&self.confirms), charge, None)));
        }
        let pipeline = &self.pipeline;
        futures::future::join_all(deliveries.into_iter().map(|(delivery, slot)| pipeline.deliver(delivery, slot)))
            .await;
    }

    /// What `queue` holds now, taken out of it.
    pub(super) fn take(&self, queue: &str) -> Vec<Message> {
        let messages = self.broker.peek(queue);
        self.broker.purge(queue);
        messages
    }

    /// The one message `queue` holds, taken out of it.
    pub(super) fn take_one(&self, queue: &str) -> Message {
        let mut messages = self.take(queue);
        assert_eq!(messages.len(), 1, "{queue}: {messages:?}");
        messages.remove(0)
    }
}

/// A header of `message`.
pub(super) fn header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    message.headers.get(name).map(String::as_str)
}
