//! Kafka-specific guarantees, in-process on the mock cluster: partition ordering keeps
//! handler calls and replies in order, the stored offset never passes an unfinished
//! message, a message waiting in a retry topic does not hold up its partition, and a
//! record retried in place keeps its lane (`support/in_place.rs`, also run on tansu).

use std::time::{Duration, Instant};

use courier::{
    Message,
    contract::headers as h,
    testing::{Harness, ScriptHandler},
    transport::{Backlog, Transport, kafka::Ordering},
};
use courier_tests::{
    in_place::{self, PATIENCE, send, send_keyed, start},
    kafka::KafkaHarness,
};
use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};

/// The group's committed offset of partition 0 of `topic`.
fn committed(bootstrap: &str, group: &str, topic: &str) -> Option<i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, 0);
    let committed = consumer.committed_offsets(list, Duration::from_secs(5)).expect("committed offsets");
    match committed.find_partition(topic, 0).map(|p| p.offset()) {
        Some(Offset::Offset(offset)) => Some(offset),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_ordering_keeps_calls_and_replies_in_order() {
    let harness = KafkaHarness::mock().await;
    let (settings, transport, handler, stop, worker) =
        start(&harness, Ordering::Partition, vec![], ScriptHandler::default(), |_| {}).await;
    // Slow and fast messages alternate: with any concurrency inside the partition the
    // fast ones would overtake. The next message may start once the previous reply is
    // handed to the producer, before its confirm; that must not reorder anything.
    let mut sent = Vec::new();
    for i in 0..30 {
        let (op, n) = if i % 2 == 0 { ("slow", 15) } else { ("echo", 0) };
        sent.push(send(&transport, &settings, op, n).await);
    }
    let mut replies = Vec::new();
    while replies.len() < sent.len() {
        let reply = harness.receive(&settings.replies, PATIENCE).await.expect("replies");
        replies.push(reply.headers.get(h::CORRELATION_ID).cloned().unwrap_or_default());
    }
    assert_eq!(replies, sent, "replies in publish order");
    let calls = handler.calls.lock().expect("calls").clone();
    let mut started: Vec<_> = sent.iter().map(|id| (calls[id][0], id)).collect();
    started.sort();
    let started: Vec<&String> = started.into_iter().map(|(_, id)| id).collect();
    assert_eq!(started, sent.iter().collect::<Vec<_>>(), "handler calls in publish order");
    stop.cancel();
    worker.await.expect("worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_lag_counts_records_waiting_in_the_worker() {
    let harness = KafkaHarness::mock().await;
    let (settings, transport, handler, stop, worker) =
        start(&harness, Ordering::Partition, vec![], ScriptHandler::default(), |_| {}).await;
    let slow = send(&transport, &settings, "slow", 4_000).await;
    for _ in 0..20 {
        send(&transport, &settings, "echo", 0).await;
    }
    // The slow message runs; the 20 behind it are fetched and wait for their lane.
    let deadline = Instant::now() + PATIENCE;
    while !handler.calls.lock().expect("calls").contains_key(&slow) {
        assert!(Instant::now() < deadline, "the slow message never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let lag = |backlog: Vec<Backlog>| {
        backlog.into_iter().find_map(|b| match b {
            Backlog::Lag { topic, lag, .. } if topic == settings.queue => lag,
            _ => None,
        })
    };
    let topology = settings.topology();
    assert_eq!(lag(transport.backlog(&topology).await), Some(21), "fetched but unfinished records are lag");
    for _ in 0..21 {
        harness.receive(&settings.replies, PATIENCE).await.expect("replies");
    }
    // The last ack follows its reply's confirm: give it a moment.
    let deadline = Instant::now() + PATIENCE;
    while lag(transport.backlog(&topology).await) != Some(0) {
        assert!(Instant::now() < deadline, "the lag never went back to 0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    worker.await.expect("worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_offset_never_passes_an_unfinished_message() {
    let harness = KafkaHarness::mock().await;
    let (settings, transport, _, stop, worker) =
        start(&harness, Ordering::None, vec![], ScriptHandler::default(), |_| {}).await;
    let group = transport.config().group.clone();
    let slow = send(&transport, &settings, "slow", 6_000).await;
    let mut fast = Vec::new();
    for _ in 0..10 {
        fast.push(send(&transport, &settings, "echo", 0).await);
    }
    let mut answered = Vec::new();
    while answered.len() < fast.len() {
        let reply = harness.receive(&settings.replies, PATIENCE).await.expect("fast replies first");
        answered.push(reply.headers.get(h::CORRELATION_ID).cloned().unwrap_or_default());
    }
    assert!(!answered.contains(&slow), "the slow message is still running");
    // Auto-commit runs every second: give it two turns.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let bootstrap = harness.bootstrap.clone();
    let before = committed(&bootstrap, &group, &settings.queue);
    assert!(before.unwrap_or(0) <= 0, "committed {before:?} past the unfinished message at offset 0");
    let reply = harness.receive(&settings.replies, PATIENCE).await.expect("the slow reply");
    assert_eq!(reply.headers.get(h::CORRELATION_ID), Some(&slow));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let after = committed(&bootstrap, &group, &settings.queue);
    assert_eq!(after, Some(11), "then the whole finished prefix is committed");
    stop.cancel();
    worker.await.expect("worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_in_a_retry_topic_does_not_hold_up_its_partition() {
    let harness = KafkaHarness::mock().await;
    let tier = Duration::from_secs(3);
    let (settings, transport, handler, stop, worker) =
        start(&harness, Ordering::Partition, vec![tier], ScriptHandler::default(), |_| {}).await;
    // Wait until the worker owns the partition (the group's first rebalance takes seconds).
    let warm_up = send(&transport, &settings, "echo", 0).await;
    let reply = harness.receive(&settings.replies, PATIENCE).await.expect("warm-up reply");
    assert_eq!(reply.headers.get(h::CORRELATION_ID), Some(&warm_up));
    let flaky = send(&transport, &settings, "flaky", 1).await;
    let started = Instant::now();
    let mut fast = Vec::new();
    for _ in 0..5 {
        fast.push(send(&transport, &settings, "echo", 0).await);
    }
    let mut order = Vec::new();
    while order.len() < 6 {
        let reply = harness.receive(&settings.replies, PATIENCE).await.expect("replies");
        order.push((reply.headers.get(h::CORRELATION_ID).cloned().unwrap_or_default(), started.elapsed()));
    }
    let (last_id, _) = order.last().expect("six replies");
    assert_eq!(last_id, &flaky, "the retried message comes last: {order:?}");
    let calls = handler.calls.lock().expect("calls").get(&flaky).cloned().unwrap_or_default();
    assert_eq!(calls.len(), 2);
    let waited = calls[1] - calls[0];
    assert!(waited >= tier && waited < tier + Duration::from_secs(3), "the retry tier delayed {waited:?}");
    for (id, at) in &order[..5] {
        assert!(*at < tier, "{id} waited {at:?} behind the retried message");
    }
    stop.cancel();
    worker.await.expect("worker");
}

/// The circuit breaker in every ordering mode: while the dependency is down the worker
/// pauses its partitions after a few failed rounds; once it is back, every request is
/// answered ok and none was dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_holds_and_resumes_in_every_ordering_mode() {
    let harness = KafkaHarness::mock().await;
    for ordering in [Ordering::Partition, Ordering::Key, Ordering::None] {
        let tiers = vec![Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(3)];
        let handler = ScriptHandler::default();
        handler.down.store(true, std::sync::atomic::Ordering::Relaxed);
        let (settings, transport, handler, stop, worker) = start(&harness, ordering, tiers, handler, |_| {}).await;
        let mut sent = std::collections::HashSet::new();
        for _ in 0..40 {
            sent.insert(send(&transport, &settings, "dependency", 0).await);
        }
        let calls = || handler.calls.lock().expect("calls").values().map(Vec::len).sum::<usize>();
        let deadline = Instant::now() + PATIENCE;
        while calls() < 3 {
            assert!(Instant::now() < deadline, "{ordering:?}: the worker never took the requests");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let while_down = calls();
        handler.down.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut answered = std::collections::HashSet::new();
        while answered.len() < sent.len() {
            let reply = harness.receive(&settings.replies, PATIENCE).await.expect("every request is answered");
            assert_eq!(reply.headers.get(h::STATUS).map(String::as_str), Some("ok"), "{ordering:?}");
            answered.insert(reply.headers.get(h::CORRELATION_ID).cloned().unwrap_or_default());
        }
        assert_eq!(answered, sent, "{ordering:?}");
        let dlq = settings.topology().dead_letter;
        assert!(
            harness.receive(&dlq, Duration::from_millis(500)).await.is_none(),
            "{ordering:?}: nothing dead-lettered"
        );
        println!("{ordering:?}: {while_down} handler calls for 40 requests while the dependency was down");
        assert!(while_down < 20, "{ordering:?}: {while_down} handler calls while down");
        stop.cancel();
        worker.await.expect("worker");
    }
}

/// Batches (`--batch-size 4`) with `--ordering key` and `--retry-in-place`: records of
/// four keys are handled in batches that hold several keys, a flaky record waits out its
/// tier in place, and each key's replies and first calls come in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_keep_each_keys_order_through_retries_in_place() {
    let harness = KafkaHarness::mock().await;
    let tiers = vec![Duration::from_millis(500)];
    let (settings, transport, handler, stop, worker) =
        start(&harness, Ordering::Key, tiers, ScriptHandler::default(), |s| {
            s.retry_in_place = true;
            s.batch = Some(courier::BatchSettings { size: 4, wait: Duration::from_millis(50) });
        })
        .await;
    let keys = ["a", "b", "c", "d"];
    let mut sent: std::collections::HashMap<&str, Vec<String>> = std::collections::HashMap::new();
    for round in 0..6 {
        for key in keys {
            let flaky = (round, key) == (1, "a") || (round, key) == (3, "c");
            let (op, n) = if flaky { ("flaky", 1) } else { ("echo", 0) };
            sent.entry(key).or_default().push(send_keyed(&transport, &settings, key, op, n).await);
        }
    }
    let mut order = Vec::new();
    while order.len() < 24 {
        let reply = harness.receive(&settings.replies, PATIENCE).await.expect("replies");
        assert_eq!(reply.headers.get(h::STATUS).map(String::as_str), Some("ok"));
        order.push(reply.headers.get(h::CORRELATION_ID).cloned().unwrap_or_default());
    }
    let calls = handler.calls.lock().expect("calls").clone();
    for key in keys {
        let ids = &sent[key];
        let replied: Vec<&String> = order.iter().filter(|id| ids.contains(id)).collect();
        assert_eq!(replied, ids.iter().collect::<Vec<_>>(), "key {key}: replies in publish order");
        let mut started: Vec<_> = ids.iter().map(|id| (calls[id][0], id)).collect();
        started.sort();
        assert_eq!(started.iter().map(|(_, id)| *id).collect::<Vec<_>>(), ids.iter().collect::<Vec<_>>());
    }
    assert_eq!(calls[&sent["a"][1]].len(), 2, "the flaky record of key a ran twice");
    let batches = handler.batches.lock().expect("batches").clone();
    assert!(batches.iter().all(|size| (1..=4).contains(size)) && batches.iter().any(|size| *size > 1), "{batches:?}");
    stop.cancel();
    worker.await.expect("worker");
}

/// `--retry-in-place` on the mock cluster (the same scenarios run on tansu).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_in_place_keeps_a_key_in_order_while_other_keys_flow() {
    in_place::keeps_a_key_in_order_while_other_keys_flow(KafkaHarness::mock().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_in_place_that_exhausts_its_tiers_dead_letters_and_the_lane_moves_on() {
    in_place::exhausting_its_tiers_dead_letters_and_the_lane_moves_on(KafkaHarness::mock().await).await;
}

/// A request retried in place whose deadline passes while it waits is dead-lettered as
/// `expired`, as its copy coming back from a retry topic would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_in_place_ends_when_the_deadline_passes() {
    let harness = KafkaHarness::mock().await;
    let tiers = vec![Duration::from_secs(1)];
    let (settings, transport, handler, stop, worker) =
        start(&harness, Ordering::Key, tiers, ScriptHandler::default(), |s| s.retry_in_place = true).await;
    // Once the worker has its partition (joining the group takes longer than the deadline).
    send(&transport, &settings, "echo", 0).await;
    harness.receive(&settings.replies, PATIENCE).await.expect("the worker serves");
    let id = uuid::Uuid::new_v4().to_string();
    let deadline = courier::contract::timestamp::format(std::time::SystemTime::now() + Duration::from_millis(500));
    let mut message = Message {
        payload: serde_json::json!({ "id": id, "op": "transient" }).to_string().into(),
        key: Some("late".into()),
        ..Message::default()
    };
    message.headers.insert(h::CORRELATION_ID.into(), id.clone());
    message.headers.insert(h::DEADLINE.into(), deadline);
    transport.publish(&settings.queue, &message).await.expect("publish");
    let record = harness.receive(&settings.topology().dead_letter, PATIENCE).await.expect("the dead letter");
    assert_eq!(record.headers.get(h::CORRELATION_ID), Some(&id));
    assert_eq!(record.headers.get(h::FAILURE_KIND).map(String::as_str), Some("expired"));
    assert_eq!(record.headers.get(h::FAILURE_ATTEMPTS).map(String::as_str), Some("1"));
    assert_eq!(handler.calls.lock().expect("calls")[&id].len(), 1, "not run again after its deadline");
    stop.cancel();
    worker.await.expect("worker");
}
