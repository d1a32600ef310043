//! Kafka workers in-process on a one-partition topic, and the order-preserving retry
//! (`--retry-in-place`) scenarios, run on the mock cluster (`in_process/kafka_ordering.rs`)
//! and on tansu (`tansu.rs`).

use std::time::Duration;

use courier::{
    Message, RetryPolicy, Settings,
    contract::headers as h,
    testing::{Harness, ScriptHandler},
    transport::{
        Transport,
        kafka::{KafkaTransport, Ordering},
    },
};
use tokio_util::sync::CancellationToken;

use crate::kafka::{KafkaHarness, config};

/// How long a scenario waits for each reply or record.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A worker on a one-partition topic with the given ordering: one handler call per
/// round, then the delayed-retry `tiers`; a circuit breaker that opens after three failed
/// rounds and probes after 200 ms.
pub async fn start(
    harness: &KafkaHarness,
    ordering: Ordering,
    tiers: Vec<Duration>,
    handler: ScriptHandler,
    tune: impl FnOnce(&mut Settings),
) -> (Settings, KafkaTransport, ScriptHandler, CancellationToken, tokio::task::JoinHandle<()>) {
    let mut config = config(&harness.bootstrap, ordering);
    config.partitions = 1;
    let transport = KafkaTransport::connect(config).await.expect("connect");
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let mut settings = Settings::defaults("ordering");
    settings.queue = format!("ordering-{id}.requests");
    settings.replies = format!("ordering-{id}.replies");
    settings.concurrency = 8;
    settings.retry =
        RetryPolicy::new(1, Duration::from_millis(100), Duration::from_secs(1), false, tiers).expect("policy");
    settings.breaker = Some(
        courier::BreakerPolicy::new(3, 1.0, 0, Duration::from_millis(200), Duration::from_millis(800), 1)
            .expect("valid breaker"),
    );
    tune(&mut settings);
    let topology = settings.topology();
    let mut names = vec![topology.queue.as_str(), &topology.dead_letter, &topology.parking, &topology.replies];
    names.extend(topology.retry_tiers.iter().map(|t| t.name.as_str()));
    match &harness.cluster {
        Some(cluster) => cluster.create_topics(&names, 1),
        None => transport.create_topics(&names).await.expect("create topics"),
    }
    let stop = CancellationToken::new();
    let worker = tokio::spawn({
        let (settings, transport, handler, stop) = (settings.clone(), transport.clone(), handler.clone(), stop.clone());
        async move { courier::run(settings, transport, handler, stop.cancelled_owned()).await.expect("worker") }
    });
    (settings, transport, handler, stop, worker)
}

pub async fn send(transport: &KafkaTransport, settings: &Settings, op: &str, n: u64) -> String {
    send_keyed(transport, settings, "same-key", op, n).await
}

pub async fn send_keyed(transport: &KafkaTransport, settings: &Settings, key: &str, op: &str, n: u64) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let mut message = Message {
        payload: serde_json::json!({ "id": id, "op": op, "n": n }).to_string().into(),
        key: Some(key.to_owned().into()),
        ..Message::default()
    };
    message.headers.insert(h::CORRELATION_ID.into(), id.clone());
    transport.publish(&settings.queue, &message).await.expect("publish");
    id
}

/// `--retry-in-place` with `--ordering key`: a record that fails transiently waits out the
/// tier delays in the worker, holding its key; the key's later records are answered after
/// it, in order, while another key's are answered during the hold; nothing goes to a retry
/// topic.
pub async fn keeps_a_key_in_order_while_other_keys_flow(harness: KafkaHarness) {
    let tiers = vec![Duration::from_millis(200), Duration::from_millis(400), Duration::from_millis(800)];
    let (settings, transport, handler, stop, worker) =
        start(&harness, Ordering::Key, tiers, ScriptHandler::default(), |s| s.retry_in_place = true).await;
    let first = send_keyed(&transport, &settings, "a", "flaky", 3).await;
    let mut a = vec![first.clone()];
    let mut b = Vec::new();
    for _ in 0..4 {
        a.push(send_keyed(&transport, &settings, "a", "echo", 0).await);
        b.push(send_keyed(&transport, &settings, "b", "echo", 0).await);
    }
    let mut order = Vec::new();
    while order.len() < a.len() + b.len() {
        let reply = harness.receive(&settings.replies, PATIENCE).await.expect("every request is answered");
        assert_eq!(reply.headers.get(h::STATUS).map(String::as_str), Some("ok"));
        order.push(reply.headers.get(h::CORRELATION_ID).cloned().unwrap_or_default());
    }
    let of = |ids: &[String]| order.iter().filter(|id| ids.contains(id)).cloned().collect::<Vec<_>>();
    assert_eq!(of(&a), a, "key a answered in publish order, the retried record first");
    assert_eq!(of(&b), b, "key b in order");
    let at = |id: &String| order.iter().position(|o| o == id).expect("answered");
    assert!(b.iter().all(|id| at(id) < at(&first)), "key b answered during a's hold: {order:?}");
    let calls = handler.calls.lock().expect("calls")[&first].clone();
    assert_eq!(calls.len(), 4, "three failed rounds, then success");
    for (i, delay) in [200, 400, 800].into_iter().enumerate() {
        let gap = calls[i + 1] - calls[i];
        assert!(gap >= Duration::from_millis(delay), "round {}: {gap:?}", i + 2);
    }
    for tier in settings.topology().retry_tiers {
        assert!(harness.receive(&tier.name, Duration::from_millis(300)).await.is_none(), "nothing in {}", tier.name);
    }
    stop.cancel();
    worker.await.expect("worker");
}

/// A record retried in place that fails every round is dead-lettered with every round
/// counted, and its key's next record is answered after it.
pub async fn exhausting_its_tiers_dead_letters_and_the_lane_moves_on(harness: KafkaHarness) {
    let tiers = vec![Duration::from_millis(100), Duration::from_millis(200)];
    let (settings, transport, handler, stop, worker) =
        start(&harness, Ordering::Partition, tiers, ScriptHandler::default(), |s| {
            s.retry_in_place = true;
            s.breaker = None;
        })
        .await;
    let failing = send(&transport, &settings, "transient", 0).await;
    let next = send(&transport, &settings, "echo", 0).await;
    let record = harness.receive(&settings.topology().dead_letter, PATIENCE).await.expect("the dead letter");
    assert_eq!(record.headers.get(h::CORRELATION_ID), Some(&failing));
    assert_eq!(record.headers.get(h::FAILURE_KIND).map(String::as_str), Some("transient"));
    assert_eq!(record.headers.get(h::FAILURE_ATTEMPTS).map(String::as_str), Some("3"), "three rounds of one call");
    assert_eq!(record.headers.get(h::ATTEMPT).map(String::as_str), Some("3"));
    let mut replies = std::collections::HashSet::new();
    while replies.len() < 2 {
        let reply = harness.receive(&settings.replies, PATIENCE).await.expect("replies");
        replies.insert(reply.headers.get(h::CORRELATION_ID).cloned().unwrap_or_default());
    }
    assert!(replies.contains(&failing) && replies.contains(&next), "the error reply and the next record's");
    let calls = handler.calls.lock().expect("calls").clone();
    assert!(calls[&next][0] > *calls[&failing].last().expect("called"), "the next record ran after the last round");
    stop.cancel();
    worker.await.expect("worker");
}
